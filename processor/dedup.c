/*
 * Per-partition messageId sets, see dedup.h: an open-addressing hash set of 64-bit hashes
 * (tombstones on delete) beside a FIFO ring giving the insertion order for eviction.
 */
#include "processor/dedup.h"
#include "common/mem.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY 0
#define TOMB  1 /* hashes 0 and 1 are remapped so they never collide with these */

typedef struct entry {
    uint64_t hash;
    int64_t ts_ms;
} entry_t;

typedef struct part {
    int32_t partition;
    uint64_t *slots; /* hash set, capacity a power of two >= 2 * max */
    size_t nslots, used, tombs;
    entry_t *ring; /* insertion order */
    size_t head, len;
    struct part *next;
} part_t;

struct pr_dedup {
    int64_t window_ms;
    size_t max_ids;
    part_t *parts;
};

/* FNV-1a then a murmur3 finalizer: fast, well mixed, 64 bits. */
static uint64_t hash_id(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h < 2 ? h + 2 : h;
}

pr_dedup_t *pr_dedup_new(int64_t window_ms, size_t max_ids)
{
    pr_dedup_t *d = sl_calloc(1, sizeof(*d));
    d->window_ms = window_ms;
    d->max_ids = max_ids ? max_ids : 1;
    return d;
}

static void part_free(part_t *p)
{
    free(p->slots);
    free(p->ring);
    free(p);
}

void pr_dedup_free(pr_dedup_t *d)
{
    if (!d)
        return;
    while (d->parts) {
        part_t *p = d->parts;
        d->parts = p->next;
        part_free(p);
    }
    free(d);
}

static part_t *find(const pr_dedup_t *d, int32_t partition)
{
    for (part_t *p = d->parts; p; p = p->next)
        if (p->partition == partition)
            return p;
    return NULL;
}

static size_t probe(const part_t *p, uint64_t h, bool *found)
{
    size_t mask = p->nslots - 1, i = (size_t)h & mask, first_tomb = SIZE_MAX;
    for (;;) {
        uint64_t s = p->slots[i];
        if (s == h) {
            *found = true;
            return i;
        }
        if (s == EMPTY) {
            *found = false;
            return first_tomb != SIZE_MAX ? first_tomb : i;
        }
        if (s == TOMB && first_tomb == SIZE_MAX)
            first_tomb = i;
        i = (i + 1) & mask;
    }
}

static void set_remove(part_t *p, uint64_t h)
{
    bool found;
    size_t i = probe(p, h, &found);
    if (found) {
        p->slots[i] = TOMB;
        p->used--;
        p->tombs++;
    }
}

/* Rebuilds the table without tombstones once they crowd it. */
static void rehash(part_t *p)
{
    uint64_t *old = p->slots;
    size_t n = p->nslots;
    p->slots = sl_calloc(n, sizeof(uint64_t));
    p->used = p->tombs = 0;
    for (size_t i = 0; i < n; i++) {
        if (old[i] > TOMB) {
            bool found;
            size_t j = probe(p, old[i], &found);
            p->slots[j] = old[i];
            p->used++;
        }
    }
    free(old);
}

static void evict_oldest(part_t *p)
{
    set_remove(p, p->ring[p->head].hash);
    p->head = (p->head + 1) % (p->nslots / 2);
    p->len--;
}

bool pr_dedup_seen(pr_dedup_t *d, int32_t partition, const char *message_id, size_t len,
                   int64_t ts_ms)
{
    part_t *p = find(d, partition);
    if (!p) {
        p = sl_calloc(1, sizeof(*p));
        p->partition = partition;
        size_t n = 16;
        while (n < d->max_ids * 2)
            n *= 2;
        p->nslots = n;
        p->slots = sl_calloc(n, sizeof(uint64_t));
        p->ring = sl_malloc((n / 2) * sizeof(entry_t));
        p->next = d->parts;
        d->parts = p;
    }
    size_t ring_cap = p->nslots / 2;
    /* Expire what left the window, then make room. */
    while (p->len && p->ring[p->head].ts_ms < ts_ms - d->window_ms)
        evict_oldest(p);
    uint64_t h = hash_id(message_id, len);
    bool found;
    size_t i = probe(p, h, &found);
    if (found)
        return true;
    while (p->len >= d->max_ids || p->len >= ring_cap)
        evict_oldest(p);
    i = probe(p, h, &found);
    if (p->slots[i] == TOMB)
        p->tombs--;
    p->slots[i] = h;
    p->used++;
    p->ring[(p->head + p->len) % ring_cap] = (entry_t){h, ts_ms};
    p->len++;
    if (p->tombs > p->nslots / 4)
        rehash(p);
    return false;
}

void pr_dedup_forget(pr_dedup_t *d, int32_t partition)
{
    for (part_t **pp = &d->parts; *pp; pp = &(*pp)->next) {
        if ((*pp)->partition == partition) {
            part_t *p = *pp;
            *pp = p->next;
            part_free(p);
            return;
        }
    }
}

size_t pr_dedup_size(const pr_dedup_t *d, int32_t partition)
{
    const part_t *p = find(d, partition);
    return p ? p->len : 0;
}
