/* libtracefs (instances, per-CPU raw readers) and libtraceevent (format parsing, kbuffer). */
#include <tracefs.h>
#include <event-parse.h>
#include <kbuffer.h>
