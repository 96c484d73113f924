/*
 * The error convention: functions return 0 on success or a negative sl_err_t, and fill a
 * caller-supplied errstr buffer (char *errstr, size_t errstr_size) with a message in
 * PostgreSQL style: lowercase, no trailing period, concrete. Whether an error is worth
 * retrying is part of the code, because the router, Kafka and Postgres layers act on it.
 */
#ifndef SL_ERR_H
#define SL_ERR_H

#include <stddef.h>

typedef enum sl_err {
    SL_OK = 0,
    SL_ERR_INVALID = -1,   /* bad input or configuration: fix it, retrying will not help */
    SL_ERR_TRANSIENT = -2, /* a service is unreachable or busy: retry with backoff */
    SL_ERR_NOTFOUND = -3,  /* the thing asked for does not exist */
    SL_ERR_FATAL = -4      /* an internal failure that retrying will not fix */
} sl_err_t;

/* Formats into errstr (may be NULL) and returns err, for one-line error returns. */
int sl_err_set(char *errstr, size_t errstr_size, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

const char *sl_err_name(int err);

#endif
