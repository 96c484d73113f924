/*
 * `sluice replay`: sends a window of the events topic through the processor again, for chosen
 * destinations only, to the delivery (and warehouse) topics where the live router (and
 * warehouse) deliver the jobs. The plan (the offset ranges and the destinations) is fixed in
 * Postgres (sluice_replays) when a replay starts; the progress is the committed offsets of
 * the consumer group <prefix>replay-<name>, committed in the Kafka transactions that produce
 * the jobs (processor/replay.h), so an interrupted replay resumes without duplicates.
 */
#include "cmd/cmd.h"
#include "common/buf.h"
#include "common/jsonc.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "common/wsconf.h"
#include "processor/replay.h"

#include <ctype.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage_text[] =
    "usage: sluice replay WINDOW DESTINATIONS [--name NAME] [--rate N] [--dry-run]\n"
    "       sluice replay --resume NAME [--rate N] [--dry-run]\n"
    "       sluice replay --list\n\n"
    "Reads the events of a window of the events topic again and sends them through the\n"
    "processor (destination selection, user and destination transformations) for the chosen\n"
    "destinations only; the jobs go to the delivery (or warehouse) topic and the running\n"
    "router delivers them. The live consumer groups are not touched and the other\n"
    "destinations receive nothing. Dedup does not apply to replayed events.\n\n"
    "WINDOW, over the events' Kafka timestamps (or offsets):\n"
    "  --from TIME [--to TIME]     from TIME (RFC 3339, e.g. 2024-05-06T10:00:00Z; no zone\n"
    "                              means UTC) up to TIME (default: now); --to alone starts at\n"
    "                              the oldest event kept\n"
    "  --by-duration D             the last D: PT1H, PT30M, P1D, PT1H30M or 1h, 30m, 90s\n"
    "  --offsets P:START-END,...   explicit offsets of partition P, START up to (not\n"
    "                              including) END\n"
    "DESTINATIONS:\n"
    "  --destination ID            a destination of the workspace config (repeatable)\n"
    "  --all-destinations          every destination of the workspace config\n\n"
    "  --name NAME      names the replay (default: derived from the window and the\n"
    "                   destinations, so running the same command again resumes it)\n"
    "  --resume NAME    continues an interrupted replay where it stopped\n"
    "  --rate N         at most N events per second\n"
    "  --dry-run        prints each partition's offset range and event count and the total,\n"
    "                   and sends nothing\n"
    "  --list           lists the replays and how far each got\n\n"
    "Progress is committed with the jobs in Kafka transactions: an interrupted replay (Ctrl-C,\n"
    "SIGTERM, a crash) resumes with `sluice replay --resume NAME`, or the same command, and\n"
    "sends each job once. Reads kafka.brokers, postgres.dsn and workspace.config.\n";

typedef struct args {
    const char *from, *to, *duration, *offsets, *name, *resume;
    const char *dests[64];
    size_t ndests;
    bool all_dests, dry_run, list;
    double rate;
} args_t;

/* The plan of a replay: what sluice_replays holds. */
typedef struct plan {
    char name[128];
    char *spec, *window_text;
    char **dests;
    size_t ndests;
    pr_replay_range_t *ranges;
    size_t nranges;
    int64_t total;
    bool finished, stored;
} plan_t;

static void plan_free(plan_t *p)
{
    free(p->spec);
    free(p->window_text);
    for (size_t i = 0; i < p->ndests; i++)
        free(p->dests[i]);
    free(p->dests);
    free(p->ranges);
}

static void plan_add_dest(plan_t *p, const char *id)
{
    for (size_t i = 0; i < p->ndests; i++)
        if (strcmp(p->dests[i], id) == 0)
            return;
    p->dests = sl_realloc(p->dests, (p->ndests + 1) * sizeof(char *));
    p->dests[p->ndests++] = sl_strdup(id);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* --- parsing --- */

/* ISO 8601 durations (PT1H, P1DT2H, PT1M30S, PT0.5S) or sluice's (1h, 30m, 90s). */
static int parse_duration(const char *s, int64_t *ms)
{
    if (*s != 'P' && *s != 'p')
        return sl_conf_parse_duration(s, ms) == 0 && *ms > 0 ? 0 : -1;
    const char *p = s + 1;
    bool time = false, any = false;
    double total = 0;
    while (*p) {
        if (*p == 'T' || *p == 't') {
            if (time)
                return -1;
            time = true;
            p++;
            continue;
        }
        char *end;
        double v = strtod(p, &end);
        if (end == p || v < 0 || !*end)
            return -1;
        char u = (char)toupper((unsigned char)*end);
        double mul = u == 'W' && !time   ? 604800e3
                     : u == 'D' && !time ? 86400e3
                     : u == 'H' && time  ? 3600e3
                     : u == 'M' && time  ? 60e3
                     : u == 'S' && time  ? 1e3
                                         : 0;
        if (!mul)
            return -1;
        total += v * mul;
        any = true;
        p = end + 1;
    }
    if (!any || total < 1)
        return -1;
    *ms = (int64_t)total;
    return 0;
}

static int cmp_range(const void *a, const void *b)
{
    const pr_replay_range_t *x = a, *y = b;
    return (x->partition > y->partition) - (x->partition < y->partition);
}

/* "P:START-END,..." into ranges sorted by partition. Returns 0, or -1 with err. */
static int parse_offsets(const char *s, pr_replay_range_t **out, size_t *n, char *err, size_t errn)
{
    pr_replay_range_t *r = NULL;
    size_t k = 0;
    const char *p = s;
    while (*p) {
        char *e1, *e2, *e3;
        long part = strtol(p, &e1, 10);
        long long start = *e1 == ':' ? strtoll(e1 + 1, &e2, 10) : 0;
        long long end = *e1 == ':' && *e2 == '-' ? strtoll(e2 + 1, &e3, 10) : 0;
        if (e1 == p || *e1 != ':' || e2 == e1 + 1 || *e2 != '-' || e3 == e2 + 1 ||
            (*e3 && *e3 != ',') || part < 0 || part > 100000 || start < 0 || end < start) {
            snprintf(err, errn,
                     "bad --offsets \"%s\": expected PARTITION:START-END[,...] with START <= END, "
                     "e.g. 0:100-200,1:50-80",
                     s);
            free(r);
            return -1;
        }
        for (size_t i = 0; i < k; i++)
            if (r[i].partition == part) {
                snprintf(err, errn, "bad --offsets \"%s\": partition %ld appears twice", s, part);
                free(r);
                return -1;
            }
        r = sl_realloc(r, (k + 1) * sizeof(*r));
        r[k++] = (pr_replay_range_t){(int32_t)part, start, end};
        p = *e3 ? e3 + 1 : e3;
    }
    qsort(r, k, sizeof(*r), cmp_range);
    *out = r;
    *n = k;
    return 0;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
            return false;
    return true;
}

/* FNV-1a: the default name of a replay, from its spec. */
static void name_of(const char *spec, char out[128])
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)spec; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    snprintf(out, 128, "%08llx", (unsigned long long)(h & 0xffffffffULL));
}

/* --- the plan in Postgres --- */

static char *ranges_json(const plan_t *p)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_putc(&b, '[');
    for (size_t i = 0; i < p->nranges; i++)
        sl_buf_printf(&b, "%s{\"partition\":%d,\"start\":%lld,\"end\":%lld}", i ? "," : "",
                      (int)p->ranges[i].partition, (long long)p->ranges[i].start,
                      (long long)p->ranges[i].end);
    sl_buf_putc(&b, ']');
    return sl_buf_steal(&b);
}

/* Fills p from the row of p->name. Returns 1 when found, 0 when not, -1 on error. */
static int plan_load(sl_pg_t *pg, plan_t *p, char *err, size_t errn)
{
    const char *params[] = {p->name};
    PGresult *r;
    if (sl_pg_exec(pg,
                   "SELECT spec, window_text, array_to_json(destinations)::text, ranges::text, "
                   "total, finished_at IS NOT NULL FROM sluice_replays WHERE name = $1",
                   1, params, &r, err, errn) != 0)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    p->spec = sl_strdup(PQgetvalue(r, 0, 0));
    p->window_text = sl_strdup(PQgetvalue(r, 0, 1));
    json_object *d = json_tokener_parse(PQgetvalue(r, 0, 2));
    for (size_t i = 0; d && i < json_object_array_length(d); i++)
        plan_add_dest(p, json_object_get_string(json_object_array_get_idx(d, i)));
    json_object *g = json_tokener_parse(PQgetvalue(r, 0, 3));
    p->nranges = g ? json_object_array_length(g) : 0;
    p->ranges = sl_calloc(p->nranges ? p->nranges : 1, sizeof(*p->ranges));
    for (size_t i = 0; i < p->nranges; i++) {
        json_object *e = json_object_array_get_idx(g, i), *v;
        json_object_object_get_ex(e, "partition", &v);
        p->ranges[i].partition = json_object_get_int(v);
        json_object_object_get_ex(e, "start", &v);
        p->ranges[i].start = json_object_get_int64(v);
        json_object_object_get_ex(e, "end", &v);
        p->ranges[i].end = json_object_get_int64(v);
    }
    if (d)
        json_object_put(d);
    if (g)
        json_object_put(g);
    p->total = atoll(PQgetvalue(r, 0, 4));
    p->finished = PQgetvalue(r, 0, 5)[0] == 't';
    p->stored = true;
    PQclear(r);
    return 1;
}

static int plan_store(sl_pg_t *pg, const plan_t *p, const char *topic, char *err, size_t errn)
{
    sl_buf_t d = SL_BUF_INIT;
    sl_buf_putc(&d, '{');
    for (size_t i = 0; i < p->ndests; i++) {
        if (i)
            sl_buf_putc(&d, ',');
        sl_buf_json_str(&d, p->dests[i], strlen(p->dests[i]));
    }
    sl_buf_putc(&d, '}');
    char *ranges = ranges_json(p), total[32];
    snprintf(total, sizeof(total), "%lld", (long long)p->total);
    const char *params[] = {p->name, p->spec, p->window_text, topic, d.data, ranges, total};
    int rc = sl_pg_exec(pg,
                        "INSERT INTO sluice_replays (name, spec, window_text, topic, "
                        "destinations, ranges, total) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        7, params, NULL, err, errn);
    free(ranges);
    sl_buf_free(&d);
    return rc;
}

/* --- progress --- */

typedef struct progress {
    const char *name;
    bool tty, open_line; /* a bar is on the terminal's last line */
    int64_t t0, last, first_done;
} progress_t;

static void format_left(char *out, size_t n, double s)
{
    if (s < 0 || s > 1e8)
        snprintf(out, n, "?");
    else if (s >= 3600)
        snprintf(out, n, "%d:%02d:%02d", (int)(s / 3600), (int)(s / 60) % 60, (int)s % 60);
    else
        snprintf(out, n, "%d:%02d", (int)(s / 60), (int)s % 60);
}

static void on_progress(void *opaque, int64_t done, int64_t total)
{
    progress_t *p = opaque;
    int64_t now = sl_time_mono_ms();
    if (p->first_done < 0) {
        p->first_done = done;
        p->t0 = now;
    }
    bool end = done >= total;
    if (!p->tty && !end && now - p->last < 1000)
        return;
    p->last = now;
    double secs = (double)(now - p->t0) / 1000.0;
    double rate = secs > 0.2 ? (double)(done - p->first_done) / secs : 0;
    char left[32];
    format_left(left, sizeof(left), rate > 0 ? (double)(total - done) / rate : -1);
    int pct = total ? (int)(done * 100 / total) : 100;
    if (p->tty) {
        char bar[41];
        int fill = total ? (int)(done * 40 / total) : 40;
        for (int i = 0; i < 40; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[40] = '\0';
        fprintf(stderr, "\r[%s] %3d%% %lld/%lld events  %.0f/s  left %s \033[K", bar, pct,
                (long long)done, (long long)total, rate, left);
        p->open_line = !end;
        if (end)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "replay %s: %lld/%lld events (%d%%), %.0f events/s, %s left\n", p->name,
                (long long)done, (long long)total, pct, rate, left);
    }
    fflush(stderr);
}

static atomic_bool stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_requested, true);
}

/* --- commands --- */

static int list_replays(const sl_conf_t *conf, sl_pg_t *pg)
{
    PGresult *r;
    char err[1024];
    if (sl_pg_exec(pg,
                   "SELECT name, to_char(created_at AT TIME ZONE 'UTC', "
                   "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), total, finished_at IS NOT NULL, "
                   "array_to_string(destinations, ','), window_text FROM sluice_replays "
                   "ORDER BY created_at",
                   0, NULL, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice replay: %s\n", err);
        return 1;
    }
    printf("%-20s %-20s %-22s %-24s %s\n", "NAME", "CREATED", "STATE", "DESTINATIONS", "WINDOW");
    for (int i = 0; i < PQntuples(r); i++) {
        char state[64];
        if (PQgetvalue(r, i, 3)[0] == 't') {
            snprintf(state, sizeof(state), "finished %s", PQgetvalue(r, i, 2));
        } else {
            plan_t p = {0};
            snprintf(p.name, sizeof(p.name), "%s", PQgetvalue(r, i, 0));
            int64_t done = -1;
            if (plan_load(pg, &p, err, sizeof(err)) == 1) {
                int64_t *next = sl_calloc(p.nranges ? p.nranges : 1, sizeof(int64_t));
                char *group =
                    sl_asprintf("%sreplay-%s", sl_conf_str(conf, "kafka.topic_prefix"), p.name);
                if (pr_replay_progress(conf, group, p.ranges, p.nranges, next, err, sizeof(err)) ==
                    0) {
                    done = 0;
                    for (size_t k = 0; k < p.nranges; k++)
                        done += next[k] - p.ranges[k].start;
                }
                free(group);
                free(next);
            }
            plan_free(&p);
            if (done >= 0)
                snprintf(state, sizeof(state), "stopped %lld/%s", (long long)done,
                         PQgetvalue(r, i, 2));
            else
                snprintf(state, sizeof(state), "stopped ?/%s", PQgetvalue(r, i, 2));
        }
        printf("%-20s %-20s %-22s %-24s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), state,
               PQgetvalue(r, i, 4), PQgetvalue(r, i, 5));
    }
    PQclear(r);
    return 0;
}

/* Builds a new plan from the arguments: window, ranges, destinations, spec and name. Returns
 * 0, or an exit code after printing the error. */
static int plan_new(const sl_conf_t *conf, const args_t *a, sl_workspace_t *ws, plan_t *p)
{
    char err[1024];
    sl_buf_t spec = SL_BUF_INIT, text = SL_BUF_INIT;
    char *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    sl_buf_printf(&spec, "topic=%s", topic);
    int rc = 2;
    if (a->all_dests) {
        for (size_t s = 0; s < sl_workspace_nsources(ws); s++) {
            const sl_source_t *src = sl_workspace_source_at(ws, s);
            for (size_t k = 0; k < src->ndestinations; k++)
                plan_add_dest(p, src->destinations[k]->id);
        }
        if (!p->ndests) {
            fprintf(stderr, "sluice replay: the workspace config has no destinations\n");
            goto out;
        }
    }
    for (size_t i = 0; i < a->ndests; i++) {
        if (!sl_workspace_destination_by_id(ws, a->dests[i])) {
            fprintf(stderr,
                    "sluice replay: destination \"%s\" is not in the workspace config; add it "
                    "there first (the replay uses its current config)\n",
                    a->dests[i]);
            goto out;
        }
        plan_add_dest(p, a->dests[i]);
    }
    if (a->offsets) {
        if (parse_offsets(a->offsets, &p->ranges, &p->nranges, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice replay: %s\n", err);
            goto out;
        }
        for (size_t i = 0; i < p->nranges; i++)
            sl_buf_printf(&spec, "%s%d:%lld-%lld",
                          i ? "," : " offsets=", (int)p->ranges[i].partition,
                          (long long)p->ranges[i].start, (long long)p->ranges[i].end);
        sl_buf_printf(&text, "offsets %s", a->offsets);
        if (pr_replay_check(conf, p->ranges, p->nranges, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice replay: %s\n", err);
            rc = 1;
            goto out;
        }
    } else {
        int64_t from = 0, to = INT64_MAX, d;
        if (a->duration) {
            if (parse_duration(a->duration, &d) != 0) {
                fprintf(stderr,
                        "sluice replay: bad --by-duration \"%s\": expected an ISO 8601 duration "
                        "such as PT1H, PT30M or P1D, or 1h, 30m, 90s\n",
                        a->duration);
                goto out;
            }
            from = sl_time_now_ms() - d;
            sl_buf_printf(&spec, " last=%lld", (long long)d);
        } else {
            if ((a->from && sl_time_parse_ms(a->from, &from) != 0) ||
                (a->to && sl_time_parse_ms(a->to, &to) != 0)) {
                fprintf(stderr,
                        "sluice replay: bad date-time \"%s\": expected RFC 3339, e.g. "
                        "2024-05-06T10:00:00Z or 2024-05-06T12:00:00+02:00\n",
                        a->from && sl_time_parse_ms(a->from, &from) != 0 ? a->from : a->to);
                goto out;
            }
            if ((to == INT64_MAX ? sl_time_now_ms() : to) <= from) {
                fprintf(stderr, "sluice replay: the window is empty: --from must be before %s\n",
                        a->to ? "--to" : "now");
                goto out;
            }
            sl_buf_printf(&spec, " from=%lld to=%lld", (long long)from, (long long)to);
        }
        char f[SL_TIME_STRLEN], t[SL_TIME_STRLEN];
        sl_time_format_ms(from, f);
        sl_time_format_ms(to == INT64_MAX ? sl_time_now_ms() : to, t);
        sl_buf_printf(&text, "%s to %s", from ? f : "the oldest event", t);
        if (pr_replay_window(conf, from, to, &p->ranges, &p->nranges, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice replay: %s\n", err);
            rc = 1;
            goto out;
        }
    }
    for (size_t i = 0; i < p->nranges; i++)
        p->total += p->ranges[i].end - p->ranges[i].start;

    qsort(p->dests, p->ndests, sizeof(char *), cmp_str);
    sl_buf_puts(&spec, a->all_dests ? " destinations=*" : " destinations=");
    for (size_t i = 0; i < p->ndests && !a->all_dests; i++)
        sl_buf_printf(&spec, "%s%s", i ? "," : "", p->dests[i]);
    p->spec = sl_buf_steal(&spec);
    p->window_text = sl_buf_steal(&text);
    if (a->name)
        snprintf(p->name, sizeof(p->name), "%s", a->name);
    else
        name_of(p->spec, p->name);
    rc = 0;
out:
    sl_buf_free(&spec);
    sl_buf_free(&text);
    free(topic);
    return rc;
}

static void print_plan(const plan_t *p, const int64_t *next)
{
    printf("replay %s: %s, to ", p->name, p->window_text);
    for (size_t i = 0; i < p->ndests; i++)
        printf("%s%s", i ? "," : "", p->dests[i]);
    printf("\n");
    int64_t done = 0;
    for (size_t i = 0; i < p->nranges; i++) {
        const pr_replay_range_t *r = &p->ranges[i];
        printf("partition %d: offsets %lld-%lld (%lld events)", (int)r->partition,
               (long long)r->start, (long long)r->end, (long long)(r->end - r->start));
        if (next && next[i] > r->start)
            printf(", %lld done", (long long)(next[i] - r->start));
        printf("\n");
        done += next ? next[i] - r->start : 0;
    }
    printf("total: %lld events", (long long)p->total);
    if (next)
        printf(", %lld done", (long long)done);
    printf("\n");
}

static int run(const sl_conf_t *conf, const args_t *a, sl_pg_t *pg)
{
    char err[1024];
    int rc = 1;
    plan_t p = {0};
    int64_t *next = NULL;
    char *group = NULL, *topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    sl_wsconf_t *wsc = NULL;
    sl_workspace_t *ws = NULL;

    if (!*sl_conf_str(conf, "kafka.brokers")) {
        fprintf(stderr, "sluice replay: kafka.brokers is empty: set SLUICE_KAFKA_BROKERS to the "
                        "cluster the pipeline runs on\n");
        rc = 2;
        goto out;
    }
    if (!*sl_conf_str(conf, "workspace.config")) {
        fprintf(stderr, "sluice replay: workspace.config is empty: set SLUICE_WORKSPACE_CONFIG "
                        "to the config the processor uses\n");
        rc = 2;
        goto out;
    }
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    wsc = sl_wsconf_start(sl_conf_str(conf, "workspace.config"), dsn,
                          sl_conf_duration_ms(conf, "workspace.poll_interval"), err, sizeof(err));
    if (!wsc) {
        fprintf(stderr, "sluice replay: %s\n", err);
        goto out;
    }
    ws = sl_wsconf_get(wsc);

    int found = 0;
    if (a->resume) {
        snprintf(p.name, sizeof(p.name), "%s", a->resume);
    } else if ((rc = plan_new(conf, a, ws, &p)) != 0) {
        goto out;
    }
    rc = 1;
    /* An existing plan of that name: resumed when it is the same replay. */
    if (pg) {
        plan_t old = {0};
        memcpy(old.name, p.name, sizeof(p.name));
        found = plan_load(pg, &old, err, sizeof(err));
        if (found < 0) {
            fprintf(stderr, "sluice replay: %s\n", err);
            plan_free(&old);
            goto out;
        }
        if (found && !a->resume && strcmp(old.spec, p.spec) != 0) {
            fprintf(stderr,
                    "sluice replay: a replay named %s exists with another window or other "
                    "destinations (%s); choose another --name, or resume it with --resume %s\n",
                    p.name, old.window_text, p.name);
            plan_free(&old);
            rc = 2;
            goto out;
        }
        if (found) {
            plan_free(&p);
            p = old;
        } else {
            plan_free(&old);
        }
    }
    /* The spec starts with "topic=<events topic> ". */
    size_t tlen = found ? strcspn(p.spec + 6, " ") : 0;
    if (found && (tlen != strlen(topic) || strncmp(p.spec + 6, topic, tlen) != 0)) {
        fprintf(stderr,
                "sluice replay: replay %s is of events topic %.*s, not %s; set "
                "kafka.topic_prefix as it was\n",
                p.name, (int)tlen, p.spec + 6, topic);
        rc = 2;
        goto out;
    }
    if (a->resume && !found) {
        fprintf(stderr, "sluice replay: no replay named %s; `sluice replay --list` shows them\n",
                a->resume);
        rc = 2;
        goto out;
    }
    group = sl_asprintf("%sreplay-%s", sl_conf_str(conf, "kafka.topic_prefix"), p.name);
    next = sl_calloc(p.nranges ? p.nranges : 1, sizeof(int64_t));
    for (size_t i = 0; i < p.nranges; i++)
        next[i] = p.ranges[i].start;
    if (found && pr_replay_progress(conf, group, p.ranges, p.nranges, next, err, sizeof(err))) {
        fprintf(stderr, "sluice replay: %s\n", err);
        goto out;
    }
    if (a->dry_run) {
        print_plan(&p, found ? next : NULL);
        printf("dry run: nothing sent\n");
        rc = 0;
        goto out;
    }
    if (p.total == 0) {
        printf("replay %s: no events in %s; nothing to send\n", p.name, p.window_text);
        rc = 0;
        goto out;
    }
    if (p.finished) {
        printf("replay %s already finished (%lld events); replay again under another --name\n",
               p.name, (long long)p.total);
        rc = 0;
        goto out;
    }
    if (!found) {
        /* The plan is stored after the group is set to its start: a plan in Postgres always
         * has its progress in Kafka. */
        if (pr_replay_reset(conf, group, p.ranges, p.nranges, err, sizeof(err)) != 0 ||
            plan_store(pg, &p, topic, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice replay: %s\n", err);
            goto out;
        }
    }
    for (size_t i = 0; i < p.ndests; i++)
        if (!sl_workspace_destination_by_id(ws, p.dests[i]))
            fprintf(stderr,
                    "sluice replay: warning: destination %s is no longer in the workspace "
                    "config; it gets nothing\n",
                    p.dests[i]);
    int64_t done0 = 0;
    for (size_t i = 0; i < p.nranges; i++)
        done0 += next[i] - p.ranges[i].start;
    fprintf(stderr, "replay %s: %lld events of %s to %s", p.name, (long long)p.total, p.window_text,
            p.ndests == 1 ? p.dests[0] : "");
    for (size_t i = 0; p.ndests > 1 && i < p.ndests; i++)
        fprintf(stderr, "%s%s", i ? "," : "", p.dests[i]);
    if (done0)
        fprintf(stderr, " (resuming: %lld done)", (long long)done0);
    fprintf(stderr, "; resume with `sluice replay --resume %s`\n", p.name);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = (int)SA_RESETHAND; /* a second Ctrl-C kills at once: the replay resumes */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    progress_t prog = {.name = p.name, .tty = isatty(2), .first_done = -1};
    pr_replay_opts_t o = {.group = group,
                          .ranges = p.ranges,
                          .nranges = p.nranges,
                          .destinations = (const char *const *)p.dests,
                          .ndestinations = p.ndests,
                          .rate = a->rate,
                          .progress = on_progress,
                          .opaque = &prog,
                          .stop = &stop_requested};
    int64_t done = 0;
    int r = pr_replay_run(conf, wsc, &o, &done, err, sizeof(err));
    if (prog.open_line)
        fputc('\n', stderr);
    if (r == 0) {
        const char *params[] = {p.name};
        if (sl_pg_exec(pg, "UPDATE sluice_replays SET finished_at = now() WHERE name = $1", 1,
                       params, NULL, err, sizeof(err)) != 0)
            fprintf(stderr, "sluice replay: warning: could not mark the replay finished: %s\n",
                    err);
        printf("replay %s finished: %lld events sent through the processor again\n", p.name,
               (long long)p.total);
        rc = 0;
    } else if (r == 1) {
        fprintf(stderr,
                "replay %s interrupted at %lld/%lld events; resume with `sluice replay "
                "--resume %s`\n",
                p.name, (long long)done, (long long)p.total, p.name);
        rc = 1;
    } else {
        fprintf(stderr,
                "sluice replay: %s\nreplay %s stopped at %lld/%lld events; resume with `sluice "
                "replay --resume %s`\n",
                err, p.name, (long long)done, (long long)p.total, p.name);
        rc = 1;
    }
out:
    plan_free(&p);
    free(next);
    free(group);
    free(topic);
    if (ws)
        sl_workspace_unref(ws);
    if (wsc)
        sl_wsconf_stop(wsc);
    return rc;
}

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

int cmd_replay(int argc, char **argv, const char *config_file)
{
    args_t a = {0};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = strcmp(o, "--from") == 0          ? &a.from
                            : strcmp(o, "--to") == 0          ? &a.to
                            : strcmp(o, "--by-duration") == 0 ? &a.duration
                            : strcmp(o, "--offsets") == 0     ? &a.offsets
                            : strcmp(o, "--name") == 0        ? &a.name
                            : strcmp(o, "--resume") == 0      ? &a.resume
                                                              : NULL;
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (slot && v) {
            *slot = v;
            i++;
        } else if (strcmp(o, "--destination") == 0 && v && a.ndests < 64) {
            a.dests[a.ndests++] = v;
            i++;
        } else if (strcmp(o, "--rate") == 0 && v && atof(v) > 0) {
            a.rate = atof(v);
            i++;
        } else if (strcmp(o, "--all-destinations") == 0) {
            a.all_dests = true;
        } else if (strcmp(o, "--dry-run") == 0) {
            a.dry_run = true;
        } else if (strcmp(o, "--list") == 0) {
            a.list = true;
        } else {
            fprintf(stderr, "sluice replay: bad argument \"%s\"%s; see --help\n", o,
                    slot || strcmp(o, "--rate") == 0 || strcmp(o, "--destination") == 0
                        ? " (missing or bad value)"
                        : "");
            return 2;
        }
    }
    int windows = !!(a.from || a.to) + !!a.duration + !!a.offsets;
    const char *problem = NULL;
    if (a.list)
        problem = windows || a.resume || a.ndests || a.all_dests || a.name
                      ? "--list takes no other option"
                      : NULL;
    else if (a.resume)
        problem = windows || a.ndests || a.all_dests || a.name
                      ? "--resume NAME takes only --rate and --dry-run: the window and the "
                        "destinations are the replay's"
                      : NULL;
    else if (windows != 1)
        problem = "choose one window: --from TIME [--to TIME], --by-duration D or --offsets "
                  "P:START-END,...";
    else if (!a.ndests == !a.all_dests)
        problem = "choose the destinations: --destination ID (repeatable) or --all-destinations";
    else if (a.name && !valid_name(a.name))
        problem = "--name takes 1 to 100 letters, digits, '.', '_' or '-'";
    if (problem) {
        fprintf(stderr, "sluice replay: %s\n", problem);
        return 2;
    }

    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    sl_pg_t *pg = NULL;
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    if (*dsn) {
        pg = sl_pg_new(dsn);
        char err[1024];
        PGconn *c = sl_pg_conn(pg, err, sizeof(err));
        if (c)
            PQsetNoticeProcessor(c, quiet, NULL); /* "already exists, skipping" */
        if (!c || (sl_conf_bool(conf, "postgres.migrate") &&
                   sl_migrate_run(c, NULL, err, sizeof(err)) != 0)) {
            fprintf(stderr, "sluice replay: %s\n", err);
            rc = 1;
        }
    } else if (!a.dry_run || a.resume || a.list) {
        fprintf(stderr, "sluice replay: postgres.dsn is empty: a replay keeps its plan in "
                        "Postgres; set SLUICE_POSTGRES_DSN (only --dry-run works without it)\n");
        rc = 2;
    }
    if (!rc)
        rc = a.list ? list_replays(conf, pg) : run(conf, &a, pg);
    if (pg)
        sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}
