/*
 * The KAFKA destination, see kafka_dest.h: a producer per destination built from its
 * RudderStack-style config, and delivery reports classified into OK, RETRY and ABORT.
 */
#include "router/kafka_dest.h"
#include "common/buf.h"
#include "common/jsonc.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <ctype.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define IDLE_MS (10 * 60 * 1000) /* an unused producer is closed after this */

typedef struct kprod {
    struct rt_kdest *k;
    char *dest_id;
    char *settings; /* the librdkafka properties it was built from, "name\0value\0..." */
    size_t settings_len;
    rd_kafka_t *rk;    /* NULL when building it failed: error says why */
    char *error;       /* the build failure, returned for every message until the config changes */
    bool retired;      /* replaced: takes no more messages, freed once empty */
    size_t inflight;   /* messages queued and not yet reported */
    int64_t last_used; /* sl_time_mono_ms */
    char last_error[256]; /* the cluster's last error (error_cb), for timeout details */
    struct kprod *next;
} kprod_t;

struct rt_kdest {
    int64_t timeout_ms; /* message.timeout.ms */
    kprod_t *prods;
    size_t inflight;
    sl_buf_t settings;    /* reused by each send */
    rt_kdest_done_cb *cb; /* set while reports are served */
    void *cb_ctx;
};

/* ---- librdkafka callbacks (on the thread that polls) ------------------------------------- */

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kprod_t *p = opaque;
    snprintf(p->last_error, sizeof(p->last_error), "%s", reason);
    /* The destination's cluster is not ours: its trouble is the destination's, not /health's. */
    if (err == RD_KAFKA_RESP_ERR__TRANSPORT)
        sl_debug("router", "kafka destination %s (%s): %s", p->dest_id, rd_kafka_name(rk), reason);
    else
        sl_warn("router", "kafka destination %s (%s): %s", p->dest_id, rd_kafka_name(rk), reason);
}

/* Whether a failed message will never succeed as it is. */
static bool permanent(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION: /* an invalid topic name */
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return true;
    default:
        return false;
    }
}

static void report(rt_kdest_t *k, void *opaque, rt_kdest_result_t r, const char *detail)
{
    if (k->cb)
        k->cb(opaque, r, detail, k->cb_ctx);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    kprod_t *p = opaque;
    rt_kdest_t *k = p->k;
    p->inflight--;
    k->inflight--;
    if (!m->err) {
        report(k, m->_private, RT_KDEST_OK, "");
        return;
    }
    char detail[512];
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
    if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT && p->last_error[0])
        snprintf(detail, sizeof(detail),
                 "kafka: no acknowledgement from topic \"%s\" within %" PRId64
                 " ms; last error from the cluster: %s",
                 topic, k->timeout_ms, p->last_error);
    else if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT)
        snprintf(detail, sizeof(detail),
                 "kafka: no acknowledgement from topic \"%s\" within %" PRId64 " ms", topic,
                 k->timeout_ms);
    else
        snprintf(detail, sizeof(detail), "kafka: could not produce to topic \"%s\": %s (%s)", topic,
                 rd_kafka_err2str(m->err), rd_kafka_err2name(m->err));
    report(k, m->_private, permanent(m->err) ? RT_KDEST_ABORT : RT_KDEST_RETRY, detail);
}

/* ---- the destination's settings ----------------------------------------------------------- */

static void put_prop(sl_buf_t *b, const char *name, const char *value)
{
    sl_buf_append(b, name, strlen(name) + 1);
    sl_buf_append(b, value, strlen(value) + 1);
}

/* A boolean config key: a JSON boolean or "true"/"false"; absent is false. */
static int cfg_bool(json_object *cfg, const char *name, bool *out, char *err, size_t errsz)
{
    json_object *v = NULL;
    *out = false;
    if (!json_object_object_get_ex(cfg, name, &v) || !v)
        return 0;
    if (json_object_is_type(v, json_type_boolean)) {
        *out = json_object_get_boolean(v);
        return 0;
    }
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    if (s && (strcmp(s, "true") == 0 || strcmp(s, "false") == 0 || !*s)) {
        *out = strcmp(s, "true") == 0;
        return 0;
    }
    snprintf(err, errsz, "destination config %s is %s, expected true or false", name,
             json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
    return -1;
}

/* A string config key that must be present and not empty. */
static const char *cfg_required(json_object *cfg, const char *name, const char *why, char *err,
                                size_t errsz)
{
    const char *s = sl_jsonc_str(cfg, name);
    if (!s || !*s)
        snprintf(err, errsz, "destination config has no %s, which %s", name, why);
    return s && *s ? s : NULL;
}

/*
 * The librdkafka properties for destination d into b ("name\0value\0" pairs), from hostname
 * (comma-separated hosts, each taking port unless it names its own), port, sslEnabled,
 * caCertificate, useSASL, saslType, username and password. Returns 0, or -1 with err naming
 * the config key.
 */
static int build_settings(const sl_destination_t *d, sl_buf_t *b, char *err, size_t errsz)
{
    json_object *cfg = d->config, *pv = NULL;
    const char *hosts = cfg_required(cfg, "hostname", "a kafka destination needs", err, errsz);
    if (!hosts)
        return -1;
    long port = -1;
    if (json_object_object_get_ex(cfg, "port", &pv) && pv) {
        if (json_object_is_type(pv, json_type_int)) {
            port = (long)json_object_get_int64(pv);
        } else if (json_object_is_type(pv, json_type_string)) {
            const char *s = json_object_get_string(pv);
            char *end;
            while (isspace((unsigned char)*s))
                s++;
            port = isdigit((unsigned char)*s) ? strtol(s, &end, 10) : -1;
            if (port >= 0 && *end)
                port = -1;
        }
    }
    if (!pv) {
        snprintf(err, errsz, "destination config has no port, which a kafka destination needs");
        return -1;
    }
    if (port < 1 || port > 65535) {
        snprintf(err, errsz, "destination config port is %s, expected a port number (1-65535)",
                 json_object_to_json_string_ext(pv, JSON_C_TO_STRING_PLAIN));
        return -1;
    }

    /* bootstrap.servers: "a, b:9095" with port 9093 is "a:9093,b:9095" */
    sl_buf_t servers = SL_BUF_INIT;
    int rc = -1;
    for (const char *h = hosts; *h;) {
        size_t n = strcspn(h, ",");
        const char *s = h, *e = h + n;
        while (s < e && isspace((unsigned char)*s))
            s++;
        while (e > s && isspace((unsigned char)e[-1]))
            e--;
        for (const char *c = s; c < e; c++)
            if (isspace((unsigned char)*c) || *c == '/') {
                snprintf(err, errsz,
                         "destination config hostname \"%s\" is not a comma-separated list of "
                         "host names",
                         hosts);
                goto out;
            }
        if (e > s) {
            if (servers.len)
                sl_buf_putc(&servers, ',');
            sl_buf_append(&servers, s, (size_t)(e - s));
            if (!memchr(s, ':', (size_t)(e - s)))
                sl_buf_printf(&servers, ":%ld", port);
        }
        h += n + (h[n] == ',');
    }
    if (!servers.len) {
        snprintf(err, errsz, "destination config hostname is empty");
        goto out;
    }
    put_prop(b, "bootstrap.servers", servers.data);

    bool ssl, sasl, avro;
    if (cfg_bool(cfg, "sslEnabled", &ssl, err, errsz) ||
        cfg_bool(cfg, "useSASL", &sasl, err, errsz) ||
        cfg_bool(cfg, "convertToAvro", &avro, err, errsz))
        goto out;
    if (avro) {
        snprintf(err, errsz,
                 "destination config convertToAvro is true, but Avro serialisation is not "
                 "supported: turn it off to send the events as JSON");
        goto out;
    }
    put_prop(b, "security.protocol",
             ssl ? (sasl ? "SASL_SSL" : "SSL") : (sasl ? "SASL_PLAINTEXT" : "PLAINTEXT"));
    const char *ca = sl_jsonc_str(cfg, "caCertificate");
    if (ssl && ca && *ca)
        put_prop(b, "ssl.ca.pem", ca);
    if (sasl) {
        static const char *const mechs[][2] = {
            {"plain", "PLAIN"}, {"sha256", "SCRAM-SHA-256"}, {"sha512", "SCRAM-SHA-512"}};
        const char *type = sl_jsonc_str(cfg, "saslType"), *mech = NULL;
        for (size_t i = 0; type && i < sizeof(mechs) / sizeof(mechs[0]); i++)
            if (strcasecmp(type, mechs[i][0]) == 0)
                mech = mechs[i][1];
        if (!mech) {
            snprintf(err, errsz,
                     "destination config saslType is \"%s\", expected plain, sha256 or "
                     "sha512 (useSASL is on)",
                     type ? type : "");
            goto out;
        }
        const char *user = cfg_required(cfg, "username", "useSASL needs", err, errsz);
        const char *pass = user ? cfg_required(cfg, "password", "useSASL needs", err, errsz) : NULL;
        if (!pass)
            goto out;
        put_prop(b, "sasl.mechanism", mech);
        put_prop(b, "sasl.username", user);
        put_prop(b, "sasl.password", pass);
    }
    rc = 0;
out:
    sl_buf_free(&servers);
    return rc;
}

/* The config key a librdkafka property came from, for errors. */
static const char *config_key(const char *prop)
{
    static const char *const keys[][2] = {
        {"bootstrap.servers", "hostname/port"}, {"security.protocol", "sslEnabled/useSASL"},
        {"ssl.ca.pem", "caCertificate"},        {"sasl.mechanism", "saslType"},
        {"sasl.username", "username"},          {"sasl.password", "password"}};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(prop, keys[i][0]) == 0)
            return keys[i][1];
    return prop;
}

/* Builds p->rk from p->settings, or sets p->error. */
static void build_producer(rt_kdest_t *k, kprod_t *p)
{
    char e[512], buf[64];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    static const char *const fixed[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"partitioner", "murmur2_random"},
        {"linger.ms", "5"},
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (rd_kafka_conf_set(kc, fixed[i][0], fixed[i][1], e, sizeof(e)) != RD_KAFKA_CONF_OK)
            goto fail;
    snprintf(buf, sizeof(buf), "%" PRId64, k->timeout_ms);
    if (rd_kafka_conf_set(kc, "message.timeout.ms", buf, e, sizeof(e)) != RD_KAFKA_CONF_OK)
        goto fail;
    snprintf(buf, sizeof(buf), "sluice-router-%.40s", p->dest_id);
    rd_kafka_conf_set(kc, "client.id", buf, NULL, 0);
    for (const char *s = p->settings; s < p->settings + p->settings_len;) {
        const char *name = s, *value = s + strlen(s) + 1;
        s = value + strlen(value) + 1;
        char e2[400];
        if (rd_kafka_conf_set(kc, name, value, e2, sizeof(e2)) != RD_KAFKA_CONF_OK) {
            snprintf(e, sizeof(e), "destination config %s is not usable: %s", config_key(name), e2);
            goto fail;
        }
    }
    rd_kafka_conf_set_log_cb(kc, sl_kafka_log_cb);
    rd_kafka_conf_set_error_cb(kc, error_cb);
    rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
    rd_kafka_conf_set_opaque(kc, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof(e));
    if (p->rk) {
        sl_info("router", "kafka destination %s: producer %s made", p->dest_id,
                rd_kafka_name(p->rk));
        return;
    }
fail:
    rd_kafka_conf_destroy(kc);
    p->error = sl_asprintf("could not make a kafka producer for destination %s: %s", p->dest_id, e);
    sl_warn("router", "%s", p->error);
}

static void free_prod(kprod_t *p)
{
    if (p->rk)
        rd_kafka_destroy(p->rk);
    free(p->dest_id);
    free(p->settings);
    free(p->error);
    free(p);
}

/* The current producer for d with these settings, made or remade as needed. */
static kprod_t *producer_for(rt_kdest_t *k, const sl_destination_t *d, const sl_buf_t *settings)
{
    kprod_t *p;
    for (p = k->prods; p; p = p->next)
        if (!p->retired && strcmp(p->dest_id, d->id) == 0)
            break;
    if (p && p->settings_len == settings->len &&
        memcmp(p->settings, settings->data, settings->len) == 0 &&
        !(p->rk && rd_kafka_fatal_error(p->rk, NULL, 0)))
        return p;
    if (p) {
        /* Its config changed (or it failed fatally): a new one takes the next messages, this
         * one is freed by rt_kdest_poll once its messages are reported. */
        sl_info("router", "kafka destination %s: settings changed, new producer", d->id);
        p->retired = true;
    }
    p = sl_calloc(1, sizeof(*p));
    p->k = k;
    p->dest_id = sl_strdup(d->id);
    p->settings = sl_malloc(settings->len);
    memcpy(p->settings, settings->data, settings->len);
    p->settings_len = settings->len;
    build_producer(k, p);
    p->next = k->prods;
    k->prods = p;
    return p;
}

/* ---- the API ------------------------------------------------------------------------------ */

rt_kdest_t *rt_kdest_new(const sl_conf_t *conf)
{
    rt_kdest_t *k = sl_calloc(1, sizeof(*k));
    k->timeout_ms = sl_conf_duration_ms(conf, "router.timeout");
    if (k->timeout_ms < 1000)
        k->timeout_ms = 1000; /* librdkafka needs it above linger.ms; a second is the floor */
    return k;
}

const char *rt_kdest_url_topic(const char *url)
{
    static const char scheme[] = "kafka://";
    if (!url || strncasecmp(url, scheme, sizeof(scheme) - 1) != 0)
        return NULL;
    return url + sizeof(scheme) - 1;
}

/* Kafka's rule for topic names. */
static bool valid_topic(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && t[i] != '.' && t[i] != '_' && t[i] != '-')
            return false;
    return true;
}

rt_kdest_result_t rt_kdest_send(rt_kdest_t *k, const sl_destination_t *d, const char *topic,
                                const void *key, size_t key_len, const void *value, size_t len,
                                const char *traceparent, const char *tracestate, void *opaque,
                                char *err, size_t errsz)
{
    if (!topic || !*topic)
        topic = cfg_required(d->config, "topic", "a kafka destination needs", err, errsz);
    if (!topic)
        return RT_KDEST_ABORT;
    if (!valid_topic(topic)) {
        snprintf(err, errsz,
                 "kafka topic \"%.300s\" is not a valid topic name (1-249 of a-z, A-Z, 0-9, '.', "
                 "'_', '-')",
                 topic);
        return RT_KDEST_ABORT;
    }
    sl_buf_reset(&k->settings);
    if (build_settings(d, &k->settings, err, errsz) != 0)
        return RT_KDEST_ABORT;
    kprod_t *p = producer_for(k, d, &k->settings);
    p->last_used = sl_time_mono_ms();
    if (!p->rk) {
        snprintf(err, errsz, "%s", p->error);
        return RT_KDEST_ABORT;
    }
    rd_kafka_vu_t vu[] = {
        {.vtype = RD_KAFKA_VTYPE_TOPIC, .u.cstr = topic},
        {.vtype = RD_KAFKA_VTYPE_MSGFLAGS, .u.i = RD_KAFKA_MSG_F_COPY},
        {.vtype = RD_KAFKA_VTYPE_KEY, .u.mem = {key_len ? (void *)key : NULL, key_len}},
        {.vtype = RD_KAFKA_VTYPE_VALUE, .u.mem = {(void *)value, len}},
        {.vtype = RD_KAFKA_VTYPE_OPAQUE, .u.ptr = opaque},
        {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {"traceparent", traceparent, -1}},
        {.vtype = RD_KAFKA_VTYPE_HEADER, .u.header = {"tracestate", tracestate, -1}},
    };
    size_t nvu = sizeof(vu) / sizeof(vu[0]) - !tracestate - !traceparent;
    if (!traceparent && tracestate) /* no tracestate without a traceparent */
        nvu--;
    rd_kafka_error_t *kerr = rd_kafka_produceva(p->rk, vu, nvu);
    rd_kafka_resp_err_t e = kerr ? rd_kafka_error_code(kerr) : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (kerr)
        rd_kafka_error_destroy(kerr);
    if (e) {
        snprintf(err, errsz, "kafka: could not queue a message for topic \"%s\": %s (%s)", topic,
                 rd_kafka_err2str(e), rd_kafka_err2name(e));
        return permanent(e) ? RT_KDEST_ABORT : RT_KDEST_RETRY;
    }
    p->inflight++;
    k->inflight++;
    return RT_KDEST_OK;
}

void rt_kdest_poll(rt_kdest_t *k, rt_kdest_done_cb *cb, void *ctx)
{
    k->cb = cb;
    k->cb_ctx = ctx;
    int64_t now = sl_time_mono_ms();
    for (kprod_t **pp = &k->prods; *pp;) {
        kprod_t *p = *pp;
        if (p->rk)
            rd_kafka_poll(p->rk, 0);
        if (p->inflight == 0 && (p->retired || now - p->last_used > IDLE_MS)) {
            *pp = p->next;
            free_prod(p);
            continue;
        }
        pp = &p->next;
    }
    k->cb = NULL;
    k->cb_ctx = NULL;
}

size_t rt_kdest_inflight(const rt_kdest_t *k)
{
    return k->inflight;
}

void rt_kdest_free(rt_kdest_t *k, int timeout_ms, rt_kdest_done_cb *cb, void *ctx)
{
    if (!k)
        return;
    k->cb = cb;
    k->cb_ctx = ctx;
    int64_t deadline = sl_time_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (kprod_t *p = k->prods; p; p = p->next) {
        if (!p->rk)
            continue;
        int64_t left = deadline - sl_time_mono_ms();
        rd_kafka_flush(p->rk, left > 0 ? (int)left : 0);
        if (p->inflight) {
            /* Not acknowledged in time: report them (purged, so RETRY) rather than drop them. */
            rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            int64_t until = sl_time_mono_ms() + 1000; /* purged in-flight ones come back async */
            while (p->inflight && sl_time_mono_ms() < until)
                rd_kafka_poll(p->rk, 50);
            if (p->inflight)
                sl_warn("router", "kafka destination %s: %zu messages not reported at shutdown",
                        p->dest_id, p->inflight);
        }
    }
    while (k->prods) {
        kprod_t *p = k->prods;
        k->prods = p->next;
        free_prod(p);
    }
    sl_buf_free(&k->settings);
    free(k);
}
