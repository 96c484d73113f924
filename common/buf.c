/* Growable byte buffer, see buf.h. */
#include "common/buf.h"
#include "common/mem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sl_buf_reserve(sl_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = sl_realloc(b->data, cap);
    b->cap = cap;
}

void sl_buf_append(sl_buf_t *b, const void *p, size_t n)
{
    sl_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void sl_buf_puts(sl_buf_t *b, const char *s)
{
    sl_buf_append(b, s, strlen(s));
}

void sl_buf_putc(sl_buf_t *b, char c)
{
    sl_buf_append(b, &c, 1);
}

void sl_buf_vprintf(sl_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n <= 0)
        return;
    sl_buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void sl_buf_printf(sl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sl_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void sl_buf_json_str(sl_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sl_buf_reserve(b, n * 6 + 2); /* the worst case: every byte \u-escaped */
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"':
        case '\\':
            *o++ = (char)c;
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    *o = '\0';
    b->len = (size_t)(o - b->data);
}

void sl_buf_reset(sl_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

char *sl_buf_steal(sl_buf_t *b)
{
    char *p = b->data ? b->data : sl_strdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void sl_buf_free(sl_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
