/*
 * Dedup by messageId, per partition of the events topic, within a time window. A user's
 * events share a partition (they are keyed by rudderId), so a retried event meets its first
 * copy in the same partition, whichever processor instance owns it.
 *
 * Memory is bounded: each partition keeps at most max_ids 64-bit hashes of messageIds, oldest
 * dropped first, and nothing older than the window. The owner rebuilds a partition's set from
 * the topic when it is assigned (see processor.c), so the window survives restarts and
 * rebalances. Not thread-safe: the processor thread owns it.
 */
#ifndef PR_DEDUP_H
#define PR_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pr_dedup pr_dedup_t;

pr_dedup_t *pr_dedup_new(int64_t window_ms, size_t max_ids);
void pr_dedup_free(pr_dedup_t *d);

/* True if message_id was seen in partition within window_ms before ts_ms (a duplicate);
 * otherwise records it (at ts_ms) and returns false. */
bool pr_dedup_seen(pr_dedup_t *d, int32_t partition, const char *message_id, size_t len,
                   int64_t ts_ms);
/* Forgets a partition (revoked, or about to be rebuilt). */
void pr_dedup_forget(pr_dedup_t *d, int32_t partition);
/* messageIds held for a partition. */
size_t pr_dedup_size(const pr_dedup_t *d, int32_t partition);

#endif
