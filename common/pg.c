/* Postgres connection handling with reconnect and backoff, see pg.h. */
#include "common/pg.h"
#include "common/err.h"
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 30000

struct sl_pg {
    char *dsn;
    char *where; /* host/port/dbname for messages, without the password */
    char *on_connect;
    PGconn *conn;
    int64_t next_attempt_ms;
    int64_t backoff_ms;
    char last_error[512];
    bool reported_down;
};

/* "host=h port=p dbname=d user=u" from the DSN, never the password. */
static char *describe(const char *dsn)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    if (!opts) {
        PQfreemem(err);
        return sl_strdup("(unparsable connection string)");
    }
    static const char *const keys[] = {"host", "hostaddr", "port", "dbname", "user"};
    char buf[512] = "";
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
            if (o->val && *o->val && strcmp(o->keyword, keys[i]) == 0 && n < sizeof(buf))
                n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s=%s", n ? " " : "", o->keyword,
                                      o->val);
    PQconninfoFree(opts);
    return sl_strdup(n ? buf : "localhost");
}

sl_pg_t *sl_pg_new(const char *dsn)
{
    sl_pg_t *pg = sl_calloc(1, sizeof(*pg));
    pg->dsn = sl_strdup(dsn);
    pg->where = describe(dsn);
    return pg;
}

void sl_pg_destroy(sl_pg_t *pg)
{
    if (!pg)
        return;
    if (pg->conn)
        PQfinish(pg->conn);
    free(pg->dsn);
    free(pg->where);
    free(pg->on_connect);
    free(pg);
}

void sl_pg_on_connect(sl_pg_t *pg, const char *sql)
{
    free(pg->on_connect);
    pg->on_connect = sql ? sl_strdup(sql) : NULL;
}

static void one_line(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
}

PGconn *sl_pg_conn(sl_pg_t *pg, char *errstr, size_t errstr_size)
{
    if (pg->conn && PQstatus(pg->conn) == CONNECTION_OK)
        return pg->conn;
    int64_t now = sl_time_mono_ms();
    if (pg->conn) {
        PQfinish(pg->conn);
        pg->conn = NULL;
    } else if (now < pg->next_attempt_ms) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "%s", pg->last_error);
        return NULL;
    }
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {pg->dsn, "5", "sluice", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    char msg[300];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    bool ok = PQstatus(c) == CONNECTION_OK;
    if (ok && pg->on_connect) {
        PGresult *r = PQexec(c, pg->on_connect);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            snprintf(msg, sizeof(msg), "\"%s\" failed: %s", pg->on_connect,
                     PQresultErrorMessage(r));
        PQclear(r);
    }
    if (ok) {
        pg->conn = c;
        pg->backoff_ms = 0;
        if (pg->reported_down)
            sl_info("postgres", "connected to postgres at \"%s\"", pg->where);
        pg->reported_down = false;
        sl_health_set("postgres", true, NULL);
        return c;
    }
    one_line(msg);
    PQfinish(c);
    snprintf(pg->last_error, sizeof(pg->last_error),
             "could not connect to postgres at \"%s\": %s; check SLUICE_POSTGRES_DSN and that "
             "the server is running",
             pg->where, msg);
    pg->backoff_ms = pg->backoff_ms ? pg->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (pg->backoff_ms > BACKOFF_MAX_MS)
        pg->backoff_ms = BACKOFF_MAX_MS;
    pg->next_attempt_ms = now + pg->backoff_ms;
    if (!pg->reported_down)
        sl_error("postgres", "%s (retrying with backoff)", pg->last_error);
    pg->reported_down = true;
    sl_health_set("postgres", false, "%s", pg->last_error);
    sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "%s", pg->last_error);
    return NULL;
}

int sl_pg_exec(sl_pg_t *pg, const char *sql, int nparams, const char *const *params,
               PGresult **resp, char *errstr, size_t errstr_size)
{
    if (resp)
        *resp = NULL;
    PGconn *c = sl_pg_conn(pg, errstr, errstr_size);
    if (!c)
        return SL_ERR_TRANSIENT;
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (resp)
            *resp = r;
        else
            PQclear(r);
        return 0;
    }
    char state_buf[8] = "";
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (state)
        snprintf(state_buf, sizeof(state_buf), "%s", state);
    state = state ? state_buf : NULL; /* the result is freed below */
    char msg[400];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    one_line(msg);
    PQclear(r);
    bool transient = PQstatus(c) != CONNECTION_OK || !state || strncmp(state, "08", 2) == 0 ||
                     strncmp(state, "57P", 3) == 0 || strcmp(state, "40001") == 0 ||
                     strcmp(state, "40P01") == 0;
    if (PQstatus(c) != CONNECTION_OK) {
        sl_health_set("postgres", false, "lost the connection to postgres at \"%s\": %s", pg->where,
                      msg);
        pg->reported_down = true;
    }
    return sl_err_set(errstr, errstr_size, transient ? SL_ERR_TRANSIENT : SL_ERR_INVALID,
                      "postgres error%s%s: %s", state ? " " : "", state ? state : "", msg);
}
