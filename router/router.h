/*
 * The router role: a consumer group on the delivery topic. Delivers each job over HTTP with
 * retries and backoff, in order per (destination, user), records each job's final state in
 * Postgres, and commits offsets only for jobs whose outcome is recorded.
 */
#ifndef RT_ROUTER_H
#define RT_ROUTER_H

#include <stddef.h>

#include "common/conf.h"
#include "common/wsconf.h"

typedef struct rt_router rt_router_t;

/* Creates router.workers delivery loops, each with its consumer in the group, its status
 * writer and its thread, and starts them.
 * ws is borrowed and must outlive the router: a job whose destination is not in the current
 * workspace config is aborted (NULL skips that check). Returns NULL with errstr. Options read:
 * router.workers, .timeout, .retry_base, .retry_max, .give_up_after, .min_attempts,
 * postgres.dsn and the kafka.* options. */
rt_router_t *rt_router_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                             size_t errstr_size);
/* Stops consuming; jobs in progress finish their current attempt, their outcome is recorded
 * and committed; jobs not finished stay uncommitted in Kafka and are delivered after restart. */
void rt_router_stop(rt_router_t *rt);

#endif
