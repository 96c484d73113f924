/*
 * Replay of the events topic, see replay.h. The consumer is assigned its partitions and never
 * subscribes, so no consumer group is joined and the live processor's assignment is not
 * touched; its group.id only names where the replay's offsets are committed.
 */
#include "processor/replay.h"
#include "common/err.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "processor/processor.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RP_TIMEOUT_MS 15000
#define RP_BATCH      500 /* events handed to the processor at once */

/* A consumer that reads by assignment; group may be NULL (no offsets read or committed). */
static rd_kafka_t *reader_new(const sl_conf_t *conf, const char *group, char *errstr,
                              size_t errstr_size)
{
    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, errstr, errstr_size);
    if (!kconf)
        return NULL;
    if (rd_kafka_conf_set(kconf, "enable.partition.eof", "true", errstr, errstr_size) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(kconf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
    if (!rk) {
        rd_kafka_conf_destroy(kconf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

/* The number of partitions of topic, or -1 with errstr. */
static int partition_count(rd_kafka_t *rk, const char *topic, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, RP_TIMEOUT_MS);
    int n = -1;
    if (err)
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                   "could not read the metadata of topic %s: %s; check kafka.brokers", topic,
                   rd_kafka_err2str(err));
    else if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0)
        sl_err_set(errstr, errstr_size, SL_ERR_NOTFOUND,
                   "the events topic %s does not exist (%s); check kafka.topic_prefix", topic,
                   md->topic_cnt == 1 && md->topics[0].err ? rd_kafka_err2str(md->topics[0].err)
                                                           : "no partitions");
    else
        n = md->topics[0].partition_cnt;
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    return n;
}

int pr_replay_window(const sl_conf_t *conf, int64_t from_ms, int64_t to_ms,
                     pr_replay_range_t **ranges, size_t *nranges, char *errstr, size_t errstr_size)
{
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    rd_kafka_t *rk = reader_new(conf, NULL, errstr, errstr_size);
    int rc = SL_ERR_INVALID, n = rk ? partition_count(rk, topic, errstr, errstr_size) : -1;
    rd_kafka_topic_partition_list_t *from = NULL, *to = NULL;
    if (n < 0)
        goto out;
    /* librdkafka's mock cluster answers every lookup by time with "no such offset". */
    if (sl_kafka_cluster_is_dev(rk, RP_TIMEOUT_MS) == 1) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "the embedded dev broker can't look offsets up by time: give the "
                        "window as --offsets P:START-END (`kcat -C -e -b BROKER -t %s -f "
                        "'%%p %%o %%T\\n'` lists them), or use a real Kafka cluster",
                        topic);
        goto out;
    }
    from = rd_kafka_topic_partition_list_new(n);
    to = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++) {
        rd_kafka_topic_partition_list_add(from, topic, i)->offset = from_ms;
        rd_kafka_topic_partition_list_add(to, topic, i)->offset = to_ms;
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk, from, RP_TIMEOUT_MS);
    if (!err)
        err = rd_kafka_offsets_for_times(rk, to, RP_TIMEOUT_MS);
    if (err) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                        "could not find the offsets of the window in %s: %s", topic,
                        rd_kafka_err2str(err));
        goto out;
    }
    pr_replay_range_t *r = sl_calloc((size_t)n, sizeof(*r));
    for (int i = 0; i < n; i++) {
        int64_t lo, hi;
        err = from->elems[i].err ? from->elems[i].err : to->elems[i].err;
        if (!err)
            err = rd_kafka_query_watermark_offsets(rk, topic, i, &lo, &hi, RP_TIMEOUT_MS);
        if (err) {
            free(r);
            rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                            "could not find the offsets of the window in %s [%d]: %s", topic, i,
                            rd_kafka_err2str(err));
            goto out;
        }
        /* No event at or after the time: the range reaches the partition's end. */
        int64_t start = from->elems[i].offset < 0 ? hi : from->elems[i].offset;
        int64_t end = to->elems[i].offset < 0 ? hi : to->elems[i].offset;
        r[i] = (pr_replay_range_t){i, start < end ? start : end, end};
    }
    *ranges = r;
    *nranges = (size_t)n;
    rc = 0;
out:
    if (from)
        rd_kafka_topic_partition_list_destroy(from);
    if (to)
        rd_kafka_topic_partition_list_destroy(to);
    if (rk)
        rd_kafka_destroy(rk);
    free(topic);
    return rc;
}

int pr_replay_check(const sl_conf_t *conf, const pr_replay_range_t *ranges, size_t n, char *errstr,
                    size_t errstr_size)
{
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    rd_kafka_t *rk = reader_new(conf, NULL, errstr, errstr_size);
    int rc = SL_ERR_INVALID, np = rk ? partition_count(rk, topic, errstr, errstr_size) : -1;
    if (np < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const pr_replay_range_t *r = &ranges[i];
        int64_t lo, hi;
        if (r->partition < 0 || r->partition >= np) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                            "partition %d does not exist: %s has partitions 0 to %d",
                            (int)r->partition, topic, np - 1);
            goto out;
        }
        rd_kafka_resp_err_t err =
            rd_kafka_query_watermark_offsets(rk, topic, r->partition, &lo, &hi, RP_TIMEOUT_MS);
        if (err) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                            "could not read the offsets of %s [%d]: %s", topic, (int)r->partition,
                            rd_kafka_err2str(err));
            goto out;
        }
        if (r->start < lo || r->end > hi) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                            "offsets %lld-%lld of partition %d are not all there: it holds "
                            "offsets %lld-%lld",
                            (long long)r->start, (long long)r->end, (int)r->partition,
                            (long long)lo, (long long)hi);
            goto out;
        }
    }
    rc = 0;
out:
    if (rk)
        rd_kafka_destroy(rk);
    free(topic);
    return rc;
}

static rd_kafka_topic_partition_list_t *range_list(const char *topic, const pr_replay_range_t *r,
                                                   size_t n)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, topic, r[i].partition)->offset = r[i].start;
    return l;
}

/* next[i] from rk's committed offsets (rk's group.id is the replay's group). */
static int committed(rd_kafka_t *rk, const char *topic, const pr_replay_range_t *ranges, size_t n,
                     int64_t *next, char *errstr, size_t errstr_size)
{
    rd_kafka_topic_partition_list_t *l = range_list(topic, ranges, n);
    rd_kafka_resp_err_t err = rd_kafka_committed(rk, l, RP_TIMEOUT_MS * 2);
    for (size_t i = 0; i < n && !err; i++) {
        int64_t off = l->elems[i].err ? (int64_t)-1 : l->elems[i].offset;
        err = l->elems[i].err;
        next[i] = off < ranges[i].start ? ranges[i].start
                  : off > ranges[i].end ? ranges[i].end
                                        : off;
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not read the committed offsets of the replay: %s",
                          rd_kafka_err2str(err));
    return 0;
}

int pr_replay_progress(const sl_conf_t *conf, const char *group, const pr_replay_range_t *ranges,
                       size_t n, int64_t *next, char *errstr, size_t errstr_size)
{
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    rd_kafka_t *rk = reader_new(conf, group, errstr, errstr_size);
    int rc = rk ? committed(rk, topic, ranges, n, next, errstr, errstr_size) : SL_ERR_INVALID;
    if (rk)
        rd_kafka_destroy(rk);
    free(topic);
    return rc;
}

int pr_replay_reset(const sl_conf_t *conf, const char *group, const pr_replay_range_t *ranges,
                    size_t n, char *errstr, size_t errstr_size)
{
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    rd_kafka_t *rk = reader_new(conf, group, errstr, errstr_size);
    int rc = SL_ERR_INVALID;
    if (rk) {
        rd_kafka_topic_partition_list_t *l = range_list(topic, ranges, n);
        rd_kafka_resp_err_t err = n ? rd_kafka_commit(rk, l, 0) : RD_KAFKA_RESP_ERR_NO_ERROR;
        for (int i = 0; i < l->cnt && !err; i++)
            err = l->elems[i].err;
        rc = err ? sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                              "could not commit the replay's start offsets to group %s: %s", group,
                              rd_kafka_err2str(err))
                 : 0;
        rd_kafka_topic_partition_list_destroy(l);
        rd_kafka_destroy(rk);
    }
    free(topic);
    return rc;
}

/* --- the run --- */

typedef struct run {
    const pr_replay_opts_t *o;
    rd_kafka_t *rk;
    char *topic;
    int64_t *pos; /* per range: the next offset to process */
    bool *done;
    size_t left; /* ranges not done */
} run_t;

static int64_t run_done(const run_t *r)
{
    int64_t d = 0;
    for (size_t i = 0; i < r->o->nranges; i++)
        d += (r->done[i] ? r->o->ranges[i].end : r->pos[i]) - r->o->ranges[i].start;
    return d;
}

static size_t range_of(const run_t *r, int32_t partition)
{
    for (size_t i = 0; i < r->o->nranges; i++)
        if (r->o->ranges[i].partition == partition)
            return i;
    return (size_t)-1;
}

static void mark_done(run_t *r, size_t i)
{
    if (r->done[i])
        return;
    r->done[i] = true;
    r->left--;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, r->topic, r->o->ranges[i].partition);
    rd_kafka_pause_partitions(r->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Positions from the committed offsets; assigns the ranges not done yet. */
static int reassign(run_t *r, char *errstr, size_t errstr_size)
{
    const pr_replay_opts_t *o = r->o;
    if (committed(r->rk, r->topic, o->ranges, o->nranges, r->pos, errstr, errstr_size) != 0)
        return -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)o->nranges);
    r->left = 0;
    for (size_t i = 0; i < o->nranges; i++) {
        r->done[i] = r->pos[i] >= o->ranges[i].end;
        if (r->done[i])
            continue;
        r->left++;
        rd_kafka_topic_partition_list_add(l, r->topic, o->ranges[i].partition)->offset = r->pos[i];
    }
    rd_kafka_resp_err_t err = rd_kafka_assign(r->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not assign the events topic's partitions: %s",
                          rd_kafka_err2str(err));
    return 0;
}

/* Polls up to max events of the ranges into batch; updates positions and done ranges. */
static size_t fill(run_t *r, rd_kafka_message_t **batch, size_t max, int timeout_ms)
{
    size_t nb = 0;
    while (nb < max && r->left) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->rk, nb ? 0 : timeout_ms);
        if (!m)
            break;
        size_t i = range_of(r, m->partition);
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (i != (size_t)-1 && !r->done[i]) {
                if (m->offset < r->o->ranges[i].end)
                    sl_warn("replay",
                            "partition %d ends at offset %lld, before the end of its range "
                            "(%lld): the events in between are gone",
                            (int)m->partition, (long long)m->offset,
                            (long long)r->o->ranges[i].end);
                mark_done(r, i);
            }
        } else if (m->err) {
            sl_warn("replay", "kafka consumer: %s", rd_kafka_message_errstr(m));
        } else if (i != (size_t)-1 && !r->done[i] && m->offset >= r->pos[i]) {
            if (m->offset >= r->o->ranges[i].end) {
                mark_done(r, i);
            } else {
                r->pos[i] = m->offset + 1;
                batch[nb++] = m;
                m = NULL;
                if (r->pos[i] >= r->o->ranges[i].end)
                    mark_done(r, i);
            }
        }
        if (m)
            rd_kafka_message_destroy(m);
    }
    return nb;
}

int pr_replay_run(const sl_conf_t *conf, sl_wsconf_t *ws, const pr_replay_opts_t *o, int64_t *done,
                  char *errstr, size_t errstr_size)
{
    run_t r = {.o = o};
    r.topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    r.pos = sl_calloc(o->nranges ? o->nranges : 1, sizeof(*r.pos));
    r.done = sl_calloc(o->nranges ? o->nranges : 1, sizeof(*r.done));
    pr_processor_t *pr = NULL;
    int rc = SL_ERR_INVALID;
    int64_t total = 0;
    for (size_t i = 0; i < o->nranges; i++)
        total += o->ranges[i].end - o->ranges[i].start;
    rd_kafka_message_t *batch[RP_BATCH];

    r.rk = reader_new(conf, o->group, errstr, errstr_size);
    if (!r.rk)
        goto out;
    /* The producer first: its transactional.id fences a transaction a killed run left open,
     * whose offsets would otherwise hold the committed offsets unstable. */
    pr = pr_processor_new_batch(conf, ws, r.rk, o->group, o->destinations, o->ndestinations, errstr,
                                errstr_size);
    if (!pr || reassign(&r, errstr, errstr_size) != 0)
        goto out;

    int64_t txn_interval = sl_conf_duration_ms(conf, "processor.transaction_interval");
    size_t txn_max = (size_t)sl_conf_int(conf, "processor.transaction_max_events");
    int64_t t0 = sl_time_mono_ms(), read = 0, txn_start = 0, last_report = 0;
    size_t txn_events = 0;
    bool stopped = false;
    if (o->progress)
        o->progress(o->opaque, run_done(&r), total);
    while (r.left || txn_events) {
        stopped = o->stop && atomic_load(o->stop);
        int64_t now = sl_time_mono_ms();
        size_t max = RP_BATCH;
        int timeout = 100;
        if (o->rate > 0) {
            int64_t allowed = (int64_t)(o->rate * (double)(now - t0) / 1000.0) + 1 - read;
            max = allowed <= 0 ? 0 : allowed < RP_BATCH ? (size_t)allowed : RP_BATCH;
            if (!max)
                usleep(20 * 1000);
        }
        if (txn_events) {
            int64_t left = txn_start + txn_interval - now;
            timeout = left <= 0 ? 0 : left < timeout ? (int)left : timeout;
        }
        size_t nb = stopped || !r.left ? 0 : fill(&r, batch, max, timeout);
        if (nb) {
            if (!txn_events)
                txn_start = sl_time_mono_ms();
            int prc = pr_processor_process_batch(pr, batch, nb, errstr, errstr_size);
            for (size_t i = 0; i < nb; i++)
                rd_kafka_message_destroy(batch[i]);
            if (prc != 0)
                goto out;
            read += (int64_t)nb;
            txn_events += nb;
        }
        now = sl_time_mono_ms();
        if (txn_events &&
            (stopped || !r.left || txn_events >= txn_max || now - txn_start >= txn_interval)) {
            int crc = pr_processor_commit_batch(pr, errstr, errstr_size);
            txn_events = 0;
            if (crc == -2)
                goto out;
            if (crc == -1) {
                sl_warn("replay", "%s", errstr);
                if (reassign(&r, errstr, errstr_size) != 0)
                    goto out;
            }
        }
        if (stopped && !txn_events)
            break;
        if (o->progress && (now - last_report >= 200 || (!r.left && !txn_events))) {
            o->progress(o->opaque, run_done(&r), total);
            last_report = now;
        }
    }
    rc = stopped && r.left ? 1 : 0;
out:
    if (done)
        *done = run_done(&r);
    pr_processor_free_batch(pr);
    if (r.rk) {
        rd_kafka_consumer_close(r.rk);
        rd_kafka_destroy(r.rk);
    }
    free(r.pos);
    free(r.done);
    free(r.topic);
    return rc;
}
