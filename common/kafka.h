/*
 * Kafka client helpers shared by every role: client configuration (our defaults, then the
 * user's librdkafka properties passed through), topic names, and an offset tracker that lets
 * a consumer commit only what is durable downstream.
 *
 * Roles use librdkafka's own API for producing and consuming; this module only builds the
 * handles the same way everywhere and routes librdkafka's logs and errors to ours.
 */
#ifndef SL_KAFKA_H
#define SL_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

#include "common/conf.h"

/* Topic suffixes: the full name is kafka.topic_prefix + suffix (default "sluice.events"). */
#define SL_TOPIC_EVENTS    "events"    /* gateway -> processor, keyed by rudderId */
#define SL_TOPIC_DELIVERY  "delivery"  /* processor -> router, keyed by rudderId */
#define SL_TOPIC_FAILED    "failed"    /* processor's dead letters, keyed by rudderId */
#define SL_TOPIC_WAREHOUSE "warehouse" /* processor -> warehouse, keyed by rudderId */

/* Every topic of the pipeline, for the dev broker and `sluice topics create`. NULL-terminated. */
#define SL_KAFKA_N_PIPELINE_TOPICS 4
extern const char *const sl_kafka_pipeline_topics[];

/* Consumer groups of the pipeline: the full name is kafka.topic_prefix + suffix. */
#define SL_GROUP_PROCESSOR "processor"       /* consumes SL_TOPIC_EVENTS */
#define SL_GROUP_ROUTER    "router"          /* consumes SL_TOPIC_DELIVERY */
#define SL_GROUP_WAREHOUSE "warehouse"       /* consumes SL_TOPIC_WAREHOUSE */
#define SL_GROUP_FAILED    "failed-recorder" /* consumes SL_TOPIC_FAILED */

/* The topic (full name) that the pipeline's consumer group `group` (full name) reads, or NULL
 * when group is not one of Sluice's. The caller frees the result. */
char *sl_kafka_group_topic(const sl_conf_t *conf, const char *group);

/* The pipeline's consumer groups, kafka.topic_prefix + group, each consuming prefix + topic.
 * Ends with {NULL, NULL}. */
typedef struct sl_kafka_group_def {
    const char *group, *topic;
} sl_kafka_group_def_t;
extern const sl_kafka_group_def_t sl_kafka_pipeline_groups[];

/* Creates the pipeline's topics that do not exist yet (kafka.partitions partitions,
 * kafka.replication_factor replicas, kafka.retention), so consumers never subscribe to a
 * missing topic. Returns 0, or an error (e.g. not authorized) in errstr; callers log it and go
 * on, since the cluster may auto-create topics or an operator may have created them. */
int sl_kafka_ensure_topics(const sl_conf_t *conf, char *errstr, size_t errstr_size);

/* What sl_kafka_create_topics did for one topic. */
typedef struct sl_kafka_topic_status {
    char *name;              /* owned */
    rd_kafka_resp_err_t err; /* NO_ERROR: created; TOPIC_ALREADY_EXISTS; else the failure */
    char *errstr;            /* owned; the failure's message, NULL unless it failed */
    int partitions;          /* partition count as created or found; -1 unknown */
    int replication_factor;  /* replicas as created or found; -1 unknown */
} sl_kafka_topic_status_t;

/* Asks the cluster to create every pipeline topic (see sl_kafka_ensure_topics) and fills
 * st[SL_KAFKA_N_PIPELINE_TOPICS] with each one's outcome; free them with
 * sl_kafka_topic_status_clear. Returns 0 when the cluster answered (per-topic failures are in
 * st), or an error in errstr: SL_ERR_INVALID for the dev broker, which has no CreateTopics, or
 * for a bad configuration; SL_ERR_TRANSIENT when the cluster did not answer. */
int sl_kafka_create_topics(const sl_conf_t *conf, sl_kafka_topic_status_t *st, char *errstr,
                           size_t errstr_size);
void sl_kafka_topic_status_clear(sl_kafka_topic_status_t *st, size_t n);

/*
 * Admin clients, for commands that manage topics and consumer groups. A handle from
 * sl_kafka_admin_new is a consumer without a group, reading offsets as Kafka's own tools do
 * (isolation.level=read_uncommitted); the caller destroys it with rd_kafka_destroy.
 */
#define SL_KAFKA_ADMIN_TIMEOUT_MS 10000
rd_kafka_t *sl_kafka_admin_new(const sl_conf_t *conf, char *errstr, size_t errstr_size);
/* A consumer named after group that never subscribes, so never joins it: a group's committed
 * offsets are read (rd_kafka_committed) and written (rd_kafka_commit) through it, as Kafka
 * takes them from a consumer that assigns its own partitions. Not the Admin API's
 * ListConsumerGroupOffsets or AlterConsumerGroupOffsets, which in librdkafka 2.0.2 abort the
 * process when the connection to the group's coordinator drops under them (issue 4605).
 * Destroy it with sl_kafka_group_reader_destroy. */
rd_kafka_t *sl_kafka_group_reader_new(const sl_conf_t *conf, const char *group,
                                      const char *client_id, char *errstr, size_t errstr_size);
void sl_kafka_group_reader_destroy(rd_kafka_t *rk);
/* AdminOptions for op with SL_KAFKA_ADMIN_TIMEOUT_MS as request (and operation) timeout; the
 * caller destroys them. */
rd_kafka_AdminOptions_t *sl_kafka_admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op);
/* Waits for the result of an Admin API call on q. Returns the event (the caller destroys it),
 * or NULL with errstr naming `what` when there was no answer in time or the whole request
 * failed. */
/* Whether rk's cluster is the embedded dev broker (librdkafka's mock cluster), which has no
 * CreateTopics, DescribeConfigs, ListGroups or DescribeGroups: 1 yes, 0 no, or an error in
 * errstr when the cluster can't be reached. */
int sl_kafka_is_dev_broker(rd_kafka_t *rk, char *errstr, size_t errstr_size);
/* The test both use: the cluster id in rk's metadata (the mock cluster's is "mockCluster..."),
 * waiting up to timeout_ms for it (0: only what rk already knows): 1 yes, 0 no, -1 not known. */
int sl_kafka_cluster_is_dev(rd_kafka_t *rk, int timeout_ms);
#define SL_KAFKA_DEV_NO_TOPICS                                                                     \
    "kafka.brokers is the embedded dev broker (`sluice dev-kafka`, or `sluice all` without "       \
    "kafka.brokers), which can't create or describe topics (no CreateTopics or "                   \
    "DescribeConfigs). It needs none: it creates the pipeline's topics when it starts "            \
    "(kafka.partitions partitions each) and any other topic on first use. On a real cluster, run " \
    "this again with kafka.brokers (SLUICE_KAFKA_BROKERS) pointing at it"
rd_kafka_event_t *sl_kafka_admin_wait(rd_kafka_queue_t *q, const char *what, char *errstr,
                                      size_t errstr_size);

/* Returns prefix + suffix; the caller frees it. */
char *sl_kafka_topic(const sl_conf_t *conf, const char *suffix);

/* The health check that says whether the brokers can be reached: made unhealthy by librdkafka's
 * errors (all brokers down, resolve, authentication, SSL) on any handle made with
 * sl_kafka_conf_new, healthy again once the cluster answers a metadata request. */
#define SL_KAFKA_HEALTH_BROKERS "kafka_brokers"

typedef enum sl_kafka_role { SL_KAFKA_PRODUCER, SL_KAFKA_CONSUMER } sl_kafka_role_t;

/*
 * Builds a librdkafka configuration: bootstrap.servers from kafka.brokers; for producers
 * enable.idempotence=true, acks=all, partitioner=murmur2_random; for consumers group.id,
 * enable.auto.commit=false, auto.offset.reset=earliest, isolation.level=read_committed,
 * fetch.wait.max.ms=100.
 * Then the pass-through properties from the configuration, which win over our defaults.
 * librdkafka's log and error callbacks go to sl_log and to the "kafka" health check.
 * Returns NULL with errstr naming the bad property. The caller owns the result (until it is
 * handed to rd_kafka_new).
 */
rd_kafka_conf_t *sl_kafka_conf_new(const sl_conf_t *conf, sl_kafka_role_t role,
                                   const char *group_id, char *errstr, size_t errstr_size);

/* librdkafka's log callback that sl_kafka_conf_new installs: a line on sl_log, component
 * "kafka", naming the client (rd_kafka_name), for clients configured elsewhere. Called from
 * librdkafka's threads. */
void sl_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

/* A producer with sl_kafka_conf_new's settings. dr_msg_cb (may be NULL) is called from
 * rd_kafka_poll()/rd_kafka_flush() with the per-message opaque; opaque is the rk opaque.
 * Fails with errstr when kafka.brokers is empty or the configuration is invalid. */
rd_kafka_t *sl_kafka_producer_new(const sl_conf_t *conf,
                                  void (*dr_msg_cb)(rd_kafka_t *rk, const rd_kafka_message_t *m,
                                                    void *opaque),
                                  void *opaque, char *errstr, size_t errstr_size);

/* A consumer in group_id subscribed to the NULL-terminated topics. On a rebalance the
 * assignment is applied; before partitions are revoked, revoke_cb (may be NULL) is called so
 * the role can commit what is durable and forget the rest. */
rd_kafka_t *sl_kafka_consumer_new(
    const sl_conf_t *conf, const char *group_id, const char *const *topics,
    void (*revoke_cb)(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque),
    void *opaque, char *errstr, size_t errstr_size);

/* Called after partitions are assigned (their positions are not fetched yet), on the thread
 * that polls the consumer. */
void sl_kafka_consumer_on_assign(rd_kafka_t *rk,
                                 void (*assign_cb)(rd_kafka_t *rk,
                                                   const rd_kafka_topic_partition_list_t *parts,
                                                   void *opaque));

/* Destroys a consumer made by sl_kafka_consumer_new (after rd_kafka_consumer_close). */
void sl_kafka_consumer_destroy(rd_kafka_t *rk);

/*
 * A fetch nudger for a consumer that reads faster than librdkafka 2.0.2 refills its queue.
 * Once the pre-fetch queue holds queued.max.messages.kbytes, librdkafka stops fetching and
 * looks again only when the partition leader's broker thread wakes up, which with nothing to
 * do is a second later (librdkafka issue #2879, fetch.queue.backoff.ms in 2.2): a consumer
 * that empties its queue in less waits out the rest of that second. The nudger wakes those
 * threads: each kick (at most one per SL_KAFKA_NUDGE_MS) makes it ask the leaders of the
 * assigned partitions for their end offsets, a request each broker thread serves, then looks
 * at its partitions again. The consuming thread tells it the bytes of each message it takes
 * (sl_kafka_nudger_took); it kicks each time half a full queue was taken, so a queue that had
 * filled is refetched while half of it is still there, at a cost of one request to each
 * leader per half queue consumed.
 */
#define SL_KAFKA_NUDGE_MS 10
typedef struct sl_kafka_nudger sl_kafka_nudger_t;
sl_kafka_nudger_t *sl_kafka_nudger_start(rd_kafka_t *consumer);
/* From the consuming thread only; n may be NULL (no nudger). */
void sl_kafka_nudger_took(sl_kafka_nudger_t *n, size_t bytes);
/* Stops the thread; before the consumer is closed. */
void sl_kafka_nudger_stop(sl_kafka_nudger_t *n);
/* The consumer's queued.max.messages.kbytes, in bytes. */
size_t sl_kafka_queue_bytes(rd_kafka_t *consumer);

/*
 * Offset tracker: commit only offsets whose work is durable downstream.
 * The consumer thread calls _track for each message in the order consumed; any thread calls
 * _done when that message's work is durable (in any order). _commit commits, per partition,
 * the offset after the longest run of done messages from the start. Thread-safe.
 */
typedef struct sl_kafka_offsets sl_kafka_offsets_t;

sl_kafka_offsets_t *sl_kafka_offsets_new(void);
void sl_kafka_offsets_destroy(sl_kafka_offsets_t *o);
void sl_kafka_offsets_track(sl_kafka_offsets_t *o, const char *topic, int32_t partition,
                            int64_t offset);
void sl_kafka_offsets_done(sl_kafka_offsets_t *o, const char *topic, int32_t partition,
                           int64_t offset);
/* Messages tracked but not yet done, over all partitions. */
size_t sl_kafka_offsets_pending(sl_kafka_offsets_t *o);
/* Commits what is committable (async unless sync). A partition with nothing pending is
 * committed up to the consumer's position, past the transaction markers the application never
 * sees, so a consumer of a transactional topic reaches a lag of 0. Call it on the thread that
 * polls the consumer, after tracking every message polled (the position covers them all).
 * Returns 0 or an rd_kafka_resp_err_t. */
int sl_kafka_offsets_commit(sl_kafka_offsets_t *o, rd_kafka_t *consumer, bool sync);
/* Forgets the partitions (after a revoke); their uncommitted messages will be redelivered. */
void sl_kafka_offsets_forget(sl_kafka_offsets_t *o, const rd_kafka_topic_partition_list_t *parts);

#endif
