/* The failed-events recorder, see failed.h. */
#include "processor/failed.h"
#include "common/jsonc.h"
#include "common/err.h"
#include "common/health.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/pg.h"
#include "common/timeutil.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BATCH_MAX 500

/* Keyed by the dead letter's topic, partition and offset: a redelivery inserts nothing. */
static const char insert_sql[] =
    "INSERT INTO sluice_failed_events (failed_at, stage, reason, source_id, destination_id, "
    "destination_type, message_id, received_at, event, user_key, failed_topic, "
    "failed_partition, failed_offset) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
    "$12, $13) ON CONFLICT (failed_topic, failed_partition, failed_offset) DO NOTHING";

struct pr_failed_recorder {
    rd_kafka_t *consumer;
    sl_kafka_offsets_t *offsets; /* touched by the recorder thread only */
    sl_pg_t *pg;
    char *topic, *group;
    pthread_t thread;
    atomic_bool stop;
    sl_metric_t *m_recorded;
};

/* Inserts one dead letter. Returns 0, or -1 on a database error (err set). */
static int record(pr_failed_recorder_t *r, const rd_kafka_message_t *m, char *err, size_t n)
{
    json_tokener *tok = json_tokener_new();
    json_object *o = m->payload ? json_tokener_parse_ex(tok, m->payload, (int)m->len) : NULL;
    json_tokener_free(tok);
    json_object *ev = NULL;
    const char *event = NULL;
    if (o && json_object_object_get_ex(o, "event", &ev))
        event = json_object_is_type(ev, json_type_string)
                    ? json_object_get_string(ev)
                    : json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN);
    char part[16], off[32], now[SL_TIME_STRLEN], key[256];
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    sl_time_format_ms(sl_time_now_ms(), now);
    snprintf(key, sizeof(key), "%.*s", (int)(m->key_len < 255 ? m->key_len : 255),
             m->key ? (const char *)m->key : "");
    const char *failed_at = sl_jsonc_str(o, "failedAt");
    const char *params[] = {
        failed_at ? failed_at : now,
        sl_jsonc_str(o, "stage") ? sl_jsonc_str(o, "stage") : "unknown",
        sl_jsonc_str(o, "reason") ? sl_jsonc_str(o, "reason")
                                  : "the dead letter is not a JSON object",
        sl_jsonc_str(o, "sourceId"),
        sl_jsonc_str(o, "destinationId"),
        sl_jsonc_str(o, "destinationType"),
        sl_jsonc_str(o, "messageId"),
        sl_jsonc_str(o, "receivedAt"),
        event ? event : (m->payload ? (const char *)m->payload : ""),
        key,
        r->topic,
        part,
        off,
    };
    /* A payload that is not JSON is not NUL-terminated: copy it. */
    char *raw = NULL;
    if (!event) {
        raw = sl_strndup(m->payload ? m->payload : "", m->payload ? m->len : 0);
        params[8] = raw;
    }
    int rc = sl_pg_exec(r->pg, insert_sql, 13, params, NULL, err, n);
    if (rc == SL_ERR_INVALID) {
        /* Postgres refuses the text (invalid UTF-8, say): keep the row, point at the record. */
        char note[200];
        snprintf(note, sizeof(note),
                 "(the event is not storable as text; it is in %s partition %d offset %lld)",
                 r->topic, (int)m->partition, (long long)m->offset);
        params[8] = note;
        params[2] = "the dead letter's reason or event is not storable as text";
        rc = sl_pg_exec(r->pg, insert_sql, 13, params, NULL, err, n);
    }
    free(raw);
    if (o)
        json_object_put(o);
    return rc ? -1 : 0;
}

/* Before partitions go: commit what is recorded and forget them (on the recorder thread, from
 * inside its poll). */
static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    pr_failed_recorder_t *r = opaque;
    sl_kafka_offsets_commit(r->offsets, rk, true);
    sl_kafka_offsets_forget(r->offsets, parts);
}

static void *recorder_main(void *arg)
{
    pr_failed_recorder_t *r = arg;
    rd_kafka_message_t *batch[BATCH_MAX];
    int64_t backoff = 100, last_commit = sl_time_mono_ms();
    while (!atomic_load(&r->stop)) {
        size_t n = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->consumer, 200);
        while (m && n < BATCH_MAX) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    sl_warn("failed-events", "kafka consumer: %s", rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
            } else {
                sl_kafka_offsets_track(r->offsets, r->topic, m->partition, m->offset);
                batch[n++] = m;
            }
            m = n < BATCH_MAX ? rd_kafka_consumer_poll(r->consumer, 0) : NULL;
        }
        if (!n) {
            /* Idle: the position may have moved past transaction markers since. */
            if (sl_time_mono_ms() - last_commit >= 1000) {
                sl_kafka_offsets_commit(r->offsets, r->consumer, false);
                last_commit = sl_time_mono_ms();
            }
            continue;
        }
        char err[1024];
        size_t done = 0;
        while (done < n && !atomic_load(&r->stop)) {
            if (record(r, batch[done], err, sizeof(err)) == 0) {
                sl_kafka_offsets_done(r->offsets, r->topic, batch[done]->partition,
                                      batch[done]->offset);
                done++;
                backoff = 100;
                continue;
            }
            sl_error("failed-events", "could not record a dead letter in postgres: %s; retrying",
                     err);
            sl_health_set("postgres", false, "could not record dead letters: %s", err);
            usleep((useconds_t)(backoff * 1000));
            backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
        }
        if (done == n) {
            sl_health_set("postgres", true, NULL);
            sl_metrics_add(r->m_recorded, (double)n);
        }
        /* Commit after the rows; stopping, nothing past the recorded prefix is committed (it
         * comes back). */
        sl_kafka_offsets_commit(r->offsets, r->consumer, done < n);
        last_commit = sl_time_mono_ms();
        for (size_t i = 0; i < n; i++)
            rd_kafka_message_destroy(batch[i]);
    }
    rd_kafka_consumer_close(r->consumer);
    return NULL;
}

pr_failed_recorder_t *pr_failed_recorder_start(const sl_conf_t *conf, char *errstr,
                                               size_t errstr_size)
{
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    if (!*dsn) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "postgres.dsn is empty");
        return NULL;
    }
    pr_failed_recorder_t *r = sl_calloc(1, sizeof(*r));
    r->topic = sl_kafka_topic(conf, SL_TOPIC_FAILED);
    r->group = sl_kafka_topic(conf, SL_GROUP_FAILED);
    r->pg = sl_pg_new(dsn);
    const char *topics[] = {r->topic, NULL};
    r->offsets = sl_kafka_offsets_new();
    r->consumer = sl_kafka_consumer_new(conf, r->group, topics, on_revoke, r, errstr, errstr_size);
    if (!r->consumer)
        goto fail;
    r->m_recorded = sl_metrics_counter("sluice_processor_failed_recorded_total",
                                       "Dead letters copied into sluice_failed_events", NULL);
    if (pthread_create(&r->thread, NULL, recorder_main, r) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start the recorder thread");
        rd_kafka_consumer_close(r->consumer);
        goto fail;
    }
    return r;
fail:
    sl_kafka_consumer_destroy(r->consumer);
    sl_kafka_offsets_destroy(r->offsets);
    sl_pg_destroy(r->pg);
    free(r->topic);
    free(r->group);
    free(r);
    return NULL;
}

void pr_failed_recorder_stop(pr_failed_recorder_t *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    sl_kafka_consumer_destroy(r->consumer);
    sl_kafka_offsets_destroy(r->offsets);
    sl_pg_destroy(r->pg);
    free(r->topic);
    free(r->group);
    free(r);
}
