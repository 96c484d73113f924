/*
 * Consumer lag of Kafka consumer groups: per group, topic and partition the committed offset,
 * the end offset (high watermark), the lag in messages and in seconds, and a Burrow-style
 * status evaluated over a sliding window of samples. Used by `sluice lag` and by the roles'
 * /metrics (kafka-lag-exporter names).
 *
 * Lag in seconds is the age of the oldest unconsumed message: now minus the timestamp of the
 * message at the committed offset (read with a plain assigned reader, never committing).
 *
 * Status follows Burrow's evaluation rules, applied to the window of samples instead of to
 * the window of offset commits Burrow reads from __consumer_offsets (see sl_lag_evaluate).
 */
#ifndef SL_LAG_H
#define SL_LAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/conf.h"

/* Burrow's status constants, with its numbering (the value of sluice_consumergroup_status).
 * A group is OK, WARN or ERR (or NOTFOUND); a partition OK, WARN, STOP, STALL or REWIND. */
typedef enum sl_lag_status {
    SL_LAG_NOTFOUND = 0,
    SL_LAG_OK = 1,
    SL_LAG_WARN = 2,
    SL_LAG_ERR = 3,
    SL_LAG_STOP = 4,
    SL_LAG_STALL = 5,
    SL_LAG_REWIND = 6
} sl_lag_status_t;

const char *sl_lag_status_name(sl_lag_status_t s);

/* One sample of a partition: when, the committed offset (-1: none) and the lag then. */
typedef struct sl_lag_obs {
    int64_t time_ms, offset, lag;
} sl_lag_obs_t;

/*
 * Burrow's rules for one partition over its window w[0..n-1] (oldest first), in order:
 *   1. the lag of the latest sample is 0: OK; the lag of an earlier sample is 0: WARN if the
 *      lag never went down since that sample, else OK (Burrow says OK for any zero; Sluice
 *      says WARN for a consumer that was caught up within the window and has fallen behind
 *      since, so a consumer that stops goes OK, WARN, then STOP or STALL);
 *   2. the committed offset went back between two samples: REWIND;
 *   3. the committed offset did not move over the window and no member of the group holds
 *      the partition now (owned == 0): STOP;
 *   4. the committed offset did not move over the window: STALL;
 *   5. the offset moved but the lag never went down from one sample to the next: WARN;
 *   6. otherwise OK.
 * Burrow tells a stopped consumer by its commits ceasing for longer than its window spans,
 * and a stalled one by commits that repeat the same offset. Kafka keeps no commit times that a
 * client can read, and Sluice's roles commit only when they progress, so rules 3 and 4 tell
 * the two apart by the group's membership. owned: 1 held, 0 not held, -1 unknown (then rule 3
 * never applies and a consumer that is gone shows as STALL). n == 0 is OK.
 */
sl_lag_status_t sl_lag_evaluate(const sl_lag_obs_t *w, size_t n, int owned);

typedef struct sl_lag_partition {
    const char *topic;
    int32_t partition;
    int64_t committed;  /* -1: the group committed nothing here */
    int64_t start, end; /* log start offset and high watermark */
    int64_t lag;        /* end - committed (end - start without a commit), at least 0 */
    double lag_seconds; /* age of the message at the committed offset; 0 without lag; -1 unknown */
    sl_lag_status_t status;
    const char *consumer_id, *host, *client_id; /* the member holding it; NULL: none or unknown */
    size_t samples;                             /* in the window */
} sl_lag_partition_t;

typedef struct sl_lag_group {
    const char *group;
    const char *state;      /* "Stable", "Empty", "Dead", ...; NULL when membership is unknown */
    const char *error;      /* why the last sample has no figures for the group, or NULL */
    sl_lag_status_t status; /* OK, WARN, ERR (any partition STOP, STALL or REWIND), NOTFOUND */
    int64_t total_lag, max_lag;
    double max_lag_seconds;
    const sl_lag_partition_t *parts;
    size_t nparts;
} sl_lag_group_t;

typedef struct sl_lag sl_lag_t;

/* A sampler with its own Kafka client (kafka.brokers and the pass-through properties) keeping
 * `window` samples per partition (at least 1). Returns NULL with errstr on a bad configuration.
 * Not thread-safe: one thread samples and reads it. Free with sl_lag_destroy. */
sl_lag_t *sl_lag_new(const sl_conf_t *conf, size_t window, char *errstr, size_t errstr_size);
void sl_lag_destroy(sl_lag_t *l);

/* Watches group (copied): on topic (copied; every partition of it), or, topic NULL, on the
 * partitions the group has committed offsets for or its members hold. Adding a group twice
 * is a no-op. */
void sl_lag_add_group(sl_lag_t *l, const char *group, const char *topic);

/* Every sample also lists the cluster's consumer groups (ListGroups) and watches the new
 * ones. The dev broker has no ListGroups: sampling then fails with a message saying so. */
void sl_lag_all_groups(sl_lag_t *l, bool all);
/* How long one request or metadata call may take (default 10 s; tests shorten it). */
void sl_lag_set_timeout(sl_lag_t *l, int timeout_ms);

/* Takes one sample of every watched group. Returns 0 (a group that could not be read has its
 * error set), or an sl_err_t with errstr when nothing could be read (Kafka unreachable,
 * groups not listable). */
int sl_lag_sample(sl_lag_t *l, char *errstr, size_t errstr_size);

/* The groups as of the last sample, in the order added. Valid until the next sample or
 * destroy. */
size_t sl_lag_groups(const sl_lag_t *l, const sl_lag_group_t **groups);

/* A remark on the last sample for the user (e.g. membership unknown on the dev broker), or
 * NULL. */
const char *sl_lag_note(const sl_lag_t *l);

/* Sets the gauges of the last sample on /metrics (kafka-lag-exporter names):
 * kafka_consumergroup_group_offset, _group_lag, _group_lag_seconds {group,topic,partition},
 * kafka_partition_latest_offset, kafka_partition_earliest_offset {topic,partition},
 * kafka_consumergroup_group_max_lag, _group_max_lag_seconds, _group_sum_lag {group},
 * kafka_consumergroup_group_topic_sum_lag {group,topic}, and Burrow's status as
 * sluice_consumergroup_status {group} and sluice_consumergroup_partition_status
 * {group,topic,partition}. */
void sl_lag_publish(const sl_lag_t *l);

/* A background thread that samples groups[i] on topics[i] (n of each) every interval_ms
 * with a window of `window` samples and publishes them; failures are logged. Returns NULL
 * (and logs why) when the sampler can't be made. Stop and free with sl_lag_monitor_stop. */
typedef struct sl_lag_monitor sl_lag_monitor_t;
sl_lag_monitor_t *sl_lag_monitor_start(const sl_conf_t *conf, const char *const *groups,
                                       const char *const *topics, size_t n, int64_t interval_ms,
                                       size_t window);
void sl_lag_monitor_stop(sl_lag_monitor_t *m);

#endif
