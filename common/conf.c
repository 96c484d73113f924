/*
 * The option table and its loader, see conf.h. The table below is the single source of the
 * configuration: `sluice config --reference` prints it for the README.
 */
#include "common/conf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/mem.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

typedef enum sl_conf_type {
    SL_CONF_STR,
    SL_CONF_INT,
    SL_CONF_BOOL,
    SL_CONF_ENUM,
    SL_CONF_DURATION,
    SL_CONF_SIZE
} sl_conf_type_t;

#define SL_CONF_SECRET 0x1 /* masked by `sluice config` */

typedef struct sl_conf_opt {
    const char *name;
    sl_conf_type_t type;
    const char *def;
    int64_t min, max;    /* INT, DURATION (ms), SIZE (bytes); ignored when min > max */
    const char *choices; /* ENUM: "a|b|c" */
    int flags;
    const char *desc;
} sl_conf_opt_t;

#define NO_RANGE 1, 0

static const sl_conf_opt_t options[] = {
    /* Logging */
    {"log.level", SL_CONF_ENUM, "info", NO_RANGE, "debug|info|warn|error", 0,
     "Lowest level of log lines written to stderr."},
    {"log.format", SL_CONF_ENUM, "text", NO_RANGE, "text|json", 0,
     "Log line format: `text` or one JSON object per line."},

    /* Kafka */
    {"kafka.brokers", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Kafka bootstrap servers, comma-separated. Empty: `sluice all` starts the embedded dev "
     "broker (events held in memory only) and the other roles refuse to start."},
    {"kafka.topic_prefix", SL_CONF_STR, "sluice.", NO_RANGE, NULL, 0,
     "Prefix of every topic Sluice uses (`<prefix>events`, `<prefix>delivery`)."},
    {"kafka.partitions", SL_CONF_INT, "8", 1, 1024, NULL, 0,
     "Partitions per topic when Sluice creates topics (at start, `sluice topics create`, and in "
     "the dev broker)."},
    {"kafka.replication_factor", SL_CONF_INT, "0", 0, 1000, NULL, 0,
     "Replicas of each partition when Sluice creates topics; 0: the cluster's "
     "`default.replication.factor`."},
    {"kafka.retention", SL_CONF_DURATION, "0", 0, 9223372036854LL, NULL, 0,
     "`retention.ms` of the topics Sluice creates (e.g. `7d`); 0: the cluster's "
     "`log.retention.*`."},
    {"kafka.create_topics", SL_CONF_BOOL, "true", NO_RANGE, NULL, 0,
     "Create the pipeline's topics that are missing when a role starts (`kafka.partitions`, "
     "`kafka.replication_factor`, `kafka.retention`)."},

    {"kafka.lag_interval", SL_CONF_DURATION, "30s", 0, 3600000, NULL, 0,
     "How often each role samples the consumer lag of its own groups for /metrics "
     "(`kafka_consumergroup_group_lag` and the rest, see Consumer lag); 0 turns it off."},
    {"kafka.lag_window", SL_CONF_INT, "10", 2, 1000, NULL, 0,
     "Samples in the sliding window over which a group's Burrow status "
     "(`sluice_consumergroup_status`) is evaluated: 10 samples at 30s span 4.5 minutes."},

    /* Postgres */
    {"postgres.dsn", SL_CONF_STR, "", NO_RANGE, NULL, SL_CONF_SECRET,
     "libpq connection string or URI for job status, uploads and the last good workspace "
     "config, e.g. `host=localhost port=5432 dbname=sluice user=sluice`."},
    {"postgres.migrate", SL_CONF_BOOL, "true", NO_RANGE, NULL, 0,
     "Apply pending SQL migrations when a role starts (always safe to run concurrently)."},

    /* Workspace config */
    {"workspace.config", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Workspace config in RudderStack's `workspaceConfig.json` format: a file path, or an "
     "http(s) URL served by a control plane."},
    {"workspace.poll_interval", SL_CONF_DURATION, "5s", 100, 3600000, NULL, 0,
     "How often the workspace config file or URL is checked for a new version (the file is "
     "also reloaded on SIGHUP)."},

    /* Gateway */
    {"gateway.host", SL_CONF_STR, "0.0.0.0", NO_RANGE, NULL, 0, "Address the gateway listens on."},
    {"gateway.port", SL_CONF_INT, "8080", 1, 65535, NULL, 0,
     "Port of the gateway's HTTP API (also /health, /metrics, /version)."},
    {"gateway.threads", SL_CONF_INT, "0", 0, 256, NULL, 0,
     "HTTP worker threads of the gateway; 0 means one per CPU."},
    {"gateway.max_request_size", SL_CONF_SIZE, "4000KB", 1024, 1073741824, NULL, 0,
     "Largest request body accepted; larger requests get 413."},
    {"gateway.max_event_size", SL_CONF_SIZE, "32KB", 256, 67108864, NULL, 0,
     "Largest single event accepted; larger events get 413."},
    {"gateway.ack_timeout", SL_CONF_DURATION, "10s", 100, 600000, NULL, 0,
     "How long the gateway waits for Kafka to acknowledge a request's events before it "
     "answers 503 with Retry-After."},
    {"gateway.max_import_size", SL_CONF_SIZE, "16MB", 1024, 1073741824, NULL, 0,
     "Largest request body accepted by /v1/import (large historical batches)."},
    {"gateway.max_inflight_size", SL_CONF_SIZE, "16MB", 65536, 17179869184LL, NULL, 0,
     "Bytes of events the gateway holds waiting for Kafka, and bytes of request bodies it "
     "holds, each at most this; past it new requests get 503 with Retry-After."},
    {"gateway.trust_forwarded_for", SL_CONF_BOOL, "true", NO_RANGE, NULL, 0,
     "Take `request_ip` / `context.ip` from the first address of `X-Forwarded-For` (as "
     "RudderStack does); set to false when clients reach the gateway without a proxy."},
    {"gateway.rate_limit_window", SL_CONF_DURATION, "60s", 1000, 86400000, NULL, 0,
     "Window of the rate limits `gateway.workspace_rate_limit` and `gateway.source_rate_limit`."},
    {"gateway.workspace_rate_limit", SL_CONF_INT, "0", 0, 1000000000000LL, NULL, 0,
     "Events the whole workspace may send per `gateway.rate_limit_window`; more get 429 with "
     "Retry-After. 0: no limit."},
    {"gateway.source_rate_limit", SL_CONF_INT, "0", 0, 1000000000000LL, NULL, 0,
     "Events each source may send per `gateway.rate_limit_window`; more get 429 with "
     "Retry-After. 0: no limit."},

    /* Processor */
    {"processor.port", SL_CONF_INT, "8081", 1, 65535, NULL, 0,
     "Port of the processor's /health, /metrics and /version when it runs as its own role."},
    {"processor.instance_id", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Names this processor instance in its Kafka transactional.id "
     "(`<kafka.topic_prefix>processor-<instance_id>`): stable across restarts, unique per "
     "running instance. Empty: the host name and `processor.port`."},
    {"processor.transaction_interval", SL_CONF_DURATION, "100ms", 1, 60000, NULL, 0,
     "How long the processor collects events into one Kafka transaction before committing "
     "it (with the consumed offsets)."},
    {"processor.transaction_max_events", SL_CONF_INT, "10000", 1, 10000000, NULL, 0,
     "Most events in one transaction."},
    {"processor.transformations_dir", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Directory of user transformations, one `<versionId>.js` file each, for destinations "
     "whose `transformations` entry has no `code` in the workspace config."},
    {"processor.transformation_workers", SL_CONF_INT, "0", 0, 64, NULL, 0,
     "Sandbox processes running JavaScript user transformations; 0 means one per CPU. "
     "Started when the first transformation runs."},
    {"processor.transformation_time_limit", SL_CONF_DURATION, "4s", 10, 600000, NULL, 0,
     "Longest a user transformation may run for one call; past it the sandbox is killed and "
     "the call's events fail."},
    {"processor.transformation_memory_limit", SL_CONF_SIZE, "128MB", 1048576, 17179869184LL, NULL,
     0, "Memory cap of one user transformation's JavaScript heap."},
    {"processor.dedup", SL_CONF_BOOL, "false", NO_RANGE, NULL, 0,
     "Drop events whose messageId was already seen in the same partition within "
     "`processor.dedup_window` (off by default, as in RudderStack)."},
    {"processor.dedup_window", SL_CONF_DURATION, "3600s", 1000, 604800000, NULL, 0,
     "How far back dedup looks for the same messageId."},
    {"processor.dedup_max_ids", SL_CONF_INT, "100000", 1, 100000000, NULL, 0,
     "Most messageIds dedup keeps per partition (16 bytes each, twice over); the oldest go "
     "first."},

    /* Router */
    {"router.port", SL_CONF_INT, "8082", 1, 65535, NULL, 0,
     "Port of the router's /health, /metrics and /version when it runs as its own role."},
    {"router.concurrency", SL_CONF_INT, "64", 1, 4096, NULL, 0,
     "Concurrent requests per destination (one user's events for one destination are always "
     "sent one request at a time, in order)."},
    {"router.workers", SL_CONF_INT, "1", 1, 16, NULL, 0,
     "Delivery loops in one router process, each a consumer of its own in the router group "
     "(so each owns a share of the partitions, hence of the users) on a thread of its own. "
     "router.concurrency, router.max_connections, router.memory_jobs and throttle limits are "
     "shared out among them."},
    {"router.max_connections", SL_CONF_INT, "512", 1, 65536, NULL, 0,
     "Concurrent requests of the router over all destinations."},
    {"router.memory_jobs", SL_CONF_INT, "10000", 10, 10000000, NULL, 0,
     "Jobs a destination may hold in memory; beyond that, and for every retry, jobs are parked "
     "in Postgres (sluice_parked) so a slow or broken destination never holds up the others."},
    {"router.park_poll", SL_CONF_DURATION, "1s", 10, 600000, NULL, 0,
     "How often the router looks for parked jobs that are due."},
    {"router.batch_timeout", SL_CONF_DURATION, "1s", 1, 600000, NULL, 0,
     "How long a batching destination (Amplitude, Mixpanel import, WEBHOOK with `batch`) waits "
     "to fill a batch before sending what it has."},
    {"router.destination_settings", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Per destination type or destination id: comma-separated `NAME.key=value` with key one of "
     "timeout, retry_base, retry_max, give_up_after, min_attempts, concurrency, throttle "
     "(`LIMIT/WINDOW`, e.g. `AM.throttle=1000/1s`) and batch (WEBHOOK: events per request). "
     "An id wins over a type, which wins over the router.* option."},
    {"router.job_status", SL_CONF_BOOL, "true", NO_RANGE, NULL, 0,
     "Record every job's state changes in Postgres (sluice_jobs, for `sluice status`). "
     "Without it a restart or a rebalance may deliver again the jobs delivered since the last "
     "offset commit."},
    {"router.status_retention", SL_CONF_DURATION, "7d", 3600000, 31536000000LL, NULL, 0,
     "How long job status rows are kept: sluice_jobs is partitioned by day and older days are "
     "dropped."},
    {"router.timeout", SL_CONF_DURATION, "30s", 100, 600000, NULL, 0,
     "Timeout of one HTTP delivery attempt; a timeout is retried."},
    {"router.retry_base", SL_CONF_DURATION, "10s", 1, 86400000, NULL, 0,
     "Backoff before the first retry; it doubles with each attempt up to `router.retry_max`."},
    {"router.retry_max", SL_CONF_DURATION, "300s", 1, 86400000, NULL, 0,
     "Longest backoff between two attempts."},
    {"router.give_up_after", SL_CONF_DURATION, "180m", 0, 604800000, NULL, 0,
     "A job is aborted only when this long has passed since its first attempt and at least "
     "`router.min_attempts` attempts were made."},
    {"router.min_attempts", SL_CONF_INT, "3", 1, 1000, NULL, 0,
     "Attempts made before a job may be aborted (see `router.give_up_after`)."},

    /* Warehouse */
    {"warehouse.port", SL_CONF_INT, "8083", 1, 65535, NULL, 0,
     "Port of the warehouse role's /health, /metrics and /version when it runs as its own role."},
    {"warehouse.staging_dir", SL_CONF_STR, "sluice-staging", NO_RANGE, NULL, 0,
     "Directory of the Avro staging files; every warehouse instance that may take over another's "
     "uploads must see the same directory."},
    {"warehouse.sync_interval", SL_CONF_DURATION, "60s", 1000, 86400000, NULL, 0,
     "How often each warehouse destination is loaded, unless its config sets syncFrequency "
     "(minutes)."},
    {"warehouse.instance_id", SL_CONF_STR, "", NO_RANGE, NULL, 0,
     "Name of this warehouse instance in upload claims (default: host name and "
     "`warehouse.port`)."},
    {"warehouse.retry_base", SL_CONF_DURATION, "30s", 100, 86400000, NULL, 0,
     "Backoff before a failed upload is tried again; it doubles with each attempt."},
    {"warehouse.max_buffered_events", SL_CONF_INT, "200000", 100, 100000000, NULL, 0,
     "Events a warehouse instance holds before it writes staging files early."},
    {"warehouse.max_buffered_bytes", SL_CONF_SIZE, "32MB", 65536, 17179869184LL, NULL, 0,
     "Memory the rows a warehouse instance holds may take before it writes staging files early "
     "(the destinations holding the most first, until half of it is left); while they can't be "
     "written it stops consuming at this size."},
    {"warehouse.workers", SL_CONF_INT, "2", 1, 64, NULL, 0,
     "Uploads a warehouse instance loads at once (each of another destination, or of another "
     "instance's work); each worker has its own Postgres connection for the bookkeeping."},
    {"warehouse.load_parallelism", SL_CONF_INT, "2", 1, 64, NULL, 0,
     "Tables of one upload loaded at once, each over its own connection to the warehouse (one "
     "COPY in one transaction per table); a worker may hold this many warehouse connections."},
    {"warehouse.lease", SL_CONF_DURATION, "20s", 2000, 3600000, NULL, 0,
     "How long an upload claim lasts unless renewed (every quarter of it): the uploads of an "
     "instance that died are taken over by another once it lapses."},
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

typedef enum { SRC_DEFAULT, SRC_FILE, SRC_ENV, SRC_SET } sl_conf_src_t;
static const char *const src_names[] = {"default", "file", "env", "set"};

typedef struct sl_kv {
    char *name, *value;
    sl_conf_src_t src;
} sl_kv_t;

struct sl_conf {
    char *values[N_OPTIONS];
    sl_conf_src_t src[N_OPTIONS];
    sl_kv_t *props; /* librdkafka pass-through properties */
    size_t nprops, capprops;
};

static int opt_index(const char *name)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strcmp(options[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int opt_index_or_die(const char *name)
{
    int i = opt_index(name);
    if (i < 0) {
        sl_error("conf", "internal error: option \"%s\" is not in the option table", name);
        abort();
    }
    return i;
}

int sl_conf_parse_duration(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    double mul;
    if (!*end || strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "m") == 0)
        mul = 60e3;
    else if (strcmp(end, "h") == 0)
        mul = 3600e3;
    else if (strcmp(end, "d") == 0)
        mul = 86400e3;
    else
        return -1;
    *out = (int64_t)(v * mul);
    return 0;
}

/* Parses "512", "32KB", "4MB", "1GB" (also "32K", "32kib"); 1024-based. */
static int parse_size(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno || v < 0)
        return -1;
    while (isspace((unsigned char)*end))
        end++;
    int64_t mul = 1;
    char unit = (char)toupper((unsigned char)*end);
    if (unit == 'K')
        mul = 1024;
    else if (unit == 'M')
        mul = 1024 * 1024;
    else if (unit == 'G')
        mul = 1024 * 1024 * 1024;
    else if (unit == 'B' || !unit)
        mul = 1;
    else
        return -1;
    if (unit && unit != 'B') {
        end++;
        if (tolower((unsigned char)*end) == 'i')
            end++;
        if (toupper((unsigned char)*end) == 'B')
            end++;
    } else if (unit == 'B') {
        end++;
    }
    if (*end)
        return -1;
    *out = v * mul;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

static bool enum_has(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0)
            return true;
        p = bar ? bar + 1 : NULL;
    }
    return false;
}

static int validate(const sl_conf_opt_t *o, const char *v, const char *origin, char *errstr,
                    size_t errstr_size)
{
    int64_t n = 0;
    bool b;
    char *end;

    switch (o->type) {
    case SL_CONF_STR:
        return 0;
    case SL_CONF_BOOL:
        if (parse_bool(v, &b) < 0)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid value \"%s\" for option %s (%s): expected true or false", v,
                              o->name, origin);
        return 0;
    case SL_CONF_ENUM:
        if (!enum_has(o->choices, v))
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid value \"%s\" for option %s (%s): expected one of %s", v,
                              o->name, origin, o->choices);
        return 0;
    case SL_CONF_INT:
        errno = 0;
        n = strtoll(v, &end, 10);
        if (end == v || *end || errno)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid value \"%s\" for option %s (%s): expected an integer", v,
                              o->name, origin);
        break;
    case SL_CONF_DURATION:
        if (sl_conf_parse_duration(v, &n) < 0)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid value \"%s\" for option %s (%s): expected a duration such "
                              "as 500ms, 10s, 5m or 1h",
                              v, o->name, origin);
        break;
    case SL_CONF_SIZE:
        if (parse_size(v, &n) < 0)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid value \"%s\" for option %s (%s): expected a size such as "
                              "512, 32KB or 4MB",
                              v, o->name, origin);
        break;
    }
    if (o->min <= o->max && (n < o->min || n > o->max))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "value \"%s\" for option %s (%s) is out of range [%lld, %lld]%s", v,
                          o->name, origin, (long long)o->min, (long long)o->max,
                          o->type == SL_CONF_DURATION ? " milliseconds"
                          : o->type == SL_CONF_SIZE   ? " bytes"
                                                      : "");
    return 0;
}

static void set_prop(sl_conf_t *conf, const char *name, const char *value, sl_conf_src_t src)
{
    for (size_t i = 0; i < conf->nprops; i++) {
        if (strcmp(conf->props[i].name, name) == 0) {
            free(conf->props[i].value);
            conf->props[i].value = sl_strdup(value);
            conf->props[i].src = src;
            return;
        }
    }
    if (conf->nprops == conf->capprops) {
        conf->capprops = conf->capprops ? conf->capprops * 2 : 8;
        conf->props = sl_realloc(conf->props, conf->capprops * sizeof(*conf->props));
    }
    conf->props[conf->nprops++] = (sl_kv_t){sl_strdup(name), sl_strdup(value), src};
}

static int set_value(sl_conf_t *conf, const char *name, const char *value, sl_conf_src_t src,
                     const char *origin, char *errstr, size_t errstr_size)
{
    int i = opt_index(name);
    if (i < 0) {
        if (strncmp(name, "kafka.", 6) == 0 && name[6]) {
            set_prop(conf, name + 6, value, src);
            return 0;
        }
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "unknown option \"%s\" (%s); `sluice config --reference` lists them",
                          name, origin);
    }
    int err = validate(&options[i], value, origin, errstr, errstr_size);
    if (err)
        return err;
    free(conf->values[i]);
    conf->values[i] = sl_strdup(value);
    conf->src[i] = src;
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int load_file(sl_conf_t *conf, const char *path, char *errstr, size_t errstr_size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "could not open config file \"%s\": %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, err = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#' || *s == '!')
            continue;
        char *eq = strpbrk(s, "=:");
        if (!eq) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "config file \"%s\" line %d: expected `name = value`", path, lineno);
            break;
        }
        *eq = '\0';
        char origin[512];
        snprintf(origin, sizeof(origin), "%s line %d", path, lineno);
        err = set_value(conf, trim(s), trim(eq + 1), SRC_FILE, origin, errstr, errstr_size);
        if (err)
            break;
    }
    free(line);
    fclose(f);
    return err;
}

/* SLUICE_KAFKA_TOPIC_PREFIX -> kafka.topic_prefix when that is in the table; otherwise
 * SLUICE_KAFKA_SASL_MECHANISM -> kafka.sasl.mechanism (a librdkafka property). */
static void env_to_name(const char *env, char *out, size_t outsz)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        char want[128];
        size_t j = 0;
        for (const char *p = options[i].name; *p && j < sizeof(want) - 1; p++)
            want[j++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        want[j] = '\0';
        if (strcmp(env, want) == 0) {
            snprintf(out, outsz, "%s", options[i].name);
            return;
        }
    }
    size_t j = 0;
    for (const char *p = env; *p && j < outsz - 1; p++)
        out[j++] = *p == '_' ? '.' : (char)tolower((unsigned char)*p);
    out[j] = '\0';
}

static int load_env(sl_conf_t *conf, char *errstr, size_t errstr_size)
{
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "SLUICE_", 7) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char env[256], name[256];
        snprintf(env, sizeof(env), "%.*s", (int)(eq - *e - 7), *e + 7);
        /* SLUICE_CONFIG names the file; SLUICE_TEST_* belong to the test suite. */
        if (strcmp(env, "CONFIG") == 0 || strncmp(env, "TEST_", 5) == 0)
            continue;
        env_to_name(env, name, sizeof(name));
        char origin[300];
        snprintf(origin, sizeof(origin), "environment variable SLUICE_%s", env);
        if (opt_index(name) < 0 && strncmp(name, "kafka.", 6) != 0) {
            sl_warn("conf", "ignoring unknown environment variable SLUICE_%s", env);
            continue;
        }
        int err = set_value(conf, name, eq + 1, SRC_ENV, origin, errstr, errstr_size);
        if (err)
            return err;
    }
    return 0;
}

int sl_conf_load(sl_conf_t **confp, const char *file, char *errstr, size_t errstr_size)
{
    sl_conf_t *conf = sl_calloc(1, sizeof(*conf));
    for (size_t i = 0; i < N_OPTIONS; i++) {
        conf->values[i] = sl_strdup(options[i].def);
        conf->src[i] = SRC_DEFAULT;
    }
    if (!file || !*file)
        file = getenv("SLUICE_CONFIG");
    int err = 0;
    if (file && *file)
        err = load_file(conf, file, errstr, errstr_size);
    if (!err)
        err = load_env(conf, errstr, errstr_size);
    if (err) {
        sl_conf_destroy(conf);
        return err;
    }
    *confp = conf;
    return 0;
}

int sl_conf_set(sl_conf_t *conf, const char *name, const char *value, char *errstr,
                size_t errstr_size)
{
    return set_value(conf, name, value, SRC_SET, "set by program", errstr, errstr_size);
}

void sl_conf_destroy(sl_conf_t *conf)
{
    if (!conf)
        return;
    for (size_t i = 0; i < N_OPTIONS; i++)
        free(conf->values[i]);
    for (size_t i = 0; i < conf->nprops; i++) {
        free(conf->props[i].name);
        free(conf->props[i].value);
    }
    free(conf->props);
    free(conf);
}

const char *sl_conf_str(const sl_conf_t *conf, const char *name)
{
    return conf->values[opt_index_or_die(name)];
}

int64_t sl_conf_int(const sl_conf_t *conf, const char *name)
{
    return strtoll(conf->values[opt_index_or_die(name)], NULL, 10);
}

bool sl_conf_bool(const sl_conf_t *conf, const char *name)
{
    bool b = false;
    parse_bool(conf->values[opt_index_or_die(name)], &b);
    return b;
}

int64_t sl_conf_duration_ms(const sl_conf_t *conf, const char *name)
{
    int64_t v = 0;
    sl_conf_parse_duration(conf->values[opt_index_or_die(name)], &v);
    return v;
}

int64_t sl_conf_size(const sl_conf_t *conf, const char *name)
{
    int64_t v = 0;
    parse_size(conf->values[opt_index_or_die(name)], &v);
    return v;
}

void sl_conf_kafka_props_foreach(const sl_conf_t *conf,
                                 void (*fn)(const char *name, const char *value, void *opaque),
                                 void *opaque)
{
    for (size_t i = 0; i < conf->nprops; i++)
        fn(conf->props[i].name, conf->props[i].value, opaque);
}

static bool name_is_secret(const char *name)
{
    static const char *const words[] = {"password", "secret", "token", "jaas", "credential"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcasestr(name, words[i]))
            return true;
    return false;
}

/* Masks the password of a libpq DSN, in both keyword (password=x) and URI (user:x@) forms. */
static void print_masked_dsn(FILE *out, const char *dsn)
{
    const char *p = strcasestr(dsn, "password=");
    if (p) {
        const char *end = p + 9;
        if (*end == '\'') {
            end++;
            while (*end && *end != '\'')
                end += (*end == '\\' && end[1]) ? 2 : 1;
            if (*end)
                end++;
        } else {
            while (*end && !isspace((unsigned char)*end))
                end++;
        }
        fprintf(out, "%.*spassword=****%s", (int)(p - dsn), dsn, end);
        return;
    }
    const char *scheme = strstr(dsn, "://");
    const char *at = scheme ? strchr(scheme + 3, '@') : NULL;
    const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (at && colon && colon < at) {
        fprintf(out, "%.*s:****%s", (int)(colon - dsn), dsn, at);
        return;
    }
    fputs(dsn, out);
}

void sl_conf_print(const sl_conf_t *conf, FILE *out)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        fprintf(out, "%s = ", options[i].name);
        if ((options[i].flags & SL_CONF_SECRET) && strcmp(options[i].name, "postgres.dsn") == 0)
            print_masked_dsn(out, conf->values[i]);
        else if (options[i].flags & SL_CONF_SECRET)
            fputs(*conf->values[i] ? "****" : "", out);
        else
            fputs(conf->values[i], out);
        fprintf(out, "    # %s\n", src_names[conf->src[i]]);
    }
    for (size_t i = 0; i < conf->nprops; i++)
        fprintf(out, "kafka.%s = %s    # %s, passed to librdkafka\n", conf->props[i].name,
                name_is_secret(conf->props[i].name) ? "****" : conf->props[i].value,
                src_names[conf->props[i].src]);
}

void sl_conf_print_reference(FILE *out)
{
    fputs("| Option | Environment variable | Type | Default | Description |\n", out);
    fputs("|---|---|---|---|---|\n", out);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const sl_conf_opt_t *o = &options[i];
        char env[128];
        size_t j = 0;
        for (const char *p = o->name; *p && j < sizeof(env) - 1; p++)
            env[j++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
        env[j] = '\0';
        const char *type = "string";
        char range[160] = "";
        switch (o->type) {
        case SL_CONF_STR:
            break;
        case SL_CONF_BOOL:
            type = "bool";
            break;
        case SL_CONF_ENUM:
            type = "enum";
            snprintf(range, sizeof(range), " One of `%s`.", o->choices);
            break;
        case SL_CONF_INT:
            type = "int";
            break;
        case SL_CONF_DURATION:
            type = "duration";
            break;
        case SL_CONF_SIZE:
            type = "size";
            break;
        }
        if (o->min <= o->max && (o->type == SL_CONF_INT))
            snprintf(range, sizeof(range), " Range %lld to %lld.", (long long)o->min,
                     (long long)o->max);
        fprintf(out, "| `%s` | `SLUICE_%s` | %s | %s%s%s | %s%s |\n", o->name, env, type,
                *o->def ? "`" : "", *o->def ? o->def : "(empty)", *o->def ? "`" : "", o->desc,
                range);
    }
}
