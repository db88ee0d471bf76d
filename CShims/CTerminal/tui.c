/*
 * The live view's terminal, through ncursesw: kvm_stat draws with curses too. Swift hands us whole
 * lines of UTF-8 text with an attribute; everything else (layout, keys' meaning) stays in Swift.
 * The terminal is restored by ckvmscope_tui_end(), which is also registered with atexit() so that
 * every exit path (errors that call exit(), normal returns) leaves the user's terminal usable.
 */
#include "CTerminal.h"
#include "CKVMHost.h"

#include <curses.h>
#include <errno.h>
#include <locale.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

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

/*
 * Waits until stdin has input, the terminal is gone, a stop was raised, a signal came or timeout_ms pass.
 * Returns 1 (input), 2 (a signal, such as curses' SIGWINCH), 0 (timeout or stop) or -2 (gone: hangup,
 * error, or readable with nothing to read — end of file).
 * A terminal that went away stays "readable" for ever: without this, a reader spins on it.
 */
static int tty_wait(int timeout_ms)
{
    struct pollfd p[2] = {{.fd = STDIN_FILENO, .events = POLLIN}, {.fd = ckvmscope_stop_fd(), .events = POLLIN}};
    int r, pending = 0;

    r = poll(p, p[1].fd >= 0 ? 2 : 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 2 : -2;
    if (r == 0 || (p[1].revents & POLLIN))
        return 0;
    if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL))
        return -2;
    if ((p[0].revents & POLLIN) && ioctl(STDIN_FILENO, FIONREAD, &pending) == 0 && pending == 0)
        return -2;
    return 1;
}

/**
 * ckvmscope_tui_key - wait for a key
 * @timeout_ms: longest wait; 0 polls
 *
 * Returns as soon as a key comes, the terminal goes away or a stop (ckvmscope_stop_raise) is raised.
 *
 * Return: a byte (0-255), one of CKVMSCOPE_TUI_KEY_*, CKVMSCOPE_TUI_KEY_GONE when the terminal hung up or
 * reads end of file or an error, or -1 when nothing came in time.
 */
int ckvmscope_tui_key(int timeout_ms)
{
    int c, w;

    if (!tui_active)
        return -1;
    w = tty_wait(timeout_ms);
    if (w == -2)
        return CKVMSCOPE_TUI_KEY_GONE;
    if (w == 0)
        return -1;
    timeout(0);
    c = getch();
    switch (c) {
    case ERR:
        /* After a signal: nothing pending. Readable, yet curses read nothing: end of file or EIO. */
        if (w == 2)
            return -1;
        return tty_wait(0) == -2 ? CKVMSCOPE_TUI_KEY_GONE : -1;
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

/* ---------------------------------------------------------------- keys without curses (the log fallback) */

static struct termios keys_saved;
static int keys_active;
static int keys_atexit_registered;

/**
 * ckvmscope_keys_end - give stdin its modes back (idempotent; also runs at exit)
 */
void ckvmscope_keys_end(void)
{
    if (!keys_active)
        return;
    keys_active = 0;
    tcsetattr(STDIN_FILENO, TCSANOW, &keys_saved);
}

static void keys_atexit(void)
{
    ckvmscope_keys_end();
}

/**
 * ckvmscope_keys_begin - read single keys from the terminal on stdin while the log fallback prints
 *
 * Turns off canonical mode and echo (signal keys such as Ctrl-C keep working); the modes come back
 * with ckvmscope_keys_end() or at exit. Return: 0, or -1 when stdin is not a terminal or we are not in
 * its foreground process group.
 */
int ckvmscope_keys_begin(void)
{
    struct termios t;

    if (keys_active)
        return 0;
    /* Only in the foreground: a background job changing or reading the terminal is stopped (SIGTTOU/SIGTTIN). */
    if (tcgetpgrp(STDIN_FILENO) != getpgrp())
        return -1;
    if (tcgetattr(STDIN_FILENO, &keys_saved) < 0)
        return -1;
    t = keys_saved;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &t) < 0)
        return -1;
    keys_active = 1;
    if (!keys_atexit_registered) {
        atexit(keys_atexit);
        keys_atexit_registered = 1;
    }
    return 0;
}

/**
 * ckvmscope_keys_next - the next byte typed, as ckvmscope_tui_key() reports it
 * @timeout_ms: longest wait
 *
 * Return: a byte, CKVMSCOPE_TUI_KEY_GONE (hangup, end of file, error) or -1 (timeout or stop raised).
 */
int ckvmscope_keys_next(int timeout_ms)
{
    unsigned char c;
    ssize_t n;
    int w = tty_wait(timeout_ms);

    if (w == -2)
        return CKVMSCOPE_TUI_KEY_GONE;
    if (w != 1)
        return -1;
    n = read(STDIN_FILENO, &c, 1);
    if (n == 1)
        return c;
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return -1;
    return CKVMSCOPE_TUI_KEY_GONE;
}
