/* Shared between the files of the tracing shim; not part of its interface to Swift. */
#ifndef CKVMSCOPE_SHIM_INTERNAL_H
#define CKVMSCOPE_SHIM_INTERNAL_H

#include "CKVMScope.h"

struct tracefs_instance;

/* The libtracefs handle behind an instance (instance.c). */
struct tracefs_instance *ckvmscope_instance_tracefs(struct ckvmscope_instance *inst);

#endif
