/*
 * Replay: a range of offsets of the events topic, read again (by assignment, outside the
 * processor's consumer group) and processed again for chosen destinations only, through the
 * processor's batch mode (processor.h). Progress is the committed offsets of the replay's own
 * consumer group, committed in the same Kafka transactions as the jobs it produced, so an
 * interrupted replay resumes where it stopped and produces each job exactly once.
 */
#ifndef PR_REPLAY_H
#define PR_REPLAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"
#include "common/wsconf.h"

/* The offsets start up to (not including) end of one partition of the events topic. */
typedef struct pr_replay_range {
    int32_t partition;
    int64_t start, end;
} pr_replay_range_t;

/*
 * The ranges of every partition of the events topic holding the events whose Kafka
 * timestamps are in [from_ms, to_ms): from the first offset at or after from_ms to the first
 * at or after to_ms (as offsets_for_times finds them, the way kafka-consumer-groups does), or
 * to the partition's end when there is none. *ranges (caller frees) has one entry per
 * partition. Returns 0, or an error with errstr (no such topic, kafka unreachable, ...).
 */
int pr_replay_window(const sl_conf_t *conf, int64_t from_ms, int64_t to_ms,
                     pr_replay_range_t **ranges, size_t *nranges, char *errstr, size_t errstr_size);

/* Checks explicit ranges against the events topic: each partition exists and each range is
 * within the offsets the partition still holds. Returns 0, or an error naming the bad range. */
int pr_replay_check(const sl_conf_t *conf, const pr_replay_range_t *ranges, size_t n, char *errstr,
                    size_t errstr_size);

/* Where each range stands in group: next[i] is the next offset to replay (start when nothing
 * is committed, end when the range is done). Returns 0, or an error with errstr. */
int pr_replay_progress(const sl_conf_t *conf, const char *group, const pr_replay_range_t *ranges,
                       size_t n, int64_t *next, char *errstr, size_t errstr_size);

/* Starts group afresh: commits each range's start offset to it (whatever it held before). */
int pr_replay_reset(const sl_conf_t *conf, const char *group, const pr_replay_range_t *ranges,
                    size_t n, char *errstr, size_t errstr_size);

typedef struct pr_replay_opts {
    const char *group; /* progress; also the transactional.id of the replay's producer */
    const pr_replay_range_t *ranges;
    size_t nranges;
    const char *const *destinations; /* served; the other destinations get nothing */
    size_t ndestinations;
    double rate; /* events per second at most; 0: as fast as it goes */
    /* Called on the calling thread about 5 times a second and once at the end with events
     * done (committed or in the open transaction) and the total of the ranges. */
    void (*progress)(void *opaque, int64_t done, int64_t total);
    void *opaque;
    atomic_bool *stop; /* when set, the replay commits what it processed and returns */
} pr_replay_opts_t;

/*
 * Runs the replay on the calling thread from where group's progress stands to the ends of
 * the ranges. Returns 0 when every range is done, 1 when stopped (progress committed: run
 * it again to resume), or a negative error with errstr (progress up to the last committed
 * transaction is kept). *done gets the events done in all (may be NULL).
 */
int pr_replay_run(const sl_conf_t *conf, sl_wsconf_t *ws, const pr_replay_opts_t *o, int64_t *done,
                  char *errstr, size_t errstr_size);

#endif
