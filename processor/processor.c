/*
 * The processor role, see processor.h: consumes the events topic, selects each event's
 * destinations, builds their delivery jobs and produces them to the delivery topic. An event's
 * offset is marked done only when all its jobs are acknowledged by Kafka.
 */
#include "processor/processor.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/health.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/timeutil.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PR_COMMIT_EVERY_MS  500
#define PR_DRAIN_TIMEOUT_MS 30000

struct pr_processor {
    sl_wsconf_t *ws;
    rd_kafka_t *consumer, *producer;
    char *events_topic, *delivery_topic;
    char *group; /* <topic prefix>processor */
    sl_kafka_offsets_t *offsets;
    pthread_t thread;
    atomic_bool stop;
    sl_metric_t *m_events, *m_jobs, *m_filtered, *m_unsupported, *m_invalid;
};

/* One consumed event whose jobs are in flight; its offset is done when pending reaches 0.
 * Touched only on the processor thread (delivery reports are served there too). */
typedef struct pr_event {
    pr_processor_t *pr;
    int32_t partition;
    int64_t offset;
    int pending;
    bool abandoned; /* not all jobs were produced: leave the offset uncommitted */
} pr_event_t;

static void event_release(pr_event_t *e)
{
    if (--e->pending > 0)
        return;
    if (!e->abandoned)
        sl_kafka_offsets_done(e->pr->offsets, e->pr->events_topic, e->partition, e->offset);
    free(e);
}

/* Delivery report for a job. The producer retries without a time limit
 * (message.timeout.ms=0), so an error here is one librdkafka will not retry: produce again,
 * the event's offset stays uncommitted meanwhile. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    pr_processor_t *pr = opaque;
    pr_event_t *e = m->_private;
    if (!m->err) {
        event_release(e);
        return;
    }
    sl_error("processor", "could not produce a delivery job to \"%s\": %s; producing it again",
             rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
    if (atomic_load(&pr->stop)) {
        /* Left uncommitted: the event is processed again after a restart. */
        return;
    }
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(rd_kafka_topic_name(m->rkt)), RD_KAFKA_V_KEY(m->key, m->key_len),
        RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(e), RD_KAFKA_V_END);
    if (err)
        sl_error("processor", "could not produce a delivery job again: %s", rd_kafka_err2str(err));
}

static const char *str_field(json_object *o, const char *name)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, name, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return NULL;
}

/* The destination definition's supportedMessageTypes; no list means every type. */
static bool supports_type(const sl_destination_t *d, const char *type)
{
    json_object *list;
    if (!json_object_object_get_ex(d->def_config, "supportedMessageTypes", &list) ||
        !json_object_is_type(list, json_type_array))
        return true;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(list, i));
        if (t && type && strcasecmp(t, type) == 0)
            return true;
    }
    return false;
}

/* The event's `integrations` object: a destination named by its definition name or display
 * name gets its own setting; otherwise "All" decides (default true). */
static bool integrations_allow(json_object *ev, const sl_destination_t *d)
{
    json_object *integ, *v;
    if (!json_object_object_get_ex(ev, "integrations", &integ) ||
        !json_object_is_type(integ, json_type_object))
        return true;
    const char *names[] = {d->def_name, d->def_display_name};
    for (size_t i = 0; i < 2; i++) {
        if (!names[i] || !*names[i])
            continue;
        json_object_object_foreach(integ, key, val)
        {
            if (strcasecmp(key, names[i]) == 0)
                return !json_object_is_type(val, json_type_boolean) || json_object_get_boolean(val);
        }
    }
    if (json_object_object_get_ex(integ, "All", &v) && json_object_is_type(v, json_type_boolean))
        return json_object_get_boolean(v);
    return true;
}

/* Builds the WEBHOOK delivery job (RudderStack-compatible: the event is the body; method and
 * headers from config). Returns false, with reason, if the destination config can't be used. */
static bool build_webhook_job(sl_buf_t *job, const sl_destination_t *d, const char *source_id,
                              const char *message_id, const char *user_key, const char *received_at,
                              const char *event, size_t event_len, const char **reason)
{
    const char *url = str_field(d->config, "webhookUrl");
    if (!url || !*url) {
        *reason = "destination config has no webhookUrl";
        return false;
    }
    const char *method = str_field(d->config, "webhookMethod");
    if (!method || !*method)
        method = "POST";

    sl_buf_puts(job, "{\"jobId\":");
    sl_buf_printf(job, "\"%s:%s\"", message_id, d->id);
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
    sl_buf_puts(job, ",\"request\":{\"method\":");
    sl_buf_json_str(job, method, strlen(method));
    sl_buf_puts(job, ",\"url\":");
    sl_buf_json_str(job, url, strlen(url));
    sl_buf_puts(job, ",\"headers\":{\"Content-Type\":\"application/json\"");
    json_object *headers;
    if (json_object_object_get_ex(d->config, "headers", &headers) &&
        json_object_is_type(headers, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(headers); i++) {
            json_object *h = json_object_array_get_idx(headers, i);
            const char *from = str_field(h, "from"), *to = str_field(h, "to");
            if (!from || !*from || !to)
                continue;
            sl_buf_putc(job, ',');
            sl_buf_json_str(job, from, strlen(from));
            sl_buf_putc(job, ':');
            sl_buf_json_str(job, to, strlen(to));
        }
    }
    sl_buf_puts(job, "},\"body\":");
    sl_buf_json_str(job, event, event_len);
    sl_buf_puts(job, "}}");
    return true;
}

static const char *header_value(const rd_kafka_message_t *m, const char *name, char *buf,
                                size_t bufsz)
{
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t len;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, name, &val, &len) != RD_KAFKA_RESP_ERR_NO_ERROR || !val)
        return NULL;
    snprintf(buf, bufsz, "%.*s", (int)len, (const char *)val);
    return buf;
}

/* Produces one job, waiting for room in the producer queue. False if stopping meanwhile. */
static bool produce_job(pr_processor_t *pr, const sl_buf_t *job, const rd_kafka_message_t *m,
                        const char *dest_id, const char *message_id, pr_event_t *e)
{
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_producev(
            pr->producer, RD_KAFKA_V_TOPIC(pr->delivery_topic), RD_KAFKA_V_KEY(m->key, m->key_len),
            RD_KAFKA_V_VALUE(job->data, job->len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADER("sluice-destination-id", dest_id, -1),
            RD_KAFKA_V_HEADER("sluice-message-id", message_id, -1),
            RD_KAFKA_V_HEADER("sluice-attempt", "1", 1), RD_KAFKA_V_OPAQUE(e), RD_KAFKA_V_END);
        if (!err)
            return true;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            sl_error("processor", "could not produce a delivery job: %s", rd_kafka_err2str(err));
        }
        if (atomic_load(&pr->stop))
            return false;
        rd_kafka_poll(pr->producer, 100);
    }
}

static void process_event(pr_processor_t *pr, const rd_kafka_message_t *m)
{
    char source_id[256], received_at[64];
    json_object *ev = NULL;
    sl_workspace_t *ws = NULL;
    pr_event_t *e = sl_calloc(1, sizeof(*e));
    e->pr = pr;
    e->partition = m->partition;
    e->offset = m->offset;
    e->pending = 1; /* held while jobs are produced */
    sl_kafka_offsets_track(pr->offsets, pr->events_topic, m->partition, m->offset);
    sl_metrics_add(pr->m_events, 1);

    json_tokener *tok = json_tokener_new();
    ev = json_tokener_parse_ex(tok, m->payload, (int)m->len);
    bool parsed = json_tokener_get_error(tok) == json_tokener_success && ev &&
                  json_object_is_type(ev, json_type_object);
    json_tokener_free(tok);
    const char *message_id = parsed ? str_field(ev, "messageId") : NULL;
    const char *type = parsed ? str_field(ev, "type") : NULL;
    if (!message_id || !type || !m->key ||
        !header_value(m, "sluice-source-id", source_id, sizeof(source_id))) {
        sl_error("processor",
                 "skipping malformed event at %s [%d] offset %lld: not a gateway event "
                 "(JSON object with messageId and type, keyed, with a sluice-source-id header)",
                 pr->events_topic, (int)m->partition, (long long)m->offset);
        sl_metrics_add(pr->m_invalid, 1);
        goto out;
    }
    if (!header_value(m, "sluice-received-at", received_at, sizeof(received_at)))
        snprintf(received_at, sizeof(received_at), "%s",
                 str_field(ev, "receivedAt") ? str_field(ev, "receivedAt") : "");
    char user_key[128];
    snprintf(user_key, sizeof(user_key), "%.*s", (int)m->key_len, (const char *)m->key);

    ws = sl_wsconf_get(pr->ws);
    const sl_source_t *src = sl_workspace_source_by_id(ws, source_id);
    if (!src || !src->enabled) {
        sl_warn("processor", "dropping event %s: source \"%s\" is %s in the workspace config",
                message_id, source_id, src ? "disabled" : "no longer");
        sl_metrics_add(pr->m_filtered, 1);
        goto out;
    }
    sl_buf_t job = SL_BUF_INIT;
    for (size_t i = 0; i < src->ndestinations; i++) {
        const sl_destination_t *d = src->destinations[i];
        if (!d->enabled || !supports_type(d, type) || !integrations_allow(ev, d)) {
            sl_metrics_add(pr->m_filtered, 1);
            continue;
        }
        const char *reason = "destination type is not supported yet";
        sl_buf_reset(&job);
        if (strcmp(d->def_name, "WEBHOOK") != 0 ||
            !build_webhook_job(&job, d, source_id, message_id, user_key, received_at, m->payload,
                               m->len, &reason)) {
            sl_warn("processor", "not delivering event %s to destination %s (%s): %s", message_id,
                    d->id, d->def_name, reason);
            sl_metrics_add(pr->m_unsupported, 1);
            continue;
        }
        e->pending++;
        if (!produce_job(pr, &job, m, d->id, message_id, e)) {
            /* Stopping: keep the offset uncommitted so the event is processed again. */
            e->pending--;
            e->abandoned = true;
            break;
        }
        sl_metrics_add(pr->m_jobs, 1);
    }
    sl_buf_free(&job);
out:
    if (ws)
        sl_workspace_unref(ws);
    if (ev)
        json_object_put(ev);
    event_release(e);
}

static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    pr_processor_t *pr = opaque;
    /* Jobs of revoked partitions still in flight will be redone by the new owner. */
    rd_kafka_flush(pr->producer, 5000);
    sl_kafka_offsets_commit(pr->offsets, rk, true);
    sl_kafka_offsets_forget(pr->offsets, parts);
}

static void *processor_main(void *arg)
{
    pr_processor_t *pr = arg;
    int64_t last_commit = sl_time_mono_ms();
    while (!atomic_load(&pr->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(pr->consumer, 100);
        if (m) {
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
                process_event(pr, m);
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                sl_warn("processor", "kafka consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
        }
        rd_kafka_poll(pr->producer, 0);
        if (sl_time_mono_ms() - last_commit >= PR_COMMIT_EVERY_MS) {
            sl_kafka_offsets_commit(pr->offsets, pr->consumer, false);
            last_commit = sl_time_mono_ms();
        }
    }
    /* Drain: wait for in-flight jobs, then commit what is durable. */
    int64_t deadline = sl_time_mono_ms() + PR_DRAIN_TIMEOUT_MS;
    while (rd_kafka_outq_len(pr->producer) > 0 && sl_time_mono_ms() < deadline)
        rd_kafka_poll(pr->producer, 100);
    sl_kafka_offsets_commit(pr->offsets, pr->consumer, true);
    rd_kafka_consumer_close(pr->consumer);
    return NULL;
}

/* Frees pr and its clients (the consumer already closed); the thread is not running. */
static void processor_free(pr_processor_t *pr)
{
    sl_kafka_consumer_destroy(pr->consumer);
    if (pr->producer) {
        rd_kafka_flush(pr->producer, 1000);
        rd_kafka_destroy(pr->producer);
    }
    sl_kafka_offsets_destroy(pr->offsets);
    free(pr->events_topic);
    free(pr->delivery_topic);
    free(pr->group);
    free(pr);
}

pr_processor_t *pr_processor_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size)
{
    pr_processor_t *pr = sl_calloc(1, sizeof(*pr));
    pr->ws = ws;
    pr->events_topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    pr->delivery_topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    pr->group = sl_kafka_topic(conf, "processor");
    pr->offsets = sl_kafka_offsets_new();

    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!kconf)
        goto fail;
    /* Never give up on a job: the event's offset is committed only after all its jobs. */
    if (rd_kafka_conf_set(kconf, "message.timeout.ms", "0", errstr, errstr_size) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(kconf);
        goto fail;
    }
    rd_kafka_conf_set_dr_msg_cb(kconf, on_delivery);
    rd_kafka_conf_set_opaque(kconf, pr);
    pr->producer = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, errstr_size);
    if (!pr->producer) {
        rd_kafka_conf_destroy(kconf);
        goto fail;
    }
    const char *topics[] = {pr->events_topic, NULL};
    pr->consumer =
        sl_kafka_consumer_new(conf, pr->group, topics, on_revoke, pr, errstr, errstr_size);
    if (!pr->consumer)
        goto fail;

    pr->m_events = sl_metrics_counter("sluice_processor_events_total", "Events consumed", NULL);
    pr->m_jobs = sl_metrics_counter("sluice_processor_jobs_total",
                                    "Delivery jobs produced to the delivery topic", NULL);
    pr->m_filtered = sl_metrics_counter(
        "sluice_processor_filtered_total",
        "Event-destination pairs not delivered because of config, type or integrations", NULL);
    pr->m_unsupported =
        sl_metrics_counter("sluice_processor_undeliverable_total",
                           "Event-destination pairs whose destination can't take the event", NULL);
    pr->m_invalid = sl_metrics_counter("sluice_processor_invalid_events_total",
                                       "Messages on the events topic that are not events", NULL);

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
