/*
 * Consumer lag sampling, Burrow's evaluation and the lag gauges, see lag.h. One sample is:
 * ListGroups (when watching all groups), metadata, DescribeGroups (membership, for STOP),
 * OffsetFetch per group, the watermarks of every partition, and one message per lagging
 * partition for its timestamp.
 */
#include "common/lag.h"
#include "common/err.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/timeutil.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LAG_TIMEOUT_MS      SL_KAFKA_ADMIN_TIMEOUT_MS /* one admin request or metadata call */
#define LAG_READ_TIMEOUT_MS 5000 /* reading the messages at the committed offsets */

static const char *const status_names[] = {"NOTFOUND", "OK",    "WARN",  "ERR",
                                           "STOP",     "STALL", "REWIND"};

const char *sl_lag_status_name(sl_lag_status_t s)
{
    return (unsigned)s < sizeof(status_names) / sizeof(status_names[0]) ? status_names[s] : "?";
}

sl_lag_status_t sl_lag_evaluate(const sl_lag_obs_t *w, size_t n, int owned)
{
    if (!n || w[n - 1].lag == 0)
        return SL_LAG_OK;
    size_t zero = n; /* the latest sample with lag 0 */
    for (size_t i = 0; i < n - 1; i++)
        if (w[i].lag == 0)
            zero = i;
    if (zero < n) {
        for (size_t i = zero + 1; i < n; i++)
            if (w[i].lag < w[i - 1].lag)
                return SL_LAG_OK;
        return SL_LAG_WARN;
    }
    for (size_t i = 1; i < n; i++)
        if (w[i].offset < w[i - 1].offset)
            return SL_LAG_REWIND;
    bool moved = false;
    for (size_t i = 1; i < n; i++)
        moved |= w[i].offset != w[i - 1].offset;
    if (!moved)
        return owned == 0 ? SL_LAG_STOP : SL_LAG_STALL;
    for (size_t i = 1; i < n; i++)
        if (w[i].lag < w[i - 1].lag)
            return SL_LAG_OK;
    return SL_LAG_WARN;
}

/* --- the sampler --- */

typedef struct part {
    sl_lag_partition_t pub; /* pub.topic and the member strings point into this struct's own */
    char *topic, *consumer_id, *host, *client_id;
    sl_lag_obs_t *win; /* oldest first, at most l->window */
    size_t nwin;
    int owned;
} part_t;

typedef struct group {
    char *name, *topic; /* topic NULL: what the group committed or holds */
    char *state, *error;
    part_t *parts;
    size_t nparts;
    sl_lag_partition_t *view;
    sl_lag_group_t pub;
} group_t;

struct sl_lag {
    rd_kafka_t *rk;
    const sl_conf_t *conf; /* for the groups' offset readers */
    size_t window;
    bool all;
    int timeout_ms;  /* one request or metadata call: LAG_TIMEOUT_MS */
    int group_admin; /* the brokers answer ListGroups and DescribeGroups: 1, 0, -1 unknown */
    char *brokers;
    group_t *groups;
    size_t ngroups;
    sl_lag_group_t *view;
    char note[1024];
};

/* Who holds a partition, from DescribeGroups. */
typedef struct owner {
    const char *group, *topic, *consumer_id, *host, *client_id;
    int32_t partition;
} owner_t;

typedef struct members {
    bool known; /* DescribeGroups answered */
    owner_t *owners;
    size_t n;
    const char **states; /* per group index (nstates), NULL when unknown; malloc'ed */
    size_t nstates;
} members_t;

sl_lag_t *sl_lag_new(const sl_conf_t *conf, size_t window, char *errstr, size_t errstr_size)
{
    char *group = sl_kafka_topic(conf, "lag-reader");
    rd_kafka_conf_t *kconf = sl_kafka_conf_new(conf, SL_KAFKA_CONSUMER, group, errstr, errstr_size);
    free(group);
    if (!kconf)
        return NULL;
    /* A reader of single messages: it never joins the group it names, never commits, reads
     * what is there whatever its transaction's fate (only the timestamp matters), and says
     * when a partition has nothing left (only transaction markers after the offset). */
    static const char *const reader[][2] = {{"client.id", "sluice-lag"},
                                            {"enable.partition.eof", "true"},
                                            {"isolation.level", "read_uncommitted"},
                                            {"queued.min.messages", "1"},
                                            {"fetch.wait.max.ms", "50"}};
    for (size_t i = 0; i < sizeof(reader) / sizeof(reader[0]); i++)
        rd_kafka_conf_set(kconf, reader[i][0], reader[i][1], NULL, 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kconf, errstr, errstr_size);
    if (!rk) {
        rd_kafka_conf_destroy(kconf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    sl_lag_t *l = sl_calloc(1, sizeof(*l));
    l->rk = rk;
    l->conf = conf;
    l->window = window ? window : 1;
    l->timeout_ms = LAG_TIMEOUT_MS;
    l->group_admin = -1;
    l->brokers = sl_strdup(sl_conf_str(conf, "kafka.brokers"));
    return l;
}

static void part_clear(part_t *p)
{
    free(p->topic);
    free(p->consumer_id);
    free(p->host);
    free(p->client_id);
    free(p->win);
}

static void group_clear_parts(group_t *g)
{
    for (size_t i = 0; i < g->nparts; i++)
        part_clear(&g->parts[i]);
    free(g->parts);
    g->parts = NULL;
    g->nparts = 0;
}

void sl_lag_destroy(sl_lag_t *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->ngroups; i++) {
        group_t *g = &l->groups[i];
        group_clear_parts(g);
        free(g->name);
        free(g->topic);
        free(g->state);
        free(g->error);
        free(g->view);
    }
    free(l->groups);
    free(l->view);
    free(l->brokers);
    rd_kafka_destroy(l->rk);
    free(l);
}

void sl_lag_add_group(sl_lag_t *l, const char *group, const char *topic)
{
    for (size_t i = 0; i < l->ngroups; i++)
        if (strcmp(l->groups[i].name, group) == 0)
            return;
    l->groups = sl_realloc(l->groups, (l->ngroups + 1) * sizeof(*l->groups));
    group_t *g = &l->groups[l->ngroups++];
    memset(g, 0, sizeof(*g));
    g->name = sl_strdup(group);
    g->topic = topic ? sl_strdup(topic) : NULL;
}

void sl_lag_set_timeout(sl_lag_t *l, int timeout_ms)
{
    l->timeout_ms = timeout_ms;
}

void sl_lag_all_groups(sl_lag_t *l, bool all)
{
    l->all = all;
}

const char *sl_lag_note(const sl_lag_t *l)
{
    return l->note[0] ? l->note : NULL;
}

size_t sl_lag_groups(const sl_lag_t *l, const sl_lag_group_t **groups)
{
    *groups = l->view;
    return l->view ? l->ngroups : 0;
}

/* ListGroups; watches the groups found. Returns 0, or an sl_err_t with errstr. */
static int list_groups(sl_lag_t *l, char *errstr, size_t errstr_size)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(l->rk);
    rd_kafka_AdminOptions_t *o =
        sl_kafka_admin_options(l->rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS);
    rd_kafka_ListConsumerGroups(l->rk, o, q);
    char e[512];
    int rc = 0;
    rd_kafka_event_t *ev = sl_kafka_admin_wait(q, "ListGroups", e, sizeof(e));
    if (ev) {
        const rd_kafka_ListConsumerGroups_result_t *res =
            rd_kafka_event_ListConsumerGroups_result(ev);
        size_t n, nerr;
        const rd_kafka_ConsumerGroupListing_t **gl =
            rd_kafka_ListConsumerGroups_result_valid(res, &n);
        const rd_kafka_error_t **errs = rd_kafka_ListConsumerGroups_result_errors(res, &nerr);
        if (!n && nerr) {
            snprintf(e, sizeof(e), "ListGroups: %s", rd_kafka_error_string(errs[0]));
            rc = SL_ERR_TRANSIENT;
        }
        for (size_t i = 0; i < n; i++)
            sl_lag_add_group(l, rd_kafka_ConsumerGroupListing_group_id(gl[i]), NULL);
        rd_kafka_event_destroy(ev);
    } else {
        rc = SL_ERR_TRANSIENT;
    }
    if (rc)
        sl_err_set(errstr, errstr_size, rc, "could not list the consumer groups: %s", e);
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_queue_destroy(q);
    return rc;
}

static void members_free(members_t *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free((char *)m->owners[i].topic);
        free((char *)m->owners[i].consumer_id);
        free((char *)m->owners[i].host);
        free((char *)m->owners[i].client_id);
    }
    free(m->owners);
    for (size_t i = 0; i < m->nstates; i++)
        free((char *)m->states[i]);
    free(m->states);
}

/* Reads a big-endian integer of n bytes at *p, within end; false when it is cut short. */
static bool be_read(const uint8_t **p, const uint8_t *end, int n, int64_t *v)
{
    if (end - *p < n)
        return false;
    int64_t x = 0;
    for (int i = 0; i < n; i++)
        x = x << 8 | (*p)[i];
    *v = n == 2 ? (int16_t)x : n == 4 ? (int32_t)x : x;
    *p += n;
    return true;
}

/* A string of a broker's answer that Kafka's protocol says is never null ("" if it is). */
static const char *nonnull(const char *s)
{
    return s ? s : "";
}

/* Adds to m the partitions of a member's assignment: the consumer protocol's Assignment
 * (version, [topic, [partition]], user data). A malformed one adds what it holds up to the
 * flaw: the bytes come from the broker, as another client wrote them. */
static void add_assignment(members_t *m, size_t *cap, const char *group,
                           const struct rd_kafka_group_member_info *mi)
{
    const uint8_t *p = mi->member_assignment, *end = p + mi->member_assignment_size;
    int64_t version, ntopics;
    if (!p || !be_read(&p, end, 2, &version) || !be_read(&p, end, 4, &ntopics))
        return;
    for (int64_t t = 0; t < ntopics; t++) {
        int64_t tlen, nparts;
        if (!be_read(&p, end, 2, &tlen) || tlen < 0 || end - p < tlen)
            return;
        char *topic = sl_strndup((const char *)p, (size_t)tlen);
        p += tlen;
        if (!be_read(&p, end, 4, &nparts)) {
            free(topic);
            return;
        }
        for (int64_t k = 0; k < nparts; k++) {
            int64_t part;
            if (!be_read(&p, end, 4, &part))
                break;
            if (m->n == *cap) {
                *cap = *cap ? *cap * 2 : 32;
                m->owners = sl_realloc(m->owners, *cap * sizeof(*m->owners));
            }
            m->owners[m->n++] = (owner_t){.group = group,
                                          .topic = sl_strdup(topic),
                                          .partition = (int32_t)part,
                                          .consumer_id = sl_strdup(nonnull(mi->member_id)),
                                          .host = sl_strdup(nonnull(mi->client_host)),
                                          .client_id = sl_strdup(nonnull(mi->client_id))};
        }
        free(topic);
    }
}

/* Membership of every watched group, with librdkafka's ListGroups/DescribeGroups
 * (rd_kafka_list_groups), not the Admin API's DescribeConsumerGroups: in librdkafka 2.0.2
 * that one aborts the process (an assertion on a freed request, "eonce->refcnt > 0") when the
 * connection to the group's coordinator drops under it, as when a broker restarts. On failure
 * m->known is false and l->note says why. */
static void describe_groups(sl_lag_t *l, members_t *m)
{
    memset(m, 0, sizeof(*m));
    m->states = sl_calloc(l->ngroups ? l->ngroups : 1, sizeof(*m->states));
    m->nstates = l->ngroups;
    if (!l->ngroups)
        return;
    if (l->group_admin == 0) {
        snprintf(l->note, sizeof(l->note),
                 "group membership is unknown: the embedded dev broker has no DescribeGroups, "
                 "so a stopped consumer shows as STALL, not STOP");
        return;
    }
    char e[512] = "";
    size_t cap = 0;
    m->known = true;
    for (size_t gi = 0; gi < l->ngroups && m->known; gi++) {
        const struct rd_kafka_group_list *gl = NULL;
        rd_kafka_resp_err_t err =
            rd_kafka_list_groups(l->rk, l->groups[gi].name, &gl, l->timeout_ms);
        const struct rd_kafka_group_info *gr = NULL;
        for (int i = 0; !err && i < gl->group_cnt && !gr; i++)
            if (strcmp(gl->groups[i].group, l->groups[gi].name) == 0)
                gr = &gl->groups[i];
        if (err || (gr && gr->err)) {
            snprintf(e, sizeof(e), "DescribeGroups: %s", rd_kafka_err2str(err ? err : gr->err));
            m->known = false;
        } else if (gr) { /* no entry: a group no broker knows, with no members */
            m->states[gi] = gr->state ? sl_strdup(gr->state) : NULL;
            for (int k = 0; k < gr->member_cnt; k++)
                add_assignment(m, &cap, l->groups[gi].name, &gr->members[k]);
        }
        if (gl)
            rd_kafka_group_list_destroy(gl);
    }
    if (!m->known) {
        snprintf(l->note, sizeof(l->note),
                 "group membership is unknown (%s): a stopped consumer shows as STALL, not "
                 "STOP; the embedded dev broker has no DescribeGroups",
                 e);
        for (size_t i = 0; i < l->ngroups; i++) {
            free((char *)m->states[i]);
            m->states[i] = NULL;
        }
    }
}

static const owner_t *owner_of(const members_t *m, const char *group, const char *topic,
                               int32_t partition)
{
    for (size_t i = 0; i < m->n; i++)
        if (m->owners[i].partition == partition && strcmp(m->owners[i].group, group) == 0 &&
            strcmp(m->owners[i].topic, topic) == 0)
            return &m->owners[i];
    return NULL;
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = src ? sl_strdup(src) : NULL;
}

/* The committed offsets of every group: got[i] is group i's list (the caller destroys it),
 * or NULL with the group's error set. A group on a topic asks for every partition of it;
 * another group for every partition of every topic, keeping those it committed. Asked with
 * rd_kafka_committed() on a consumer named after the group, not the Admin API's
 * ListConsumerGroupOffsets: see describe_groups. */
static void fetch_committed(sl_lag_t *l, const rd_kafka_metadata_t *md,
                            rd_kafka_topic_partition_list_t **got)
{
    char e[512];
    for (size_t i = 0; i < l->ngroups; i++) {
        group_t *g = &l->groups[i];
        set_str(&g->error, NULL);
        rd_kafka_topic_partition_list_t *ask = rd_kafka_topic_partition_list_new(8);
        bool found = false;
        for (int k = 0; k < md->topic_cnt; k++) {
            const rd_kafka_metadata_topic_t *t = &md->topics[k];
            if (t->err || (g->topic ? strcmp(t->topic, g->topic) != 0 : t->topic[0] == '_'))
                continue;
            found = true;
            for (int p = 0; p < t->partition_cnt; p++)
                rd_kafka_topic_partition_list_add(ask, t->topic, t->partitions[p].id);
        }
        rd_kafka_t *rk = NULL;
        if (g->topic && !found)
            snprintf(e, sizeof(e), "topic %s does not exist", g->topic);
        else
            /* Made for each sample: an idle handle's broker threads cost a role about 0.1%
             * of a core between samples, more than making one anew every 30 s. */
            rk = sl_kafka_group_reader_new(l->conf, g->name, "sluice-lag", e, sizeof(e));
        rd_kafka_resp_err_t err = rk ? rd_kafka_committed(rk, ask, l->timeout_ms) : 0;
        if (rk && err)
            snprintf(e, sizeof(e), "OffsetFetch: %s", rd_kafka_err2str(err));
        for (int k = 0; rk && !err && k < ask->cnt; k++)
            if (ask->elems[k].err && ask->elems[k].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
                snprintf(e, sizeof(e), "OffsetFetch: %s [%d]: %s", ask->elems[k].topic,
                         (int)ask->elems[k].partition, rd_kafka_err2str(ask->elems[k].err));
                err = ask->elems[k].err;
            }
        bool failed = !rk || err;
        sl_kafka_group_reader_destroy(rk);
        if (failed) {
            set_str(&g->error, e);
            rd_kafka_topic_partition_list_destroy(ask);
            continue;
        }
        if (g->topic) {
            got[i] = ask;
            continue;
        }
        got[i] = rd_kafka_topic_partition_list_new(8);
        for (int k = 0; k < ask->cnt; k++)
            if (ask->elems[k].offset >= 0)
                rd_kafka_topic_partition_list_add(got[i], ask->elems[k].topic,
                                                  ask->elems[k].partition)
                    ->offset = ask->elems[k].offset;
        rd_kafka_topic_partition_list_destroy(ask);
    }
}

static part_t *find_old(part_t *parts, size_t n, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < n; i++)
        if (parts[i].pub.partition == partition && strcmp(parts[i].topic, topic) == 0)
            return &parts[i];
    return NULL;
}

static int cmp_part(const void *a, const void *b)
{
    const part_t *x = a, *y = b;
    int c = strcmp(x->topic, y->topic);
    return c ? c : (x->pub.partition > y->pub.partition) - (x->pub.partition < y->pub.partition);
}

/* Rebuilds g's partitions from its committed offsets (NULL: none could be read), carrying
 * each partition's window over, with who holds it. */
static void group_parts(sl_lag_t *l, group_t *g, size_t gi, rd_kafka_topic_partition_list_t *got,
                        const members_t *m)
{
    set_str(&g->state, m->states[gi]);
    if (!got) {
        group_clear_parts(g); /* no stale figures */
        return;
    }
    if (!g->topic) /* partitions held but never committed count too */
        for (size_t i = 0; i < m->n; i++)
            if (m->owners[i].group == g->name &&
                !rd_kafka_topic_partition_list_find(got, m->owners[i].topic,
                                                    m->owners[i].partition))
                rd_kafka_topic_partition_list_add(got, m->owners[i].topic, m->owners[i].partition)
                    ->offset = RD_KAFKA_OFFSET_INVALID;
    if (!got->cnt && !g->topic && l->group_admin == 0)
        set_str(&g->error, "the embedded dev broker can't list the partitions a group "
                           "committed: only Sluice's own groups can be shown");
    part_t *parts = sl_calloc(got->cnt ? (size_t)got->cnt : 1, sizeof(*parts));
    size_t n = 0;
    for (int i = 0; i < got->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &got->elems[i];
        if (tp->err) {
            char e[512];
            snprintf(e, sizeof(e), "OffsetFetch %s [%d]: %s", tp->topic, (int)tp->partition,
                     rd_kafka_err2str(tp->err));
            set_str(&g->error, e);
            continue;
        }
        part_t *p = &parts[n++], *old = find_old(g->parts, g->nparts, tp->topic, tp->partition);
        if (old) { /* the window carries over */
            *p = *old;
            old->topic = old->consumer_id = old->host = old->client_id = NULL;
            old->win = NULL;
        } else {
            p->topic = sl_strdup(tp->topic);
            p->pub.partition = tp->partition;
            p->win = sl_calloc(l->window, sizeof(*p->win));
        }
        p->pub.committed = tp->offset >= 0 ? tp->offset : -1;
        const owner_t *ow = owner_of(m, g->name, tp->topic, tp->partition);
        p->owned = !m->known ? -1 : ow ? 1 : 0;
        set_str(&p->consumer_id, ow ? ow->consumer_id : NULL);
        set_str(&p->host, ow ? ow->host : NULL);
        set_str(&p->client_id, ow ? ow->client_id : NULL);
    }
    group_clear_parts(g); /* what is left of the old ones: partitions gone */
    qsort(parts, n, sizeof(*parts), cmp_part);
    g->parts = parts;
    g->nparts = n;
}

/* Adds topic/partition to list unless it is there; returns its element. */
static rd_kafka_topic_partition_t *add_once(rd_kafka_topic_partition_list_t *list,
                                            const char *topic, int32_t partition)
{
    rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_find(list, topic, partition);
    return tp ? tp : rd_kafka_topic_partition_list_add(list, topic, partition);
}

/* The log start and end offsets of every partition of every group, in two ListOffsets rounds
 * (earliest, latest) for all of them; then each partition's lag and its sample. */
static void fetch_ends(sl_lag_t *l, int64_t now)
{
    rd_kafka_topic_partition_list_t *lo = rd_kafka_topic_partition_list_new(64), *hi;
    for (size_t i = 0; i < l->ngroups; i++)
        for (size_t j = 0; j < l->groups[i].nparts; j++)
            add_once(lo, l->groups[i].parts[j].topic, l->groups[i].parts[j].pub.partition)->offset =
                RD_KAFKA_OFFSET_BEGINNING; /* ListOffsets' "earliest" */
    hi = rd_kafka_topic_partition_list_copy(lo);
    for (int i = 0; i < hi->cnt; i++)
        hi->elems[i].offset = RD_KAFKA_OFFSET_END; /* "latest": the high watermark */
    rd_kafka_resp_err_t elo = lo->cnt ? rd_kafka_offsets_for_times(l->rk, lo, l->timeout_ms) : 0;
    rd_kafka_resp_err_t ehi = hi->cnt ? rd_kafka_offsets_for_times(l->rk, hi, l->timeout_ms) : 0;
    for (size_t i = 0; i < l->ngroups; i++) {
        group_t *g = &l->groups[i];
        for (size_t j = 0; j < g->nparts; j++) {
            part_t *p = &g->parts[j];
            const rd_kafka_topic_partition_t *a =
                rd_kafka_topic_partition_list_find(lo, p->topic, p->pub.partition);
            const rd_kafka_topic_partition_t *b =
                rd_kafka_topic_partition_list_find(hi, p->topic, p->pub.partition);
            rd_kafka_resp_err_t err = a->err ? a->err : b->err;
            if (!err && (a->offset < 0 || b->offset < 0))
                err = elo ? elo : ehi; /* the whole request failed (e.g. timed out) */
            if (err || a->offset < 0 || b->offset < 0) {
                char e[512];
                snprintf(e, sizeof(e), "the offsets of %s [%d]: %s", p->topic,
                         (int)p->pub.partition,
                         err ? rd_kafka_err2str(err) : "no answer from the partition's leader");
                set_str(&g->error, e);
                p->pub.start = p->pub.end = p->pub.committed > 0 ? p->pub.committed : 0;
            } else {
                p->pub.start = a->offset;
                p->pub.end = b->offset;
            }
            int64_t from = p->pub.committed >= 0 ? p->pub.committed : p->pub.start;
            p->pub.lag = p->pub.end > from ? p->pub.end - from : 0;
            if (p->nwin == l->window) {
                memmove(p->win, p->win + 1, (l->window - 1) * sizeof(*p->win));
                p->nwin--;
            }
            p->win[p->nwin++] = (sl_lag_obs_t){now, p->pub.committed, p->pub.lag};
        }
    }
    rd_kafka_topic_partition_list_destroy(lo);
    rd_kafka_topic_partition_list_destroy(hi);
}

/* One message to read for its timestamp; several groups at the same offset share it. */
typedef struct stamp {
    const char *topic;
    int32_t partition;
    int64_t offset;
    double secs; /* -1 unknown */
    bool done, in_round;
} stamp_t;

/* Reads the message at each lagging partition's committed offset for its timestamp: all of
 * them in one assignment, or one per offset of a partition that groups read at several. */
static void read_timestamps(sl_lag_t *l, int64_t now)
{
    stamp_t *st = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < l->ngroups; i++)
        for (size_t j = 0; j < l->groups[i].nparts; j++) {
            part_t *p = &l->groups[i].parts[j];
            p->pub.lag_seconds = p->pub.lag ? -1 : 0;
            if (!p->pub.lag)
                continue;
            int64_t off = p->pub.committed >= 0 ? p->pub.committed : p->pub.start;
            size_t k = 0;
            while (k < n && !(st[k].partition == p->pub.partition && st[k].offset == off &&
                              strcmp(st[k].topic, p->topic) == 0))
                k++;
            if (k < n)
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                st = sl_realloc(st, cap * sizeof(*st));
            }
            st[n++] = (stamp_t){p->topic, p->pub.partition, off, -1, false, false};
        }
    for (size_t left = n; left;) {
        rd_kafka_topic_partition_list_t *round = rd_kafka_topic_partition_list_new(16);
        int todo = 0;
        for (size_t k = 0; k < n; k++) {
            st[k].in_round = !st[k].done && !rd_kafka_topic_partition_list_find(round, st[k].topic,
                                                                                st[k].partition);
            if (st[k].in_round) {
                rd_kafka_topic_partition_list_add(round, st[k].topic, st[k].partition)->offset =
                    st[k].offset;
                todo++;
            }
        }
        if (rd_kafka_assign(l->rk, round) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            int64_t deadline = sl_time_mono_ms() + LAG_READ_TIMEOUT_MS;
            while (todo && sl_time_mono_ms() < deadline) {
                rd_kafka_message_t *m = rd_kafka_consumer_poll(l->rk, 100);
                if (!m)
                    continue;
                const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;
                for (size_t k = 0; topic && k < n; k++) {
                    if (!st[k].in_round || st[k].done || st[k].partition != m->partition ||
                        strcmp(st[k].topic, topic) != 0)
                        continue;
                    int64_t ts = m->err ? -1 : rd_kafka_message_timestamp(m, NULL);
                    if (!m->err)
                        st[k].secs = ts > 0 ? (double)(now > ts ? now - ts : 0) / 1000.0 : -1;
                    else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
                        st[k].secs = 0; /* only transaction markers or aborted records left */
                    st[k].done = true;
                    todo--;
                }
                rd_kafka_message_destroy(m);
            }
            rd_kafka_assign(l->rk, NULL);
        }
        for (size_t k = 0; k < n; k++)
            if (st[k].in_round) { /* answered or not, tried */
                st[k].done = true;
                left--;
            }
        rd_kafka_topic_partition_list_destroy(round);
    }
    for (size_t i = 0; i < l->ngroups; i++)
        for (size_t j = 0; j < l->groups[i].nparts; j++) {
            part_t *p = &l->groups[i].parts[j];
            int64_t off = p->pub.committed >= 0 ? p->pub.committed : p->pub.start;
            for (size_t k = 0; p->pub.lag && k < n; k++)
                if (st[k].partition == p->pub.partition && st[k].offset == off &&
                    strcmp(st[k].topic, p->topic) == 0)
                    p->pub.lag_seconds = st[k].secs;
        }
    free(st);
}

/* Rebuilds the views the accessors return, with the group aggregates. */
static void build_views(sl_lag_t *l)
{
    free(l->view);
    l->view = sl_calloc(l->ngroups ? l->ngroups : 1, sizeof(*l->view));
    for (size_t i = 0; i < l->ngroups; i++) {
        group_t *g = &l->groups[i];
        free(g->view);
        g->view = sl_calloc(g->nparts ? g->nparts : 1, sizeof(*g->view));
        sl_lag_group_t *v = &l->view[i];
        *v = (sl_lag_group_t){.group = g->name,
                              .state = g->state,
                              .error = g->error,
                              .status = g->nparts ? SL_LAG_OK : SL_LAG_NOTFOUND,
                              .parts = g->view,
                              .nparts = g->nparts};
        for (size_t j = 0; j < g->nparts; j++) {
            const sl_lag_partition_t *p = &g->parts[j].pub;
            g->view[j] = *p;
            v->total_lag += p->lag;
            if (p->lag > v->max_lag)
                v->max_lag = p->lag;
            if (p->lag_seconds > v->max_lag_seconds)
                v->max_lag_seconds = p->lag_seconds;
            sl_lag_status_t s = p->status > SL_LAG_ERR ? SL_LAG_ERR : p->status;
            if (s > v->status)
                v->status = s;
        }
    }
}

int sl_lag_sample(sl_lag_t *l, char *errstr, size_t errstr_size)
{
    l->note[0] = '\0';
    if (l->group_admin < 0) {
        /* The dev broker is librdkafka's mock cluster, which has no ListGroups or
         * DescribeGroups; librdkafka 2.0.2 leaks on a refused ListGroups and never completes a
         * refused DescribeGroups, so they are not even tried there. */
        char *id = rd_kafka_clusterid(l->rk, l->timeout_ms);
        if (!id)
            return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                              "could not reach kafka at \"%s\" within %d s; check "
                              "SLUICE_KAFKA_BROKERS and that the brokers are up",
                              l->brokers, l->timeout_ms / 1000);
        l->group_admin = strncmp(id, "mockCluster", 11) != 0;
        rd_kafka_mem_free(l->rk, id);
    }
    if (l->all && l->group_admin == 0)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "the embedded dev broker has no ListGroups: name the groups with "
                          "--group, or leave it out for Sluice's own");
    if (l->all) {
        int rc = list_groups(l, errstr, errstr_size);
        if (rc)
            return rc;
    }
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(l->rk, 1, NULL, &md, l->timeout_ms);
    if (err)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not read the cluster's metadata: %s", rd_kafka_err2str(err));
    members_t m;
    describe_groups(l, &m);
    int64_t now = sl_time_now_ms();
    rd_kafka_topic_partition_list_t **got = sl_calloc(l->ngroups + 1, sizeof(*got));
    fetch_committed(l, md, got);
    for (size_t i = 0; i < l->ngroups; i++) {
        group_parts(l, &l->groups[i], i, got[i], &m);
        if (got[i])
            rd_kafka_topic_partition_list_destroy(got[i]);
    }
    free(got);
    members_free(&m);
    rd_kafka_metadata_destroy(md);
    fetch_ends(l, now);
    read_timestamps(l, now);
    for (size_t i = 0; i < l->ngroups; i++)
        for (size_t j = 0; j < l->groups[i].nparts; j++) {
            part_t *p = &l->groups[i].parts[j];
            p->pub.topic = p->topic;
            p->pub.consumer_id = p->consumer_id;
            p->pub.host = p->host;
            p->pub.client_id = p->client_id;
            p->pub.samples = p->nwin;
            p->pub.status = sl_lag_evaluate(p->win, p->nwin, p->owned);
        }
    build_views(l);
    return 0;
}

/* --- metrics --- */

void sl_lag_publish(const sl_lag_t *l)
{
    const sl_lag_group_t *gs;
    size_t ng = sl_lag_groups(l, &gs);
    for (size_t i = 0; i < ng; i++) {
        const sl_lag_group_t *g = &gs[i];
        const char *gn = g->group;
        if (g->error && !g->nparts)
            continue;
        for (size_t j = 0; j < g->nparts; j++) {
            const sl_lag_partition_t *p = &g->parts[j];
            char pn[16];
            snprintf(pn, sizeof(pn), "%d", (int)p->partition);
            sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_offset",
                                            "Committed offset of a consumer group (-1: none)",
                                            "group", gn, "topic", p->topic, "partition", pn, NULL),
                           (double)p->committed);
            sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_lag",
                                            "Messages between the committed offset and the end",
                                            "group", gn, "topic", p->topic, "partition", pn, NULL),
                           (double)p->lag);
            if (p->lag_seconds >= 0)
                sl_metrics_set(
                    sl_metrics_gauge("kafka_consumergroup_group_lag_seconds",
                                     "Age of the oldest message the group has not consumed",
                                     "group", gn, "topic", p->topic, "partition", pn, NULL),
                    p->lag_seconds);
            sl_metrics_set(sl_metrics_gauge("sluice_consumergroup_partition_status",
                                            "Burrow status of a partition: 1 OK, 2 WARN, 4 STOP, "
                                            "5 STALL, 6 REWIND",
                                            "group", gn, "topic", p->topic, "partition", pn, NULL),
                           (double)p->status);
            sl_metrics_set(sl_metrics_gauge("kafka_partition_latest_offset",
                                            "High watermark of a partition", "topic", p->topic,
                                            "partition", pn, NULL),
                           (double)p->end);
            sl_metrics_set(sl_metrics_gauge("kafka_partition_earliest_offset",
                                            "Log start offset of a partition", "topic", p->topic,
                                            "partition", pn, NULL),
                           (double)p->start);
        }
        /* Per topic sums: the parts are sorted by topic. */
        for (size_t j = 0; j < g->nparts;) {
            int64_t sum = 0;
            size_t k = j;
            for (; k < g->nparts && strcmp(g->parts[k].topic, g->parts[j].topic) == 0; k++)
                sum += g->parts[k].lag;
            sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_topic_sum_lag",
                                            "Lag of a consumer group summed over a topic", "group",
                                            gn, "topic", g->parts[j].topic, NULL),
                           (double)sum);
            j = k;
        }
        sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_max_lag",
                                        "Largest partition lag of a consumer group", "group", gn,
                                        NULL),
                       (double)g->max_lag);
        sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_max_lag_seconds",
                                        "Largest partition lag in seconds of a consumer group",
                                        "group", gn, NULL),
                       g->max_lag_seconds);
        sl_metrics_set(sl_metrics_gauge("kafka_consumergroup_group_sum_lag",
                                        "Lag of a consumer group summed over its partitions",
                                        "group", gn, NULL),
                       (double)g->total_lag);
        sl_metrics_set(sl_metrics_gauge("sluice_consumergroup_status",
                                        "Burrow status of a consumer group: 0 NOTFOUND, 1 OK, "
                                        "2 WARN, 3 ERR",
                                        "group", gn, NULL),
                       (double)g->status);
    }
}

/* --- the roles' monitor --- */

struct sl_lag_monitor {
    sl_lag_t *lag;
    int64_t interval_ms;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
};

static void *monitor_main(void *arg)
{
    sl_lag_monitor_t *m = arg;
    char err[1024], last_err[1024] = "", last_note[1024] = "";
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        pthread_mutex_unlock(&m->lock);
        if (sl_lag_sample(m->lag, err, sizeof(err)) != 0) {
            if (strcmp(err, last_err) != 0) /* once per distinct failure */
                sl_warn("lag", "could not sample the consumer lag: %s", err);
            snprintf(last_err, sizeof(last_err), "%s", err);
        } else {
            last_err[0] = '\0';
            const char *note = sl_lag_note(m->lag);
            if (note && strcmp(note, last_note) != 0)
                sl_info("lag", "%s", note);
            snprintf(last_note, sizeof(last_note), "%s", note ? note : "");
            const sl_lag_group_t *gs;
            size_t n = sl_lag_groups(m->lag, &gs);
            for (size_t i = 0; i < n; i++)
                if (gs[i].error)
                    sl_debug("lag", "group %s: %s", gs[i].group, gs[i].error);
            sl_lag_publish(m->lag);
        }
        pthread_mutex_lock(&m->lock);
        struct timespec ts;
        sl_time_deadline(&ts, m->interval_ms);
        while (!m->stop && pthread_cond_timedwait(&m->cond, &m->lock, &ts) == 0)
            ;
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

sl_lag_monitor_t *sl_lag_monitor_start(const sl_conf_t *conf, const char *const *groups,
                                       const char *const *topics, size_t n, int64_t interval_ms,
                                       size_t window)
{
    char err[512];
    sl_lag_t *lag = sl_lag_new(conf, window, err, sizeof(err));
    if (!lag) {
        sl_warn("lag", "no consumer lag on /metrics: %s", err);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        sl_lag_add_group(lag, groups[i], topics[i]);
    sl_lag_monitor_t *m = sl_calloc(1, sizeof(*m));
    m->lag = lag;
    m->interval_ms = interval_ms;
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->cond, NULL);
    if (pthread_create(&m->thread, NULL, monitor_main, m) != 0) {
        sl_warn("lag", "no consumer lag on /metrics: could not start its thread");
        pthread_mutex_destroy(&m->lock);
        pthread_cond_destroy(&m->cond);
        sl_lag_destroy(lag);
        free(m);
        return NULL;
    }
    return m;
}

void sl_lag_monitor_stop(sl_lag_monitor_t *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_signal(&m->cond);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->thread, NULL);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    sl_lag_destroy(m->lag);
    free(m);
}
