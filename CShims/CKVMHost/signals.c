/*
 * The signals that end kvmscope cleanly (SIGINT, SIGTERM, SIGHUP): a real handler on every one of them,
 * so that the signal reaches us whichever thread the kernel picks, that only records which signal came
 * and wakes whoever waits on ckvmscope_stop_fd(). Every loop of a command polls ckvmscope_stop_signal()
 * (the storm's vCPU threads after every exit); nothing else happens in the handler.
 *
 * Ignoring the signal and reading it elsewhere (what libdispatch's signal sources do) loses it when the
 * kernel delivers it to a thread that does not block it: the live view's log fallback ignored Ctrl-C so.
 * Handlers, unlike SIG_IGN, are reset by execve: children start with the default dispositions.
 */
#define _GNU_SOURCE
#include "CKVMHost.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

static atomic_int stop_signal;
static int stop_pipe[2] = {-1, -1};
static pthread_once_t stop_once = PTHREAD_ONCE_INIT;

static void stop_pipe_open(void)
{
    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        stop_pipe[0] = stop_pipe[1] = -1;
}

static void stop_handler(int sig)
{
    ckvmscope_stop_raise(sig);
}

/* SIGPIPE does nothing: a write to a closed pipe returns EPIPE, which the writer handles (the log ends
 * like on SIGHUP) instead of dying with the instance still tracing. A handler, unlike SIG_IGN, is reset
 * to the default by execve. */
static void pipe_handler(int sig)
{
    (void)sig;
}

/**
 * ckvmscope_stop_raise - record a stop as if @sig had come
 * @sig: the signal (SIGHUP for a terminal that went away)
 *
 * The first stop wins; the wake-up pipe becomes readable and stays so. Async-signal-safe.
 */
void ckvmscope_stop_raise(int sig)
{
    int expected = 0, saved = errno;

    atomic_compare_exchange_strong(&stop_signal, &expected, sig);
    if (stop_pipe[1] >= 0)
        (void)!write(stop_pipe[1], "", 1);
    errno = saved;
}

/**
 * ckvmscope_pipe_quiet - writes to a closed pipe fail with EPIPE instead of killing the process
 *
 * Every command writes through code that handles EPIPE (`| head` is not an error); a handler, not SIG_IGN,
 * so that a command kvmscope starts gets the default disposition back at execve.
 *
 * Return: 0, or -1 with errno set by sigaction.
 */
int ckvmscope_pipe_quiet(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pipe_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGPIPE, &sa, NULL);
}

/**
 * ckvmscope_stop_install - end on these signals
 * @sigs: signal numbers
 * @n: how many
 *
 * Installs the recording handler (SA_RESTART: other threads' system calls go on) on each and unblocks
 * them in the calling thread (the main thread), so that some thread always takes them; SIGPIPE gets a
 * handler that does nothing (writes then fail with EPIPE). Idempotent.
 *
 * Return: 0, or -1 with errno set by sigaction.
 */
int ckvmscope_stop_install(const int *sigs, int n)
{
    struct sigaction sa;
    sigset_t set;

    pthread_once(&stop_once, stop_pipe_open);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&set);
    for (int i = 0; i < n; i++) {
        if (sigaction(sigs[i], &sa, NULL) < 0)
            return -1;
        sigaddset(&set, sigs[i]);
    }
    sa.sa_handler = pipe_handler;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        return -1;
    /* A parent may start us with these blocked (Foundation's Process does): then no thread would take them. */
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

static atomic_uint hangups;

static void hangup_handler(int sig)
{
    (void)sig;
    atomic_fetch_add(&hangups, 1);
}

/**
 * ckvmscope_hangup_install - count SIGHUP instead of stopping on it
 *
 * For a log written to a file (kvm_stat -L's habit): logrotate moves the file and sends SIGHUP, and the
 * next line goes to a new file of that name. The handler only counts (SA_RESTART); the log's loop compares
 * ckvmscope_hangups() with what it saw. Unblocks SIGHUP in the calling thread.
 *
 * Return: 0, or -1 with errno set by sigaction.
 */
int ckvmscope_hangup_install(void)
{
    struct sigaction sa;
    sigset_t set;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = hangup_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGHUP, &sa, NULL) < 0)
        return -1;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

/**
 * ckvmscope_hangups - how many SIGHUPs came since ckvmscope_hangup_install()
 */
unsigned ckvmscope_hangups(void)
{
    return atomic_load(&hangups);
}

/**
 * ckvmscope_stop_signal - the signal that asked us to stop, or 0
 */
int ckvmscope_stop_signal(void)
{
    return atomic_load(&stop_signal);
}

/**
 * ckvmscope_stop_fd - a descriptor that becomes readable at the first stop (for poll), or -1
 */
int ckvmscope_stop_fd(void)
{
    pthread_once(&stop_once, stop_pipe_open);
    return stop_pipe[0];
}
