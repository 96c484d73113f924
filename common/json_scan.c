/*
 * Strict JSON scanner, see json_scan.h. Recursive descent bounded by SL_JSON_MAX_DEPTH; the
 * member and element iterators trust a document the scanner accepted.
 */
#include "common/json_scan.h"

#include "common/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct scanner {
    const char *start, *p, *end;
    sl_json_error_t *err;
    sl_json_index_t *idx;
} scanner_t;

static bool fail(scanner_t *s, const char *at, const char *msg)
{
    if (s->err) {
        s->err->offset = (size_t)(at - s->start);
        s->err->msg = msg;
    }
    return false;
}

static inline bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

/* Checks one UTF-8 sequence at p (first byte >= 0x80). Returns its length or 0. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned min;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, cp = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, cp = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

static inline int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool read_hex4(const char *p, const char *end, uint32_t *out)
{
    if (end - p < 4)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0)
            return false;
        v = (v << 4) | (uint32_t)h;
    }
    *out = v;
    return true;
}

/* Whether none of the 8 bytes in v needs a look: no control character, quote, backslash or
 * non-ASCII byte. (x - 0x01..01 * n) & ~x & 0x80..80 is nonzero iff a byte of x is below n,
 * for n <= 0x80; a byte equal to c is a zero byte of x ^ 0x01..01 * c. */
static inline bool plain8(uint64_t v)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t quote = v ^ (ones * '"'), bslash = v ^ (ones * '\\');
    uint64_t special =
        ((v - ones * 0x20) & ~v) | ((quote - ones) & ~quote) | ((bslash - ones) & ~bslash) | v;
    return (special & high) == 0;
}

/* s->p is at the opening quote. */
static bool scan_string(scanner_t *s)
{
    const char *p = s->p + 1, *end = s->end;
    for (;;) {
        /* The common case: plain ASCII, 8 bytes at a time, then byte by byte. */
        while (end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, 8);
            if (!plain8(v))
                break;
            p += 8;
        }
        while (p < end) {
            unsigned char c = (unsigned char)*p;
            if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80)
                break;
            p++;
        }
        if (p >= end)
            return fail(s, s->p, "unterminated string");
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            s->p = p + 1;
            return true;
        }
        if (c < 0x20)
            return fail(s, p, "control character in string (escape it)");
        if (c >= 0x80) {
            size_t n = utf8_seq((const unsigned char *)p, (const unsigned char *)end);
            if (!n)
                return fail(s, p, "invalid UTF-8 in string");
            p += n;
            continue;
        }
        /* Backslash. */
        if (p + 1 >= end)
            return fail(s, s->p, "unterminated string");
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            p += 2;
            break;
        case 'u': {
            uint32_t cp;
            if (!read_hex4(p + 2, end, &cp))
                return fail(s, p, "invalid \\u escape in string");
            p += 6;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || !read_hex4(p + 2, end, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return fail(s, p - 6, "unpaired UTF-16 surrogate in string");
                p += 6;
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail(s, p - 6, "unpaired UTF-16 surrogate in string");
            }
            break;
        }
        default:
            return fail(s, p, "invalid escape in string");
        }
    }
}

static bool scan_number(scanner_t *s)
{
    const char *p = s->p, *end = s->end, *start = p;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return fail(s, start, "invalid number");
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return fail(s, start, "invalid number");
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(s, start, "invalid number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(s, start, "invalid number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    s->p = p;
    return true;
}

static bool scan_literal(scanner_t *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return fail(s, s->p, "invalid literal (expected a JSON value)");
    s->p += n;
    return true;
}

static bool scan_value(scanner_t *s, int depth, sl_json_type_t *type);

/* scan_value checked the depth. */
static bool scan_container(scanner_t *s, int depth, bool object)
{
    const char close = object ? '}' : ']';
    size_t slot = 0;
    sl_json_index_t *idx = s->idx;
    if (idx) {
        if (idx->n == idx->cap) {
            idx->cap = idx->cap ? idx->cap * 2 : 64;
            idx->starts = sl_realloc(idx->starts, idx->cap * sizeof(size_t));
            idx->ends = sl_realloc(idx->ends, idx->cap * sizeof(size_t));
        }
        slot = idx->n++;
        idx->starts[slot] = (size_t)(s->p - s->start);
    }
    s->p = skip_ws(s->p + 1, s->end);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        if (idx)
            idx->ends[slot] = (size_t)(s->p - s->start);
        return true;
    }
    for (;;) {
        sl_json_type_t t;
        if (object) {
            if (s->p >= s->end || *s->p != '"')
                return fail(s, s->p,
                            s->p >= s->end ? "unexpected end of input"
                                           : "expected a string key in object");
            if (!scan_string(s))
                return false;
            s->p = skip_ws(s->p, s->end);
            if (s->p >= s->end || *s->p != ':')
                return fail(s, s->p, "expected ':' after object key");
            s->p = skip_ws(s->p + 1, s->end);
        }
        if (!scan_value(s, depth + 1, &t))
            return false;
        s->p = skip_ws(s->p, s->end);
        if (s->p >= s->end)
            return fail(s, s->p, "unexpected end of input");
        if (*s->p == close) {
            s->p++;
            if (idx)
                idx->ends[slot] = (size_t)(s->p - s->start);
            return true;
        }
        if (*s->p != ',')
            return fail(s, s->p,
                        object ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
        s->p = skip_ws(s->p + 1, s->end);
    }
}

/* s->p is at the value's first byte (whitespace skipped). */
static bool scan_value(scanner_t *s, int depth, sl_json_type_t *type)
{
    if (s->p >= s->end)
        return fail(s, s->p, "unexpected end of input");
    if (depth > SL_JSON_MAX_DEPTH) /* json-c counts scalars as a level too */
        return fail(s, s->p, "nesting is too deep");
    switch (*s->p) {
    case '{':
        *type = SL_JSON_OBJECT;
        return scan_container(s, depth, true);
    case '[':
        *type = SL_JSON_ARRAY;
        return scan_container(s, depth, false);
    case '"':
        *type = SL_JSON_STRING;
        return scan_string(s);
    case 't':
        *type = SL_JSON_TRUE;
        return scan_literal(s, "true", 4);
    case 'f':
        *type = SL_JSON_FALSE;
        return scan_literal(s, "false", 5);
    case 'n':
        *type = SL_JSON_NULL;
        return scan_literal(s, "null", 4);
    default:
        if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) {
            *type = SL_JSON_NUMBER;
            return scan_number(s);
        }
        return fail(s, s->p, "unexpected character (expected a JSON value)");
    }
}

void sl_json_index_init(sl_json_index_t *idx)
{
    memset(idx, 0, sizeof(*idx));
}

void sl_json_index_free(sl_json_index_t *idx)
{
    free(idx->starts);
    free(idx->ends);
    sl_json_index_init(idx);
}

bool sl_json_scan_document(const char *buf, size_t len, sl_json_span_t *value, sl_json_error_t *err)
{
    return sl_json_scan_indexed(buf, len, value, err, NULL);
}

bool sl_json_scan_indexed(const char *buf, size_t len, sl_json_span_t *value, sl_json_error_t *err,
                          sl_json_index_t *idx)
{
    scanner_t s = {buf, buf, buf + len, err, idx};
    if (idx) {
        idx->base = buf;
        idx->n = 0;
    }
    s.p = skip_ws(s.p, s.end);
    const char *start = s.p;
    sl_json_type_t type = SL_JSON_INVALID;
    if (s.p >= s.end)
        return fail(&s, s.p, "empty body (expected a JSON value)");
    if (!scan_value(&s, 1, &type))
        return false;
    const char *vend = s.p;
    s.p = skip_ws(s.p, s.end);
    if (s.p != s.end)
        return fail(&s, s.p, "unexpected data after the JSON value");
    if (value) {
        value->p = start;
        value->len = (size_t)(vend - start);
        value->type = type;
        value->idx = idx;
    }
    return true;
}

/* --- iteration over accepted documents --- */

static sl_json_type_t type_of(char c)
{
    switch (c) {
    case '{':
        return SL_JSON_OBJECT;
    case '[':
        return SL_JSON_ARRAY;
    case '"':
        return SL_JSON_STRING;
    case 't':
        return SL_JSON_TRUE;
    case 'f':
        return SL_JSON_FALSE;
    case 'n':
        return SL_JSON_NULL;
    default:
        return SL_JSON_NUMBER;
    }
}

/* The end of the valid value starting at p; idx (may be NULL) knows where containers end. */
static const char *value_end(const char *p, const char *end, const sl_json_index_t *idx)
{
    char c = *p;
    if (c == '"') {
        for (p++; p < end;) {
            const char *q = memchr(p, '"', (size_t)(end - p));
            if (!q)
                return end;
            const char *b = q;
            while (b > p && b[-1] == '\\')
                b--;
            if (((q - b) & 1) == 0)
                return q + 1;
            p = q + 1;
        }
        return end;
    }
    if ((c == '{' || c == '[') && idx && idx->n) {
        size_t off = (size_t)(p - idx->base), lo = 0, hi = idx->n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (idx->starts[mid] < off)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < idx->n && idx->starts[lo] == off)
            return idx->base + idx->ends[lo];
    }
    if (c == '{' || c == '[') {
        int depth = 0;
        for (; p < end; p++) {
            char d = *p;
            if (d == '"') {
                for (p++; p < end && *p != '"'; p++)
                    if (*p == '\\')
                        p++;
            } else if (d == '{' || d == '[') {
                depth++;
            } else if (d == '}' || d == ']') {
                if (--depth == 0)
                    return p + 1;
            }
        }
        return end;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && !is_ws(*p))
        p++;
    return p;
}

void sl_json_members_init(sl_json_members_t *it, sl_json_span_t obj)
{
    memset(it, 0, sizeof(*it));
    it->p = obj.p + 1; /* after '{' */
    it->end = obj.p + obj.len - 1;
    it->idx = obj.idx;
}

bool sl_json_members_next(sl_json_members_t *it)
{
    const char *p = skip_ws(it->p, it->end);
    if (p < it->end && *p == ',')
        p = skip_ws(p + 1, it->end);
    if (p >= it->end || *p != '"')
        return false;
    it->member_start = p;
    it->key.p = p;
    it->key.type = SL_JSON_STRING;
    it->key.idx = it->idx;
    const char *q = value_end(p, it->end, it->idx);
    it->key.len = (size_t)(q - p);
    q = skip_ws(q, it->end);
    q = skip_ws(q + 1, it->end); /* ':' */
    it->value.p = q;
    it->value.type = type_of(*q);
    it->value.idx = it->idx;
    const char *vend = value_end(q, it->end, it->idx);
    it->value.len = (size_t)(vend - q);
    it->p = vend;
    return true;
}

void sl_json_elems_init(sl_json_elems_t *it, sl_json_span_t arr)
{
    memset(it, 0, sizeof(*it));
    it->p = arr.p + 1;
    it->end = arr.p + arr.len - 1;
    it->idx = arr.idx;
}

bool sl_json_elems_next(sl_json_elems_t *it)
{
    const char *p = skip_ws(it->p, it->end);
    if (p < it->end && *p == ',')
        p = skip_ws(p + 1, it->end);
    if (p >= it->end)
        return false;
    it->value.p = p;
    it->value.type = type_of(*p);
    it->value.idx = it->idx;
    const char *vend = value_end(p, it->end, it->idx);
    it->value.len = (size_t)(vend - p);
    it->p = vend;
    return true;
}

/* --- strings --- */

static size_t put_utf8(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t sl_json_string_decode(sl_json_span_t s, char *out, size_t out_size)
{
    const char *p = s.p + 1, *end = s.p + s.len - 1;
    size_t n = 0;
    while (p < end) {
        char tmp[4];
        size_t k;
        if (*p != '\\') {
            tmp[0] = *p++;
            k = 1;
        } else {
            char e = p[1];
            p += 2;
            switch (e) {
            case 'b':
                tmp[0] = '\b', k = 1;
                break;
            case 'f':
                tmp[0] = '\f', k = 1;
                break;
            case 'n':
                tmp[0] = '\n', k = 1;
                break;
            case 'r':
                tmp[0] = '\r', k = 1;
                break;
            case 't':
                tmp[0] = '\t', k = 1;
                break;
            case 'u': {
                uint32_t cp = 0, lo = 0;
                read_hex4(p, end, &cp);
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && read_hex4(p + 2, end, &lo)) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
                k = put_utf8(cp, tmp);
                break;
            }
            default: /* '"', '\\', '/' */
                tmp[0] = e, k = 1;
                break;
            }
        }
        for (size_t i = 0; i < k; i++, n++)
            if (n + 1 < out_size)
                out[n] = tmp[i];
    }
    if (out_size)
        out[n < out_size ? n : out_size - 1] = '\0';
    return n;
}

bool sl_json_key_is(sl_json_span_t key, const char *name)
{
    size_t n = strlen(name);
    if (key.len == n + 2 && memcmp(key.p + 1, name, n) == 0)
        return true;
    if (!memchr(key.p, '\\', key.len))
        return false;
    /* json-c, which the later stages parse events with, ends a key at its first NUL: to it
     * "type\u0000x" is "type", and it replaces an earlier "type" */
    char buf[128];
    size_t m = sl_json_string_decode(key, buf, sizeof(buf));
    if (n >= sizeof(buf) || m < n || memcmp(buf, name, n) != 0)
        return false;
    /* buf holds at most sizeof(buf) - 1 decoded bytes: buf[n] is one of them only below that */
    return m == n || (n + 1 < sizeof(buf) && buf[n] == '\0');
}
