/*
 * `sluice failed list` and `sluice failed retry`: the dead letters of the processor, the router
 * and the warehouse, as recorded in Postgres (sluice_failed_events). Retry sends a processor's
 * event back to the events topic for its destination only, skipping dedup, a router's delivery
 * job (stage "router") back to the delivery topic unchanged, and a warehouse's job (stage
 * "warehouse") back to the warehouse topic; then it marks the row retried.
 */
#include "cmd/cmd.h"
#include "common/buf.h"
#include "common/jsonc.h"
#include "common/kafka.h"
#include "common/mem.h"
#include "common/pg.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: sluice failed list [--all] [--source ID] [--destination ID] [--limit N]\n"
    "       sluice failed retry (--id N [--id N ...] | --destination ID | --source ID |\n"
    "                            --all) [--dry-run]\n\n"
    "Dead letters: events a user transformation or a destination transformation could not\n"
    "take, delivery jobs the router aborted (stage \"router\": a 4xx answer, or retries\n"
    "given up), and events the warehouse could not load (stage \"warehouse\"), with the stage\n"
    "and the reason. `list` shows those not retried yet (--all: every\n"
    "one). `retry` sends the chosen ones again once you fixed the cause, each to the\n"
    "destination it failed for: an event through the processor (past dedup), a router's or\n"
    "the warehouse's job unchanged to its topic. They are then marked retried.\n"
    "Reads postgres.dsn (SLUICE_POSTGRES_DSN); retry also produces to kafka.brokers.\n";

typedef struct filter {
    bool all, dry_run;
    const char *source, *destination;
    long limit;
    long *ids;
    size_t nids;
} filter_t;

/* Builds the WHERE clause and its parameters. */
static void where(const filter_t *f, char *sql, size_t n, const char **params, int *np,
                  char ids_text[][24])
{
    size_t len = strlen(sql);
    len += (size_t)snprintf(sql + len, n - len, " WHERE true");
    if (!f->all)
        len += (size_t)snprintf(sql + len, n - len, " AND retried_at IS NULL");
    if (f->source) {
        params[*np] = f->source;
        (*np)++;
        len += (size_t)snprintf(sql + len, n - len, " AND source_id = $%d", *np);
    }
    if (f->destination) {
        params[*np] = f->destination;
        (*np)++;
        len += (size_t)snprintf(sql + len, n - len, " AND destination_id = $%d", *np);
    }
    if (f->nids) {
        len += (size_t)snprintf(sql + len, n - len, " AND id IN (");
        for (size_t i = 0; i < f->nids && *np < 60; i++) {
            snprintf(ids_text[i], 24, "%ld", f->ids[i]);
            params[*np] = ids_text[i];
            (*np)++;
            len += (size_t)snprintf(sql + len, n - len, "%s$%d::bigint", i ? ", " : "", *np);
        }
        snprintf(sql + len, n - len, ")");
    }
}

static int list(sl_pg_t *pg, const filter_t *f)
{
    char sql[4096] = "SELECT id, to_char(failed_at AT TIME ZONE 'UTC', "
                     "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), stage, coalesce(destination_id, '-'), "
                     "coalesce(message_id, '-'), reason, retried_at IS NOT NULL "
                     "FROM sluice_failed_events";
    const char *params[64];
    char ids[64][24];
    int np = 0;
    where(f, sql, sizeof(sql), params, &np, ids);
    size_t len = strlen(sql);
    snprintf(sql + len, sizeof(sql) - len, " ORDER BY id LIMIT %ld", f->limit);
    PGresult *r;
    char err[1024];
    if (sl_pg_exec(pg, sql, np, params, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice failed list: %s\n", err);
        return 1;
    }
    int n = PQntuples(r);
    printf("%-6s %-20s %-27s %-16s %-38s %s\n", "ID", "FAILED AT", "STAGE", "DESTINATION",
           "MESSAGE ID", "REASON");
    for (int i = 0; i < n; i++)
        printf("%-6s %-20s %-27s %-16s %-38s %s%s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
               PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4),
               PQgetvalue(r, i, 6)[0] == 't' ? "(retried) " : "", PQgetvalue(r, i, 5));
    fprintf(stderr, "%d dead letter%s%s\n", n, n == 1 ? "" : "s",
            n == f->limit ? " (limit reached: --limit N shows more)" : "");
    PQclear(r);
    return 0;
}

static atomic_int delivery_errors;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        atomic_fetch_add(&delivery_errors, 1);
        fprintf(stderr, "sluice failed retry: kafka did not take an event: %s\n",
                rd_kafka_err2str(m->err));
    }
}

static int retry(const sl_conf_t *conf, sl_pg_t *pg, const filter_t *f)
{
    char sql[4096] = "SELECT id, coalesce(source_id, ''), coalesce(destination_id, ''), "
                     "coalesce(received_at, ''), event, coalesce(user_key, ''), stage, "
                     "coalesce(message_id, '') FROM sluice_failed_events";
    const char *params[64];
    char ids[64][24];
    int np = 0;
    filter_t g = *f;
    g.all = false; /* never retry twice by accident */
    where(&g, sql, sizeof(sql), params, &np, ids);
    size_t len = strlen(sql);
    snprintf(sql + len, sizeof(sql) - len, " ORDER BY id");
    PGresult *r;
    char err[1024];
    if (sl_pg_exec(pg, sql, np, params, &r, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice failed retry: %s\n", err);
        return 1;
    }
    int n = PQntuples(r);
    if (f->dry_run || n == 0) {
        printf("%d dead letter%s would be retried\n", n, n == 1 ? "" : "s");
        PQclear(r);
        return 0;
    }
    rd_kafka_t *rk = sl_kafka_producer_new(conf, on_delivery, NULL, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "sluice failed retry: %s\n", err);
        PQclear(r);
        return 1;
    }
    char *events_topic = sl_kafka_topic(conf, SL_TOPIC_EVENTS);
    char *delivery_topic = sl_kafka_topic(conf, SL_TOPIC_DELIVERY);
    char *warehouse_topic = sl_kafka_topic(conf, SL_TOPIC_WAREHOUSE);
    for (int i = 0; i < n; i++) {
        const char *src = PQgetvalue(r, i, 1), *dst = PQgetvalue(r, i, 2),
                   *recv = PQgetvalue(r, i, 3), *ev = PQgetvalue(r, i, 4),
                   *key = PQgetvalue(r, i, 5), *topic = events_topic;
        rd_kafka_headers_t *h = rd_kafka_headers_new(3);
        json_object *job = NULL;
        bool router = strcmp(PQgetvalue(r, i, 6), "router") == 0;
        if (router || strcmp(PQgetvalue(r, i, 6), "warehouse") == 0) {
            /* The delivery job as the processor produced it, keyed by its user (order) */
            topic = router ? delivery_topic : warehouse_topic;
            job = json_tokener_parse(ev);
            if (sl_jsonc_str(job, "userKey"))
                key = sl_jsonc_str(job, "userKey");
            if (*dst)
                rd_kafka_header_add(h, "sluice-destination-id", -1, dst, -1);
            if (*PQgetvalue(r, i, 7))
                rd_kafka_header_add(h, "sluice-message-id", -1, PQgetvalue(r, i, 7), -1);
        } else {
            rd_kafka_header_add(h, "sluice-source-id", -1, src, -1);
            if (*recv)
                rd_kafka_header_add(h, "sluice-received-at", -1, recv, -1);
            if (*dst)
                rd_kafka_header_add(h, "sluice-retry-destination", -1, dst, -1);
        }
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)ev, strlen(ev)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (job)
            json_object_put(job);
        if (e) {
            rd_kafka_headers_destroy(h);
            fprintf(stderr, "sluice failed retry: could not produce: %s\n", rd_kafka_err2str(e));
            atomic_fetch_add(&delivery_errors, 1);
            break;
        }
    }
    rd_kafka_flush(rk, 30000);
    int unsent = rd_kafka_outq_len(rk);
    rd_kafka_destroy(rk);
    free(events_topic);
    free(delivery_topic);
    free(warehouse_topic);
    int rc = 0;
    if (atomic_load(&delivery_errors) || unsent) {
        fprintf(stderr, "sluice failed retry: not every event reached kafka; nothing is marked "
                        "retried, run it again\n");
        rc = 1;
    } else {
        /* Mark exactly the rows sent. */
        sl_buf_t ids_sql = SL_BUF_INIT;
        sl_buf_puts(&ids_sql, "UPDATE sluice_failed_events SET retried_at = now() WHERE id IN (");
        for (int i = 0; i < n; i++)
            sl_buf_printf(&ids_sql, "%s%lld", i ? "," : "", atoll(PQgetvalue(r, i, 0)));
        sl_buf_puts(&ids_sql, ")");
        if (sl_pg_exec(pg, ids_sql.data, 0, NULL, NULL, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluice failed retry: the events were sent but not marked: %s\n", err);
            rc = 1;
        } else {
            printf("retried %d dead letter%s\n", n, n == 1 ? "" : "s");
        }
        sl_buf_free(&ids_sql);
    }
    PQclear(r);
    return rc;
}

int cmd_failed(int argc, char **argv, const char *config_file)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "list") != 0 && strcmp(sub, "retry") != 0) {
        fprintf(stderr, "sluice failed: unknown command \"%s\"; see --help\n", sub);
        return 2;
    }
    filter_t f = {.limit = 100};
    long ids[60];
    f.ids = ids;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--all") == 0) {
            f.all = true;
        } else if (strcmp(a, "--dry-run") == 0) {
            f.dry_run = true;
        } else if (strcmp(a, "--source") == 0 && v) {
            f.source = v, i++;
        } else if (strcmp(a, "--destination") == 0 && v) {
            f.destination = v, i++;
        } else if (strcmp(a, "--limit") == 0 && v && atol(v) > 0) {
            f.limit = atol(v), i++;
        } else if (strcmp(a, "--id") == 0 && v && atol(v) > 0 && f.nids < 60) {
            ids[f.nids++] = atol(v), i++;
        } else {
            fprintf(stderr, "sluice failed %s: bad argument \"%s\"; see --help\n", sub, a);
            return 2;
        }
    }
    if (strcmp(sub, "retry") == 0 && !f.all && !f.nids && !f.source && !f.destination) {
        fprintf(stderr, "sluice failed retry: choose what to retry: --id N, --destination ID, "
                        "--source ID or --all\n");
        return 2;
    }
    sl_conf_t *conf;
    sl_pg_t *pg;
    int rc = cmd_load_pg("sluice failed", config_file, &conf, &pg);
    if (rc)
        return rc;
    rc = strcmp(sub, "list") == 0 ? list(pg, &f) : retry(conf, pg, &f);
    sl_pg_destroy(pg);
    sl_conf_destroy(conf);
    return rc;
}
