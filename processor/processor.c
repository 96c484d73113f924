/*
 * The processor role, see processor.h. Events are consumed in transactions: the delivery jobs
 * and dead letters an event yields and its consumed offset are committed in one Kafka
 * transaction, so on a real cluster each event's outputs appear exactly once to read_committed
 * consumers. A failed transaction is aborted and its events are read again.
 */
#include "processor/processor.h"
#include "common/jsonc.h"
#include "common/buf.h"
#include "common/deadletter.h"
#include "common/err.h"
#include "common/json_scan.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "common/trace.h"
#include "processor/dedup.h"
#include "processor/desttx.h"
#include "processor/select.h"
#include "processor/stats.h"
#include "processor/usertx.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PR_TXN_TIMEOUT_MS 30000
#define PR_BATCH          500 /* events consumed and processed together */
/* What the loop processes while the last transaction commits, at most (jobs, bytes): some
 * 80 ms of events at 60,000 a second (a commit takes ~20 ms). */
#define PR_STAGE_MAX       5000
#define PR_STAGE_MAX_BYTES (4u << 20)
/* A transformation's events of one batch go to the sandbox workers in calls of this many, which
 * run at once on the workers while the processor delivers the results of the calls before. */
#define PR_TX_CHUNK       64
#define PR_TX_THREADS_MAX 16 /* helper threads making the calls, at most (one per worker) */

/* Kafka headers: from the gateway, to the router, and on events sent again by
 * `sluice failed retry` (which go to one destination and skip dedup). */
#define HDR_SOURCE_ID      "sluice-source-id"
#define HDR_RECEIVED_AT    "sluice-received-at"
#define HDR_RETRY_DEST     "sluice-retry-destination"
#define HDR_DESTINATION_ID "sluice-destination-id"
#define HDR_MESSAGE_ID     "sluice-message-id"
#define HDR_ATTEMPT        "sluice-attempt"
#define HDR_FAILED_STAGE   "sluice-failed-stage"

/* A record produced while the last transaction commits, for the next one. */
typedef struct staged {
    const char *topic; /* one of the processor's topic names */
    char *key, *value;
    size_t key_len, value_len;
    rd_kafka_headers_t *headers;
} staged_t;

/* The next offset to commit for each partition consumed in the open transaction. */
typedef struct position {
    int32_t partition;
    int64_t next;
} position_t;

struct pr_processor {
    sl_wsconf_t *ws;
    const sl_conf_t *conf;
    rd_kafka_t *consumer, *producer;
    char *events_topic, *delivery_topic, *failed_topic, *warehouse_topic;
    char *group; /* <topic prefix>processor */
    char *txn_id;
    pthread_t thread;
    atomic_bool stop;
    int64_t txn_interval_ms;
    size_t txn_max_events;

    bool txn_open;
    int64_t txn_start; /* monotonic ms when the open transaction began */
    /* The commit in the background (processor_main only): the loop goes on processing the
     * next events meanwhile, holding their records in staged until it is done. */
    bool committing;
    pthread_t committer;
    atomic_bool commit_done;
    int commit_rc; /* the committer's: txn_finish's result */
    rd_kafka_topic_partition_list_t *commit_offs;
    rd_kafka_consumer_group_metadata_t *commit_cgmd;
    staged_t *staged;
    size_t nstaged, capstaged, staged_bytes;
    int dev_broker;    /* sl_kafka_cluster_is_dev of the consumer's cluster; -1 not known yet */
    int64_t picked_ms; /* when the batch being processed was read (wall clock) */
    position_t *pos;
    size_t npos, cappos, txn_events;

    pr_desttx_t *desttx;      /* destination definitions */
    pr_desttx_out_t txout;    /* the processor thread's transformation output, reused */
    sl_json_index_t scan_idx; /* the processor thread's scanner index, reused */
    sl_buf_t job, corrected;  /* the processor thread's job and corrected-event buffers */
    pr_usertx_pool_t *usertx; /* started on first use */
    bool usertx_broken;       /* could not start: transformations fail until restart */
    char *tx_dir;             /* processor.transformations_dir */
    struct code_cache *codes; /* code of transformations by versionId, from tx_dir */
    struct pending *pending;  /* events waiting for their user transformation */
    size_t npending, cappending;
    pr_dedup_t *dedup; /* NULL when dedup is off */
    int64_t dedup_window_ms;
    size_t dedup_max_ids;
    char **only; /* batch mode (pr_processor_new_batch): the destinations served */
    size_t nonly;

    pr_stats_t *stats; /* per source and destination */
    sl_metric_t *m_txn_commits, *m_txn_aborts;
};

static const char *header_value(const rd_kafka_message_t *m, const char *name, char *buf,
                                size_t bufsz)
{
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t len;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, name, &val, &len) != RD_KAFKA_RESP_ERR_NO_ERROR || !val)
        return NULL;
    if (len >= bufsz)
        len = bufsz - 1;
    memcpy(buf, val, len);
    buf[len] = '\0';
    return buf;
}

/* --- output --- */

static void add_time_header(rd_kafka_headers_t *h, const char *name, int64_t ms)
{
    char t[SL_TIME_STRLEN];
    sl_time_format_ms(ms, t);
    rd_kafka_header_add(h, name, -1, t, -1);
}

/* Adds to h what tracing needs on an output of event m (common/trace.h): the processor's
 * span (a child of the event's traceparent, or a new trace), the event's tracestate, and the
 * times it was received by the gateway (received_at, may be NULL), stored in the events
 * topic, read by this processor and produced now. */
static void add_trace_headers(const pr_processor_t *pr, const rd_kafka_message_t *m,
                              rd_kafka_headers_t *h, const char *received_at)
{
    rd_kafka_headers_t *in = NULL;
    const void *val = NULL;
    size_t len = 0;
    if (rd_kafka_message_headers(m, &in) != RD_KAFKA_RESP_ERR_NO_ERROR)
        in = NULL;
    if (in && rd_kafka_header_get_last(in, SL_HDR_TRACEPARENT, &val, &len))
        val = NULL;
    sl_trace_t span;
    char tp[SL_TRACEPARENT_LEN + 1];
    bool continued = sl_trace_continue(val, len, &span);
    sl_trace_format(&span, tp);
    rd_kafka_header_add(h, SL_HDR_TRACEPARENT, -1, tp, -1);
    if (continued && !rd_kafka_header_get_last(in, SL_HDR_TRACESTATE, &val, &len) && val && len)
        rd_kafka_header_add(h, SL_HDR_TRACESTATE, -1, val, (ssize_t)len);
    if (received_at && *received_at)
        rd_kafka_header_add(h, HDR_RECEIVED_AT, -1, received_at, -1);
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    if (ts > 0)
        add_time_header(h, SL_HDR_ENQUEUED_AT, ts);
    if (pr->picked_ms)
        add_time_header(h, SL_HDR_PICKED_AT, pr->picked_ms);
    add_time_header(h, SL_HDR_PROCESSED_AT, sl_time_now_ms());
}

/* Produces one record in the open transaction, waiting for room in the producer queue. The
 * headers are the producer's afterwards, in every case. Returns false only when stopping (the
 * transaction is then aborted). */
static bool produce(pr_processor_t *pr, const char *topic, const void *key, size_t key_len,
                    const sl_buf_t *value, rd_kafka_headers_t *hdrs)
{
    if (pr->committing) {
        if (pr->nstaged == pr->capstaged) {
            pr->capstaged = pr->capstaged ? pr->capstaged * 2 : 1024;
            pr->staged = sl_realloc(pr->staged, pr->capstaged * sizeof(*pr->staged));
        }
        pr->staged[pr->nstaged++] = (staged_t){.topic = topic,
                                               .key = key ? sl_strndup(key, key_len) : NULL,
                                               .key_len = key_len,
                                               .value = sl_strndup(value->data, value->len),
                                               .value_len = value->len,
                                               .headers = hdrs};
        pr->staged_bytes += key_len + value->len;
        return true;
    }
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            pr->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_VALUE(value->data, value->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
        if (!err)
            return true; /* librdkafka owns hdrs now */
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            sl_error("processor", "could not produce to %s: %s", topic, rd_kafka_err2str(err));
        if (atomic_load(&pr->stop)) {
            rd_kafka_headers_destroy(hdrs);
            return false;
        }
        rd_kafka_poll(pr->producer, 100);
    }
}

/* The delivery job envelope around one request of a destination transformation. */
static void build_job(sl_buf_t *job, const sl_destination_t *d, const char *source_id,
                      const char *message_id, const char *variant, size_t index, size_t nreqs,
                      const char *user_key, const char *received_at, const pr_desttx_req_t *req)
{
    sl_buf_puts(job, "{\"jobId\":");
    char id[600];
    if (nreqs > 1)
        snprintf(id, sizeof(id), "%s:%s%s:%zu", message_id, d->id, variant, index);
    else
        snprintf(id, sizeof(id), "%s:%s%s", message_id, d->id, variant);
    sl_buf_json_str(job, id, strlen(id));
    sl_buf_puts(job, ",\"messageId\":");
    sl_buf_json_str(job, message_id, strlen(message_id));
    sl_buf_puts(job, ",\"sourceId\":");
    sl_buf_json_str(job, source_id, strlen(source_id));
    sl_buf_puts(job, ",\"destinationId\":");
    sl_buf_json_str(job, d->id, strlen(d->id));
    sl_buf_puts(job, ",\"destinationType\":");
    sl_buf_json_str(job, d->def_name, strlen(d->def_name));
    sl_buf_puts(job, ",\"userKey\":");
    sl_buf_json_str(job, user_key, strlen(user_key));
    sl_buf_puts(job, ",\"receivedAt\":");
    sl_buf_json_str(job, received_at, strlen(received_at));
    sl_buf_puts(job, ",\"request\":");
    pr_desttx_write_request(req, job);
    sl_buf_putc(job, '}');
}

/*
 * A dead letter: the event (as JSON when it is JSON, else as a string) with where and why it
 * failed, to the failed topic. The failed-events recorder copies it into Postgres, where
 * `sluice failed list` and `retry` find it.
 */
static bool dead_letter(pr_processor_t *pr, const rd_kafka_message_t *m, const char *stage,
                        const char *reason, const char *source_id, const sl_destination_t *d,
                        const char *message_id, const char *received_at, bool event_is_json)
{
    sl_dead_letter_t dl = {.stage = stage,
                           .reason = reason,
                           .source_id = source_id,
                           .destination_id = d ? d->id : NULL,
                           .destination_type = d ? d->def_name : NULL,
                           .message_id = message_id,
                           .received_at = received_at,
                           .partition = m->partition,
                           .offset = m->offset,
                           .event = m->payload,
                           .event_len = m->payload ? m->len : 0,
                           .event_as = event_is_json ? SL_DL_EVENT_JSON : SL_DL_EVENT_STRING};
    sl_buf_t b = SL_BUF_INIT;
    rd_kafka_headers_t *h = sl_dead_letter_format(&dl, &b);
    add_trace_headers(pr, m, h, received_at);
    bool ok = produce(pr, pr->failed_topic, m->key, m->key_len, &b, h);
    sl_buf_free(&b);
    /* Labelled with the source only when the config has it: the header may say anything. */
    sl_workspace_t *ws = sl_wsconf_get(pr->ws);
    const char *label = source_id && sl_workspace_source_by_id(ws, source_id) ? source_id : NULL;
    sl_metrics_add(pr_stats_get(pr->stats, pr_stats_failed(stage), label, d ? d->id : NULL), 1);
    sl_workspace_unref(ws);
    sl_warn("processor", "event %s failed (%s%s%s): %s; it is in the failed events",
            message_id ? message_id : "(no messageId)", stage, d ? " for destination " : "",
            d ? d->id : "", reason);
    return ok;
}

/* --- user transformations --- */

typedef struct code_cache {
    char *version_id, *code;
    struct code_cache *next;
} code_cache_t;

/* The destination's user transformation: its versionId and code, or false if it has none.
 * The code is the entry's "code" in the workspace config, else <versionId>.js in the
 * transformations directory. *err is set (and true returned) when it can't be loaded. */
static bool transformation_of(pr_processor_t *pr, const sl_destination_t *d,
                              const char **version_id, const char **code, char *err,
                              size_t err_size)
{
    json_object *list, *t;
    *err = '\0';
    if (!json_object_object_get_ex(d->json, "transformations", &list) ||
        !json_object_is_type(list, json_type_array) || json_object_array_length(list) == 0)
        return false;
    t = json_object_array_get_idx(list, 0);
    *version_id = sl_jsonc_str(t, "versionId");
    if (!*version_id || !**version_id) {
        snprintf(err, err_size, "the destination's transformation has no versionId");
        return true;
    }
    *code = sl_jsonc_str(t, "code");
    if (*code)
        return true;
    for (code_cache_t *c = pr->codes; c; c = c->next) {
        if (strcmp(c->version_id, *version_id) == 0) {
            *code = c->code;
            return true;
        }
    }
    if (!*pr->tx_dir) {
        snprintf(err, err_size,
                 "transformation %s has no code in the workspace config and "
                 "processor.transformations_dir is not set",
                 *version_id);
        return true;
    }
    char *text = NULL;
    if (pr_usertx_load_code(pr->tx_dir, *version_id, &text, err, err_size) != 0)
        return true;
    code_cache_t *c = sl_calloc(1, sizeof(*c));
    c->version_id = sl_strdup(*version_id);
    c->code = text;
    c->next = pr->codes;
    pr->codes = c;
    *code = text;
    return true;
}

static pr_usertx_pool_t *usertx_pool(pr_processor_t *pr, char *err, size_t err_size)
{
    if (pr->usertx || pr->usertx_broken)
        return pr->usertx;
    pr_usertx_opts_t o = {
        .workers = (int)sl_conf_int(pr->conf, "processor.transformation_workers"),
        .time_limit_ms = (int)sl_conf_duration_ms(pr->conf, "processor.transformation_time_limit"),
        .memory_limit_bytes =
            (size_t)sl_conf_size(pr->conf, "processor.transformation_memory_limit"),
    };
    pr->usertx = pr_usertx_pool_new(&o, err, err_size);
    if (!pr->usertx) {
        pr->usertx_broken = true;
        sl_error("processor", "could not start the JavaScript sandbox: %s", err);
    }
    return pr->usertx;
}

/* The metadata(event) object RudderStack gives transformations. */
static void metadata_json(sl_buf_t *b, const sl_workspace_t *ws, const char *source_id,
                          const sl_destination_t *d, json_object *ev, const char *received_at)
{
    const char *fields[][2] = {{"sourceId", source_id},
                               {"destinationId", d->id},
                               {"destinationType", d->def_name},
                               {"workspaceId", sl_workspace_id(ws)},
                               {"messageId", sl_jsonc_str(ev, "messageId")},
                               {"rudderId", sl_jsonc_str(ev, "rudderId")},
                               {"receivedAt", received_at},
                               {"eventName", sl_jsonc_str(ev, "event")},
                               {"eventType", sl_jsonc_str(ev, "type")}};
    sl_buf_putc(b, '{');
    bool first = true;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (!fields[i][1])
            continue;
        sl_buf_printf(b, "%s\"%s\":", first ? "" : ",", fields[i][0]);
        sl_buf_json_str(b, fields[i][1], strlen(fields[i][1]));
        first = false;
    }
    sl_buf_putc(b, '}');
}

/*
 * An event waiting for a destination's user transformation. Transformations run once per
 * batch of consumed events, one sandbox round trip per transformation, not per event.
 */
typedef struct pending {
    const rd_kafka_message_t *m;
    sl_workspace_t *ws; /* held: d and the transformation's code live in it */
    const sl_destination_t *d;
    const char *version_id, *code;
    char *text, *meta, *source_id, *message_id, *user_key, *received_at;
} pending_t;

static void pending_add(pr_processor_t *pr, const rd_kafka_message_t *m, sl_workspace_t *ws,
                        const sl_destination_t *d, const char *version_id, const char *code,
                        const char *text, size_t text_len, json_object *ev, const char *source_id,
                        const char *message_id, const char *user_key, const char *received_at)
{
    if (pr->npending == pr->cappending) {
        pr->cappending = pr->cappending ? pr->cappending * 2 : 64;
        pr->pending = sl_realloc(pr->pending, pr->cappending * sizeof(*pr->pending));
    }
    pending_t *p = &pr->pending[pr->npending++];
    sl_buf_t meta = SL_BUF_INIT;
    metadata_json(&meta, ws, source_id, d, ev, received_at);
    *p = (pending_t){.m = m,
                     .ws = sl_workspace_ref(ws),
                     .d = d,
                     .version_id = version_id,
                     .code = code,
                     .text = sl_strndup(text, text_len),
                     .meta = sl_buf_steal(&meta),
                     .source_id = sl_strdup(source_id),
                     .message_id = sl_strdup(message_id),
                     .user_key = sl_strdup(user_key),
                     .received_at = sl_strdup(received_at)};
}

static void pending_clear(pr_processor_t *pr)
{
    for (size_t i = 0; i < pr->npending; i++) {
        pending_t *p = &pr->pending[i];
        sl_workspace_unref(p->ws);
        free(p->text);
        free(p->meta);
        free(p->source_id);
        free(p->message_id);
        free(p->user_key);
        free(p->received_at);
    }
    pr->npending = 0;
}

static bool deliver(pr_processor_t *pr, const rd_kafka_message_t *m, const sl_destination_t *d,
                    json_object *ev, const char *text, size_t text_len, const char *source_id,
                    const char *message_id, const char *variant, const char *user_key,
                    const char *received_at, sl_buf_t *job);

/* What a transformation made of one pending event: dead letter, drop, or deliveries. */
static bool transformed(pr_processor_t *pr, const pending_t *p, pr_usertx_result_t *res,
                        const char *pool_err, sl_buf_t *job)
{
    if (pool_err || res->kind == PR_USERTX_ERROR) {
        char msg[700];
        snprintf(msg, sizeof(msg), "transformation %s: %s", p->version_id,
                 pool_err ? pool_err : res->error);
        return dead_letter(pr, p->m, "user_transformation", msg, p->source_id, p->d, p->message_id,
                           p->received_at, true);
    }
    if (res->kind == PR_USERTX_DROP) {
        sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_DROPPED, p->source_id, p->d->id), 1);
        return true;
    }
    bool ok = true;
    json_object *outs = json_tokener_parse(res->events_json);
    size_t n =
        outs && json_object_is_type(outs, json_type_array) ? json_object_array_length(outs) : 0;
    for (size_t k = 0; k < n && ok; k++) {
        json_object *o = json_object_array_get_idx(outs, k);
        if (!json_object_is_type(o, json_type_object))
            continue;
        /* Outputs of a fan-out get their own job ids: /0, /1, ... */
        const char *otext = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        char variant[32] = "";
        if (n > 1)
            snprintf(variant, sizeof(variant), "/%zu", k);
        ok = deliver(pr, p->m, p->d, o, otext, strlen(otext), p->source_id, p->message_id, variant,
                     p->user_key, p->received_at, job);
    }
    if (outs)
        json_object_put(outs);
    return ok;
}

/* True if every result is the same error about the call rather than one event. */
static bool call_failed(const pr_usertx_result_t *res, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (res[i].kind != PR_USERTX_ERROR || !res[i].error ||
            strcmp(res[i].error, res[0].error) != 0)
            return false;
    return strncmp(res[0].error, "transformation timed out", 24) == 0 ||
           strncmp(res[0].error, "transformation worker", 21) == 0;
}

/* One sandbox call over n events of one transformation, into res. */
typedef struct tx_call {
    pr_usertx_pool_t *pool;
    const char *version_id, *code;
    const char **evs, **metas;
    size_t n;
    pr_usertx_result_t *res;
    const char *err; /* set if the sandbox could not run them */
} tx_call_t;

/* Runs a call; one that fails as a whole (a time-out or a crash) is run again event by event,
 * so that only the culprits fail and the others go on. */
static void *tx_call_run(void *arg)
{
    tx_call_t *c = arg;
    if (pr_usertx_run(c->pool, c->version_id, c->code, c->evs, c->metas, c->n, c->res) != 0) {
        c->err = "the JavaScript sandbox failed; see the processor log";
        return NULL;
    }
    if (c->n > 1 && call_failed(c->res, c->n)) {
        pr_usertx_results_free(c->res, c->n);
        for (size_t k = 0; k < c->n; k++)
            if (pr_usertx_run(c->pool, c->version_id, c->code, &c->evs[k], &c->metas[k], 1,
                              &c->res[k]) != 0 &&
                c->res[k].kind != PR_USERTX_ERROR) {
                c->res[k].kind = PR_USERTX_ERROR;
                c->res[k].error = sl_strdup("the JavaScript sandbox failed");
            }
    }
    return NULL;
}

/* The calls of one transformation's events, PR_TX_CHUNK at a time: helper threads, one per
 * sandbox worker, take them in order, and the processor thread delivers each call's results
 * once it is done, while the workers run the next ones. */
typedef struct tx_calls {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tx_call_t *calls;
    bool *finished;
    size_t n, next; /* next: the first call no helper took yet */
} tx_calls_t;

static void *tx_calls_helper(void *arg)
{
    tx_calls_t *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        size_t i = q->next < q->n ? q->next++ : q->n;
        pthread_mutex_unlock(&q->mu);
        if (i == q->n)
            return NULL;
        tx_call_run(&q->calls[i]);
        pthread_mutex_lock(&q->mu);
        q->finished[i] = true;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
    }
}

/* Runs the pending transformations and delivers the results in the order the events came.
 * Each (destination, transformation) gets its own calls (tx_calls_t). Returns false only when
 * stopping. */
static bool flush_pending(pr_processor_t *pr)
{
    bool ok = true;
    size_t n = pr->npending;
    if (!n)
        return true;
    bool *done = sl_calloc(n, sizeof(bool));
    size_t *idx = sl_malloc(n * sizeof(size_t));
    const char **evs = sl_malloc(n * sizeof(char *)), **metas = sl_malloc(n * sizeof(char *));
    pr_usertx_result_t *res = sl_calloc(n, sizeof(*res));
    size_t maxcalls = (n + PR_TX_CHUNK - 1) / PR_TX_CHUNK;
    tx_calls_t q = {.calls = sl_calloc(maxcalls, sizeof(tx_call_t)),
                    .finished = sl_calloc(maxcalls, sizeof(bool))};
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.cv, NULL);
    for (size_t i = 0; i < n && ok; i++) {
        if (done[i])
            continue;
        const pending_t *first = &pr->pending[i];
        size_t g = 0;
        for (size_t j = i; j < n; j++) {
            const pending_t *p = &pr->pending[j];
            if (!done[j] && strcmp(p->d->id, first->d->id) == 0 &&
                strcmp(p->version_id, first->version_id) == 0 && p->code == first->code) {
                idx[g] = j;
                evs[g] = p->text;
                metas[g] = p->meta;
                done[j] = true;
                g++;
            }
        }
        char err[512] = "";
        pr_usertx_pool_t *pool = usertx_pool(pr, err, sizeof(err));
        q.n = (g + PR_TX_CHUNK - 1) / PR_TX_CHUNK;
        q.next = 0;
        for (size_t c = 0; c < q.n; c++) {
            size_t from = c * PR_TX_CHUNK, len = g - from < PR_TX_CHUNK ? g - from : PR_TX_CHUNK;
            q.calls[c] = (tx_call_t){pool, first->version_id, first->code, evs + from, metas + from,
                                     len,  res + from,        NULL};
            q.finished[c] = false;
        }
        pthread_t helpers[PR_TX_THREADS_MAX];
        size_t nhelpers = 0;
        if (!pool) {
            for (size_t c = 0; c < q.n; c++) {
                q.calls[c].err = *err ? err : "the JavaScript sandbox could not start";
                q.finished[c] = true;
            }
        } else if (q.n == 1) {
            tx_call_run(&q.calls[0]);
            q.finished[0] = true;
        } else {
            size_t want = pr_usertx_pool_size(pool);
            if (want > q.n)
                want = q.n;
            if (want > PR_TX_THREADS_MAX)
                want = PR_TX_THREADS_MAX;
            while (nhelpers < want &&
                   pthread_create(&helpers[nhelpers], NULL, tx_calls_helper, &q) == 0)
                nhelpers++;
            if (!nhelpers) /* no thread: the calls one after the other, here */
                tx_calls_helper(&q);
        }
        for (size_t c = 0; c < q.n; c++) {
            pthread_mutex_lock(&q.mu);
            while (!q.finished[c])
                pthread_cond_wait(&q.cv, &q.mu);
            pthread_mutex_unlock(&q.mu);
            size_t from = c * PR_TX_CHUNK;
            for (size_t k = from; ok && k < from + q.calls[c].n; k++)
                ok = transformed(pr, &pr->pending[idx[k]], &res[k], q.calls[c].err, &pr->job);
            if (!ok) { /* stopping: no new calls; those under way finish */
                pthread_mutex_lock(&q.mu);
                q.next = q.n;
                pthread_mutex_unlock(&q.mu);
                break;
            }
        }
        for (size_t h = 0; h < nhelpers; h++)
            pthread_join(helpers[h], NULL);
        pr_usertx_results_free(res, g);
    }
    pthread_cond_destroy(&q.cv);
    pthread_mutex_destroy(&q.mu);
    free(q.calls);
    free(q.finished);
    free(done);
    free(idx);
    free(evs);
    free(metas);
    free(res);
    pending_clear(pr);
    return ok;
}

/* --- one event --- */

static void note_position(pr_processor_t *pr, int32_t partition, int64_t offset)
{
    for (size_t i = 0; i < pr->npos; i++) {
        if (pr->pos[i].partition == partition) {
            pr->pos[i].next = offset + 1;
            return;
        }
    }
    if (pr->npos == pr->cappos) {
        pr->cappos = pr->cappos ? pr->cappos * 2 : 16;
        pr->pos = sl_realloc(pr->pos, pr->cappos * sizeof(*pr->pos));
    }
    pr->pos[pr->npos++] = (position_t){partition, offset + 1};
}

/* Transforms one event (or one output of a user transformation) for destination d and
 * produces its delivery jobs. Returns false only when stopping. */
static bool deliver(pr_processor_t *pr, const rd_kafka_message_t *m, const sl_destination_t *d,
                    json_object *ev, const char *text, size_t text_len, const char *source_id,
                    const char *message_id, const char *variant, const char *user_key,
                    const char *received_at, sl_buf_t *job)
{
    pr_desttx_out_t *out = &pr->txout;
    bool ok = true;
    int rc = pr_desttx_transform_text(pr->desttx, d, ev, text, text_len, out);
    if (rc == SL_ERR_NOTFOUND || (rc && out->status == PR_DESTTX_FAILED)) {
        char msg[320];
        if (rc == SL_ERR_NOTFOUND)
            snprintf(msg, sizeof(msg), "destination type %s is not supported", d->def_name);
        else
            snprintf(msg, sizeof(msg), "%s", out->reason);
        return dead_letter(pr, m, "destination_transformation", msg, source_id, d, message_id,
                           received_at, true);
    }
    if (rc) {
        sl_debug("processor", "event %s not for destination %s: %s", message_id, d->id,
                 out->reason);
        sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_FILTERED, source_id, d->id), 1);
        return true;
    }
    rd_kafka_headers_t *h = rd_kafka_headers_new(10);
    rd_kafka_header_add(h, HDR_DESTINATION_ID, -1, d->id, -1);
    rd_kafka_header_add(h, HDR_MESSAGE_ID, -1, message_id, -1);
    rd_kafka_header_add(h, HDR_ATTEMPT, -1, "1", 1);
    add_trace_headers(pr, m, h, received_at);
    for (size_t r = 0; r < out->nreqs && ok; r++) {
        sl_buf_reset(job);
        build_job(job, d, source_id, message_id, variant, r, out->nreqs, user_key, received_at,
                  &out->reqs[r]);
        /* Warehouse destinations' events go to the warehouse role, the rest to the router. */
        const char *topic = strcmp(out->reqs[r].method, "WAREHOUSE") == 0 ? pr->warehouse_topic
                                                                          : pr->delivery_topic;
        /* the last request's job takes the headers themselves */
        bool last = r + 1 == out->nreqs;
        ok = produce(pr, topic, m->key, m->key_len, job, last ? h : rd_kafka_headers_copy(h));
        if (ok)
            sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_JOBS, source_id, d->id), 1);
        if (!ok && !last)
            rd_kafka_headers_destroy(h);
    }
    int64_t received_ms;
    if (ok && sl_time_parse_ms(received_at, &received_ms) == 0) {
        int64_t age = sl_time_now_ms() - received_ms;
        sl_metrics_observe(pr_stats_get(pr->stats, PR_STAT_LATENCY, source_id, d->id),
                           age > 0 ? (double)age / 1e3 : 0);
    }
    return ok;
}

/* Parses a span (already validated) into json-c. */
static json_object *parse_span(const char *p, size_t len)
{
    json_tokener *tok = json_tokener_new();
    json_object *o = json_tokener_parse_ex(tok, p, (int)len);
    json_tokener_free(tok);
    return o;
}

/*
 * The event as the selection rules see it, without parsing all of it: the scanner validates
 * the bytes, then only the fields selection, timestamp correction and metadata() read become
 * a small json-c object (`integrations` and `context.consentManagement` are parsed as
 * subtrees). Returns NULL if the bytes are not a JSON object.
 */
static json_object *slim_event(const char *p, size_t len, sl_json_index_t *idx)
{
    static const char *const strings[] = {"type",      "messageId", "event",
                                          "rudderId",  "userId",    "receivedAt",
                                          "timestamp", "sentAt",    "originalTimestamp"};
    sl_json_span_t doc;
    if (!p || !sl_json_scan_indexed(p, len, &doc, NULL, idx) || doc.type != SL_JSON_OBJECT)
        return NULL;
    json_object *ev = json_object_new_object();
    sl_json_members_t it;
    sl_json_members_init(&it, doc);
    char small[512];
    while (sl_json_members_next(&it)) {
        for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
            if (it.value.type != SL_JSON_STRING || !sl_json_key_is(it.key, strings[i]))
                continue;
            size_t n = sl_json_string_decode(it.value, small, sizeof(small));
            char *big = n < sizeof(small) ? NULL : sl_malloc(n + 1);
            if (big)
                sl_json_string_decode(it.value, big, n + 1);
            json_object_object_add_ex(ev, strings[i],
                                      json_object_new_string_len(big ? big : small, (int)n),
                                      JSON_C_OBJECT_KEY_IS_CONSTANT);
            free(big);
        }
        if (sl_json_key_is(it.key, "integrations") && it.value.type == SL_JSON_OBJECT) {
            json_object_object_add_ex(ev, "integrations", parse_span(it.value.p, it.value.len),
                                      JSON_C_OBJECT_KEY_IS_CONSTANT);
        } else if (sl_json_key_is(it.key, "context") && it.value.type == SL_JSON_OBJECT) {
            sl_json_members_t c;
            sl_json_members_init(&c, it.value);
            while (sl_json_members_next(&c)) {
                if (!sl_json_key_is(c.key, "consentManagement"))
                    continue;
                json_object *ctx = json_object_new_object();
                json_object_object_add_ex(ctx, "consentManagement",
                                          parse_span(c.value.p, c.value.len),
                                          JSON_C_OBJECT_KEY_IS_CONSTANT);
                json_object_object_add_ex(ev, "context", ctx, JSON_C_OBJECT_KEY_IS_CONSTANT);
            }
        }
    }
    return ev;
}

/* The whole event, parsed, for destinations whose mapping reads any field. */
static json_object *full_event(const char *text, size_t len)
{
    json_object *o = parse_span(text, len);
    if (o && !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        o = NULL;
    }
    return o;
}

/* False for a destination a batch-mode processor was not asked to serve. */
static bool serves(const pr_processor_t *pr, const sl_destination_t *d)
{
    if (!pr->only)
        return true;
    for (size_t i = 0; i < pr->nonly; i++)
        if (strcmp(pr->only[i], d->id) == 0)
            return true;
    return false;
}

/* Processes one event inside the open transaction. Returns false only when stopping. */
static bool process_event(pr_processor_t *pr, const rd_kafka_message_t *m)
{
    char source_id[256], received_at[64], retry_dest[256];
    bool ok = true;

    json_object *ev = slim_event(m->payload, m->len, &pr->scan_idx), *full = NULL;
    bool parsed = ev != NULL;
    const char *message_id = parsed ? sl_jsonc_str(ev, "messageId") : NULL;
    const char *type = parsed ? sl_jsonc_str(ev, "type") : NULL;
    bool has_source = header_value(m, HDR_SOURCE_ID, source_id, sizeof(source_id)) != NULL;
    sl_workspace_t *ws = sl_wsconf_get(pr->ws);
    const sl_source_t *src = has_source ? sl_workspace_source_by_id(ws, source_id) : NULL;
    const char *label = src ? src->id : NULL; /* metrics: only sources of the config */
    sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_EVENTS, label, NULL), 1);
    if (!message_id || !type || !m->key || !has_source) {
        char reason[200];
        snprintf(reason, sizeof(reason),
                 "not a gateway event at %s [%d] offset %lld: expected a JSON object with "
                 "messageId and type, a key and a %s header",
                 pr->events_topic, (int)m->partition, (long long)m->offset, HDR_SOURCE_ID);
        /* Scanned as JSON, it is still no event for json-c beyond 32 levels: a string then. */
        ok = dead_letter(pr, m, "event", reason, has_source ? source_id : NULL, NULL, message_id,
                         NULL, parsed && !!(full = full_event(m->payload, m->len)));
        goto out;
    }
    if (!header_value(m, HDR_RECEIVED_AT, received_at, sizeof(received_at)))
        snprintf(received_at, sizeof(received_at), "%s",
                 sl_jsonc_str(ev, "receivedAt") ? sl_jsonc_str(ev, "receivedAt") : "");
    const char *only_dest = header_value(m, HDR_RETRY_DEST, retry_dest, sizeof(retry_dest));

    /* Dedup by messageId within the window (events sent again on purpose skip it). */
    if (pr->dedup && !only_dest) {
        rd_kafka_timestamp_type_t tstype;
        int64_t ts = rd_kafka_message_timestamp(m, &tstype);
        if (ts < 0)
            ts = sl_time_now_ms();
        if (pr_dedup_seen(pr->dedup, m->partition, message_id, strlen(message_id), ts)) {
            sl_debug("processor", "dropping duplicate event %s", message_id);
            sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_DUPLICATES, label, NULL), 1);
            goto out;
        }
    }

    char user_key[128];
    snprintf(user_key, sizeof(user_key), "%.*s", (int)m->key_len, (const char *)m->key);
    if (!src || !src->enabled) {
        sl_warn("processor", "dropping event %s: source \"%s\" is %s in the workspace config",
                message_id, source_id, src ? "disabled" : "no longer");
        sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_FILTERED, label, NULL), 1);
        goto out;
    }

    /* Timestamp correction, spliced into the event's bytes (no second serialization). */
    const char *text = m->payload;
    size_t text_len = m->len;
    sl_buf_t *corrected = &pr->corrected;
    char ts[SL_TIME_STRLEN];
    if (pr_timestamp_correct(ev, received_at, ts)) {
        sl_buf_reset(corrected);
        const char *close = memrchr(m->payload, '}', m->len);
        sl_buf_append(corrected, m->payload, (size_t)(close - (const char *)m->payload));
        sl_buf_puts(corrected, ",\"timestamp\":");
        sl_buf_json_str(corrected, ts, strlen(ts));
        sl_buf_putc(corrected, '}');
        text = corrected->data;
        text_len = corrected->len;
        json_object_object_add(ev, "timestamp", json_object_new_string(ts));
    }

    for (size_t i = 0; i < src->ndestinations && ok; i++) {
        const sl_destination_t *d = src->destinations[i];
        if ((only_dest && strcmp(only_dest, d->id) != 0) || !serves(pr, d))
            continue;
        const char *why = pr_select_reason(ev, type, d);
        if (why) {
            sl_debug("processor", "event %s not for destination %s: %s", message_id, d->id, why);
            sl_metrics_add(pr_stats_get(pr->stats, PR_STAT_FILTERED, src->id, d->id), 1);
            continue;
        }
        const char *version_id = NULL, *code = NULL;
        char err[512];
        if (!transformation_of(pr, d, &version_id, &code, err, sizeof(err))) {
            /* WEBHOOK sends the event's bytes; other mappings read the whole event. */
            json_object *use = ev;
            if (strcmp(d->def_name, "WEBHOOK") != 0) {
                if (!full && !(full = full_event(text, text_len))) {
                    ok = dead_letter(pr, m, "event",
                                     "the event is not a JSON object json-c "
                                     "can parse (nested too deep?)",
                                     source_id, d, message_id, received_at, false);
                    continue;
                }
                use = full;
            }
            ok = deliver(pr, m, d, use, text, text_len, source_id, message_id, "", user_key,
                         received_at, &pr->job);
            continue;
        }
        if (*err) {
            char msg[700];
            snprintf(msg, sizeof(msg), "transformation %s: %s", version_id ? version_id : "?", err);
            ok = dead_letter(pr, m, "user_transformation", msg, source_id, d, message_id,
                             received_at, true);
            continue;
        }
        pending_add(pr, m, ws, d, version_id, code, text, text_len, ev, source_id, message_id,
                    user_key, received_at);
    }
out:
    if (ws)
        sl_workspace_unref(ws);
    if (ev)
        json_object_put(ev);
    if (full)
        json_object_put(full);
    return ok;
}

/* --- transactions --- */

/* Logs a transaction error; returns true if it is fatal for this producer. */
static bool txn_error(const char *what, rd_kafka_error_t *err)
{
    sl_error("processor", "kafka transaction: %s failed: %s%s", what, rd_kafka_error_string(err),
             rd_kafka_error_is_fatal(err) ? " (fatal)" : "");
    return rd_kafka_error_is_fatal(err);
}

static void dedup_rebuild(pr_processor_t *pr, const rd_kafka_topic_partition_list_t *assigned);

/* Puts the consumer back at the committed offsets of its assignment, after an abort: the
 * events of the aborted transaction are read and processed again. */
static void rewind_to_committed(pr_processor_t *pr)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(pr->consumer, &parts) || !parts)
        return;
    if (parts->cnt &&
        rd_kafka_committed(pr->consumer, parts, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* The aborted transaction's messageIds are in the dedup sets: rebuild them. */
        if (pr->dedup)
            dedup_rebuild(pr, parts);
        for (int i = 0; i < parts->cnt; i++)
            if (parts->elems[i].offset < 0)
                parts->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_error_t *e = rd_kafka_seek_partitions(pr->consumer, parts, 10000);
        if (e) {
            sl_error("processor", "could not rewind after an aborted transaction: %s",
                     rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        }
    }
    rd_kafka_topic_partition_list_destroy(parts);
}

static void txn_abort(pr_processor_t *pr)
{
    rd_kafka_error_t *e = rd_kafka_abort_transaction(pr->producer, PR_TXN_TIMEOUT_MS);
    if (e) {
        txn_error("abort", e);
        rd_kafka_error_destroy(e);
    }
    pr->txn_open = false;
    pr->npos = 0;
    pr->txn_events = 0;
    sl_metrics_add(pr->m_txn_aborts, 1);
    rewind_to_committed(pr);
}

/* Whether the consumer's cluster is the dev broker, once its metadata says (false before). */
static bool on_dev_broker(pr_processor_t *pr)
{
    if (pr->dev_broker < 0)
        pr->dev_broker = sl_kafka_cluster_is_dev(pr->consumer, 0);
    return pr->dev_broker == 1;
}

/*
 * The embedded dev broker (librdkafka 2.0.2's mock cluster) answers TxnOffsetCommit without
 * storing the offsets, so a processor that lost its partitions, or rewound after an aborted
 * transaction, would start the events topic over. There the offsets of each committed
 * transaction are also committed the plain way (asynchronously: if one is lost, the next
 * transaction's covers it). On a real cluster the transaction alone commits them.
 */
static void commit_on_dev_broker(pr_processor_t *pr, const rd_kafka_topic_partition_list_t *offs)
{
    if (!on_dev_broker(pr))
        return;
    rd_kafka_resp_err_t err = rd_kafka_commit(pr->consumer, offs, 1);
    if (err)
        sl_warn("processor", "could not commit the offsets on the dev broker: %s",
                rd_kafka_err2str(err));
}

/* The consumed offsets of the open transaction, to commit with it (NULL if none). */
static rd_kafka_topic_partition_list_t *txn_offsets(const pr_processor_t *pr)
{
    if (!pr->npos)
        return NULL;
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new((int)pr->npos);
    for (size_t i = 0; i < pr->npos; i++)
        rd_kafka_topic_partition_list_add(offs, pr->events_topic, pr->pos[i].partition)->offset =
            pr->pos[i].next;
    return offs;
}

/* Sends the offsets (if any) to the producer's transaction and commits it. Returns 0, -1 if
 * the transaction must be aborted, or -2 on a fatal error. Uses only the producer, so the
 * committer thread runs it too. */
static int txn_finish(rd_kafka_t *producer, const rd_kafka_topic_partition_list_t *offs,
                      const rd_kafka_consumer_group_metadata_t *cgmd)
{
    rd_kafka_error_t *e;
    if (offs) {
        e = rd_kafka_send_offsets_to_transaction(producer, offs, cgmd, PR_TXN_TIMEOUT_MS);
        if (e) {
            bool fatal = txn_error("sending the consumed offsets", e);
            rd_kafka_error_destroy(e);
            return fatal ? -2 : -1;
        }
    }
    for (int attempt = 0;; attempt++) {
        e = rd_kafka_commit_transaction(producer, PR_TXN_TIMEOUT_MS);
        if (!e)
            return 0;
        bool retry = rd_kafka_error_is_retriable(e) && attempt < 5;
        bool fatal = txn_error("commit", e);
        bool abort_needed = rd_kafka_error_txn_requires_abort(e);
        rd_kafka_error_destroy(e);
        if (fatal)
            return -2;
        if (abort_needed || !retry)
            return -1;
    }
}

/* What follows a commit whose result is rc (txn_finish's): on -1 the transaction is aborted
 * and the consumer rewound. Frees offs. Returns rc. */
static int txn_committed(pr_processor_t *pr, int rc, rd_kafka_topic_partition_list_t *offs)
{
    if (rc == 0) {
        if (offs)
            commit_on_dev_broker(pr, offs);
        sl_metrics_add(pr->m_txn_commits, 1);
    }
    if (offs)
        rd_kafka_topic_partition_list_destroy(offs);
    if (rc == -1)
        txn_abort(pr);
    return rc;
}

/* Commits the open transaction with the consumed offsets, in place. Returns 0, or -1 if it
 * was aborted (the consumer is rewound), or -2 on a fatal error. */
static int txn_commit(pr_processor_t *pr)
{
    if (!pr->txn_open)
        return 0;
    rd_kafka_topic_partition_list_t *offs = txn_offsets(pr);
    rd_kafka_consumer_group_metadata_t *cgmd =
        offs ? rd_kafka_consumer_group_metadata(pr->consumer) : NULL;
    int rc = txn_finish(pr->producer, offs, cgmd);
    if (cgmd)
        rd_kafka_consumer_group_metadata_destroy(cgmd);
    if (rc == 0) {
        pr->txn_open = false;
        pr->npos = 0;
        pr->txn_events = 0;
    }
    return txn_committed(pr, rc, offs);
}

static bool txn_begin(pr_processor_t *pr)
{
    rd_kafka_error_t *e = rd_kafka_begin_transaction(pr->producer);
    if (e) {
        txn_error("begin", e);
        rd_kafka_error_destroy(e);
        return false;
    }
    pr->txn_open = true;
    pr->txn_start = sl_time_mono_ms();
    return true;
}

/* --- the commit in the background --- */

/*
 * A commit waits on the brokers for about 20 ms (the last records' acks, then the offsets and
 * the end of the transaction), several times a second. The loop hands it to a committer
 * thread and goes on processing the next events meanwhile: their records wait in memory
 * (at most PR_STAGE_MAX of them) and go into the next transaction, begun when the commit is
 * done. If the commit fails, they are dropped with it and the consumer is rewound to read
 * their events again.
 */

static void staged_clear(pr_processor_t *pr)
{
    for (size_t i = 0; i < pr->nstaged; i++) {
        free(pr->staged[i].key);
        free(pr->staged[i].value);
        if (pr->staged[i].headers)
            rd_kafka_headers_destroy(pr->staged[i].headers);
    }
    pr->nstaged = 0;
    pr->staged_bytes = 0;
}

static void *committer_main(void *arg)
{
    pr_processor_t *pr = arg;
    pr->commit_rc = txn_finish(pr->producer, pr->commit_offs, pr->commit_cgmd);
    atomic_store(&pr->commit_done, true);
    return NULL;
}

/* Starts committing the open transaction in the background (in place if no thread can be
 * started). Returns 0, or what txn_commit returns when in place. */
static int commit_start(pr_processor_t *pr)
{
    pr->commit_offs = txn_offsets(pr);
    pr->commit_cgmd = pr->commit_offs ? rd_kafka_consumer_group_metadata(pr->consumer) : NULL;
    atomic_store(&pr->commit_done, false);
    if (pthread_create(&pr->committer, NULL, committer_main, pr) != 0) {
        if (pr->commit_offs)
            rd_kafka_topic_partition_list_destroy(pr->commit_offs);
        if (pr->commit_cgmd)
            rd_kafka_consumer_group_metadata_destroy(pr->commit_cgmd);
        pr->commit_offs = NULL;
        pr->commit_cgmd = NULL;
        return txn_commit(pr);
    }
    pr->committing = true;
    pr->txn_open = false;
    pr->npos = 0; /* from here on: the next transaction's */
    pr->txn_events = 0;
    return 0;
}

/* Looks at (or, with wait, waits for) the background commit. Once it is done, the staged
 * records go into a new transaction. Returns 1 while it goes on, 0 when done (or none), -1 if
 * it was aborted (the consumer is rewound), -2 if the producer is unusable (the caller makes
 * a new one and rewinds). */
static int commit_finish(pr_processor_t *pr, bool wait)
{
    if (!pr->committing)
        return 0;
    if (!wait && !atomic_load(&pr->commit_done))
        return 1;
    pthread_join(pr->committer, NULL);
    pr->committing = false;
    if (pr->commit_cgmd)
        rd_kafka_consumer_group_metadata_destroy(pr->commit_cgmd);
    pr->commit_cgmd = NULL;
    rd_kafka_topic_partition_list_t *offs = pr->commit_offs;
    pr->commit_offs = NULL;
    int rc = pr->commit_rc;
    if (rc != 0) {
        staged_clear(pr); /* their events are read again */
        pr->npos = 0;
        pr->txn_events = 0;
        return txn_committed(pr, rc, offs);
    }
    txn_committed(pr, 0, offs);
    if (!pr->nstaged && !pr->npos)
        return 0;
    if (!txn_begin(pr)) {
        staged_clear(pr);
        return -2;
    }
    bool ok = true;
    for (size_t i = 0; i < pr->nstaged; i++) {
        staged_t *st = &pr->staged[i];
        sl_buf_t v = {st->value, st->value_len, st->value_len + 1};
        if (ok)
            ok = produce(pr, st->topic, st->key, st->key_len, &v, st->headers);
        else
            rd_kafka_headers_destroy(st->headers);
        st->headers = NULL; /* the producer's, or destroyed */
    }
    staged_clear(pr);
    if (!ok) { /* stopping */
        txn_abort(pr);
        return -1;
    }
    return 0;
}

/* --- dedup across restarts and rebalances --- */

/*
 * Rebuilds the dedup sets of newly assigned partitions from the events topic: the messageIds
 * of the events before each partition's committed offset, back to the dedup window (at most
 * dedup_max_ids of them). Runs on the processor thread inside the assignment callback.
 */
static void dedup_rebuild(pr_processor_t *pr, const rd_kafka_topic_partition_list_t *assigned)
{
    char errstr[512];
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_copy(assigned);
    if (rd_kafka_committed(pr->consumer, parts, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        sl_warn("processor", "dedup: could not read the committed offsets; the window starts "
                             "empty for the assigned partitions");
        rd_kafka_topic_partition_list_destroy(parts);
        return;
    }
    /* A plain reader: assigned partitions, never subscribed, never committing. */
    char group[512];
    snprintf(group, sizeof(group), "%s-dedup-reader", pr->group);
    rd_kafka_conf_t *kconf =
        sl_kafka_conf_new(pr->conf, SL_KAFKA_CONSUMER, group, errstr, sizeof(errstr));
    rd_kafka_t *rk = kconf ? rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, sizeof(errstr)) : NULL;
    if (!rk) {
        if (kconf)
            rd_kafka_conf_destroy(kconf);
        sl_warn("processor", "dedup: could not create a reader: %s", errstr);
        rd_kafka_topic_partition_list_destroy(parts);
        return;
    }
    /* Where each partition's window starts: by time, then no more than max ids back. */
    rd_kafka_topic_partition_list_t *starts = rd_kafka_topic_partition_list_copy(parts);
    int64_t since = sl_time_now_ms() - pr->dedup_window_ms;
    for (int i = 0; i < starts->cnt; i++)
        starts->elems[i].offset = since;
    rd_kafka_offsets_for_times(rk, starts, 10000);
    bool dev = on_dev_broker(pr);
    size_t want = 0;
    for (int i = 0; i < parts->cnt; i++) {
        int64_t end = parts->elems[i].offset, start = starts->elems[i].offset;
        pr_dedup_forget(pr->dedup, parts->elems[i].partition);
        if (end <= 0) {
            starts->elems[i].offset = RD_KAFKA_OFFSET_END; /* nothing committed: nothing seen */
            continue;
        }
        if (start < 0 && dev)
            start = 0; /* the dev broker finds no offset by time: go by dedup_max_ids alone */
        if (start < 0 || start > end)
            start = end; /* nothing in the window */
        if (end - start > (int64_t)pr->dedup_max_ids)
            start = end - (int64_t)pr->dedup_max_ids;
        starts->elems[i].offset = start;
        want += (size_t)(end - start);
    }
    size_t got = 0;
    json_tokener *tok = json_tokener_new();
    if (want) {
        rd_kafka_assign(rk, starts);
        int64_t deadline = sl_time_mono_ms() + 60000;
        int left = 0;
        for (int i = 0; i < parts->cnt; i++)
            left +=
                starts->elems[i].offset >= 0 && starts->elems[i].offset < parts->elems[i].offset;
        while (left > 0 && sl_time_mono_ms() < deadline && !atomic_load(&pr->stop)) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
            if (!m)
                continue;
            if (!m->err) {
                rd_kafka_topic_partition_t *p =
                    rd_kafka_topic_partition_list_find(parts, pr->events_topic, m->partition);
                if (p && m->offset < p->offset) {
                    json_tokener_reset(tok);
                    json_object *o = json_tokener_parse_ex(tok, m->payload, (int)m->len);
                    const char *mid = o ? sl_jsonc_str(o, "messageId") : NULL;
                    rd_kafka_timestamp_type_t tt;
                    int64_t ts = rd_kafka_message_timestamp(m, &tt);
                    if (mid)
                        pr_dedup_seen(pr->dedup, m->partition, mid, strlen(mid),
                                      ts >= 0 ? ts : sl_time_now_ms());
                    if (o)
                        json_object_put(o);
                    got++;
                    if (m->offset + 1 == p->offset)
                        left--;
                }
            }
            rd_kafka_message_destroy(m);
        }
        rd_kafka_consumer_close(rk);
    }
    json_tokener_free(tok);
    rd_kafka_destroy(rk);
    sl_info("processor", "dedup: rebuilt the window of %d partitions from %zu events", parts->cnt,
            got);
    rd_kafka_topic_partition_list_destroy(starts);
    rd_kafka_topic_partition_list_destroy(parts);
}

/* --- rebalances --- */

static void on_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    pr_processor_t *pr = opaque;
    (void)rk;
    if (pr->dedup && parts->cnt)
        dedup_rebuild(pr, parts);
}

static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    pr_processor_t *pr = opaque;
    (void)rk;
    /* Finish the open transaction while the partitions are still ours. */
    if (pr->committing && commit_finish(pr, true) != 0)
        sl_warn("processor", "the transaction committing at a rebalance was not committed; the "
                             "new owner processes its events again");
    if (pr->txn_open && txn_commit(pr) != 0)
        sl_warn("processor", "the transaction open at a rebalance was not committed; the new "
                             "owner processes its events again");
    if (pr->dedup)
        for (int i = 0; i < parts->cnt; i++)
            pr_dedup_forget(pr->dedup, parts->elems[i].partition);
}

/* --- the loop --- */

static bool init_producer(pr_processor_t *pr, char *errstr, size_t errstr_size);

/* After a fatal producer error: a new producer, and the events of the lost transaction read
 * again (the new producer fences the old one's transaction first). */
static void renew_producer(pr_processor_t *pr)
{
    char err[512];
    rewind_to_committed(pr);
    while (!atomic_load(&pr->stop) && !init_producer(pr, err, sizeof(err))) {
        sl_error("processor", "could not restart the producer: %s", err);
        usleep(1000 * 1000);
    }
}

static void *processor_main(void *arg)
{
    pr_processor_t *pr = arg;
    rd_kafka_message_t *batch[PR_BATCH];
    /* librdkafka refills a full pre-fetch queue up to a second late (common/kafka.h): a
     * processor faster than a queue of events a second would wait out the rest of each one. */
    sl_kafka_nudger_t *nudger = sl_kafka_nudger_start(pr->consumer);
    while (!atomic_load(&pr->stop)) {
        if (pr->committing) {
            bool full = pr->nstaged >= PR_STAGE_MAX || pr->staged_bytes >= PR_STAGE_MAX_BYTES;
            if (commit_finish(pr, full) == -2) {
                renew_producer(pr);
                continue;
            }
        }
        int timeout = 100;
        if (pr->committing) {
            timeout = 0; /* nothing to read: wait for the commit instead (below) */
        } else if (pr->txn_open) {
            int64_t left = pr->txn_start + pr->txn_interval_ms - sl_time_mono_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        /* A batch: what is there now, after waiting for the first message. */
        size_t nb = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(pr->consumer, timeout);
        while (m && nb < PR_BATCH) {
            sl_kafka_nudger_took(nudger, m->len);
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                batch[nb++] = m;
            } else {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    sl_warn("processor", "kafka consumer: %s", rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
            }
            m = nb < PR_BATCH ? rd_kafka_consumer_poll(pr->consumer, 0) : NULL;
        }
        if (!nb && pr->committing) {
            if (commit_finish(pr, true) == -2)
                renew_producer(pr);
            continue;
        }
        if (nb) {
            pr->picked_ms = sl_time_now_ms();
            if (!pr->txn_open && !pr->committing && !txn_begin(pr)) {
                /* The producer is unusable: make a new one, read the events again. */
                for (size_t i = 0; i < nb; i++)
                    rd_kafka_message_destroy(batch[i]);
                renew_producer(pr);
                continue;
            }
            bool ok = true;
            for (size_t i = 0; i < nb && ok; i++)
                ok = process_event(pr, batch[i]);
            ok = ok && flush_pending(pr);
            pending_clear(pr);
            if (ok) {
                for (size_t i = 0; i < nb; i++)
                    note_position(pr, batch[i]->partition, batch[i]->offset);
                pr->txn_events += nb;
            }
            for (size_t i = 0; i < nb; i++)
                rd_kafka_message_destroy(batch[i]);
            if (!ok) {
                /* Stopping in the middle of a batch: none of it may be committed. */
                if (pr->committing) {
                    staged_clear(pr);
                    pr->npos = 0;
                    commit_finish(pr, true);
                }
                if (pr->txn_open)
                    txn_abort(pr);
                break;
            }
        }
        rd_kafka_poll(pr->producer, 0);
        if (pr->txn_open && (pr->txn_events >= pr->txn_max_events ||
                             sl_time_mono_ms() - pr->txn_start >= pr->txn_interval_ms)) {
            if (commit_start(pr) == -2)
                renew_producer(pr);
        }
    }
    /* Drain: commit what was processed. */
    if ((pr->committing && commit_finish(pr, true) != 0) || (pr->txn_open && txn_commit(pr) != 0))
        sl_warn("processor", "the last transaction was not committed; its events are processed "
                             "again after the restart");
    sl_kafka_nudger_stop(nudger);
    rd_kafka_consumer_close(pr->consumer);
    return NULL;
}

/* --- the producer --- */

/* Creates (or re-creates, after a fatal error) the transactional producer. */
static bool init_producer(pr_processor_t *pr, char *errstr, size_t errstr_size)
{
    if (pr->producer) {
        rd_kafka_destroy(pr->producer);
        pr->producer = NULL;
    }
    pr->txn_open = false;
    pr->npos = 0;
    pr->txn_events = 0;
    rd_kafka_conf_t *kconf =
        sl_kafka_conf_new(pr->conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!kconf)
        return false;
    char timeout[32];
    snprintf(timeout, sizeof(timeout), "%d", PR_TXN_TIMEOUT_MS * 2);
    if (rd_kafka_conf_set(kconf, "transactional.id", pr->txn_id, errstr, errstr_size) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(kconf, "transaction.timeout.ms", timeout, errstr, errstr_size) !=
            RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(kconf);
        return false;
    }
    pr->producer = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, errstr_size);
    if (!pr->producer) {
        rd_kafka_conf_destroy(kconf);
        return false;
    }
    rd_kafka_error_t *e = rd_kafka_init_transactions(pr->producer, PR_TXN_TIMEOUT_MS);
    if (e) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                   "could not initialise kafka transactions (transactional.id %s): %s", pr->txn_id,
                   rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        rd_kafka_destroy(pr->producer);
        pr->producer = NULL;
        return false;
    }
    return true;
}

/* Frees pr and its clients (the consumer already closed); the thread is not running. */
static void processor_free(pr_processor_t *pr)
{
    sl_kafka_consumer_destroy(pr->consumer);
    if (pr->producer) {
        rd_kafka_flush(pr->producer, 1000);
        rd_kafka_destroy(pr->producer);
    }
    pr_dedup_free(pr->dedup);
    pending_clear(pr);
    free(pr->pending);
    pr_usertx_pool_free(pr->usertx);
    while (pr->codes) {
        code_cache_t *c = pr->codes;
        pr->codes = c->next;
        free(c->version_id);
        free(c->code);
        free(c);
    }
    free(pr->tx_dir);
    pr_desttx_out_free(&pr->txout);
    sl_json_index_free(&pr->scan_idx);
    sl_buf_free(&pr->job);
    sl_buf_free(&pr->corrected);
    staged_clear(pr);
    free(pr->staged);
    pr_desttx_free(pr->desttx);
    free(pr->pos);
    free(pr->events_topic);
    free(pr->delivery_topic);
    free(pr->failed_topic);
    free(pr->warehouse_topic);
    free(pr->group);
    free(pr->txn_id);
    pr_stats_destroy(pr->stats);
    for (size_t i = 0; i < pr->nonly; i++)
        free(pr->only[i]);
    free(pr->only);
    free(pr);
}

/* What the processor role and a batch-mode processor share: topics, transaction settings,
 * destination definitions, metrics and the transactional producer of txn_id. Returns NULL
 * with errstr. */
static pr_processor_t *processor_new(const sl_conf_t *conf, sl_wsconf_t *ws, const char *txn_id,
                                     char *errstr, size_t errstr_size)
{
    pr_processor_t *pr = sl_calloc(1, sizeof(*pr));
    pr->dev_broker = -1;
    pr->stats = pr_stats_new();
    pr->ws = ws;
    pr->conf = conf;
    pr->events_topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    pr->delivery_topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    pr->failed_topic = sl_kafka_topic(conf, SL_TOPIC_FAILED);
    pr->warehouse_topic = sl_kafka_topic(conf, SL_TOPIC_WAREHOUSE);
    pr->group = sl_kafka_topic(conf, SL_GROUP_PROCESSOR);
    pr->txn_interval_ms = sl_conf_duration_ms(conf, "processor.transaction_interval");
    pr->txn_max_events = (size_t)sl_conf_int(conf, "processor.transaction_max_events");
    pr->txn_id = sl_strdup(txn_id);
    pr->tx_dir = sl_strdup(sl_conf_str(conf, "processor.transformations_dir"));
    pr_desttx_out_t init = PR_DESTTX_OUT_INIT;
    pr->txout = init;

    pr->m_txn_commits =
        sl_metrics_counter("sluice_processor_transactions_total", "Kafka transactions, by outcome",
                           "outcome", "commit", NULL);
    pr->m_txn_aborts =
        sl_metrics_counter("sluice_processor_transactions_total", "Kafka transactions, by outcome",
                           "outcome", "abort", NULL);

    if (pr_desttx_load(&pr->desttx, errstr, errstr_size) != 0 ||
        !init_producer(pr, errstr, errstr_size)) {
        processor_free(pr);
        return NULL;
    }
    return pr;
}

pr_processor_t *pr_processor_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size)
{
    /* The transactional id must be stable across restarts (so a restarted instance fences
     * its predecessor's open transaction at once) and unique per running instance. */
    char *group = sl_kafka_topic(conf, "processor");
    const char *instance = sl_conf_str(conf, "processor.instance_id");
    char id[512];
    if (*instance) {
        snprintf(id, sizeof(id), "%s-%s", group, instance);
    } else {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        snprintf(id, sizeof(id), "%s-%s-%lld", group, host,
                 (long long)sl_conf_int(conf, "processor.port"));
    }
    free(group);
    pr_processor_t *pr = processor_new(conf, ws, id, errstr, errstr_size);
    if (!pr)
        return NULL;
    if (sl_conf_bool(conf, "processor.dedup")) {
        pr->dedup_window_ms = sl_conf_duration_ms(conf, "processor.dedup_window");
        pr->dedup_max_ids = (size_t)sl_conf_int(conf, "processor.dedup_max_ids");
        pr->dedup = pr_dedup_new(pr->dedup_window_ms, pr->dedup_max_ids);
    }
    const char *topics[] = {pr->events_topic, NULL};
    pr->consumer =
        sl_kafka_consumer_new(conf, pr->group, topics, on_revoke, pr, errstr, errstr_size);
    if (!pr->consumer)
        goto fail;
    sl_kafka_consumer_on_assign(pr->consumer, on_assign);
    if (pthread_create(&pr->thread, NULL, processor_main, pr) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start the processor thread");
        goto fail;
    }
    return pr;

fail:
    if (pr->consumer)
        rd_kafka_consumer_close(pr->consumer);
    processor_free(pr);
    return NULL;
}

void pr_processor_stop(pr_processor_t *pr)
{
    if (!pr)
        return;
    atomic_store(&pr->stop, true);
    pthread_join(pr->thread, NULL);
    processor_free(pr);
}

/* --- batch mode --- */

pr_processor_t *pr_processor_new_batch(const sl_conf_t *conf, sl_wsconf_t *ws, rd_kafka_t *consumer,
                                       const char *txn_id, const char *const *destinations,
                                       size_t ndestinations, char *errstr, size_t errstr_size)
{
    pr_processor_t *pr = processor_new(conf, ws, txn_id, errstr, errstr_size);
    if (!pr)
        return NULL;
    pr->consumer = consumer;
    pr->only = sl_calloc(ndestinations ? ndestinations : 1, sizeof(char *));
    for (size_t i = 0; i < ndestinations; i++)
        pr->only[i] = sl_strdup(destinations[i]);
    pr->nonly = ndestinations;
    return pr;
}

int pr_processor_process_batch(pr_processor_t *pr, rd_kafka_message_t *const *msgs, size_t n,
                               char *errstr, size_t errstr_size)
{
    if (!n)
        return 0;
    if (!pr->txn_open && !txn_begin(pr)) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                   "could not begin a kafka transaction (transactional.id %s); see the log",
                   pr->txn_id);
        return -1;
    }
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++)
        ok = process_event(pr, msgs[i]);
    ok = ok && flush_pending(pr);
    pending_clear(pr);
    rd_kafka_poll(pr->producer, 0);
    if (!ok) {
        txn_abort(pr);
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "interrupted");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        note_position(pr, msgs[i]->partition, msgs[i]->offset);
    pr->txn_events += n;
    return 0;
}

int pr_processor_commit_batch(pr_processor_t *pr, char *errstr, size_t errstr_size)
{
    int rc = txn_commit(pr);
    if (rc == -2) {
        /* The new producer fences the old one's transaction; then the offsets are stable. */
        if (!init_producer(pr, errstr, errstr_size))
            return -2;
        rewind_to_committed(pr);
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                   "the kafka producer failed and was made anew; its events are read again");
        return -1;
    }
    if (rc == -1)
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                   "the kafka transaction was aborted; its events are read again");
    return rc;
}

void pr_processor_interrupt(pr_processor_t *pr)
{
    atomic_store(&pr->stop, true);
}

void pr_processor_free_batch(pr_processor_t *pr)
{
    if (!pr)
        return;
    if (pr->txn_open) {
        rd_kafka_error_t *e = rd_kafka_abort_transaction(pr->producer, PR_TXN_TIMEOUT_MS);
        if (e)
            rd_kafka_error_destroy(e);
    }
    pr->consumer = NULL; /* the caller's */
    processor_free(pr);
}
