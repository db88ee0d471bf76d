/*
 * CTerminal — the live view's terminal through ncursesw. Every exported symbol is prefixed `ckvmscope_tui_` or `ckvmscope_keys_`.
 * Only the Swift module KVMTerminal imports it.
 */
#ifndef CTERMINAL_H
#define CTERMINAL_H


#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- terminal (ncursesw), for the live view */

/* Attributes of text put on the screen. */
enum { CKVMSCOPE_TUI_BOLD = 1, CKVMSCOPE_TUI_REVERSE = 2, CKVMSCOPE_TUI_RED = 4, CKVMSCOPE_TUI_UNDERLINE = 8 };
/* Keys other than bytes. */
enum {
    CKVMSCOPE_TUI_KEY_RESIZE = 0x1000,
    CKVMSCOPE_TUI_KEY_UP = 0x1001,
    CKVMSCOPE_TUI_KEY_DOWN = 0x1002,
    CKVMSCOPE_TUI_KEY_PAGE_UP = 0x1003,
    CKVMSCOPE_TUI_KEY_PAGE_DOWN = 0x1004,
    CKVMSCOPE_TUI_KEY_GONE = 0x1005, /* the terminal hung up, or reads end of file or an error */
};

/* Take over the terminal (curses on stdin/stdout). 0, or -1 when it cannot be driven. */
int ckvmscope_tui_begin(void);
/* Restore the terminal. Idempotent; also runs at exit. */
void ckvmscope_tui_end(void);
void ckvmscope_tui_size(int *rows, int *cols);
void ckvmscope_tui_clear(void);
void ckvmscope_tui_put(int row, int col, const char *utf8, int attr);
/* Show the frame; cursor_row -1 hides the cursor. */
void ckvmscope_tui_show(int cursor_row, int cursor_col);
/* A byte, a CKVMSCOPE_TUI_KEY_*, or -1 after timeout_ms without input or when a stop was raised. */
int ckvmscope_tui_key(int timeout_ms);
/* The log fallback's keys: stdin without canonical mode and echo (restored by _end and at exit). */
int ckvmscope_keys_begin(void);
void ckvmscope_keys_end(void);
/* A byte, CKVMSCOPE_TUI_KEY_GONE, or -1 after timeout_ms or when a stop was raised. */
int ckvmscope_keys_next(int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
