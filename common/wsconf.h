/*
 * Keeps the current workspace config: loads it from a file or an http(s) URL (a control plane),
 * reloads it on SIGHUP, when the file changes and when the URL serves a new version
 * (conditional GET), without dropping traffic, and keeps the last good version in Postgres so
 * that a role can start when the file or URL is missing or broken.
 */
#ifndef SL_WSCONF_H
#define SL_WSCONF_H

#include <stdint.h>

#include "common/workspace.h"

typedef struct sl_wsconf sl_wsconf_t;

/* Loads the config synchronously: from location; if that fails, from the last good config in
 * Postgres (pg_dsn may be NULL or "" to keep none). If neither works, returns NULL with errstr
 * naming the location, the problem and the fix. Then a background thread checks location every
 * poll_ms and swaps in each valid new version (saving it to Postgres); an invalid new version
 * is logged, reported on the "workspace" health check, and the previous one stays in use. */
sl_wsconf_t *sl_wsconf_start(const char *location, const char *pg_dsn, int64_t poll_ms,
                             char *errstr, size_t errstr_size);

/* The current snapshot, with a reference the caller drops with sl_workspace_unref. Any thread;
 * cheap (a lock and a reference count). */
sl_workspace_t *sl_wsconf_get(sl_wsconf_t *w);

/* Asks the background thread to reload now. Async-signal-safe: call it from a SIGHUP handler. */
void sl_wsconf_request_reload(sl_wsconf_t *w);

/* Incremented each time a new version is swapped in. */
uint64_t sl_wsconf_generation(sl_wsconf_t *w);

void sl_wsconf_stop(sl_wsconf_t *w);

#endif
