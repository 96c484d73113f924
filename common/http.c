/*
 * HTTP server on libmicrohttpd, see http.h. Requests are buffered whole, then routed; a handler
 * may answer later from another thread: the connection is suspended until it does.
 */
#include "common/http.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/health.h"
#include "common/log.h"
#include "common/mem.h"
#include "common/metrics.h"
#include "common/timeutil.h"
#include "sluice_version.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

typedef struct route {
    char *method, *path;
    bool prefix;
    sl_http_handler_fn fn;
    void *opaque;
    size_t max_body; /* 0: the server's */
} route_t;

struct sl_http_server {
    char *component, *host;
    int port;
    unsigned threads, max_connections;
    size_t max_body, max_buffered;
    atomic_size_t buffered; /* body bytes held by requests, see max_buffered */
    atomic_size_t resumed;  /* suspended requests answered, their responses not yet sent */
    bool cors;
    sl_metric_t *m_too_large, *m_bad_encoding, *m_overloaded, *m_not_found;
    route_t *routes;
    size_t nroutes;
    struct MHD_Daemon *daemon;
};

typedef enum { REQ_READING, REQ_HANDLING, REQ_SUSPENDED, REQ_ANSWERED } req_state_t;

struct sl_http_req {
    sl_http_server_t *srv;
    struct MHD_Connection *conn;
    const char *method, *path;
    sl_buf_t body;
    const struct route *route; /* matched when the headers arrived; NULL if none */
    bool path_known;           /* some route has this path (405 rather than 404) */
    size_t max_body, held, wire_size;
    long long start_ms;
    bool resumed; /* answered while suspended: counted in srv->resumed until freed */
    bool too_large, overloaded;
    char *origin; /* the Origin header, for CORS */
    char *basic_user;
    char peer[INET6_ADDRSTRLEN];
    pthread_mutex_t lock;
    req_state_t state;
    struct MHD_Response *resp; /* set by sl_http_respond */
    unsigned status;
    char **hdrs; /* name, value pairs for the response */
    size_t nhdrs;
};

sl_http_server_t *sl_http_server_new(const sl_http_opts_t *opts)
{
    sl_http_server_t *srv = sl_calloc(1, sizeof(*srv));
    srv->component = sl_strdup(opts->component ? opts->component : "http");
    srv->host = sl_strdup(opts->host ? opts->host : "");
    srv->port = opts->port;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    srv->threads = opts->threads > 0 ? (unsigned)opts->threads : (unsigned)(ncpu > 0 ? ncpu : 1);
    srv->max_body = opts->max_body ? opts->max_body : 4 * 1024 * 1024;
    srv->max_connections = opts->max_connections ? opts->max_connections : 4096;
    srv->max_buffered = opts->max_buffered;
    srv->cors = opts->cors;
    const char *help = "HTTP requests rejected before reaching a handler, by reason";
    srv->m_too_large = sl_metrics_counter("sluice_http_rejections_total", help, "component",
                                          srv->component, "reason", "body_too_large", NULL);
    srv->m_bad_encoding = sl_metrics_counter("sluice_http_rejections_total", help, "component",
                                             srv->component, "reason", "bad_encoding", NULL);
    srv->m_overloaded = sl_metrics_counter("sluice_http_rejections_total", help, "component",
                                           srv->component, "reason", "overloaded", NULL);
    srv->m_not_found = sl_metrics_counter("sluice_http_rejections_total", help, "component",
                                          srv->component, "reason", "no_such_endpoint", NULL);
    return srv;
}

void sl_http_route(sl_http_server_t *srv, const char *method, const char *path,
                   sl_http_handler_fn fn, void *opaque)
{
    srv->routes = sl_realloc(srv->routes, (srv->nroutes + 1) * sizeof(*srv->routes));
    route_t *r = &srv->routes[srv->nroutes++];
    size_t len = strlen(path);
    r->method = method ? sl_strdup(method) : NULL;
    r->prefix = len && path[len - 1] == '*';
    r->path = sl_strndup(path, r->prefix ? len - 1 : len);
    r->fn = fn;
    r->opaque = opaque;
    r->max_body = 0;
}

void sl_http_route_max_body(sl_http_server_t *srv, const char *method, const char *path,
                            sl_http_handler_fn fn, void *opaque, size_t max_body)
{
    sl_http_route(srv, method, path, fn, opaque);
    srv->routes[srv->nroutes - 1].max_body = max_body;
}

/* The route for method and path, or NULL; *path_known tells whether any method matched. */
static const route_t *find_route(const sl_http_server_t *srv, const char *method, const char *path,
                                 bool *path_known)
{
    *path_known = false;
    for (size_t i = 0; i < srv->nroutes; i++) {
        const route_t *r = &srv->routes[i];
        bool match =
            r->prefix ? strncmp(path, r->path, strlen(r->path)) == 0 : strcmp(path, r->path) == 0;
        if (!match)
            continue;
        *path_known = true;
        if (!r->method || strcmp(r->method, method) == 0)
            return r;
    }
    return NULL;
}

/* --- built-in routes --- */

static sl_http_result_t handle_health(sl_http_req_t *req, void *opaque)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_health_render(&b);
    sl_http_respond(req, sl_health_ok() ? 200 : 503, "application/json", b.data, b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_metrics(sl_http_req_t *req, void *opaque)
{
    sl_buf_t b = SL_BUF_INIT;
    sl_metrics_render(&b);
    sl_http_respond(req, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

static sl_http_result_t handle_version(sl_http_req_t *req, void *opaque)
{
    static const char body[] =
        "{\"version\":\"" SLUICE_VERSION "\",\"commit\":\"" SLUICE_GIT_COMMIT "\"}";
    sl_http_respond(req, 200, "application/json", body, sizeof(body) - 1);
    return SL_HTTP_DONE;
}

/* --- request plumbing --- */

/* Accounts body bytes held by req against the server's max_buffered. */
static void req_hold(sl_http_req_t *req, size_t bytes)
{
    atomic_fetch_add(&req->srv->buffered, bytes);
    req->held += bytes;
}

static void req_free(sl_http_req_t *req)
{
    atomic_fetch_sub(&req->srv->buffered, req->held);
    if (req->resumed)
        atomic_fetch_sub(&req->srv->resumed, 1);
    free(req->origin);
    sl_buf_free(&req->body);
    free(req->basic_user);
    for (size_t i = 0; i < req->nhdrs * 2; i++)
        free(req->hdrs[i]);
    free(req->hdrs);
    if (req->resp)
        MHD_destroy_response(req->resp);
    pthread_mutex_destroy(&req->lock);
    free(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    sl_http_req_t *req = *con_cls;
    if (req)
        req_free(req);
    *con_cls = NULL;
}

/* Inflates a gzip or zlib body in place of the raw one. Returns 0, 413 or 400. */
static int inflate_body(sl_http_req_t *req)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, 15 + 32) != Z_OK)
        return 400;
    sl_buf_t out = SL_BUF_INIT;
    zs.next_in = (Bytef *)req->body.data;
    zs.avail_in = (uInt)req->body.len;
    int rc = Z_OK, status = 0;
    while (rc != Z_STREAM_END) {
        sl_buf_reserve(&out, 64 * 1024);
        zs.next_out = (Bytef *)out.data + out.len;
        zs.avail_out = (uInt)(out.cap - out.len - 1);
        rc = inflate(&zs, Z_NO_FLUSH);
        out.len = (size_t)((char *)zs.next_out - out.data);
        if (rc != Z_OK && rc != Z_STREAM_END) {
            status = 400;
            break;
        }
        if (out.len > req->max_body) {
            status = 413;
            break;
        }
        if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
            status = 400; /* truncated stream */
            break;
        }
    }
    inflateEnd(&zs);
    if (status) {
        sl_buf_free(&out);
        return status;
    }
    out.data[out.len] = '\0';
    if (out.len > req->body.len)
        req_hold(req, out.len - req->body.len);
    sl_buf_free(&req->body);
    req->body = out;
    return 0;
}

static enum MHD_Result queue_answer(sl_http_req_t *req)
{
    enum MHD_Result r = MHD_queue_response(req->conn, req->status, req->resp);
    MHD_destroy_response(req->resp);
    req->resp = NULL;
    return r;
}

static enum MHD_Result dispatch(sl_http_req_t *req)
{
    sl_http_server_t *srv = req->srv;
    if (srv->cors && strcmp(req->method, "OPTIONS") == 0) {
        /* A CORS preflight: allow the method and headers asked for. */
        const char *hdrs = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                       "Access-Control-Request-Headers");
        sl_http_req_add_header(req, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        sl_http_req_add_header(req, "Access-Control-Allow-Headers",
                               hdrs ? hdrs : "Content-Type, Authorization, AnonymousId");
        sl_http_req_add_header(req, "Access-Control-Max-Age", "900");
        sl_http_respond(req, 204, NULL, "", 0);
        return queue_answer(req);
    }
    if (req->too_large) {
        sl_metrics_add(srv->m_too_large, 1);
        sl_http_respond_error(req, 413, "request body is larger than the limit of %zu bytes",
                              req->max_body);
        return queue_answer(req);
    }
    if (req->overloaded) {
        sl_metrics_add(srv->m_overloaded, 1);
        sl_http_req_add_header(req, "Retry-After", "1");
        sl_http_respond_error(req, 503,
                              "the server holds its limit of %zu bytes of request bodies; retry "
                              "later",
                              srv->max_buffered);
        return queue_answer(req);
    }
    const char *enc = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Content-Encoding");
    if (enc && (strcasecmp(enc, "gzip") == 0 || strcasecmp(enc, "deflate") == 0) && req->body.len) {
        int st = inflate_body(req);
        if (st == 413) {
            sl_metrics_add(srv->m_too_large, 1);
            sl_http_respond_error(req, 413,
                                  "decompressed request body is larger than the limit of %zu "
                                  "bytes",
                                  req->max_body);
            return queue_answer(req);
        }
        if (st) {
            sl_metrics_add(srv->m_bad_encoding, 1);
            sl_http_respond_error(req, 400, "invalid %s body", enc);
            return queue_answer(req);
        }
    }
    bool path_known = req->path_known;
    sl_http_handler_fn fn = req->route ? req->route->fn : NULL;
    void *opaque = req->route ? req->route->opaque : NULL;
    if (!fn && !path_known && strcmp(req->method, "GET") == 0) {
        if (strcmp(req->path, "/health") == 0)
            fn = handle_health;
        else if (strcmp(req->path, "/metrics") == 0)
            fn = handle_metrics;
        else if (strcmp(req->path, "/version") == 0)
            fn = handle_version;
    }
    if (!fn) {
        sl_metrics_add(srv->m_not_found, 1);
        if (path_known)
            sl_http_respond_error(req, 405, "method %s is not allowed on %s", req->method,
                                  req->path);
        else
            sl_http_respond_error(req, 404, "no such endpoint: %s %s", req->method, req->path);
        return queue_answer(req);
    }
    req->state = REQ_HANDLING;
    sl_http_result_t res = fn(req, opaque);
    pthread_mutex_lock(&req->lock);
    if (res == SL_HTTP_DONE || req->resp) {
        pthread_mutex_unlock(&req->lock);
        if (!req->resp)
            sl_http_respond_error(req, 500, "internal error: the handler gave no answer");
        return queue_answer(req);
    }
    req->state = REQ_SUSPENDED;
    MHD_suspend_connection(req->conn);
    pthread_mutex_unlock(&req->lock);
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls)
{
    sl_http_server_t *srv = cls;
    sl_http_req_t *req = *con_cls;
    if (!req) {
        req = sl_calloc(1, sizeof(*req));
        req->srv = srv;
        req->conn = conn;
        req->method = method;
        req->path = url;
        req->start_ms = sl_time_mono_ms();
        pthread_mutex_init(&req->lock, NULL);
        req->route = find_route(srv, method, url, &req->path_known);
        req->max_body = req->route && req->route->max_body ? req->route->max_body : srv->max_body;
        const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
        if (srv->cors && origin)
            req->origin = sl_strdup(origin);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > req->max_body)
            req->too_large = true;
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_size) {
        req->wire_size += *upload_size;
        if (!req->too_large && !req->overloaded) {
            if (req->body.len + *upload_size > req->max_body) {
                req->too_large = true;
            } else if (srv->max_buffered &&
                       atomic_load(&srv->buffered) + *upload_size > srv->max_buffered) {
                req->overloaded = true;
            } else {
                sl_buf_append(&req->body, upload, *upload_size);
                req_hold(req, *upload_size);
            }
            if (req->too_large || req->overloaded) {
                atomic_fetch_sub(&srv->buffered, req->held);
                req->held = 0;
                sl_buf_free(&req->body);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (req->state == REQ_SUSPENDED) {
        /* Resumed by sl_http_respond. */
        pthread_mutex_lock(&req->lock);
        req->state = REQ_ANSWERED;
        pthread_mutex_unlock(&req->lock);
        return queue_answer(req);
    }
    if (!req->body.data)
        sl_buf_append(&req->body, "", 0);
    return dispatch(req);
}

int sl_http_server_start(sl_http_server_t *srv, char *errstr, size_t errstr_size)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)srv->port);
    const char *host = *srv->host ? srv->host : "0.0.0.0";
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "invalid listen address \"%s\": expected an IPv4 address", host);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    errno = 0;
    /* MHD sets SO_REUSEADDR (a restart binds at once, past TIME_WAIT) but, without
     * MHD_OPTION_LISTENING_ADDRESS_REUSE, not SO_REUSEPORT: a second process started on the
     * port fails here instead of silently taking a share of its connections. */
    srv->daemon = MHD_start_daemon(flags, (uint16_t)srv->port, NULL, NULL, on_access, srv,
                                   MHD_OPTION_SOCK_ADDR, &addr, MHD_OPTION_THREAD_POOL_SIZE,
                                   srv->threads, MHD_OPTION_CONNECTION_LIMIT, srv->max_connections,
                                   MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv, MHD_OPTION_END);
    if (!srv->daemon) {
        int e = errno ? errno : EADDRINUSE;
        return sl_err_set(errstr, errstr_size, SL_ERR_TRANSIENT, "could not listen on %s:%d: %s",
                          host, srv->port, strerror(e));
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (info)
        srv->port = info->port;
    return 0;
}

int sl_http_server_port(const sl_http_server_t *srv)
{
    return srv->port;
}

void sl_http_server_quiesce(sl_http_server_t *srv)
{
    if (!srv || !srv->daemon)
        return;
    MHD_socket fd = MHD_quiesce_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void sl_http_server_destroy(sl_http_server_t *srv)
{
    if (!srv)
        return;
    /* A request answered after it was suspended (a delayed answer) has its response sent by
     * the daemon's thread a moment later: stopping the daemon first would close the
     * connection without it. Wait for those, up to 2 s. */
    for (int i = 0; i < 400 && atomic_load(&srv->resumed) > 0; i++)
        usleep(5000);
    if (srv->daemon)
        MHD_stop_daemon(srv->daemon);
    for (size_t i = 0; i < srv->nroutes; i++) {
        free(srv->routes[i].method);
        free(srv->routes[i].path);
    }
    free(srv->routes);
    free(srv->component);
    free(srv->host);
    free(srv);
}

const char *sl_http_req_method(const sl_http_req_t *req)
{
    return req->method;
}

const char *sl_http_req_path(const sl_http_req_t *req)
{
    return req->path;
}

const char *sl_http_req_header(const sl_http_req_t *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *sl_http_req_query(const sl_http_req_t *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *sl_http_req_body(const sl_http_req_t *req, size_t *len)
{
    if (len)
        *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

const char *sl_http_req_peer(const sl_http_req_t *req)
{
    sl_http_req_t *r = (sl_http_req_t *)req;
    if (r->peer[0])
        return r->peer;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return NULL;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->peer, sizeof(r->peer));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->peer,
                  sizeof(r->peer));
    return r->peer[0] ? r->peer : NULL;
}

const char *sl_http_req_basic_user(const sl_http_req_t *req)
{
    sl_http_req_t *r = (sl_http_req_t *)req;
    if (r->basic_user)
        return r->basic_user;
    char *pass = NULL;
    char *user = MHD_basic_auth_get_username_password(r->conn, &pass);
    if (pass)
        MHD_free(pass);
    if (!user)
        return NULL;
    r->basic_user = sl_strdup(user);
    MHD_free(user);
    return r->basic_user;
}

long long sl_http_req_start_ms(const sl_http_req_t *req)
{
    return req->start_ms;
}

size_t sl_http_req_wire_size(const sl_http_req_t *req)
{
    return req->wire_size;
}

typedef struct hdr_iter {
    void (*fn)(const char *, const char *, void *);
    void *opaque;
} hdr_iter_t;

static enum MHD_Result on_header_value(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value)
{
    hdr_iter_t *it = cls;
    it->fn(key, value ? value : "", it->opaque);
    return MHD_YES;
}

void sl_http_req_headers_foreach(const sl_http_req_t *req,
                                 void (*fn)(const char *name, const char *value, void *opaque),
                                 void *opaque)
{
    hdr_iter_t it = {fn, opaque};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, on_header_value, &it);
}

void sl_http_req_query_foreach(const sl_http_req_t *req,
                               void (*fn)(const char *name, const char *value, void *opaque),
                               void *opaque)
{
    hdr_iter_t it = {fn, opaque};
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, on_header_value, &it);
}

void sl_http_req_add_header(sl_http_req_t *req, const char *name, const char *value)
{
    req->hdrs = sl_realloc(req->hdrs, (req->nhdrs + 1) * 2 * sizeof(char *));
    req->hdrs[req->nhdrs * 2] = sl_strdup(name);
    req->hdrs[req->nhdrs * 2 + 1] = sl_strdup(value);
    req->nhdrs++;
}

void sl_http_respond(sl_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (content_type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (req->srv->cors) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin",
                                req->origin ? req->origin : "*");
        if (req->origin) {
            MHD_add_response_header(resp, "Access-Control-Allow-Credentials", "true");
            MHD_add_response_header(resp, "Vary", "Origin");
        }
    }
    for (size_t i = 0; i < req->nhdrs; i++)
        MHD_add_response_header(resp, req->hdrs[i * 2], req->hdrs[i * 2 + 1]);
    pthread_mutex_lock(&req->lock);
    req->resp = resp;
    req->status = (unsigned)status;
    bool resume = req->state == REQ_SUSPENDED;
    if (resume) {
        req->resumed = true;
        atomic_fetch_add(&req->srv->resumed, 1);
        MHD_resume_connection(req->conn);
    }
    pthread_mutex_unlock(&req->lock);
}

void sl_http_respond_error(sl_http_req_t *req, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_puts(&b, "{\"error\":");
    sl_buf_json_str(&b, msg, strlen(msg));
    sl_buf_puts(&b, "}");
    sl_http_respond(req, status, "application/json", b.data, b.len);
    sl_buf_free(&b);
}
