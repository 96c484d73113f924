/*
 * Helpers for C tests: where the test services are (see tests/CMakeLists.txt) and small
 * conveniences. Header-only so each test stays one file.
 */
#ifndef SL_TESTUTIL_H
#define SL_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The real Kafka bootstrap servers (fixture `kafka`), or NULL. */
static inline const char *sl_test_kafka_brokers(void)
{
    return sl_test_service("SLUICE_TEST_KAFKA_BROKERS", "SLUICE_TEST_KAFKA_BOOTSTRAP_FILE");
}

#endif
