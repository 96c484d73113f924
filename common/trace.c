/* W3C Trace Context values, see trace.h. */
#include "common/trace.h"
#include "common/uuid.h"

#include <stdio.h>
#include <string.h>

#define MAX_MEMBERS     32
#define MEMBER_OVERSIZE 128 /* members longer than this go first when tracestate is cut */

static const char hexdig[] = "0123456789abcdef";

static bool is_lchex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int hexval(char c)
{
    return c <= '9' ? c - '0' : c - 'a' + 10;
}

/* Copies n lowercase hex digits at p into out (NUL-terminated); false if one is not that or
 * all are zero. */
static bool take_id(const char *p, size_t n, char *out)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        if (!is_lchex(p[i]))
            return false;
        nonzero |= p[i] != '0';
        out[i] = p[i];
    }
    out[n] = '\0';
    return nonzero;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

bool sl_trace_parse(const char *s, size_t len, sl_trace_t *t)
{
    if (!s)
        return false;
    while (len && is_ows(*s))
        s++, len--;
    while (len && is_ows(s[len - 1]))
        len--;
    if (len < SL_TRACEPARENT_LEN || !is_lchex(s[0]) || !is_lchex(s[1]) || s[2] != '-')
        return false;
    bool v00 = s[0] == '0' && s[1] == '0';
    if ((s[0] == 'f' && s[1] == 'f') || (v00 && len != SL_TRACEPARENT_LEN) ||
        (len > SL_TRACEPARENT_LEN && s[SL_TRACEPARENT_LEN] != '-'))
        return false;
    sl_trace_t r;
    if (!take_id(s + 3, SL_TRACE_ID_LEN, r.trace_id) || s[35] != '-' ||
        !take_id(s + 36, SL_SPAN_ID_LEN, r.span_id) || s[52] != '-' || !is_lchex(s[53]) ||
        !is_lchex(s[54]))
        return false;
    r.flags = (uint8_t)((hexval(s[53]) << 4 | hexval(s[54])) & 0x01);
    *t = r;
    return true;
}

/* n random lowercase hex digits, not all zero, NUL-terminated. */
static void random_id(char *out, size_t n)
{
    unsigned char b[SL_TRACE_ID_LEN / 2];
    bool nonzero = false;
    while (!nonzero) {
        sl_uuid_random(b, n / 2);
        for (size_t i = 0; i < n / 2; i++) {
            nonzero |= b[i] != 0;
            out[2 * i] = hexdig[b[i] >> 4];
            out[2 * i + 1] = hexdig[b[i] & 0x0f];
        }
    }
    out[n] = '\0';
}

void sl_trace_new(sl_trace_t *t)
{
    random_id(t->trace_id, SL_TRACE_ID_LEN);
    random_id(t->span_id, SL_SPAN_ID_LEN);
    t->flags = 0x01;
}

void sl_trace_child(const sl_trace_t *parent, sl_trace_t *t)
{
    if (t != parent) {
        memcpy(t->trace_id, parent->trace_id, sizeof(t->trace_id));
        t->flags = parent->flags;
    }
    char span[SL_SPAN_ID_LEN + 1];
    do
        random_id(span, SL_SPAN_ID_LEN);
    while (strcmp(span, parent->span_id) == 0);
    memcpy(t->span_id, span, sizeof(span));
}

bool sl_trace_continue(const char *traceparent, size_t len, sl_trace_t *t)
{
    if (traceparent && sl_trace_parse(traceparent, len, t)) {
        sl_trace_child(t, t);
        return true;
    }
    sl_trace_new(t);
    return false;
}

void sl_trace_format(const sl_trace_t *t, char out[SL_TRACEPARENT_LEN + 1])
{
    snprintf(out, SL_TRACEPARENT_LEN + 1, "00-%.32s-%.16s-%02x", t->trace_id, t->span_id,
             t->flags & 0x01);
}

/* --- tracestate --- */

typedef struct member {
    const char *p;
    size_t len, key_len;
    bool keep;
} member_t;

static bool is_lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool is_keychar(char c)
{
    return is_lcalpha(c) || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/' || c == '@';
}

/* A value character other than space: printable ASCII except ',' and '='. */
static bool is_nblk(char c)
{
    return c >= 0x21 && c <= 0x7e && c != ',' && c != '=';
}

/* Whether p (len bytes, OWS trimmed, not empty) is key=value; sets *key_len. */
static bool valid_member(const char *p, size_t len, size_t *key_len)
{
    const char *eq = memchr(p, '=', len);
    if (!eq)
        return false;
    size_t k = (size_t)(eq - p), v = len - k - 1;
    if (k == 0 || k > 256 || !(is_lcalpha(p[0]) || (p[0] >= '0' && p[0] <= '9')))
        return false;
    for (size_t i = 1; i < k; i++)
        if (!is_keychar(p[i]))
            return false;
    if (v == 0 || v > 256 || !is_nblk(eq[v]))
        return false;
    for (size_t i = 1; i < v; i++)
        if (eq[i] != ' ' && !is_nblk(eq[i]))
            return false;
    *key_len = k;
    return true;
}

size_t sl_trace_state_clean(const char *s, size_t len, char *out, size_t out_size)
{
    member_t m[MAX_MEMBERS];
    size_t n = 0;
    if (out_size)
        *out = '\0';
    if (!s || out_size <= SL_TRACESTATE_MAX)
        return 0;
    for (size_t i = 0; i <= len;) {
        const char *comma = memchr(s + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - s) : len;
        size_t a = i, b = end;
        while (a < b && is_ows(s[a]))
            a++;
        while (b > a && is_ows(s[b - 1]))
            b--;
        if (a < b) {
            size_t key_len;
            if (n == MAX_MEMBERS || !valid_member(s + a, b - a, &key_len))
                return 0;
            for (size_t j = 0; j < n; j++)
                if (m[j].key_len == key_len && memcmp(m[j].p, s + a, key_len) == 0)
                    return 0; /* one entry per key */
            m[n++] = (member_t){s + a, b - a, key_len, true};
        }
        i = end + 1;
    }
    size_t total = 0, kept = 0;
    for (size_t j = 0; j < n; j++)
        total += m[j].len + (j ? 1 : 0);
    kept = n;
    /* Too long: members over 128 characters go first, then the last ones. */
    for (int pass = 0; pass < 2 && total > SL_TRACESTATE_MAX; pass++) {
        for (size_t j = n; j-- > 0 && total > SL_TRACESTATE_MAX;) {
            if (!m[j].keep || (pass == 0 && m[j].len <= MEMBER_OVERSIZE))
                continue;
            m[j].keep = false;
            total -= m[j].len + (kept > 1 ? 1 : 0);
            kept--;
        }
    }
    size_t o = 0;
    for (size_t j = 0; j < n; j++) {
        if (!m[j].keep)
            continue;
        if (o)
            out[o++] = ',';
        memcpy(out + o, m[j].p, m[j].len);
        o += m[j].len;
    }
    out[o] = '\0';
    return o;
}
