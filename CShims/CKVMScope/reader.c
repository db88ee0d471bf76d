/*
 * The per-CPU live reader: one per online CPU, each used by one thread. A read call takes up to
 * max_subbufs sub-buffers from trace_pipe_raw (blocking for the first) and decodes them into the
 * caller's record array, so Swift crosses into C once per batch, never once per event.
 */
#include "CKVMScope.h"

#include <errno.h>
#include <stdlib.h>
#include <tracefs.h>

struct ckvmscope_reader {
    struct tracefs_cpu *tcpu;
    struct ckvmscope_decoder *decoder;
    int cpu;
    uint32_t subbuf_size;
    uint32_t max_subbufs;
    void *page;
};

struct ckvmscope_reader *ckvmscope_reader_open(const char *instance, int cpu, struct ckvmscope_decoder *decoder,
                                               uint32_t max_subbufs_per_read)
{
    struct ckvmscope_reader *r = calloc(1, sizeof(*r));
    struct tracefs_instance *inst = NULL;
    if (!r)
        goto error;
    inst = tracefs_instance_alloc(NULL, instance);
    if (!inst)
        goto error_free;
    r->tcpu = tracefs_cpu_open(inst, cpu, false);
    tracefs_instance_free(inst);
    if (!r->tcpu)
        goto error_free;
    int size = tracefs_cpu_read_size(r->tcpu);
    if (size <= 0)
        goto error_close;
    r->subbuf_size = (uint32_t)size;
    r->page = malloc(r->subbuf_size);
    if (!r->page)
        goto error_close;
    r->decoder = decoder;
    r->cpu = cpu;
    r->max_subbufs = max_subbufs_per_read ? max_subbufs_per_read : 1;
    return r;

error_close:
    tracefs_cpu_close(r->tcpu);
error_free:
    free(r);
error:
    return NULL;
}

void ckvmscope_reader_close(struct ckvmscope_reader *r)
{
    if (!r)
        return;
    tracefs_cpu_close(r->tcpu);
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

static int decode_page(struct ckvmscope_reader *r, int bytes, struct ckvmscope_record *out, uint32_t cap,
                       struct ckvmscope_decode_stats *stats)
{
    int n = ckvmscope_decode_subbuf(r->decoder, r->page, (uint32_t)bytes, (uint16_t)r->cpu, out, cap, stats);
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

    for (uint32_t i = 0; i < r->max_subbufs; i++) {
        int bytes = tracefs_cpu_read(r->tcpu, r->page, i == 0 ? (bool)nonblock : true);
        if (bytes < 0)
            return total ? (int)total : -1;
        if (bytes == 0)
            break;
        total += (uint32_t)decode_page(r, bytes, out + total, per_page, stats);
    }
    return (int)total;
}

int ckvmscope_reader_read_raw(struct ckvmscope_reader *r, void *buf, int nonblock)
{
    return tracefs_cpu_read(r->tcpu, buf, (bool)nonblock);
}

void ckvmscope_reader_stop(struct ckvmscope_reader *r)
{
    tracefs_cpu_stop(r->tcpu);
}

int ckvmscope_reader_flush(struct ckvmscope_reader *r, struct ckvmscope_record *out,
                           struct ckvmscope_decode_stats *stats)
{
    uint32_t per_page = ckvmscope_max_records(r->subbuf_size);
    uint32_t total = 0;

    for (uint32_t i = 0; i < r->max_subbufs; i++) {
        int bytes = tracefs_cpu_flush(r->tcpu, r->page);
        if (bytes <= 0)
            break;
        total += (uint32_t)decode_page(r, bytes, out + total, per_page, stats);
    }
    return (int)total;
}

int ckvmscope_reader_flush_raw(struct ckvmscope_reader *r, void *buf)
{
    return tracefs_cpu_flush(r->tcpu, buf);
}
