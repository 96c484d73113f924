/*
 * Integration test for the router role (router/router.c) against the embedded dev broker, the
 * real test Postgres and an HTTP sink in this process: outcomes and attempts per status class,
 * per-user order across a retry, malformed jobs, offsets committed only once the outcome rows
 * are in Postgres, and jobs unfinished at stop delivered again after a restart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/conf.h"
#include "common/devkafka.h"
#include "common/health.h"
#include "common/http.h"
#include "common/kafka.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "common/wsconf.h"
#include "router/router.h"
#include "testutil.h"

/* ---- the sink: answers by rules on the body and records what it received, in order ---- */

#define MAX_RULES 16
#define MAX_SEEN  256

static struct {
    pthread_mutex_t lock;
    struct {
        char marker[96];
        int status;
        int left;     /* -1 forever */
        int delay_ms; /* before answering */
    } rules[MAX_RULES];
    int nrules;
    struct {
        char body[128];
        int status;
    } seen[MAX_SEEN];
    int nseen;
} sink = {.lock = PTHREAD_MUTEX_INITIALIZER};

static sl_http_result_t sink_handle(sl_http_req_t *req, void *opaque)
{
    (void)opaque;
    size_t len;
    const char *body = sl_http_req_body(req, &len);
    int status = 200, delay_ms = 0;
    pthread_mutex_lock(&sink.lock);
    for (int i = 0; i < sink.nrules; i++) {
        if (sink.rules[i].left != 0 && strstr(body, sink.rules[i].marker)) {
            status = sink.rules[i].status;
            delay_ms = sink.rules[i].delay_ms;
            if (sink.rules[i].left > 0)
                sink.rules[i].left--;
            break;
        }
    }
    if (sink.nseen < MAX_SEEN) {
        snprintf(sink.seen[sink.nseen].body, sizeof(sink.seen[0].body), "%s", body);
        sink.seen[sink.nseen++].status = status;
    }
    pthread_mutex_unlock(&sink.lock);
    if (delay_ms)
        usleep((useconds_t)delay_ms * 1000);
    char resp[64];
    int n = snprintf(resp, sizeof(resp), "sink says %d", status);
    sl_http_respond(req, status, "text/plain", resp, (size_t)n);
    return SL_HTTP_DONE;
}

/* Requests whose body contains marker get status, after delay_ms, count times (-1: always). */
static void sink_rule_delay(const char *marker, int status, int count, int delay_ms)
{
    pthread_mutex_lock(&sink.lock);
    assert_true(sink.nrules < MAX_RULES);
    snprintf(sink.rules[sink.nrules].marker, sizeof(sink.rules[0].marker), "%s", marker);
    sink.rules[sink.nrules].status = status;
    sink.rules[sink.nrules].delay_ms = delay_ms;
    sink.rules[sink.nrules++].left = count;
    pthread_mutex_unlock(&sink.lock);
}

static void sink_rule(const char *marker, int status, int count)
{
    sink_rule_delay(marker, status, count, 0);
}

static void sink_clear_rules(void)
{
    pthread_mutex_lock(&sink.lock);
    sink.nrules = 0;
    pthread_mutex_unlock(&sink.lock);
}

/* How many requests had a body containing marker (with status, if status is not 0). */
static int sink_count(const char *marker, int status)
{
    int n = 0;
    pthread_mutex_lock(&sink.lock);
    for (int i = 0; i < sink.nseen; i++)
        if (strstr(sink.seen[i].body, marker) && (!status || sink.seen[i].status == status))
            n++;
    pthread_mutex_unlock(&sink.lock);
    return n;
}

/* True if a request's body was exactly body. */
static bool sink_saw_exactly(const char *body)
{
    bool seen = false;
    pthread_mutex_lock(&sink.lock);
    for (int i = 0; i < sink.nseen && !seen; i++)
        seen = strcmp(sink.seen[i].body, body) == 0;
    pthread_mutex_unlock(&sink.lock);
    return seen;
}

/* Index of the first request whose body contains marker and that got status; -1 if none. */
static int sink_index(const char *marker, int status)
{
    int at = -1;
    pthread_mutex_lock(&sink.lock);
    for (int i = 0; i < sink.nseen && at < 0; i++)
        if (strstr(sink.seen[i].body, marker) && sink.seen[i].status == status)
            at = i;
    pthread_mutex_unlock(&sink.lock);
    return at;
}

/* ---- the world: broker, database, workspace, sink ---- */

static sl_devkafka_t *dk;
static sl_http_server_t *srv;
static sl_wsconf_t *ws;
static sl_pg_t *pg;
static char dsn[1024], sink_url[128], ws_path[256];

static int setup(void **state)
{
    (void)state;
    char err[512];
    if (sl_test_fresh_db("itest_router", dsn, sizeof(dsn)) != 0)
        return -1;
    pg = sl_pg_new(dsn);
    PGconn *c = sl_pg_conn(pg, err, sizeof(err));
    if (!c || sl_migrate_run(c, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "migrations: %s\n", err);
        return -1;
    }

    dk = sl_devkafka_start(1, 1, "unused.", sl_kafka_pipeline_topics, err, sizeof(err));
    if (!dk) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }

    sl_http_opts_t opts = {.component = "sink", .host = "127.0.0.1", .threads = 4};
    srv = sl_http_server_new(&opts);
    sl_http_route(srv, NULL, "/*", sink_handle, NULL);
    if (sl_http_server_start(srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    snprintf(sink_url, sizeof(sink_url), "http://127.0.0.1:%d/hook", sl_http_server_port(srv));

    snprintf(ws_path, sizeof(ws_path), "/tmp/itest-router-%d.json", (int)getpid());
    FILE *f = fopen(ws_path, "w");
    fprintf(f,
            "{\"workspaceId\":\"w\",\"sources\":[{\"id\":\"src\",\"name\":\"s\","
            "\"writeKey\":\"k\",\"enabled\":true,\"sourceDefinition\":{\"name\":\"HTTP\","
            "\"category\":\"eventStream\"},\"destinations\":[{\"id\":\"dst-a\",\"name\":\"a\","
            "\"enabled\":true,\"config\":{\"webhookUrl\":\"%s\"},\"destinationDefinition\":"
            "{\"name\":\"WEBHOOK\",\"displayName\":\"Webhook\",\"config\":{}}}]}]}",
            sink_url);
    fclose(f);
    ws = sl_wsconf_start(ws_path, NULL, 60000, err, sizeof(err));
    if (!ws) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (ws)
        sl_wsconf_stop(ws);
    unlink(ws_path);
    if (srv)
        sl_http_server_destroy(srv);
    if (dk)
        sl_devkafka_stop(dk);
    if (pg)
        sl_pg_destroy(pg);
    return 0;
}

static sl_conf_t *make_conf(const char *prefix, const char *pg_dsn, const char *retry_base)
{
    sl_conf_t *conf;
    char err[256];
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    const char *kv[][2] = {
        {"kafka.brokers", sl_devkafka_bootstraps(dk)},
        {"kafka.topic_prefix", prefix},
        {"kafka.topic.metadata.refresh.interval.ms", "500"},
        {"kafka.session.timeout.ms", "6000"},
        {"kafka.heartbeat.interval.ms", "1000"},
        /* The dev broker lets a restarted member in late when fetches poll every 100 ms. */
        {"kafka.fetch.wait.max.ms", "500"},
        {"postgres.dsn", pg_dsn},
        {"router.concurrency", "4"},
        {"router.timeout", "2s"},
        {"router.retry_base", retry_base},
        {"router.retry_max", "200ms"},
        {"router.give_up_after", "0s"},
        {"router.min_attempts", "3"},
    };
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        if (sl_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)) != 0)
            fail_msg("%s: %s", kv[i][0], err);
    }
    return conf;
}

static void produce_raw(const sl_conf_t *conf, const char *key, const char *value)
{
    char err[512];
    char *topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    rd_kafka_t *p = sl_kafka_producer_new(conf, NULL, NULL, err, sizeof(err));
    assert_non_null(p);
    assert_int_equal(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_KEY(key, strlen(key)),
                                       RD_KAFKA_V_VALUE((void *)value, strlen(value)),
                                       RD_KAFKA_V_HEADER("sluice-attempt", "1", 1),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                     0);
    assert_int_equal(rd_kafka_flush(p, 30000), 0);
    rd_kafka_destroy(p);
    free(topic);
}

/* Produces a delivery job as the processor does; body is sent as the request body. */
static void produce_job(const sl_conf_t *conf, const char *msg_id, const char *dest,
                        const char *user, const char *url, const char *body)
{
    json_object *o = json_object_new_object(), *req = json_object_new_object(),
                *h = json_object_new_object();
    char job_id[256];
    snprintf(job_id, sizeof(job_id), "%s:%s", msg_id, dest);
    json_object_object_add(o, "jobId", json_object_new_string(job_id));
    json_object_object_add(o, "messageId", json_object_new_string(msg_id));
    json_object_object_add(o, "sourceId", json_object_new_string("src"));
    json_object_object_add(o, "destinationId", json_object_new_string(dest));
    json_object_object_add(o, "destinationType", json_object_new_string("WEBHOOK"));
    json_object_object_add(o, "userKey", json_object_new_string(user));
    json_object_object_add(o, "receivedAt", json_object_new_string("2024-01-01T00:00:00.000Z"));
    json_object_object_add(req, "method", json_object_new_string("POST"));
    if (url)
        json_object_object_add(req, "url", json_object_new_string(url));
    json_object_object_add(h, "Content-Type", json_object_new_string("application/json"));
    json_object_object_add(req, "headers", h);
    json_object_object_add(req, "body", json_object_new_string(body));
    json_object_object_add(o, "request", req);
    produce_raw(conf, user, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

/* Rows recorded for topic; waits up to timeout_ms for at least want of them. */
static int rows_for(const char *topic, int want, int64_t timeout_ms)
{
    int64_t deadline = sl_time_mono_ms() + timeout_ms;
    const char *params[] = {topic};
    char err[512];
    for (;;) {
        PGresult *r = NULL;
        int n = -1;
        if (sl_pg_exec(pg,
                       "SELECT count(*) FROM sluice_jobs WHERE kafka_topic = $1 AND state IN "
                       "('succeeded', 'aborted')",
                       1, params, &r, err, sizeof(err)) == 0) {
            n = atoi(PQgetvalue(r, 0, 0));
            PQclear(r);
        }
        if (n >= want || sl_time_mono_ms() > deadline)
            return n;
        usleep(50000);
    }
}

/* Jobs parked for topic. */
static int parked_for(const char *topic)
{
    const char *params[] = {topic};
    char err[512];
    PGresult *r = NULL;
    if (sl_pg_exec(pg, "SELECT count(*) FROM sluice_parked WHERE kafka_topic = $1", 1, params, &r,
                   err, sizeof(err)) != 0)
        fail_msg("%s", err);
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

typedef struct row {
    char state[16];
    int attempts, last_status, count;
    char last_response[256];
} row_t;

/* The row of the job at offset (partition 0) of topic; count is how many rows it has. */
static row_t row_at(const char *topic, int64_t offset)
{
    char off[24], err[512];
    snprintf(off, sizeof(off), "%lld", (long long)offset);
    const char *params[] = {topic, off};
    PGresult *r = NULL;
    row_t row = {0};
    if (sl_pg_exec(pg,
                   "SELECT state, attempts, coalesce(last_status, 0), "
                   "coalesce(last_response, ''), count(*) OVER () FROM sluice_jobs "
                   "WHERE kafka_topic = $1 AND kafka_partition = 0 AND kafka_offset = $2 "
                   "AND state IN ('succeeded', 'aborted')",
                   2, params, &r, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    if (PQntuples(r) > 0) {
        snprintf(row.state, sizeof(row.state), "%s", PQgetvalue(r, 0, 0));
        row.attempts = atoi(PQgetvalue(r, 0, 1));
        row.last_status = atoi(PQgetvalue(r, 0, 2));
        snprintf(row.last_response, sizeof(row.last_response), "%s", PQgetvalue(r, 0, 3));
        row.count = atoi(PQgetvalue(r, 0, 4));
    }
    PQclear(r);
    return row;
}

/* The router group's committed offset for partition 0 (negative when none). */
static int64_t committed(const sl_conf_t *conf)
{
    char err[512];
    char *topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    char *group = sl_kafka_topic(conf, "router");
    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, err, sizeof(err));
    assert_non_null(kc);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, 0);
    int64_t off = -1;
    if (rd_kafka_committed(rk, parts, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR && !parts->elems[0].err)
        off = parts->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_destroy(rk);
    free(topic);
    free(group);
    return off;
}

static int64_t wait_committed(const sl_conf_t *conf, int64_t want, int64_t timeout_ms)
{
    int64_t deadline = sl_time_mono_ms() + timeout_ms, off;
    while ((off = committed(conf)) != want && sl_time_mono_ms() < deadline)
        usleep(200000);
    return off;
}

static void prefix_for(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "rt-%s-%lld.", name, (long long)sl_time_now_ms());
}

static double metric(const char *name, const char *l1, const char *v1, const char *l2,
                     const char *v2)
{
    return sl_metrics_value(sl_metrics_counter(name, "", l1, v1, l2, v2, NULL));
}

/* A router counter of one destination, summed over its reasons. */
static double by_reason(const char *name, const char *dest)
{
    static const char *const reasons[] = {"http_4xx", "http_408",   "http_429",
                                          "http_5xx", "http_other", "timeout",
                                          "network",  "kafka",      "malformed"};
    double sum = 0;
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        sum += metric(name, "destination", dest, "reason", reasons[i]);
    return sum;
}

/* Outcomes by status class, per-user order across a retry, malformed jobs, commits. */
static void test_outcomes(void **state)
{
    (void)state;
    char prefix[64], err[512];
    prefix_for(prefix, sizeof(prefix), "outcomes");
    sl_conf_t *conf = make_conf(prefix, dsn, "50ms");
    char *topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    sink_clear_rules();
    sink_rule("once-1", 500, 1);
    sink_rule("bad-3", 400, -1);
    sink_rule("always-4", 503, -1);
    sink_rule("toomany-9", 429, 1);

    produce_job(conf, "m0", "dst-a", "u1", sink_url, "{\"ok-0\":1}");                  /* 0 */
    produce_job(conf, "m1", "dst-a", "u2", sink_url, "{\"once-1\":1}");                /* 1 */
    produce_job(conf, "m2", "dst-a", "u2", sink_url, "{\"after-2\":1}");               /* 2 */
    produce_job(conf, "m3", "dst-a", "u3", sink_url, "{\"bad-3\":1}");                 /* 3 */
    produce_job(conf, "m4", "dst-a", "u4", sink_url, "{\"always-4\":1}");              /* 4 */
    produce_job(conf, "m5", "dst-a", "u5", "http://127.0.0.1:1/nothing-listens", "x"); /* 5 */
    produce_raw(conf, "u6", "{not json");                                              /* 6 */
    produce_job(conf, "m7", "dst-a", "u7", NULL, "{\"no-url-7\":1}");                  /* 7 */
    produce_job(conf, "m8", "dst-gone", "u8", sink_url, "{\"gone-8\":1}");             /* 8 */
    produce_job(conf, "m9", "dst-a", "u9", sink_url, "{\"toomany-9\":1}");             /* 9 */
    /* 10: the processor writes a JSON body as JSON; it is sent byte for byte */
    static const char raw_body[] = "{ \"raw-10\": [1, 2.50, \"\\u00e9\\\"\"], \"n\": null }";
    char job10[1024];
    snprintf(job10, sizeof(job10),
             "{\"jobId\":\"m10:dst-a\",\"messageId\":\"m10\",\"sourceId\":\"src\","
             "\"destinationId\":\"dst-a\",\"destinationType\":\"WEBHOOK\",\"userKey\":\"u10\","
             "\"receivedAt\":\"2024-01-01T00:00:00.000Z\",\"request\":{\"method\":\"POST\","
             "\"url\":\"%s\",\"headers\":{\"Content-Type\":\"application/json\"},\"body\":%s}}",
             sink_url, raw_body);
    produce_raw(conf, "u10", job10);

    rt_router_t *rt = rt_router_start(conf, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    assert_int_equal(rows_for(topic, 11, 30000), 11);

    row_t r = row_at(topic, 0);
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.last_status, 200);
    r = row_at(topic, 1); /* 500 then 200 */
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.attempts, 2);
    assert_int_equal(r.last_status, 200);
    r = row_at(topic, 2);
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.attempts, 1);
    r = row_at(topic, 3); /* other 4xx: aborted at once, response kept */
    assert_string_equal(r.state, "aborted");
    assert_int_equal(r.attempts, 1);
    assert_int_equal(r.last_status, 400);
    assert_string_equal(r.last_response, "sink says 400");
    r = row_at(topic, 4); /* 5xx forever: aborted after min_attempts once past give_up_after */
    assert_string_equal(r.state, "aborted");
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.last_status, 503);
    r = row_at(topic, 5); /* network error: retried like a 5xx, no status */
    assert_string_equal(r.state, "aborted");
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.last_status, 0);
    assert_true(strlen(r.last_response) > 0);
    r = row_at(topic, 6);
    assert_string_equal(r.state, "aborted");
    assert_int_equal(r.attempts, 0);
    assert_non_null(strstr(r.last_response, "not a JSON object"));
    r = row_at(topic, 7);
    assert_string_equal(r.state, "aborted");
    assert_non_null(strstr(r.last_response, "request.url"));
    r = row_at(topic, 8);
    assert_string_equal(r.state, "aborted");
    assert_non_null(strstr(r.last_response, "unknown destination"));
    assert_int_equal(sink_count("gone-8", 0), 0);
    r = row_at(topic, 9); /* 429 then 200 */
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.attempts, 2);
    r = row_at(topic, 10);
    assert_string_equal(r.state, "succeeded");
    assert_true(sink_saw_exactly(raw_body));
    for (int64_t i = 0; i < 11; i++)
        assert_int_equal(row_at(topic, i).count, 1);

    /* u2's second job waited for its first to succeed. */
    assert_int_equal(sink_count("once-1", 500), 1);
    assert_true(sink_index("once-1", 200) >= 0);
    assert_true(sink_index("once-1", 500) < sink_index("once-1", 200));
    assert_true(sink_index("once-1", 200) < sink_index("after-2", 200));

    /* Everything is recorded, so everything gets committed. */
    assert_int_equal(wait_committed(conf, 11, 10000), 11);

    assert_true(metric("sluice_router_delivered_total", "destination", "dst-a", NULL, NULL) == 5);
    assert_true(by_reason("sluice_router_aborted_total", "dst-a") == 4);
    assert_true(
        metric("sluice_router_aborted_total", "destination", "dst-a", "reason", "http_4xx") == 1);
    assert_true(
        metric("sluice_router_aborted_total", "destination", "dst-a", "reason", "malformed") == 1);
    assert_true(metric("sluice_router_aborted_total", "destination", "dst-gone", "reason",
                       "malformed") == 1);
    assert_true(by_reason("sluice_router_retried_total", "dst-a") == 6);
    assert_true(
        metric("sluice_router_retried_total", "destination", "dst-a", "reason", "http_429") == 1);
    sl_buf_t b = SL_BUF_INIT;
    sl_metrics_render(&b);
    assert_non_null(strstr(b.data, "sluice_router_delivery_seconds_bucket{destination=\"dst-a\""));
    sl_buf_free(&b);

    rt_router_stop(rt);
    free(topic);
    sl_conf_destroy(conf);
}

/* health.postgres as GET /health renders it. */
static bool pg_healthy(void)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_health_render(&b);
    json_object *o = json_tokener_parse(b.data), *checks, *p, *ok;
    bool healthy = json_object_object_get_ex(o, "checks", &checks) &&
                   json_object_object_get_ex(checks, "postgres", &p) &&
                   json_object_object_get_ex(p, "ok", &ok) && json_object_get_boolean(ok);
    json_object_put(o);
    sl_buf_free(&b);
    return healthy;
}

/* With Postgres down, deliveries happen but nothing is committed; after a restart with
 * Postgres back, the jobs are delivered again, recorded, then committed. */
static void test_postgres_down(void **state)
{
    (void)state;
    char prefix[64], err[512];
    prefix_for(prefix, sizeof(prefix), "pgdown");
    sl_conf_t *down =
        make_conf(prefix, "host=127.0.0.1 port=1 dbname=none connect_timeout=2", "50ms");
    char *topic = sl_kafka_topic(down, SL_TOPIC_DELIVERY);
    sink_clear_rules();
    for (int i = 0; i < 3; i++) {
        char id[16], body[128];
        snprintf(id, sizeof(id), "p%d", i);
        snprintf(body, sizeof(body), "{\"pgdown-%s-%d\":1}", prefix, i);
        produce_job(down, id, "dst-a", i == 1 ? "x" : "y", sink_url, body);
    }
    char marker[96];
    snprintf(marker, sizeof(marker), "pgdown-%s", prefix);

    rt_router_t *rt = rt_router_start(down, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    /* Without Postgres the router can't know which users have parked jobs: it waits. */
    usleep(3000000);
    assert_int_equal(sink_count(marker, 200), 0);
    assert_false(pg_healthy());
    assert_true(committed(down) < 0);
    int64_t t0 = sl_time_mono_ms();
    rt_router_stop(rt);
    assert_true(sl_time_mono_ms() - t0 < 15000); /* not held up by the unreachable Postgres */
    assert_true(committed(down) < 0);
    assert_int_equal(rows_for(topic, 0, 0), 0);

    sl_conf_t *up = make_conf(prefix, dsn, "50ms");
    rt = rt_router_start(up, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    /* the dev broker has let a restarted member in after 36 s (once, under load) */
    assert_int_equal(rows_for(topic, 3, 60000), 3);
    for (int64_t i = 0; i < 3; i++) {
        row_t r = row_at(topic, i);
        assert_string_equal(r.state, "succeeded");
        assert_int_equal(r.count, 1);
    }
    assert_int_equal(sink_count(marker, 200), 3); /* once each */
    assert_int_equal(wait_committed(up, 3, 10000), 3);
    assert_true(pg_healthy());
    rt_router_stop(rt);
    free(topic);
    sl_conf_destroy(down);
    sl_conf_destroy(up);
}

/* A job waiting for a retry and the job behind it (same user) are parked in Postgres, so
 * their offsets are committed; a stop does not wait for the backoff, and after a restart
 * both are delivered, in order. */
static void test_stop_restart(void **state)
{
    (void)state;
    char prefix[64], err[512];
    prefix_for(prefix, sizeof(prefix), "restart");
    sl_conf_t *slow = make_conf(prefix, dsn, "4s");
    assert_int_equal(sl_conf_set(slow, "router.retry_max", "60s", err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(slow, "router.park_poll", "100ms", err, sizeof(err)), 0);
    char *topic = sl_kafka_topic(slow, SL_TOPIC_DELIVERY);
    sink_clear_rules();
    sink_rule("restart-s1", 500, -1);
    produce_job(slow, "s0", "dst-a", "v0", sink_url, "{\"restart-s0\":1}"); /* 0: other user */
    produce_job(slow, "s1", "dst-a", "v1", sink_url, "{\"restart-s1\":1}"); /* 1: fails */
    produce_job(slow, "s2", "dst-a", "v1", sink_url, "{\"restart-s2\":1}"); /* 2: behind s1 */

    rt_router_t *rt = rt_router_start(slow, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    assert_int_equal(rows_for(topic, 1, 30000), 1);
    int64_t deadline = sl_time_mono_ms() + 10000;
    while (sink_count("restart-s1", 500) < 1 && sl_time_mono_ms() < deadline)
        usleep(50000);
    assert_int_equal(sink_count("restart-s1", 500), 1);
    assert_int_equal(wait_committed(slow, 3, 10000), 3);
    assert_int_equal(parked_for(topic), 2);
    usleep(300000);
    assert_int_equal(sink_count("restart-s2", 0), 0); /* waits behind s1 */

    int64_t t0 = sl_time_mono_ms();
    rt_router_stop(rt);
    assert_true(sl_time_mono_ms() - t0 < 15000); /* no waiting for the backoff */
    assert_int_equal(rows_for(topic, 0, 0), 1);
    assert_int_equal(committed(slow), 3);

    sink_clear_rules();
    sl_conf_t *fast = make_conf(prefix, dsn, "50ms");
    rt = rt_router_start(fast, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    assert_int_equal(rows_for(topic, 3, 30000), 3);
    row_t r = row_at(topic, 1);
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.count, 1);
    r = row_at(topic, 2);
    assert_string_equal(r.state, "succeeded");
    assert_int_equal(r.count, 1);
    assert_int_equal(row_at(topic, 0).count, 1); /* committed before the stop: not again */
    assert_int_equal(sink_count("restart-s0", 0), 1);
    assert_true(sink_index("restart-s1", 200) < sink_index("restart-s2", 200));
    assert_int_equal(wait_committed(fast, 3, 10000), 3);
    assert_int_equal(parked_for(topic), 0);
    rt_router_stop(rt);
    free(topic);
    sl_conf_destroy(slow);
    sl_conf_destroy(fast);
}

/* Runs one statement on the test database, failing the test on an error. */
static void sql(const char *q)
{
    char err[512];
    if (sl_pg_exec(pg, q, 0, NULL, NULL, err, sizeof(err)) != 0)
        fail_msg("%s: %s", q, err);
}

/* How many rows a count(*) query with one parameter finds. */
static int count_where(const char *q, const char *param)
{
    char err[512];
    const char *params[] = {param};
    PGresult *r = NULL;
    if (sl_pg_exec(pg, q, 1, params, &r, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

/* Three users' first jobs fail once, so each user's five jobs are parked; the store resolves
 * their rows together (one run of delivered parked jobs over several keys). Once a user's
 * parked rows are gone the key is unblocked: that user's next jobs go straight out, never
 * through sluice_parked (a trigger logs every parked job). */
static void test_parked_drained(void **state)
{
    (void)state;
    char prefix[64], err[512], body[64], mid[32], user[16];
    prefix_for(prefix, sizeof(prefix), "drained");
    sl_conf_t *conf = make_conf(prefix, dsn, "50ms");
    assert_int_equal(sl_conf_set(conf, "router.park_poll", "100ms", err, sizeof(err)), 0);
    char *topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    sql("CREATE TABLE itest_parked_log (message_id text)");
    sql("CREATE FUNCTION itest_parked_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO itest_parked_log VALUES (NEW.message_id); RETURN NULL; END $$");
    sql("CREATE TRIGGER itest_parked_log AFTER INSERT ON sluice_parked FOR EACH ROW EXECUTE "
        "FUNCTION itest_parked_log()");
    sink_clear_rules();
    for (int u = 0; u < 3; u++) {
        snprintf(body, sizeof(body), "\"dr-%d-0\"", u);
        sink_rule(body, 500, 1);
    }
    for (int i = 0; i < 5; i++) {
        for (int u = 0; u < 3; u++) {
            snprintf(mid, sizeof(mid), "dr-%d-%d", u, i);
            snprintf(user, sizeof(user), "w%d", u);
            snprintf(body, sizeof(body), "{\"dr-%d-%d\":1}", u, i);
            produce_job(conf, mid, "dst-a", user, sink_url, body);
        }
    }
    rt_router_t *rt = rt_router_start(conf, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    assert_int_equal(rows_for(topic, 15, 30000), 15);
    /* each user's five jobs went through sluice_parked, and nothing is left there */
    assert_int_equal(
        count_where("SELECT count(*) FROM itest_parked_log WHERE message_id LIKE $1", "dr-%"), 15);
    int64_t deadline = sl_time_mono_ms() + 10000;
    while (count_where("SELECT count(*) FROM sluice_parked_keys WHERE kafka_topic = $1", topic) &&
           sl_time_mono_ms() < deadline)
        usleep(50000);
    assert_int_equal(
        count_where("SELECT count(*) FROM sluice_parked_keys WHERE kafka_topic = $1", topic), 0);
    assert_int_equal(parked_for(topic), 0);
    for (int u = 0; u < 3; u++) {
        for (int i = 0; i < 5; i++) {
            char before[32];
            snprintf(mid, sizeof(mid), "\"dr-%d-%d\"", u, i);
            assert_int_equal(sink_count(mid, 200), 1);
            if (i) {
                snprintf(before, sizeof(before), "\"dr-%d-%d\"", u, i - 1);
                assert_true(sink_index(before, 200) < sink_index(mid, 200));
            }
        }
    }
    usleep(300000); /* the router has taken back what the store did */

    /* The keys are free again: new jobs of the same users are not parked. */
    for (int u = 0; u < 3; u++) {
        snprintf(mid, sizeof(mid), "dr-%d-9", u);
        snprintf(user, sizeof(user), "w%d", u);
        snprintf(body, sizeof(body), "{\"dr-%d-9\":1}", u);
        produce_job(conf, mid, "dst-a", user, sink_url, body);
    }
    assert_int_equal(rows_for(topic, 18, 30000), 18);
    assert_int_equal(
        count_where("SELECT count(*) FROM itest_parked_log WHERE message_id LIKE $1", "dr-%-9"), 0);
    rt_router_stop(rt);
    sql("DROP TRIGGER itest_parked_log ON sluice_parked");
    free(topic);
    sl_conf_destroy(conf);
}

/* A drain loads rows of a key while this router is still delivering the same rows, loaded
 * before (after a rebalance, a router resets claims on its partitions' keys, its own stale
 * ones too): the second load reaches the loop once those rows are delivered but before their
 * deletion is written. It must be dropped, not delivered again. Here the test resets the
 * claim itself while the first load is in flight, and a trigger holds the drain's claim for
 * a second so that its rows come back after the first load's deliveries. */
static void test_parked_reloaded(void **state)
{
    (void)state;
    char prefix[64], err[512], body[64], mid[32];
    prefix_for(prefix, sizeof(prefix), "reloaded");
    sl_conf_t *conf = make_conf(prefix, dsn, "50ms");
    assert_int_equal(sl_conf_set(conf, "router.park_poll", "100ms", err, sizeof(err)), 0);
    char *topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    sql("CREATE FUNCTION itest_slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "PERFORM pg_sleep(1); RETURN NEW; END $$");
    sql("CREATE TRIGGER itest_slow_claim BEFORE UPDATE ON sluice_parked_keys FOR EACH ROW WHEN "
        "(NEW.next_attempt_at = 'infinity') EXECUTE FUNCTION itest_slow_claim()");
    sink_clear_rules();
    sink_rule("\"rl-0\"", 500, 1);            /* parks rl-0 and the four behind it */
    sink_rule_delay("\"rl-1\"", 200, 1, 300); /* in flight while the claim is reset */
    for (int i = 0; i < 5; i++) {
        snprintf(mid, sizeof(mid), "rl-%d", i);
        snprintf(body, sizeof(body), "{\"rl-%d\":1}", i);
        produce_job(conf, mid, "dst-a", "x1", sink_url, body);
    }
    rt_router_t *rt = rt_router_start(conf, ws, err, sizeof(err));
    if (!rt)
        fail_msg("%s", err);
    /* 60 s: the dev broker has let a new member in only after 30 s (as in test_postgres_down) */
    int64_t deadline = sl_time_mono_ms() + 60000;
    while (sink_count("\"rl-1\"", 0) == 0 && sl_time_mono_ms() < deadline)
        usleep(5000);
    assert_int_equal(sink_count("\"rl-1\"", 0), 1);
    /* what another router's (or this one's) on_assign does to a claim */
    const char *params[] = {topic};
    if (sl_pg_exec(pg,
                   "UPDATE sluice_parked_keys SET next_attempt_at = now() WHERE kafka_topic = $1 "
                   "AND next_attempt_at = 'infinity'",
                   1, params, NULL, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_int_equal(rows_for(topic, 5, 30000), 5);
    deadline = sl_time_mono_ms() + 10000;
    while ((parked_for(topic) ||
            count_where("SELECT count(*) FROM sluice_parked_keys WHERE kafka_topic = $1", topic)) &&
           sl_time_mono_ms() < deadline)
        usleep(50000);
    usleep(1500000); /* a second load, had it been taken, is delivered by now */
    for (int i = 0; i < 5; i++) {
        snprintf(mid, sizeof(mid), "\"rl-%d\"", i);
        assert_int_equal(sink_count(mid, 200), 1);
    }
    assert_int_equal(parked_for(topic), 0);
    rt_router_stop(rt);
    sql("DROP TRIGGER itest_slow_claim ON sluice_parked_keys");
    free(topic);
    sl_conf_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outcomes),        cmocka_unit_test(test_postgres_down),
        cmocka_unit_test(test_stop_restart),    cmocka_unit_test(test_parked_drained),
        cmocka_unit_test(test_parked_reloaded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
