/*
 * The router's store thread, see internal.h: parks jobs in Postgres, records job status,
 * resolves parked rows and loads the parked jobs that are due.
 *
 * Parked jobs live in sluice_parked, one row per job; sluice_parked_keys has one row per
 * blocked (destination, user) with the time its first job is due. While the drainer has a
 * key's rows in memory, the key's due time is 'infinity' so no other pass takes it again; a
 * router that starts on the partition sets it back (router.c, on assign).
 */
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "router/internal.h"
#include "router/pgcopy.h"
#include "router/status.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_OPS_TXN 2000
#define GAUGE_EVERY 5000 /* ms, at least */
#define PARKED_HELP "Jobs parked in Postgres, waiting for a retry or behind one"
#define OLDEST_HELP "Age of the oldest parked job"

#define STATUS_SLOTS 2

typedef struct status_slot {
    sl_pg_t *pg;
    PGconn *c;           /* while a batch is in flight on it; NULL when free */
    rt_op_t *ops, *last; /* the batch */
    size_t n;
} status_slot_t;

struct rt_store {
    rt_store_conf_t c;
    char *dsn, *topic;
    sl_pg_t *pg;
    /* batches of status rows only, each one COPY committed on its own, on connections of
     * their own with synchronous_commit off for the whole session: one is sent while Postgres
     * takes in the one before (see status_send) */
    status_slot_t slots[STATUS_SLOTS];
    unsigned oldest; /* the slot whose batch was sent first */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    rt_op_t *in_head, *in_tail;   /* queued by the loop */
    rt_op_t *out_head, *out_tail; /* back to the loop */
    size_t backlog;
    int32_t *parts;
    size_t nparts;
    char *full; /* destinations not to load for now, as a Postgres array literal */
    bool drain_now, stop;
    int64_t last_maintain, last_gauge, gauge_every;
    char **gauged; /* destinations with a parked gauge */
    size_t ngauged;
};

void rt_job_free_str(const rt_job_t *j, char *p)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)j->strs;
    if (!j->strs || a < lo || a >= lo + j->strs_len)
        free(p);
}

void rt_job_free(rt_job_t *j)
{
    if (!j)
        return;
    free(j->raw);
    char *strs[] = {j->job_id,    j->message_id,   j->source_id, j->dest_id,
                    j->dest_type, j->user_key,     j->method,    j->url,
                    j->batch_key, j->batch_prefix, j->batch_sep, j->batch_suffix};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        rt_job_free_str(j, strs[i]);
    if (!j->body_in_raw)
        rt_job_free_str(j, j->body);
    free(j->strs);
    free(j->last_response);
    free(j->tracestate);
    free(j);
}

void rt_jobs_free(rt_job_t *j)
{
    while (j) {
        rt_job_t *next = j->next;
        rt_job_free(j);
        j = next;
    }
}

void rt_op_free(rt_op_t *op)
{
    rt_jobs_free(op->jobs);
    free(op->dest_id);
    free(op->user_key);
    free(op);
}

static void queue_append(rt_op_t **head, rt_op_t **tail, rt_op_t *op)
{
    op->next = NULL;
    if (*tail)
        (*tail)->next = op;
    else
        *head = op;
    *tail = op;
}

/* What an op weighs in the backlog: its jobs (one at least). */
static size_t op_weight(const rt_op_t *op)
{
    size_t n = 0;
    for (const rt_job_t *j = op->jobs; j; j = j->next)
        n++;
    return n ? n : 1;
}

void rt_store_push(rt_store_t *s, rt_op_t *op)
{
    pthread_mutex_lock(&s->lock);
    queue_append(&s->in_head, &s->in_tail, op);
    s->backlog += op_weight(op);
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

rt_op_t *rt_store_take(rt_store_t *s)
{
    pthread_mutex_lock(&s->lock);
    rt_op_t *ops = s->out_head;
    for (rt_op_t *op = ops; op; op = op->next)
        if (op->kind != RT_OP_LOADED)
            s->backlog -= op_weight(op);
    s->out_head = s->out_tail = NULL;
    pthread_mutex_unlock(&s->lock);
    return ops;
}

size_t rt_store_backlog(rt_store_t *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->backlog;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void rt_store_set_partitions(rt_store_t *s, const int32_t *parts, size_t n)
{
    pthread_mutex_lock(&s->lock);
    free(s->parts);
    s->parts = n ? sl_malloc(n * sizeof(*parts)) : NULL;
    if (n)
        memcpy(s->parts, parts, n * sizeof(*parts));
    s->nparts = n;
    s->drain_now = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Appends v as an element of a Postgres array literal (after a comma unless first). */
static void put_array_item(sl_buf_t *b, const char *v, bool first)
{
    sl_buf_puts(b, first ? "\"" : ",\"");
    for (const char *c = v; *c; c++) {
        if (*c == '"' || *c == '\\')
            sl_buf_putc(b, '\\');
        sl_buf_putc(b, *c);
    }
    sl_buf_putc(b, '"');
}

void rt_store_set_full(rt_store_t *s, const char *const *dest_ids, size_t n)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_putc(&b, '{');
    for (size_t i = 0; i < n; i++)
        put_array_item(&b, dest_ids[i], i == 0);
    sl_buf_putc(&b, '}');
    pthread_mutex_lock(&s->lock);
    free(s->full);
    s->full = sl_buf_steal(&b);
    pthread_mutex_unlock(&s->lock);
}

void rt_store_drain_soon(rt_store_t *s)
{
    pthread_mutex_lock(&s->lock);
    s->drain_now = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void give_back(rt_store_t *s, rt_op_t *ops)
{
    if (!ops)
        return;
    pthread_mutex_lock(&s->lock);
    while (ops) {
        rt_op_t *next = ops->next;
        queue_append(&s->out_head, &s->out_tail, ops);
        ops = next;
    }
    pthread_mutex_unlock(&s->lock);
    ssize_t w = write(s->c.wake_fd, "1", 1);
    (void)w; /* a full pipe wakes the loop already */
}

/* --- SQL helpers --- */

static int exec(PGconn *c, const char *sql, int n, const char *const *params, PGresult **out,
                char *err, size_t errsz)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        snprintf(err, errsz, "%s", PQresultErrorMessage(r));
        size_t l = strlen(err);
        while (l && err[l - 1] == '\n')
            err[--l] = '\0';
        PQclear(r);
        return SL_ERR_TRANSIENT;
    }
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

static void fmt_ms(int64_t ms, char out[SL_TIME_STRLEN])
{
    sl_time_format_ms(ms, out);
}

static const char *cap_response(const rt_job_t *j)
{
    return j->last_response; /* capped when it was read (RT_RESPONSE_CAP) */
}

#define PARK_CHUNK 1000 /* rows per COPY */

static const char park_sql[] =
    "COPY sluice_parked (kafka_topic, kafka_partition, kafka_offset, destination_id, user_key, "
    "job_id, message_id, job, attempts, first_attempt_at, last_attempt_at, last_status, "
    "last_response, traceparent, tracestate, received_at, enqueued_at, picked_at, processed_at, "
    "routed_at) FROM STDIN (FORMAT binary)";
#define PARK_FIELDS 20

/* One binary COPY of n parked jobs, in order (their ids keep that order). */
static int park_rows(rt_store_t *s, PGconn *c, rt_job_t *const *jobs, size_t n, char *err,
                     size_t errsz)
{
    sl_buf_t b = SL_BUF_INIT;
    rt_copy_begin(&b);
    for (size_t i = 0; i < n; i++) {
        const rt_job_t *j = jobs[i];
        rt_copy_be(&b, PARK_FIELDS, 2);
        rt_copy_text(&b, s->topic, SIZE_MAX, SIZE_MAX);
        rt_copy_int4(&b, j->partition);
        rt_copy_int8(&b, j->offset);
        const char *ids[] = {j->dest_id, j->user_key, j->job_id, j->message_id};
        for (size_t t = 0; t < sizeof(ids) / sizeof(ids[0]); t++)
            rt_copy_text(&b, ids[t], SIZE_MAX, SIZE_MAX);
        rt_copy_text(&b, j->raw, SIZE_MAX, SIZE_MAX); /* NUL-terminated, as Kafka gave it */
        rt_copy_int4(&b, j->attempts);
        rt_copy_time(&b, j->first_ms);
        rt_copy_time(&b, j->last_ms);
        if (j->last_status)
            rt_copy_int4(&b, (int32_t)j->last_status);
        else
            rt_copy_null(&b);
        rt_copy_text(&b, cap_response(j), SIZE_MAX, SIZE_MAX);
        rt_copy_text(&b, *j->traceparent ? j->traceparent : NULL, SIZE_MAX, SIZE_MAX);
        rt_copy_text(&b, j->tracestate, SIZE_MAX, SIZE_MAX);
        const int64_t stage[] = {j->received_ms, j->enqueued_ms, j->picked_ms, j->processed_ms,
                                 j->routed_ms};
        for (size_t t = 0; t < sizeof(stage) / sizeof(stage[0]); t++)
            rt_copy_time(&b, stage[t]);
    }
    rt_copy_end(&b);
    int rc = rt_copy_run(c, park_sql, &b, "could not park jobs", err, errsz);
    sl_buf_free(&b);
    return rc;
}

/* One INSERT of n key rows (ops), each due at its op's next_ms unless already blocked. */
static int park_keys(rt_store_t *s, PGconn *c, rt_op_t *const *ops, size_t n, char *err,
                     size_t errsz)
{
    const char **p = sl_calloc(n * 4 + 1, sizeof(char *));
    char(*part)[24] = sl_malloc(n * sizeof(*part));
    char(*due)[SL_TIME_STRLEN] = sl_malloc(n * sizeof(*due));
    sl_buf_t sql = SL_BUF_INIT;
    sl_buf_puts(&sql, "INSERT INTO sluice_parked_keys (kafka_topic, destination_id, user_key, "
                      "kafka_partition, next_attempt_at) VALUES ");
    p[0] = s->topic;
    for (size_t i = 0; i < n; i++) {
        snprintf(part[i], sizeof(part[i]), "%d", (int)ops[i]->partition);
        fmt_ms(ops[i]->next_ms, due[i]);
        p[1 + i * 4] = ops[i]->dest_id;
        p[2 + i * 4] = ops[i]->user_key;
        p[3 + i * 4] = part[i];
        p[4 + i * 4] = due[i];
        sl_buf_printf(&sql, "%s($1,$%zu,$%zu,$%zu::int,$%zu::timestamptz)", i ? "," : "", 2 + i * 4,
                      3 + i * 4, 4 + i * 4, 5 + i * 4);
    }
    sl_buf_puts(&sql, " ON CONFLICT DO NOTHING");
    int rc = exec(c, sql.data, (int)(n * 4 + 1), p, NULL, err, errsz);
    sl_buf_free(&sql);
    free(p);
    free(part);
    free(due);
    return rc;
}

/* Every PARK op of the transaction: their jobs in op order (so each key's rows keep their
 * order), then their keys, a few big INSERTs instead of two statements per key. */
static int park_all(rt_store_t *s, PGconn *c, rt_op_t *ops, char *err, size_t errsz)
{
    rt_job_t *jobs[PARK_CHUNK];
    rt_op_t *keys[PARK_CHUNK];
    size_t nj = 0, nk = 0;
    int rc = 0;
    for (rt_op_t *op = ops; op && !rc; op = op->next) {
        if (op->kind != RT_OP_PARK)
            continue;
        for (rt_job_t *j = op->jobs; j && !rc; j = j->next) {
            jobs[nj++] = j;
            if (nj == PARK_CHUNK) {
                rc = park_rows(s, c, jobs, nj, err, errsz);
                nj = 0;
            }
        }
    }
    if (!rc && nj)
        rc = park_rows(s, c, jobs, nj, err, errsz);
    for (rt_op_t *op = ops; op && !rc; op = op->next) {
        if (op->kind != RT_OP_PARK || !op->jobs)
            continue;
        keys[nk++] = op;
        if (nk == PARK_CHUNK) {
            rc = park_keys(s, c, keys, nk, err, errsz);
            nk = 0;
        }
    }
    if (!rc && nk)
        rc = park_keys(s, c, keys, nk, err, errsz);
    return rc;
}

static int set_due(rt_store_t *s, PGconn *c, const rt_op_t *op, char *err, size_t errsz)
{
    char due[SL_TIME_STRLEN];
    fmt_ms(op->next_ms, due);
    const char *kp[] = {s->topic, op->dest_id, op->user_key, due};
    return exec(c,
                "UPDATE sluice_parked_keys SET next_attempt_at = $4::timestamptz WHERE "
                "kafka_topic = $1 AND destination_id = $2 AND user_key = $3",
                4, kp, NULL, err, errsz);
}

static int parked_fail(rt_store_t *s, PGconn *c, rt_op_t *op, char *err, size_t errsz)
{
    for (rt_job_t *j = op->jobs; j; j = j->next) {
        char id[24], att[24], st[24], t0[SL_TIME_STRLEN], t1[SL_TIME_STRLEN];
        snprintf(id, sizeof(id), "%lld", (long long)j->parked_id);
        snprintf(att, sizeof(att), "%d", j->attempts);
        snprintf(st, sizeof(st), "%ld", j->last_status);
        fmt_ms(j->first_ms, t0);
        fmt_ms(j->last_ms, t1);
        const char *p[] = {id, att, t0, t1, j->last_status ? st : NULL, cap_response(j)};
        int rc = exec(c,
                      "UPDATE sluice_parked SET attempts = $2::int, first_attempt_at = "
                      "$3::timestamptz, last_attempt_at = $4::timestamptz, last_status = "
                      "$5::int, last_response = $6 WHERE id = $1::bigint",
                      6, p, NULL, err, errsz);
        if (rc)
            return rc;
    }
    return set_due(s, c, op, err, errsz);
}

/* A run of PARKED_DONE ops (ops up to end, not included): their rows go in one DELETE; keys
 * left without rows lose their key row (their ops get key_empty), and the others whose last
 * loaded row this was are due now. Three statements for the run, not three per job: after a
 * destination's outage every parked job comes back through here, and those delivered but not
 * yet recorded are what a SIGKILL delivers twice. */
static int parked_done_run(rt_store_t *s, PGconn *c, rt_op_t *ops, rt_op_t *end, char *err,
                           size_t errsz)
{
    sl_buf_t ids = SL_BUF_INIT, dests = SL_BUF_INIT, users = SL_BUF_INIT;
    sl_buf_putc(&ids, '{');
    sl_buf_putc(&dests, '{');
    sl_buf_putc(&users, '{');
    bool first_id = true;
    for (rt_op_t *op = ops; op != end; op = op->next) {
        for (rt_job_t *j = op->jobs; j; j = j->next) {
            sl_buf_printf(&ids, "%s%lld", first_id ? "" : ",", (long long)j->parked_id);
            first_id = false;
        }
        put_array_item(&dests, op->dest_id, op == ops);
        put_array_item(&users, op->user_key, op == ops);
    }
    sl_buf_putc(&ids, '}');
    sl_buf_putc(&dests, '}');
    sl_buf_putc(&users, '}');
    const char *p[] = {ids.data};
    int rc =
        exec(c, "DELETE FROM sluice_parked WHERE id = ANY($1::bigint[])", 1, p, NULL, err, errsz);
    PGresult *r = NULL;
    if (!rc) {
        /* the ordinal of each op whose key has no row left */
        const char *kp[] = {s->topic, dests.data, users.data};
        rc = exec(c,
                  "WITH u AS (SELECT d, k, i FROM unnest($2::text[], $3::text[]) WITH "
                  "ORDINALITY AS u(d, k, i)), e AS (SELECT DISTINCT d, k FROM u WHERE NOT EXISTS "
                  "(SELECT 1 FROM sluice_parked p WHERE p.kafka_topic = $1 AND p.destination_id "
                  "= u.d AND p.user_key = u.k)), x AS (DELETE FROM sluice_parked_keys pk USING e "
                  "WHERE pk.kafka_topic = $1 AND pk.destination_id = e.d AND pk.user_key = e.k) "
                  "SELECT u.i FROM u JOIN e ON u.d = e.d AND u.k = e.k ORDER BY u.i",
                  3, kp, &r, err, errsz);
    }
    if (!rc) {
        int t = 0, nt = PQntuples(r);
        long i = 1;
        for (rt_op_t *op = ops; op != end; op = op->next, i++) {
            while (t < nt && atol(PQgetvalue(r, t, 0)) < i)
                t++;
            op->key_empty = t < nt && atol(PQgetvalue(r, t, 0)) == i;
        }
        PQclear(r);
        sl_buf_reset(&dests);
        sl_buf_reset(&users);
        sl_buf_putc(&dests, '{');
        sl_buf_putc(&users, '{');
        bool any = false;
        for (rt_op_t *op = ops; op != end; op = op->next) {
            if (!op->release || op->key_empty)
                continue;
            put_array_item(&dests, op->dest_id, !any);
            put_array_item(&users, op->user_key, !any);
            any = true;
        }
        if (any) {
            sl_buf_putc(&dests, '}');
            sl_buf_putc(&users, '}');
            const char *rp[] = {s->topic, dests.data, users.data};
            rc = exec(c,
                      "UPDATE sluice_parked_keys pk SET next_attempt_at = now() FROM "
                      "unnest($2::text[], $3::text[]) AS r(d, k) WHERE pk.kafka_topic = $1 AND "
                      "pk.destination_id = r.d AND pk.user_key = r.k",
                      3, rp, NULL, err, errsz);
        }
    }
    sl_buf_free(&ids);
    sl_buf_free(&dests);
    sl_buf_free(&users);
    return rc;
}

/* The trace-id and parent span id of a job's traceparent ("" when it has none). */
typedef struct trace_ids {
    char trace_id[SL_TRACE_ID_LEN + 1], parent_span_id[SL_SPAN_ID_LEN + 1];
} trace_ids_t;

static void trace_ids(const rt_job_t *j, trace_ids_t *out)
{
    sl_trace_t t;
    if (sl_trace_parse(j->traceparent, strlen(j->traceparent), &t)) {
        memcpy(out->trace_id, t.trace_id, sizeof(out->trace_id));
        memcpy(out->parent_span_id, t.span_id, sizeof(out->parent_span_id));
    } else {
        *out->trace_id = *out->parent_span_id = '\0';
    }
}

/* Status rows for the jobs of ops that have a state to record, sent on c; with wait, also
 * waits for their outcome (else rt_status_finish must follow a 0 when *sent is set). */
static int write_status(rt_store_t *s, PGconn *c, rt_op_t *ops, bool wait, bool *sent, char *err,
                        size_t errsz)
{
    *sent = false;
    if (!s->c.job_status)
        return 0;
    size_t n = 0, cap = 64;
    rt_status_row_t *rows = sl_malloc(cap * sizeof(*rows));
    trace_ids_t *ids = sl_malloc(cap * sizeof(*ids));
    for (rt_op_t *op = ops; op; op = op->next) {
        if (op->kind == RT_OP_LOADED || op->kind == RT_OP_RELEASE)
            continue;
        for (rt_job_t *j = op->jobs; j; j = j->next) {
            if (!j->state)
                continue;
            if (n == cap) {
                cap *= 2;
                rows = sl_realloc(rows, cap * sizeof(*rows));
                ids = sl_realloc(ids, cap * sizeof(*ids));
            }
            trace_ids(j, &ids[n]);
            rows[n] = (rt_status_row_t){
                .job_id = j->job_id,
                .message_id = j->message_id,
                .source_id = j->source_id,
                .destination_id = j->dest_id,
                .destination_type = j->dest_type,
                .user_key = j->user_key,
                .state = j->state,
                .attempts = j->attempts,
                .last_status = j->last_status,
                .last_response = j->last_response,
                .last_response_len = j->last_response ? strlen(j->last_response) : 0,
                .first_attempt_ms = j->first_ms,
                .last_attempt_ms = j->last_ms,
                .kafka_topic = s->topic,
                .kafka_partition = j->partition,
                .kafka_offset = j->offset,
                .span_id = j->span_id,
                .received_ms = j->received_ms,
                .enqueued_ms = j->enqueued_ms,
                .picked_ms = j->picked_ms,
                .processed_ms = j->processed_ms,
                .routed_ms = j->routed_ms,
                .completed_ms = j->done_ms,
            };
            n++;
        }
    }
    for (size_t i = 0; i < n; i++) { /* ids is in place now */
        rows[i].trace_id = ids[i].trace_id;
        rows[i].parent_span_id = ids[i].parent_span_id;
    }
    int rc = 0;
    if (n) {
        rc =
            wait ? rt_status_write(c, rows, n, err, errsz) : rt_status_send(c, rows, n, err, errsz);
        *sent = !wait && !rc;
    }
    free(rows);
    free(ids);
    return rc;
}

/* Puts ops..last back in front of the queue. */
static void put_back(rt_store_t *s, rt_op_t *ops, rt_op_t *last)
{
    pthread_mutex_lock(&s->lock);
    last->next = s->in_head;
    s->in_head = ops;
    if (!s->in_tail)
        s->in_tail = last;
    pthread_mutex_unlock(&s->lock);
}

/* Waits *backoff ms (less if stopped: new ops do not cut it short, or each would retry
 * and log while Postgres is away), then doubles it up to 5 s. */
static void backoff_wait(rt_store_t *s, int64_t *backoff)
{
    pthread_mutex_lock(&s->lock);
    struct timespec ts;
    sl_time_deadline(&ts, *backoff);
    while (!s->stop && pthread_cond_timedwait(&s->cond, &s->lock, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&s->lock);
    *backoff = *backoff * 2 > 5000 ? 5000 : *backoff * 2;
}

static bool status_inflight(const rt_store_t *s)
{
    for (int i = 0; i < STATUS_SLOTS; i++)
        if (s->slots[i].ops)
            return true;
    return false;
}

/* Waits for the oldest batch in flight: gives its ops back, or puts them back in front of the
 * queue when Postgres did not take them, and then ops..last (taken off the queue after them,
 * may be NULL) behind them. Returns 0 or the error (errstr set). */
static int status_finish_oldest(rt_store_t *s, rt_op_t *ops_after, rt_op_t *last_after, char *err,
                                size_t errsz)
{
    for (int i = 0; i < STATUS_SLOTS && !s->slots[s->oldest].ops; i++)
        s->oldest = (s->oldest + 1) % STATUS_SLOTS;
    status_slot_t *sl = &s->slots[s->oldest];
    if (!sl->ops)
        return 0;
    s->oldest = (s->oldest + 1) % STATUS_SLOTS;
    int rc = sl->c ? rt_status_finish(sl->c, err, errsz) : 0;
    rt_op_t *ops = sl->ops, *last = sl->last;
    size_t n = sl->n;
    sl->c = NULL;
    sl->ops = sl->last = NULL;
    sl->n = 0;
    if (rc) {
        sl_warn("router", "could not record %zu operations (will retry): %s", n, err);
        if (ops_after)
            put_back(s, ops_after, last_after);
        put_back(s, ops, last);
        return rc;
    }
    give_back(s, ops);
    return 0;
}

/* Waits for every batch in flight; the first error, if any. */
static int status_finish_all(rt_store_t *s, char *err, size_t errsz)
{
    int rc = 0;
    while (status_inflight(s)) {
        int r = status_finish_oldest(s, NULL, NULL, err, errsz);
        rc = rc ? rc : r;
    }
    return rc;
}

/* Sends a batch of status rows only (ops..last, n ops) on a free status connection, waiting
 * for the oldest batch in flight first when none is free: Postgres takes in one batch while
 * this thread builds the next. Returns 0 (the ops are in flight, or given back when they had
 * nothing to record) or an error with the ops back in the queue. */
static int status_send(rt_store_t *s, rt_op_t *ops, rt_op_t *last, size_t n, char *err,
                       size_t errsz)
{
    status_slot_t *sl = NULL;
    for (int i = 0; i < STATUS_SLOTS && !sl; i++)
        if (!s->slots[(s->oldest + i) % STATUS_SLOTS].ops)
            sl = &s->slots[(s->oldest + i) % STATUS_SLOTS];
    if (!sl) {
        sl = &s->slots[s->oldest];
        int rc = status_finish_oldest(s, ops, last, err, errsz);
        if (rc)
            return rc;
    }
    PGconn *c = sl_pg_conn(sl->pg, err, errsz);
    bool sent = false;
    int rc = c ? write_status(s, c, ops, false, &sent, err, errsz) : SL_ERR_TRANSIENT;
    if (rc) {
        sl_warn("router", "could not record %zu operations (will retry): %s", n, err);
        put_back(s, ops, last);
        return rc;
    }
    if (!sent) { /* nothing to record */
        give_back(s, ops);
        return 0;
    }
    if (!status_inflight(s))
        s->oldest = (unsigned)(sl - s->slots);
    sl->c = c;
    sl->ops = ops;
    sl->last = last;
    sl->n = n;
    return 0;
}

/* Runs ops in one transaction. Returns 0, or an error with nothing committed. */
static int run_ops(rt_store_t *s, PGconn *c, rt_op_t *ops, char *err, size_t errsz)
{
    int rc = exec(c, "BEGIN", 0, NULL, NULL, err, errsz);
    /* Parking first: resolving a key's parked rows in the same transaction sees them. */
    if (!rc)
        rc = park_all(s, c, ops, err, errsz);
    for (rt_op_t *op = ops, *next; op && !rc; op = next) {
        next = op->next;
        switch (op->kind) {
        case RT_OP_PARKED_FAIL:
            rc = parked_fail(s, c, op, err, errsz);
            break;
        case RT_OP_PARKED_DONE:
            while (next && next->kind == RT_OP_PARKED_DONE)
                next = next->next;
            rc = parked_done_run(s, c, op, next, err, errsz);
            break;
        case RT_OP_RELEASE:
            rc = set_due(s, c, op, err, errsz);
            break;
        default:
            break;
        }
    }
    bool sent;
    if (!rc)
        rc = write_status(s, c, ops, true, &sent, err, errsz);
    if (!rc)
        rc = exec(c, "COMMIT", 0, NULL, NULL, err, errsz);
    if (rc) {
        PQclear(PQexec(c, "ROLLBACK"));
        for (rt_op_t *op = ops; op; op = op->next)
            op->key_empty = false;
    }
    return rc;
}

static rt_job_t *row_job(PGresult *r, int i, const char *dest, const char *user)
{
    rt_job_t *j = sl_calloc(1, sizeof(*j));
    j->parked_id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
    j->raw = sl_strdup(PQgetvalue(r, i, 1));
    j->raw_len = strlen(j->raw);
    j->attempts = atoi(PQgetvalue(r, i, 2));
    j->first_ms = PQgetisnull(r, i, 3) ? 0 : strtoll(PQgetvalue(r, i, 3), NULL, 10);
    j->partition = atoi(PQgetvalue(r, i, 4));
    j->offset = strtoll(PQgetvalue(r, i, 5), NULL, 10);
    j->last_status = PQgetisnull(r, i, 6) ? 0 : atol(PQgetvalue(r, i, 6));
    j->last_response = PQgetisnull(r, i, 7) ? NULL : sl_strdup(PQgetvalue(r, i, 7));
    sl_trace_t t;
    const char *tp = PQgetvalue(r, i, 8);
    if (!sl_trace_parse(tp, strlen(tp), &t)) /* parked before tracing: a new trace */
        sl_trace_new(&t);
    sl_trace_format(&t, j->traceparent);
    j->tracestate = PQgetisnull(r, i, 9) ? NULL : sl_strdup(PQgetvalue(r, i, 9));
    int64_t *stage[] = {&j->received_ms, &j->enqueued_ms, &j->picked_ms, &j->processed_ms,
                        &j->routed_ms};
    for (int k = 0; k < 5; k++)
        *stage[k] = PQgetisnull(r, i, 10 + k) ? 0 : strtoll(PQgetvalue(r, i, 10 + k), NULL, 10);
    j->dest_id = sl_strdup(dest);
    j->user_key = sl_strdup(user);
    return j;
}

/* The parked-jobs gauges: how many per destination and how old the oldest is. */
static void parked_gauges(rt_store_t *s, PGconn *c)
{
    const char *p[] = {s->topic};
    PGresult *r = PQexecParams(c,
                               "SELECT destination_id, count(*), extract(epoch FROM now() - "
                               "min(parked_at)) FROM sluice_parked WHERE kafka_topic = $1 GROUP "
                               "BY destination_id",
                               1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        /* Destinations with nothing parked any more drop to zero. */
        for (size_t i = 0; i < s->ngauged; i++) {
            bool still = false;
            for (int t = 0; t < PQntuples(r); t++)
                still |= strcmp(PQgetvalue(r, t, 0), s->gauged[i]) == 0;
            if (!still) {
                sl_metrics_set(sl_metrics_gauge("sluice_router_parked", PARKED_HELP, "destination",
                                                s->gauged[i], NULL),
                               0);
                sl_metrics_set(sl_metrics_gauge("sluice_router_parked_oldest_seconds", OLDEST_HELP,
                                                "destination", s->gauged[i], NULL),
                               0);
            }
        }
        for (size_t i = 0; i < s->ngauged; i++)
            free(s->gauged[i]);
        s->ngauged = 0;
        for (int t = 0; t < PQntuples(r); t++) {
            const char *d = PQgetvalue(r, t, 0);
            sl_metrics_set(
                sl_metrics_gauge("sluice_router_parked", PARKED_HELP, "destination", d, NULL),
                atof(PQgetvalue(r, t, 1)));
            sl_metrics_set(sl_metrics_gauge("sluice_router_parked_oldest_seconds", OLDEST_HELP,
                                            "destination", d, NULL),
                           atof(PQgetvalue(r, t, 2)));
            s->gauged = sl_realloc(s->gauged, (s->ngauged + 1) * sizeof(char *));
            s->gauged[s->ngauged++] = sl_strdup(d);
        }
    }
    PQclear(r);
}

/* One drain pass: claims due keys of our partitions and loads their first rows. */
static int drain(rt_store_t *s, PGconn *c, char *err, size_t errsz)
{
    pthread_mutex_lock(&s->lock);
    sl_buf_t parts = SL_BUF_INIT;
    sl_buf_putc(&parts, '{');
    for (size_t i = 0; i < s->nparts; i++)
        sl_buf_printf(&parts, "%s%d", i ? "," : "", (int)s->parts[i]);
    sl_buf_putc(&parts, '}');
    size_t nparts = s->nparts;
    pthread_mutex_unlock(&s->lock);
    if (!nparts) {
        sl_buf_free(&parts);
        return 0;
    }
    char limit[24];
    snprintf(limit, sizeof(limit), "%zu", s->c.load_keys);
    pthread_mutex_lock(&s->lock);
    char *full = sl_strdup(s->full ? s->full : "{}");
    pthread_mutex_unlock(&s->lock);
    const char *p[] = {s->topic, parts.data, limit, full};
    /* One statement: claim the due keys and read each one's first rows (the claim and the
     * read are one snapshot's work; a key claimed with no row left comes back with nulls). */
    PGresult *r;
    int rc = exec(
        c,
        "WITH claimed AS (UPDATE sluice_parked_keys k SET next_attempt_at = 'infinity' FROM ("
        "SELECT destination_id, user_key FROM sluice_parked_keys WHERE kafka_topic = $1 AND "
        "kafka_partition = ANY($2::int[]) AND next_attempt_at <= now() AND NOT destination_id = "
        "ANY($4::text[]) ORDER BY next_attempt_at LIMIT $3::int FOR UPDATE SKIP LOCKED) d WHERE "
        "k.kafka_topic = $1 AND k.destination_id = d.destination_id AND k.user_key = d.user_key "
        "RETURNING k.destination_id, k.user_key, k.kafka_partition) "
        "SELECT p.id, p.job, p.attempts, (extract(epoch FROM p.first_attempt_at) * 1000)::bigint, "
        "p.kafka_partition, p.kafka_offset, p.last_status, p.last_response, p.traceparent, "
        "p.tracestate, (extract(epoch FROM p.received_at) * 1000)::bigint, "
        "(extract(epoch FROM p.enqueued_at) * 1000)::bigint, "
        "(extract(epoch FROM p.picked_at) * 1000)::bigint, "
        "(extract(epoch FROM p.processed_at) * 1000)::bigint, "
        "(extract(epoch FROM p.routed_at) * 1000)::bigint, "
        "c.destination_id, c.user_key, c.kafka_partition FROM claimed c LEFT JOIN LATERAL ("
        "SELECT * FROM sluice_parked p WHERE p.kafka_topic = $1 AND p.destination_id = "
        "c.destination_id AND p.user_key = c.user_key ORDER BY p.id LIMIT 100) p ON true "
        "ORDER BY c.destination_id, c.user_key, p.id",
        4, p, &r, err, errsz);
    sl_buf_free(&parts);
    free(full);
    if (rc)
        return rc;
    rt_op_t *loaded = NULL, *tail = NULL, *op = NULL;
    rt_job_t *jt = NULL;
    bool alone = false; /* the key's head failed before: it goes alone */
    for (int i = 0; i < PQntuples(r); i++) {
        const char *dest = PQgetvalue(r, i, 15), *user = PQgetvalue(r, i, 16);
        if (!op || strcmp(op->dest_id, dest) || strcmp(op->user_key, user)) {
            op = sl_calloc(1, sizeof(*op));
            op->kind = RT_OP_LOADED;
            op->dest_id = sl_strdup(dest);
            op->user_key = sl_strdup(user);
            op->partition = atoi(PQgetvalue(r, i, 17));
            jt = NULL;
            /* if it fails again the rest stays put */
            alone = !PQgetisnull(r, i, 0) && atoi(PQgetvalue(r, i, 2)) > 0;
            if (tail)
                tail->next = op;
            else
                loaded = op;
            tail = op;
        } else if (alone) {
            continue;
        }
        if (PQgetisnull(r, i, 0))
            continue;
        rt_job_t *j = row_job(r, i, dest, user);
        if (jt)
            jt->next = j;
        else
            op->jobs = j;
        jt = j;
    }
    PQclear(r);
    give_back(s, loaded);
    return 0;
}

/* Takes up to MAX_OPS_TXN status ops out of the queue, in order, wherever they are (caller
 * holds s->lock). Returns how many, the first in *first and the last in *last. */
static size_t take_status(rt_store_t *s, rt_op_t **first, rt_op_t **last)
{
    size_t n = 0;
    rt_op_t **pp = &s->in_head, *prev = NULL;
    *first = *last = NULL;
    while (*pp && n < MAX_OPS_TXN) {
        rt_op_t *op = *pp;
        if (op->kind != RT_OP_STATUS) {
            prev = op;
            pp = &op->next;
            continue;
        }
        *pp = op->next;
        if (s->in_tail == op)
            s->in_tail = prev;
        op->next = NULL;
        if (*last)
            (*last)->next = op;
        else
            *first = op;
        *last = op;
        n++;
    }
    return n;
}

static void *store_main(void *arg)
{
    rt_store_t *s = arg;
    int64_t last_drain = 0, backoff = 100;
    char err[512];
    for (;;) {
        pthread_mutex_lock(&s->lock);
        int64_t wait = s->c.park_poll_ms - (sl_time_mono_ms() - last_drain);
        /* with a status batch in flight, nothing new to do means waiting for its outcome */
        if (!s->in_head && !s->stop && !s->drain_now && wait > 0 && !status_inflight(s)) {
            struct timespec ts;
            sl_time_deadline(&ts, wait);
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
        }
        /* Status rows first, wherever they are in the queue, then up to MAX_OPS_TXN other
         * ops in order. A status op depends on no other op, and until its rows are written a
         * crash delivers its jobs twice: a rush of parking must not hold it up. */
        rt_op_t *sts = NULL, *sts_last = NULL;
        size_t nsts = s->c.job_status ? take_status(s, &sts, &sts_last) : 0;
        rt_op_t *ops = s->in_head, *last = NULL;
        size_t n = 0;
        for (rt_op_t *op = ops; op && n < MAX_OPS_TXN; op = op->next, n++)
            last = op;
        if (last) {
            s->in_head = last->next;
            if (!s->in_head)
                s->in_tail = NULL;
            last->next = NULL;
        } else {
            ops = NULL;
        }
        bool stopping = s->stop, drain_now = s->drain_now;
        /* Loading parked jobs while the records of delivered ones queue up would only grow
         * the queue (memory, and what a crash delivers twice) faster than Postgres empties
         * it: a drain is paced by Postgres anyway (each key's rows are deleted as delivered). */
        bool may_drain = s->backlog < RT_STORE_BACKLOG / 5;
        s->drain_now = false;
        pthread_mutex_unlock(&s->lock);

        PGconn *c = sl_pg_conn(s->pg, err, sizeof(err));
        if (!c) {
            if (ops) /* put them back in front */
                put_back(s, ops, last);
            if (sts)
                put_back(s, sts, sts_last);
            if (stopping)
                break;
            sl_warn("router", "parking and job status wait for postgres: %s", err);
            backoff_wait(s, &backoff);
            continue;
        }
        /* Status rows go to a status connection. They need no flush to disk: losing them to a
         * Postgres crash costs a duplicate delivery at worst, never a job. Parking waits for
         * the flush, on c, after the status batches in flight. */
        int src = 0;
        if (sts) /* on an error, the ops are back in the queue */
            src = status_send(s, sts, sts_last, nsts, err, sizeof(err));
        if (!src && (ops || stopping))
            src = status_finish_all(s, err, sizeof(err));
        else if (!src && !sts && status_inflight(s))
            src = status_finish_oldest(s, NULL, NULL, err, sizeof(err));
        if (src && ops) {
            put_back(s, ops, last);
            ops = NULL;
        }
        if (src) {
            backoff_wait(s, &backoff);
            if (stopping)
                break;
            continue;
        }
        if (sts)
            backoff = 100;
        if (ops) {
            if (run_ops(s, c, ops, err, sizeof(err)) != 0) {
                sl_warn("router", "could not record %zu operations (will retry): %s", n, err);
                PQreset(c);
                put_back(s, ops, last);
                backoff_wait(s, &backoff);
                if (stopping)
                    break;
                continue;
            }
            backoff = 100;
            give_back(s, ops);
        }
        if (stopping && !ops && !sts)
            break;
        int64_t now = sl_time_mono_ms();
        if (s->c.job_status && now - s->last_maintain > 3600 * 1000) {
            if (rt_status_maintain(c, sl_time_now_ms(), s->c.retention_ms, err, sizeof(err)))
                sl_warn("router", "job status partitions: %s", err);
            s->last_maintain = now;
        }
        if (now - s->last_gauge >= s->gauge_every) {
            /* Counting millions of parked rows takes seconds, on the thread that parks and
             * records: at most 5% of its time goes to the gauges. */
            parked_gauges(s, c);
            s->last_gauge = sl_time_mono_ms();
            int64_t took = s->last_gauge - now;
            s->gauge_every = took * 20 > GAUGE_EVERY ? took * 20 : GAUGE_EVERY;
        }
        if (!stopping && may_drain && (drain_now || now - last_drain >= s->c.park_poll_ms)) {
            last_drain = now;
            if (drain(s, c, err, sizeof(err)))
                sl_warn("router", "could not load parked jobs: %s", err);
        }
    }
    return NULL;
}

rt_store_t *rt_store_start(const rt_store_conf_t *c)
{
    rt_store_t *s = sl_calloc(1, sizeof(*s));
    s->c = *c;
    s->dsn = sl_strdup(c->dsn);
    s->topic = sl_strdup(c->topic);
    s->c.dsn = s->dsn;
    s->c.topic = s->topic;
    s->pg = sl_pg_new(s->dsn);
    for (int i = 0; i < STATUS_SLOTS; i++) {
        s->slots[i].pg = sl_pg_new(s->dsn);
        sl_pg_on_connect(s->slots[i].pg, "SET synchronous_commit = off");
    }
    s->last_maintain = -3600 * 1000 - 1;
    s->gauge_every = GAUGE_EVERY;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_create(&s->thread, NULL, store_main, s);
    pthread_setname_np(s->thread, "rt:store"); /* in top -H and the benchmarks' figures */
    return s;
}

void rt_store_stop(rt_store_t *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    for (rt_op_t *op = s->in_head, *next; op; op = next) {
        next = op->next;
        rt_op_free(op);
    }
    for (rt_op_t *op = s->out_head, *next; op; op = next) {
        next = op->next;
        rt_op_free(op);
    }
    sl_pg_destroy(s->pg);
    for (int i = 0; i < STATUS_SLOTS; i++) { /* batches left in flight when Postgres was down */
        for (rt_op_t *op = s->slots[i].ops, *next; op; op = next) {
            next = op->next;
            rt_op_free(op);
        }
        sl_pg_destroy(s->slots[i].pg);
    }
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s->parts);
    free(s->full);
    for (size_t i = 0; i < s->ngauged; i++)
        free(s->gauged[i]);
    free(s->gauged);
    free(s->dsn);
    free(s->topic);
    free(s);
}
