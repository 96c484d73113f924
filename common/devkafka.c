/*
 * The embedded dev broker on librdkafka's mock cluster, see devkafka.h. The mock cluster runs
 * on the threads of a host rd_kafka_t handle that does nothing else.
 */
#include "common/devkafka.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/mem.h"

#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sl_devkafka {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    char *bootstraps;
    int nbrokers, partitions;
    char **topics;
    size_t ntopics;
};

sl_devkafka_t *sl_devkafka_start(int nbrokers, int partitions, const char *prefix,
                                 const char *const *suffixes, char *errstr, size_t errstr_size)
{
    char e[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "client.id", "sluice-dev-kafka", e, sizeof(e));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, e, sizeof(e));
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not create the mock host: %s", e);
        return NULL;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, nbrokers);
    if (!mc) {
        rd_kafka_destroy(rk);
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start the mock cluster");
        return NULL;
    }
    sl_devkafka_t *d = sl_calloc(1, sizeof(*d));
    d->rk = rk;
    d->mc = mc;
    d->nbrokers = nbrokers;
    d->partitions = partitions;
    d->bootstraps = sl_strdup(rd_kafka_mock_cluster_bootstraps(mc));
    int rf = nbrokers < 3 ? nbrokers : 3;
    for (const char *const *s = suffixes; s && *s; s++) {
        char *name = sl_asprintf("%s%s", prefix ? prefix : "", *s);
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, name, partitions, rf);
        if (err) {
            sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not create topic \"%s\": %s", name,
                       rd_kafka_err2str(err));
            free(name);
            sl_devkafka_stop(d);
            return NULL;
        }
        d->topics = sl_realloc(d->topics, (d->ntopics + 1) * sizeof(char *));
        d->topics[d->ntopics++] = name;
    }
    return d;
}

const char *sl_devkafka_bootstraps(const sl_devkafka_t *d)
{
    return d->bootstraps;
}

int sl_devkafka_broker_down(sl_devkafka_t *d, int32_t broker_id)
{
    return rd_kafka_mock_broker_set_down(d->mc, broker_id);
}

int sl_devkafka_broker_up(sl_devkafka_t *d, int32_t broker_id)
{
    return rd_kafka_mock_broker_set_up(d->mc, broker_id);
}

int sl_devkafka_broker_rtt(sl_devkafka_t *d, int32_t broker_id, int rtt_ms)
{
    return rd_kafka_mock_broker_set_rtt(d->mc, broker_id, rtt_ms);
}

int sl_devkafka_request_errors(sl_devkafka_t *d, int16_t api_key, size_t cnt,
                               rd_kafka_resp_err_t err)
{
    rd_kafka_resp_err_t *errs = sl_malloc(cnt * sizeof(*errs));
    for (size_t i = 0; i < cnt; i++)
        errs[i] = err;
    rd_kafka_mock_push_request_errors_array(d->mc, api_key, cnt, errs);
    free(errs);
    return 0;
}

void sl_devkafka_stop(sl_devkafka_t *d)
{
    if (!d)
        return;
    rd_kafka_mock_cluster_destroy(d->mc);
    rd_kafka_destroy(d->rk);
    for (size_t i = 0; i < d->ntopics; i++)
        free(d->topics[i]);
    free(d->topics);
    free(d->bootstraps);
    free(d);
}

/* --- HTTP control --- */

static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},          {"Fetch", 1},
    {"ListOffsets", 2},      {"Metadata", 3},
    {"OffsetCommit", 8},     {"OffsetFetch", 9},
    {"FindCoordinator", 10}, {"JoinGroup", 11},
    {"Heartbeat", 12},       {"LeaveGroup", 13},
    {"SyncGroup", 14},       {"ApiVersions", 18},
    {"InitProducerId", 22},  {"AddPartitionsToTxn", 24},
    {"EndTxn", 26},
};

static int parse_api(const char *s, int16_t *key)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end && v >= 0 && v < 1000) {
        *key = (int16_t)v;
        return 0;
    }
    for (size_t i = 0; i < sizeof(api_keys) / sizeof(api_keys[0]); i++)
        if (strcasecmp(s, api_keys[i].name) == 0) {
            *key = api_keys[i].key;
            return 0;
        }
    return -1;
}

static int parse_error(const char *s, rd_kafka_resp_err_t *err)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s && !*end) {
        *err = (rd_kafka_resp_err_t)v;
        return 0;
    }
    const struct rd_kafka_err_desc *descs;
    size_t n;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++)
        if (descs[i].name && strcasecmp(descs[i].name, s) == 0) {
            *err = descs[i].code;
            return 0;
        }
    return -1;
}

static sl_http_result_t handle_info(sl_http_req_t *req, void *opaque)
{
    sl_devkafka_t *d = opaque;
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_puts(&b, "{\"bootstraps\":");
    sl_buf_json_str(&b, d->bootstraps, strlen(d->bootstraps));
    sl_buf_printf(&b, ",\"brokers\":%d,\"partitions\":%d,\"topics\":[", d->nbrokers, d->partitions);
    for (size_t i = 0; i < d->ntopics; i++) {
        if (i)
            sl_buf_putc(&b, ',');
        sl_buf_json_str(&b, d->topics[i], strlen(d->topics[i]));
    }
    sl_buf_puts(&b, "]}");
    sl_http_respond(req, 200, "application/json", b.data, b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

/* POST /dev-kafka/brokers/{id}/{down|up|rtt?ms=N} */
static sl_http_result_t handle_broker(sl_http_req_t *req, void *opaque)
{
    sl_devkafka_t *d = opaque;
    const char *rest = sl_http_req_path(req) + strlen("/dev-kafka/brokers/");
    char *end;
    long id = strtol(rest, &end, 10);
    if (end == rest || *end != '/' || id < 1 || id > d->nbrokers) {
        sl_http_respond_error(req, 400, "expected /dev-kafka/brokers/<1..%d>/down|up|rtt",
                              d->nbrokers);
        return SL_HTTP_DONE;
    }
    const char *action = end + 1;
    int err;
    if (strcmp(action, "down") == 0) {
        err = sl_devkafka_broker_down(d, (int32_t)id);
    } else if (strcmp(action, "up") == 0) {
        err = sl_devkafka_broker_up(d, (int32_t)id);
    } else if (strcmp(action, "rtt") == 0) {
        const char *ms = sl_http_req_query(req, "ms");
        if (!ms || atoi(ms) < 0) {
            sl_http_respond_error(req, 400, "rtt needs ?ms=<milliseconds>");
            return SL_HTTP_DONE;
        }
        err = sl_devkafka_broker_rtt(d, (int32_t)id, atoi(ms));
    } else {
        sl_http_respond_error(req, 400, "unknown broker action \"%s\": use down, up or rtt",
                              action);
        return SL_HTTP_DONE;
    }
    if (err) {
        sl_http_respond_error(req, 500, "%s", rd_kafka_err2str((rd_kafka_resp_err_t)err));
        return SL_HTTP_DONE;
    }
    sl_info("dev-kafka", "broker %ld: %s%s%s", id, action, sl_http_req_query(req, "ms") ? " " : "",
            sl_http_req_query(req, "ms") ? sl_http_req_query(req, "ms") : "");
    sl_http_respond(req, 200, "application/json", "{\"ok\":true}", 11);
    return SL_HTTP_DONE;
}

/* POST /dev-kafka/errors?api=Produce&error=NOT_ENOUGH_REPLICAS&count=5 */
static sl_http_result_t handle_errors(sl_http_req_t *req, void *opaque)
{
    sl_devkafka_t *d = opaque;
    const char *api = sl_http_req_query(req, "api"), *error = sl_http_req_query(req, "error");
    const char *count = sl_http_req_query(req, "count");
    int16_t key;
    rd_kafka_resp_err_t err;
    if (!api || parse_api(api, &key) < 0) {
        sl_http_respond_error(req, 400,
                              "api must be a Kafka API name (Produce, Fetch, ...) or key");
        return SL_HTTP_DONE;
    }
    if (!error || parse_error(error, &err) < 0) {
        sl_http_respond_error(
            req, 400, "error must be a Kafka error name (e.g. NOT_ENOUGH_REPLICAS) or code");
        return SL_HTTP_DONE;
    }
    long n = count ? strtol(count, NULL, 10) : 1;
    if (n < 1 || n > 100000) {
        sl_http_respond_error(req, 400, "count must be between 1 and 100000");
        return SL_HTTP_DONE;
    }
    sl_devkafka_request_errors(d, key, (size_t)n, err);
    sl_info("dev-kafka", "the next %ld %s requests fail with %s", n, api, rd_kafka_err2name(err));
    sl_http_respond(req, 200, "application/json", "{\"ok\":true}", 11);
    return SL_HTTP_DONE;
}

void sl_devkafka_http_routes(sl_devkafka_t *d, sl_http_server_t *srv)
{
    sl_http_route(srv, "GET", "/dev-kafka/", handle_info, d);
    sl_http_route(srv, "POST", "/dev-kafka/brokers/*", handle_broker, d);
    sl_http_route(srv, "POST", "/dev-kafka/errors", handle_errors, d);
}
