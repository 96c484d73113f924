/*
 * Loading the tables of one upload into a Postgres warehouse in parallel: up to `parallelism`
 * connections, each loading one table at a time with wh_pg_load() (one COPY in one
 * transaction per table, pgload.h). Tables start largest first, so the big ones overlap and the
 * small ones fill the gaps; `users` starts only once every other table is done (a user's row is
 * upserted after the identifies of the upload). A table that fails does not stop the others.
 */
#ifndef WH_LOADALL_H
#define WH_LOADALL_H

#include <json-c/json.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One table of an upload. */
typedef struct wh_load_task {
    const char *table, *path; /* borrowed */
    int64_t rows;             /* rows staged: bigger tables start first */
    bool skip;                /* already loaded: not started, no hooks */
    long loaded;              /* out: rows written (wh_pg_load's result), or a negative sl_err_t */
    char error[1024];         /* out: why, when loaded < 0 */
} wh_load_task_t;

/* Calls around each table's load, one at a time (under the loader's lock, so they may share
 * one connection); either may be NULL. */
typedef struct wh_load_hooks {
    void (*started)(wh_load_task_t *t, void *opaque);
    void (*finished)(wh_load_task_t *t, void *opaque); /* t->loaded and t->error are set */
    void *opaque;
    atomic_bool *stop; /* when it becomes true no further table starts (may be NULL) */
} wh_load_hooks_t;

/* Loads the tasks not skipped into namespace ns of the POSTGRES destination dest_config over up
 * to parallelism connections (1 to 64; the calling thread is one of the loaders). Returns 0 once
 * every task ran (each with its own result), SL_ERR_TRANSIENT when stop came before every task
 * started (the others have loaded = 0 and error "stopping"), or SL_ERR_INVALID for a bad
 * config, with errstr. */
int wh_pg_load_all(json_object *dest_config, const char *ns, wh_load_task_t *tasks, size_t n,
                   int parallelism, const wh_load_hooks_t *hooks, char *errstr, size_t errstr_size);

#endif
