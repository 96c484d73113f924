/*
 * Postgres connection handling: one connection per sl_pg_t (not thread-safe; one per thread),
 * reconnect with exponential backoff, and the "postgres" health check.
 */
#ifndef SL_PG_H
#define SL_PG_H

#include <libpq-fe.h>
#include <stddef.h>

typedef struct sl_pg sl_pg_t;

/* No connection is made yet. dsn is copied. */
sl_pg_t *sl_pg_new(const char *dsn);
void sl_pg_destroy(sl_pg_t *pg);

/* SQL run on each new connection before it is handed out (e.g. a session setting); sql is
 * copied. A connection on which it fails is closed and reported like a failed connect. */
void sl_pg_on_connect(sl_pg_t *pg, const char *sql);

/* A live connection, (re)connecting if needed. While the server is unreachable, attempts are
 * spaced by a backoff from 100 ms doubling to 30 s; between attempts this returns NULL at once.
 * On NULL, errstr says why, e.g. `could not connect to postgres at "host=... port=...": ...`.
 * The connection stays owned by pg. */
PGconn *sl_pg_conn(sl_pg_t *pg, char *errstr, size_t errstr_size);

/* Runs sql with text parameters. On success returns 0 and, if resp is not NULL, the result
 * (caller PQclear()s it). Returns SL_ERR_TRANSIENT when the connection failed (it will be
 * re-established by the next call) and SL_ERR_INVALID for an SQL error; errstr says which. */
int sl_pg_exec(sl_pg_t *pg, const char *sql, int nparams, const char *const *params,
               PGresult **resp, char *errstr, size_t errstr_size);

#endif
