/*
 * Process-wide health: each dependency (kafka, postgres, workspace, ...) reports whether it is
 * usable; GET /health answers 200 when every check is ok, 503 otherwise, with a JSON body
 * naming each check and the last problem. Thread-safe.
 */
#ifndef SL_HEALTH_H
#define SL_HEALTH_H

#include <stdbool.h>

#include "common/buf.h"

/* Sets a check's state; detail (printf-style, may be NULL) says what is wrong and how to fix it.
 * Logs once when a check changes state. */
void sl_health_set(const char *check, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool sl_health_ok(void);
/* {"status":"ok"|"unhealthy","checks":{"kafka":{"ok":true,"detail":"..."},...}} */
void sl_health_render(sl_buf_t *out);

#endif
