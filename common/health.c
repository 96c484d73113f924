/* Process-wide health checks, see health.h. */
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHECKS 16

typedef struct check {
    char name[32];
    bool ok;
    char detail[512];
} check_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static check_t checks[MAX_CHECKS];
static int nchecks;

void sl_health_set(const char *name, bool ok, const char *fmt, ...)
{
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof(detail), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_lock(&lock);
    check_t *c = NULL;
    for (int i = 0; i < nchecks; i++)
        if (strcmp(checks[i].name, name) == 0)
            c = &checks[i];
    bool changed = false;
    if (!c && nchecks < MAX_CHECKS) {
        c = &checks[nchecks++];
        snprintf(c->name, sizeof(c->name), "%s", name);
        changed = !ok;
    } else if (c) {
        changed = c->ok != ok;
    }
    if (c) {
        c->ok = ok;
        if (!ok || fmt)
            snprintf(c->detail, sizeof(c->detail), "%s", detail);
        else
            c->detail[0] = '\0';
    }
    pthread_mutex_unlock(&lock);
    if (changed && !ok)
        sl_warn("health", "%s is unhealthy: %s", name, detail);
    else if (changed)
        sl_info("health", "%s is healthy again", name);
}

bool sl_health_ok(void)
{
    bool ok = true;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nchecks; i++)
        ok = ok && checks[i].ok;
    pthread_mutex_unlock(&lock);
    return ok;
}

void sl_health_render(sl_buf_t *out)
{
    pthread_mutex_lock(&lock);
    bool ok = true;
    for (int i = 0; i < nchecks; i++)
        ok = ok && checks[i].ok;
    sl_buf_printf(out, "{\"status\":\"%s\",\"checks\":{", ok ? "ok" : "unhealthy");
    for (int i = 0; i < nchecks; i++) {
        if (i)
            sl_buf_putc(out, ',');
        sl_buf_json_str(out, checks[i].name, strlen(checks[i].name));
        sl_buf_printf(out, ":{\"ok\":%s,\"detail\":", checks[i].ok ? "true" : "false");
        sl_buf_json_str(out, checks[i].detail, strlen(checks[i].detail));
        sl_buf_putc(out, '}');
    }
    sl_buf_puts(out, "}}");
    pthread_mutex_unlock(&lock);
}
