/* Unit tests for warehouse/staging.c: Avro staging files written and streamed back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <avro.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/mem.h"
#include "warehouse/staging.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static char dir[] = "/tmp/wh-staging-XXXXXX";
static char errstr[512];

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char *cmd = sl_asprintf("rm -rf '%s'", dir);
    int rc = system(cmd);
    free(cmd);
    return rc;
}

static char *tpath(const char *name)
{
    return sl_asprintf("%s/%s", dir, name);
}

#define COL(n, t, v) ((wh_col_t){(char *)(n), (t), (char *)(v)})

/* Writes rows (an array of wh_row_t) and returns the path (caller frees). */
static char *write_rows(const char *name, const char *table, wh_row_t *rows, size_t n)
{
    const wh_row_t **ptrs = calloc(n + 1, sizeof(*ptrs));
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &rows[i];
    char *path = tpath(name);
    int rc = wh_staging_write(path, table, ptrs, n, errstr, sizeof(errstr));
    if (rc)
        fail_msg("write %s: %s", name, errstr);
    free(ptrs);
    return path;
}

static wh_staging_reader_t *open_ok(const char *path)
{
    wh_staging_reader_t *r = wh_staging_open(path, errstr, sizeof(errstr));
    if (!r)
        fail_msg("open %s: %s", path, errstr);
    return r;
}

static void assert_value(const char *got, const char *want)
{
    if (!want)
        assert_null(got);
    else
        assert_string_equal(got, want);
}

/* Checks the file's column names and types. */
static void expect_columns(wh_staging_reader_t *r, size_t n, const char *const *want_names,
                           const wh_type_t *want_types)
{
    const char *const *names;
    const wh_type_t *types;
    assert_int_equal(wh_staging_columns(r, &names, &types), n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(names[i], want_names[i]);
        assert_int_equal(types[i], want_types[i]);
    }
}

/* Reads nrows rows of ncols values (want, row-major) and the end; with row_types (row-major
 * too, or one row for all when rt_stride is 0), checks each row's types. */
static void expect_rows(wh_staging_reader_t *r, size_t nrows, size_t ncols, const char *const *want,
                        const wh_type_t *row_types, size_t rt_stride)
{
    const char *const *v;
    for (size_t row = 0; row < nrows; row++) {
        assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 1);
        const wh_type_t *rt = wh_staging_row_types(r);
        for (size_t i = 0; i < ncols; i++) {
            assert_value(v[i], want[row * ncols + i]);
            if (row_types)
                assert_int_equal(rt[i], row_types[row * rt_stride + i]);
        }
    }
    assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 0);
    assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 0);
}

static void test_round_trip_types(void **state)
{
    (void)state;
    char min[32], max[32];
    snprintf(min, sizeof(min), "%" PRId64, INT64_MIN);
    snprintf(max, sizeof(max), "%" PRId64, INT64_MAX);
    wh_col_t r1[] = {
        COL("id", WH_STRING, "m1"),
        COL("n", WH_INT, max),
        COL("x", WH_FLOAT, "0.1"),
        COL("ok", WH_BOOL, "true"),
        COL("at", WH_DATETIME, "2024-05-01T12:34:56.789Z"),
        COL("name", WH_STRING, "Zoë — 名前 🚀"),
        COL("props", WH_JSON, "{\"a\":[1,2,{\"b\":null}]}"),
    };
    wh_col_t r2[] = {
        COL("id", WH_STRING, ""),    COL("n", WH_INT, min),        COL("x", WH_FLOAT, "1e300"),
        COL("ok", WH_BOOL, "false"), COL("at", WH_DATETIME, NULL), COL("name", WH_STRING, NULL),
        COL("props", WH_JSON, NULL),
    };
    wh_col_t r3[] = {
        COL("id", WH_STRING, NULL), COL("n", WH_INT, "0"),      COL("x", WH_FLOAT, "-2.5e-308"),
        COL("ok", WH_BOOL, NULL),   COL("name", WH_STRING, ""),
    };
    wh_col_t r4[] = {COL("x", WH_FLOAT, "123456789.123456789"), COL("n", WH_INT, "-1")};
    wh_col_t r5[] = {COL("x", WH_FLOAT, "5e-324")};
    wh_row_t rows[] = {{"t", r1, 7}, {"t", r2, 7}, {"t", r3, 5}, {"t", r4, 2}, {"t", r5, 1}};
    char *path = write_rows("types.avro", "my_table", rows, 5);

    wh_staging_reader_t *r = open_ok(path);
    assert_string_equal(wh_staging_table(r), "my_table");
    const char *want_names[] = {"id", "n", "x", "ok", "at", "name", "props"};
    wh_type_t want_types[] = {WH_STRING,   WH_INT,    WH_FLOAT, WH_BOOL,
                              WH_DATETIME, WH_STRING, WH_JSON};
    expect_columns(r, 7, want_names, want_types);
    const char *want[5][7] = {
        {"m1", max, "0.1", "true", "2024-05-01T12:34:56.789Z", "Zoë — 名前 🚀",
         "{\"a\":[1,2,{\"b\":null}]}"},
        {"", min, "1e+300", "false", NULL, NULL, NULL},
        {NULL, "0", "-2.5e-308", NULL, NULL, "", NULL},
        {NULL, "-1", "123456789.12345679", NULL, NULL, NULL, NULL},
        {NULL, NULL, "4.94065645841247e-324", NULL, NULL, NULL, NULL},
    };
    expect_rows(r, 5, 7, &want[0][0], want_types, 0);
    /* The floats read back as the same doubles. */
    assert_true(strtod("123456789.12345679", NULL) == strtod("123456789.123456789", NULL));
    assert_true(strtod("4.94065645841247e-324", NULL) == strtod("5e-324", NULL));
    wh_staging_close(r);

    /* Committed by rename: no temporary file is left. */
    char *tmp = sl_asprintf("%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);
    free(path);
}

/* Columns present in only some rows: first-seen order, NULL where a row lacks them. */
static void test_sparse_columns(void **state)
{
    (void)state;
    wh_col_t r1[] = {COL("a", WH_INT, "1"), COL("b", WH_STRING, "x")};
    wh_col_t r2[] = {COL("c", WH_BOOL, "true"), COL("b", WH_STRING, "y")};
    wh_col_t r3[] = {COL("d", WH_FLOAT, NULL)};
    wh_row_t rows[] = {{"t", r1, 2}, {"t", r2, 2}, {"t", NULL, 0}, {"t", r3, 1}};
    char *path = write_rows("sparse.avro", "t", rows, 4);
    wh_staging_reader_t *r = open_ok(path);
    /* d has only NULLs: the type they came with. */
    expect_columns(r, 4, (const char *[]){"a", "b", "c", "d"},
                   (wh_type_t[]){WH_INT, WH_STRING, WH_BOOL, WH_FLOAT});
    const char *want[4][4] = {{"1", "x", NULL, NULL}, {NULL, "y", "true", NULL}, {0}, {0}};
    expect_rows(r, 4, 4, &want[0][0], NULL, 0);
    wh_staging_close(r);
    free(path);
}

/* A column whose rows disagree on its type keeps each row's own type. */
static void test_mixed_types(void **state)
{
    (void)state;
    wh_col_t r1[] = {COL("v", WH_INT, "42"), COL("num", WH_INT, "9007199254740993"),
                     COL("s", WH_STRING, "a")};
    wh_col_t r2[] = {COL("v", WH_STRING, "abc"), COL("num", WH_FLOAT, "1.5")};
    wh_col_t r3[] = {COL("v", WH_FLOAT, "2.25"), COL("num", WH_INT, "not a number")};
    wh_col_t r4[] = {COL("v", WH_BOOL, NULL), COL("s", WH_STRING, "b")};
    wh_row_t rows[] = {{"t", r1, 3}, {"t", r2, 2}, {"t", r3, 2}, {"t", r4, 2}};
    char *path = write_rows("mixed.avro", "t", rows, 4);
    wh_staging_reader_t *r = open_ok(path);
    /* The first type seen (num has ints, floats and a string, so no widening to float). */
    expect_columns(r, 3, (const char *[]){"v", "num", "s"},
                   (wh_type_t[]){WH_INT, WH_INT, WH_STRING});
    const char *want[4][3] = {{"42", "9007199254740993", "a"},
                              {"abc", "1.5", NULL},
                              {"2.25", "not a number", NULL},
                              {NULL, NULL, "b"}};
    wh_type_t want_rt[4][3] = {{WH_INT, WH_INT, WH_STRING},
                               {WH_STRING, WH_FLOAT, WH_STRING},
                               {WH_FLOAT, WH_STRING, WH_STRING},
                               {WH_INT, WH_INT, WH_STRING}};
    expect_rows(r, 4, 3, &want[0][0], &want_rt[0][0], 3);
    wh_staging_close(r);
    free(path);
}

/* Names that are not Avro names, and avro-c's own reader on our file. */
static void test_names_and_avro_c(void **state)
{
    (void)state;
    wh_col_t r1[] = {COL("a-b", WH_INT, "1"),   COL("a_b", WH_INT, "2"),
                     COL("1x", WH_STRING, "3"), COL("ünï", WH_STRING, "4"),
                     COL("", WH_STRING, "5"),   COL("__sluice_row_types", WH_INT, "6"),
                     COL("mix", WH_INT, "7")};
    wh_col_t r2[] = {COL("mix", WH_STRING, "x")};
    wh_row_t rows[] = {{"t", r1, 7}, {"t", r2, 1}};
    char *path = write_rows("names.avro", "1 bad-table", rows, 2);
    wh_staging_reader_t *r = open_ok(path);
    const char *const *names, *const *v;
    assert_int_equal(wh_staging_columns(r, &names, NULL), 7);
    for (int i = 0; i < 7; i++)
        assert_string_equal(names[i], r1[i].name);
    assert_string_equal(wh_staging_table(r), "1 bad-table");
    assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 1);
    for (int i = 0; i < 7; i++)
        assert_string_equal(v[i], r1[i].value);
    wh_staging_close(r);

    /* Any Avro reader can read the file: avro-c's generic one, deflate and all. */
    avro_file_reader_t fr;
    assert_int_equal(avro_file_reader(path, &fr), 0);
    avro_schema_t s = avro_file_reader_get_writer_schema(fr);
    assert_int_equal(avro_schema_record_size(s), 8);
    for (int i = 0; i < 8; i++) {
        const char *n = avro_schema_record_field_name(s, i);
        for (const char *p = n; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                        (p > n && *p >= '0' && *p <= '9'));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(n, avro_schema_record_field_name(s, j));
    }
    avro_value_iface_t *iface = avro_generic_class_from_schema(s);
    avro_value_t rec, f, br;
    avro_generic_value_new(iface, &rec);
    int n = 0;
    while (avro_file_reader_read_value(fr, &rec) == 0)
        n++;
    assert_int_equal(n, 2);
    assert_int_equal(avro_value_get_by_index(&rec, 6, &f, NULL), 0); /* "mix", row 2 */
    assert_int_equal(avro_value_get_current_branch(&f, &br), 0);
    const char *str;
    size_t len;
    assert_int_equal(avro_value_get_string(&br, &str, &len), 0);
    assert_string_equal(str, "x");
    avro_value_decref(&rec);
    avro_value_iface_decref(iface);
    avro_schema_decref(s);
    avro_file_reader_close(fr);
    free(path);
}

/* 100k rows stream back in order, with the reader holding one block at a time. */
static void test_streaming_100k(void **state)
{
    (void)state;
    enum { N = 100000 };
    wh_row_t *rows = calloc(N, sizeof(*rows));
    wh_col_t *cols = calloc(N * 3, sizeof(*cols));
    char *text = calloc(N, 64);
    for (size_t i = 0; i < N; i++) {
        char *id = text + i * 64, *n = id + 32;
        snprintf(id, 32, "message-%zu", i);
        snprintf(n, 32, "%zu", i * 7);
        cols[i * 3] = COL("id", WH_STRING, id);
        cols[i * 3 + 1] = COL("n", WH_INT, n);
        cols[i * 3 + 2] = COL("padding", WH_STRING,
                              i % 10 ? "some text that makes the file bigger than a block" : NULL);
        rows[i] = (wh_row_t){"t", &cols[i * 3], 3};
    }
    char *path = write_rows("big.avro", "t", rows, N);
    free(rows);
    free(cols);
    free(text);

    struct mallinfo2 before = mallinfo2();
    size_t peak = 0;
    wh_staging_reader_t *r = open_ok(path);
    const char *const *v;
    char want[32];
    size_t i = 0;
    int rc;
    while ((rc = wh_staging_next(r, &v, errstr, sizeof(errstr))) == 1) {
        snprintf(want, sizeof(want), "message-%zu", i);
        if (strcmp(v[0], want))
            fail_msg("row %zu: id %s", i, v[0]);
        snprintf(want, sizeof(want), "%zu", i * 7);
        assert_string_equal(v[1], want);
        assert_true(i % 10 ? v[2] != NULL : v[2] == NULL);
        if (i % 5000 == 0) {
            struct mallinfo2 now = mallinfo2();
            if (now.uordblks > before.uordblks && now.uordblks - before.uordblks > peak)
                peak = now.uordblks - before.uordblks;
        }
        i++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(i, N);
    wh_staging_close(r);
#ifndef UNDER_ASAN
    /* The rows take ~8 MB decoded; the reader holds about a block (256 KiB). */
    if (peak > 2 * 1024 * 1024)
        fail_msg("reader grew by %zu bytes", peak);
#endif
    free(path);
}

static void copy_truncated(const char *from, const char *to, long size)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    long left = size;
    size_t n;
    while (left > 0 && (n = fread(buf, 1, left < 4096 ? (size_t)left : 4096, in)) > 0) {
        fwrite(buf, 1, n, out);
        left -= (long)n;
    }
    fclose(in);
    fclose(out);
}

/* Reads path to the end; returns the rows read and the final code in *rc. */
static long read_all(const char *path, int *rc)
{
    wh_staging_reader_t *r = wh_staging_open(path, errstr, sizeof(errstr));
    long n = 0;
    const char *const *v;
    if (!r) {
        *rc = -100;
        return 0;
    }
    while ((*rc = wh_staging_next(r, &v, errstr, sizeof(errstr))) == 1)
        n++;
    wh_staging_close(r);
    return n;
}

static void test_truncated(void **state)
{
    (void)state;
    enum { N = 30000 };
    wh_row_t *rows = calloc(N, sizeof(*rows));
    wh_col_t *cols = calloc(N, sizeof(*cols));
    char *text = calloc(N, 32);
    for (size_t i = 0; i < N; i++) {
        snprintf(text + i * 32, 32, "row %zu of the file", i);
        cols[i] = COL("s", WH_STRING, text + i * 32);
        rows[i] = (wh_row_t){"t", &cols[i], 1};
    }
    char *path = write_rows("full.avro", "t", rows, N);
    free(rows);
    free(cols);
    free(text);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    int rc;
    assert_int_equal(read_all(path, &rc), N);
    assert_int_equal(rc, 0);

    /* Cut right after a block's sync marker: a valid-looking container with fewer rows. */
    FILE *f = fopen(path, "rb");
    char *data = malloc((size_t)st.st_size);
    assert_int_equal(fread(data, 1, (size_t)st.st_size, f), (size_t)st.st_size);
    fclose(f);
    const char *sync = data + st.st_size - 16;
    long boundary = -1;
    for (const char *p = data + st.st_size / 3; p < sync; p++)
        if (!memcmp(p, sync, 16)) {
            boundary = p + 16 - data;
            break;
        }
    free(data);
    assert_true(boundary > 0);

    char *cut = tpath("cut.avro");
    long cuts[] = {
        st.st_size - 1, st.st_size - 16, st.st_size - 17, st.st_size / 2, boundary, 200, 30, 4, 0};
    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        copy_truncated(path, cut, cuts[c]);
        long n = read_all(cut, &rc);
        if (rc != -100) /* open walks the blocks: every cut is refused there */
            fail_msg("cut at %ld: %ld rows, rc %d", cuts[c], n, rc);
        assert_non_null(strstr(errstr, "cut.avro"));
        assert_non_null(strstr(errstr, cuts[c] ? "truncated" : "not an avro"));
    }
    free(cut);
    free(path);
}

static void test_errors(void **state)
{
    (void)state;
    char *missing = tpath("missing.avro");
    errno = 0;
    assert_null(wh_staging_open(missing, errstr, sizeof(errstr)));
    assert_int_equal(errno, ENOENT);
    assert_non_null(strstr(errstr, "missing.avro"));
    free(missing);

    char *text = tpath("text.avro");
    FILE *f = fopen(text, "w");
    fputs("id,name\n1,a\n", f);
    fclose(f);
    assert_null(wh_staging_open(text, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "not an avro"));
    free(text);

    /* No such directory: nothing written. */
    wh_col_t c[] = {COL("a", WH_INT, "1")};
    wh_row_t row = {"t", c, 1};
    const wh_row_t *rows[] = {&row};
    char *nodir = tpath("no/such/dir.avro");
    assert_int_equal(wh_staging_write(nodir, "t", rows, 1, errstr, sizeof(errstr)),
                     SL_ERR_NOTFOUND);
    free(nodir);
    assert_int_equal(wh_staging_write(NULL, "t", rows, 1, errstr, sizeof(errstr)), SL_ERR_INVALID);

    /* A temporary file left by a crash is replaced. */
    char *path = tpath("again.avro"), *tmp = sl_asprintf("%s.tmp", path);
    f = fopen(tmp, "w");
    fputs("half a file", f);
    fclose(f);
    assert_int_equal(wh_staging_write(path, "t", rows, 1, errstr, sizeof(errstr)), 0);
    assert_int_equal(access(tmp, F_OK), -1);
    int rc;
    assert_int_equal(read_all(path, &rc), 1);
    free(tmp);
    free(path);
}

/* Writes an Avro file with avro-c's own writer: schema json, one row of field 0 = long 7. */
static char *foreign_file(const char *name, const char *schema_json)
{
    char *path = tpath(name);
    avro_schema_t s;
    avro_file_writer_t w;
    assert_int_equal(avro_schema_from_json_length(schema_json, strlen(schema_json), &s), 0);
    unlink(path);
    assert_int_equal(avro_file_writer_create(path, s, &w), 0);
    avro_value_iface_t *iface = avro_generic_class_from_schema(s);
    avro_value_t rec, f, br;
    avro_generic_value_new(iface, &rec);
    if (avro_value_get_type(&rec) == AVRO_ARRAY)
        avro_value_append(&rec, &f, NULL);
    else
        avro_value_get_by_index(&rec, 0, &f, NULL);
    if (avro_value_get_type(&f) == AVRO_UNION) {
        avro_value_set_branch(&f, 1, &br);
        if (avro_value_get_type(&br) == AVRO_INT64)
            avro_value_set_long(&br, 7);
        else
            avro_value_set_string(&br, "7");
    } else {
        avro_value_set_long(&f, 7);
    }
    assert_int_equal(avro_file_writer_append_value(w, &rec), 0);
    avro_file_writer_close(w);
    avro_value_decref(&rec);
    avro_value_iface_decref(iface);
    avro_schema_decref(s);
    return path;
}

static void test_schema_mismatch(void **state)
{
    (void)state;
    char *p = foreign_file("plain.avro", "{\"type\":\"record\",\"name\":\"r\",\"fields\":["
                                         "{\"name\":\"a\",\"type\":\"long\"}]}");
    assert_null(wh_staging_open(p, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "schema mismatch"));
    free(p);

    p = foreign_file("typed.avro",
                     "{\"type\":\"record\",\"name\":\"r\",\"fields\":[{\"name\":"
                     "\"a\",\"type\":[\"null\",\"string\"],\"sluice_type\":\"int\"}]}");
    /* avro-c's writer drops attributes it doesn't know: the Avro types describe the file. */
    wh_staging_reader_t *r = open_ok(p);
    const wh_type_t *types;
    const char *const *v;
    assert_int_equal(wh_staging_columns(r, NULL, &types), 1);
    assert_int_equal(types[0], WH_STRING);
    assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 1);
    assert_string_equal(v[0], "7");
    wh_staging_close(r);
    free(p);

    p = foreign_file("long.avro", "{\"type\":\"record\",\"name\":\"r\",\"fields\":[{\"name\":"
                                  "\"a\",\"type\":[\"null\",\"long\"]}]}");
    r = open_ok(p);
    expect_columns(r, 1, (const char *[]){"a"}, (wh_type_t[]){WH_INT});
    expect_rows(r, 1, 1, (const char *[]){"7"}, NULL, 0);
    wh_staging_close(r);
    free(p);

    p = foreign_file("notrec.avro", "{\"type\":\"array\",\"items\":\"long\"}");
    assert_null(wh_staging_open(p, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "schema mismatch"));
    free(p);
}

/* Rewrites the first occurrence of from (same length as to) in path's first 4 KiB. */
static void patch_header(const char *path, const char *from, const char *to)
{
    FILE *f = fopen(path, "r+b");
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf), f);
    char *at = memmem(buf, n, from, strlen(from));
    assert_non_null(at);
    assert_int_equal(strlen(from), strlen(to));
    memcpy(at, to, strlen(to));
    fseek(f, 0, SEEK_SET);
    fwrite(buf, 1, n, f);
    fclose(f);
}

/* Our own files whose sluice_type is unknown or contradicts the Avro type. */
static void test_schema_attribute_mismatch(void **state)
{
    (void)state;
    wh_col_t c[] = {COL("a", WH_INT, "1"), COL("b", WH_STRING, "x")};
    wh_row_t rows[] = {{"t", c, 2}};
    char *path = write_rows("attr.avro", "t", rows, 1);
    patch_header(path, "\"sluice_type\":\"int\"", "\"sluice_type\":\"jsn\"");
    assert_null(wh_staging_open(path, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "schema mismatch"));
    free(path);

    path = write_rows("attr2.avro", "t", rows, 1);
    /* JSON allows the spaces, so the header keeps its length. */
    patch_header(path, "\"sluice_type\":\"string\"", "\"sluice_type\":\"int\"   ");
    assert_null(wh_staging_open(path, errstr, sizeof(errstr)));
    assert_non_null(strstr(errstr, "schema mismatch"));
    assert_non_null(strstr(errstr, "\"b\""));
    free(path);
}

static void test_empty_and_large_row(void **state)
{
    (void)state;
    char *path = write_rows("empty.avro", "t", NULL, 0);
    wh_staging_reader_t *r = open_ok(path);
    const char *const *v;
    assert_int_equal(wh_staging_columns(r, NULL, NULL), 0);
    assert_int_equal(wh_staging_next(r, &v, errstr, sizeof(errstr)), 0);
    wh_staging_close(r);
    free(path);

    /* A row bigger than a block. */
    size_t big = 3 * 1024 * 1024;
    char *s = malloc(big + 1);
    for (size_t i = 0; i < big; i++)
        s[i] = (char)('a' + i % 26);
    s[big] = '\0';
    wh_col_t c1[] = {COL("big", WH_STRING, s)};
    wh_col_t c2[] = {COL("big", WH_STRING, "small")};
    wh_row_t rows[] = {{"t", c2, 1}, {"t", c1, 1}, {"t", c2, 1}};
    path = write_rows("large.avro", "t", rows, 3);
    r = open_ok(path);
    expect_rows(r, 3, 1, (const char *[]){"small", s, "small"}, NULL, 0);
    wh_staging_close(r);
    free(s);
    free(path);
}

static void test_bench(void **state)
{
    (void)state;
    double w = 0, rd = 0;
    assert_int_equal(wh_staging_bench(dir, 5000, &w, &rd, errstr, sizeof(errstr)), 0);
    assert_true(w > 0 && rd > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_types),
        cmocka_unit_test(test_sparse_columns),
        cmocka_unit_test(test_mixed_types),
        cmocka_unit_test(test_names_and_avro_c),
        cmocka_unit_test(test_streaming_100k),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_schema_mismatch),
        cmocka_unit_test(test_schema_attribute_mismatch),
        cmocka_unit_test(test_empty_and_large_row),
        cmocka_unit_test(test_bench),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
