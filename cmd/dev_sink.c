/*
 * `sluice dev-sink`: a local HTTP destination for development and tests. It records every
 * request (to a JSON-lines file and in memory) and answers as told through /_sink/mode:
 * succeed, fail with a status, stall, or fail only requests whose body matches.
 */
#include "cmd/cmd.h"
#include "common/buf.h"
#include "common/http.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SINK_KEEP 100000

typedef struct sink {
    pthread_mutex_t lock;
    FILE *out;
    char **recs;    /* ring of recorded requests as JSON objects */
    size_t head, n; /* the ring holds indexes dropped .. dropped + n - 1 */
    unsigned long dropped;
    unsigned long received;
    unsigned long by_status[600];
    int status; /* mode */
    int delay_ms;
    char *match; /* only bodies containing this get the mode; NULL for all */
    long count;  /* matching requests left before the mode reverts; -1 forever */
    /* delayed answers, sorted by due time, answered by the timer thread */
    struct delayed *delayed;
    pthread_cond_t timer_cond;
    pthread_t timer;
    bool closing; /* the timer has stopped: answer at once */
} sink_t;

typedef struct delayed {
    sl_http_req_t *req;
    int status;
    int64_t due_ms; /* monotonic */
    struct delayed *next;
} delayed_t;

static void add_header_json(const char *name, const char *value, void *opaque)
{
    sl_buf_t *b = opaque;
    if (b->data[b->len - 1] != '{')
        sl_buf_putc(b, ',');
    sl_buf_json_str(b, name, strlen(name));
    sl_buf_putc(b, ':');
    sl_buf_json_str(b, value, strlen(value));
}

static void answer(sl_http_req_t *req, int status)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"ok\":%s}", status < 300 ? "true" : "false");
    sl_http_respond(req, status, "application/json", body, (size_t)n);
}

/* The timer thread: answers each delayed request when it is due; at close, answers the rest
 * at once so that the server can drain. */
static void *timer_main(void *arg)
{
    sink_t *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        delayed_t *d = s->delayed;
        if (d && (s->closing || d->due_ms <= sl_time_mono_ms())) {
            s->delayed = d->next;
            pthread_mutex_unlock(&s->lock);
            answer(d->req, d->status);
            free(d);
            pthread_mutex_lock(&s->lock);
            continue;
        }
        if (s->closing)
            break;
        struct timespec ts;
        sl_time_deadline(&ts, d ? d->due_ms - sl_time_mono_ms() : 1000);
        pthread_cond_timedwait(&s->timer_cond, &s->lock, &ts);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Queues req to be answered after delay_ms (caller holds s->lock). False once closing. */
static bool answer_later(sink_t *s, sl_http_req_t *req, int status, int delay_ms)
{
    if (s->closing)
        return false;
    delayed_t *d = sl_malloc(sizeof(*d)), **pp = &s->delayed;
    *d = (delayed_t){req, status, sl_time_mono_ms() + delay_ms, NULL};
    while (*pp && (*pp)->due_ms <= d->due_ms)
        pp = &(*pp)->next;
    d->next = *pp;
    *pp = d;
    pthread_cond_signal(&s->timer_cond);
    return true;
}

static sl_http_result_t handle_record(sl_http_req_t *req, void *opaque)
{
    sink_t *s = opaque;
    size_t len;
    const char *body = sl_http_req_body(req, &len);
    char ts[SL_TIME_STRLEN];
    sl_time_format_ms(sl_time_now_ms(), ts);
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_printf(&b, "{\"ts\":\"%s\",\"method\":", ts);
    sl_buf_json_str(&b, sl_http_req_method(req), strlen(sl_http_req_method(req)));
    sl_buf_puts(&b, ",\"path\":");
    sl_buf_json_str(&b, sl_http_req_path(req), strlen(sl_http_req_path(req)));
    sl_buf_puts(&b, ",\"headers\":{");
    sl_http_req_headers_foreach(req, add_header_json, &b);
    sl_buf_puts(&b, "},\"body\":");
    sl_buf_json_str(&b, body, len);

    pthread_mutex_lock(&s->lock);
    int status = 200, delay = 0;
    if (!s->match || strstr(body, s->match)) {
        status = s->status;
        delay = s->delay_ms;
        if (s->count > 0 && --s->count == 0) {
            s->status = 200;
            s->delay_ms = 0;
            free(s->match);
            s->match = NULL;
            s->count = -1;
        }
    }
    /* The answer is part of the record: a request answered 5xx, or after the client gave up
     * waiting, was an attempt, not a delivery. */
    sl_buf_printf(&b, ",\"status\":%d,\"delay_ms\":%d}", status, delay);
    s->received++;
    if (status >= 100 && status < 600)
        s->by_status[status]++;
    if (s->out) {
        fprintf(s->out, "%s\n", b.data);
        fflush(s->out);
    }
    size_t slot = (s->head + s->n) % SINK_KEEP;
    if (s->n == SINK_KEEP) {
        free(s->recs[s->head]);
        slot = s->head;
        s->head = (s->head + 1) % SINK_KEEP;
        s->dropped++;
    } else {
        s->n++;
    }
    s->recs[slot] = sl_buf_steal(&b);
    bool later = delay > 0 && answer_later(s, req, status, delay);
    pthread_mutex_unlock(&s->lock);
    if (later)
        return SL_HTTP_ASYNC;
    answer(req, status);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_requests(sl_http_req_t *req, void *opaque)
{
    sink_t *s = opaque;
    const char *since = sl_http_req_query(req, "since");
    char *end = NULL;
    unsigned long from = since ? strtoul(since, &end, 10) : 0;
    if (since && (!*since || *end)) {
        sl_http_respond_error(req, 400, "since must be a request index (a number from 0)");
        return SL_HTTP_DONE;
    }
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_putc(&b, '[');
    pthread_mutex_lock(&s->lock);
    /* Indexes count every request since the last reset; evicted ones are skipped. */
    size_t i = from > s->dropped ? from - s->dropped : 0;
    for (size_t first = i; i < s->n; i++) {
        if (i > first)
            sl_buf_putc(&b, ',');
        sl_buf_puts(&b, s->recs[(s->head + i) % SINK_KEEP]);
    }
    pthread_mutex_unlock(&s->lock);
    sl_buf_putc(&b, ']');
    sl_http_respond(req, 200, "application/json", b.data, b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_stats(sl_http_req_t *req, void *opaque)
{
    sink_t *s = opaque;
    sl_buf_t b = SL_BUF_INIT;
    pthread_mutex_lock(&s->lock);
    sl_buf_printf(&b, "{\"received\":%lu,\"by_status\":{", s->received);
    bool first = true;
    for (int i = 100; i < 600; i++) {
        if (!s->by_status[i])
            continue;
        sl_buf_printf(&b, "%s\"%d\":%lu", first ? "" : ",", i, s->by_status[i]);
        first = false;
    }
    pthread_mutex_unlock(&s->lock);
    sl_buf_puts(&b, "}}");
    sl_http_respond(req, 200, "application/json", b.data, b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_mode(sl_http_req_t *req, void *opaque)
{
    sink_t *s = opaque;
    size_t len;
    const char *body = sl_http_req_body(req, &len);
    json_object *o = json_tokener_parse(body), *v;
    if (!o || !json_object_is_type(o, json_type_object)) {
        if (o)
            json_object_put(o);
        sl_http_respond_error(req, 400,
                              "expected a JSON object such as "
                              "{\"status\":500,\"delay_ms\":0,\"match\":\"x\","
                              "\"count\":3}");
        return SL_HTTP_DONE;
    }
    int status = json_object_object_get_ex(o, "status", &v) ? json_object_get_int(v) : 200;
    if (status < 100 || status > 599) {
        json_object_put(o);
        sl_http_respond_error(req, 400, "status must be an HTTP status from 100 to 599");
        return SL_HTTP_DONE;
    }
    int delay = json_object_object_get_ex(o, "delay_ms", &v) ? json_object_get_int(v) : 0;
    long count = json_object_object_get_ex(o, "count", &v) ? (long)json_object_get_int64(v) : -1;
    if (delay < 0 || delay > 3600000 || count == 0 || count < -1) {
        json_object_put(o);
        sl_http_respond_error(req, 400, "delay_ms must be 0..3600000 and count a positive number");
        return SL_HTTP_DONE;
    }
    pthread_mutex_lock(&s->lock);
    s->status = status;
    s->delay_ms = delay;
    free(s->match);
    s->match = json_object_object_get_ex(o, "match", &v) && json_object_get_string_len(v)
                   ? sl_strdup(json_object_get_string(v))
                   : NULL;
    s->count = count;
    pthread_mutex_unlock(&s->lock);
    json_object_put(o);
    sl_http_respond(req, 200, "application/json", "{\"ok\":true}", 11);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_reset(sl_http_req_t *req, void *opaque)
{
    sink_t *s = opaque;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n; i++)
        free(s->recs[(s->head + i) % SINK_KEEP]);
    s->head = s->n = 0;
    s->dropped = 0;
    s->received = 0;
    memset(s->by_status, 0, sizeof(s->by_status));
    s->status = 200;
    s->delay_ms = 0;
    free(s->match);
    s->match = NULL;
    s->count = -1;
    pthread_mutex_unlock(&s->lock);
    sl_http_respond(req, 200, "application/json", "{\"ok\":true}", 11);
    return SL_HTTP_DONE;
}

int cmd_dev_sink(int argc, char **argv, const char *config_file)
{
    static const struct option longopts[] = {{"host", required_argument, NULL, 'H'},
                                             {"port", required_argument, NULL, 'p'},
                                             {"out", required_argument, NULL, 'o'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *host = "127.0.0.1", *out = NULL;
    int port = 9090, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "H:p:o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 'o':
            out = optarg;
            break;
        case 'h':
            puts("usage: sluice dev-sink [--host 127.0.0.1] [--port 9090] [--out FILE]\n\n"
                 "A local HTTP destination. Every request (any path but /_sink/*) is recorded as\n"
                 "a JSON line {ts, method, path, headers, body, status, delay_ms} to FILE\n"
                 "(default stdout) and in memory, and answered as the mode says (default 200;\n"
                 "status and delay_ms are the answer given). Control:\n"
                 "  POST /_sink/mode "
                 "{\"status\":500,\"delay_ms\":0,\"match\":\"text\",\"count\":N}\n"
                 "       status and delay for requests whose body contains match (all if\n"
                 "       omitted), for the next N of them (until changed if omitted)\n"
                 "  GET  /_sink/requests[?since=N]   recorded requests as a JSON array\n"
                 "  GET  /_sink/stats                counts by status\n"
                 "  POST /_sink/reset                forget everything, back to 200");
            return 0;
        default:
            return 2;
        }
    }
    if (port < 0 || port > 65535) {
        fprintf(stderr, "sluice dev-sink: --port must be 0..65535\n");
        return 2;
    }
    sl_conf_t *conf;
    int rc = cmd_load_conf(config_file, &conf);
    if (rc)
        return rc;
    sink_t s = {.status = 200, .count = -1};
    s.out = out ? fopen(out, "a") : stdout;
    if (!s.out) {
        fprintf(stderr, "sluice dev-sink: could not open \"%s\": %s\n", out, strerror(errno));
        sl_conf_destroy(conf);
        return 1;
    }
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.timer_cond, NULL);
    s.recs = sl_calloc(SINK_KEEP, sizeof(char *));
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts, so all inherit it */
    pthread_create(&s.timer, NULL, timer_main, &s);

    sl_http_opts_t opts = {.component = "dev-sink",
                           .host = host,
                           .port = port,
                           .threads = 2,
                           .max_body = 64 * 1024 * 1024};
    sl_http_server_t *srv = sl_http_server_new(&opts);
    sl_http_route(srv, "POST", "/_sink/mode", handle_mode, &s);
    sl_http_route(srv, "GET", "/_sink/requests", handle_requests, &s);
    sl_http_route(srv, "GET", "/_sink/stats", handle_stats, &s);
    sl_http_route(srv, "POST", "/_sink/reset", handle_reset, &s);
    sl_http_route(srv, NULL, "/*", handle_record, &s);
    char err[512];
    rc = 0;
    if (sl_http_server_start(srv, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluice dev-sink: %s\n", err);
        rc = 1;
    } else {
        sl_info("dev-sink", "dev-sink listening on http://%s:%d", host, sl_http_server_port(srv));
        int sig;
        sigwait(&set, &sig);
        sl_info("dev-sink", "stopping on signal %d", sig);
        sl_http_server_quiesce(srv);
    }
    pthread_mutex_lock(&s.lock);
    s.closing = true;
    pthread_cond_signal(&s.timer_cond);
    pthread_mutex_unlock(&s.lock);
    pthread_join(s.timer, NULL);
    sl_http_server_destroy(srv);
    for (size_t i = 0; i < s.n; i++)
        free(s.recs[(s.head + i) % SINK_KEEP]);
    free(s.recs);
    free(s.match);
    pthread_cond_destroy(&s.timer_cond);
    pthread_mutex_destroy(&s.lock);
    if (out)
        fclose(s.out);
    sl_conf_destroy(conf);
    return rc;
}
