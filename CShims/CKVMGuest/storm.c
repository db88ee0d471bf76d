/*
 * storm.c — a tiny real guest that produces an exact number of VM exits of one kind.
 *
 * One 2 MiB memory slot holds a GDT, identity-mapping page tables (1 GiB of 2 MiB pages) and the guest
 * code. Every vCPU starts in 64-bit long mode straight from KVM_SET_SREGS and spins on a two-instruction
 * loop (`out 0x10,al` / `mov [rbx],al` to a GPA without a slot / `hlt`, then `jmp` back). The host thread
 * counts the KVM_RUN returns of the wanted kind and stops calling KVM_RUN after exactly N of them, so the
 * kernel's kvm_pio / kvm_mmio / kvm_userspace_exit tracepoints fire exactly N times per vCPU.
 *
 * A run also ends early, within milliseconds, at its time limit or at a stop signal (signals.c): the
 * vCPU threads check the clock, the stop signal and a stop flag after every KVM_RUN return, and
 * `immediate_exit` makes a KVM_RUN that is about to start return at once. Every kind leaves the guest after each exit, so no vCPU stays in
 * KVM_RUN longer than one exit takes; no signal has to kick it out.
 */
#define _GNU_SOURCE
#include "CKVMGuest.h"
#include "CKVMHost.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x200000ull   /* the one memory slot, GPA 0 */
#define GDT_GPA 0x0000ull
#define PML4_GPA 0x1000ull
#define PDPT_GPA 0x2000ull
#define PD_GPA 0x3000ull
#define CODE_GPA 0x10000ull
#define STACK_TOP 0x100000ull  /* each vCPU gets 4 KiB below STACK_TOP - id * 4 KiB */
#define MMIO_GPA 0x10000000ull /* mapped by the page tables, no memory slot: stores exit as MMIO */
#define IO_PORT 0x10
#define MAX_VCPUS 256u

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_PS 0x80ull

struct storm_vcpu {
    pthread_t thread;
    int started; /* the thread was created */
    int fd;
    struct kvm_run *run;
    uint32_t id;
    int kind;
    uint64_t want, seen;
    struct timespec t0, t1;
    struct storm_gate *gate;
    char err[160];
};

/* Holds every vCPU thread until all are set up, so the measured interval starts together; then counts
 * the threads that are done and carries the stop request. */
struct storm_gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state; /* 0 wait, 1 go, -1 abort */
    uint32_t done; /* threads that returned (under lock) */
    atomic_int stop; /* set once: every vCPU stops after its current exit */
    double deadline; /* CLOCK_MONOTONIC seconds at which every vCPU stops, or 0 (set before "go") */
};

static void fmt(char *buf, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t len, const char *f, ...)
{
    va_list ap;
    if (!buf || !len)
        return;
    va_start(ap, f);
    vsnprintf(buf, len, f, ap);
    va_end(ap);
}

static double ts_sec(const struct timespec *t) { return (double)t->tv_sec + (double)t->tv_nsec * 1e-9; }

/* Write the GDT, page tables and the loop for `kind` into guest memory. */
static void storm_layout_memory(uint8_t *mem, int kind)
{
    static const uint8_t io_loop[] = {0xe6, IO_PORT, 0xeb, 0xfc}; /* 1: out 0x10,al; jmp 1b */
    static const uint8_t mmio_loop[] = {0x88, 0x03, 0xeb, 0xfc};  /* 1: mov [rbx],al; jmp 1b */
    static const uint8_t hlt_loop[] = {0xf4, 0xeb, 0xfd};         /* 1: hlt; jmp 1b */
    uint64_t *gdt = (uint64_t *)(mem + GDT_GPA), *pml4 = (uint64_t *)(mem + PML4_GPA);
    uint64_t *pdpt = (uint64_t *)(mem + PDPT_GPA), *pd = (uint64_t *)(mem + PD_GPA);

    gdt[0] = 0;
    gdt[1] = 0x00af9b000000ffffull; /* 0x08: 64-bit code, DPL 0 */
    gdt[2] = 0x00cf93000000ffffull; /* 0x10: data, DPL 0 */
    gdt[3] = 0x00affb000000ffffull; /* 0x18: 64-bit code, DPL 3 */
    gdt[4] = 0x00cff3000000ffffull; /* 0x20: data, DPL 3 */
    pml4[0] = PDPT_GPA | PTE_P | PTE_RW | PTE_US;
    pdpt[0] = PD_GPA | PTE_P | PTE_RW | PTE_US;
    for (uint64_t i = 0; i < 512; i++)
        pd[i] = (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_PS;
    if (kind == CKVMSCOPE_STORM_IO)
        memcpy(mem + CODE_GPA, io_loop, sizeof io_loop);
    else if (kind == CKVMSCOPE_STORM_MMIO)
        memcpy(mem + CODE_GPA, mmio_loop, sizeof mmio_loop);
    else
        memcpy(mem + CODE_GPA, hlt_loop, sizeof hlt_loop);
}

static void storm_segment(struct kvm_segment *s, int code, int dpl)
{
    memset(s, 0, sizeof *s);
    s->limit = 0xffffffff;
    s->present = 1;
    s->s = 1;
    s->g = 1;
    s->dpl = (uint8_t)dpl;
    s->type = code ? 11 : 3;
    s->l = code ? 1 : 0;
    s->db = code ? 0 : 1;
    s->selector = (uint16_t)(((code ? 1 : 2) + (dpl ? 2 : 0)) << 3 | dpl);
}

/* Long mode, paging on. io/mmio run at CPL 3 with IOPL 3; hlt needs CPL 0. */
static int storm_setup_vcpu(struct storm_vcpu *v, char *err, size_t errlen)
{
    struct kvm_sregs sr;
    struct kvm_regs r;
    int dpl = v->kind == CKVMSCOPE_STORM_HLT ? 0 : 3;

    if (ioctl(v->fd, KVM_GET_SREGS, &sr) < 0) {
        fmt(err, errlen, "KVM_GET_SREGS: %s", strerror(errno));
        return -1;
    }
    storm_segment(&sr.cs, 1, dpl);
    storm_segment(&sr.ds, 0, dpl);
    sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
    sr.gdt.base = GDT_GPA;
    sr.gdt.limit = 5 * 8 - 1;
    sr.cr0 = 0x80050033; /* PG WP NE ET MP PE */
    sr.cr3 = PML4_GPA;
    sr.cr4 = 0x20;       /* PAE */
    sr.efer = 0x500;     /* LMA LME */
    if (ioctl(v->fd, KVM_SET_SREGS, &sr) < 0) {
        fmt(err, errlen, "KVM_SET_SREGS: %s", strerror(errno));
        return -1;
    }
    memset(&r, 0, sizeof r);
    r.rip = CODE_GPA;
    r.rsp = STACK_TOP - (uint64_t)v->id * 0x1000;
    r.rax = v->id;
    r.rbx = MMIO_GPA + (uint64_t)v->id * 8;
    r.rflags = dpl ? 0x3002 : 0x2;
    if (ioctl(v->fd, KVM_SET_REGS, &r) < 0) {
        fmt(err, errlen, "KVM_SET_REGS: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Is this KVM_RUN return one exit of the counted kind? */
static int storm_exit_matches(const struct kvm_run *run, int kind)
{
    switch (kind) {
    case CKVMSCOPE_STORM_IO:
        return run->exit_reason == KVM_EXIT_IO && run->io.direction == KVM_EXIT_IO_OUT && run->io.port == IO_PORT;
    case CKVMSCOPE_STORM_MMIO:
        return run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write;
    default:
        return run->exit_reason == KVM_EXIT_HLT;
    }
}

static void *storm_thread(void *arg)
{
    struct storm_vcpu *v = arg;
    char name[16];
    sigset_t all;
    int state;

    /* A signal would end KVM_RUN with KVM_EXIT_INTR: one kvm_userspace_exit more than asked for. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    snprintf(name, sizeof name, "CPU %u/KVM", v->id);
    pthread_setname_np(pthread_self(), name);
    pthread_mutex_lock(&v->gate->lock);
    while ((state = v->gate->state) == 0)
        pthread_cond_wait(&v->gate->cond, &v->gate->lock);
    pthread_mutex_unlock(&v->gate->lock);
    if (state < 0)
        return NULL;

    clock_gettime(CLOCK_MONOTONIC, &v->t0);
    /* Each vCPU looks at the stop flag, the stop signal and the clock after every exit (a vDSO clock read and
     * two loads next to a KVM_RUN round trip): it stops on time even when the waiting thread is not
     * scheduled. Relaxed: the flags only have to be seen soon; they guard no other data. */
    while (v->seen < v->want && !atomic_load_explicit(&v->gate->stop, memory_order_relaxed) && !ckvmscope_stop_signal()) {
        if (v->gate->deadline > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (ts_sec(&now) >= v->gate->deadline)
                break;
        }
        if (ioctl(v->fd, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fmt(v->err, sizeof v->err, "KVM_RUN (vCPU %u): %s", v->id, strerror(errno));
            break;
        }
        if (!storm_exit_matches(v->run, v->kind)) {
            fmt(v->err, sizeof v->err, "vCPU %u: unexpected exit reason %u after %llu exits", v->id,
                v->run->exit_reason, (unsigned long long)v->seen);
            break;
        }
        v->seen++;
    }
    clock_gettime(CLOCK_MONOTONIC, &v->t1);
    pthread_mutex_lock(&v->gate->lock);
    v->gate->done++;
    pthread_cond_broadcast(&v->gate->cond);
    pthread_mutex_unlock(&v->gate->lock);
    return NULL;
}

/* Stops every vCPU: the flag for the threads, immediate_exit for a KVM_RUN about to start. */
static void storm_stop(struct storm_vcpu *v, uint32_t n, struct storm_gate *gate)
{
    atomic_store_explicit(&gate->stop, 1, memory_order_relaxed);
    for (uint32_t i = 0; i < n; i++)
        __atomic_store_n(&v[i].run->immediate_exit, 1, __ATOMIC_RELAXED);
}

/* Waits until every started thread is done, stopping them at the deadline or at a stop signal (the threads
 * look for both themselves too; this also sets immediate_exit). */
static void storm_wait(struct storm_vcpu *v, uint32_t n, uint32_t started, struct storm_gate *gate)
{
    struct timespec now, until;
    int stopped = 0;

    pthread_mutex_lock(&gate->lock);
    while (gate->done < started) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!stopped && (ckvmscope_stop_signal() || (gate->deadline > 0 && ts_sec(&now) >= gate->deadline))) {
            storm_stop(v, n, gate);
            stopped = 1;
        }
        /* Wake every 5 ms to look at the clock and the stop signal (a handler cannot signal a condvar). */
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 5000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&gate->cond, &gate->lock, &until);
    }
    pthread_mutex_unlock(&gate->lock);
}

/**
 * ckvmscope_storm_run() - run a real guest that causes an exact number of exits
 * @kind: CKVMSCOPE_STORM_IO (port 0x10 writes), CKVMSCOPE_STORM_MMIO (1-byte stores to a GPA without a
 *        memory slot) or CKVMSCOPE_STORM_HLT (hlt at CPL 0, no in-kernel irqchip)
 * @vcpus: number of vCPUs, each run by its own thread named "CPU N/KVM" (1..256)
 * @exits_per_vcpu: exits of @kind each vCPU causes; KVM_RUN is not called again after the last one
 * @seconds: stop every vCPU after this many seconds even if exits remain (0: no limit)
 * @res: receives the total exits seen and the wall time from the first KVM_RUN to the last vCPU done
 * @err: receives a one-line message on failure (may be NULL)
 * @errlen: size of @err
 *
 * Creates the VM through /dev/kvm and tears it down before returning. Safe to call concurrently. A stop
 * signal (ckvmscope_stop_signal() non-zero) or @seconds ends the run within a few milliseconds; @res then
 * counts the exits done so far and the run still succeeds.
 *
 * Return: 0 on success, -1 on failure with @err set.
 */
int ckvmscope_storm_run(int kind, uint32_t vcpus, uint64_t exits_per_vcpu, double seconds,
                        struct ckvmscope_storm_result *res, char *err, size_t errlen)
{
    struct storm_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0};
    struct kvm_userspace_memory_region region;
    struct storm_vcpu *v = NULL;
    double first = 0, last = 0;
    uint8_t *mem = MAP_FAILED;
    int kvm = -1, vm = -1, ret = -1, runsize = 0;
    uint32_t i, made = 0;
    uint64_t total = 0;

    if (kind < CKVMSCOPE_STORM_IO || kind > CKVMSCOPE_STORM_HLT || !res) {
        fmt(err, errlen, "storm: unknown kind %d", kind);
        return -1;
    }
    if (vcpus == 0 || vcpus > MAX_VCPUS) {
        fmt(err, errlen, "storm: %u vCPUs requested (1..%u allowed)", vcpus, MAX_VCPUS);
        return -1;
    }
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        fmt(err, errlen, "/dev/kvm: %s%s", strerror(errno),
            errno == ENOENT ? " (is the kvm module loaded?)" : "");
        goto out;
    }
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        fmt(err, errlen, "KVM_GET_API_VERSION: unsupported KVM API (want %d)", KVM_API_VERSION);
        goto out;
    }
    runsize = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (runsize < (int)sizeof(struct kvm_run)) {
        fmt(err, errlen, "KVM_GET_VCPU_MMAP_SIZE: %s", runsize < 0 ? strerror(errno) : "too small");
        goto out;
    }
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) {
        fmt(err, errlen, "KVM_CREATE_VM: %s", strerror(errno));
        goto out;
    }
    mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        fmt(err, errlen, "mmap guest memory: %s", strerror(errno));
        goto out;
    }
    storm_layout_memory(mem, kind);
    region = (struct kvm_userspace_memory_region){
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        fmt(err, errlen, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
        goto out;
    }
    v = calloc(vcpus, sizeof *v);
    if (!v) {
        fmt(err, errlen, "storm: out of memory");
        goto out;
    }
    for (made = 0; made < vcpus; made++) {
        struct storm_vcpu *c = &v[made];
        c->id = made;
        c->kind = kind;
        c->want = exits_per_vcpu;
        c->gate = &gate;
        c->run = MAP_FAILED;
        c->fd = ioctl(vm, KVM_CREATE_VCPU, (unsigned long)made);
        if (c->fd < 0) {
            fmt(err, errlen, "KVM_CREATE_VCPU %u: %s", made, strerror(errno));
            goto out;
        }
        c->run = mmap(NULL, (size_t)runsize, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
        if (c->run == MAP_FAILED) {
            fmt(err, errlen, "mmap kvm_run (vCPU %u): %s", made, strerror(errno));
            made++; /* the fd is open: close it on the way out */
            goto out;
        }
        if (storm_setup_vcpu(c, err, errlen) < 0) {
            made++;
            goto out;
        }
    }
    for (i = 0; i < vcpus; i++) {
        errno = pthread_create(&v[i].thread, NULL, storm_thread, &v[i]);
        if (errno) {
            fmt(err, errlen, "pthread_create (vCPU %u): %s", i, strerror(errno));
            goto out;
        }
        v[i].started = 1;
    }
    ret = 0;

out:
    /* Release the threads (to run, or to quit when setup failed) and wait for them. */
    pthread_mutex_lock(&gate.lock);
    if (ret == 0 && seconds > 0) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        gate.deadline = ts_sec(&now) + seconds;
    }
    gate.state = ret == 0 ? 1 : -1;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
    if (ret == 0)
        storm_wait(v, vcpus, vcpus, &gate);
    for (i = 0; v && i < vcpus; i++) {
        if (!v[i].started)
            continue;
        pthread_join(v[i].thread, NULL);
        if (ret == 0 && v[i].err[0]) {
            fmt(err, errlen, "%s", v[i].err);
            ret = -1;
        }
        total += v[i].seen;
        if (i == 0 || ts_sec(&v[i].t0) < first)
            first = ts_sec(&v[i].t0);
        if (ts_sec(&v[i].t1) > last)
            last = ts_sec(&v[i].t1);
    }
    res->exits = total;
    res->seconds = ret == 0 ? last - first : 0;
    while (made > 0) {
        struct storm_vcpu *c = &v[--made];
        if (c->run != MAP_FAILED)
            munmap(c->run, (size_t)runsize);
        if (c->fd >= 0)
            close(c->fd);
    }
    free(v);
    if (mem != MAP_FAILED)
        munmap(mem, MEM_SIZE);
    if (vm >= 0)
        close(vm);
    if (kvm >= 0)
        close(kvm);
    pthread_mutex_destroy(&gate.lock);
    pthread_cond_destroy(&gate.cond);
    return ret;
}
