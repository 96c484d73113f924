/*
 * The warehouse role (see warehouse.h). Threads: one consumer (buffers rows per (source,
 * destination), writes staging files and records uploads, then commits), warehouse.workers
 * upload workers (claim, generate, export; each loads an upload's tables over up to
 * warehouse.load_parallelism connections), and one keeper (renews the leases of this instance's
 * claims, refreshes the upload metrics). Each thread has its own Postgres connection.
 */
#include "warehouse/warehouse.h"

#include "common/buf.h"
#include "common/deadletter.h"
#include "common/err.h"
#include "common/health.h"
#include "common/jsonc.h"
#include "common/kafka.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/pg.h"
#include "common/timeutil.h"
#include "warehouse/loadall.h"
#include "warehouse/pgload.h"
#include "warehouse/schedule.h"
#include "warehouse/schema.h"
#include "warehouse/staging.h"
#include "warehouse/uploads.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WH_METRICS_MS      2000
#define WH_IDLE_CLAIM_MS   1000 /* workers look for due uploads at least this often */
#define WH_POLL_BATCH      1000
#define WH_COMMIT_EVERY_MS 1000
#define WH_FLUSH_RETRY_MS  1000 /* first wait after a failed flush; doubles up to 30 s */
#define WH_DRAIN_MS        10000
/* A staging directory of no upload this old is a crashed flush's: its events were not committed
 * in Kafka and are consumed again, so its files are garbage. Younger, it may be a flush of
 * another instance writing its files right now. */
#define WH_ORPHAN_AGE_MS   60000
#define WH_ORPHAN_EVERY_MS (5 * 60 * 1000)

/* One value of a buffered row: its column, its type and its text (in its buffer's blocks;
 * NULL for NULL). */
typedef struct wh_cell {
    uint32_t col;
    uint32_t type; /* wh_type_t */
    const char *value;
} wh_cell_t;

/* One buffered row: its cells, in its buffer's blocks. */
typedef struct wh_brow {
    wh_cell_t *cells;
    size_t ncols;
} wh_brow_t;

/* The rows of one table in a buffer, compact: column names once per table, cells and values
 * in the buffer's blocks (a few times smaller than the rows wh_event_rows makes, which are
 * per event). */
typedef struct wh_tbuf {
    char *table;
    char **cols; /* names */
    size_t ncols, ccap;
    wh_brow_t *rows;
    size_t n, cap;
} wh_tbuf_t;

/* Memory a buffer's rows are cut from: blocks that are only appended to and freed together
 * with the buffer, so nothing is copied as a buffer grows and cells can point into them. */
typedef struct wh_block {
    struct wh_block *next;
    size_t size, used;
    char data[];
} wh_block_t;

#define WH_BLOCK_MIN (16 * 1024) /* a buffer's first block; each next one twice the last */
#define WH_BLOCK_MAX (1024 * 1024)

typedef struct wh_msg {
    int32_t partition;
    int64_t offset;
} wh_msg_t;

/* What was consumed for one (source, destination) since its last sync. Owned by the
 * consumer thread. */
typedef struct wh_buffer {
    char *source_id, *dest_id, *dest_type;
    wh_tbuf_t *tables;
    size_t ntables, tcap;
    wh_msg_t *msgs; /* the messages whose rows these are, marked done once recorded */
    size_t nmsgs, mcap;
    int64_t started_mono, started_ms;      /* when its first event was consumed */
    bool warned_start;                     /* about a bad syncStartAt */
    int64_t first_event_ms, last_event_ms; /* receivedAt range */
    int64_t retry_mono;                    /* after a failed flush: not before this */
    int64_t retry_wait_ms;
    wh_block_t *blocks; /* newest first */
    size_t bytes;       /* allocated for it: blocks, row and message arrays, names */
    sl_metric_t *m_events;
    struct wh_buffer *next;
} wh_buffer_t;

struct wh_warehouse {
    sl_wsconf_t *ws;
    char *topic, *group, *staging_dir, *instance;
    int64_t sync_ms, retry_base_ms;
    size_t max_events, max_bytes;

    /* consumer thread */
    rd_kafka_t *consumer;
    rd_kafka_t *producer; /* dead letters, to failed_topic */
    char *failed_topic;
    sl_kafka_offsets_t *offsets;
    wh_rows_t scratch; /* one event's rows, before they go into a buffer */
    sl_pg_t *pg;
    wh_buffer_t *buffers;
    size_t buffered;       /* events in buffers */
    size_t buffered_bytes; /* their bytes (wh_buffer_t.bytes) */
    bool paused;
    pthread_t consumer_thread;

    /* workers and keeper */
    struct wh_worker {
        wh_warehouse_t *wh;
        int n;
        char claim[300];
        sl_pg_t *pg;
        pthread_t thread;
    } * workers;
    int nworkers, load_parallelism;
    int64_t lease_ms; /* a claim not renewed for this long is taken over; renewed every 1/4 */
    sl_pg_t *keeper_pg;
    pthread_t keeper_thread;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* an upload was recorded, or stop */
    uint64_t recorded;   /* under mu: uploads recorded by this instance */
    atomic_bool stop;
    bool threads_started;

    sl_metric_t *m_bad, *m_buffered, *m_buffered_bytes, *m_lag, *m_upload_seconds;
};

static const char *const upload_states[] = {
    WH_WAITING,          WH_GENERATING, WH_GENERATING_FAILED, WH_EXPORTING,
    WH_EXPORTING_FAILED, WH_EXPORTED,   WH_ABORTED,           NULL};

static sl_metric_t *dest_counter(const char *name, const char *help, const char *dest)
{
    return sl_metrics_counter(name, help, "destination", dest, NULL);
}

/* --- buffers (consumer thread) --- */

static wh_buffer_t *buffer_get(wh_warehouse_t *wh, const char *source_id, const char *dest_id,
                               const char *dest_type)
{
    for (wh_buffer_t *b = wh->buffers; b; b = b->next)
        if (strcmp(b->dest_id, dest_id) == 0 && strcmp(b->source_id, source_id) == 0)
            return b;
    wh_buffer_t *b = sl_calloc(1, sizeof(*b));
    b->source_id = sl_strdup(source_id);
    b->dest_id = sl_strdup(dest_id);
    b->dest_type = sl_strdup(dest_type ? dest_type : "POSTGRES");
    b->started_mono = sl_time_mono_ms();
    b->started_ms = sl_time_now_ms();
    b->m_events =
        dest_counter("sluice_warehouse_events_total",
                     "Events of warehouse destinations consumed into staging buffers", dest_id);
    b->next = wh->buffers;
    wh->buffers = b;
    return b;
}

static void buffer_free(wh_buffer_t *b)
{
    for (size_t i = 0; i < b->ntables; i++) {
        wh_tbuf_t *t = &b->tables[i];
        free(t->table);
        for (size_t c = 0; c < t->ncols; c++)
            free(t->cols[c]);
        free(t->cols);
        free(t->rows);
    }
    for (wh_block_t *k = b->blocks, *next; k; k = next) {
        next = k->next;
        free(k);
    }
    free(b->tables);
    free(b->msgs);
    free(b->source_id);
    free(b->dest_id);
    free(b->dest_type);
    free(b);
}

static void buffer_unlink(wh_warehouse_t *wh, wh_buffer_t *b)
{
    for (wh_buffer_t **pp = &wh->buffers; *pp; pp = &(*pp)->next)
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    wh->buffered -= b->nmsgs;
    wh->buffered_bytes -= b->bytes;
}

/* b's messages are durable downstream (or need nothing): their offsets may be committed. Frees
 * b. */
static void buffer_done(wh_warehouse_t *wh, wh_buffer_t *b)
{
    for (size_t i = 0; i < b->nmsgs; i++)
        sl_kafka_offsets_done(wh->offsets, wh->topic, b->msgs[i].partition, b->msgs[i].offset);
    buffer_unlink(wh, b);
    buffer_free(b);
}

/* n bytes of b's blocks aligned to align (a power of two), for as long as b lives. */
static void *block_alloc(wh_buffer_t *b, size_t n, size_t align)
{
    wh_block_t *k = b->blocks;
    size_t at = k ? (k->used + align - 1) & ~(align - 1) : 0;
    if (!k || at + n > k->size) {
        size_t size = k ? k->size * 2 : WH_BLOCK_MIN;
        if (size > WH_BLOCK_MAX)
            size = WH_BLOCK_MAX;
        if (size < n)
            size = n;
        k = sl_malloc(sizeof(*k) + size);
        k->size = size;
        k->next = b->blocks;
        b->blocks = k;
        b->bytes += sizeof(*k) + size;
        at = 0;
    }
    k->used = at + n;
    return k->data + at;
}

/* Grows array *p of *cap elements of size each to hold one more than n, counting the bytes in
 * b. */
static void grow(wh_buffer_t *b, void **p, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n < *cap)
        return;
    size_t new_cap = *cap ? *cap * 2 : first;
    *p = sl_realloc(*p, new_cap * size);
    b->bytes += (new_cap - *cap) * size;
    *cap = new_cap;
}

static wh_tbuf_t *table_get(wh_buffer_t *b, const char *table)
{
    for (size_t k = 0; k < b->ntables; k++)
        if (strcmp(b->tables[k].table, table) == 0)
            return &b->tables[k];
    grow(b, (void **)&b->tables, &b->tcap, b->ntables, sizeof(*b->tables), 8);
    wh_tbuf_t *t = &b->tables[b->ntables++];
    *t = (wh_tbuf_t){.table = sl_strdup(table)};
    b->bytes += strlen(table) + 1;
    return t;
}

/* The index of column name in t; guess is where the previous row had its column at the same
 * position (rows of a table mostly have the same columns in the same order). */
static uint32_t column_index(wh_buffer_t *b, wh_tbuf_t *t, const char *name, const wh_cell_t *guess)
{
    if (guess && strcmp(t->cols[guess->col], name) == 0)
        return guess->col;
    for (size_t c = 0; c < t->ncols; c++)
        if (strcmp(t->cols[c], name) == 0)
            return (uint32_t)c;
    grow(b, (void **)&t->cols, &t->ccap, t->ncols, sizeof(*t->cols), 32);
    t->cols[t->ncols] = sl_strdup(name);
    b->bytes += strlen(name) + 1;
    return (uint32_t)t->ncols++;
}

/* Copies rows into b under their tables. */
static void buffer_add(wh_buffer_t *b, const wh_rows_t *rows)
{
    for (size_t i = 0; i < rows->n; i++) {
        const wh_row_t *r = &rows->rows[i];
        wh_tbuf_t *t = table_get(b, r->table);
        const wh_brow_t *prev = t->n ? &t->rows[t->n - 1] : NULL;
        wh_cell_t *cells =
            block_alloc(b, (r->ncols ? r->ncols : 1) * sizeof(*cells), _Alignof(wh_cell_t));
        for (size_t k = 0; k < r->ncols; k++) {
            const wh_col_t *c = &r->cols[k];
            cells[k].col =
                column_index(b, t, c->name, prev && k < prev->ncols ? &prev->cells[k] : NULL);
            cells[k].type = (uint32_t)c->type;
            cells[k].value = NULL;
            if (c->value) {
                size_t len = strlen(c->value) + 1;
                cells[k].value = memcpy(block_alloc(b, len, 1), c->value, len);
            }
        }
        grow(b, (void **)&t->rows, &t->cap, t->n, sizeof(*t->rows), 64);
        t->rows[t->n++] = (wh_brow_t){cells, r->ncols};
    }
}

/* Row i of a table as wh_row_t, for the staging writer (wh_staging_write_fn): made in cols,
 * grown as needed, with the names and values still the buffer's. */
typedef struct tbuf_view {
    const wh_tbuf_t *t;
    wh_row_t row;
    wh_col_t *cols;
    size_t cap;
} tbuf_view_t;

static const wh_row_t *tbuf_row(void *opaque, size_t i)
{
    tbuf_view_t *v = opaque;
    const wh_brow_t *r = &v->t->rows[i];
    if (r->ncols > v->cap) {
        v->cap = r->ncols;
        v->cols = sl_realloc(v->cols, v->cap * sizeof(*v->cols));
    }
    for (size_t k = 0; k < r->ncols; k++) {
        const wh_cell_t *c = &r->cells[k];
        v->cols[k] = (wh_col_t){
            .name = v->t->cols[c->col], .type = (wh_type_t)c->type, .value = (char *)c->value};
    }
    v->row = (wh_row_t){.table = v->t->table, .cols = v->cols, .ncols = r->ncols};
    return &v->row;
}

static void dl_report(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    *(int *)m->_private = m->err ? -1 : 1;
}

/*
 * An event the warehouse can't load: a log line and a dead letter (stage "warehouse") in the
 * failed topic, where `sluice failed list` shows it and `retry` sends it again once fixed.
 * Its offset counts as done only once Kafka has the dead letter; bad events are rare, so this
 * waits for it.
 */
static void bad_event(wh_warehouse_t *wh, const rd_kafka_message_t *m, json_object *job,
                      const char *why)
{
    sl_warn("warehouse", "event at %s [%d] offset %lld not loaded: %s; it is in the failed events",
            wh->topic, (int)m->partition, (long long)m->offset, why);
    sl_metrics_add(wh->m_bad, 1);
    sl_dead_letter_t dl = {.stage = "warehouse",
                           .reason = why,
                           .source_id = sl_jsonc_str(job, "sourceId"),
                           .destination_id = sl_jsonc_str(job, "destinationId"),
                           .destination_type = sl_jsonc_str(job, "destinationType"),
                           .message_id = sl_jsonc_str(job, "messageId"),
                           .received_at = sl_jsonc_str(job, "receivedAt"),
                           .partition = m->partition,
                           .offset = m->offset,
                           .event = m->payload,
                           .event_len = m->payload ? m->len : 0,
                           .event_as = job ? SL_DL_EVENT_JSON : SL_DL_EVENT_STRING};
    sl_buf_t b = SL_BUF_INIT;
    rd_kafka_headers_t *h = sl_dead_letter_format(&dl, &b);
    int delivered = 0;
    rd_kafka_resp_err_t err;
    while ((err = rd_kafka_producev(
                wh->producer, RD_KAFKA_V_TOPIC(wh->failed_topic),
                RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(b.data, b.len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                RD_KAFKA_V_OPAQUE(&delivered), RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(wh->producer, 100);
    sl_buf_free(&b);
    if (err) {
        rd_kafka_headers_destroy(h);
    } else {
        /* After a stop, give Kafka 30 s more: an event left undone is read again next time. */
        for (int64_t deadline = INT64_MAX; !delivered && sl_time_mono_ms() < deadline;) {
            rd_kafka_poll(wh->producer, 100);
            if (deadline == INT64_MAX && atomic_load(&wh->stop))
                deadline = sl_time_mono_ms() + 30000;
        }
    }
    if (delivered == 1) {
        sl_kafka_offsets_done(wh->offsets, wh->topic, m->partition, m->offset);
        return;
    }
    sl_error("warehouse",
             "the dead letter of %s [%d] offset %lld was not stored (%s): the event "
             "stays unconsumed and is read again after a restart",
             wh->topic, (int)m->partition, (long long)m->offset,
             err         ? rd_kafka_err2str(err)
             : delivered ? "delivery failed"
                         : "stopping");
}

static void on_message(wh_warehouse_t *wh, const rd_kafka_message_t *m)
{
    sl_kafka_offsets_track(wh->offsets, wh->topic, m->partition, m->offset);
    json_tokener *tok = json_tokener_new();
    json_object *job = m->payload ? json_tokener_parse_ex(tok, m->payload, (int)m->len) : NULL;
    json_tokener_free(tok);
    json_object *req = NULL, *body_o = NULL;
    const char *src = sl_jsonc_str(job, "sourceId"), *dst = sl_jsonc_str(job, "destinationId");
    const char *body =
        json_object_object_get_ex(job, "request", &req) ? sl_jsonc_str(req, "body") : NULL;
    if (body)
        json_object_object_get_ex(req, "body", &body_o);
    if (!src || !dst || !body) {
        bad_event(wh, m, job,
                  !job ? "not a JSON job"
                       : "the job has no sourceId, destinationId or request.body string");
        json_object_put(job);
        return;
    }
    const char *received_at = sl_jsonc_str(job, "receivedAt");
    wh_buffer_t *b = buffer_get(wh, src, dst, sl_jsonc_str(job, "destinationType"));
    char err[512];
    if (wh_event_rows(body, (size_t)json_object_get_string_len(body_o), received_at, &wh->scratch,
                      err, sizeof(err)) != 0) {
        char why[600];
        snprintf(why, sizeof(why), "event of destination %s: %s", dst, err);
        bad_event(wh, m, job, why);
        if (b->nmsgs == 0) { /* nothing else in it yet */
            buffer_unlink(wh, b);
            buffer_free(b);
        }
        json_object_put(job);
        return;
    }
    size_t bytes = b->bytes;
    buffer_add(b, &wh->scratch);
    wh_rows_free(&wh->scratch);
    grow(b, (void **)&b->msgs, &b->mcap, b->nmsgs, sizeof(*b->msgs), 256);
    b->msgs[b->nmsgs++] = (wh_msg_t){m->partition, m->offset};
    wh->buffered_bytes += b->bytes - bytes;
    wh->buffered++;
    int64_t at;
    if (!received_at || sl_time_parse_ms(received_at, &at) != 0)
        at = sl_time_now_ms();
    if (!b->first_event_ms || at < b->first_event_ms)
        b->first_event_ms = at;
    if (at > b->last_event_ms)
        b->last_event_ms = at;
    sl_metrics_add(b->m_events, 1);
    json_object_put(job);
}

/* --- staging and recording an upload (consumer thread) --- */

/* A path component from a destination id: [A-Za-z0-9_.-] kept, anything else `_`, never "."
 * or "..". */
static void safe_component(const char *s, char *out, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        out[i] = ok ? c : '_';
    }
    out[i] = '\0';
    if (i == 0 || strcmp(out, ".") == 0 || strcmp(out, "..") == 0)
        snprintf(out, n, "_%s", s[0] ? "dot" : "empty");
}

static void fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* mkdir -p, fsyncing the parent of each directory made, so the new directory survives a
 * crash. */
static int make_dirs(const char *path, char *errstr, size_t errstr_size)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(buf, 0755) == 0) {
            char *slash = strrchr(buf, '/');
            if (slash && slash != buf) {
                *slash = '\0';
                fsync_dir(buf);
                *slash = '/';
            }
        } else if (errno != EEXIST) {
            return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT,
                              "could not create the staging directory \"%s\": %s", buf,
                              strerror(errno));
        }
        *p = saved;
        if (!saved)
            return 0;
    }
}

/* The namespace of the destination's rows: its config's namespace, else the source's name, as
 * a warehouse identifier. */
static void namespace_of(wh_warehouse_t *wh, const char *source_id, const char *dest_id, char *out,
                         size_t n)
{
    sl_workspace_t *w = sl_wsconf_get(wh->ws);
    const sl_destination_t *d = w ? sl_workspace_destination_by_id(w, dest_id) : NULL;
    const sl_source_t *s = w ? sl_workspace_source_by_id(w, source_id) : NULL;
    const char *ns = d ? sl_jsonc_str(d->config, "namespace") : NULL;
    if (!ns || !*ns)
        ns = s ? s->name : source_id;
    wh_identifier(ns, out, n);
    if (!*out)
        wh_identifier(source_id, out, n);
    if (!*out)
        snprintf(out, n, "sluice");
    if (w)
        sl_workspace_unref(w);
}

/* Whether b's sync is due: its destination's syncFrequency (minutes), else
 * warehouse.sync_interval, from syncStartAt ("HH:MM" UTC) when the config has it (schedule.h),
 * else from b's first event. */
static bool sync_due(wh_warehouse_t *wh, sl_workspace_t *w, wh_buffer_t *b, int64_t now_mono)
{
    const sl_destination_t *d = w ? sl_workspace_destination_by_id(w, b->dest_id) : NULL;
    int64_t freq = wh->sync_ms;
    json_object *v;
    if (d && json_object_object_get_ex(d->config, "syncFrequency", &v)) {
        double minutes = json_object_is_type(v, json_type_string)
                             ? strtod(json_object_get_string(v), NULL)
                             : json_object_get_double(v);
        if (minutes > 0)
            freq = (int64_t)(minutes * 60000.0);
    }
    const char *start = d ? sl_jsonc_str(d->config, "syncStartAt") : NULL;
    int start_min = start && *start ? wh_sync_start_parse(start) : -1;
    if (start && *start && start_min < 0 && !b->warned_start) {
        sl_warn("warehouse",
                "destination %s: syncStartAt \"%s\" is not a time of day \"HH:MM\" (UTC): "
                "ignored, syncing every %lld s from the first event",
                b->dest_id, start, (long long)(freq / 1000));
        b->warned_start = true;
    }
    if (start_min < 0)
        return now_mono - b->started_mono >= freq;
    return wh_sync_due(b->started_ms, sl_time_now_ms(), start_min, freq);
}

static void offsets_json(const wh_buffer_t *b, sl_buf_t *out)
{
    /* per partition: first and last offset (messages are in consumed order per partition) */
    sl_buf_putc(out, '{');
    int32_t seen[256];
    size_t nseen = 0;
    for (size_t i = 0; i < b->nmsgs; i++) {
        int32_t p = b->msgs[i].partition;
        bool have = false;
        for (size_t k = 0; k < nseen && !have; k++)
            have = seen[k] == p;
        if (have || nseen == sizeof(seen) / sizeof(seen[0]))
            continue;
        seen[nseen++] = p;
        int64_t lo = b->msgs[i].offset, hi = lo;
        for (size_t k = i; k < b->nmsgs; k++)
            if (b->msgs[k].partition == p) {
                lo = b->msgs[k].offset < lo ? b->msgs[k].offset : lo;
                hi = b->msgs[k].offset > hi ? b->msgs[k].offset : hi;
            }
        sl_buf_printf(out, "%s\"%d\":[%lld,%lld]", nseen > 1 ? "," : "", (int)p, (long long)lo,
                      (long long)hi);
    }
    sl_buf_putc(out, '}');
}

static void remove_files(char (*paths)[PATH_MAX], size_t n, const char *dir)
{
    for (size_t i = 0; i < n; i++)
        unlink(paths[i]);
    if (dir)
        rmdir(dir);
}

/*
 * Writes b's staging files and records them as an upload; then b's messages are done (the
 * caller commits) and b is freed. On failure b is kept for a later try and what was written
 * is removed. Returns 0 or an SL_ERR_*.
 */
static int flush(wh_warehouse_t *wh, wh_buffer_t *b)
{
    char err[1024], dest[200], dir[PATH_MAX], ns[WH_NAME_MAX + 1];
    int64_t id = 0;
    if (b->ntables == 0) { /* its events made no rows (skipped tables): nothing to load */
        buffer_done(wh, b);
        return 0;
    }
    int rc = wh_uploads_next_id(wh->pg, &id, err, sizeof(err));
    if (rc)
        goto fail;
    safe_component(b->dest_id, dest, sizeof(dest));
    snprintf(dir, sizeof(dir), "%s/%s/%lld", wh->staging_dir, dest, (long long)id);
    if ((rc = make_dirs(dir, err, sizeof(err))) != 0)
        goto fail;
    char(*paths)[PATH_MAX] = sl_calloc(b->ntables, sizeof(*paths));
    wh_staged_t *files = sl_calloc(b->ntables, sizeof(*files));
    tbuf_view_t view = {0};
    size_t written = 0;
    int64_t total_rows = 0, total_bytes = 0;
    for (size_t t = 0; t < b->ntables; t++) {
        wh_tbuf_t *tb = &b->tables[t];
        char file[WH_NAME_MAX + 8];
        safe_component(tb->table, file, sizeof(file) - 6);
        if (snprintf(paths[t], PATH_MAX, "%s/%s.avro", dir, file) >= PATH_MAX) {
            rc = sl_err_set(err, sizeof(err), SL_ERR_INVALID, "staging path too long: %s", dir);
            break;
        }
        view.t = tb;
        rc = wh_staging_write_fn(paths[t], tb->table, tbuf_row, &view, tb->n, err, sizeof(err));
        if (rc)
            break;
        written++;
        struct stat st;
        files[t] = (wh_staged_t){.table = tb->table,
                                 .path = paths[t],
                                 .rows = (int64_t)tb->n,
                                 .bytes = stat(paths[t], &st) == 0 ? (int64_t)st.st_size : 0};
        total_rows += (int64_t)tb->n;
        total_bytes += files[t].bytes;
    }
    free(view.cols);
    if (!rc) {
        namespace_of(wh, b->source_id, b->dest_id, ns, sizeof(ns));
        sl_buf_t offs = SL_BUF_INIT;
        offsets_json(b, &offs);
        wh_upload_new_t u = {.source_id = b->source_id,
                             .destination_id = b->dest_id,
                             .destination_type = b->dest_type,
                             .namespace = ns,
                             .events = (int64_t)b->nmsgs,
                             .rows = total_rows,
                             .first_event_ms = b->first_event_ms,
                             .last_event_ms = b->last_event_ms,
                             .kafka_topic = wh->topic,
                             .kafka_offsets = offs.data,
                             .files = files,
                             .nfiles = b->ntables};
        rc = wh_uploads_record(wh->pg, id, &u, wh->instance, err, sizeof(err));
        sl_buf_free(&offs);
    }
    if (rc) {
        remove_files(paths, written, dir);
        free(paths);
        free(files);
        goto fail;
    }
    free(paths);
    free(files);
    sl_health_set("warehouse", true, NULL);
    sl_info("warehouse",
            "upload %lld recorded: destination=%s source=%s namespace=%s events=%zu rows=%lld "
            "tables=%zu",
            (long long)id, b->dest_id, b->source_id, ns, b->nmsgs, (long long)total_rows,
            b->ntables);
    sl_metrics_add(dest_counter("sluice_warehouse_staging_files_total",
                                "Avro staging files written", b->dest_id),
                   (double)b->ntables);
    sl_metrics_add(dest_counter("sluice_warehouse_staged_rows_total",
                                "Rows written to staging files", b->dest_id),
                   (double)total_rows);
    sl_metrics_add(dest_counter("sluice_warehouse_staging_bytes_total",
                                "Bytes of staging files written", b->dest_id),
                   (double)total_bytes);
    buffer_done(wh, b);
    pthread_mutex_lock(&wh->mu);
    wh->recorded++;
    pthread_cond_broadcast(&wh->cond);
    pthread_mutex_unlock(&wh->mu);
    return 0;

fail:
    b->retry_wait_ms = b->retry_wait_ms ? b->retry_wait_ms * 2 : WH_FLUSH_RETRY_MS;
    if (b->retry_wait_ms > 30000)
        b->retry_wait_ms = 30000;
    b->retry_mono = sl_time_mono_ms() + b->retry_wait_ms;
    sl_error("warehouse",
             "could not write the staging files of destination %s (%zu events); trying again "
             "in %lld ms: %s",
             b->dest_id, b->nmsgs, (long long)b->retry_wait_ms, err);
    sl_health_set("warehouse", false,
                  "could not record a sync of destination %s: %s (check warehouse.staging_dir "
                  "and postgres)",
                  b->dest_id, err);
    return rc;
}

/* Whether the buffers hold warehouse.max_buffered_events or max_buffered_bytes (over is 1),
 * or half of either (over is 2: where flushing early stops). */
static bool over_limit(const wh_warehouse_t *wh, size_t over)
{
    return wh->buffered * over >= wh->max_events || wh->buffered_bytes * over >= wh->max_bytes;
}

/* The buffer with the most bytes that may be flushed now (not waiting to retry), or NULL. */
static wh_buffer_t *largest(wh_warehouse_t *wh, int64_t now)
{
    wh_buffer_t *big = NULL;
    for (wh_buffer_t *b = wh->buffers; b; b = b->next)
        if (now >= b->retry_mono && (!big || b->bytes > big->bytes))
            big = b;
    return big;
}

/*
 * Flushes the buffers that are due, or all when all. Over max_buffered_events or
 * max_buffered_bytes, the largest buffers first until the rest hold at most half of each
 * (a busy destination syncs early; the others keep their schedule). Commits what was flushed.
 */
static void flush_due(wh_warehouse_t *wh, bool all)
{
    if (!wh->buffers)
        return;
    int64_t now = sl_time_mono_ms();
    bool any = false;
    if (!all && over_limit(wh, 1)) {
        for (wh_buffer_t *b; over_limit(wh, 2) && (b = largest(wh, now));)
            if (flush(wh, b) == 0)
                any = true;
            else
                break; /* Postgres or the disk is away: the others would fail alike */
    }
    sl_workspace_t *w = sl_wsconf_get(wh->ws);
    for (wh_buffer_t *b = wh->buffers, *next; b; b = next) {
        next = b->next;
        if (!all && now < b->retry_mono)
            continue;
        if (all || sync_due(wh, w, b, now))
            any |= flush(wh, b) == 0;
    }
    if (w)
        sl_workspace_unref(w);
    if (any)
        sl_kafka_offsets_commit(wh->offsets, wh->consumer, all);
}

/* Flushes everything, retrying for up to max_ms; what still can't be recorded is dropped
 * (uncommitted, so Kafka delivers it again). */
static void drain(wh_warehouse_t *wh, int64_t max_ms)
{
    int64_t deadline = sl_time_mono_ms() + max_ms;
    flush_due(wh, true);
    while (wh->buffers && sl_time_mono_ms() < deadline) {
        usleep(200000);
        flush_due(wh, true);
    }
    for (wh_buffer_t *b = wh->buffers, *next; b; b = next) {
        next = b->next;
        sl_warn("warehouse",
                "dropping %zu buffered events of destination %s: they stay uncommitted in "
                "kafka and are consumed again",
                b->nmsgs, b->dest_id);
        buffer_free(b);
    }
    wh->buffers = NULL;
    wh->buffered = 0;
    wh->buffered_bytes = 0;
}

/* Before partitions go (all of them: the assignor is eager): record what is buffered, so the
 * next owner starts after it, and commit. */
static void on_revoke(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    wh_warehouse_t *wh = opaque;
    drain(wh, WH_DRAIN_MS);
    sl_kafka_offsets_commit(wh->offsets, rk, true);
    sl_kafka_offsets_forget(wh->offsets, parts);
}

static void on_assign(rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    (void)rk;
    (void)parts;
    wh_warehouse_t *wh = opaque;
    wh->paused = false;
}

/* Stops fetching while max_buffered_events or max_buffered_bytes are held (Postgres away, or
 * the staging files can't be written), resumes below them. */
static void backpressure(wh_warehouse_t *wh)
{
    bool over = over_limit(wh, 1);
    if (over == wh->paused)
        return;
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(wh->consumer, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR || !parts)
        return;
    if (over)
        rd_kafka_pause_partitions(wh->consumer, parts);
    else
        rd_kafka_resume_partitions(wh->consumer, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    wh->paused = over;
    if (over)
        sl_warn("warehouse",
                "%zu events (%zu bytes) buffered (warehouse.max_buffered_events, "
                "max_buffered_bytes): paused consuming until they are written",
                wh->buffered, wh->buffered_bytes);
}

static void update_gauges(wh_warehouse_t *wh)
{
    sl_metrics_set(wh->m_buffered, (double)wh->buffered);
    sl_metrics_set(wh->m_buffered_bytes, (double)wh->buffered_bytes);
    int64_t oldest = 0;
    for (wh_buffer_t *b = wh->buffers; b; b = b->next)
        if (b->first_event_ms && (!oldest || b->first_event_ms < oldest))
            oldest = b->first_event_ms;
    sl_metrics_set(wh->m_lag, oldest ? (double)(sl_time_now_ms() - oldest) / 1000.0 : 0.0);
}

static void *consumer_main(void *arg)
{
    wh_warehouse_t *wh = arg;
    int64_t last_commit = sl_time_mono_ms();
    /* librdkafka refills a full pre-fetch queue up to a second late (common/kafka.h). */
    sl_kafka_nudger_t *nudger = sl_kafka_nudger_start(wh->consumer);
    while (!atomic_load(&wh->stop)) {
        backpressure(wh);
        for (int i = 0; i < WH_POLL_BATCH; i++) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(wh->consumer, i ? 0 : 100);
            if (!m)
                break;
            sl_kafka_nudger_took(nudger, m->len);
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
                on_message(wh, m);
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                sl_warn("warehouse", "kafka consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            if (over_limit(wh, 1))
                break;
        }
        flush_due(wh, false);
        update_gauges(wh);
        if (sl_time_mono_ms() - last_commit >= WH_COMMIT_EVERY_MS) {
            sl_kafka_offsets_commit(wh->offsets, wh->consumer, false);
            last_commit = sl_time_mono_ms();
        }
    }
    sl_kafka_nudger_stop(nudger);
    drain(wh, WH_DRAIN_MS);
    update_gauges(wh);
    sl_kafka_offsets_commit(wh->offsets, wh->consumer, true);
    return NULL;
}

/* --- uploads (worker threads) --- */

static void remove_staging(const wh_table_job_t *jobs, size_t n)
{
    char dir[PATH_MAX] = "";
    for (size_t i = 0; i < n; i++) {
        unlink(jobs[i].path);
        const char *slash = strrchr(jobs[i].path, '/');
        if (slash && !*dir)
            snprintf(dir, sizeof(dir), "%.*s", (int)(slash - jobs[i].path), jobs[i].path);
    }
    if (*dir)
        rmdir(dir);
}

/* Generating load files: for Postgres the staging files are the load files; check that each
 * is there and readable. */
static int generate(const wh_table_job_t *jobs, size_t n, char *errstr, size_t errstr_size)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(jobs[i].state, WH_EXPORTED) == 0)
            continue;
        char err[512];
        wh_staging_reader_t *r = wh_staging_open(jobs[i].path, err, sizeof(err));
        if (!r)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "staging file of table %s: %s",
                              jobs[i].table, err);
        wh_staging_close(r);
    }
    return 0;
}

/* The bookkeeping of export_tables' loads (loadall.h hooks, called one at a time). */
typedef struct export_ctx {
    struct wh_worker *wk;
    wh_upload_t *u;
    sl_metric_t *m_rows;
    int64_t rows_loaded;
    sl_buf_t failed; /* "table T: why; ..." */
} export_ctx_t;

static void export_started(wh_load_task_t *t, void *opaque)
{
    export_ctx_t *x = opaque;
    char err[512];
    wh_uploads_table_state(x->wk->pg, x->u->id, t->table, WH_EXPORTING, 0, NULL, err, sizeof(err));
}

static void export_finished(wh_load_task_t *t, void *opaque)
{
    export_ctx_t *x = opaque;
    char err[512];
    if (t->loaded < 0) {
        sl_warn("warehouse", "upload %lld: table %s.%s could not be loaded: %s",
                (long long)x->u->id, x->u->namespace, t->table, t->error);
        wh_uploads_table_state(x->wk->pg, x->u->id, t->table, WH_EXPORTING_FAILED, 0, t->error, err,
                               sizeof(err));
        sl_buf_printf(&x->failed, "%stable %s: %s", x->failed.len ? "; " : "", t->table, t->error);
        return;
    }
    if (wh_uploads_table_state(x->wk->pg, x->u->id, t->table, WH_EXPORTED, t->loaded, NULL, err,
                               sizeof(err)) != 0)
        sl_buf_printf(&x->failed, "%stable %s: loaded, but not recorded: %s",
                      x->failed.len ? "; " : "", t->table, err);
    x->rows_loaded += t->loaded;
    sl_metrics_add(x->m_rows, (double)t->loaded);
}

/* Exporting data: each table not loaded yet, in one transaction each (pgload.h), up to
 * warehouse.load_parallelism at once (loadall.h). A table that fails does not stop the others.
 * Returns 0 with *rows_loaded (all tables of the upload), or an error naming the tables that
 * failed. */
static int export_tables(struct wh_worker *wk, wh_upload_t *u, wh_table_job_t *jobs, size_t n,
                         int64_t *rows_loaded, char *errstr, size_t errstr_size)
{
    wh_warehouse_t *wh = wk->wh;
    int rc = 0;
    sl_workspace_t *w = sl_wsconf_get(wh->ws);
    const sl_destination_t *d = w ? sl_workspace_destination_by_id(w, u->destination_id) : NULL;
    if (!d) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                        "destination %s is not in the workspace config", u->destination_id);
        goto out;
    }
    export_ctx_t x = {.wk = wk,
                      .u = u,
                      .m_rows =
                          dest_counter("sluice_warehouse_rows_loaded_total",
                                       "Rows written into warehouse tables", u->destination_id),
                      .failed = SL_BUF_INIT};
    wh_load_task_t *tasks = sl_calloc(n ? n : 1, sizeof(*tasks));
    for (size_t i = 0; i < n; i++) {
        tasks[i] = (wh_load_task_t){.table = jobs[i].table,
                                    .path = jobs[i].path,
                                    .rows = jobs[i].rows,
                                    .skip = strcmp(jobs[i].state, WH_EXPORTED) == 0};
        if (tasks[i].skip)
            x.rows_loaded += jobs[i].rows_loaded;
    }
    wh_load_hooks_t hooks = {
        .started = export_started, .finished = export_finished, .opaque = &x, .stop = &wh->stop};
    char err[1024];
    rc = wh_pg_load_all(d->config, u->namespace, tasks, n, wh->load_parallelism, &hooks, err,
                        sizeof(err));
    if (rc == SL_ERR_INVALID)
        sl_err_set(errstr, errstr_size, rc, "destination %s: %s", u->destination_id, err);
    else if (rc)
        sl_err_set(errstr, errstr_size, rc, "%s", err);
    else if (x.failed.len)
        rc = sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "%s", x.failed.data);
    *rows_loaded = x.rows_loaded;
    sl_buf_free(&x.failed);
    free(tasks);
out:
    if (w)
        sl_workspace_unref(w);
    return rc;
}

static void run_upload(struct wh_worker *wk, wh_upload_t *u)
{
    wh_warehouse_t *wh = wk->wh;
    char err[2048];
    int64_t start = sl_time_mono_ms();
    bool exporting =
        strcmp(u->state, WH_EXPORTING) == 0 || strcmp(u->state, WH_EXPORTING_FAILED) == 0;
    const char *step = exporting ? WH_EXPORTING : WH_GENERATING;
    const char *failed_state = exporting ? WH_EXPORTING_FAILED : WH_GENERATING_FAILED;
    wh_table_job_t *jobs = NULL;
    size_t n = 0;
    int64_t rows = 0;
    sl_info("warehouse", "upload %lld claimed by %s: destination=%s namespace=%s state=%s",
            (long long)u->id, wk->claim, u->destination_id, u->namespace, u->state);
    int rc = wh_uploads_set_state(wk->pg, u, step, true, wh->lease_ms, err, sizeof(err));
    if (rc)
        goto lost;
    if ((rc = wh_uploads_tables(wk->pg, u->id, &jobs, &n, err, sizeof(err))) != 0)
        goto lost;
    if (!exporting) {
        if ((rc = generate(jobs, n, err, sizeof(err))) != 0)
            goto failed;
        step = WH_EXPORTING;
        failed_state = WH_EXPORTING_FAILED;
        if ((rc = wh_uploads_set_state(wk->pg, u, step, false, wh->lease_ms, err, sizeof(err))))
            goto lost;
    }
    rc = export_tables(wk, u, jobs, n, &rows, err, sizeof(err));
    if (rc && atomic_load(&wh->stop)) {
        if (wh_uploads_release(wk->pg, u, err, sizeof(err)) == 0)
            sl_info("warehouse", "upload %lld given back unfinished: stopping", (long long)u->id);
        goto out;
    }
    if (rc)
        goto failed;
    if ((rc = wh_uploads_finish(wk->pg, u, rows, err, sizeof(err))) != 0)
        goto lost;
    remove_staging(jobs, n);
    sl_metrics_observe(wh->m_upload_seconds, (double)(sl_time_mono_ms() - start) / 1000.0);
    sl_info("warehouse",
            "upload %lld exported: destination=%s namespace=%s rows_loaded=%lld "
            "tables=%zu attempt=%d",
            (long long)u->id, u->destination_id, u->namespace, (long long)rows, n, u->attempts);
    goto out;

failed : {
    bool aborted = false;
    char err2[512];
    sl_metrics_add(sl_metrics_counter("sluice_warehouse_upload_failures_total",
                                      "Upload attempts that failed, by the step that failed",
                                      "destination", u->destination_id, "state", failed_state,
                                      NULL),
                   1);
    if (wh_uploads_fail(wk->pg, u, failed_state, err, wh->retry_base_ms, &aborted, err2,
                        sizeof(err2)) != 0) {
        sl_error("warehouse", "upload %lld failed (%s) and that could not be recorded: %s",
                 (long long)u->id, err, err2);
        goto out;
    }
    if (aborted)
        sl_error("warehouse",
                 "upload %lld aborted after %d attempts: %s; `sluice warehouse retry %lld` "
                 "tries it again once the cause is fixed",
                 (long long)u->id, u->attempts, err, (long long)u->id);
    else
        sl_warn("warehouse", "upload %lld failed (attempt %d, %s), will be retried: %s",
                (long long)u->id, u->attempts, failed_state, err);
    goto out;
}
lost:
    /* Postgres is away or the claim was taken over: the lease lapses or is someone else's. */
    sl_warn("warehouse", "upload %lld: %s", (long long)u->id, err);
out:
    wh_table_jobs_free(jobs, n);
}

static void *worker_main(void *arg)
{
    struct wh_worker *wk = arg;
    wh_warehouse_t *wh = wk->wh;
    char err[1024];
    uint64_t seen = 0;
    bool reported = false;
    while (!atomic_load(&wh->stop)) {
        wh_upload_t u = {0};
        int rc = wh_uploads_claim(wk->pg, wk->claim, wh->lease_ms, &u, err, sizeof(err));
        if (rc == 1) {
            reported = false;
            run_upload(wk, &u);
            wh_upload_free(&u);
            continue;
        }
        if (rc < 0 && !reported) {
            sl_warn("warehouse", "could not look for due uploads: %s", err);
            reported = true;
        }
        pthread_mutex_lock(&wh->mu);
        if (wh->recorded == seen && !atomic_load(&wh->stop)) {
            struct timespec ts;
            sl_time_deadline(&ts, WH_IDLE_CLAIM_MS);
            pthread_cond_timedwait(&wh->cond, &wh->mu, &ts);
        }
        seen = wh->recorded;
        pthread_mutex_unlock(&wh->mu);
    }
    return NULL;
}

/* --- staging directories left behind --- */

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* Removes the files of staging directory dir and dir itself. */
static void remove_dir_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[PATH_MAX];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0 &&
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
            unlink(path);
    closedir(d);
    rmdir(dir);
}

/*
 * Staging directories (staging_dir/<destination>/<upload id>) that nothing will read again: of
 * an upload id that was never recorded (a crash between writing the files and recording the
 * upload; the events were not committed, so they are consumed again) once older than
 * WH_ORPHAN_AGE_MS, and of an upload already exported (a crash before its files were removed).
 * Returns the number removed.
 */
static int clean_staging(wh_warehouse_t *wh, sl_pg_t *pg)
{
    DIR *top = opendir(wh->staging_dir);
    if (!top)
        return 0;
    int removed = 0;
    int64_t now = sl_time_now_ms();
    struct dirent *de;
    char dest[PATH_MAX], dir[PATH_MAX], err[512], state[64];
    while ((de = readdir(top))) {
        if (de->d_name[0] == '.' ||
            snprintf(dest, sizeof(dest), "%s/%s", wh->staging_dir, de->d_name) >= (int)sizeof(dest))
            continue;
        DIR *dd = opendir(dest);
        if (!dd)
            continue;
        struct dirent *ue;
        while ((ue = readdir(dd))) {
            struct stat st;
            if (!all_digits(ue->d_name) ||
                snprintf(dir, sizeof(dir), "%s/%s", dest, ue->d_name) >= (int)sizeof(dir) ||
                stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
                continue;
            int64_t age = now - ((int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000);
            int found = wh_uploads_state(pg, strtoll(ue->d_name, NULL, 10), state, sizeof(state),
                                         err, sizeof(err));
            if (found < 0) {
                sl_warn("warehouse", "could not look for staging directories left behind: %s", err);
                closedir(dd);
                closedir(top);
                return removed;
            }
            if ((found == 0 && age >= WH_ORPHAN_AGE_MS) ||
                (found == 1 && strcmp(state, WH_EXPORTED) == 0)) {
                remove_dir_files(dir);
                removed++;
                sl_info("warehouse", "removed staging directory %s: %s", dir,
                        found ? "its upload is exported"
                              : "no upload was recorded with it (a crash while it was written; "
                                "its events are consumed again)");
            }
        }
        closedir(dd);
    }
    closedir(top);
    return removed;
}

/* --- keeper --- */

static void set_state_gauge(const char *state, int64_t n, void *opaque)
{
    (void)opaque;
    sl_metrics_set(sl_metrics_gauge("sluice_warehouse_uploads",
                                    "Uploads by state, over every "
                                    "instance",
                                    "state", state, NULL),
                   (double)n);
}

static void *keeper_main(void *arg)
{
    wh_warehouse_t *wh = arg;
    char err[1024];
    int64_t last_renew = 0, last_metrics = 0, last_clean = sl_time_mono_ms();
    pthread_mutex_lock(&wh->mu);
    while (!atomic_load(&wh->stop)) {
        pthread_mutex_unlock(&wh->mu);
        int64_t now = sl_time_mono_ms();
        if (now - last_renew >= wh->lease_ms / 4) {
            if (wh_uploads_renew(wh->keeper_pg, wh->instance, wh->lease_ms, err, sizeof(err)))
                sl_warn("warehouse", "could not renew the claims of %s: %s", wh->instance, err);
            last_renew = now;
        }
        if (now - last_clean >= WH_ORPHAN_EVERY_MS) {
            clean_staging(wh, wh->keeper_pg);
            last_clean = now;
        }
        if (now - last_metrics >= WH_METRICS_MS) {
            for (size_t i = 0; upload_states[i]; i++)
                set_state_gauge(upload_states[i], 0, NULL);
            wh_uploads_count_states(wh->keeper_pg, set_state_gauge, NULL, err, sizeof(err));
            last_metrics = now;
        }
        pthread_mutex_lock(&wh->mu);
        if (!atomic_load(&wh->stop)) {
            struct timespec ts;
            sl_time_deadline(&ts, 500);
            pthread_cond_timedwait(&wh->cond, &wh->mu, &ts);
        }
    }
    pthread_mutex_unlock(&wh->mu);
    return NULL;
}

/* --- start and stop --- */

static void warehouse_free(wh_warehouse_t *wh)
{
    for (wh_buffer_t *b = wh->buffers, *next; b; b = next) {
        next = b->next;
        buffer_free(b);
    }
    for (int i = 0; wh->workers && i < wh->nworkers; i++)
        sl_pg_destroy(wh->workers[i].pg);
    free(wh->workers);
    sl_pg_destroy(wh->keeper_pg);
    sl_pg_destroy(wh->pg);
    sl_kafka_offsets_destroy(wh->offsets);
    wh_rows_free(&wh->scratch);
    pthread_mutex_destroy(&wh->mu);
    pthread_cond_destroy(&wh->cond);
    if (wh->producer) {
        rd_kafka_flush(wh->producer, 10000);
        rd_kafka_destroy(wh->producer);
    }
    free(wh->failed_topic);
    free(wh->topic);
    free(wh->group);
    free(wh->staging_dir);
    free(wh->instance);
    free(wh);
}

wh_warehouse_t *wh_warehouse_start(const sl_conf_t *conf, sl_wsconf_t *ws, char *errstr,
                                   size_t errstr_size)
{
    wh_warehouse_t *wh = sl_calloc(1, sizeof(*wh));
    pthread_mutex_init(&wh->mu, NULL);
    pthread_cond_init(&wh->cond, NULL);
    wh->ws = ws;
    wh->topic = sl_kafka_topic(conf, SL_TOPIC_WAREHOUSE);
    wh->group = sl_kafka_topic(conf, SL_GROUP_WAREHOUSE);
    wh->sync_ms = sl_conf_duration_ms(conf, "warehouse.sync_interval");
    wh->retry_base_ms = sl_conf_duration_ms(conf, "warehouse.retry_base");
    wh->max_events = (size_t)sl_conf_int(conf, "warehouse.max_buffered_events");
    wh->max_bytes = (size_t)sl_conf_size(conf, "warehouse.max_buffered_bytes");
    wh->lease_ms = sl_conf_duration_ms(conf, "warehouse.lease");
    wh->nworkers = (int)sl_conf_int(conf, "warehouse.workers");
    wh->load_parallelism = (int)sl_conf_int(conf, "warehouse.load_parallelism");
    wh->offsets = sl_kafka_offsets_new();
    const char *dsn = sl_conf_str(conf, "postgres.dsn");
    wh->pg = sl_pg_new(dsn);
    wh->keeper_pg = sl_pg_new(dsn);
    wh->m_bad = sl_metrics_counter("sluice_warehouse_bad_events_total",
                                   "Messages of the warehouse topic that could not become rows "
                                   "(skipped)",
                                   NULL);
    wh->m_buffered = sl_metrics_gauge("sluice_warehouse_buffered_events",
                                      "Events consumed and not yet written to staging files", NULL);
    wh->m_buffered_bytes =
        sl_metrics_gauge("sluice_warehouse_buffered_bytes",
                         "Memory held by the rows of the events not yet written to staging files "
                         "(warehouse.max_buffered_bytes bounds it)",
                         NULL);
    wh->m_lag = sl_metrics_gauge("sluice_warehouse_oldest_buffered_event_seconds",
                                 "Age (since receivedAt) of the oldest event not yet in staging "
                                 "files",
                                 NULL);
    wh->m_upload_seconds =
        sl_metrics_histogram("sluice_warehouse_upload_seconds",
                             "Time from claiming an upload to its exported_data", NULL, 0, NULL);

    const char *inst = sl_conf_str(conf, "warehouse.instance_id");
    if (*inst) {
        wh->instance = sl_strdup(inst);
    } else {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        wh->instance = sl_asprintf("%s:%lld", host, (long long)sl_conf_int(conf, "warehouse.port"));
    }
    if (strchr(wh->instance, '#')) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "warehouse.instance_id \"%s\" has a '#': use letters, digits, '-', '.', ':'",
                   wh->instance);
        goto fail;
    }
    /* Made at the first sync (no directory for an install without warehouse destinations);
     * recorded as an absolute path, since another instance may load the files. */
    const char *sd = sl_conf_str(conf, "warehouse.staging_dir");
    char cwd[PATH_MAX];
    if (!*sd || (sd[0] != '/' && !getcwd(cwd, sizeof(cwd)))) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                   "warehouse.staging_dir \"%s\" is not usable: set it to a directory", sd);
        goto fail;
    }
    wh->staging_dir = sd[0] == '/' ? sl_strdup(sd) : sl_asprintf("%s/%s", cwd, sd);
    for (size_t len = strlen(wh->staging_dir); len > 1 && wh->staging_dir[len - 1] == '/';)
        wh->staging_dir[--len] = '\0';

    /* An earlier run of this instance died holding claims: nothing of it runs any more. */
    char err[512];
    int released = wh_uploads_release_instance(wh->keeper_pg, wh->instance, err, sizeof(err));
    if (released > 0)
        sl_info("warehouse", "released %d uploads claimed by an earlier run of %s", released,
                wh->instance);
    else if (released < 0)
        sl_warn("warehouse", "could not release the claims of an earlier run of %s: %s",
                wh->instance, err);

    clean_staging(wh, wh->keeper_pg); /* before this instance writes any */

    wh->failed_topic = sl_kafka_topic(conf, SL_TOPIC_FAILED);
    wh->producer = sl_kafka_producer_new(conf, dl_report, wh, errstr, errstr_size);
    if (!wh->producer)
        goto fail;
    const char *topics[] = {wh->topic, NULL};
    wh->consumer =
        sl_kafka_consumer_new(conf, wh->group, topics, on_revoke, wh, errstr, errstr_size);
    if (!wh->consumer)
        goto fail;
    sl_kafka_consumer_on_assign(wh->consumer, on_assign);
    wh->workers = sl_calloc((size_t)wh->nworkers, sizeof(*wh->workers));
    for (int i = 0; i < wh->nworkers; i++) {
        struct wh_worker *wk = &wh->workers[i];
        wk->wh = wh;
        wk->n = i;
        snprintf(wk->claim, sizeof(wk->claim), "%s#%d", wh->instance, i);
        wk->pg = sl_pg_new(dsn);
    }
    pthread_create(&wh->consumer_thread, NULL, consumer_main, wh);
    for (int i = 0; i < wh->nworkers; i++)
        pthread_create(&wh->workers[i].thread, NULL, worker_main, &wh->workers[i]);
    pthread_create(&wh->keeper_thread, NULL, keeper_main, wh);
    wh->threads_started = true;
    sl_info("warehouse",
            "warehouse started: instance=%s group=%s topic=%s staging_dir=%s sync_interval=%lldms "
            "workers=%d load_parallelism=%d lease=%lldms",
            wh->instance, wh->group, wh->topic, wh->staging_dir, (long long)wh->sync_ms,
            wh->nworkers, wh->load_parallelism, (long long)wh->lease_ms);
    return wh;
fail:
    warehouse_free(wh);
    return NULL;
}

void wh_warehouse_stop(wh_warehouse_t *wh)
{
    if (!wh)
        return;
    pthread_mutex_lock(&wh->mu);
    atomic_store(&wh->stop, true);
    pthread_cond_broadcast(&wh->cond);
    pthread_mutex_unlock(&wh->mu);
    pthread_join(wh->consumer_thread, NULL); /* drains: buffered events become uploads */
    rd_kafka_consumer_close(wh->consumer);
    sl_kafka_consumer_destroy(wh->consumer);
    for (int i = 0; i < wh->nworkers; i++)
        pthread_join(wh->workers[i].thread, NULL);
    pthread_join(wh->keeper_thread, NULL);
    warehouse_free(wh);
}
