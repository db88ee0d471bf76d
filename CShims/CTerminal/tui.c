/*
 * The live view's terminal, through ncursesw: kvm_stat draws with curses too. Swift hands us whole
 * lines of UTF-8 text with an attribute; everything else (layout, keys' meaning) stays in Swift.
 * The terminal is restored by ckvmscope_tui_end(), which is also registered with atexit() so that
 * every exit path (errors that call exit(), normal returns) leaves the user's terminal usable.
 */
#include "CTerminal.h"

#include <curses.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static SCREEN *tui_screen;
static int tui_active;
static int tui_atexit_registered;

static attr_t tui_attr(int attr)
{
    attr_t a = A_NORMAL;

    if (attr & CKVMSCOPE_TUI_BOLD)
        a |= A_BOLD;
    if (attr & CKVMSCOPE_TUI_REVERSE)
        a |= A_REVERSE;
    if (attr & CKVMSCOPE_TUI_UNDERLINE)
        a |= A_UNDERLINE;
    if ((attr & CKVMSCOPE_TUI_RED) && has_colors())
        a |= COLOR_PAIR(1);
    return a;
}

static void tui_atexit(void)
{
    ckvmscope_tui_end();
}

/**
 * ckvmscope_tui_begin - take over the terminal on stdin/stdout
 *
 * Sets the locale from the environment (for UTF-8 sparklines), starts curses without echo, in
 * cbreak mode (Ctrl-C still raises SIGINT), with keypad decoding, a hidden cursor and, when the
 * terminal has them, colours on the default background. Returns 0, or -1 when the terminal cannot
 * be driven (unknown TERM, not a tty); the terminal is then untouched.
 */
int ckvmscope_tui_begin(void)
{
    if (tui_active)
        return 0;
    setlocale(LC_ALL, "");
    tui_screen = newterm(NULL, stdout, stdin);
    if (!tui_screen)
        goto error;
    set_term(tui_screen);
    tui_active = 1;
    if (!tui_atexit_registered) {
        atexit(tui_atexit);
        tui_atexit_registered = 1;
    }
    cbreak();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    curs_set(0);
    if (has_colors()) {
        start_color();
        use_default_colors();
        init_pair(1, COLOR_RED, -1);
    }
    return 0;
error:
    return -1;
}

/**
 * ckvmscope_tui_end - give the terminal back
 *
 * Idempotent; safe to call from atexit handlers.
 */
void ckvmscope_tui_end(void)
{
    if (!tui_active)
        return;
    tui_active = 0;
    curs_set(1);
    endwin();
    delscreen(tui_screen);
    tui_screen = NULL;
    fflush(stdout);
}

/**
 * ckvmscope_tui_size - the terminal's size
 * @rows: set to the number of lines
 * @cols: set to the number of columns
 */
void ckvmscope_tui_size(int *rows, int *cols)
{
    if (!tui_active) {
        *rows = 0;
        *cols = 0;
        return;
    }
    getmaxyx(stdscr, *rows, *cols);
}

/**
 * ckvmscope_tui_clear - start a new frame (erase the virtual screen)
 */
void ckvmscope_tui_clear(void)
{
    if (tui_active)
        erase();
}

/**
 * ckvmscope_tui_put - write UTF-8 text at a position
 * @row: line
 * @col: column (in cells)
 * @utf8: text; cut at the right margin by curses
 * @attr: CKVMSCOPE_TUI_* bits
 */
void ckvmscope_tui_put(int row, int col, const char *utf8, int attr)
{
    attr_t a;

    if (!tui_active)
        return;
    a = tui_attr(attr);
    attron(a);
    mvaddnstr(row, col, utf8, -1);
    attroff(a);
}

/**
 * ckvmscope_tui_show - put the frame on the terminal
 * @cursor_row: where the cursor goes, or -1 to hide it
 * @cursor_col: its column
 */
void ckvmscope_tui_show(int cursor_row, int cursor_col)
{
    if (!tui_active)
        return;
    if (cursor_row >= 0) {
        move(cursor_row, cursor_col);
        curs_set(1);
    } else {
        curs_set(0);
    }
    refresh();
}

/**
 * ckvmscope_tui_key - wait for a key
 * @timeout_ms: longest wait; 0 polls
 *
 * Returns a byte (0-255), one of CKVMSCOPE_TUI_KEY_*, or -1 when nothing came in time.
 */
int ckvmscope_tui_key(int timeout_ms)
{
    int c;

    if (!tui_active)
        return -1;
    timeout(timeout_ms);
    c = getch();
    switch (c) {
    case ERR: return -1;
    case KEY_RESIZE: return CKVMSCOPE_TUI_KEY_RESIZE;
    case KEY_UP: return CKVMSCOPE_TUI_KEY_UP;
    case KEY_DOWN: return CKVMSCOPE_TUI_KEY_DOWN;
    case KEY_PPAGE: return CKVMSCOPE_TUI_KEY_PAGE_UP;
    case KEY_NPAGE: return CKVMSCOPE_TUI_KEY_PAGE_DOWN;
    case KEY_BACKSPACE: return 127;
    case KEY_ENTER: return '\n';
    default: return c >= 0 && c < 256 ? c : -1;
    }
}
