/*
 * Unit tests for common/http.c (with common/health.c and common/metrics.c): a server on a free
 * port driven with libcurl: routing, limits, gzip bodies, Basic auth, answers from another
 * thread, and the built-in /health, /metrics and /version.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common/buf.h"
#include "common/health.h"
#include "common/http.h"
#include "common/metrics.h"

static sl_http_server_t *srv;
static char base[64];

static sl_http_result_t echo(sl_http_req_t *req, void *opaque)
{
    size_t len;
    const char *body = sl_http_req_body(req, &len);
    const char *user = sl_http_req_basic_user(req);
    const char *q = sl_http_req_query(req, "q");
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_printf(&b, "%s|%s|%s|%zu|%s", sl_http_req_method(req), user ? user : "-", q ? q : "-",
                  len, body);
    sl_http_respond(req, 200, "text/plain", b.data, b.len);
    sl_buf_free(&b);
    return SL_HTTP_DONE;
}

static void *answer_later(void *arg)
{
    usleep(20000);
    sl_http_respond(arg, 202, "text/plain", "later", 5);
    return NULL;
}

static sl_http_result_t async(sl_http_req_t *req, void *opaque)
{
    pthread_t t;
    if (sl_http_req_query(req, "now")) { /* answered before the handler returns */
        sl_http_respond(req, 202, "text/plain", "now", 3);
        return SL_HTTP_ASYNC;
    }
    pthread_create(&t, NULL, answer_later, req);
    pthread_detach(t);
    return SL_HTTP_ASYNC;
}

static size_t collect(char *p, size_t s, size_t n, void *opaque)
{
    sl_buf_append(opaque, p, s * n);
    return s * n;
}

static long request(const char *method, const char *path, const char *body, size_t len,
                    const char *hdr, const char *userpwd, sl_buf_t *out)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof(url), "%s%s", base, path);
    struct curl_slist *h = hdr ? curl_slist_append(NULL, hdr) : NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (h)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (userpwd)
        curl_easy_setopt(c, CURLOPT_USERPWD, userpwd);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    long status = 0;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static int setup(void **state)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    sl_http_opts_t opts = {
        .component = "test", .host = "127.0.0.1", .port = 0, .threads = 2, .max_body = 1000};
    srv = sl_http_server_new(&opts);
    sl_http_route(srv, "POST", "/echo", echo, NULL);
    sl_http_route(srv, NULL, "/async/*", async, NULL);
    char err[256];
    if (sl_http_server_start(srv, err, sizeof(err)) != 0)
        return -1;
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", sl_http_server_port(srv));
    return 0;
}

static int teardown(void **state)
{
    sl_http_server_destroy(srv);
    curl_global_cleanup();
    return 0;
}

static void test_routes_and_errors(void **state)
{
    sl_buf_t b = SL_BUF_INIT;
    assert_int_equal(request("POST", "/echo?q=x", "hi", 2, NULL, "key1:", &b), 200);
    assert_string_equal(b.data, "POST|key1|x|2|hi");
    sl_buf_reset(&b);
    assert_int_equal(request("GET", "/echo", NULL, 0, NULL, NULL, &b), 405);
    assert_non_null(strstr(b.data, "\"error\""));
    sl_buf_reset(&b);
    assert_int_equal(request("GET", "/nope", NULL, 0, NULL, NULL, &b), 404);
    assert_non_null(strstr(b.data, "no such endpoint"));
    sl_buf_reset(&b);
    char big[1500];
    memset(big, 'x', sizeof(big));
    assert_int_equal(request("POST", "/echo", big, sizeof(big), NULL, NULL, &b), 413);
    sl_buf_reset(&b);
    /* Chunked, no Content-Length: the limit still holds. */
    assert_int_equal(
        request("POST", "/echo", big, sizeof(big), "Transfer-Encoding: chunked", NULL, &b), 413);
    sl_buf_free(&b);
}

static size_t gzip(const char *in, size_t len, unsigned char *out, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    deflate(&z, Z_FINISH);
    size_t n = z.total_out;
    deflateEnd(&z);
    return n;
}

static void test_gzip(void **state)
{
    sl_buf_t b = SL_BUF_INIT;
    unsigned char gz[4096];
    size_t n = gzip("hello gzip", 10, gz, sizeof(gz));
    assert_int_equal(request("POST", "/echo", (char *)gz, n, "Content-Encoding: gzip", NULL, &b),
                     200);
    assert_string_equal(b.data, "POST|-|-|10|hello gzip");
    sl_buf_reset(&b);
    /* 100 KB of zeros compress to a few hundred bytes but are over the 1000-byte limit. */
    char *zeros = calloc(1, 100000);
    n = gzip(zeros, 100000, gz, sizeof(gz));
    free(zeros);
    assert_true(n < 1000);
    assert_int_equal(request("POST", "/echo", (char *)gz, n, "Content-Encoding: gzip", NULL, &b),
                     413);
    sl_buf_reset(&b);
    assert_int_equal(request("POST", "/echo", "not gzip", 8, "Content-Encoding: gzip", NULL, &b),
                     400);
    sl_buf_free(&b);
}

static void test_async(void **state)
{
    for (int i = 0; i < 50; i++) {
        sl_buf_t b = SL_BUF_INIT;
        assert_int_equal(
            request("GET", i % 2 ? "/async/x?now=1" : "/async/x", NULL, 0, NULL, NULL, &b), 202);
        assert_string_equal(b.data, i % 2 ? "now" : "later");
        sl_buf_free(&b);
    }
}

static void test_builtin_routes(void **state)
{
    sl_buf_t b = SL_BUF_INIT;
    assert_int_equal(request("GET", "/health", NULL, 0, NULL, NULL, &b), 200);
    sl_buf_reset(&b);
    sl_health_set("thing", false, "thing is down: start it");
    assert_int_equal(request("GET", "/health", NULL, 0, NULL, NULL, &b), 503);
    assert_non_null(strstr(b.data, "thing is down: start it"));
    sl_health_set("thing", true, NULL);
    sl_buf_reset(&b);
    sl_metric_t *m = sl_metrics_counter("test_requests_total", "Requests", "path", "/x\"y", NULL);
    sl_metrics_add(m, 3);
    sl_metric_t *h = sl_metrics_histogram("test_seconds", "Latency", NULL, 0, NULL);
    sl_metrics_observe(h, 0.003);
    assert_int_equal(request("GET", "/metrics", NULL, 0, NULL, NULL, &b), 200);
    assert_non_null(strstr(b.data, "# TYPE test_requests_total counter\n"));
    assert_non_null(strstr(b.data, "test_requests_total{path=\"/x\\\"y\"} 3\n"));
    assert_non_null(strstr(b.data, "test_seconds_bucket{le=\"0.005\"} 1\n"));
    assert_non_null(strstr(b.data, "test_seconds_bucket{le=\"0.0025\"} 0\n"));
    assert_non_null(strstr(b.data, "test_seconds_count 1\n"));
    sl_buf_reset(&b);
    assert_int_equal(request("GET", "/version", NULL, 0, NULL, NULL, &b), 200);
    assert_non_null(strstr(b.data, "\"version\""));
    sl_buf_free(&b);
}

/* A second server on a port in use fails to start, naming the port, instead of sharing it. */
static void test_port_in_use(void **state)
{
    sl_http_opts_t opts = {.component = "test2",
                           .host = "127.0.0.1",
                           .port = sl_http_server_port(srv),
                           .threads = 1,
                           .max_body = 1000};
    sl_http_server_t *other = sl_http_server_new(&opts);
    char err[256] = "";
    assert_int_not_equal(sl_http_server_start(other, err, sizeof(err)), 0);
    char port[16];
    snprintf(port, sizeof(port), ":%d", opts.port);
    assert_non_null(strstr(err, port));
    assert_non_null(strstr(err, "in use"));
    sl_http_server_destroy(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_and_errors),
        cmocka_unit_test(test_gzip),
        cmocka_unit_test(test_async),
        cmocka_unit_test(test_builtin_routes),
        cmocka_unit_test(test_port_in_use),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
