/*
 * The gateway role: the Segment/RudderStack-compatible HTTP ingest API. Authenticates by
 * writeKey, validates and enriches events, produces them to the events topic keyed by
 * rudderId, and answers 200 only once Kafka acknowledged every event of the request.
 */
#ifndef GW_GATEWAY_H
#define GW_GATEWAY_H

#include <stddef.h>

#include "common/conf.h"
#include "common/http.h"
#include "common/wsconf.h"

typedef struct gw_gateway gw_gateway_t;

/* Creates the producer and adds the ingest routes to srv (which the caller starts and owns;
 * it also serves /health, /metrics, /version). ws is borrowed (may be NULL, see
 * gw_gateway_set_wsconf). Returns NULL with errstr. */
gw_gateway_t *gw_gateway_new(const sl_conf_t *conf, sl_wsconf_t *ws, sl_http_server_t *srv,
                             char *errstr, size_t errstr_size);
/* Sets the workspace config once it is loaded; until then ingest requests get 503. ws may be
 * NULL in gw_gateway_new for that reason. Any thread. */
void gw_gateway_set_wsconf(gw_gateway_t *gw, sl_wsconf_t *ws);
/* Waits up to timeout_ms for every produced event to be acknowledged (the caller has already
 * stopped new requests with sl_http_server_quiesce). Returns the number still unacknowledged. */
int gw_gateway_drain(gw_gateway_t *gw, int timeout_ms);
void gw_gateway_destroy(gw_gateway_t *gw);

#endif
