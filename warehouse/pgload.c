/* The Postgres warehouse: schema evolution and COPY loads of staging files, see pgload.h. */
#include "warehouse/pgload.h"

#include "common/buf.h"
#include "common/err.h"
#include "common/mem.h"
#include "warehouse/schema.h"
#include "warehouse/staging.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NAME_MAX_BYTES 63          /* NAMEDATALEN - 1: Postgres truncates longer identifiers */
#define COPY_CHUNK     (256 << 10) /* COPY data is sent in pieces of about this size */
#define LOCK_CLASS     1936488296  /* 'slwh': first key of our advisory locks */
#define DISCARDS       "rudder_discards"
#define USERS          "users"
/* The staging table's row number. Warehouse identifiers never contain a space, so no column
 * of a staging file can take this name. */
#define SEQ_COL "\"sl seq\""

enum { K_HOST, K_PORT, K_DBNAME, K_USER, K_PASSWORD, K_SSLMODE, K_APPNAME, K_ENCODING, K_OPTIONS };
#define N_KEYS (K_OPTIONS + 1)

struct wh_pg {
    const char *keys[N_KEYS + 1]; /* libpq connection keywords, NULL-terminated */
    char *values[N_KEYS + 1];     /* their values (owned), NULL where unset */
    char *ns;                     /* the config's namespace, or NULL */
    char where[320];              /* "host:port/database" for messages, never the password */
    PGconn *conn;
    char **known_ns; /* namespaces seen to exist on this connection */
    size_t n_known_ns;
    sl_buf_t copy; /* COPY data being sent, reused across loads */
};

/* SQL types of the warehouse types, and back: the first prefix that matches a column's
 * format_type() decides; any other type is loaded from text like a string. */
static const char *const sql_type[] = {
    [WH_INT] = "bigint",   [WH_FLOAT] = "double precision",
    [WH_BOOL] = "boolean", [WH_DATETIME] = "timestamptz",
    [WH_STRING] = "text",  [WH_JSON] = "jsonb",
};
static const struct {
    const char *prefix;
    wh_type_t type;
} pg_types[] = {
    {"bigint", WH_INT},   {"integer", WH_INT},        {"smallint", WH_INT},
    {"double", WH_FLOAT}, {"real", WH_FLOAT},         {"numeric", WH_FLOAT},
    {"boolean", WH_BOOL}, {"timestamp", WH_DATETIME}, {"date", WH_DATETIME},
    {"text", WH_STRING},  {"character", WH_STRING},   {"json", WH_JSON},
};

static const char *const ssl_modes[] = {"disable", "allow",     "prefer",
                                        "require", "verify-ca", "verify-full"};

/* One column of the staging file as it will be loaded. */
typedef struct col {
    char *q;        /* the quoted name (PQescapeIdentifier), freed with PQfreemem */
    wh_type_t from; /* its type in the staging file */
    wh_type_t to;   /* its type in the warehouse, which wins */
    char *sql;      /* the column's SQL type in the warehouse (owned) */
    bool exists;    /* the table has it already */
    bool unique;    /* an existing column with a unique index of its own */
} col_t;

/* One wh_pg_load() call. */
typedef struct load {
    wh_pg_t *w;
    PGconn *c;
    const char *ns, *table;
    char *qns, *qtable, *qdiscards; /* quoted identifiers (PQfreemem) */
    wh_staging_reader_t *r;
    size_t ncols;
    const char *const *names;
    col_t *cols;
    int id_col, received_col; /* staging columns of id and received_at, or -1 */
    bool table_exists, ns_checked;
    sl_buf_t sql;
    sl_buf_t discards; /* COPY rows for rudder_discards */
    size_t ndiscards;
    const char *path;             /* the staging file */
    const char *const *first;     /* its first row, read ahead, or NULL */
    const wh_type_t *first_types; /* the types of its values */
    char state[6];                /* SQLSTATE of the last error, or "" */
    char *errstr;
    size_t errstr_size;
} load_t;

static void ignore_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static int conf_str(json_object *cfg, const char *key, bool required, char **out, char *errstr,
                    size_t errstr_size)
{
    json_object *v = NULL;
    *out = NULL;
    if (!json_object_object_get_ex(cfg, key, &v) || json_object_is_type(v, json_type_null) ||
        (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) == 0)) {
        if (required)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid warehouse config: \"%s\" is required", key);
        return 0;
    }
    if (!json_object_is_type(v, json_type_string))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "invalid warehouse config: \"%s\" must be a string", key);
    *out = sl_strdup(json_object_get_string(v));
    return 0;
}

/* port: a string or a number, 1..65535, default 5432. */
static int conf_port(json_object *cfg, char **out, char *errstr, size_t errstr_size)
{
    json_object *v = NULL;
    const char *s = "5432";
    if (json_object_object_get_ex(cfg, "port", &v) && !json_object_is_type(v, json_type_null)) {
        if (!json_object_is_type(v, json_type_string) && !json_object_is_type(v, json_type_int))
            goto bad;
        s = json_object_get_string(v);
        if (!*s)
            s = "5432";
    }
    char *end;
    long port = strtol(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || port < 1 || port > 65535)
        goto bad;
    *out = sl_asprintf("%ld", port);
    return 0;
bad:
    return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                      "invalid warehouse config: \"port\" must be a port number (1-65535)");
}

wh_pg_t *wh_pg_connect(json_object *dest_config, char *errstr, size_t errstr_size)
{
    wh_pg_t *w = sl_calloc(1, sizeof(*w));
    static const char *const keys[N_KEYS] = {
        [K_HOST] = "host",
        [K_PORT] = "port",
        [K_DBNAME] = "dbname",
        [K_USER] = "user",
        [K_PASSWORD] = "password",
        [K_SSLMODE] = "sslmode",
        [K_APPNAME] = "application_name",
        [K_ENCODING] = "client_encoding",
        [K_OPTIONS] = "options",
    };
    memcpy(w->keys, keys, sizeof(keys));
    if (!json_object_is_type(dest_config, json_type_object)) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "invalid warehouse config: not a JSON object");
        goto fail;
    }
    if (conf_str(dest_config, "host", true, &w->values[K_HOST], errstr, errstr_size) ||
        conf_port(dest_config, &w->values[K_PORT], errstr, errstr_size) ||
        conf_str(dest_config, "database", true, &w->values[K_DBNAME], errstr, errstr_size) ||
        conf_str(dest_config, "user", true, &w->values[K_USER], errstr, errstr_size) ||
        conf_str(dest_config, "password", false, &w->values[K_PASSWORD], errstr, errstr_size) ||
        conf_str(dest_config, "sslMode", false, &w->values[K_SSLMODE], errstr, errstr_size) ||
        conf_str(dest_config, "namespace", false, &w->ns, errstr, errstr_size))
        goto fail;
    if (w->values[K_SSLMODE]) {
        bool known = false;
        for (size_t i = 0; i < sizeof(ssl_modes) / sizeof(ssl_modes[0]); i++)
            known = known || strcmp(w->values[K_SSLMODE], ssl_modes[i]) == 0;
        if (!known) {
            sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                       "invalid warehouse config: \"sslMode\" must be one of disable, allow, "
                       "prefer, require, verify-ca, verify-full, not \"%s\"",
                       w->values[K_SSLMODE]);
            goto fail;
        }
    }
    snprintf(w->where, sizeof(w->where), "%s:%s/%s", w->values[K_HOST], w->values[K_PORT],
             w->values[K_DBNAME]);
    w->values[K_APPNAME] = sl_strdup("sluice-warehouse");
    w->values[K_ENCODING] = sl_strdup("UTF8");
    /* Timestamps without a zone are UTC; NOTICEs ("already exists, skipping") are noise. */
    w->values[K_OPTIONS] = sl_strdup("-c TimeZone=UTC -c client_min_messages=warning");
    /* libpq stops at the first NULL keyword: unset ones take the last slots' places. */
    size_t n = 0;
    for (size_t i = 0; i < N_KEYS; i++)
        if (w->values[i]) {
            w->keys[n] = w->keys[i];
            w->values[n++] = w->values[i];
        }
    for (size_t i = n; i <= N_KEYS; i++) {
        w->keys[i] = NULL;
        w->values[i] = NULL;
    }
    return w;
fail:
    wh_pg_close(w);
    return NULL;
}

const char *wh_pg_namespace(const wh_pg_t *w)
{
    return w->ns;
}

void wh_pg_close(wh_pg_t *w)
{
    if (!w)
        return;
    if (w->conn)
        PQfinish(w->conn);
    for (size_t i = 0; i <= N_KEYS; i++)
        free(w->values[i]);
    for (size_t i = 0; i < w->n_known_ns; i++)
        free(w->known_ns[i]);
    free(w->known_ns);
    free(w->ns);
    sl_buf_free(&w->copy);
    free(w);
}

/* The live connection, connecting first if needed; NULL with errstr when that fails. */
static PGconn *conn_get(wh_pg_t *w, int *err, char *errstr, size_t errstr_size)
{
    if (w->conn && PQstatus(w->conn) == CONNECTION_OK)
        return w->conn;
    if (w->conn)
        PQfinish(w->conn);
    for (size_t i = 0; i < w->n_known_ns; i++)
        free(w->known_ns[i]);
    w->n_known_ns = 0;
    w->conn = PQconnectdbParams(w->keys, (const char *const *)w->values, 0);
    if (PQstatus(w->conn) == CONNECTION_OK) {
        PQsetNoticeProcessor(w->conn, ignore_notice, NULL);
        return w->conn;
    }
    char msg[400];
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(w->conn));
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    for (size_t n = strlen(msg); n && msg[n - 1] == ' ';)
        msg[--n] = '\0';
    PQfinish(w->conn);
    w->conn = NULL;
    /* Wrong credentials or database need a config change; anything else may pass. */
    bool config = strstr(msg, "authentication failed") || strstr(msg, "does not exist");
    *err = sl_err_set(errstr, errstr_size, config ? SL_ERR_INVALID : SL_ERR_TRANSIENT,
                      "could not connect to the warehouse at \"%s\": %s", w->where, msg);
    return NULL;
}

int wh_pg_ping(wh_pg_t *w, char *errstr, size_t errstr_size)
{
    int err = 0;
    if (!conn_get(w, &err, errstr, errstr_size))
        return err;
    PGresult *r = PQexec(w->conn, "SELECT 1");
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    if (!ok)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "the warehouse at \"%s\" does not answer: %s", w->where,
                          PQerrorMessage(w->conn));
    return 0;
}

/* ---- one load ---------------------------------------------------------------------------- */

/* Records a failed statement's error in l->errstr and returns its sl_err_t: transient for a
 * lost connection and for what a retry may get past (SQLSTATE classes 08, 40, 53, 57, 58 and
 * lock_not_available), invalid otherwise. Clears r. */
static int sql_error(load_t *l, const char *doing, PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg)
        msg = PQerrorMessage(l->c);
    snprintf(l->state, sizeof(l->state), "%s", state ? state : "");
    bool transient = PQstatus(l->c) != CONNECTION_OK || !state || strncmp(state, "08", 2) == 0 ||
                     strncmp(state, "40", 2) == 0 || strncmp(state, "53", 2) == 0 ||
                     strncmp(state, "57", 2) == 0 || strncmp(state, "58", 2) == 0 ||
                     strcmp(state, "55P03") == 0;
    int err = sl_err_set(l->errstr, l->errstr_size, transient ? SL_ERR_TRANSIENT : SL_ERR_INVALID,
                         "could not load table \"%s\".\"%s\": %s: %s%s%s%s", l->ns, l->table, doing,
                         msg, state ? " (SQLSTATE " : "", state ? state : "", state ? ")" : "");
    for (char *p = l->errstr; p && *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    PQclear(r);
    return err;
}

/* Runs one statement with text parameters. 0 and *out (PQclear it; out may be NULL), or the
 * error of sql_error(). */
static int run(load_t *l, const char *doing, const char *sql, int nparams,
               const char *const *params, PGresult **out)
{
    PGresult *r = PQexecParams(l->c, sql, nparams, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        return sql_error(l, doing, r);
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

/* Runs l->sql (one statement, no parameters) and empties it; *rows gets the rows it affected
 * when rows is not NULL. */
static int run_sql(load_t *l, const char *doing, long *rows)
{
    PGresult *r = NULL;
    int rc = run(l, doing, l->sql.data, 0, NULL, &r);
    sl_buf_reset(&l->sql);
    if (rc)
        return rc;
    if (rows)
        *rows += atol(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

/* Takes the transaction-scoped advisory lock of (ns, name): loads of one table queue up. */
static int lock_name(load_t *l, const char *kind, const char *name)
{
    char key[2 * NAME_MAX_BYTES + 16];
    snprintf(key, sizeof(key), "%s:%s.%s", kind, l->ns, name);
    const char *p[] = {key};
    char sql[96];
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%d, hashtext($1))", LOCK_CLASS);
    return run(l, "could not lock it", sql, 1, p, NULL);
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= NAME_MAX_BYTES;
}

/* s quoted for SQL, or NULL when libpq refuses it (invalid UTF-8). Free with PQfreemem. */
static char *quote(load_t *l, const char *s)
{
    char *q = PQescapeIdentifier(l->c, s, strlen(s));
    if (!q)
        sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                   "could not load table \"%s\".\"%s\": bad identifier \"%s\": %s", l->ns, l->table,
                   s, PQerrorMessage(l->c));
    return q;
}

/* Appends s to COPY text data, escaping what the text format needs escaped. */
static void copy_text(sl_buf_t *b, const char *s)
{
    for (;;) {
        size_t k = strcspn(s, "\\\t\n\r");
        sl_buf_append(b, s, k);
        s += k;
        if (!*s)
            return;
        char e[2] = {'\\', *s == '\t' ? 't' : *s == '\n' ? 'n' : *s == '\r' ? 'r' : '\\'};
        sl_buf_append(b, e, 2);
        s++;
    }
}

/* Sends the COPY data buffered so far. False when the COPY failed, usually because the server
 * reported an error: copy_end() tells which. */
static bool copy_flush(load_t *l, sl_buf_t *b)
{
    bool ok = !b->len || PQputCopyData(l->c, b->data, (int)b->len) == 1;
    sl_buf_reset(b);
    return ok;
}

/* Ends the COPY in progress, aborting it with abort_msg when not NULL, and returns its
 * outcome (with the server's error when it failed). */
static int copy_end(load_t *l, const char *abort_msg, const char *doing)
{
    bool ended = PQputCopyEnd(l->c, abort_msg) == 1;
    int rc = 0;
    PGresult *r;
    while ((r = PQgetResult(l->c))) {
        if (!rc && PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = sql_error(l, doing, r);
        else
            PQclear(r);
    }
    return rc || ended ? rc : sql_error(l, doing, NULL);
}

/* Runs l->sql, a COPY ... FROM STDIN, and sends data (already COPY text). */
static int copy_buf(load_t *l, const char *doing, sl_buf_t *data)
{
    PGresult *r = PQexec(l->c, l->sql.data);
    sl_buf_reset(&l->sql);
    if (PQresultStatus(r) != PGRES_COPY_IN)
        return sql_error(l, doing, r);
    PQclear(r);
    copy_flush(l, data);
    return copy_end(l, NULL, doing);
}

/* The name of the unique index on a table's id. Postgres would name it "<table>_id_key",
 * which an event table could be named; a name with a space is out of any event's reach. */
static void id_index_name(const char *table, char *out, size_t out_size)
{
    uint32_t h = 2166136261u; /* FNV-1a, so that tables with a common prefix differ */
    for (const unsigned char *p = (const unsigned char *)table; *p; p++)
        h = (h ^ *p) * 16777619u;
    snprintf(out, out_size, "%.40s id %08x", table, (unsigned)h);
}

/* Reads the table's columns once and decides, per staging column, its warehouse type and
 * whether values need converting. Creates the namespace if it is not known to exist. */
/* Creates the namespace unless it is known to exist (l->ns_checked then says it was looked
 * at), inside the load's transaction. */
static int ensure_ns(load_t *l)
{
    wh_pg_t *w = l->w;
    bool ns_known = false;
    for (size_t i = 0; i < w->n_known_ns && !ns_known; i++)
        ns_known = strcmp(w->known_ns[i], l->ns) == 0;
    const char *p[] = {l->ns};
    PGresult *r = NULL;
    int rc;
    if (!ns_known) {
        /* CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists. */
        if ((rc = run(l, "could not look up the namespace",
                      "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", 1, p, &r)))
            return rc;
        bool exists = PQntuples(r) > 0;
        PQclear(r);
        if (!exists) {
            if ((rc = lock_name(l, "ns", "")))
                return rc;
            sl_buf_printf(&l->sql, "CREATE SCHEMA IF NOT EXISTS %s", l->qns);
            if ((rc = run_sql(l, "could not create the namespace", NULL)))
                return rc;
        }
        l->ns_checked = true;
    }
    return 0;
}

static void ns_known(load_t *l)
{
    if (!l->ns_checked)
        return;
    wh_pg_t *w = l->w;
    w->known_ns = sl_realloc(w->known_ns, (w->n_known_ns + 1) * sizeof(char *));
    w->known_ns[w->n_known_ns++] = sl_strdup(l->ns);
}

static int plan(load_t *l)
{
    const char *p[] = {l->ns, l->table};
    PGresult *r = NULL;
    int rc;
    if ((rc = ensure_ns(l)) || (rc = lock_name(l, "table", l->table)))
        return rc;
    rc = run(l, "could not read its columns",
             "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), "
             "EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND "
             "i.indisunique AND i.indimmediate AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum "
             "AND i.indpred IS NULL AND i.indexprs IS NULL) "
             "FROM pg_catalog.pg_attribute a "
             "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
             "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
             "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') "
             "AND a.attnum > 0 AND NOT a.attisdropped",
             2, p, &r);
    if (rc)
        return rc;
    int nt = PQntuples(r);
    l->table_exists = nt > 0;
    for (size_t i = 0; i < l->ncols; i++) {
        col_t *col = &l->cols[i];
        col->to = col->from;
        for (int j = 0; j < nt; j++) {
            if (strcmp(PQgetvalue(r, j, 0), l->names[i]) != 0)
                continue;
            const char *sql = PQgetvalue(r, j, 1);
            col->exists = true;
            col->unique = PQgetvalue(r, j, 2)[0] == 't';
            col->sql = sl_strdup(sql);
            col->to = WH_STRING;
            for (size_t k = 0; k < sizeof(pg_types) / sizeof(pg_types[0]); k++)
                if (strncmp(sql, pg_types[k].prefix, strlen(pg_types[k].prefix)) == 0) {
                    col->to = pg_types[k].type;
                    break;
                }
            break;
        }
        if (!col->sql)
            col->sql = sl_strdup(sql_type[col->from]);
    }
    PQclear(r);
    return 0;
}

/* Creates the table, or adds the columns it lacks, inside the load's transaction. */
static int evolve(load_t *l)
{
    sl_buf_t *s = &l->sql;
    bool any = false;
    if (!l->table_exists) {
        sl_buf_printf(s, "CREATE TABLE IF NOT EXISTS %s.%s (", l->qns, l->qtable);
        for (size_t i = 0; i < l->ncols; i++)
            sl_buf_printf(s, "%s%s %s", i ? ", " : "", l->cols[i].q, l->cols[i].sql);
        if (l->id_col >= 0) {
            char name[NAME_MAX_BYTES + 1];
            id_index_name(l->table, name, sizeof(name));
            char *q = quote(l, name);
            if (!q)
                return SL_ERR_INVALID;
            sl_buf_printf(s, ", CONSTRAINT %s UNIQUE (id)", q);
            PQfreemem(q);
            l->cols[l->id_col].unique = true;
        }
        sl_buf_puts(s, ")");
        return run_sql(l, "could not create it", NULL);
    }
    for (size_t i = 0; i < l->ncols; i++) {
        if (l->cols[i].exists)
            continue;
        if (!any)
            sl_buf_printf(s, "ALTER TABLE %s.%s", l->qns, l->qtable);
        sl_buf_printf(s, "%s ADD COLUMN IF NOT EXISTS %s %s", any ? "," : "", l->cols[i].q,
                      l->cols[i].sql);
        any = true;
    }
    return any ? run_sql(l, "could not add columns", NULL) : 0;
}

/* Appends one rudder_discards row (COPY text) for value of column i that could not convert. */
static void discard(load_t *l, const char *const *values, wh_type_t from, size_t i)
{
    sl_buf_t *d = &l->discards;
    const char *id = l->id_col >= 0 ? values[l->id_col] : NULL;
    const char *at = l->received_col >= 0 ? values[l->received_col] : NULL;
    copy_text(d, l->table);
    sl_buf_putc(d, '\t');
    if (id)
        copy_text(d, id);
    else
        sl_buf_puts(d, "\\N");
    sl_buf_putc(d, '\t');
    copy_text(d, l->names[i]);
    sl_buf_putc(d, '\t');
    copy_text(d, values[i]);
    sl_buf_putc(d, '\t');
    if (at)
        copy_text(d, at);
    else
        sl_buf_puts(d, "\\N");
    sl_buf_printf(d, "\tincompatible schema conversion from %s to %s\n", wh_type_name(from),
                  wh_type_name(l->cols[i].to));
    l->ndiscards++;
}

/* COPYs the staging file's rows into the table itself (direct) or into the temporary table
 * pg_temp.sl_wh_stage, converting the values whose column has another type in the warehouse.
 * *nrows gets the rows sent. */
static int copy_rows(load_t *l, bool direct, long *nrows)
{
    sl_buf_t *s = &l->sql;
    int rc;
    if (direct) {
        sl_buf_printf(s, "COPY %s.%s (", l->qns, l->qtable);
    } else {
        sl_buf_puts(s, "CREATE TEMP TABLE sl_wh_stage (");
        for (size_t i = 0; i < l->ncols; i++)
            sl_buf_printf(s, "%s %s, ", l->cols[i].q, l->cols[i].sql);
        sl_buf_puts(s, SEQ_COL " bigint) ON COMMIT DROP");
        if ((rc = run_sql(l, "could not create its staging table", NULL)))
            return rc;
        sl_buf_puts(s, "COPY pg_temp.sl_wh_stage (");
    }
    for (size_t i = 0; i < l->ncols; i++)
        sl_buf_printf(s, "%s%s", i ? ", " : "", l->cols[i].q);
    sl_buf_puts(s, direct ? ") FROM STDIN" : ", " SEQ_COL ") FROM STDIN");
    PGresult *r = PQexec(l->c, s->data);
    sl_buf_reset(s);
    if (PQresultStatus(r) != PGRES_COPY_IN)
        return sql_error(l, "could not copy rows", r);
    PQclear(r);

    sl_buf_t *b = &l->w->copy;
    sl_buf_reset(b);
    char err[256] = "";
    long n = 0;
    for (;;) {
        const char *const *values = l->first;
        const wh_type_t *types = l->first_types;
        l->first = NULL;
        l->first_types = NULL;
        int got = values ? 1 : wh_staging_next(l->r, &values, err, sizeof(err));
        if (got <= 0)
            break;
        if (!types)
            types = wh_staging_row_types(l->r);
        for (size_t i = 0; i < l->ncols; i++) {
            const char *v = values[i];
            char *conv = NULL;
            if (v && types[i] != l->cols[i].to) {
                if (!wh_convert(v, types[i], l->cols[i].to, &conv))
                    discard(l, values, types[i], i);
                v = conv;
            }
            if (v)
                copy_text(b, v);
            else
                sl_buf_append(b, "\\N", 2);
            free(conv);
            sl_buf_putc(b, '\t');
        }
        n++;
        if (direct)
            b->data[b->len - 1] = '\n';
        else
            sl_buf_printf(b, "%ld\n", n);
        if (b->len >= COPY_CHUNK && !copy_flush(l, b))
            break; /* the server stopped the COPY: copy_end() gets its error */
    }
    copy_flush(l, b);
    rc = copy_end(l, err[0] ? "staging file unreadable" : NULL, "could not copy rows");
    if (err[0])
        rc = sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                        "could not load table \"%s\".\"%s\": %s", l->ns, l->table, err);
    *nrows = n;
    return rc;
}

/* Appends the staging file's column list. */
static void col_list(load_t *l, const char *prefix)
{
    for (size_t i = 0; i < l->ncols; i++)
        sl_buf_printf(&l->sql, "%s%s%s", i ? ", " : "", prefix, l->cols[i].q);
}

/* Moves the staged rows into the event table, skipping ids it already holds. */
static int insert_events(load_t *l, long *rows)
{
    sl_buf_t *s = &l->sql;
    sl_buf_printf(s, "INSERT INTO %s.%s (", l->qns, l->qtable);
    col_list(l, "");
    sl_buf_puts(s, ") SELECT ");
    if (l->id_col < 0) { /* nothing to recognise a row by: rows are appended */
        col_list(l, "");
        sl_buf_puts(s, " FROM pg_temp.sl_wh_stage");
    } else if (l->cols[l->id_col].unique) {
        col_list(l, "");
        sl_buf_puts(s, " FROM pg_temp.sl_wh_stage ON CONFLICT (id) DO NOTHING");
    } else { /* a table made elsewhere without a unique index on id */
        sl_buf_puts(s, "DISTINCT ON (s.id) ");
        col_list(l, "s.");
        sl_buf_printf(s,
                      " FROM pg_temp.sl_wh_stage s WHERE NOT EXISTS (SELECT 1 FROM %s.%s t "
                      "WHERE t.id = s.id) ORDER BY s.id, s." SEQ_COL,
                      l->qns, l->qtable);
    }
    return run_sql(l, "could not insert rows", rows);
}

/* Upserts the staged rows into `users`: per user and column, the latest non-NULL value of the
 * file (by received_at, then file order) replaces the table's unless that is newer. */
static int upsert_users(load_t *l, long *rows)
{
    sl_buf_t *s = &l->sql;
    const char *order = l->received_col >= 0 ? "received_at DESC NULLS LAST, " : "";
    sl_buf_puts(s, "CREATE TEMP TABLE sl_wh_users ON COMMIT DROP AS SELECT id");
    for (size_t i = 0; i < l->ncols; i++) {
        const char *q = l->cols[i].q;
        if ((int)i != l->id_col)
            sl_buf_printf(s,
                          ", (array_agg(%s ORDER BY %s" SEQ_COL " DESC) FILTER (WHERE %s IS "
                          "NOT NULL))[1] AS %s",
                          q, order, q, q);
    }
    sl_buf_puts(s, " FROM pg_temp.sl_wh_stage WHERE id IS NOT NULL GROUP BY id");
    int rc = run_sql(l, "could not merge users", NULL);
    if (rc)
        return rc;
    if (l->ncols > 1) {
        sl_buf_printf(s, "UPDATE %s.%s t SET ", l->qns, l->qtable);
        bool first = true;
        for (size_t i = 0; i < l->ncols; i++) {
            const char *q = l->cols[i].q;
            if ((int)i == l->id_col)
                continue;
            sl_buf_printf(s, "%s%s = ", first ? "" : ", ", q);
            first = false;
            if (l->received_col >= 0)
                sl_buf_printf(s,
                              "CASE WHEN s.%s IS NULL THEN t.%s WHEN t.%s IS NULL OR "
                              "t.received_at IS NULL OR s.received_at IS NULL OR s.received_at "
                              ">= t.received_at THEN s.%s ELSE t.%s END",
                              q, q, q, q, q);
            else
                sl_buf_printf(s, "COALESCE(s.%s, t.%s)", q, q);
        }
        sl_buf_puts(s, " FROM pg_temp.sl_wh_users s WHERE t.id = s.id");
        if ((rc = run_sql(l, "could not update users", rows)))
            return rc;
    }
    sl_buf_printf(s, "INSERT INTO %s.%s (", l->qns, l->qtable);
    col_list(l, "");
    sl_buf_puts(s, ") SELECT ");
    col_list(l, "s.");
    sl_buf_printf(s,
                  " FROM pg_temp.sl_wh_users s WHERE NOT EXISTS (SELECT 1 FROM %s.%s t WHERE "
                  "t.id = s.id)",
                  l->qns, l->qtable);
    return run_sql(l, "could not insert users", rows);
}

/* Writes the collected discards into the namespace's rudder_discards, once per (table, row,
 * column) however often the file is loaded. */
static int write_discards(load_t *l)
{
    int rc = lock_name(l, "table", DISCARDS);
    if (rc)
        return rc;
    const char *q = l->qdiscards;
    sl_buf_printf(&l->sql,
                  "CREATE TABLE IF NOT EXISTS %s.%s (table_name text, row_id text, column_name "
                  "text, column_value text, received_at timestamptz, uuid_ts timestamptz, "
                  "reason text)",
                  l->qns, q);
    if ((rc = run_sql(l, "could not create " DISCARDS, NULL)))
        return rc;
    /* A table RudderStack made may lack `reason`. */
    sl_buf_printf(&l->sql, "ALTER TABLE %s.%s ADD COLUMN IF NOT EXISTS reason text", l->qns, q);
    if ((rc = run_sql(l, "could not add columns to " DISCARDS, NULL)))
        return rc;
    sl_buf_puts(&l->sql, "CREATE TEMP TABLE sl_wh_discards (table_name text, row_id text, "
                         "column_name text, column_value text, received_at timestamptz, "
                         "reason text) ON COMMIT DROP");
    if ((rc = run_sql(l, "could not stage discards", NULL)))
        return rc;
    sl_buf_puts(&l->sql, "COPY pg_temp.sl_wh_discards FROM STDIN");
    if ((rc = copy_buf(l, "could not copy discards", &l->discards)))
        return rc;
    sl_buf_printf(&l->sql,
                  "INSERT INTO %s.%s (table_name, row_id, column_name, column_value, "
                  "received_at, uuid_ts, reason) SELECT DISTINCT ON (d.row_id, d.column_name) "
                  "d.table_name, d.row_id, d.column_name, d.column_value, d.received_at, now(), "
                  "d.reason FROM pg_temp.sl_wh_discards d WHERE NOT EXISTS (SELECT 1 FROM %s.%s "
                  "x WHERE x.table_name = d.table_name AND x.row_id = d.row_id AND "
                  "x.column_name = d.column_name) ORDER BY d.row_id, d.column_name",
                  l->qns, q, l->qns, q);
    return run_sql(l, "could not write discards", NULL);
}

/* Reads the file again from its start, for a second try at its rows. */
static int reopen(load_t *l)
{
    char err[256];
    wh_staging_close(l->r);
    l->first = NULL;
    l->first_types = NULL;
    sl_buf_reset(&l->discards);
    l->ndiscards = 0;
    const wh_type_t *types;
    if (!(l->r = wh_staging_open(l->path, err, sizeof(err))) ||
        wh_staging_columns(l->r, &l->names, &types) != l->ncols)
        return sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                          "could not load table \"%s\".\"%s\": staging file \"%s\" changed: %s",
                          l->ns, l->table, l->path, l->r ? "other columns" : err);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether every row of the file has an id and no two the same (reading it once more): then
 * the users of a file whose ids are all new are its rows as they are, and load straight into
 * the table like any other table's rows. */
static int ids_unique(load_t *l, bool *unique)
{
    char err[256] = "";
    wh_staging_reader_t *r = wh_staging_open(l->path, err, sizeof(err));
    if (!r)
        return sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                          "could not load table \"%s\".\"%s\": %s", l->ns, l->table, err);
    char **ids = NULL;
    size_t n = 0, cap = 0;
    const char *const *v;
    int got;
    *unique = true;
    while (*unique && (got = wh_staging_next(r, &v, err, sizeof(err))) == 1) {
        if (!v[l->id_col]) {
            *unique = false;
            break;
        }
        if (n == cap)
            ids = sl_realloc(ids, (cap = cap ? cap * 2 : 1024) * sizeof(*ids));
        ids[n++] = sl_strdup(v[l->id_col]);
    }
    wh_staging_close(r);
    if (*unique) {
        qsort(ids, n, sizeof(*ids), cmp_str);
        for (size_t i = 1; i < n && *unique; i++)
            *unique = strcmp(ids[i - 1], ids[i]) != 0;
    }
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    return 0; /* a file that can't be read fails in the load itself */
}

/* Loads the rows. Straight into the table when it has a unique index on id and the file's
 * first id is not there yet (for `users`, when the file's ids are also unique and never NULL):
 * the usual case, at the speed of a plain COPY. Otherwise, and when that COPY meets an id
 * already loaded (unique_violation), through the temporary table (for `users`, the upsert). */
static int load_rows(load_t *l, long *rows)
{
    bool users = strcmp(l->table, USERS) == 0 && l->id_col >= 0;
    bool direct = l->id_col >= 0 && l->cols[l->id_col].unique;
    long n = 0;
    int rc;
    if (direct && users && (rc = ids_unique(l, &direct)))
        return rc;
    if (direct) {
        char err[256] = "";
        int got = wh_staging_next(l->r, &l->first, err, sizeof(err));
        l->first_types = got > 0 ? wh_staging_row_types(l->r) : NULL;
        if (got <= 0)
            return got == 0
                       ? 0
                       : sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                                    "could not load table \"%s\".\"%s\": %s", l->ns, l->table, err);
        const char *id[] = {l->first[l->id_col]};
        if (id[0]) {
            PGresult *r = NULL;
            sl_buf_printf(&l->sql, "SELECT 1 FROM %s.%s WHERE id = $1", l->qns, l->qtable);
            rc = run(l, "could not look up ids", l->sql.data, 1, id, &r);
            sl_buf_reset(&l->sql);
            if (rc)
                return rc;
            direct = PQntuples(r) == 0;
            PQclear(r);
        }
    }
    if (direct) {
        if ((rc = run(l, "could not copy rows", "SAVEPOINT sl_wh_direct", 0, NULL, NULL)))
            return rc;
        if (!(rc = copy_rows(l, true, &n))) {
            *rows = n;
            return 0;
        }
        if (strcmp(l->state, "23505") != 0 ||
            (rc = run(l, "could not roll back", "ROLLBACK TO SAVEPOINT sl_wh_direct", 0, NULL,
                      NULL)) ||
            (rc = reopen(l)))
            return rc;
    }
    if ((rc = copy_rows(l, false, &n)))
        return rc;
    return users ? upsert_users(l, rows) : insert_events(l, rows);
}

/* Opens the staging file and checks its columns. */
static int open_staging(load_t *l)
{
    const char *path = l->path;
    if (access(path, F_OK) != 0)
        return sl_err_set(l->errstr, l->errstr_size, SL_ERR_NOTFOUND,
                          "could not load table \"%s\".\"%s\": no staging file \"%s\"", l->ns,
                          l->table, path);
    char err[256];
    l->r = wh_staging_open(path, err, sizeof(err));
    if (!l->r)
        return sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                          "could not load table \"%s\".\"%s\": %s", l->ns, l->table, err);
    const wh_type_t *types;
    l->ncols = wh_staging_columns(l->r, &l->names, &types);
    l->cols = sl_calloc(l->ncols ? l->ncols : 1, sizeof(col_t));
    l->id_col = l->received_col = -1;
    for (size_t i = 0; i < l->ncols; i++) {
        const char *name = l->names[i];
        if (!name_ok(name) || (unsigned)types[i] > WH_JSON)
            return sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                              "could not load table \"%s\".\"%s\": staging file \"%s\" has a "
                              "bad column \"%s\"",
                              l->ns, l->table, path, name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(l->names[j], name) == 0)
                return sl_err_set(l->errstr, l->errstr_size, SL_ERR_INVALID,
                                  "could not load table \"%s\".\"%s\": staging file \"%s\" has "
                                  "column \"%s\" twice",
                                  l->ns, l->table, path, name);
        l->cols[i].from = types[i];
        if (strcmp(name, "id") == 0)
            l->id_col = (int)i;
        else if (strcmp(name, "received_at") == 0)
            l->received_col = (int)i;
    }
    return 0;
}

int wh_pg_namespace_ensure(wh_pg_t *w, const char *ns, char *errstr, size_t errstr_size)
{
    load_t l = {.w = w, .ns = ns, .errstr = errstr, .errstr_size = errstr_size};
    int rc = 0;
    if (!name_ok(ns))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "bad namespace \"%s\": names must have 1 to %d bytes", ns,
                          NAME_MAX_BYTES);
    if (!(l.c = conn_get(w, &rc, errstr, errstr_size)))
        return rc;
    if (!(l.qns = quote(&l, ns)))
        return SL_ERR_INVALID;
    if (!(rc = run(&l, "could not begin", "BEGIN", 0, NULL, NULL))) {
        if (!(rc = ensure_ns(&l)) && !(rc = run(&l, "could not commit", "COMMIT", 0, NULL, NULL)))
            ns_known(&l);
        else if (PQstatus(l.c) == CONNECTION_OK)
            PQclear(PQexec(l.c, "ROLLBACK"));
    }
    PQfreemem(l.qns);
    sl_buf_free(&l.sql);
    return rc;
}

long wh_pg_load(wh_pg_t *w, const char *ns, const char *table, const char *staging_path,
                char *errstr, size_t errstr_size)
{
    load_t l = {.w = w,
                .ns = ns,
                .table = table,
                .path = staging_path,
                .errstr = errstr,
                .errstr_size = errstr_size};
    long rows = 0;
    int rc = 0;
    bool in_tx = false;
    if (!name_ok(ns) || !name_ok(table)) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "could not load table \"%s\".\"%s\": names must have 1 to %d bytes", ns,
                        table, NAME_MAX_BYTES);
        goto out;
    }
    if ((rc = open_staging(&l)))
        goto out;
    if (l.ncols == 0)
        goto out; /* no columns, no rows */
    if (!(l.c = conn_get(w, &rc, errstr, errstr_size)))
        goto out;
    rc = SL_ERR_INVALID;
    if (!(l.qns = quote(&l, ns)) || !(l.qtable = quote(&l, table)) ||
        !(l.qdiscards = quote(&l, DISCARDS)))
        goto out;
    for (size_t i = 0; i < l.ncols; i++)
        if (!(l.cols[i].q = quote(&l, l.names[i])))
            goto out;
    if ((rc = run(&l, "could not begin", "BEGIN", 0, NULL, NULL)))
        goto out;
    in_tx = true;
    if ((rc = plan(&l)) || (rc = evolve(&l)) || (rc = load_rows(&l, &rows)) ||
        (l.ndiscards && (rc = write_discards(&l))))
        goto out;
    rc = run(&l, "could not commit", "COMMIT", 0, NULL, NULL);
    in_tx = rc != 0;
    if (!rc)
        ns_known(&l);
out:
    if (in_tx && PQstatus(l.c) == CONNECTION_OK)
        PQclear(PQexec(l.c, "ROLLBACK"));
    if (l.r)
        wh_staging_close(l.r);
    for (size_t i = 0; l.cols && i < l.ncols; i++) {
        PQfreemem(l.cols[i].q);
        free(l.cols[i].sql);
    }
    free(l.cols);
    PQfreemem(l.qns);
    PQfreemem(l.qtable);
    PQfreemem(l.qdiscards);
    sl_buf_free(&l.sql);
    sl_buf_free(&l.discards);
    return rc ? rc : rows;
}
