/*
 * HTTP server: a libmicrohttpd wrapper with a thread pool, connection and body limits,
 * transparent `Content-Encoding: gzip` request bodies, JSON error bodies, and the routes every
 * role serves: GET /health (sl_health), GET /metrics (sl_metrics, Prometheus text) and
 * GET /version. Handlers see a fully read body and may answer later from another thread.
 */
#ifndef SL_HTTP_H
#define SL_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sl_http_server sl_http_server_t;
typedef struct sl_http_req sl_http_req_t;

typedef enum sl_http_result {
    SL_HTTP_DONE, /* the handler called sl_http_respond*() before returning */
    SL_HTTP_ASYNC /* the handler will call sl_http_respond*() later, from any thread, once */
} sl_http_result_t;

/* Called on an HTTP worker thread once the whole body has arrived. */
typedef sl_http_result_t (*sl_http_handler_fn)(sl_http_req_t *req, void *opaque);

typedef struct sl_http_opts {
    const char *component;    /* for logs, e.g. "gateway" */
    const char *host;         /* listen address; NULL or "" means all */
    int port;                 /* 0 picks a free port, see sl_http_server_port() */
    int threads;              /* worker threads; 0 means one per CPU */
    size_t max_body;          /* larger bodies (after gunzip too) get 413; 0 means 4 MB */
    unsigned max_connections; /* 0 means 4096 */
    size_t max_buffered;      /* request bodies held at once, all connections; past it new
                                 bodies get 503 with Retry-After; 0 means no limit */
    bool cors;                /* allow any origin: answer preflights, add CORS headers */
} sl_http_opts_t;

/* Creates a server; nothing listens until sl_http_server_start. */
sl_http_server_t *sl_http_server_new(const sl_http_opts_t *opts);

/* Adds a route. method NULL matches any method; a path ending in '*' matches by prefix.
 * Routes are matched in the order added; call before sl_http_server_start. */
void sl_http_route(sl_http_server_t *srv, const char *method, const char *path,
                   sl_http_handler_fn fn, void *opaque);

/* Like sl_http_route, with its own body limit instead of the server's max_body. */
void sl_http_route_max_body(sl_http_server_t *srv, const char *method, const char *path,
                            sl_http_handler_fn fn, void *opaque, size_t max_body);

/* Starts listening. Returns 0, or SL_ERR_INVALID/SL_ERR_TRANSIENT with errstr such as
 * `could not listen on 0.0.0.0:8080: Address already in use`. */
int sl_http_server_start(sl_http_server_t *srv, char *errstr, size_t errstr_size);
/* The bound port (useful with port 0). */
int sl_http_server_port(const sl_http_server_t *srv);
/* Stops accepting new connections; requests in progress go on (drain). */
void sl_http_server_quiesce(sl_http_server_t *srv);
/* Waits for in-progress requests (asynchronous ones must be answered), then frees. */
void sl_http_server_destroy(sl_http_server_t *srv);

/* Request accessors; strings are owned by req and valid until it is answered. */
const char *sl_http_req_method(const sl_http_req_t *req);
const char *sl_http_req_path(const sl_http_req_t *req);
const char *sl_http_req_header(const sl_http_req_t *req, const char *name); /* or NULL */
const char *sl_http_req_query(const sl_http_req_t *req, const char *name);  /* or NULL */
/* The body, gunzipped if it was sent gzip-encoded; NUL-terminated; *len excludes the NUL. */
const char *sl_http_req_body(const sl_http_req_t *req, size_t *len);
/* The peer's address as text. */
const char *sl_http_req_peer(const sl_http_req_t *req);
/* Basic auth user (the writeKey for the gateway) or NULL; password ignored. */
const char *sl_http_req_basic_user(const sl_http_req_t *req);

/* Monotonic time (ms, sl_time_mono_ms) when the request's headers arrived. */
long long sl_http_req_start_ms(const sl_http_req_t *req);
/* Bytes of the body as received (before any gunzip). */
size_t sl_http_req_wire_size(const sl_http_req_t *req);

/* Calls fn for each URL query parameter, in order (a parameter without '=' has value ""). */
void sl_http_req_query_foreach(const sl_http_req_t *req,
                               void (*fn)(const char *name, const char *value, void *opaque),
                               void *opaque);

/* Calls fn for each request header, in the order received. */
void sl_http_req_headers_foreach(const sl_http_req_t *req,
                                 void (*fn)(const char *name, const char *value, void *opaque),
                                 void *opaque);

/* Adds a response header; call before sl_http_respond*. */
void sl_http_req_add_header(sl_http_req_t *req, const char *name, const char *value);
/* Answers the request; body is copied. Exactly once per request. */
void sl_http_respond(sl_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len);
/* Answers {"error":"<message>"} with the given status. */
void sl_http_respond_error(sl_http_req_t *req, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
