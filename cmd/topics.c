/*
 * `sluice topics create` and `sluice topics list`: the pipeline's topics on a real cluster,
 * made with the Admin API (partitions, replication factor, retention from the kafka.* options)
 * and described from the cluster's metadata and topic configs.
 */
#include "cmd/cmd.h"
#include "common/err.h"
#include "common/kafka.h"
#include "common/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: sluice topics create\n"
    "       sluice topics list\n\n"
    "The pipeline's topics are <kafka.topic_prefix>events, delivery, failed and warehouse.\n"
    "`create` makes those that are missing on the cluster at kafka.brokers, with\n"
    "kafka.partitions partitions, kafka.replication_factor replicas and kafka.retention\n"
    "(0: the cluster's defaults), and says for each whether it was created or already\n"
    "existed; an existing topic is left as it is. `list` shows each one's partitions,\n"
    "replication factor and retention.ms, or that it is missing. Roles create missing topics\n"
    "when they start (kafka.create_topics); this command lets an operator do it beforehand.\n"
    "The embedded dev broker can't create topics and needs not: it makes them itself.\n"
    "Exits 0 when every topic exists afterwards, 1 otherwise.\n";

#define ROW_FMT "%-30s %-15s %-11s %-19s %s\n"

/* Fills retention[i] with the retention.ms of topic names[i] ("-" when unknown). Returns 0 or
 * an error in errstr. */
static int describe_retention(rd_kafka_t *rk, char **names, size_t n, char retention[][24],
                              char *errstr, size_t errstr_size)
{
    for (size_t i = 0; i < n; i++)
        snprintf(retention[i], sizeof(retention[i]), "-");
    rd_kafka_ConfigResource_t **res = sl_calloc(n, sizeof(*res));
    size_t nres = 0;
    for (size_t i = 0; i < n; i++)
        if (names[i])
            res[nres++] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, names[i]);
    int rc = 0;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts = sl_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    rd_kafka_event_t *ev = NULL;
    if (!nres)
        goto out;
    rd_kafka_DescribeConfigs(rk, res, nres, opts, q);
    ev = sl_kafka_admin_wait(q, "DescribeConfigs", errstr, errstr_size);
    if (!ev) {
        rc = SL_ERR_TRANSIENT;
        goto out;
    }
    size_t cnt;
    const rd_kafka_ConfigResource_t **got =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    for (size_t r = 0; r < cnt; r++) {
        if (rd_kafka_ConfigResource_error(got[r]))
            continue;
        size_t i = 0;
        while (i < n && (!names[i] || strcmp(names[i], rd_kafka_ConfigResource_name(got[r])) != 0))
            i++;
        size_t nent;
        const rd_kafka_ConfigEntry_t **ent = rd_kafka_ConfigResource_configs(got[r], &nent);
        for (size_t e = 0; i < n && e < nent; e++)
            if (strcmp(rd_kafka_ConfigEntry_name(ent[e]), "retention.ms") == 0 &&
                rd_kafka_ConfigEntry_value(ent[e]))
                snprintf(retention[i], sizeof(retention[i]), "%s",
                         rd_kafka_ConfigEntry_value(ent[e]));
    }
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    rd_kafka_ConfigResource_destroy_array(res, nres);
    free(res);
    return rc;
}

/* Prints the table of st (statuses from create, or from the metadata for list) with each
 * topic's retention.ms, and notes where an existing topic differs from the options. Returns
 * the exit code. */
static int print_topics(const sl_conf_t *conf, rd_kafka_t *rk, sl_kafka_topic_status_t *st,
                        bool created_view, bool dev)
{
    const size_t n = SL_KAFKA_N_PIPELINE_TOPICS;
    char *names[SL_KAFKA_N_PIPELINE_TOPICS];
    char retention[SL_KAFKA_N_PIPELINE_TOPICS][24];
    for (size_t i = 0; i < n; i++)
        names[i] = st[i].partitions > 0 ? st[i].name : NULL;
    char err[512];
    if (dev) /* no DescribeConfigs */
        memset(names, 0, sizeof(names));
    if (describe_retention(rk, names, n, retention, err, sizeof(err)) != 0)
        fprintf(stderr, "sluice topics: could not read the topics' retention.ms: %s\n", err);
    int64_t want_retention = sl_conf_duration_ms(conf, "kafka.retention");
    for (size_t i = 0; i < n; i++) /* a new topic's config may not be visible yet */
        if (created_view && st[i].err == RD_KAFKA_RESP_ERR_NO_ERROR && want_retention > 0 &&
            strcmp(retention[i], "-") == 0)
            snprintf(retention[i], sizeof(retention[i]), "%lld", (long long)want_retention);
    int want_p = (int)sl_conf_int(conf, "kafka.partitions");
    int want_rf = (int)sl_conf_int(conf, "kafka.replication_factor");
    int rc = 0;
    printf(ROW_FMT, "TOPIC", "STATUS", "PARTITIONS", "REPLICATION-FACTOR", "RETENTION-MS");
    for (size_t i = 0; i < n; i++) {
        const char *status =
            st[i].err == RD_KAFKA_RESP_ERR_NO_ERROR ? (created_view ? "created" : "exists")
            : st[i].err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS  ? "already exists"
            : st[i].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? "missing"
                                                                   : "failed";
        char p[16] = "-", rf[16] = "-";
        if (st[i].partitions > 0)
            snprintf(p, sizeof(p), "%d", st[i].partitions);
        if (st[i].replication_factor > 0)
            snprintf(rf, sizeof(rf), "%d", st[i].replication_factor);
        printf(ROW_FMT, st[i].name, status, p, rf, retention[i]);
        if (st[i].partitions < 1)
            rc = 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (st[i].errstr)
            printf("%s: could not create it: %s\n", st[i].name, st[i].errstr);
        else if (st[i].partitions < 1 && !created_view)
            printf("%s: missing; `sluice topics create` makes it\n", st[i].name);
        if (!created_view)
            continue;
        if (st[i].partitions > 0 && st[i].partitions != want_p)
            printf("%s: %d partitions, not kafka.partitions (%d): left as it is (more "
                   "partitions would move users to other partitions, out of order)\n",
                   st[i].name, st[i].partitions, want_p);
        if (want_rf > 0 && st[i].replication_factor > 0 && st[i].replication_factor != want_rf)
            printf("%s: replication factor %d, not kafka.replication_factor (%d): left as it "
                   "is\n",
                   st[i].name, st[i].replication_factor, want_rf);
    }
    return rc;
}

static int create(const sl_conf_t *conf, rd_kafka_t *rk)
{
    sl_kafka_topic_status_t st[SL_KAFKA_N_PIPELINE_TOPICS];
    char err[1024];
    if (sl_kafka_create_topics(conf, st, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice topics create: %s\n", err);
        return 1;
    }
    int rc = print_topics(conf, rk, st, true, false);
    sl_kafka_topic_status_clear(st, SL_KAFKA_N_PIPELINE_TOPICS);
    return rc;
}

static int list(const sl_conf_t *conf, rd_kafka_t *rk)
{
    char err[1024];
    int dev = sl_kafka_is_dev_broker(rk, err, sizeof(err));
    if (dev < 0) {
        fprintf(stderr, "sluice topics list: %s\n", err);
        return 1;
    }
    const rd_kafka_metadata_t *md;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, SL_KAFKA_ADMIN_TIMEOUT_MS);
    if (e) {
        fprintf(stderr, "sluice topics list: could not get the cluster's metadata: %s\n",
                rd_kafka_err2str(e));
        return 1;
    }
    sl_kafka_topic_status_t st[SL_KAFKA_N_PIPELINE_TOPICS] = {0};
    for (size_t i = 0; i < SL_KAFKA_N_PIPELINE_TOPICS; i++) {
        st[i].name = sl_kafka_topic(conf, sl_kafka_pipeline_topics[i]);
        st[i].err = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
        st[i].partitions = st[i].replication_factor = -1;
        for (int t = 0; t < md->topic_cnt; t++)
            if (strcmp(md->topics[t].topic, st[i].name) == 0 && !md->topics[t].err &&
                md->topics[t].partition_cnt > 0) {
                st[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
                st[i].partitions = md->topics[t].partition_cnt;
                st[i].replication_factor = md->topics[t].partitions[0].replica_cnt;
            }
    }
    rd_kafka_metadata_destroy(md);
    int rc = print_topics(conf, rk, st, false, dev);
    sl_kafka_topic_status_clear(st, SL_KAFKA_N_PIPELINE_TOPICS);
    return rc;
}

int cmd_topics(int argc, char **argv, const char *config_file)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "create") != 0 && strcmp(sub, "list") != 0) {
        fprintf(stderr, "sluice topics: unknown command \"%s\"; see --help\n", sub);
        return 2;
    }
    if (argc > 2) {
        fprintf(stderr, "sluice topics %s: bad argument \"%s\"; see --help\n", sub, argv[2]);
        return 2;
    }
    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    char err[512];
    rd_kafka_t *rk = sl_kafka_admin_new(conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "sluice topics %s: %s\n", sub, err);
        sl_conf_destroy(conf);
        return 2;
    }
    rc = strcmp(sub, "create") == 0 ? create(conf, rk) : list(conf, rk);
    rd_kafka_destroy(rk);
    sl_conf_destroy(conf);
    return rc;
}
