/*
 * libFuzzer target: event format text (as a trace.dat carries it, the file's own bytes) through
 * ckvmscope_formats_parse (libtraceevent's parser) with isolation on, as the trace.dat reader parses them:
 * a format that crashes or hangs libtraceevent must be refused by the child process that tries it first;
 * what the child passes is parsed in-process (instrumented coverage), then every field lookup and print-table
 * walk the tool makes. Seeds: Tests/Fixtures/formats (five kernels). libtraceevent is Debian's build: its own
 * reads are not instrumented, but a crash in it would be a crash of kvmscope.
 */
#include "CKVMScope.h"

#include <stdlib.h>
#include <string.h>

static void count_table(const struct ckvmscope_print_table *t, void *ctx)
{
    size_t *n = ctx;
    for (size_t i = 0; i < t->count; i++)
        *n += strlen(t->symbols[i].name);
    *n += strlen(t->field) + strlen(t->expression) + strlen(t->delim);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *names[] = {"exit_reason", "esr_ec", "isa", "guest_rip", "vcpu_pc", "info1", "ret",
                                  "vcpu_id", "rip", "reason", "errno", "port", "size", "rw", "gpa", "len",
                                  "type", "common_pid", "common_type"};
    /* Exactly size bytes, as the reader hands a section's slice over. */
    char *text = malloc(size ? size : 1);
    memcpy(text, data, size);
    struct ckvmscope_formats *f = ckvmscope_formats_new();
    ckvmscope_formats_isolate(f, 1);
    int id = ckvmscope_formats_parse(f, "kvm", text, size);
    if (id >= 0) {
        struct ckvmscope_field field;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
            if (ckvmscope_formats_field(f, id, names[i], &field) == 0 && (field.size == 0 || field.size > 8))
                abort();
        size_t n = 0;
        ckvmscope_formats_print_tables(f, id, count_table, &n);
    }
    ckvmscope_formats_free(f);
    free(text);
    return 0;
}
