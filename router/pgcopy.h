/*
 * Postgres's binary COPY format, written into a buffer: the router's job status rows
 * (status.c) and parked jobs (store.c) go to Postgres this way, so that it parses no text
 * (timestamps above all) and plans no statement per row.
 */
#ifndef RT_PGCOPY_H
#define RT_PGCOPY_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "common/buf.h"

/* The file header (signature, flags, no extension), and the trailer. */
void rt_copy_begin(sl_buf_t *b);
void rt_copy_end(sl_buf_t *b);
/* A big-endian integer of bytes (2, 4 or 8) bytes; a row starts with its field count as 2. */
void rt_copy_be(sl_buf_t *b, uint64_t v, int bytes);
void rt_copy_null(sl_buf_t *b);
/* s (n bytes, or up to its NUL if n is SIZE_MAX) as one text field: at most cap bytes of
 * UTF-8 (whole characters), NULs dropped, invalid bytes as U+FFFD (Postgres refuses both).
 * NULL is NULL. */
void rt_copy_text(sl_buf_t *b, const char *s, size_t n, size_t cap);
void rt_copy_int4(sl_buf_t *b, int32_t v);
void rt_copy_int8(sl_buf_t *b, int64_t v);
/* A timestamptz from Unix ms; 0 is NULL. */
void rt_copy_time(sl_buf_t *b, int64_t ms);
/* Runs sql, a COPY ... FROM STDIN (FORMAT binary), with data on c and waits for its
 * outcome. Returns 0, or an error class with errstr set (what: what failed). */
int rt_copy_run(PGconn *c, const char *sql, const sl_buf_t *data, const char *what, char *errstr,
                size_t errstr_size);

#endif
