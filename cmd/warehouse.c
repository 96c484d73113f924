/*
 * `sluice warehouse`: the warehouse role (cmd/role.c), and its bookkeeping commands:
 * `uploads` lists uploads from Postgres, `retry` makes aborted or failed ones waiting again.
 */
#include "cmd/cmd.h"
#include "common/err.h"
#include "common/jsonc.h"
#include "common/pg.h"
#include "warehouse/uploads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: sluice warehouse                   run a warehouse instance (see --help of the role)\n"
    "       sluice warehouse uploads [--destination ID] [--limit N] [--json]\n"
    "       sluice warehouse retry ID [ID ...]\n\n"
    "`uploads` lists the newest uploads (default 50), each one sync of a source's events to a\n"
    "warehouse destination: its state (waiting, generating_load_files, exporting_data,\n"
    "exported_data, a *_failed state waiting for its retry, or aborted), events, rows staged\n"
    "and loaded, attempts and the last error; --json adds each table's load.\n"
    "`retry` makes aborted (or failed) uploads waiting again, due now, with a fresh attempt\n"
    "budget; run it once the cause in the error is fixed. Reads postgres.dsn.\n";

static long long jint(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? (long long)json_object_get_int64(v) : 0;
}

static const char *jstr(json_object *o, const char *k, const char *dflt)
{
    const char *s = sl_jsonc_str(o, k);
    return s ? s : dflt;
}

static int uploads(int argc, char **argv, const char *config_file)
{
    const char *dest = NULL;
    long limit = 50;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--destination") == 0 && i + 1 < argc) {
            dest = argv[++i];
        } else if (strncmp(argv[i], "--destination=", 14) == 0) {
            dest = argv[i] + 14;
        } else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
            char *end;
            limit = strtol(argv[++i], &end, 10);
            if (*end || limit <= 0) {
                fprintf(stderr, "sluice warehouse uploads: --limit takes a positive number\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else {
            fprintf(stderr, "sluice warehouse uploads: unexpected argument \"%s\"\n\n%s", argv[i],
                    usage_text);
            return 2;
        }
    }
    sl_conf_t *conf;
    sl_pg_t *pg;
    int rc = cmd_load_pg("sluice warehouse uploads", config_file, &conf, &pg);
    if (rc)
        return rc;
    char err[1024];
    json_object *list = NULL;
    if (wh_uploads_list(pg, dest, limit, &list, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice warehouse uploads: %s\n", err);
        rc = 1;
        goto out;
    }
    size_t n = json_object_array_length(list);
    if (json) {
        puts(json_object_to_json_string_ext(list, JSON_C_TO_STRING_PRETTY |
                                                      JSON_C_TO_STRING_NOSLASHESCAPE));
        goto out;
    }
    printf("%-7s %-20s %-16s %-16s %-28s %8s %17s %8s  %s\n", "ID", "CREATED", "DESTINATION",
           "NAMESPACE", "STATE", "EVENTS", "ROWS LOADED", "ATTEMPTS", "ERROR");
    for (size_t i = 0; i < n; i++) {
        json_object *u = json_object_array_get_idx(list, i);
        char created[24], rows[40];
        snprintf(created, sizeof(created), "%.19s", jstr(u, "createdAt", "-"));
        snprintf(rows, sizeof(rows), "%lld/%lld", jint(u, "rowsLoaded"), jint(u, "rowsStaged"));
        printf("%-7lld %-20s %-16s %-16s %-28s %8lld %17s %8lld  %s\n", jint(u, "id"), created,
               jstr(u, "destinationId", "-"), jstr(u, "namespace", "-"), jstr(u, "state", "-"),
               jint(u, "events"), rows, jint(u, "attempts"), jstr(u, "error", ""));
    }
    fprintf(stderr, "%zu upload%s%s\n", n, n == 1 ? "" : "s",
            (long)n == limit ? " (limit reached: --limit N shows more)" : "");
out:
    json_object_put(list);
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}

static int retry(int argc, char **argv, const char *config_file)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 1; i < argc; i++) {
        char *end;
        long long id = strtoll(argv[i], &end, 10);
        if (*end || id <= 0) {
            fprintf(stderr, "sluice warehouse retry: \"%s\" is not an upload id\n", argv[i]);
            return 2;
        }
    }
    sl_conf_t *conf;
    sl_pg_t *pg;
    int rc = cmd_load_pg("sluice warehouse retry", config_file, &conf, &pg);
    if (rc)
        return rc;
    for (int i = 1; i < argc; i++) {
        char err[1024];
        long long id = strtoll(argv[i], NULL, 10);
        if (wh_uploads_retry(pg, id, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice warehouse retry: %s\n", err);
            rc = 1;
            continue;
        }
        printf("upload %lld is waiting again\n", id);
    }
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}

int cmd_warehouse(int argc, char **argv, const char *config_file)
{
    if (argc > 1 && strcmp(argv[1], "uploads") == 0)
        return uploads(argc - 1, argv + 1, config_file);
    if (argc > 1 && strcmp(argv[1], "retry") == 0)
        return retry(argc - 1, argv + 1, config_file);
    return cmd_role(argc, argv, config_file);
}
