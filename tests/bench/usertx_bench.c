/*
 * sluice-usertx-bench: events/s through a small user transformation (processor/usertx.c),
 * workers included. Synthetic track events of about 500 bytes, like tests/bench/gen_events.py.
 *
 *   sluice-usertx-bench [--sluice PATH] [--threads T] [--workers W] [--batch B] [--seconds S]
 *                       [--batch-fn]
 *
 * --sluice defaults to $SLUICE_BIN; T caller threads (default 2) share a pool of W workers
 * (default: one per CPU), each call carrying B events (default 500). --batch-fn uses
 * transformBatch instead of transformEvent. Prints one JSON line:
 *   {"events":..,"seconds":..,"events_per_s":..,"threads":..,"workers":..,"batch":..}
 */
#include "common/timeutil.h"
#include "processor/usertx.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *code_event = "function transformEvent(event, metadata) {\n"
                                "  if (event.event === 'Ignored') return null;\n"
                                "  event.properties = event.properties || {};\n"
                                "  event.properties.source = metadata(event).sourceId;\n"
                                "  event.event = event.event.toLowerCase();\n"
                                "  delete event.context.userAgent;\n"
                                "  return event;\n"
                                "}\n";

static const char *code_batch = "function transformBatch(events, metadata) {\n"
                                "  var out = [];\n"
                                "  for (var i = 0; i < events.length; i++) {\n"
                                "    var event = events[i];\n"
                                "    event.properties = event.properties || {};\n"
                                "    event.properties.source = metadata(event).sourceId;\n"
                                "    event.event = event.event.toLowerCase();\n"
                                "    delete event.context.userAgent;\n"
                                "    out.push(event);\n"
                                "  }\n"
                                "  return out;\n"
                                "}\n";

static pr_usertx_pool_t *pool;
static int batch = 500;
static int seconds = 5;
static bool use_batch_fn;
static atomic_long total;
static atomic_long failures;
static int64_t stop_at;

static void *caller(void *arg)
{
    long id = (long)arg;
    char **ev = calloc((size_t)batch, sizeof(char *));
    char **md = calloc((size_t)batch, sizeof(char *));
    pr_usertx_result_t *out = calloc((size_t)batch, sizeof(*out));
    for (int i = 0; i < batch; i++) {
        ev[i] = malloc(1024);
        md[i] = malloc(512);
        snprintf(ev[i], 1024,
                 "{\"type\":\"track\",\"event\":\"Product Viewed %d\",\"userId\":\"user-%ld-%d\","
                 "\"anonymousId\":\"anon-%d\",\"messageId\":\"msg-%ld-%d\",\"properties\":"
                 "{\"product_id\":\"p-%d\",\"price\":%d.99,\"currency\":\"USD\",\"plan\":\"pro\"},"
                 "\"context\":{\"library\":{\"name\":\"analytics.js\",\"version\":\"2.11.1\"},"
                 "\"page\":{\"path\":\"/products/%d\",\"url\":\"https://shop.example.com/"
                 "products/%d\"},\"userAgent\":\"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/"
                 "537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\",\"ip\":\"203.0.113.7\"},"
                 "\"timestamp\":\"2026-11-25T10:00:00.000Z\"}",
                 i % 20, id, i, i, id, i, i, i % 100, i, i);
        snprintf(md[i], 512,
                 "{\"sourceId\":\"src-1\",\"destinationId\":\"dst-1\",\"destinationType\":"
                 "\"WEBHOOK\",\"workspaceId\":\"ws-1\",\"messageId\":\"msg-%ld-%d\",\"rudderId\":"
                 "\"r-%d\",\"receivedAt\":\"2026-11-25T10:00:00.100Z\",\"eventName\":\"Product "
                 "Viewed\",\"eventType\":\"track\"}",
                 id, i, i);
    }
    while (sl_time_mono_ms() < stop_at) {
        int rc =
            pr_usertx_run(pool, "bench-v1", use_batch_fn ? code_batch : code_event,
                          (const char *const *)ev, (const char *const *)md, (size_t)batch, out);
        if (rc != 0) {
            atomic_fetch_add(&failures, batch);
            continue;
        }
        for (int i = 0; i < batch; i++)
            if (out[i].kind != PR_USERTX_EVENTS)
                atomic_fetch_add(&failures, 1);
        pr_usertx_results_free(out, (size_t)batch);
        atomic_fetch_add(&total, batch);
    }
    for (int i = 0; i < batch; i++) {
        free(ev[i]);
        free(md[i]);
    }
    free(ev);
    free(md);
    free(out);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *sluice = getenv("SLUICE_BIN");
    int threads = 2, workers = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--sluice") == 0 && i + 1 < argc)
            sluice = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
            workers = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch-fn") == 0)
            use_batch_fn = true;
        else {
            fprintf(stderr, "usage: sluice-usertx-bench [--sluice PATH] [--threads T] "
                            "[--workers W] [--batch B] [--seconds S] [--batch-fn]\n");
            return 2;
        }
    }
    if (!sluice || threads < 1 || batch < 1 || seconds < 1) {
        fprintf(stderr, "sluice-usertx-bench: need --sluice PATH (or SLUICE_BIN) and positive "
                        "numbers\n");
        return 2;
    }
    const char *wargv[] = {sluice, "js-worker", NULL};
    pr_usertx_opts_t o = {.workers = workers, .worker_argv = wargv};
    char err[256];
    pool = pr_usertx_pool_new(&o, err, sizeof(err));
    if (!pool) {
        fprintf(stderr, "sluice-usertx-bench: %s\n", err);
        return 1;
    }
    pthread_t *t = calloc((size_t)threads, sizeof(pthread_t));
    int64_t start = sl_time_mono_ms();
    stop_at = start + seconds * 1000;
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, caller, (void *)i);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    double secs = (double)(sl_time_mono_ms() - start) / 1000.0;
    long n = atomic_load(&total);
    printf("{\"events\":%ld,\"failures\":%ld,\"seconds\":%.2f,\"events_per_s\":%.0f,"
           "\"threads\":%d,\"workers\":%d,\"batch\":%d,\"fn\":\"%s\"}\n",
           n, atomic_load(&failures), secs, (double)n / secs, threads, workers, batch,
           use_batch_fn ? "transformBatch" : "transformEvent");
    free(t);
    pr_usertx_pool_free(pool);
    return atomic_load(&failures) ? 1 : 0;
}
