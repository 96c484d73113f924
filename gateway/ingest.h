/*
 * Turning request bodies into events for Kafka: validation by the Segment spec and enrichment
 * (messageId, receivedAt, request_ip, context.ip, rudderId), spliced into the original bytes.
 * Pure functions (no Kafka, no HTTP), so the fuzz targets and unit tests drive them directly.
 *
 * A request either yields all its events or an error naming the problem and, in a batch, the
 * index of the bad event: nothing of a rejected request is produced.
 */
#ifndef GW_INGEST_H
#define GW_INGEST_H

#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/uuid.h"
#include "common/json_scan.h"

typedef struct gw_ingest_ctx {
    const char *received_at; /* RFC 3339 with milliseconds, UTC */
    const char *ip;          /* the client's address, or NULL */
    size_t max_event_size;   /* an enriched event over this is rejected with 413 */
} gw_ingest_ctx_t;

typedef struct gw_event {
    size_t off, len;                /* the enriched event in gw_batch_t.out */
    size_t user_off, user_len;      /* the userId as text in gw_batch_t.ids ("" if none) */
    char rudder_id[SL_UUID_STRLEN]; /* the partition key */
    char type[12];
} gw_event_t;

typedef struct gw_batch {
    sl_buf_t out; /* the events' bytes, back to back */
    sl_buf_t ids; /* userIds, for suppression */
    gw_event_t *events;
    size_t n, cap;
    /* Set when the request is rejected: */
    int status;          /* 400 or 413 */
    long index;          /* the bad event's index in a batch, or -1 */
    const char *reason;  /* a short label for metrics, e.g. "invalid_json" */
    char error[256];     /* what the client is told */
    sl_json_index_t idx; /* scratch: the body's structure */
} gw_batch_t;

void gw_batch_init(gw_batch_t *b);
void gw_batch_reset(gw_batch_t *b);
void gw_batch_free(gw_batch_t *b);

/* The body of POST /v1/<type>: one event object; type is set from the endpoint. Returns 0, or
 * the HTTP status with b->error, b->reason and b->index set. */
int gw_ingest_single(gw_batch_t *b, const char *body, size_t len, const char *type,
                     const gw_ingest_ctx_t *ctx);
/* The body of /v1/batch, /v1/import and /beacon/v1/batch: {"batch":[events]}, each with its
 * own type. A top-level "sentAt" is copied into events that have none. */
int gw_ingest_batch(gw_batch_t *b, const char *body, size_t len, const gw_ingest_ctx_t *ctx);
/* The body of POST /v1/webhook: any JSON value becomes the properties of a track event named
 * event_name (a non-object value is wrapped as {"body": value}), with a new anonymousId. */
int gw_ingest_webhook(gw_batch_t *b, const char *body, size_t len, const char *event_name,
                      const gw_ingest_ctx_t *ctx);

/* Builds a JSON object from URL query parameters into out: a dotted name nests
 * (`context.page.path=/x` gives {"context":{"page":{"path":"/x"}}}); values are strings.
 * Parameters named in skip (a NULL-terminated list) are left out. Later duplicates win. */
void gw_params_to_json(const char *const *names, const char *const *values, size_t n,
                       const char *const *skip, sl_buf_t *out);

/* The client address for request_ip: the first address of X-Forwarded-For when trusted and
 * well-formed, otherwise the peer. Writes at most out_size bytes; returns out or NULL. */
const char *gw_client_ip(const char *forwarded_for, const char *peer, bool trust_forwarded,
                         char *out, size_t out_size);

#endif
