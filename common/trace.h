/*
 * W3C Trace Context (https://www.w3.org/TR/trace-context/): parsing and making `traceparent`
 * values and cleaning `tracestate`, and the Kafka header names with which a trace and the
 * times of each stage travel from the gateway through the processor to the router.
 *
 * Each stage is a span: the gateway's (one per request), the processor's (one per delivery
 * job) and the router's (one per delivery attempt). A stage reads the traceparent of the
 * stage before it, and hands on a child: same trace-id and flags, its own span id.
 * Pure functions; any thread.
 */
#ifndef SL_TRACE_H
#define SL_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Kafka headers (and the HTTP headers the gateway reads and the router sends). */
#define SL_HDR_TRACEPARENT "traceparent"
#define SL_HDR_TRACESTATE  "tracestate"
/* Stage times, RFC 3339 with milliseconds (sl_time_format_ms), on the processor's outputs:
 * the event's Kafka timestamp on the events topic, when the processor read the event, and
 * when it produced the message. The gateway's `sluice-received-at` comes along too. */
#define SL_HDR_ENQUEUED_AT  "sluice-enqueued-at"
#define SL_HDR_PICKED_AT    "sluice-picked-at"
#define SL_HDR_PROCESSED_AT "sluice-processed-at"

#define SL_TRACEPARENT_LEN 55 /* "00-" trace-id "-" span-id "-" flags */
#define SL_TRACE_ID_LEN    32
#define SL_SPAN_ID_LEN     16
#define SL_TRACESTATE_MAX  512 /* longest tracestate passed on (the spec's minimum to keep) */

typedef struct sl_trace {
    char trace_id[SL_TRACE_ID_LEN + 1]; /* 32 lowercase hex digits, not all zero */
    char span_id[SL_SPAN_ID_LEN + 1];   /* 16 lowercase hex digits, not all zero */
    uint8_t flags;                      /* only the sampled bit (0x01) is kept */
} sl_trace_t;

/* Parses a traceparent value of len bytes (OWS around it ignored) as the spec's version 00
 * rules say: 2 hex digit version other than ff; for 00 exactly 55 characters, for a higher
 * version at least 55 with a '-' after the flags; lowercase hex ids, neither all zero.
 * Returns true and fills *t, or false (the caller starts a new trace). */
bool sl_trace_parse(const char *s, size_t len, sl_trace_t *t);

/* A new trace: random trace-id and span id (kernel CSPRNG), flags 01 (sampled: Sluice records
 * every event's journey, `sluice status`). */
void sl_trace_new(sl_trace_t *t);

/* The child span of parent (may be t): same trace-id and flags, a new random span id. */
void sl_trace_child(const sl_trace_t *parent, sl_trace_t *t);

/* Continues the trace of a traceparent value (len bytes, NULL for none) with a child span,
 * or starts a new trace when it is absent or invalid. Returns whether it was continued. */
bool sl_trace_continue(const char *traceparent, size_t len, sl_trace_t *t);

/* "00-<trace-id>-<span-id>-<flags>", NUL-terminated. */
void sl_trace_format(const sl_trace_t *t, char out[SL_TRACEPARENT_LEN + 1]);

/*
 * The tracestate to pass on from a received value of len bytes (several header fields joined
 * with ','): its list members with OWS and empty members removed, in order. The whole value
 * is dropped (0 returned) when a member is not a valid key=value, a key repeats or there are
 * more than 32 members. Over SL_TRACESTATE_MAX characters, whole members are removed: those
 * over 128 characters first, then from the end. Writes a NUL-terminated value to out
 * (out_size > SL_TRACESTATE_MAX) and returns its length; 0 means send no tracestate.
 */
size_t sl_trace_state_clean(const char *s, size_t len, char *out, size_t out_size);

#endif
