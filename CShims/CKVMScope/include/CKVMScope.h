/*
 * CKVMScope — the C shim of kvmscope.
 *
 * The tracing shim. Everything here exists for one of two reasons: the kernel's ring-buffer pages are
 * walked (inline, or with libtraceevent's kbuffer), and tracefs instances are driven through libtracefs.
 * Only POD types cross into Swift; handles are opaque. Every exported symbol is prefixed `ckvmscope_`.
 * Only the Swift module KVMSources imports this header. The KVM guest (CKVMGuest) and the terminal
 * (CTerminal) have shims of their own.
 */
#ifndef CKVMSCOPE_H
#define CKVMSCOPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- records */

#define CKVMSCOPE_NO_VCPU 0xffffffffu

/* What the decoder pulls out of an event. Fields of each role are looked up by name. */
enum {
    CKVMSCOPE_ROLE_COUNT = 0,          /* counted only */
    CKVMSCOPE_ROLE_EXIT = 1,           /* kvm_exit: reason, isa, rip, detail=info1, vcpu */
    CKVMSCOPE_ROLE_ENTRY = 2,          /* kvm_entry: vcpu, rip */
    CKVMSCOPE_ROLE_USERSPACE_EXIT = 3, /* kvm_userspace_exit: reason, aux=errno */
    CKVMSCOPE_ROLE_PIO = 4,            /* kvm_pio: detail=port, aux=size, aux2=rw */
    CKVMSCOPE_ROLE_MMIO = 5,           /* kvm_mmio: detail=gpa, aux=len, aux2=type */
    CKVMSCOPE_ROLE_THREAD_EXIT = 6,    /* sched_process_exit: detail=pid, aux=group_dead */
};

/* isa of an exit record (matches the kernel's KVM_ISA_VMX/KVM_ISA_SVM; arm64 is ours). */
enum { CKVMSCOPE_ISA_UNKNOWN = 0, CKVMSCOPE_ISA_VMX = 1, CKVMSCOPE_ISA_SVM = 2, CKVMSCOPE_ISA_ARM64 = 3 };

/* Record flags. */
#define CKVMSCOPE_REC_AFTER_LOSS 0x01u /* the kernel dropped events on this CPU just before this record */

/* One decoded event: fixed size, no pointers. Filled by the decoder in batches. */
struct ckvmscope_record {
    uint64_t ts;     /* trace clock, ns */
    uint64_t rip;    /* exit: guest_rip / vcpu_pc; entry: rip / vcpu_pc */
    uint64_t detail; /* exit: info1 (arm64: ret); pio: port; mmio: gpa */
    int32_t tid;     /* common_pid: the vCPU thread */
    uint16_t event;  /* index into the caller's event table (not the kernel id) */
    uint16_t cpu;    /* host CPU whose buffer held the event */
    uint32_t reason; /* exit: exit_reason raw (arm64: esr_ec); userspace exit: KVM_EXIT_* */
    uint32_t vcpu;   /* vcpu_id, or CKVMSCOPE_NO_VCPU when the event has none */
    uint32_t aux;    /* userspace exit: errno; pio: size; mmio: len */
    uint16_t aux2;   /* pio: rw; mmio: type */
    uint8_t isa;     /* exit: CKVMSCOPE_ISA_* */
    uint8_t flags;   /* CKVMSCOPE_REC_* */
};
_Static_assert(sizeof(struct ckvmscope_record) == 48, "record is 48 bytes");

/* Where a field sits in an event's payload; size 0 means the event has no such field. */
struct ckvmscope_field {
    int16_t offset;
    uint8_t size;
    uint8_t is_signed;
};

/* How to decode one kernel event. Built once at start from format files. */
struct ckvmscope_event_layout {
    int32_t kernel_id; /* common_type */
    uint16_t index;    /* written to record.event */
    uint8_t role;      /* CKVMSCOPE_ROLE_* */
    uint8_t isa;       /* constant isa for exit records when the event has no isa field */
    struct ckvmscope_field vcpu, reason, isa_field, rip, detail, aux, aux2;
    /* Test hook (several events aliased to ftrace:raw_data): when non-zero, this layout takes only events whose
     * payload is match_size bytes (as kbuffer reports it, rounded up to 4); the next layout of the same kernel
     * id is tried otherwise. 0 = any size (every real event). */
    uint16_t match_size;
};

/* ---------------------------------------------------------------- formats (libtraceevent) */

struct ckvmscope_formats;

struct ckvmscope_formats *ckvmscope_formats_new(void);
void ckvmscope_formats_free(struct ckvmscope_formats *f);
/* Formats from files (a trace.dat's own bytes): parse each in a child process first, and refuse it when the
 * child crashes or takes over 2 s (libtraceevent 1.7 crashes on some malformed print fmts). */
void ckvmscope_formats_isolate(struct ckvmscope_formats *f, int on);
/* Parse one event `format` file. Returns the event's kernel id, or -1 if it does not parse. */
int ckvmscope_formats_parse(struct ckvmscope_formats *f, const char *system, const char *text, size_t len);
/* Look a field up by name in the event with that kernel id. Returns 0, or -1 when absent. */
int ckvmscope_formats_field(struct ckvmscope_formats *f, int kernel_id, const char *name,
                            struct ckvmscope_field *out);
/* The name of a parsed event (libtraceevent's copy), or NULL. */
const char *ckvmscope_formats_name(struct ckvmscope_formats *f, int kernel_id);
/* Every field of a parsed event (common fields first): name, offset, size. Returns the count, or -1. */
typedef void (*ckvmscope_field_fn)(const char *name, int offset, int size, void *context);
int ckvmscope_formats_fields(struct ckvmscope_formats *f, int kernel_id, ckvmscope_field_fn fn, void *context);

/* The symbol tables of an event's print fmt (__print_symbolic, __print_flags and their _u64 forms), as
 * libtraceevent parsed them into tep_event->print_fmt.args: the exit-reason names come from these. */
enum { CKVMSCOPE_PRINT_SYMBOLIC = 1, CKVMSCOPE_PRINT_FLAGS = 2 };

/* One { value, "name" } pair. `value` is the kernel's constant as 64 bits (-1 reads as all ones). */
struct ckvmscope_print_symbol {
    uint64_t value;
    const char *name;
};

/* One table. The strings and `symbols` are valid only during the callback that receives them. */
struct ckvmscope_print_table {
    int kind;                                    /* CKVMSCOPE_PRINT_SYMBOLIC or CKVMSCOPE_PRINT_FLAGS */
    const char *field;                           /* first field the printed expression reads, or "" */
    const char *expression;                      /* that expression as C: "REC->exit_reason & 0xffff" */
    const char *delim;                           /* __print_flags' separator; "" for symbolic tables */
    const struct ckvmscope_print_symbol *symbols; /* in table order; entries whose value is not a number are left out */
    size_t count;
};

typedef void (*ckvmscope_print_table_fn)(const struct ckvmscope_print_table *table, void *ctx);

/* Calls `fn` once per table in the print fmt of the event with that kernel id, in the order the tables
 * appear (tables nested in ?:, operators and other print helpers included). Returns the number of tables,
 * or -1 when there is no such event or memory runs out. */
int ckvmscope_formats_print_tables(struct ckvmscope_formats *f, int kernel_id, ckvmscope_print_table_fn fn,
                                   void *ctx);

/* ---------------------------------------------------------------- sub-buffer decoder (kbuffer) */

struct ckvmscope_decoder;

struct ckvmscope_decode_stats {
    uint64_t records;        /* records written */
    uint64_t ignored;        /* events whose id is not in the table (counted, not decoded) */
    uint64_t missed_events;  /* events the kernel reported lost before a sub-buffer (exact counts) */
    uint64_t missed_unknown; /* sub-buffers flagged "events lost" without a count */
    uint64_t subbufs;        /* sub-buffers walked */
    uint64_t corrupt;        /* sub-buffers rejected as malformed */
};

/* long_size: 4 or 8 (the traced kernel's); big_endian: 0 or 1. The table is copied. */
struct ckvmscope_decoder *ckvmscope_decoder_new(const struct ckvmscope_event_layout *layouts, size_t count,
                                                int long_size, int big_endian);
void ckvmscope_decoder_free(struct ckvmscope_decoder *d);
/* Most records one sub-buffer of that size can hold. */
uint32_t ckvmscope_max_records(uint32_t subbuf_size);
/* Decode one sub-buffer (header + data, as read from trace_pipe_raw or a trace.dat page).
 * A decoder serves one CPU's stream: a loss reported before a sub-buffer with none of the table's events
 * is carried to the next record it decodes (CKVMSCOPE_REC_AFTER_LOSS).
 * Returns the number of records written to out (at most cap), or -1 when the sub-buffer is malformed. */
/* Tests: walk with libtraceevent's kbuffer even where the inline walk applies (on != 0). */
void ckvmscope_decoder_use_kbuffer(struct ckvmscope_decoder *d, int on);
int ckvmscope_decode_subbuf(struct ckvmscope_decoder *d, const void *subbuf, uint32_t subbuf_size, uint16_t cpu,
                            struct ckvmscope_record *out, uint32_t cap, struct ckvmscope_decode_stats *stats);

/* ---------------------------------------------------------------- tracefs instances */

/* The tracefs mount point, mounting it at /sys/kernel/tracing when needed. NULL when impossible. */
const char *ckvmscope_tracing_dir(void);

/* A private tracefs instance, owned by its handle (opaque). */
struct ckvmscope_instance;

/* Create instance `name`, sized buffer_kb per CPU, with the given trace clock ("mono", "local"...), tracing
 * off. NULL with a one-line message in err on failure (nothing is left behind then). */
struct ckvmscope_instance *ckvmscope_instance_create(const char *name, uint32_t buffer_kb, const char *clock,
                                                     char *err, size_t errlen);
/* A handle on an existing instance (left by a dead recording), owned as a created one. NULL with errno. */
struct ckvmscope_instance *ckvmscope_instance_attach(const char *name);
const char *ckvmscope_instance_name(const struct ckvmscope_instance *inst);
/* Enable one event (system, event) in the instance; event NULL enables the whole system. 0, or -1 (errno). */
int ckvmscope_instance_enable(struct ckvmscope_instance *inst, const char *system, const char *event);
int ckvmscope_instance_tracing_on(struct ckvmscope_instance *inst, int on);
/* Wake a CPU's reader only once its buffer is this full (buffer_percent, 0..100; 0: on any data). 0 or -1. */
int ckvmscope_instance_wake_percent(struct ckvmscope_instance *inst, uint32_t percent);
/* The record-tgid option: the kernel keeps tid -> tgid of traced threads. */
int ckvmscope_instance_record_tgid(struct ckvmscope_instance *inst);
/* Trace only pid and what it forks from now on (set_event_pid + event-fork). */
int ckvmscope_instance_follow_pid(struct ckvmscope_instance *inst, int pid);
/* The same, keeping the processes already followed (set_event_pid appended to). */
int ckvmscope_instance_follow_another_pid(struct ckvmscope_instance *inst, int pid);
/* Tracing off, events disabled, instance removed (after its readers are closed), handle freed.
 * 0, or -1 with errno when tracefs would not remove it. */
int ckvmscope_instance_destroy(struct ckvmscope_instance *inst);
/* Remove an instance by name (left by a dead process or another tool). 0 also when it does not exist. */
int ckvmscope_instance_remove(const char *name);

/* ---------------------------------------------------------------- per-CPU live reader (libtracefs) */

struct ckvmscope_reader;

/* Open cpu's trace_pipe_raw of the instance. The decoder is used only by this reader. NULL with errno. */
struct ckvmscope_reader *ckvmscope_reader_open(struct ckvmscope_instance *inst, int cpu,
                                               struct ckvmscope_decoder *decoder, uint32_t max_subbufs_per_read);
/* A reader over any file descriptor that reads like trace_pipe_raw (sub-buffers of subbuf_size bytes): a
 * saved ring-buffer dump or a pipe a test writes into. The reader takes the fd over. NULL with errno. */
struct ckvmscope_reader *ckvmscope_reader_open_fd(int fd, uint32_t subbuf_size, int cpu,
                                                  struct ckvmscope_decoder *decoder, uint32_t max_subbufs_per_read);
void ckvmscope_reader_close(struct ckvmscope_reader *r);
/* Records `out` must hold for one read call. */
uint32_t ckvmscope_reader_capacity(struct ckvmscope_reader *r);
uint32_t ckvmscope_reader_subbuf_size(struct ckvmscope_reader *r);
/* Wait until the buffer has data (1; for trace_pipe_raw: until it crosses the instance's watermark),
 * timeout_ms passes (0; -1 waits forever) or the reader is woken by ckvmscope_reader_stop/wake (-1; the wake
 * is consumed). */
int ckvmscope_reader_wait(struct ckvmscope_reader *r, int timeout_ms);
/* Read up to max_subbufs_per_read sub-buffers (waiting for the first one unless nonblock) and decode them.
 * From trace_pipe_raw only full sub-buffers, the ones the kernel's writer has left (spliced through a pipe):
 * the reader never chases the writer; ckvmscope_reader_catch_up takes the partial one when asked.
 * Returns records written, 0 when nothing was there (or the reader was stopped), -1 on error (errno). */
int ckvmscope_reader_read(struct ckvmscope_reader *r, struct ckvmscope_record *out, int nonblock,
                          struct ckvmscope_decode_stats *stats);
/* Read one raw full sub-buffer into buf (ckvmscope_reader_subbuf_size bytes) without decoding. Returns bytes
 * (0 when no full sub-buffer is there). */
int ckvmscope_reader_read_raw(struct ckvmscope_reader *r, void *buf, int nonblock);
/* Read what the buffer holds now, the writer's partial sub-buffer included, up to max_subbufs_per_read
 * sub-buffers per call, and decode it: *more is set to 0 once the buffer was empty or a sub-buffer began at or
 * after until_ts (trace clock ns; what was written before that moment is then read). Never blocks. Returns
 * records written, -1 on error (errno). */
int ckvmscope_reader_catch_up(struct ckvmscope_reader *r, struct ckvmscope_record *out, uint64_t until_ts,
                              struct ckvmscope_decode_stats *stats, int *more);
/* Wake a reader blocked in read or wait (from another thread). */
void ckvmscope_reader_stop(struct ckvmscope_reader *r);
void ckvmscope_reader_wake(struct ckvmscope_reader *r);
/* After stop: decode what is left, including the partial sub-buffer. Returns records, 0 when drained, -1 when
 * the first read failed (errno). */
int ckvmscope_reader_flush(struct ckvmscope_reader *r, struct ckvmscope_record *out,
                           struct ckvmscope_decode_stats *stats);
int ckvmscope_reader_flush_raw(struct ckvmscope_reader *r, void *buf);

/* ---------------------------------------------------------------- trace.dat compression (zlib, zstd) */

enum { CKVMSCOPE_COMPRESS_ZLIB = 1, CKVMSCOPE_COMPRESS_ZSTD = 2 };

/* Decompress one block into dst. Returns bytes written, or -1 when corrupt or too big for dst. */
long ckvmscope_decompress(int algo, const void *src, size_t src_len, void *dst, size_t dst_len);
/* Compress one block into dst (room: ckvmscope_compress_bound). Returns bytes written, or -1. */
long ckvmscope_compress(int algo, const void *src, size_t src_len, void *dst, size_t dst_len);
size_t ckvmscope_compress_bound(size_t src_len);
/* The linked zstd library's version string, written after "zstd" in a v7 header. */
const char *ckvmscope_zstd_version(void);

#ifdef __cplusplus
}
#endif
#endif
