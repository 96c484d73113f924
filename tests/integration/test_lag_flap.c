/*
 * Integration test for common/lag.c against librdkafka's mock cluster: the group's coordinator
 * goes down and up again and again while the lag is sampled. librdkafka 2.0.2's Admin API
 * aborts the process in that case ("rd_kafka_enq_once_del_source_return: Assertion
 * `eonce->refcnt > 0' failed", librdkafka issue 4605): every role samples its lag, so a
 * broker restart used to take Sluice's processes down with it. The sampler must come through
 * and read the committed offsets again once the coordinator is back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <string.h>

#include "common/conf.h"
#include "common/lag.h"
#include "testutil.h"

#define TOPIC "lag-flap"
#define GROUP "lag-flap-group"
#define PARTS 4
#define COORD 2 /* the group's coordinator among the mock's brokers 1..3 */

/* Commits offset 5 for every partition of TOPIC, as GROUP, without joining it. */
static void commit_offsets(const char *bootstraps)
{
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(c, "bootstrap.servers", bootstraps, err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(c, "group.id", GROUP, err, sizeof(err)), RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof(err));
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(PARTS);
    for (int p = 0; p < PARTS; p++)
        rd_kafka_topic_partition_list_add(offs, TOPIC, p)->offset = 5;
    assert_int_equal(rd_kafka_commit(rk, offs, 0), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_topic_partition_list_destroy(offs);
    rd_kafka_destroy(rk);
}

/* The committed offsets the last sample read: the number of partitions at 5. */
static int committed_at_5(sl_lag_t *l)
{
    const sl_lag_group_t *gs;
    size_t n = sl_lag_groups(l, &gs);
    int at5 = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; strcmp(gs[i].group, GROUP) == 0 && k < gs[i].nparts; k++)
            at5 += gs[i].parts[k].committed == 5;
    return at5;
}

static void test_coordinator_flaps(void **state)
{
    (void)state;
    char err[512];
    rd_kafka_conf_t *mc = rd_kafka_conf_new();
    rd_kafka_t *mrk = rd_kafka_new(RD_KAFKA_PRODUCER, mc, err, sizeof(err));
    assert_non_null(mrk);
    rd_kafka_mock_cluster_t *cl = rd_kafka_mock_cluster_new(mrk, 3);
    assert_non_null(cl);
    const char *bootstraps = rd_kafka_mock_cluster_bootstraps(cl);
    assert_int_equal(rd_kafka_mock_topic_create(cl, TOPIC, PARTS, 3), RD_KAFKA_RESP_ERR_NO_ERROR);
    assert_int_equal(rd_kafka_mock_coordinator_set(cl, "group", GROUP, COORD),
                     RD_KAFKA_RESP_ERR_NO_ERROR);
    commit_offsets(bootstraps);

    sl_conf_t *conf;
    assert_int_equal(sl_conf_load(&conf, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_conf_set(conf, "kafka.brokers", bootstraps, err, sizeof(err)), 0);
    sl_lag_t *l = sl_lag_new(conf, 3, err, sizeof(err));
    assert_non_null(l);
    sl_lag_set_timeout(l, 1000);
    sl_lag_add_group(l, GROUP, TOPIC);

    /* The first samples connect to the cluster: within 1 s each, they may take a few under
     * load (CI runs tests side by side). */
    int first = 0;
    for (int i = 0; i < 20 && first < PARTS; i++) {
        int rc = sl_lag_sample(l, err, sizeof(err));
        first = rc ? 0 : committed_at_5(l);
        if (rc)
            printf("first sample: %s\n", err);
    }
    assert_int_equal(first, PARTS);

    /* Down for two samples, up for one, six times over (the Admin API aborted within about
     * ten such samples in a standalone run of the same schedule). */
    for (int round = 0; round < 18; round++) {
        if (round % 3 == 0)
            rd_kafka_mock_broker_set_down(cl, COORD);
        else if (round % 3 == 2)
            rd_kafka_mock_broker_set_up(cl, COORD);
        int rc = sl_lag_sample(l, err, sizeof(err));
        printf("sample %2d, coordinator %s: %s; %d of %d partitions read at offset 5\n", round,
               round % 3 == 2 ? "up" : "down", rc ? err : "ok", committed_at_5(l), PARTS);
        fflush(stdout);
    }

    /* Back for good: the committed offsets are read again. */
    rd_kafka_mock_broker_set_up(cl, COORD);
    int at5 = 0;
    for (int i = 0; i < 20 && at5 < PARTS; i++)
        if (sl_lag_sample(l, err, sizeof(err)) == 0)
            at5 = committed_at_5(l);
    assert_int_equal(at5, PARTS);

    sl_lag_destroy(l);
    sl_conf_destroy(conf);
    rd_kafka_mock_cluster_destroy(cl);
    rd_kafka_destroy(mrk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_coordinator_flaps)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
