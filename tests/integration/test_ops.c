/*
 * End-to-end tests of `sluice offsets` and `sluice topics` (cmd/offsets.c, cmd/topics.c): the
 * binary runs against the real Kafka fixture, and Kafka's own tools are the reference. Every
 * reset scenario's NEW-OFFSET column must be what `kafka-consumer-groups --reset-offsets
 * --dry-run` computes for the same group, and what --execute then commits. The messages carry
 * timestamps a minute apart, three hours back, so the time scenarios land between them.
 * One case per run (argv[1]: time, position, refuse, topics, devbroker), each a few seconds.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/conf.h"
#include "common/devkafka.h"
#include "common/kafka.h"
#include "common/timeutil.h"
#include "testutil.h"

#define NP     3  /* partitions of the test topic */
#define NMSG   10 /* messages per partition */
#define MINUTE 60000LL

static char prefix[64], group[96], topic[96];
static const char *brokers;
static int64_t base_ms; /* timestamp of the first message */
static sl_conf_t *conf;
static char *bin; /* SLUICE_BIN, kept out of sluice's environment (it warns of it) */

/* Message i of partition p is written at base + (3i + p) minutes. */
static int64_t msg_ts(int p, int i)
{
    return base_ms + (3 * i + p) * MINUTE;
}

/* Runs a shell command; returns its exit status and its stdout (and stderr with with_err)
 * in out. */
static int run(char *out, size_t out_size, bool with_err, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = (size_t)vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    snprintf(cmd + n, sizeof(cmd) - n, "%s", with_err ? " 2>&1" : "");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t len = fread(out, 1, out_size - 1, p);
    out[len] = '\0';
    int st = pclose(p);
    printf("$ %s\n%s[exit %d]\n", cmd, out, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int sluice(char *out, size_t out_size, bool with_err, const char *args)
{
    return run(out, out_size, with_err, "%s %s", bin, args);
}

/* Kafka's kafka-consumer-groups; its log4j complaints go to /dev/null. */
static int kafka_groups(char *out, size_t out_size, const char *args)
{
    return run(out, out_size, false,
               "%s/scripts/kafka-local tool org.apache.kafka.tools.consumer.group."
               "ConsumerGroupCommand --bootstrap-server %s %s 2>/dev/null",
               getenv("SLUICE_TEST_SOURCE_DIR"), brokers, args);
}

/* Parses a GROUP TOPIC PARTITION NEW-OFFSET table (ours, or Kafka 3.9's, whose rows run
 * together on one line) into offs[partition]. Returns the rows read, or -1. */
static int parse_table(const char *out, int64_t offs[NP])
{
    const char *h = strstr(out, "NEW-OFFSET");
    if (!h)
        return -1;
    h += strlen("NEW-OFFSET");
    for (int i = 0; i < NP; i++)
        offs[i] = -100;
    char g[256], t[256];
    int p, used, rows = 0;
    long long o;
    while (sscanf(h, "%255s %255s %d %lld%n", g, t, &p, &o, &used) == 4) {
        if (strcmp(g, group) != 0 || strcmp(t, topic) != 0 || p < 0 || p >= NP)
            return -1;
        offs[p] = o;
        rows++;
        h += used;
    }
    return rows;
}

static void assert_offsets(const char *what, const int64_t got[NP], const int64_t want[NP])
{
    for (int p = 0; p < NP; p++)
        if (got[p] != want[p])
            fail_msg("%s: partition %d: got %lld, want %lld", what, p, (long long)got[p],
                     (long long)want[p]);
}

/* The group's committed offsets, as its consumers will see them. */
static void committed(int64_t offs[NP])
{
    char err[512];
    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, err, sizeof(err));
    assert_non_null(kc);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(NP);
    for (int p = 0; p < NP; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    assert_int_equal(rd_kafka_committed(rk, l, 10000), 0);
    for (int p = 0; p < NP; p++)
        offs[p] = rd_kafka_topic_partition_list_find(l, topic, p)->offset;
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}

/* --dry-run of the scenario with sluice and, with_kafka, with Kafka's tool (two seconds of JVM
 * each): both must print want. */
static void check_dry_run(const char *scenario, const int64_t want[NP], bool with_kafka)
{
    char out[16384], args[512];
    int64_t ours[NP], theirs[NP];
    snprintf(args, sizeof(args), "offsets reset --group %s --topic %s %s --dry-run", group, topic,
             scenario);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);
    assert_int_equal(parse_table(out, ours), NP);
    assert_offsets("sluice against the expected offsets", ours, want);
    if (!with_kafka)
        return;
    snprintf(args, sizeof(args), "--reset-offsets --group %s --topic %s %s --dry-run", group, topic,
             scenario);
    assert_int_equal(kafka_groups(out, sizeof(out), args), 0);
    assert_int_equal(parse_table(out, theirs), NP);
    assert_offsets("sluice against kafka-consumer-groups", ours, theirs);
}

/* --execute of the scenario on the group's default topic (a Sluice group's own topic): the
 * table and then the committed offsets must be want. */
static void check_execute(const char *scenario, const int64_t want[NP])
{
    char out[16384], args[512];
    int64_t got[NP];
    snprintf(args, sizeof(args), "offsets reset --group %s %s --execute", group, scenario);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);
    assert_int_equal(parse_table(out, got), NP);
    assert_offsets("sluice --execute table", got, want);
    committed(got);
    assert_offsets("committed after --execute", got, want);
}

/* This run's topics (prefix + the pipeline's suffixes, NP partitions), NMSG messages per
 * partition of the events topic, and group = the processor's group, which reads it. */
static int setup(void **state)
{
    (void)state;
    brokers = sl_test_kafka_brokers(); /* NULL for the devbroker case */
    if (!getenv("SLUICE_BIN") || !getenv("SLUICE_TEST_SOURCE_DIR")) {
        fprintf(stderr, "run under ctest: needs SLUICE_BIN and SLUICE_TEST_SOURCE_DIR\n");
        return -1;
    }
    bin = strdup(getenv("SLUICE_BIN"));
    unsetenv("SLUICE_BIN");
    snprintf(prefix, sizeof(prefix), "ops-%lld-%d.", (long long)sl_time_now_ms(), (int)getpid());
    snprintf(topic, sizeof(topic), "%s%s", prefix, SL_TOPIC_EVENTS);
    snprintf(group, sizeof(group), "%s%s", prefix, SL_GROUP_PROCESSOR);
    char err[512], np[8];
    snprintf(np, sizeof(np), "%d", NP);
    setenv("SLUICE_KAFKA_BROKERS", brokers ? brokers : "", 1);
    setenv("SLUICE_KAFKA_TOPIC_PREFIX", prefix, 1);
    setenv("SLUICE_KAFKA_PARTITIONS", np, 1);
    setenv("SLUICE_LOG_LEVEL", "warn", 1);
    if (sl_conf_load(&conf, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    base_ms = (sl_time_now_ms() - 3 * 3600 * 1000LL) / 1000 * 1000;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sl_conf_destroy(conf);
    free(bin);
    return 0;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    int *delivered = opaque;
    if (m->err)
        fprintf(stderr, "could not produce to %s-%d: %s\n", rd_kafka_topic_name(m->rkt),
                (int)m->partition, rd_kafka_err2str(m->err));
    else
        (*delivered)++;
}

/* Creates the run's topics and writes NMSG messages to each partition of the events topic. */
static void create_and_fill(void)
{
    char err[512];
    if (!brokers)
        fail_msg("no real kafka: run under ctest (fixture kafka) or set SLUICE_TEST_KAFKA_BROKERS");
    if (sl_kafka_ensure_topics(conf, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    /* A broker that has not seen the new topic yet must answer "unknown topic", which the
     * producer waits out (topic.metadata.propagation.max.ms), rather than create it. */
    int delivered = 0;
    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, err, sizeof(err));
    assert_non_null(kc);
    assert_int_equal(rd_kafka_conf_set(kc, "allow.auto.create.topics", "false", err, sizeof(err)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_conf_set_dr_msg_cb(kc, on_delivery);
    rd_kafka_conf_set_opaque(kc, &delivered);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    assert_non_null(rk);
    for (int i = 0; i < NMSG; i++)
        for (int p = 0; p < NP; p++) {
            char v[32];
            snprintf(v, sizeof(v), "p%d-m%d", p, i);
            rd_kafka_resp_err_t e = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(p),
                RD_KAFKA_V_TIMESTAMP(msg_ts(p, i)), RD_KAFKA_V_VALUE(v, strlen(v)),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
            assert_int_equal(e, 0);
        }
    assert_int_equal(rd_kafka_flush(rk, 30000), 0);
    rd_kafka_destroy(rk);
    assert_int_equal(delivered, NP * NMSG);
}

/* Removes the records before `before` from partition p, so its earliest offset is `before`. */
static void delete_records(int p, int64_t before)
{
    char err[512];
    rd_kafka_t *rk = sl_kafka_admin_new(conf, err, sizeof(err));
    assert_non_null(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, p)->offset = before;
    rd_kafka_DeleteRecords_t *del = rd_kafka_DeleteRecords_new(l);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *o = sl_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_DELETERECORDS);
    rd_kafka_DeleteRecords(rk, &del, 1, o, q);
    rd_kafka_event_t *ev = sl_kafka_admin_wait(q, "DeleteRecords", err, sizeof(err));
    if (!ev)
        fail_msg("%s", err);
    const rd_kafka_topic_partition_list_t *r =
        rd_kafka_DeleteRecords_result_offsets(rd_kafka_event_DeleteRecords_result(ev));
    assert_int_equal(r->elems[0].err, 0);
    rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_queue_destroy(q);
    rd_kafka_DeleteRecords_destroy(del);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}

/* --to-datetime (with a zone) and --by-duration land between messages; a time after the last
 * message falls back to the latest offsets. */
static void test_time(void **state)
{
    (void)state;
    create_and_fill();

    /* 13.5 minutes after base, written in +02:00: the first messages at or after it are
     * i=5 (minute 15), i=5 (16) and i=4 (14). */
    int64_t at = base_ms + 13 * MINUTE + 30000;
    time_t local = (time_t)((at + 2 * 3600 * 1000LL) / 1000);
    struct tm tm;
    gmtime_r(&local, &tm);
    char scenario[128], stamp[64];
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(scenario, sizeof(scenario), "--to-datetime %s.%03d+02:00", stamp, (int)(at % 1000));
    const int64_t want_dt[NP] = {5, 5, 4};
    check_dry_run(scenario, want_dt, true);
    check_execute(scenario, want_dt);

    /* Now minus the duration is 19.5 minutes after base: i=7 (minute 21), 7 (22) and 6 (20).
     * The moment each tool reads the clock may differ by seconds: the nearest message is 30 s
     * away. */
    const int64_t want_dur[NP] = {7, 7, 6};
    int64_t target = base_ms + 19 * MINUTE + 30000;
    snprintf(scenario, sizeof(scenario), "--by-duration PT%lldS",
             (long long)((sl_time_now_ms() - target) / 1000));
    check_dry_run(scenario, want_dur, true);
    snprintf(scenario, sizeof(scenario), "--by-duration PT%lldS",
             (long long)((sl_time_now_ms() - target) / 1000));
    check_execute(scenario, want_dur);

    /* After the last message: every partition goes to its latest offset. */
    const int64_t want_end[NP] = {NMSG, NMSG, NMSG};
    check_dry_run("--to-datetime 2999-01-01T00:00:00.000", want_end, true);
}

/* --to-earliest, --to-latest, --to-offset and --shift-by, with partition 0's first two
 * records deleted so that earliest is not 0 and clamping has two ends. */
static void test_position(void **state)
{
    (void)state;
    create_and_fill();
    delete_records(0, 2);

    const int64_t low[NP] = {2, 1, 1}; /* offset 1: below partition 0's earliest */
    check_dry_run("--to-offset 1", low, true);
    const int64_t high[NP] = {NMSG, NMSG, NMSG};
    check_dry_run("--to-offset 100", high, false);

    const int64_t earliest[NP] = {2, 0, 0};
    check_dry_run("--to-earliest", earliest, true);
    check_execute("--to-earliest", earliest);

    const int64_t latest[NP] = {NMSG, NMSG, NMSG};
    check_dry_run("--to-latest", latest, true);
    check_execute("--to-latest", latest);

    const int64_t five[NP] = {5, 5, 5};
    check_dry_run("--to-offset 5", five, false);
    check_execute("--to-offset 5", five);

    /* From 5: 5-4 = 1, below partition 0's earliest. */
    check_dry_run("--shift-by -4", low, true);
    const int64_t plus2[NP] = {7, 7, 7};
    check_dry_run("--shift-by 2", plus2, false);
}

/* While a consumer is in the group, reset refuses (dry run too, as Kafka's tool does) and
 * changes nothing; once it left, the same command works. */
static void test_refuse(void **state)
{
    (void)state;
    create_and_fill();
    char out[16384], args[512], err[512];
    int64_t got[NP];
    snprintf(args, sizeof(args), "offsets reset --group %s --to-offset 3 --execute", group);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);

    rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, err, sizeof(err));
    assert_non_null(kc);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    assert_non_null(c);
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(subs, topic, RD_KAFKA_PARTITION_UA);
    assert_int_equal(rd_kafka_subscribe(c, subs), 0);
    rd_kafka_topic_partition_list_destroy(subs);
    rd_kafka_topic_partition_list_t *assigned = NULL;
    int64_t deadline = sl_time_mono_ms() + 20000;
    while (sl_time_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (m)
            rd_kafka_message_destroy(m);
        if (rd_kafka_assignment(c, &assigned) == 0 && assigned->cnt > 0)
            break;
        rd_kafka_topic_partition_list_destroy(assigned);
        assigned = NULL;
    }
    assert_non_null(assigned);
    rd_kafka_topic_partition_list_destroy(assigned);

    snprintf(args, sizeof(args), "offsets reset --group %s --to-earliest --execute", group);
    assert_int_equal(sluice(out, sizeof(out), true, args), 1);
    assert_non_null(strstr(out, "has 1 active member (state Stable)"));
    assert_non_null(strstr(out, "stop its consumers"));
    assert_null(strstr(out, "NEW-OFFSET"));
    snprintf(args, sizeof(args), "offsets reset --group %s --to-earliest --dry-run", group);
    assert_int_equal(sluice(out, sizeof(out), true, args), 1);
    assert_non_null(strstr(out, "active member"));
    snprintf(args, sizeof(args), "offsets show --group %s", group);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);
    assert_non_null(strstr(out, "state Stable; members: "));
    assert_non_null(strstr(out, "CURRENT-OFFSET"));
    const int64_t three[NP] = {3, 3, 3};
    committed(got);
    assert_offsets("committed while refused", got, three);

    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    snprintf(args, sizeof(args), "offsets reset --group %s --to-earliest --execute", group);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);
    const int64_t zero[NP] = {0, 0, 0};
    committed(got);
    assert_offsets("committed once the consumer left", got, zero);
}

/* Counts the lines of out that start with a pipeline topic of this run and contain word. */
static int topic_lines(const char *out, const char *word)
{
    int n = 0;
    for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        const char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        char line[1024];
        snprintf(line, sizeof(line), "%.*s", (int)len, l);
        if (strncmp(line, prefix, strlen(prefix)) == 0 && strstr(line, word))
            n++;
    }
    return n;
}

/* `sluice topics create` makes the four topics with the options' partitions, replication
 * factor and retention (as Kafka's kafka-topics describes them), and running it again is
 * harmless and says they exist. */
static void test_topics(void **state)
{
    (void)state;
    char out[16384];
    if (!brokers)
        fail_msg("no real kafka: run under ctest (fixture kafka) or set SLUICE_TEST_KAFKA_BROKERS");
    setenv("SLUICE_KAFKA_REPLICATION_FACTOR", "2", 1);
    setenv("SLUICE_KAFKA_RETENTION", "2h", 1);
    assert_int_equal(sluice(out, sizeof(out), false, "topics list"), 1);
    assert_int_equal(topic_lines(out, " missing "), SL_KAFKA_N_PIPELINE_TOPICS);
    assert_int_equal(sluice(out, sizeof(out), false, "topics create"), 0);
    assert_int_equal(topic_lines(out, " created "), SL_KAFKA_N_PIPELINE_TOPICS);

    /* kafka-topics --describe --topic 'PREFIX.*': one summary line per topic (again if the
     * broker it asked had not seen all four yet). */
    for (int attempt = 0; attempt < 3; attempt++) {
        assert_int_equal(run(out, sizeof(out), false,
                             "%s/scripts/kafka-local tool org.apache.kafka.tools.TopicCommand "
                             "--bootstrap-server %s --describe --topic '%s.*' 2>/dev/null",
                             getenv("SLUICE_TEST_SOURCE_DIR"), brokers, prefix),
                         0);
        int summaries = 0;
        for (const char *l = strstr(out, "\tPartitionCount: "); l;
             l = strstr(l + 1, "\tPartitionCount: "))
            summaries++;
        if (summaries == SL_KAFKA_N_PIPELINE_TOPICS)
            break;
    }
    int described = 0;
    for (int i = 0; sl_kafka_pipeline_topics[i]; i++) {
        char head[160];
        snprintf(head, sizeof(head), "Topic: %s%s\t", prefix, sl_kafka_pipeline_topics[i]);
        const char *line = strstr(out, head);
        assert_non_null(line);
        const char *eol = strchr(line, '\n');
        char summary[2048];
        snprintf(summary, sizeof(summary), "%.*s", eol ? (int)(eol - line) : (int)strlen(line),
                 line);
        assert_non_null(strstr(summary, "PartitionCount: 3\t"));
        assert_non_null(strstr(summary, "ReplicationFactor: 2\t"));
        assert_non_null(strstr(summary, "retention.ms=7200000"));
        described++;
    }
    assert_int_equal(described, SL_KAFKA_N_PIPELINE_TOPICS);

    setenv("SLUICE_KAFKA_PARTITIONS", "5", 1);
    assert_int_equal(sluice(out, sizeof(out), false, "topics create"), 0);
    assert_int_equal(topic_lines(out, " already exists "), SL_KAFKA_N_PIPELINE_TOPICS);
    assert_int_equal(topic_lines(out, "3 partitions, not kafka.partitions (5)"),
                     SL_KAFKA_N_PIPELINE_TOPICS);
    assert_int_equal(sluice(out, sizeof(out), false, "topics list"), 0);
    assert_int_equal(topic_lines(out, " 7200000"), SL_KAFKA_N_PIPELINE_TOPICS);
}

/* The dev broker: reset and topics create say what they can't do and what to do instead;
 * show and list work. Bad usage is caught before any connection. */
static void test_devbroker(void **state)
{
    (void)state;
    char out[16384], err[512], args[512];
    sl_devkafka_t *dk = sl_devkafka_start(1, 2, prefix, sl_kafka_pipeline_topics, err, sizeof(err));
    assert_non_null(dk);
    setenv("SLUICE_KAFKA_BROKERS", sl_devkafka_bootstraps(dk), 1);
    snprintf(args, sizeof(args), "offsets reset --group %s --to-earliest --dry-run", group);
    assert_int_equal(sluice(out, sizeof(out), true, args), 1);
    assert_non_null(strstr(out, "embedded dev broker"));
    assert_non_null(strstr(out, "no DescribeGroups"));
    assert_non_null(strstr(out, "real Kafka cluster"));
    assert_int_equal(sluice(out, sizeof(out), true, "topics create"), 1);
    assert_non_null(strstr(out, "no CreateTopics"));
    assert_non_null(strstr(out, "creates the pipeline's topics when it starts"));
    snprintf(args, sizeof(args), "offsets show --group %s", group);
    assert_int_equal(sluice(out, sizeof(out), false, args), 0);
    assert_non_null(strstr(out, "state unknown (the dev broker has no DescribeGroups)"));
    assert_int_equal(sluice(out, sizeof(out), false, "topics list"), 0);
    assert_int_equal(topic_lines(out, " exists "), SL_KAFKA_N_PIPELINE_TOPICS);
    sl_devkafka_stop(dk);

    static const struct {
        const char *args, *says;
    } usage[] = {
        {"offsets reset --group g --to-earliest", "choose --dry-run"},
        {"offsets reset --group g --dry-run", "choose where to"},
        {"offsets reset --to-earliest --dry-run", "--group"},
        {"offsets reset --group g --to-earliest --to-latest --dry-run", "choose one of"},
        {"offsets reset --group g --to-datetime 2024-05-01T10:00:00 --dry-run",
         "expected YYYY-MM-DDTHH:mm:SS.sss"},
        {"offsets reset --group g --by-duration 10m --dry-run", "ISO-8601 duration"},
        {"offsets reset --group g --to-offset ten --dry-run", "bad number"},
        {"offsets reset --group g --topic t --all-topics --to-earliest --dry-run", "exclude"},
        {"offsets rewind --group g", "unknown command"},
        {"topics drop", "unknown command"},
    };
    for (size_t i = 0; i < sizeof(usage) / sizeof(usage[0]); i++) {
        assert_int_equal(sluice(out, sizeof(out), true, usage[i].args), 2);
        if (!strstr(out, usage[i].says))
            fail_msg("`sluice %s` should say \"%s\"", usage[i].args, usage[i].says);
    }
}

int main(int argc, char **argv)
{
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_time),      cmocka_unit_test(test_position),
        cmocka_unit_test(test_refuse),    cmocka_unit_test(test_topics),
        cmocka_unit_test(test_devbroker),
    };
    if (argc < 2)
        return cmocka_run_group_tests(all, setup, teardown);
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (strcmp(all[i].name + strlen("test_"), argv[1]) == 0) {
            const struct CMUnitTest one[] = {all[i]};
            return cmocka_run_group_tests(one, setup, teardown);
        }
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
}
