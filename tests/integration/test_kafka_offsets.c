/*
 * Integration test for common/kafka.c against the embedded dev broker (common/devkafka.c):
 * the offset tracker commits only the contiguous prefix of done messages, and a consumer
 * that restarts resumes after it. The same test runs against the real Kafka when given one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/conf.h"
#include "common/devkafka.h"
#include "common/kafka.h"
#include "common/timeutil.h"
#include "testutil.h"

#define N 20

static sl_conf_t *make_conf(const char *brokers, const char *prefix)
{
    sl_conf_t *conf;
    char err[256];
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.brokers", brokers, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.topic_prefix", prefix, err, sizeof(err)), 0);
    assert_int_equal(
        sl_conf_set(conf, "kafka.topic.metadata.refresh.interval.ms", "500", err, sizeof(err)), 0);
    /* The dev broker lets a new member in late when fetches poll every 100 ms (our default). */
    assert_int_equal(sl_conf_set(conf, "kafka.fetch.wait.max.ms", "500", err, sizeof(err)), 0);
    /* The mock does not hand a departed member's partitions over before its session ends. */
    assert_int_equal(sl_conf_set(conf, "kafka.session.timeout.ms", "6000", err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.heartbeat.interval.ms", "1000", err, sizeof(err)), 0);
    return conf;
}

/* Consumes until n messages or a timeout; returns the offsets seen (partition 0 only). */
static int consume(rd_kafka_t *c, int64_t *offs, int n)
{
    int got = 0;
    int64_t deadline = sl_time_mono_ms() + 60000;
    while (got < n && sl_time_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
        if (!m)
            continue;
        if (!m->err)
            offs[got++] = m->offset;
        rd_kafka_message_destroy(m);
    }
    return got;
}

/*
 * A consumer in the group. Against real Kafka it joins by subscribing, as the roles do. The
 * dev broker (librdkafka 2.0.2's mock) can keep a joining member waiting for seconds to
 * minutes when a metadata refresh sets off another rebalance, so there the consumer takes
 * partition 0 by assign: it still commits to, and starts from, the group's offsets.
 */
static rd_kafka_t *open_consumer(const sl_conf_t *conf, const char *group, const char *topic,
                                 bool embedded)
{
    char err[512];
    rd_kafka_t *c;
    if (!embedded) {
        const char *topics[] = {topic, NULL};
        c = sl_kafka_consumer_new(conf, group, topics, NULL, NULL, err, sizeof(err));
        assert_non_null(c);
        return c;
    }
    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, err, sizeof(err));
    assert_non_null(kc);
    c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    assert_non_null(c);
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, 0)->offset = RD_KAFKA_OFFSET_INVALID;
    assert_int_equal(rd_kafka_assign(c, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    return c;
}

static void close_consumer(rd_kafka_t *c, bool embedded)
{
    rd_kafka_consumer_close(c);
    if (embedded)
        rd_kafka_destroy(c);
    else
        sl_kafka_consumer_destroy(c);
}

static void run(const char *brokers, bool embedded)
{
    char prefix[64], err[512];
    snprintf(prefix, sizeof(prefix), "itest-%lld.", (long long)sl_time_now_ms());
    sl_conf_t *conf = make_conf(brokers, prefix);
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);

    rd_kafka_t *p = sl_kafka_producer_new(conf, NULL, NULL, err, sizeof(err));
    assert_non_null(p);
    for (int i = 0; i < N; i++) {
        char v[16];
        snprintf(v, sizeof(v), "m%d", i);
        assert_int_equal(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
                                           RD_KAFKA_V_VALUE(v, strlen(v)),
                                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                           RD_KAFKA_V_END),
                         0);
    }
    assert_int_equal(rd_kafka_flush(p, 30000), 0);
    rd_kafka_destroy(p);

    char group[96];
    snprintf(group, sizeof(group), "%sgroup", prefix);
    rd_kafka_t *c = open_consumer(conf, group, topic, embedded);
    int64_t offs[N];
    assert_int_equal(consume(c, offs, N), N);

    sl_kafka_offsets_t *o = sl_kafka_offsets_new();
    for (int i = 0; i < N; i++)
        sl_kafka_offsets_track(o, topic, 0, offs[i]);
    assert_int_equal(sl_kafka_offsets_pending(o), N);
    /* Done out of order: 0..4, then 6..9; 5 is still in flight, so 5 is what gets committed. */
    for (int i = 9; i >= 6; i--)
        sl_kafka_offsets_done(o, topic, 0, offs[i]);
    for (int i = 0; i < 5; i++)
        sl_kafka_offsets_done(o, topic, 0, offs[i]);
    sl_kafka_offsets_done(o, topic, 0, offs[3]); /* twice: ignored */
    assert_int_equal(sl_kafka_offsets_pending(o), N - 9);
    assert_int_equal(sl_kafka_offsets_commit(o, c, true), 0);

    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, 0);
    assert_int_equal(rd_kafka_committed(c, l, 10000), 0);
    assert_int_equal(l->elems[0].offset, offs[5]);
    rd_kafka_topic_partition_list_destroy(l);
    sl_kafka_offsets_destroy(o);
    close_consumer(c, embedded);

    /* A new consumer of the group starts at the committed offset: message 5 comes again. */
    c = open_consumer(conf, group, topic, embedded);
    int64_t again[1];
    assert_int_equal(consume(c, again, 1), 1);
    assert_int_equal(again[0], offs[5]);
    close_consumer(c, embedded);
    free(topic);
    sl_conf_destroy(conf);
}

static void test_offsets_embedded(void **state)
{
    (void)state;
    char err[256];
    const char *const none[] = {NULL};
    sl_devkafka_t *d = sl_devkafka_start(1, 1, "", none, err, sizeof(err));
    assert_non_null(d);
    run(sl_devkafka_bootstraps(d), true);
    sl_devkafka_stop(d);
}

static void test_offsets_real(void **state)
{
    (void)state;
    const char *brokers = sl_test_kafka_brokers();
    if (!brokers)
        fail_msg("no real kafka: run under ctest (fixture kafka) or set SLUICE_TEST_KAFKA_BROKERS");
    run(brokers, false);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest embedded[] = {cmocka_unit_test(test_offsets_embedded)};
    const struct CMUnitTest real[] = {cmocka_unit_test(test_offsets_real)};
    if (argc > 1 && strcmp(argv[1], "--real") == 0)
        return cmocka_run_group_tests(real, NULL, NULL);
    return cmocka_run_group_tests(embedded, NULL, NULL);
}
