/*
 * The embedded dev broker: librdkafka's mock cluster, a Kafka-protocol server on loopback that
 * holds everything in memory. Used by `sluice dev-kafka`, by `sluice all` when no brokers are
 * configured, and by tests for fine-grained fault injection.
 */
#ifndef SL_DEVKAFKA_H
#define SL_DEVKAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "common/http.h"

typedef struct sl_devkafka sl_devkafka_t;

/* Starts a cluster of nbrokers (ids 1..nbrokers) and creates the topics prefix + each of the
 * NULL-terminated suffixes, with `partitions` partitions each (other topics are created on
 * first use by the mock). Returns NULL with errstr on failure. */
sl_devkafka_t *sl_devkafka_start(int nbrokers, int partitions, const char *prefix,
                                 const char *const *suffixes, char *errstr, size_t errstr_size);
/* "127.0.0.1:port,..."; owned by d. */
const char *sl_devkafka_bootstraps(const sl_devkafka_t *d);

/* Fault injection. Each returns 0 or an rd_kafka_resp_err_t. */
int sl_devkafka_broker_down(sl_devkafka_t *d, int32_t broker_id);
int sl_devkafka_broker_up(sl_devkafka_t *d, int32_t broker_id);
int sl_devkafka_broker_rtt(sl_devkafka_t *d, int32_t broker_id, int rtt_ms);
/* The next cnt requests of ApiKey api_key fail with err (cluster-wide). */
int sl_devkafka_request_errors(sl_devkafka_t *d, int16_t api_key, size_t cnt,
                               rd_kafka_resp_err_t err);

/* Adds the fault-injection control routes under /dev-kafka/ to an HTTP server. */
void sl_devkafka_http_routes(sl_devkafka_t *d, sl_http_server_t *srv);

void sl_devkafka_stop(sl_devkafka_t *d);

#endif
