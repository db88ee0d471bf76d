/*
 * tracefs instances: kvmscope never touches the global buffer. Each run makes its own instance
 * (kvmscope-<pid>), sizes it, picks its clock, enables events in it and removes it at the end.
 */
#include "CKVMScope.h"
#include "shim_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tracefs.h>
#include <unistd.h>

/**
 * ckvmscope_tracing_dir - where tracefs is mounted
 *
 * libtracefs mounts tracefs itself when it finds it nowhere. Returns NULL when that fails.
 */
const char *ckvmscope_tracing_dir(void)
{
    return tracefs_tracing_dir();
}

/* A live instance: the libtracefs handle, owned until ckvmscope_instance_destroy(). */
struct ckvmscope_instance {
    struct tracefs_instance *tfs;
};

/**
 * ckvmscope_instance_create - create and configure a private instance
 * @name: instance name
 * @buffer_kb: ring-buffer size per CPU in KiB
 * @clock: trace clock ("mono" so that timestamps compare with CLOCK_MONOTONIC), or NULL to keep the default
 * @err: room for a one-line message
 * @errlen: its size
 *
 * The instance is left with tracing off; turn it on after enabling events. The handle owns the instance:
 * ckvmscope_instance_destroy() removes it from tracefs and frees the handle.
 * Returns the handle, or NULL with err set (and nothing left in tracefs).
 */
struct ckvmscope_instance *ckvmscope_instance_create(const char *name, uint32_t buffer_kb, const char *clock,
                                                     char *err, size_t errlen)
{
    struct ckvmscope_instance *inst = calloc(1, sizeof(*inst));
    char value[32];

    if (!inst) {
        snprintf(err, errlen, "cannot create tracefs instance %s: %s", name, strerror(errno));
        goto error;
    }
    inst->tfs = tracefs_instance_create(name);
    if (!inst->tfs) {
        snprintf(err, errlen, "cannot create tracefs instance %s: %s", name, strerror(errno));
        goto error_free;
    }
    if (tracefs_trace_off(inst->tfs) < 0) {
        snprintf(err, errlen, "cannot stop tracing in instance %s: %s", name, strerror(errno));
        goto error_destroy;
    }
    snprintf(value, sizeof(value), "%u", buffer_kb);
    if (tracefs_instance_file_write(inst->tfs, "buffer_size_kb", value) < 0) {
        snprintf(err, errlen, "cannot set buffer_size_kb=%s in instance %s: %s", value, name, strerror(errno));
        goto error_destroy;
    }
    /* Readers wake on their own watermark (ckvmscope_instance_wake_percent); until one is set, on any data. */
    tracefs_instance_file_write(inst->tfs, "buffer_percent", "0");
    if (clock && tracefs_instance_file_write(inst->tfs, "trace_clock", clock) < 0) {
        snprintf(err, errlen, "cannot set trace_clock=%s in instance %s: %s", clock, name, strerror(errno));
        goto error_destroy;
    }
    return inst;

error_destroy:
    tracefs_instance_destroy(inst->tfs);
    tracefs_instance_free(inst->tfs);
error_free:
    free(inst);
error:
    return NULL;
}

/**
 * ckvmscope_instance_attach - a handle on an existing instance (one a dead recording left), not created
 * @name: instance name
 *
 * The handle owns the instance as one from ckvmscope_instance_create() does: its readers open the same way,
 * and ckvmscope_instance_destroy() removes it. Returns NULL with errno (ENOENT when it does not exist).
 */
struct ckvmscope_instance *ckvmscope_instance_attach(const char *name)
{
    struct ckvmscope_instance *inst;

    if (!tracefs_instance_exists(name)) {
        errno = ENOENT;
        return NULL;
    }
    inst = calloc(1, sizeof(*inst));
    if (!inst)
        return NULL;
    inst->tfs = tracefs_instance_alloc(NULL, name);
    if (!inst->tfs) {
        int saved = errno;
        free(inst);
        errno = saved;
        return NULL;
    }
    return inst;
}

const char *ckvmscope_instance_name(const struct ckvmscope_instance *inst)
{
    return tracefs_instance_get_name(inst->tfs);
}

/* The libtracefs handle, for the other files of the shim (readers). */
struct tracefs_instance *ckvmscope_instance_tracefs(struct ckvmscope_instance *inst)
{
    return inst->tfs;
}

/**
 * ckvmscope_instance_wake_percent - how full a CPU's buffer must be before poll() wakes its reader
 * @inst: the handle
 * @percent: 0 (any data) to 100; the instance's buffer_percent
 *
 * Since Linux 6.1 poll() of trace_pipe_raw (and a blocking splice) waits for this watermark, so an idle or
 * slow CPU costs its reader no wake-ups. Returns 0, or -1 with errno.
 */
int ckvmscope_instance_wake_percent(struct ckvmscope_instance *inst, uint32_t percent)
{
    char value[16];

    snprintf(value, sizeof(value), "%u", percent);
    return tracefs_instance_file_write(inst->tfs, "buffer_percent", value) < 0 ? -1 : 0;
}

int ckvmscope_instance_enable(struct ckvmscope_instance *inst, const char *system, const char *event)
{
    return tracefs_event_enable(inst->tfs, system, event);
}

int ckvmscope_instance_tracing_on(struct ckvmscope_instance *inst, int on)
{
    return on ? tracefs_trace_on(inst->tfs) : tracefs_trace_off(inst->tfs);
}

/**
 * ckvmscope_instance_record_tgid - keep tid → tgid for traced threads (the record-tgid option)
 *
 * Lets threads that exit before kvmscope looks at them still be named. Returns 0, or -1 with errno.
 */
int ckvmscope_instance_record_tgid(struct ckvmscope_instance *inst)
{
    return tracefs_option_enable(inst->tfs, TRACEFS_OPTION_RECORD_TGID);
}

/* Appends to set_event_pid every thread of pid not yet listed (the kernel filters by thread id). Returns the
 * threads added, or -1 with errno. */
static int follow_threads(struct ckvmscope_instance *inst, int pid, int *known, int *nknown, int cap)
{
    char path[64], value[16];
    int added = 0;

    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return errno == ENOENT ? 0 : -1;
    for (struct dirent *e; (e = readdir(dir));) {
        int tid = atoi(e->d_name);
        int seen = tid <= 0;
        for (int i = 0; i < *nknown && !seen; i++)
            seen = known[i] == tid;
        if (seen)
            continue;
        snprintf(value, sizeof(value), "%d", tid);
        if (tracefs_instance_file_append(inst->tfs, "set_event_pid", value) < 0) {
            int saved = errno;
            closedir(dir);
            errno = saved;
            return -1;
        }
        if (*nknown < cap)
            known[(*nknown)++] = tid;
        added++;
    }
    closedir(dir);
    return added;
}

/* ckvmscope_instance_follow_pid's work; with append, the processes already in set_event_pid stay. */
static int follow(struct ckvmscope_instance *inst, int pid, int append)
{
    char value[16];
    int known[4096], nknown = 0;

    if (tracefs_option_enable(inst->tfs, TRACEFS_OPTION_EVENT_FORK) < 0)
        return -1;
    snprintf(value, sizeof(value), "%d", pid);
    if ((append ? tracefs_instance_file_append(inst->tfs, "set_event_pid", value)
                : tracefs_instance_file_write(inst->tfs, "set_event_pid", value)) < 0)
        return -1;
    known[nknown++] = pid;
    for (int pass = 0; pass < 8; pass++) {
        int added = follow_threads(inst, pid, known, &nknown, (int)(sizeof(known) / sizeof(known[0])));
        if (added < 0)
            return -1;
        if (added == 0)
            break;
    }
    return 0;
}

/**
 * ckvmscope_instance_follow_pid - trace only this process, its threads, and what it starts from now on
 * @pid: the process
 *
 * set_event_pid with the event-fork option, as trace-cmd record -P and -F do, plus every thread the process
 * already has (a running VMM's vCPU threads: the kernel filters by thread id, and event-fork only adds threads
 * created after their creator was listed). Threads are listed until a pass finds no new one (at most 8
 * passes: a thread started by an unlisted thread in between is caught by the next). Returns 0, or -1 with errno.
 */
int ckvmscope_instance_follow_pid(struct ckvmscope_instance *inst, int pid)
{
    return follow(inst, pid, 0);
}

/**
 * ckvmscope_instance_follow_another_pid - as ckvmscope_instance_follow_pid, keeping the processes already followed
 *
 * stat -g: every VM process with that guest name. Returns 0, or -1 with errno.
 */
int ckvmscope_instance_follow_another_pid(struct ckvmscope_instance *inst, int pid)
{
    return follow(inst, pid, 1);
}

/**
 * ckvmscope_instance_destroy - turn tracing off, disable every event, remove the instance, free the handle
 * @inst: the handle (NULL is a no-op)
 *
 * Every reader of the instance must be closed first: tracefs refuses (EBUSY) to remove an instance with
 * open files, so this retries for up to two seconds. The handle is freed whatever happens.
 * Returns 0, or -1 with errno when the instance could not be removed.
 */
int ckvmscope_instance_destroy(struct ckvmscope_instance *inst)
{
    int ret = 0, saved = 0;

    if (!inst)
        return 0;
    tracefs_trace_off(inst->tfs);
    tracefs_event_disable(inst->tfs, NULL, NULL);
    for (int attempt = 0; attempt < 200; attempt++) {
        ret = tracefs_instance_destroy(inst->tfs);
        saved = errno;
        if (ret == 0 || saved == ENOENT) {
            ret = 0;
            break;
        }
        if (saved != EBUSY)
            break;
        usleep(10000);
    }
    tracefs_instance_free(inst->tfs);
    free(inst);
    errno = saved;
    return ret;
}

/**
 * ckvmscope_instance_remove - remove an instance by name (one left behind by a dead process or another tool)
 * @name: instance name
 *
 * Tracing off, events disabled, directory removed. Returns 0 (also when it did not exist), or -1 with errno.
 */
int ckvmscope_instance_remove(const char *name)
{
    struct tracefs_instance *tfs;
    int ret, saved;

    if (!tracefs_instance_exists(name))
        return 0;
    tfs = tracefs_instance_alloc(NULL, name);
    if (!tfs)
        return -1;
    tracefs_trace_off(tfs);
    tracefs_event_disable(tfs, NULL, NULL);
    ret = tracefs_instance_destroy(tfs);
    saved = errno;
    tracefs_instance_free(tfs);
    errno = saved;
    return ret < 0 && saved != ENOENT ? -1 : 0;
}
