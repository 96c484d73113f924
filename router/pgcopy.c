/* Postgres's binary COPY format, see pgcopy.h. */
#include "router/pgcopy.h"
#include "common/err.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Microseconds from the Unix epoch to Postgres's (2000-01-01), for binary timestamptz. */
#define PG_EPOCH_US 946684800000000LL

/* Length of the valid UTF-8 sequence at s (n > 0 bytes left), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

static void store_be(char *dst, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        dst[i] = (char)(v & 0xFF);
}

void rt_copy_be(sl_buf_t *b, uint64_t v, int bytes)
{
    char x[8];
    store_be(x, v, bytes);
    sl_buf_append(b, x, (size_t)bytes);
}

void rt_copy_begin(sl_buf_t *b)
{
    sl_buf_append(b, "PGCOPY\n\377\r\n\0", 11); /* the signature */
    rt_copy_be(b, 0, 4);                        /* flags */
    rt_copy_be(b, 0, 4);                        /* header extension length */
}

void rt_copy_end(sl_buf_t *b)
{
    rt_copy_be(b, 0xFFFF, 2); /* the trailer: -1 fields */
}

void rt_copy_null(sl_buf_t *b)
{
    rt_copy_be(b, (uint32_t)-1, 4);
}

void rt_copy_text(sl_buf_t *b, const char *s, size_t n, size_t cap)
{
    if (!s) {
        rt_copy_null(b);
        return;
    }
    if (n == SIZE_MAX)
        n = strlen(s);
    size_t at = b->len;
    rt_copy_be(b, 0, 4); /* the length, set below */
    const unsigned char *p = (const unsigned char *)s;
    size_t kept = 0;
    for (size_t i = 0; i < n;) {
        /* a run of ASCII other than NUL goes as it is, in one append */
        size_t run = i;
        while (run < n && run - i < cap - kept && p[run] && p[run] < 0x80)
            run++;
        if (run > i) {
            sl_buf_append(b, p + i, run - i);
            kept += run - i;
            i = run;
            continue;
        }
        size_t len = utf8_len(p + i, n - i);
        size_t out = len ? len : 3;
        if (p[i] == '\0')
            out = 0;
        if (kept + out > cap)
            break;
        kept += out;
        if (len && p[i])
            sl_buf_append(b, p + i, len);
        else if (!len)
            sl_buf_puts(b, "\xEF\xBF\xBD");
        i += len ? len : 1;
    }
    store_be(b->data + at, b->len - at - 4, 4);
}

void rt_copy_int4(sl_buf_t *b, int32_t v)
{
    rt_copy_be(b, 4, 4);
    rt_copy_be(b, (uint32_t)v, 4);
}

void rt_copy_int8(sl_buf_t *b, int64_t v)
{
    rt_copy_be(b, 8, 4);
    rt_copy_be(b, (uint64_t)v, 8);
}

void rt_copy_time(sl_buf_t *b, int64_t ms)
{
    if (ms)
        rt_copy_int8(b, ms * 1000 - PG_EPOCH_US);
    else
        rt_copy_null(b);
}

int rt_copy_run(PGconn *c, const char *sql, const sl_buf_t *data, const char *what, char *errstr,
                size_t errstr_size)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COPY_IN;
    char msg[512] = "";
    if (!ok)
        snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
    PQclear(r);
    if (ok && (PQputCopyData(c, data->data, (int)data->len) != 1 || PQputCopyEnd(c, NULL) != 1)) {
        ok = false;
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    }
    /* the COPY's result, and nothing after it, so the connection is usable again */
    while ((r = PQgetResult(c)) != NULL) {
        if (ok && PQresultStatus(r) != PGRES_COMMAND_OK) {
            ok = false;
            snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    if (ok)
        return 0;
    if (!*msg)
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c));
    msg[strcspn(msg, "\n")] = '\0';
    return sl_err_set(errstr, errstr_size,
                      PQstatus(c) == CONNECTION_OK ? SL_ERR_INVALID : SL_ERR_TRANSIENT, "%s: %s",
                      what, msg);
}
