/* Upload bookkeeping in Postgres: records, claims, transitions, retries; see uploads.h. */
#include "warehouse/uploads.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UNFINISHED "state NOT IN ('exported_data', 'aborted')"

void wh_upload_free(wh_upload_t *u)
{
    if (!u)
        return;
    free(u->source_id);
    free(u->destination_id);
    free(u->destination_type);
    free(u->namespace);
    free(u->state);
    memset(u, 0, sizeof(*u));
}

int wh_uploads_next_id(sl_pg_t *pg, int64_t *id, char *errstr, size_t errstr_size)
{
    PGresult *r;
    int rc = sl_pg_exec(pg, "SELECT nextval('sluice_wh_uploads_id_seq')", 0, NULL, &r, errstr,
                        errstr_size);
    if (rc)
        return rc;
    *id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

int wh_uploads_state(sl_pg_t *pg, int64_t id, char *state, size_t state_size, char *errstr,
                     size_t errstr_size)
{
    char ids[24];
    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    const char *p[] = {ids};
    PGresult *r;
    int rc = sl_pg_exec(pg, "SELECT state FROM sluice_wh_uploads WHERE id = $1::bigint", 1, p, &r,
                        errstr, errstr_size);
    if (rc)
        return rc;
    int found = PQntuples(r) > 0;
    if (found)
        snprintf(state, state_size, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return found;
}

static void ms_param(char *buf, size_t n, int64_t ms)
{
    if (ms > 0)
        snprintf(buf, n, "%lld", (long long)ms);
    else
        buf[0] = '\0';
}

int wh_uploads_record(sl_pg_t *pg, int64_t id, const wh_upload_new_t *u, const char *instance,
                      char *errstr, size_t errstr_size)
{
    sl_buf_t files = SL_BUF_INIT;
    sl_buf_putc(&files, '[');
    for (size_t i = 0; i < u->nfiles; i++) {
        sl_buf_puts(&files, i ? ",{\"t\":" : "{\"t\":");
        sl_buf_json_str(&files, u->files[i].table, strlen(u->files[i].table));
        sl_buf_puts(&files, ",\"p\":");
        sl_buf_json_str(&files, u->files[i].path, strlen(u->files[i].path));
        sl_buf_printf(&files, ",\"r\":%lld,\"b\":%lld}", (long long)u->files[i].rows,
                      (long long)u->files[i].bytes);
    }
    sl_buf_puts(&files, "]");
    char ids[24], events[24], rows[24], first[24], last[24];
    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    snprintf(events, sizeof(events), "%lld", (long long)u->events);
    snprintf(rows, sizeof(rows), "%lld", (long long)u->rows);
    ms_param(first, sizeof(first), u->first_event_ms);
    ms_param(last, sizeof(last), u->last_event_ms);
    const char *p[] = {ids,
                       u->source_id,
                       u->destination_id,
                       u->destination_type ? u->destination_type : "POSTGRES",
                       u->namespace,
                       events,
                       rows,
                       *first ? first : NULL,
                       *last ? last : NULL,
                       u->kafka_topic,
                       u->kafka_offsets,
                       files.data,
                       instance};
    int rc = sl_pg_exec(
        pg,
        "WITH u AS (INSERT INTO sluice_wh_uploads (id, source_id, destination_id, "
        "destination_type, namespace, events, rows_staged, first_event_at, last_event_at, "
        "kafka_topic, kafka_offsets) VALUES ($1::bigint, $2, $3, $4, $5, $6::bigint, $7::bigint, "
        "to_timestamp($8::bigint / 1000.0), to_timestamp($9::bigint / 1000.0), $10, $11::jsonb) "
        "RETURNING id), "
        "f AS (INSERT INTO sluice_wh_staging_files (upload_id, table_name, path, rows, bytes) "
        "SELECT u.id, x.t, x.p, x.r, x.b FROM u, json_to_recordset($12::json) AS x(t text, p "
        "text, r bigint, b bigint)) "
        "INSERT INTO sluice_wh_upload_events (upload_id, state, instance) "
        "SELECT id, 'waiting', $13 FROM u",
        13, p, NULL, errstr, errstr_size);
    sl_buf_free(&files);
    return rc;
}

/* Fills u from a row of id, source_id, destination_id, destination_type, namespace, state,
 * attempts, events, rows_staged. */
static void upload_from_row(wh_upload_t *u, PGresult *r, int row)
{
    u->id = strtoll(PQgetvalue(r, row, 0), NULL, 10);
    u->source_id = sl_strdup(PQgetvalue(r, row, 1));
    u->destination_id = sl_strdup(PQgetvalue(r, row, 2));
    u->destination_type = sl_strdup(PQgetvalue(r, row, 3));
    u->namespace = sl_strdup(PQgetvalue(r, row, 4));
    u->state = sl_strdup(PQgetvalue(r, row, 5));
    u->attempts = atoi(PQgetvalue(r, row, 6));
    u->events = strtoll(PQgetvalue(r, row, 7), NULL, 10);
    u->rows_staged = strtoll(PQgetvalue(r, row, 8), NULL, 10);
}

int wh_uploads_claim(sl_pg_t *pg, const char *claim, int64_t lease_ms, wh_upload_t *u, char *errstr,
                     size_t errstr_size)
{
    char lease[24];
    snprintf(lease, sizeof(lease), "%lld", (long long)lease_ms);
    const char *p[] = {claim, lease};
    PGresult *r;
    /* SKIP LOCKED: instances claiming at once each get a different upload, none waits. */
    int rc = sl_pg_exec(
        pg,
        "UPDATE sluice_wh_uploads SET claimed_by = $1, claimed_until = now() + $2::bigint * "
        "interval '1 millisecond', updated_at = now() WHERE id = (SELECT c.id FROM "
        "sluice_wh_uploads c WHERE c." UNFINISHED " AND c.next_attempt_at <= now() AND "
        "(c.claimed_until IS NULL OR c.claimed_until < now()) AND NOT EXISTS (SELECT 1 FROM "
        "sluice_wh_uploads e WHERE e.destination_id = c.destination_id AND e.source_id = "
        "c.source_id AND e.id < c.id AND e." UNFINISHED ") ORDER BY c.next_attempt_at, c.id "
        "LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, source_id, destination_id, "
        "destination_type, namespace, state, attempts, events, rows_staged",
        2, p, &r, errstr, errstr_size);
    if (rc)
        return rc;
    int n = PQntuples(r);
    if (n == 1) {
        upload_from_row(u, r, 0);
        u->claim = (char *)claim;
    }
    PQclear(r);
    return n == 1;
}

int wh_uploads_release_instance(sl_pg_t *pg, const char *instance, char *errstr, size_t errstr_size)
{
    const char *p[] = {instance};
    PGresult *r;
    int rc = sl_pg_exec(pg,
                        "UPDATE sluice_wh_uploads SET claimed_by = NULL, claimed_until = NULL "
                        "WHERE left(claimed_by, length($1) + 1) = $1 || '#'",
                        1, p, &r, errstr, errstr_size);
    if (rc)
        return rc;
    int n = atoi(PQcmdTuples(r));
    PQclear(r);
    return n;
}

int wh_uploads_renew(sl_pg_t *pg, const char *instance, int64_t lease_ms, char *errstr,
                     size_t errstr_size)
{
    char lease[24];
    snprintf(lease, sizeof(lease), "%lld", (long long)lease_ms);
    const char *p[] = {instance, lease};
    return sl_pg_exec(pg,
                      "UPDATE sluice_wh_uploads SET claimed_until = now() + $2::bigint * "
                      "interval '1 millisecond' WHERE left(claimed_by, length($1) + 1) = $1 || "
                      "'#' AND " UNFINISHED,
                      2, p, NULL, errstr, errstr_size);
}

/* Runs sql, an UPDATE ... WHERE id = $1 AND claimed_by = $2 ... RETURNING, and records the
 * transition to state (the upload's state after it, read back) in the history. */
static int transition(sl_pg_t *pg, wh_upload_t *u, const char *update, int nparams,
                      const char *const *extra, const char *error, char *errstr, size_t errstr_size)
{
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)u->id);
    const char *p[8] = {id, u->claim};
    for (int i = 0; i < nparams; i++)
        p[2 + i] = extra[i];
    int err_param = 3 + nparams;
    p[err_param - 1] = error;
    char *sql = sl_asprintf("WITH u AS (%s RETURNING id, state, attempts) INSERT INTO "
                            "sluice_wh_upload_events (upload_id, state, attempt, instance, error) "
                            "SELECT id, state, attempts, $2, $%d FROM u RETURNING state, attempt",
                            update, err_param);
    PGresult *r;
    int rc = sl_pg_exec(pg, sql, err_param, p, &r, errstr, errstr_size);
    free(sql);
    if (rc)
        return rc;
    if (PQntuples(r) != 1) {
        PQclear(r);
        return sl_err_set(errstr, errstr_size, SL_ERR_NOTFOUND,
                          "upload %lld is no longer claimed by %s: another instance took it over",
                          (long long)u->id, u->claim);
    }
    free(u->state);
    u->state = sl_strdup(PQgetvalue(r, 0, 0));
    u->attempts = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
    return 0;
}

int wh_uploads_set_state(sl_pg_t *pg, wh_upload_t *u, const char *state, bool new_attempt,
                         int64_t lease_ms, char *errstr, size_t errstr_size)
{
    char lease[24];
    snprintf(lease, sizeof(lease), "%lld", (long long)lease_ms);
    const char *extra[] = {state, lease};
    return transition(
        pg, u,
        new_attempt
            ? "UPDATE sluice_wh_uploads SET state = $3, attempts = attempts + 1, "
              "first_attempt_at = coalesce(first_attempt_at, now()), last_attempt_at = now(), "
              "claimed_until = now() + $4::bigint * interval '1 millisecond', updated_at = now() "
              "WHERE id = $1::bigint AND claimed_by = $2"
            : "UPDATE sluice_wh_uploads SET state = $3, claimed_until = now() + $4::bigint * "
              "interval '1 millisecond', updated_at = now() WHERE id = $1::bigint AND claimed_by "
              "= $2",
        2, extra, NULL, errstr, errstr_size);
}

int wh_uploads_fail(sl_pg_t *pg, wh_upload_t *u, const char *failed_state, const char *error,
                    int64_t retry_base_ms, bool *aborted, char *errstr, size_t errstr_size)
{
    char base[24], attempts[16], after[24];
    snprintf(base, sizeof(base), "%lld", (long long)retry_base_ms);
    snprintf(attempts, sizeof(attempts), "%d", WH_ABORT_ATTEMPTS);
    snprintf(after, sizeof(after), "%lld", (long long)WH_ABORT_AFTER_MS);
    const char *extra[] = {failed_state, base, attempts, after};
    int rc = transition(
        pg, u,
        "UPDATE sluice_wh_uploads SET state = CASE WHEN attempts >= $5::int AND now() - "
        "coalesce(first_attempt_at, now()) >= $6::bigint * interval '1 millisecond' THEN "
        "'aborted' ELSE $3 END, error = $7, next_attempt_at = now() + least($4::bigint * "
        "power(2, least(greatest(attempts - 1, 0), 20))::bigint, greatest($4::bigint, 3600000)) * "
        "interval '1 millisecond', claimed_by = NULL, claimed_until = NULL, updated_at = now() "
        "WHERE id = $1::bigint AND claimed_by = $2",
        4, extra, error, errstr, errstr_size);
    if (aborted)
        *aborted = rc == 0 && strcmp(u->state, WH_ABORTED) == 0;
    return rc;
}

int wh_uploads_finish(sl_pg_t *pg, wh_upload_t *u, int64_t rows_loaded, char *errstr,
                      size_t errstr_size)
{
    char rows[24];
    snprintf(rows, sizeof(rows), "%lld", (long long)rows_loaded);
    const char *extra[] = {rows};
    return transition(pg, u,
                      "UPDATE sluice_wh_uploads SET state = 'exported_data', rows_loaded = "
                      "$3::bigint, error = NULL, claimed_by = NULL, claimed_until = NULL, "
                      "updated_at = now() WHERE id = $1::bigint AND claimed_by = $2",
                      1, extra, NULL, errstr, errstr_size);
}

int wh_uploads_release(sl_pg_t *pg, wh_upload_t *u, char *errstr, size_t errstr_size)
{
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)u->id);
    const char *p[] = {id, u->claim};
    return sl_pg_exec(pg,
                      "UPDATE sluice_wh_uploads SET claimed_by = NULL, claimed_until = NULL, "
                      "next_attempt_at = now(), updated_at = now() WHERE id = $1::bigint AND "
                      "claimed_by = $2",
                      2, p, NULL, errstr, errstr_size);
}

void wh_table_jobs_free(wh_table_job_t *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].table);
        free(jobs[i].path);
        free(jobs[i].state);
    }
    free(jobs);
}

int wh_uploads_tables(sl_pg_t *pg, int64_t upload_id, wh_table_job_t **jobs, size_t *n,
                      char *errstr, size_t errstr_size)
{
    char id[24];
    snprintf(id, sizeof(id), "%lld", (long long)upload_id);
    const char *p[] = {id};
    *jobs = NULL;
    *n = 0;
    int rc = sl_pg_exec(pg,
                        "INSERT INTO sluice_wh_table_uploads (upload_id, table_name) SELECT "
                        "upload_id, table_name FROM sluice_wh_staging_files WHERE upload_id = "
                        "$1::bigint ON CONFLICT DO NOTHING",
                        1, p, NULL, errstr, errstr_size);
    if (rc)
        return rc;
    PGresult *r;
    /* users after the other tables: a user's row is upserted from the identifies loaded. */
    rc = sl_pg_exec(pg,
                    "SELECT f.table_name, f.path, f.rows, t.state, t.rows_loaded FROM "
                    "sluice_wh_staging_files f JOIN sluice_wh_table_uploads t USING (upload_id, "
                    "table_name) WHERE f.upload_id = $1::bigint ORDER BY f.table_name = 'users', "
                    "f.table_name",
                    1, p, &r, errstr, errstr_size);
    if (rc)
        return rc;
    *n = (size_t)PQntuples(r);
    *jobs = sl_calloc(*n ? *n : 1, sizeof(**jobs));
    for (size_t i = 0; i < *n; i++) {
        wh_table_job_t *j = &(*jobs)[i];
        j->table = sl_strdup(PQgetvalue(r, (int)i, 0));
        j->path = sl_strdup(PQgetvalue(r, (int)i, 1));
        j->rows = strtoll(PQgetvalue(r, (int)i, 2), NULL, 10);
        j->state = sl_strdup(PQgetvalue(r, (int)i, 3));
        j->rows_loaded = strtoll(PQgetvalue(r, (int)i, 4), NULL, 10);
    }
    PQclear(r);
    return 0;
}

int wh_uploads_table_state(sl_pg_t *pg, int64_t upload_id, const char *table, const char *state,
                           int64_t rows_loaded, const char *error, char *errstr, size_t errstr_size)
{
    char id[24], rows[24];
    snprintf(id, sizeof(id), "%lld", (long long)upload_id);
    snprintf(rows, sizeof(rows), "%lld", (long long)rows_loaded);
    const char *p[] = {id, table, state, rows, error};
    return sl_pg_exec(pg,
                      "UPDATE sluice_wh_table_uploads SET state = $3, rows_loaded = $4::bigint, "
                      "error = $5, attempts = attempts + ($3 = 'exporting_data')::int, "
                      "updated_at = now() WHERE upload_id = $1::bigint AND table_name = $2",
                      5, p, NULL, errstr, errstr_size);
}

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

int wh_uploads_list(sl_pg_t *pg, const char *destination_id, long limit, json_object **out,
                    char *errstr, size_t errstr_size)
{
    char lim[24];
    snprintf(lim, sizeof(lim), "%ld", limit > 0 ? limit : 100);
    const char *p[] = {destination_id, lim};
    PGresult *r;
    *out = NULL;
    int rc = sl_pg_exec(
        pg,
        "SELECT json_build_object('id', u.id, 'sourceId', u.source_id, 'destinationId', "
        "u.destination_id, 'destinationType', u.destination_type, 'namespace', u.namespace, "
        "'state', u.state, 'attempts', u.attempts, 'error', u.error, 'events', u.events, "
        "'rowsStaged', u.rows_staged, 'rowsLoaded', u.rows_loaded, "
        "'createdAt', " TS("u.created_at") ", 'updatedAt', " TS(
            "u.updated_at") ", "
                            "'firstAttemptAt', " TS(
                                "u.first_attempt_at") ", "
                                                      "'lastAttemptAt',"
                                                      " " TS("u.last_"
                                                             "attempt_at") ", "
                                                                           "'nextAttemptAt',"
                                                                           " " TS("u.next_"
                                                                                  "attempt_"
                                                                                  "at") ", "
                                                                                        "'claim"
                                                                                        "edBy"
                                                                                        "', "
                                                                                        "u."
                                                                                        "claime"
                                                                                        "d_"
                                                                                        "by, "
                                                                                        "'table"
                                                                                        "s', "
                                                                                        "coales"
                                                                                        "ce(("
                                                                                        "SELECT"
                                                                                        " "
                                                                                        "json_"
                                                                                        "agg("
                                                                                        "json_"
                                                                                        "build_"
                                                                                        "object"
                                                                                        "('"
                                                                                        "table'"
                                                                                        ", "
                                                                                        "f."
                                                                                        "table_"
                                                                                        "name, "
                                                                                        "'state"
                                                                                        "', "
                                                                                        "coales"
                                                                                        "ce("
                                                                                        "t."
                                                                                        "state,"
                                                                                        " "
                                                                                        "'waiti"
                                                                                        "ng')"
                                                                                        ", "
                                                                                        "'rows'"
                                                                                        ", "
                                                                                        "f."
                                                                                        "rows, "
                                                                                        "'rowsL"
                                                                                        "oade"
                                                                                        "d', "
                                                                                        "coales"
                                                                                        "ce("
                                                                                        "t."
                                                                                        "rows_"
                                                                                        "loaded"
                                                                                        ", "
                                                                                        "0), "
                                                                                        "'error"
                                                                                        "', "
                                                                                        "t."
                                                                                        "error)"
                                                                                        " "
                                                                                        "ORDER "
                                                                                        "BY "
                                                                                        "f."
                                                                                        "table_"
                                                                                        "name) "
                                                                                        "FROM "
                                                                                        "sluice"
                                                                                        "_wh_"
                                                                                        "stagin"
                                                                                        "g_"
                                                                                        "files "
                                                                                        "f "
                                                                                        "LEFT "
                                                                                        "JOIN "
                                                                                        "sluice"
                                                                                        "_wh_"
                                                                                        "table_"
                                                                                        "upload"
                                                                                        "s t "
                                                                                        "USING "
                                                                                        "(uploa"
                                                                                        "d_"
                                                                                        "id, "
                                                                                        "table_"
                                                                                        "name) "
                                                                                        "WHERE "
                                                                                        "f."
                                                                                        "upload"
                                                                                        "_"
                                                                                        "id = "
                                                                                        "u.id),"
                                                                                        " "
                                                                                        "'[]'::"
                                                                                        "json))"
                                                                                        "::"
                                                                                        "text "
                                                                                        "FROM "
                                                                                        "sluice"
                                                                                        "_wh_"
                                                                                        "upload"
                                                                                        "s u "
                                                                                        "WHERE "
                                                                                        "$1::"
                                                                                        "text "
                                                                                        "IS "
                                                                                        "NULL "
                                                                                        "OR "
                                                                                        "u."
                                                                                        "destin"
                                                                                        "atio"
                                                                                        "n_id "
                                                                                        "= $1 "
                                                                                        "ORDER "
                                                                                        "BY "
                                                                                        "u.id "
                                                                                        "DESC "
                                                                                        "LIMIT "
                                                                                        "$2::"
                                                                                        "bigin"
                                                                                        "t",
        2, p, &r, errstr, errstr_size);
    if (rc)
        return rc;
    json_object *arr = json_object_new_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_object *o = json_tokener_parse(PQgetvalue(r, i, 0));
        if (o)
            json_object_array_add(arr, o);
    }
    PQclear(r);
    *out = arr;
    return 0;
}

int wh_uploads_retry(sl_pg_t *pg, int64_t id, char *errstr, size_t errstr_size)
{
    char ids[24];
    snprintf(ids, sizeof(ids), "%lld", (long long)id);
    const char *p[] = {ids};
    PGresult *r;
    /* One statement: the upload, its failed table loads and the history change together. */
    int rc = sl_pg_exec(
        pg,
        "WITH old AS (SELECT id, state FROM sluice_wh_uploads WHERE id = $1::bigint FOR UPDATE), "
        "u AS (UPDATE sluice_wh_uploads w SET state = 'waiting', attempts = 0, first_attempt_at "
        "= NULL, next_attempt_at = now(), claimed_by = NULL, claimed_until = NULL, updated_at = "
        "now() FROM old WHERE w.id = old.id AND old.state IN ('aborted', "
        "'generating_load_files_failed', 'exporting_data_failed') RETURNING w.id), "
        "t AS (UPDATE sluice_wh_table_uploads SET state = 'waiting', updated_at = now() WHERE "
        "upload_id IN (SELECT id FROM u) AND state <> 'exported_data'), "
        "e AS (INSERT INTO sluice_wh_upload_events (upload_id, state, instance, error) SELECT "
        "id, 'waiting', 'sluice warehouse retry', NULL FROM u) "
        "SELECT old.state, EXISTS (SELECT 1 FROM u) FROM old",
        1, p, &r, errstr, errstr_size);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return sl_err_set(errstr, errstr_size, SL_ERR_NOTFOUND, "there is no upload %lld",
                          (long long)id);
    }
    if (PQgetvalue(r, 0, 1)[0] != 't') {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "upload %lld is %s; only aborted or failed uploads can be retried",
                        (long long)id, PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    return rc;
}

int wh_uploads_count_states(sl_pg_t *pg, void (*fn)(const char *state, int64_t n, void *opaque),
                            void *opaque, char *errstr, size_t errstr_size)
{
    PGresult *r;
    int rc = sl_pg_exec(pg, "SELECT state, count(*) FROM sluice_wh_uploads GROUP BY state", 0, NULL,
                        &r, errstr, errstr_size);
    if (rc)
        return rc;
    for (int i = 0; i < PQntuples(r); i++)
        fn(PQgetvalue(r, i, 0), strtoll(PQgetvalue(r, i, 1), NULL, 10), opaque);
    PQclear(r);
    return 0;
}
