/*
 * Event formats: the kernel's `format` files parsed by libtraceevent, so that field offsets are
 * always looked up by name, never hard-coded.
 */
#include "CKVMScope.h"

#include <event-parse.h>
#include <stdlib.h>
#include <string.h>

struct ckvmscope_formats {
    struct tep_handle *tep;
};

/**
 * ckvmscope_formats_new - an empty set of event formats
 *
 * Returns a handle to free with ckvmscope_formats_free(), or NULL when out of memory.
 */
struct ckvmscope_formats *ckvmscope_formats_new(void)
{
    struct ckvmscope_formats *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->tep = tep_alloc();
    if (!f->tep) {
        free(f);
        return NULL;
    }
    tep_set_long_size(f->tep, 8);
    return f;
}

void ckvmscope_formats_free(struct ckvmscope_formats *f)
{
    if (!f)
        return;
    tep_free(f->tep);
    free(f);
}

/**
 * ckvmscope_formats_parse - parse one event's format file
 * @f: the set
 * @system: the event's system ("kvm")
 * @text: the file's content
 * @len: its length
 *
 * Returns the event's kernel id, or -1 when libtraceevent cannot parse it.
 */
int ckvmscope_formats_parse(struct ckvmscope_formats *f, const char *system, const char *text, size_t len)
{
    struct tep_event *event = NULL;
    if (tep_parse_format(f->tep, &event, text, len, system) != TEP_ERRNO__SUCCESS || !event)
        return -1;
    return event->id;
}

/**
 * ckvmscope_formats_field - look a field up by name
 * @f: the set
 * @kernel_id: the event's id as returned by ckvmscope_formats_parse()
 * @name: the field's name
 * @out: where to put offset, size and signedness
 *
 * Returns 0, or -1 when the event or the field does not exist.
 */
int ckvmscope_formats_field(struct ckvmscope_formats *f, int kernel_id, const char *name,
                            struct ckvmscope_field *out)
{
    struct tep_event *event = tep_find_event(f->tep, kernel_id);
    if (!event)
        return -1;
    struct tep_format_field *field = tep_find_any_field(event, name);
    if (!field || field->size <= 0 || field->size > 8 || field->offset > INT16_MAX)
        return -1;
    out->offset = (int16_t)field->offset;
    out->size = (uint8_t)field->size;
    out->is_signed = (field->flags & TEP_FIELD_IS_SIGNED) ? 1 : 0;
    return 0;
}
