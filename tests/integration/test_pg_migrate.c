/*
 * Integration test for common/pg.c and common/migrate.c against the real test Postgres:
 * instances migrating at the same time apply each migration exactly once; errors are
 * classified; an unreachable server is retried with backoff and named in the error; the
 * on-connect statement sets up each new connection.
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

#include "common/err.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "testutil.h"

static char dsn[1024];

static int setup(void **state)
{
    (void)state;
    return sl_test_fresh_db("itest_migrate", dsn, sizeof(dsn));
}

static void *migrate_thread(void *arg)
{
    int *applied = arg;
    char err[512];
    sl_pg_t *pg = sl_pg_new(dsn);
    PGconn *c = sl_pg_conn(pg, err, sizeof(err));
    *applied = c ? (sl_migrate_run(c, applied, err, sizeof(err)) == 0 ? *applied : -1) : -1;
    sl_pg_destroy(pg);
    return NULL;
}

static void test_concurrent_migrations(void **state)
{
    (void)state;
    enum { T = 4 };
    pthread_t th[T];
    int applied[T];
    for (int i = 0; i < T; i++) {
        applied[i] = 0;
        pthread_create(&th[i], NULL, migrate_thread, &applied[i]);
    }
    int total = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_true(applied[i] >= 0);
        total += applied[i];
    }
    assert_int_equal(total, (int)sl_migrations_count);

    char err[512];
    PGresult *r;
    sl_pg_t *pg = sl_pg_new(dsn);
    assert_int_equal(sl_pg_exec(pg, "SELECT count(*) FROM sluice_schema_migrations", 0, NULL, &r,
                                err, sizeof(err)),
                     0);
    assert_int_equal(atoi(PQgetvalue(r, 0, 0)), (int)sl_migrations_count);
    PQclear(r);
    /* The tables the roles use exist. */
    assert_int_equal(
        sl_pg_exec(pg, "SELECT job_id, state FROM sluice_jobs", 0, NULL, NULL, err, sizeof(err)),
        0);
    /* An SQL error is not retriable; the connection stays usable. */
    assert_int_equal(sl_pg_exec(pg, "SELEC 1", 0, NULL, NULL, err, sizeof(err)), SL_ERR_INVALID);
    assert_non_null(strstr(err, "42601"));
    /* A newer schema than this binary knows is refused. */
    assert_int_equal(sl_pg_exec(pg,
                                "INSERT INTO sluice_schema_migrations (version, name) "
                                "VALUES (9999, '9999_future')",
                                0, NULL, NULL, err, sizeof(err)),
                     0);
    assert_int_not_equal(sl_migrate_run(sl_pg_conn(pg, err, sizeof(err)), NULL, err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "newer than this sluice"));
    /* A dropped connection is transient and reconnects on the next call. */
    sl_pg_exec(pg, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL, err,
               sizeof(err));
    assert_int_equal(sl_pg_exec(pg, "SELECT 1", 0, NULL, NULL, err, sizeof(err)), 0);
    sl_pg_destroy(pg);
}

/* The on-connect statement sets up every new connection, the first and a reconnect; one that
 * fails makes the connection fail with its error. */
static void test_on_connect(void **state)
{
    (void)state;
    char err[512];
    sl_pg_t *pg = sl_pg_new(dsn);
    sl_pg_on_connect(pg, "SET synchronous_commit = off");
    for (int round = 0; round < 2; round++) {
        PGresult *r = NULL;
        assert_int_equal(sl_pg_exec(pg, "SHOW synchronous_commit", 0, NULL, &r, err, sizeof(err)),
                         0);
        assert_string_equal(PQgetvalue(r, 0, 0), "off");
        PQclear(r);
        /* the server drops the connection: the next call reconnects, set up again */
        sl_pg_exec(pg, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL, err,
                   sizeof(err));
    }
    sl_pg_destroy(pg);

    pg = sl_pg_new(dsn);
    sl_pg_on_connect(pg, "SET no_such_setting = 1");
    assert_null(sl_pg_conn(pg, err, sizeof(err)));
    assert_non_null(strstr(err, "SET no_such_setting = 1"));
    assert_non_null(strstr(err, "no_such_setting"));
    sl_pg_destroy(pg);
}

static void test_unreachable_backoff(void **state)
{
    (void)state;
    char err[512];
    sl_pg_t *pg = sl_pg_new("host=127.0.0.1 port=1 dbname=x user=x password=secret");
    assert_null(sl_pg_conn(pg, err, sizeof(err)));
    assert_non_null(strstr(err, "port=1"));
    assert_non_null(strstr(err, "SLUICE_POSTGRES_DSN"));
    assert_null(strstr(err, "secret"));
    /* Within the backoff the next call fails at once without a new attempt. */
    int64_t t0 = sl_time_mono_ms();
    for (int i = 0; i < 100; i++)
        assert_null(sl_pg_conn(pg, err, sizeof(err)));
    assert_true(sl_time_mono_ms() - t0 < 1000);
    sl_pg_destroy(pg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_migrations),
        cmocka_unit_test(test_on_connect),
        cmocka_unit_test(test_unreachable_backoff),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
