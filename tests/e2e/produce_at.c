/*
 * sluice-test-produce-at BROKERS: produces the messages given as JSON lines on stdin, each
 * {"topic": T, "key": K, "value": V, "headers": {NAME: VALUE, ...}, "ts": MS}, with the Kafka
 * timestamp ts (the e2e replay test back-dates events captured from the gateway; kcat can't
 * set timestamps). Keys are partitioned as the gateway does (murmur2_random). Prints the
 * number produced; exits 1 if any was not acknowledged.
 */
#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        fprintf(stderr, "produce-at: not delivered: %s\n", rd_kafka_err2str(m->err));
        failed++;
    }
}

static const char *str(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) ? json_object_get_string(v) : NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: sluice-test-produce-at BROKERS < messages.jsonl\n");
        return 2;
    }
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (rd_kafka_conf_set(c, "bootstrap.servers", argv[1], err, sizeof(err)) ||
        rd_kafka_conf_set(c, "enable.idempotence", "true", err, sizeof(err)) ||
        rd_kafka_conf_set(c, "partitioner", "murmur2_random", err, sizeof(err))) {
        fprintf(stderr, "produce-at: %s\n", err);
        return 2;
    }
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "produce-at: %s\n", err);
        return 2;
    }
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, stdin) > 0) {
        json_object *o = json_tokener_parse(line), *hs;
        const char *topic = str(o, "topic"), *key = str(o, "key"), *value = str(o, "value");
        json_object *ts = NULL;
        if (!o || !topic || !value || !json_object_object_get_ex(o, "ts", &ts)) {
            fprintf(stderr, "produce-at: bad line: %s", line);
            return 2;
        }
        rd_kafka_headers_t *h = rd_kafka_headers_new(4);
        if (json_object_object_get_ex(o, "headers", &hs)) {
            json_object_object_foreach(hs, name, val)
                rd_kafka_header_add(h, name, -1, json_object_get_string(val), -1);
        }
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
            RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_HEADERS(h),
            RD_KAFKA_V_TIMESTAMP(json_object_get_int64(ts)),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e) {
            fprintf(stderr, "produce-at: %s\n", rd_kafka_err2str(e));
            return 1;
        }
        json_object_put(o);
        n++;
        rd_kafka_poll(rk, 0);
    }
    free(line);
    rd_kafka_flush(rk, 30000);
    int left = rd_kafka_outq_len(rk);
    rd_kafka_destroy(rk);
    printf("%d\n", n);
    return failed || left ? 1 : 0;
}
