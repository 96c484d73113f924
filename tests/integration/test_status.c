/*
 * Integration test for router/status.c against the real test Postgres: rows written with COPY
 * read back byte for byte (awkward text, NULLs, a capped response), inside the caller's
 * transaction; day partitions, the DEFAULT partition's rows moved out, retention; the offsets
 * already done.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "router/status.h"
#include "testutil.h"

static sl_pg_t *pg;
static PGconn *conn;

static int setup(void **state)
{
    (void)state;
    char err[512], dsn[1024];
    if (sl_test_fresh_db("itest_status", dsn, sizeof(dsn)) != 0)
        return -1;
    pg = sl_pg_new(dsn);
    conn = sl_pg_conn(pg, err, sizeof(err));
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

/* The single value of a query with up to 3 parameters; caller frees. */
static char *value(const char *sql, const char *p1, const char *p2, const char *p3)
{
    const char *params[] = {p1, p2, p3};
    int np = p3 ? 3 : p2 ? 2 : p1 ? 1 : 0;
    char err[512];
    PGresult *r;
    if (sl_pg_exec(pg, sql, np, params, &r, err, sizeof(err)) != 0)
        fail_msg("%s: %s", sql, err);
    char *v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

static void exec_ok(const char *sql)
{
    char err[512];
    if (sl_pg_exec(pg, sql, 0, NULL, NULL, err, sizeof(err)) != 0)
        fail_msg("%s: %s", sql, err);
}

static void test_write_read(void **state)
{
    (void)state;
    static const char awkward[] = "tab\there\nnew line\r\\N back\\slash 'single' \"double\" "
                                  "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \\. end";
    size_t big_len = 20 * 1024;
    char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    /* a 3-byte character straddles the 10 KB cap: it is left out whole */
    memcpy(big + RT_STATUS_RESPONSE_MAX - 1, "\xE2\x82\xAC", 3);
    static const char odd[] = "nul\0in the middle, bad utf-8 \xFF\xC3( and a cut \xE2\x82";
    rt_status_row_t rows[] = {
        {.job_id = "m1:d1",
         .message_id = "m1",
         .source_id = awkward,
         .destination_id = "d1",
         .destination_type = "WEBHOOK",
         .user_key = "user\twith\ttabs",
         .state = "failed",
         .attempts = 1,
         .last_status = 503,
         .last_response = awkward,
         .last_response_len = strlen(awkward),
         .first_attempt_ms = 1764151200123,
         .last_attempt_ms = 1764151200123,
         .kafka_topic = "t.delivery",
         .kafka_partition = 3,
         .kafka_offset = 1234567890123},
        {.job_id = "m1:d1",
         .message_id = "m1",
         .destination_id = "d1",
         .state = "aborted",
         .attempts = 2,
         .last_status = 400,
         .last_response = big,
         .last_response_len = big_len},
        {.job_id = "m1:d2",
         .message_id = "m1",
         .destination_id = "d2",
         .state = "succeeded",
         .attempts = 1,
         .last_response = odd,
         .last_response_len = sizeof(odd) - 1},
    };
    char err[512];
    assert_int_equal(rt_status_write(conn, rows, 3, err, sizeof(err)), 0);

    char *v = value("SELECT count(*) FROM sluice_jobs WHERE message_id = 'm1'", NULL, NULL, NULL);
    assert_string_equal(v, "3");
    free(v);
    const char *q = "SELECT coalesce(source_id, '<null>') || '|' || coalesce(destination_type, "
                    "'<null>') || '|' || coalesce(user_key, '<null>') || '|' || state || '|' || "
                    "attempts || '|' || coalesce(last_status::text, '<null>') || '|' || "
                    "coalesce(to_char(first_attempt_at AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD HH24:MI:SS.MS'), '<null>') || '|' || "
                    "coalesce(kafka_topic, '<null>') || '|' || coalesce(kafka_partition::text, "
                    "'<null>') || '|' || coalesce(kafka_offset::text, '<null>') "
                    "FROM sluice_jobs WHERE message_id = 'm1' ORDER BY id OFFSET $1";
    char want[1024];
    snprintf(want, sizeof(want),
             "%s|WEBHOOK|user\twith\ttabs|failed|1|503|2025-11-26 10:00:00.123|t.delivery|3|"
             "1234567890123",
             awkward);
    v = value(q, "0", NULL, NULL);
    assert_string_equal(v, want);
    free(v);
    v = value(q, "1", NULL, NULL);
    assert_string_equal(v, "<null>|<null>|<null>|aborted|2|400|<null>|<null>|<null>|<null>");
    free(v);

    const char *resp = "SELECT last_response FROM sluice_jobs WHERE message_id = 'm1' "
                       "ORDER BY id OFFSET $1";
    v = value(resp, "0", NULL, NULL);
    assert_string_equal(v, awkward);
    free(v);
    v = value(resp, "1", NULL, NULL);
    assert_int_equal(strlen(v), RT_STATUS_RESPONSE_MAX - 1);
    assert_memory_equal(v, big, RT_STATUS_RESPONSE_MAX - 1);
    free(v);
    v = value(resp, "2", NULL, NULL);
    assert_string_equal(v, "nulin the middle, bad utf-8 \xEF\xBF\xBD\xEF\xBF\xBD( and a cut "
                           "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(v);
    free(big);

    /* The rows are in today's partition, which the write created. */
    char part[64], t[SL_TIME_STRLEN];
    sl_time_format_ms(sl_time_now_ms(), t);
    snprintf(part, sizeof(part), "sluice_jobs_p%.4s%.2s%.2s", t, t + 5, t + 8);
    v = value("SELECT DISTINCT tableoid::regclass::text FROM sluice_jobs WHERE message_id = 'm1'",
              NULL, NULL, NULL);
    assert_string_equal(v, part);
    free(v);

    /* Inside the caller's transaction: a rollback takes the rows back. */
    exec_ok("BEGIN");
    rows[0].message_id = "m-rolled-back";
    assert_int_equal(rt_status_write(conn, rows, 1, err, sizeof(err)), 0);
    exec_ok("ROLLBACK");
    v = value("SELECT count(*) FROM sluice_jobs WHERE message_id = 'm-rolled-back'", NULL, NULL,
              NULL);
    assert_string_equal(v, "0");
    free(v);

    /* A refused row (unknown state) is an SQL error; the connection stays usable. */
    rows[0].state = "lost";
    assert_int_equal(rt_status_write(conn, rows, 1, err, sizeof(err)), SL_ERR_INVALID);
    assert_non_null(strstr(err, "sluice_jobs_state_check"));
    assert_int_equal(rt_status_write(conn, rows, 0, err, sizeof(err)), 0);
    exec_ok("SELECT 1");
}

static int64_t ms_of(const char *rfc3339)
{
    int64_t ms = 0;
    assert_int_equal(sl_time_parse_ms(rfc3339, &ms), 0);
    return ms;
}

static void test_partitions_retention(void **state)
{
    (void)state;
    /* A row of a day without a partition lands in DEFAULT; creating the day moves it. */
    exec_ok("INSERT INTO sluice_jobs (job_id, message_id, destination_id, state, attempts, "
            "created_at) VALUES ('old:d', 'old', 'd', 'succeeded', 1, '2021-06-08 23:59:59Z')");
    char *v = value("SELECT tableoid::regclass::text FROM sluice_jobs WHERE message_id = 'old'",
                    NULL, NULL, NULL);
    assert_string_equal(v, "sluice_jobs_default");
    free(v);
    exec_ok("SELECT sluice_jobs_add_day('2021-06-08')");
    exec_ok("SELECT sluice_jobs_add_day('2021-06-08')"); /* again: nothing to do */
    v = value("SELECT tableoid::regclass::text FROM sluice_jobs WHERE message_id = 'old'", NULL,
              NULL, NULL);
    assert_string_equal(v, "sluice_jobs_p20210608");
    free(v);
    exec_ok("SELECT sluice_jobs_add_day('2021-06-09')");

    /* Now 2021-06-10 12:00 with 36 h of retention: the cutoff is 06-09 00:00, so 06-08 goes
     * and 06-09 (not entirely older) stays; today and tomorrow are created. */
    char err[512];
    int64_t now = ms_of("2021-06-10T12:00:00Z");
    assert_int_equal(rt_status_maintain(conn, now, 36 * 3600 * 1000LL, err, sizeof(err)), 0);
    const char *exists = "SELECT to_regclass($1) IS NOT NULL";
    v = value(exists, "sluice_jobs_p20210608", NULL, NULL);
    assert_string_equal(v, "f");
    free(v);
    v = value(exists, "sluice_jobs_done_p20210608", NULL, NULL);
    assert_string_equal(v, "f");
    free(v);
    const char *kept[] = {"sluice_jobs_p20210609",      "sluice_jobs_p20210610",
                          "sluice_jobs_p20210611",      "sluice_jobs_default",
                          "sluice_jobs_done_p20210609", "sluice_jobs_done_p20210610",
                          "sluice_jobs_done_p20210611", "sluice_jobs_done_default"};
    for (size_t i = 0; i < 8; i++) {
        v = value(exists, kept[i], NULL, NULL);
        assert_string_equal(v, "t");
        free(v);
    }
    v = value("SELECT count(*) FROM sluice_jobs WHERE message_id = 'old'", NULL, NULL, NULL);
    assert_string_equal(v, "0");
    free(v);
    /* The real now with 7 days drops those old days and keeps today's rows. */
    assert_int_equal(
        rt_status_maintain(conn, sl_time_now_ms(), 7 * 86400 * 1000LL, err, sizeof(err)), 0);
    v = value("SELECT count(*) FROM pg_inherits WHERE inhparent = 'sluice_jobs'::regclass", NULL,
              NULL, NULL);
    assert_string_equal(v, "3"); /* today, tomorrow, default */
    free(v);
    v = value("SELECT count(*) FROM sluice_jobs WHERE message_id = 'm1'", NULL, NULL, NULL);
    assert_string_equal(v, "3");
    free(v);
    /* Retention 0 keeps everything. */
    assert_int_equal(rt_status_maintain(conn, sl_time_now_ms(), 0, err, sizeof(err)), 0);
}

static void test_done_offsets(void **state)
{
    (void)state;
    struct {
        const char *topic;
        int32_t partition;
        int64_t offset;
        const char *state;
    } in[] = {
        {"t.done", 0, 3, "succeeded"}, {"t.done", 0, 5, "succeeded"}, {"t.done", 0, 6, "failed"},
        {"t.done", 0, 7, "failed"},    {"t.done", 0, 7, "aborted"},   {"t.done", 0, 8, "succeeded"},
        {"t.done", 0, 8, "succeeded"}, {"t.done", 1, 9, "succeeded"}, {"t.other", 0, 10, "aborted"},
    };
    rt_status_row_t rows[9];
    for (size_t i = 0; i < 9; i++)
        rows[i] = (rt_status_row_t){.job_id = "j",
                                    .message_id = "mdone",
                                    .destination_id = "d",
                                    .state = in[i].state,
                                    .attempts = 1,
                                    .kafka_topic = in[i].topic,
                                    .kafka_partition = in[i].partition,
                                    .kafka_offset = in[i].offset};
    char err[512];
    assert_int_equal(rt_status_write(conn, rows, 9, err, sizeof(err)), 0);
    int64_t *offs;
    size_t n;
    assert_int_equal(rt_status_done_offsets(conn, "t.done", 0, 5, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_int_equal(offs[0], 5);
    assert_int_equal(offs[1], 7);
    assert_int_equal(offs[2], 8);
    free(offs);
    assert_int_equal(rt_status_done_offsets(conn, "t.done", 2, 0, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    assert_null(offs);

    /* They are kept as one row per topic and partition of the batch, as ranges. */
    char *v = value("SELECT string_agg(format('%s/%s %s %s %s', kafka_topic, kafka_partition, "
                    "last_offset, first_offsets, last_offsets), '; ' "
                    "ORDER BY kafka_topic, kafka_partition) FROM sluice_jobs_done",
                    NULL, NULL, NULL);
    assert_string_equal(v,
                        "t.done/0 8 {3,5,7} {3,5,8}; t.done/1 9 {9} {9}; t.other/0 10 {10} {10}");
    free(v);

    /* A later batch adds to them; an offset below from_offset in a row that reaches past it is
     * left out. */
    rows[0].kafka_offset = 2;
    rows[1].kafka_offset = 20;
    assert_int_equal(rt_status_write(conn, rows, 2, err, sizeof(err)), 0);
    assert_int_equal(rt_status_done_offsets(conn, "t.done", 0, 5, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 4);
    assert_int_equal(offs[0], 5);
    assert_int_equal(offs[3], 20);
    free(offs);
    /* from the middle of the range 7-8 */
    assert_int_equal(rt_status_done_offsets(conn, "t.done", 0, 8, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 2);
    assert_int_equal(offs[0], 8);
    assert_int_equal(offs[1], 20);
    free(offs);

    /* A batch Postgres refuses (a state the table does not allow) records no offset either:
     * both are one transaction. */
    rows[0].kafka_offset = 30;
    rows[1].state = "bogus";
    assert_int_equal(rt_status_write(conn, rows, 2, err, sizeof(err)), SL_ERR_INVALID);
    assert_int_equal(rt_status_done_offsets(conn, "t.done", 0, 21, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 0);
    v = value("SELECT count(*) FROM sluice_jobs WHERE kafka_offset = 30", NULL, NULL, NULL);
    assert_string_equal(v, "0");
    free(v);

    /* The topic is quoted in the statement. */
    rows[0].kafka_topic = "it's \\ done";
    assert_int_equal(rt_status_write(conn, rows, 1, err, sizeof(err)), 0);
    assert_int_equal(
        rt_status_done_offsets(conn, "it's \\ done", 0, 0, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    assert_int_equal(offs[0], 30);
    free(offs);
}

/* Migration 0010 on a database with job status rows from before it: their final offsets are
 * found as before, and sluice_jobs loses the index it no longer needs. */
static void test_done_offsets_upgrade(void **state)
{
    (void)state;
    char err[512], dsn[1024];
    assert_int_equal(sl_test_fresh_db("itest_status_upgrade", dsn, sizeof(dsn)), 0);
    sl_pg_t *old = sl_pg_new(dsn);
    PGconn *c = sl_pg_conn(old, err, sizeof(err));
    assert_non_null(c);
    /* everything but 0010, as if this database predated it */
    const char *skip[] = {"CREATE TABLE sluice_schema_migrations (version int PRIMARY KEY, "
                          "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                          "INSERT INTO sluice_schema_migrations VALUES (10, '0010_jobs_done')"};
    for (size_t i = 0; i < 2; i++)
        assert_int_equal(sl_pg_exec(old, skip[i], 0, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_migrate_run(c, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_pg_exec(old, "SELECT sluice_jobs_add_day('2021-06-08')", 0, NULL, NULL, err,
                                sizeof(err)),
                     0);
    const char *rows =
        "INSERT INTO sluice_jobs (job_id, message_id, destination_id, state, attempts, "
        "kafka_topic, kafka_partition, kafka_offset, created_at) VALUES "
        "('j', 'm', 'd', 'succeeded', 1, 'up', 0, 4, '2021-06-08 10:00Z'), "
        "('j', 'm', 'd', 'failed', 1, 'up', 0, 5, '2021-06-08 10:00Z'), "
        "('j', 'm', 'd', 'aborted', 2, 'up', 0, 5, now()), "
        "('j', 'm', 'd', 'succeeded', 1, 'up', 0, 6, now()), "
        "('j', 'm', 'd', 'succeeded', 1, 'up', 1, 7, now())";
    assert_int_equal(sl_pg_exec(old, rows, 0, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(sl_pg_exec(old, "DELETE FROM sluice_schema_migrations WHERE version = 10", 0,
                                NULL, NULL, err, sizeof(err)),
                     0);
    int applied = 0;
    assert_int_equal(sl_migrate_run(c, &applied, err, sizeof(err)), 0);
    assert_int_equal(applied, 1);

    int64_t *offs;
    size_t n;
    assert_int_equal(rt_status_done_offsets(c, "up", 0, 0, &offs, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_int_equal(offs[0], 4);
    assert_int_equal(offs[1], 5);
    assert_int_equal(offs[2], 6);
    free(offs);
    PGresult *r;
    assert_int_equal(sl_pg_exec(old,
                                "SELECT tableoid::regclass::text, to_regclass('sluice_jobs_kafka') "
                                "IS NULL FROM sluice_jobs_done WHERE last_offset = 4",
                                0, NULL, &r, err, sizeof(err)),
                     0);
    assert_int_equal(PQntuples(r), 1);
    assert_string_equal(PQgetvalue(r, 0, 0), "sluice_jobs_done_p20210608");
    assert_string_equal(PQgetvalue(r, 0, 1), "t");
    PQclear(r);
    sl_pg_destroy(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_read),
        cmocka_unit_test(test_partitions_retention),
        cmocka_unit_test(test_done_offsets),
        cmocka_unit_test(test_done_offsets_upgrade),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
