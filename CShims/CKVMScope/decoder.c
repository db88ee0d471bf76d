/*
 * The sub-buffer decoder: walks one ring-buffer sub-buffer and turns each event that is in the caller's
 * table into a fixed-size record. One call per sub-buffer; nothing is allocated here. Sub-buffers in the
 * host's own layout are walked inline; any other layout goes through libtraceevent's kbuffer, which is
 * also the reference the tests hold the inline walk to.
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
    int big_endian;
    uint8_t pending_flags; /* a loss flag not yet carried by a record */
    uint8_t force_kbuffer; /* tests: walk with kbuffer even where the native walk applies */
    int long_size;
    size_t count;
    struct ckvmscope_event_layout *layouts;
    uint16_t slot[CKVMSCOPE_ID_SLOTS]; /* kernel id -> layouts index (the first layout of that id) */
    uint16_t *next;                    /* layouts index -> next layout of the same kernel id */
    uint8_t size_matched;              /* some layout has match_size (the test injection path) */
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
    d->big_endian = big_endian;
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
        if (layouts[i].match_size)
            d->size_matched = 1;
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

/* A field of an event's payload; `swap` is a constant 0 in the native walk, so no byte-order test per field. */
static inline __attribute__((always_inline)) uint64_t get_field_swapped(int swap, const uint8_t *data, uint32_t size,
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
        if (swap)
            x = __builtin_bswap16(x);
        return f.is_signed ? (uint64_t)(int64_t)(int16_t)x : x;
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        if (swap)
            x = __builtin_bswap32(x);
        return f.is_signed ? (uint64_t)(int64_t)(int32_t)x : x;
    }
    case 8:
        memcpy(&v, p, 8);
        return swap ? __builtin_bswap64(v) : v;
    default:
        return 0;
    }
}

/* The same with the decoder's byte order (for reads outside emit()). */
static inline __attribute__((unused)) uint64_t get_field(const struct ckvmscope_decoder *d, const uint8_t *data,
                                                         uint32_t size, struct ckvmscope_field f)
{
    return get_field_swapped(d->swap, data, size, f);
}

/* The sub-buffer header's `commit` word: data size in the low bits, loss flags on top (as the kernel's
 * RB_MISSED_EVENTS / RB_MISSED_STORED and kbuffer's COMMIT_MASK). */
#define CKVMSCOPE_COMMIT_MASK ((1u << 27) - 1)
#define CKVMSCOPE_MISSED_EVENTS (1ull << 31)
#define CKVMSCOPE_MISSED_STORED (1ull << 30)
/* Event header type_len values with no payload of ours. */
#define CKVMSCOPE_TYPE_PADDING 29
#define CKVMSCOPE_TYPE_TIME_EXTEND 30
#define CKVMSCOPE_TYPE_TIME_STAMP 31
#define CKVMSCOPE_TS_MSB (0xf8ull << 56)

static inline uint64_t read_word(const struct ckvmscope_decoder *d, const uint8_t *p, int size)
{
    if (size == 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        return d->swap ? __builtin_bswap64(v) : v;
    }
    uint32_t v;
    memcpy(&v, p, 4);
    return d->swap ? __builtin_bswap32(v) : v;
}

/*
 * One event's payload into a record, if the table has it. Returns 1 when a record was written.
 * size_matched is a constant at every call site: the walks are instantiated twice, and only the decoders of
 * the test injection path (layouts told apart by payload size) take the chain; users' decoders never look.
 */
static inline __attribute__((always_inline)) int emit(struct ckvmscope_decoder *d, const uint8_t *data,
                                                      uint32_t esize, uint64_t ts, uint16_t cpu, uint8_t *flags,
                                                      struct ckvmscope_record *r,
                                                      struct ckvmscope_decode_stats *stats, const int size_matched,
                                                      const int native)
{
    if (esize < 8)
        return 0;
    const int swap = native ? 0 : d->swap;
    uint16_t type;
    int32_t tid;
    memcpy(&type, data, 2);
    memcpy(&tid, data + 4, 4);
    if (swap) {
        type = (uint16_t)read_word(d, data, 4);
        tid = (int32_t)read_word(d, data + 4, 4);
    }
    uint16_t slot = d->slot[type];
    if (size_matched) {
        while (slot != CKVMSCOPE_NO_SLOT && d->layouts[slot].match_size && d->layouts[slot].match_size != esize)
            slot = d->next[slot];
    }
    if (slot == CKVMSCOPE_NO_SLOT) {
        stats->ignored++;
        return 0;
    }
    const struct ckvmscope_event_layout *l = &d->layouts[slot];
    r->ts = ts;
    r->tid = tid;
    r->event = l->index;
    r->cpu = cpu;
    r->flags = *flags;
    *flags = 0;
    r->rip = get_field_swapped(swap, data, esize, l->rip);
    r->detail = get_field_swapped(swap, data, esize, l->detail);
    r->reason = (uint32_t)get_field_swapped(swap, data, esize, l->reason);
    r->vcpu = l->vcpu.size ? (uint32_t)get_field_swapped(swap, data, esize, l->vcpu) : CKVMSCOPE_NO_VCPU;
    r->aux = (uint32_t)get_field_swapped(swap, data, esize, l->aux);
    r->aux2 = (uint16_t)get_field_swapped(swap, data, esize, l->aux2);
    r->isa = l->isa_field.size ? (uint8_t)get_field_swapped(swap, data, esize, l->isa_field) : l->isa;
    return 1;
}

/*
 * The walk itself, for sub-buffers in the host's byte order with 8-byte longs (every x86_64 and arm64
 * trace): each event header read inline, no call per event. Same semantics as kbuffer's walk, which stays
 * the path for every other layout and the reference the tests compare this one with.
 * Returns records written, or -1 when an event runs past the data or a padding is not a whole number of words.
 */
static inline __attribute__((always_inline)) int walk_native(struct ckvmscope_decoder *d, const uint8_t *data,
                                                             uint32_t size, uint64_t ts, uint16_t cpu, uint8_t *flags,
                                                             struct ckvmscope_record *out, uint32_t cap,
                                                             struct ckvmscope_decode_stats *stats,
                                                             const int size_matched)
{
    const uint8_t *p = data, *end = data + size;
    uint32_t n = 0;

    while (end - p >= 4 && n < cap) {
        uint32_t header;
        memcpy(&header, p, 4);
        uint32_t type_len = header & 31;
        uint64_t delta = header >> 5;
        uint32_t word = 0;
        if (type_len >= CKVMSCOPE_TYPE_PADDING || type_len == 0) {
            if (end - p < 8)
                return -1;
            memcpy(&word, p + 4, 4);
        }
        const uint8_t *payload;
        uint32_t length;
        switch (type_len) {
        case CKVMSCOPE_TYPE_PADDING:
            /* The kernel's paddings (discarded events, a page's tail) are whole 4-byte words; any other
             * length would leave the walk between headers, where kbuffer reads garbage as events. */
            if (word & 3)
                return -1;
            /* A discarded event keeps its time delta and the next event's delta counts from it: add it, as
             * kbuffer (and so trace-cmd) does. A page's tail padding has delta 0. */
            ts += delta;
            p += 4 + (uint64_t)word;
            continue;
        case CKVMSCOPE_TYPE_TIME_EXTEND:
            ts += ((uint64_t)word << 27) + delta;
            p += 8;
            continue;
        case CKVMSCOPE_TYPE_TIME_STAMP:
            ts = (((uint64_t)word << 27) + delta) | (ts & CKVMSCOPE_TS_MSB);
            p += 8;
            continue;
        case 0:
            if (word < 4)
                return -1;
            length = (word - 4 + 3) & ~3u;
            payload = p + 8;
            break;
        default:
            length = type_len * 4;
            payload = p + 4;
            break;
        }
        ts += delta;
        if ((uint64_t)(end - payload) < length)
            return -1;
        p = payload + length;
        n += (uint32_t)emit(d, payload, length, ts, cpu, flags, &out[n], stats, size_matched, 1);
    }
    return (int)n;
}

static int walk_native_plain(struct ckvmscope_decoder *d, const uint8_t *data, uint32_t size, uint64_t ts,
                             uint16_t cpu, uint8_t *flags, struct ckvmscope_record *out, uint32_t cap,
                             struct ckvmscope_decode_stats *stats)
{
    return walk_native(d, data, size, ts, cpu, flags, out, cap, stats, 0);
}

static int walk_native_size_matched(struct ckvmscope_decoder *d, const uint8_t *data, uint32_t size, uint64_t ts,
                                    uint16_t cpu, uint8_t *flags, struct ckvmscope_record *out, uint32_t cap,
                                    struct ckvmscope_decode_stats *stats)
{
    return walk_native(d, data, size, ts, cpu, flags, out, cap, stats, 1);
}

/*
 * Whether kbuffer can step safely from data offset `at` to the next data event: the same steps as its walk
 * (libtraceevent 1.7) over the paddings and time stamps in between, without reading. kbuffer reads a
 * padding's length as an int — 2^31 or more sends it back to an event it has walked (forever) or before the
 * sub-buffer — and reads an event's header and length word without checking that they lie inside the page.
 * Checked before each step kbuffer takes (not over the whole sub-buffer: a walk that stops at `cap` records
 * never gets further). A data event's own length is checked where kbuffer returns it.
 */
static int kbuffer_step_is_safe(const struct ckvmscope_decoder *d, const uint8_t *data, uint64_t size, uint64_t room,
                                uint64_t at)
{
    while (at < size) {
        if (at + 4 > room)
            return 0;
        uint32_t h = (uint32_t)read_word(d, data + at, 4);
        uint32_t type_len = d->big_endian ? h >> 27 : h & 31;
        if (type_len == 0 || type_len >= CKVMSCOPE_TYPE_PADDING) {
            if (at + 8 > room)
                return 0;
        }
        if (type_len < CKVMSCOPE_TYPE_PADDING)
            return 1; /* a data event: kbuffer stops here */
        if (type_len == CKVMSCOPE_TYPE_PADDING) {
            uint32_t w = (uint32_t)read_word(d, data + at + 4, 4);
            if (w >= 0x80000000u)
                return 0;
            at += 4 + (uint64_t)w;
        } else {
            at += 8;
        }
    }
    return 1;
}

/* The reference walk through libtraceevent's kbuffer (any byte order and long size). */
static int walk_kbuffer(struct ckvmscope_decoder *d, const void *subbuf, uint32_t subbuf_size, uint16_t cpu,
                        uint8_t *flags, struct ckvmscope_record *out, uint32_t cap,
                        struct ckvmscope_decode_stats *stats)
{
    uint32_t header = 8 + (uint32_t)d->long_size;
    const uint8_t *start = (const uint8_t *)subbuf + header;
    uint64_t size = read_word(d, (const uint8_t *)subbuf + 8, d->long_size) & CKVMSCOPE_COMMIT_MASK;
    uint64_t room = subbuf_size - header;
    if (!kbuffer_step_is_safe(d, start, size, room, 0))
        return -1;
    if (kbuffer_load_subbuffer(d->kbuf, (void *)subbuf) < 0)
        return -1;
    uint32_t n = 0;
    unsigned long long ts = 0;
    void *ev = kbuffer_read_event(d->kbuf, &ts);
    while (ev && n < cap) {
        int esize = kbuffer_event_size(d->kbuf);
        const uint8_t *data = ev;
        /* A corrupt length must not send field reads past the sub-buffer. */
        if (esize < 0 || data < (const uint8_t *)subbuf || data + esize > (const uint8_t *)subbuf + subbuf_size)
            return -1;
        n += (uint32_t)emit(d, data, (uint32_t)esize, ts, cpu, flags, &out[n], stats, d->size_matched, 0);
        if (n == cap)
            break;
        /* kbuffer's next step starts where this event's data ends. */
        if (!kbuffer_step_is_safe(d, start, size, room, (uint64_t)(data + esize - start)))
            return -1;
        ev = kbuffer_next_event(d->kbuf, &ts);
    }
    return (int)n;
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
 * Returns the number of records written, or -1 if the sub-buffer is malformed (its header claims more data
 * than it has, or an event runs past the data); nothing past subbuf_size is ever read.
 */
int ckvmscope_decode_subbuf(struct ckvmscope_decoder *d, const void *subbuf, uint32_t subbuf_size, uint16_t cpu,
                            struct ckvmscope_record *out, uint32_t cap, struct ckvmscope_decode_stats *stats)
{
    const uint8_t *page = subbuf;
    uint32_t header = 8 + (uint32_t)d->long_size;
    if (subbuf_size < header) {
        stats->corrupt++;
        return -1;
    }
    uint64_t commit = read_word(d, page + 8, d->long_size);
    uint64_t data_size = commit & CKVMSCOPE_COMMIT_MASK;
    /* The lost-events count, when stored, follows the data: it must fit too. */
    uint64_t stored = (commit & CKVMSCOPE_MISSED_EVENTS) && (commit & CKVMSCOPE_MISSED_STORED) ? d->long_size : 0;
    if (data_size + stored > subbuf_size - header) {
        stats->corrupt++;
        return -1;
    }
    stats->subbufs++;
    /* A loss before a sub-buffer that holds none of our events marks the next one we decode. */
    uint8_t flags = d->pending_flags;
    if (commit & CKVMSCOPE_MISSED_EVENTS) {
        if (stored)
            stats->missed_events += read_word(d, page + header + data_size, d->long_size);
        else
            stats->missed_unknown++;
        flags = CKVMSCOPE_REC_AFTER_LOSS;
    }

    uint64_t ignored = stats->ignored;
    int n;
    if (!d->swap && d->long_size == 8 && !d->force_kbuffer)
        n = (d->size_matched ? walk_native_size_matched : walk_native_plain)(d, page + header, (uint32_t)data_size,
                                                                              read_word(d, page, 8), cpu, &flags,
                                                                              out, cap, stats);
    else
        n = walk_kbuffer(d, subbuf, subbuf_size, cpu, &flags, out, cap, stats);
    if (n < 0) {
        /* A malformed sub-buffer counts once, as corrupt: none of its events count as decoded or ignored,
         * whichever walk noticed the damage and wherever it did. */
        stats->ignored = ignored;
        stats->corrupt++;
        return -1;
    }
    d->pending_flags = flags;
    stats->records += (uint64_t)n;
    return n;
}

void ckvmscope_decoder_use_kbuffer(struct ckvmscope_decoder *d, int on)
{
    d->force_kbuffer = on ? 1 : 0;
}
