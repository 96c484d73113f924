/*
 * The failed-events recorder: a consumer group (<prefix>failed-recorder) on the processor's
 * dead-letter topic that copies each dead letter into Postgres (sluice_failed_events), where
 * `sluice failed list` and `sluice failed retry` find them. Offsets are committed only after
 * the rows are; a row is keyed by its topic, partition and offset, so a redelivery writes
 * nothing twice.
 */
#ifndef PR_FAILED_H
#define PR_FAILED_H

#include <stddef.h>

#include "common/conf.h"

typedef struct pr_failed_recorder pr_failed_recorder_t;

/* Starts the recorder thread. Returns NULL with errstr. */
pr_failed_recorder_t *pr_failed_recorder_start(const sl_conf_t *conf, char *errstr,
                                               size_t errstr_size);
void pr_failed_recorder_stop(pr_failed_recorder_t *r);

#endif
