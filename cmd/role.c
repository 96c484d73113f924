/*
 * `sluice gateway|processor|router|warehouse|all`: runs roles until SIGTERM/SIGINT, then drains
 * them. Dependencies that are down at start (Postgres, the workspace config) are retried with
 * backoff while /health reports them; Kafka reconnects by itself inside librdkafka.
 */
#include "cmd/cmd.h"
#include "common/devkafka.h"
#include "common/err.h"
#include "common/health.h"
#include "common/http.h"
#include "common/kafka.h"
#include "common/lag.h"
#include "common/log.h"
#include "common/migrate.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "common/wsconf.h"
#include "gateway/gateway.h"
#include "processor/failed.h"
#include "processor/processor.h"
#include "router/router.h"
#include "warehouse/warehouse.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    char c = sig == SIGHUP ? 'h' : 't';
    int saved = errno;
    ssize_t n = write(signal_pipe[1], &c, 1);
    (void)n;
    errno = saved;
}

static int install_signals(void)
{
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

/* Waits up to timeout_ms for a signal. Returns 't' (stop), 'h' (reload) or 0 (timeout). */
static char wait_signal(int timeout_ms)
{
    struct pollfd p = {.fd = signal_pipe[0], .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return 0;
    char c = 0;
    if (read(signal_pipe[0], &c, 1) != 1)
        return 0;
    return c;
}

static void usage(const char *role)
{
    printf("usage: sluice %s [--help]\n\n", role);
    if (strcmp(role, "all") == 0)
        puts("Runs the gateway, the processor, the router and the warehouse in one process.\n"
             "With no kafka.brokers (SLUICE_KAFKA_BROKERS) it starts the embedded dev broker,\n"
             "which holds events in memory only.");
    else if (strcmp(role, "gateway") == 0)
        puts("Runs the HTTP ingest gateway on gateway.port (default 8080).");
    else if (strcmp(role, "processor") == 0)
        puts("Runs a processor in the consumer group <kafka.topic_prefix>processor; /health and "
             "/metrics\n"
             "on processor.port (default 8081).");
    else if (strcmp(role, "warehouse") == 0)
        puts("Runs a warehouse instance in the consumer group <kafka.topic_prefix>warehouse: it\n"
             "writes the events of warehouse destinations (POSTGRES) to Avro staging files in\n"
             "warehouse.staging_dir every sync (syncFrequency, else warehouse.sync_interval) and\n"
             "loads them into each destination's warehouse; /health and /metrics on\n"
             "warehouse.port (default 8083).\n\n"
             "       sluice warehouse uploads [--destination ID] [--limit N] [--json]\n"
             "       sluice warehouse retry ID...\n"
             "list the uploads (state, rows, attempts, errors), or make aborted or failed ones\n"
             "waiting again; see `sluice warehouse uploads --help`.");
    else
        puts("Runs a router in the consumer group <kafka.topic_prefix>router; /health and /metrics "
             "on\n"
             "router.port (default 8082).");
    puts("\nNeeds kafka.brokers, workspace.config and (router, warehouse) postgres.dsn; see\n"
         "`sluice config --reference`. SIGTERM or SIGINT drains and stops; SIGHUP reloads the\n"
         "workspace config.");
}

/* Applies migrations once. Returns 0, or an error (logged and put on /health). */
static int try_migrate(sl_pg_t *pg)
{
    char err[512];
    PGconn *conn = sl_pg_conn(pg, err, sizeof(err));
    if (!conn)
        return SL_ERR_TRANSIENT;
    int applied = 0;
    int rc = sl_migrate_run(conn, &applied, err, sizeof(err));
    if (rc) {
        sl_error("sluice", "could not apply migrations: %s", err);
        sl_health_set("postgres", false, "could not apply migrations: %s", err);
        return rc;
    }
    if (applied)
        sl_info("sluice", "applied %d migrations", applied);
    return 0;
}

static void *create_topics(void *arg)
{
    char err[512];
    if (sl_kafka_ensure_topics(arg, err, sizeof(err)) != 0)
        sl_warn("sluice",
                "could not create the pipeline's topics (%s); relying on the cluster "
                "to auto-create them or on topics created beforehand",
                err);
    return NULL;
}

/* Samples the consumer lag of the groups this process runs, for /metrics (NULL: none, or
 * kafka.lag_interval is 0). */
static sl_lag_monitor_t *start_lag(const sl_conf_t *conf, bool pr, bool rec, bool rt, bool wh)
{
    int64_t interval = sl_conf_duration_ms(conf, "kafka.lag_interval");
    const char *groups[4], *topics[4];
    char *names[8];
    size_t n = 0;
    for (const sl_kafka_group_def_t *d = sl_kafka_pipeline_groups; d->group; d++) {
        bool mine = strcmp(d->group, "processor") == 0         ? pr
                    : strcmp(d->group, "failed-recorder") == 0 ? rec
                    : strcmp(d->group, "router") == 0          ? rt
                                                               : wh;
        if (!mine || n == 4)
            continue;
        names[2 * n] = sl_kafka_topic(conf, d->group);
        names[2 * n + 1] = sl_kafka_topic(conf, d->topic);
        groups[n] = names[2 * n];
        topics[n] = names[2 * n + 1];
        n++;
    }
    sl_lag_monitor_t *m = n && interval > 0
                              ? sl_lag_monitor_start(conf, groups, topics, n, interval,
                                                     (size_t)sl_conf_int(conf, "kafka.lag_window"))
                              : NULL;
    for (size_t i = 0; i < 2 * n; i++)
        free(names[i]);
    return m;
}

/* The gateway's cap on request bodies held at once: its in-flight size, but never below the
 * largest single request it accepts. */
static size_t max_buffered(const sl_conf_t *conf)
{
    int64_t m = sl_conf_size(conf, "gateway.max_inflight_size");
    int64_t r = sl_conf_size(conf, "gateway.max_request_size");
    int64_t i = sl_conf_size(conf, "gateway.max_import_size");
    m = m > r ? m : r;
    return (size_t)(m > i ? m : i);
}

int cmd_role(int argc, char **argv, const char *config_file)
{
    const char *role = argv[0];
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(role);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "sluice %s: unexpected argument \"%s\"; see --help\n", role, argv[1]);
        return 2;
    }
    bool all = strcmp(role, "all") == 0;
    bool run_gw = all || strcmp(role, "gateway") == 0;
    bool run_pr = all || strcmp(role, "processor") == 0;
    bool run_rt = all || strcmp(role, "router") == 0;
    bool run_wh = all || strcmp(role, "warehouse") == 0;

    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;

    char err[1024];
    sl_devkafka_t *dev = NULL;
    sl_http_server_t *srv = NULL;
    gw_gateway_t *gw = NULL;
    pr_processor_t *pr = NULL;
    pr_failed_recorder_t *rec = NULL;
    rt_router_t *rt = NULL;
    wh_warehouse_t *wh = NULL;
    sl_lag_monitor_t *lag = NULL;
    sl_wsconf_t *ws = NULL;
    sl_pg_t *pg = NULL;
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    rc = 2;

    if (!*sl_conf_str(conf, "workspace.config")) {
        fprintf(stderr,
                "sluice %s: workspace.config is empty: set SLUICE_WORKSPACE_CONFIG to your "
                "RudderStack workspaceConfig.json file or to a URL that serves it\n",
                role);
        goto out;
    }
    if ((run_rt || run_wh) && !*dsn) {
        fprintf(stderr,
                "sluice %s: postgres.dsn is empty: the %s records %s in Postgres; "
                "set SLUICE_POSTGRES_DSN to a libpq connection string, e.g. "
                "\"host=localhost dbname=sluice user=sluice\"\n",
                role, run_rt ? "router" : "warehouse", run_rt ? "job status" : "its uploads");
        goto out;
    }
    if (install_signals() < 0) {
        fprintf(stderr, "sluice %s: could not set up signal handling: %s\n", role, strerror(errno));
        goto out;
    }

    if (all && !*sl_conf_str(conf, "kafka.brokers")) {
        dev = sl_devkafka_start(1, (int)sl_conf_int(conf, "kafka.partitions"),
                                sl_conf_str(conf, "kafka.topic_prefix"), sl_kafka_pipeline_topics,
                                err, sizeof(err));
        if (!dev) {
            fprintf(stderr, "sluice all: could not start the embedded dev broker: %s\n", err);
            rc = 1;
            goto out;
        }
        sl_conf_set(conf, "kafka.brokers", sl_devkafka_bootstraps(dev), err, sizeof(err));
        sl_warn("sluice",
                "no kafka.brokers configured: using the embedded dev broker at %s, which holds "
                "events in memory only (they are lost when sluice stops); set "
                "SLUICE_KAFKA_BROKERS to use a real cluster",
                sl_devkafka_bootstraps(dev));
    }
    if (!*sl_conf_str(conf, "kafka.brokers")) {
        fprintf(stderr,
                "sluice %s: kafka.brokers is empty: set SLUICE_KAFKA_BROKERS to your cluster's "
                "bootstrap servers (or run `sluice all`, which starts an embedded dev broker)\n",
                role);
        goto out;
    }

    sl_http_opts_t opts = {
        .component = role,
        .host = sl_conf_str(conf, "gateway.host"),
        .port = (int)sl_conf_int(conf, run_gw   ? "gateway.port"
                                       : run_pr ? "processor.port"
                                       : run_rt ? "router.port"
                                                : "warehouse.port"),
        .threads = (int)sl_conf_int(conf, "gateway.threads"),
        .max_body = (size_t)sl_conf_size(conf, "gateway.max_request_size"),
        .max_buffered = run_gw ? max_buffered(conf) : 0,
        .cors = run_gw,
    };
    sl_health_set("workspace", false, "the workspace config is not loaded yet");
    /* Healthy only once every part runs: topics made, migrations applied, consumers started. */
    sl_health_set("startup", false, "%s is starting", role);
    srv = sl_http_server_new(&opts);
    if (run_gw) {
        gw = gw_gateway_new(conf, NULL, srv, err, sizeof(err));
        if (!gw) {
            fprintf(stderr, "sluice %s: could not start the gateway: %s\n", role, err);
            goto out;
        }
    }
    if (sl_http_server_start(srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice %s: %s\n", role, err);
        rc = 1;
        goto out;
    }
    sl_info("sluice", "%s started; http on port %d", role, sl_http_server_port(srv));

    /* Create the pipeline's topics on a real cluster (the dev broker made them already), in
     * the background: nothing waits for it, and consumers see new topics within seconds. */
    pthread_t topics_thread;
    bool topics_started = !dev && sl_conf_bool(conf, "kafka.create_topics") &&
                          pthread_create(&topics_thread, NULL, create_topics, conf) == 0;

    /* Dependencies: retried with backoff until they work or we are told to stop. The gateway
     * and the processor need only the workspace config; the router and the warehouse also
     * need Postgres. */
    if (*dsn)
        pg = sl_pg_new(dsn);
    bool migrated = !pg || !sl_conf_bool(conf, "postgres.migrate");
    int64_t backoff = 500;
    bool stopping = false;
    for (;;) {
        if (!ws) {
            ws = sl_wsconf_start(sl_conf_str(conf, "workspace.config"), dsn,
                                 sl_conf_duration_ms(conf, "workspace.poll_interval"), err,
                                 sizeof(err));
            if (!ws) {
                sl_error("sluice", "%s", err);
                sl_health_set("workspace", false, "%s", err);
            } else {
                if (gw)
                    gw_gateway_set_wsconf(gw, ws);
                /* Consumers subscribe once the topics exist: one that joins while they are
                 * being created can be given no partitions and keep none (librdkafka 2.0.2). */
                if (topics_started && (run_pr || run_rt || run_wh)) {
                    pthread_join(topics_thread, NULL);
                    topics_started = false;
                }
                if (run_pr && !(pr = pr_processor_start(conf, ws, err, sizeof(err)))) {
                    fprintf(stderr, "sluice %s: could not start the processor: %s\n", role, err);
                    goto drain;
                }
            }
        }
        if (!migrated)
            migrated = try_migrate(pg) == 0;
        if (migrated && ws)
            break;
        char c = wait_signal((int)backoff);
        if (c == 't') {
            stopping = true;
            break;
        }
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }

    if (!stopping) {
        if (run_pr && *dsn && !(rec = pr_failed_recorder_start(conf, err, sizeof(err)))) {
            fprintf(stderr, "sluice %s: could not start the failed-events recorder: %s\n", role,
                    err);
            goto drain;
        }
        if (run_rt && !(rt = rt_router_start(conf, ws, err, sizeof(err)))) {
            fprintf(stderr, "sluice %s: could not start the router: %s\n", role, err);
            goto drain;
        }
        if (run_wh && !(wh = wh_warehouse_start(conf, ws, err, sizeof(err)))) {
            fprintf(stderr, "sluice %s: could not start the warehouse: %s\n", role, err);
            goto drain;
        }
        lag = start_lag(conf, run_pr, rec != NULL, run_rt, run_wh);
        sl_info("sluice", "%s running", role);
        sl_health_set("startup", true, NULL);
        /* Every 10 s, malloc_trim gives the memory freed in glibc's per-thread arenas back to
         * the system: bursts (a backlog fetched, parked jobs loaded) otherwise leave each arena
         * at its high-water mark. */
        for (char c; (c = wait_signal(10000)) != 't';)
            if (c == 'h')
                sl_wsconf_request_reload(ws);
            else if (!c)
                malloc_trim(0);
    }
    rc = 0;

drain:
    sl_info("sluice", "%s stopping: draining in-flight work", role);
    sl_http_server_quiesce(srv);
    if (gw) {
        int left = gw_gateway_drain(gw, (int)sl_conf_duration_ms(conf, "gateway.ack_timeout"));
        if (left)
            sl_warn("sluice", "%d events were not acknowledged by kafka before stopping", left);
    }
    if (topics_started)
        pthread_join(topics_thread, NULL);
    topics_started = false;
    sl_lag_monitor_stop(lag);
    pr_processor_stop(pr);
    pr_failed_recorder_stop(rec);
    rt_router_stop(rt);
    wh_warehouse_stop(wh);
    sl_http_server_destroy(srv);
    srv = NULL;
    gw_gateway_destroy(gw);
    gw = NULL;
    sl_info("sluice", "%s stopped", role);

out:
    if (srv)
        sl_http_server_destroy(srv);
    gw_gateway_destroy(gw);
    if (ws)
        sl_wsconf_stop(ws);
    if (pg)
        sl_pg_destroy(pg);
    if (dev)
        sl_devkafka_stop(dev);
    sl_conf_destroy(conf);
    return rc;
}
