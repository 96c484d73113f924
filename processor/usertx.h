/*
 * User transformations in JavaScript with RudderStack's contract: the user's code defines
 * transformEvent(event, metadata) or transformBatch(events, metadata). The code runs in a pool
 * of sandbox worker processes (`sluice js-worker`, see jsworker.h), each call under a time
 * limit and each transformation under a memory cap, so user code can never crash or stall the
 * caller: a call that overruns is killed with its worker and reported as failed.
 */
#ifndef PR_USERTX_H
#define PR_USERTX_H

#include <stddef.h>

typedef struct pr_usertx_pool pr_usertx_pool_t;

#define PR_USERTX_DEFAULT_TIME_LIMIT_MS 4000
#define PR_USERTX_DEFAULT_MEMORY_LIMIT  (128u * 1024 * 1024)

typedef struct pr_usertx_opts {
    int workers;               /* worker processes; 0: one per online CPU */
    int time_limit_ms;         /* per call (one round trip); 0: 4000 */
    size_t memory_limit_bytes; /* per transformation's JavaScript heap; 0: 128 MB */
    /* Command that starts a worker, NULL-terminated; NULL: {"/proc/self/exe", "js-worker"}.
     * The pool appends --memory-limit=N. Borrowed during pr_usertx_pool_new only. */
    const char *const *worker_argv;
} pr_usertx_opts_t;

typedef enum pr_usertx_kind {
    PR_USERTX_DROP = 0,   /* the transformation returned null/undefined/[] for the event */
    PR_USERTX_EVENTS = 1, /* events_json holds n_events output events */
    PR_USERTX_ERROR = 2   /* error says why the event failed */
} pr_usertx_kind_t;

/* The outcome for one input event. The strings are owned by the result: release them with
 * pr_usertx_results_free. */
typedef struct pr_usertx_result {
    pr_usertx_kind_t kind;
    size_t n_events;   /* EVENTS: number of elements in events_json */
    char *events_json; /* EVENTS: a JSON array of event objects; otherwise NULL */
    char *error;       /* ERROR: e.g. "TypeError: cannot read property 'x' of undefined (line 3)" */
} pr_usertx_result_t;

/* Starts the workers (opts may be NULL for the defaults) and checks that the first one
 * answers. Returns NULL and fills errstr if a worker can't be started. Call from any thread. */
pr_usertx_pool_t *pr_usertx_pool_new(const pr_usertx_opts_t *opts, char *errstr,
                                     size_t errstr_size);

/* Runs the transformation version_id with the given code over n events in one round trip to
 * an idle worker (waiting for one if all are busy) and fills out[0..n-1], one result per input
 * event. events_json[i] is the event as JSON text; metadata_json (may be NULL, as may any
 * element) is what metadata(event) returns for it: {sourceId, destinationId, destinationType,
 * workspaceId, messageId, rudderId, receivedAt, eventName, eventType}. transformBatch's output
 * events go to the input event with the same messageId (or whose object they are), else to
 * the first one. All arguments are borrowed.
 *
 * Returns 0 when every event has its result (failures of the user's code, time-outs, memory
 * and crashes are per-event errors); SL_ERR_TRANSIENT if no worker could be started and
 * SL_ERR_FATAL if a worker broke the protocol (out[] then holds that error for every event,
 * retrying may succeed); SL_ERR_INVALID for bad arguments (out[] untouched).
 * Thread-safe: concurrent calls use different workers. */
int pr_usertx_run(pr_usertx_pool_t *pool, const char *version_id, const char *code,
                  const char *const *events_json, const char *const *metadata_json, size_t n,
                  pr_usertx_result_t *out);

/* Frees the strings of out[0..n-1] and zeroes them. */
/* How many sandbox workers the pool runs (calls run on that many at once). */
size_t pr_usertx_pool_size(const pr_usertx_pool_t *pool);

void pr_usertx_results_free(pr_usertx_result_t *out, size_t n);

/* Stops the workers and frees the pool. No call may be in flight. NULL is a no-op. */
void pr_usertx_pool_free(pr_usertx_pool_t *pool);

/* Reads <dir>/<version_id>.js into *code (caller frees). version_id may hold only letters,
 * digits, '-', '_' and '.', and may not start with '.'. Returns 0, SL_ERR_NOTFOUND if there is
 * no such file, SL_ERR_INVALID for a bad version_id, a non-regular or too large file (16 MB). */
int pr_usertx_load_code(const char *dir, const char *version_id, char **code, char *errstr,
                        size_t errstr_size);

#endif
