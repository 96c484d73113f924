/* The `sluice` binary: dispatches to one subcommand, see cmd.h. */
#include "cmd/cmd.h"
#include "common/log.h"
#include "sluice_version.h"

#include <librdkafka/rdkafka.h>
#include <malloc.h>
#ifdef SLUICE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif
#include <stdio.h>
#include <string.h>

#ifdef SLUICE_JEMALLOC
/* jemalloc's settings, read at its start (the MALLOC_CONF variable goes over them):
 * - oversize_threshold: blocks of 256 KB and more (librdkafka's fetch buffers, up to a
 *   megabyte each, many a second) come from an arena that gives them back to the system as
 *   soon as they are freed, as glibc does for the blocks it maps (M_MMAP_THRESHOLD below);
 *   cached, they put the router at 150 MB of RSS in tests/bench/e2e, against 102 MB so;
 * - dirty_decay_ms, muzzy_decay_ms: other freed pages go back after a second instead of ten,
 *   and at once rather than through a second, "muzzy" stage;
 * - narenas: two arenas rather than four per CPU, as fewer arenas hold fewer idle pages (the
 *   processor's peak RSS in tests/bench/processor: 127 MB, against 148 MB with eight); a
 *   role's busy threads are few, and each thread's cache takes most of its allocations
 *   without touching an arena. */
const char *malloc_conf = "narenas:2,oversize_threshold:262144,dirty_decay_ms:1000,"
                          "muzzy_decay_ms:0";
#endif

static const sl_cmd_t commands[] = {
    {"gateway", "run the HTTP ingest gateway", cmd_role},
    {"processor", "run the processor (destination selection and transformations)", cmd_role},
    {"router", "run the router (delivery to destinations)", cmd_role},
    {"warehouse", "run the warehouse (loads into Postgres warehouses); `uploads`, `retry`",
     cmd_warehouse},
    {"all", "run every role in one process (the single-process install)", cmd_role},
    {"migrate", "apply pending Postgres migrations and exit", cmd_migrate},
    {"failed", "list the dead letters of the processor and the router, or send them again",
     cmd_failed},
    {"status", "show an event's journey to each of its destinations", cmd_status},
    {"replay", "send a time window of events through the processor again, to chosen destinations",
     cmd_replay},
    {"offsets",
     "show a consumer group's offsets or reset them (a replay), as kafka-consumer-groups",
     cmd_offsets},
    {"topics", "create the pipeline's topics on the cluster, or list them", cmd_topics},
    {"lag", "show consumer lag per group and partition, with a Burrow-style status", cmd_lag},
    {"config", "print the effective configuration or the configuration reference", cmd_config},
    {"dev-kafka", "run the embedded Kafka-protocol dev broker with a fault-injection control",
     cmd_dev_kafka},
    {"dev-sink", "run a local HTTP sink that records what destinations receive", cmd_dev_sink},
    {"version", "print the version", cmd_version},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

int pr_jsworker_main(int argc, char **argv); /* hidden: `sluice js-worker`, processor/jsworker.c */

static void usage(FILE *out)
{
    fputs("usage: sluice [--config FILE] COMMAND [ARGS]\n\n"
          "Sluice is a Kafka-based customer event pipeline compatible with the Segment and\n"
          "RudderStack HTTP APIs. Commands:\n\n",
          out);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fputs("\nEvery command takes --help. Configuration comes from SLUICE_* environment variables\n"
          "and an optional properties file (--config or SLUICE_CONFIG); `sluice config\n"
          "--reference` lists every option.\n",
          out);
}

int cmd_version(int argc, char **argv, const char *config_file)
{
    (void)config_file;
    if (argc > 1 && strcmp(argv[1], "--help") == 0) {
        puts("usage: sluice version\n\nPrints the version, the commit and the library versions.");
        return 0;
    }
    const char *allocator = "glibc malloc";
#ifdef SLUICE_JEMALLOC
    const char *version = NULL;
    size_t len = sizeof(version);
    char buf[64] = "jemalloc";
    if (mallctl("version", &version, &len, NULL, 0) == 0 && version)
        snprintf(buf, sizeof(buf), "jemalloc %.*s", (int)strcspn(version, "-"), version);
    allocator = buf;
#endif
    printf("sluice %s (commit %s, librdkafka %s, %s)\n", SLUICE_VERSION, SLUICE_GIT_COMMIT,
           rd_kafka_version_str(), allocator);
    return 0;
}

int cmd_load_pg(const char *name, const char *config_file, sl_conf_t **confp, sl_pg_t **pgp)
{
    int rc = cmd_load_conf(config_file, confp);
    if (rc)
        return rc;
    const char *dsn = sl_conf_str(*confp, "postgres.dsn");
    if (!*dsn) {
        fprintf(stderr, "%s: postgres.dsn is empty: set SLUICE_POSTGRES_DSN\n", name);
        sl_conf_destroy(*confp);
        return 2;
    }
    *pgp = sl_pg_new(dsn);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "js-worker") == 0) /* the sandbox of user transformations */
        return pr_jsworker_main(argc - 1, argv + 1);
#ifndef SLUICE_JEMALLOC /* the sanitizer builds use glibc's malloc */
    /* glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, after
     * which librdkafka's fetch buffers (up to a megabyte each, many a second) come from the
     * heap, where freed ones stay part of the RSS. A fixed threshold maps them and gives them
     * back when freed; fewer arenas leave less memory idle in threads' arenas. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    mallopt(M_ARENA_MAX, 4);
#endif
    const char *config_file = NULL;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        if ((strcmp(argv[i], "--config") == 0 || strcmp(argv[i], "-c") == 0) && i + 1 < argc) {
            config_file = argv[i + 1];
            i += 2;
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config_file = argv[i] + 9;
            i++;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            return cmd_version(0, NULL, NULL);
        } else {
            fprintf(stderr, "sluice: unknown option \"%s\"\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    for (size_t c = 0; c < N_COMMANDS; c++)
        if (strcmp(argv[i], commands[c].name) == 0)
            return commands[c].fn(argc - i, argv + i, config_file);
    fprintf(stderr, "sluice: unknown command \"%s\"; `sluice --help` lists the commands\n",
            argv[i]);
    return 2;
}
