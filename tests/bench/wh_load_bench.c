/*
 * sluice-wh-load-bench: the warehouse benchmark's driver (tests/bench/warehouse). Three modes:
 *
 *   sluice-wh-load-bench load --dsn DSN --dir DIR [--events N] [--file-events F] [--rounds R]
 *                             [--parallelism P] [--pg-pid PID] [--seed S] [--server-copy]
 *   sluice-wh-load-bench bodies --events N --batch-size B --out FILE [--seed S]
 *   sluice-wh-load-bench probe --url URL --write-key KEY --dsn DSN --ns NS [--table T]
 *                              [--seconds S] [--every-ms M] [--poll-ms P] [--wait S]
 *                              [--first-wait S]
 *
 * load: generates N events (default 200,000; the mix of a web shop: 60% track of six event names
 * with 16 properties of every warehouse type, 20% page, 10% identify, 5% screen, 5% group; a
 * context of 14 fields; ~1.2 KB each), turns them into rows with wh_event_rows() and writes
 * them with wh_staging_write(), one staging file per table for every F events (default 50,000:
 * one upload's worth, like a sync of the role; tracks, six event tables, pages, identifies,
 * users, screens, groups). Then, timed separately: reading every staging file
 * (wh_staging_open/_next), and R rounds (default 3) of these loads of the same rows into the
 * Postgres at DSN, each into fresh tables of its own namespace, one upload after another:
 * wh_pg_load_all() over P connections (--parallelism, default 2: what the role's worker does
 * with warehouse.load_parallelism = P), and over 1 connection; a plain
 * `COPY t (cols) FROM STDIN (FORMAT csv)` of each file's rows written as CSV, streamed from the
 * CSV file (what psql's \copy does), over one connection (the ceiling of the issue) and over P
 * connections at once (each taking the next file of the upload, largest first); and with
 * --server-copy a server-side `COPY t (cols) FROM 'file.csv'` too. The COPY tables are made LIKE
 * the loaded ones INCLUDING ALL (same columns, types and unique index on id) before the clock
 * starts; the order of the loads is reversed every other round, and a CHECKPOINT precedes each.
 * Round 1 also loads the first upload's files again with wh_pg_load_all() (every id already
 * there: 0 rows added, as a retried upload; `users` rows are updated in place). CPU: this
 * process (getrusage) and, with --pg-pid (the postmaster), the postmaster and its children
 * (/proc). Prints one JSON line.
 *
 * bodies: N track events of the same generator (so each is a row of tracks, which the
 * end-to-end run counts) as /v1/batch bodies of B events, one a line (input of
 * sluice-loadgen --bodies), with messageIds unique to this seed.
 *
 * probe: sends one event with POST URL/v1/track every M ms (default 250) for S seconds and
 * polls `SELECT id FROM NS.T WHERE id = ANY(...)` (T default tracks) every P ms (default 100)
 * until each is visible or W seconds (default 30) after the last send. Latency of an event: from
 * the gateway's 200 to the start of the first poll that saw its row. --first-wait S first
 * sends one event and waits up to S seconds for it (consumer groups joining, tables created),
 * reported apart. Prints one JSON line: p50/p90/p99/max and the events never seen.
 */
#include "common/buf.h"
#include "common/mem.h"
#include "warehouse/loadall.h"
#include "warehouse/pgload.h"
#include "warehouse/schema.h"
#include "warehouse/staging.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <libpq-fe.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "sluice-wh-load-bench: ");
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(1);
}

/* ---- the events ---- */

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rnd(rng_t *r) /* splitmix64 */
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned below(rng_t *r, unsigned n)
{
    return (unsigned)(rnd(r) % n);
}
static double unit(rng_t *r)
{
    return (double)(rnd(r) >> 11) / 9007199254740992.0;
}

#define PICK(r, a) (a[below(r, sizeof(a) / sizeof(a[0]))])

static const char *const NAMES[] = {"Product Viewed",  "Product Added", "Checkout Started",
                                    "Order Completed", "Signed Up",     "Video Played"};
static const char *const CATEGORIES[] = {"shoes",  "outerwear", "accessories", "kitchen",
                                         "garden", "books",     "toys"};
static const char *const BRANDS[] = {"Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"};
static const char *const PRODUCTS[] = {"Trail Runner 2",  "Rain Shell", "Canvas Tote",
                                       "Chef Knife 8in",  "Hose Reel",  "The Pragmatic Programmer",
                                       "Wooden Train Set"};
static const char *const TAGS[] = {"new", "sale", "eco", "gift", "bestseller", "limited"};
static const char *const AGENTS[] = {
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"};
static const char *const OSES[] = {"Mac OS X", "Windows", "iOS", "Linux", "Android"};
static const char *const LOCALES[] = {"en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "ja-JP"};
static const char *const SOURCES[] = {"google", "newsletter", "facebook", "direct", "partner"};
static const char *const MEDIUMS[] = {"cpc", "email", "social", "referral"};

static void uuid(rng_t *r, char out[37])
{
    uint64_t a = rnd(r), b = rnd(r);
    snprintf(out, 37, "%08x-%04x-4%03x-%x%03x-%012llx", (unsigned)(a >> 32),
             (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff, 8 | (unsigned)(b >> 62),
             (unsigned)(b >> 48) & 0xfff, (unsigned long long)(b & 0xffffffffffffULL));
}

/* 2024-05-01T00:00:00.000Z plus ms, as an ISO 8601 UTC timestamp. */
static void stamp(int64_t ms, char out[32])
{
    time_t t = (time_t)(1714521600 + ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

typedef enum { EV_TRACK, EV_PAGE, EV_IDENTIFY, EV_SCREEN, EV_GROUP } kind_t;
static const char *const KINDS[] = {"track", "page", "identify", "screen", "group"};
static const char *const PAGES[] = {"Home", "Product", "Category", "Cart", "Search", "Account"};
static const char *const SCREENS[] = {"Home", "Product Detail", "Cart", "Settings", "Orders"};
static const char *const PLANS[] = {"free", "starter", "pro", "enterprise"};
static const char *const FIRST[] = {"Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret"};
static const char *const LAST[] = {"Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson"};
static const char *const CITIES[] = {"Berlin", "Lyon", "Austin", "Osaka", "Leeds", "Porto"};

/* The mix of an upload of a web shop: 60% track, 20% page, 10% identify, 5% screen, 5% group. */
static kind_t pick_kind(rng_t *r)
{
    unsigned x = below(r, 20);
    return x < 12   ? EV_TRACK
           : x < 16 ? EV_PAGE
           : x < 18 ? EV_IDENTIFY
           : x < 19 ? EV_SCREEN
                    : EV_GROUP;
}

/* Appends event i of kind k (as the processor hands it to the warehouse: with receivedAt,
 * request_ip and rudderId) to b, messageId mid. Every property or trait has the same type in
 * every event, so no column is mixed. A track becomes a row of `tracks` and of its event's table,
 * an identify one of `identifies` and one of `users` (its userId is new: a sign-up), a page,
 * screen or group one of `pages`, `screens` or `groups`. */
static void gen_event(rng_t *r, size_t i, const char *mid, kind_t k, sl_buf_t *b)
{
    char anon[37], rudder[37], ts[32], sent[32], recv[32], added[32], sku[16];
    int64_t ms = (int64_t)i * 37 + below(r, 1000);
    uuid(r, anon);
    uuid(r, rudder);
    stamp(ms, ts);
    stamp(ms + 40 + below(r, 200), sent);
    stamp(ms + 300 + below(r, 500), recv);
    stamp(ms - 86400000LL * below(r, 30), added);
    snprintf(sku, sizeof(sku), "SKU-%06u", below(r, 1000000));
    const char *cat = PICK(r, CATEGORIES);
    sl_buf_printf(b, "{\"type\":\"%s\",", KINDS[k]);
    if (k == EV_TRACK)
        sl_buf_printf(b, "\"event\":\"%s\",", PICK(r, NAMES));
    else if (k == EV_PAGE)
        sl_buf_printf(b, "\"name\":\"%s\",", PICK(r, PAGES));
    else if (k == EV_SCREEN)
        sl_buf_printf(b, "\"name\":\"%s\",", PICK(r, SCREENS));
    else if (k == EV_GROUP)
        sl_buf_printf(b, "\"groupId\":\"org-%05u\",", below(r, 2000));
    sl_buf_printf(b, "\"messageId\":\"%s\",", mid);
    if (k == EV_IDENTIFY)
        sl_buf_printf(b, "\"userId\":\"user-%09zu\",", i);
    else if (below(r, 10) < 7)
        sl_buf_printf(b, "\"userId\":\"user-%05u\",", below(r, 10000));
    sl_buf_printf(b,
                  "\"anonymousId\":\"%s\",\"channel\":\"web\",\"timestamp\":\"%s\","
                  "\"originalTimestamp\":\"%s\",\"sentAt\":\"%s\",\"receivedAt\":\"%s\","
                  "\"request_ip\":\"10.%u.%u.%u\",\"rudderId\":\"%s\",",
                  anon, ts, ts, sent, recv, below(r, 256), below(r, 256), below(r, 256), rudder);
    sl_buf_printf(b,
                  "\"context\":{\"library\":{\"name\":\"analytics.js\",\"version\":\"2.11.1\"},"
                  "\"page\":{\"path\":\"/%s/%s\",\"url\":\"https://shop.example.com/%s/%s\","
                  "\"referrer\":\"https://www.%s.com/\",\"title\":\"%s | Example Shop\"},"
                  "\"userAgent\":\"%s\",\"locale\":\"%s\",\"ip\":\"203.0.113.%u\","
                  "\"os\":{\"name\":\"%s\"},\"screen\":{\"width\":%u,\"height\":%u},"
                  "\"campaign\":{\"source\":\"%s\",\"medium\":\"%s\"}},",
                  cat, sku, cat, sku, PICK(r, SOURCES), cat, PICK(r, AGENTS), PICK(r, LOCALES),
                  below(r, 256), PICK(r, OSES), 360 + below(r, 2200), 640 + below(r, 800),
                  PICK(r, SOURCES), PICK(r, MEDIUMS));
    double price = 3 + unit(r) * 297;
    unsigned qty = 1 + below(r, 4);
    switch (k) {
    case EV_TRACK:
        sl_buf_printf(
            b,
            "\"properties\":{\"sku\":\"%s\",\"product_id\":\"p-%u\",\"product_name\":\"%s\","
            "\"category\":\"%s\",\"brand\":\"%s\",\"price\":%.2f,\"quantity\":%u,"
            "\"currency\":\"%s\",\"value\":%.2f,\"discount\":%.2f,\"in_stock\":%s,"
            "\"is_gift\":%s,\"rating\":%u,\"position\":%u,\"added_at\":\"%s\","
            "\"dimensions\":{\"width\":%.1f,\"height\":%.1f},\"tags\":[\"%s\",\"%s\"]}}",
            sku, below(r, 50000), PICK(r, PRODUCTS), cat, PICK(r, BRANDS), price, qty,
            below(r, 5) ? "USD" : "EUR", price * qty, unit(r) * 0.3,
            below(r, 10) ? "true" : "false", below(r, 20) ? "false" : "true", 1 + below(r, 5),
            1 + below(r, 48), added, 5 + unit(r) * 95, 5 + unit(r) * 95, PICK(r, TAGS),
            PICK(r, TAGS));
        break;
    case EV_PAGE:
        sl_buf_printf(b,
                      "\"properties\":{\"path\":\"/%s/%s\",\"url\":\"https://shop.example.com/%s/"
                      "%s\",\"title\":\"%s | Example Shop\",\"referrer\":\"https://www.%s.com/\","
                      "\"search\":\"\",\"category\":\"%s\",\"load_time_ms\":%u,"
                      "\"scroll_depth\":%.2f,\"logged_in\":%s}}",
                      cat, sku, cat, sku, cat, PICK(r, SOURCES), cat, 80 + below(r, 3000), unit(r),
                      below(r, 2) ? "true" : "false");
        break;
    case EV_SCREEN:
        sl_buf_printf(b,
                      "\"properties\":{\"category\":\"%s\",\"previous_screen\":\"%s\","
                      "\"duration_ms\":%u,\"orientation\":\"%s\"}}",
                      cat, PICK(r, SCREENS), below(r, 60000),
                      below(r, 4) ? "portrait" : "landscape");
        break;
    case EV_IDENTIFY:
        sl_buf_printf(b,
                      "\"traits\":{\"email\":\"user%zu@example.com\",\"first_name\":\"%s\","
                      "\"last_name\":\"%s\",\"plan\":\"%s\",\"age\":%u,\"logins\":%u,"
                      "\"score\":%.3f,\"verified\":%s,\"created_at\":\"%s\","
                      "\"company\":{\"name\":\"%s\",\"size\":%u},"
                      "\"address\":{\"city\":\"%s\",\"country\":\"%s\"}}}",
                      i, PICK(r, FIRST), PICK(r, LAST), PICK(r, PLANS), 18 + below(r, 60),
                      below(r, 500), unit(r) * 100, below(r, 3) ? "true" : "false", added,
                      PICK(r, BRANDS), 1 + below(r, 5000), PICK(r, CITIES), PICK(r, LOCALES) + 3);
        break;
    case EV_GROUP:
        sl_buf_printf(b,
                      "\"traits\":{\"name\":\"%s %s\",\"industry\":\"%s\",\"employees\":%u,"
                      "\"plan\":\"%s\",\"mrr\":%.2f,\"trial\":%s}}",
                      PICK(r, BRANDS), PICK(r, CITIES), cat, 1 + below(r, 20000), PICK(r, PLANS),
                      unit(r) * 10000, below(r, 5) ? "false" : "true");
        break;
    }
}

/* ---- load: staging files, wh_pg_load and COPY ---- */

typedef struct {
    char path[PATH_MAX], csv[PATH_MAX];
    char table[WH_NAME_MAX + 1];
    int upload; /* which chunk of events (one upload) */
    size_t rows;
    char *cols; /* the quoted column list for COPY */
    long long bytes;
} file_t;

typedef struct {
    double wall, self_cpu, pg_cpu;
    long long rows;
} phase_t;

static long clk_tck;

/* utime+stime of the postmaster pm and its children, in seconds; 0 without pm. */
static double pg_cpu(int pm)
{
    if (pm <= 0)
        return 0;
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    double total = 0;
    struct dirent *e;
    char path[300], buf[1024];
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        int ppid;
        unsigned long ut, st;
        long cut, cst;
        if (!p || sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &ppid,
                         &ut, &st, &cut, &cst) != 5)
            continue;
        /* the postmaster's cutime/cstime hold the backends that have exited */
        if (atoi(e->d_name) == pm)
            total += (double)(ut + st + (unsigned long)cut + (unsigned long)cst) / (double)clk_tck;
        else if (ppid == pm)
            total += (double)(ut + st) / (double)clk_tck;
    }
    closedir(d);
    return total;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int g_pm;

static void phase_start(phase_t *p)
{
    p->wall = -now_s();
    p->self_cpu = -self_cpu();
    p->pg_cpu = -pg_cpu(g_pm);
    p->rows = 0;
}

static void phase_end(phase_t *p)
{
    p->wall += now_s();
    p->self_cpu += self_cpu();
    p->pg_cpu += pg_cpu(g_pm);
}

static void phase_json(sl_buf_t *o, const char *name, const phase_t *p)
{
    sl_buf_printf(o,
                  "\"%s\":{\"rows\":%lld,\"seconds\":%.3f,\"rows_per_s\":%.0f,"
                  "\"driver_cpu_pct\":%.0f,\"pg_cpu_pct\":%.0f}",
                  name, p->rows, p->wall, (double)p->rows / p->wall, p->self_cpu / p->wall * 100,
                  g_pm > 0 ? p->pg_cpu / p->wall * 100 : -1.0);
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static PGresult *sql(PGconn *c, const char *q, bool fatal)
{
    PGresult *r = PQexec(c, q);
    ExecStatusType st = PQresultStatus(r);
    if (fatal && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        die("%s: %s", q, PQerrorMessage(c));
    return r;
}

static void sqlf(PGconn *c, bool fatal, const char *fmt, const char *a, const char *b)
{
    char q[1024];
    snprintf(q, sizeof(q), fmt, a, b);
    PQclear(sql(c, q, fatal));
}

/* Whether files[i] is the first file of its table. */
static bool first_of(const file_t *files, size_t i)
{
    for (size_t k = 0; k < i; k++)
        if (strcmp(files[k].table, files[i].table) == 0)
            return false;
    return true;
}

/* The rows committed in ns (the sum of the tables' counts). */
static long long count_rows(PGconn *c, const char *ns, const file_t *files, size_t nfiles)
{
    long long total = 0;
    for (size_t i = 0; i < nfiles; i++) {
        if (!first_of(files, i))
            continue;
        char q[256];
        snprintf(q, sizeof(q), "SELECT count(*) FROM \"%s\".\"%s\"", ns, files[i].table);
        PGresult *r = sql(c, q, true);
        total += atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    return total;
}

/* Appends s to CSV, quoted only when it must be (NULL is the empty unquoted field). */
static void csv_field(sl_buf_t *b, const char *s)
{
    if (!s)
        return;
    if (*s && !strpbrk(s, ",\"\r\n") && strcmp(s, "\\.") != 0) {
        sl_buf_puts(b, s);
        return;
    }
    sl_buf_putc(b, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            sl_buf_putc(b, '"');
        sl_buf_putc(b, *p);
    }
    sl_buf_putc(b, '"');
}

/* Writes file f's rows as CSV to f->csv (readable by the server) and its column list. */
static void write_csv(file_t *f)
{
    char err[512];
    wh_staging_reader_t *r = wh_staging_open(f->path, err, sizeof(err));
    if (!r)
        die("%s: %s", f->path, err);
    const char *const *names;
    size_t ncols = wh_staging_columns(r, &names, NULL);
    sl_buf_t cols = SL_BUF_INIT, b = SL_BUF_INIT;
    for (size_t i = 0; i < ncols; i++)
        sl_buf_printf(&cols, "%s\"%s\"", i ? "," : "", names[i]);
    f->cols = sl_buf_steal(&cols);
    FILE *out = fopen(f->csv, "w");
    if (!out)
        die("%s: %s", f->csv, strerror(errno));
    const char *const *v;
    int rc;
    while ((rc = wh_staging_next(r, &v, err, sizeof(err))) == 1) {
        for (size_t i = 0; i < ncols; i++) {
            if (i)
                sl_buf_putc(&b, ',');
            csv_field(&b, v[i]);
        }
        sl_buf_putc(&b, '\n');
        if (b.len > (1 << 20)) {
            fwrite(b.data, 1, b.len, out);
            sl_buf_reset(&b);
        }
    }
    if (rc < 0)
        die("%s: %s", f->path, err);
    if (b.len)
        fwrite(b.data, 1, b.len, out);
    if (fclose(out) != 0)
        die("%s: %s", f->csv, strerror(errno));
    chmod(f->csv, 0644);
    sl_buf_free(&b);
    wh_staging_close(r);
}

/* `COPY ns.table (cols) FROM STDIN (FORMAT csv)` of file f's CSV, streamed from the file as
 * psql's \copy does; returns the rows copied. */
static long long copy_stdin(PGconn *c, const char *ns, const file_t *f)
{
    char chunk[64 << 10];
    sl_buf_t q = SL_BUF_INIT;
    long long rows = 0;
    sl_buf_printf(&q, "COPY \"%s\".\"%s\" (%s) FROM STDIN (FORMAT csv)", ns, f->table, f->cols);
    PGresult *r = PQexec(c, q.data);
    if (PQresultStatus(r) != PGRES_COPY_IN)
        die("%s: %s", q.data, PQerrorMessage(c));
    PQclear(r);
    FILE *in = fopen(f->csv, "r");
    if (!in)
        die("%s: %s", f->csv, strerror(errno));
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), in)) > 0)
        if (PQputCopyData(c, chunk, (int)n) != 1)
            die("%s: %s", f->csv, PQerrorMessage(c));
    fclose(in);
    if (PQputCopyEnd(c, NULL) != 1)
        die("%s: %s", f->csv, PQerrorMessage(c));
    while ((r = PQgetResult(c))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("%s: %s", q.data, PQresultErrorMessage(r));
        rows += atoll(PQcmdTuples(r));
        PQclear(r);
    }
    sl_buf_free(&q);
    return rows;
}

/* COPY of every file's CSV into ns: from the client (streamed like psql's \copy) or read by the
 * server itself. Returns false when the server refused (server-side COPY needs a superuser or
 * pg_read_server_files, and the server on this machine). */
static bool copy_csv(PGconn *c, const char *ns, file_t *files, size_t nfiles, bool server,
                     phase_t *ph, char *why, size_t why_size)
{
    sl_buf_t q = SL_BUF_INIT;
    bool ok = true;
    for (size_t i = 0; i < nfiles && ok; i++) {
        file_t *f = &files[i];
        sl_buf_reset(&q);
        sl_buf_printf(&q, "COPY \"%s\".\"%s\" (%s) FROM ", ns, f->table, f->cols);
        if (server) {
            char *lit = PQescapeLiteral(c, f->csv, strlen(f->csv));
            sl_buf_printf(&q, "%s (FORMAT csv)", lit);
            PQfreemem(lit);
            PGresult *r = PQexec(c, q.data);
            if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                snprintf(why, why_size, "%s", PQresultErrorMessage(r));
                ok = false;
            } else {
                ph->rows += atoll(PQcmdTuples(r));
            }
            PQclear(r);
            continue;
        }
        ph->rows += copy_stdin(c, ns, f);
    }
    sl_buf_free(&q);
    return ok;
}

/* Every upload's files into ns with wh_pg_load_all() over `parallelism` connections, one upload
 * after another, as the role's worker does (loadall.h: the largest tables first, `users` last,
 * one COPY in one transaction per table). */
static void pg_load(json_object *cfg, const char *ns, file_t *files, size_t nfiles, int parallelism,
                    phase_t *ph)
{
    char err[1024];
    wh_load_task_t *tasks = sl_calloc(nfiles ? nfiles : 1, sizeof(*tasks));
    for (size_t i = 0, end; i < nfiles; i = end) {
        for (end = i; end < nfiles && files[end].upload == files[i].upload; end++)
            tasks[end - i] = (wh_load_task_t){.table = files[end].table,
                                              .path = files[end].path,
                                              .rows = (int64_t)files[end].rows};
        if (wh_pg_load_all(cfg, ns, tasks, end - i, parallelism, NULL, err, sizeof(err)) != 0)
            die("wh_pg_load_all: %s%s", err, "");
        for (size_t k = 0; k < end - i; k++) {
            if (tasks[k].loaded < 0)
                die("wh_pg_load %s: %s", files[i + k].path, tasks[k].error);
            ph->rows += tasks[k].loaded;
        }
    }
    free(tasks);
}

/* The CSV COPYs of one upload over several connections: each takes the next file, largest
 * first, as wh_pg_load_all() does. */
typedef struct {
    PGconn *c;
    const char *ns;
    file_t *files;
    const size_t *order;
    size_t n, *next;
    long long rows;
    pthread_mutex_t *mu;
} copier_t;

static void *copier_main(void *arg)
{
    copier_t *cp = arg;
    for (;;) {
        pthread_mutex_lock(cp->mu);
        size_t k = (*cp->next)++;
        pthread_mutex_unlock(cp->mu);
        if (k >= cp->n)
            return NULL;
        cp->rows += copy_stdin(cp->c, cp->ns, &cp->files[cp->order[k]]);
    }
}

/* COPY FROM STDIN of every upload's CSV files into ns over the nconns connections conns, one
 * upload after another. */
static void copy_parallel(PGconn **conns, int nconns, const char *ns, file_t *files, size_t nfiles,
                          phase_t *ph)
{
    size_t *order = sl_malloc((nfiles ? nfiles : 1) * sizeof(*order));
    copier_t cps[64];
    pthread_t th[64];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    for (size_t i = 0, end; i < nfiles; i = end) {
        size_t n = 0, next = 0;
        for (end = i; end < nfiles && files[end].upload == files[i].upload; end++) {
            size_t k = n++;
            for (; k > 0 && files[order[k - 1]].rows < files[end].rows; k--)
                order[k] = order[k - 1];
            order[k] = end;
        }
        for (int t = 0; t < nconns; t++) {
            cps[t] = (copier_t){.c = conns[t],
                                .ns = ns,
                                .files = files,
                                .order = order,
                                .n = n,
                                .next = &next,
                                .mu = &mu};
            if (pthread_create(&th[t], NULL, copier_main, &cps[t]) != 0)
                die("%s%s", "pthread_create failed", "");
        }
        for (int t = 0; t < nconns; t++) {
            pthread_join(th[t], NULL);
            ph->rows += cps[t].rows;
        }
    }
    free(order);
}

typedef struct {
    char name[WH_NAME_MAX + 1];
    const wh_row_t **rows;
    size_t n, cap;
} tgroup_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_load(int argc, char **argv)
{
    const char *dsn = NULL, *dir = NULL;
    long events = 200000, file_events = 50000, rounds = 3, seed = 1;
    static const struct option opts[] = {
        {"dsn", required_argument, 0, 'd'},         {"dir", required_argument, 0, 'D'},
        {"events", required_argument, 0, 'n'},      {"file-events", required_argument, 0, 'f'},
        {"rounds", required_argument, 0, 'r'},      {"pg-pid", required_argument, 0, 'p'},
        {"seed", required_argument, 0, 's'},        {"server-copy", no_argument, 0, 'S'},
        {"parallelism", required_argument, 0, 'P'}, {0, 0, 0, 0}};
    bool server_copy = false;
    int o, parallelism = 2;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'S':
            server_copy = true;
            break;
        case 'P':
            parallelism = atoi(optarg);
            break;
        case 'd':
            dsn = optarg;
            break;
        case 'D':
            dir = optarg;
            break;
        case 'n':
            events = atol(optarg);
            break;
        case 'f':
            file_events = atol(optarg);
            break;
        case 'r':
            rounds = atol(optarg);
            break;
        case 'p':
            g_pm = atoi(optarg);
            break;
        case 's':
            seed = atol(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!dsn || !dir || events < 1 || file_events < 1 || rounds < 1 || rounds > 20 ||
        parallelism < 1 || parallelism > 64) {
        fprintf(stderr, "usage: sluice-wh-load-bench load --dsn DSN --dir DIR [--events N] "
                        "[--file-events F] [--rounds R] [--parallelism P] [--pg-pid PID] "
                        "[--seed S] [--server-copy]\n");
        return 2;
    }
    /* The destination config of the same server and database as DSN. */
    char *perr = NULL;
    PQconninfoOption *ci = PQconninfoParse(dsn, &perr);
    if (!ci)
        die("bad DSN: %s%s", perr ? perr : "", "");
    json_object *cfg = json_object_new_object();
    for (PQconninfoOption *p = ci; p->keyword; p++) {
        static const char *const map[][2] = {{"host", "host"},         {"port", "port"},
                                             {"dbname", "database"},   {"user", "user"},
                                             {"password", "password"}, {"sslmode", "sslMode"}};
        for (size_t k = 0; k < sizeof(map) / sizeof(map[0]); k++)
            if (p->val && strcmp(p->keyword, map[k][0]) == 0)
                json_object_object_add(cfg, map[k][1], json_object_new_string(p->val));
    }
    PQconninfoFree(ci);
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK)
        die("%s: %s", dsn, PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    PQclear(sql(c, "SET client_min_messages = warning", false));

    char sdir[PATH_MAX], cdir[PATH_MAX];
    snprintf(sdir, sizeof(sdir), "%s/staging", dir);
    snprintf(cdir, sizeof(cdir), "%s/csv", dir);
    mkdir(sdir, 0755);
    mkdir(cdir, 0755);
    chmod(dir, 0755);

    /* Events -> rows -> staging files, one upload of file_events events at a time. */
    rng_t rng = {(uint64_t)seed * 7919};
    sl_buf_t ev = SL_BUF_INIT;
    size_t *off = sl_malloc(((size_t)file_events + 1) * sizeof(size_t));
    file_t *files = NULL;
    size_t nfiles = 0, fcap = 0;
    double t_gen = 0, t_rows = 0, t_write = 0, cpu_write = 0;
    long long total_rows = 0, event_bytes = 0, staged_bytes = 0;
    char err[1024], recv[32] = "2024-05-01T00:00:00.000Z";
    int upload = 0;
    for (long done = 0; done < events; done += file_events, upload++) {
        long n = events - done < file_events ? events - done : file_events;
        double t0 = now_s();
        sl_buf_reset(&ev);
        for (long i = 0; i < n; i++) {
            char mid[37];
            uuid(&rng, mid);
            off[i] = ev.len;
            gen_event(&rng, (size_t)(done + i), mid, pick_kind(&rng), &ev);
        }
        off[n] = ev.len;
        event_bytes += (long long)ev.len;
        double t1 = now_s();
        wh_rows_t rows = {0};
        for (long i = 0; i < n; i++)
            if (wh_event_rows(ev.data + off[i], off[i + 1] - off[i], recv, &rows, err,
                              sizeof(err)) != 0)
                die("wh_event_rows: %s%s", err, "");
        double t2 = now_s();
        tgroup_t *g = NULL;
        size_t ng = 0;
        for (size_t i = 0; i < rows.n; i++) {
            size_t k = 0;
            while (k < ng && strcmp(g[k].name, rows.rows[i].table) != 0)
                k++;
            if (k == ng) {
                g = sl_realloc(g, ++ng * sizeof(*g));
                memset(&g[k], 0, sizeof(*g));
                snprintf(g[k].name, sizeof(g[k].name), "%s", rows.rows[i].table);
            }
            if (g[k].n == g[k].cap) {
                g[k].cap = g[k].cap ? g[k].cap * 2 : 1024;
                g[k].rows = sl_realloc(g[k].rows, g[k].cap * sizeof(*g[k].rows));
            }
            g[k].rows[g[k].n++] = &rows.rows[i];
        }
        double c0 = self_cpu(), t3 = now_s();
        for (size_t k = 0; k < ng; k++) {
            if (nfiles == fcap)
                files = sl_realloc(files, (fcap = fcap ? fcap * 2 : 16) * sizeof(*files));
            file_t *f = &files[nfiles++];
            memset(f, 0, sizeof(*f));
            snprintf(f->table, sizeof(f->table), "%s", g[k].name);
            if (snprintf(f->path, sizeof(f->path), "%s/u%03d.%s.avro", sdir, upload, g[k].name) >=
                    (int)sizeof(f->path) ||
                snprintf(f->csv, sizeof(f->csv), "%s/u%03d.%s.csv", cdir, upload, g[k].name) >=
                    (int)sizeof(f->csv))
                die("%s: %s", dir, "path too long");
            f->upload = upload;
            f->rows = g[k].n;
            if (wh_staging_write(f->path, g[k].name, g[k].rows, g[k].n, err, sizeof(err)) != 0)
                die("wh_staging_write: %s%s", err, "");
            struct stat st;
            if (stat(f->path, &st) == 0)
                f->bytes = st.st_size;
            staged_bytes += f->bytes;
            total_rows += (long long)g[k].n;
            free(g[k].rows);
        }
        t_write += now_s() - t3;
        cpu_write += self_cpu() - c0;
        t_gen += t1 - t0;
        t_rows += t2 - t1;
        free(g);
        wh_rows_free(&rows);
    }
    sl_buf_free(&ev);
    free(off);
    fprintf(stderr, "[wh-load-bench] %ld events -> %lld rows in %zu staging files (%.1f MB)\n",
            events, total_rows, nfiles, (double)staged_bytes / 1e6);

    /* Reading the staging files alone. */
    phase_t rd;
    phase_start(&rd);
    for (size_t i = 0; i < nfiles; i++) {
        wh_staging_reader_t *r = wh_staging_open(files[i].path, err, sizeof(err));
        if (!r)
            die("%s: %s", files[i].path, err);
        const char *const *v;
        int rc;
        while ((rc = wh_staging_next(r, &v, err, sizeof(err))) == 1)
            rd.rows++;
        if (rc < 0)
            die("%s: %s", files[i].path, err);
        wh_staging_close(r);
    }
    phase_end(&rd);
    if (rd.rows != total_rows) {
        fprintf(stderr, "sluice-wh-load-bench: the staging files hold %lld rows, %lld written\n",
                rd.rows, total_rows);
        exit(1);
    }

    for (size_t i = 0; i < nfiles; i++)
        write_csv(&files[i]);
    fprintf(stderr, "[wh-load-bench] staging read %.0f rows/s; CSV written\n",
            (double)rd.rows / rd.wall);

    /* The rounds: every kind of load once per round, in an order reversed every other round. */
    enum { K_LOAD, K_STDIN, K_FILE, K_PARALLEL, K_LOAD1, NKINDS };
    static const char *const kind_names[NKINDS] = {"load", "copy_stdin", "copy_file",
                                                   "copy_parallel", "load_1"};
    static const char *const kind_labels[NKINDS] = {"wh_pg_load_all", "COPY FROM STDIN",
                                                    "COPY FROM file", "parallel COPY FROM STDIN",
                                                    "wh_pg_load_all, 1 connection"};
    phase_t *ph_all[NKINDS];
    for (int k = 0; k < NKINDS; k++)
        ph_all[k] = sl_calloc((size_t)rounds, sizeof(phase_t));
    PGconn **conns = sl_calloc((size_t)parallelism, sizeof(*conns));
    for (int i = 0; i < parallelism; i++) {
        conns[i] = PQconnectdb(dsn);
        if (PQstatus(conns[i]) != CONNECTION_OK)
            die("%s: %s", dsn, PQerrorMessage(conns[i]));
        PQsetNoticeProcessor(conns[i], quiet, NULL);
    }
    phase_t reload = {0};
    long long reload_rows = -1, reload_added = -1;
    bool server_ok = server_copy;
    char why[512] = "not run (--server-copy)";
    sqlf(c, false, "DROP SCHEMA IF EXISTS wh_tmpl CASCADE", NULL, NULL);
    for (long r = 0; r < rounds; r++) {
        for (int step = 0; step < NKINDS; step++) {
            int what = r % 2 == 0 ? step : NKINDS - 1 - step;
            if (what == K_FILE && !server_ok)
                continue;
            bool loader = what == K_LOAD || what == K_LOAD1;
            char ns[64];
            snprintf(ns, sizeof(ns), "wh_%s_%ld", kind_names[what], r + 1);
            sqlf(c, true, "DROP SCHEMA IF EXISTS \"%s\" CASCADE", ns, NULL);
            if (!loader) {
                sqlf(c, true, "CREATE SCHEMA \"%s\"", ns, NULL);
                for (size_t i = 0; i < nfiles; i++)
                    if (first_of(files, i)) {
                        char q[512];
                        snprintf(q, sizeof(q),
                                 "CREATE TABLE \"%s\".\"%s\" (LIKE wh_tmpl.\"%s\" INCLUDING ALL)",
                                 ns, files[i].table, files[i].table);
                        PQclear(sql(c, q, true));
                    }
            }
            PQclear(sql(c, "CHECKPOINT", false));
            phase_t *ph = &ph_all[what][r];
            phase_start(ph);
            if (loader)
                pg_load(cfg, ns, files, nfiles, what == K_LOAD ? parallelism : 1, ph);
            else if (what == K_PARALLEL)
                copy_parallel(conns, parallelism, ns, files, nfiles, ph);
            else if (!copy_csv(c, ns, files, nfiles, what == K_FILE, ph, why, sizeof(why)))
                server_ok = false;
            phase_end(ph);
            if (what == K_FILE && !server_ok) {
                fprintf(stderr, "[wh-load-bench] no server-side COPY: %s", why);
                sqlf(c, false, "DROP SCHEMA IF EXISTS \"%s\" CASCADE", ns, NULL);
                continue;
            }
            long long in_db = count_rows(c, ns, files, nfiles);
            if (in_db != total_rows || ph->rows != total_rows) {
                fprintf(stderr,
                        "[wh-load-bench] %s: %lld rows reported, %lld in the tables, "
                        "%lld staged\n",
                        ns, ph->rows, in_db, total_rows);
                exit(1);
            }
            fprintf(stderr, "[wh-load-bench] round %ld: %s %.0f rows/s\n", r + 1, kind_labels[what],
                    (double)ph->rows / ph->wall);
            if (what == K_LOAD && r == 0) {
                sqlf(c, true, "CREATE SCHEMA wh_tmpl", NULL, NULL);
                for (size_t i = 0; i < nfiles; i++)
                    if (first_of(files, i)) {
                        char q[512];
                        snprintf(q, sizeof(q),
                                 "CREATE TABLE wh_tmpl.\"%s\" (LIKE \"%s\".\"%s\" INCLUDING ALL)",
                                 files[i].table, ns, files[i].table);
                        PQclear(sql(c, q, true));
                    }
                /* the first upload again: every id is there */
                size_t n0 = 0;
                long long rows0 = 0;
                while (n0 < nfiles && files[n0].upload == 0)
                    rows0 += (long long)files[n0++].rows;
                PQclear(sql(c, "CHECKPOINT", false));
                phase_start(&reload);
                pg_load(cfg, ns, files, n0, parallelism, &reload);
                phase_end(&reload);
                reload_rows = reload.rows;
                reload_added = count_rows(c, ns, files, nfiles) - in_db;
                reload.rows = rows0; /* rows read and checked, for rows/s */
                fprintf(stderr,
                        "[wh-load-bench] reload: %lld rows written (users updated in place), "
                        "%lld added, %.0f rows/s\n",
                        reload_rows, reload_added, (double)rows0 / reload.wall);
            }
            sqlf(c, false, "DROP SCHEMA IF EXISTS \"%s\" CASCADE", ns, NULL);
        }
    }
    sqlf(c, false, "DROP SCHEMA IF EXISTS wh_tmpl CASCADE", NULL, NULL);
    for (int i = 0; i < parallelism; i++)
        PQfinish(conns[i]);
    free(conns);

    /* Per-table columns (of its first file) and rows, for the report. */
    sl_buf_t out = SL_BUF_INIT;
    sl_buf_printf(&out,
                  "{\"events\":%ld,\"rows\":%lld,\"files\":%zu,\"uploads\":%d,\"file_events\":%ld,"
                  "\"avg_event_bytes\":%.0f,\"staging_bytes\":%lld,\"rounds\":%ld,"
                  "\"gen_events_per_s\":%.0f,\"rows_events_per_s\":%.0f,\"rows_rows_per_s\":%.0f,"
                  "\"staging_write_rows_per_s\":%.0f,\"staging_write_cpu_pct\":%.0f,",
                  events, total_rows, nfiles, upload, file_events,
                  (double)event_bytes / (double)events, staged_bytes, rounds,
                  (double)events / t_gen, (double)events / t_rows, (double)total_rows / t_rows,
                  (double)total_rows / t_write, cpu_write / t_write * 100);
    phase_json(&out, "staging_read", &rd);
    sl_buf_puts(&out, ",\"tables\":[");
    bool first = true;
    for (size_t i = 0; i < nfiles; i++) {
        if (!first_of(files, i))
            continue;
        size_t ncols = 1, rows = 0;
        for (const char *p = files[i].cols; *p; p++)
            ncols += *p == ',';
        for (size_t k = 0; k < nfiles; k++)
            if (strcmp(files[k].table, files[i].table) == 0)
                rows += files[k].rows;
        sl_buf_printf(&out, "%s{\"table\":\"%s\",\"columns\":%zu,\"rows\":%zu}", first ? "" : ",",
                      files[i].table, ncols, rows);
        first = false;
    }
    sl_buf_puts(&out, "]");
    sl_buf_printf(&out, ",\"parallelism\":%d", parallelism);
    for (int k = 0; k < NKINDS; k++) {
        if (k == K_FILE && !server_ok) {
            sl_buf_printf(&out, ",\"copy_file\":null,\"copy_file_error\":");
            sl_buf_json_str(&out, why, strcspn(why, "\n"));
            continue;
        }
        phase_t *all = ph_all[k];
        /* the median round by rows/s, and every round */
        double *v = sl_calloc((size_t)rounds, sizeof(double));
        for (long r = 0; r < rounds; r++)
            v[r] = (double)all[r].rows / all[r].wall;
        qsort(v, (size_t)rounds, sizeof(double), cmp_double);
        long med = 0;
        for (long r = 0; r < rounds; r++)
            if ((double)all[r].rows / all[r].wall == v[rounds / 2])
                med = r;
        free(v);
        sl_buf_putc(&out, ',');
        phase_json(&out, kind_names[k], &all[med]);
        sl_buf_printf(&out, ",\"%s_rounds\":[", kind_names[k]);
        for (long r = 0; r < rounds; r++)
            sl_buf_printf(&out, "%s%.0f", r ? "," : "", (double)all[r].rows / all[r].wall);
        sl_buf_puts(&out, "]");
    }
    sl_buf_putc(&out, ',');
    phase_json(&out, "reload", &reload);
    sl_buf_printf(&out, ",\"reload_rows_written\":%lld,\"reload_rows_added\":%lld}", reload_rows,
                  reload_added);
    puts(out.data);
    sl_buf_free(&out);

    for (size_t i = 0; i < nfiles; i++) {
        unlink(files[i].csv);
        unlink(files[i].path);
        free(files[i].cols);
    }
    rmdir(sdir);
    rmdir(cdir);
    free(files);
    for (int k = 0; k < NKINDS; k++)
        free(ph_all[k]);
    json_object_put(cfg);
    PQfinish(c);
    return 0;
}

/* ---- bodies: /v1/batch request bodies for sluice-loadgen ---- */

static int cmd_bodies(int argc, char **argv)
{
    const char *out = NULL;
    long events = 0, batch = 50, seed = 2;
    static const struct option opts[] = {{"events", required_argument, 0, 'n'},
                                         {"batch-size", required_argument, 0, 'b'},
                                         {"out", required_argument, 0, 'o'},
                                         {"seed", required_argument, 0, 's'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'n':
            events = atol(optarg);
            break;
        case 'b':
            batch = atol(optarg);
            break;
        case 'o':
            out = optarg;
            break;
        case 's':
            seed = atol(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!out || events < 1 || batch < 1) {
        fprintf(stderr, "usage: sluice-wh-load-bench bodies --events N --batch-size B --out FILE "
                        "[--seed S]\n");
        return 2;
    }
    FILE *f = fopen(out, "w");
    if (!f)
        die("%s: %s", out, strerror(errno));
    rng_t rng = {(uint64_t)seed * 104729};
    sl_buf_t b = SL_BUF_INIT;
    long long bytes = 0;
    for (long i = 0; i < events; i++) {
        char mid[37];
        uuid(&rng, mid);
        sl_buf_puts(&b, i % batch == 0 ? "{\"batch\":[" : ",");
        size_t at = b.len;
        gen_event(&rng, (size_t)i, mid, EV_TRACK, &b);
        bytes += (long long)(b.len - at);
        if (i % batch == batch - 1 || i == events - 1) {
            sl_buf_puts(&b, "]}\n");
            fwrite(b.data, 1, b.len, f);
            sl_buf_reset(&b);
        }
    }
    sl_buf_free(&b);
    if (fclose(f) != 0)
        die("%s: %s", out, strerror(errno));
    printf("{\"events\":%ld,\"batch_size\":%ld,\"avg_event_bytes\":%.0f}\n", events, batch,
           (double)bytes / (double)events);
    return 0;
}

/* ---- probe: from the gateway's 200 to the row in the warehouse ---- */

typedef struct {
    char id[64];
    double sent, seen; /* seen < 0: not yet */
} probe_t;

static size_t discard_body(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

/* Sends one track event; the time of the 200 (monotonic s), or -1 with the status in *status. */
static double send_probe(CURL *h, const char *url, rng_t *rng, size_t i, const char *id,
                         long *status)
{
    sl_buf_t b = SL_BUF_INIT;
    gen_event(rng, i, id, EV_TRACK, &b);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, b.data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)b.len);
    CURLcode rc = curl_easy_perform(h);
    double t = now_s();
    *status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    sl_buf_free(&b);
    return *status == 200 ? t : -1;
}

/* Marks the probes visible in ns.table; false when the query failed (no table yet). */
static bool poll_seen(PGconn *c, const char *query, probe_t *p, size_t n)
{
    sl_buf_t arr = SL_BUF_INIT;
    sl_buf_putc(&arr, '{');
    size_t want = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i].sent >= 0 && p[i].seen < 0)
            sl_buf_printf(&arr, "%s%s", want++ ? "," : "", p[i].id);
    sl_buf_putc(&arr, '}');
    if (!want) {
        sl_buf_free(&arr);
        return true;
    }
    double t = now_s(); /* the query's snapshot is taken after this */
    const char *params[] = {arr.data};
    PGresult *r = PQexecParams(c, query, 1, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    for (int k = 0; ok && k < PQntuples(r); k++)
        for (size_t i = 0; i < n; i++)
            if (p[i].seen < 0 && strcmp(p[i].id, PQgetvalue(r, k, 0)) == 0)
                p[i].seen = t;
    PQclear(r);
    sl_buf_free(&arr);
    if (!ok && PQstatus(c) != CONNECTION_OK)
        PQreset(c);
    return ok;
}

static void sleep_until(double t)
{
    double d = t - now_s();
    if (d > 0) {
        struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int cmd_probe(int argc, char **argv)
{
    const char *base = NULL, *key = NULL, *dsn = NULL, *ns = NULL, *table = "tracks";
    double seconds = 30, wait = 30, first_wait = 0;
    long every_ms = 250, poll_ms = 100;
    static const struct option opts[] = {{"url", required_argument, 0, 'u'},
                                         {"write-key", required_argument, 0, 'k'},
                                         {"dsn", required_argument, 0, 'd'},
                                         {"ns", required_argument, 0, 'n'},
                                         {"table", required_argument, 0, 't'},
                                         {"seconds", required_argument, 0, 's'},
                                         {"every-ms", required_argument, 0, 'e'},
                                         {"poll-ms", required_argument, 0, 'p'},
                                         {"wait", required_argument, 0, 'w'},
                                         {"first-wait", required_argument, 0, 'f'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u':
            base = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'd':
            dsn = optarg;
            break;
        case 'n':
            ns = optarg;
            break;
        case 't':
            table = optarg;
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'e':
            every_ms = atol(optarg);
            break;
        case 'p':
            poll_ms = atol(optarg);
            break;
        case 'w':
            wait = atof(optarg);
            break;
        case 'f':
            first_wait = atof(optarg);
            break;
        default:
            return 2;
        }
    }
    if (!base || !key || !dsn || !ns || seconds < 0 || every_ms < 1 || poll_ms < 1) {
        fprintf(stderr, "usage: sluice-wh-load-bench probe --url URL --write-key KEY --dsn DSN "
                        "--ns NS [--table T] [--seconds S] [--every-ms M] [--poll-ms P] "
                        "[--wait S] [--first-wait S]\n");
        return 2;
    }
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK)
        die("%s: %s", dsn, PQerrorMessage(c));
    PQsetNoticeProcessor(c, quiet, NULL);
    char *qns = PQescapeIdentifier(c, ns, strlen(ns));
    char *qt = PQescapeIdentifier(c, table, strlen(table));
    char query[512];
    snprintf(query, sizeof(query), "SELECT id FROM %s.%s WHERE id = ANY($1::text[])", qns, qt);
    PQfreemem(qns);
    PQfreemem(qt);

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *h = curl_easy_init();
    char url[1024], userpwd[256];
    snprintf(url, sizeof(url), "%s/v1/track", base);
    snprintf(userpwd, sizeof(userpwd), "%s:", key);
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_USERPWD, userpwd);
    curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);

    rng_t rng = {(uint64_t)time(NULL) * 2654435761u};
    char run[9];
    snprintf(run, sizeof(run), "%08x", (unsigned)rnd(&rng));
    long status = 0;
    double first = -1;
    if (first_wait > 0) {
        probe_t p = {.seen = -1};
        snprintf(p.id, sizeof(p.id), "probe-%s-first", run);
        if ((p.sent = send_probe(h, url, &rng, 0, p.id, &status)) < 0) {
            fprintf(stderr, "sluice-wh-load-bench: POST %s: status %ld\n", url, status);
            return 1;
        }
        while (p.seen < 0 && now_s() < p.sent + first_wait) {
            sleep_until(now_s() + (double)poll_ms / 1000);
            poll_seen(c, query, &p, 1);
        }
        if (p.seen < 0) {
            fprintf(stderr, "sluice-wh-load-bench: the first event was not in %s.%s after %.0f s\n",
                    ns, table, first_wait);
            return 1;
        }
        first = p.seen - p.sent;
    }

    size_t n = (size_t)(seconds * 1000 / (double)every_ms), errors = 0;
    probe_t *p = sl_calloc(n ? n : 1, sizeof(probe_t));
    double t0 = now_s(), next_poll = t0;
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(p[i].id, sizeof(p[i].id), "probe-%s-%06zu", run, i);
        p[i].sent = p[i].seen = -1;
    }
    for (;;) {
        double now = now_s(), next_send = t0 + (double)sent * (double)every_ms / 1000;
        if (sent < n && now >= next_send) {
            p[sent].sent = send_probe(h, url, &rng, sent + 1, p[sent].id, &status);
            if (p[sent].sent < 0 && errors++ == 0)
                fprintf(stderr, "sluice-wh-load-bench: POST %s: status %ld\n", url, status);
            sent++;
            continue;
        }
        if (now >= next_poll) {
            poll_seen(c, query, p, sent);
            next_poll = now + (double)poll_ms / 1000;
        }
        size_t open = 0;
        for (size_t i = 0; i < sent; i++)
            open += p[i].sent >= 0 && p[i].seen < 0;
        double last = t0 + (double)n * (double)every_ms / 1000;
        if (sent == n && (!open || now > last + wait))
            break;
        sleep_until(sent < n && next_send < next_poll ? next_send : next_poll);
    }

    double *lat = sl_calloc(n ? n : 1, sizeof(double));
    size_t k = 0, unseen = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].sent < 0)
            continue;
        if (p[i].seen < 0)
            unseen++;
        else
            lat[k++] = p[i].seen - p[i].sent;
    }
    qsort(lat, k, sizeof(double), cmp_double);
#define Q(q) (k ? lat[(size_t)((q) * (double)(k - 1) + 0.5)] : -1.0)
    printf("{\"first_s\":%.3f,\"probes\":%zu,\"answered\":%zu,\"seen\":%zu,\"unseen\":%zu,"
           "\"errors\":%zu,\"every_ms\":%ld,\"poll_ms\":%ld,\"min_s\":%.3f,\"p50_s\":%.3f,"
           "\"p90_s\":%.3f,\"p99_s\":%.3f,\"max_s\":%.3f}\n",
           first, n, n - errors, k, unseen, errors, every_ms, poll_ms, Q(0), Q(0.5), Q(0.9),
           Q(0.99), k ? lat[k - 1] : -1.0);
#undef Q
    free(lat);
    free(p);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    curl_global_cleanup();
    PQfinish(c);
    return 0;
}

int main(int argc, char **argv)
{
    clk_tck = sysconf(_SC_CLK_TCK);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "load") == 0)
        return cmd_load(argc - 1, argv + 1);
    if (strcmp(mode, "bodies") == 0)
        return cmd_bodies(argc - 1, argv + 1);
    if (strcmp(mode, "probe") == 0)
        return cmd_probe(argc - 1, argv + 1);
    fprintf(stderr, "usage: sluice-wh-load-bench load|bodies|probe ... (see the source's top)\n");
    return 2;
}
