/*
 * The processor role: a consumer group on the events topic. For each event it selects the
 * destinations of its source, transforms the event into each destination's delivery job and
 * produces the jobs to the delivery topic, keyed by rudderId so each user's order is kept.
 * Consumed offsets are committed only after the jobs are acknowledged by Kafka.
 */
#ifndef PR_PROCESSOR_H
#define PR_PROCESSOR_H

#include <stddef.h>

#include "common/conf.h"
#include "common/wsconf.h"

typedef struct pr_processor pr_processor_t;

/* Creates the consumer and producer and starts the processing thread. ws is borrowed. */
pr_processor_t *pr_processor_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size);
/* Stops consuming, waits until in-flight jobs are acknowledged, commits, leaves the group. */
void pr_processor_stop(pr_processor_t *pr);

#endif
