/*
 * Allocation with one policy for the whole program: running out of memory is fatal.
 * Every sl_* allocator either returns memory or logs and aborts, so callers never check
 * for NULL (the Redis zmalloc / librdkafka rd_malloc policy). Free with free().
 */
#ifndef SL_MEM_H
#define SL_MEM_H

#include <stddef.h>

void *sl_malloc(size_t n);
void *sl_calloc(size_t nmemb, size_t size);
void *sl_realloc(void *p, size_t n);
char *sl_strdup(const char *s);
char *sl_strndup(const char *s, size_t n);
/* printf into a new string; caller frees. */
char *sl_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
