/*
 * The KAFKA destination's delivery: produces a job's body to a topic on the destination's own
 * cluster (its config: hostname, port, topic, sslEnabled, caCertificate, useSASL, saslType,
 * username, password), one idempotent producer per destination, and reports each message's
 * outcome as OK, RETRY or ABORT, the way the router acts on HTTP statuses.
 *
 * Locality: every function is called from one thread, the router's main loop; callbacks run
 * on that thread, inside rt_kdest_poll and rt_kdest_free.
 */
#ifndef RT_KAFKA_DEST_H
#define RT_KAFKA_DEST_H

#include <stddef.h>

#include "common/conf.h"
#include "common/workspace.h"

typedef struct rt_kdest rt_kdest_t;

typedef enum rt_kdest_result {
    RT_KDEST_OK = 0,    /* delivered (acks=all), or queued when returned by rt_kdest_send */
    RT_KDEST_RETRY = 1, /* worth another attempt: timeout, cluster unreachable, ... */
    RT_KDEST_ABORT = 2  /* never will succeed: bad config, message too large, no such topic */
} rt_kdest_result_t;

/* A finished message: opaque as given to rt_kdest_send, the outcome, and a detail for the
 * job status and dead letter (e.g. `kafka: Broker: Message size too large`; "" when OK),
 * borrowed for the call. ctx as given to rt_kdest_poll / rt_kdest_free. */
typedef void rt_kdest_done_cb(void *opaque, rt_kdest_result_t result, const char *detail,
                              void *ctx);

/* A delivery context; the message timeout is router.timeout. Free with rt_kdest_free. */
rt_kdest_t *rt_kdest_new(const sl_conf_t *conf);

/* The topic named by a KAFKA job's url ("kafka://T" gives "T", borrowed from url), "" for
 * "kafka://", or NULL if url is not a kafka:// url. */
const char *rt_kdest_url_topic(const char *url);

/*
 * Queues one message for destination d (d is borrowed for the call; its config is read, and
 * a producer for it is made, or remade when the connection settings changed since the last
 * message). topic (may be NULL or "": the config's topic), key (the user key; may be NULL)
 * and value are copied; traceparent and tracestate (each may be NULL) become the message's
 * W3C Trace Context headers. Returns RT_KDEST_OK when queued: the outcome comes later, once,
 * through rt_kdest_poll or rt_kdest_free with opaque. Otherwise returns RETRY or ABORT now,
 * with the reason in err, and opaque is not reported: e.g. ABORT `destination config port is
 * "x", expected a port number` or `destination config has no topic`.
 */
rt_kdest_result_t rt_kdest_send(rt_kdest_t *k, const sl_destination_t *d, const char *topic,
                                const void *key, size_t key_len, const void *value, size_t len,
                                const char *traceparent, const char *tracestate, void *opaque,
                                char *err, size_t errsz);

/* Serves delivery reports without blocking: calls cb for each finished message. Also
 * releases producers that were replaced or left idle for 10 minutes once they are empty. */
void rt_kdest_poll(rt_kdest_t *k, rt_kdest_done_cb *cb, void *ctx);

/* Messages queued and not yet reported. */
size_t rt_kdest_inflight(const rt_kdest_t *k);

/* Waits up to timeout_ms for the messages in flight, reporting them through cb; those still
 * unfinished then are reported RETRY. Frees k (NULL is fine). */
void rt_kdest_free(rt_kdest_t *k, int timeout_ms, rt_kdest_done_cb *cb, void *ctx);

#endif
