/*
 * Integration test for warehouse/pgload.c against the real test Postgres: staging files
 * written with warehouse/staging.c are loaded into tables that are created and evolve; type
 * conflicts go to rudder_discards; hostile names stay names; loading again doubles nothing;
 * users keep their latest traits; namespaces stay apart. Prints the load speed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/timeutil.h"
#include "testutil.h"
#include "warehouse/pgload.h"
#include "warehouse/schema.h"
#include "warehouse/staging.h"

#define DB "itest_wh_pgload"

static json_object *config; /* the destination config for DB */
static PGconn *check;       /* a plain connection to DB for the assertions */
static char dir[] = "/tmp/sluice-wh-pgload-XXXXXX";
static wh_pg_t *wh;

/* ---- staging files ----------------------------------------------------------------------- */

/* A row from "name", type, "value" triples ending with NULL (value NULL is SQL NULL). */
static wh_row_t *row(const char *table, ...)
{
    wh_row_t *r = calloc(1, sizeof(*r));
    r->table = strdup(table);
    va_list ap;
    va_start(ap, table);
    for (const char *name; (name = va_arg(ap, const char *));) {
        wh_type_t t = (wh_type_t)va_arg(ap, int);
        const char *v = va_arg(ap, const char *);
        r->cols = realloc(r->cols, (r->ncols + 1) * sizeof(wh_col_t));
        r->cols[r->ncols++] = (wh_col_t){strdup(name), t, v ? strdup(v) : NULL};
    }
    va_end(ap);
    return r;
}

/* A row of table with an id, a received_at and one more column. */
static wh_row_t *row3(const char *table, const char *id, const char *at, const char *col,
                      wh_type_t type, const char *value)
{
    return row(table, "id", WH_STRING, id, "received_at", WH_DATETIME, at, col, (int)type, value,
               NULL);
}

static void row_free(wh_row_t *r)
{
    for (size_t i = 0; i < r->ncols; i++) {
        free(r->cols[i].name);
        free(r->cols[i].value);
    }
    free(r->cols);
    free(r->table);
    free(r);
}

/* Writes the rows (consumed) to a new staging file; returns its path (static buffer). */
static const char *stage(const char *table, size_t n, wh_row_t **rows)
{
    static char path[256];
    static int seq;
    snprintf(path, sizeof(path), "%s/%d.avro", dir, ++seq);
    char err[256] = "";
    int rc = wh_staging_write(path, table, (const wh_row_t *const *)rows, n, err, sizeof(err));
    if (rc)
        fail_msg("staging write: %s", err);
    for (size_t i = 0; i < n; i++)
        row_free(rows[i]);
    return path;
}

#define STAGE(table, ...)                                                                          \
    stage(table, sizeof((wh_row_t *[]){__VA_ARGS__}) / sizeof(wh_row_t *),                         \
          (wh_row_t *[]){__VA_ARGS__})

static long load(const char *ns, const char *table, const char *path)
{
    char err[512] = "";
    long n = wh_pg_load(wh, ns, table, path, err, sizeof(err));
    if (n < 0)
        print_message("load %s.%s: %ld %s\n", ns, table, n, err);
    return n;
}

/* ---- checks ------------------------------------------------------------------------------ */

/* The first value of a query's first row ("(null)" for NULL, "(none)" without rows); static. */
static const char *q(const char *fmt, ...)
{
    static char out[4][512];
    static int k;
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(check, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    char *o = out[k++ & 3];
    snprintf(o, sizeof(out[0]), "%s",
             PQntuples(r) == 0      ? "(none)"
             : PQgetisnull(r, 0, 0) ? "(null)"
                                    : PQgetvalue(r, 0, 0));
    PQclear(r);
    return o;
}

/* format_type of ns.table.column, or "(none)". */
static const char *coltype(const char *ns, const char *table, const char *col)
{
    char *e1 = PQescapeLiteral(check, ns, strlen(ns)),
         *e2 = PQescapeLiteral(check, table, strlen(table)),
         *e3 = PQescapeLiteral(check, col, strlen(col));
    const char *t = q("SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a JOIN "
                      "pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = "
                      "c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s "
                      "AND NOT a.attisdropped",
                      e1, e2, e3);
    PQfreemem(e1);
    PQfreemem(e2);
    PQfreemem(e3);
    return t;
}

static void sql(const char *s)
{
    PGresult *r = PQexec(check, s);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", s, PQresultErrorMessage(r));
    PQclear(r);
}

/* ---- setup ------------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    const char *base = sl_test_pg_dsn();
    if (!base || !mkdtemp(dir))
        return -1;
    PGconn *c = PQconnectdb(base);
    if (PQstatus(c) != CONNECTION_OK)
        return -1;
    PQclear(PQexec(c, "DROP DATABASE IF EXISTS " DB " WITH (FORCE)"));
    PGresult *r = PQexec(c, "CREATE DATABASE " DB);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    PQclear(r);
    PQfinish(c);
    if (rc)
        return rc;
    /* The destination config: RudderStack's keys, from the test DSN. */
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(base, &err);
    if (!opts)
        return -1;
    config = json_object_new_object();
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "host") || !strcmp(o->keyword, "user") ||
            !strcmp(o->keyword, "password"))
            json_object_object_add(config, o->keyword, json_object_new_string(o->val));
        else if (!strcmp(o->keyword, "port"))
            json_object_object_add(config, "port", json_object_new_string(o->val));
    }
    PQconninfoFree(opts);
    json_object_object_add(config, "database", json_object_new_string(DB));
    json_object_object_add(config, "sslMode", json_object_new_string("disable"));
    json_object_object_add(config, "namespace", json_object_new_string("analytics"));
    char dsn[1024];
    snprintf(dsn, sizeof(dsn), "%s dbname=" DB, base);
    check = PQconnectdb(dsn);
    if (PQstatus(check) != CONNECTION_OK)
        return -1;
    PQclear(PQexec(check, "SET TimeZone = 'UTC'"));
    char e[256];
    wh = wh_pg_connect(config, e, sizeof(e));
    return wh ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    wh_pg_close(wh);
    PQfinish(check);
    json_object_put(config);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* A config with key set to value (a JSON text, or NULL to remove it). */
static json_object *config_with(const char *key, const char *value)
{
    json_object *c = NULL;
    json_object_deep_copy(config, &c, NULL);
    if (value)
        json_object_object_add(c, key, json_tokener_parse(value));
    else
        json_object_object_del(c, key);
    return c;
}

static void test_config(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value;
    } bad[] = {
        {"host", NULL},      {"host", "\"\""},  {"database", NULL},      {"user", "42"},
        {"port", "\"54x\""}, {"port", "70000"}, {"sslMode", "\"sure\""}, {"password", "[1]"},
    };
    char err[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_object *c = config_with(bad[i].key, bad[i].value);
        err[0] = '\0';
        assert_null(wh_pg_connect(c, err, sizeof(err)));
        assert_non_null(strstr(err, bad[i].key));
        json_object_put(c);
    }
    /* A port may be a number; no namespace is fine. */
    json_object *c = config_with("port", "5432");
    json_object_object_del(c, "namespace");
    wh_pg_t *w = wh_pg_connect(c, err, sizeof(err));
    assert_non_null(w);
    assert_null(wh_pg_namespace(w));
    wh_pg_close(w);
    json_object_put(c);
    assert_string_equal(wh_pg_namespace(wh), "analytics");
    assert_int_equal(wh_pg_ping(wh, err, sizeof(err)), 0);
    /* Nothing listens on port 1: transient, and the message says where, not the password. */
    c = config_with("port", "\"1\"");
    json_object_object_add(c, "password", json_object_new_string("s3cret"));
    w = wh_pg_connect(c, err, sizeof(err));
    assert_int_equal(wh_pg_ping(w, err, sizeof(err)), SL_ERR_TRANSIENT);
    assert_non_null(strstr(err, ":1/" DB));
    assert_null(strstr(err, "s3cret"));
    wh_pg_close(w);
    json_object_put(c);
}

static void test_event_tables(void **state)
{
    (void)state;
    const char *f = STAGE(
        "tracks",
        row("tracks", "id", WH_STRING, "m1", "received_at", WH_DATETIME, "2024-05-01T10:00:00.000Z",
            "event", WH_STRING, "Order Done", "user_id", WH_STRING, "u1", NULL),
        row("tracks", "id", WH_STRING, "m2", "received_at", WH_DATETIME, "2024-05-01T10:00:01.000Z",
            "event", WH_STRING, "Order Done", "user_id", WH_STRING, NULL, NULL));
    assert_int_equal(load("analytics", "tracks", f), 2);
    f = STAGE("order_done",
              row("order_done", "id", WH_STRING, "m1", "received_at", WH_DATETIME,
                  "2024-05-01T10:00:00.000Z", "total", WH_FLOAT, "9.5", "items", WH_INT, "3",
                  "gift", WH_BOOL, "true", "meta", WH_JSON, "{\"a\":[1,2]}", "note", WH_STRING,
                  "tab\there\nnew line \\ back", NULL),
              row("order_done", "id", WH_STRING, "m2", "received_at", WH_DATETIME,
                  "2024-05-01T10:00:01.000Z", "total", WH_FLOAT, "1e3", "items", WH_INT, NULL,
                  "gift", WH_BOOL, "false", "meta", WH_JSON, "null", "note", WH_STRING, "", NULL));
    assert_int_equal(load("analytics", "order_done", f), 2);
    assert_string_equal(coltype("analytics", "order_done", "id"), "text");
    assert_string_equal(coltype("analytics", "order_done", "received_at"),
                        "timestamp with time zone");
    assert_string_equal(coltype("analytics", "order_done", "total"), "double precision");
    assert_string_equal(coltype("analytics", "order_done", "items"), "bigint");
    assert_string_equal(coltype("analytics", "order_done", "gift"), "boolean");
    assert_string_equal(coltype("analytics", "order_done", "meta"), "jsonb");
    assert_string_equal(coltype("analytics", "order_done", "note"), "text");
    assert_string_equal(q("SELECT note FROM analytics.order_done WHERE id = 'm1'"),
                        "tab\there\nnew line \\ back");
    assert_string_equal(q("SELECT note FROM analytics.order_done WHERE id = 'm2'"), "");
    assert_string_equal(q("SELECT meta->'a'->>1 FROM analytics.order_done WHERE id = 'm1'"), "2");
    assert_string_equal(q("SELECT total + items FROM analytics.order_done WHERE id = 'm1'"),
                        "12.5");
    assert_string_equal(q("SELECT items FROM analytics.order_done WHERE id = 'm2'"), "(null)");
    assert_string_equal(q("SELECT count(*) FROM analytics.order_done WHERE gift"), "1");
    assert_string_equal(q("SELECT received_at FROM analytics.tracks WHERE id = 'm2'"),
                        "2024-05-01 10:00:01+00");
    assert_string_equal(q("SELECT user_id FROM analytics.tracks WHERE id = 'm2'"), "(null)");
    /* identifies, pages, screens, groups and aliases load the same way. */
    static const char *const kinds[] = {"identifies", "pages", "screens", "groups", "aliases"};
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        f = STAGE(kinds[i], row(kinds[i], "id", WH_STRING, "k1", "received_at", WH_DATETIME,
                                "2024-05-01T10:00:00Z", "name", WH_STRING, kinds[i], NULL));
        assert_int_equal(load("analytics", kinds[i], f), 1);
        assert_string_equal(q("SELECT name FROM analytics.%s", kinds[i]), kinds[i]);
    }
}

static void test_schema_evolution(void **state)
{
    (void)state;
    const char *f = STAGE("evo", row("evo", "id", WH_STRING, "e1", "a", WH_INT, "1", NULL));
    assert_int_equal(load("analytics", "evo", f), 1);
    /* A new property becomes a new column; old rows have NULL there. */
    f = STAGE("evo", row("evo", "id", WH_STRING, "e2", "a", WH_INT, "2", "b", WH_STRING, "x", "c_d",
                         WH_DATETIME, "2024-01-02T03:04:05Z", NULL));
    assert_int_equal(load("analytics", "evo", f), 1);
    assert_string_equal(coltype("analytics", "evo", "b"), "text");
    assert_string_equal(coltype("analytics", "evo", "c_d"), "timestamp with time zone");
    assert_string_equal(q("SELECT b FROM analytics.evo WHERE id = 'e1'"), "(null)");
    assert_string_equal(q("SELECT b FROM analytics.evo WHERE id = 'e2'"), "x");
    /* A file without some columns leaves them NULL. */
    f = STAGE("evo", row("evo", "id", WH_STRING, "e3", NULL));
    assert_int_equal(load("analytics", "evo", f), 1);
    assert_string_equal(q("SELECT count(*) FROM analytics.evo WHERE a IS NULL"), "1");
    /* A new event is a new table. */
    f = STAGE("evo_two", row("evo_two", "id", WH_STRING, "e4", "z", WH_BOOL, "true", NULL));
    assert_int_equal(load("analytics", "evo_two", f), 1);
    assert_string_equal(coltype("analytics", "evo_two", "z"), "boolean");
}

static void test_type_conflict(void **state)
{
    (void)state;
    const char *f = STAGE("conflict", row("conflict", "id", WH_STRING, "c1", "received_at",
                                          WH_DATETIME, "2024-05-01T10:00:00Z", "n", WH_INT, "1",
                                          "x", WH_FLOAT, "1.5", "ok", WH_BOOL, "true", NULL));
    assert_int_equal(load("analytics", "conflict", f), 1);
    /* The warehouse's types win. An int into a float column widens; a float into an int
     * column is truncated, as RudderStack does (wh_convert); a string for an int column and
     * one for a boolean column cannot convert: NULL, and a row in rudder_discards each. */
    const char *rows_file = STAGE(
        "conflict",
        row("conflict", "id", WH_STRING, "c2", "received_at", WH_DATETIME, "2024-05-01T11:00:00Z",
            "n", WH_STRING, "many", "x", WH_INT, "7", NULL),
        row("conflict", "id", WH_STRING, "c3", "received_at", WH_DATETIME, "2024-05-01T12:00:00Z",
            "n", WH_FLOAT, "2.5", "x", WH_INT, "8", "ok", WH_STRING, "yes", NULL));
    assert_int_equal(load("analytics", "conflict", rows_file), 2);
    assert_string_equal(coltype("analytics", "conflict", "n"), "bigint");
    assert_string_equal(coltype("analytics", "conflict", "x"), "double precision");
    assert_string_equal(coltype("analytics", "conflict", "ok"), "boolean");
    assert_string_equal(q("SELECT n FROM analytics.conflict WHERE id = 'c2'"), "(null)");
    assert_string_equal(q("SELECT n FROM analytics.conflict WHERE id = 'c3'"), "2");
    assert_string_equal(q("SELECT ok FROM analytics.conflict WHERE id = 'c3'"), "(null)");
    assert_string_equal(q("SELECT x FROM analytics.conflict WHERE id = 'c2'"), "7");
    assert_string_equal(q("SELECT count(*) FROM analytics.rudder_discards"), "2");
    assert_string_equal(q("SELECT concat_ws('|', table_name, row_id, column_name, column_value, "
                          "received_at, uuid_ts IS NOT NULL, reason) FROM "
                          "analytics.rudder_discards WHERE row_id = 'c2'"),
                        "conflict|c2|n|many|2024-05-01 11:00:00+00|t|incompatible schema "
                        "conversion from string to int");
    assert_string_equal(q("SELECT column_name || '=' || column_value FROM "
                          "analytics.rudder_discards WHERE row_id = 'c3'"),
                        "ok=yes");
    /* Loading the file again neither doubles rows nor discards. */
    assert_int_equal(load("analytics", "conflict", rows_file), 0);
    assert_string_equal(q("SELECT count(*) FROM analytics.rudder_discards"), "2");
    assert_string_equal(q("SELECT count(*) FROM analytics.conflict"), "3");
    /* One file mixing types in a column (the staging file keeps each value's own type): the
     * first new id goes straight in, the known one sends the load the careful way. */
    f = STAGE("conflict", row3("conflict", "c4", "2024-05-01T13:00:00Z", "n", WH_INT, "4"),
              row3("conflict", "c5", "2024-05-01T13:00:00Z", "n", WH_STRING, "five"),
              row3("conflict", "c2", "2024-05-01T13:00:00Z", "n", WH_STRING, "again"));
    assert_int_equal(load("analytics", "conflict", f), 2);
    assert_string_equal(q("SELECT string_agg(id || '=' || coalesce(n::text, '-'), ',' ORDER BY "
                          "id) FROM analytics.conflict"),
                        "c1=1,c2=-,c3=2,c4=4,c5=-");
    assert_string_equal(q("SELECT string_agg(row_id, ',' ORDER BY row_id) FROM "
                          "analytics.rudder_discards"),
                        "c2,c3,c5");
}

static void test_injection(void **state)
{
    (void)state;
    const char *evil = "x\"; DROP TABLE analytics.tracks; --";
    const char *f = STAGE(evil, row(evil, "id", WH_STRING, "i1", "a\"b; DROP TABLE x; --",
                                    WH_STRING, "'); DELETE FROM analytics.tracks; --", NULL));
    assert_int_equal(load("analytics", evil, f), 1);
    assert_string_equal(q("SELECT count(*) FROM analytics.tracks"), "2");
    assert_string_equal(q("SELECT \"a\"\"b; DROP TABLE x; --\" FROM analytics.\"x\"\"; DROP "
                          "TABLE analytics.tracks; --\""),
                        "'); DELETE FROM analytics.tracks; --");
    /* And as a namespace; a name Postgres would truncate is refused. */
    f = STAGE("t", row("t", "id", WH_STRING, "i2", NULL));
    assert_int_equal(load("ns\"; DROP SCHEMA analytics CASCADE; --", "t", f), 1);
    assert_string_equal(q("SELECT count(*) FROM analytics.tracks"), "2");
    char err[256];
    assert_int_equal(wh_pg_load(wh, "analytics",
                                "a_name_of_sixty_four_bytes_is_one_more_than_postgres_keeps_xxxxx",
                                f, err, sizeof(err)),
                     SL_ERR_INVALID);
}

static void test_reload(void **state)
{
    (void)state;
    /* The same id twice in one file is one row. */
    const char *f = STAGE("again", row3("again", "r1", "2024-05-01T10:00:00Z", "v", WH_INT, "1"),
                          row3("again", "r2", "2024-05-01T10:00:00Z", "v", WH_INT, "2"),
                          row3("again", "r1", "2024-05-01T10:00:00Z", "v", WH_INT, "1"));
    char path[256];
    snprintf(path, sizeof(path), "%s", f);
    assert_int_equal(load("analytics", "again", path), 2);
    assert_int_equal(load("analytics", "again", path), 0);
    assert_int_equal(load("analytics", "again", path), 0);
    assert_string_equal(q("SELECT count(*) || '/' || sum(v) FROM analytics.again"), "2/3");
    /* A table made elsewhere without a unique index on id is deduplicated too. */
    sql("CREATE TABLE analytics.legacy (id text, v bigint)");
    sql("INSERT INTO analytics.legacy VALUES ('l1', 1)");
    f = STAGE("legacy", row("legacy", "id", WH_STRING, "l1", "v", WH_INT, "1", NULL),
              row("legacy", "id", WH_STRING, "l2", "v", WH_INT, "2", NULL),
              row("legacy", "id", WH_STRING, "l2", "v", WH_INT, "2", NULL));
    snprintf(path, sizeof(path), "%s", f);
    assert_int_equal(load("analytics", "legacy", path), 1);
    assert_int_equal(load("analytics", "legacy", path), 0);
    assert_string_equal(q("SELECT count(*) FROM analytics.legacy"), "2");
    /* A failed load keeps nothing, not even its new table; errors are classified. */
    f = STAGE("broken", row("broken", "id", WH_STRING, "b1", "j", WH_JSON, "{not json", NULL));
    char err[512];
    assert_int_equal(wh_pg_load(wh, "analytics", "broken", f, err, sizeof(err)), SL_ERR_INVALID);
    assert_non_null(strstr(err, "\"analytics\".\"broken\""));
    assert_string_equal(q("SELECT to_regclass('analytics.broken') IS NULL"), "t");
    assert_int_equal(wh_pg_load(wh, "analytics", "x", "/nonexistent/file.avro", err, sizeof(err)),
                     SL_ERR_NOTFOUND);
    /* A lost connection fails one load as transient; the next reconnects. */
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
        "'sluice-warehouse'");
    f = STAGE("again", row("again", "id", WH_STRING, "r3", NULL));
    snprintf(path, sizeof(path), "%s", f);
    assert_int_equal(wh_pg_load(wh, "analytics", "again", path, err, sizeof(err)),
                     SL_ERR_TRANSIENT);
    assert_int_equal(load("analytics", "again", path), 1);
}

static void test_users(void **state)
{
    (void)state;
    /* Several identifies: each trait keeps its latest non-NULL value by received_at. */
    const char *f = STAGE("users", row("users", "id", WH_STRING, "u1", "received_at", WH_DATETIME,
                                       "2024-05-01T10:00:00Z", "name", WH_STRING, "Ann", "email",
                                       WH_STRING, "ann@a.example", NULL));
    assert_int_equal(load("analytics", "users", f), 1);
    char path[256];
    f = STAGE("users",
              row("users", "id", WH_STRING, "u1", "received_at", WH_DATETIME,
                  "2024-05-01T12:00:00Z", "name", WH_STRING, NULL, "plan", WH_STRING, "pro", NULL),
              row("users", "id", WH_STRING, "u1", "received_at", WH_DATETIME,
                  "2024-05-01T11:00:00Z", "name", WH_STRING, "Anne", "plan", WH_STRING, "free",
                  NULL),
              row3("users", "u2", "2024-05-01T11:00:00Z", "name", WH_STRING, "Bob"));
    snprintf(path, sizeof(path), "%s", f);
    assert_int_equal(load("analytics", "users", path), 2);
    assert_string_equal(q("SELECT concat_ws('|', name, email, plan, received_at) FROM "
                          "analytics.users WHERE id = 'u1'"),
                        "Anne|ann@a.example|pro|2024-05-01 12:00:00+00");
    assert_string_equal(q("SELECT concat_ws('|', name, email, plan) FROM analytics.users WHERE "
                          "id = 'u2'"),
                        "Bob");
    /* An older identify loaded late fills only what is missing; reloading changes nothing. */
    f = STAGE("users",
              row("users", "id", WH_STRING, "u1", "received_at", WH_DATETIME,
                  "2024-04-01T00:00:00Z", "name", WH_STRING, "Old", "age", WH_INT, "41", NULL));
    assert_int_equal(load("analytics", "users", f), 1);
    assert_int_equal(load("analytics", "users", path), 2);
    assert_string_equal(q("SELECT concat_ws('|', name, email, plan, age, received_at) FROM "
                          "analytics.users WHERE id = 'u1'"),
                        "Anne|ann@a.example|pro|41|2024-05-01 12:00:00+00");
    assert_string_equal(q("SELECT count(*) FROM analytics.users"), "2");
    /* Each id once, the first new, a later one known: the straight COPY meets u1 and the file
     * is upserted after all. */
    f = STAGE("users", row3("users", "u3", "2024-05-02T10:00:00Z", "name", WH_STRING, "Cy"),
              row3("users", "u1", "2024-05-02T10:00:00Z", "name", WH_STRING, "Ann B"));
    assert_int_equal(load("analytics", "users", f), 2);
    assert_string_equal(q("SELECT string_agg(concat_ws('|', id, name, email), ',' ORDER BY id) "
                          "FROM analytics.users"),
                        "u1|Ann B|ann@a.example,u2|Bob,u3|Cy");
}

static void test_two_namespaces(void **state)
{
    (void)state;
    const char *f =
        STAGE("tracks", row("tracks", "id", WH_STRING, "n1", "only_a", WH_INT, "1", NULL));
    assert_int_equal(load("ns_a", "tracks", f), 1);
    f = STAGE("tracks", row("tracks", "id", WH_STRING, "n1", "only_b", WH_STRING, "b", NULL),
              row("tracks", "id", WH_STRING, "n2", "only_b", WH_STRING, "c", NULL));
    assert_int_equal(load("ns_b", "tracks", f), 2);
    assert_string_equal(q("SELECT count(*) FROM ns_a.tracks"), "1");
    assert_string_equal(q("SELECT count(*) FROM ns_b.tracks"), "2");
    assert_string_equal(coltype("ns_a", "tracks", "only_b"), "(none)");
    assert_string_equal(coltype("ns_b", "tracks", "only_a"), "(none)");
    assert_string_equal(q("SELECT count(*) FROM analytics.tracks"), "2");
}

/* 100k track-like rows of 20 columns: prints rows/s of wh_pg_load alone. */
static void test_speed(void **state)
{
    (void)state;
    enum { N = 100000 };
    wh_row_t **rows = malloc(N * sizeof(*rows));
    char id[40], at[40], num[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "0b3c6c1e-4f5a-4d7e-9a1b-%012d", i);
        snprintf(at, sizeof(at), "2024-05-01T10:%02d:%02d.%03dZ", i / 60000 % 60, i / 1000 % 60,
                 i % 1000);
        snprintf(num, sizeof(num), "%d", i);
        rows[i] = row("bench", "id", WH_STRING, id, "received_at", WH_DATETIME, at, "sent_at",
                      WH_DATETIME, at, "timestamp", WH_DATETIME, at, "original_timestamp",
                      WH_DATETIME, at, "uuid_ts", WH_DATETIME, at, "anonymous_id", WH_STRING,
                      "4a3f0c2e-anon", "user_id", WH_STRING, "user-1234", "event", WH_STRING,
                      "Product Viewed", "event_text", WH_STRING, "Product Viewed", "context_ip",
                      WH_STRING, "203.0.113.9", "context_library_name", WH_STRING, "analytics.js",
                      "context_library_version", WH_STRING, "2.11.1", "context_locale", WH_STRING,
                      "en-US", "context_page_path", WH_STRING, "/products/42", "context_user_agent",
                      WH_STRING, "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36", "price",
                      WH_FLOAT, "19.99", "quantity", WH_INT, num, "in_stock", WH_BOOL, "true",
                      "sku", WH_STRING, "SKU-0042", NULL);
    }
    const char *f = stage("bench", N, rows);
    free(rows);
    /* References from the same run: reading the staging file alone, and a plain COPY of the
     * same rows (text made by Postgres) into a table without index. */
    char err[256];
    int64_t t0 = sl_time_mono_ms();
    wh_staging_reader_t *r = wh_staging_open(f, err, sizeof(err));
    assert_non_null(r);
    const char *const *values;
    int n = 0;
    while (wh_staging_next(r, &values, err, sizeof(err)) > 0)
        n++;
    wh_staging_close(r);
    assert_int_equal(n, N);
    int64_t read_ms = sl_time_mono_ms() - t0;

    t0 = sl_time_mono_ms();
    assert_int_equal(load("analytics", "bench", f), N);
    int64_t load_ms = sl_time_mono_ms() - t0;
    t0 = sl_time_mono_ms();
    assert_int_equal(load("analytics", "bench", f), 0);
    int64_t again_ms = sl_time_mono_ms() - t0;

    sl_buf_t text = SL_BUF_INIT;
    PGresult *res = PQexec(check, "COPY analytics.bench TO STDOUT");
    assert_int_equal(PQresultStatus(res), PGRES_COPY_OUT);
    PQclear(res);
    char *line;
    int len;
    while ((len = PQgetCopyData(check, &line, 0)) > 0) {
        sl_buf_append(&text, line, (size_t)len);
        PQfreemem(line);
    }
    PQclear(PQgetResult(check));
    sql("CREATE TABLE analytics.bench_copy (LIKE analytics.bench)");
    t0 = sl_time_mono_ms();
    res = PQexec(check, "COPY analytics.bench_copy FROM STDIN");
    assert_int_equal(PQresultStatus(res), PGRES_COPY_IN);
    PQclear(res);
    assert_int_equal(PQputCopyData(check, text.data, (int)text.len), 1);
    assert_int_equal(PQputCopyEnd(check, NULL), 1);
    res = PQgetResult(check);
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    PQclear(PQgetResult(check));
    int64_t copy_ms = sl_time_mono_ms() - t0;
    sl_buf_free(&text);
#define RPS(ms) (N * 1000.0 / (double)((ms) ? (ms) : 1))
    print_message("wh_pg_load, %d rows of 20 columns: %.0f rows/s (%lld ms); again, all ids "
                  "known: %lld ms. Same run: reading the staging file alone %.0f rows/s, plain "
                  "COPY of the rows into a table without index %.0f rows/s\n",
                  N, RPS(load_ms), (long long)load_ms, (long long)again_ms, RPS(read_ms),
                  RPS(copy_ms));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_event_tables),
        cmocka_unit_test(test_schema_evolution),
        cmocka_unit_test(test_type_conflict),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_users),
        cmocka_unit_test(test_two_namespaces),
        cmocka_unit_test(test_speed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
