/*
 * The per-CPU live reader: one per online CPU, each used by one thread. A read call takes up to
 * max_subbufs sub-buffers from trace_pipe_raw (blocking for the first) and decodes them into the
 * caller's record array, so Swift crosses into C once per batch, never once per event.
 */
#define _GNU_SOURCE
#include "CKVMScope.h"
#include "shim_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <tracefs.h>
#include <unistd.h>

/*
 * The trace_pipe_raw fd is always non-blocking: waiting is ours (poll of the fd, which the kernel answers at
 * the instance's buffer_percent watermark, and of a wake pipe). Sub-buffers of trace_pipe_raw are spliced
 * into a pipe, which takes only the sub-buffers the writer has left (the kernel's "full" read), then read
 * from the pipe, a batch per read() call (libtracefs' buffered read takes one sub-buffer per call). A reader
 * that catches up with the writer therefore gets nothing instead of the writer's page with one or two events
 * in it, and goes back to waiting; the partial page is read (tracefs_cpu_flush: plain read of the fd, after
 * what the pipe still holds) only when asked, at stop and at a refresh boundary.
 */
struct ckvmscope_reader {
    struct tracefs_cpu *tcpu;
    int fd;
    int stop_pipe[2];
    struct ckvmscope_decoder *decoder;
    int cpu;
    uint32_t subbuf_size;
    uint32_t max_subbufs;
    int full_only; /* trace_pipe_raw: full sub-buffers through splice; other descriptors: plain reads */
    int splice_pipe[2]; /* full_only: the sub-buffers taken from the ring buffer, not read yet */
    uint32_t piped;     /* bytes in splice_pipe */
    uint32_t pipe_room; /* whole sub-buffers the splice pipe holds, in bytes */
    void *page;         /* max_subbufs sub-buffers */
};

/**
 * ckvmscope_reader_open_fd - a reader over a file descriptor that reads like trace_pipe_raw
 * @fd: non-blocking descriptor; the reader owns it from here on (closed on error too)
 * @subbuf_size: bytes of one sub-buffer
 * @cpu: the CPU written into every record
 * @decoder: used only by this reader
 * @max_subbufs_per_read: sub-buffers one read call takes at most
 *
 * Returns the reader, or NULL with errno.
 */
struct ckvmscope_reader *ckvmscope_reader_open_fd(int fd, uint32_t subbuf_size, int cpu,
                                                  struct ckvmscope_decoder *decoder, uint32_t max_subbufs_per_read)
{
    struct ckvmscope_reader *r = calloc(1, sizeof(*r));
    int saved;

    if (!r)
        goto error;
    r->fd = fd;
    r->stop_pipe[0] = r->stop_pipe[1] = -1;
    r->splice_pipe[0] = r->splice_pipe[1] = -1;
    r->tcpu = tracefs_cpu_alloc_fd(fd, (int)subbuf_size, true);
    if (!r->tcpu)
        goto error_free;
    if (pipe2(r->stop_pipe, O_NONBLOCK | O_CLOEXEC) < 0)
        goto error_close;
    r->subbuf_size = subbuf_size;
    r->max_subbufs = max_subbufs_per_read ? max_subbufs_per_read : 1;
    r->page = malloc((size_t)r->subbuf_size * r->max_subbufs);
    if (!r->page)
        goto error_close;
    r->decoder = decoder;
    r->cpu = cpu;
    return r;

error_close:
    saved = errno;
    if (r->stop_pipe[0] >= 0) {
        close(r->stop_pipe[0]);
        close(r->stop_pipe[1]);
    }
    tracefs_cpu_free_fd(r->tcpu);
    errno = saved;
error_free:
    free(r);
error:
    saved = errno;
    close(fd);
    errno = saved;
    return NULL;
}

/**
 * ckvmscope_reader_open - a reader of one CPU's trace_pipe_raw in an instance
 *
 * Returns the reader, or NULL with errno.
 */
struct ckvmscope_reader *ckvmscope_reader_open(struct ckvmscope_instance *inst, int cpu,
                                               struct ckvmscope_decoder *decoder, uint32_t max_subbufs_per_read)
{
    struct tracefs_instance *tfs = ckvmscope_instance_tracefs(inst);
    char path[64];
    int size, fd;

    /* libtracefs works the sub-buffer size out of header_page; take it from a throw-away handle. */
    struct tracefs_cpu *probe = tracefs_cpu_open(tfs, cpu, true);
    size = probe ? tracefs_cpu_read_size(probe) : -1;
    tracefs_cpu_close(probe);
    if (size <= 0) {
        errno = errno ? errno : EINVAL;
        return NULL;
    }
    snprintf(path, sizeof(path), "per_cpu/cpu%d/trace_pipe_raw", cpu);
    fd = tracefs_instance_file_open(tfs, path, O_RDONLY | O_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct ckvmscope_reader *r = ckvmscope_reader_open_fd(fd, (uint32_t)size, cpu, decoder, max_subbufs_per_read);
    if (!r)
        return NULL;
    if (pipe2(r->splice_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        int saved = errno;
        ckvmscope_reader_close(r);
        errno = saved;
        return NULL;
    }
    /* Room for a whole batch (the default 64 KiB already holds 16 sub-buffers of 4 KiB). */
    if ((uint64_t)r->subbuf_size * r->max_subbufs > 65536)
        fcntl(r->splice_pipe[0], F_SETPIPE_SZ, (int)(r->subbuf_size * r->max_subbufs));
    int room = fcntl(r->splice_pipe[0], F_GETPIPE_SZ);
    r->pipe_room = room > (int)r->subbuf_size ? (uint32_t)room / r->subbuf_size * r->subbuf_size : r->subbuf_size;
    r->full_only = 1;
    return r;
}

void ckvmscope_reader_close(struct ckvmscope_reader *r)
{
    if (!r)
        return;
    tracefs_cpu_free_fd(r->tcpu);
    close(r->fd);
    close(r->stop_pipe[0]);
    close(r->stop_pipe[1]);
    if (r->splice_pipe[0] >= 0) {
        close(r->splice_pipe[0]);
        close(r->splice_pipe[1]);
    }
    free(r->page);
    free(r);
}

uint32_t ckvmscope_reader_capacity(struct ckvmscope_reader *r)
{
    return r->max_subbufs * ckvmscope_max_records(r->subbuf_size);
}

uint32_t ckvmscope_reader_subbuf_size(struct ckvmscope_reader *r)
{
    return r->subbuf_size;
}

/**
 * ckvmscope_reader_wait - wait until the CPU's buffer has data, the timeout passes, or the reader is stopped
 * @r: the reader
 * @timeout_ms: at most this long; -1 for no limit
 *
 * Returns 1 when there is data, 0 on timeout (or EINTR), -1 when stopped.
 */
int ckvmscope_reader_wait(struct ckvmscope_reader *r, int timeout_ms)
{
    struct pollfd fds[2] = { { .fd = r->fd, .events = POLLIN }, { .fd = r->stop_pipe[0], .events = POLLIN } };
    char drain[64];
    int ret = poll(fds, 2, timeout_ms);
    if (ret <= 0)
        return 0;
    if (fds[1].revents) {
        /* Consumed: the caller learns why it was woken from its own flags (stop, drain request). */
        while (read(r->stop_pipe[0], drain, sizeof(drain)) > 0) {
        }
        return -1;
    }
    return 1;
}

/* Up to `count` full sub-buffers from the splice pipe into buf, topping the pipe up from the ring buffer
 * first when it holds fewer. Returns bytes (whole sub-buffers), 0 when there is none, -1 on error. */
static int read_full(struct ckvmscope_reader *r, void *buf, uint32_t count)
{
    ssize_t n;

    /* Topped up to the pipe's room: a reader that takes one sub-buffer per call (record) splices once per
     * pipeful, not once per sub-buffer. */
    if (r->piped < count * r->subbuf_size && r->piped < r->pipe_room) {
        n = splice(r->fd, NULL, r->splice_pipe[1], NULL, r->pipe_room - r->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0)
            r->piped += (uint32_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR && !r->piped)
            return -1;
    }
    if (!r->piped)
        return 0;
    if (count * r->subbuf_size > r->piped)
        count = r->piped / r->subbuf_size;
    n = read(r->splice_pipe[0], buf, count * r->subbuf_size);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    r->piped -= (uint32_t)n;
    return (int)n;
}

/* One sub-buffer into buf: a full one, or with partial != 0 whatever is there (what the splice pipe holds
 * first). Returns bytes, 0 when there is none. */
static int read_subbuf(struct ckvmscope_reader *r, void *buf, int partial)
{
    int bytes;

    if (r->full_only && (!partial || r->piped))
        bytes = read_full(r, buf, 1);
    else if (partial)
        bytes = tracefs_cpu_flush(r->tcpu, buf);
    else
        bytes = tracefs_cpu_read(r->tcpu, buf, true);
    if (bytes < 0 && errno == EAGAIN) {
        errno = 0;
        bytes = 0;
    }
    return bytes;
}

static int decode_page(struct ckvmscope_reader *r, const void *page, int bytes, struct ckvmscope_record *out,
                       uint32_t cap, struct ckvmscope_decode_stats *stats)
{
    int n = ckvmscope_decode_subbuf(r->decoder, page, (uint32_t)bytes, (uint16_t)r->cpu, out, cap, stats);
    return n < 0 ? 0 : n;
}

/**
 * ckvmscope_reader_read - read and decode a batch of sub-buffers
 * @r: the reader
 * @out: at least ckvmscope_reader_capacity() records
 * @nonblock: do not wait for the first sub-buffer
 * @stats: accumulated decode counters
 *
 * Returns records written (0 when there was nothing or the reader is stopped), -1 on error.
 */
int ckvmscope_reader_read(struct ckvmscope_reader *r, struct ckvmscope_record *out, int nonblock,
                          struct ckvmscope_decode_stats *stats)
{
    uint32_t per_page = ckvmscope_max_records(r->subbuf_size);
    uint32_t total = 0;

    if (!nonblock && ckvmscope_reader_wait(r, -1) < 0)
        return 0;
    if (r->full_only) {
        /* One read() for the whole batch. */
        int bytes = read_full(r, r->page, r->max_subbufs);
        if (bytes < 0)
            return -1;
        for (int at = 0; at + (int)r->subbuf_size <= bytes; at += (int)r->subbuf_size)
            total += (uint32_t)decode_page(r, (char *)r->page + at, (int)r->subbuf_size, out + total, per_page, stats);
        return (int)total;
    }
    for (uint32_t i = 0; i < r->max_subbufs; i++) {
        int bytes = read_subbuf(r, r->page, 0);
        if (bytes < 0)
            return total ? (int)total : -1;
        if (bytes == 0)
            break;
        total += (uint32_t)decode_page(r, r->page, bytes, out + total, per_page, stats);
    }
    return (int)total;
}

int ckvmscope_reader_read_raw(struct ckvmscope_reader *r, void *buf, int nonblock)
{
    if (!nonblock && ckvmscope_reader_wait(r, -1) < 0)
        return 0;
    return read_subbuf(r, buf, 0);
}

/**
 * ckvmscope_reader_catch_up - read what the buffer holds now, the writer's partial sub-buffer included
 * @r: the reader
 * @out: at least ckvmscope_reader_capacity() records
 * @until_ts: stop after a sub-buffer that begins at or after this time (trace clock, ns)
 * @stats: accumulated decode counters
 * @more: set to 1 when the call stopped at max_subbufs_per_read sub-buffers with more to read, else 0
 *
 * Used at a refresh or scrape boundary: once it has returned with *more == 0, every event written before
 * until_ts (and committed) has been read. A writer that keeps writing is chased only up to until_ts.
 * Returns records written, or -1 on error (errno).
 */
int ckvmscope_reader_catch_up(struct ckvmscope_reader *r, struct ckvmscope_record *out, uint64_t until_ts,
                              struct ckvmscope_decode_stats *stats, int *more)
{
    uint32_t per_page = ckvmscope_max_records(r->subbuf_size);
    uint32_t total = 0;

    *more = 0;
    for (uint32_t i = 0; i < r->max_subbufs; i++) {
        int bytes = read_subbuf(r, r->page, 1);
        if (bytes < 0)
            return total ? (int)total : -1;
        if (bytes == 0)
            return (int)total;
        total += (uint32_t)decode_page(r, r->page, bytes, out + total, per_page, stats);
        /* The sub-buffer header starts with its first event's time stamp (u64, the host's byte order). */
        if (bytes >= 8 && *(const uint64_t *)r->page >= until_ts)
            return (int)total;
    }
    *more = 1;
    return (int)total;
}

void ckvmscope_reader_stop(struct ckvmscope_reader *r)
{
    ckvmscope_reader_wake(r);
}

void ckvmscope_reader_wake(struct ckvmscope_reader *r)
{
    char c = 1;
    if (write(r->stop_pipe[1], &c, 1) < 0) {
        /* The pipe is full: a wake-up is already pending. */
    }
}

int ckvmscope_reader_flush(struct ckvmscope_reader *r, struct ckvmscope_record *out,
                           struct ckvmscope_decode_stats *stats)
{
    uint32_t per_page = ckvmscope_max_records(r->subbuf_size);
    uint32_t total = 0;

    for (uint32_t i = 0; i < r->max_subbufs; i++) {
        int bytes = read_subbuf(r, r->page, 1);
        if (bytes < 0)
            return total ? (int)total : -1;
        if (bytes == 0)
            break;
        total += (uint32_t)decode_page(r, r->page, bytes, out + total, per_page, stats);
    }
    return (int)total;
}

int ckvmscope_reader_flush_raw(struct ckvmscope_reader *r, void *buf)
{
    return read_subbuf(r, buf, 1);
}
