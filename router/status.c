/* Job status rows in sluice_jobs: COPY writer, day partitions and retention, see status.h. */
#include "router/status.h"
#include "router/pgcopy.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DAY_MS 86400000LL

static const char copy_sql[] =
    "COPY sluice_jobs (job_id, message_id, source_id, destination_id, destination_type, "
    "user_key, state, attempts, last_status, last_response, first_attempt_at, last_attempt_at, "
    "kafka_topic, kafka_partition, kafka_offset, trace_id, span_id, parent_span_id, received_at, "
    "enqueued_at, picked_at, processed_at, routed_at, completed_at) FROM STDIN (FORMAT binary)";
#define COPY_FIELDS 24

/* Sent after the rows' COPY in the same query string when some of them are final, so in the
 * same implicit transaction (an offset is in sluice_jobs_done only if its rows are in
 * sluice_jobs), and without a round trip of its own: the offsets of those jobs, per topic and
 * partition (migration 0010). */
static const char insert_done_sql[] = "; INSERT INTO sluice_jobs_done (kafka_topic, "
                                      "kafka_partition, last_offset, first_offsets, "
                                      "last_offsets) VALUES ";

/* The UTC day (ms / DAY_MS) whose partition this process created or saw last. A write in a
 * transaction that is rolled back may leave it set for a partition that does not exist; rows
 * then land in the DEFAULT partition until the next rt_status_maintain moves them out. */
static _Atomic int64_t partition_day = -1;

/* Fills errstr from r (may be NULL) or the connection and returns the error class. */
static int pg_fail(PGconn *c, PGresult *r, const char *what, char *errstr, size_t errstr_size)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    if (!*msg)
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    msg[strcspn(msg, "\n")] = '\0';
    int err = PQstatus(c) == CONNECTION_OK ? SL_ERR_INVALID : SL_ERR_TRANSIENT;
    return sl_err_set(errstr, errstr_size, err, "%s: %s", what, msg);
}

/* Runs sql; returns its result (caller PQclear()s it), or NULL with *err and errstr set when
 * the status is not want. */
static PGresult *run(PGconn *c, const char *sql, int nparams, const char *const *params,
                     ExecStatusType want, const char *what, int *err, char *errstr,
                     size_t errstr_size)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == want)
        return r;
    *err = pg_fail(c, r, what, errstr, errstr_size);
    PQclear(r);
    return NULL;
}

/* "YYYYMMDD" of a UTC day number. */
static void day_digits(int64_t day, char out[16])
{
    time_t t = (time_t)(day * (DAY_MS / 1000));
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%Y%m%d", &tm);
}

static int add_day(PGconn *c, int64_t day, char *errstr, size_t errstr_size)
{
    char d[16];
    day_digits(day, d);
    const char *params[] = {d};
    char what[64];
    snprintf(what, sizeof(what), "could not create the job status partition of %s", d);
    int err = 0;
    PQclear(run(c, "SELECT sluice_jobs_add_day($1::date)", 1, params, PGRES_TUPLES_OK, what, &err,
                errstr, errstr_size));
    return err;
}

static void put_row(sl_buf_t *b, const rt_status_row_t *w)
{
    rt_copy_be(b, COPY_FIELDS, 2);
    const char *text[] = {w->job_id,           w->message_id, w->source_id, w->destination_id,
                          w->destination_type, w->user_key,   w->state};
    for (size_t i = 0; i < sizeof(text) / sizeof(text[0]); i++)
        rt_copy_text(b, text[i], SIZE_MAX, SIZE_MAX);
    rt_copy_int4(b, w->attempts);
    if (w->last_status)
        rt_copy_int4(b, (int32_t)w->last_status);
    else
        rt_copy_null(b);
    rt_copy_text(b, w->last_response, w->last_response ? w->last_response_len : 0,
                 RT_STATUS_RESPONSE_MAX);
    rt_copy_time(b, w->first_attempt_ms);
    rt_copy_time(b, w->last_attempt_ms);
    rt_copy_text(b, w->kafka_topic, SIZE_MAX, SIZE_MAX);
    if (w->kafka_topic) {
        rt_copy_int4(b, w->kafka_partition);
        rt_copy_int8(b, w->kafka_offset);
    } else {
        rt_copy_null(b);
        rt_copy_null(b);
    }
    const char *ids[] = {w->trace_id, w->span_id, w->parent_span_id};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        rt_copy_text(b, ids[i] && *ids[i] ? ids[i] : NULL, SIZE_MAX, SIZE_MAX);
    const int64_t times[] = {w->received_ms,  w->enqueued_ms, w->picked_ms,
                             w->processed_ms, w->routed_ms,   w->completed_ms};
    for (size_t i = 0; i < sizeof(times) / sizeof(times[0]); i++)
        rt_copy_time(b, times[i]);
}

/* A final job's place in its partition, for the rows of sluice_jobs_done. */
typedef struct done_off {
    size_t group; /* index of its (topic, partition) among the batch's */
    int64_t offset;
} done_off_t;

static int done_off_cmp(const void *a, const void *b)
{
    const done_off_t *x = a, *y = b;
    if (x->group != y->group)
        return x->group < y->group ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static bool is_final(const char *state)
{
    return strcmp(state, "succeeded") == 0 || strcmp(state, "aborted") == 0;
}

static bool same_partition(const rt_status_row_t *a, const rt_status_row_t *b)
{
    return a->kafka_partition == b->kafka_partition && strcmp(a->kafka_topic, b->kafka_topic) == 0;
}

/* Appends to sql the INSERT of the sluice_jobs_done rows of the final jobs among rows (nothing
 * if none): one per topic and partition, its offsets as ascending ranges. (A list of offsets
 * was over Postgres's 2 KB for a row, so it compressed every one: 10% of its work per status
 * row.) Returns 0, or SL_ERR_TRANSIENT when c could not quote a topic. */
static int put_done_rows(sl_buf_t *sql, PGconn *c, const rt_status_row_t *rows, size_t n,
                         char *errstr, size_t errstr_size)
{
    done_off_t *offs = NULL;
    const rt_status_row_t **groups = NULL; /* the first row of each (topic, partition) */
    size_t noffs = 0, ngroups = 0, last = 0;
    for (size_t i = 0; i < n; i++) {
        const rt_status_row_t *w = &rows[i];
        if (!w->kafka_topic || !is_final(w->state))
            continue;
        if (!offs)
            offs = sl_malloc((n - i) * sizeof(*offs));
        /* rows come in runs of one partition: try the last group first */
        size_t g = last;
        if (g >= ngroups || !same_partition(groups[g], w)) {
            for (g = 0; g < ngroups && !same_partition(groups[g], w); g++)
                ;
            if (g == ngroups) {
                groups = sl_realloc(groups, (ngroups + 1) * sizeof(*groups));
                groups[ngroups++] = w;
            }
        }
        last = g;
        offs[noffs++] = (done_off_t){g, w->kafka_offset};
    }
    if (noffs == 0)
        return 0;
    int err = 0;
    sl_buf_append(sql, insert_done_sql, sizeof(insert_done_sql) - 1);
    qsort(offs, noffs, sizeof(*offs), done_off_cmp);
    for (size_t i = 0; i < noffs;) {
        /* the group's offsets as ranges of consecutive ones: first_offsets[k] to
         * last_offsets[k] */
        size_t end = i + 1;
        while (end < noffs && offs[end].group == offs[i].group)
            end++;
        const rt_status_row_t *w = groups[offs[i].group];
        char *topic = PQescapeLiteral(c, w->kafka_topic, strlen(w->kafka_topic));
        if (!topic) {
            err = pg_fail(c, NULL, "could not write job status", errstr, errstr_size);
            break;
        }
        sl_buf_printf(sql, "(%s, %" PRId32 ", %" PRId64 ", ", topic, w->kafka_partition,
                      offs[end - 1].offset);
        PQfreemem(topic);
        for (int lasts = 0; lasts < 2; lasts++) {
            sl_buf_puts(sql, lasts ? ", '{" : "'{");
            const char *sep = "";
            for (size_t k = i; k < end; k++) {
                bool starts = k == i || offs[k].offset > offs[k - 1].offset + 1;
                bool ends = k + 1 == end || offs[k + 1].offset > offs[k].offset + 1;
                if (lasts ? ends : starts) {
                    sl_buf_printf(sql, "%s%" PRId64, sep, offs[k].offset);
                    sep = ",";
                }
            }
            sl_buf_puts(sql, "}'");
        }
        sl_buf_puts(sql, end < noffs ? "), " : ")");
        i = end;
    }
    free(groups);
    free(offs);
    return err;
}

/* Takes the next result, which must be a COPY's start, and sends it data and its end. */
static int copy_data(PGconn *c, const sl_buf_t *data, char *errstr, size_t errstr_size)
{
    PGresult *r = PQgetResult(c);
    int err = 0;
    if (PQresultStatus(r) != PGRES_COPY_IN)
        err = pg_fail(c, r, "could not write job status", errstr, errstr_size);
    PQclear(r);
    if (!err && (PQputCopyData(c, data->data, (int)data->len) != 1 || PQputCopyEnd(c, NULL) != 1))
        err = pg_fail(c, NULL, "could not write job status", errstr, errstr_size);
    return err;
}

int rt_status_send(PGconn *c, const rt_status_row_t *rows, size_t n, char *errstr,
                   size_t errstr_size)
{
    if (n == 0)
        return 0;
    int64_t day = sl_time_now_ms() / DAY_MS;
    int err = 0;
    if (atomic_load(&partition_day) != day) {
        err = add_day(c, day, errstr, errstr_size);
        if (err)
            return err;
        atomic_store(&partition_day, day);
    }
    sl_buf_t sql = SL_BUF_INIT, b = SL_BUF_INIT;
    sl_buf_puts(&sql, copy_sql);
    err = put_done_rows(&sql, c, rows, n, errstr, errstr_size);
    if (!err) {
        rt_copy_begin(&b);
        for (size_t i = 0; i < n; i++)
            put_row(&b, &rows[i]);
        rt_copy_end(&b);
        if (PQsendQuery(c, sql.data) != 1) {
            err = pg_fail(c, NULL, "could not write job status", errstr, errstr_size);
        } else {
            err = copy_data(c, &b, errstr, errstr_size);
            if (err)
                rt_status_finish(c, NULL, 0); /* so the connection is usable again */
        }
    }
    sl_buf_free(&sql);
    sl_buf_free(&b);
    return err;
}

int rt_status_finish(PGconn *c, char *errstr, size_t errstr_size)
{
    int err = 0;
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL) {
        if (!err && PQresultStatus(r) != PGRES_COMMAND_OK)
            err = pg_fail(c, r, "could not write job status", errstr, errstr_size);
        PQclear(r);
    }
    return err;
}

int rt_status_write(PGconn *c, const rt_status_row_t *rows, size_t n, char *errstr,
                    size_t errstr_size)
{
    int err = rt_status_send(c, rows, n, errstr, errstr_size);
    return err || n == 0 ? err : rt_status_finish(c, errstr, errstr_size);
}

int rt_status_maintain(PGconn *c, int64_t now_ms, int64_t retention_ms, char *errstr,
                       size_t errstr_size)
{
    int64_t today = now_ms / DAY_MS;
    int err = add_day(c, today, errstr, errstr_size);
    if (!err)
        err = add_day(c, today + 1, errstr, errstr_size);
    if (!err && today == sl_time_now_ms() / DAY_MS)
        atomic_store(&partition_day, today);
    if (err || retention_ms <= 0)
        return err;

    /* Day D covers [D, D + 1): entirely older than the cutoff when D + 1 <= cutoff's day. The
     * days of sluice_jobs_done go with those of sluice_jobs. */
    char d[16];
    day_digits((now_ms - retention_ms) / DAY_MS, d);
    static const char *const parents[] = {"sluice_jobs", "sluice_jobs_done"};
    for (size_t p = 0; p < sizeof(parents) / sizeof(parents[0]) && !err; p++) {
        char first_kept[48], pattern[48];
        snprintf(first_kept, sizeof(first_kept), "%s_p%s", parents[p], d);
        snprintf(pattern, sizeof(pattern), "^%s_p[0-9]{8}$", parents[p]);
        const char *params[] = {parents[p], first_kept, pattern};
        PGresult *r = run(c,
                          "SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                          "ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass "
                          "AND c.relname ~ $3 AND c.relname COLLATE \"C\" < $2 ORDER BY 1",
                          3, params, PGRES_TUPLES_OK, "could not list the job status partitions",
                          &err, errstr, errstr_size);
        for (int i = 0; r && i < PQntuples(r) && !err; i++) {
            char sql[128];
            /* the name matched ^PARENT_p[0-9]{8}$: no quoting needed */
            snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", PQgetvalue(r, i, 0));
            PQclear(run(c, sql, 0, NULL, PGRES_COMMAND_OK,
                        "could not drop an old job status partition", &err, errstr, errstr_size));
        }
        PQclear(r);
    }
    return err;
}

int rt_status_done_offsets(PGconn *c, const char *topic, int32_t partition, int64_t from_offset,
                           int64_t **offs, size_t *n, char *errstr, size_t errstr_size)
{
    *offs = NULL;
    *n = 0;
    char part[16], from[24];
    snprintf(part, sizeof(part), "%" PRId32, partition);
    snprintf(from, sizeof(from), "%" PRId64, from_offset);
    const char *params[] = {topic, part, from};
    int err = 0;
    PGresult *r = run(c,
                      "SELECT DISTINCT o FROM sluice_jobs_done d, "
                      "unnest(d.first_offsets, d.last_offsets) AS r (lo, hi), "
                      "generate_series(greatest(r.lo, $3::bigint), r.hi) AS o "
                      "WHERE d.kafka_topic = $1 AND d.kafka_partition = $2::int "
                      "AND d.last_offset >= $3::bigint ORDER BY 1",
                      3, params, PGRES_TUPLES_OK, "could not read the jobs already done", &err,
                      errstr, errstr_size);
    if (!r)
        return err;
    int rows = PQntuples(r);
    if (rows > 0) {
        *offs = sl_malloc((size_t)rows * sizeof(**offs));
        for (int i = 0; i < rows; i++)
            (*offs)[i] = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        *n = (size_t)rows;
    }
    PQclear(r);
    return 0;
}
