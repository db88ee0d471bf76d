/*
 * The sub-buffer decoder: walks one ring-buffer sub-buffer with kbuffer and turns each event that is
 * in the caller's table into a fixed-size record. One call per sub-buffer; nothing is allocated here.
 */
#include "CKVMScope.h"

#include <kbuffer.h>
#include <stdlib.h>
#include <string.h>

#define CKVMSCOPE_ID_SLOTS 65536 /* common_type is an unsigned short */
#define CKVMSCOPE_NO_SLOT 0xffff

struct ckvmscope_decoder {
    struct kbuffer *kbuf;
    int swap;
    uint8_t pending_flags; /* a loss flag not yet carried by a record */
    int long_size;
    size_t count;
    struct ckvmscope_event_layout *layouts;
    uint16_t slot[CKVMSCOPE_ID_SLOTS]; /* kernel id -> layouts index (the first layout of that id) */
    uint16_t *next;                    /* layouts index -> next layout of the same kernel id */
};

struct ckvmscope_decoder *ckvmscope_decoder_new(const struct ckvmscope_event_layout *layouts, size_t count,
                                                int long_size, int big_endian)
{
    struct ckvmscope_decoder *d = calloc(1, sizeof(*d));
    if (!d)
        goto error;
    d->layouts = calloc(count ? count : 1, sizeof(*layouts));
    if (!d->layouts)
        goto error_free;
    d->kbuf = kbuffer_alloc(long_size == 4 ? KBUFFER_LSIZE_4 : KBUFFER_LSIZE_8,
                            big_endian ? KBUFFER_ENDIAN_BIG : KBUFFER_ENDIAN_LITTLE);
    if (!d->kbuf)
        goto error_layouts;
    d->next = malloc((count ? count : 1) * sizeof(*d->next));
    if (!d->next)
        goto error_kbuf;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    d->swap = big_endian;
#else
    d->swap = !big_endian;
#endif
    memcpy(d->layouts, layouts, count * sizeof(*layouts));
    d->count = count;
    d->long_size = long_size == 4 ? 4 : 8;
    memset(d->slot, 0xff, sizeof(d->slot));
    for (size_t i = 0; i < count; i++) {
        d->next[i] = CKVMSCOPE_NO_SLOT;
        if (layouts[i].kernel_id < 0 || layouts[i].kernel_id >= CKVMSCOPE_ID_SLOTS)
            continue;
        /* Layouts sharing a kernel id (size-matched aliases) are chained in table order. */
        uint16_t *link = &d->slot[layouts[i].kernel_id];
        while (*link != CKVMSCOPE_NO_SLOT)
            link = &d->next[*link];
        *link = (uint16_t)i;
    }
    return d;

error_kbuf:
    kbuffer_free(d->kbuf);
error_layouts:
    free(d->layouts);
error_free:
    free(d);
error:
    return NULL;
}

void ckvmscope_decoder_free(struct ckvmscope_decoder *d)
{
    if (!d)
        return;
    kbuffer_free(d->kbuf);
    free(d->next);
    free(d->layouts);
    free(d);
}

uint32_t ckvmscope_max_records(uint32_t subbuf_size)
{
    /* The smallest event is a 4-byte header plus an 8-byte common header. */
    return subbuf_size / 12 + 1;
}

static inline uint64_t get_field(const struct ckvmscope_decoder *d, const uint8_t *data, uint32_t size,
                                 struct ckvmscope_field f)
{
    if (f.size == 0 || (uint32_t)f.offset + f.size > size)
        return 0;
    const uint8_t *p = data + f.offset;
    uint64_t v = 0;
    switch (f.size) {
    case 1:
        return f.is_signed ? (uint64_t)(int64_t)(int8_t)p[0] : p[0];
    case 2: {
        uint16_t x;
        memcpy(&x, p, 2);
        if (d->swap)
            x = __builtin_bswap16(x);
        return f.is_signed ? (uint64_t)(int64_t)(int16_t)x : x;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        if (d->swap)
            x = __builtin_bswap32(x);
        return f.is_signed ? (uint64_t)(int64_t)(int32_t)x : x;
    }
    case 8:
        memcpy(&v, p, 8);
        return d->swap ? __builtin_bswap64(v) : v;
    default:
        return 0;
    }
}

/**
 * ckvmscope_decode_subbuf - decode one ring-buffer sub-buffer
 * @d: the decoder (not shared between threads)
 * @subbuf: header and data of the sub-buffer
 * @subbuf_size: bytes readable at subbuf
 * @cpu: the CPU the sub-buffer came from, written to each record
 * @out: room for the records
 * @cap: how many records fit in out
 * @stats: accumulated counters
 *
 * Returns the number of records written, or -1 if the sub-buffer's header claims more data than it has.
 */
int ckvmscope_decode_subbuf(struct ckvmscope_decoder *d, const void *subbuf, uint32_t subbuf_size, uint16_t cpu,
                            struct ckvmscope_record *out, uint32_t cap, struct ckvmscope_decode_stats *stats)
{
    /* Header: a u64 timestamp, then `commit` (a long) whose low 30 bits are the data size and whose
     * top bits flag missed events. Check it before kbuffer trusts it. */
    uint32_t header = 8 + (uint32_t)d->long_size;
    if (subbuf_size < header) {
        stats->corrupt++;
        return -1;
    }
    uint64_t commit = 0;
    if (d->long_size == 8) {
        memcpy(&commit, (const uint8_t *)subbuf + 8, 8);
        if (d->swap)
            commit = __builtin_bswap64(commit);
    } else {
        uint32_t c32;
        memcpy(&c32, (const uint8_t *)subbuf + 8, 4);
        commit = d->swap ? __builtin_bswap32(c32) : c32;
    }
    uint64_t data_size = commit & ((1ULL << 30) - 1);
    if (data_size > subbuf_size - header) {
        stats->corrupt++;
        return -1;
    }
    if (kbuffer_load_subbuffer(d->kbuf, (void *)subbuf) < 0) {
        stats->corrupt++;
        return -1;
    }
    stats->subbufs++;
    int missed = kbuffer_missed_events(d->kbuf);
    /* A loss before a sub-buffer that holds none of our events marks the next one we decode. */
    uint8_t flags = d->pending_flags;
    if (missed > 0) {
        stats->missed_events += (uint64_t)missed;
        flags = CKVMSCOPE_REC_AFTER_LOSS;
    } else if (missed < 0) {
        stats->missed_unknown++;
        flags = CKVMSCOPE_REC_AFTER_LOSS;
    }

    uint32_t n = 0;
    unsigned long long ts = 0;
    for (void *ev = kbuffer_read_event(d->kbuf, &ts); ev; ev = kbuffer_next_event(d->kbuf, &ts)) {
        int esize = kbuffer_event_size(d->kbuf);
        if (esize < 8)
            continue;
        const uint8_t *data = ev;
        /* A corrupt length must not send field reads past the sub-buffer. */
        if (data < (const uint8_t *)subbuf || data + esize > (const uint8_t *)subbuf + subbuf_size) {
            stats->corrupt++;
            return -1;
        }
        uint16_t type;
        memcpy(&type, data, 2);
        if (d->swap)
            type = __builtin_bswap16(type);
        uint16_t slot = d->slot[type];
        while (slot != CKVMSCOPE_NO_SLOT && d->layouts[slot].match_size && d->layouts[slot].match_size != esize)
            slot = d->next[slot];
        if (slot == CKVMSCOPE_NO_SLOT) {
            stats->ignored++;
            continue;
        }
        if (n >= cap)
            break;
        const struct ckvmscope_event_layout *l = &d->layouts[slot];
        struct ckvmscope_record *r = &out[n++];
        int32_t pid;
        memcpy(&pid, data + 4, 4);
        if (d->swap)
            pid = (int32_t)__builtin_bswap32((uint32_t)pid);
        r->ts = ts;
        r->tid = pid;
        r->event = l->index;
        r->cpu = cpu;
        r->flags = flags;
        flags = 0;
        r->rip = get_field(d, data, (uint32_t)esize, l->rip);
        r->detail = get_field(d, data, (uint32_t)esize, l->detail);
        r->reason = (uint32_t)get_field(d, data, (uint32_t)esize, l->reason);
        r->vcpu = l->vcpu.size ? (uint32_t)get_field(d, data, (uint32_t)esize, l->vcpu) : CKVMSCOPE_NO_VCPU;
        r->aux = (uint32_t)get_field(d, data, (uint32_t)esize, l->aux);
        r->aux2 = (uint16_t)get_field(d, data, (uint32_t)esize, l->aux2);
        r->isa = l->isa_field.size ? (uint8_t)get_field(d, data, (uint32_t)esize, l->isa_field) : l->isa;
    }
    d->pending_flags = flags;
    stats->records += n;
    return (int)n;
}
