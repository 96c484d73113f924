/*
 * Growable byte buffer, for building responses, JSON and SQL without fixed limits.
 * The buffer owns data; it is always NUL-terminated so it can be used as a C string.
 */
#ifndef SL_BUF_H
#define SL_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct sl_buf {
    char *data; /* NUL-terminated; NULL until first append */
    size_t len;
    size_t cap;
} sl_buf_t;

#define SL_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

void sl_buf_reserve(sl_buf_t *b, size_t extra);
void sl_buf_append(sl_buf_t *b, const void *p, size_t n);
void sl_buf_puts(sl_buf_t *b, const char *s);
void sl_buf_putc(sl_buf_t *b, char c);
void sl_buf_printf(sl_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sl_buf_vprintf(sl_buf_t *b, const char *fmt, va_list ap);
/* Appends s as a JSON string literal, quotes included. */
void sl_buf_json_str(sl_buf_t *b, const char *s, size_t n);
/* Keeps the allocation, empties the content. */
void sl_buf_reset(sl_buf_t *b);
/* Hands the data to the caller (who frees it) and empties the buffer. */
char *sl_buf_steal(sl_buf_t *b);
void sl_buf_free(sl_buf_t *b);

#endif
