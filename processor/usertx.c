/*
 * User transformations, see usertx.h: the pool of sandbox workers (jsworker.c) and the calls
 * to them. The parent never trusts a worker to finish: every wait has a deadline, a worker
 * that overruns is SIGKILLed and replaced, and one that dies is reported and replaced.
 *
 * The worker's end of the channel is a socketpair, a pipe in both directions, so that writes
 * to a dead worker fail with EPIPE (MSG_NOSIGNAL) instead of raising SIGPIPE in the processor.
 */
#include "processor/usertx.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "processor/jsworker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define UX_START_TIMEOUT_MS 10000 /* a new worker must say READY within this */
#define UX_MAX_CODE         (16u * 1024 * 1024)

extern char **environ;

typedef struct ux_worker {
    pid_t pid; /* 0: not running, started on its next use */
    int fd;
    bool busy;
    sl_buf_t wbuf, rbuf; /* reused for every call */
} ux_worker_t;

struct pr_usertx_pool {
    pthread_mutex_t lock;
    pthread_cond_t idle;
    ux_worker_t *workers;
    size_t n_workers;
    int time_limit_ms;
    size_t memory_limit;
    char **argv; /* NULL-terminated, owned */
};

/* How reading a frame ended. */
typedef enum { UX_OK, UX_TIMEOUT, UX_EOF, UX_IOERR } ux_io_t;

/* ---- worker processes ------------------------------------------------------------------ */

/* Kills the worker (if running) and reaps it. Returns its wait status, or -1. */
static int worker_stop(ux_worker_t *w, bool kill_it)
{
    int status = -1;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->pid > 0) {
        if (kill_it)
            kill(w->pid, SIGKILL);
        while (waitpid(w->pid, &status, 0) < 0 && errno == EINTR)
            ;
        w->pid = 0;
    }
    sl_buf_reset(&w->rbuf);
    return status;
}

/* Describes a wait status: "killed by signal 9 (Killed)" or "exited with status 1". */
static void describe_status(int status, char *out, size_t n)
{
    if (status < 0)
        snprintf(out, n, "ended");
    else if (WIFSIGNALED(status))
        snprintf(out, n, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, n, "exited with status %d", WEXITSTATUS(status));
}

/* Waits until a whole frame is in w->rbuf or the deadline passes. On UX_OK the frame is the
 * first *frame_len bytes of rbuf (length prefix included). */
static ux_io_t read_frame(ux_worker_t *w, int64_t deadline, size_t *frame_len)
{
    for (;;) {
        if (w->rbuf.len >= 4) {
            uint32_t len = pr_jsw_get_u32(w->rbuf.data);
            if (len < 1 || len > PR_JSW_MAX_FRAME)
                return UX_IOERR;
            if (w->rbuf.len >= 4 + (size_t)len) {
                *frame_len = 4 + (size_t)len;
                return UX_OK;
            }
            sl_buf_reserve(&w->rbuf, 4 + (size_t)len - w->rbuf.len);
        } else {
            sl_buf_reserve(&w->rbuf, 64 * 1024);
        }
        int64_t left = deadline - sl_time_mono_ms();
        if (left <= 0)
            return UX_TIMEOUT;
        struct pollfd pfd = {w->fd, POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(left > 60000 ? 60000 : left));
        if (pr < 0 && errno != EINTR)
            return UX_IOERR;
        if (pr <= 0)
            continue;
        ssize_t r = read(w->fd, w->rbuf.data + w->rbuf.len, w->rbuf.cap - w->rbuf.len - 1);
        if (r < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (r == 0 || (r < 0 && errno == ECONNRESET)) /* reset: it died with input unread */
            return UX_EOF;
        if (r < 0)
            return UX_IOERR;
        w->rbuf.len += (size_t)r;
        w->rbuf.data[w->rbuf.len] = '\0';
    }
}

/* Drops the first n bytes of the read buffer. */
static void consume(sl_buf_t *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

static ux_io_t write_all(ux_worker_t *w, const char *p, size_t n, int64_t deadline)
{
    while (n > 0) {
        ssize_t s = send(w->fd, p, n, MSG_NOSIGNAL);
        if (s > 0) {
            p += s;
            n -= (size_t)s;
            continue;
        }
        if (s < 0 && errno == EINTR)
            continue;
        if (s < 0 && errno != EAGAIN)
            return errno == EPIPE || errno == ECONNRESET ? UX_EOF : UX_IOERR;
        int64_t left = deadline - sl_time_mono_ms();
        if (left <= 0)
            return UX_TIMEOUT;
        struct pollfd pfd = {w->fd, POLLOUT, 0};
        if (poll(&pfd, 1, (int)(left > 60000 ? 60000 : left)) < 0 && errno != EINTR)
            return UX_IOERR;
    }
    return UX_OK;
}

/* Starts a worker and waits for its READY. Called with the worker reserved (busy), without
 * the pool lock. */
static int worker_start(pr_usertx_pool_t *pool, ux_worker_t *w, char *errstr, size_t errstr_size)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not create a pipe for a transformation worker: %s",
                          strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    posix_spawnattr_init(&attr);
    /* Whatever the calling thread blocks or ignores, the worker starts clean: its SIGALRM
     * backstop must work and SIGPIPE must end it. */
    sigset_t none, dflt;
    sigemptyset(&none);
    sigemptyset(&dflt);
    sigaddset(&dflt, SIGPIPE);
    sigaddset(&dflt, SIGALRM);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dflt);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, pool->argv[0], &fa, &attr, pool->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(sv[1]);
    if (rc != 0) {
        close(sv[0]);
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                          "could not start transformation worker \"%s\": %s", pool->argv[0],
                          strerror(rc));
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    w->pid = pid;
    w->fd = sv[0];
    sl_buf_reset(&w->rbuf);
    size_t flen;
    ux_io_t io = read_frame(w, sl_time_mono_ms() + UX_START_TIMEOUT_MS, &flen);
    if (io == UX_OK && flen == 5 && w->rbuf.data[4] == PR_JSW_READY) {
        consume(&w->rbuf, flen);
        return 0;
    }
    int status = worker_stop(w, true);
    char how[96];
    describe_status(status, how, sizeof(how));
    return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                      "transformation worker \"%s\" did not start: %s", pool->argv[0],
                      io == UX_TIMEOUT ? "no answer within 10 s"
                      : io == UX_EOF   ? how
                                       : "it does not speak the worker protocol");
}

static ux_worker_t *worker_acquire(pr_usertx_pool_t *pool)
{
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        for (size_t i = 0; i < pool->n_workers; i++) {
            ux_worker_t *w = &pool->workers[i];
            if (!w->busy) {
                w->busy = true;
                pthread_mutex_unlock(&pool->lock);
                return w;
            }
        }
        pthread_cond_wait(&pool->idle, &pool->lock);
    }
}

static void worker_release(pr_usertx_pool_t *pool, ux_worker_t *w)
{
    pthread_mutex_lock(&pool->lock);
    w->busy = false;
    pthread_cond_signal(&pool->idle);
    pthread_mutex_unlock(&pool->lock);
}

/* ---- the pool -------------------------------------------------------------------------- */

pr_usertx_pool_t *pr_usertx_pool_new(const pr_usertx_opts_t *opts, char *errstr, size_t errstr_size)
{
    pr_usertx_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.workers <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        o.workers = cpus > 0 ? (int)cpus : 2;
    }
    if (o.time_limit_ms <= 0)
        o.time_limit_ms = PR_USERTX_DEFAULT_TIME_LIMIT_MS;
    if (o.memory_limit_bytes == 0)
        o.memory_limit_bytes = PR_USERTX_DEFAULT_MEMORY_LIMIT;
    if (o.memory_limit_bytes < 1024 * 1024) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "the transformation memory limit must be at least 1 MB, not %zu bytes",
                   o.memory_limit_bytes);
        return NULL;
    }
    static const char *const default_argv[] = {"/proc/self/exe", "js-worker", NULL};
    const char *const *argv = o.worker_argv && o.worker_argv[0] ? o.worker_argv : default_argv;

    pr_usertx_pool_t *pool = sl_calloc(1, sizeof(*pool));
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->idle, NULL);
    pool->time_limit_ms = o.time_limit_ms;
    pool->memory_limit = o.memory_limit_bytes;
    size_t argc = 0;
    while (argv[argc])
        argc++;
    pool->argv = sl_calloc(argc + 2, sizeof(char *));
    for (size_t i = 0; i < argc; i++)
        pool->argv[i] = sl_strdup(argv[i]);
    pool->argv[argc] = sl_asprintf("--memory-limit=%zu", o.memory_limit_bytes);
    pool->n_workers = (size_t)o.workers;
    pool->workers = sl_calloc(pool->n_workers, sizeof(ux_worker_t));
    for (size_t i = 0; i < pool->n_workers; i++)
        pool->workers[i].fd = -1;
    /* Start every worker now, so that a broken command shows at start and not mid-stream. */
    for (size_t i = 0; i < pool->n_workers; i++) {
        if (worker_start(pool, &pool->workers[i], errstr, errstr_size) != 0) {
            pr_usertx_pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

void pr_usertx_pool_free(pr_usertx_pool_t *pool)
{
    if (!pool)
        return;
    for (size_t i = 0; i < pool->n_workers; i++) {
        ux_worker_t *w = &pool->workers[i];
        if (w->pid > 0) {
            /* Closing the pipe asks the worker to exit; give it a moment, then kill it. */
            close(w->fd);
            w->fd = -1;
            int status = 0;
            pid_t r = 0;
            for (int tries = 0; tries < 200 && (r = waitpid(w->pid, &status, WNOHANG)) == 0;
                 tries++)
                usleep(5000);
            if (r == w->pid) {
                w->pid = 0;
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    char how[96];
                    describe_status(status, how, sizeof(how));
                    sl_warn("usertx", "transformation worker %d %s at shutdown", (int)r, how);
                }
            }
        }
        worker_stop(w, true);
        sl_buf_free(&w->wbuf);
        sl_buf_free(&w->rbuf);
    }
    for (char **a = pool->argv; a && *a; a++)
        free(*a);
    free(pool->argv);
    free(pool->workers);
    pthread_cond_destroy(&pool->idle);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

size_t pr_usertx_pool_size(const pr_usertx_pool_t *pool)
{
    return pool ? pool->n_workers : 0;
}

void pr_usertx_results_free(pr_usertx_result_t *out, size_t n)
{
    for (size_t i = 0; out && i < n; i++) {
        free(out[i].events_json);
        free(out[i].error);
        memset(&out[i], 0, sizeof(out[i]));
    }
}

/* Fails every event of the call with the same message. */
static void fail_all(pr_usertx_result_t *out, size_t n, const char *msg)
{
    for (size_t i = 0; i < n; i++) {
        free(out[i].events_json);
        free(out[i].error);
        out[i].kind = PR_USERTX_ERROR;
        out[i].n_events = 0;
        out[i].events_json = NULL;
        out[i].error = sl_strdup(msg);
    }
}

/* Parses a RESULT frame's payload into out. Returns false if it is malformed. */
static bool parse_result(const char *p, size_t len, size_t n, pr_usertx_result_t *out)
{
    pr_jsw_rd_t r = {p, p + len, 0};
    if (pr_jsw_rd_u32(&r) != n || r.bad)
        return false;
    for (size_t i = 0; i < n; i++) {
        int kind = pr_jsw_rd_u8(&r);
        uint32_t count = pr_jsw_rd_u32(&r);
        const char *s;
        uint32_t slen = pr_jsw_rd_str(&r, &s);
        if (r.bad || kind > PR_USERTX_ERROR)
            return false;
        out[i].kind = (pr_usertx_kind_t)kind;
        out[i].n_events = kind == PR_USERTX_EVENTS ? count : 0;
        if (kind == PR_USERTX_EVENTS)
            out[i].events_json = sl_strndup(s, slen);
        else if (kind == PR_USERTX_ERROR)
            out[i].error = sl_strndup(s, slen);
    }
    return r.p == r.end;
}

int pr_usertx_run(pr_usertx_pool_t *pool, const char *version_id, const char *code,
                  const char *const *events_json, const char *const *metadata_json, size_t n,
                  pr_usertx_result_t *out)
{
    if (!pool || !version_id || !code || (n > 0 && (!events_json || !out)))
        return SL_ERR_INVALID;
    for (size_t i = 0; i < n; i++)
        if (!events_json[i])
            return SL_ERR_INVALID;
    memset(out, 0, n * sizeof(*out));
    if (n == 0)
        return 0;

    ux_worker_t *w = worker_acquire(pool);
    int rc = 0;
    char msg[256];
    int st;
    if (w->pid > 0 && waitpid(w->pid, &st, WNOHANG) == w->pid) { /* e.g. the OOM killer */
        char how[96];
        describe_status(st, how, sizeof(how));
        sl_warn("usertx", "transformation worker %d %s while idle; starting another", (int)w->pid,
                how);
        w->pid = 0;
        worker_stop(w, false);
    }
    if (w->pid <= 0 && worker_start(pool, w, msg, sizeof(msg)) != 0) {
        sl_warn("usertx", "transformation %s: %s", version_id, msg);
        fail_all(out, n, msg);
        rc = SL_ERR_TRANSIENT;
        goto out;
    }

    sl_buf_t *b = &w->wbuf;
    sl_buf_reset(b);
    size_t off = pr_jsw_frame_begin(b, PR_JSW_RUN);
    pr_jsw_buf_u32(b, (uint32_t)pool->time_limit_ms);
    pr_jsw_buf_str(b, version_id, strlen(version_id));
    pr_jsw_buf_str(b, code, strlen(code));
    pr_jsw_buf_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const char *md = metadata_json ? metadata_json[i] : NULL;
        pr_jsw_buf_str(b, events_json[i], strlen(events_json[i]));
        pr_jsw_buf_str(b, md ? md : "", md ? strlen(md) : 0);
    }
    if (b->len - off - 4 > PR_JSW_MAX_FRAME) {
        snprintf(msg, sizeof(msg), "the call's events exceed %u bytes; send fewer at a time",
                 PR_JSW_MAX_FRAME);
        fail_all(out, n, msg);
        rc = SL_ERR_INVALID;
        goto out;
    }
    pr_jsw_frame_end(b, off);

    int64_t deadline = sl_time_mono_ms() + pool->time_limit_ms;
    ux_io_t io = write_all(w, b->data, b->len, deadline);
    size_t flen = 0;
    while (io == UX_OK) {
        io = read_frame(w, deadline, &flen);
        if (io != UX_OK)
            break;
        char type = w->rbuf.data[4];
        if (type == PR_JSW_LOG) {
            pr_jsw_rd_t r = {w->rbuf.data + 5, w->rbuf.data + flen, 0};
            const char *s;
            uint32_t slen = pr_jsw_rd_str(&r, &s);
            if (!r.bad)
                sl_info("usertx", "transformation log versionId=%s: %.*s", version_id, (int)slen,
                        s);
            consume(&w->rbuf, flen);
            continue;
        }
        if (type == PR_JSW_RESULT && parse_result(w->rbuf.data + 5, flen - 5, n, out)) {
            consume(&w->rbuf, flen);
            goto out;
        }
        io = UX_IOERR;
    }

    /* The call did not complete: the worker is killed (if it still runs) and replaced. */
    int status = worker_stop(w, true);
    if (io == UX_TIMEOUT) {
        snprintf(msg, sizeof(msg), "transformation timed out after %d ms", pool->time_limit_ms);
        sl_warn("usertx",
                "transformation %s timed out after %d ms on %zu events; its worker "
                "was killed",
                version_id, pool->time_limit_ms, n);
    } else if (io == UX_EOF) {
        char how[96];
        describe_status(status, how, sizeof(how));
        snprintf(msg, sizeof(msg), "transformation worker %s while running the transformation",
                 how);
        sl_warn("usertx", "transformation %s: %s", version_id, msg);
    } else {
        snprintf(msg, sizeof(msg), "transformation worker broke the protocol");
        sl_error("usertx", "transformation %s: %s", version_id, msg);
        rc = SL_ERR_FATAL;
    }
    pr_usertx_results_free(out, n);
    fail_all(out, n, msg);
out:
    worker_release(pool, w);
    return rc;
}

/* ---- code from a directory ------------------------------------------------------------- */

int pr_usertx_load_code(const char *dir, const char *version_id, char **code, char *errstr,
                        size_t errstr_size)
{
    *code = NULL;
    if (!version_id || !*version_id || version_id[0] == '.')
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "invalid transformation version id \"%s\"", version_id ? version_id : "");
    for (const char *p = version_id; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "invalid transformation version id \"%s\"", version_id);
    }
    char *path = sl_asprintf("%s/%s.js", dir, version_id);
    sl_buf_t b = SL_BUF_INIT;
    struct stat st;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = sl_err_set(errstr, errstr_size, errno == ENOENT ? SL_ERR_NOTFOUND : SL_ERR_INVALID,
                        "could not open transformation code \"%s\": %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)UX_MAX_CODE) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "transformation code \"%s\" is not a regular file of at most %u bytes",
                        path, UX_MAX_CODE);
        goto out;
    }
    sl_buf_reserve(&b, (size_t)st.st_size);
    b.data[0] = '\0';
    for (;;) {
        sl_buf_reserve(&b, 4096);
        ssize_t r = read(fd, b.data + b.len, b.cap - b.len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                            "could not read transformation code \"%s\": %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        b.len += (size_t)r;
        b.data[b.len] = '\0';
        if (b.len > UX_MAX_CODE) {
            rc =
                sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                           "transformation code \"%s\" is larger than %u bytes", path, UX_MAX_CODE);
            goto out;
        }
    }
    if (memchr(b.data, '\0', b.len)) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "transformation code \"%s\" contains a NUL byte", path);
        goto out;
    }
    *code = sl_buf_steal(&b);
out:
    if (fd >= 0)
        close(fd);
    sl_buf_free(&b);
    free(path);
    return rc;
}
