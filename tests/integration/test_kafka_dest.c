/*
 * Integration test of the KAFKA destination (router/kafka_dest.c) against the real Kafka
 * fixture: messages arrive with their key and value, bad configs abort with a reason naming
 * the key, an unreachable cluster is a RETRY after the message timeout, and a config change
 * makes a new producer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/kafka.h"
#include "common/timeutil.h"
#include "router/kafka_dest.h"
#include "testutil.h"

#define MAXR 64

typedef struct results {
    int n;
    void *opaque[MAXR];
    rt_kdest_result_t r[MAXR];
    char detail[MAXR][512];
} results_t;

static void on_done(void *opaque, rt_kdest_result_t r, const char *detail, void *ctx)
{
    results_t *res = ctx;
    assert_true(res->n < MAXR);
    res->opaque[res->n] = opaque;
    res->r[res->n] = r;
    snprintf(res->detail[res->n], sizeof(res->detail[0]), "%s", detail);
    res->n++;
}

/* Polls until res holds n results or timeout_ms passed. */
static void wait_results(rt_kdest_t *k, results_t *res, int n, int timeout_ms)
{
    int64_t deadline = sl_time_mono_ms() + timeout_ms;
    while (res->n < n && sl_time_mono_ms() < deadline) {
        rt_kdest_poll(k, on_done, res);
        usleep(10000);
    }
    assert_int_equal(res->n, n);
}

static const char *brokers(void)
{
    const char *b = sl_test_kafka_brokers();
    if (!b)
        fail_msg("no real kafka: run under ctest (fixture kafka) or set SLUICE_TEST_KAFKA_BROKERS");
    return b;
}

/* A configuration for this run's topics (created here), with the given router.timeout;
 * topic: the run's topic named by suffix (SL_TOPIC_*). */
static sl_conf_t *make_conf(const char *timeout, const char *suffix, char *topic, size_t topic_size)
{
    static char prefix[64];
    sl_conf_t *conf;
    char err[512];
    if (!prefix[0])
        snprintf(prefix, sizeof(prefix), "kdest-%lld.", (long long)sl_time_now_ms());
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.brokers", brokers(), err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.topic_prefix", prefix, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "router.timeout", timeout, err, sizeof(err)), 0);
    if (sl_kafka_ensure_topics(conf, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    snprintf(topic, topic_size, "%s%s", prefix, suffix);
    return conf;
}

/* A destination as the workspace config has it; release with json_object_put(d.config). */
static sl_destination_t dest(const char *id, const char *config)
{
    sl_destination_t d = {.id = id, .name = id, .enabled = true, .def_name = "KAFKA"};
    d.config = json_tokener_parse(config);
    assert_non_null(d.config);
    return d;
}

typedef struct got {
    char key[64], value[256], traceparent[64];
    int32_t partition;
} got_t;

/* Reads topic from the start until n messages (or 15 s); returns how many. */
static int consume(const sl_conf_t *conf, const char *topic, got_t *out, int n)
{
    char err[512], group[128];
    snprintf(group, sizeof(group), "%s.reader.%lld", topic, (long long)sl_time_now_ms());
    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, err, sizeof(err));
    assert_non_null(kc);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    assert_non_null(c);
    rd_kafka_poll_set_consumer(c);
    int parts = (int)sl_conf_int(conf, "kafka.partitions");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int i = 0; i < parts; i++)
        rd_kafka_topic_partition_list_add(l, topic, i)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    int got = 0;
    int64_t deadline = sl_time_mono_ms() + 15000;
    while (got < n && sl_time_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
        if (!m)
            continue;
        if (!m->err) {
            snprintf(out[got].key, sizeof(out[got].key), "%.*s", (int)m->key_len,
                     m->key ? (const char *)m->key : "");
            snprintf(out[got].value, sizeof(out[got].value), "%.*s", (int)m->len,
                     (const char *)m->payload);
            out[got].partition = m->partition;
            rd_kafka_headers_t *h;
            const void *v = NULL;
            size_t vlen = 0;
            if (rd_kafka_message_headers(m, &h) ||
                rd_kafka_header_get_last(h, "traceparent", &v, &vlen) || !v)
                vlen = 0;
            snprintf(out[got].traceparent, sizeof(out[got].traceparent), "%.*s", (int)vlen,
                     vlen ? (const char *)v : "");
            got++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return got;
}

static const got_t *find_value(const got_t *g, int n, const char *value)
{
    for (int i = 0; i < n; i++)
        if (strcmp(g[i].value, value) == 0)
            return &g[i];
    return NULL;
}

/* A loopback port nothing listens on. */
static int closed_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static void test_delivery(void **state)
{
    (void)state;
    char topic[128], topic2[160], config[1024], url[200], err[512];
    sl_conf_t *conf = make_conf("15s", SL_TOPIC_EVENTS, topic, sizeof(topic));
    snprintf(topic2, sizeof(topic2), "%.120s-second", topic); /* auto-created by the cluster */
    /* hosts that name their port ignore the port key */
    snprintf(config, sizeof(config), "{\"hostname\":\"%s\",\"port\":\"1\",\"topic\":\"%s\"}",
             brokers(), topic);
    sl_destination_t d = dest("dst-kafka-1", config);
    rt_kdest_t *k = rt_kdest_new(conf);
    snprintf(url, sizeof(url), "kafka://%s", topic2);
    const char *url_topic = rt_kdest_url_topic(url);
    assert_string_equal(url_topic, topic2);
    assert_null(rt_kdest_url_topic("https://x/"));
    assert_string_equal(rt_kdest_url_topic("kafka://"), "");

    enum { N = 12 };
    char keys[N][32], values[N][64];
    static const char tp[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "user-%d", i % 3);
        snprintf(values[i], sizeof(values[i]), "{\"type\":\"track\",\"n\":%d}", i);
        /* even: the job's topic (from its url); odd: none, so the config's */
        rt_kdest_result_t r = rt_kdest_send(
            k, &d, i % 2 ? NULL : url_topic, keys[i], strlen(keys[i]), values[i], strlen(values[i]),
            i % 3 ? tp : NULL, i % 3 == 1 ? "congo=t61rcWkgMzE" : NULL, (void *)(intptr_t)(i + 1),
            err, sizeof(err));
        if (r != RT_KDEST_OK)
            fail_msg("send %d: %d %s", i, r, err);
    }
    assert_int_equal(rt_kdest_inflight(k), N);
    results_t res = {0};
    wait_results(k, &res, N, 15000);
    for (int i = 0; i < N; i++) {
        if (res.r[i] != RT_KDEST_OK)
            fail_msg("message %p: %d %s", res.opaque[i], res.r[i], res.detail[i]);
        assert_string_equal(res.detail[i], "");
    }
    assert_int_equal(rt_kdest_inflight(k), 0);
    /* every opaque comes back once */
    int seen[N + 1] = {0};
    for (int i = 0; i < N; i++)
        seen[(intptr_t)res.opaque[i]]++;
    for (int i = 1; i <= N; i++)
        assert_int_equal(seen[i], 1);

    got_t g1[N], g2[N];
    assert_int_equal(consume(conf, topic, g1, N / 2), N / 2);
    assert_int_equal(consume(conf, topic2, g2, N / 2), N / 2);
    for (int i = 0; i < N; i++) {
        const got_t *m = find_value(i % 2 ? g1 : g2, N / 2, values[i]);
        if (!m)
            fail_msg("message %d (%s) is not in %s", i, values[i], i % 2 ? topic : topic2);
        assert_string_equal(m->key, keys[i]);
        /* the attempt's traceparent, when the job had one, as a header */
        assert_string_equal(m->traceparent, i % 3 ? tp : "");
        /* one user, one partition */
        const got_t *first = find_value(i % 2 ? g1 : g2, N / 2, values[i % 6]);
        assert_non_null(first);
        assert_int_equal(m->partition, first->partition);
    }
    rt_kdest_free(k, 5000, on_done, &res);
    assert_int_equal(res.n, N);
    json_object_put(d.config);
    sl_conf_destroy(conf);
}

static void test_bad_config(void **state)
{
    (void)state;
    char topic[128], err[512], good[1024];
    sl_conf_t *conf = make_conf("5s", SL_TOPIC_EVENTS, topic, sizeof(topic));
    snprintf(good, sizeof(good), "\"hostname\":\"%s\",\"port\":9092,\"topic\":\"%s\"", brokers(),
             topic);
    static const struct {
        const char *config, *topic, *want;
    } cases[] = {
        {"{\"port\":9092,\"topic\":\"t\"}", NULL, "destination config has no hostname"},
        {"{\"hostname\":\"k\",\"topic\":\"t\"}", NULL, "destination config has no port"},
        {"{\"hostname\":\"k\",\"port\":\"90x\",\"topic\":\"t\"}", NULL,
         "destination config port is \"90x\", expected a port number"},
        {"{\"hostname\":\"k\",\"port\":70000,\"topic\":\"t\"}", NULL, "destination config port"},
        {"{\"hostname\":\"k\",\"port\":9092}", NULL, "destination config has no topic"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\"}", "no spaces!",
         "kafka topic \"no spaces!\" is not a valid topic name"},
        {"{\"hostname\":\"a b\",\"port\":9092,\"topic\":\"t\"}", NULL,
         "destination config hostname \"a b\""},
        {"{\"hostname\":\" , \",\"port\":9092,\"topic\":\"t\"}", NULL,
         "destination config hostname is empty"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"sslEnabled\":\"yes\"}", NULL,
         "destination config sslEnabled is \"yes\", expected true or false"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"useSASL\":true,\"saslType\":"
         "\"gssapi\",\"username\":\"u\",\"password\":\"p\"}",
         NULL, "destination config saslType is \"gssapi\""},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"useSASL\":true,\"saslType\":"
         "\"sha512\",\"password\":\"p\"}",
         NULL, "destination config has no username, which useSASL needs"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"useSASL\":true,\"saslType\":"
         "\"plain\",\"username\":\"u\"}",
         NULL, "destination config has no password"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"convertToAvro\":true}", NULL,
         "destination config convertToAvro is true, but Avro serialisation is not supported"},
        {"{\"hostname\":\"k\",\"port\":9092,\"topic\":\"t\",\"sslEnabled\":true,"
         "\"caCertificate\":\"not a certificate\"}",
         NULL, "could not make a kafka producer for destination dst-bad"},
    };
    rt_kdest_t *k = rt_kdest_new(conf);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sl_destination_t d = dest("dst-bad", cases[i].config);
        err[0] = '\0';
        rt_kdest_result_t r = rt_kdest_send(k, &d, cases[i].topic, "u", 1, "{}", 2, NULL, NULL,
                                            NULL, err, sizeof(err));
        if (r != RT_KDEST_ABORT || !strstr(err, cases[i].want))
            fail_msg("case %zu: want ABORT with \"%s\", got %d \"%s\"", i, cases[i].want, r, err);
        json_object_put(d.config);
    }
    /* bigger than the producer's message.max.bytes: never deliverable */
    char cfg[1200];
    snprintf(cfg, sizeof(cfg), "{%s}", good);
    sl_destination_t d = dest("dst-good", cfg);
    size_t big_len = 2 * 1024 * 1024;
    char *big = calloc(1, big_len);
    assert_int_equal(
        rt_kdest_send(k, &d, NULL, "u", 1, big, big_len, NULL, NULL, NULL, err, sizeof(err)),
        RT_KDEST_ABORT);
    assert_non_null(strstr(err, "too large"));
    free(big);
    json_object_put(d.config);
    assert_int_equal(rt_kdest_inflight(k), 0);
    results_t res = {0};
    rt_kdest_poll(k, on_done, &res);
    rt_kdest_free(k, 1000, on_done, &res);
    assert_int_equal(res.n, 0); /* refused messages are not reported later */
    sl_conf_destroy(conf);
}

static void test_unreachable_then_fixed(void **state)
{
    (void)state;
    char topic[128], config[1024], err[512];
    sl_conf_t *conf = make_conf("2s", SL_TOPIC_DELIVERY, topic, sizeof(topic));
    rt_kdest_t *k = rt_kdest_new(conf);
    results_t res = {0};

    /* nothing listens there: RETRY once the 2 s message timeout passes */
    snprintf(config, sizeof(config), "{\"hostname\":\"127.0.0.1\",\"port\":%d,\"topic\":\"%s\"}",
             closed_port(), topic);
    sl_destination_t d = dest("dst-kafka-2", config);
    int64_t t0 = sl_time_mono_ms();
    assert_int_equal(rt_kdest_send(k, &d, NULL, "u1", 2, "{\"try\":1}", 9, NULL, NULL, (void *)1,
                                   err, sizeof(err)),
                     RT_KDEST_OK);
    wait_results(k, &res, 1, 8000);
    int64_t took = sl_time_mono_ms() - t0;
    assert_true(took >= 1500);
    assert_int_equal(res.r[0], RT_KDEST_RETRY);
    assert_ptr_equal(res.opaque[0], (void *)1);
    if (!strstr(res.detail[0], "no acknowledgement from topic") ||
        !strstr(res.detail[0], "within 2000 ms"))
        fail_msg("detail: %s", res.detail[0]);
    json_object_put(d.config);

    /* the config is fixed: a new producer, on the real cluster, delivers */
    char value[64];
    snprintf(value, sizeof(value), "{\"try\":2,\"at\":%lld}", (long long)sl_time_now_ms());
    snprintf(config, sizeof(config), "{\"hostname\":\"%s\",\"port\":9092,\"topic\":\"%s\"}",
             brokers(), topic);
    d = dest("dst-kafka-2", config);
    assert_int_equal(rt_kdest_send(k, &d, NULL, "u1", 2, value, strlen(value), NULL, NULL,
                                   (void *)2, err, sizeof(err)),
                     RT_KDEST_OK);
    wait_results(k, &res, 2, 8000);
    if (res.r[1] != RT_KDEST_OK)
        fail_msg("after the fix: %d %s", res.r[1], res.detail[1]);
    assert_ptr_equal(res.opaque[1], (void *)2);
    got_t g[4];
    int n = consume(conf, topic, g, 1);
    assert_int_equal(n, 1);
    assert_string_equal(g[0].value, value);
    assert_string_equal(g[0].key, "u1");
    json_object_put(d.config);
    rt_kdest_free(k, 1000, on_done, &res);
    assert_int_equal(res.n, 2);
    sl_conf_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivery),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_unreachable_then_fixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
