/*
 * Keeps the current workspace config, see wsconf.h. A background thread watches the file or
 * URL; readers take a reference to the current snapshot under a mutex.
 */
#include "common/wsconf.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/pg.h"
#include "common/timeutil.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_CONFIG_BYTES (64 * 1024 * 1024)

struct sl_wsconf {
    char *location;
    bool is_url;
    int64_t poll_ms;
    sl_pg_t *pg; /* NULL: no last good config kept */
    pthread_mutex_t lock;
    sl_workspace_t *cur;
    atomic_uint_least64_t generation;
    bool from_location; /* cur came from the location (not from Postgres) */
    bool need_save;
    char loaded_at[SL_TIME_STRLEN];
    struct stat st;             /* file: what was last read */
    char *etag, *last_modified; /* URL: validators of what was last read */
    int wake[2];
    atomic_bool stop;
    pthread_t thread;
};

typedef enum { LOAD_NEW, LOAD_UNCHANGED, LOAD_ERROR } load_result_t;

static size_t on_body(char *p, size_t size, size_t n, void *opaque)
{
    sl_buf_t *b = opaque;
    if (b->len + size * n > MAX_CONFIG_BYTES)
        return 0;
    sl_buf_append(b, p, size * n);
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *opaque)
{
    sl_wsconf_t *w = opaque;
    size_t len = size * n;
    char **slot = NULL;
    size_t skip = 0;
    if (len > 5 && strncasecmp(p, "ETag:", 5) == 0) {
        slot = &w->etag;
        skip = 5;
    } else if (len > 14 && strncasecmp(p, "Last-Modified:", 14) == 0) {
        slot = &w->last_modified;
        skip = 14;
    }
    if (slot) {
        const char *v = p + skip;
        size_t vl = len - skip;
        while (vl && (*v == ' ' || *v == '\t')) {
            v++;
            vl--;
        }
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        free(*slot);
        *slot = sl_strndup(v, vl);
    }
    return len;
}

/* Reads the location. LOAD_UNCHANGED when the file or URL says nothing changed (force reads
 * anyway). Fills body on LOAD_NEW, errstr on LOAD_ERROR. */
static load_result_t read_location(sl_wsconf_t *w, bool force, sl_buf_t *body, char *errstr,
                                   size_t errstr_size)
{
    if (!w->is_url) {
        struct stat st;
        if (stat(w->location, &st) < 0) {
            sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "could not read \"%s\": %s",
                       w->location, strerror(errno));
            return LOAD_ERROR;
        }
        if (!force && st.st_mtim.tv_sec == w->st.st_mtim.tv_sec &&
            st.st_mtim.tv_nsec == w->st.st_mtim.tv_nsec && st.st_size == w->st.st_size &&
            st.st_ino == w->st.st_ino)
            return LOAD_UNCHANGED;
        FILE *f = fopen(w->location, "r");
        if (!f) {
            sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "could not read \"%s\": %s",
                       w->location, strerror(errno));
            return LOAD_ERROR;
        }
        char chunk[65536];
        size_t n;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && body->len < MAX_CONFIG_BYTES)
            sl_buf_append(body, chunk, n);
        fclose(f);
        w->st = st;
        return LOAD_NEW;
    }
    CURL *c = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    if (!force && w->etag) {
        char *h = sl_asprintf("If-None-Match: %s", w->etag);
        hdrs = curl_slist_append(hdrs, h);
        free(h);
    }
    if (!force && w->last_modified) {
        char *h = sl_asprintf("If-Modified-Since: %s", w->last_modified);
        hdrs = curl_slist_append(hdrs, h);
        free(h);
    }
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, w->location);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, w);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "could not fetch \"%s\": %s", w->location,
                   *cerr ? cerr : curl_easy_strerror(rc));
        return LOAD_ERROR;
    }
    if (status == 304)
        return LOAD_UNCHANGED;
    if (status != 200) {
        sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "could not fetch \"%s\": HTTP %ld",
                   w->location, status);
        return LOAD_ERROR;
    }
    return LOAD_NEW;
}

static void swap_in(sl_wsconf_t *w, sl_workspace_t *ws, bool from_location)
{
    pthread_mutex_lock(&w->lock);
    sl_workspace_t *old = w->cur;
    w->cur = ws;
    w->from_location = from_location;
    w->need_save = from_location && w->pg;
    sl_time_format_ms(sl_time_now_ms(), w->loaded_at);
    pthread_mutex_unlock(&w->lock);
    atomic_fetch_add(&w->generation, 1);
    if (old)
        sl_workspace_unref(old);
    sl_info("workspace", "using workspace config version %.12s (%zu sources) from %s",
            sl_workspace_version(ws), sl_workspace_nsources(ws),
            from_location ? w->location : "postgres (last good)");
}

/* Checks the location once; swaps in a valid new version. Returns 0 or an error. */
static int refresh(sl_wsconf_t *w, bool force, char *errstr, size_t errstr_size)
{
    sl_buf_t body = SL_BUF_INIT;
    char err[1024];
    int rc = 0;
    load_result_t lr = read_location(w, force, &body, err, sizeof(err));
    if (lr == LOAD_UNCHANGED)
        goto out;
    sl_workspace_t *ws = NULL;
    if (lr == LOAD_NEW &&
        sl_workspace_parse(body.data ? body.data : "", body.len, &ws, err, sizeof(err)) != 0) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "workspace config at \"%s\" is invalid: %s", w->location, err);
        goto out;
    }
    if (lr == LOAD_ERROR) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "%s", err);
        goto out;
    }
    bool same = w->cur && strcmp(sl_workspace_version(w->cur), sl_workspace_version(ws)) == 0;
    if (same && w->from_location) {
        sl_workspace_unref(ws);
    } else {
        swap_in(w, ws, true);
    }
    sl_health_set("workspace", true, NULL);
out:
    sl_buf_free(&body);
    return rc;
}

static void save_last_good(sl_wsconf_t *w)
{
    pthread_mutex_lock(&w->lock);
    sl_workspace_t *ws = w->need_save ? sl_workspace_ref(w->cur) : NULL;
    pthread_mutex_unlock(&w->lock);
    if (!ws)
        return;
    const char *params[] = {w->location, sl_workspace_version(ws), sl_workspace_text(ws)};
    char err[512];
    int rc = sl_pg_exec(w->pg,
                        "INSERT INTO sluice_workspace_config (location, version, config) "
                        "VALUES ($1, $2, $3::jsonb) ON CONFLICT (location) DO UPDATE SET "
                        "version = EXCLUDED.version, config = EXCLUDED.config, saved_at = now()",
                        3, params, NULL, err, sizeof(err));
    if (rc == 0) {
        pthread_mutex_lock(&w->lock);
        if (w->cur == ws)
            w->need_save = false;
        pthread_mutex_unlock(&w->lock);
    } else {
        sl_debug("workspace", "could not save the last good config yet: %s", err);
    }
    sl_workspace_unref(ws);
}

static int load_last_good(sl_wsconf_t *w, char *errstr, size_t errstr_size)
{
    PGresult *r = NULL;
    const char *params[] = {w->location};
    int rc = sl_pg_exec(w->pg,
                        "SELECT config::text, version, saved_at FROM sluice_workspace_config "
                        "WHERE location = $1",
                        1, params, &r, errstr, errstr_size);
    if (rc)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return sl_err_set(errstr, errstr_size, SL_ERR_NOTFOUND,
                          "postgres has no last good config for \"%s\"", w->location);
    }
    sl_workspace_t *ws;
    rc = sl_workspace_parse(PQgetvalue(r, 0, 0), (size_t)PQgetlength(r, 0, 0), &ws, errstr,
                            errstr_size);
    if (rc == 0) {
        sl_warn("workspace", "using the last good workspace config %.12s saved at %s",
                PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
        swap_in(w, ws, false);
    }
    PQclear(r);
    return rc;
}

static void *watch_main(void *arg)
{
    sl_wsconf_t *w = arg;
    bool failing = false;
    while (!atomic_load(&w->stop)) {
        struct pollfd p = {.fd = w->wake[0], .events = POLLIN};
        bool force = false;
        if (poll(&p, 1, (int)w->poll_ms) > 0) {
            char buf[64];
            while (read(w->wake[0], buf, sizeof(buf)) > 0)
                ;
            force = true;
        }
        if (atomic_load(&w->stop))
            break;
        char err[1200];
        /* While the current config is not from the location, keep reading it in full. */
        if (refresh(w, force || !w->from_location, err, sizeof(err)) != 0) {
            if (!failing || force)
                sl_error("workspace", "%s; still using version %.12s loaded at %s", err,
                         sl_workspace_version(w->cur), w->loaded_at);
            sl_health_set("workspace", false, "%s; still using version %.12s loaded at %s", err,
                          sl_workspace_version(w->cur), w->loaded_at);
            failing = true;
            /* Retry the same version next time, even if the file did not change again. */
            memset(&w->st, 0, sizeof(w->st));
        } else {
            failing = false;
        }
        if (w->pg)
            save_last_good(w);
    }
    return NULL;
}

/* Frees w and what it holds; the watcher thread is not running. */
static void wsconf_free(sl_wsconf_t *w)
{
    if (w->cur)
        sl_workspace_unref(w->cur);
    if (w->wake[0] > 0) {
        close(w->wake[0]);
        close(w->wake[1]);
    }
    sl_pg_destroy(w->pg);
    pthread_mutex_destroy(&w->lock);
    free(w->location);
    free(w->etag);
    free(w->last_modified);
    free(w);
}

sl_wsconf_t *sl_wsconf_start(const char *location, const char *pg_dsn, int64_t poll_ms,
                             char *errstr, size_t errstr_size)
{
    if (!location || !*location) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "workspace.config is empty: set SLUICE_WORKSPACE_CONFIG to a RudderStack "
                   "workspaceConfig.json file or URL");
        return NULL;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    sl_wsconf_t *w = sl_calloc(1, sizeof(*w));
    w->location = sl_strdup(location);
    w->is_url = strncmp(location, "http://", 7) == 0 || strncmp(location, "https://", 8) == 0;
    w->poll_ms = poll_ms > 0 ? poll_ms : 5000;
    w->pg = pg_dsn && *pg_dsn ? sl_pg_new(pg_dsn) : NULL;
    pthread_mutex_init(&w->lock, NULL);
    atomic_init(&w->generation, 0);
    if (pipe2(w->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not create a pipe: %s",
                   strerror(errno));
        goto fail;
    }
    char err[1200], pgerr[600] = "";
    if (refresh(w, true, err, sizeof(err)) != 0) {
        if (!w->pg || load_last_good(w, pgerr, sizeof(pgerr)) != 0) {
            sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                       "could not load the workspace config: %s%s%s; set "
                       "SLUICE_WORKSPACE_CONFIG to a valid RudderStack workspaceConfig.json "
                       "file or URL",
                       err, *pgerr ? "; and no last good version: " : "", pgerr);
            goto fail;
        }
        sl_warn("workspace", "could not load the workspace config from \"%s\": %s", location, err);
        sl_health_set("workspace", false,
                      "%s; using the last good version %.12s from postgres until it is fixed", err,
                      sl_workspace_version(w->cur));
    }
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start the config watcher");
        goto fail;
    }
    return w;
fail:
    wsconf_free(w);
    return NULL;
}

sl_workspace_t *sl_wsconf_get(sl_wsconf_t *w)
{
    pthread_mutex_lock(&w->lock);
    sl_workspace_t *ws = sl_workspace_ref(w->cur);
    pthread_mutex_unlock(&w->lock);
    return ws;
}

void sl_wsconf_request_reload(sl_wsconf_t *w)
{
    char c = 'r';
    ssize_t n = write(w->wake[1], &c, 1);
    (void)n;
}

uint64_t sl_wsconf_generation(sl_wsconf_t *w)
{
    return atomic_load(&w->generation);
}

void sl_wsconf_stop(sl_wsconf_t *w)
{
    if (!w)
        return;
    atomic_store(&w->stop, true);
    sl_wsconf_request_reload(w);
    pthread_join(w->thread, NULL);
    wsconf_free(w);
}
