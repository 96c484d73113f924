/*
 * The warehouse role: a consumer group on the warehouse topic that turns the events of
 * warehouse destinations into rows (schema.h), writes them every sync as Avro staging files
 * (staging.h), records each sync as an upload in Postgres (uploads.h) and only then commits
 * the offsets; worker threads claim due uploads (any instance's) and load them into the
 * destination's warehouse (pgload.h), retrying failed ones with backoff.
 */
#ifndef WH_WAREHOUSE_H
#define WH_WAREHOUSE_H

#include <stddef.h>

#include "common/conf.h"
#include "common/wsconf.h"

typedef struct wh_warehouse wh_warehouse_t;

/* Starts the consumer, the upload workers and the lease/metrics thread. ws is borrowed and
 * must outlive the role (destination configs and namespaces are read from it at each sync
 * and each load). Postgres must be migrated. Returns NULL with errstr. Options read:
 * warehouse.staging_dir, .sync_interval, .instance_id, .retry_base, .max_buffered_events,
 * .workers, .load_parallelism, .lease, .port (for the default instance id), postgres.dsn and
 * the kafka.* options. Removes the staging directories nothing will read again (of no recorded
 * upload, or of an exported one). Called from the main thread. */
wh_warehouse_t *wh_warehouse_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size);

/* Stops consuming and writes what is buffered as uploads (or leaves it uncommitted in Kafka
 * when Postgres is away); workers finish the table they are loading and give their uploads
 * back, to be resumed by any instance. Frees wh (NULL is fine). Called from the main thread. */
void wh_warehouse_stop(wh_warehouse_t *wh);

#endif
