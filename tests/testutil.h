/*
 * Helpers for C tests: where the test services are (see tests/CMakeLists.txt) and small
 * conveniences. Header-only so each test stays one file.
 */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pg.h"

/* Reads the first line of the file named by env var file_var, or the value of env var
 * direct_var if that is set. Returns a static buffer, or NULL if neither is available. */
static inline const char *sl_test_service(const char *direct_var, const char *file_var)
{
    static char buf[2][1024];
    static int which;
    const char *direct = getenv(direct_var);
    if (direct && *direct)
        return direct;
    const char *path = getenv(file_var);
    if (!path)
        return NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *b = buf[which++ & 1];
    if (!fgets(b, sizeof(buf[0]), f)) {
        fclose(f);
        return NULL;
    }
    fclose(f);
    b[strcspn(b, "\r\n")] = '\0';
    return b;
}

/* The test Postgres DSN (fixture `postgres`), or NULL. */
static inline const char *sl_test_pg_dsn(void)
{
    return sl_test_service("SLUICE_TEST_PG_DSN", "SLUICE_TEST_PG_DSN_FILE");
}

/* Makes an empty database `name` (UTF-8) on the test Postgres, dropping it first if it exists,
 * and writes its DSN to dsn. Returns 0, or -1 with the reason on stderr. */
static inline int sl_test_fresh_db(const char *name, char *dsn, size_t dsn_size)
{
    const char *base = sl_test_pg_dsn();
    if (!base) {
        fprintf(stderr, "no test Postgres: run under ctest (fixture `postgres`) or set "
                        "SLUICE_TEST_PG_DSN\n");
        return -1;
    }
    char sql[256], err[512];
    sl_pg_t *admin = sl_pg_new(base);
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", name);
    sl_pg_exec(admin, sql, 0, NULL, NULL, err, sizeof(err));
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s ENCODING 'UTF8' TEMPLATE template0", name);
    int rc = sl_pg_exec(admin, sql, 0, NULL, NULL, err, sizeof(err));
    sl_pg_destroy(admin);
    if (rc) {
        fprintf(stderr, "could not create database %s: %s\n", name, err);
        return -1;
    }
    snprintf(dsn, dsn_size, "%s dbname=%s", base, name);
    return 0;
}

/* The real Kafka bootstrap servers (fixture `kafka`), or NULL. */
static inline const char *sl_test_kafka_brokers(void)
{
    return sl_test_service("SLUICE_TEST_KAFKA_BROKERS", "SLUICE_TEST_KAFKA_BOOTSTRAP_FILE");
}

#endif
