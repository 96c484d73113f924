/* Versioned SQL migrations under an advisory lock, see migrate.h. */
#include "common/migrate.h"
#include "common/err.h"
#include "common/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any fixed key: "sluice" in ASCII. */
#define MIGRATE_LOCK_KEY "126943860782693"

static int exec(PGconn *c, const char *sql, char *errstr, size_t errstr_size, const char *what)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(r);
        return 0;
    }
    int err = PQstatus(c) == CONNECTION_OK ? SL_ERR_INVALID : SL_ERR_TRANSIENT;
    char msg[400];
    snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    msg[strcspn(msg, "\n")] = '\0';
    PQclear(r);
    return sl_err_set(errstr, errstr_size, err, "%s: %s", what, msg);
}

int sl_migrate_run(PGconn *c, int *applied, char *errstr, size_t errstr_size)
{
    int n = 0, err;
    if (applied)
        *applied = 0;
    err = exec(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", errstr, errstr_size,
               "could not take the migration lock");
    if (err)
        return err;
    err = exec(c,
               "CREATE TABLE IF NOT EXISTS sluice_schema_migrations (version int PRIMARY KEY, "
               "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
               errstr, errstr_size, "could not create sluice_schema_migrations");
    if (err)
        goto out;
    PGresult *r = PQexec(c, "SELECT version FROM sluice_schema_migrations ORDER BY version");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        err = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                         "could not read sluice_schema_migrations: %s", PQresultErrorMessage(r));
        PQclear(r);
        goto out;
    }
    int nrows = PQntuples(r);
    int latest = sl_migrations_count ? sl_migrations[sl_migrations_count - 1].version : 0;
    char *done = calloc((size_t)latest + 1, 1);
    for (int i = 0; i < nrows; i++) {
        int v = atoi(PQgetvalue(r, i, 0));
        if (v > latest) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "database schema version %d is newer than this sluice (latest %d): "
                             "upgrade sluice",
                             v, latest);
            break;
        }
        if (v >= 0)
            done[v] = 1;
    }
    PQclear(r);
    for (size_t i = 0; !err && i < sl_migrations_count; i++) {
        const sl_migration_t *m = &sl_migrations[i];
        if (done[m->version])
            continue;
        char what[300];
        snprintf(what, sizeof(what), "migration %s failed", m->name);
        err = exec(c, "BEGIN", errstr, errstr_size, what);
        if (!err)
            err = exec(c, m->sql, errstr, errstr_size, what);
        if (!err) {
            char ins[400];
            snprintf(ins, sizeof(ins),
                     "INSERT INTO sluice_schema_migrations (version, name) VALUES (%d, '%s')",
                     m->version, m->name);
            err = exec(c, ins, errstr, errstr_size, what);
        }
        if (!err)
            err = exec(c, "COMMIT", errstr, errstr_size, what);
        if (err) {
            PQclear(PQexec(c, "ROLLBACK"));
            break;
        }
        sl_info("migrate", "applied migration %s", m->name);
        n++;
    }
    free(done);
out:
    PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
    if (applied)
        *applied = n;
    return err;
}
