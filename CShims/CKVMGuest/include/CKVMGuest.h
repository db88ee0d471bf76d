/*
 * CKVMGuest — the storm guest's shim: a real VM run through the KVM ioctl API, producing an exact number of exits.
 * Every exported symbol is prefixed `ckvmscope_storm_`. Only the Swift module KVMGuest imports it.
 */
#ifndef CKVMGUEST_H
#define CKVMGUEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- KVM guest generator (storm) */

enum { CKVMSCOPE_STORM_IO = 0, CKVMSCOPE_STORM_MMIO = 1, CKVMSCOPE_STORM_HLT = 2 };

struct ckvmscope_storm_result {
    uint64_t exits;  /* exits of the requested kind seen by userspace (KVM_RUN returns), all vCPUs */
    double seconds;  /* wall time from the first KVM_RUN to the last vCPU done */
};

/* Run a real VM through /dev/kvm with `vcpus` threads (named "CPU N/KVM"), each causing exactly
 * exits_per_vcpu exits of `kind`, unless `seconds` (0: none) pass or a stop signal comes first.
 * Returns 0, or -1 with a one-line message in err. */
int ckvmscope_storm_run(int kind, uint32_t vcpus, uint64_t exits_per_vcpu, double seconds,
                        struct ckvmscope_storm_result *res, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
