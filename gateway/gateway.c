/*
 * The gateway role, see gateway.h: ingest endpoints, writeKey auth, validation, enrichment and
 * production to the events topic; a request is answered once Kafka acknowledged all its events.
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
#include "common/uuid.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kafka header names shared with the processor. */
#define GW_HDR_SOURCE_ID   "sluice-source-id"
#define GW_HDR_RECEIVED_AT "sluice-received-at"

struct gw_gateway {
    rd_kafka_t *rk;
    char *topic;
    _Atomic(sl_wsconf_t *) ws;
    size_t max_event_size;
    pthread_t poller;
    atomic_bool stop;
    atomic_long inflight; /* events produced but not yet acknowledged */
    int64_t ack_timeout_ms;
    pthread_mutex_t rlock; /* requests not yet seen answered by the poller, oldest first */
    struct gw_request *rhead, *rtail;
    sl_metric_t *m_events, *m_req_ok, *m_req_bad, *m_req_auth, *m_req_unavail, *m_ack_seconds;
};

/*
 * One ingest request waiting for Kafka. It is answered once, by whichever comes first: the
 * last acknowledgement (200, or 503 if any event failed) or its deadline (503, by the poller).
 * It is freed when the handler, every delivery report and the poller's list let go of it.
 */
typedef struct gw_request {
    gw_gateway_t *gw;
    sl_http_req_t *req;
    atomic_int events_left; /* events not yet settled, plus one held by the handler */
    atomic_int refs;        /* events + handler + the pending list */
    atomic_int err;         /* first delivery error (rd_kafka_resp_err_t), 0 if none */
    atomic_bool answered;
    int64_t start_ms, deadline_ms;
    struct gw_request *next;
} gw_request_t;

static const char *const single_types[] = {"track", "identify", "page", "screen", "group", "alias"};

/* Answers the request unless it was answered already. Any thread. */
static void request_answer(gw_request_t *r, bool timed_out)
{
    if (atomic_exchange(&r->answered, true))
        return;
    int err = atomic_load(&r->err);
    if (timed_out || err) {
        sl_http_req_add_header(r->req, "Retry-After", "5");
        if (timed_out)
            sl_http_respond_error(r->req, 503,
                                  "kafka did not acknowledge the events within %lld ms; retry "
                                  "later",
                                  (long long)r->gw->ack_timeout_ms);
        else
            sl_http_respond_error(r->req, 503, "could not persist events to kafka: %s; retry later",
                                  rd_kafka_err2str((rd_kafka_resp_err_t)err));
        sl_metrics_add(r->gw->m_req_unavail, 1);
    } else {
        sl_http_respond(r->req, 200, "text/plain", "OK", 2);
        sl_metrics_add(r->gw->m_req_ok, 1);
        sl_metrics_observe(r->gw->m_ack_seconds, (double)(sl_time_mono_ms() - r->start_ms) / 1e3);
    }
}

static void request_unref(gw_request_t *r, int n)
{
    if (atomic_fetch_sub(&r->refs, n) == n)
        free(r);
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
    } else {
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

/* The event's user identity as text: strings as they are, numbers as printed. */
static const char *id_text(json_object *ev, const char *field)
{
    json_object *v;
    if (!json_object_object_get_ex(ev, field, &v) || !v)
        return NULL;
    if (json_object_is_type(v, json_type_string))
        return json_object_get_string_len(v) ? json_object_get_string(v) : NULL;
    if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
        return json_object_get_string(v);
    return NULL;
}

static bool has_string(json_object *ev, const char *field)
{
    json_object *v;
    return json_object_object_get_ex(ev, field, &v) && json_object_is_type(v, json_type_string) &&
           json_object_get_string_len(v) > 0;
}

/* Checks one event against the Segment spec. Returns NULL or a message naming the problem. */
static const char *validate_event(json_object *ev, const char *type)
{
    if (!type)
        return "event has no \"type\"";
    bool known = false;
    for (size_t i = 0; i < sizeof(single_types) / sizeof(single_types[0]); i++)
        known = known || strcmp(type, single_types[i]) == 0;
    if (!known)
        return "event \"type\" must be one of track, identify, page, screen, group, alias";
    if (!id_text(ev, "userId") && !id_text(ev, "anonymousId"))
        return "event has neither \"userId\" nor \"anonymousId\"";
    if (strcmp(type, "track") == 0 && !has_string(ev, "event"))
        return "track event has no \"event\" name";
    if (strcmp(type, "group") == 0 && !id_text(ev, "groupId"))
        return "group event has no \"groupId\"";
    if (strcmp(type, "alias") == 0 && !id_text(ev, "previousId"))
        return "alias event has no \"previousId\"";
    return NULL;
}

/* Adds the fields the gateway owns: type, messageId, receivedAt, request_ip, context.ip and
 * rudderId (written into rudder_id, the partition key). */
static void enrich_event(json_object *ev, const char *type, const char *received_at, const char *ip,
                         char rudder_id[SL_UUID_STRLEN])
{
    json_object_object_add(ev, "type", json_object_new_string(type));
    if (!has_string(ev, "messageId")) {
        char id[SL_UUID_STRLEN];
        sl_uuid_v4(id);
        json_object_object_add(ev, "messageId", json_object_new_string(id));
    }
    json_object_object_add(ev, "receivedAt", json_object_new_string(received_at));
    if (ip) {
        json_object_object_add(ev, "request_ip", json_object_new_string(ip));
        json_object *ctx;
        if (!json_object_object_get_ex(ev, "context", &ctx) ||
            !json_object_is_type(ctx, json_type_object)) {
            ctx = json_object_new_object();
            json_object_object_add(ev, "context", ctx);
        }
        if (!json_object_object_get_ex(ctx, "ip", NULL))
            json_object_object_add(ctx, "ip", json_object_new_string(ip));
    }
    /* RudderStack derives rudderId from userId + anonymousId; it keys the user's partition. */
    const char *uid = id_text(ev, "userId"), *aid = id_text(ev, "anonymousId");
    char key[1024];
    int n = snprintf(key, sizeof(key), "%s%s", uid ? uid : "", aid ? aid : "");
    if (n < 0 || n >= (int)sizeof(key))
        n = (int)sizeof(key) - 1;
    sl_uuid_md5(key, (size_t)n, rudder_id);
    json_object_object_add(ev, "rudderId", json_object_new_string(rudder_id));
}

static void respond_invalid(sl_http_req_t *req, int status, long index, const char *msg)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_puts(&b, "{\"error\":");
    sl_buf_json_str(&b, msg, strlen(msg));
    if (index >= 0)
        sl_buf_printf(&b, ",\"index\":%ld", index);
    sl_buf_puts(&b, "}");
    sl_http_respond(req, status, "application/json", b.data, b.len);
    sl_buf_free(&b);
}

static const char *client_ip(sl_http_req_t *req)
{
    return sl_http_req_peer(req);
}

/* POST /v1/<type> and /v1/batch. opaque is the gateway. */
static sl_http_result_t handle_ingest(sl_http_req_t *req, void *opaque)
{
    gw_gateway_t *gw = opaque;
    const char *path = sl_http_req_path(req);
    const char *endpoint = strrchr(path, '/') + 1;
    bool batch = strcmp(endpoint, "batch") == 0;
    sl_workspace_t *ws = NULL;
    json_object *root = NULL;
    json_tokener *tok = NULL;
    sl_http_result_t result = SL_HTTP_DONE;

    const char *write_key = sl_http_req_basic_user(req);
    if (!write_key || !*write_key) {
        sl_http_req_add_header(req, "WWW-Authenticate", "Basic realm=\"sluice\"");
        sl_http_respond_error(req, 401,
                              "no write key: send the source's writeKey as the HTTP Basic "
                              "username with an empty password");
        sl_metrics_add(gw->m_req_auth, 1);
        goto out;
    }
    sl_wsconf_t *wsc = atomic_load(&gw->ws);
    if (!wsc) {
        sl_http_req_add_header(req, "Retry-After", "5");
        sl_http_respond_error(req, 503, "workspace config is not loaded yet; see /health");
        sl_metrics_add(gw->m_req_unavail, 1);
        goto out;
    }
    ws = sl_wsconf_get(wsc);
    const sl_source_t *src = sl_workspace_source_by_write_key(ws, write_key);
    if (!src) {
        sl_http_respond_error(req, 401, "invalid write key");
        sl_metrics_add(gw->m_req_auth, 1);
        goto out;
    }
    if (!src->enabled) {
        sl_http_respond_error(req, 404, "source is disabled");
        sl_metrics_add(gw->m_req_bad, 1);
        goto out;
    }

    size_t len;
    const char *body = sl_http_req_body(req, &len);
    tok = json_tokener_new();
    root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    if (jerr != json_tokener_success || !root || json_tokener_get_parse_end(tok) < len) {
        char msg[256];
        snprintf(msg, sizeof(msg), "invalid JSON at byte %zu: %s", json_tokener_get_parse_end(tok),
                 jerr == json_tokener_success ? "unexpected data after the value"
                                              : json_tokener_error_desc(jerr));
        respond_invalid(req, 400, -1, msg);
        sl_metrics_add(gw->m_req_bad, 1);
        goto out;
    }
    if (!json_object_is_type(root, json_type_object)) {
        respond_invalid(req, 400, -1, "request body must be a JSON object");
        sl_metrics_add(gw->m_req_bad, 1);
        goto out;
    }

    json_object *events = NULL;
    size_t n = 1;
    if (batch) {
        if (!json_object_object_get_ex(root, "batch", &events) ||
            !json_object_is_type(events, json_type_array)) {
            respond_invalid(req, 400, -1, "request body must have a \"batch\" array");
            sl_metrics_add(gw->m_req_bad, 1);
            goto out;
        }
        n = json_object_array_length(events);
        if (n == 0) {
            respond_invalid(req, 400, -1, "\"batch\" is empty");
            sl_metrics_add(gw->m_req_bad, 1);
            goto out;
        }
    }

    /* Validate every event before producing any, so a rejected request writes nothing. */
    char received_at[SL_TIME_STRLEN];
    sl_time_format_ms(sl_time_now_ms(), received_at);
    const char *ip = client_ip(req);
    char(*keys)[SL_UUID_STRLEN] = sl_malloc(n * SL_UUID_STRLEN);
    const char **texts = sl_malloc(n * sizeof(*texts));
    size_t *lens = sl_malloc(n * sizeof(*lens));
    for (size_t i = 0; i < n; i++) {
        json_object *ev = batch ? json_object_array_get_idx(events, i) : root;
        long index = batch ? (long)i : -1;
        if (!json_object_is_type(ev, json_type_object)) {
            respond_invalid(req, 400, index, "event must be a JSON object");
            goto invalid;
        }
        json_object *t;
        const char *type = batch ? (json_object_object_get_ex(ev, "type", &t) &&
                                            json_object_is_type(t, json_type_string)
                                        ? json_object_get_string(t)
                                        : NULL)
                                 : endpoint;
        const char *problem = validate_event(ev, type);
        if (problem) {
            respond_invalid(req, 400, index, problem);
            goto invalid;
        }
        char type_copy[16];
        snprintf(type_copy, sizeof(type_copy), "%s", type);
        enrich_event(ev, type_copy, received_at, ip, keys[i]);
        texts[i] = json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN);
        lens[i] = strlen(texts[i]);
        if (lens[i] > gw->max_event_size) {
            char msg[160];
            snprintf(msg, sizeof(msg), "event is %zu bytes, over the limit of %zu bytes", lens[i],
                     gw->max_event_size);
            respond_invalid(req, 413, index, msg);
            goto invalid;
        }
    }

    gw_request_t *r = sl_calloc(1, sizeof(*r));
    r->gw = gw;
    r->req = req;
    r->start_ms = sl_time_mono_ms();
    r->deadline_ms = r->start_ms + gw->ack_timeout_ms;
    atomic_init(&r->events_left, (int)n + 1);
    atomic_init(&r->refs, (int)n + 2);
    pthread_mutex_lock(&gw->rlock);
    if (gw->rtail)
        gw->rtail->next = r;
    else
        gw->rhead = r;
    gw->rtail = r;
    pthread_mutex_unlock(&gw->rlock);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            gw->rk, RD_KAFKA_V_TOPIC(gw->topic), RD_KAFKA_V_KEY(keys[i], SL_UUID_STRLEN - 1),
            RD_KAFKA_V_VALUE((void *)texts[i], lens[i]), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADER(GW_HDR_SOURCE_ID, src->id, -1),
            RD_KAFKA_V_HEADER(GW_HDR_RECEIVED_AT, received_at, -1), RD_KAFKA_V_OPAQUE(r),
            RD_KAFKA_V_END);
        if (err) {
            int expected = 0;
            atomic_compare_exchange_strong(&r->err, &expected, (int)err);
            request_settle(r, (int)(n - i));
            sl_warn("gateway", "could not produce to kafka: %s", rd_kafka_err2str(err));
            break;
        }
        atomic_fetch_add(&gw->inflight, 1);
    }
    sl_metrics_add(gw->m_events, (double)n);
    result = SL_HTTP_ASYNC;
    request_settle(r, 1); /* the handler's hold: answers now if every event is settled */
    goto done;

invalid:
    sl_metrics_add(gw->m_req_bad, 1);
done:
    free(keys);
    free(texts);
    free(lens);
out:
    if (root)
        json_object_put(root);
    if (tok)
        json_tokener_free(tok);
    if (ws)
        sl_workspace_unref(ws);
    return result;
}

gw_gateway_t *gw_gateway_new(const sl_conf_t *conf, sl_wsconf_t *ws, sl_http_server_t *srv,
                             char *errstr, size_t errstr_size)
{
    gw_gateway_t *gw = sl_calloc(1, sizeof(*gw));
    atomic_init(&gw->ws, ws);
    gw->max_event_size = (size_t)sl_conf_size(conf, "gateway.max_event_size");
    gw->ack_timeout_ms = sl_conf_duration_ms(conf, "gateway.ack_timeout");
    pthread_mutex_init(&gw->rlock, NULL);
    gw->topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);

    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!kconf)
        goto fail;
    char ms[32];
    snprintf(ms, sizeof(ms), "%lld", (long long)sl_conf_duration_ms(conf, "gateway.ack_timeout"));
    /* The bound on how long a client waits before a 503: librdkafka fails the message then. */
    if (rd_kafka_conf_set(kconf, "message.timeout.ms", ms, errstr, errstr_size) !=
        RD_KAFKA_CONF_OK) {
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

    gw->m_events = sl_metrics_counter("sluice_gateway_events_total",
                                      "Events accepted for production to Kafka", NULL);
    const char *help = "Ingest requests answered, by status class";
    gw->m_req_ok = sl_metrics_counter("sluice_gateway_requests_total", help, "status", "200", NULL);
    gw->m_req_bad =
        sl_metrics_counter("sluice_gateway_requests_total", help, "status", "4xx", NULL);
    gw->m_req_auth =
        sl_metrics_counter("sluice_gateway_requests_total", help, "status", "401", NULL);
    gw->m_req_unavail =
        sl_metrics_counter("sluice_gateway_requests_total", help, "status", "503", NULL);
    gw->m_ack_seconds = sl_metrics_histogram(
        "sluice_gateway_kafka_ack_seconds",
        "Time from a request's first produce to Kafka's acknowledgement of all its events", NULL, 0,
        NULL);

    for (size_t i = 0; i < sizeof(single_types) / sizeof(single_types[0]); i++) {
        char path[32];
        snprintf(path, sizeof(path), "/v1/%s", single_types[i]);
        sl_http_route(srv, "POST", path, handle_ingest, gw);
    }
    sl_http_route(srv, "POST", "/v1/batch", handle_ingest, gw);

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
    free(gw->topic);
    free(gw);
}
