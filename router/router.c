/*
 * The router role, see router.h. One consumer thread hands jobs to workers chosen by
 * (destination, user), so each user's jobs for a destination are delivered in order; workers
 * deliver with libcurl, retrying with backoff; a writer thread records outcomes in Postgres in
 * batches, and only then are the jobs' offsets marked done for commit.
 */
#include "router/router.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/health.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/pg.h"
#include "common/timeutil.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RT_QUEUE_MAX       10000 /* jobs waiting per worker before the consumer waits */
#define RT_BATCH_MAX       500
#define RT_FLUSH_MS        100
#define RT_COMMIT_EVERY_MS 500
#define RT_RESPONSE_CAP    10240

typedef struct rt_job {
    char *job_id, *message_id, *source_id, *dest_id, *user_key;
    char *method, *url, *body;
    size_t body_len;
    struct curl_slist *headers;
    int32_t partition;
    int64_t offset;
    /* outcome */
    const char *state;
    int attempts;
    long last_status;
    char *last_response;
    int64_t first_ms, last_ms;
    struct rt_job *next;
} rt_job_t;

typedef struct rt_worker {
    struct rt_router *rt;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    rt_job_t *head, *tail;
    size_t len;
    CURL *curl;
} rt_worker_t;

struct rt_router {
    sl_wsconf_t *ws;
    rd_kafka_t *consumer;
    char *topic, *group;
    sl_kafka_offsets_t *offsets;
    sl_pg_t *pg;
    int64_t timeout_ms, retry_base_ms, retry_max_ms, give_up_ms;
    int min_attempts;
    int nworkers;
    rt_worker_t *workers;
    pthread_t consumer_thread, writer_thread;
    atomic_bool stop_consuming, stop_workers, stop_writer;
    /* status writer queue */
    pthread_mutex_t wlock;
    pthread_cond_t wcond;
    rt_job_t *whead, *wtail;
    size_t wlen;
};

static void job_free(rt_job_t *j)
{
    free(j->job_id);
    free(j->message_id);
    free(j->source_id);
    free(j->dest_id);
    free(j->user_key);
    free(j->method);
    free(j->url);
    free(j->body);
    free(j->last_response);
    curl_slist_free_all(j->headers);
    free(j);
}

static char *dup_field(json_object *o, const char *k)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string))
        return sl_strdup(json_object_get_string(v));
    return NULL;
}

/* Why a job cannot be delivered, or NULL. ws may be NULL (no destination check). */
static const char *job_problem(const rt_job_t *j, bool parsed, sl_wsconf_t *ws)
{
    if (!parsed)
        return "value is not a JSON object";
    if (!*j->dest_id)
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

/*
 * Parses a delivery job from a consumed message (borrowed). Returns a job the caller owns
 * (job_free). A malformed job comes back with state "aborted" and the reason in
 * last_response, so that its outcome is recorded like any other. Consumer thread.
 */
static rt_job_t *parse_job(rt_router_t *rt, const rd_kafka_message_t *m)
{
    rt_job_t *j = sl_calloc(1, sizeof(*j));
    j->partition = m->partition;
    j->offset = m->offset;
    j->first_ms = j->last_ms = sl_time_now_ms();
    json_tokener *tok = json_tokener_new();
    json_object *o = m->payload ? json_tokener_parse_ex(tok, m->payload, (int)m->len) : NULL;
    json_object *req = NULL, *hdrs;
    bool ok = o && json_tokener_get_error(tok) == json_tokener_success &&
              json_object_is_type(o, json_type_object);
    json_tokener_free(tok);
    if (ok) {
        j->job_id = dup_field(o, "jobId");
        j->message_id = dup_field(o, "messageId");
        j->source_id = dup_field(o, "sourceId");
        j->dest_id = dup_field(o, "destinationId");
        j->user_key = dup_field(o, "userKey");
        json_object_object_get_ex(o, "request", &req);
        j->method = dup_field(req, "method");
        j->url = dup_field(req, "url");
        j->body = dup_field(req, "body");
        j->body_len = j->body ? strlen(j->body) : 0;
        if (req && json_object_object_get_ex(req, "headers", &hdrs) &&
            json_object_is_type(hdrs, json_type_object)) {
            json_object_object_foreach(hdrs, k, v)
            {
                char *h = sl_asprintf("%s: %s", k, json_object_get_string(v));
                j->headers = curl_slist_append(j->headers, h);
                free(h);
            }
        }
        /* Bodies over 1 MB would otherwise wait for a 100-continue most servers never send. */
        j->headers = curl_slist_append(j->headers, "Expect:");
    }
    if (o)
        json_object_put(o);
    if (!j->message_id)
        j->message_id = sl_strdup("");
    if (!j->dest_id)
        j->dest_id = sl_strdup("");
    if (!j->job_id)
        j->job_id = sl_asprintf("%s:%s", j->message_id, j->dest_id);
    if (!j->method)
        j->method = sl_strdup("POST");
    const char *problem = job_problem(j, ok, rt->ws);
    if (problem) {
        j->state = "aborted";
        j->last_response = sl_asprintf("malformed delivery job at %s [%d] offset %lld: %s",
                                       rt->topic, (int)m->partition, (long long)m->offset, problem);
        sl_error("router", "aborted job %s: %s", j->job_id, j->last_response);
    }
    return j;
}

static void writer_push(rt_router_t *rt, rt_job_t *j)
{
    pthread_mutex_lock(&rt->wlock);
    j->next = NULL;
    if (rt->wtail)
        rt->wtail->next = j;
    else
        rt->whead = j;
    rt->wtail = j;
    rt->wlen++;
    pthread_cond_signal(&rt->wcond);
    pthread_mutex_unlock(&rt->wlock);
}

static size_t on_response(char *p, size_t size, size_t n, void *opaque)
{
    sl_buf_t *b = opaque;
    size_t len = size * n;
    if (b->len < RT_RESPONSE_CAP)
        sl_buf_append(b, p, b->len + len > RT_RESPONSE_CAP ? RT_RESPONSE_CAP - b->len : len);
    return len;
}

/* One attempt on the worker's handle (connections are kept alive across attempts). Returns
 * the HTTP status, or 0 for a network error or timeout (described in resp). Worker thread. */
static long attempt(rt_worker_t *w, rt_job_t *j, sl_buf_t *resp)
{
    CURL *c = w->curl;
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, j->method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->headers);
    if (strcmp(j->method, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(j->method, "GET") != 0 && strcmp(j->method, "DELETE") != 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body ? j->body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)j->body_len);
    }
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)w->rt->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)w->rt->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_response);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    int64_t t0 = sl_time_mono_ms();
    CURLcode rc = curl_easy_perform(c);
    sl_metrics_observe(sl_metrics_histogram("sluice_router_delivery_seconds",
                                            "Duration of one delivery attempt", NULL, 0,
                                            "destination", j->dest_id, NULL),
                       (double)(sl_time_mono_ms() - t0) / 1e3);
    if (rc != CURLE_OK) {
        sl_buf_reset(resp);
        sl_buf_puts(resp, *cerr ? cerr : curl_easy_strerror(rc));
        return 0;
    }
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

/* Waits ms or until the workers are stopped. Returns false when stopped. */
static bool backoff_wait(rt_worker_t *w, int64_t ms)
{
    struct timespec ts;
    sl_time_deadline(&ts, ms);
    pthread_mutex_lock(&w->lock);
    while (!atomic_load(&w->rt->stop_workers))
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0)
            break;
    pthread_mutex_unlock(&w->lock);
    return !atomic_load(&w->rt->stop_workers);
}

static void count_attempt(const char *dest, const char *outcome)
{
    sl_metrics_add(sl_metrics_counter("sluice_router_attempts_total",
                                      "Delivery attempts by outcome (success, retry, abort)",
                                      "destination", dest, "outcome", outcome, NULL),
                   1);
}

/* Delivers a job until it succeeds or is aborted, waiting out the backoff between attempts.
 * Returns false if the router stopped during a backoff: the job is then not recorded, its
 * offset stays uncommitted and it is delivered again after a restart. Worker thread. */
static bool deliver(rt_worker_t *w, rt_job_t *j)
{
    rt_router_t *rt = w->rt;
    sl_buf_t resp = SL_BUF_INIT;
    bool recorded = true;
    for (;;) {
        sl_buf_reset(&resp);
        j->attempts++;
        j->last_ms = sl_time_now_ms();
        long status = attempt(w, j, &resp);
        j->last_status = status;
        bool ok = status >= 200 && status < 300;
        bool retry = !ok && (status == 0 || status == 429 || status == 408 || status >= 500);
        int64_t elapsed = sl_time_now_ms() - j->first_ms;
        bool give_up =
            !ok && (!retry || (elapsed > rt->give_up_ms && j->attempts >= rt->min_attempts));
        count_attempt(j->dest_id, ok ? "success" : give_up ? "abort" : "retry");
        if (ok) {
            j->state = "succeeded";
            break;
        }
        if (give_up) {
            j->state = "aborted";
            sl_warn("router", "aborted job %s to %s after %d attempts: %s %.200s", j->job_id,
                    j->url, j->attempts, status ? "HTTP status" : "error",
                    resp.data ? resp.data : "");
            break;
        }
        int64_t wait = rt->retry_base_ms;
        for (int i = 1; i < j->attempts && wait < rt->retry_max_ms; i++)
            wait *= 2;
        if (wait > rt->retry_max_ms)
            wait = rt->retry_max_ms;
        sl_info("router", "job %s attempt %d failed (%s %ld); retrying in %lld ms", j->job_id,
                j->attempts, status ? "HTTP" : "network error", status, (long long)wait);
        if (!backoff_wait(w, wait)) {
            recorded = false;
            break;
        }
    }
    if (resp.data)
        j->last_response = sl_strndup(resp.data, resp.len);
    sl_buf_free(&resp);
    return recorded;
}

static void *worker_main(void *arg)
{
    rt_worker_t *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        while (!w->head && !atomic_load(&w->rt->stop_workers))
            pthread_cond_wait(&w->cond, &w->lock);
        if (atomic_load(&w->rt->stop_workers)) {
            pthread_mutex_unlock(&w->lock);
            break;
        }
        rt_job_t *j = w->head;
        w->head = j->next;
        if (!w->head)
            w->tail = NULL;
        w->len--;
        pthread_mutex_unlock(&w->lock);
        if (deliver(w, j))
            writer_push(w->rt, j);
        else
            job_free(j); /* stopped: left uncommitted, delivered again after restart */
    }
    return NULL;
}

/* Appends the outcome rows of a batch as one multi-row INSERT. */
static int write_batch(rt_router_t *rt, rt_job_t *batch, size_t n)
{
    enum { COLS = 13 };
    const char **params = sl_malloc(n * COLS * sizeof(char *));
    char(*nums)[4][24] = sl_malloc(n * sizeof(*nums));
    char(*times)[2][SL_TIME_STRLEN] = sl_malloc(n * sizeof(*times));
    sl_buf_t sql = SL_BUF_INIT;
    sl_buf_puts(&sql, "INSERT INTO sluice_jobs (job_id, message_id, source_id, destination_id, "
                      "user_key, state, attempts, last_status, last_response, first_attempt_at, "
                      "last_attempt_at, kafka_topic, kafka_partition, kafka_offset) VALUES ");
    size_t i = 0;
    for (rt_job_t *j = batch; j && i < n; j = j->next, i++) {
        snprintf(nums[i][0], 24, "%d", j->attempts);
        snprintf(nums[i][1], 24, "%ld", j->last_status);
        snprintf(nums[i][2], 24, "%d", (int)j->partition);
        snprintf(nums[i][3], 24, "%lld", (long long)j->offset);
        sl_time_format_ms(j->first_ms, times[i][0]);
        sl_time_format_ms(j->last_ms, times[i][1]);
        const char **p = params + i * COLS;
        p[0] = j->job_id;
        p[1] = j->message_id;
        p[2] = j->source_id;
        p[3] = j->dest_id;
        p[4] = j->user_key;
        p[5] = j->state;
        p[6] = nums[i][0];
        p[7] = j->last_status ? nums[i][1] : NULL;
        p[8] = j->last_response;
        p[9] = times[i][0];
        p[10] = times[i][1];
        p[11] = nums[i][2];
        p[12] = nums[i][3];
        size_t b = i * COLS;
        sl_buf_printf(&sql,
                      "%s($%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu::int,$%zu::int,$%zu,"
                      "$%zu::timestamptz,$%zu::timestamptz,'%s',$%zu::int,$%zu::bigint)",
                      i ? "," : "", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7, b + 8, b + 9,
                      b + 10, b + 11, rt->topic, b + 12, b + 13);
    }
    char err[512];
    int rc = sl_pg_exec(rt->pg, sql.data, (int)(n * COLS), params, NULL, err, sizeof(err));
    if (rc)
        sl_warn("router", "could not record %zu job outcomes (will retry): %s", n, err);
    sl_buf_free(&sql);
    free(params);
    free(nums);
    free(times);
    return rc;
}

/* Waits on the writer's condition (the caller holds wlock) until ms have passed, the writer is
 * stopped, or at least min_len outcomes are queued. */
static void writer_wait(rt_router_t *rt, int64_t ms, size_t min_len)
{
    struct timespec ts;
    sl_time_deadline(&ts, ms);
    while (!atomic_load(&rt->stop_writer) && rt->wlen < min_len)
        if (pthread_cond_timedwait(&rt->wcond, &rt->wlock, &ts) != 0)
            break;
}

/* Takes up to max queued outcomes (caller holds wlock); returns them and their count. */
static rt_job_t *writer_take(rt_router_t *rt, size_t max, size_t *n)
{
    rt_job_t *batch = rt->whead, *last = NULL;
    *n = 0;
    for (rt_job_t *j = batch; j && *n < max; j = j->next) {
        last = j;
        (*n)++;
    }
    if (!last)
        return NULL;
    rt->whead = last->next;
    if (!rt->whead)
        rt->wtail = NULL;
    rt->wlen -= *n;
    last->next = NULL;
    return batch;
}

/*
 * The status writer: records outcomes in batches (one INSERT of up to RT_BATCH_MAX rows, at
 * most every RT_FLUSH_MS unless a full batch is waiting), and only once a batch is committed
 * marks its offsets done. While Postgres is unreachable it retries the same batch with backoff
 * (sl_pg reconnects and reports the "postgres" health check); offsets stay uncommitted.
 * At stop it drains the queue; a batch it cannot write then is dropped, left for redelivery.
 */
static void *writer_main(void *arg)
{
    rt_router_t *rt = arg;
    int64_t backoff = 100, last_flush = 0;
    rt_job_t *batch = NULL;
    size_t n = 0;
    for (;;) {
        pthread_mutex_lock(&rt->wlock);
        int64_t since = sl_time_mono_ms() - last_flush;
        if (!batch) {
            if (!rt->whead)
                writer_wait(rt, RT_FLUSH_MS, 1);
            else if (since < RT_FLUSH_MS)
                writer_wait(rt, RT_FLUSH_MS - since, RT_BATCH_MAX);
            batch = writer_take(rt, RT_BATCH_MAX, &n);
        } else if (n < RT_BATCH_MAX) { /* retrying: take in what queued up meanwhile */
            size_t more;
            rt_job_t *extra = writer_take(rt, RT_BATCH_MAX - n, &more), *last = batch;
            while (last->next)
                last = last->next;
            last->next = extra;
            n += more;
        }
        bool stopping = atomic_load(&rt->stop_writer);
        pthread_mutex_unlock(&rt->wlock);
        if (!batch) {
            if (stopping)
                break;
            continue;
        }
        last_flush = sl_time_mono_ms();
        if (write_batch(rt, batch, n) != 0) {
            if (stopping)
                break;
            pthread_mutex_lock(&rt->wlock);
            writer_wait(rt, backoff, SIZE_MAX);
            pthread_mutex_unlock(&rt->wlock);
            backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
            continue;
        }
        backoff = 100;
        for (rt_job_t *j = batch, *next; j; j = next) {
            next = j->next;
            sl_kafka_offsets_done(rt->offsets, rt->topic, j->partition, j->offset);
            sl_metrics_add(sl_metrics_counter("sluice_router_jobs_total",
                                              "Jobs recorded, by final state", "destination",
                                              *j->dest_id ? j->dest_id : "unknown", "state",
                                              j->state, NULL),
                           1);
            job_free(j);
        }
        batch = NULL;
    }
    for (rt_job_t *j = batch, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    return NULL;
}

static uint64_t fnv1a(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *s = a; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *s = b; s && *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void dispatch(rt_router_t *rt, rt_job_t *j)
{
    if (j->state) { /* malformed: record the abort without delivering */
        writer_push(rt, j);
        return;
    }
    rt_worker_t *w = &rt->workers[fnv1a(j->dest_id, j->user_key) % (uint64_t)rt->nworkers];
    pthread_mutex_lock(&w->lock);
    while (w->len >= RT_QUEUE_MAX && !atomic_load(&rt->stop_consuming)) {
        pthread_mutex_unlock(&w->lock);
        rd_kafka_poll(rt->consumer, 10); /* serves rebalances while waiting */
        pthread_mutex_lock(&w->lock);
    }
    j->next = NULL;
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    w->len++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    rt_router_t *rt = opaque;
    sl_kafka_offsets_commit(rt->offsets, rk, true);
    sl_kafka_offsets_forget(rt->offsets, parts);
}

static void *consumer_main(void *arg)
{
    rt_router_t *rt = arg;
    int64_t last_commit = sl_time_mono_ms();
    while (!atomic_load(&rt->stop_consuming)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 100);
        if (m) {
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                sl_kafka_offsets_track(rt->offsets, rt->topic, m->partition, m->offset);
                sl_health_set("kafka", true, NULL);
                dispatch(rt, parse_job(rt, m));
            } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                sl_warn("router", "kafka consumer: %s", rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
        }
        if (sl_time_mono_ms() - last_commit >= RT_COMMIT_EVERY_MS) {
            sl_kafka_offsets_commit(rt->offsets, rt->consumer, false);
            last_commit = sl_time_mono_ms();
        }
    }
    return NULL;
}

rt_router_t *rt_router_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                             size_t errstr_size)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rt_router_t *rt = sl_calloc(1, sizeof(*rt));
    rt->ws = ws;
    rt->topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    rt->group = sl_kafka_topic(conf, "router");
    rt->offsets = sl_kafka_offsets_new();
    rt->pg = sl_pg_new(sl_conf_str(conf, "postgres.dsn"));
    rt->timeout_ms = sl_conf_duration_ms(conf, "router.timeout");
    rt->retry_base_ms = sl_conf_duration_ms(conf, "router.retry_base");
    rt->retry_max_ms = sl_conf_duration_ms(conf, "router.retry_max");
    rt->give_up_ms = sl_conf_duration_ms(conf, "router.give_up_after");
    rt->min_attempts = (int)sl_conf_int(conf, "router.min_attempts");
    rt->nworkers = (int)sl_conf_int(conf, "router.workers");
    pthread_mutex_init(&rt->wlock, NULL);
    pthread_cond_init(&rt->wcond, NULL);

    const char *topics[] = {rt->topic, NULL};
    rt->consumer =
        sl_kafka_consumer_new(conf, rt->group, topics, on_revoke, rt, errstr, errstr_size);
    if (!rt->consumer) {
        sl_kafka_offsets_destroy(rt->offsets);
        sl_pg_destroy(rt->pg);
        free(rt->topic);
        free(rt->group);
        free(rt);
        curl_global_cleanup();
        return NULL;
    }
    rt->workers = sl_calloc((size_t)rt->nworkers, sizeof(*rt->workers));
    for (int i = 0; i < rt->nworkers; i++) {
        rt_worker_t *w = &rt->workers[i];
        w->rt = rt;
        w->curl = curl_easy_init();
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        pthread_create(&w->thread, NULL, worker_main, w);
    }
    pthread_create(&rt->writer_thread, NULL, writer_main, rt);
    pthread_create(&rt->consumer_thread, NULL, consumer_main, rt);
    return rt;
}

void rt_router_stop(rt_router_t *rt)
{
    if (!rt)
        return;
    /* Stop taking jobs, let attempts in progress finish, record their outcomes, commit. */
    atomic_store(&rt->stop_consuming, true);
    pthread_join(rt->consumer_thread, NULL);
    atomic_store(&rt->stop_workers, true);
    for (int i = 0; i < rt->nworkers; i++) {
        rt_worker_t *w = &rt->workers[i];
        pthread_mutex_lock(&w->lock);
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        for (rt_job_t *j = w->head, *next; j; j = next) {
            next = j->next;
            job_free(j);
        }
        curl_easy_cleanup(w->curl);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
    }
    pthread_mutex_lock(&rt->wlock);
    atomic_store(&rt->stop_writer, true);
    pthread_cond_signal(&rt->wcond);
    pthread_mutex_unlock(&rt->wlock);
    pthread_join(rt->writer_thread, NULL);
    for (rt_job_t *j = rt->whead, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    sl_kafka_offsets_commit(rt->offsets, rt->consumer, true);
    rd_kafka_consumer_close(rt->consumer);
    sl_kafka_consumer_destroy(rt->consumer);
    sl_kafka_offsets_destroy(rt->offsets);
    sl_pg_destroy(rt->pg);
    pthread_mutex_destroy(&rt->wlock);
    pthread_cond_destroy(&rt->wcond);
    free(rt->workers);
    free(rt->topic);
    free(rt->group);
    free(rt);
    curl_global_cleanup();
}
