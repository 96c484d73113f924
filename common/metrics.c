/*
 * Prometheus metrics registry, see metrics.h. Series are registered under a lock and never
 * freed (they live for the process); updates are atomic and lock-free.
 */
#include "common/metrics.h"
#include "common/log.h"
#include "common/mem.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { M_COUNTER, M_GAUGE, M_HISTOGRAM } mtype_t;

struct sl_metric {
    char *name, *help, *labels; /* labels: `a="x",b="y"` already escaped, or "" */
    mtype_t type;
    _Atomic uint64_t bits; /* counter/gauge value as double bits */
    double *bounds;
    size_t nbounds;
    _Atomic uint64_t *counts; /* per bucket, non-cumulative; [nbounds] is +Inf */
    _Atomic uint64_t sum_bits;
    struct sl_metric *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sl_metric_t *series; /* registration order */

static const double default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};

const double sl_metrics_age_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                         2.5,   5,    10,    30,   60,  300,  900, 3600};
const size_t sl_metrics_age_nbuckets = sizeof(sl_metrics_age_buckets) / sizeof(double);

static double bits_to_d(uint64_t b)
{
    double d;
    memcpy(&d, &b, sizeof(d));
    return d;
}

static uint64_t d_to_bits(double d)
{
    uint64_t b;
    memcpy(&b, &d, sizeof(b));
    return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load(p);
    while (!atomic_compare_exchange_weak(p, &old, d_to_bits(bits_to_d(old) + v)))
        ;
}

static char *format_labels(va_list ap)
{
    sl_buf_t b = SL_BUF_INIT;
    const char *k;
    while ((k = va_arg(ap, const char *))) {
        const char *v = va_arg(ap, const char *);
        if (!v)
            v = "";
        if (b.len)
            sl_buf_putc(&b, ',');
        sl_buf_printf(&b, "%s=\"", k);
        for (const char *p = v; *p; p++) {
            if (*p == '\\' || *p == '"')
                sl_buf_putc(&b, '\\');
            if (*p == '\n')
                sl_buf_puts(&b, "\\n");
            else
                sl_buf_putc(&b, *p);
        }
        sl_buf_putc(&b, '"');
    }
    return sl_buf_steal(&b);
}

static sl_metric_t *lookup(mtype_t type, const char *name, const char *help, const double *bounds,
                           size_t nbounds, va_list ap)
{
    char *labels = format_labels(ap);
    pthread_mutex_lock(&lock);
    sl_metric_t *m, *last = NULL;
    for (m = series; m; last = m, m = m->next) {
        if (strcmp(m->name, name) != 0)
            continue;
        if (m->type != type) {
            sl_error("metrics", "internal error: metric %s registered with two types", name);
            abort();
        }
        if (strcmp(m->labels, labels) == 0)
            break;
    }
    if (!m) {
        m = sl_calloc(1, sizeof(*m));
        m->name = sl_strdup(name);
        m->help = sl_strdup(help ? help : "");
        m->labels = labels;
        labels = NULL;
        m->type = type;
        if (type == M_HISTOGRAM) {
            if (!bounds) {
                bounds = default_buckets;
                nbounds = sizeof(default_buckets) / sizeof(default_buckets[0]);
            }
            m->bounds = sl_malloc(nbounds * sizeof(double));
            memcpy(m->bounds, bounds, nbounds * sizeof(double));
            m->nbounds = nbounds;
            m->counts = sl_calloc(nbounds + 1, sizeof(*m->counts));
        }
        /* Keep series of one name together so the exposition groups them. */
        sl_metric_t *after = NULL;
        for (sl_metric_t *p = series; p; p = p->next)
            if (strcmp(p->name, name) == 0)
                after = p;
        if (after) {
            m->next = after->next;
            after->next = m;
        } else if (last) {
            last->next = m;
        } else {
            series = m;
        }
    }
    pthread_mutex_unlock(&lock);
    free(labels);
    return m;
}

sl_metric_t *sl_metrics_counter(const char *name, const char *help, ...)
{
    va_list ap;
    va_start(ap, help);
    sl_metric_t *m = lookup(M_COUNTER, name, help, NULL, 0, ap);
    va_end(ap);
    return m;
}

sl_metric_t *sl_metrics_gauge(const char *name, const char *help, ...)
{
    va_list ap;
    va_start(ap, help);
    sl_metric_t *m = lookup(M_GAUGE, name, help, NULL, 0, ap);
    va_end(ap);
    return m;
}

sl_metric_t *sl_metrics_histogram(const char *name, const char *help, const double *buckets,
                                  size_t nbuckets, ...)
{
    va_list ap;
    va_start(ap, nbuckets);
    sl_metric_t *m = lookup(M_HISTOGRAM, name, help, buckets, nbuckets, ap);
    va_end(ap);
    return m;
}

void sl_metrics_add(sl_metric_t *m, double v)
{
    atomic_add_double(&m->bits, v);
}

void sl_metrics_set(sl_metric_t *m, double v)
{
    atomic_store(&m->bits, d_to_bits(v));
}

void sl_metrics_observe(sl_metric_t *m, double v)
{
    size_t i = 0;
    while (i < m->nbounds && v > m->bounds[i])
        i++;
    atomic_fetch_add(&m->counts[i], 1);
    atomic_add_double(&m->sum_bits, v);
}

double sl_metrics_value(const sl_metric_t *m)
{
    return bits_to_d(atomic_load(&((sl_metric_t *)m)->bits));
}

static void series_name(sl_buf_t *out, const sl_metric_t *m, const char *suffix, const char *extra)
{
    sl_buf_printf(out, "%s%s", m->name, suffix);
    if (*m->labels || extra) {
        sl_buf_putc(out, '{');
        sl_buf_puts(out, m->labels);
        if (extra) {
            if (*m->labels)
                sl_buf_putc(out, ',');
            sl_buf_puts(out, extra);
        }
        sl_buf_putc(out, '}');
    }
}

void sl_metrics_render(sl_buf_t *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&lock);
    const char *prev = NULL;
    for (sl_metric_t *m = series; m; m = m->next) {
        if (!prev || strcmp(prev, m->name) != 0) {
            sl_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
                          type_names[m->type]);
            prev = m->name;
        }
        if (m->type != M_HISTOGRAM) {
            series_name(out, m, "", NULL);
            sl_buf_printf(out, " %.17g\n", bits_to_d(atomic_load(&m->bits)));
            continue;
        }
        uint64_t cum = 0;
        char le[64];
        for (size_t i = 0; i <= m->nbounds; i++) {
            cum += atomic_load(&m->counts[i]);
            if (i < m->nbounds)
                snprintf(le, sizeof(le), "le=\"%g\"", m->bounds[i]);
            else
                snprintf(le, sizeof(le), "le=\"+Inf\"");
            series_name(out, m, "_bucket", le);
            sl_buf_printf(out, " %llu\n", (unsigned long long)cum);
        }
        series_name(out, m, "_sum", NULL);
        sl_buf_printf(out, " %.17g\n", bits_to_d(atomic_load(&m->sum_bits)));
        series_name(out, m, "_count", NULL);
        sl_buf_printf(out, " %llu\n", (unsigned long long)cum);
    }
    pthread_mutex_unlock(&lock);
}
