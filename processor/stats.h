/*
 * The processor's metrics per source and destination. Label values come only from the
 * workspace config (source and destination ids) and fixed sets (stages), so the number of
 * series is bounded by the config. Series handles are cached per processor, so the hot path
 * does no registry lookup and no allocation once a pair has been seen.
 */
#ifndef PR_STATS_H
#define PR_STATS_H

#include "common/metrics.h"

typedef enum pr_stat {
    PR_STAT_EVENTS,        /* sluice_processor_events_total{source} */
    PR_STAT_DUPLICATES,    /* sluice_processor_duplicates_total{source} */
    PR_STAT_FILTERED,      /* sluice_processor_filtered_total{source[,destination]} */
    PR_STAT_JOBS,          /* sluice_processor_jobs_total{source,destination} */
    PR_STAT_DROPPED,       /* sluice_processor_transformation_dropped_total{...} */
    PR_STAT_FAILED_EVENT,  /* sluice_processor_failed_total{...,stage="event"} */
    PR_STAT_FAILED_USERTX, /* ...{stage="user_transformation"} */
    PR_STAT_FAILED_DESTTX, /* ...{stage="destination_transformation"} */
    PR_STAT_LATENCY,       /* histogram sluice_processor_latency_seconds{source,destination} */
    PR_STAT_N
} pr_stat_t;

typedef struct pr_stats pr_stats_t;

/* A cache of series handles; not thread-safe: one per processor thread. */
pr_stats_t *pr_stats_new(void);
void pr_stats_destroy(pr_stats_t *s);

/*
 * The series of stat for a source id (NULL: "unknown", for events of no configured source)
 * and a destination id (NULL: no destination label). The handle lives for the process.
 * Callers pass only ids taken from the workspace config.
 */
sl_metric_t *pr_stats_get(pr_stats_t *s, pr_stat_t stat, const char *source,
                          const char *destination);

/* The PR_STAT_FAILED_* of a dead letter's stage ("event", "user_transformation",
 * "destination_transformation"); PR_STAT_FAILED_EVENT for any other. */
pr_stat_t pr_stats_failed(const char *stage);

#endif
