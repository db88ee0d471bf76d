/*
 * Children that die with kvmscope. posix_spawn cannot set PR_SET_PDEATHSIG in the child, so this forks
 * and, between fork and exec, asks the kernel to SIGKILL the child when its parent ends (a SIGKILLed
 * `live --demo` left its demo guests spinning before). Only async-signal-safe calls run in the child.
 *
 * The kernel sends the death signal when the *thread* that forked ends: spawn from a thread that lives
 * as long as the process (the main thread).
 *
 * The child keeps only stdin, stdout and stderr: every other descriptor is closed at exec. A traced command
 * that held the tracefs readers (libtracefs opens them without O_CLOEXEC) kept the instance busy, and
 * kvmscope could not remove it while that command still ran.
 */
#define _GNU_SOURCE
#include "CKVMHost.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

/* Report errno to the parent through the CLOEXEC pipe, then end. */
static void spawn_child_fail(int fd, const char *what)
{
    int e = errno;
    (void)!write(fd, &e, sizeof e);
    (void)!write(fd, what, strlen(what));
    _exit(127);
}

static void spawn_redirect(int target, const char *path, int flags, int report)
{
    int fd;

    if (!path)
        return;
    fd = open(path, flags, 0600);
    if (fd < 0)
        spawn_child_fail(report, path);
    if (fd != target) {
        if (dup2(fd, target) < 0)
            spawn_child_fail(report, path);
        close(fd);
    }
}

/**
 * ckvmscope_spawn - start a program that dies with this process
 * @path: the program (not searched in PATH)
 * @argv: NULL-terminated arguments, argv[0] first
 * @envp: NULL-terminated environment
 * @stdin_path: opened read-only as stdin, or NULL to inherit
 * @stdout_path: created (0600, truncated) as stdout, or NULL to inherit
 * @stderr_path: likewise for stderr
 * @stdout_to_stderr: with @stdout_path NULL, stdout is a copy of the (inherited or redirected) stderr: the
 *                    command's output kept out of a trace written to stdout (perf record -o - does the same)
 * @pid: receives the child's pid
 * @err: receives the reason when the child could not start: "strerror" (execve), "PATH: strerror" (a
 *       redirection), "fork: strerror"
 * @errlen: size of @err
 *
 * The child starts with every signal unblocked and at its default disposition and with
 * PR_SET_PDEATHSIG = SIGKILL; it exits at once if the parent ended before the request took hold.
 *
 * Return: 0, or -1 with @err set (nothing left running).
 */
int ckvmscope_spawn(const char *path, char *const argv[], char *const envp[], const char *stdin_path,
                    const char *stdout_path, const char *stderr_path, int stdout_to_stderr, int *pid, char *err,
                    size_t errlen)
{
    int report[2], e = 0;
    pid_t parent = getpid(), child;
    sigset_t all, old;
    char what[256] = "";
    ssize_t n;

    if (pipe2(report, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    /* No handler of ours may run in the child between fork and exec. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    child = fork();
    if (child == 0) {
        struct sigaction dfl;

        close(report[0]);
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        for (int s = 1; s < NSIG; s++)
            sigaction(s, &dfl, NULL);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
            spawn_child_fail(report[1], "prctl(PR_SET_PDEATHSIG)");
        if (getppid() != parent)
            _exit(127);
        spawn_redirect(0, stdin_path, O_RDONLY, report[1]);
        spawn_redirect(1, stdout_path, O_WRONLY | O_CREAT | O_TRUNC, report[1]);
        spawn_redirect(2, stderr_path, O_WRONLY | O_CREAT | O_TRUNC, report[1]);
        if (stdout_to_stderr && !stdout_path && dup2(2, 1) < 0)
            spawn_child_fail(report[1], "dup2(2, 1)");
        if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
            /* Kernels before 5.11: mark them one by one. */
            for (int fd = 3; fd < 65536; fd++)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        execve(path, argv, envp);
        spawn_child_fail(report[1], "");
    }
    e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (child < 0) {
        close(report[0]);
        snprintf(err, errlen, "fork: %s", strerror(e));
        return -1;
    }
    /* The pipe closes at exec (nothing read) or carries errno and what failed. */
    while ((n = read(report[0], &e, sizeof e)) < 0 && errno == EINTR)
        ;
    if (n == (ssize_t)sizeof e) {
        ssize_t m = read(report[0], what, sizeof what - 1);
        what[m > 0 ? m : 0] = 0;
        close(report[0]);
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
            ;
        snprintf(err, errlen, "%s%s%s", what, what[0] ? ": " : "", strerror(e));
        return -1;
    }
    close(report[0]);
    *pid = child;
    return 0;
}
