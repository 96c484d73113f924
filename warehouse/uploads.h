/*
 * Upload bookkeeping in Postgres (migration 0006): an upload is one sync of one (source,
 * destination), with its staging files, its state (the state machine of REFERENCE.md), its
 * table loads and every transition. Instances claim due uploads with a lease; every write on a
 * claimed upload checks that the claim is still ours.
 *
 * Functions take an sl_pg_t (one connection, so one thread at a time) and return 0 or an
 * SL_ERR_* with errstr.
 */
#ifndef WH_UPLOADS_H
#define WH_UPLOADS_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pg.h"

/* States, as stored in sluice_wh_uploads.state. */
#define WH_WAITING           "waiting"
#define WH_GENERATING        "generating_load_files"
#define WH_GENERATING_FAILED "generating_load_files_failed"
#define WH_EXPORTING         "exporting_data"
#define WH_EXPORTING_FAILED  "exporting_data_failed"
#define WH_EXPORTED          "exported_data"
#define WH_ABORTED           "aborted"

/* The abort rule: an upload that failed is aborted once it made this many attempts and its
 * first attempt is this old (REFERENCE.md). */
#define WH_ABORT_ATTEMPTS 3
#define WH_ABORT_AFTER_MS (180LL * 60 * 1000)

/* One staging file of a new upload. Strings are borrowed. */
typedef struct wh_staged {
    const char *table;
    const char *path;
    int64_t rows;
    int64_t bytes;
} wh_staged_t;

/* A new upload as the consumer records it. Strings are borrowed. */
typedef struct wh_upload_new {
    const char *source_id, *destination_id, *destination_type, *namespace;
    int64_t events, rows;
    int64_t first_event_ms, last_event_ms; /* received_at of the events, 0 = unknown */
    const char *kafka_topic;
    const char *kafka_offsets; /* JSON {"<partition>": [first, last]}, or NULL */
    const wh_staged_t *files;
    size_t nfiles;
} wh_upload_new_t;

/* Reserves the id of the next upload (its staging directory is named after it). */
int wh_uploads_next_id(sl_pg_t *pg, int64_t *id, char *errstr, size_t errstr_size);

/* The state of upload id: 1 with state, 0 when no upload has that id, or an SL_ERR_*. */
int wh_uploads_state(sl_pg_t *pg, int64_t id, char *state, size_t state_size, char *errstr,
                     size_t errstr_size);

/* Records upload id (state waiting) with its staging files, in one statement: all or nothing.
 * instance names the recorder in the upload's history. */
int wh_uploads_record(sl_pg_t *pg, int64_t id, const wh_upload_new_t *u, const char *instance,
                      char *errstr, size_t errstr_size);

/* A claimed upload. The caller frees it with wh_upload_free. */
typedef struct wh_upload {
    int64_t id;
    char *source_id, *destination_id, *destination_type, *namespace, *state;
    int attempts;
    int64_t events, rows_staged;
    char *claim; /* the claim token it was claimed with (borrowed from the claimer's call) */
} wh_upload_t;

void wh_upload_free(wh_upload_t *u);

/* Claims the oldest due upload that is not finished, not claimed by a live lease, and not
 * behind an unfinished older upload of its (source, destination) (uploads of one destination
 * load in order). The claim lasts lease_ms; claim is the claimer's token (instance#worker).
 * Returns 1 with *u, 0 when there is nothing to do, or an SL_ERR_*. */
int wh_uploads_claim(sl_pg_t *pg, const char *claim, int64_t lease_ms, wh_upload_t *u, char *errstr,
                     size_t errstr_size);

/* Voids the claims of an earlier run of this instance (tokens "<instance>#..."), so that its
 * uploads are taken up at once after a restart instead of after their lease. Call it before
 * the instance's workers start. Returns the number released, or an SL_ERR_*. */
int wh_uploads_release_instance(sl_pg_t *pg, const char *instance, char *errstr,
                                size_t errstr_size);

/* Extends the lease of every upload an instance's workers hold. */
int wh_uploads_renew(sl_pg_t *pg, const char *instance, int64_t lease_ms, char *errstr,
                     size_t errstr_size);

/* Moves claimed upload u to state, extends its lease and records the transition;
 * new_attempt counts an attempt (attempts + 1, first/last attempt times). Returns 0, or
 * SL_ERR_NOTFOUND when the claim is no longer ours (another instance took the upload over:
 * stop working on it). */
int wh_uploads_set_state(sl_pg_t *pg, wh_upload_t *u, const char *state, bool new_attempt,
                         int64_t lease_ms, char *errstr, size_t errstr_size);

/* A step failed: the upload goes to failed_state with error and is due again after
 * retry_base_ms doubled per attempt (at most an hour), or to aborted under the abort rule.
 * Releases the claim. *aborted (may be NULL) says which. */
int wh_uploads_fail(sl_pg_t *pg, wh_upload_t *u, const char *failed_state, const char *error,
                    int64_t retry_base_ms, bool *aborted, char *errstr, size_t errstr_size);

/* The upload is loaded: exported_data with its rows loaded; releases the claim. */
int wh_uploads_finish(sl_pg_t *pg, wh_upload_t *u, int64_t rows_loaded, char *errstr,
                      size_t errstr_size);

/* Gives claimed upload u back unchanged (its state stays), due now: a stopping instance's
 * work for any instance to resume. */
int wh_uploads_release(sl_pg_t *pg, wh_upload_t *u, char *errstr, size_t errstr_size);

/* The staging files of an upload with their table uploads (created waiting where missing),
 * for the exporter. */
typedef struct wh_table_job {
    char *table, *path, *state;
    int64_t rows, rows_loaded;
} wh_table_job_t;

/* Reads upload_id's staging files and makes a table upload for each (waiting) unless one
 * exists. *jobs is ordered for loading: tables by name, `users` after `identifies`. The caller
 * frees it with wh_table_jobs_free. */
int wh_uploads_tables(sl_pg_t *pg, int64_t upload_id, wh_table_job_t **jobs, size_t *n,
                      char *errstr, size_t errstr_size);
void wh_table_jobs_free(wh_table_job_t *jobs, size_t n);

/* Records a table upload's state (exporting_data, exported_data, exporting_data_failed),
 * rows loaded and error (may be NULL). */
int wh_uploads_table_state(sl_pg_t *pg, int64_t upload_id, const char *table, const char *state,
                           int64_t rows_loaded, const char *error, char *errstr,
                           size_t errstr_size);

/* Uploads for `sluice warehouse uploads`, newest first, at most limit, of one destination if
 * destination_id is not NULL: a JSON array of objects (id, sourceId, destinationId, namespace,
 * state, attempts, error, events, rowsStaged, rowsLoaded, createdAt, updatedAt,
 * firstAttemptAt, lastAttemptAt, nextAttemptAt, claimedBy, tables: [{table, state, rows,
 * rowsLoaded, error}]). *out is owned by the caller (json_object_put). */
int wh_uploads_list(sl_pg_t *pg, const char *destination_id, long limit, json_object **out,
                    char *errstr, size_t errstr_size);

/* Makes an aborted or failed upload waiting and due now, with a fresh attempt budget, and
 * its failed table loads waiting. Returns 0, SL_ERR_NOTFOUND (no such upload) or
 * SL_ERR_INVALID (it is not aborted or failed: errstr says its state). */
int wh_uploads_retry(sl_pg_t *pg, int64_t id, char *errstr, size_t errstr_size);

/* Uploads per state, over every destination, for the metrics: calls fn for each state. */
int wh_uploads_count_states(sl_pg_t *pg, void (*fn)(const char *state, int64_t n, void *opaque),
                            void *opaque, char *errstr, size_t errstr_size);

#endif
