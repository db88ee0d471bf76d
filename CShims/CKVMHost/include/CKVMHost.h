/*
 * CKVMHost — the process-level shim: the signals that end kvmscope cleanly, and children that die with it.
 * Every exported symbol is prefixed `ckvmscope_`. Imported by the Swift module KVMHost; the terminal and
 * guest shims use the stop signal too.
 */
#ifndef CKVMHOST_H
#define CKVMHOST_H

#include <malloc.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- stop signals (signals.c) */

/* Record-and-wake handlers on these signals (SA_RESTART). 0, or -1 with errno. */
int ckvmscope_stop_install(const int *sigs, int n);
/* SIGPIPE's handler that does nothing (writes to a closed pipe fail with EPIPE; execve resets it). 0 or -1. */
int ckvmscope_pipe_quiet(void);
/* Record a stop as if sig had come (async-signal-safe; the first one wins). */
void ckvmscope_stop_raise(int sig);
/* The first stop's signal, or 0. */
int ckvmscope_stop_signal(void);
/* Readable from the first stop on (for poll), or -1. */
int ckvmscope_stop_fd(void);
/* SIGHUP counted, not a stop (a -L log reopens its file). 0, or -1 with errno. */
int ckvmscope_hangup_install(void);
/* SIGHUPs counted since ckvmscope_hangup_install(). */
unsigned ckvmscope_hangups(void);

/* ---------------------------------------------------------------- children that die with us (spawn.c) */

/* fork + PR_SET_PDEATHSIG(SIGKILL) + execve; each path NULL to inherit (stdout_to_stderr: stdout is the
 * inherited stderr, as perf record does when its own output is stdout). 0, or -1 with "WHAT: strerror" in err. */
int ckvmscope_spawn(const char *path, char *const argv[], char *const envp[], const char *stdin_path,
                    const char *stdout_path, const char *stderr_path, int stdout_to_stderr, int *pid, char *err,
                    size_t errlen);

/* ---------------------------------------------------------------- file systems (fs.c) */

/* statfs(2)'s f_type of the file system holding path (PROC_SUPER_MAGIC, SYSFS_MAGIC, TRACEFS_MAGIC…), or 0
 * when it cannot be told (Swift's Glibc module has no statfs). */
long ckvmscope_fs_type(const char *path);

/* ---------------------------------------------------------------- memory back to the system */

/* glibc's malloc_trim(0): gives the free pages of every malloc arena back to the kernel (Swift's Glibc
 * module does not export it). 1 when memory was released, else 0. */
static inline int ckvmscope_release_free_memory(void) { return malloc_trim(0); }

/* For a daemon whose tables grow and shrink with bursts: mallopt(M_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD)
 * to `bytes` — blocks of at least that size get their own mapping (unmapped when freed), and the free top of the
 * heap beyond it goes back to the kernel on free(); set explicitly, glibc no longer raises them as large blocks
 * are freed (by default up to 32 and 64 MiB, after which a burst's freed tables stay resident) — and
 * mallopt(M_ARENA_MAX, 1): every thread allocates from the main heap, which malloc_trim trims whole (a thread's
 * own arena keeps its free pages around the few blocks still live in it). Call before any other thread
 * allocates. 1 when all three were set, else 0. */
static inline int ckvmscope_malloc_for_daemon(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes) == 1 && mallopt(M_TRIM_THRESHOLD, bytes) == 1
        && mallopt(M_ARENA_MAX, 1) == 1;
}

#ifdef __cplusplus
}
#endif
#endif
