/*
 * The gateway role, see gateway.h: the ingest endpoints, writeKey auth, admission (in-flight
 * cap, rate limits, suppressed users) and production to the events topic. Parsing and
 * enrichment live in ingest.c. A request is answered once Kafka acknowledged all its events.
 */
#include "gateway/gateway.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/health.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "common/trace.h"
#include "common/uuid.h"
#include "gateway/ingest.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kafka header names shared with the processor. */
#define GW_HDR_SOURCE_ID   "sluice-source-id"
#define GW_HDR_RECEIVED_AT "sluice-received-at"

/* The endpoints, for routing and metrics. */
typedef enum {
    EP_TRACK,
    EP_IDENTIFY,
    EP_PAGE,
    EP_SCREEN,
    EP_GROUP,
    EP_ALIAS,
    EP_BATCH,
    EP_IMPORT,
    EP_WEBHOOK,
    EP_BEACON,
    EP_PIXEL_TRACK,
    EP_PIXEL_PAGE,
    EP_COUNT
} endpoint_t;

static const char *const ep_names[EP_COUNT] = {"track",   "identify", "page",        "screen",
                                               "group",   "alias",    "batch",       "import",
                                               "webhook", "beacon",   "pixel_track", "pixel_page"};

/* Statuses with their own series; any other is counted as "other". */
static const int statuses[] = {200, 400, 401, 404, 413, 429, 503};
#define NSTATUS (sizeof(statuses) / sizeof(statuses[0]) + 1)

/* The metric handles of one source, created on first use (a lookup takes the registry lock). */
typedef struct src_stats {
    char *source_id;
    _Atomic(sl_metric_t *) requests[EP_COUNT][NSTATUS];
    _Atomic(sl_metric_t *) events[EP_COUNT];
    _Atomic(sl_metric_t *) bytes[EP_COUNT];
    _Atomic(sl_metric_t *) suppressed;
    struct src_stats *next;
} src_stats_t;

/* A fixed-window event counter for rate limits. */
typedef struct window {
    char *key;
    int64_t start_ms, count;
    struct window *next;
} window_t;

/* Users whose events are accepted and dropped: "<sourceId or *>\x1f<userId>", sorted. */
typedef struct suppression {
    char version[72];
    char **keys;
    size_t n;
} suppression_t;

struct gw_gateway {
    rd_kafka_t *rk;
    char *topic;
    _Atomic(sl_wsconf_t *) ws;
    size_t max_event_size;
    bool trust_forwarded_for;
    pthread_t poller;
    bool kafka_ok; /* what /health was last told; the poller thread's */
    atomic_bool stop;
    atomic_long inflight;        /* events produced but not yet acknowledged */
    atomic_llong inflight_bytes; /* their bytes */
    long long max_inflight_bytes;
    int64_t ack_timeout_ms;
    pthread_mutex_t rlock; /* requests not yet seen answered by the poller, oldest first */
    struct gw_request *rhead, *rtail;

    pthread_mutex_t slock; /* per-source metric handles */
    src_stats_t *stats;

    pthread_mutex_t wlock; /* rate limit windows */
    int64_t window_ms, workspace_limit, source_limit;
    window_t *windows;

    pthread_rwlock_t suplock;
    suppression_t sup;

    sl_metric_t *m_ack_seconds, *m_req_seconds[EP_COUNT], *m_inflight_bytes;
};

/*
 * One ingest request waiting for Kafka. It is answered once, by whichever comes first: the
 * last acknowledgement (200, or 503 if any event failed) or its deadline (503, by the poller).
 * It is freed when the handler, every delivery report and the poller's list let go of it; the
 * events' bytes (batch.out) are produced without a copy and live as long.
 */
typedef struct gw_request {
    gw_gateway_t *gw;
    sl_http_req_t *req;
    endpoint_t ep;
    src_stats_t *stats;
    gw_batch_t batch;
    size_t produced;        /* events handed to Kafka */
    atomic_int events_left; /* events not yet settled, plus one held by the handler */
    atomic_int refs;        /* events + handler + the pending list */
    atomic_int err;         /* first delivery error (rd_kafka_resp_err_t), 0 if none */
    atomic_bool answered;
    int64_t start_ms, deadline_ms;
    struct gw_request *next;
} gw_request_t;

/* The 1x1 transparent GIF the pixel endpoints answer with. */
static const unsigned char pixel_gif[] = {
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b};

static bool is_pixel(endpoint_t ep)
{
    return ep == EP_PIXEL_TRACK || ep == EP_PIXEL_PAGE;
}

/* --- metrics --- */

static src_stats_t *stats_for(gw_gateway_t *gw, const char *source_id)
{
    pthread_mutex_lock(&gw->slock);
    src_stats_t *s;
    for (s = gw->stats; s; s = s->next)
        if (strcmp(s->source_id, source_id) == 0)
            break;
    if (!s) {
        s = sl_calloc(1, sizeof(*s));
        s->source_id = sl_strdup(source_id);
        s->next = gw->stats;
        gw->stats = s;
    }
    pthread_mutex_unlock(&gw->slock);
    return s;
}

static size_t status_slot(int status)
{
    for (size_t i = 0; i < NSTATUS - 1; i++)
        if (statuses[i] == status)
            return i;
    return NSTATUS - 1;
}

static void count_request(gw_gateway_t *gw, src_stats_t *s, endpoint_t ep, int status,
                          sl_http_req_t *req)
{
    size_t slot = status_slot(status);
    sl_metric_t *m = atomic_load(&s->requests[ep][slot]);
    if (!m) {
        char st[8];
        snprintf(st, sizeof(st), "%d", status);
        m = sl_metrics_counter("sluice_gateway_requests_total",
                               "Ingest requests answered, by source, endpoint and status", "source",
                               s->source_id, "endpoint", ep_names[ep], "status",
                               slot == NSTATUS - 1 ? "other" : st, NULL);
        atomic_store(&s->requests[ep][slot], m);
    }
    sl_metrics_add(m, 1);
    m = atomic_load(&s->bytes[ep]);
    if (!m) {
        m = sl_metrics_counter("sluice_gateway_request_bytes_total",
                               "Bytes of ingest request bodies as received, by source and endpoint",
                               "source", s->source_id, "endpoint", ep_names[ep], NULL);
        atomic_store(&s->bytes[ep], m);
    }
    sl_metrics_add(m, (double)sl_http_req_wire_size(req));
    sl_metrics_observe(gw->m_req_seconds[ep],
                       (double)(sl_time_mono_ms() - sl_http_req_start_ms(req)) / 1e3);
}

static void count_events(src_stats_t *s, endpoint_t ep, size_t n)
{
    sl_metric_t *m = atomic_load(&s->events[ep]);
    if (!m) {
        m = sl_metrics_counter("sluice_gateway_events_total",
                               "Events acknowledged by Kafka, by source and endpoint", "source",
                               s->source_id, "endpoint", ep_names[ep], NULL);
        atomic_store(&s->events[ep], m);
    }
    sl_metrics_add(m, (double)n);
}

static void count_rejection(const char *reason)
{
    /* Rejections are the exception, so the registry lookup is acceptable here. */
    sl_metrics_add(sl_metrics_counter("sluice_gateway_rejections_total",
                                      "Ingest requests not accepted, by reason", "reason", reason,
                                      NULL),
                   1);
}

/* --- answers --- */

/* Answers an error: a JSON body naming the problem (a GIF for the pixel endpoints, with the
 * problem in the X-Sluice-Error header). */
static void respond_problem(gw_gateway_t *gw, sl_http_req_t *req, endpoint_t ep, src_stats_t *stats,
                            int status, long index, const char *reason, const char *msg)
{
    count_rejection(reason);
    if (stats)
        count_request(gw, stats, ep, status, req);
    else
        sl_metrics_observe(gw->m_req_seconds[ep],
                           (double)(sl_time_mono_ms() - sl_http_req_start_ms(req)) / 1e3);
    if (is_pixel(ep)) {
        sl_http_req_add_header(req, "X-Sluice-Error", msg);
        sl_http_respond(req, status, "image/gif", (const char *)pixel_gif, sizeof(pixel_gif));
        return;
    }
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_puts(&b, "{\"error\":");
    sl_buf_json_str(&b, msg, strlen(msg));
    if (index >= 0)
        sl_buf_printf(&b, ",\"index\":%ld", index);
    sl_buf_puts(&b, "}");
    sl_http_respond(req, status, "application/json", b.data, b.len);
    sl_buf_free(&b);
}

static void respond_ok(gw_gateway_t *gw, sl_http_req_t *req, endpoint_t ep, src_stats_t *stats)
{
    count_request(gw, stats, ep, 200, req);
    if (is_pixel(ep))
        sl_http_respond(req, 200, "image/gif", (const char *)pixel_gif, sizeof(pixel_gif));
    else
        sl_http_respond(req, 200, "text/plain", "OK", 2);
}

/* Answers the request unless it was answered already. Any thread. */
static void request_answer(gw_request_t *r, bool timed_out)
{
    if (atomic_exchange(&r->answered, true))
        return;
    gw_gateway_t *gw = r->gw;
    int err = atomic_load(&r->err);
    if (timed_out || err) {
        char msg[256];
        if (timed_out)
            snprintf(msg, sizeof(msg),
                     "kafka did not acknowledge the events within %lld ms; retry later",
                     (long long)gw->ack_timeout_ms);
        else
            snprintf(msg, sizeof(msg), "could not persist events to kafka: %s; retry later",
                     rd_kafka_err2str((rd_kafka_resp_err_t)err));
        sl_http_req_add_header(r->req, "Retry-After", "5");
        respond_problem(gw, r->req, r->ep, r->stats, 503, -1,
                        timed_out ? "kafka_timeout" : "kafka_error", msg);
    } else {
        count_events(r->stats, r->ep, r->produced);
        sl_metrics_observe(gw->m_ack_seconds, (double)(sl_time_mono_ms() - r->start_ms) / 1e3);
        respond_ok(gw, r->req, r->ep, r->stats);
    }
}

static void request_unref(gw_request_t *r, int n)
{
    if (atomic_fetch_sub(&r->refs, n) == n) {
        atomic_fetch_sub(&r->gw->inflight_bytes, (long long)r->batch.out.len);
        gw_batch_free(&r->batch);
        free(r);
    }
}

/* n events are settled (acknowledged, failed or never produced). */
static void request_settle(gw_request_t *r, int n)
{
    if (atomic_fetch_sub(&r->events_left, n) == n)
        request_answer(r, false);
    request_unref(r, n);
}

/* On the poller thread: answers requests past their deadline with 503 and drops the list's
 * hold on requests that are answered. */
static void expire_requests(gw_gateway_t *gw)
{
    int64_t now = sl_time_mono_ms();
    pthread_mutex_lock(&gw->rlock);
    gw_request_t *prev = NULL, *r = gw->rhead;
    while (r) {
        gw_request_t *next = r->next;
        bool done = atomic_load(&r->answered);
        if (!done && now >= r->deadline_ms) {
            request_answer(r, true);
            done = true;
        }
        if (done) {
            if (prev)
                prev->next = next;
            else
                gw->rhead = next;
            if (gw->rtail == r)
                gw->rtail = prev;
            request_unref(r, 1);
        } else {
            prev = r;
        }
        r = next;
    }
    pthread_mutex_unlock(&gw->rlock);
    sl_metrics_set(gw->m_inflight_bytes, (double)atomic_load(&gw->inflight_bytes));
}

/* Delivery report: called on the poller thread for every produced event. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    gw_gateway_t *gw = opaque;
    gw_request_t *r = m->_private;
    (void)rk;
    atomic_fetch_sub(&gw->inflight, 1);
    if (m->err) {
        int expected = 0;
        atomic_compare_exchange_strong(&r->err, &expected, (int)m->err);
        sl_warn("gateway", "kafka did not acknowledge an event: %s", rd_kafka_err2str(m->err));
        if (gw->kafka_ok) {
            gw->kafka_ok = false;
            sl_health_set("kafka", false, "kafka did not acknowledge events; see the gateway log");
        }
    } else if (!gw->kafka_ok) {
        gw->kafka_ok = true;
        sl_health_set("kafka", true, NULL);
    }
    request_settle(r, 1);
}

static void *poller_main(void *arg)
{
    gw_gateway_t *gw = arg;
    while (!atomic_load(&gw->stop)) {
        rd_kafka_poll(gw->rk, 50);
        expire_requests(gw);
    }
    return NULL;
}

/* --- admission --- */

/* The fixed window of key, rolled forward to now; created on first use. Caller holds wlock. */
static window_t *window_at(gw_gateway_t *gw, const char *key, int64_t now)
{
    window_t *w;
    for (w = gw->windows; w; w = w->next)
        if (strcmp(w->key, key) == 0)
            break;
    if (!w) {
        w = sl_calloc(1, sizeof(*w));
        w->key = sl_strdup(key);
        w->start_ms = now;
        w->next = gw->windows;
        gw->windows = w;
    }
    if (now - w->start_ms >= gw->window_ms) {
        w->start_ms = now - (now - w->start_ms) % gw->window_ms;
        w->count = 0;
    }
    return w;
}

/* Seconds until w ends if n more events would pass limit, else 0. */
static int64_t window_wait(const gw_gateway_t *gw, const window_t *w, int64_t limit, size_t n,
                           int64_t now)
{
    if (w->count + (int64_t)n > limit)
        return (w->start_ms + gw->window_ms - now + 999) / 1000;
    return 0;
}

/* Applies the workspace and per-source limits to n events. Returns 0 (the events are
 * counted), or the seconds a client should wait. */
static int64_t rate_limit(gw_gateway_t *gw, const sl_workspace_t *ws, const sl_source_t *src,
                          size_t n)
{
    if ((!gw->workspace_limit && !gw->source_limit) || !n)
        return 0;
    int64_t now = sl_time_mono_ms(), wait = 0;
    char key[256];
    window_t *wsw = NULL, *srcw = NULL;
    pthread_mutex_lock(&gw->wlock);
    if (gw->workspace_limit) {
        const char *id = sl_workspace_id(ws);
        snprintf(key, sizeof(key), "workspace:%s", id ? id : "");
        wsw = window_at(gw, key, now);
        wait = window_wait(gw, wsw, gw->workspace_limit, n, now);
    }
    if (!wait && gw->source_limit) {
        snprintf(key, sizeof(key), "source:%s", src->id);
        srcw = window_at(gw, key, now);
        wait = window_wait(gw, srcw, gw->source_limit, n, now);
    }
    if (!wait) {
        if (wsw)
            wsw->count += (int64_t)n;
        if (srcw)
            srcw->count += (int64_t)n;
    }
    pthread_mutex_unlock(&gw->wlock);
    return wait;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void suppression_clear(suppression_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->keys[i]);
    free(s->keys);
    s->keys = NULL;
    s->n = 0;
}

/* Rebuilds the suppressed-user set from the config's "suppressedUsers" list:
 * [{"userId": "u1"}, {"userId": "u2", "sourceIds": ["src1"]}]. Caller holds suplock (write). */
static void suppression_load(suppression_t *s, const sl_workspace_t *ws)
{
    suppression_clear(s);
    snprintf(s->version, sizeof(s->version), "%s", sl_workspace_version(ws));
    json_object *list;
    if (!json_object_object_get_ex(sl_workspace_json(ws), "suppressedUsers", &list) ||
        !json_object_is_type(list, json_type_array))
        return;
    size_t cap = 0;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *u = json_object_array_get_idx(list, i), *uid, *srcs;
        if (!json_object_object_get_ex(u, "userId", &uid) || !json_object_get_string_len(uid))
            continue;
        const char *user = json_object_get_string(uid);
        bool per_source = json_object_object_get_ex(u, "sourceIds", &srcs) &&
                          json_object_is_type(srcs, json_type_array) &&
                          json_object_array_length(srcs) > 0;
        size_t nsrc = per_source ? json_object_array_length(srcs) : 1;
        for (size_t j = 0; j < nsrc; j++) {
            const char *sid =
                per_source ? json_object_get_string(json_object_array_get_idx(srcs, j)) : "*";
            if (s->n == cap) {
                cap = cap ? cap * 2 : 16;
                s->keys = sl_realloc(s->keys, cap * sizeof(char *));
            }
            size_t len = strlen(sid) + 1 + strlen(user) + 1;
            s->keys[s->n] = sl_malloc(len);
            snprintf(s->keys[s->n], len, "%s\x1f%s", sid, user);
            s->n++;
        }
    }
    qsort(s->keys, s->n, sizeof(char *), cmp_str);
}

static bool suppressed_key(const suppression_t *s, const char *sid, const char *user, size_t ulen)
{
    char key[1400];
    int n = snprintf(key, sizeof(key), "%s\x1f%.*s", sid, (int)ulen, user);
    if (n < 0 || n >= (int)sizeof(key))
        return false;
    const char *k = key;
    return bsearch(&k, s->keys, s->n, sizeof(char *), cmp_str) != NULL;
}

/* Drops the events of suppressed users from b (they are answered 200 and counted). Returns
 * the number dropped. */
static size_t suppress(gw_gateway_t *gw, const sl_workspace_t *ws, const sl_source_t *src,
                       gw_batch_t *b)
{
    pthread_rwlock_rdlock(&gw->suplock);
    if (strcmp(gw->sup.version, sl_workspace_version(ws)) != 0) {
        pthread_rwlock_unlock(&gw->suplock);
        pthread_rwlock_wrlock(&gw->suplock);
        if (strcmp(gw->sup.version, sl_workspace_version(ws)) != 0)
            suppression_load(&gw->sup, ws);
    }
    size_t kept = 0;
    if (gw->sup.n) {
        for (size_t i = 0; i < b->n; i++) {
            const gw_event_t *e = &b->events[i];
            const char *user = b->ids.data ? b->ids.data + e->user_off : "";
            bool drop = e->user_len && (suppressed_key(&gw->sup, "*", user, e->user_len) ||
                                        suppressed_key(&gw->sup, src->id, user, e->user_len));
            if (!drop)
                b->events[kept++] = *e;
        }
    } else {
        kept = b->n;
    }
    pthread_rwlock_unlock(&gw->suplock);
    size_t dropped = b->n - kept;
    b->n = kept;
    return dropped;
}

/* --- the handler --- */

typedef struct params {
    const char **names, **values;
    size_t n, cap;
} params_t;

static void collect_param(const char *name, const char *value, void *opaque)
{
    params_t *p = opaque;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->names = sl_realloc(p->names, p->cap * sizeof(char *));
        p->values = sl_realloc(p->values, p->cap * sizeof(char *));
    }
    p->names[p->n] = name;
    p->values[p->n] = value;
    p->n++;
}

/* The query string as a JSON object (see gw_params_to_json), writeKey left out. */
static void query_json(sl_http_req_t *req, sl_buf_t *out)
{
    params_t p = {0};
    static const char *const skip[] = {"writeKey", NULL};
    sl_http_req_query_foreach(req, collect_param, &p);
    gw_params_to_json(p.names, p.values, p.n, skip, out);
    free(p.names);
    free(p.values);
}

/* The event name of webhook sources: the source config's "event" (or "eventName"). */
static const char *webhook_event_name(const sl_source_t *src)
{
    json_object *cfg, *v;
    if (json_object_object_get_ex(src->json, "config", &cfg) &&
        json_object_is_type(cfg, json_type_object)) {
        if (json_object_object_get_ex(cfg, "event", &v) && json_object_get_string_len(v))
            return json_object_get_string(v);
        if (json_object_object_get_ex(cfg, "eventName", &v) && json_object_get_string_len(v))
            return json_object_get_string(v);
    }
    return "webhook_source_event";
}

/* The request's trace headers, as sl_http_req_headers_foreach finds them. */
typedef struct req_trace {
    const char *parent; /* the traceparent field, NULL when absent or repeated */
    int nparent;
    sl_buf_t state; /* the tracestate fields joined with ',' */
} req_trace_t;

static void collect_trace(const char *name, const char *value, void *opaque)
{
    req_trace_t *t = opaque;
    if (strcasecmp(name, SL_HDR_TRACEPARENT) == 0) {
        t->parent = ++t->nparent == 1 ? value : NULL; /* two are one too many: restart */
    } else if (strcasecmp(name, SL_HDR_TRACESTATE) == 0 && t->state.len <= 4 * SL_TRACESTATE_MAX) {
        if (t->state.len)
            sl_buf_putc(&t->state, ',');
        sl_buf_puts(&t->state, value);
    }
}

/* The gateway's span of a request: a child of the client's valid traceparent, with its
 * tracestate cleaned (state[0] == '\0' for none), or a new trace. */
static void request_trace(sl_http_req_t *req, char parent[SL_TRACEPARENT_LEN + 1],
                          char state[SL_TRACESTATE_MAX + 1])
{
    req_trace_t t = {.state = SL_BUF_INIT};
    sl_http_req_headers_foreach(req, collect_trace, &t);
    sl_trace_t span;
    *state = '\0';
    if (sl_trace_continue(t.parent, t.parent ? strlen(t.parent) : 0, &span) && t.state.len)
        sl_trace_state_clean(t.state.data, t.state.len, state, SL_TRACESTATE_MAX + 1);
    sl_trace_format(&span, parent);
    sl_buf_free(&t.state);
}

static endpoint_t endpoint_of(const char *path)
{
    if (strncmp(path, "/pixel/v1/", 10) == 0)
        return strcmp(path + 10, "page") == 0 ? EP_PIXEL_PAGE : EP_PIXEL_TRACK;
    if (strncmp(path, "/beacon/", 8) == 0)
        return EP_BEACON;
    const char *name = strrchr(path, '/') + 1;
    for (int i = 0; i < EP_COUNT; i++)
        if (strcmp(name, ep_names[i]) == 0)
            return (endpoint_t)i;
    return EP_BATCH;
}

static sl_http_result_t handle_ingest(sl_http_req_t *req, void *opaque)
{
    gw_gateway_t *gw = opaque;
    endpoint_t ep = endpoint_of(sl_http_req_path(req));
    sl_workspace_t *ws = NULL;
    gw_request_t *r = NULL;
    src_stats_t *stats = NULL;
    char msg[320];

    /* The writeKey: Basic auth, or ?writeKey= where browsers and webhooks can't set headers. */
    const char *write_key = sl_http_req_basic_user(req);
    if ((!write_key || !*write_key) && (ep >= EP_WEBHOOK))
        write_key = sl_http_req_query(req, "writeKey");
    if (!write_key || !*write_key) {
        sl_http_req_add_header(req, "WWW-Authenticate", "Basic realm=\"sluice\"");
        respond_problem(gw, req, ep, NULL, 401, -1, "no_write_key",
                        "no write key: send the source's writeKey as the HTTP Basic username "
                        "with an empty password");
        return SL_HTTP_DONE;
    }
    sl_wsconf_t *wsc = atomic_load(&gw->ws);
    if (!wsc) {
        sl_http_req_add_header(req, "Retry-After", "5");
        respond_problem(gw, req, ep, NULL, 503, -1, "not_ready",
                        "workspace config is not loaded yet; see /health");
        return SL_HTTP_DONE;
    }
    ws = sl_wsconf_get(wsc);
    const sl_source_t *src = sl_workspace_source_by_write_key(ws, write_key);
    if (!src) {
        respond_problem(gw, req, ep, NULL, 401, -1, "invalid_write_key", "invalid write key");
        goto out;
    }
    stats = stats_for(gw, src->id);
    if (!src->enabled) {
        respond_problem(gw, req, ep, stats, 404, -1, "source_disabled", "source is disabled");
        goto out;
    }
    if (atomic_load(&gw->inflight_bytes) > gw->max_inflight_bytes) {
        snprintf(msg, sizeof(msg),
                 "the gateway holds its limit of %lld bytes of events waiting for kafka; retry "
                 "later",
                 gw->max_inflight_bytes);
        sl_http_req_add_header(req, "Retry-After", "1");
        respond_problem(gw, req, ep, stats, 503, -1, "over_capacity", msg);
        goto out;
    }

    /* Parse and enrich. */
    char received_at[SL_TIME_STRLEN], ipbuf[64];
    sl_time_format_ms(sl_time_now_ms(), received_at);
    gw_ingest_ctx_t ctx = {
        .received_at = received_at,
        .ip = gw_client_ip(sl_http_req_header(req, "X-Forwarded-For"), sl_http_req_peer(req),
                           gw->trust_forwarded_for, ipbuf, sizeof(ipbuf)),
        .max_event_size = gw->max_event_size,
    };
    r = sl_calloc(1, sizeof(*r));
    gw_batch_init(&r->batch);
    size_t len;
    const char *body = sl_http_req_body(req, &len);
    int st;
    switch (ep) {
    case EP_BATCH:
    case EP_IMPORT:
    case EP_BEACON:
        st = gw_ingest_batch(&r->batch, body, len, &ctx);
        break;
    case EP_WEBHOOK:
        if (strcmp(sl_http_req_method(req), "GET") == 0) {
            sl_buf_t q = SL_BUF_INIT;
            query_json(req, &q);
            st = gw_ingest_webhook(&r->batch, q.data, q.len, webhook_event_name(src), &ctx);
            sl_buf_free(&q);
        } else {
            st = gw_ingest_webhook(&r->batch, body, len, webhook_event_name(src), &ctx);
        }
        break;
    case EP_PIXEL_TRACK:
    case EP_PIXEL_PAGE: {
        sl_buf_t q = SL_BUF_INIT;
        query_json(req, &q);
        st = gw_ingest_single(&r->batch, q.data, q.len, ep == EP_PIXEL_PAGE ? "page" : "track",
                              &ctx);
        sl_buf_free(&q);
        break;
    }
    default:
        st = gw_ingest_single(&r->batch, body, len, ep_names[ep], &ctx);
        break;
    }
    if (st) {
        respond_problem(gw, req, ep, stats, st, r->batch.index, r->batch.reason, r->batch.error);
        goto out;
    }

    size_t dropped = suppress(gw, ws, src, &r->batch);
    if (dropped) {
        sl_metric_t *m = atomic_load(&stats->suppressed);
        if (!m) {
            m = sl_metrics_counter("sluice_gateway_suppressed_events_total",
                                   "Events of suppressed users, accepted and dropped", "source",
                                   src->id, NULL);
            atomic_store(&stats->suppressed, m);
        }
        sl_metrics_add(m, (double)dropped);
    }
    int64_t wait = rate_limit(gw, ws, src, r->batch.n);
    if (wait) {
        char ra[24];
        snprintf(ra, sizeof(ra), "%lld", (long long)wait);
        sl_http_req_add_header(req, "Retry-After", ra);
        snprintf(msg, sizeof(msg),
                 "rate limit exceeded: the %s allows %lld events per %lld s; retry in %lld s",
                 gw->workspace_limit && gw->source_limit ? "workspace or source"
                 : gw->workspace_limit                   ? "workspace"
                                                         : "source",
                 (long long)(gw->workspace_limit ? gw->workspace_limit : gw->source_limit),
                 (long long)(gw->window_ms / 1000), (long long)wait);
        respond_problem(gw, req, ep, stats, 429, -1, "rate_limited", msg);
        goto out;
    }
    if (r->batch.n == 0) { /* every event was suppressed */
        respond_ok(gw, req, ep, stats);
        goto out;
    }

    /* Produce every event; the request is answered from the delivery reports. */
    char traceparent[SL_TRACEPARENT_LEN + 1], tracestate[SL_TRACESTATE_MAX + 1];
    request_trace(req, traceparent, tracestate);
    size_t n = r->batch.n;
    r->gw = gw;
    r->req = req;
    r->ep = ep;
    r->stats = stats;
    r->start_ms = sl_time_mono_ms();
    r->deadline_ms = r->start_ms + gw->ack_timeout_ms;
    atomic_init(&r->events_left, (int)n + 1);
    atomic_init(&r->refs, (int)n + 2);
    atomic_fetch_add(&gw->inflight_bytes, (long long)r->batch.out.len);
    pthread_mutex_lock(&gw->rlock);
    if (gw->rtail)
        gw->rtail->next = r;
    else
        gw->rhead = r;
    gw->rtail = r;
    pthread_mutex_unlock(&gw->rlock);
    for (size_t i = 0; i < n; i++) {
        gw_event_t *e = &r->batch.events[i];
        rd_kafka_vu_t vu[] = {
            {.vtype = RD_KAFKA_VTYPE_TOPIC, .u.cstr = gw->topic},
            {.vtype = RD_KAFKA_VTYPE_KEY, .u.mem = {e->rudder_id, SL_UUID_STRLEN - 1}},
            {.vtype = RD_KAFKA_VTYPE_VALUE, .u.mem = {r->batch.out.data + e->off, e->len}},
            {.vtype = RD_KAFKA_VTYPE_OPAQUE, .u.ptr = r},
            {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {GW_HDR_SOURCE_ID, src->id, -1}},
            {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {GW_HDR_RECEIVED_AT, received_at, -1}},
            {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {SL_HDR_TRACEPARENT, traceparent, -1}},
            {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {SL_HDR_TRACESTATE, tracestate, -1}},
        };
        rd_kafka_error_t *kerr =
            rd_kafka_produceva(gw->rk, vu, sizeof(vu) / sizeof(vu[0]) - !*tracestate);
        rd_kafka_resp_err_t err = kerr ? rd_kafka_error_code(kerr) : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (kerr)
            rd_kafka_error_destroy(kerr);
        if (err) {
            int expected = 0;
            atomic_compare_exchange_strong(&r->err, &expected, (int)err);
            sl_warn("gateway", "could not produce to kafka: %s", rd_kafka_err2str(err));
            request_settle(r, (int)(n - i));
            break;
        }
        r->produced++;
        atomic_fetch_add(&gw->inflight, 1);
    }
    request_settle(r, 1); /* the handler's hold: answers now if every event is settled */
    r = NULL;
    if (ws)
        sl_workspace_unref(ws);
    return SL_HTTP_ASYNC;

out:
    if (r) {
        gw_batch_free(&r->batch);
        free(r);
    }
    if (ws)
        sl_workspace_unref(ws);
    return SL_HTTP_DONE;
}

static void note_linger(const char *name, const char *value, void *opaque)
{
    (void)value;
    if (strcmp(name, "linger.ms") == 0 || strcmp(name, "queue.buffering.max.ms") == 0)
        *(bool *)opaque = true;
}

gw_gateway_t *gw_gateway_new(const sl_conf_t *conf, sl_wsconf_t *ws, sl_http_server_t *srv,
                             char *errstr, size_t errstr_size)
{
    gw_gateway_t *gw = sl_calloc(1, sizeof(*gw));
    atomic_init(&gw->ws, ws);
    gw->max_event_size = (size_t)sl_conf_size(conf, "gateway.max_event_size");
    gw->ack_timeout_ms = sl_conf_duration_ms(conf, "gateway.ack_timeout");
    gw->trust_forwarded_for = sl_conf_bool(conf, "gateway.trust_forwarded_for");
    gw->max_inflight_bytes = sl_conf_size(conf, "gateway.max_inflight_size");
    gw->window_ms = sl_conf_duration_ms(conf, "gateway.rate_limit_window");
    gw->workspace_limit = sl_conf_int(conf, "gateway.workspace_rate_limit");
    gw->source_limit = sl_conf_int(conf, "gateway.source_rate_limit");
    pthread_mutex_init(&gw->rlock, NULL);
    pthread_mutex_init(&gw->slock, NULL);
    pthread_mutex_init(&gw->wlock, NULL);
    pthread_rwlock_init(&gw->suplock, NULL);
    gw->topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);

    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!kconf)
        goto fail;
    char ms[32];
    snprintf(ms, sizeof(ms), "%lld", (long long)gw->ack_timeout_ms);
    /* The bound on how long a client waits before a 503: librdkafka fails the message then. */
    if (rd_kafka_conf_set(kconf, "message.timeout.ms", ms, errstr, errstr_size) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(kconf);
        goto fail;
    }
    /* A client waits for its events' acknowledgement, so batch for 1 ms rather than the
     * pipeline's 5, unless the user chose a linger. */
    bool user_linger = false;
    sl_conf_kafka_props_foreach(conf, note_linger, &user_linger);
    if (!user_linger &&
        rd_kafka_conf_set(kconf, "linger.ms", "1", errstr, errstr_size) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(kconf);
        goto fail;
    }
    rd_kafka_conf_set_dr_msg_cb(kconf, on_delivery);
    rd_kafka_conf_set_opaque(kconf, gw);
    gw->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, errstr_size);
    if (!gw->rk) {
        rd_kafka_conf_destroy(kconf);
        goto fail;
    }

    gw->m_ack_seconds = sl_metrics_histogram(
        "sluice_gateway_kafka_ack_seconds",
        "Time from a request's first produce to Kafka's acknowledgement of all its events", NULL, 0,
        NULL);
    for (int i = 0; i < EP_COUNT; i++)
        gw->m_req_seconds[i] =
            sl_metrics_histogram("sluice_gateway_request_seconds",
                                 "Time from a request's arrival to its answer, by endpoint", NULL,
                                 0, "endpoint", ep_names[i], NULL);
    gw->m_inflight_bytes =
        sl_metrics_gauge("sluice_gateway_inflight_bytes",
                         "Bytes of events produced and not yet acknowledged by Kafka", NULL);

    for (int i = EP_TRACK; i <= EP_ALIAS; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/v1/%s", ep_names[i]);
        sl_http_route(srv, "POST", path, handle_ingest, gw);
    }
    sl_http_route(srv, "POST", "/v1/batch", handle_ingest, gw);
    sl_http_route_max_body(srv, "POST", "/v1/import", handle_ingest, gw,
                           (size_t)sl_conf_size(conf, "gateway.max_import_size"));
    sl_http_route(srv, "POST", "/v1/webhook", handle_ingest, gw);
    sl_http_route(srv, "GET", "/v1/webhook", handle_ingest, gw);
    sl_http_route(srv, "POST", "/beacon/v1/batch", handle_ingest, gw);
    sl_http_route(srv, "GET", "/pixel/v1/track", handle_ingest, gw);
    sl_http_route(srv, "GET", "/pixel/v1/page", handle_ingest, gw);

    if (pthread_create(&gw->poller, NULL, poller_main, gw) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start the kafka poller thread");
        rd_kafka_destroy(gw->rk);
        goto fail;
    }
    return gw;

fail:
    free(gw->topic);
    free(gw);
    return NULL;
}

void gw_gateway_set_wsconf(gw_gateway_t *gw, sl_wsconf_t *ws)
{
    atomic_store(&gw->ws, ws);
}

int gw_gateway_drain(gw_gateway_t *gw, int timeout_ms)
{
    int64_t deadline = sl_time_mono_ms() + timeout_ms;
    while (atomic_load(&gw->inflight) > 0 && sl_time_mono_ms() < deadline)
        rd_kafka_flush(gw->rk, 100); /* serves delivery reports too */
    return (int)atomic_load(&gw->inflight);
}

void gw_gateway_destroy(gw_gateway_t *gw)
{
    if (!gw)
        return;
    atomic_store(&gw->stop, true);
    pthread_join(gw->poller, NULL);
    rd_kafka_flush(gw->rk, 1000);
    rd_kafka_destroy(gw->rk); /* serves the last delivery reports */
    expire_requests(gw);
    pthread_mutex_destroy(&gw->rlock);
    pthread_mutex_destroy(&gw->slock);
    pthread_mutex_destroy(&gw->wlock);
    pthread_rwlock_destroy(&gw->suplock);
    suppression_clear(&gw->sup);
    while (gw->stats) {
        src_stats_t *s = gw->stats;
        gw->stats = s->next;
        free(s->source_id);
        free(s);
    }
    while (gw->windows) {
        window_t *w = gw->windows;
        gw->windows = w->next;
        free(w->key);
        free(w);
    }
    free(gw->topic);
    free(gw);
}
