/* Time helpers: clocks in milliseconds and RFC 3339 formatting and parsing. */
#ifndef SL_TIMEUTIL_H
#define SL_TIMEUTIL_H

#include <stddef.h>
#include <stdint.h>

#define SL_TIME_STRLEN 32

int64_t sl_time_now_ms(void);  /* wall clock, ms since the epoch */
int64_t sl_time_mono_ms(void); /* monotonic clock, ms */
/* The CLOCK_REALTIME time ms from now, for pthread_cond_timedwait. */
struct timespec;
void sl_time_deadline(struct timespec *ts, int64_t ms);
/* 2026-11-25T10:00:00.123Z */
void sl_time_format_ms(int64_t ms, char out[SL_TIME_STRLEN]);
/* Parses RFC 3339 / ISO 8601 date-times (with or without fraction and offset). Returns 0 and
 * ms since the epoch, or -1. */
int sl_time_parse_ms(const char *s, int64_t *ms);
/* Parses a date-time as Kafka's tools take it (`kafka-consumer-groups --to-datetime`):
 * YYYY-MM-DDTHH:mm:SS.sss, then Z, +HH or +HH:MM (or -), or nothing for UTC. Returns 0 and ms
 * since the epoch, or -1. */
int sl_time_parse_kafka_ms(const char *s, int64_t *ms);
/* Parses an ISO-8601 duration as Java's Duration.parse does: PnDTnHnMn.nS, each part optional
 * and signed, e.g. PT10M, P1DT2H, -PT0.5S. Returns 0 and the milliseconds, or -1. */
int sl_time_parse_iso_duration_ms(const char *s, int64_t *ms);

#endif
