/*
 * `sluice lag`: consumer lag per group, topic and partition (committed offset, end offset,
 * lag in messages and seconds) with a Burrow-style status over a window of samples, once or
 * refreshed in place (--watch). The sampling and the rules are in common/lag.c.
 */
#include "cmd/cmd.h"
#include "common/kafka.h"
#include "common/lag.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: sluice lag [--group G]... [--all-groups] [--samples N] [--interval D]\n"
    "                  [--watch [D]] [--json]\n\n"
    "Shows the lag of consumer groups per topic and partition: the committed offset, the end\n"
    "offset (high watermark), the lag in messages and in seconds (the age of the oldest\n"
    "message not consumed), the member holding the partition, and a status evaluated with\n"
    "Burrow's rules over a sliding window of samples:\n"
    "  OK      the lag is 0 now, or went down within the window\n"
    "  WARN    the lag never went down over the window while the committed offset moved (a\n"
    "          slow consumer), or since a sample with lag 0 (falling behind, maybe stopped)\n"
    "  STOP    the committed offset did not move over the window and no member of the group\n"
    "          holds the partition: the consumer is gone\n"
    "  STALL   the committed offset did not move over the window though a member holds it\n"
    "  REWIND  the committed offset went back\n"
    "A group is OK, WARN or ERR (some partition STOP, STALL or REWIND).\n\n"
    "  --group G      a group to show (repeatable); default: Sluice's own groups\n"
    "                 (<kafka.topic_prefix>processor, router, warehouse, failed-recorder)\n"
    "  --all-groups   every group of the cluster (not on the embedded dev broker, which has no\n"
    "                 ListGroups)\n"
    "  --samples N    samples in the status window, at least 2 (default 3; 10 with --watch)\n"
    "  --interval D   time between samples, e.g. 500ms, 2s (default 1s): a run takes\n"
    "                 (N-1) x D before it prints\n"
    "  --watch [D]    sample every D (default --interval) and refresh until interrupted; the\n"
    "                 window slides over the last N samples\n"
    "  --json         one JSON object (per refresh, one a line, with --watch)\n\n"
    "Reads kafka.brokers (SLUICE_KAFKA_BROKERS) and kafka.topic_prefix. The roles publish the\n"
    "same figures for their own groups on /metrics every kafka.lag_interval.\n";

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* Sleeps ms unless a signal stops us first. */
static void nap(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (!stop_flag && nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static json_object *jnum_or_null(int64_t v, bool ok)
{
    return ok ? json_object_new_int64(v) : NULL;
}

static json_object *jstr_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static void print_json(const sl_lag_t *l, size_t samples, int64_t interval_ms, bool watch)
{
    json_object *root = json_object_new_object();
    char now[SL_TIME_STRLEN];
    sl_time_format_ms(sl_time_now_ms(), now);
    json_object_object_add(root, "time", json_object_new_string(now));
    json_object_object_add(root, "window", json_object_new_int64((int64_t)samples));
    json_object_object_add(root, "interval_ms", json_object_new_int64(interval_ms));
    json_object_object_add(root, "note", jstr_or_null(sl_lag_note(l)));
    json_object *groups = json_object_new_array();
    const sl_lag_group_t *gs;
    size_t ng = sl_lag_groups(l, &gs);
    for (size_t i = 0; i < ng; i++) {
        const sl_lag_group_t *g = &gs[i];
        json_object *jg = json_object_new_object();
        json_object_object_add(jg, "group", json_object_new_string(g->group));
        json_object_object_add(jg, "state", jstr_or_null(g->state));
        json_object_object_add(jg, "status", json_object_new_string(sl_lag_status_name(g->status)));
        json_object_object_add(jg, "error", jstr_or_null(g->error));
        json_object_object_add(jg, "total_lag", json_object_new_int64(g->total_lag));
        json_object_object_add(jg, "max_lag", json_object_new_int64(g->max_lag));
        json_object_object_add(jg, "max_lag_seconds", json_object_new_double(g->max_lag_seconds));
        json_object *parts = json_object_new_array();
        for (size_t j = 0; j < g->nparts; j++) {
            const sl_lag_partition_t *p = &g->parts[j];
            json_object *jp = json_object_new_object();
            json_object_object_add(jp, "topic", json_object_new_string(p->topic));
            json_object_object_add(jp, "partition", json_object_new_int(p->partition));
            json_object_object_add(jp, "committed", jnum_or_null(p->committed, p->committed >= 0));
            json_object_object_add(jp, "start", json_object_new_int64(p->start));
            json_object_object_add(jp, "end", json_object_new_int64(p->end));
            json_object_object_add(jp, "lag", json_object_new_int64(p->lag));
            json_object_object_add(jp, "lag_seconds",
                                   p->lag_seconds >= 0 ? json_object_new_double(p->lag_seconds)
                                                       : NULL);
            json_object_object_add(jp, "status",
                                   json_object_new_string(sl_lag_status_name(p->status)));
            json_object_object_add(jp, "samples", json_object_new_int64((int64_t)p->samples));
            json_object_object_add(jp, "consumer_id", jstr_or_null(p->consumer_id));
            json_object_object_add(jp, "host", jstr_or_null(p->host));
            json_object_object_add(jp, "client_id", jstr_or_null(p->client_id));
            json_object_array_add(parts, jp);
        }
        json_object_object_add(jg, "partitions", parts);
        json_object_array_add(groups, jg);
    }
    json_object_object_add(root, "groups", groups);
    int flags =
        JSON_C_TO_STRING_NOSLASHESCAPE |
        (watch ? JSON_C_TO_STRING_PLAIN : JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
    puts(json_object_to_json_string_ext(root, flags));
    json_object_put(root);
}

static void print_text(const sl_lag_t *l)
{
    const sl_lag_group_t *gs;
    size_t ng = sl_lag_groups(l, &gs);
    for (size_t i = 0; i < ng; i++) {
        const sl_lag_group_t *g = &gs[i];
        printf("%sgroup %s (%s): %s, lag %lld messages, %.1f s at most\n", i ? "\n" : "", g->group,
               g->state ? g->state : "state unknown", sl_lag_status_name(g->status),
               (long long)g->total_lag, g->max_lag_seconds);
        if (g->error)
            printf("  error: %s\n", g->error);
        if (!g->nparts) {
            if (!g->error)
                puts("  no committed offsets and no members");
            continue;
        }
        size_t tw = 5;
        for (size_t j = 0; j < g->nparts; j++)
            if (strlen(g->parts[j].topic) > tw)
                tw = strlen(g->parts[j].topic);
        printf("  %-*s  %9s  %10s  %10s  %8s  %8s  %-6s  %s\n", (int)tw, "TOPIC", "PARTITION",
               "COMMITTED", "END", "LAG", "LAG-S", "STATUS", "CONSUMER");
        for (size_t j = 0; j < g->nparts; j++) {
            const sl_lag_partition_t *p = &g->parts[j];
            char committed[24], secs[24];
            if (p->committed >= 0)
                snprintf(committed, sizeof(committed), "%lld", (long long)p->committed);
            else
                snprintf(committed, sizeof(committed), "-");
            if (p->lag_seconds >= 0)
                snprintf(secs, sizeof(secs), "%.1f", p->lag_seconds);
            else
                snprintf(secs, sizeof(secs), "?");
            printf("  %-*s  %9d  %10s  %10lld  %8lld  %8s  %-6s  %s%s%s\n", (int)tw, p->topic,
                   (int)p->partition, committed, (long long)p->end, (long long)p->lag, secs,
                   sl_lag_status_name(p->status), p->consumer_id ? p->consumer_id : "-",
                   p->host ? " " : "", p->host ? p->host : "");
        }
    }
    if (sl_lag_note(l))
        printf("\nnote: %s\n", sl_lag_note(l));
}

/* Parses a duration argument of opt into *ms (> 0). Prints the error and returns 2 if bad. */
static int duration_arg(const char *opt, const char *s, int64_t *ms)
{
    if (sl_conf_parse_duration(s, ms) != 0 || *ms <= 0) {
        fprintf(stderr, "sluice lag: %s needs a duration such as 500ms or 2s, not \"%s\"\n", opt,
                s);
        return 2;
    }
    return 0;
}

/* The topic of one of Sluice's own groups (a static buffer), or NULL for another group. */
static const char *own_topic(const sl_conf_t *conf, const char *group)
{
    static char topic[512];
    for (const sl_kafka_group_def_t *d = sl_kafka_pipeline_groups; d->group; d++) {
        char *g = sl_kafka_topic(conf, d->group);
        bool mine = strcmp(g, group) == 0;
        free(g);
        if (mine) {
            char *t = sl_kafka_topic(conf, d->topic);
            snprintf(topic, sizeof(topic), "%s", t);
            free(t);
            return topic;
        }
    }
    return NULL;
}

int cmd_lag(int argc, char **argv, const char *config_file)
{
    const char **groups = sl_calloc((size_t)argc, sizeof(*groups));
    size_t ngroups = 0, samples = 0;
    int64_t interval_ms = 1000, watch_ms = 0;
    bool all = false, json = false, watch = false;
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            rc = 0;
            goto out;
        } else if (strcmp(a, "--group") == 0 && v) {
            groups[ngroups++] = v;
            i++;
        } else if (strncmp(a, "--group=", 8) == 0) {
            groups[ngroups++] = a + 8;
        } else if (strcmp(a, "--all-groups") == 0) {
            all = true;
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else if (strcmp(a, "--samples") == 0 && v) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 2 || n > 1000) {
                fprintf(stderr,
                        "sluice lag: --samples needs a number from 2 to 1000, not "
                        "\"%s\"\n",
                        v);
                goto out;
            }
            samples = (size_t)n;
            i++;
        } else if (strcmp(a, "--interval") == 0 && v) {
            if (duration_arg(a, v, &interval_ms))
                goto out;
            i++;
        } else if (strcmp(a, "--watch") == 0) {
            watch = true;
            int64_t ms;
            if (v && v[0] != '-' && sl_conf_parse_duration(v, &ms) == 0) {
                if (duration_arg(a, v, &watch_ms))
                    goto out;
                i++;
            }
        } else if (strncmp(a, "--watch=", 8) == 0) {
            watch = true;
            if (duration_arg("--watch", a + 8, &watch_ms))
                goto out;
        } else {
            fprintf(stderr, "sluice lag: unexpected argument \"%s\"; see --help\n", a);
            goto out;
        }
    }
    if (all && ngroups) {
        fputs("sluice lag: --all-groups and --group exclude each other\n", stderr);
        goto out;
    }
    if (watch && watch_ms)
        interval_ms = watch_ms;
    if (!samples)
        samples = watch ? 10 : 3;

    sl_conf_t *conf;
    rc = cmd_load_conf(config_file, &conf);
    if (rc)
        goto out;
    char err[1024];
    sl_lag_t *l = sl_lag_new(conf, samples, err, sizeof(err));
    if (!l) {
        fprintf(stderr, "sluice lag: %s\n", err);
        sl_conf_destroy(conf);
        rc = 2;
        goto out;
    }
    if (all) {
        sl_lag_all_groups(l, true);
    } else {
        /* Sluice's own groups on their topics: on every partition, committed or not, and on
         * brokers that can't list a group's committed partitions (the dev broker) */
        for (size_t i = 0; i < ngroups; i++)
            sl_lag_add_group(l, groups[i], own_topic(conf, groups[i]));
        for (const sl_kafka_group_def_t *d = sl_kafka_pipeline_groups; !ngroups && d->group; d++) {
            char *g = sl_kafka_topic(conf, d->group);
            sl_lag_add_group(l, g, own_topic(conf, g));
            free(g);
        }
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    bool tty = isatty(STDOUT_FILENO) && !json;
    rc = 0;
    for (size_t taken = 0; !stop_flag;) {
        int64_t started = sl_time_mono_ms();
        if (sl_lag_sample(l, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice lag: %s\n", err);
            if (!watch) {
                rc = 1;
                break;
            }
        } else {
            taken++;
        }
        if (watch && taken) {
            if (tty)
                fputs("\033[H\033[J", stdout);
            if (json)
                print_json(l, samples, interval_ms, true);
            else
                print_text(l);
            fflush(stdout);
        } else if (!watch && taken == samples) {
            if (json)
                print_json(l, samples, interval_ms, false);
            else
                print_text(l);
            break;
        }
        int64_t left = interval_ms - (sl_time_mono_ms() - started);
        if (left > 0)
            nap(left);
    }
    sl_lag_destroy(l);
    sl_conf_destroy(conf);
out:
    free(groups);
    return rc;
}
