/* Loading an upload's tables in parallel, see loadall.h. */
#include "warehouse/loadall.h"

#include "common/err.h"
#include "common/mem.h"
#include "warehouse/pgload.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PARALLELISM 64

typedef struct run {
    json_object *cfg;
    const char *ns;
    wh_load_task_t *tasks;
    const wh_load_hooks_t *hooks;
    size_t *order; /* the tasks to load, in start order */
    size_t norder, next;
    size_t others_left; /* tasks other than users not finished */
    bool stopped;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* a table finished */
} run_t;

static bool is_users(const wh_load_task_t *t)
{
    return strcmp(t->table, "users") == 0;
}

/* Loads tasks one after another on its own connection until none is left to start. */
static void loader(run_t *r, wh_pg_t *w)
{
    pthread_mutex_lock(&r->mu);
    while (r->next < r->norder && !r->stopped) {
        if (r->hooks && r->hooks->stop && atomic_load(r->hooks->stop)) {
            r->stopped = true;
            break;
        }
        wh_load_task_t *t = &r->tasks[r->order[r->next]];
        if (is_users(t) && r->others_left > 0) {
            pthread_cond_wait(&r->cond, &r->mu);
            continue;
        }
        r->next++;
        if (r->hooks && r->hooks->started)
            r->hooks->started(t, r->hooks->opaque);
        pthread_mutex_unlock(&r->mu);
        t->error[0] = '\0';
        t->loaded = wh_pg_load(w, r->ns, t->table, t->path, t->error, sizeof(t->error));
        pthread_mutex_lock(&r->mu);
        if (r->hooks && r->hooks->finished)
            r->hooks->finished(t, r->hooks->opaque);
        if (!is_users(t))
            r->others_left--;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_cond_broadcast(&r->cond); /* a loader waiting for users must see the stop */
    pthread_mutex_unlock(&r->mu);
}

static void *loader_main(void *arg)
{
    run_t *r = arg;
    char err[512];
    wh_pg_t *w = wh_pg_connect(r->cfg, err, sizeof(err)); /* the caller's parse succeeded */
    if (w)
        loader(r, w);
    wh_pg_close(w);
    return NULL;
}

/* Whether x starts before y: users last, then the most rows first, then by name. */
static bool starts_before(const wh_load_task_t *x, const wh_load_task_t *y)
{
    if (is_users(x) != is_users(y))
        return is_users(y);
    if (x->rows != y->rows)
        return x->rows > y->rows;
    return strcmp(x->table, y->table) < 0;
}

int wh_pg_load_all(json_object *dest_config, const char *ns, wh_load_task_t *tasks, size_t n,
                   int parallelism, const wh_load_hooks_t *hooks, char *errstr, size_t errstr_size)
{
    if (parallelism < 1 || parallelism > MAX_PARALLELISM)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "load parallelism %d is not between 1 and %d", parallelism,
                          MAX_PARALLELISM);
    char err[512];
    wh_pg_t *w = wh_pg_connect(dest_config, err, sizeof(err));
    if (!w)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "%s", err);
    run_t r = {.cfg = dest_config, .ns = ns, .tasks = tasks, .hooks = hooks};
    r.order = sl_malloc((n ? n : 1) * sizeof(*r.order));
    for (size_t i = 0; i < n; i++) {
        tasks[i].loaded = 0;
        tasks[i].error[0] = '\0';
        if (tasks[i].skip)
            continue;
        r.order[r.norder++] = i;
        if (!is_users(&tasks[i]))
            r.others_left++;
    }
    for (size_t i = 1; i < r.norder; i++) /* an upload has a few dozen tables at most */
        for (size_t k = i; k > 0 && starts_before(&tasks[r.order[k]], &tasks[r.order[k - 1]]);
             k--) {
            size_t tmp = r.order[k];
            r.order[k] = r.order[k - 1];
            r.order[k - 1] = tmp;
        }
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cond, NULL);

    size_t nthreads = (size_t)parallelism < r.norder ? (size_t)parallelism : r.norder;
    /* A new namespace first, or the loads of its first upload queue behind its creation. A
     * failure here shows again in the loads. */
    if (nthreads > 1)
        wh_pg_namespace_ensure(w, ns, err, sizeof(err));
    pthread_t threads[MAX_PARALLELISM];
    size_t started = 0;
    for (size_t i = 1; i < nthreads; i++)
        if (pthread_create(&threads[started], NULL, loader_main, &r) == 0)
            started++;
    loader(&r, w); /* the calling thread is the first loader */
    for (size_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    wh_pg_close(w);

    int rc = 0;
    if (r.next < r.norder) {
        for (size_t i = r.next; i < r.norder; i++)
            snprintf(tasks[r.order[i]].error, sizeof(tasks[r.order[i]].error), "stopping");
        rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                        "stopping: %zu of %zu tables not loaded", r.norder - r.next, r.norder);
    }
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cond);
    free(r.order);
    return rc;
}
