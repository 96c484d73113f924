/*
 * Kafka client helpers, see kafka.h: configuration with our defaults and the user's
 * pass-through properties, consumers with rebalance handling, and the offset tracker.
 */
#include "common/kafka.h"
#include "common/err.h"
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const sl_kafka_pipeline_topics[] = {SL_TOPIC_EVENTS, SL_TOPIC_DELIVERY, SL_TOPIC_FAILED,
                                                SL_TOPIC_WAREHOUSE, NULL};

const sl_kafka_group_def_t sl_kafka_pipeline_groups[] = {
    {"processor", SL_TOPIC_EVENTS},       /* processor/processor.c */
    {"router", SL_TOPIC_DELIVERY},        /* router/router.c */
    {"warehouse", SL_TOPIC_WAREHOUSE},    /* warehouse/warehouse.c */
    {"failed-recorder", SL_TOPIC_FAILED}, /* processor/failed.c */
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

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__RESOLVE ||
        err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL) {
        sl_health_set("kafka", false,
                      "could not reach kafka at \"%s\": %s; check SLUICE_KAFKA_BROKERS (and the "
                      "security settings) and that the brokers are up",
                      bootstrap, reason);
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
    }
    sl_conf_kafka_props_foreach(conf, apply_prop, &c);
    if (c.err) {
        rd_kafka_conf_destroy(kconf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(kconf, sl_kafka_log_cb);
    rd_kafka_conf_set_error_cb(kconf, error_cb);
    return kconf;
}

int sl_kafka_ensure_topics(const sl_conf_t *conf, char *errstr, size_t errstr_size)
{
    rd_kafka_t *rk = sl_kafka_producer_new(conf, NULL, NULL, errstr, errstr_size);
    if (!rk)
        return SL_ERR_INVALID;
    int n = 0, rc = 0;
    while (sl_kafka_pipeline_topics[n])
        n++;
    rd_kafka_NewTopic_t **nt = sl_calloc((size_t)n, sizeof(*nt));
    char **names = sl_calloc((size_t)n, sizeof(*names));
    int partitions = (int)sl_conf_int(conf, "kafka.partitions");
    for (int i = 0; i < n; i++) {
        names[i] = sl_kafka_topic(conf, sl_kafka_pipeline_topics[i]);
        nt[i] = rd_kafka_NewTopic_new(names[i], partitions, -1, NULL, 0);
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, 10000, NULL, 0);
    rd_kafka_CreateTopics(rk, nt, (size_t)n, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    if (!ev) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                        "no answer to CreateTopics within 15 s");
    } else if (rd_kafka_event_error(ev)) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "CreateTopics: %s",
                        rd_kafka_event_error_string(ev));
    } else {
        size_t cnt;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(res[i]);
            if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
                sl_info("kafka", "created topic %s (%d partitions)",
                        rd_kafka_topic_result_name(res[i]), partitions);
            else if (e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS && !rc)
                rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                                "could not create topic %s: %s", rd_kafka_topic_result_name(res[i]),
                                rd_kafka_topic_result_error_string(res[i])
                                    ? rd_kafka_topic_result_error_string(res[i])
                                    : rd_kafka_err2str(e));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_queue_destroy(q);
    for (int i = 0; i < n; i++) {
        rd_kafka_NewTopic_destroy(nt[i]);
        free(names[i]);
    }
    free(nt);
    free(names);
    rd_kafka_destroy(rk);
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
} consumer_ctx_t;

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    consumer_ctx_t *c = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        sl_info("kafka", "%s: assigned %d partitions", rd_kafka_name(rk), parts->cnt);
        rd_kafka_assign(rk, parts);
        if (c->assign_cb)
            c->assign_cb(rk, parts, c->opaque);
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
