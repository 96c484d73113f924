/*
 * Job status rows in Postgres (sluice_jobs, partitioned by UTC day, migration 0004): the
 * router's record of each job's state changes, read by `sluice status` and by a router that
 * takes over a partition. Functions take a borrowed connection and are called by the thread
 * that owns it (the router's store thread); any thread may call them on its own connection.
 */
#ifndef RT_STATUS_H
#define RT_STATUS_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

/* Longest last_response kept, in bytes; longer ones are cut at a character boundary. */
#define RT_STATUS_RESPONSE_MAX 10240

/* One state change of a job. Pointers are borrowed for the call; NULL text is SQL NULL
 * (job_id, message_id, destination_id and state must be set). */
typedef struct rt_status_row {
    const char *job_id, *message_id, *source_id, *destination_id, *destination_type, *user_key,
        *state;
    int attempts;
    long last_status; /* 0: none */
    const char *last_response;
    size_t last_response_len;                  /* capped to 10 KB by the writer */
    int64_t first_attempt_ms, last_attempt_ms; /* 0: NULL */
    const char *kafka_topic;                   /* NULL: no topic, partition and offset */
    int32_t kafka_partition;
    int64_t kafka_offset;
    /* tracing (migration 0008; NULL / 0 for none): the trace, the attempt's span and its
     * parent, and the stage times (README "Tracing") */
    const char *trace_id, *span_id, *parent_span_id;
    int64_t received_ms, enqueued_ms, picked_ms, processed_ms, routed_ms, completed_ms;
} rt_status_row_t;

/* Appends rows with COPY ... FROM STDIN (binary format), and the offsets of the final ones to
 * sluice_jobs_done (migration 0010) in the same statement string, so in one transaction, on
 * c, inside whatever transaction the caller has open. Makes sure the day partition for now
 * exists first (cached, so normally no extra query). Invalid UTF-8 becomes U+FFFD and NUL
 * bytes are dropped, so one odd response cannot fail a batch. Returns 0 or SL_ERR_* with
 * errstr: SL_ERR_TRANSIENT when the connection is broken, SL_ERR_INVALID when Postgres refused
 * the rows (the caller's transaction is then aborted). */
int rt_status_write(PGconn *c, const rt_status_row_t *rows, size_t n, char *errstr,
                    size_t errstr_size);

/* rt_status_write in two halves, so that Postgres takes in one batch while the caller builds
 * the next: rt_status_send sends the rows (n > 0), rt_status_finish waits for the COPY's
 * outcome and must follow a send that returned 0 before c is used again. Same returns; with
 * errstr NULL, finish only drains the connection. */
int rt_status_send(PGconn *c, const rt_status_row_t *rows, size_t n, char *errstr,
                   size_t errstr_size);
int rt_status_finish(PGconn *c, char *errstr, size_t errstr_size);

/* Creates the partitions for today and tomorrow and drops day partitions entirely older than
 * retention_ms (<= 0: keeps every day). Cheap; the router calls it at start and hourly. Runs
 * its statements in the caller's transaction if one is open, else each on its own. Returns 0
 * or SL_ERR_* with errstr. */
int rt_status_maintain(PGconn *c, int64_t now_ms, int64_t retention_ms, char *errstr,
                       size_t errstr_size);

/* The offsets >= from_offset of topic/partition whose job reached a final state (succeeded or
 * aborted), ascending and distinct, from sluice_jobs_done: lets a router skip jobs already
 * delivered after a crash or rebalance. *offs is malloc'ed (caller frees; NULL when *n is 0).
 * Returns 0 or SL_ERR_*. */
int rt_status_done_offsets(PGconn *c, const char *topic, int32_t partition, int64_t from_offset,
                           int64_t **offs, size_t *n, char *errstr, size_t errstr_size);

#endif
