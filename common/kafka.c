/*
 * Kafka client helpers, see kafka.h: configuration with our defaults and the user's
 * pass-through properties, consumers with rebalance handling, and the offset tracker.
 */
#include "common/kafka.h"
#include "common/err.h"
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const sl_kafka_pipeline_topics[] = {SL_TOPIC_EVENTS, SL_TOPIC_DELIVERY, SL_TOPIC_FAILED,
                                                SL_TOPIC_WAREHOUSE, NULL};
_Static_assert(sizeof(sl_kafka_pipeline_topics) / sizeof(sl_kafka_pipeline_topics[0]) ==
                   SL_KAFKA_N_PIPELINE_TOPICS + 1,
               "SL_KAFKA_N_PIPELINE_TOPICS counts sl_kafka_pipeline_topics");

const sl_kafka_group_def_t sl_kafka_pipeline_groups[] = {
    {SL_GROUP_PROCESSOR, SL_TOPIC_EVENTS},    /* processor/processor.c */
    {SL_GROUP_ROUTER, SL_TOPIC_DELIVERY},     /* router/router.c */
    {SL_GROUP_WAREHOUSE, SL_TOPIC_WAREHOUSE}, /* warehouse/warehouse.c */
    {SL_GROUP_FAILED, SL_TOPIC_FAILED},       /* processor/failed.c */
    {NULL, NULL}};

/* The bootstrap list, for error messages from librdkafka's threads. */
static char bootstrap[512];

char *sl_kafka_topic(const sl_conf_t *conf, const char *suffix)
{
    return sl_asprintf("%s%s", sl_conf_str(conf, "kafka.topic_prefix"), suffix);
}

void sl_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    sl_log_level_t l = level <= 3   ? SL_LOG_ERROR
                       : level == 4 ? SL_LOG_WARN
                       : level <= 6 ? SL_LOG_INFO
                                    : SL_LOG_DEBUG;
    sl_log(l, "kafka", "%s: %s: %s", rd_kafka_name(rk), fac, buf);
}

/*
 * Whether the brokers can be reached: the health check SL_KAFKA_HEALTH_BROKERS. librdkafka says
 * when a handle has lost every broker (or can't resolve, authenticate, ...) but never when it
 * has one again, and a role with no traffic (an idle router, a warehouse between batches, a
 * gateway nobody calls) has nothing else that would say so. So the first such error starts a
 * prober thread; each error asks it to check, and it asks the cluster for its metadata every
 * second, on a handle of its own, until the cluster answers, then marks the check healthy.
 */
static pthread_mutex_t probe_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t probe_cond = PTHREAD_COND_INITIALIZER;
static rd_kafka_conf_t *probe_conf; /* bootstrap and the user's properties, from the latest conf */
static bool probe_wanted, probe_started;

static void probe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    sl_debug("kafka", "reachability probe: %s: %s", fac, buf);
}

/* Until the cluster answers: 1 s between tries, each waiting up to 5 s. */
static void probe_until_reached(void)
{
    pthread_mutex_lock(&probe_mu);
    rd_kafka_conf_t *c = probe_conf ? rd_kafka_conf_dup(probe_conf) : NULL;
    pthread_mutex_unlock(&probe_mu);
    char e[512];
    rd_kafka_t *rk = c ? rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof(e)) : NULL;
    if (!rk) {
        if (c)
            rd_kafka_conf_destroy(c);
        sl_warn("kafka", "could not start the reachability probe: %s", c ? e : "no config");
        return;
    }
    for (;;) {
        const rd_kafka_metadata_t *md = NULL;
        bool ok = rd_kafka_metadata(rk, 0, NULL, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
                  md->broker_cnt > 0;
        if (md)
            rd_kafka_metadata_destroy(md);
        if (ok)
            break;
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    rd_kafka_destroy(rk);
}

static void *probe_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&probe_mu);
    for (;;) {
        while (!probe_wanted)
            pthread_cond_wait(&probe_cond, &probe_mu);
        probe_wanted = false;
        pthread_mutex_unlock(&probe_mu);
        probe_until_reached();
        pthread_mutex_lock(&probe_mu);
        if (!probe_wanted) /* no newer error while it probed */
            sl_health_set(SL_KAFKA_HEALTH_BROKERS, true, NULL);
    }
    return NULL;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__RESOLVE ||
        err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL) {
        pthread_mutex_lock(&probe_mu);
        sl_health_set(SL_KAFKA_HEALTH_BROKERS, false,
                      "could not reach kafka at \"%s\": %s; check SLUICE_KAFKA_BROKERS (and the "
                      "security settings) and that the brokers are up",
                      bootstrap, reason);
        probe_wanted = true;
        pthread_cond_signal(&probe_cond);
        if (!probe_started) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            probe_started = pthread_create(&t, &attr, probe_main, NULL) == 0;
            pthread_attr_destroy(&attr);
            if (!probe_started)
                sl_warn("kafka", "could not start the reachability probe: /health stays "
                                 "unhealthy until the role restarts");
        }
        pthread_mutex_unlock(&probe_mu);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__TRANSPORT)
        sl_debug("kafka", "%s: %s", rd_kafka_name(rk), reason);
    else
        sl_warn("kafka", "%s: %s", rd_kafka_name(rk), reason);
}

typedef struct prop_ctx {
    rd_kafka_conf_t *kconf;
    char *errstr;
    size_t errstr_size;
    int err;
} prop_ctx_t;

static void apply_prop(const char *name, const char *value, void *opaque)
{
    prop_ctx_t *c = opaque;
    if (c->err)
        return;
    char e[512];
    if (rd_kafka_conf_set(c->kconf, name, value, e, sizeof(e)) != RD_KAFKA_CONF_OK)
        c->err = sl_err_set(c->errstr, c->errstr_size, SL_ERR_INVALID,
                            "invalid kafka property %s=\"%s\": %s", name, value, e);
}

rd_kafka_conf_t *sl_kafka_conf_new(const sl_conf_t *conf, sl_kafka_role_t role,
                                   const char *group_id, char *errstr, size_t errstr_size)
{
    const char *brokers = sl_conf_str(conf, "kafka.brokers");
    if (!*brokers) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "kafka.brokers is empty: set SLUICE_KAFKA_BROKERS to your cluster's bootstrap "
                   "servers, or run `sluice all` to use the embedded dev broker");
        return NULL;
    }
    snprintf(bootstrap, sizeof(bootstrap), "%s", brokers);
    rd_kafka_conf_t *kconf = rd_kafka_conf_new();
    static const char *const producer_defaults[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"partitioner", "murmur2_random"},
        {"linger.ms", "5"},
    };
    static const char *const consumer_defaults[][2] = {
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        {"isolation.level", "read_committed"},
        /* An event crosses two consumers on its way: don't let each fetch idle for 500 ms. */
        {"fetch.wait.max.ms", "100"},
        /* See topics created after the subscription (e.g. auto-created) within seconds. */
        {"topic.metadata.refresh.interval.ms", "10000"},
        /* Pre-fetch at most 32 MB (librdkafka: 64 MB): a consumer that falls behind holds no
         * more than that in memory. librdkafka 2.0.2 fetches a partition whose queue was full
         * only up to a second later, so the queue's size caps the speed of a consumer without
         * a nudger (below; the router's batched delivery without one: 20,000 events/s with
         * 16 MB, 35,000 with 32, 45,000 with 64). The processor, router and warehouse have
         * one; the processor still went 10% faster with 32 MB than with 16. */
        {"queued.max.messages.kbytes", "32768"},
    };
    prop_ctx_t c = {kconf, errstr, errstr_size, 0};
    apply_prop("bootstrap.servers", brokers, &c);
    apply_prop("client.id", "sluice", &c);
    if (role == SL_KAFKA_PRODUCER) {
        for (size_t i = 0; i < sizeof(producer_defaults) / sizeof(producer_defaults[0]); i++)
            apply_prop(producer_defaults[i][0], producer_defaults[i][1], &c);
    } else {
        for (size_t i = 0; i < sizeof(consumer_defaults) / sizeof(consumer_defaults[0]); i++)
            apply_prop(consumer_defaults[i][0], consumer_defaults[i][1], &c);
        if (group_id)
            apply_prop("group.id", group_id, &c);
        /* The router keeps up to router.memory_jobs jobs of each destination besides: half
         * the pre-fetch kept it within 128 MB under load, and its nudger its speed. */
        char *router_group = sl_kafka_topic(conf, SL_GROUP_ROUTER); /* as the router names it */
        if (group_id && strcmp(group_id, router_group) == 0)
            apply_prop("queued.max.messages.kbytes", "16384", &c);
        free(router_group);
    }
    sl_conf_kafka_props_foreach(conf, apply_prop, &c);
    if (c.err) {
        rd_kafka_conf_destroy(kconf);
        return NULL;
    }
    /* The prober's: how to reach and authenticate, nothing role-specific. */
    rd_kafka_conf_t *pconf = rd_kafka_conf_new();
    char perr[256]; /* the same properties were just accepted: nothing to report */
    prop_ctx_t pc = {pconf, perr, sizeof(perr), 0};
    apply_prop("bootstrap.servers", brokers, &pc);
    apply_prop("client.id", "sluice-probe", &pc);
    sl_conf_kafka_props_foreach(conf, apply_prop, &pc);
    rd_kafka_conf_set_log_cb(pconf, probe_log_cb);
    pthread_mutex_lock(&probe_mu);
    if (probe_conf)
        rd_kafka_conf_destroy(probe_conf);
    probe_conf = pconf;
    pthread_mutex_unlock(&probe_mu);
    rd_kafka_conf_set_log_cb(kconf, sl_kafka_log_cb);
    rd_kafka_conf_set_error_cb(kconf, error_cb);
    return kconf;
}

char *sl_kafka_group_topic(const sl_conf_t *conf, const char *group)
{
    static const char *const groups[][2] = {
        {SL_GROUP_PROCESSOR, SL_TOPIC_EVENTS},
        {SL_GROUP_ROUTER, SL_TOPIC_DELIVERY},
        {SL_GROUP_WAREHOUSE, SL_TOPIC_WAREHOUSE},
        {SL_GROUP_FAILED, SL_TOPIC_FAILED},
    };
    const char *prefix = sl_conf_str(conf, "kafka.topic_prefix");
    size_t plen = strlen(prefix);
    if (strncmp(group, prefix, plen) != 0)
        return NULL;
    for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
        if (strcmp(group + plen, groups[i][0]) == 0)
            return sl_kafka_topic(conf, groups[i][1]);
    return NULL;
}

rd_kafka_t *sl_kafka_admin_new(const sl_conf_t *conf, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, NULL, errstr, errstr_size);
    if (!kconf)
        return NULL;
    /* Offsets as Kafka's tools see them: ListOffsets answers the high watermark. */
    rd_kafka_conf_set(kconf, "isolation.level", "read_uncommitted", NULL, 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
    if (!rk)
        rd_kafka_conf_destroy(kconf);
    return rk;
}

rd_kafka_t *sl_kafka_group_reader_new(const sl_conf_t *conf, const char *group,
                                      const char *client_id, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, errstr, errstr_size);
    if (!kconf)
        return NULL;
    rd_kafka_conf_set(kconf, "client.id", client_id, NULL, 0);
    rd_kafka_conf_set(kconf, "enable.auto.commit", "false", NULL, 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
    if (!rk)
        rd_kafka_conf_destroy(kconf);
    return rk;
}

void sl_kafka_group_reader_destroy(rd_kafka_t *rk)
{
    if (rk) /* it never joined: nothing to leave */
        rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

rd_kafka_AdminOptions_t *sl_kafka_admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op)
{
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, op);
    rd_kafka_AdminOptions_set_request_timeout(opts, SL_KAFKA_ADMIN_TIMEOUT_MS, NULL, 0);
    if (op == RD_KAFKA_ADMIN_OP_CREATETOPICS)
        rd_kafka_AdminOptions_set_operation_timeout(opts, SL_KAFKA_ADMIN_TIMEOUT_MS, NULL, 0);
    return opts;
}

rd_kafka_event_t *sl_kafka_admin_wait(rd_kafka_queue_t *q, const char *what, char *errstr,
                                      size_t errstr_size)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, SL_KAFKA_ADMIN_TIMEOUT_MS + 5000);
    if (!ev) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "no answer to %s within %d s", what,
                   SL_KAFKA_ADMIN_TIMEOUT_MS / 1000 + 5);
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "%s: %s", what,
                   rd_kafka_event_error_string(ev));
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    return ev;
}

void sl_kafka_topic_status_clear(sl_kafka_topic_status_t *st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(st[i].name);
        free(st[i].errstr);
        memset(&st[i], 0, sizeof(st[i]));
    }
}

/* Fills the partition count and replication factor of the topics of st that md holds. */
static void topic_shapes(const rd_kafka_metadata_t *md, sl_kafka_topic_status_t *st, size_t n)
{
    for (int t = 0; t < md->topic_cnt; t++) {
        const rd_kafka_metadata_topic_t *mt = &md->topics[t];
        if (mt->err || mt->partition_cnt < 1)
            continue;
        for (size_t i = 0; i < n; i++)
            if (strcmp(st[i].name, mt->topic) == 0) {
                st[i].partitions = mt->partition_cnt;
                st[i].replication_factor = mt->partitions[0].replica_cnt;
            }
    }
}

int sl_kafka_is_dev_broker(rd_kafka_t *rk, char *errstr, size_t errstr_size)
{
    const rd_kafka_metadata_t *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, SL_KAFKA_ADMIN_TIMEOUT_MS);
    if (err)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not get the cluster's metadata from \"%s\": %s", bootstrap,
                          rd_kafka_err2str(err));
    rd_kafka_metadata_destroy(md);
    /* The metadata carried the cluster id: known now (a cluster that gave none is not ours). */
    return sl_kafka_cluster_is_dev(rk, SL_KAFKA_ADMIN_TIMEOUT_MS) == 1;
}

int sl_kafka_cluster_is_dev(rd_kafka_t *rk, int timeout_ms)
{
    char *id = rd_kafka_clusterid(rk, timeout_ms);
    if (!id)
        return -1;
    int dev = strncmp(id, "mockCluster", 11) == 0;
    rd_kafka_mem_free(rk, id);
    return dev;
}

/* Whether the broker behind probe (its only connection) reports each topic of st that was
 * just created with all its partitions, each with a leader. */
static bool broker_knows(rd_kafka_t *probe, int32_t id, const sl_kafka_topic_status_t *st, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (st[i].err != RD_KAFKA_RESP_ERR_NO_ERROR)
            continue;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(probe, st[i].name, NULL);
        const rd_kafka_metadata_t *md = NULL;
        bool ok = rkt && rd_kafka_metadata(probe, 0, rkt, &md, 2000) == 0 &&
                  (md->orig_broker_id == id || md->orig_broker_id < 0) && md->topic_cnt == 1 &&
                  !md->topics[0].err && md->topics[0].partition_cnt > 0 &&
                  (st[i].partitions < 1 || md->topics[0].partition_cnt == st[i].partitions);
        for (int p = 0; ok && p < md->topics[0].partition_cnt; p++)
            ok = md->topics[0].partitions[p].leader >= 0;
        if (md)
            rd_kafka_metadata_destroy(md);
        if (rkt)
            rd_kafka_topic_destroy(rkt);
        if (!ok)
            return false;
    }
    return true;
}

/*
 * CreateTopics answers once the controller has the topics; each broker learns of them a moment
 * later. A client that asks a broker which has not yet is told the topic doesn't exist:
 * librdkafka 2.0.2's producer then fails the messages it had already partitioned ("Unknown
 * partition"), and a group leader hands out no partitions. So after creating topics, ask each
 * broker, through a client whose only connection is that broker, until it reports every new
 * topic with a leader for each partition (10 s at most in all; then go on regardless).
 */
static void wait_propagated(const sl_conf_t *conf, rd_kafka_t *rk,
                            const sl_kafka_topic_status_t *st, size_t n)
{
    const rd_kafka_metadata_t *md;
    if (rd_kafka_metadata(rk, 0, NULL, &md, SL_KAFKA_ADMIN_TIMEOUT_MS) != 0)
        return;
    int nb = md->broker_cnt;
    char(*addr)[300] = sl_calloc((size_t)nb + 1, sizeof(*addr));
    int32_t *ids = sl_calloc((size_t)nb + 1, sizeof(*ids));
    for (int b = 0; b < nb; b++) {
        snprintf(addr[b], sizeof(addr[b]), "%s:%d", md->brokers[b].host, md->brokers[b].port);
        ids[b] = md->brokers[b].id;
    }
    rd_kafka_metadata_destroy(md);
    int64_t deadline = sl_time_mono_ms() + 10000;
    for (int b = 0; b < nb; b++) {
        char e[256];
        rd_kafka_conf_t *kc = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, NULL, e, sizeof(e));
        if (!kc)
            break;
        rd_kafka_conf_set(kc, "bootstrap.servers", addr[b], NULL, 0);
        rd_kafka_conf_set(kc, "allow.auto.create.topics", "false", NULL, 0);
        rd_kafka_t *probe = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof(e));
        if (!probe) {
            rd_kafka_conf_destroy(kc);
            break;
        }
        bool known;
        while (!(known = broker_knows(probe, ids[b], st, n)) && sl_time_mono_ms() < deadline) {
            struct timespec pause = {0, 50 * 1000000L};
            nanosleep(&pause, NULL);
        }
        rd_kafka_destroy(probe);
        if (!known) {
            sl_warn("kafka", "broker %s does not show the new topics after 10 s; going on",
                    addr[b]);
            break;
        }
    }
    free(addr);
    free(ids);
}

int sl_kafka_create_topics(const sl_conf_t *conf, sl_kafka_topic_status_t *st, char *errstr,
                           size_t errstr_size)
{
    const size_t n = SL_KAFKA_N_PIPELINE_TOPICS;
    int partitions = (int)sl_conf_int(conf, "kafka.partitions");
    int rf = (int)sl_conf_int(conf, "kafka.replication_factor");
    int64_t retention = sl_conf_duration_ms(conf, "kafka.retention");
    memset(st, 0, n * sizeof(*st));
    rd_kafka_t *rk = sl_kafka_admin_new(conf, errstr, errstr_size);
    if (!rk)
        return SL_ERR_INVALID;
    int rc = 0;
    rd_kafka_NewTopic_t *nt[SL_KAFKA_N_PIPELINE_TOPICS] = {0};
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts = sl_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_event_t *ev = NULL;
    const rd_kafka_metadata_t *md = NULL;
    int dev = sl_kafka_is_dev_broker(rk, errstr, errstr_size);
    if (dev) {
        rc = dev < 0
                 ? dev
                 : sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "%s", SL_KAFKA_DEV_NO_TOPICS);
        goto out;
    }
    char retention_text[32];
    snprintf(retention_text, sizeof(retention_text), "%lld", (long long)retention);
    for (size_t i = 0; i < n; i++) {
        st[i].name = sl_kafka_topic(conf, sl_kafka_pipeline_topics[i]);
        st[i].partitions = st[i].replication_factor = -1;
        char e[256];
        nt[i] = rd_kafka_NewTopic_new(st[i].name, partitions, rf > 0 ? rf : -1, e, sizeof(e));
        if (!nt[i]) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "topic %s: %s", st[i].name, e);
            goto out;
        }
        if (retention > 0)
            rd_kafka_NewTopic_set_config(nt[i], "retention.ms", retention_text);
    }
    rd_kafka_CreateTopics(rk, nt, n, opts, q);
    ev = sl_kafka_admin_wait(q, "CreateTopics", errstr, errstr_size);
    if (!ev) {
        rc = SL_ERR_TRANSIENT;
        goto out;
    }
    size_t cnt;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    for (size_t r = 0; r < cnt; r++)
        for (size_t i = 0; i < n; i++) {
            if (strcmp(st[i].name, rd_kafka_topic_result_name(res[r])) != 0)
                continue;
            st[i].err = rd_kafka_topic_result_error(res[r]);
            if (st[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                st[i].partitions = partitions;
                st[i].replication_factor = rf > 0 ? rf : -1;
            } else if (st[i].err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                const char *m = rd_kafka_topic_result_error_string(res[r]);
                st[i].errstr = sl_strdup(m ? m : rd_kafka_err2str(st[i].err));
            }
        }
    for (size_t i = 0; i < n; i++)
        if (st[i].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            wait_propagated(conf, rk, st, n);
            break;
        }
    /* The shapes of the topics that existed, and of the new ones where the cluster chose. */
    if (rd_kafka_metadata(rk, 1, NULL, &md, SL_KAFKA_ADMIN_TIMEOUT_MS) == 0)
        topic_shapes(md, st, n);
out:
    if (md)
        rd_kafka_metadata_destroy(md);
    if (ev)
        rd_kafka_event_destroy(ev);
    for (size_t i = 0; i < n; i++)
        if (nt[i])
            rd_kafka_NewTopic_destroy(nt[i]);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
    if (rc)
        sl_kafka_topic_status_clear(st, n);
    return rc;
}

int sl_kafka_ensure_topics(const sl_conf_t *conf, char *errstr, size_t errstr_size)
{
    sl_kafka_topic_status_t st[SL_KAFKA_N_PIPELINE_TOPICS];
    int rc = sl_kafka_create_topics(conf, st, errstr, errstr_size);
    if (rc)
        return rc;
    for (size_t i = 0; i < SL_KAFKA_N_PIPELINE_TOPICS; i++) {
        if (st[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
            sl_info("kafka", "created topic %s (%d partitions)", st[i].name, st[i].partitions);
        else if (st[i].err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS && !rc)
            rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "could not create topic %s: %s",
                            st[i].name, st[i].errstr);
    }
    sl_kafka_topic_status_clear(st, SL_KAFKA_N_PIPELINE_TOPICS);
    return rc;
}

rd_kafka_t *sl_kafka_producer_new(const sl_conf_t *conf,
                                  void (*dr_msg_cb)(rd_kafka_t *rk, const rd_kafka_message_t *m,
                                                    void *opaque),
                                  void *opaque, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_PRODUCER, NULL, errstr, errstr_size);
    if (!kconf)
        return NULL;
    if (dr_msg_cb)
        rd_kafka_conf_set_dr_msg_cb(kconf, dr_msg_cb);
    rd_kafka_conf_set_opaque(kconf, opaque);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kconf, errstr, errstr_size);
    if (!rk)
        rd_kafka_conf_destroy(kconf);
    return rk;
}

typedef struct consumer_ctx {
    void (*revoke_cb)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *, void *);
    void (*assign_cb)(rd_kafka_t *, const rd_kafka_topic_partition_list_t *, void *);
    void *opaque;
    int empty_rejoins; /* rejoins after an empty assignment since the last non-empty one */
} consumer_ctx_t;

/* How often a member that was assigned nothing rejoins before accepting it (see below). */
#define EMPTY_REJOINS_MAX 3

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    consumer_ctx_t *c = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        sl_info("kafka", "%s: assigned %d partitions", rd_kafka_name(rk), parts->cnt);
        rd_kafka_assign(rk, parts);
        if (c->assign_cb)
            c->assign_cb(rk, parts, c->opaque);
        if (parts->cnt > 0) {
            c->empty_rejoins = 0;
        } else if (c->empty_rejoins < EMPTY_REJOINS_MAX) {
            /* librdkafka 2.0.2's group leader assigns from a fresh metadata request to the
             * group coordinator. When a topic was just created, that broker may not know it
             * yet: every member then gets nothing, and as the members' own view of the topic
             * doesn't change afterwards, nobody ever rejoins. So a member that was assigned
             * nothing subscribes again after 0.5, 1 and 2 s. A member that rightly has nothing
             * (more members than partitions) costs its group three extra rebalances. */
            long pause_ms = 500L << c->empty_rejoins;
            c->empty_rejoins++;
            sl_info("kafka",
                    "%s: rejoining in %ld ms in case the leader's metadata was stale "
                    "(%d of %d)",
                    rd_kafka_name(rk), pause_ms, c->empty_rejoins, EMPTY_REJOINS_MAX);
            struct timespec pause = {pause_ms / 1000, (pause_ms % 1000) * 1000000L};
            nanosleep(&pause, NULL);
            rd_kafka_topic_partition_list_t *subs = NULL;
            if (!rd_kafka_subscription(rk, &subs) && subs) {
                rd_kafka_resp_err_t err2 = rd_kafka_subscribe(rk, subs);
                if (err2)
                    sl_warn("kafka", "%s: could not subscribe again: %s", rd_kafka_name(rk),
                            rd_kafka_err2str(err2));
                rd_kafka_topic_partition_list_destroy(subs);
            }
        }
    } else {
        sl_info("kafka", "%s: %d partitions revoked", rd_kafka_name(rk), parts->cnt);
        if (c->revoke_cb)
            c->revoke_cb(rk, parts, c->opaque);
        rd_kafka_assign(rk, NULL);
    }
}

rd_kafka_t *sl_kafka_consumer_new(
    const sl_conf_t *conf, const char *group_id, const char *const *topics,
    void (*revoke_cb)(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque),
    void *opaque, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *kconf =
        sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group_id, errstr, errstr_size);
    if (!kconf)
        return NULL;
    consumer_ctx_t *c = sl_calloc(1, sizeof(*c));
    c->revoke_cb = revoke_cb;
    c->opaque = opaque;
    rd_kafka_conf_set_opaque(kconf, c);
    rd_kafka_conf_set_rebalance_cb(kconf, rebalance_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
    if (!rk) {
        rd_kafka_conf_destroy(kconf);
        free(c);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *subs = rd_kafka_topic_partition_list_new(4);
    for (const char *const *t = topics; *t; t++)
        rd_kafka_topic_partition_list_add(subs, *t, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (err) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "could not subscribe: %s",
                   rd_kafka_err2str(err));
        rd_kafka_destroy(rk);
        free(c);
        return NULL;
    }
    return rk;
}

void sl_kafka_consumer_on_assign(rd_kafka_t *rk,
                                 void (*assign_cb)(rd_kafka_t *rk,
                                                   const rd_kafka_topic_partition_list_t *parts,
                                                   void *opaque))
{
    consumer_ctx_t *c = rd_kafka_opaque(rk);
    c->assign_cb = assign_cb;
}

void sl_kafka_consumer_destroy(rd_kafka_t *rk)
{
    if (!rk)
        return;
    consumer_ctx_t *c = rd_kafka_opaque(rk);
    rd_kafka_destroy(rk);
    free(c);
}

/* --- offset tracker --- */

typedef struct part {
    char *topic;
    int32_t partition;
    int64_t *offs; /* ring buffer of tracked offsets, ascending */
    uint8_t *done;
    size_t head, len, cap;
    int64_t next;      /* offset after the contiguous done prefix, -1 if none yet */
    int64_t committed; /* last committed `next`, -1 if none */
} part_t;

struct sl_kafka_offsets {
    pthread_mutex_t lock;
    part_t **parts;
    size_t nparts;
    size_t pending;
};

sl_kafka_offsets_t *sl_kafka_offsets_new(void)
{
    sl_kafka_offsets_t *o = sl_calloc(1, sizeof(*o));
    pthread_mutex_init(&o->lock, NULL);
    return o;
}

static void part_free(part_t *p)
{
    free(p->topic);
    free(p->offs);
    free(p->done);
    free(p);
}

void sl_kafka_offsets_destroy(sl_kafka_offsets_t *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->nparts; i++)
        part_free(o->parts[i]);
    free(o->parts);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

static part_t *find_part(sl_kafka_offsets_t *o, const char *topic, int32_t partition, bool add)
{
    for (size_t i = 0; i < o->nparts; i++)
        if (o->parts[i]->partition == partition && strcmp(o->parts[i]->topic, topic) == 0)
            return o->parts[i];
    if (!add)
        return NULL;
    part_t *p = sl_calloc(1, sizeof(*p));
    p->topic = sl_strdup(topic);
    p->partition = partition;
    p->next = p->committed = -1;
    o->parts = sl_realloc(o->parts, (o->nparts + 1) * sizeof(*o->parts));
    o->parts[o->nparts++] = p;
    return p;
}

#define AT(p, i) (((p)->head + (i)) % (p)->cap)

void sl_kafka_offsets_track(sl_kafka_offsets_t *o, const char *topic, int32_t partition,
                            int64_t offset)
{
    pthread_mutex_lock(&o->lock);
    part_t *p = find_part(o, topic, partition, true);
    if (p->len == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        int64_t *offs = sl_malloc(cap * sizeof(*offs));
        uint8_t *done = sl_malloc(cap);
        for (size_t i = 0; i < p->len; i++) {
            offs[i] = p->offs[AT(p, i)];
            done[i] = p->done[AT(p, i)];
        }
        free(p->offs);
        free(p->done);
        p->offs = offs;
        p->done = done;
        p->head = 0;
        p->cap = cap;
    }
    p->offs[AT(p, p->len)] = offset;
    p->done[AT(p, p->len)] = 0;
    p->len++;
    o->pending++;
    pthread_mutex_unlock(&o->lock);
}

void sl_kafka_offsets_done(sl_kafka_offsets_t *o, const char *topic, int32_t partition,
                           int64_t offset)
{
    pthread_mutex_lock(&o->lock);
    part_t *p = find_part(o, topic, partition, false);
    if (!p) /* forgotten after a revoke: the new owner redoes it */
        goto out;
    size_t lo = 0, hi = p->len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->offs[AT(p, mid)] < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == p->len || p->offs[AT(p, lo)] != offset || p->done[AT(p, lo)])
        goto out;
    p->done[AT(p, lo)] = 1;
    o->pending--;
    while (p->len && p->done[p->head]) {
        p->next = p->offs[p->head] + 1;
        p->head = (p->head + 1) % p->cap;
        p->len--;
    }
out:
    pthread_mutex_unlock(&o->lock);
}

size_t sl_kafka_offsets_pending(sl_kafka_offsets_t *o)
{
    pthread_mutex_lock(&o->lock);
    size_t n = o->pending;
    pthread_mutex_unlock(&o->lock);
    return n;
}

/* With nothing pending on a partition, the consumer's position may be past p->next: the
 * transaction markers that follow a transactional producer's messages are never handed to the
 * application, and committing only "last message + 1" would leave a lag of 1 per partition
 * for ever (librdkafka issue #2539; Java consumers commit their position for the same
 * reason). Called with o->lock held, on the thread that polls. */
static void skip_markers(sl_kafka_offsets_t *o, rd_kafka_t *consumer)
{
    rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_new((int)o->nparts);
    for (size_t i = 0; i < o->nparts; i++)
        if (!o->parts[i]->len && o->parts[i]->next >= 0)
            rd_kafka_topic_partition_list_add(pos, o->parts[i]->topic, o->parts[i]->partition);
    if (pos->cnt && rd_kafka_position(consumer, pos) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < pos->cnt; i++) {
            part_t *p = find_part(o, pos->elems[i].topic, pos->elems[i].partition, false);
            if (p && !pos->elems[i].err && pos->elems[i].offset > p->next)
                p->next = pos->elems[i].offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(pos);
}

int sl_kafka_offsets_commit(sl_kafka_offsets_t *o, rd_kafka_t *consumer, bool sync)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    pthread_mutex_lock(&o->lock);
    skip_markers(o, consumer);
    for (size_t i = 0; i < o->nparts; i++) {
        part_t *p = o->parts[i];
        if (p->next > p->committed) {
            rd_kafka_topic_partition_list_add(list, p->topic, p->partition)->offset = p->next;
            p->committed = p->next;
        }
    }
    pthread_mutex_unlock(&o->lock);
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (list->cnt) {
        err = rd_kafka_commit(consumer, list, !sync);
        if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
            sl_warn("kafka", "could not commit offsets: %s", rd_kafka_err2str(err));
    }
    rd_kafka_topic_partition_list_destroy(list);
    return (int)err;
}

void sl_kafka_offsets_forget(sl_kafka_offsets_t *o, const rd_kafka_topic_partition_list_t *parts)
{
    pthread_mutex_lock(&o->lock);
    for (int i = 0; i < parts->cnt; i++) {
        for (size_t j = 0; j < o->nparts; j++) {
            part_t *p = o->parts[j];
            if (p->partition != parts->elems[i].partition ||
                strcmp(p->topic, parts->elems[i].topic) != 0)
                continue;
            for (size_t k = 0; k < p->len; k++)
                if (!p->done[AT(p, k)])
                    o->pending--;
            part_free(p);
            o->parts[j] = o->parts[--o->nparts];
            break;
        }
    }
    pthread_mutex_unlock(&o->lock);
}

/* --- the fetch nudger (see kafka.h) --- */

struct sl_kafka_nudger {
    rd_kafka_t *rk;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool kicked, stop;
    size_t half, taken; /* the consuming thread's: half the queue's bound, taken since a kick */
};

static void *nudger_main(void *arg)
{
    sl_kafka_nudger_t *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!n->kicked && !n->stop)
            pthread_cond_wait(&n->cond, &n->mu);
        if (n->stop)
            break;
        n->kicked = false;
        pthread_mutex_unlock(&n->mu);
        rd_kafka_topic_partition_list_t *parts = NULL;
        if (!rd_kafka_assignment(n->rk, &parts) && parts && parts->cnt) {
            for (int i = 0; i < parts->cnt; i++)
                parts->elems[i].offset = RD_KAFKA_OFFSET_END; /* as a time: the latest */
            rd_kafka_offsets_for_times(n->rk, parts, 1000);
        }
        if (parts)
            rd_kafka_topic_partition_list_destroy(parts);
        struct timespec ts = {0, SL_KAFKA_NUDGE_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

sl_kafka_nudger_t *sl_kafka_nudger_start(rd_kafka_t *consumer)
{
    sl_kafka_nudger_t *n = sl_calloc(1, sizeof(*n));
    n->rk = consumer;
    n->half = sl_kafka_queue_bytes(consumer) / 2;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->cond, NULL);
    if (pthread_create(&n->thread, NULL, nudger_main, n) != 0) {
        sl_warn("kafka", "could not start the fetch nudger: the consumer refills its queue "
                         "at librdkafka's own pace");
        pthread_cond_destroy(&n->cond);
        pthread_mutex_destroy(&n->mu);
        free(n);
        return NULL;
    }
    return n;
}

void sl_kafka_nudger_took(sl_kafka_nudger_t *n, size_t bytes)
{
    if (!n || (n->taken += bytes) < n->half)
        return;
    n->taken = 0;
    pthread_mutex_lock(&n->mu);
    if (!n->kicked) {
        n->kicked = true;
        pthread_cond_signal(&n->cond);
    }
    pthread_mutex_unlock(&n->mu);
}

void sl_kafka_nudger_stop(sl_kafka_nudger_t *n)
{
    if (!n)
        return;
    pthread_mutex_lock(&n->mu);
    n->stop = true;
    pthread_cond_signal(&n->cond);
    pthread_mutex_unlock(&n->mu);
    pthread_join(n->thread, NULL);
    pthread_cond_destroy(&n->cond);
    pthread_mutex_destroy(&n->mu);
    free(n);
}

size_t sl_kafka_queue_bytes(rd_kafka_t *consumer)
{
    char v[32];
    size_t n = sizeof(v);
    long kb = 0;
    if (rd_kafka_conf_get(rd_kafka_conf(consumer), "queued.max.messages.kbytes", v, &n) ==
        RD_KAFKA_CONF_OK)
        kb = strtol(v, NULL, 10);
    return (size_t)(kb > 0 ? kb : 65536) * 1024;
}
