/*
 * The processor role: a consumer group on the events topic. For each event it selects the
 * destinations of its source, transforms the event into each destination's delivery job and
 * produces the jobs to the delivery topic, keyed by rudderId so each user's order is kept.
 * Consumed offsets are committed only after the jobs are acknowledged by Kafka.
 */
#ifndef PR_PROCESSOR_H
#define PR_PROCESSOR_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "common/conf.h"
#include "common/wsconf.h"

typedef struct pr_processor pr_processor_t;

/* Creates the consumer and producer and starts the processing thread. ws is borrowed. */
pr_processor_t *pr_processor_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size);
/* Stops consuming, waits until in-flight jobs are acknowledged, commits, leaves the group. */
void pr_processor_stop(pr_processor_t *pr);

/*
 * Batch mode, for `sluice replay` (processor/replay.c): the same processing without the
 * consumer group. The caller reads events with its own consumer (assigned partitions, never
 * subscribed: its group.id only names where offsets are committed) and hands them over in
 * batches on one thread. Only the listed destinations are served and dedup is off; the
 * outputs and the consumed offsets are committed in Kafka transactions of txn_id, whose
 * initialisation fences (aborts) a transaction an earlier holder of txn_id left open.
 * conf, ws and consumer are borrowed; destinations are copied. Returns NULL with errstr.
 */
pr_processor_t *pr_processor_new_batch(const sl_conf_t *conf, sl_wsconf_t *ws, rd_kafka_t *consumer,
                                       const char *txn_id, const char *const *destinations,
                                       size_t ndestinations, char *errstr, size_t errstr_size);
/* Processes msgs (still the caller's) in the open transaction, opening one if needed, and
 * notes their offsets. Returns 0, or -1 with errstr if the transaction could not begin or
 * pr_processor_interrupt stopped it (it is then aborted and the consumer put back at the
 * committed offsets). */
int pr_processor_process_batch(pr_processor_t *pr, rd_kafka_message_t *const *msgs, size_t n,
                               char *errstr, size_t errstr_size);
/* Commits the open transaction (if any) with the noted offsets. Returns 0; -1 when it was
 * aborted (the consumer is put back at the committed offsets, errstr says why); -2 when the
 * producer failed and could not be made anew (errstr). */
int pr_processor_commit_batch(pr_processor_t *pr, char *errstr, size_t errstr_size);
/* Makes a blocked pr_processor_process_batch give up. Any thread. */
void pr_processor_interrupt(pr_processor_t *pr);
/* Aborts an open transaction and frees pr (not the consumer). */
void pr_processor_free_batch(pr_processor_t *pr);

#endif
