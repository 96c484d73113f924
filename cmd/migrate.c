/* `sluice migrate`: applies pending Postgres migrations once and exits. */
#include "cmd/cmd.h"
#include "common/migrate.h"
#include "common/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_migrate(int argc, char **argv, const char *config_file)
{
    bool status = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            puts("usage: sluice migrate [--status]\n\n"
                 "Applies the pending SQL migrations to postgres.dsn (SLUICE_POSTGRES_DSN) and\n"
                 "exits. Safe to run while other instances start. --status lists the migrations\n"
                 "and whether each is applied, without applying anything.");
            return 0;
        }
        if (strcmp(argv[i], "--status") == 0) {
            status = true;
            continue;
        }
        fprintf(stderr, "sluice migrate: unknown argument \"%s\"\n", argv[i]);
        return 2;
    }
    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    if (!*dsn) {
        fprintf(stderr, "sluice migrate: postgres.dsn is empty: set SLUICE_POSTGRES_DSN to a libpq "
                        "connection string, e.g. \"host=localhost dbname=sluice user=sluice\"\n");
        sl_conf_destroy(conf);
        return 2;
    }
    char err[1024];
    sl_pg_t *pg = sl_pg_new(dsn);
    PGconn *c = sl_pg_conn(pg, err, sizeof(err));
    rc = 1;
    if (!c) {
        fprintf(stderr, "sluice migrate: %s\n", err);
        goto out;
    }
    if (status) {
        PGresult *r = PQexec(c, "SELECT version FROM sluice_schema_migrations");
        bool have = PQresultStatus(r) == PGRES_TUPLES_OK;
        for (size_t i = 0; i < sl_migrations_count; i++) {
            bool applied = false;
            for (int j = 0; have && j < PQntuples(r); j++)
                applied = applied || atoi(PQgetvalue(r, j, 0)) == sl_migrations[i].version;
            printf("%-40s %s\n", sl_migrations[i].name, applied ? "applied" : "pending");
        }
        PQclear(r);
        rc = 0;
        goto out;
    }
    int applied = 0;
    if (sl_migrate_run(c, &applied, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice migrate: %s\n", err);
        goto out;
    }
    int latest = sl_migrations_count ? sl_migrations[sl_migrations_count - 1].version : 0;
    if (applied)
        printf("applied %d migrations; schema at version %d\n", applied, latest);
    else
        printf("schema is up to date at version %d\n", latest);
    rc = 0;
out:
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}
