/*
 * Integration test for warehouse/uploads.c against the real test Postgres: recording, claims
 * (one owner per upload under concurrent claimers, uploads of one destination in order, an
 * expired lease taken over and the old owner shut out), failures with backoff, the abort
 * rule, retry, releasing an earlier run's claims, table uploads and the listing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "testutil.h"
#include "warehouse/uploads.h"

static char dsn[1024];
static sl_pg_t *pg;

static int setup(void **state)
{
    (void)state;
    char err[512];
    if (sl_test_fresh_db("itest_wh_uploads", dsn, sizeof(dsn)) != 0)
        return -1;
    pg = sl_pg_new(dsn);
    PGconn *conn = sl_pg_conn(pg, err, sizeof(err));
    if (!conn || sl_migrate_run(conn, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sl_pg_destroy(pg);
    return 0;
}

static void exec_ok(const char *sql)
{
    char err[512];
    if (sl_pg_exec(pg, sql, 0, NULL, NULL, err, sizeof(err)) != 0)
        fail_msg("%s: %s", sql, err);
}

/* The single value of sql (text), or NULL; caller frees. */
static char *value(const char *sql)
{
    char err[512];
    PGresult *r;
    if (sl_pg_exec(pg, sql, 0, NULL, &r, err, sizeof(err)) != 0)
        fail_msg("%s: %s", sql, err);
    char *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

static void assert_value(const char *sql, const char *want)
{
    char *v = value(sql);
    if (!v || strcmp(v, want) != 0)
        fail_msg("%s: got %s, want %s", sql, v ? v : "NULL", want);
    free(v);
}

/* Records an upload of dest with tables users and tracks; returns its id. */
static int64_t record(const char *dest)
{
    char err[512];
    int64_t id;
    assert_int_equal(wh_uploads_next_id(pg, &id, err, sizeof(err)), 0);
    wh_staged_t files[] = {{"users", "/staging/users.avro", 2, 100},
                           {"tracks", "/staging/tracks.avro", 5, 300},
                           {"identifies", "/staging/identifies.avro", 2, 90}};
    wh_upload_new_t u = {.source_id = "src",
                         .destination_id = dest,
                         .namespace = "ns",
                         .events = 7,
                         .rows = 9,
                         .first_event_ms = 1764151200000,
                         .last_event_ms = 1764151201000,
                         .kafka_topic = "t",
                         .kafka_offsets = "{\"0\":[1,7]}",
                         .files = files,
                         .nfiles = 3};
    if (wh_uploads_record(pg, id, &u, "itest", err, sizeof(err)) != 0)
        fail_msg("record: %s", err);
    return id;
}

static int64_t claim(const char *token, int64_t lease_ms, wh_upload_t *u)
{
    char err[512];
    int rc = wh_uploads_claim(pg, token, lease_ms, u, err, sizeof(err));
    if (rc < 0)
        fail_msg("claim: %s", err);
    return rc == 1 ? u->id : 0;
}

static void test_record_and_claim_order(void **state)
{
    (void)state;
    exec_ok("TRUNCATE sluice_wh_uploads CASCADE");
    int64_t a1 = record("dA"), a2 = record("dA"), b1 = record("dB");
    assert_value("SELECT count(*) FROM sluice_wh_staging_files", "9");
    assert_value("SELECT string_agg(state, ',') FROM sluice_wh_upload_events", "waiting,waiting,"
                                                                               "waiting");
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT kafka_offsets->>'0' FROM sluice_wh_uploads WHERE id = %lld",
             (long long)a1);
    assert_value(sql, "[1, 7]");

    wh_upload_t u1 = {0}, u2 = {0}, u3 = {0};
    assert_int_equal(claim("i1#0", 60000, &u1), a1);
    /* a2 waits for a1 (one destination loads in order): the next claimer gets b1 */
    assert_int_equal(claim("i2#0", 60000, &u2), b1);
    assert_int_equal(claim("i3#0", 60000, &u3), 0);
    assert_string_equal(u1.state, WH_WAITING);
    assert_string_equal(u1.destination_id, "dA");
    assert_string_equal(u1.namespace, "ns");

    char err[512];
    assert_int_equal(wh_uploads_set_state(pg, &u1, WH_GENERATING, true, 60000, err, sizeof(err)),
                     0);
    assert_int_equal(u1.attempts, 1);
    assert_int_equal(wh_uploads_set_state(pg, &u1, WH_EXPORTING, false, 60000, err, sizeof(err)),
                     0);
    assert_int_equal(u1.attempts, 1);
    assert_int_equal(wh_uploads_finish(pg, &u1, 9, err, sizeof(err)), 0);
    assert_string_equal(u1.state, WH_EXPORTED);
    /* now a2 is free */
    assert_int_equal(claim("i3#0", 60000, &u3), a2);
    snprintf(sql, sizeof(sql),
             "SELECT string_agg(state, ',' ORDER BY at) FROM sluice_wh_upload_events WHERE "
             "upload_id = %lld",
             (long long)a1);
    assert_value(sql, "waiting,generating_load_files,exporting_data,exported_data");
    snprintf(sql, sizeof(sql),
             "SELECT rows_loaded || ' ' || (claimed_by IS NULL) FROM sluice_wh_uploads WHERE id "
             "= %lld",
             (long long)a1);
    assert_value(sql, "9 true");
    wh_upload_free(&u1);
    wh_upload_free(&u2);
    wh_upload_free(&u3);
}

static void test_lease_takeover(void **state)
{
    (void)state;
    exec_ok("TRUNCATE sluice_wh_uploads CASCADE");
    int64_t a = record("dA");
    wh_upload_t old = {0}, taker = {0}, none = {0};
    char err[512];
    assert_int_equal(claim("dead#0", 100, &old), a);
    assert_int_equal(claim("live#0", 60000, &none), 0); /* the lease holds */
    usleep(200000);
    assert_int_equal(claim("live#0", 60000, &taker), a); /* expired: taken over */
    /* the old owner is shut out of every write */
    assert_int_equal(wh_uploads_set_state(pg, &old, WH_EXPORTING, true, 60000, err, sizeof(err)),
                     SL_ERR_NOTFOUND);
    assert_int_equal(wh_uploads_finish(pg, &old, 1, err, sizeof(err)), SL_ERR_NOTFOUND);
    assert_int_equal(
        wh_uploads_fail(pg, &old, WH_EXPORTING_FAILED, "x", 1000, NULL, err, sizeof(err)),
        SL_ERR_NOTFOUND);
    assert_int_equal(wh_uploads_set_state(pg, &taker, WH_GENERATING, true, 60000, err, sizeof(err)),
                     0);

    /* renew keeps a short lease alive; release_instance voids an earlier run's claims */
    assert_int_equal(wh_uploads_renew(pg, "live", 60000, err, sizeof(err)), 0);
    assert_value("SELECT claimed_until > now() + interval '30 seconds' FROM sluice_wh_uploads",
                 "t");
    assert_int_equal(wh_uploads_release_instance(pg, "liv", err, sizeof(err)), 0);
    assert_int_equal(wh_uploads_release_instance(pg, "live", err, sizeof(err)), 1);
    assert_int_equal(claim("other#1", 60000, &none), a);
    assert_string_equal(none.state, WH_GENERATING); /* resumed where it was */
    assert_int_equal(wh_uploads_release(pg, &none, err, sizeof(err)), 0);
    assert_value("SELECT claimed_by IS NULL FROM sluice_wh_uploads", "t");
    wh_upload_free(&old);
    wh_upload_free(&taker);
    wh_upload_free(&none);
}

static void test_fail_backoff_abort_retry(void **state)
{
    (void)state;
    exec_ok("TRUNCATE sluice_wh_uploads CASCADE");
    int64_t a = record("dA"), a2 = record("dA");
    char err[512];
    bool aborted = true;
    wh_upload_t u = {0}, none = {0};
    assert_int_equal(claim("w#0", 60000, &u), a);
    assert_int_equal(wh_uploads_set_state(pg, &u, WH_GENERATING, true, 60000, err, sizeof(err)), 0);
    assert_int_equal(wh_uploads_fail(pg, &u, WH_GENERATING_FAILED, "disk gone", 60000, &aborted,
                                     err, sizeof(err)),
                     0);
    assert_false(aborted);
    assert_string_equal(u.state, WH_GENERATING_FAILED);
    /* due in a minute (base 60 s, first attempt), and a2 waits behind it */
    assert_value("SELECT round(extract(epoch FROM next_attempt_at - now())) BETWEEN 55 AND 60 "
                 "FROM sluice_wh_uploads ORDER BY id LIMIT 1",
                 "t");
    assert_int_equal(claim("w#0", 60000, &none), 0);
    exec_ok("UPDATE sluice_wh_uploads SET next_attempt_at = now()");
    wh_upload_free(&u);

    /* attempts 2 and 3: backoff doubles; after the third, still not 180 minutes: no abort */
    for (int attempt = 2; attempt <= 3; attempt++) {
        assert_int_equal(claim("w#0", 60000, &u), a);
        assert_int_equal(wh_uploads_set_state(pg, &u, WH_EXPORTING, true, 60000, err, sizeof(err)),
                         0);
        assert_int_equal(u.attempts, attempt);
        assert_int_equal(wh_uploads_fail(pg, &u, WH_EXPORTING_FAILED, "refused", 60000, &aborted,
                                         err, sizeof(err)),
                         0);
        assert_false(aborted);
        char *secs = value("SELECT round(extract(epoch FROM next_attempt_at - now())) FROM "
                           "sluice_wh_uploads ORDER BY id LIMIT 1");
        long want = 60L << (attempt - 1);
        assert_true(atol(secs) > want - 5 && atol(secs) <= want);
        free(secs);
        exec_ok("UPDATE sluice_wh_uploads SET next_attempt_at = now()");
        wh_upload_free(&u);
    }
    /* 3 attempts and 180 minutes since the first: the next failure aborts */
    exec_ok("UPDATE sluice_wh_uploads SET first_attempt_at = now() - interval '181 minutes'");
    assert_int_equal(claim("w#0", 60000, &u), a);
    assert_int_equal(wh_uploads_set_state(pg, &u, WH_EXPORTING, true, 60000, err, sizeof(err)), 0);
    assert_int_equal(
        wh_uploads_fail(pg, &u, WH_EXPORTING_FAILED, "refused", 60000, &aborted, err, sizeof(err)),
        0);
    assert_true(aborted);
    wh_upload_free(&u);
    /* an aborted upload no longer holds its destination's later ones back */
    assert_int_equal(claim("w#0", 60000, &u), a2);
    assert_int_equal(wh_uploads_finish(pg, &u, 0, err, sizeof(err)), 0);

    /* retry: aborted -> waiting with a fresh budget; exported or missing ones refused */
    assert_int_equal(wh_uploads_retry(pg, a2, err, sizeof(err)), SL_ERR_INVALID);
    assert_non_null(strstr(err, "exported_data"));
    assert_int_equal(wh_uploads_retry(pg, 987654, err, sizeof(err)), SL_ERR_NOTFOUND);
    assert_int_equal(wh_uploads_retry(pg, a, err, sizeof(err)), 0);
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT state || ' ' || attempts || ' ' || (first_attempt_at IS NULL) || ' ' || "
             "(next_attempt_at <= now()) FROM sluice_wh_uploads WHERE id = %lld",
             (long long)a);
    assert_value(sql, "waiting 0 true true");
    wh_upload_free(&u);
    assert_int_equal(claim("w#0", 60000, &u), a);
    wh_upload_free(&u);
}

static void test_tables_and_list(void **state)
{
    (void)state;
    exec_ok("TRUNCATE sluice_wh_uploads CASCADE");
    int64_t a = record("dA");
    record("dB");
    char err[512];
    wh_table_job_t *jobs;
    size_t n;
    assert_int_equal(wh_uploads_tables(pg, a, &jobs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    /* users last: its rows are upserted after identifies */
    assert_string_equal(jobs[0].table, "identifies");
    assert_string_equal(jobs[1].table, "tracks");
    assert_string_equal(jobs[2].table, "users");
    assert_string_equal(jobs[2].state, "waiting");
    assert_int_equal(jobs[1].rows, 5);
    wh_table_jobs_free(jobs, n);
    assert_int_equal(
        wh_uploads_table_state(pg, a, "tracks", WH_EXPORTED, 5, NULL, err, sizeof(err)), 0);
    assert_int_equal(
        wh_uploads_table_state(pg, a, "users", WH_EXPORTING_FAILED, 0, "boom", err, sizeof(err)),
        0);
    assert_int_equal(wh_uploads_tables(pg, a, &jobs, &n, err, sizeof(err)), 0); /* idempotent */
    assert_int_equal(n, 3);
    assert_string_equal(jobs[1].state, WH_EXPORTED);
    assert_int_equal(jobs[1].rows_loaded, 5);
    wh_table_jobs_free(jobs, n);

    json_object *list;
    assert_int_equal(wh_uploads_list(pg, "dA", 10, &list, err, sizeof(err)), 0);
    assert_int_equal(json_object_array_length(list), 1);
    json_object *u = json_object_array_get_idx(list, 0), *tables, *v;
    assert_true(json_object_object_get_ex(u, "tables", &tables));
    assert_int_equal(json_object_array_length(tables), 3);
    json_object *users = json_object_array_get_idx(tables, 2);
    assert_true(json_object_object_get_ex(users, "error", &v));
    assert_string_equal(json_object_get_string(v), "boom");
    assert_true(json_object_object_get_ex(u, "events", &v));
    assert_int_equal(json_object_get_int(v), 7);
    json_object_put(list);
    assert_int_equal(wh_uploads_list(pg, NULL, 10, &list, err, sizeof(err)), 0);
    assert_int_equal(json_object_array_length(list), 2);
    json_object_put(list);
}

/* Claimers racing on many uploads: each upload goes to exactly one of them. */
struct racer {
    int n;
    int64_t got[64];
    size_t ngot;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    sl_pg_t *own = sl_pg_new(dsn);
    char token[32], err[512];
    snprintf(token, sizeof(token), "racer#%d", r->n);
    for (;;) {
        wh_upload_t u = {0};
        int rc = wh_uploads_claim(own, token, 60000, &u, err, sizeof(err));
        if (rc != 1)
            break;
        r->got[r->ngot++] = u.id;
        wh_uploads_finish(own, &u, 0, err, sizeof(err));
        wh_upload_free(&u);
    }
    sl_pg_destroy(own);
    return NULL;
}

static void test_concurrent_claims(void **state)
{
    (void)state;
    exec_ok("TRUNCATE sluice_wh_uploads CASCADE");
    enum { N = 40, R = 4 };
    for (int i = 0; i < N; i++) {
        char d[16];
        snprintf(d, sizeof(d), "d%d", i % 10); /* 4 uploads per destination, in order */
        record(d);
    }
    struct racer racers[R] = {{0}};
    pthread_t t[R];
    for (int i = 0; i < R; i++) {
        racers[i].n = i;
        pthread_create(&t[i], NULL, race, &racers[i]);
    }
    for (int i = 0; i < R; i++)
        pthread_join(t[i], NULL);
    size_t total = 0;
    for (int i = 0; i < R; i++)
        total += racers[i].ngot;
    assert_int_equal(total, N);
    assert_value("SELECT count(*) FROM sluice_wh_uploads WHERE state = 'exported_data'", "40");
    /* each exported once: one exported_data event per upload */
    assert_value("SELECT count(*) FROM sluice_wh_upload_events WHERE state = 'exported_data'",
                 "40");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_and_claim_order),   cmocka_unit_test(test_lease_takeover),
        cmocka_unit_test(test_fail_backoff_abort_retry), cmocka_unit_test(test_tables_and_list),
        cmocka_unit_test(test_concurrent_claims),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
