/*
 * `sluice offsets reset` and `sluice offsets show`: a consumer group's committed offsets, and
 * replays by moving them, as `kafka-consumer-groups --reset-offsets` does (same options, same
 * clamping into each partition's earliest..latest, same table).
 *
 * The group is read with DescribeGroups (rd_kafka_list_groups) and its offsets read and written
 * through sl_kafka_group_reader_new's consumer; not with the Admin API's DescribeConsumerGroups,
 * ListConsumerGroupOffsets and AlterConsumerGroupOffsets, which in librdkafka 2.0.2 abort the
 * process when the connection to the group's coordinator drops under them (librdkafka issue
 * 4605).
 */
#include "cmd/cmd.h"
#include "common/kafka.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: sluice offsets reset --group GROUP [--topic TOPIC[:P,P...] ... | --all-topics]\n"
    "                            (--to-datetime T | --by-duration D | --to-earliest |\n"
    "                             --to-latest | --to-offset N | --shift-by N)\n"
    "                            (--dry-run | --execute)\n"
    "       sluice offsets show --group GROUP [--topic TOPIC[:P,P...] ...]\n\n"
    "`reset` moves the group's committed offsets, as `kafka-consumer-groups --reset-offsets`\n"
    "does, so that its consumers read again from there (a replay) or skip ahead:\n"
    "  --to-datetime T   the first message at or after T, written YYYY-MM-DDTHH:mm:SS.sss\n"
    "                    with an optional zone (Z, +02, +02:00; none: UTC)\n"
    "  --by-duration D   the first message at or after now minus D, an ISO-8601 duration\n"
    "                    such as PT10M, PT1H30M or P1D\n"
    "  --to-earliest     the oldest message kept      --to-latest   the end of the log\n"
    "  --to-offset N     offset N                     --shift-by N  the committed offset + N\n"
    "Offsets outside a partition's earliest..latest are set to the nearer end; a partition\n"
    "with no message after the time goes to its latest offset. It prints the new offsets\n"
    "(GROUP TOPIC PARTITION NEW-OFFSET); --dry-run changes nothing, --execute commits them.\n"
    "It refuses while the group has active members: stop the consumers first (for Sluice's\n"
    "groups, every instance of the role). Topics: --topic (all partitions, or those listed),\n"
    "--all-topics (those the group has committed offsets for); by default the topic a\n"
    "Sluice group reads (<prefix>processor: <prefix>events, <prefix>router: <prefix>delivery,\n"
    "<prefix>warehouse, <prefix>failed-recorder: <prefix>failed), else --all-topics.\n"
    "`show` prints the group's state and members and, per partition, the committed offset,\n"
    "the end of the log and the lag.\n"
    "Needs a real Kafka cluster at kafka.brokers: the dev broker has no DescribeGroups.\n";

typedef enum {
    TO_NONE,
    TO_DATETIME,
    BY_DURATION,
    TO_EARLIEST,
    TO_LATEST,
    TO_OFFSET,
    SHIFT_BY
} to_t;

typedef struct args {
    bool reset, all_topics, dry_run, execute;
    const char *group;
    const char **topics; /* argv strings */
    size_t ntopics;
    to_t to;
    int64_t value; /* ms since the epoch, ms of duration, offset or shift */
} args_t;

/* What the commands need from the cluster, fetched once. */
typedef struct ctx {
    const args_t *a;
    const char *cmd; /* "sluice offsets reset", for messages */
    const sl_conf_t *conf;
    rd_kafka_t *rk;
    rd_kafka_t *group_rk; /* the consumer named after the group (group_consumer) */
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_partition_list_t *committed; /* the group's committed offsets */
    char err[1024];
} ctx_t;

#define TABLE_FMT "%-30s %-30s %-10s %s\n"

static int usage_error(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints a usage error of `sluice offsets SUB` and returns 2. */
static int usage_error(const char *sub, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "sluice offsets %s: ", sub);
    vfprintf(stderr, fmt, ap);
    fputs("; see --help\n", stderr);
    va_end(ap);
    return 2;
}

static bool parse_int64(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (end == s || *end || errno)
        return false;
    *v = n;
    return true;
}

static int parse_args(int argc, char **argv, args_t *a)
{
    const char *sub = argv[1];
    a->reset = strcmp(sub, "reset") == 0;
    a->topics = sl_calloc((size_t)argc, sizeof(*a->topics));
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        static const struct {
            const char *name;
            to_t to;
            bool has_value;
        } scenarios[] = {
            {"--to-datetime", TO_DATETIME, true},  {"--by-duration", BY_DURATION, true},
            {"--to-earliest", TO_EARLIEST, false}, {"--to-latest", TO_LATEST, false},
            {"--to-offset", TO_OFFSET, true},      {"--shift-by", SHIFT_BY, true}};
        size_t s = 0;
        while (s < sizeof(scenarios) / sizeof(scenarios[0]) && strcmp(o, scenarios[s].name) != 0)
            s++;
        if (s < sizeof(scenarios) / sizeof(scenarios[0]) && a->reset) {
            if (a->to != TO_NONE)
                return usage_error(sub, "choose one of --to-datetime, --by-duration, "
                                        "--to-earliest, --to-latest, --to-offset and --shift-by");
            if (scenarios[s].has_value && !v)
                return usage_error(sub, "%s needs a value", o);
            a->to = scenarios[s].to;
            i += scenarios[s].has_value;
            bool ok = true;
            if (a->to == TO_DATETIME)
                ok = sl_time_parse_kafka_ms(v, &a->value) == 0;
            else if (a->to == BY_DURATION)
                ok = sl_time_parse_iso_duration_ms(v, &a->value) == 0;
            else if (a->to == TO_OFFSET || a->to == SHIFT_BY)
                ok = parse_int64(v, &a->value);
            if (!ok && a->to == TO_DATETIME)
                return usage_error(sub,
                                   "bad --to-datetime \"%s\": expected YYYY-MM-DDTHH:mm:SS.sss "
                                   "with an optional zone, e.g. 2024-05-01T09:30:00.000 (UTC) or "
                                   "2024-05-01T11:30:00.000+02:00",
                                   v);
            if (!ok && a->to == BY_DURATION)
                return usage_error(sub,
                                   "bad --by-duration \"%s\": expected an ISO-8601 duration "
                                   "PnDTnHnMn.nS, e.g. PT10M, PT1H30M or P1D",
                                   v);
            if (!ok)
                return usage_error(sub, "bad number \"%s\"", v);
        } else if (strcmp(o, "--group") == 0 && v && *v) {
            a->group = v, i++;
        } else if (strcmp(o, "--topic") == 0 && v && *v) {
            a->topics[a->ntopics++] = v, i++;
        } else if (strcmp(o, "--all-topics") == 0 && a->reset) {
            a->all_topics = true;
        } else if (strcmp(o, "--dry-run") == 0 && a->reset) {
            a->dry_run = true;
        } else if (strcmp(o, "--execute") == 0 && a->reset) {
            a->execute = true;
        } else {
            return usage_error(sub, "bad argument \"%s\"", o);
        }
    }
    if (!a->group)
        return usage_error(sub, "name the consumer group with --group");
    if (a->all_topics && a->ntopics)
        return usage_error(sub, "--all-topics and --topic exclude each other");
    if (a->reset && a->to == TO_NONE)
        return usage_error(sub, "choose where to: --to-datetime, --by-duration, --to-earliest, "
                                "--to-latest, --to-offset or --shift-by");
    if (a->reset && a->dry_run == a->execute)
        return usage_error(sub, "choose --dry-run (print the new offsets) or --execute (commit "
                                "them)");
    return 0;
}

/* The partitions of the cluster's topic, or NULL. */
static const rd_kafka_metadata_topic_t *md_topic(const ctx_t *c, const char *topic)
{
    for (int t = 0; t < c->md->topic_cnt; t++)
        if (strcmp(c->md->topics[t].topic, topic) == 0 && !c->md->topics[t].err)
            return &c->md->topics[t];
    return NULL;
}

/* Adds every partition of topic to parts. Returns 0, or -1 with c->err. */
static int add_topic(ctx_t *c, rd_kafka_topic_partition_list_t *parts, const char *topic)
{
    const rd_kafka_metadata_topic_t *mt = md_topic(c, topic);
    if (!mt) {
        snprintf(c->err, sizeof(c->err), "topic %s does not exist", topic);
        return -1;
    }
    for (int p = 0; p < mt->partition_cnt; p++)
        if (!rd_kafka_topic_partition_list_find(parts, topic, mt->partitions[p].id))
            rd_kafka_topic_partition_list_add(parts, topic, mt->partitions[p].id);
    return 0;
}

/* Adds "TOPIC" (every partition) or "TOPIC:P,P..." to parts. Returns 0, or -1 with c->err. */
static int add_topic_arg(ctx_t *c, rd_kafka_topic_partition_list_t *parts, const char *arg)
{
    const char *colon = strchr(arg, ':');
    if (!colon)
        return add_topic(c, parts, arg);
    char *topic = sl_strndup(arg, (size_t)(colon - arg));
    int rc = 0;
    const rd_kafka_metadata_topic_t *mt = md_topic(c, topic);
    if (!mt) {
        snprintf(c->err, sizeof(c->err), "topic %s does not exist", topic);
        rc = -1;
        goto out;
    }
    for (const char *p = colon + 1;;) {
        char *end;
        errno = 0;
        long n = strtol(p, &end, 10);
        bool found = false;
        for (int i = 0; i < mt->partition_cnt && end != p && !errno; i++)
            found |= mt->partitions[i].id == n;
        if (end == p || (*end && *end != ',') || errno) {
            snprintf(c->err, sizeof(c->err),
                     "bad --topic \"%s\": expected TOPIC or TOPIC:PARTITION,PARTITION...", arg);
            rc = -1;
            goto out;
        }
        if (!found) {
            snprintf(c->err, sizeof(c->err), "topic %s has no partition %ld (it has %d)", topic, n,
                     mt->partition_cnt);
            rc = -1;
            goto out;
        }
        if (!rd_kafka_topic_partition_list_find(parts, topic, (int32_t)n))
            rd_kafka_topic_partition_list_add(parts, topic, (int32_t)n);
        if (!*end)
            break;
        p = end + 1;
    }
out:
    free(topic);
    return rc;
}

/* The partitions the command acts on: --topic, --all-topics, or the default (see the usage).
 * Returns the list (the caller destroys it) or NULL with c->err. */
static rd_kafka_topic_partition_list_t *partitions(ctx_t *c)
{
    const args_t *a = c->a;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < a->ntopics; i++)
        if (add_topic_arg(c, parts, a->topics[i]) != 0)
            goto fail;
    if (a->ntopics)
        return parts;
    char *own = a->all_topics ? NULL : sl_kafka_group_topic(c->conf, a->group);
    if (own && md_topic(c, own))
        add_topic(c, parts, own);
    free(own);
    for (int i = 0; i < c->committed->cnt; i++)
        if (!rd_kafka_topic_partition_list_find(parts, c->committed->elems[i].topic,
                                                c->committed->elems[i].partition))
            rd_kafka_topic_partition_list_add(parts, c->committed->elems[i].topic,
                                              c->committed->elems[i].partition);
    return parts;
fail:
    rd_kafka_topic_partition_list_destroy(parts);
    return NULL;
}

/* The group's reader (sl_kafka_group_reader_new), made on first use (NULL with c->err). Kafka
 * takes its commits while the group has no active members. */
static rd_kafka_t *group_consumer(ctx_t *c)
{
    if (!c->group_rk)
        c->group_rk = sl_kafka_group_reader_new(c->conf, c->a->group, "sluice-offsets", c->err,
                                                sizeof(c->err));
    return c->group_rk;
}

/* While the group's coordinator moves or loads (what Kafka's AdminClient retries). */
static bool coordinator_busy(rd_kafka_resp_err_t e)
{
    return e == RD_KAFKA_RESP_ERR_NOT_COORDINATOR ||
           e == RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS ||
           e == RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE;
}

#define GROUP_ATTEMPTS 20 /* 0.5 s apart: about 10 s */

/* Describes the group. Returns 0 when it has no active members (Empty or Dead, as Kafka's tool
 * requires), 1 with a refusal or the dev broker's limits printed, or -1 with c->err. When
 * state is not NULL, prints nothing and fills state and the members instead (for show). */
static int check_inactive(ctx_t *c, char *state, size_t state_size, char *members,
                          size_t members_size)
{
    /* librdkafka 2.0.2 can hang in rd_kafka_destroy after the dev broker failed a
     * DescribeGroups request, so the dev broker is recognized before asking. */
    int dev = sl_kafka_is_dev_broker(c->rk, c->err, sizeof(c->err));
    if (dev < 0)
        return -1;
    if (dev && state) {
        snprintf(state, state_size, "unknown (the dev broker has no DescribeGroups)");
        return 0;
    }
    if (dev) {
        fprintf(stderr,
                "%s: kafka.brokers is the embedded dev broker (`sluice dev-kafka`, or `sluice "
                "all` without kafka.brokers), which has no DescribeGroups, so whether group %s "
                "has active members can't be checked, and offsets are reset only when it has "
                "none. The dev broker keeps events in memory only, for trying Sluice out: "
                "replays need a real Kafka cluster, with kafka.brokers (SLUICE_KAFKA_BROKERS) "
                "pointing at it\n",
                c->cmd, c->a->group);
        return 1;
    }
    const struct rd_kafka_group_list *gl = NULL;
    const struct rd_kafka_group_info *gr = NULL;
    rd_kafka_resp_err_t err;
    for (int attempt = 1;; attempt++) {
        err = rd_kafka_list_groups(c->rk, c->a->group, &gl, SL_KAFKA_ADMIN_TIMEOUT_MS);
        for (int i = 0; !err && i < gl->group_cnt && !gr; i++)
            if (strcmp(gl->groups[i].group, c->a->group) == 0)
                gr = &gl->groups[i];
        rd_kafka_resp_err_t e = err ? err : gr ? gr->err : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (!coordinator_busy(e) || attempt == GROUP_ATTEMPTS)
            break;
        if (gl)
            rd_kafka_group_list_destroy(gl);
        gl = NULL, gr = NULL;
        usleep(500 * 1000);
    }
    int rc = 0;
    if (err || (gr && gr->err)) {
        snprintf(c->err, sizeof(c->err), "could not describe group %s: %s", c->a->group,
                 rd_kafka_err2str(err ? err : gr->err));
        rc = -1;
    } else {
        /* No broker knows a group that never committed nor had members: Kafka calls it Dead. */
        const char *st = gr && gr->state && *gr->state ? gr->state : "Dead";
        int nm = gr ? gr->member_cnt : 0;
        char list[1024] = "";
        size_t len = 0;
        for (int i = 0; i < nm && len < sizeof(list); i++) {
            const struct rd_kafka_group_member_info *m = &gr->members[i];
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s (client %s on %s)",
                                    i ? ", " : "", m->member_id ? m->member_id : "",
                                    m->client_id ? m->client_id : "",
                                    m->client_host ? m->client_host : "");
        }
        if (state) {
            snprintf(state, state_size, "%s", st);
            snprintf(members, members_size, "%s", list);
        } else if (nm || (strcmp(st, "Empty") != 0 && strcmp(st, "Dead") != 0)) {
            fprintf(stderr,
                    "%s: group %s has %d active member%s (state %s)%s%s; offsets can be reset "
                    "only while the group is inactive: stop its consumers (for a Sluice group, "
                    "every instance of the role that uses it) and run this again\n",
                    c->cmd, c->a->group, nm, nm == 1 ? "" : "s", st, nm ? ": " : "", list);
            rc = 1;
        }
    }
    if (gl)
        rd_kafka_group_list_destroy(gl);
    return rc;
}

/* Fills c->committed with the group's committed offsets: asks for every partition of every
 * topic but Kafka's own (__consumer_offsets, __transaction_state) and keeps those it has an
 * offset for. Returns 0 or -1 with c->err. */
static int list_committed(ctx_t *c)
{
    rd_kafka_t *rk = group_consumer(c);
    if (!rk)
        return -1;
    rd_kafka_topic_partition_list_t *ask = rd_kafka_topic_partition_list_new(64);
    for (int t = 0; t < c->md->topic_cnt; t++) {
        const rd_kafka_metadata_topic_t *mt = &c->md->topics[t];
        if (mt->err || strncmp(mt->topic, "__", 2) == 0)
            continue;
        for (int p = 0; p < mt->partition_cnt; p++)
            rd_kafka_topic_partition_list_add(ask, mt->topic, mt->partitions[p].id);
    }
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int attempt = 1; ask->cnt; attempt++) {
        err = rd_kafka_committed(rk, ask, SL_KAFKA_ADMIN_TIMEOUT_MS);
        for (int i = 0; !err && i < ask->cnt; i++)
            if (ask->elems[i].err && ask->elems[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                err = ask->elems[i].err;
        if (!coordinator_busy(err) || attempt == GROUP_ATTEMPTS)
            break;
        usleep(500 * 1000);
    }
    if (err) {
        snprintf(c->err, sizeof(c->err), "could not list the committed offsets of group %s: %s",
                 c->a->group, rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(ask);
        return -1;
    }
    c->committed = rd_kafka_topic_partition_list_new(ask->cnt ? ask->cnt : 1);
    for (int i = 0; i < ask->cnt; i++)
        if (!ask->elems[i].err && ask->elems[i].offset >= 0)
            rd_kafka_topic_partition_list_add(c->committed, ask->elems[i].topic,
                                              ask->elems[i].partition)
                ->offset = ask->elems[i].offset;
    rd_kafka_topic_partition_list_destroy(ask);
    return 0;
}

/* Per partition of parts, the offset ListOffsets answers for `when`: a timestamp in ms,
 * RD_KAFKA_OFFSET_END (latest) or RD_KAFKA_OFFSET_BEGINNING (earliest). Returns a copy of parts
 * with the offsets (-1: no message at or after the timestamp), or NULL with c->err. */
static rd_kafka_topic_partition_list_t *
list_offsets(ctx_t *c, const rd_kafka_topic_partition_list_t *parts, int64_t when)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(parts);
    for (int i = 0; i < l->cnt; i++)
        l->elems[i].offset = when;
    rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(c->rk, l, SL_KAFKA_ADMIN_TIMEOUT_MS);
    for (int i = 0; !err && i < l->cnt; i++)
        if (l->elems[i].err) {
            snprintf(c->err, sizeof(c->err), "could not list the offsets of %s-%d: %s",
                     l->elems[i].topic, l->elems[i].partition, rd_kafka_err2str(l->elems[i].err));
            rd_kafka_topic_partition_list_destroy(l);
            return NULL;
        }
    if (err) {
        snprintf(c->err, sizeof(c->err), "could not list offsets: %s", rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(l);
        return NULL;
    }
    return l;
}

static int64_t offset_of(const rd_kafka_topic_partition_list_t *l,
                         const rd_kafka_topic_partition_t *tp)
{
    rd_kafka_topic_partition_t *f = rd_kafka_topic_partition_list_find(l, tp->topic, tp->partition);
    return f ? f->offset : RD_KAFKA_OFFSET_INVALID;
}

/* Sets each partition's offset to where the scenario says. Returns 0 or -1 with c->err. */
static int new_offsets(ctx_t *c, rd_kafka_topic_partition_list_t *parts)
{
    const args_t *a = c->a;
    int rc = 0;
    rd_kafka_topic_partition_list_t *start = NULL, *end = NULL, *at = NULL;
    if (a->to == TO_DATETIME || a->to == BY_DURATION) {
        int64_t ts = a->to == TO_DATETIME ? a->value : sl_time_now_ms() - a->value;
        if (!(at = list_offsets(c, parts, ts)))
            goto fail;
    }
    if (!(start = list_offsets(c, parts, RD_KAFKA_OFFSET_BEGINNING)) ||
        !(end = list_offsets(c, parts, RD_KAFKA_OFFSET_END)))
        goto fail;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t lo = offset_of(start, tp), hi = offset_of(end, tp), want = 0;
        switch (a->to) {
        case TO_EARLIEST:
            tp->offset = lo;
            continue;
        case TO_LATEST:
            tp->offset = hi;
            continue;
        case TO_DATETIME:
        case BY_DURATION:
            tp->offset = offset_of(at, tp);
            if (tp->offset < 0) {
                fprintf(stderr,
                        "warning: partition %d of topic %s has no message at or after the time; "
                        "using its latest offset\n",
                        tp->partition, tp->topic);
                tp->offset = hi;
            }
            continue;
        case TO_OFFSET:
            want = a->value;
            break;
        case SHIFT_BY: {
            int64_t cur = offset_of(c->committed, tp);
            if (cur < 0) {
                snprintf(c->err, sizeof(c->err),
                         "can't shift the offset of %s-%d: group %s has no committed offset "
                         "there (use --to-earliest, --to-latest, --to-offset or a time)",
                         tp->topic, tp->partition, a->group);
                goto fail;
            }
            want = cur + a->value;
            break;
        }
        case TO_NONE:
            break;
        }
        tp->offset = want;
        if (want > hi) {
            fprintf(stderr,
                    "warning: new offset (%lld) is higher than the latest offset of %s-%d; it is "
                    "set to %lld\n",
                    (long long)want, tp->topic, tp->partition, (long long)hi);
            tp->offset = hi;
        } else if (want < lo) {
            fprintf(stderr,
                    "warning: new offset (%lld) is lower than the earliest offset of %s-%d; it is "
                    "set to %lld\n",
                    (long long)want, tp->topic, tp->partition, (long long)lo);
            tp->offset = lo;
        }
    }
    goto out;
fail:
    rc = -1;
out:
    if (at)
        rd_kafka_topic_partition_list_destroy(at);
    if (start)
        rd_kafka_topic_partition_list_destroy(start);
    if (end)
        rd_kafka_topic_partition_list_destroy(end);
    return rc;
}

typedef struct commit_result {
    bool done;
    rd_kafka_resp_err_t err;
    char what[512]; /* the first failed partition, or "" */
} commit_result_t;

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    commit_result_t *r = opaque;
    r->done = true;
    r->err = err;
    for (int i = 0; offsets && i < offsets->cnt && !*r->what; i++)
        if (offsets->elems[i].err) {
            snprintf(r->what, sizeof(r->what), "%s-%d: %s", offsets->elems[i].topic,
                     offsets->elems[i].partition, rd_kafka_err2str(offsets->elems[i].err));
            if (!r->err)
                r->err = offsets->elems[i].err;
        }
}

/* Commits parts' offsets for the group. Returns 0 or -1 with c->err. */
static int alter(ctx_t *c, const rd_kafka_topic_partition_list_t *parts)
{
    rd_kafka_t *rk = group_consumer(c);
    if (!rk)
        return -1;
    commit_result_t r = {0};
    for (int attempt = 1;; attempt++) {
        memset(&r, 0, sizeof(r));
        rd_kafka_resp_err_t err = rd_kafka_commit_queue(rk, parts, NULL, on_commit, &r);
        if (!r.done)
            r.err = err;
        if (!coordinator_busy(r.err) || attempt == GROUP_ATTEMPTS)
            break;
        usleep(500 * 1000);
    }
    if (!r.err)
        return 0;
    if (*r.what)
        snprintf(c->err, sizeof(c->err), "could not commit the offset of %s", r.what);
    else
        snprintf(c->err, sizeof(c->err), "could not commit the offsets of group %s: %s",
                 c->a->group, rd_kafka_err2str(r.err));
    return -1;
}

static int reset(ctx_t *c)
{
    int inactive = check_inactive(c, NULL, 0, NULL, 0);
    if (inactive)
        return inactive < 0 ? -1 : 1;
    if (list_committed(c) != 0)
        return -1;
    rd_kafka_topic_partition_list_t *parts = partitions(c);
    if (!parts)
        return -1;
    int rc = 0;
    if (!parts->cnt) {
        snprintf(c->err, sizeof(c->err),
                 "group %s has no committed offsets, so there is nothing to reset by default; "
                 "name the topics with --topic",
                 c->a->group);
        rc = -1;
        goto out;
    }
    rd_kafka_topic_partition_list_sort(parts, NULL, NULL);
    if (new_offsets(c, parts) != 0 || (c->a->execute && alter(c, parts) != 0)) {
        rc = -1;
        goto out;
    }
    printf(TABLE_FMT, "GROUP", "TOPIC", "PARTITION", "NEW-OFFSET");
    for (int i = 0; i < parts->cnt; i++) {
        char p[16], o[24];
        snprintf(p, sizeof(p), "%d", parts->elems[i].partition);
        snprintf(o, sizeof(o), "%lld", (long long)parts->elems[i].offset);
        printf(TABLE_FMT, c->a->group, parts->elems[i].topic, p, o);
    }
    fflush(stdout);
    if (c->a->dry_run)
        fprintf(stderr, "dry run: nothing changed; --execute commits these offsets\n");
out:
    rd_kafka_topic_partition_list_destroy(parts);
    return rc;
}

static int show(ctx_t *c)
{
    char state[128], members[1024] = "";
    int rc = check_inactive(c, state, sizeof(state), members, sizeof(members));
    if (rc)
        return -1;
    if (list_committed(c) != 0)
        return -1;
    rd_kafka_topic_partition_list_t *parts = partitions(c);
    if (!parts)
        return -1;
    rd_kafka_topic_partition_list_t *end = NULL;
    printf("group %s: state %s%s%s\n", c->a->group, state, *members ? "; members: " : "", members);
    if (parts->cnt && !(end = list_offsets(c, parts, RD_KAFKA_OFFSET_END))) {
        rc = -1;
        goto out;
    }
    if (!parts->cnt) {
        printf("no committed offsets\n");
        goto out;
    }
    rd_kafka_topic_partition_list_sort(parts, NULL, NULL);
    printf("%-30s %-30s %-10s %-15s %-15s %s\n", "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET",
           "LOG-END-OFFSET", "LAG");
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t cur = offset_of(c->committed, tp), leo = offset_of(end, tp);
        char p[16], co[24] = "-", lo[24] = "-", lag[24] = "-";
        snprintf(p, sizeof(p), "%d", tp->partition);
        if (cur >= 0)
            snprintf(co, sizeof(co), "%lld", (long long)cur);
        if (leo >= 0)
            snprintf(lo, sizeof(lo), "%lld", (long long)leo);
        if (cur >= 0 && leo >= 0)
            snprintf(lag, sizeof(lag), "%lld", (long long)(leo - cur));
        printf("%-30s %-30s %-10s %-15s %-15s %s\n", c->a->group, tp->topic, p, co, lo, lag);
    }
out:
    if (end)
        rd_kafka_topic_partition_list_destroy(end);
    rd_kafka_topic_partition_list_destroy(parts);
    return rc;
}

int cmd_offsets(int argc, char **argv, const char *config_file)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "reset") != 0 && strcmp(argv[1], "show") != 0) {
        fprintf(stderr, "sluice offsets: unknown command \"%s\"; see --help\n", argv[1]);
        return 2;
    }
    args_t a = {0};
    sl_conf_t *conf = NULL;
    ctx_t c = {.a = &a, .cmd = "sluice offsets"};
    int rc = parse_args(argc, argv, &a);
    if (rc)
        goto out;
    c.cmd = a.reset ? "sluice offsets reset" : "sluice offsets show";
    if ((rc = cmd_load_conf(config_file, &conf)) != 0)
        goto out;
    c.conf = conf;
    if (!(c.rk = sl_kafka_admin_new(conf, c.err, sizeof(c.err)))) {
        rc = 2;
        goto fail;
    }
    rd_kafka_resp_err_t err = rd_kafka_metadata(c.rk, 1, NULL, &c.md, SL_KAFKA_ADMIN_TIMEOUT_MS);
    if (err) {
        snprintf(c.err, sizeof(c.err), "could not get the cluster's metadata from \"%s\": %s",
                 sl_conf_str(conf, "kafka.brokers"), rd_kafka_err2str(err));
        rc = 1;
        goto fail;
    }
    rc = a.reset ? reset(&c) : show(&c);
    if (rc < 0) {
        rc = 1;
        goto fail;
    }
    goto out;
fail:
    fprintf(stderr, "%s: %s\n", c.cmd, c.err);
out:
    if (c.committed)
        rd_kafka_topic_partition_list_destroy(c.committed);
    if (c.md)
        rd_kafka_metadata_destroy(c.md);
    sl_kafka_group_reader_destroy(c.group_rk);
    if (c.rk)
        rd_kafka_destroy(c.rk);
    if (conf)
        sl_conf_destroy(conf);
    free(a.topics);
    return rc;
}
