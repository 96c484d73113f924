/*
 * `sluice status <messageId>`: an event's journey to each of its destinations, from the
 * router's job status rows (sluice_jobs), the jobs parked for a retry (sluice_parked) and the
 * dead letters of the processor and the router (sluice_failed_events), with its trace and the
 * time it spent in each stage (the tracing columns of sluice_jobs, migration 0008).
 */
#include "cmd/cmd.h"
#include "common/mem.h"
#include "common/pg.h"
#include "common/timeutil.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: sluice status MESSAGE_ID [--json]\n\n"
    "Shows what happened to one event at each of its destinations, in time order: every state\n"
    "the router recorded (failed attempts, succeeded, aborted) with the attempt count, the\n"
    "HTTP status and the start of the response; jobs parked until their next attempt; and dead\n"
    "letters of the processor and the router (`sluice failed retry --id N` sends one again).\n"
    "Then the event's W3C trace id and, per destination, when it passed each stage (received\n"
    "by the gateway, stored in the events topic, read and produced by the processor, read by\n"
    "the router, first attempt, delivered) and how long each stage took.\n"
    "--json prints the same as one JSON object for scripts. Exits 1 when nothing is recorded\n"
    "for the message (job status rows are kept for router.status_retention).\n"
    "Reads postgres.dsn (SLUICE_POSTGRES_DSN).\n";

#define TIME_SQL(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Every source query answers these columns, '' for none. */
enum { C_DEST, C_TYPE, C_TIME, C_STATE, C_JOB, C_ATTEMPTS, C_HTTP, C_TEXT, C_WHERE, C_NOTE };

static const char jobs_sql[] =
    "SELECT destination_id, coalesce(destination_type, ''), "
    "" TIME_SQL("coalesce(last_attempt_at, created_at)") ", state, job_id, attempts::text, "
                                                         "coalesce(last_status::text, ''), "
                                                         "coalesce(last_response, ''), "
                                                         "coalesce(kafka_topic || '/' "
                                                         "|| kafka_partition || '@' || "
                                                         "kafka_offset, ''), '' "
                                                         "FROM sluice_jobs WHERE message_id = $1 "
                                                         "ORDER BY created_at, id";

/* %s: the next attempt of the job's (destination, user) queue, or '' without that table. */
static const char parked_sql[] = "SELECT destination_id, '', " TIME_SQL(
    "parked_at") ", 'parked', job_id, attempts::text, "
                 "coalesce(last_status::text, ''), coalesce(last_response, ''), kafka_topic || '/' "
                 "|| "
                 "kafka_partition || '@' || kafka_offset, %s FROM sluice_parked p WHERE message_id "
                 "= $1 "
                 "ORDER BY id";

static const char parked_next_sql[] =
    "coalesce((SELECT " TIME_SQL("k.next_attempt_at") " FROM sluice_parked_keys k "
                                                      "WHERE k.kafka_topic = p.kafka_topic AND "
                                                      "k.destination_id = p.destination_id "
                                                      "AND k.user_key = p.user_key), '')";

static const char failed_sql[] =
    "SELECT coalesce(destination_id, ''), coalesce(destination_type, ''), " TIME_SQL(
        "failed_at") ", 'dead letter', '', '', '', reason, stage, id::text || coalesce(' ' || "
                     "" TIME_SQL("retried_at") ", '') "
                                               "FROM sluice_failed_events WHERE message_id = $1 "
                                               "ORDER BY failed_at, id";

/* The latest job status row of each destination, for the trace and the stage times (ms since
 * the epoch, '' for none). */
static const char timeline_sql[] =
    "SELECT DISTINCT ON (destination_id) destination_id, state, coalesce(trace_id, ''), "
    "coalesce(span_id, ''), coalesce(parent_span_id, ''), "
    "coalesce((extract(epoch FROM received_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM enqueued_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM picked_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM processed_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM routed_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM first_attempt_at) * 1000)::bigint::text, ''), "
    "coalesce((extract(epoch FROM completed_at) * 1000)::bigint::text, '') "
    "FROM sluice_jobs WHERE message_id = $1 ORDER BY destination_id, created_at DESC, id DESC";

enum { T_DEST, T_STATE, T_TRACE, T_SPAN, T_PARENT, T_TIMES };

/* The points of an event's way, in order, and the stage that ends at each. */
#define NPOINTS 7
static const struct {
    const char *key, *label, *stage;
} points[NPOINTS] = {
    {"receivedAt", "received by the gateway", NULL},
    {"enqueuedAt", "stored in the events topic", "gateway"},
    {"pickedAt", "read by the processor", "events topic"},
    {"processedAt", "produced by the processor", "processor"},
    {"routedAt", "read by the router", "delivery topic"},
    {"firstAttemptAt", "first delivery attempt", "router queue"},
    {"completedAt", NULL, "delivery"}, /* label by state, see last_label */
};

static const char *last_label(const char *state)
{
    return strcmp(state, "succeeded") == 0 ? "delivered"
           : strcmp(state, "aborted") == 0 ? "aborted"
                                           : "last attempt failed";
}

typedef enum { K_JOB, K_PARKED, K_FAILED } kind_t;

typedef struct step {
    kind_t kind;
    PGresult *r; /* owned by the caller's results */
    int row;
    size_t seq;
} step_t;

#define V(s, col) PQgetvalue((s)->r, (s)->row, (col))

static int by_dest_time(const void *a, const void *b)
{
    const step_t *x = a, *y = b;
    int c = strcmp(V(x, C_DEST), V(y, C_DEST));
    if (!c)
        c = strcmp(V(x, C_TIME), V(y, C_TIME));
    return c ? c : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* The first max bytes of s on one line (whole UTF-8 characters), "..." when cut. */
static void excerpt(const char *s, size_t max, char *out, size_t out_size)
{
    size_t n = strlen(s), o = 0;
    bool cut = n > max;
    if (cut) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n && o + 4 < out_size; i++)
        out[o++] = (unsigned char)s[i] < 0x20 ? ' ' : s[i];
    if (cut && o + 4 <= out_size) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* The destination's type from any of its steps (parked rows do not carry it). */
static const char *dest_type(const step_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (*V(&s[i], C_TYPE))
            return V(&s[i], C_TYPE);
    return "";
}

static void print_step(const step_t *s, const char *message_id)
{
    char text[160], own_job[512];
    excerpt(V(s, C_TEXT), 100, text, sizeof(text));
    printf("  %-24s  %-11s", V(s, C_TIME), V(s, C_STATE));
    if (s->kind == K_FAILED) {
        const char *note = V(s, C_NOTE), *sp = strchr(note, ' ');
        printf("  stage %s: %s\n", V(s, C_WHERE), text);
        if (sp)
            printf("  %-24s  %-11s  retried at %s (dead letter %.*s)\n", "", "", sp + 1,
                   (int)(sp - note), note);
        else
            printf("  %-24s  %-11s  `sluice failed retry --id %s` sends it again\n", "", "", note);
        return;
    }
    if (s->kind == K_PARKED && strcmp(V(s, C_ATTEMPTS), "0") == 0) {
        puts("  not tried yet: waits behind an earlier job of its user");
        return;
    }
    printf("  attempt %-3s", V(s, C_ATTEMPTS));
    if (*V(s, C_HTTP))
        printf("  HTTP %s", V(s, C_HTTP));
    snprintf(own_job, sizeof(own_job), "%s:%s", message_id, V(s, C_DEST));
    if (strcmp(V(s, C_JOB), own_job) != 0)
        printf("  job %s", V(s, C_JOB));
    if (*text)
        printf("  %s", text);
    putchar('\n');
    if (s->kind == K_PARKED && *V(s, C_NOTE))
        printf("  %-24s  %-11s  next attempt of its user's queue at %s\n", "", "", V(s, C_NOTE));
}

/* The row of destination dest in the timeline result, or -1. */
static int timeline_row(const PGresult *t, const char *dest)
{
    for (int i = 0; t && i < PQntuples(t); i++)
        if (strcmp(PQgetvalue(t, i, T_DEST), dest) == 0)
            return i;
    return -1;
}

/* The event's trace id: the first row's that has one, "" for none. */
static const char *trace_of(const PGresult *t)
{
    for (int i = 0; t && i < PQntuples(t); i++)
        if (*PQgetvalue(t, i, T_TRACE))
            return PQgetvalue(t, i, T_TRACE);
    return "";
}

static int64_t point_ms(const PGresult *t, int row, int p)
{
    const char *v = PQgetvalue(t, row, T_TIMES + p);
    return *v ? strtoll(v, NULL, 10) : -1;
}

static void print_timeline(const PGresult *t, int row)
{
    if (*PQgetvalue(t, row, T_SPAN))
        printf("  trace %s  span %s  parent %s\n", PQgetvalue(t, row, T_TRACE),
               PQgetvalue(t, row, T_SPAN), PQgetvalue(t, row, T_PARENT));
    int64_t prev = -1, first = -1;
    bool any = false;
    for (int p = 0; p < NPOINTS; p++) {
        int64_t ms = point_ms(t, row, p);
        if (ms < 0)
            continue;
        if (!any)
            printf("  %-28s  %-24s  %-14s  %s\n", "timeline", "at", "time in", "took");
        any = true;
        char at[SL_TIME_STRLEN], took[32] = "";
        sl_time_format_ms(ms, at);
        if (prev >= 0)
            snprintf(took, sizeof(took), "%lld ms", (long long)(ms - prev));
        const char *label =
            points[p].label ? points[p].label : last_label(PQgetvalue(t, row, T_STATE));
        if (prev >= 0)
            printf("  %-28s  %-24s  %-14s  %s\n", label, at, points[p].stage, took);
        else
            printf("  %-28s  %s\n", label, at);
        if (first < 0)
            first = ms;
        prev = ms;
    }
    if (any && prev > first)
        printf("  %-28s  %-24s  %-14s  %lld ms\n", "total", "", "", (long long)(prev - first));
}

static void print_human(const char *message_id, step_t *steps, size_t n, const PGresult *t)
{
    size_t ndest = 0;
    for (size_t i = 0; i < n; i++)
        ndest += i == 0 || strcmp(V(&steps[i], C_DEST), V(&steps[i - 1], C_DEST)) != 0;
    printf("message %s: %zu destination%s\n", message_id, ndest, ndest == 1 ? "" : "s");
    if (*trace_of(t))
        printf("trace %s\n", trace_of(t));
    for (size_t i = 0, end; i < n; i = end) {
        for (end = i + 1; end < n && strcmp(V(&steps[end], C_DEST), V(&steps[i], C_DEST)) == 0;)
            end++;
        const char *dest = V(&steps[i], C_DEST), *type = dest_type(steps + i, end - i);
        printf("\ndestination %s%s%s%s\n", *dest ? dest : "(none)", *type ? " (" : "", type,
               *type ? ")" : "");
        for (size_t j = i; j < end; j++)
            print_step(&steps[j], message_id);
        int row = timeline_row(t, dest);
        if (row >= 0)
            print_timeline(t, row);
    }
}

static void put_str(json_object *o, const char *key, const char *v)
{
    if (*v)
        json_object_object_add(o, key, json_object_new_string(v));
}

static void put_int(json_object *o, const char *key, const char *v)
{
    if (*v)
        json_object_object_add(o, key, json_object_new_int64(strtoll(v, NULL, 10)));
}

static json_object *step_json(const step_t *s)
{
    static const char *const kinds[] = {"job", "parked", "deadLetter"};
    json_object *o = json_object_new_object();
    put_str(o, "time", V(s, C_TIME));
    put_str(o, "kind", kinds[s->kind]);
    put_str(o, "state", V(s, C_STATE));
    put_str(o, "jobId", V(s, C_JOB));
    put_int(o, "attempts", V(s, C_ATTEMPTS));
    put_int(o, "httpStatus", V(s, C_HTTP));
    if (s->kind == K_FAILED) {
        const char *note = V(s, C_NOTE), *sp = strchr(note, ' ');
        put_str(o, "stage", V(s, C_WHERE));
        put_str(o, "reason", V(s, C_TEXT));
        json_object_object_add(o, "failedEventId", json_object_new_int64(strtoll(note, NULL, 10)));
        if (sp)
            put_str(o, "retriedAt", sp + 1);
    } else {
        put_str(o, "response", V(s, C_TEXT));
        put_str(o, "kafka", V(s, C_WHERE));
        put_str(o, "nextAttemptAt", V(s, C_NOTE));
    }
    return o;
}

/* The trace and the stage times of one destination as JSON members of d. */
static void timeline_json(json_object *d, const PGresult *t, int row)
{
    json_object *trace = json_object_new_object();
    put_str(trace, "traceId", PQgetvalue(t, row, T_TRACE));
    put_str(trace, "spanId", PQgetvalue(t, row, T_SPAN));
    put_str(trace, "parentSpanId", PQgetvalue(t, row, T_PARENT));
    json_object_object_add(d, "trace", trace);
    json_object *tl = json_object_new_object(), *stages = json_object_new_array();
    int64_t prev = -1, first = -1;
    int prev_p = -1;
    for (int p = 0; p < NPOINTS; p++) {
        int64_t ms = point_ms(t, row, p);
        if (ms < 0)
            continue;
        char at[SL_TIME_STRLEN];
        sl_time_format_ms(ms, at);
        json_object_object_add(tl, points[p].key, json_object_new_string(at));
        if (prev >= 0) {
            json_object *st = json_object_new_object();
            json_object_object_add(st, "stage", json_object_new_string(points[p].stage));
            json_object_object_add(st, "from", json_object_new_string(points[prev_p].key));
            json_object_object_add(st, "to", json_object_new_string(points[p].key));
            json_object_object_add(st, "ms", json_object_new_int64(ms - prev));
            json_object_array_add(stages, st);
        }
        if (first < 0)
            first = ms;
        prev = ms;
        prev_p = p;
    }
    json_object_object_add(tl, "stages", stages);
    if (first >= 0)
        json_object_object_add(tl, "totalMs", json_object_new_int64(prev - first));
    json_object_object_add(d, "timeline", tl);
}

static void print_json(const char *message_id, step_t *steps, size_t n, const PGresult *t)
{
    json_object *root = json_object_new_object(), *dests = json_object_new_array();
    json_object_object_add(root, "messageId", json_object_new_string(message_id));
    if (*trace_of(t))
        json_object_object_add(root, "traceId", json_object_new_string(trace_of(t)));
    json_object_object_add(root, "destinations", dests);
    for (size_t i = 0, end; i < n; i = end) {
        for (end = i + 1; end < n && strcmp(V(&steps[end], C_DEST), V(&steps[i], C_DEST)) == 0;)
            end++;
        json_object *d = json_object_new_object(), *arr = json_object_new_array();
        const char *dest = V(&steps[i], C_DEST);
        json_object_object_add(d, "destinationId", *dest ? json_object_new_string(dest) : NULL);
        put_str(d, "destinationType", dest_type(steps + i, end - i));
        for (size_t j = i; j < end; j++)
            json_object_array_add(arr, step_json(&steps[j]));
        json_object_object_add(d, "steps", arr);
        int row = timeline_row(t, dest);
        if (row >= 0)
            timeline_json(d, t, row);
        json_object_array_add(dests, d);
    }
    puts(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

/* Runs the three queries into r[] (NULL for a table that does not exist yet), and the
 * timeline's into *tl (NULL before migration 0008). */
static int query(sl_pg_t *pg, const char *message_id, PGresult *r[3], PGresult **tl)
{
    const char *params[] = {message_id};
    char err[1024], sql[2048];
    PGresult *t;
    if (sl_pg_exec(pg,
                   "SELECT to_regclass('sluice_parked') IS NOT NULL, "
                   "to_regclass('sluice_parked_keys') IS NOT NULL, EXISTS (SELECT 1 FROM "
                   "pg_attribute WHERE attrelid = to_regclass('sluice_jobs') AND attname = "
                   "'trace_id' AND NOT attisdropped)",
                   0, NULL, &t, err, sizeof(err)) != 0)
        goto fail;
    bool parked = PQgetvalue(t, 0, 0)[0] == 't', keys = PQgetvalue(t, 0, 1)[0] == 't',
         traced = PQgetvalue(t, 0, 2)[0] == 't';
    PQclear(t);
    if (traced && sl_pg_exec(pg, timeline_sql, 1, params, tl, err, sizeof(err)) != 0)
        goto fail;
    if (sl_pg_exec(pg, jobs_sql, 1, params, &r[K_JOB], err, sizeof(err)) != 0)
        goto fail;
    snprintf(sql, sizeof(sql), parked_sql, keys ? parked_next_sql : "''");
    if (parked && sl_pg_exec(pg, sql, 1, params, &r[K_PARKED], err, sizeof(err)) != 0)
        goto fail;
    if (sl_pg_exec(pg, failed_sql, 1, params, &r[K_FAILED], err, sizeof(err)) != 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "sluice status: %s\n", err);
    return 1;
}

int cmd_status(int argc, char **argv, const char *config_file)
{
    const char *message_id = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (argv[i][0] != '-' && !message_id) {
            message_id = argv[i];
        } else {
            fprintf(stderr, "sluice status: bad argument \"%s\"; see --help\n", argv[i]);
            return 2;
        }
    }
    if (!message_id) {
        fputs(usage_text, stderr);
        return 2;
    }
    sl_conf_t *conf;
    sl_pg_t *pg;
    int rc = cmd_load_pg("sluice status", config_file, &conf, &pg);
    if (rc)
        return rc;
    PGresult *r[3] = {NULL, NULL, NULL}, *tl = NULL;
    step_t *steps = NULL;
    rc = query(pg, message_id, r, &tl);
    if (rc)
        goto out;
    size_t n = 0;
    for (int k = 0; k < 3; k++)
        n += r[k] ? (size_t)PQntuples(r[k]) : 0;
    if (n == 0) {
        fprintf(stderr, "no record of message %s\n", message_id);
        rc = 1;
        goto out;
    }
    steps = sl_malloc(n * sizeof(*steps));
    n = 0;
    for (int k = 0; k < 3; k++)
        for (int i = 0; r[k] && i < PQntuples(r[k]); i++, n++)
            steps[n] = (step_t){.kind = (kind_t)k, .r = r[k], .row = i, .seq = n};
    qsort(steps, n, sizeof(*steps), by_dest_time);
    if (json)
        print_json(message_id, steps, n, tl);
    else
        print_human(message_id, steps, n, tl);
out:
    free(steps);
    PQclear(tl);
    for (int k = 0; k < 3; k++)
        PQclear(r[k]);
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}
