/*
 * The router role, see router.h.
 *
 * One thread runs the whole delivery loop of a worker (router.workers of them, each its own
 * consumer in the group, so its own share of the partitions and users): it polls the consumer
 * without blocking, keeps the jobs of each (destination, user) key in a queue of which only the
 * head is ever in flight, sends requests with libcurl's multi interface (keep-alive, HTTP/2
 * multiplexing where the server offers it) up to each destination's concurrency, throttle and batch
 * rules, and reads the outcomes. The store thread (store.c) does the Postgres work.
 *
 * A retryable failure parks the job, and every later job of its key, in Postgres: nothing
 * waits in memory, so a destination that is down costs the others nothing and memory stays
 * bounded; a destination over its in-memory share (router.memory_jobs) parks too. Parked jobs
 * come back through the store when due, in order. A job's offset is committed once its
 * outcome is recorded or it is parked.
 */
#include "router/router.h"
#include "common/buf.h"
#include "common/deadletter.h"
#include "common/err.h"
#include "common/json_scan.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "common/trace.h"
#include "router/internal.h"
#include "router/kafka_dest.h"
#include "router/status.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define RT_POLL_MAX        2000 /* messages taken from the consumer per loop */
#define RT_COMMIT_EVERY_MS 500
#define RT_IDLE_WAIT_MS    10 /* the longest sleep: the consumer's wake-up is not always given */
/* ... and after a second without work: 100 wake-ups a second cost ~1% of a core when idle */
#define RT_IDLE_LONG_WAIT_MS 100
#define RT_HEADERS_MAX       64
#define RT_EASY_POOL         1024 /* idle curl handles kept for reuse */
#define RT_SLOW_MS           1000 /* a destination whose requests take longer is slow */
#define RT_BREAKER           50   /* failures in a row after which new jobs are parked untried */
#define RT_REVOKE_WAIT_MS    2000 /* how long a rebalance waits for a request in flight */

/* --- settings per destination (router.* options, overridden by type, then by id) --- */

typedef struct rt_settings {
    int64_t timeout_ms, retry_base_ms, retry_max_ms, give_up_ms;
    int min_attempts, concurrency;
    long throttle_limit; /* 0: none */
    int64_t throttle_window_ms;
    size_t webhook_batch; /* 0/1: WEBHOOK not batched */
} rt_settings_t;

typedef struct rt_key rt_key_t;

/* Why an attempt failed: the reason label of the retried and aborted counters (a fixed set,
 * so the series stay bounded). */
typedef enum rt_why {
    RT_WHY_HTTP_4XX,
    RT_WHY_HTTP_408,
    RT_WHY_HTTP_429,
    RT_WHY_HTTP_5XX,
    RT_WHY_HTTP_OTHER,
    RT_WHY_TIMEOUT,
    RT_WHY_NETWORK,
    RT_WHY_KAFKA,
    RT_WHY_MALFORMED,
    RT_NWHY
} rt_why_t;

static const char *const why_names[RT_NWHY] = {"http_4xx", "http_408",   "http_429",
                                               "http_5xx", "http_other", "timeout",
                                               "network",  "kafka",      "malformed"};

typedef struct rt_dest {
    char *id, *type;
    rt_settings_t set;
    int inflight;
    size_t queued; /* jobs in memory (in key queues, not in flight) */
    rt_key_t *ready_head, *ready_tail;
    size_t nready;
    int64_t batch_since;
    double tat;                     /* throttle: when the next job may go (monotonic ms) */
    double latency_ms;              /* moving average of request durations */
    struct rt_req *oldest, *newest; /* requests in flight, in the order started */
    bool throttled;                 /* held back since the last request */
    bool full;         /* half its share of memory used: its parked jobs are not loaded */
    long failures;     /* retryable failures in a row */
    int64_t logged_ms; /* when a failed attempt was last logged */
    sl_metric_t *m_delivered, *m_throttled, *m_latency, *m_age;
    sl_metric_t *m_retried[RT_NWHY], *m_aborted[RT_NWHY]; /* registered on first use */
    struct rt_dest *next;
} rt_dest_t;

struct rt_key {
    char *dest_id, *user_key; /* user_key points into dest_id's allocation */
    uint64_t hash;
    int32_t partition;
    rt_dest_t *dest;
    rt_job_t *head, *tail; /* waiting jobs, in order */
    bool busy;             /* a request of this key is in flight */
    bool blocked;          /* parked rows exist (or are being written) */
    bool loading;          /* the queue holds loaded parked rows */
    bool in_ready;
    int parks_pending;
    /* Loaded rows delivered, aborted or failed again whose outcome the store has not yet
     * written (PARKED_DONE and PARKED_FAIL ops out): until it has, the rows are still in
     * sluice_parked, and a drain that loads them again must not be taken. */
    int resolving;
    rt_key_t *ready_next, *hnext;
};

typedef struct rt_req {
    rt_router_t *rt;
    rt_dest_t *dest;
    rt_job_t *jobs; /* in order */
    size_t njobs;
    CURL *easy;
    sl_buf_t body, resp;
    char errbuf[CURL_ERROR_SIZE];
    int64_t t0;
    struct rt_req *prev, *next; /* the destination's requests in flight */
    struct curl_slist *headers;
} rt_req_t;

struct rt_router {
    sl_wsconf_t *ws;
    sl_json_index_t job_idx; /* parse_job's, reused (loop thread) */
    rd_kafka_t *consumer, *producer;
    sl_kafka_nudger_t *nudger; /* keeps the consumer's queue filled (common/kafka.h) */
    char *topic, *group, *failed_topic;
    sl_kafka_offsets_t *offsets;
    rt_store_t *store;
    CURL *free_easy[RT_EASY_POOL];
    size_t nfree_easy;
    bool hold;          /* a quick destination is full: stop taking jobs until it drains */
    bool consumer_more; /* the last poll left messages in the consumer queue */
    int64_t busy_ms;    /* the last turn with jobs read, or requests or records in flight */
    rt_op_t *status_op; /* outcomes of this turn, for the store */
    rt_job_t *status_tail;
    sl_pg_t *pg; /* the loop's own connection, for rebalances */
    rt_settings_t defaults;
    char *dest_settings;
    int max_conns, inflight;
    size_t memory_jobs;
    int64_t batch_timeout_ms, park_poll_ms;
    bool job_status;
    CURLM *multi;
    rt_kdest_t *kdest; /* KAFKA destinations */
    rt_dest_t *dests;
    rt_key_t **keys;
    size_t nkeys, keys_cap;
    /* offsets to skip per partition after a restart: jobs already recorded or parked */
    struct rt_skip {
        int32_t partition;
        int64_t *offs;
        size_t n, at;
    } * skips;
    size_t nskips;
    int32_t *parts;
    size_t nparts;
    int wake_pipe[2];
    int epfd;            /* epoll: the sockets libcurl asks for, and the wake pipe */
    int64_t curl_due_ms; /* libcurl's timer (monotonic ms), -1 for none */
    size_t dl_pending;   /* dead letters not yet acknowledged */
    pthread_t thread;
    atomic_bool stop;
    int nworkers;              /* router.workers */
    struct rt_router *next;    /* the next worker (rt_router_start made them all) */
    sl_metric_t *m_partitions; /* partitions assigned to this worker */
};

/* --- settings --- */

/* Applies "NAME.key=value" items of router.destination_settings whose NAME is name. */
static void apply_settings(rt_settings_t *s, const char *spec, const char *name)
{
    if (!spec || !*spec || !name)
        return;
    char *copy = sl_strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ')
            item++;
        char *eq = strchr(item, '=');
        if (!eq)
            continue;
        *eq = '\0';
        char *dot = strrchr(item, '.');
        if (!dot || (size_t)(dot - item) != strlen(name) || strncmp(item, name, dot - item) != 0)
            continue;
        const char *key = dot + 1, *val = eq + 1;
        int64_t ms;
        if (strcmp(key, "throttle") == 0) {
            char *slash = strchr(val, '/');
            s->throttle_limit = strtol(val, NULL, 10);
            s->throttle_window_ms = 1000;
            if (slash && sl_conf_parse_duration(slash + 1, &ms) == 0 && ms > 0)
                s->throttle_window_ms = ms;
        } else if (strcmp(key, "batch") == 0) {
            s->webhook_batch = (size_t)strtoul(val, NULL, 10);
        } else if (strcmp(key, "min_attempts") == 0) {
            s->min_attempts = atoi(val);
        } else if (strcmp(key, "concurrency") == 0) {
            s->concurrency = atoi(val) > 0 ? atoi(val) : 1;
        } else if (sl_conf_parse_duration(val, &ms) == 0) {
            if (strcmp(key, "timeout") == 0)
                s->timeout_ms = ms;
            else if (strcmp(key, "retry_base") == 0)
                s->retry_base_ms = ms;
            else if (strcmp(key, "retry_max") == 0)
                s->retry_max_ms = ms;
            else if (strcmp(key, "give_up_after") == 0)
                s->give_up_ms = ms;
        }
    }
    free(copy);
}

/* Checks router.destination_settings; returns NULL or what is wrong. */
static const char *settings_problem(const char *spec, char *buf, size_t n)
{
    if (!spec || !*spec)
        return NULL;
    static const char *const keys[] = {"timeout",      "retry_base",  "retry_max", "give_up_after",
                                       "min_attempts", "concurrency", "throttle",  "batch"};
    char *copy = sl_strdup(spec), *save = NULL;
    const char *problem = NULL;
    for (char *item = strtok_r(copy, ",", &save); item && !problem;
         item = strtok_r(NULL, ",", &save)) {
        while (*item == ' ')
            item++;
        char *eq = strchr(item, '=');
        char *dot = NULL;
        for (char *c = item; eq && c < eq; c++)
            if (*c == '.')
                dot = c;
        bool known = false;
        if (dot && eq) {
            for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
                known |= strlen(keys[i]) == (size_t)(eq - dot - 1) &&
                         strncmp(dot + 1, keys[i], (size_t)(eq - dot - 1)) == 0;
        }
        if (!known) {
            snprintf(buf, n,
                     "router.destination_settings: \"%s\" is not NAME.key=value with key one of "
                     "timeout, retry_base, retry_max, give_up_after, min_attempts, concurrency, "
                     "throttle, batch",
                     item);
            problem = buf;
        }
    }
    free(copy);
    return problem;
}

/* --- destinations and keys --- */

/* A worker's share of a limit: at least 1. */
static long share(long limit, int nworkers)
{
    long n = (limit + nworkers - 1) / nworkers;
    return n > 0 ? n : 1;
}

static rt_dest_t *dest_get(rt_router_t *rt, const char *id, const char *type)
{
    for (rt_dest_t *d = rt->dests; d; d = d->next)
        if (strcmp(d->id, id) == 0)
            return d;
    rt_dest_t *d = sl_calloc(1, sizeof(*d));
    d->id = sl_strdup(id);
    d->type = sl_strdup(type ? type : "");
    d->set = rt->defaults;
    apply_settings(&d->set, rt->dest_settings, d->type);
    apply_settings(&d->set, rt->dest_settings, d->id);
    /* The workers share the destination's users (by partition), so they share its limits. */
    d->set.concurrency = share(d->set.concurrency, rt->nworkers);
    if (d->set.throttle_limit > 0)
        d->set.throttle_limit = share(d->set.throttle_limit, rt->nworkers);
    const char *l = d->id;
    d->m_delivered = sl_metrics_counter("sluice_router_delivered_total", "Jobs delivered",
                                        "destination", l, NULL);
    d->m_throttled =
        sl_metrics_counter("sluice_router_throttled_total",
                           "Jobs held back by the destination's throttle", "destination", l, NULL);
    d->m_latency =
        sl_metrics_histogram("sluice_router_delivery_seconds", "Duration of one delivery request",
                             NULL, 0, "destination", l, NULL);
    d->m_age = sl_metrics_histogram(
        "sluice_router_latency_seconds",
        "Time from the gateway's receivedAt to the job's delivery, by destination",
        sl_metrics_age_buckets, sl_metrics_age_nbuckets, "destination", l, NULL);
    d->next = rt->dests;
    rt->dests = d;
    return d;
}

/* Counts a failed attempt that will be retried, or an aborted job, by reason. */
static void count_failure(rt_dest_t *d, bool aborted, rt_why_t why)
{
    sl_metric_t **m = aborted ? &d->m_aborted[why] : &d->m_retried[why];
    if (!*m)
        *m = aborted ? sl_metrics_counter("sluice_router_aborted_total",
                                          "Jobs aborted (dead letters), by the last failure",
                                          "destination", d->id, "reason", why_names[why], NULL)
                     : sl_metrics_counter("sluice_router_retried_total",
                                          "Failed attempts that will be retried, by reason",
                                          "destination", d->id, "reason", why_names[why], NULL);
    sl_metrics_add(*m, 1);
}

static uint64_t key_hash(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *s = a; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *s = b; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void keys_grow(rt_router_t *rt)
{
    size_t cap = rt->keys_cap ? rt->keys_cap * 2 : 1024;
    rt_key_t **t = sl_calloc(cap, sizeof(*t));
    for (size_t i = 0; i < rt->keys_cap; i++)
        for (rt_key_t *k = rt->keys[i], *next; k; k = next) {
            next = k->hnext;
            k->hnext = t[k->hash & (cap - 1)];
            t[k->hash & (cap - 1)] = k;
        }
    free(rt->keys);
    rt->keys = t;
    rt->keys_cap = cap;
}

static rt_key_t *key_find(rt_router_t *rt, const char *dest_id, const char *user_key, bool create,
                          int32_t partition, const char *dest_type)
{
    uint64_t h = key_hash(dest_id, user_key);
    if (rt->keys_cap) {
        for (rt_key_t *k = rt->keys[h & (rt->keys_cap - 1)]; k; k = k->hnext)
            if (k->hash == h && strcmp(k->dest_id, dest_id) == 0 &&
                strcmp(k->user_key, user_key) == 0)
                return k;
    }
    if (!create)
        return NULL;
    if (rt->nkeys >= rt->keys_cap / 2)
        keys_grow(rt);
    size_t dl = strlen(dest_id), ul = strlen(user_key);
    rt_key_t *k = sl_calloc(1, sizeof(*k));
    k->dest_id = sl_malloc(dl + ul + 2);
    memcpy(k->dest_id, dest_id, dl + 1);
    k->user_key = k->dest_id + dl + 1;
    memcpy(k->user_key, user_key, ul + 1);
    k->hash = h;
    k->partition = partition;
    k->dest = dest_get(rt, dest_id, dest_type);
    k->hnext = rt->keys[h & (rt->keys_cap - 1)];
    rt->keys[h & (rt->keys_cap - 1)] = k;
    rt->nkeys++;
    return k;
}

/* Frees the key when nothing refers to it any more. */
static void key_maybe_free(rt_router_t *rt, rt_key_t *k)
{
    if (k->head || k->busy || k->blocked || k->loading || k->in_ready || k->parks_pending ||
        k->resolving)
        return;
    rt_key_t **pp = &rt->keys[k->hash & (rt->keys_cap - 1)];
    while (*pp != k)
        pp = &(*pp)->hnext;
    *pp = k->hnext;
    rt->nkeys--;
    free(k->dest_id);
    free(k);
}

static void ready_push(rt_key_t *k)
{
    if (k->in_ready || k->busy || !k->head)
        return;
    rt_dest_t *d = k->dest;
    k->in_ready = true;
    k->ready_next = NULL;
    if (d->ready_tail)
        d->ready_tail->ready_next = k;
    else
        d->ready_head = k;
    d->ready_tail = k;
    d->nready++;
}

static rt_key_t *ready_pop(rt_dest_t *d)
{
    rt_key_t *k = d->ready_head;
    if (!k)
        return NULL;
    d->ready_head = k->ready_next;
    if (!d->ready_head)
        d->ready_tail = NULL;
    d->nready--;
    k->in_ready = false;
    return k;
}

static void key_append(rt_key_t *k, rt_job_t *j)
{
    j->next = NULL;
    if (k->tail)
        k->tail->next = j;
    else
        k->head = j;
    k->tail = j;
    k->dest->queued++;
}

/* --- parsing jobs --- */

/* Why a job cannot be delivered, or NULL. */
static const char *job_problem(const rt_job_t *j, bool parsed, sl_wsconf_t *ws)
{
    if (!parsed)
        return "value is not a JSON object";
    if (!j->dest_id || !*j->dest_id)
        return "no \"destinationId\"";
    if (!j->url || !*j->url)
        return "no \"request.url\"";
    if (!ws)
        return NULL;
    sl_workspace_t *w = sl_wsconf_get(ws);
    bool known = w && sl_workspace_destination_by_id(w, j->dest_id) != NULL;
    if (w)
        sl_workspace_unref(w);
    return known ? NULL : "unknown destination (not in the workspace config)";
}

/* A string member's value, decoded and malloc'ed (len in *n when n is set); NULL if the
 * value is not a string. */
static char *span_str(sl_json_span_t v, size_t *n)
{
    if (v.type != SL_JSON_STRING)
        return NULL;
    char *out = sl_malloc(v.len);
    size_t len = sl_json_string_decode(v, out, v.len);
    if (n)
        *n = len;
    return out;
}

/* The request body of j: a string is the body's bytes (decoded into a copy); any other JSON
 * value (the processor writes a JSON body as JSON) is its own text, used where it is in
 * j->raw; null is no body. */
static void job_body(rt_job_t *j, sl_json_span_t v)
{
    if (v.type == SL_JSON_STRING) {
        j->body = span_str(v, &j->body_len);
    } else if (v.type != SL_JSON_NULL) {
        j->body = (char *)v.p;
        j->body_len = v.len;
        j->body_in_raw = true;
    }
}

static size_t span_size(sl_json_span_t v)
{
    return v.type == SL_JSON_NUMBER ? (size_t)strtoull(v.p, NULL, 10) : 0;
}

/* The string members parse_job keeps, in one allocation per job (j->strs). */
enum {
    S_JOB_ID,
    S_MESSAGE_ID,
    S_SOURCE_ID,
    S_DEST_ID,
    S_DEST_TYPE,
    S_USER_KEY,
    S_METHOD,
    S_URL,
    S_BATCH_KEY,
    S_BATCH_PREFIX,
    S_BATCH_SEP,
    S_BATCH_SUFFIX,
    S_COUNT
};

/* Keeps v for decoding if it is a string (a member of another type is as good as absent). */
static void keep_str(sl_json_span_t *slot, sl_json_span_t v)
{
    if (v.type == SL_JSON_STRING)
        *slot = v;
}

/* Fills a job's fields from j->raw with the byte scanner (the router's hot path: no tree).
 * Returns NULL, or why it can't be delivered. */
static const char *parse_job(rt_router_t *rt, rt_job_t *j)
{
    sl_json_span_t doc, req = {0}, batch = {0}, str[S_COUNT] = {0};
    sl_json_error_t jerr;
    /* indexed: walking the members then skips "request" (the body) without scanning it again */
    bool ok = sl_json_scan_indexed(j->raw, j->raw_len, &doc, &jerr, &rt->job_idx) &&
              doc.type == SL_JSON_OBJECT;
    if (ok) {
        sl_json_members_t it;
        sl_json_members_init(&it, doc);
        while (sl_json_members_next(&it)) {
            if (sl_json_key_is(it.key, "jobId"))
                keep_str(&str[S_JOB_ID], it.value);
            else if (sl_json_key_is(it.key, "messageId"))
                keep_str(&str[S_MESSAGE_ID], it.value);
            else if (sl_json_key_is(it.key, "sourceId"))
                keep_str(&str[S_SOURCE_ID], it.value);
            else if (sl_json_key_is(it.key, "destinationId") && !j->dest_id)
                keep_str(&str[S_DEST_ID], it.value);
            else if (sl_json_key_is(it.key, "destinationType"))
                keep_str(&str[S_DEST_TYPE], it.value);
            else if (sl_json_key_is(it.key, "userKey") && !j->user_key)
                keep_str(&str[S_USER_KEY], it.value);
            else if (sl_json_key_is(it.key, "receivedAt") && it.value.type == SL_JSON_STRING) {
                char ts[64];
                if (sl_json_string_decode(it.value, ts, sizeof(ts)) < sizeof(ts))
                    sl_time_parse_ms(ts, &j->received_ms);
            } else if (sl_json_key_is(it.key, "request") && it.value.type == SL_JSON_OBJECT)
                req = it.value;
        }
    }
    if (ok && req.p) {
        sl_json_members_t it;
        sl_json_members_init(&it, req);
        while (sl_json_members_next(&it)) {
            if (sl_json_key_is(it.key, "method"))
                keep_str(&str[S_METHOD], it.value);
            else if (sl_json_key_is(it.key, "url"))
                keep_str(&str[S_URL], it.value);
            else if (sl_json_key_is(it.key, "body"))
                job_body(j, it.value);
            else if (sl_json_key_is(it.key, "headers") && it.value.type == SL_JSON_OBJECT) {
                j->headers_json = it.value; /* points into j->raw; made a list when sent */
                j->headers_json.idx = NULL; /* the index is the next job's by then */
            } else if (sl_json_key_is(it.key, "batch") && it.value.type == SL_JSON_OBJECT)
                batch = it.value;
        }
    }
    if (batch.p) {
        sl_json_members_t it;
        sl_json_members_init(&it, batch);
        while (sl_json_members_next(&it)) {
            if (sl_json_key_is(it.key, "key"))
                keep_str(&str[S_BATCH_KEY], it.value);
            else if (sl_json_key_is(it.key, "prefix"))
                keep_str(&str[S_BATCH_PREFIX], it.value);
            else if (sl_json_key_is(it.key, "separator"))
                keep_str(&str[S_BATCH_SEP], it.value);
            else if (sl_json_key_is(it.key, "suffix"))
                keep_str(&str[S_BATCH_SUFFIX], it.value);
            else if (sl_json_key_is(it.key, "maxEvents"))
                j->batch_max_events = span_size(it.value);
            else if (sl_json_key_is(it.key, "maxBytes"))
                j->batch_max_bytes = span_size(it.value);
        }
    }
    /* A string span (quotes included) is longer than its decoded text and NUL. */
    size_t total = 0;
    for (int i = 0; i < S_COUNT; i++)
        total += str[i].len;
    char *w = j->strs = total ? sl_malloc(total) : NULL;
    j->strs_len = total;
    char **dst[S_COUNT] = {[S_JOB_ID] = &j->job_id,       [S_MESSAGE_ID] = &j->message_id,
                           [S_SOURCE_ID] = &j->source_id, [S_DEST_ID] = &j->dest_id,
                           [S_DEST_TYPE] = &j->dest_type, [S_USER_KEY] = &j->user_key,
                           [S_METHOD] = &j->method,       [S_URL] = &j->url,
                           [S_BATCH_KEY] = &j->batch_key, [S_BATCH_PREFIX] = &j->batch_prefix,
                           [S_BATCH_SEP] = &j->batch_sep, [S_BATCH_SUFFIX] = &j->batch_suffix};
    for (int i = 0; i < S_COUNT; i++) {
        if (!str[i].p)
            continue;
        *dst[i] = w;
        w += sl_json_string_decode(str[i], w, str[i].len) + 1;
    }
    if (j->batch_key &&
        (!j->batch_prefix || !j->batch_sep || !j->batch_suffix || j->batch_max_events < 2))
        j->batch_key = NULL; /* not batchable */
    const char *problem = job_problem(j, ok, rt->ws);
    if (!j->message_id)
        j->message_id = sl_strdup("");
    if (!j->dest_id)
        j->dest_id = sl_strdup("");
    if (!j->user_key)
        j->user_key = sl_strdup("");
    if (!j->job_id)
        j->job_id = sl_asprintf("%s:%s", j->message_id, j->dest_id);
    if (!j->method)
        j->method = sl_strdup("POST");
    j->topic = rt->topic;
    return problem;
}

/* The trace of a delivery message (common/trace.h): its traceparent (the processor's span;
 * a new trace when it has none or an invalid one), tracestate and stage times. */
static void read_trace(rt_job_t *j, const rd_kafka_message_t *m)
{
    static const char *const times[] = {"sluice-received-at", SL_HDR_ENQUEUED_AT, SL_HDR_PICKED_AT,
                                        SL_HDR_PROCESSED_AT};
    int64_t *dst[] = {&j->received_ms, &j->enqueued_ms, &j->picked_ms, &j->processed_ms};
    rd_kafka_headers_t *h = NULL;
    const void *v = NULL;
    size_t len = 0;
    sl_trace_t t;
    j->routed_ms = sl_time_now_ms();
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    if (h && !rd_kafka_header_get_last(h, SL_HDR_TRACEPARENT, &v, &len) && v &&
        sl_trace_parse(v, len, &t)) {
        if (!rd_kafka_header_get_last(h, SL_HDR_TRACESTATE, &v, &len) && v && len &&
            len <= SL_TRACESTATE_MAX)
            j->tracestate = sl_strndup(v, len);
    } else {
        sl_trace_new(&t);
    }
    sl_trace_format(&t, j->traceparent);
    for (size_t i = 0; h && i < sizeof(times) / sizeof(times[0]); i++) {
        char buf[SL_TIME_STRLEN];
        if (!rd_kafka_header_get_last(h, times[i], &v, &len) && v && len < sizeof(buf)) {
            memcpy(buf, v, len);
            buf[len] = '\0';
            if (sl_time_parse_ms(buf, dst[i]) != 0)
                *dst[i] = 0;
        }
    }
}

/* The span of an attempt to deliver r's jobs: a child of the first job's traceparent, noted
 * on each job of that trace (a batch's request carries its first job's trace). */
static void attempt_span(rt_req_t *r, char traceparent[SL_TRACEPARENT_LEN + 1])
{
    sl_trace_t span;
    sl_trace_continue(r->jobs->traceparent, strlen(r->jobs->traceparent), &span);
    sl_trace_format(&span, traceparent);
    for (rt_job_t *x = r->jobs; x; x = x->next) {
        bool same = strncmp(x->traceparent + 3, span.trace_id, SL_TRACE_ID_LEN) == 0;
        snprintf(x->span_id, sizeof(x->span_id), "%s", same ? span.span_id : "");
    }
}

/* The request headers of job j as a curl list ("Name: value"), plus the attempt's
 * traceparent and j's tracestate unless the destination sets its own, and "Expect:" (bodies
 * over 1 MB would otherwise wait for a 100-continue most servers never send). */
static struct curl_slist *job_headers(const rt_job_t *j, const char *traceparent)
{
    struct curl_slist *l = NULL;
    bool own_trace = false;
    if (j->headers_json.p) {
        sl_json_members_t it;
        sl_json_members_init(&it, j->headers_json);
        sl_buf_t h = SL_BUF_INIT;
        while (sl_json_members_next(&it)) {
            char *name = span_str(it.key, NULL), *val = span_str(it.value, NULL);
            sl_buf_reset(&h);
            sl_buf_printf(&h, "%s: ", name);
            if (val)
                sl_buf_puts(&h, val);
            else
                sl_buf_append(&h, it.value.p, it.value.len);
            l = curl_slist_append(l, h.data);
            own_trace |= name && strcasecmp(name, SL_HDR_TRACEPARENT) == 0;
            free(name);
            free(val);
        }
        sl_buf_free(&h);
    }
    if (!own_trace) {
        char line[SL_TRACESTATE_MAX + 32];
        snprintf(line, sizeof(line), "%s: %s", SL_HDR_TRACEPARENT, traceparent);
        l = curl_slist_append(l, line);
        if (j->tracestate) {
            snprintf(line, sizeof(line), "%s: %s", SL_HDR_TRACESTATE, j->tracestate);
            l = curl_slist_append(l, line);
        }
    }
    return curl_slist_append(l, "Expect:");
}

/* --- recording outcomes --- */

static rt_op_t *op_new(rt_op_kind_t kind, const rt_key_t *k)
{
    rt_op_t *op = sl_calloc(1, sizeof(*op));
    op->kind = kind;
    if (k) {
        op->dest_id = sl_strdup(k->dest_id);
        op->user_key = sl_strdup(k->user_key);
        op->partition = k->partition;
    }
    return op;
}

static void op_add_job(rt_op_t *op, rt_job_t *j)
{
    j->next = NULL;
    rt_job_t **pp = &op->jobs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = j;
}

/* Frees what a job needs only to be sent or parked: its raw JSON and its request. */
static void job_drop_request(rt_job_t *j)
{
    if (j->body_in_raw)
        j->body = NULL; /* freed with raw */
    j->body_in_raw = false;
    char **parts[] = {&j->raw,       &j->method,       &j->url,       &j->body,
                      &j->batch_key, &j->batch_prefix, &j->batch_sep, &j->batch_suffix};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        rt_job_free_str(j, *parts[i]);
        *parts[i] = NULL;
    }
    j->raw_len = j->body_len = 0;
    j->headers_json = (sl_json_span_t){0};
}

/* A job from Kafka reached a final state (succeeded, aborted): record it, then its offset is
 * done (when the store gives the op back). */
static void record_final(rt_router_t *rt, rt_job_t *j)
{
    if (!rt->job_status) {
        sl_kafka_offsets_done(rt->offsets, rt->topic, j->partition, j->offset);
        rt_job_free(j);
        return;
    }
    /* Only the record is left to write: the request's parts go now, not after Postgres (a
     * backlog of RT_STORE_BACKLOG jobs held them all, twice the payload each). */
    job_drop_request(j);
    /* Gathered into one operation per turn of the loop (flush_status). */
    if (!rt->status_op)
        rt->status_op = op_new(RT_OP_STATUS, NULL);
    j->next = NULL;
    if (rt->status_tail)
        rt->status_tail->next = j;
    else
        rt->status_op->jobs = j;
    rt->status_tail = j;
}

static void flush_status(rt_router_t *rt)
{
    if (!rt->status_op)
        return;
    rt_store_push(rt->store, rt->status_op);
    rt->status_op = NULL;
    rt->status_tail = NULL;
}

/* Parks jobs of key k (from Kafka, in order) behind whatever is parked for k. */
static void park(rt_router_t *rt, rt_key_t *k, rt_job_t *jobs, int64_t due_ms)
{
    if (!jobs)
        return;
    rt_op_t *op = op_new(RT_OP_PARK, k);
    op->jobs = jobs;
    op->next_ms = due_ms;
    k->blocked = true;
    k->parks_pending++;
    rt_store_push(rt->store, op);
}

/* Takes the waiting jobs of k out of its queue (in order). */
static rt_job_t *key_take_all(rt_key_t *k)
{
    rt_job_t *jobs = k->head;
    for (rt_job_t *j = jobs; j; j = j->next)
        k->dest->queued--;
    k->head = k->tail = NULL;
    return jobs;
}

/* A dead letter: the job and why, to the failed topic; its outcome is recorded once Kafka has
 * it (dl_report). */
static void dead_letter(rt_router_t *rt, rt_job_t *j, const char *reason)
{
    sl_dead_letter_t dl = {.stage = "router",
                           .reason = reason,
                           .source_id = j->source_id,
                           .destination_id = j->dest_id,
                           .destination_type = j->dest_type,
                           .message_id = j->message_id,
                           .partition = j->partition,
                           .offset = j->offset,
                           .event = j->raw,
                           .event_len = j->raw_len};
    sl_buf_t b = SL_BUF_INIT;
    rd_kafka_headers_t *h = sl_dead_letter_format(&dl, &b);
    if (*j->traceparent)
        rd_kafka_header_add(h, SL_HDR_TRACEPARENT, -1, j->traceparent, -1);
    if (j->tracestate)
        rd_kafka_header_add(h, SL_HDR_TRACESTATE, -1, j->tracestate, -1);
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            rt->producer, RD_KAFKA_V_TOPIC(rt->failed_topic),
            RD_KAFKA_V_KEY(j->user_key, strlen(j->user_key)), RD_KAFKA_V_VALUE(b.data, b.len),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(j),
            RD_KAFKA_V_END);
        if (!err)
            break;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            sl_error("router", "could not produce a dead letter to %s: %s", rt->failed_topic,
                     rd_kafka_err2str(err));
            rd_kafka_headers_destroy(h);
            sl_buf_free(&b);
            rt_job_free(j); /* not recorded: its offset stays uncommitted */
            return;
        }
        rd_kafka_poll(rt->producer, 100);
    }
    rt->dl_pending++;
    sl_buf_free(&b);
}

static void dl_report(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    rt_router_t *rt = opaque;
    rt_job_t *j = m->_private;
    rt->dl_pending--;
    if (m->err) { /* message.timeout.ms is infinite, so this is fatal: leave it uncommitted */
        sl_error("router", "dead letter of job %s not stored: %s", j->job_id,
                 rd_kafka_err2str(m->err));
        rt_job_free(j);
        return;
    }
    if (j->parked_id) {
        rt_op_t *op = sl_calloc(1, sizeof(*op));
        op->kind = RT_OP_PARKED_DONE;
        op->dest_id = sl_strdup(j->dest_id);
        op->user_key = sl_strdup(j->user_key);
        op->partition = j->partition;
        op->release = j->next_ms != 0; /* set by finish_parked: the key's last loaded row */
        op_add_job(op, j);
        rt_key_t *k = key_find(rt, op->dest_id, op->user_key, false, 0, NULL);
        if (k)
            k->resolving++;
        rt_store_push(rt->store, op);
    } else {
        record_final(rt, j);
    }
}

static int64_t backoff_ms(const rt_settings_t *s, int attempts)
{
    int64_t wait = s->retry_base_ms;
    for (int i = 1; i < attempts && wait < s->retry_max_ms; i++)
        wait *= 2;
    return wait > s->retry_max_ms ? s->retry_max_ms : wait;
}

/* --- sending --- */

static size_t on_response(char *p, size_t size, size_t n, void *opaque)
{
    sl_buf_t *b = opaque;
    size_t len = size * n;
    if (b->len < RT_RESPONSE_CAP)
        sl_buf_append(b, p, b->len + len > RT_RESPONSE_CAP ? RT_RESPONSE_CAP - b->len : len);
    return len;
}

/* The element of a batch that job j contributes: its body without prefix and suffix. */
static bool batch_element(const rt_job_t *j, const char **p, size_t *n)
{
    size_t pl = strlen(j->batch_prefix), sl = strlen(j->batch_suffix);
    if (!j->body || j->body_len < pl + sl || memcmp(j->body, j->batch_prefix, pl) != 0 ||
        memcmp(j->body + j->body_len - sl, j->batch_suffix, sl) != 0)
        return false;
    *p = j->body + pl;
    *n = j->body_len - pl - sl;
    return true;
}

static bool same_batch(const rt_job_t *a, const rt_job_t *b)
{
    if (a->batch_key)
        return b->batch_key && strcmp(a->batch_key, b->batch_key) == 0 &&
               strcmp(a->batch_prefix, b->batch_prefix) == 0 &&
               strcmp(a->batch_sep, b->batch_sep) == 0 &&
               strcmp(a->batch_suffix, b->batch_suffix) == 0;
    return !b->batch_key && strcmp(a->url, b->url) == 0 && strcmp(a->method, b->method) == 0;
}

/* How many events a batch of the destination's jobs like j may hold; 1 when not batched. */
static size_t batch_limit(const rt_dest_t *d, const rt_job_t *j)
{
    if (j->batch_key)
        return j->batch_max_events;
    if (d->set.webhook_batch > 1 && strcmp(d->type, "WEBHOOK") == 0 && j->body &&
        strcmp(j->method, "GET") != 0 && strcmp(j->method, "DELETE") != 0)
        return d->set.webhook_batch;
    return 1;
}

static void on_kafka_done(void *opaque, rt_kdest_result_t result, const char *detail, void *ctx);

static void mark_attempt(rt_router_t *rt, rt_req_t *r)
{
    int64_t now = sl_time_now_ms();
    for (rt_job_t *x = r->jobs; x; x = x->next) {
        x->attempts++;
        if (!x->first_ms)
            x->first_ms = now;
        x->last_ms = now;
    }
    r->t0 = sl_time_mono_ms();
    r->prev = r->dest->newest;
    if (r->dest->newest)
        r->dest->newest->next = r;
    else
        r->dest->oldest = r;
    r->dest->newest = r;
    r->dest->inflight++;
    rt->inflight++;
}

/* A KAFKA destination's job: produced to its cluster; the outcome comes through rt_kdest. */
static void start_kafka(rt_router_t *rt, rt_req_t *r)
{
    rt_job_t *j = r->jobs;
    mark_attempt(rt, r);
    char traceparent[SL_TRACEPARENT_LEN + 1];
    attempt_span(r, traceparent);
    char err[512] = "";
    rt_kdest_result_t res = RT_KDEST_ABORT;
    sl_workspace_t *w = rt->ws ? sl_wsconf_get(rt->ws) : NULL;
    const sl_destination_t *d = w ? sl_workspace_destination_by_id(w, j->dest_id) : NULL;
    if (d)
        res = rt_kdest_send(rt->kdest, d, rt_kdest_url_topic(j->url), j->user_key,
                            strlen(j->user_key), j->body ? j->body : "", j->body_len, traceparent,
                            j->tracestate, r, err, sizeof(err));
    else
        snprintf(err, sizeof(err), "destination %s is not in the workspace config", j->dest_id);
    if (w)
        sl_workspace_unref(w);
    if (res != RT_KDEST_OK)
        on_kafka_done(r, res, err, rt);
}

static void start_request(rt_router_t *rt, rt_req_t *r)
{
    rt_job_t *j = r->jobs;
    if (strcmp(j->method, "KAFKA") == 0) {
        start_kafka(rt, r);
        return;
    }
    const rt_settings_t *s = &r->dest->set;
    CURL *c = rt->nfree_easy ? rt->free_easy[--rt->nfree_easy] : curl_easy_init();
    r->easy = c;
    const char *body = j->body;
    size_t body_len = j->body_len;
    if (r->njobs > 1 || j->batch_key) {
        bool wrap = j->batch_key != NULL;
        const char *pre = wrap ? j->batch_prefix : "[", *sep = wrap ? j->batch_sep : ",";
        const char *suf = wrap ? j->batch_suffix : "]";
        /* Sized first (a batch of hundreds of jobs grown by doubling was copied a dozen
         * times): each element is at most its job's body, each followed by a separator. */
        size_t need = strlen(pre) + strlen(suf), nsep = strlen(sep);
        for (rt_job_t *x = j; x; x = x->next)
            need += x->body_len + nsep;
        sl_buf_reserve(&r->body, need);
        sl_buf_puts(&r->body, pre);
        for (rt_job_t *x = j; x; x = x->next) {
            const char *p = x->body;
            size_t n = x->body_len;
            if (wrap)
                batch_element(x, &p, &n);
            if (x != j)
                sl_buf_append(&r->body, sep, nsep);
            sl_buf_append(&r->body, p, n);
        }
        sl_buf_puts(&r->body, suf);
        body = r->body.data;
        body_len = r->body.len;
    }
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, j->method);
    char traceparent[SL_TRACEPARENT_LEN + 1];
    attempt_span(r, traceparent);
    r->headers = job_headers(j, traceparent);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
    if (strcmp(j->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(j->method, "GET") != 0 && strcmp(j->method, "DELETE") != 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
    }
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Wait for a connection that may multiplex only where HTTP/2 can be had (TLS): over
     * plain HTTP/1.1 that would serialise the requests on one connection. */
    if (strncasecmp(j->url, "https:", 6) == 0)
        curl_easy_setopt(c, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)s->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_response);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->resp);
    curl_easy_setopt(c, CURLOPT_PRIVATE, r);
    mark_attempt(rt, r);
    curl_multi_add_handle(rt->multi, c);
}

/* Takes the next request's jobs off destination d's ready keys, if the rules allow one now. */
static bool schedule_one(rt_router_t *rt, rt_dest_t *d, int64_t now)
{
    if (!d->ready_head || d->inflight >= d->set.concurrency || rt->inflight >= rt->max_conns)
        return false;
    long budget = LONG_MAX;
    if (d->set.throttle_limit > 0) {
        /* GCRA: job slots spaced window/limit apart, so no window of that length ever holds
         * more than the limit (+1 for a slot caught up after a late wake-up). */
        if (d->tat > (double)now) {
            d->throttled = true;
            return false;
        }
        budget = d->set.throttle_limit;
    }
    rt_job_t *first = d->ready_head->head;
    size_t limit = batch_limit(d, first);
    if (limit > 1) {
        /* Wait for a fuller batch unless it is full or has waited long enough. */
        if (!d->batch_since)
            d->batch_since = now;
        if (d->queued < limit && now - d->batch_since < rt->batch_timeout_ms)
            return false;
    }
    if ((long)limit > budget)
        limit = (size_t)budget;
    size_t max_bytes =
        first->batch_key && first->batch_max_bytes ? first->batch_max_bytes : (size_t)4 << 20;
    rt_req_t *r = sl_calloc(1, sizeof(*r));
    r->rt = rt;
    r->dest = d;
    rt_job_t *tail = NULL;
    size_t bytes = 0;
    size_t nkeys = d->nready;
    /* One or more keys' consecutive jobs; a key stays busy until the request's outcome. */
    for (size_t ki = 0; ki < nkeys && r->njobs < limit; ki++) {
        rt_key_t *k = d->ready_head;
        if (!k || !same_batch(first, k->head))
            break;
        ready_pop(d);
        while (k->head && r->njobs < limit && same_batch(first, k->head) &&
               (r->njobs == 0 || bytes + k->head->body_len <= max_bytes)) {
            rt_job_t *j = k->head;
            k->head = j->next;
            if (!k->head)
                k->tail = NULL;
            d->queued--;
            j->next = NULL;
            if (tail)
                tail->next = j;
            else
                r->jobs = j;
            tail = j;
            r->njobs++;
            bytes += j->body_len;
            if (limit == 1)
                break;
        }
        k->busy = true;
    }
    if (limit > 1)
        d->batch_since = d->queued ? now : 0;
    if (d->set.throttle_limit > 0) {
        double slot = (double)d->set.throttle_window_ms / (double)d->set.throttle_limit;
        if (d->tat < (double)now - slot)
            d->tat = (double)now - slot;
        d->tat += slot * (double)r->njobs;
        if (d->throttled) /* these jobs waited for the throttle */
            sl_metrics_add(d->m_throttled, (double)r->njobs);
        d->throttled = false;
    }
    start_request(rt, r);
    return true;
}

/* Whether destination d is slow: throttled, or its requests take over RT_SLOW_MS (on average,
 * or the oldest one in flight). A full queue of a quick destination holds the consumer back
 * for a moment; a slow one's overflow is parked, so it never holds up the others. */
static bool dest_slow(const rt_dest_t *d, int64_t now)
{
    if (d->set.throttle_limit > 0 && d->tat > (double)now)
        return true;
    if (d->latency_ms > RT_SLOW_MS)
        return true;
    return d->oldest && now - d->oldest->t0 > RT_SLOW_MS;
}

static void schedule(rt_router_t *rt)
{
    int64_t now = sl_time_mono_ms();
    rt->hold = false;
    size_t nfull = 0;
    bool changed = false;
    for (rt_dest_t *d = rt->dests; d; d = d->next) {
        bool full = d->queued >= rt->memory_jobs / 2;
        changed |= full != d->full;
        d->full = full;
        nfull += full;
        while (schedule_one(rt, d, now))
            ;
        if (d->queued >= rt->memory_jobs && !dest_slow(d, now))
            rt->hold = true;
    }
    if (changed) { /* the drainer leaves full destinations' parked jobs where they are */
        const char **ids = sl_malloc((nfull + 1) * sizeof(*ids));
        size_t n = 0;
        for (rt_dest_t *d = rt->dests; d; d = d->next)
            if (d->full)
                ids[n++] = d->id;
        rt_store_set_full(rt->store, ids, n);
        free(ids);
    }
}

/* --- outcomes --- */

/* The key of a finished job: it is no longer busy; queue its next job. */
static void key_release(rt_router_t *rt, rt_key_t *k)
{
    k->busy = false;
    ready_push(k);
    key_maybe_free(rt, k);
}

/* Outcome of parked job j (loaded): delivered or aborted. */
static void finish_parked(rt_router_t *rt, rt_key_t *k, rt_job_t *j, bool delivered,
                          const char *reason)
{
    bool last = !k->head && !j->next; /* its key has no more loaded rows in memory */
    if (last)
        k->loading = false;
    if (delivered) {
        rt_op_t *op = op_new(RT_OP_PARKED_DONE, k);
        op->release = last;
        op_add_job(op, j);
        k->resolving++;
        rt_store_push(rt->store, op);
    } else {
        j->next_ms = last ? 1 : 0;
        dead_letter(rt, j, reason);
    }
}

/* Takes r off its destination's requests in flight. */
static void req_unlink(rt_router_t *rt, rt_req_t *r)
{
    rt_dest_t *d = r->dest;
    if (r->prev)
        r->prev->next = r->next;
    else
        d->oldest = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        d->newest = r->prev;
    d->inflight--;
    rt->inflight--;
}

static void req_free(rt_req_t *r)
{
    sl_buf_free(&r->body);
    sl_buf_free(&r->resp);
    curl_slist_free_all(r->headers);
    free(r);
}

/* Takes r's transfer out of libcurl and keeps its handle for the next request. */
static void easy_release(rt_router_t *rt, rt_req_t *r)
{
    curl_multi_remove_handle(rt->multi, r->easy);
    if (rt->nfree_easy < RT_EASY_POOL) { /* kept for the next request, options cleared */
        curl_easy_reset(r->easy);
        rt->free_easy[rt->nfree_easy++] = r->easy;
    } else {
        curl_easy_cleanup(r->easy);
    }
    r->easy = NULL;
}

/* A request's outcome: ok, or a failure that is retryable or not, and why; status 0 for
 * none. */
static void outcome(rt_router_t *rt, rt_req_t *r, bool ok, bool retryable, long status,
                    rt_why_t why)
{
    rt_dest_t *d = r->dest;
    sl_metrics_observe(d->m_latency, (double)(sl_time_mono_ms() - r->t0) / 1e3);
    int64_t took = sl_time_mono_ms() - r->t0;
    d->latency_ms = d->latency_ms * 0.9 + (double)took * 0.1;
    req_unlink(rt, r);
    int64_t now = sl_time_now_ms();
    char reason[512];
    snprintf(reason, sizeof(reason), "%s %ld: %.400s", status ? "HTTP" : "error", status,
             r->resp.data ? r->resp.data : "");
    if (!status)
        snprintf(reason, sizeof(reason), "%.500s", r->resp.data ? r->resp.data : "error");

    /* Jobs come per key, consecutive; handle each key's run together. */
    rt_job_t *j = r->jobs;
    while (j) {
        rt_key_t *k = key_find(rt, j->dest_id, j->user_key, false, 0, NULL);
        rt_job_t *run = j, *run_tail = j;
        while (run_tail->next && strcmp(run_tail->next->user_key, j->user_key) == 0)
            run_tail = run_tail->next;
        j = run_tail->next;
        run_tail->next = NULL;
        for (rt_job_t *x = run; x; x = x->next) {
            x->done_ms = now;
            x->last_status = status;
            free(x->last_response);
            x->last_response = r->resp.data ? sl_strndup(r->resp.data, r->resp.len) : NULL;
        }
        if (!k) { /* its partition was revoked meanwhile: leave the jobs for the new owner */
            rt_jobs_free(run);
            continue;
        }
        bool give_up = !ok && (!retryable || (now - run->first_ms > d->set.give_up_ms &&
                                              run->attempts >= d->set.min_attempts));
        if (ok)
            d->failures = 0;
        if (ok) {
            for (rt_job_t *x = run, *next; x; x = next) {
                next = x->next;
                x->state = "succeeded";
                sl_metrics_add(d->m_delivered, 1);
                if (x->received_ms > 0)
                    sl_metrics_observe(
                        d->m_age, now > x->received_ms ? (double)(now - x->received_ms) / 1e3 : 0);
                if (x->parked_id)
                    finish_parked(rt, k, x, true, NULL); /* reads x->next: before unlinking */
                else
                    record_final(rt, x);
            }
        } else if (give_up) {
            for (rt_job_t *x = run, *next; x; x = next) {
                next = x->next;
                x->state = "aborted";
                count_failure(d, true, why);
                sl_warn("router", "aborted job %s to %s after %d attempts: %s", x->job_id, x->url,
                        x->attempts, reason);
                if (x->parked_id)
                    finish_parked(rt, k, x, false, reason);
                else
                    dead_letter(rt, x, reason);
            }
        } else {
            int64_t due = now + backoff_ms(&d->set, run->attempts);
            count_failure(d, false, why);
            d->failures++;
            /* At most one line a second per destination: a destination that is down fails
             * every job. */
            if (sl_time_mono_ms() - d->logged_ms >= 1000) {
                sl_info("router",
                        "job %s attempt %d failed (%s); retrying in %lld ms (%ld failed "
                        "requests to %s in a row)",
                        run->job_id, run->attempts, reason, (long long)(due - now), d->failures,
                        d->id);
                d->logged_ms = sl_time_mono_ms();
            }
            for (rt_job_t *x = run; x; x = x->next)
                x->state = "failed";
            if (run->parked_id) {
                /* The rest of its loaded rows stay in Postgres. */
                rt_op_t *op = op_new(RT_OP_PARKED_FAIL, k);
                op->next_ms = due;
                op->jobs = run;
                rt_jobs_free(key_take_all(k));
                k->loading = false;
                k->resolving++;
                rt_store_push(rt->store, op);
            } else {
                /* The failed jobs, then the key's waiting jobs, all parked in order. */
                rt_job_t *rest = key_take_all(k), *t = run;
                while (t->next)
                    t = t->next;
                t->next = rest;
                for (rt_job_t *x = rest; x; x = x->next)
                    x->state = NULL; /* not attempted: no status row */
                park(rt, k, run, due);
            }
        }
        key_release(rt, k);
    }
    req_free(r);
}

static void on_done(rt_router_t *rt, rt_req_t *r, CURLcode rc)
{
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    else {
        sl_buf_reset(&r->resp);
        sl_buf_puts(&r->resp, *r->errbuf ? r->errbuf : curl_easy_strerror(rc));
    }
    easy_release(rt, r);
    bool ok = status >= 200 && status < 300;
    rt_why_t why = rc == CURLE_OPERATION_TIMEDOUT ? RT_WHY_TIMEOUT
                   : status == 0                  ? RT_WHY_NETWORK
                   : status == 408                ? RT_WHY_HTTP_408
                   : status == 429                ? RT_WHY_HTTP_429
                   : status >= 500                ? RT_WHY_HTTP_5XX
                   : status >= 400                ? RT_WHY_HTTP_4XX
                                                  : RT_WHY_HTTP_OTHER;
    outcome(rt, r, ok, !ok && (status == 0 || status == 429 || status == 408 || status >= 500),
            status, why);
}

static void on_kafka_done(void *opaque, rt_kdest_result_t result, const char *detail, void *ctx)
{
    rt_req_t *r = opaque;
    sl_buf_reset(&r->resp);
    sl_buf_puts(&r->resp, detail ? detail : "");
    outcome(ctx, r, result == RT_KDEST_OK, result == RT_KDEST_RETRY, 0, RT_WHY_KAFKA);
}

static void read_done(rt_router_t *rt)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(rt->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        rt_req_t *r;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        on_done(rt, r, msg->data.result);
    }
}

/* --- from the store --- */

static void take_store(rt_router_t *rt)
{
    rt_op_t *ops = rt_store_take(rt->store);
    while (ops) {
        rt_op_t *op = ops;
        ops = op->next;
        rt_key_t *k = op->dest_id ? key_find(rt, op->dest_id, op->user_key, false, 0, NULL) : NULL;
        switch (op->kind) {
        case RT_OP_STATUS:
        case RT_OP_PARK:
            for (rt_job_t *j = op->jobs; j; j = j->next)
                if (!j->parked_id)
                    sl_kafka_offsets_done(rt->offsets, rt->topic, j->partition, j->offset);
            if (op->kind == RT_OP_PARK && k) {
                k->parks_pending--;
                rt_store_drain_soon(rt->store);
            }
            break;
        case RT_OP_PARKED_DONE:
        case RT_OP_PARKED_FAIL:
            if (!k)
                break;
            if (k->resolving > 0)
                k->resolving--;
            if (op->kind == RT_OP_PARKED_DONE && op->key_empty && !k->parks_pending && !k->loading)
                k->blocked = false;
            key_maybe_free(rt, k);
            break;
        case RT_OP_LOADED: {
            if (!k)
                k = key_find(rt, op->dest_id, op->user_key, true, op->partition, NULL);
            bool ours = false;
            for (size_t i = 0; i < rt->nparts; i++)
                ours |= rt->parts[i] == op->partition;
            if (!ours || k->loading || k->busy || k->head || k->resolving ||
                k->dest->queued >= rt->memory_jobs) {
                /* Revoked meanwhile, in hand already (or delivered, not yet recorded), or no
                 * room: the rows stay parked, due again after a park poll. */
                rt_op_t *rel = op_new(RT_OP_RELEASE, k);
                rel->next_ms = sl_time_now_ms() + rt->park_poll_ms;
                rt_store_push(rt->store, rel);
                key_maybe_free(rt, k);
                break;
            }
            k->blocked = true;
            k->loading = true;
            for (rt_job_t *j = op->jobs, *next; j; j = next) {
                next = j->next;
                const char *problem = parse_job(rt, j);
                if (!k->dest->type[0] && j->dest_type) {
                    free(k->dest->type);
                    k->dest->type = sl_strdup(j->dest_type);
                }
                (void)problem; /* parked jobs were valid when parked */
                key_append(k, j);
            }
            op->jobs = NULL;
            if (!k->head) {
                k->loading = false;
                rt_op_t *rel = op_new(RT_OP_RELEASE, k);
                rel->next_ms = sl_time_now_ms();
                rt_store_push(rt->store, rel);
            }
            ready_push(k);
            break;
        }
        default:
            break;
        }
        rt_op_free(op);
    }
}

/* --- consuming --- */

static bool skip_offset(rt_router_t *rt, int32_t partition, int64_t offset)
{
    for (size_t i = 0; i < rt->nskips; i++) {
        struct rt_skip *s = &rt->skips[i];
        if (s->partition != partition)
            continue;
        while (s->at < s->n && s->offs[s->at] < offset)
            s->at++;
        return s->at < s->n && s->offs[s->at] == offset;
    }
    return false;
}

static void on_message(rt_router_t *rt, const rd_kafka_message_t *m)
{
    sl_kafka_offsets_track(rt->offsets, rt->topic, m->partition, m->offset);
    if (skip_offset(rt, m->partition, m->offset)) {
        sl_kafka_offsets_done(rt->offsets, rt->topic, m->partition, m->offset);
        return;
    }
    rt_job_t *j = sl_calloc(1, sizeof(*j));
    j->raw = sl_strndup(m->payload ? m->payload : "", m->payload ? m->len : 0);
    j->raw_len = m->payload ? m->len : 0;
    j->partition = m->partition;
    j->offset = m->offset;
    read_trace(j, m);
    const char *problem = parse_job(rt, j);
    if (problem) {
        char reason[512];
        snprintf(reason, sizeof(reason), "malformed delivery job at %s [%d] offset %lld: %s",
                 rt->topic, (int)m->partition, (long long)m->offset, problem);
        sl_error("router", "aborted job %s: %s", j->job_id, reason);
        count_failure(dest_get(rt, *j->dest_id ? j->dest_id : "unknown", j->dest_type), true,
                      RT_WHY_MALFORMED);
        j->state = "aborted";
        j->last_response = sl_strdup(reason);
        dead_letter(rt, j, reason);
        return;
    }
    rt_key_t *k = key_find(rt, j->dest_id, j->user_key, true, m->partition, j->dest_type);
    if (!k->blocked && !k->head && !k->busy && k->dest->failures >= RT_BREAKER) {
        /* The destination fails every request: park the job for its first retry instead of
         * trying it now; the parked jobs that come due are the probes. */
        park(rt, k, j, sl_time_now_ms() + backoff_ms(&k->dest->set, 1));
        return;
    }
    if (!k->blocked && k->dest->queued >= rt->memory_jobs &&
        !dest_slow(k->dest, sl_time_mono_ms())) {
        rt->hold = true; /* it drains soon: take no more jobs until it has */
    } else if (k->blocked || k->dest->queued >= rt->memory_jobs) {
        /* Behind parked jobs of its key, or over a slow destination's share: park it now. */
        park(rt, k, j, sl_time_now_ms());
        return;
    }
    key_append(k, j);
    ready_push(k);
}

static void poll_consumer(rt_router_t *rt)
{
    if (rt_store_backlog(rt->store) >= RT_STORE_BACKLOG)
        return; /* Postgres is behind or away: wait for it (its progress wakes the loop) */
    /* The consumer's wake-up only comes when its queue turns non-empty: while messages are
     * left in it, the loop must not sleep (wait_ms). */
    rt->consumer_more = true;
    for (int i = 0; i < RT_POLL_MAX && !rt->hold; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 0);
        if (!m) {
            rt->consumer_more = false;
            if (i > 0) /* jobs came: no long idle sleep (wait_ms) */
                rt->busy_ms = sl_time_mono_ms();
            break;
        }
        sl_kafka_nudger_took(rt->nudger, m->len);
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            on_message(rt, m);
        } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            sl_warn("router", "kafka consumer: %s", rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
    }
}

/* --- the loop --- */

static int wait_ms(rt_router_t *rt)
{
    int64_t now = sl_time_mono_ms();
    if (rt->consumer_more && !rt->hold && rt_store_backlog(rt->store) < RT_STORE_BACKLOG)
        return 0;
    if (rt->consumer_more || rt->inflight || rt->dl_pending || rt->status_op ||
        rt_store_backlog(rt->store))
        rt->busy_ms = now;
    int64_t wait = now - rt->busy_ms > 1000 ? RT_IDLE_LONG_WAIT_MS : RT_IDLE_WAIT_MS;
    for (rt_dest_t *d = rt->dests; d; d = d->next) {
        if (!d->ready_head)
            continue;
        if (d->set.throttle_limit > 0 && d->tat > (double)now) {
            int64_t w = (int64_t)(d->tat - (double)now) + 1;
            wait = w < wait ? w : wait;
        } else if (d->batch_since) {
            int64_t w = d->batch_since + rt->batch_timeout_ms - now;
            wait = w < wait ? w : wait;
        }
    }
    if (rt->kdest && rt_kdest_inflight(rt->kdest) && wait > 5)
        wait = 5; /* delivery reports of KAFKA destinations do not wake the poll */
    return wait < 0 ? 0 : (int)wait;
}

/* libcurl's multi_socket interface: it names the sockets to watch (socket_cb) and when to
 * call it back (timer_cb); the loop waits on them with epoll and tells libcurl which socket
 * is ready, so only that connection's transfer runs. curl_multi_perform ran every transfer
 * in flight on each call, a stalled destination's too, each with a poll of its socket. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    rt_router_t *rt = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(rt->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev = {.events = (what & CURL_POLL_IN ? EPOLLIN : 0u) |
                                       (what & CURL_POLL_OUT ? EPOLLOUT : 0u),
                             .data.fd = fd};
    if (epoll_ctl(rt->epfd, EPOLL_CTL_MOD, fd, &ev) != 0 && errno == ENOENT &&
        epoll_ctl(rt->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        sl_warn("router", "epoll_ctl: %s", strerror(errno));
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    rt_router_t *rt = userp;
    rt->curl_due_ms = timeout_ms < 0 ? -1 : sl_time_mono_ms() + timeout_ms;
    return 0;
}

/* Runs libcurl's timer if it is due (new transfers start so, and timeouts fire). */
static void curl_timer(rt_router_t *rt)
{
    if (rt->curl_due_ms < 0 || sl_time_mono_ms() < rt->curl_due_ms)
        return;
    int running;
    rt->curl_due_ms = -1;
    curl_multi_socket_action(rt->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

/* Waits up to max_ms (or libcurl's timer) for a socket, the wake pipe or the consumer, and
 * hands the ready sockets to libcurl. */
static void wait_events(rt_router_t *rt, int max_ms)
{
    if (rt->curl_due_ms >= 0) {
        int64_t left = rt->curl_due_ms - sl_time_mono_ms();
        if (left < max_ms)
            max_ms = left > 0 ? (int)left : 0;
    }
    struct epoll_event evs[64];
    int n = epoll_wait(rt->epfd, evs, 64, max_ms);
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        if (fd == rt->wake_pipe[0]) {
            char buf[64];
            while (read(fd, buf, sizeof(buf)) > 0)
                ;
            continue;
        }
        int running, bits = (evs[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                            (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                            (evs[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
        curl_multi_socket_action(rt->multi, fd, bits, &running);
    }
    curl_timer(rt);
}

/* Wakes the loop out of wait_events (any thread). */
static void wake(rt_router_t *rt)
{
    ssize_t w = write(rt->wake_pipe[1], "1", 1);
    (void)w; /* a full pipe wakes it already */
}

/* One turn of the loop; consume says whether to take new jobs. */
static void turn(rt_router_t *rt, bool consume, int64_t *last_commit)
{
    if (consume)
        poll_consumer(rt);
    rd_kafka_poll(rt->producer, 0);
    if (rt->kdest)
        rt_kdest_poll(rt->kdest, on_kafka_done, rt);
    take_store(rt);
    if (consume)
        schedule(rt);
    curl_timer(rt);
    read_done(rt);
    if (consume) { /* the keys those outcomes freed send their next jobs now, not a turn late */
        schedule(rt);
        curl_timer(rt);
    }
    flush_status(rt);
    wait_events(rt, wait_ms(rt));
    read_done(rt);
    if (sl_time_mono_ms() - *last_commit >= RT_COMMIT_EVERY_MS) {
        sl_kafka_offsets_commit(rt->offsets, rt->consumer, false);
        *last_commit = sl_time_mono_ms();
    }
}

static bool in_list(const rd_kafka_topic_partition_list_t *parts, int32_t p)
{
    for (int i = 0; i < parts->cnt; i++)
        if (parts->elems[i].partition == p)
            return true;
    return false;
}

/* Gives up on HTTP request r, whose jobs are all of revoked partitions: the transfer is
 * dropped and its jobs are left to the partitions' next owner, which delivers them again (as
 * after a crash: the destination may get them twice, in order). */
static void abandon(rt_router_t *rt, rt_req_t *r)
{
    req_unlink(rt, r);
    easy_release(rt, r);
    for (rt_job_t *j = r->jobs, *next; j; j = next) {
        next = j->next;
        rt_key_t *k = key_find(rt, j->dest_id, j->user_key, false, 0, NULL);
        if (k)
            k->busy = false; /* on_revoke drops the key */
        rt_job_free(j);
    }
    req_free(r);
}

/* Gives up on the HTTP requests in flight for RT_REVOKE_WAIT_MS or more whose jobs are all of
 * the partitions in parts; returns how many jobs they carried. */
static int64_t abandon_stale(rt_router_t *rt, const rd_kafka_topic_partition_list_t *parts)
{
    int64_t now = sl_time_mono_ms(), abandoned = 0;
    for (rt_dest_t *d = rt->dests; d; d = d->next) {
        for (rt_req_t *r = d->oldest, *next; r; r = next) {
            next = r->next;
            if (!r->easy || now - r->t0 < RT_REVOKE_WAIT_MS)
                continue;
            bool revoked = true;
            for (const rt_job_t *j = r->jobs; j && revoked; j = j->next)
                revoked = in_list(parts, j->partition);
            if (revoked) {
                abandoned += (int64_t)r->njobs;
                abandon(rt, r);
            }
        }
    }
    return abandoned;
}

/* Lets requests in flight finish and the store catch up; no new jobs start. With revoked
 * (partitions being given up), waits at most RT_REVOKE_WAIT_MS for a request of theirs: a
 * destination that stalls (each request up to router.timeout) must not hold the rebalance,
 * and with it every other destination. */
static void settle(rt_router_t *rt, int64_t max_ms, const rd_kafka_topic_partition_list_t *revoked)
{
    int64_t deadline = sl_time_mono_ms() + max_ms, last_commit = sl_time_mono_ms(), abandoned = 0;
    while (sl_time_mono_ms() < deadline &&
           (rt->inflight || rt->dl_pending || rt->status_op || rt_store_backlog(rt->store))) {
        if (revoked)
            abandoned += abandon_stale(rt, revoked);
        turn(rt, false, &last_commit);
    }
    take_store(rt);
    if (abandoned)
        sl_info("router",
                "partitions revoked: %lld jobs whose requests took over %d ms are left to the "
                "partitions' next owner",
                (long long)abandoned, RT_REVOKE_WAIT_MS);
}

/* Before partitions go: finish what is in flight, record it, drop the rest of theirs (their
 * offsets stay uncommitted, so the new owner takes them from Kafka) and commit. */
static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    rt_router_t *rt = opaque;
    settle(rt, 60000, parts);
    for (size_t i = 0; i < rt->keys_cap; i++) {
        for (rt_key_t *k = rt->keys[i], *next; k; k = next) {
            next = k->hnext;
            if (!in_list(parts, k->partition))
                continue;
            if (k->in_ready) { /* unlink from the ready list */
                rt_dest_t *d = k->dest;
                rt_key_t **pp = &d->ready_head, *prev = NULL;
                while (*pp != k) {
                    prev = *pp;
                    pp = &(*pp)->ready_next;
                }
                *pp = k->ready_next;
                if (d->ready_tail == k)
                    d->ready_tail = prev;
                d->nready--;
                k->in_ready = false;
            }
            if (k->loading) {
                rt_op_t *rel = op_new(RT_OP_RELEASE, k);
                rel->next_ms = sl_time_now_ms();
                rt_store_push(rt->store, rel);
            }
            rt_jobs_free(key_take_all(k));
            k->loading = k->blocked = false;
            k->parks_pending = 0;
            key_maybe_free(rt, k);
        }
    }
    settle(rt, 10000, NULL);
    size_t n = 0;
    for (size_t i = 0; i < rt->nparts; i++)
        if (!in_list(parts, rt->parts[i]))
            rt->parts[n++] = rt->parts[i];
    rt->nparts = n;
    rt_store_set_partitions(rt->store, rt->parts, rt->nparts);
    sl_metrics_set(rt->m_partitions, (double)rt->nparts);
    sl_kafka_offsets_commit(rt->offsets, rk, true);
    sl_kafka_offsets_forget(rt->offsets, parts);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* After partitions come: what is parked for them blocks its keys; jobs already recorded or
 * parked after the committed offset are skipped; claims of a router that died are void. */
static void on_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    rt_router_t *rt = opaque;
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(parts);
    if (rd_kafka_committed(rk, committed, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        for (int i = 0; i < committed->cnt; i++)
            committed->elems[i].offset = 0;
    char err[512];
    for (int attempt = 0;; attempt++) {
        PGconn *c = sl_pg_conn(rt->pg, err, sizeof(err));
        int ok = c != NULL;
        for (int i = 0; ok && i < parts->cnt; i++) {
            int32_t p = parts->elems[i].partition;
            char ps[24], from[24];
            int64_t off = committed->elems[i].offset < 0 ? 0 : committed->elems[i].offset;
            snprintf(ps, sizeof(ps), "%d", (int)p);
            snprintf(from, sizeof(from), "%lld", (long long)off);
            const char *q[] = {rt->topic, ps, from};
            PGresult *r = PQexecParams(
                c,
                "UPDATE sluice_parked_keys SET next_attempt_at = now() WHERE kafka_topic = $1 AND "
                "kafka_partition = $2::int AND next_attempt_at = 'infinity'",
                2, NULL, q, NULL, NULL, 0);
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
            if (!ok)
                break;
            r = PQexecParams(c,
                             "SELECT destination_id, user_key FROM sluice_parked_keys WHERE "
                             "kafka_topic = $1 AND kafka_partition = $2::int",
                             2, NULL, q, NULL, NULL, 0);
            ok = PQresultStatus(r) == PGRES_TUPLES_OK;
            for (int t = 0; ok && t < PQntuples(r); t++) {
                rt_key_t *k = key_find(rt, PQgetvalue(r, t, 0), PQgetvalue(r, t, 1), true, p, NULL);
                k->blocked = true;
            }
            PQclear(r);
            if (!ok)
                break;
            /* Offsets to skip: parked ones, and (with job status) those with a final state. */
            r = PQexecParams(c,
                             "SELECT kafka_offset FROM sluice_parked WHERE kafka_topic = $1 AND "
                             "kafka_partition = $2::int AND kafka_offset >= $3::bigint",
                             3, NULL, q, NULL, NULL, 0);
            ok = PQresultStatus(r) == PGRES_TUPLES_OK;
            int64_t *offs = NULL;
            size_t n = 0;
            if (ok) {
                n = (size_t)PQntuples(r);
                offs = sl_malloc((n + 1) * sizeof(*offs));
                for (size_t t = 0; t < n; t++)
                    offs[t] = strtoll(PQgetvalue(r, (int)t, 0), NULL, 10);
            }
            PQclear(r);
            if (ok && rt->job_status) {
                int64_t *done = NULL;
                size_t nd = 0;
                if (rt_status_done_offsets(c, rt->topic, p, off, &done, &nd, err, sizeof(err)) ==
                    0) {
                    offs = sl_realloc(offs, (n + nd + 1) * sizeof(*offs));
                    if (nd)
                        memcpy(offs + n, done, nd * sizeof(*offs));
                    n += nd;
                    free(done);
                } else {
                    ok = 0;
                }
            }
            if (!ok) {
                free(offs);
                break;
            }
            qsort(offs, n, sizeof(*offs), cmp_i64);
            struct rt_skip *s = NULL;
            for (size_t t = 0; t < rt->nskips; t++)
                if (rt->skips[t].partition == p)
                    s = &rt->skips[t];
            if (!s) {
                rt->skips = sl_realloc(rt->skips, (rt->nskips + 1) * sizeof(*rt->skips));
                s = &rt->skips[rt->nskips++];
                s->offs = NULL;
            }
            free(s->offs);
            *s = (struct rt_skip){.partition = p, .offs = offs, .n = n, .at = 0};
            if (n)
                sl_info("router",
                        "partition %d: %zu jobs after the committed offset are already "
                        "recorded or parked; they are skipped",
                        (int)p, n);
        }
        if (ok)
            break;
        if (c)
            snprintf(err, sizeof(err), "%s", PQerrorMessage(c));
        sl_warn("router",
                "partitions assigned, waiting for postgres to read their parked jobs: "
                "%s",
                err);
        if (atomic_load(&rt->stop))
            break;
        usleep(500000);
    }
    rd_kafka_topic_partition_list_destroy(committed);
    for (int i = 0; i < parts->cnt; i++) {
        bool have = false;
        for (size_t t = 0; t < rt->nparts; t++)
            have |= rt->parts[t] == parts->elems[i].partition;
        if (!have) {
            rt->parts = sl_realloc(rt->parts, (rt->nparts + 1) * sizeof(*rt->parts));
            rt->parts[rt->nparts++] = parts->elems[i].partition;
        }
    }
    rt_store_set_partitions(rt->store, rt->parts, rt->nparts);
    sl_metrics_set(rt->m_partitions, (double)rt->nparts);
}

static void *loop_main(void *arg)
{
    rt_router_t *rt = arg;
    int64_t last_commit = sl_time_mono_ms();
    while (!atomic_load(&rt->stop))
        turn(rt, true, &last_commit);
    return NULL;
}

/* Frees what rt_router_start made, as far as it got. */
static void router_free(rt_router_t *rt)
{
    while (rt->nfree_easy)
        curl_easy_cleanup(rt->free_easy[--rt->nfree_easy]);
    sl_json_index_free(&rt->job_idx);
    if (rt->status_op)
        rt_op_free(rt->status_op);
    rt_store_stop(rt->store);
    rt_kdest_free(rt->kdest, 0, NULL, NULL);
    for (size_t i = 0; i < rt->keys_cap; i++)
        for (rt_key_t *k = rt->keys[i], *next; k; k = next) {
            next = k->hnext;
            rt_jobs_free(k->head);
            free(k->dest_id);
            free(k);
        }
    free(rt->keys);
    for (rt_dest_t *d = rt->dests, *next; d; d = next) {
        next = d->next;
        free(d->id);
        free(d->type);
        free(d);
    }
    for (size_t i = 0; i < rt->nskips; i++)
        free(rt->skips[i].offs);
    free(rt->skips);
    free(rt->parts);
    if (rt->producer)
        rd_kafka_destroy(rt->producer);
    curl_multi_cleanup(rt->multi);
    if (rt->wake_pipe[0] > 0) {
        close(rt->wake_pipe[0]);
        close(rt->wake_pipe[1]);
    }
    if (rt->epfd > 0)
        close(rt->epfd);
    sl_kafka_offsets_destroy(rt->offsets);
    sl_pg_destroy(rt->pg);
    free(rt->dest_settings);
    free(rt->topic);
    free(rt->failed_topic);
    free(rt->group);
    free(rt);
    curl_global_cleanup();
}

/* Starts worker number `worker` of nworkers: a loop with its own consumer in the group (so
 * its own share of the partitions, hence of the users), store, producer and connections. */
static rt_router_t *worker_start(const sl_conf_t *conf, sl_wsconf_t *ws, int worker, int nworkers,
                                 char *errstr, size_t errstr_size)
{
    char buf[512];
    const char *problem =
        settings_problem(sl_conf_str(conf, "router.destination_settings"), buf, sizeof(buf));
    if (problem) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "%s", problem);
        return NULL;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rt_router_t *rt = sl_calloc(1, sizeof(*rt));
    sl_json_index_init(&rt->job_idx);
    rt->ws = ws;
    rt->nworkers = nworkers;
    char wl[16];
    snprintf(wl, sizeof(wl), "%d", worker);
    rt->m_partitions = sl_metrics_gauge("sluice_router_partitions",
                                        "Delivery topic partitions assigned to the router worker",
                                        "worker", wl, NULL);
    rt->topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    rt->failed_topic = sl_kafka_topic(conf, SL_TOPIC_FAILED);
    rt->group = sl_kafka_topic(conf, SL_GROUP_ROUTER);
    rt->offsets = sl_kafka_offsets_new();
    rt->pg = sl_pg_new(sl_conf_str(conf, "postgres.dsn"));
    rt->defaults = (rt_settings_t){
        .timeout_ms = sl_conf_duration_ms(conf, "router.timeout"),
        .retry_base_ms = sl_conf_duration_ms(conf, "router.retry_base"),
        .retry_max_ms = sl_conf_duration_ms(conf, "router.retry_max"),
        .give_up_ms = sl_conf_duration_ms(conf, "router.give_up_after"),
        .min_attempts = (int)sl_conf_int(conf, "router.min_attempts"),
        .concurrency = (int)sl_conf_int(conf, "router.concurrency"),
    };
    rt->dest_settings = sl_strdup(sl_conf_str(conf, "router.destination_settings"));
    rt->max_conns = (int)share(sl_conf_int(conf, "router.max_connections"), nworkers);
    rt->memory_jobs = (size_t)share(sl_conf_int(conf, "router.memory_jobs"), nworkers);
    rt->batch_timeout_ms = sl_conf_duration_ms(conf, "router.batch_timeout");
    rt->park_poll_ms = sl_conf_duration_ms(conf, "router.park_poll");
    rt->job_status = sl_conf_bool(conf, "router.job_status");
    rt->multi = curl_multi_init();
    rt->kdest = rt_kdest_new(conf);
    curl_multi_setopt(rt->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(rt->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)rt->max_conns);
    curl_multi_setopt(rt->multi, CURLMOPT_MAXCONNECTS, (long)rt->max_conns);
    rt->curl_due_ms = -1;
    curl_multi_setopt(rt->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(rt->multi, CURLMOPT_SOCKETDATA, rt);
    curl_multi_setopt(rt->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(rt->multi, CURLMOPT_TIMERDATA, rt);
    if (pipe2(rt->wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "pipe: %s", strerror(errno));
        goto fail;
    }
    rt->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event wev = {.events = EPOLLIN, .data.fd = rt->wake_pipe[0]};
    if (rt->epfd < 0 || epoll_ctl(rt->epfd, EPOLL_CTL_ADD, rt->wake_pipe[0], &wev) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "epoll: %s", strerror(errno));
        goto fail;
    }

    rd_kafka_conf_t *pconf = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!pconf)
        goto fail;
    rd_kafka_conf_set(pconf, "message.timeout.ms", "0", NULL, 0); /* a dead letter never expires */
    rd_kafka_conf_set_dr_msg_cb(pconf, dl_report);
    rd_kafka_conf_set_opaque(pconf, rt);
    rt->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pconf, errstr, errstr_size);
    if (!rt->producer) {
        rd_kafka_conf_destroy(pconf);
        goto fail;
    }
    rt_store_conf_t sc = {
        .dsn = sl_conf_str(conf, "postgres.dsn"),
        .topic = rt->topic,
        .job_status = rt->job_status,
        .park_poll_ms = sl_conf_duration_ms(conf, "router.park_poll"),
        .retention_ms = sl_conf_duration_ms(conf, "router.status_retention"),
        .load_keys = 100,
        .wake_fd = rt->wake_pipe[1],
    };
    rt->store = rt_store_start(&sc);
    const char *topics[] = {rt->topic, NULL};
    rt->consumer =
        sl_kafka_consumer_new(conf, rt->group, topics, on_revoke, rt, errstr, errstr_size);
    if (!rt->consumer)
        goto fail;
    sl_kafka_consumer_on_assign(rt->consumer, on_assign);
    /* A job arriving wakes the loop out of wait_events. */
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->consumer);
    rd_kafka_queue_io_event_enable(q, rt->wake_pipe[1], "1", 1);
    rd_kafka_queue_destroy(q);
    rt->nudger = sl_kafka_nudger_start(rt->consumer);
    pthread_create(&rt->thread, NULL, loop_main, rt);
    char name[16] = "rt:loop";
    if (worker > 0)
        snprintf(name, sizeof(name), "rt:loop%d", (worker + 1) % 100);
    pthread_setname_np(rt->thread, name);
    return rt;
fail:
    router_free(rt);
    return NULL;
}

rt_router_t *rt_router_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                             size_t errstr_size)
{
    int n = (int)sl_conf_int(conf, "router.workers");
    rt_router_t *first = NULL, **tail = &first;
    for (int i = 0; i < n; i++) {
        rt_router_t *w = worker_start(conf, ws, i, n, errstr, errstr_size);
        if (!w) {
            rt_router_stop(first);
            return NULL;
        }
        *tail = w;
        tail = &w->next;
    }
    return first;
}

/* Stops one worker whose loop has stopped; runs on a thread of its own per worker, so that
 * the workers settle and leave the group together. */
static void *worker_stop(void *arg)
{
    rt_router_t *rt = arg;
    pthread_join(rt->thread, NULL);
    /* Finish what is in flight and record it; what waits stays uncommitted in Kafka or
     * parked, and is delivered after a restart. */
    settle(rt, 30000, NULL);
    rt_kdest_free(rt->kdest, 5000, on_kafka_done, rt); /* reports what it can */
    rt->kdest = NULL;
    rd_kafka_flush(rt->producer, 5000);
    settle(rt, 10000, NULL);
    sl_kafka_offsets_commit(rt->offsets, rt->consumer, true);
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(rt->consumer);
    rd_kafka_queue_io_event_enable(q, -1, NULL, 0);
    rd_kafka_queue_destroy(q);
    sl_kafka_nudger_stop(rt->nudger);
    rd_kafka_consumer_close(rt->consumer); /* revokes: on_revoke settles and commits */
    sl_kafka_consumer_destroy(rt->consumer);
    sl_metrics_set(rt->m_partitions, 0);
    router_free(rt);
    return NULL;
}

void rt_router_stop(rt_router_t *rt)
{
    for (rt_router_t *w = rt; w; w = w->next) {
        atomic_store(&w->stop, true);
        wake(w);
    }
    size_t n = 0;
    for (rt_router_t *w = rt; w; w = w->next)
        n++;
    pthread_t *threads = sl_calloc(n ? n : 1, sizeof(*threads));
    n = 0;
    for (rt_router_t *w = rt, *next; w; w = next) {
        next = w->next; /* w is freed by its thread */
        pthread_create(&threads[n++], NULL, worker_stop, w);
    }
    for (size_t i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    free(threads);
}
