/*
 * libFuzzer target: raw ring-buffer sub-buffers through ckvmscope_decode_subbuf, both walks.
 *
 * Input: byte 0 picks the decoder (bit 0 big-endian, bit 1 4-byte longs, bit 2 kbuffer walk forced, bit 3
 * layout fields taken from the input), byte 1 the sub-buffer size (16 << (b & 12) ... see below); with bit 3,
 * the next 21 bytes give offset (int16), size and signedness of the 7 fields of the kvm_exit layout. The
 * rest is cut into sub-buffers of that size, the last one short. Layouts come from the 6.18 x86 format
 * files (FORMATS_DIR, parsed by libtraceevent as the tool does).
 *
 * Checked beyond memory safety (ASan, UBSan): a decode returns -1 or at most cap records; and for
 * host-order 8-byte-long sub-buffers whose data size is a multiple of 4 (as every kernel writes them) the
 * inline walk and the kbuffer walk agree record for record, counter for counter, verdict for verdict.
 * (libtraceevent itself is not instrumented: ASan sees reads of ours, not kbuffer's.)
 */
#include "CKVMScope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FORMATS_DIR
#define FORMATS_DIR "Tests/Fixtures/formats/6.18-x86"
#endif

static const struct {
    const char *name;
    uint8_t role;
} events[] = {
    {"kvm_exit", CKVMSCOPE_ROLE_EXIT},   {"kvm_entry", CKVMSCOPE_ROLE_ENTRY},
    {"kvm_pio", CKVMSCOPE_ROLE_PIO},     {"kvm_mmio", CKVMSCOPE_ROLE_MMIO},
    {"kvm_userspace_exit", CKVMSCOPE_ROLE_USERSPACE_EXIT}, {"kvm_fpu", CKVMSCOPE_ROLE_COUNT},
};
#define NEVENTS (sizeof(events) / sizeof(events[0]))

static struct ckvmscope_event_layout layouts[NEVENTS];

static struct ckvmscope_field field(struct ckvmscope_formats *f, int id, const char *a, const char *b)
{
    struct ckvmscope_field out = {0};
    if (ckvmscope_formats_field(f, id, a, &out) == 0)
        return out;
    if (b && ckvmscope_formats_field(f, id, b, &out) == 0)
        return out;
    memset(&out, 0, sizeof(out));
    return out;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *dir = getenv("KVMSCOPE_FUZZ_FORMATS");
    if (!dir)
        dir = FORMATS_DIR;
    struct ckvmscope_formats *f = ckvmscope_formats_new();
    for (size_t i = 0; i < NEVENTS; i++) {
        char path[4096], text[65536];
        snprintf(path, sizeof(path), "%s/%s.format", dir, events[i].name);
        FILE *fp = fopen(path, "r");
        if (!fp) {
            perror(path);
            exit(1);
        }
        size_t n = fread(text, 1, sizeof(text), fp);
        fclose(fp);
        int id = ckvmscope_formats_parse(f, "kvm", text, n);
        if (id < 0) {
            fprintf(stderr, "%s: does not parse\n", path);
            exit(1);
        }
        struct ckvmscope_event_layout *l = &layouts[i];
        l->kernel_id = id;
        l->index = (uint16_t)i;
        l->role = events[i].role;
        switch (l->role) {
        case CKVMSCOPE_ROLE_EXIT:
            l->reason = field(f, id, "exit_reason", "esr_ec");
            l->isa_field = field(f, id, "isa", NULL);
            l->rip = field(f, id, "guest_rip", "vcpu_pc");
            l->detail = field(f, id, "info1", "ret");
            l->vcpu = field(f, id, "vcpu_id", NULL);
            break;
        case CKVMSCOPE_ROLE_ENTRY:
            l->vcpu = field(f, id, "vcpu_id", NULL);
            l->rip = field(f, id, "rip", "vcpu_pc");
            break;
        case CKVMSCOPE_ROLE_USERSPACE_EXIT:
            l->reason = field(f, id, "reason", NULL);
            l->aux = field(f, id, "errno", NULL);
            break;
        case CKVMSCOPE_ROLE_PIO:
            l->detail = field(f, id, "port", NULL);
            l->aux = field(f, id, "size", NULL);
            l->aux2 = field(f, id, "rw", NULL);
            break;
        case CKVMSCOPE_ROLE_MMIO:
            l->detail = field(f, id, "gpa", NULL);
            l->aux = field(f, id, "len", NULL);
            l->aux2 = field(f, id, "type", NULL);
            break;
        }
    }
    ckvmscope_formats_free(f);
    return 0;
}

/* Whether the walk of a sub-buffer (host order, 8-byte longs) meets a padding event whose length word is
 * 2^31 or more: kbuffer reads that length as a negative int and walks backwards into garbage (then the
 * decoder's bounds check rejects the sub-buffer), while the inline walk, like kbuffer for any other length
 * past the data, ends the sub-buffer there. */
static int has_huge_padding(const uint8_t *page, uint32_t len)
{
    if (len < 16)
        return 0;
    uint64_t commit;
    memcpy(&commit, page + 8, 8);
    uint64_t size = commit & ((1u << 27) - 1);
    if (size > len - 16)
        return 0;
    const uint8_t *p = page + 16, *end = page + 16 + size;
    while (end - p >= 8) {
        uint32_t h, w;
        memcpy(&h, p, 4);
        memcpy(&w, p + 4, 4);
        uint32_t type_len = h & 31;
        if (type_len == 29) {
            if (w >= 0x80000000u)
                return 1;
            if ((uint64_t)(end - p) < 4 + (uint64_t)w)
                return 0;
            p += 4 + (uint64_t)w;
        } else if (type_len >= 30) {
            p += 8;
        } else if (type_len == 0) {
            if (w < 4)
                return 0;
            p += 8 + (uint64_t)((w - 4 + 3) & ~3u);
        } else {
            p += 4 + (uint64_t)type_len * 4;
        }
    }
    return 0;
}

struct outcome {
    int aligned; /* every sub-buffer's committed size is a multiple of 4, as the kernel writes them */
    int huge_padding[64];
    int n[64];
    size_t subbufs;
    struct ckvmscope_record *records;
    size_t count;
    struct ckvmscope_decode_stats stats;
};

static void run(struct ckvmscope_decoder *d, const uint8_t *data, size_t size, uint32_t subbuf_size, uint32_t cap,
                struct outcome *o)
{
    struct ckvmscope_record *out = malloc((size_t)cap * sizeof(*out));
    memset(o, 0, sizeof(*o));
    o->records = malloc((size / 12 + 64) * sizeof(*o->records) * 2 + sizeof(*o->records));
    size_t at = 0;
    o->aligned = 1;
    while (at < size && o->subbufs < 64) {
        uint32_t len = size - at < subbuf_size ? (uint32_t)(size - at) : subbuf_size;
        /* Exactly len bytes in their own allocation, so ASan sees any read past the sub-buffer. */
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, data + at, len);
        if (len >= 16 && (copy[8] & 3) != 0)
            o->aligned = 0;
        o->huge_padding[o->subbufs] = has_huge_padding(copy, len);
        int n = ckvmscope_decode_subbuf(d, copy, len, 3, out, cap, &o->stats);
        free(copy);
        if (n < -1 || n > (int)cap)
            abort();
        o->n[o->subbufs++] = n;
        for (int i = 0; i < n; i++)
            o->records[o->count++] = out[i];
        at += len;
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t mode = data[0];
    int big = mode & 1, long_size = mode & 2 ? 4 : 8, kbuf = (mode >> 2) & 1;
    /* 16 bytes .. 64 KiB, the kernel's 4 KiB page most often. */
    static const uint32_t sizes[8] = {4096, 4096, 16, 24, 64, 512, 8192, 65536};
    uint32_t subbuf_size = sizes[data[1] & 7];
    uint32_t cap = data[1] & 8 ? 1 + (data[1] >> 4) : ckvmscope_max_records(subbuf_size);
    data += 2;
    size -= 2;
    struct ckvmscope_event_layout table[NEVENTS];
    memcpy(table, layouts, sizeof(table));
    if (mode & 8) {
        if (size < 21)
            return 0;
        struct ckvmscope_field *fields[7] = {&table[0].vcpu,   &table[0].reason, &table[0].isa_field, &table[0].rip,
                                             &table[0].detail, &table[0].aux,    &table[0].aux2};
        for (int i = 0; i < 7; i++) {
            int16_t off;
            memcpy(&off, data + 3 * i, 2);
            fields[i]->offset = off;
            fields[i]->size = data[3 * i + 2] & 15;
            fields[i]->is_signed = data[3 * i + 2] >> 7;
        }
        data += 21;
        size -= 21;
    }
    struct ckvmscope_decoder *d = ckvmscope_decoder_new(table, NEVENTS, long_size, big);
    ckvmscope_decoder_use_kbuffer(d, kbuf);
    struct outcome a;
    run(d, data, size, subbuf_size, cap, &a);
    ckvmscope_decoder_free(d);

    if (!big && long_size == 8) {
        /* The other walk must give the same records, counters and verdicts. */
        struct ckvmscope_decoder *e = ckvmscope_decoder_new(table, NEVENTS, long_size, big);
        ckvmscope_decoder_use_kbuffer(e, !kbuf);
        struct outcome b;
        run(e, data, size, subbuf_size, cap, &b);
        ckvmscope_decoder_free(e);
        /* Where the data's size is not a multiple of 4 the last bytes cannot hold an event header: the inline
         * walk stops there, kbuffer reads the header on past the committed size. Only whole data compares. */
        const struct outcome *in = kbuf ? &b : &a, *kb = kbuf ? &a : &b;
        if (a.aligned) {
            /* Sub-buffer by sub-buffer: same verdict and record count, up to the first one the inline walk
             * rejects and kbuffer takes (kbuffer reads a zero-length event as an end; the inline walk calls
             * it malformed, which is stricter, not a loss), or kbuffer rejects for a padding of 2^31 bytes
             * or more (see has_huge_padding). */
            size_t upto = in->subbufs, records = 0;
            for (size_t i = 0; i < in->subbufs; i++) {
                if ((in->n[i] < 0 && kb->n[i] >= 0) || (in->huge_padding[i] && kb->n[i] < 0)) {
                    upto = i;
                    break;
                }
                if (in->n[i] != kb->n[i]) {
                    fprintf(stderr, "fuzz: inline and kbuffer walks differ at sub-buffer %zu: %d / %d records\n", i,
                            in->n[i], kb->n[i]);
                    abort();
                }
                records += in->n[i] > 0 ? (size_t)in->n[i] : 0;
            }
            if (memcmp(in->records, kb->records, records * sizeof(*in->records)) != 0) {
                fprintf(stderr, "fuzz: inline and kbuffer walks give different records\n");
                abort();
            }
            /* A rejected sub-buffer counts only as corrupt (its ignored events are not counted by either walk). */
            struct ckvmscope_decode_stats x = in->stats, y = kb->stats;
            if (upto == in->subbufs && memcmp(&x, &y, sizeof(x)) != 0) {
                const struct ckvmscope_decode_stats *xs = &x, *ys = &y;
                fprintf(stderr,
                        "fuzz: inline and kbuffer walks count differently: records %llu/%llu ignored %llu/%llu missed %llu/%llu "
                        "unknown %llu/%llu subbufs %llu/%llu corrupt %llu/%llu\n",
                        (unsigned long long)xs->records, (unsigned long long)ys->records,
                        (unsigned long long)xs->ignored, (unsigned long long)ys->ignored,
                        (unsigned long long)xs->missed_events, (unsigned long long)ys->missed_events,
                        (unsigned long long)xs->missed_unknown, (unsigned long long)ys->missed_unknown,
                        (unsigned long long)xs->subbufs, (unsigned long long)ys->subbufs,
                        (unsigned long long)xs->corrupt, (unsigned long long)ys->corrupt);
                abort();
            }
        }
        free(b.records);
    }
    free(a.records);
    return 0;
}
