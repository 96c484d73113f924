/*
 * Staging files as Avro object container files (warehouse/staging.h). avro-c encodes the
 * header metadata and each row and reads the files back; the container framing of the writer
 * (header, deflate blocks, sync markers) is done here, because avro-c's file writer can't put
 * our metadata in the header, fails on a row larger than its block size, ignores errors of
 * its last flush and seeds the sync marker with srand(time(NULL)).
 */
#include "warehouse/staging.h"

#include <avro.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/jsonc.h"
#include "common/mem.h"

/* Uncompressed bytes of rows per block: big enough for deflate to do well, small enough that
 * a reader holds little (a larger row makes a block of its own). */
#define ST_BLOCK_BYTES (256 * 1024)
#define ST_SYNC_LEN    16
#define ST_META_ROWS   "sluice.rows"
#define ST_ROW_TYPES   "__sluice_row_types"

/* Avro's type for each warehouse type, and the one-letter codes of the row_types field. */
static const char *const st_avro_type[] = {
    [WH_INT] = "long",        [WH_FLOAT] = "double",  [WH_BOOL] = "boolean",
    [WH_DATETIME] = "string", [WH_STRING] = "string", [WH_JSON] = "string",
};
static const char st_code[] = {
    [WH_INT] = 'i',      [WH_FLOAT] = 'f',  [WH_BOOL] = 'b',
    [WH_DATETIME] = 'd', [WH_STRING] = 's', [WH_JSON] = 'j',
};
#define ST_NTYPES (sizeof(st_code) / sizeof(st_code[0]))
#define ST_NONE   '-' /* row_types: NULL or absent in this row */

/* The type a mixed column's value has in one row, from its code in the row's type string;
 * the column's type when the code names none (NULL or absent). */
static wh_type_t row_type(wh_type_t column, char code)
{
    for (size_t t = 0; t < ST_NTYPES; t++)
        if (st_code[t] == code)
            return (wh_type_t)t;
    return column;
}

static bool st_parse_bool(const char *s, int *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "1"))
        *out = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "0"))
        *out = 0;
    else
        return false;
    return true;
}

/* The type a non-NULL value really has: its column's, or string when its text doesn't parse
 * as that type. */
static wh_type_t st_value_type(const wh_col_t *c)
{
    int64_t i;
    double d;
    int b;
    switch (c->type) {
    case WH_INT:
        return wh_value_int(c->value, &i) ? WH_INT : WH_STRING;
    case WH_FLOAT:
        return wh_value_float(c->value, &d) ? WH_FLOAT : WH_STRING;
    case WH_BOOL:
        return st_parse_bool(c->value, &b) ? WH_BOOL : WH_STRING;
    default:
        return (unsigned)c->type < ST_NTYPES ? c->type : WH_STRING;
    }
}

/* Shortest "%.*g" that reads back as the same double. */
/* v as "%.15g" prints it when v is the double nearest a decimal of at most 6 places and 15
 * digits (prices, ratings, most numbers in events), without printf: (double)i / 10^d is the
 * double nearest i / 10^d (IEEE division rounds correctly), so the digits of i are what
 * rounding v to 15 significant digits gives. False otherwise. */
static bool st_format_decimal(double v, char *out, size_t size)
{
    static const double scale[] = {1, 10, 100, 1e3, 1e4, 1e5, 1e6};
    double a = fabs(v);
    if (!(a >= 1e-4 && a < 1e15) || size < 32)
        return false;
    for (int d = 0; d < 7; d++) {
        double x = a * scale[d];
        if (x >= 1e15)
            return false;
        long long i = llround(x);
        if ((double)i / scale[d] != a)
            continue;
        char digits[24];
        int n = 0;
        for (long long u = i; u || n <= d; u /= 10)
            digits[n++] = (char)('0' + u % 10); /* least significant first, d + 1 at least */
        int lo = 0;                             /* trailing zeros of the fraction go */
        while (lo < d && digits[lo] == '0')
            lo++;
        char *o = out;
        if (v < 0)
            *o++ = '-';
        for (int k = n - 1; k >= d; k--)
            *o++ = digits[k];
        if (lo < d) {
            *o++ = '.';
            for (int k = d - 1; k >= lo; k--)
                *o++ = digits[k];
        }
        *o = '\0';
        return true;
    }
    return false;
}

static void st_format_double(double v, char *out, size_t size)
{
    if (st_format_decimal(v, out, size))
        return;
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(out, size, "%.*g", prec, v);
        if (strtod(out, NULL) == v)
            return;
    }
}

/* An Avro name ([A-Za-z_][A-Za-z0-9_]*) for s; caller frees. */
static char *st_avro_name(const char *s)
{
    size_t n = strlen(s);
    char *out = sl_malloc(n + 2), *p = out;
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        *p++ = '_';
    for (; *s; s++) {
        char c = *s;
        bool ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        *p++ = ok ? c : '_';
    }
    *p = '\0';
    return out;
}

/* A generic avro-c value of schema in *v, its class in *iface; 0 or -1 (avro_strerror()). */
static int st_value_new(avro_schema_t schema, avro_value_iface_t **iface, avro_value_t *v)
{
    *iface = avro_generic_class_from_schema(schema);
    if (!*iface)
        return -1;
    if (avro_generic_value_new(*iface, v)) {
        avro_value_iface_decref(*iface);
        *iface = NULL;
        return -1;
    }
    return 0;
}

/* Frees what st_value_new made (nothing when iface is NULL). */
static void st_value_free(avro_value_iface_t *iface, avro_value_t *v)
{
    if (!iface)
        return;
    avro_value_decref(v);
    avro_value_iface_decref(iface);
}

/* ---------------------------------------------------------------------------------------- */
/* Writer */

typedef struct st_col {
    const char *name; /* borrowed from the rows */
    char *avro;       /* the Avro field name */
    unsigned seen;    /* bit per type of the non-NULL values */
    bool has_type;
    wh_type_t type; /* first type seen, then the column's */
    int mixed;      /* index among the mixed columns, or -1 */
} st_col_t;

typedef struct st_cols {
    st_col_t *v;
    size_t n, cap;
    uint32_t *slots; /* open addressing by name: index + 1, 0 empty */
    size_t nslots;
    size_t nmixed;
} st_cols_t;

static uint64_t st_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void st_cols_rehash(st_cols_t *cs, size_t nslots)
{
    free(cs->slots);
    cs->slots = sl_calloc(nslots, sizeof(*cs->slots));
    cs->nslots = nslots;
    for (size_t i = 0; i < cs->n; i++) {
        size_t s = st_hash(cs->v[i].name) & (nslots - 1);
        while (cs->slots[s])
            s = (s + 1) & (nslots - 1);
        cs->slots[s] = (uint32_t)i + 1;
    }
}

/* The index of column name, added (untyped) when new. */
static size_t st_cols_get(st_cols_t *cs, const char *name)
{
    if (cs->nslots < 2 * (cs->n + 1))
        st_cols_rehash(cs, cs->nslots ? 2 * cs->nslots : 64);
    size_t s = st_hash(name) & (cs->nslots - 1);
    for (; cs->slots[s]; s = (s + 1) & (cs->nslots - 1))
        if (!strcmp(cs->v[cs->slots[s] - 1].name, name))
            return cs->slots[s] - 1;
    if (cs->n == cs->cap) {
        cs->cap = cs->cap ? 2 * cs->cap : 32;
        cs->v = sl_realloc(cs->v, cs->cap * sizeof(*cs->v));
    }
    cs->v[cs->n] = (st_col_t){.name = name, .mixed = -1};
    cs->slots[s] = (uint32_t)cs->n + 1;
    return cs->n++;
}

static void st_cols_free(st_cols_t *cs)
{
    for (size_t i = 0; i < cs->n; i++)
        free(cs->v[i].avro);
    free(cs->v);
    free(cs->slots);
}

static bool st_name_taken(const st_cols_t *cs, size_t upto, const char *name)
{
    for (size_t i = 0; i < upto; i++)
        if (!strcmp(cs->v[i].avro, name))
            return true;
    return false;
}

/* Gives each column its type, mixed index and a unique Avro name; returns the name of the
 * row_types field (caller frees), or NULL when no column is mixed. */
static char *st_cols_finish(st_cols_t *cs)
{
    bool renamed = false;
    for (size_t i = 0; i < cs->n; i++) {
        st_col_t *c = &cs->v[i];
        if (!c->has_type)
            c->type = WH_STRING;
        if (c->seen & (c->seen - 1)) {
            if (c->seen == ((1u << WH_INT) | (1u << WH_FLOAT)))
                c->type = WH_FLOAT;
            c->mixed = (int)cs->nmixed++;
        }
        c->avro = st_avro_name(c->name);
        renamed = renamed || strcmp(c->avro, c->name);
    }
    /* Names were unique; only a changed one can collide, but with any other. */
    for (size_t i = 0; renamed && i < cs->n; i++) {
        st_col_t *c = &cs->v[i];
        for (int k = 2; st_name_taken(cs, i, c->avro); k++) {
            char *base = st_avro_name(c->name);
            free(c->avro);
            c->avro = sl_asprintf("%s_%d", base, k);
            free(base);
        }
    }
    if (!cs->nmixed)
        return NULL;
    char *name = sl_strdup(ST_ROW_TYPES);
    for (int k = 2; st_name_taken(cs, cs->n, name); k++) {
        free(name);
        name = sl_asprintf("%s_%d", ST_ROW_TYPES, k);
    }
    return name;
}

static void st_schema_json(sl_buf_t *b, const char *table, const st_cols_t *cs,
                           const char *row_types)
{
    char *avro_table = st_avro_name(table);
    sl_buf_printf(b,
                  "{\"type\":\"record\",\"name\":\"%s\",\"namespace\":\"sluice.warehouse\","
                  "\"sluice_table\":",
                  avro_table);
    free(avro_table);
    sl_buf_json_str(b, table, strlen(table));
    sl_buf_puts(b, ",\"fields\":[");
    for (size_t i = 0; i < cs->n; i++) {
        const st_col_t *c = &cs->v[i];
        sl_buf_printf(b, "%s{\"name\":\"%s\",\"type\":[\"null\",\"%s\"],\"default\":null,",
                      i ? "," : "", c->avro, c->mixed >= 0 ? "string" : st_avro_type[c->type]);
        sl_buf_puts(b, "\"sluice_column\":");
        sl_buf_json_str(b, c->name, strlen(c->name));
        sl_buf_printf(b, ",\"sluice_type\":\"%s\"%s}", wh_type_name(c->type),
                      c->mixed >= 0 ? ",\"sluice_mixed\":true" : "");
    }
    if (row_types)
        sl_buf_printf(b,
                      "%s{\"name\":\"%s\",\"type\":[\"null\",\"string\"],\"default\":null,"
                      "\"sluice_role\":\"row_types\"}",
                      cs->n ? "," : "", row_types);
    sl_buf_puts(b, "]}");
}

typedef struct st_writer {
    const char *tmp;
    FILE *fp;
    char sync[ST_SYNC_LEN];
    sl_buf_t block, zbuf; /* encoded rows of the current block; its deflated form */
    size_t block_rows;
    z_stream z;
    bool z_ok;
    avro_writer_t mem;
} st_writer_t;

/* An Avro long (zigzag varint) into p (10 bytes at most); returns its length. */
static size_t st_varint(unsigned char *p, int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (z > 0x7f) {
        p[n++] = (unsigned char)(z | 0x80);
        z >>= 7;
    }
    p[n++] = (unsigned char)z;
    return n;
}

static int st_io_err(char *errstr, size_t errstr_size, int e, const char *what, const char *path)
{
    int code = e == ENOENT                                                 ? SL_ERR_NOTFOUND
               : (e == EACCES || e == EPERM || e == EROFS || e == ENOTDIR) ? SL_ERR_INVALID
                                                                           : SL_ERR_TRANSIENT;
    return sl_err_set(errstr, errstr_size, code, "could not %s staging file \"%s\": %s", what, path,
                      strerror(e));
}

static int st_fwrite(st_writer_t *w, const void *p, size_t n, char *errstr, size_t errstr_size)
{
    if (n && fwrite(p, 1, n, w->fp) != n)
        return st_io_err(errstr, errstr_size, errno ? errno : EIO, "write", w->tmp);
    return 0;
}

/* Encodes v with avro-c at the end of b. */
static int st_encode(st_writer_t *w, sl_buf_t *b, avro_value_t *v, char *errstr, size_t errstr_size)
{
    size_t size;
    if (avro_value_sizeof(v, &size))
        return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not size avro value: %s",
                          avro_strerror());
    sl_buf_reserve(b, size + 1);
    avro_writer_memory_set_dest(w->mem, b->data + b->len, (int64_t)size);
    if (avro_value_write(w->mem, v))
        return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not encode avro value: %s",
                          avro_strerror());
    b->len += size;
    b->data[b->len] = '\0';
    return 0;
}

static int st_flush_block(st_writer_t *w, char *errstr, size_t errstr_size)
{
    if (!w->block_rows)
        return 0;
    if (!w->z_ok) {
        if (deflateInit2(&w->z, Z_BEST_SPEED, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not start deflate");
        w->z_ok = true;
    } else {
        deflateReset(&w->z);
    }
    uLong bound = deflateBound(&w->z, (uLong)w->block.len);
    sl_buf_reset(&w->zbuf);
    sl_buf_reserve(&w->zbuf, bound);
    w->z.next_in = (Bytef *)w->block.data;
    w->z.avail_in = (uInt)w->block.len;
    w->z.next_out = (Bytef *)w->zbuf.data;
    w->z.avail_out = (uInt)bound;
    if (deflate(&w->z, Z_FINISH) != Z_STREAM_END)
        return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not deflate a block");
    w->zbuf.len = w->z.total_out;

    unsigned char head[20];
    size_t hn = st_varint(head, (int64_t)w->block_rows);
    hn += st_varint(head + hn, (int64_t)w->zbuf.len);
    int rc;
    if ((rc = st_fwrite(w, head, hn, errstr, errstr_size)) ||
        (rc = st_fwrite(w, w->zbuf.data, w->zbuf.len, errstr, errstr_size)) ||
        (rc = st_fwrite(w, w->sync, ST_SYNC_LEN, errstr, errstr_size)))
        return rc;
    sl_buf_reset(&w->block);
    w->block_rows = 0;
    return 0;
}

/* Magic, metadata (codec, schema, row count) and sync marker. */
static int st_write_header(st_writer_t *w, const sl_buf_t *schema, size_t n, char *errstr,
                           size_t errstr_size)
{
    avro_schema_t bytes = avro_schema_bytes(), map = avro_schema_map(bytes);
    avro_value_iface_t *iface = NULL;
    avro_value_t meta, e;
    sl_buf_t b = SL_BUF_INIT;
    char rows[32];
    int rc = SL_ERR_FATAL;

    if (st_value_new(map, &iface, &meta)) {
        sl_err_set(errstr, errstr_size, rc, "could not make avro header: %s", avro_strerror());
        goto out;
    }
    snprintf(rows, sizeof(rows), "%zu", n);
    if (avro_value_add(&meta, "avro.codec", &e, NULL, NULL) ||
        avro_value_set_bytes(&e, "deflate", 7) ||
        avro_value_add(&meta, "avro.schema", &e, NULL, NULL) ||
        avro_value_set_bytes(&e, schema->data, schema->len) ||
        avro_value_add(&meta, ST_META_ROWS, &e, NULL, NULL) ||
        avro_value_set_bytes(&e, rows, strlen(rows))) {
        sl_err_set(errstr, errstr_size, rc, "could not make avro header: %s", avro_strerror());
        goto out;
    }
    sl_buf_append(&b, "Obj\x01", 4);
    if ((rc = st_encode(w, &b, &meta, errstr, errstr_size)))
        goto out;
    if (getrandom(w->sync, sizeof(w->sync), 0) != (ssize_t)sizeof(w->sync)) {
        /* The marker only has to be unlikely inside the data; time and address will do. */
        uint64_t x = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)w ^ (uint64_t)getpid() << 32;
        for (size_t i = 0; i < sizeof(w->sync); i++, x = x * 6364136223846793005ULL + 1)
            w->sync[i] = (char)(x >> 56);
    }
    sl_buf_append(&b, w->sync, sizeof(w->sync));
    rc = st_fwrite(w, b.data, b.len, errstr, errstr_size);
out:
    st_value_free(iface, &meta);
    avro_schema_decref(map);
    avro_schema_decref(bytes);
    sl_buf_free(&b);
    return rc;
}

/* Sets field f of rec to column c's value (NULL when c is NULL). */
static int st_set_field(avro_value_t *rec, size_t f, const st_col_t *col, const wh_col_t *c,
                        char *errstr, size_t errstr_size)
{
    avro_value_t fv, br;
    int64_t i;
    double d;
    int b, rc;
    if (avro_value_get_by_index(rec, f, &fv, NULL))
        goto fail;
    if (!c || !c->value)
        return avro_value_set_branch(&fv, 0, &br) || avro_value_set_null(&br) ? -1 : 0;
    if (avro_value_set_branch(&fv, 1, &br))
        goto fail;
    if (col->mixed >= 0)
        rc = avro_value_set_string(&br, c->value);
    else if (col->type == WH_INT)
        rc = wh_value_int(c->value, &i) ? avro_value_set_long(&br, i) : -1;
    else if (col->type == WH_FLOAT)
        rc = wh_value_float(c->value, &d) ? avro_value_set_double(&br, d) : -1;
    else if (col->type == WH_BOOL)
        rc = st_parse_bool(c->value, &b) ? avro_value_set_boolean(&br, b) : -1;
    else
        rc = avro_value_set_string(&br, c->value);
    if (!rc)
        return 0;
fail:
    return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not set column \"%s\": %s",
                      col->name, avro_strerror());
}

static int st_write_rows(st_writer_t *w, st_cols_t *cs, const char *row_types, avro_schema_t schema,
                         wh_staging_row_fn row_at, void *opaque, size_t n, char *errstr,
                         size_t errstr_size)
{
    avro_value_iface_t *iface = NULL;
    avro_value_t rec;
    const wh_col_t **by_col = sl_calloc(cs->n + 1, sizeof(*by_col));
    char *codes = sl_malloc(cs->nmixed + 1);
    int rc = SL_ERR_FATAL;

    if (st_value_new(schema, &iface, &rec)) {
        sl_err_set(errstr, errstr_size, rc, "could not make avro row: %s", avro_strerror());
        goto out;
    }
    for (size_t r = 0; r < n; r++) {
        const wh_row_t *row = row_at(opaque, r);
        memset(by_col, 0, cs->n * sizeof(*by_col));
        memset(codes, ST_NONE, cs->nmixed);
        codes[cs->nmixed] = '\0';
        for (size_t j = 0; j < row->ncols; j++) {
            const wh_col_t *c = &row->cols[j];
            size_t idx = st_cols_get(cs, c->name);
            const st_col_t *col = &cs->v[idx];
            by_col[idx] = c;
            if (col->mixed >= 0 && c->value)
                codes[col->mixed] = st_code[st_value_type(c)];
        }
        for (size_t f = 0; f < cs->n; f++)
            if ((rc = st_set_field(&rec, f, &cs->v[f], by_col[f], errstr, errstr_size)))
                goto out;
        if (row_types) {
            wh_col_t c = {.name = (char *)row_types, .type = WH_STRING, .value = codes};
            st_col_t col = {.name = row_types, .type = WH_STRING, .mixed = -1};
            if ((rc = st_set_field(&rec, cs->n, &col, &c, errstr, errstr_size)))
                goto out;
        }
        if ((rc = st_encode(w, &w->block, &rec, errstr, errstr_size)))
            goto out;
        w->block_rows++;
        if (w->block.len >= ST_BLOCK_BYTES && (rc = st_flush_block(w, errstr, errstr_size)))
            goto out;
    }
    rc = st_flush_block(w, errstr, errstr_size);
out:
    st_value_free(iface, &rec);
    free(by_col);
    free(codes);
    return rc;
}

static int st_fsync_dir(const char *path, char *errstr, size_t errstr_size)
{
    const char *slash = strrchr(path, '/');
    char *dir =
        slash ? sl_strndup(path, slash == path ? 1 : (size_t)(slash - path)) : sl_strdup(".");
    int rc = 0, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
        rc = st_io_err(errstr, errstr_size, errno, "sync the directory of", path);
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

int wh_staging_write_fn(const char *path, const char *table, wh_staging_row_fn row_at, void *opaque,
                        size_t n, char *errstr, size_t errstr_size)
{
    st_cols_t cs = {0};
    st_writer_t w = {0};
    sl_buf_t schema_json = SL_BUF_INIT;
    avro_schema_t schema = NULL;
    char *row_types = NULL, *tmp = NULL;
    int rc = SL_ERR_INVALID, fd;

    if (!path || !*path || !table || (n && !row_at))
        return sl_err_set(errstr, errstr_size, rc, "staging file: path, table and rows needed");
    for (size_t r = 0; r < n; r++) {
        const wh_row_t *row = row_at(opaque, r);
        if (!row || (row->ncols && !row->cols)) {
            sl_err_set(errstr, errstr_size, rc, "staging file \"%s\": row %zu is empty", path, r);
            goto out;
        }
        for (size_t j = 0; j < row->ncols; j++) {
            const wh_col_t *c = &row->cols[j];
            if (!c->name || (unsigned)c->type >= ST_NTYPES) {
                sl_err_set(errstr, errstr_size, rc,
                           "staging file \"%s\": row %zu column %zu "
                           "has no name or an unknown type",
                           path, r, j);
                goto out;
            }
            size_t idx = st_cols_get(&cs, c->name); /* may move cs.v */
            st_col_t *col = &cs.v[idx];
            wh_type_t t = c->value ? st_value_type(c) : c->type;
            if (!col->has_type || (!col->seen && c->value))
                col->type = t, col->has_type = true;
            if (c->value)
                col->seen |= 1u << t;
        }
    }
    row_types = st_cols_finish(&cs);
    st_schema_json(&schema_json, table, &cs, row_types);
    if (avro_schema_from_json_length(schema_json.data, schema_json.len, &schema)) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "staging file \"%s\": bad schema: %s",
                        path, avro_strerror());
        goto out;
    }

    tmp = sl_asprintf("%s.tmp", path);
    w.tmp = tmp;
    if (!(w.mem = avro_writer_memory(NULL, 0))) {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not make avro writer: %s",
                        avro_strerror());
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || !(w.fp = fdopen(fd, "wb"))) {
        rc = st_io_err(errstr, errstr_size, errno, "create", tmp);
        if (fd >= 0)
            close(fd);
        goto out;
    }
    if ((rc = st_write_header(&w, &schema_json, n, errstr, errstr_size)) ||
        (rc = st_write_rows(&w, &cs, row_types, schema, row_at, opaque, n, errstr, errstr_size)))
        goto out;
    if (fflush(w.fp) || fsync(fileno(w.fp))) {
        rc = st_io_err(errstr, errstr_size, errno, "write", tmp);
        goto out;
    }
    FILE *fp = w.fp;
    w.fp = NULL;
    if (fclose(fp)) {
        rc = st_io_err(errstr, errstr_size, errno, "close", tmp);
        goto out;
    }
    if (rename(tmp, path)) {
        rc = st_io_err(errstr, errstr_size, errno, "rename", tmp);
        goto out;
    }
    free(tmp);
    tmp = NULL;
    rc = st_fsync_dir(path, errstr, errstr_size);
out:
    if (w.fp)
        fclose(w.fp);
    if (tmp)
        unlink(tmp);
    if (w.z_ok)
        deflateEnd(&w.z);
    if (w.mem)
        avro_writer_free(w.mem);
    sl_buf_free(&w.block);
    sl_buf_free(&w.zbuf);
    if (schema)
        avro_schema_decref(schema);
    sl_buf_free(&schema_json);
    free(row_types);
    free(tmp);
    st_cols_free(&cs);
    return rc;
}

static const wh_row_t *st_row_of_array(void *opaque, size_t i)
{
    return ((const wh_row_t *const *)opaque)[i];
}

int wh_staging_write(const char *path, const char *table, const wh_row_t *const *rows, size_t n,
                     char *errstr, size_t errstr_size)
{
    if (n && !rows)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "staging file: path, table and rows needed");
    return wh_staging_write_fn(path, table, st_row_of_array, (void *)rows, n, errstr, errstr_size);
}

/* ---------------------------------------------------------------------------------------- */
/* Reader */

struct wh_staging_reader {
    char *path;
    avro_file_reader_t file;
    avro_schema_t schema;
    avro_value_iface_t *iface;
    avro_value_t rec;
    char *table;
    size_t ncols;
    char **names;
    wh_type_t *types;
    bool *mixed;
    int row_types_field; /* -1: none */
    size_t *field;       /* column -> Avro field index */
    const char **values;
    char (*num)[32];
    wh_type_t *row_types;
    long long rows_expected;
    long long rows_read;
    bool done;
    int failed; /* the error every later call returns */
    char *failure;
    /* The direct decoder of deflate or uncompressed files (fp set; else avro-c reads): */
    FILE *fp;
    size_t nfields;
    char *fkind; /* per Avro field: 'l' long, 'd' double, 'b' boolean, 's' string */
    int *fcol;   /* per Avro field: its column, or -1 for row_types */
    char sync[ST_SYNC_LEN];
    bool deflated;
    z_stream z;
    bool z_ready;
    sl_buf_t zin, block; /* a block as read, and inflated */
    size_t at;           /* next byte of block */
    int64_t block_left;  /* rows left in block */
    sl_buf_t strs;       /* the current row's strings, NUL-terminated */
    size_t *str_off;     /* per column: offset in strs, or SIZE_MAX */
};

/* The Avro type name of a schema in JSON ("long" or {"type":"long"}), or NULL. */
static const char *st_json_type(json_object *t)
{
    if (json_object_is_type(t, json_type_string))
        return json_object_get_string(t);
    return sl_jsonc_str(t, "type");
}

/* An Avro long from fp; -1 at the end of the file or on a bad varint. */
static int st_get_long(FILE *fp, int64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        int c = getc(fp);
        if (c == EOF)
            return -1;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return 0;
        }
    }
    return -1;
}

/* Avro bytes from fp, NUL-terminated, no longer than the rest of the file; caller frees. */
static char *st_get_bytes(FILE *fp, int64_t file_size, size_t *len)
{
    int64_t n;
    if (st_get_long(fp, &n) || n < 0 || n > file_size - ftello(fp))
        return NULL;
    char *b = sl_malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, fp) != (size_t)n) {
        free(b);
        return NULL;
    }
    b[n] = '\0';
    *len = (size_t)n;
    return b;
}

typedef struct st_header {
    char *schema; /* avro.schema */
    size_t schema_len;
    char codec[16];  /* avro.codec ("null" when absent) */
    int64_t data_at; /* the first block */
    char sync[ST_SYNC_LEN];
    long long rows;   /* sluice.rows, -1 when absent */
    long long blocks; /* rows counted in the block headers */
} st_header_t;

/*
 * Reads the header and walks the blocks (their counts, sizes and sync markers, seeking over
 * the data), so that a file cut short fails here and not in the middle of a load, and avro-c,
 * which leaks on some truncated files, only ever sees whole ones.
 */
static int st_scan(FILE *fp, const char *path, st_header_t *h, char *errstr, size_t errstr_size)
{
    char magic[4], sync[ST_SYNC_LEN], got[ST_SYNC_LEN];
    int64_t size, count, len;

    h->rows = -1;
    if (fseeko(fp, 0, SEEK_END) || (size = ftello(fp)) < 0 || fseeko(fp, 0, SEEK_SET))
        return sl_err_set(errstr, errstr_size, SL_ERR_FATAL, "could not read \"%s\": %s", path,
                          strerror(errno));
    if (fread(magic, 1, 4, fp) != 4 || memcmp(magic, "Obj\x01", 4))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "\"%s\" is not an avro container file", path);
    for (;;) {
        if (st_get_long(fp, &count))
            goto truncated;
        if (count == 0)
            break;
        if (count < 0 && st_get_long(fp, &len)) /* a negative count is followed by a size */
            goto truncated;
        for (int64_t i = 0; i < (count < 0 ? -count : count); i++) {
            size_t klen, vlen;
            char *key = st_get_bytes(fp, size, &klen), *val = NULL;
            if (!key || !(val = st_get_bytes(fp, size, &vlen))) {
                free(key);
                goto truncated;
            }
            if (!strcmp(key, "avro.schema") && !h->schema) {
                h->schema = val, h->schema_len = vlen;
                val = NULL;
            } else if (!strcmp(key, ST_META_ROWS)) {
                h->rows = strtoll(val, NULL, 10);
            } else if (!strcmp(key, "avro.codec")) {
                snprintf(h->codec, sizeof(h->codec), "%s", val);
            }
            free(key);
            free(val);
        }
    }
    if (fread(sync, 1, ST_SYNC_LEN, fp) != ST_SYNC_LEN)
        goto truncated;
    memcpy(h->sync, sync, ST_SYNC_LEN);
    h->data_at = ftello(fp);
    if (!h->codec[0])
        snprintf(h->codec, sizeof(h->codec), "null");
    if (!h->schema)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "staging file \"%s\" has no schema",
                          path);
    for (int64_t at; (at = ftello(fp)) < size;) {
        if (st_get_long(fp, &count) || st_get_long(fp, &len) || count < 0 || len < 0 ||
            len > size - ftello(fp) || fseeko(fp, len, SEEK_CUR) ||
            fread(got, 1, ST_SYNC_LEN, fp) != ST_SYNC_LEN)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\" is truncated: a block at byte %lld is cut "
                              "short",
                              path, (long long)at);
        if (memcmp(got, sync, ST_SYNC_LEN))
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\" is corrupt: bad sync marker after byte %lld",
                              path, (long long)at);
        h->blocks += count;
    }
    if (h->rows >= 0 && h->rows != h->blocks)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "staging file \"%s\" is truncated: %lld rows of %lld", path, h->blocks,
                          h->rows);
    return 0;
truncated:
    return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                      "staging file \"%s\" has a truncated or bad header", path);
}

/* Columns from the schema's JSON, checked against what this module writes. */
static int st_reader_columns(wh_staging_reader_t *r, json_object *js, char *errstr,
                             size_t errstr_size)
{
    json_object *fields;
    const char *type = sl_jsonc_str(js, "type");
    if (!type || strcmp(type, "record") || !json_object_object_get_ex(js, "fields", &fields) ||
        !json_object_is_type(fields, json_type_array))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "staging file \"%s\": schema mismatch: not a record", r->path);
    const char *table = sl_jsonc_str(js, "sluice_table");
    if (!table)
        table = sl_jsonc_str(js, "name");
    r->table = sl_strdup(table ? table : "");

    size_t nf = json_object_array_length(fields);
    r->names = sl_calloc(nf + 1, sizeof(*r->names));
    r->types = sl_calloc(nf + 1, sizeof(*r->types));
    r->mixed = sl_calloc(nf + 1, sizeof(*r->mixed));
    r->field = sl_calloc(nf + 1, sizeof(*r->field));
    r->nfields = nf;
    r->fkind = sl_calloc(nf + 1, 1);
    r->fcol = sl_calloc(nf + 1, sizeof(*r->fcol));
    for (size_t f = 0; f < nf; f++) {
        json_object *fo = json_object_array_get_idx(fields, f), *u;
        const char *name = sl_jsonc_str(fo, "name"), *role = sl_jsonc_str(fo, "sluice_role");
        const char *col = sl_jsonc_str(fo, "sluice_column"), *wt = sl_jsonc_str(fo, "sluice_type");
        const char *at = NULL;
        if (json_object_object_get_ex(fo, "type", &u) && json_object_is_type(u, json_type_array) &&
            json_object_array_length(u) == 2) {
            const char *n0 = st_json_type(json_object_array_get_idx(u, 0));
            if (n0 && !strcmp(n0, "null"))
                at = st_json_type(json_object_array_get_idx(u, 1));
        }
        if (!name || !at)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\": schema mismatch: field %zu is not a union of "
                              "null and one type",
                              r->path, f);
        r->fkind[f] = !strcmp(at, "long")      ? 'l'
                      : !strcmp(at, "double")  ? 'd'
                      : !strcmp(at, "boolean") ? 'b'
                      : !strcmp(at, "string")  ? 's'
                                               : '?';
        r->fcol[f] = -1;
        if (role && !strcmp(role, "row_types")) {
            if (strcmp(at, "string") || r->row_types_field >= 0)
                return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                                  "staging file \"%s\": schema mismatch: bad row_types field",
                                  r->path);
            r->row_types_field = (int)f;
            continue;
        }
        size_t i = r->ncols;
        bool mixed =
            json_object_object_get_ex(fo, "sluice_mixed", &u) && json_object_get_boolean(u);
        wh_type_t t = WH_STRING;
        if (wt && !wh_type_parse(wt, &t))
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\": schema mismatch: column \"%s\" has unknown "
                              "type \"%s\"",
                              r->path, col ? col : name, wt);
        if (!wt) { /* another writer's file: the Avro type says it */
            for (t = 0; t < WH_DATETIME && strcmp(st_avro_type[t], at); t++)
                ;
            if (t == WH_DATETIME)
                t = WH_STRING;
        }
        if (strcmp(at, mixed ? "string" : st_avro_type[t]))
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\": schema mismatch: column \"%s\" of type %s is "
                              "stored as avro %s",
                              r->path, col ? col : name, wh_type_name(t), at);
        r->names[i] = sl_strdup(col ? col : name);
        r->fcol[f] = (int)i;
        r->types[i] = t;
        r->mixed[i] = mixed;
        r->field[i] = f;
        r->ncols++;
    }
    for (size_t i = 0; i < r->ncols; i++)
        if (r->mixed[i] && r->row_types_field < 0)
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "staging file \"%s\": schema mismatch: mixed column \"%s\" without "
                              "row types",
                              r->path, r->names[i]);
    return 0;
}

wh_staging_reader_t *wh_staging_open(const char *path, char *errstr, size_t errstr_size)
{
    wh_staging_reader_t *r = sl_calloc(1, sizeof(*r));
    st_header_t h = {0};
    json_tokener *tok = NULL;
    json_object *js = NULL;
    FILE *fp = NULL;
    int e = EINVAL;

    r->path = sl_strdup(path ? path : "");
    r->row_types_field = -1;
    if (!path || !(fp = fopen(path, "rb"))) {
        e = path ? errno : EINVAL;
        sl_err_set(errstr, errstr_size, 0, "could not open staging file \"%s\": %s", r->path,
                   strerror(e));
        goto fail;
    }
    if (st_scan(fp, path, &h, errstr, errstr_size))
        goto fail;
    r->rows_expected = h.rows >= 0 ? h.rows : h.blocks;
    tok = json_tokener_new();
    js = json_tokener_parse_ex(tok, h.schema, (int)h.schema_len);
    if (!js || json_tokener_get_error(tok) != json_tokener_success) {
        sl_err_set(errstr, errstr_size, 0, "staging file \"%s\": its schema is not JSON", path);
        goto fail;
    }
    if (st_reader_columns(r, js, errstr, errstr_size))
        goto fail;
    if (avro_schema_from_json_length(h.schema, h.schema_len, &r->schema)) {
        sl_err_set(errstr, errstr_size, 0, "staging file \"%s\": bad schema: %s", path,
                   avro_strerror());
        goto fail;
    }
    bool direct = !strcmp(h.codec, "deflate") || !strcmp(h.codec, "null");
    for (size_t f = 0; f < r->nfields; f++)
        direct = direct && r->fkind[f] != '?';
    if (direct) { /* our own decoder: several times faster than avro-c's generic values */
        if (fseeko(fp, h.data_at, SEEK_SET)) {
            e = errno;
            sl_err_set(errstr, errstr_size, 0, "could not read \"%s\": %s", path, strerror(e));
            goto fail;
        }
        r->fp = fp;
        fp = NULL;
        memcpy(r->sync, h.sync, ST_SYNC_LEN);
        r->deflated = !strcmp(h.codec, "deflate");
        /* zin, block and strs are zeroed: empty buffers */
        r->str_off = sl_calloc(r->ncols + 1, sizeof(*r->str_off));
        goto opened;
    }
    if (st_value_new(r->schema, &r->iface, &r->rec)) {
        sl_err_set(errstr, errstr_size, 0, "could not read \"%s\": %s", path, avro_strerror());
        goto fail;
    }
    /* avro-c reads the rows, from the start again; it closes fp from here on. */
    rewind(fp);
    int rc = avro_file_reader_fp(fp, path, 1, &r->file);
    fp = NULL;
    if (rc) {
        sl_err_set(errstr, errstr_size, 0, "could not read staging file \"%s\": %s", path,
                   avro_strerror());
        goto fail;
    }
opened:
    r->values = sl_calloc(r->ncols + 1, sizeof(*r->values));
    r->num = sl_calloc(r->ncols + 1, sizeof(*r->num));
    r->row_types = sl_calloc(r->ncols + 1, sizeof(*r->row_types));
    json_object_put(js);
    json_tokener_free(tok);
    free(h.schema);
    return r;

fail:
    if (fp)
        fclose(fp);
    if (js)
        json_object_put(js);
    if (tok)
        json_tokener_free(tok);
    free(h.schema);
    wh_staging_close(r);
    errno = e;
    return NULL;
}

size_t wh_staging_columns(wh_staging_reader_t *r, const char *const **names,
                          const wh_type_t **types)
{
    if (names)
        *names = (const char *const *)r->names;
    if (types)
        *types = r->types;
    return r->ncols;
}

const char *wh_staging_table(wh_staging_reader_t *r)
{
    return r->table;
}

const wh_type_t *wh_staging_row_types(wh_staging_reader_t *r)
{
    return r->row_types;
}

static int st_reader_fail(wh_staging_reader_t *r, char *errstr, size_t errstr_size, const char *fmt,
                          const char *detail)
{
    char msg[512];
    snprintf(msg, sizeof(msg), fmt, r->path, r->rows_read, detail);
    r->failed = SL_ERR_INVALID;
    free(r->failure);
    r->failure = sl_strdup(msg);
    return sl_err_set(errstr, errstr_size, r->failed, "%s", msg);
}

/* Fills values and row_types from the record just read. */
static int st_reader_row(wh_staging_reader_t *r, char *errstr, size_t errstr_size)
{
    avro_value_t fv, br;
    const char *s = NULL, *codes = NULL;
    size_t len, k = 0, ncodes = 0;
    int64_t l;
    double d;
    int b, disc;

    if (r->row_types_field >= 0) {
        if (avro_value_get_by_index(&r->rec, (size_t)r->row_types_field, &fv, NULL) ||
            avro_value_get_discriminant(&fv, &disc))
            goto bad;
        if (disc == 1 && (avro_value_get_current_branch(&fv, &br) ||
                          avro_value_get_string(&br, &codes, &ncodes)))
            goto bad;
        ncodes = codes && ncodes ? ncodes - 1 : 0;
    }
    for (size_t i = 0; i < r->ncols; i++) {
        r->values[i] = NULL;
        r->row_types[i] = r->types[i];
        if (avro_value_get_by_index(&r->rec, r->field[i], &fv, NULL) ||
            avro_value_get_discriminant(&fv, &disc))
            goto bad;
        if (r->mixed[i]) {
            r->row_types[i] = row_type(r->types[i], k < ncodes ? codes[k] : ST_NONE);
            k++;
        }
        if (disc == 0)
            continue;
        if (avro_value_get_current_branch(&fv, &br))
            goto bad;
        switch (avro_value_get_type(&br)) {
        case AVRO_INT64:
            if (avro_value_get_long(&br, &l))
                goto bad;
            snprintf(r->num[i], sizeof(r->num[i]), "%" PRId64, l);
            r->values[i] = r->num[i];
            break;
        case AVRO_DOUBLE:
            if (avro_value_get_double(&br, &d))
                goto bad;
            st_format_double(d, r->num[i], sizeof(r->num[i]));
            r->values[i] = r->num[i];
            break;
        case AVRO_BOOLEAN:
            if (avro_value_get_boolean(&br, &b))
                goto bad;
            r->values[i] = b ? "true" : "false";
            break;
        case AVRO_STRING:
            if (avro_value_get_string(&br, &s, &len))
                goto bad;
            r->values[i] = s ? s : "";
            break;
        default:
            goto bad;
        }
    }
    return 0;
bad:
    return st_reader_fail(r, errstr, errstr_size, "staging file \"%s\": bad row %lld: %s",
                          avro_strerror());
}

/* ---- the direct decoder (deflate or uncompressed blocks, fields [null, T]) ---- */

/* A zigzag varint of the block at r->at; false past its end. */
static bool st_dec_long(wh_staging_reader_t *r, int64_t *out)
{
    const unsigned char *p = (const unsigned char *)r->block.data;
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && r->at < r->block.len; shift += 7) {
        unsigned c = p[r->at++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return true;
        }
    }
    return false;
}

/* A varint of fp (block headers). */
static bool st_file_long(FILE *fp, int64_t *out)
{
    return st_get_long(fp, out) == 0;
}

/* Reads the next block into r->block; 0, EOF at the end of the file, or -1 (r->failure). */
static int st_dec_block(wh_staging_reader_t *r, char *errstr, size_t errstr_size)
{
    int64_t count, size;
    int c = getc(r->fp);
    if (c == EOF)
        return EOF;
    ungetc(c, r->fp);
    char got[ST_SYNC_LEN];
    if (!st_file_long(r->fp, &count) || !st_file_long(r->fp, &size) || count < 0 || size < 0 ||
        size > (int64_t)1 << 31)
        goto bad;
    sl_buf_reset(&r->zin);
    sl_buf_reserve(&r->zin, (size_t)size + 1);
    if (fread(r->zin.data, 1, (size_t)size, r->fp) != (size_t)size ||
        fread(got, 1, ST_SYNC_LEN, r->fp) != ST_SYNC_LEN || memcmp(got, r->sync, ST_SYNC_LEN))
        goto bad;
    r->zin.len = (size_t)size;
    sl_buf_reset(&r->block);
    if (!r->deflated) {
        sl_buf_append(&r->block, r->zin.data, r->zin.len);
    } else {
        if (!r->z_ready) {
            if (inflateInit2(&r->z, -15) != Z_OK)
                goto bad;
            r->z_ready = true;
        } else {
            inflateReset(&r->z);
        }
        r->z.next_in = (Bytef *)r->zin.data;
        r->z.avail_in = (uInt)r->zin.len;
        sl_buf_reserve(&r->block, r->zin.len * 4 + 4096);
        for (;;) {
            r->z.next_out = (Bytef *)r->block.data + r->block.len;
            r->z.avail_out = (uInt)(r->block.cap - r->block.len - 1); /* room for a NUL */
            int zr = inflate(&r->z, Z_NO_FLUSH);
            r->block.len = r->block.cap - 1 - r->z.avail_out;
            if (zr == Z_STREAM_END)
                break;
            if (zr != Z_OK && zr != Z_BUF_ERROR)
                goto bad;
            if (r->z.avail_out == 0)
                sl_buf_reserve(&r->block, r->block.cap); /* doubles */
            else if (r->z.avail_in == 0)
                goto bad; /* the stream ends before its end */
        }
    }
    r->at = 0;
    r->block_left = count;
    return 0;
bad:
    return st_reader_fail(r, errstr, errstr_size,
                          "staging file \"%s\" is truncated or corrupt after %lld rows: %s",
                          "bad block");
}

static void st_itoa(int64_t v, char *out)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *out++ = '-';
    while (n)
        *out++ = tmp[--n];
    *out = '\0';
}

/* Decodes the next row of the block into values and row_types. */
static int st_dec_row(wh_staging_reader_t *r, char *errstr, size_t errstr_size)
{
    const char *codes = NULL;
    size_t ncodes = 0, codes_off = SIZE_MAX;
    sl_buf_reset(&r->strs);
    for (size_t f = 0; f < r->nfields; f++) {
        int64_t branch, len;
        int col = r->fcol[f];
        if (col >= 0) {
            r->values[col] = NULL;
            r->str_off[col] = SIZE_MAX;
        }
        if (!st_dec_long(r, &branch) || branch < 0 || branch > 1)
            goto bad;
        if (branch == 0)
            continue;
        switch (r->fkind[f]) {
        case 'l': {
            int64_t v;
            if (!st_dec_long(r, &v))
                goto bad;
            if (col >= 0) {
                st_itoa(v, r->num[col]);
                r->values[col] = r->num[col];
            }
            break;
        }
        case 'd': {
            double d;
            uint64_t u = 0;
            if (r->block.len - r->at < 8)
                goto bad;
            for (int i = 7; i >= 0; i--)
                u = (u << 8) | (unsigned char)r->block.data[r->at + (size_t)i];
            r->at += 8;
            memcpy(&d, &u, sizeof(d));
            if (col >= 0) {
                st_format_double(d, r->num[col], sizeof(r->num[col]));
                r->values[col] = r->num[col];
            }
            break;
        }
        case 'b':
            if (r->at >= r->block.len)
                goto bad;
            if (col >= 0)
                r->values[col] = r->block.data[r->at] ? "true" : "false";
            r->at++;
            break;
        default: /* 's' */
            if (!st_dec_long(r, &len) || len < 0 || (uint64_t)len > r->block.len - r->at)
                goto bad;
            if (col >= 0)
                r->str_off[col] = r->strs.len;
            else
                codes_off = r->strs.len, ncodes = (size_t)len;
            sl_buf_append(&r->strs, r->block.data + r->at, (size_t)len);
            sl_buf_putc(&r->strs, '\0');
            r->at += (size_t)len;
        }
    }
    if (codes_off != SIZE_MAX)
        codes = r->strs.data + codes_off;
    size_t k = 0;
    for (size_t i = 0; i < r->ncols; i++) {
        if (r->str_off[i] != SIZE_MAX)
            r->values[i] = r->strs.data + r->str_off[i];
        r->row_types[i] = r->types[i];
        if (r->mixed[i]) {
            r->row_types[i] = row_type(r->types[i], k < ncodes ? codes[k] : ST_NONE);
            k++;
        }
    }
    return 0;
bad:
    return st_reader_fail(r, errstr, errstr_size, "staging file \"%s\": bad row %lld: %s",
                          "cut short or not of its schema");
}

/* The next row with the direct decoder: 1, 0 at the end, or an error. */
static int st_dec_next(wh_staging_reader_t *r, char *errstr, size_t errstr_size)
{
    while (r->block_left == 0) {
        int rc = st_dec_block(r, errstr, errstr_size);
        if (rc == EOF)
            return 0;
        if (rc)
            return rc;
    }
    r->block_left--;
    int rc = st_dec_row(r, errstr, errstr_size);
    return rc ? rc : 1;
}

int wh_staging_next(wh_staging_reader_t *r, const char *const **values, char *errstr,
                    size_t errstr_size)
{
    if (r->failed)
        return sl_err_set(errstr, errstr_size, r->failed, "%s", r->failure);
    if (r->done)
        return 0;
    int rc = r->fp ? st_dec_next(r, errstr, errstr_size) : 0;
    if (r->fp && rc < 0)
        return rc;
    if (r->fp && rc == 1) {
        r->rows_read++;
        if (values)
            *values = r->values;
        return 1;
    }
    rc = r->fp ? EOF : avro_file_reader_read_value(r->file, &r->rec);
    if (rc == EOF) {
        if (r->rows_expected >= 0 && r->rows_read != r->rows_expected) {
            char want[32];
            snprintf(want, sizeof(want), "%lld", r->rows_expected);
            return st_reader_fail(r, errstr, errstr_size,
                                  "staging file \"%s\" is truncated: %lld rows of %s", want);
        }
        r->done = true;
        return 0;
    }
    if (rc)
        return st_reader_fail(r, errstr, errstr_size,
                              "staging file \"%s\" is truncated or corrupt after %lld rows: %s",
                              avro_strerror());
    if ((rc = st_reader_row(r, errstr, errstr_size)))
        return rc;
    r->rows_read++;
    if (values)
        *values = r->values;
    return 1;
}

void wh_staging_close(wh_staging_reader_t *r)
{
    if (!r)
        return;
    if (r->file)
        avro_file_reader_close(r->file);
    if (r->fp)
        fclose(r->fp);
    if (r->z_ready)
        inflateEnd(&r->z);
    sl_buf_free(&r->zin);
    sl_buf_free(&r->block);
    sl_buf_free(&r->strs);
    free(r->str_off);
    free(r->fkind);
    free(r->fcol);
    st_value_free(r->iface, &r->rec);
    if (r->schema)
        avro_schema_decref(r->schema);
    for (size_t i = 0; r->names && i < r->ncols; i++)
        free(r->names[i]);
    free(r->names);
    free(r->types);
    free(r->mixed);
    free(r->field);
    free(r->values);
    free(r->num);
    free(r->row_types);
    free(r->table);
    free(r->failure);
    free(r->path);
    free(r);
}

/* ---------------------------------------------------------------------------------------- */
/* Benchmark */

static double st_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int wh_staging_bench(const char *dir, size_t n, double *write_rps, double *read_rps, char *errstr,
                     size_t errstr_size)
{
    static const wh_col_t tmpl[] = {
        {"id", WH_STRING, NULL},
        {"anonymous_id", WH_STRING, "5f0b9e52-7a3c-4c8e-9a51-2f6c1d9b8e47"},
        {"user_id", WH_STRING, "user-12345"},
        {"received_at", WH_DATETIME, "2024-05-01T12:34:56.789Z"},
        {"sent_at", WH_DATETIME, "2024-05-01T12:34:56.700Z"},
        {"timestamp", WH_DATETIME, "2024-05-01T12:34:56.789Z"},
        {"original_timestamp", WH_DATETIME, "2024-05-01T12:34:56.600Z"},
        {"event", WH_STRING, "product_viewed"},
        {"event_text", WH_STRING, "Product Viewed"},
        {"context_ip", WH_STRING, "203.0.113.7"},
        {"context_library_name", WH_STRING, "analytics-js"},
        {"context_library_version", WH_STRING, "3.0.1"},
        {"price", WH_FLOAT, "19.99"},
        {"quantity", WH_INT, NULL},
        {"in_stock", WH_BOOL, "true"},
        {"uuid_ts", WH_DATETIME, "2024-05-01T12:35:01.000Z"},
    };
    const size_t ncols = sizeof(tmpl) / sizeof(tmpl[0]);
    wh_row_t *rows = sl_calloc(n + 1, sizeof(*rows));
    const wh_row_t **ptrs = sl_calloc(n + 1, sizeof(*ptrs));
    wh_col_t *cols = sl_calloc(n * ncols + 1, sizeof(*cols));
    char *text = sl_calloc(n + 1, 64);
    char *path = sl_asprintf("%s/bench-%d.avro", dir, (int)getpid());
    const char *const *values;
    wh_staging_reader_t *r = NULL;
    int rc;

    for (size_t i = 0; i < n; i++) {
        wh_col_t *c = &cols[i * ncols];
        memcpy(c, tmpl, sizeof(tmpl));
        c[0].value = text + i * 64;
        snprintf(c[0].value, 32, "msg-%020zu", i);
        c[13].value = text + i * 64 + 32;
        snprintf(c[13].value, 32, "%zu", i % 1000);
        rows[i] = (wh_row_t){.table = "tracks", .cols = c, .ncols = ncols};
        ptrs[i] = &rows[i];
    }
    double t0 = st_now();
    if ((rc = wh_staging_write(path, "tracks", ptrs, n, errstr, errstr_size)))
        goto out;
    double t1 = st_now();
    if (!(r = wh_staging_open(path, errstr, errstr_size))) {
        rc = SL_ERR_INVALID;
        goto out;
    }
    while ((rc = wh_staging_next(r, &values, errstr, errstr_size)) == 1)
        ;
    if (rc < 0)
        goto out;
    double t2 = st_now();
    *write_rps = (double)n / (t1 - t0 > 1e-9 ? t1 - t0 : 1e-9);
    *read_rps = (double)n / (t2 - t1 > 1e-9 ? t2 - t1 : 1e-9);
out:
    wh_staging_close(r);
    unlink(path);
    free(path);
    free(text);
    free(cols);
    free(ptrs);
    free(rows);
    return rc;
}
