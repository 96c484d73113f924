/*
 * When a warehouse destination syncs. With syncStartAt (RudderStack's config key, "HH:MM" in
 * UTC) the syncs of each UTC day are at syncStartAt + k x frequency for every integer k that
 * keeps the time within the day (every 3 hours from 13:00: 01:00, 04:00, ..., 22:00), as
 * RudderStack schedules them; the events consumed since the last scheduled time are loaded at
 * the next one. Without it, a destination's events are loaded one frequency after the first of
 * them was consumed.
 */
#ifndef WH_SCHEDULE_H
#define WH_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

/* Parses "HH:MM" (00:00 to 23:59, one- or two-digit hour): minutes after midnight, or -1. */
int wh_sync_start_parse(const char *s);

/* The latest scheduled sync time <= now_ms (Unix ms, UTC) of a schedule starting at start_min
 * (minutes after midnight) every freq_ms (> 0). */
int64_t wh_sync_prev(int64_t now_ms, int start_min, int64_t freq_ms);

/* Whether events buffered since since_ms (Unix ms; when the first was consumed) are due for a
 * sync at now_ms: with start_min >= 0, a scheduled time has come since then; else freq_ms has
 * passed since then. */
bool wh_sync_due(int64_t since_ms, int64_t now_ms, int start_min, int64_t freq_ms);

#endif
