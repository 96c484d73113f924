/*
 * Shared between the router's delivery loop (router.c) and its store thread (store.c).
 *
 * The delivery loop owns every job and every key; the store thread owns a Postgres connection.
 * The loop hands jobs to the store as operations (park them, record their status, resolve
 * parked rows); the store runs queued operations in one transaction and hands them back
 * done, plus the parked jobs that became due ("loaded"). Jobs travel with their operation;
 * neither side touches a job the other holds.
 */
#ifndef RT_INTERNAL_H
#define RT_INTERNAL_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/json_scan.h"
#include "common/pg.h"
#include "common/trace.h"

#define RT_RESPONSE_CAP 10240 /* bytes of a response kept with a job */

typedef struct rt_job {
    char *raw; /* the job as consumed (JSON), for parking and dead letters */
    size_t raw_len;
    /* Strings from the job's JSON, most of them in strs (one allocation, strs_len bytes);
     * the others are malloc'ed alone: free them with rt_job_free_str. */
    char *job_id, *message_id, *source_id, *dest_id, *dest_type, *user_key;
    char *method, *url, *body;
    char *strs;
    size_t strs_len;
    size_t body_len;
    bool body_in_raw; /* body points into raw (a JSON body, sent as it is): not freed alone */
    sl_json_span_t headers_json; /* request.headers, within raw */
    /* batching ("batch" in the request); batch_key NULL when not batchable */
    char *batch_key, *batch_prefix, *batch_sep, *batch_suffix;
    size_t batch_max_events, batch_max_bytes;
    char *topic; /* borrowed: the router's delivery topic */
    int32_t partition;
    int64_t offset;
    int64_t parked_id; /* row in sluice_parked, 0 for a job from Kafka */
    int attempts;
    int64_t first_ms, last_ms; /* attempt times, 0 before the first */
    long last_status;          /* HTTP status of the last attempt, 0 for none or an error */
    char *last_response;
    const char *state; /* outcome to record: succeeded, failed, aborted */
    int64_t next_ms;   /* when a parked job is due */
    /* tracing (common/trace.h), from the delivery message's headers */
    char traceparent[SL_TRACEPARENT_LEN + 1]; /* the processor's span; a new trace if none */
    char *tracestate;                         /* NULL for none */
    char span_id[SL_SPAN_ID_LEN + 1];         /* the last attempt's span, "" before one */
    /* stage times (wall clock ms, 0: unknown): received by the gateway, stored in the events
     * topic, read and produced by the processor, read by the router, last attempt answered */
    int64_t received_ms, enqueued_ms, picked_ms, processed_ms, routed_ms, done_ms;
    struct rt_job *next;
} rt_job_t;

typedef enum rt_op_kind {
    RT_OP_STATUS,      /* record jobs' status rows (jobs from Kafka) */
    RT_OP_PARK,        /* park jobs from Kafka of one key, in order, behind what is parked */
    RT_OP_PARKED_FAIL, /* a parked job failed again: count the attempt, set the key's due time */
    RT_OP_PARKED_DONE, /* parked jobs delivered or aborted: delete their rows, record status */
    RT_OP_RELEASE,     /* loaded rows dropped unsent: the key is due again at next_ms */
    RT_OP_LOADED       /* store -> loop: parked jobs of a key that are due, in order */
} rt_op_kind_t;

typedef struct rt_op {
    rt_op_kind_t kind;
    rt_job_t *jobs; /* owned by the op */
    char *dest_id, *user_key;
    int32_t partition;
    int64_t next_ms;
    bool release;   /* PARKED_DONE: the last loaded row of its key */
    bool key_empty; /* set by the store: the key has no parked rows left */
    struct rt_op *next;
} rt_op_t;

typedef struct rt_store rt_store_t;

/* Jobs waiting for Postgres (rt_store_backlog) at which the router stops consuming until
 * Postgres has caught up (the store stops loading parked jobs at a fifth of it). It bounds
 * memory, and the deliveries a SIGKILL repeats: those delivered but not yet recorded. */
#define RT_STORE_BACKLOG 10000

typedef struct rt_store_conf {
    const char *dsn;
    const char *topic;
    bool job_status;
    int64_t park_poll_ms, retention_ms;
    size_t load_keys; /* keys loaded per drain */
    int wake_fd;      /* written to when ops come back (wakes the delivery loop) */
} rt_store_conf_t;

rt_store_t *rt_store_start(const rt_store_conf_t *c);
/* Queues an operation (the store owns it until it comes back through rt_store_take). */
void rt_store_push(rt_store_t *s, rt_op_t *op);
/* Operations done (or loaded), in order; NULL when none. */
rt_op_t *rt_store_take(rt_store_t *s);
/* Jobs in operations queued or in progress (not yet taken back). */
size_t rt_store_backlog(rt_store_t *s);
/* The partitions whose parked jobs this router drains (copied). */
void rt_store_set_partitions(rt_store_t *s, const int32_t *parts, size_t n);
/* The destinations whose parked jobs are not to be loaded for now (their queues are full). */
void rt_store_set_full(rt_store_t *s, const char *const *dest_ids, size_t n);
/* Asks for a drain pass now. */
void rt_store_drain_soon(rt_store_t *s);
/* Finishes queued operations (as far as Postgres allows), then stops. */
void rt_store_stop(rt_store_t *s);

void rt_job_free(rt_job_t *j);
/* Frees p, one of j's strings, unless it lies in j->strs (freed with j). */
void rt_job_free_str(const rt_job_t *j, char *p);
void rt_jobs_free(rt_job_t *j);
void rt_op_free(rt_op_t *op);

#endif
