/*
 * Dead letters: an event or job that a stage gave up on, with where and why, as one record of
 * the failed topic. The failed-events recorder copies them into Postgres, where `sluice failed
 * list` and `retry` find them. The processor, the router and the warehouse write them.
 */
#ifndef SL_DEADLETTER_H
#define SL_DEADLETTER_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* Kafka headers of a dead letter (and of the messages it came from). */
#define SL_HDR_FAILED_STAGE   "sluice-failed-stage"
#define SL_HDR_SOURCE_ID      "sluice-source-id"
#define SL_HDR_DESTINATION_ID "sluice-destination-id"
#define SL_HDR_MESSAGE_ID     "sluice-message-id"

typedef struct sl_dead_letter {
    const char *stage;  /* "event", "user_transformation", "router", "warehouse", ... */
    const char *reason; /* a sentence a user can act on */
    /* Each may be NULL when unknown. */
    const char *source_id, *destination_id, *destination_type, *message_id, *received_at;
    int32_t partition; /* where the event or job was read */
    int64_t offset;
    const char *event; /* the event or job */
    size_t event_len;
    /* How to embed the event: as JSON when it scans as JSON (SCAN), or as the caller knows. */
    enum { SL_DL_EVENT_SCAN = 0, SL_DL_EVENT_JSON, SL_DL_EVENT_STRING } event_as;
} sl_dead_letter_t;

/* Appends the record's JSON value to b and returns its headers (the caller owns them). */
rd_kafka_headers_t *sl_dead_letter_format(const sl_dead_letter_t *dl, sl_buf_t *b);

#endif
