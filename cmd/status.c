/*
 * `sluice status <messageId>`: an event's journey to each of its destinations, from the
 * router's job status rows (sluice_jobs), the jobs parked for a retry (sluice_parked) and the
 * dead letters of the processor and the router (sluice_failed_events).
 */
#include "cmd/cmd.h"
#include "common/mem.h"
#include "common/pg.h"

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

static void print_human(const char *message_id, step_t *steps, size_t n)
{
    size_t ndest = 0;
    for (size_t i = 0; i < n; i++)
        ndest += i == 0 || strcmp(V(&steps[i], C_DEST), V(&steps[i - 1], C_DEST)) != 0;
    printf("message %s: %zu destination%s\n", message_id, ndest, ndest == 1 ? "" : "s");
    for (size_t i = 0, end; i < n; i = end) {
        for (end = i + 1; end < n && strcmp(V(&steps[end], C_DEST), V(&steps[i], C_DEST)) == 0;)
            end++;
        const char *dest = V(&steps[i], C_DEST), *type = dest_type(steps + i, end - i);
        printf("\ndestination %s%s%s%s\n", *dest ? dest : "(none)", *type ? " (" : "", type,
               *type ? ")" : "");
        for (size_t j = i; j < end; j++)
            print_step(&steps[j], message_id);
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

static void print_json(const char *message_id, step_t *steps, size_t n)
{
    json_object *root = json_object_new_object(), *dests = json_object_new_array();
    json_object_object_add(root, "messageId", json_object_new_string(message_id));
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
        json_object_array_add(dests, d);
    }
    puts(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

/* Runs the three queries into r[] (NULL for a table that does not exist yet). */
static int query(sl_pg_t *pg, const char *message_id, PGresult *r[3])
{
    const char *params[] = {message_id};
    char err[1024], sql[2048];
    PGresult *t;
    if (sl_pg_exec(pg,
                   "SELECT to_regclass('sluice_parked') IS NOT NULL, "
                   "to_regclass('sluice_parked_keys') IS NOT NULL",
                   0, NULL, &t, err, sizeof(err)) != 0)
        goto fail;
    bool parked = PQgetvalue(t, 0, 0)[0] == 't', keys = PQgetvalue(t, 0, 1)[0] == 't';
    PQclear(t);
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
    PGresult *r[3] = {NULL, NULL, NULL};
    step_t *steps = NULL;
    rc = query(pg, message_id, r);
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
        print_json(message_id, steps, n);
    else
        print_human(message_id, steps, n);
out:
    free(steps);
    for (int k = 0; k < 3; k++)
        PQclear(r[k]);
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}
