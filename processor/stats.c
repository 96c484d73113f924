/* The processor's per source and destination metrics, see stats.h. */
#include "processor/stats.h"
#include "common/mem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct stat_def {
    const char *name, *help;
    const char *stage; /* value of the stage label, or NULL */
    int histogram;
} stat_def_t;

static const stat_def_t defs[PR_STAT_N] = {
    [PR_STAT_EVENTS] = {"sluice_processor_events_total", "Events consumed, by source", NULL, 0},
    [PR_STAT_DUPLICATES] = {"sluice_processor_duplicates_total",
                            "Events dropped as duplicates of a messageId in the window", NULL, 0},
    [PR_STAT_FILTERED] = {"sluice_processor_filtered_total",
                          "Event-destination pairs not delivered because of config, type, "
                          "integrations, consent or event filters",
                          NULL, 0},
    [PR_STAT_JOBS] = {"sluice_processor_jobs_total",
                      "Delivery and warehouse jobs produced, by source and destination", NULL, 0},
    [PR_STAT_DROPPED] = {"sluice_processor_transformation_dropped_total",
                         "Events a user transformation dropped (returned null, undefined or [])",
                         NULL, 0},
    [PR_STAT_FAILED_EVENT] = {"sluice_processor_failed_total",
                              "Dead letters written to the failed topic, by stage", "event", 0},
    [PR_STAT_FAILED_USERTX] = {"sluice_processor_failed_total",
                               "Dead letters written to the failed topic, by stage",
                               "user_transformation", 0},
    [PR_STAT_FAILED_DESTTX] = {"sluice_processor_failed_total",
                               "Dead letters written to the failed topic, by stage",
                               "destination_transformation", 0},
    [PR_STAT_LATENCY] = {"sluice_processor_latency_seconds",
                         "Time from the gateway's receivedAt to the job produced, by source and "
                         "destination",
                         NULL, 1},
};

typedef struct entry {
    pr_stat_t stat;
    char *source, *destination; /* destination NULL: none */
    uint64_t hash;
    sl_metric_t *m;
    struct entry *next;
} entry_t;

struct pr_stats {
    entry_t **buckets;
    size_t nbuckets, n;
};

pr_stats_t *pr_stats_new(void)
{
    pr_stats_t *s = sl_calloc(1, sizeof(*s));
    s->nbuckets = 64;
    s->buckets = sl_calloc(s->nbuckets, sizeof(entry_t *));
    return s;
}

void pr_stats_destroy(pr_stats_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (entry_t *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e->source);
            free(e->destination);
            free(e);
        }
    }
    free(s->buckets);
    free(s);
}

/* FNV-1a over the stat, the source and the destination (with separators). */
static uint64_t hash_of(pr_stat_t stat, const char *source, const char *destination)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)stat;
    for (const char *p = source; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0x1f) * 1099511628211ULL;
    for (const char *p = destination ? destination : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h ^ (destination ? 0 : 0x9e3779b97f4a7c15ULL);
}

static void grow(pr_stats_t *s)
{
    size_t nb = s->nbuckets * 2;
    entry_t **b = sl_calloc(nb, sizeof(entry_t *));
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (entry_t *e = s->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

static sl_metric_t *lookup(const stat_def_t *d, const char *source, const char *destination)
{
    if (d->histogram)
        return sl_metrics_histogram(d->name, d->help, sl_metrics_age_buckets,
                                    sl_metrics_age_nbuckets, "source", source, "destination",
                                    destination, NULL);
    if (d->stage && destination)
        return sl_metrics_counter(d->name, d->help, "source", source, "destination", destination,
                                  "stage", d->stage, NULL);
    if (d->stage)
        return sl_metrics_counter(d->name, d->help, "source", source, "stage", d->stage, NULL);
    if (destination)
        return sl_metrics_counter(d->name, d->help, "source", source, "destination", destination,
                                  NULL);
    return sl_metrics_counter(d->name, d->help, "source", source, NULL);
}

sl_metric_t *pr_stats_get(pr_stats_t *s, pr_stat_t stat, const char *source,
                          const char *destination)
{
    if (!source)
        source = "unknown";
    uint64_t h = hash_of(stat, source, destination);
    for (entry_t *e = s->buckets[h & (s->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->stat == stat && strcmp(e->source, source) == 0 &&
            (destination ? e->destination && strcmp(e->destination, destination) == 0
                         : !e->destination))
            return e->m;
    if (s->n >= s->nbuckets * 2)
        grow(s);
    entry_t *e = sl_calloc(1, sizeof(*e));
    e->stat = stat;
    e->source = sl_strdup(source);
    e->destination = destination ? sl_strdup(destination) : NULL;
    e->hash = h;
    e->m = lookup(&defs[stat], source, destination);
    e->next = s->buckets[h & (s->nbuckets - 1)];
    s->buckets[h & (s->nbuckets - 1)] = e;
    s->n++;
    return e->m;
}

pr_stat_t pr_stats_failed(const char *stage)
{
    for (int i = PR_STAT_FAILED_EVENT; i <= PR_STAT_FAILED_DESTTX; i++)
        if (stage && strcmp(defs[i].stage, stage) == 0)
            return (pr_stat_t)i;
    return PR_STAT_FAILED_EVENT;
}
