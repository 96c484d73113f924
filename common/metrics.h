/*
 * Process-wide Prometheus metrics: counters, gauges and histograms with labels, rendered in
 * the Prometheus text format by GET /metrics. Names follow Prometheus conventions
 * (sluice_gateway_events_total, _seconds, _bytes). Thread-safe; updates are lock-free.
 */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stddef.h>

#include "common/buf.h"

typedef struct sl_metric sl_metric_t;

/* Finds or registers a series. The variadic part is label name/value pairs ended by NULL:
 *   sl_metrics_counter("sluice_gateway_events_total", "Events accepted", "source", id, NULL)
 * Names and values are copied and escaped. The handle lives for the whole process; cache it
 * on hot paths (lookup takes a lock). */
sl_metric_t *sl_metrics_counter(const char *name, const char *help, ...) __attribute__((sentinel));
sl_metric_t *sl_metrics_gauge(const char *name, const char *help, ...) __attribute__((sentinel));
/* buckets: ascending upper bounds (the +Inf bucket is added); NULL uses latency buckets from
 * 0.5 ms to 10 s, in seconds. */
sl_metric_t *sl_metrics_histogram(const char *name, const char *help, const double *buckets,
                                  size_t nbuckets, ...) __attribute__((sentinel));

/* Buckets for an event's age since the gateway received it (end-to-end latency), in seconds:
 * 5 ms to 1 h, for sl_metrics_histogram(). */
extern const double sl_metrics_age_buckets[];
extern const size_t sl_metrics_age_nbuckets;

void sl_metrics_add(sl_metric_t *m, double v);     /* counter or gauge */
void sl_metrics_set(sl_metric_t *m, double v);     /* gauge */
void sl_metrics_observe(sl_metric_t *m, double v); /* histogram */
double sl_metrics_value(const sl_metric_t *m);     /* counter/gauge value, for tests */

/* Appends every series in the text exposition format, grouped by name with HELP and TYPE. */
void sl_metrics_render(sl_buf_t *out);

#endif
