/*
 * The Postgres warehouse: loads one staging file at a time into a table of a destination's
 * Postgres, creating the namespace, the table and missing columns as the rows need them.
 *
 * Types: int -> bigint, float -> double precision, boolean -> boolean, datetime -> timestamptz,
 * string -> text, json -> jsonb. The type a column already has in the warehouse wins: a value
 * of another type (each value's own type, wh_staging_row_types()) goes through wh_convert():
 * an int into a float column widens, a float into an int column is truncated as RudderStack
 * does, anything goes into a string column; a value that does not convert is loaded as NULL
 * and recorded in the namespace's `rudder_discards` (table_name, row_id, column_name,
 * column_value, received_at, uuid_ts, reason), once per (table, row, column).
 *
 * Each load is one transaction. Rows whose id the table already holds are skipped, and of
 * several rows with one id in a file one is kept, so loading a file again never doubles a row.
 * Tables created here get a unique index on id; with it, rows are COPYed straight into the
 * table when the file's first id is new (the usual case), and otherwise, or when that COPY
 * meets a known id, COPYed into a temporary table and moved with INSERT ... ON CONFLICT (id) DO
 * NOTHING (NOT EXISTS for a table without the index). `users` is upserted by id: each column
 * takes its latest non-NULL value by received_at (then file order); an older or NULL value
 * never replaces a newer one (a file of users all new, each once, is COPYed straight in). The
 * table's columns are read from the catalog once per load. Loads of one table are serialised across
 * processes by an advisory lock; different tables load in parallel. Every identifier is quoted
 * (PQescapeIdentifier), so names from user data can never change a statement.
 */
#ifndef WH_PGLOAD_H
#define WH_PGLOAD_H

#include <json-c/json.h>
#include <stddef.h>

typedef struct wh_pg wh_pg_t; /* one destination's warehouse connection */

/* Reads a POSTGRES destination's config (RudderStack's keys): host, port (string or number,
 * default 5432), database, user, password, sslMode (libpq's sslmode: disable, allow, prefer,
 * require, verify-ca, verify-full; default libpq's) and namespace (see wh_pg_namespace()).
 * dest_config is not kept. No connection is made yet: the first wh_pg_load() or wh_pg_ping()
 * connects, and a broken connection is remade by the next call. Returns a handle (free with
 * wh_pg_close()) or NULL for a bad config, with errstr naming the key. A handle is used by one
 * thread at a time. */
wh_pg_t *wh_pg_connect(json_object *dest_config, char *errstr, size_t errstr_size);

/* The config's namespace as written, or NULL when it sets none (the caller then uses its
 * default, the source name, and makes either a warehouse identifier). Owned by w. */
const char *wh_pg_namespace(const wh_pg_t *w);

/* Connects if needed and checks the server answers. 0, or SL_ERR_TRANSIENT when the server is
 * unreachable and SL_ERR_INVALID when it refuses the credentials or database, with errstr. */
int wh_pg_ping(wh_pg_t *w, char *errstr, size_t errstr_size);

/* Closes the connection and frees w (NULL is fine). */
void wh_pg_close(wh_pg_t *w);

/* Creates namespace ns unless it exists, in a transaction of its own (wh_pg_load() does it in
 * the load's transaction, where a namespace being made holds up loads of its other tables until
 * the first load commits). 0 or an SL_ERR_* with errstr. */
int wh_pg_namespace_ensure(wh_pg_t *w, const char *ns, char *errstr, size_t errstr_size);

/* Loads the staging file at staging_path (warehouse/staging.h) into table `table` of namespace
 * `ns`, as described at the top, in one transaction. ns, table and the file's column names
 * must have 1 to 63 bytes (Postgres would truncate longer ones); their content may be anything,
 * as they are always quoted (wh_identifier() makes them readable). Returns the
 * rows written to the table (0 when every id was already loaded; for `users`, the users
 * inserted or updated) or a negative sl_err_t with errstr: SL_ERR_TRANSIENT when the server
 * could not be reached or the transaction may succeed when retried (lost connection,
 * deadlock, lack of resources), SL_ERR_NOTFOUND when the staging file does not exist,
 * SL_ERR_INVALID otherwise (a bad name, an unreadable file, an SQL error). Nothing of a failed
 * load is kept. */
long wh_pg_load(wh_pg_t *w, const char *ns, const char *table, const char *staging_path,
                char *errstr, size_t errstr_size);

#endif
