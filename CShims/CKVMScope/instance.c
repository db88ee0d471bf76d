/*
 * tracefs instances: kvmscope never touches the global buffer. Each run makes its own instance
 * (kvmscope-<pid>), sizes it, picks its clock, enables events in it and removes it at the end.
 */
#include "CKVMScope.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <tracefs.h>

/**
 * ckvmscope_tracing_dir - where tracefs is mounted
 *
 * libtracefs mounts tracefs itself when it finds it nowhere. Returns NULL when that fails.
 */
const char *ckvmscope_tracing_dir(void)
{
    return tracefs_tracing_dir();
}

static struct tracefs_instance *instance_get(const char *name)
{
    return tracefs_instance_alloc(NULL, name);
}

/**
 * ckvmscope_instance_create - create and configure a private instance
 * @name: instance name
 * @buffer_kb: ring-buffer size per CPU in KiB
 * @clock: trace clock ("mono" so that timestamps compare with CLOCK_MONOTONIC), or NULL to keep the default
 * @err: room for a one-line message
 * @errlen: its size
 *
 * The instance is left with tracing off; turn it on after enabling events.
 * Returns 0, or -1 with err set.
 */
int ckvmscope_instance_create(const char *name, uint32_t buffer_kb, const char *clock, char *err, size_t errlen)
{
    struct tracefs_instance *inst = tracefs_instance_create(name);
    char value[32];

    if (!inst) {
        snprintf(err, errlen, "cannot create tracefs instance %s: %s", name, strerror(errno));
        goto error;
    }
    if (tracefs_trace_off(inst) < 0) {
        snprintf(err, errlen, "cannot stop tracing in instance %s: %s", name, strerror(errno));
        goto error_free;
    }
    snprintf(value, sizeof(value), "%u", buffer_kb);
    if (tracefs_instance_file_write(inst, "buffer_size_kb", value) < 0) {
        snprintf(err, errlen, "cannot set buffer_size_kb=%s in instance %s: %s", value, name, strerror(errno));
        goto error_free;
    }
    /* Wake readers as soon as any data is there: the live view needs it, and batching is ours. */
    tracefs_instance_file_write(inst, "buffer_percent", "0");
    if (clock && tracefs_instance_file_write(inst, "trace_clock", clock) < 0) {
        snprintf(err, errlen, "cannot set trace_clock=%s in instance %s: %s", clock, name, strerror(errno));
        goto error_free;
    }
    tracefs_instance_free(inst);
    return 0;

error_free:
    tracefs_instance_free(inst);
error:
    return -1;
}

int ckvmscope_instance_enable(const char *name, const char *system, const char *event)
{
    struct tracefs_instance *inst = instance_get(name);
    if (!inst)
        return -1;
    int ret = tracefs_event_enable(inst, system, event);
    tracefs_instance_free(inst);
    return ret;
}

int ckvmscope_instance_tracing_on(const char *name, int on)
{
    struct tracefs_instance *inst = instance_get(name);
    if (!inst)
        return -1;
    int ret = on ? tracefs_trace_on(inst) : tracefs_trace_off(inst);
    tracefs_instance_free(inst);
    return ret;
}

/**
 * ckvmscope_instance_destroy - turn tracing off, disable every event and remove the instance
 * @name: instance name
 *
 * Fails with EBUSY while any file of the instance is still open.
 */
int ckvmscope_instance_destroy(const char *name)
{
    struct tracefs_instance *inst = instance_get(name);
    if (!inst)
        return -1;
    tracefs_trace_off(inst);
    tracefs_event_disable(inst, NULL, NULL);
    int ret = tracefs_instance_destroy(inst);
    int saved = errno;
    tracefs_instance_free(inst);
    errno = saved;
    return ret;
}
