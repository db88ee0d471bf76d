/*
 * Event formats: the kernel's `format` files parsed by libtraceevent, so that field offsets are
 * always looked up by name, never hard-coded; and the symbol tables of their print fmt, walked in the
 * arguments libtraceevent parsed (nothing here reads the print fmt text).
 */
#include "CKVMScope.h"

#include <errno.h>
#include <pthread.h>
#include <event-parse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct ckvmscope_formats {
    struct tep_handle *tep;
    int isolate; /* parse each format in a child process first (formats from files) */
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

static int is_ident(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Whether `name` (n bytes) is declared by a "field:TYPE NAME;" line (or "NAME[...]") before `end`. */
static int field_declared(const char *text, const char *end, const char *name, size_t n)
{
    for (const char *p = text; p < end; p++) {
        if ((size_t)(end - p) < 6 || memcmp(p, "field:", 6) != 0)
            continue;
        const char *q = p + 6;
        while (q < end && *q != ';' && *q != '\n')
            q++;
        /* The declaration is p+6 .. q ("int x", "char comm[16]", "__data_loc char[] name"): its name is the
         * last identifier, before an array size if one ends it. */
        const char *e = q;
        while (e > p + 6 && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > p + 6 && e[-1] == ']')
            while (e > p + 6 && *--e != '[')
                ;
        const char *b = e;
        while (b > p + 6 && is_ident(b[-1]))
            b--;
        if ((size_t)(e - b) == n && memcmp(b, name, n) == 0)
            return 1;
        p = q;
    }
    return 0;
}

/*
 * Every REC->NAME of the print fmt must name a declared field. libtraceevent 1.7 dereferences NULL when the
 * field of __print_symbolic(REC->NAME, ...) does not exist (found by fuzzing trace.dat files: their format
 * texts are the file's bytes); a kernel never writes such a format, so it is refused as unparsable.
 */
static int print_fmt_fields_declared(const char *text, size_t len)
{
    const char *end = text + len, *fmt = NULL;
    for (const char *p = text; p + 10 <= end; p++)
        if (memcmp(p, "print fmt:", 10) == 0) {
            fmt = p;
            break;
        }
    if (!fmt)
        return 1;
    for (const char *p = fmt; p + 5 <= end; p++) {
        if (memcmp(p, "REC->", 5) != 0)
            continue;
        const char *name = p + 5, *e = name;
        while (e < end && is_ident(*e))
            e++;
        if (!field_declared(text, fmt, name, (size_t)(e - name)))
            return 0;
        p = e - 1;
    }
    return 1;
}

/**
 * ckvmscope_formats_parse - parse one event's format file
 * @f: the set
 * @system: the event's system ("kvm")
 * @text: the file's content
 * @len: its length
 *
 * Returns the event's kernel id, or -1 when libtraceevent cannot parse it (or its print fmt reads a field the
 * format does not declare).
 */
static pthread_mutex_t parse_lock = PTHREAD_MUTEX_INITIALIZER;

static void ignore_table(const struct ckvmscope_print_table *table, void *ctx)
{
    (void)table;
    (void)ctx;
}

/*
 * Whether a child process parses the format and walks its print tables without crashing, within 2 s.
 * libtraceevent 1.7 dereferences NULL on some malformed print fmts (found by fuzzing: `"",4?"":_{`), and a
 * trace.dat's formats are the file's own bytes: a crash there must cost a child, not kvmscope.
 * 1 when it did (or when no child can be had: then the parse happens in-process as before), 0 otherwise.
 */
static int parses_in_child(const char *system, const char *text, size_t len)
{
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        /* A crash here is the verdict, not a report: the default action, not the Swift runtime's backtracer
         * (which would start swift-backtrace, print a crash report on kvmscope's stderr and outlive us). */
        static const int fatal[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP };
        for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; i++)
            signal(fatal[i], SIG_DFL);
        struct ckvmscope_formats *f = ckvmscope_formats_new();
        struct tep_event *event = NULL;
        if (!f || tep_parse_format(f->tep, &event, text, len, system) != TEP_ERRNO__SUCCESS || !event)
            _exit(1);
        ckvmscope_formats_print_tables(f, event->id, ignore_table, NULL);
        _exit(0);
    }
    useconds_t wait = 50;
    for (useconds_t waited = 0; waited < 2000000; waited += wait, wait = wait < 10000 ? wait * 2 : wait) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (r < 0 && errno == ECHILD)
            return 1; /* SIGCHLD ignored: the child was reaped for us, its verdict unknown */
        if (r < 0 && errno != EINTR)
            return 0;
        usleep(wait);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}

void ckvmscope_formats_isolate(struct ckvmscope_formats *f, int on)
{
    f->isolate = on ? 1 : 0;
}

int ckvmscope_formats_parse(struct ckvmscope_formats *f, const char *system, const char *text, size_t len)
{
    struct tep_event *event = NULL;
    if (!print_fmt_fields_declared(text, len))
        return -1;
    if (f->isolate && !parses_in_child(system, text, len))
        return -1;
    /* libtraceevent's parser keeps its input in static variables (input_buf and its position): two threads
     * parsing at once, each with its own tep, corrupt each other's parse. One parse at a time in this process. */
    pthread_mutex_lock(&parse_lock);
    enum tep_errno err = tep_parse_format(f->tep, &event, text, len, system);
    pthread_mutex_unlock(&parse_lock);
    if (err != TEP_ERRNO__SUCCESS || !event)
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

/**
 * ckvmscope_formats_name - the name of a parsed event
 *
 * Returns libtraceevent's copy of it (valid while the set lives), or NULL when no event has that id.
 */
const char *ckvmscope_formats_name(struct ckvmscope_formats *f, int kernel_id)
{
    struct tep_event *event = tep_find_event(f->tep, kernel_id);
    return event ? event->name : NULL;
}

/**
 * ckvmscope_formats_fields - every field of a parsed event, common fields first
 * @f: the set
 * @kernel_id: the event's id
 * @fn: called with each field's name, offset and size (array fields: the whole array)
 * @context: passed to fn
 *
 * Returns the number of fields, or -1 when no event has that id.
 */
int ckvmscope_formats_fields(struct ckvmscope_formats *f, int kernel_id, ckvmscope_field_fn fn, void *context)
{
    struct tep_event *event = tep_find_event(f->tep, kernel_id);
    const struct tep_format_field *lists[2];
    int n = 0;

    if (!event)
        return -1;
    lists[0] = event->format.common_fields;
    lists[1] = event->format.fields;
    for (int i = 0; i < 2; i++) {
        for (const struct tep_format_field *field = lists[i]; field; field = field->next, n++)
            fn(field->name, field->offset, field->size, context);
    }
    return n;
}

/* Writes a print arg as the C expression it came from (parentheses only where a binary operator nests). */
static void render_arg(FILE *out, const struct tep_print_arg *arg)
{
    if (!arg)
        return;
    switch (arg->type) {
    case TEP_PRINT_ATOM:
        fputs(arg->atom.atom, out);
        break;
    case TEP_PRINT_FIELD:
        fprintf(out, "REC->%s", arg->field.name);
        break;
    case TEP_PRINT_TYPE:
        fprintf(out, "(%s)", arg->typecast.type);
        render_arg(out, arg->typecast.item);
        break;
    case TEP_PRINT_OP: {
        const struct tep_print_arg *l = arg->op.left, *r = arg->op.right;
        if (!l || l->type == TEP_PRINT_NULL) { /* unary: libtraceevent gives it an empty left */
            fputs(arg->op.op, out);
            render_arg(out, r);
            break;
        }
        int lp = l->type == TEP_PRINT_OP && l->op.left && l->op.left->type != TEP_PRINT_NULL;
        int rp = r && r->type == TEP_PRINT_OP && r->op.left && r->op.left->type != TEP_PRINT_NULL;
        fputs(lp ? "(" : "", out);
        render_arg(out, l);
        fprintf(out, "%s %s %s", lp ? ")" : "", arg->op.op, rp ? "(" : "");
        render_arg(out, r);
        fputs(rp ? ")" : "", out);
        break;
    }
    default:
        fputs("?", out);
        break;
    }
}

/* The first field an expression reads, depth first. */
static const char *first_field(const struct tep_print_arg *arg)
{
    if (!arg)
        return NULL;
    switch (arg->type) {
    case TEP_PRINT_FIELD:
        return arg->field.name;
    case TEP_PRINT_TYPE:
        return first_field(arg->typecast.item);
    case TEP_PRINT_OP: {
        const char *name = first_field(arg->op.left);
        return name ? name : first_field(arg->op.right);
    }
    default:
        return NULL;
    }
}

struct table_walk {
    ckvmscope_print_table_fn fn;
    void *ctx;
    int tables;
    int failed;
};

/* Reports one __print_symbolic/__print_flags table. */
static void report_table(struct table_walk *w, int kind, const struct tep_print_arg *field, const char *delim,
                         const struct tep_print_flag_sym *list)
{
    size_t n = 0;
    for (const struct tep_print_flag_sym *s = list; s; s = s->next)
        n++;
    struct ckvmscope_print_symbol *symbols = calloc(n ? n : 1, sizeof(*symbols));
    char *expression = NULL;
    size_t expression_len = 0;
    FILE *out = open_memstream(&expression, &expression_len);
    if (!symbols || !out)
        goto error;
    render_arg(out, field);
    if (fclose(out) != 0) {
        out = NULL;
        goto error;
    }
    out = NULL;

    size_t count = 0;
    for (const struct tep_print_flag_sym *s = list; s; s = s->next) {
        /* libtraceevent keeps each value as text: the literal as written, or its evaluation of a constant
         * expression ("%lld"). One that is not a number (an unexpanded macro) names nothing we can match. */
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(s->value, &end, 0);
        if (!s->value[0] || errno || *end || !s->str)
            continue;
        symbols[count].value = v;
        symbols[count].name = s->str;
        count++;
    }
    const char *name = first_field(field);
    struct ckvmscope_print_table table = {
        .kind = kind,
        .field = name ? name : "",
        .expression = expression,
        .delim = delim ? delim : "",
        .symbols = symbols,
        .count = count,
    };
    w->fn(&table, w->ctx);
    w->tables++;
    free(expression);
    free(symbols);
    return;

error:
    if (out)
        fclose(out);
    free(expression);
    free(symbols);
    w->failed = 1;
}

/* Visits a list of print args (linked by next) and everything nested in each. */
static void walk_args(struct table_walk *w, const struct tep_print_arg *arg)
{
    for (; arg && !w->failed; arg = arg->next) {
        switch (arg->type) {
        case TEP_PRINT_SYMBOL:
            report_table(w, CKVMSCOPE_PRINT_SYMBOLIC, arg->symbol.field, NULL, arg->symbol.symbols);
            walk_args(w, arg->symbol.field);
            break;
        case TEP_PRINT_FLAGS:
            report_table(w, CKVMSCOPE_PRINT_FLAGS, arg->flags.field, arg->flags.delim, arg->flags.flags);
            walk_args(w, arg->flags.field);
            break;
        case TEP_PRINT_OP:
            walk_args(w, arg->op.left);
            walk_args(w, arg->op.right);
            break;
        case TEP_PRINT_TYPE:
            walk_args(w, arg->typecast.item);
            break;
        case TEP_PRINT_HEX:
        case TEP_PRINT_HEX_STR:
            walk_args(w, arg->hex.field);
            walk_args(w, arg->hex.size);
            break;
        case TEP_PRINT_INT_ARRAY:
            walk_args(w, arg->int_array.field);
            walk_args(w, arg->int_array.count);
            walk_args(w, arg->int_array.el_size);
            break;
        case TEP_PRINT_DYNAMIC_ARRAY:
            walk_args(w, arg->dynarray.index);
            break;
        case TEP_PRINT_FUNC:
            walk_args(w, arg->func.args);
            break;
        default:
            break;
        }
    }
}

/**
 * ckvmscope_formats_print_tables - the symbol tables of an event's print fmt
 * @f: the set
 * @kernel_id: the event's id as returned by ckvmscope_formats_parse()
 * @fn: called once per table, in the order the tables appear in the print fmt
 * @ctx: passed to @fn
 *
 * Walks tep_event->print_fmt.args, as libtraceevent parsed them, for every __print_symbolic and
 * __print_flags (and _u64) argument, including those nested in ?:, operators and helper calls.
 *
 * Returns the number of tables reported, or -1 when the event does not exist or memory runs out.
 */
int ckvmscope_formats_print_tables(struct ckvmscope_formats *f, int kernel_id, ckvmscope_print_table_fn fn,
                                   void *ctx)
{
    struct tep_event *event = tep_find_event(f->tep, kernel_id);
    if (!event)
        return -1;
    struct table_walk w = { .fn = fn, .ctx = ctx };
    walk_args(&w, event->print_fmt.args);
    return w.failed ? -1 : w.tables;
}
