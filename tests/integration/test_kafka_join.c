/*
 * Integration test for common/kafka.c against the real Kafka: consumers that subscribe right
 * after sl_kafka_ensure_topics created their topics all end up with every partition.
 *
 * On a cluster of three brokers the group leader may compute the assignment from a broker that
 * has not learned a new topic yet; librdkafka 2.0.2 then hands out no partitions and never
 * rejoins by itself. Without the rejoin in common/kafka.c's rebalance callback, about one
 * consumer in three here stays at zero partitions.
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
#include <unistd.h>

#include "common/conf.h"
#include "common/kafka.h"
#include "common/timeutil.h"
#include "testutil.h"

#define ROUNDS     6
#define PER_ROUND  2 /* consumers per round: on the events and on the delivery topic */
#define PARTITIONS 4

static int assigned(rd_kafka_t *c)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(c, &l) || !l)
        return 0;
    int n = l->cnt;
    rd_kafka_topic_partition_list_destroy(l);
    return n;
}

static void test_join_new_topics(void **state)
{
    (void)state;
    const char *brokers = sl_test_kafka_brokers();
    if (!brokers)
        fail_msg("no real kafka: run under ctest (fixture kafka) or set SLUICE_TEST_KAFKA_BROKERS");
    rd_kafka_t *consumers[ROUNDS * PER_ROUND];
    sl_conf_t *confs[ROUNDS];
    char err[512];
    for (int r = 0; r < ROUNDS; r++) {
        char prefix[64], partitions[8];
        snprintf(prefix, sizeof(prefix), "itest-join-%d-%d.", (int)getpid(), r);
        snprintf(partitions, sizeof(partitions), "%d", PARTITIONS);
        assert_int_equal(sl_conf_load(&confs[r], NULL, err, sizeof(err)), 0);
        assert_int_equal(sl_conf_set(confs[r], "kafka.brokers", brokers, err, sizeof(err)), 0);
        assert_int_equal(sl_conf_set(confs[r], "kafka.topic_prefix", prefix, err, sizeof(err)), 0);
        assert_int_equal(sl_conf_set(confs[r], "kafka.partitions", partitions, err, sizeof(err)),
                         0);
        assert_int_equal(sl_kafka_ensure_topics(confs[r], err, sizeof(err)), 0);
        const char *suffixes[PER_ROUND] = {SL_TOPIC_EVENTS, SL_TOPIC_DELIVERY};
        for (int i = 0; i < PER_ROUND; i++) {
            char *topic = sl_kafka_topic(confs[r], suffixes[i]);
            char group[128];
            snprintf(group, sizeof(group), "%sgroup-%d", prefix, i);
            const char *topics[] = {topic, NULL};
            rd_kafka_t *c =
                sl_kafka_consumer_new(confs[r], group, topics, NULL, NULL, err, sizeof(err));
            assert_non_null(c);
            consumers[r * PER_ROUND + i] = c;
            free(topic);
        }
    }
    /* Every consumer must hold all its topic's partitions; the rejoins take at most 3.5 s. */
    int64_t deadline = sl_time_mono_ms() + 30000;
    int complete = 0;
    while (sl_time_mono_ms() < deadline) {
        complete = 0;
        for (int i = 0; i < ROUNDS * PER_ROUND; i++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(consumers[i], 10);
            if (m)
                rd_kafka_message_destroy(m);
            complete += assigned(consumers[i]) == PARTITIONS;
        }
        if (complete == ROUNDS * PER_ROUND)
            break;
    }
    for (int i = 0; i < ROUNDS * PER_ROUND; i++) {
        if (assigned(consumers[i]) != PARTITIONS)
            fprintf(stderr, "consumer %d holds %d of %d partitions\n", i, assigned(consumers[i]),
                    PARTITIONS);
        rd_kafka_consumer_close(consumers[i]);
        sl_kafka_consumer_destroy(consumers[i]);
    }
    for (int r = 0; r < ROUNDS; r++)
        sl_conf_destroy(confs[r]);
    assert_int_equal(complete, ROUNDS * PER_ROUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_join_new_topics)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
