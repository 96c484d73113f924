/*
 * Unit tests of processor/desttx.c and the definitions in schemas/destinations/: every
 * message type of every destination checked field by field against the documented request
 * format, filtering, config and event failures, the loader's errors, and WEBHOOK's speed.
 * KAFKA, a streaming destination, makes {method KAFKA, url kafka://<topic>} jobs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/err.h"
#include "processor/desttx.h"

#define TS_MS 1795600800123LL /* 2026-11-25T10:00:00.123Z */

static pr_desttx_t *tx;

/* A realistic event as the gateway stores it; type and the type-specific fields vary. */
static const char *const base_context =
    "\"context\":{\"ip\":\"203.0.113.9\",\"library\":{\"name\":\"analytics-node\","
    "\"version\":\"3.0.13\"},\"os\":{\"name\":\"iOS\",\"version\":\"17.1\"},\"device\":{"
    "\"manufacturer\":\"Apple\",\"model\":\"iPhone15,2\",\"type\":\"ios\",\"advertisingId\":"
    "\"idfa-0001\",\"brand\":\"Apple\"},\"app\":{\"version\":\"2.4.1\",\"build\":\"241\"},"
    "\"locale\":\"en-US\",\"page\":{\"url\":\"https://shop.example.com/checkout\",\"referrer\":"
    "\"https://www.google.com/\",\"title\":\"Checkout\",\"initialReferrer\":\"https://ads.example/"
    "\"},"
    "\"userAgent\":\"Mozilla/5.0 (iPhone)\",\"campaign\":{\"source\":\"newsletter\",\"medium\":"
    "\"email\",\"name\":\"summer\",\"term\":\"mugs\",\"content\":\"banner\"},\"network\":{"
    "\"carrier\":\"T-Mobile\"},\"location\":{\"country\":\"US\",\"city\":\"Portland\",\"region\":"
    "\"OR\",\"latitude\":45.52,\"longitude\":-122.68},\"screen\":{\"width\":1170,\"height\":2532},"
    "\"traits\":{\"email\":\"ada@example.com\",\"plan\":\"pro\"},\"sessionId\":1795600000}";

static json_object *make_event(const char *type_fields)
{
    char *text;
    int n = asprintf(&text,
                     "{%s,\"userId\":\"user-20391\",\"anonymousId\":\"anon-7f3c9a12\","
                     "\"messageId\":\"9f2c4b1e-1111-4a5b-8c9d-0123456789ab\","
                     "\"rudderId\":\"rid-5e6f\",\"timestamp\":\"2026-11-25T10:00:00.123Z\","
                     "\"originalTimestamp\":\"2026-11-25T09:59:59.000Z\","
                     "\"sentAt\":\"2026-11-25T10:00:00.500Z\","
                     "\"receivedAt\":\"2026-11-25T10:00:01.000Z\",\"request_ip\":\"198.51.100.7\","
                     "\"integrations\":{\"All\":true},%s}",
                     type_fields, base_context);
    assert_true(n > 0);
    json_object *ev = json_tokener_parse(text);
    assert_non_null(ev);
    free(text);
    return ev;
}

static const char *const track_order =
    "\"type\":\"track\",\"event\":\"Order Completed\",\"properties\":{\"order_id\":\"ord-88231\","
    "\"revenue\":49.99,\"currency\":\"USD\",\"coupon\":\"SUMMER\",\"products\":[{\"product_id\":"
    "\"p-1\",\"sku\":\"SKU-1\",\"name\":\"Mug\",\"price\":19.99,\"quantity\":2,\"category\":"
    "\"Kitchen\",\"brand\":\"Acme\",\"position\":1},{\"product_id\":\"p-2\",\"name\":\"Shirt\","
    "\"price\":10.01,\"quantity\":1}]}";

typedef struct dest {
    sl_destination_t d;
} dest_t;

static sl_destination_t *make_dest(const char *def_name, const char *config)
{
    sl_destination_t *d = calloc(1, sizeof(*d));
    d->id = "dst-1";
    d->name = "test destination";
    d->enabled = true;
    d->def_name = def_name;
    d->def_display_name = def_name;
    d->config = json_tokener_parse(config);
    assert_non_null(d->config);
    d->def_config = json_object_new_object();
    return d;
}

static void free_dest(sl_destination_t *d)
{
    json_object_put(d->config);
    json_object_put(d->def_config);
    free(d);
}

/* The value at a dotted path ("events.0.time"), or NULL. */
static json_object *at(json_object *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *save = NULL, *seg = strtok_r(buf, ".", &save); seg && o;
         seg = strtok_r(NULL, ".", &save)) {
        json_object *next = NULL;
        if (json_object_is_type(o, json_type_array))
            next = json_object_array_get_idx(o, (size_t)atoi(seg));
        else if (!json_object_object_get_ex(o, seg, &next))
            next = NULL;
        o = next;
    }
    return o;
}

#define expect_str(o, path, want)                                                                  \
    do {                                                                                           \
        json_object *v_ = at((o), (path));                                                         \
        if (!v_ || !json_object_is_type(v_, json_type_string))                                     \
            fail_msg("%s: want string \"%s\", got %s", (path), (want),                             \
                     v_ ? json_object_to_json_string(v_) : "nothing");                             \
        assert_string_equal(json_object_get_string(v_), (want));                                   \
    } while (0)

#define expect_int(o, path, want)                                                                  \
    do {                                                                                           \
        json_object *v_ = at((o), (path));                                                         \
        if (!v_ || !json_object_is_type(v_, json_type_int))                                        \
            fail_msg("%s: want integer %lld, got %s", (path), (long long)(want),                   \
                     v_ ? json_object_to_json_string(v_) : "nothing");                             \
        assert_int_equal(json_object_get_int64(v_), (want));                                       \
    } while (0)

#define expect_num(o, path, want)                                                                  \
    do {                                                                                           \
        json_object *v_ = at((o), (path));                                                         \
        if (!v_ || !(json_object_is_type(v_, json_type_double) ||                                  \
                     json_object_is_type(v_, json_type_int)))                                      \
            fail_msg("%s: want number %g, got %s", (path), (double)(want),                         \
                     v_ ? json_object_to_json_string(v_) : "nothing");                             \
        assert_true(json_object_get_double(v_) > (want)-1e-9 &&                                    \
                    json_object_get_double(v_) < (want) + 1e-9);                                   \
    } while (0)

#define expect_absent(o, path)                                                                     \
    do {                                                                                           \
        json_object *v_ = at((o), (path));                                                         \
        if (v_)                                                                                    \
            fail_msg("%s: want nothing, got %s", (path), json_object_to_json_string(v_));          \
    } while (0)

/* Transforms and expects success with nreqs requests. */
static void run_ok(sl_destination_t *d, json_object *ev, pr_desttx_out_t *out, size_t nreqs)
{
    int rc = pr_desttx_transform(tx, d, ev, out);
    if (rc != 0)
        fail_msg("transform failed (%d, status %d): %s", rc, out->status, out->reason);
    assert_int_equal(out->status, PR_DESTTX_OK);
    assert_int_equal(out->nreqs, nreqs);
}

static json_object *body_json(const pr_desttx_req_t *q)
{
    assert_non_null(q->body);
    assert_int_equal(strlen(q->body), q->body_len);
    json_object *b = json_tokener_parse(q->body);
    if (!b)
        fail_msg("body is not JSON: %s", q->body);
    return b;
}

static void expect_headers(const pr_desttx_req_t *q, const char *want)
{
    json_object *h = json_tokener_parse(q->headers), *w = json_tokener_parse(want);
    assert_non_null(h);
    assert_non_null(w);
    if (!json_object_equal(h, w))
        fail_msg("headers: want %s, got %s", want, q->headers);
    json_object_put(h);
    json_object_put(w);
}

/* The body rebuilt from the batch parts is the body itself. */
static void expect_batch_parts(const pr_desttx_req_t *q, size_t max_events, size_t max_bytes)
{
    assert_int_equal(q->max_events, max_events);
    assert_int_equal(q->max_bytes, max_bytes);
    assert_true(strlen(q->batch_key) > 0);
    size_t pl = strlen(q->batch_prefix), sl = strlen(q->batch_suffix);
    assert_true(q->body_len > pl + sl);
    assert_memory_equal(q->body, q->batch_prefix, pl);
    assert_memory_equal(q->body + q->body_len - sl, q->batch_suffix, sl);
}

static char *url_decode(const char *s, size_t n)
{
    char *o = malloc(n + 1), *p = o;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n + 0 + 1 && i + 2 <= n - 1) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            *p++ = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            *p++ = s[i] == '+' ? ' ' : s[i];
        }
    }
    *p = '\0';
    return o;
}

/* The value of form parameter name in body, decoded; caller frees. */
static char *form_param(const char *body, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = body; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=')
            return url_decode(p + nl + 1, len - nl - 1);
        p = amp ? amp + 1 : NULL;
    }
    fail_msg("form body has no %s: %s", name, body);
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    char err[512];
    if (pr_desttx_load(&tx, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pr_desttx_free(tx);
    return 0;
}

/* ---- the loader -------------------------------------------------------------------------- */

static void test_embedded_definitions(void **state)
{
    (void)state;
    const char *names[] = {"WEBHOOK", "AM", "MP", "GA4", "KAFKA"};
    for (size_t i = 0; i < 5; i++)
        assert_non_null(pr_desttx_find(tx, names[i]));
    assert_non_null(pr_desttx_find(tx, "am"));
    assert_null(pr_desttx_find(tx, "NOPE"));
    assert_string_equal(pr_desttx_def_display_name(pr_desttx_find(tx, "AM")), "Amplitude");
    json_object *types = pr_desttx_def_message_types(pr_desttx_find(tx, "GA4"));
    assert_int_equal(json_object_array_length(types), 3);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(types, 0)), "track");
}

static void expect_load_error(const char *text, const char *want)
{
    pr_desttx_src_t src = {"BROKEN.json", text};
    pr_desttx_t *bad = NULL;
    char err[512] = "";
    assert_int_equal(pr_desttx_load_sources(&src, 1, &bad, err, sizeof(err)), SL_ERR_INVALID);
    assert_null(bad);
    if (!strstr(err, want))
        fail_msg("want an error containing \"%s\", got \"%s\"", want, err);
    assert_non_null(strstr(err, "BROKEN.json"));
}

#define MIN_DEF(extra_top, track)                                                                  \
    "{\"name\":\"X\",\"supportedMessageTypes\":[\"track\"]" extra_top                              \
    ",\"messages\":{\"track\":" track "}}"

static void test_bad_definitions(void **state)
{
    (void)state;
    expect_load_error("{\"name\": \"X\",", "invalid JSON");
    expect_load_error("[1]", "a definition is a JSON object");
    expect_load_error("{\"supportedMessageTypes\":[\"track\"],\"messages\":{}}", "name: missing");
    expect_load_error("{\"name\":\"X\",\"messages\":{}}", "supportedMessageTypes: missing");
    expect_load_error("{\"name\":\"X\",\"supportedMessageTypes\":[\"tracks\"],\"messages\":{}}",
                      "supportedMessageTypes[0]: \"tracks\" is not a message type");
    expect_load_error("{\"name\":\"X\",\"supportedMessageTypes\":[\"track\"],\"messages\":{}}",
                      "messages.track: missing");
    expect_load_error(MIN_DEF("", "{\"element\":[]}"), "messages.track.url: missing");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\",\"format\":\"xml\",\"element\":[]}"),
                      "messages.track.format: \"xml\" is not one of json, form, event");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\"}"), "messages.track.element: missing");
    expect_load_error(MIN_DEF("",
                              "{\"url\":\"https://x\",\"element\":[{\"to\":\"a\",\"from\":\"b\","
                              "\"transform\":\"rot13\"}]}"),
                      "messages.track.element[0].transform: unknown transform \"rot13\"");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\",\"element\":[{\"to\":\"a\"}]}"),
                      "messages.track.element[0].from: missing");
    expect_load_error(
        MIN_DEF("", "{\"url\":\"https://x\",\"element\":[{\"to\":\"a\",\"from\":\"$secret.x\"}]}"),
        "messages.track.element[0].from: path \"$secret.x\" has an unknown root");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x/{{$config.a\",\"element\":[]}"),
                      "messages.track.url: template \"https://x/{{$config.a\" has an unclosed {{");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\",\"element\":[],\"hook\":\"nope\"}"),
                      "messages.track.hook: no hook named \"nope\"");
    expect_load_error(
        MIN_DEF(
            "",
            "{\"url\":\"https://x\",\"element\":[],\"envelope\":[{\"to\":\"a\",\"from\":\"b\"}]}"),
        "messages.track.envelope: needs exactly one entry from \"$elements\"");
    expect_load_error(
        MIN_DEF("", "{\"url\":\"https://x\",\"element\":[],\"batch\":{\"maxEvents\":10}}"),
        "messages.track.batch: needs an envelope");
    expect_load_error(MIN_DEF(",\"config\":{\"k\":{\"type\":\"text\"}}",
                              "{\"url\":\"https://x\",\"element\":[]}"),
                      "config.k.type: \"text\" is not one of");
    expect_load_error(MIN_DEF(",\"retryable\":[\"4x\"]", "{\"url\":\"https://x\",\"element\":[]}"),
                      "retryable[0]: \"4x\" is not an HTTP status");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\",\"element\":[{\"include\":\"common\"}]}"),
                      "messages.track.element[0]: no mapping named \"common\"");
    expect_load_error(MIN_DEF("", "{\"url\":\"https://x\",\"element\":[],\"colour\":1}"),
                      "messages.track: unknown field \"colour\"");
    expect_load_error(
        "{\"name\":\"X\",\"supportedMessageTypes\":[\"track\"],\"messages\":{\"track\":{\"url\":"
        "\"https://x\",\"element\":[]},\"page\":{\"url\":\"https://x\",\"element\":[]}}}",
        "messages.page: \"page\" is not in supportedMessageTypes");
    expect_load_error(
        MIN_DEF("", "{\"url\":\"https://x\",\"element\":[{\"to\":\"a\",\"from\":"
                    "{\"lookup\":\"$config.m\"}}]}"),
        "messages.track.element[0].from: \"lookup\" takes a path and needs a \"key\"");

    /* two files naming the same destination type */
    const char *ok = MIN_DEF("", "{\"url\":\"https://x\",\"element\":[]}");
    pr_desttx_src_t srcs[2] = {{"A.json", ok}, {"BROKEN.json", ok}};
    pr_desttx_t *bad = NULL;
    char err[512];
    assert_int_equal(pr_desttx_load_sources(srcs, 2, &bad, err, sizeof(err)), SL_ERR_INVALID);
    assert_non_null(strstr(err, "BROKEN.json: name: \"X\" is also defined by another file"));
}

/* ---- selection and failures -------------------------------------------------------------- */

static void test_supports(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("GA4", "{\"measurementId\":\"G-1\",\"apiSecret\":\"s\"}");
    assert_true(pr_desttx_supports(tx, d, "track"));
    assert_false(pr_desttx_supports(tx, d, "identify"));
    /* the workspace config's list wins over the definition's */
    json_object_object_add(d->def_config, "supportedMessageTypes",
                           json_tokener_parse("[\"identify\"]"));
    assert_true(pr_desttx_supports(tx, d, "identify"));
    assert_false(pr_desttx_supports(tx, d, "track"));
    free_dest(d);
    d = make_dest("UNKNOWN_TYPE", "{}");
    assert_true(pr_desttx_supports(tx, d, "track"));
    free_dest(d);
}

static void test_filtered_and_failed(void **state)
{
    (void)state;
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *identify = make_event("\"type\":\"identify\",\"traits\":{\"name\":\"Ada\"}");
    json_object *track = make_event(track_order);

    sl_destination_t *d = make_dest("GA4", "{\"measurementId\":\"G-1\",\"apiSecret\":\"s\"}");
    assert_int_equal(pr_desttx_transform(tx, d, identify, &out), SL_ERR_INVALID);
    assert_int_equal(out.status, PR_DESTTX_FILTERED);
    assert_int_equal(out.nreqs, 0);
    assert_string_equal(out.reason,
                        "message type \"identify\" is not supported by Google Analytics 4 (GA4)");
    free_dest(d);

    d = make_dest("AM", "{\"residencyServer\":\"EU\"}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_INVALID);
    assert_int_equal(out.status, PR_DESTTX_FAILED);
    assert_string_equal(out.reason, "destination config has no apiKey, which Amplitude requires");
    free_dest(d);

    d = make_dest("AM", "{\"apiKey\":\"k\",\"residencyServer\":\"Mars\"}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_INVALID);
    assert_int_equal(out.status, PR_DESTTX_FAILED);
    assert_string_equal(out.reason,
                        "destination config residencyServer is \"Mars\", expected one of "
                        "[\"standard\",\"EU\"]");
    free_dest(d);

    d = make_dest("WEBHOOK", "{\"webhookUrl\":\"\"}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason, "destination config has no webhookUrl, which Webhook requires");
    free_dest(d);

    d = make_dest("GA4", "{\"measurementId\":\"G-1\"}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason,
                        "destination config has no apiSecret, which Google Analytics 4 (GA4) "
                        "requires");
    free_dest(d);

    d = make_dest("GA4",
                  "{\"measurementId\":\"G-1\",\"apiSecret\":\"s\",\"typesOfClient\":\"firebase\"}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason,
                        "destination config typesOfClient is \"firebase\", expected one of "
                        "[\"gtag\"]");
    free_dest(d);

    /* the event misses a field the API requires */
    json_object *noname = make_event("\"type\":\"track\",\"properties\":{}");
    d = make_dest("AM", "{\"apiKey\":\"k\"}");
    assert_int_equal(pr_desttx_transform(tx, d, noname, &out), SL_ERR_INVALID);
    assert_int_equal(out.status, PR_DESTTX_FAILED);
    assert_string_equal(out.reason, "event has no event, which Amplitude needs");
    free_dest(d);

    json_object *alias = make_event("\"type\":\"alias\"");
    d = make_dest("AM", "{\"apiKey\":\"k\"}");
    assert_int_equal(pr_desttx_transform(tx, d, alias, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason, "event has no previousId, which Amplitude needs");
    free_dest(d);

    json_object *group = make_event("\"type\":\"group\",\"groupId\":\"g-1\",\"traits\":{}");
    d = make_dest("MP", "{\"token\":\"t\"}");
    assert_int_equal(pr_desttx_transform(tx, d, group, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason, "destination config has no groupKeySettings[0].groupKey, "
                                    "which Mixpanel group calls need");
    free_dest(d);

    json_object *reserved = make_event("\"type\":\"track\",\"event\":\"Session Start\"");
    d = make_dest("GA4", "{\"measurementId\":\"G-1\",\"apiSecret\":\"s\"}");
    assert_int_equal(pr_desttx_transform(tx, d, reserved, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason, "event name \"session_start\" is reserved by GA4");
    free_dest(d);

    d = make_dest("NOPE", "{}");
    assert_int_equal(pr_desttx_transform(tx, d, track, &out), SL_ERR_NOTFOUND);
    assert_int_equal(out.status, PR_DESTTX_FAILED);
    assert_string_equal(out.reason, "no destination definition for type \"NOPE\"");
    free_dest(d);

    json_object *untyped = json_tokener_parse("{\"userId\":\"u\"}");
    d = make_dest("AM", "{\"apiKey\":\"k\"}");
    assert_int_equal(pr_desttx_transform(tx, d, untyped, &out), SL_ERR_INVALID);
    assert_string_equal(out.reason, "event has no type");
    free_dest(d);

    json_object_put(untyped);
    json_object_put(reserved);
    json_object_put(group);
    json_object_put(alias);
    json_object_put(noname);
    json_object_put(identify);
    json_object_put(track);
    pr_desttx_out_free(&out);
}

static void test_retryable(void **state)
{
    (void)state;
    const pr_desttx_def_t *am = pr_desttx_find(tx, "AM");
    assert_true(pr_desttx_retryable(am, 429));
    assert_true(pr_desttx_retryable(am, 503));
    assert_true(pr_desttx_retryable(am, 408));
    assert_false(pr_desttx_retryable(am, 400));
    assert_false(pr_desttx_retryable(am, 413));
    const char *text =
        MIN_DEF(",\"retryable\":[429,\"5xx\",409]", "{\"url\":\"https://x\",\"element\":[]}");
    pr_desttx_src_t src = {"X.json", text};
    pr_desttx_t *t2;
    char err[256];
    assert_int_equal(pr_desttx_load_sources(&src, 1, &t2, err, sizeof(err)), 0);
    const pr_desttx_def_t *x = pr_desttx_find(t2, "X");
    assert_true(pr_desttx_retryable(x, 409));
    assert_true(pr_desttx_retryable(x, 500));
    assert_false(pr_desttx_retryable(x, 408));
    pr_desttx_free(t2);
}

/* Every message type, as make_event's type_fields. */
static const char *const every_type[] = {
    NULL, /* track_order */
    "\"type\":\"identify\",\"traits\":{\"name\":\"Ada\"}",
    "\"type\":\"page\",\"name\":\"Home\",\"properties\":{\"url\":\"https://x/\"}",
    "\"type\":\"screen\",\"name\":\"Settings\"",
    "\"type\":\"group\",\"groupId\":\"g-1\",\"traits\":{\"plan\":\"pro\"}",
    "\"type\":\"alias\",\"previousId\":\"anon-7f3c9a12\"",
};

/* For every message type: one unbatched request to method and url with exactly these
 * headers, whose body is the event itself (the caller's text, not a copy, when given). */
static void expect_event_as_body(sl_destination_t *d, const char *method, const char *url,
                                 const char *headers)
{
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    for (size_t i = 0; i < sizeof(every_type) / sizeof(every_type[0]); i++) {
        json_object *ev = make_event(every_type[i] ? every_type[i] : track_order);
        const char *text = json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN);
        size_t len = strlen(text);
        assert_int_equal(pr_desttx_transform_text(tx, d, ev, text, len, &out), 0);
        assert_int_equal(out.status, PR_DESTTX_OK);
        assert_int_equal(out.nreqs, 1);
        const pr_desttx_req_t *q = &out.reqs[0];
        assert_string_equal(q->method, method);
        assert_string_equal(q->url, url);
        expect_headers(q, headers);
        assert_ptr_equal(q->body, text);
        assert_int_equal(q->body_len, len);
        assert_int_equal(q->max_events, 1);
        assert_string_equal(q->batch_key, "");
        /* without the text the body is the event, serialised */
        assert_int_equal(pr_desttx_transform(tx, d, ev, &out), 0);
        json_object *b = body_json(&out.reqs[0]);
        assert_true(json_object_equal(b, ev));
        json_object_put(b);
        json_object_put(ev);
    }
    pr_desttx_out_free(&out);
}

/* ---- WEBHOOK ----------------------------------------------------------------------------- */

static void test_webhook(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest(
        "WEBHOOK",
        "{\"webhookUrl\":\"https://hooks.example.com/in?x=1\",\"webhookMethod\":\"put\","
        "\"headers\":[{\"from\":\"X-Api-Key\",\"to\":\"secret\"},{\"from\":\"\",\"to\":\"y\"},"
        "{\"from\":\"X-Team\",\"to\":\"growth\"}]}");
    expect_event_as_body(d, "PUT", "https://hooks.example.com/in?x=1",
                         "{\"Content-Type\":\"application/json\",\"X-Api-Key\":\"secret\","
                         "\"X-Team\":\"growth\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    free_dest(d);

    /* default method POST; GET and DELETE carry no body */
    json_object *ev = make_event(track_order);
    d = make_dest("WEBHOOK", "{\"webhookUrl\":\"https://h.example/\"}");
    assert_int_equal(pr_desttx_transform(tx, d, ev, &out), 0);
    assert_string_equal(out.reqs[0].method, "POST");
    expect_headers(&out.reqs[0], "{\"Content-Type\":\"application/json\"}");
    free_dest(d);
    d = make_dest("WEBHOOK", "{\"webhookUrl\":\"https://h.example/\",\"webhookMethod\":\"GET\"}");
    assert_int_equal(pr_desttx_transform_text(tx, d, ev, "{}", 2, &out), 0);
    assert_string_equal(out.reqs[0].method, "GET");
    assert_null(out.reqs[0].body);
    free_dest(d);
    d = make_dest("WEBHOOK", "{\"webhookUrl\":\"https://h.example/\",\"webhookMethod\":\"TRACE\"}");
    assert_int_equal(pr_desttx_transform(tx, d, ev, &out), SL_ERR_INVALID);
    assert_non_null(strstr(out.reason, "webhookMethod is \"TRACE\""));
    free_dest(d);

    /* the job's request object */
    d = make_dest("WEBHOOK", "{\"webhookUrl\":\"https://h.example/\",\"headers\":[{\"from\":"
                             "\"A\",\"to\":\"b\"}]}");
    assert_int_equal(pr_desttx_transform_text(tx, d, ev, "{\"a\":\"\\\"\"}", 10, &out), 0);
    sl_buf_t job = SL_BUF_INIT;
    pr_desttx_write_request(&out.reqs[0], &job);
    assert_string_equal(job.data, "{\"method\":\"POST\",\"url\":\"https://h.example/\",\"headers\":"
                                  "{\"Content-Type\":\"application/json\",\"A\":\"b\"},\"body\":"
                                  "{\"a\":\"\\\"\"}}");
    sl_buf_free(&job);
    free_dest(d);
    json_object_put(ev);
    pr_desttx_out_free(&out);
}

static void test_webhook_speed(void **state)
{
    (void)state;
    json_object *ev = make_event(track_order);
    const char *text = json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN);
    sl_destination_t *d = make_dest(
        "WEBHOOK", "{\"webhookUrl\":\"https://hooks.example.com/in\",\"headers\":[{\"from\":"
                   "\"X-Api-Key\",\"to\":\"secret\"}]}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    sl_buf_t job = SL_BUF_INIT;
    const int n = 20000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(pr_desttx_transform_text(tx, d, ev, text, strlen(text), &out), 0);
        sl_buf_reset(&job);
        pr_desttx_write_request(&out.reqs[0], &job);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("# WEBHOOK: %.0f transforms + job writes per second (%zu-byte event)\n", n / s,
           strlen(text));
    /* A figure, not a verdict: speed targets live in tests/bench (tests/bench/processor). */
    sl_buf_free(&job);
    pr_desttx_out_free(&out);
    free_dest(d);
    json_object_put(ev);
}

/* ---- Amplitude --------------------------------------------------------------------------- */

/* The fields every Amplitude event carries, from the common event. */
static void expect_am_common(json_object *e)
{
    expect_str(e, "user_id", "user-20391");
    expect_str(e, "device_id", "anon-7f3c9a12");
    expect_int(e, "time", TS_MS);
    expect_str(e, "insert_id", "9f2c4b1e-1111-4a5b-8c9d-0123456789ab");
    expect_int(e, "session_id", 1795600000);
    expect_str(e, "ip", "203.0.113.9");
    expect_str(e, "platform", "ios");
    expect_str(e, "os_name", "iOS");
    expect_str(e, "os_version", "17.1");
    expect_str(e, "device_brand", "Apple");
    expect_str(e, "device_manufacturer", "Apple");
    expect_str(e, "device_model", "iPhone15,2");
    expect_str(e, "carrier", "T-Mobile");
    expect_str(e, "country", "US");
    expect_str(e, "region", "OR");
    expect_str(e, "city", "Portland");
    expect_num(e, "location_lat", 45.52);
    expect_num(e, "location_lng", -122.68);
    expect_str(e, "language", "en-US");
    expect_str(e, "app_version", "2.4.1");
    expect_str(e, "idfa", "idfa-0001");
    expect_absent(e, "adid");
    expect_str(e, "library", "analytics-node/3.0.13");
}

/* POST {base}/2/httpapi, JSON {api_key, events:[one event]}, batchable; returns events[0]. */
static json_object *expect_am_httpapi(const pr_desttx_req_t *q, const char *base,
                                      json_object **body)
{
    assert_string_equal(q->method, "POST");
    char url[128];
    snprintf(url, sizeof(url), "%s/2/httpapi", base);
    assert_string_equal(q->url, url);
    expect_headers(q, "{\"Content-Type\":\"application/json\"}");
    *body = body_json(q);
    assert_int_equal(json_object_object_length(*body), 2);
    expect_str(*body, "api_key", "am-key-1");
    json_object *events = at(*body, "events");
    assert_true(json_object_is_type(events, json_type_array));
    assert_int_equal(json_object_array_length(events), 1);
    expect_batch_parts(q, 2000, 1000000);
    assert_string_equal(q->batch_prefix, "{\"api_key\":\"am-key-1\",\"events\":[");
    assert_string_equal(q->batch_sep, ",");
    assert_string_equal(q->batch_suffix, "]}");
    return json_object_array_get_idx(events, 0);
}

static void test_amplitude_track(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("AM", "{\"apiKey\":\"am-key-1\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *ev = make_event(track_order), *body;
    run_ok(d, ev, &out, 1);
    json_object *e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_am_common(e);
    expect_str(e, "event_type", "Order Completed");
    expect_str(e, "event_properties.order_id", "ord-88231");
    expect_str(e, "event_properties.products.1.name", "Shirt");
    expect_str(e, "user_properties.email", "ada@example.com");
    expect_str(e, "user_properties.plan", "pro");
    /* revenue fields at the top level */
    expect_num(e, "revenue", 49.99);
    expect_num(e, "price", 49.99);
    expect_int(e, "quantity", 1);
    expect_absent(e, "productId");
    expect_absent(e, "revenueType");
    /* the number keeps its text */
    assert_non_null(strstr(out.reqs[0].body, "\"revenue\":49.99,"));
    json_object_put(body);

    /* same api_key and user: same batch key; another key: another batch */
    char key1[64];
    snprintf(key1, sizeof(key1), "%s", out.reqs[0].batch_key);
    json_object *ev2 = make_event("\"type\":\"track\",\"event\":\"Signed Up\","
                                  "\"properties\":{\"plan\":\"pro\",\"revenue\":\"12.5\","
                                  "\"quantity\":\"3\",\"price\":4,\"productId\":\"p-9\","
                                  "\"revenueType\":\"subscription\"}");
    run_ok(d, ev2, &out, 1);
    assert_string_equal(out.reqs[0].batch_key, key1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_str(e, "event_type", "Signed Up");
    expect_num(e, "revenue", 12.5);
    expect_num(e, "price", 4);
    expect_int(e, "quantity", 3);
    expect_str(e, "productId", "p-9");
    expect_str(e, "revenueType", "subscription");
    json_object_put(body);
    free_dest(d);

    /* EU residency, and an event without revenue, anonymousId or context */
    d = make_dest("AM", "{\"apiKey\":\"am-key-1\",\"residencyServer\":\"EU\"}");
    json_object *bare = json_tokener_parse(
        "{\"type\":\"track\",\"event\":\"Clicked\",\"userId\":\"u-12345\",\"messageId\":\"m-1\","
        "\"originalTimestamp\":\"2026-11-25T10:00:00.123Z\"}");
    run_ok(d, bare, &out, 1);
    assert_string_not_equal(out.reqs[0].batch_key, key1);
    e = expect_am_httpapi(&out.reqs[0], "https://api.eu.amplitude.com", &body);
    expect_str(e, "user_id", "u-12345");
    expect_absent(e, "device_id");
    expect_int(e, "time", TS_MS);
    expect_int(e, "session_id", -1);
    expect_str(e, "library", "sluice");
    expect_absent(e, "revenue");
    expect_absent(e, "price");
    expect_absent(e, "quantity");
    expect_absent(e, "event_properties");
    expect_absent(e, "user_properties");
    expect_absent(e, "ip");
    json_object_put(body);
    json_object_put(bare);
    json_object_put(ev2);
    json_object_put(ev);
    free_dest(d);
    pr_desttx_out_free(&out);
}

static void test_amplitude_page_screen_identify(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("AM", "{\"apiKey\":\"am-key-1\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *e;

    json_object *page = make_event("\"type\":\"page\",\"name\":\"Pricing\",\"category\":\"Docs\","
                                   "\"properties\":{\"url\":\"https://x.example/pricing\","
                                   "\"title\":\"Pricing\"}");
    run_ok(d, page, &out, 1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_am_common(e);
    expect_str(e, "event_type", "Viewed Pricing Page");
    expect_str(e, "event_properties.url", "https://x.example/pricing");
    expect_str(e, "event_properties.title", "Pricing");
    expect_str(e, "event_properties.name", "Pricing");
    expect_str(e, "event_properties.category", "Docs");
    expect_str(e, "user_properties.plan", "pro");
    json_object_put(body);
    json_object_put(page);

    page = make_event("\"type\":\"page\"");
    run_ok(d, page, &out, 1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_str(e, "event_type", "Loaded a Page");
    json_object_put(body);
    json_object_put(page);

    json_object *screen = make_event(
        "\"type\":\"screen\",\"name\":\"Settings\",\"properties\":{\"tab\":\"billing\"}");
    run_ok(d, screen, &out, 1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_am_common(e);
    expect_str(e, "event_type", "Viewed Settings Screen");
    expect_str(e, "event_properties.tab", "billing");
    expect_str(e, "event_properties.name", "Settings");
    json_object_put(body);
    json_object_put(screen);

    json_object *identify = make_event(
        "\"type\":\"identify\",\"traits\":{\"name\":\"Ada Lovelace\",\"plan\":\"enterprise\","
        "\"logins\":7}");
    run_ok(d, identify, &out, 1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_am_common(e);
    expect_str(e, "event_type", "$identify");
    expect_str(e, "user_properties.name", "Ada Lovelace");
    expect_str(e, "user_properties.plan", "enterprise"); /* traits win over context.traits */
    expect_str(e, "user_properties.email", "ada@example.com");
    expect_int(e, "user_properties.logins", 7);
    expect_absent(e, "event_properties");
    json_object_put(body);
    json_object_put(identify);
    free_dest(d);
    pr_desttx_out_free(&out);
}

static void test_amplitude_group_alias(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("AM", "{\"apiKey\":\"am-key-1\",\"groupTypeTrait\":\"kind\","
                                          "\"groupValueTrait\":\"company\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *e;
    json_object *group =
        make_event("\"type\":\"group\",\"groupId\":\"g-42\",\"traits\":{\"kind\":\"company\","
                   "\"company\":\"Acme Inc\",\"employees\":500}");
    run_ok(d, group, &out, 2);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_am_common(e);
    expect_str(e, "event_type", "$identify");
    expect_str(e, "groups.company", "Acme Inc");
    expect_str(e, "user_properties.company", "Acme Inc");
    json_object_put(body);

    /* Group Identify API: form api_key + identification=[{group_type, group_value, ...}] */
    const pr_desttx_req_t *q = &out.reqs[1];
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->url, "https://api2.amplitude.com/groupidentify");
    expect_headers(q, "{\"Content-Type\":\"application/x-www-form-urlencoded\"}");
    assert_int_equal(q->max_events, 1);
    char *key = form_param(q->body, "api_key");
    assert_string_equal(key, "am-key-1");
    free(key);
    /* the job carries a form body as a string, a JSON body (reqs[0]) as JSON */
    assert_false(q->body_json);
    assert_true(out.reqs[0].body_json);
    sl_buf_t job = SL_BUF_INIT;
    pr_desttx_write_request(q, &job);
    assert_non_null(strstr(job.data, ",\"body\":\"api_key=am-key-1&"));
    sl_buf_reset(&job);
    pr_desttx_write_request(&out.reqs[0], &job);
    assert_non_null(strstr(job.data, ",\"body\":{\""));
    sl_buf_free(&job);
    char *ident = form_param(q->body, "identification");
    json_object *id = json_tokener_parse(ident);
    assert_non_null(id);
    assert_int_equal(json_object_array_length(id), 1);
    expect_str(id, "0.group_type", "company");
    expect_str(id, "0.group_value", "Acme Inc");
    expect_int(id, "0.group_properties.employees", 500);
    json_object_put(id);
    free(ident);
    json_object_put(group);

    /* without the configured traits: groups fall back to nothing, one request */
    free_dest(d);
    d = make_dest("AM", "{\"apiKey\":\"am-key-1\"}");
    group = make_event("\"type\":\"group\",\"groupId\":\"g-42\",\"traits\":{\"x\":1}");
    run_ok(d, group, &out, 1);
    e = expect_am_httpapi(&out.reqs[0], "https://api2.amplitude.com", &body);
    expect_absent(e, "groups");
    json_object_put(body);
    json_object_put(group);

    /* alias: User Mapping API, form api_key + mapping=[{user_id, global_user_id}] */
    json_object *alias = make_event("\"type\":\"alias\",\"previousId\":\"anon-7f3c9a12\"");
    run_ok(d, alias, &out, 1);
    q = &out.reqs[0];
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->url, "https://api.amplitude.com/usermap");
    expect_headers(q, "{\"Content-Type\":\"application/x-www-form-urlencoded\"}");
    assert_true(strncmp(q->body, "api_key=am-key-1&mapping=", 25) == 0);
    char *mapping = form_param(q->body, "mapping");
    json_object *m = json_tokener_parse(mapping);
    assert_non_null(m);
    assert_int_equal(json_object_array_length(m), 1);
    assert_int_equal(json_object_object_length(json_object_array_get_idx(m, 0)), 2);
    expect_str(m, "0.user_id", "anon-7f3c9a12");
    expect_str(m, "0.global_user_id", "user-20391");
    json_object_put(m);
    free(mapping);
    free_dest(d);
    d = make_dest("AM", "{\"apiKey\":\"am key&1\",\"residencyServer\":\"EU\"}");
    run_ok(d, alias, &out, 1);
    assert_string_equal(out.reqs[0].url, "https://api.eu.amplitude.com/usermap");
    assert_true(strncmp(out.reqs[0].body, "api_key=am%20key%261&mapping=", 29) == 0);
    json_object_put(alias);
    free_dest(d);
    pr_desttx_out_free(&out);
}

/* ---- Mixpanel ---------------------------------------------------------------------------- */

static void expect_mp_event_common(json_object *p)
{
    expect_str(p, "token", "mp-token-1");
    expect_str(p, "distinct_id", "user-20391");
    expect_str(p, "$user_id", "user-20391");
    expect_str(p, "$device_id", "anon-7f3c9a12");
    expect_int(p, "time", TS_MS);
    expect_str(p, "$insert_id", "9f2c4b1e-1111-4a5b-8c9d-0123456789ab");
    expect_str(p, "ip", "203.0.113.9");
    expect_str(p, "$current_url", "https://shop.example.com/checkout");
    expect_str(p, "$referrer", "https://www.google.com/");
    expect_str(p, "$initial_referrer", "https://ads.example/");
    expect_str(p, "$os", "iOS");
    expect_str(p, "$os_version", "17.1");
    expect_int(p, "$screen_height", 2532);
    expect_int(p, "$screen_width", 1170);
    expect_str(p, "$carrier", "T-Mobile");
    expect_str(p, "$manufacturer", "Apple");
    expect_str(p, "$model", "iPhone15,2");
    expect_str(p, "$app_version_string", "2.4.1");
    expect_str(p, "$app_build_number", "241");
    expect_str(p, "mp_lib", "analytics-node");
    expect_str(p, "$lib_version", "3.0.13");
    expect_str(p, "utm_source", "newsletter");
    expect_str(p, "utm_medium", "email");
    expect_str(p, "utm_campaign", "summer");
    expect_str(p, "utm_term", "mugs");
    expect_str(p, "utm_content", "banner");
}

/* A JSON array of one record to url, batchable by 2000; returns the record. */
static json_object *expect_mp_array(const pr_desttx_req_t *q, const char *url, const char *headers,
                                    json_object **body)
{
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->url, url);
    expect_headers(q, headers);
    *body = body_json(q);
    assert_true(json_object_is_type(*body, json_type_array));
    assert_int_equal(json_object_array_length(*body), 1);
    expect_batch_parts(q, 2000, 2000000);
    assert_string_equal(q->batch_prefix, "[");
    assert_string_equal(q->batch_suffix, "]");
    return json_object_array_get_idx(*body, 0);
}

static void test_mixpanel_events(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("MP", "{\"token\":\"mp-token-1\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *r;
    const char *json_ct = "{\"Content-Type\":\"application/json\"}";

    json_object *track = make_event(track_order);
    run_ok(d, track, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/track", json_ct, &body);
    assert_int_equal(json_object_object_length(r), 2);
    expect_str(r, "event", "Order Completed");
    expect_mp_event_common(at(r, "properties"));
    expect_str(r, "properties.order_id", "ord-88231");
    expect_num(r, "properties.revenue", 49.99);
    expect_str(r, "properties.products.0.sku", "SKU-1");
    json_object_put(body);

    json_object *page = make_event("\"type\":\"page\",\"name\":\"Pricing\",\"category\":\"Docs\","
                                   "\"properties\":{\"path\":\"/pricing\"}");
    run_ok(d, page, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/track", json_ct, &body);
    expect_str(r, "event", "Loaded a Page");
    expect_mp_event_common(at(r, "properties"));
    expect_str(r, "properties.path", "/pricing");
    expect_str(r, "properties.name", "Pricing");
    expect_str(r, "properties.category", "Docs");
    json_object_put(body);

    json_object *screen = make_event("\"type\":\"screen\",\"name\":\"Settings\"");
    run_ok(d, screen, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/track", json_ct, &body);
    expect_str(r, "event", "Loaded a Screen");
    expect_mp_event_common(at(r, "properties"));
    expect_str(r, "properties.name", "Settings");
    json_object_put(body);
    free_dest(d);

    /* with apiSecret: /import with Basic auth; EU residency */
    d = make_dest("MP", "{\"token\":\"mp-token-1\",\"apiSecret\":\"mp-secret-123\","
                        "\"dataResidency\":\"eu\"}");
    run_ok(d, track, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api-eu.mixpanel.com/import?strict=1",
                        "{\"Content-Type\":\"application/json\",\"Authorization\":"
                        "\"Basic bXAtc2VjcmV0LTEyMzo=\"}",
                        &body);
    expect_str(r, "event", "Order Completed");
    expect_mp_event_common(at(r, "properties"));
    json_object_put(body);
    free_dest(d);

    /* an anonymous user: distinct_id is the anonymousId */
    d = make_dest("MP", "{\"token\":\"mp-token-1\",\"dataResidency\":\"in\"}");
    json_object *anon = json_tokener_parse(
        "{\"type\":\"track\",\"event\":\"Opened\",\"anonymousId\":\"anon-1\",\"messageId\":"
        "\"m-1\",\"timestamp\":\"2026-11-25T10:00:00.123Z\"}");
    run_ok(d, anon, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api-in.mixpanel.com/track", json_ct, &body);
    expect_str(r, "properties.distinct_id", "anon-1");
    expect_absent(r, "properties.$user_id");
    expect_absent(r, "properties.ip");
    json_object_put(body);
    json_object_put(anon);
    json_object_put(screen);
    json_object_put(page);
    json_object_put(track);
    free_dest(d);
    pr_desttx_out_free(&out);
}

static void test_mixpanel_people(void **state)
{
    (void)state;
    sl_destination_t *d = make_dest("MP", "{\"token\":\"mp-token-1\",\"apiSecret\":\"s\","
                                          "\"groupKeySettings\":[{\"groupKey\":\"company\"}]}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *r;
    const char *json_ct = "{\"Content-Type\":\"application/json\"}";

    json_object *identify = make_event(
        "\"type\":\"identify\",\"traits\":{\"email\":\"ada@lovelace.dev\",\"firstName\":\"Ada\","
        "\"lastName\":\"Lovelace\",\"name\":\"Ada Lovelace\",\"phone\":\"+1 555 0100\","
        "\"createdAt\":\"2026-01-02T03:04:05Z\",\"favoriteColor\":\"green\"}");
    run_ok(d, identify, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/engage", json_ct, &body);
    assert_int_equal(json_object_object_length(r), 4);
    expect_str(r, "$token", "mp-token-1");
    expect_str(r, "$distinct_id", "user-20391");
    expect_str(r, "$ip", "203.0.113.9");
    expect_str(r, "$set.$email", "ada@lovelace.dev"); /* traits over context.traits */
    expect_str(r, "$set.$first_name", "Ada");
    expect_str(r, "$set.$last_name", "Lovelace");
    expect_str(r, "$set.$name", "Ada Lovelace");
    expect_str(r, "$set.$phone", "+1 555 0100");
    expect_str(r, "$set.$created", "2026-01-02T03:04:05Z");
    expect_str(r, "$set.favoriteColor", "green");
    expect_str(r, "$set.plan", "pro");
    expect_absent(r, "$set.email");
    expect_absent(r, "$set.firstName");
    json_object_put(body);

    json_object *alias = make_event("\"type\":\"alias\",\"previousId\":\"anon-7f3c9a12\"");
    run_ok(d, alias, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/track", json_ct, &body);
    expect_str(r, "event", "$create_alias");
    assert_int_equal(json_object_object_length(at(r, "properties")), 3);
    expect_str(r, "properties.distinct_id", "anon-7f3c9a12");
    expect_str(r, "properties.alias", "user-20391");
    expect_str(r, "properties.token", "mp-token-1");
    json_object_put(body);

    json_object *group =
        make_event("\"type\":\"group\",\"groupId\":\"g-42\",\"traits\":{\"company\":\"acme\","
                   "\"employees\":500}");
    run_ok(d, group, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/groups", json_ct, &body);
    expect_str(r, "$token", "mp-token-1");
    expect_str(r, "$group_key", "company");
    expect_str(r, "$group_id", "acme");
    expect_int(r, "$set.employees", 500);
    json_object_put(body);
    json_object_put(group);
    group = make_event("\"type\":\"group\",\"groupId\":\"g-42\",\"traits\":{\"size\":3}");
    run_ok(d, group, &out, 1);
    r = expect_mp_array(&out.reqs[0], "https://api.mixpanel.com/groups", json_ct, &body);
    expect_str(r, "$group_id", "g-42");
    json_object_put(body);
    json_object_put(group);
    json_object_put(alias);
    json_object_put(identify);
    free_dest(d);
    pr_desttx_out_free(&out);
}

/* ---- Google Analytics 4 ------------------------------------------------------------------ */

static json_object *expect_ga4(const pr_desttx_req_t *q, json_object **body)
{
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->url, "https://www.google-analytics.com/mp/collect?measurement_id="
                                "G-ABC123&api_secret=s%2Fecret%3D");
    expect_headers(q, "{\"Content-Type\":\"application/json\"}");
    *body = body_json(q);
    expect_str(*body, "client_id", "anon-7f3c9a12");
    expect_str(*body, "user_id", "user-20391");
    expect_str(*body, "user_properties.email.value", "ada@example.com");
    expect_str(*body, "user_properties.plan.value", "pro");
    expect_absent(*body, "timestamp_micros");
    json_object *events = at(*body, "events");
    assert_int_equal(json_object_array_length(events), 1);
    expect_batch_parts(q, 25, 130000);
    assert_string_equal(q->batch_sep, ",");
    assert_string_equal(q->batch_suffix, "]}");
    json_object *e = json_object_array_get_idx(events, 0);
    expect_int(e, "timestamp_micros", TS_MS * 1000);
    expect_int(e, "params.session_id", 1795600000);
    expect_int(e, "params.engagement_time_msec", 1);
    return e;
}

static void test_ga4_track(void **state)
{
    (void)state;
    sl_destination_t *d =
        make_dest("GA4", "{\"measurementId\":\"G-ABC123\",\"apiSecret\":\"s/ecret=\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *e;

    json_object *order = make_event(track_order);
    run_ok(d, order, &out, 1);
    e = expect_ga4(&out.reqs[0], &body);
    expect_str(e, "name", "purchase");
    expect_str(e, "params.transaction_id", "ord-88231");
    expect_str(e, "params.currency", "USD");
    expect_num(e, "params.value", 49.99);
    expect_str(e, "params.coupon", "SUMMER");
    expect_absent(e, "params.products");
    json_object *items = at(e, "params.items");
    assert_int_equal(json_object_array_length(items), 2);
    expect_str(items, "0.item_id", "p-1");
    expect_str(items, "0.item_name", "Mug");
    expect_num(items, "0.price", 19.99);
    expect_int(items, "0.quantity", 2);
    expect_str(items, "0.item_category", "Kitchen");
    expect_str(items, "0.item_brand", "Acme");
    expect_int(items, "0.index", 1);
    expect_str(items, "0.currency", "USD");
    expect_str(items, "1.item_id", "p-2");
    expect_num(items, "1.price", 10.01);
    json_object_put(body);

    /* one product named by the properties themselves */
    json_object *viewed = make_event(
        "\"type\":\"track\",\"event\":\"Product Viewed\",\"properties\":{\"product_id\":\"p-7\","
        "\"name\":\"Kettle\",\"price\":\"35.5\",\"currency\":\"EUR\",\"variant\":\"steel\"}");
    run_ok(d, viewed, &out, 1);
    e = expect_ga4(&out.reqs[0], &body);
    expect_str(e, "name", "view_item");
    items = at(e, "params.items");
    assert_int_equal(json_object_array_length(items), 1);
    expect_str(items, "0.item_id", "p-7");
    expect_str(items, "0.item_name", "Kettle");
    expect_num(items, "0.price", 35.5);
    expect_str(items, "0.item_variant", "steel");
    expect_str(items, "0.currency", "EUR");
    expect_str(e, "params.currency", "EUR");
    json_object_put(body);

    const char *names[][2] = {{"Product Added", "add_to_cart"},
                              {"Checkout Started", "begin_checkout"},
                              {"Product List Viewed", "view_item_list"},
                              {"product removed", "remove_from_cart"},
                              {"Signed Up", "signed_up"},
                              {"Video Played (HD) 2x!", "video_played_hd_2x"},
                              {"2nd Purchase", "nd_purchase"},
                              {"An Extremely Long Event Name That Goes On And On",
                               "an_extremely_long_event_name_that_goes_o"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char fields[256];
        snprintf(fields, sizeof(fields),
                 "\"type\":\"track\",\"event\":\"%s\",\"properties\":{\"Plan Type\":\"pro\","
                 "\"count\":3,\"nested\":{\"a\":1}}",
                 names[i][0]);
        json_object *ev = make_event(fields);
        run_ok(d, ev, &out, 1);
        e = expect_ga4(&out.reqs[0], &body);
        expect_str(e, "name", names[i][1]);
        expect_int(e, "params.count", 3);
        expect_absent(e, "params.Plan Type"); /* not a GA4 parameter name: dropped */
        expect_absent(e, "params.nested");
        expect_absent(e, "params.items");
        json_object_put(body);
        json_object_put(ev);
    }
    json_object_put(viewed);
    json_object_put(order);
    free_dest(d);
    pr_desttx_out_free(&out);
}

static void test_ga4_page_group(void **state)
{
    (void)state;
    sl_destination_t *d =
        make_dest("GA4", "{\"measurementId\":\"G-ABC123\",\"apiSecret\":\"s/ecret=\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    json_object *body, *e;

    json_object *page = make_event("\"type\":\"page\",\"name\":\"Pricing\",\"properties\":{"
                                   "\"url\":\"https://x.example/pricing\",\"path\":\"/pricing\"}");
    run_ok(d, page, &out, 1);
    e = expect_ga4(&out.reqs[0], &body);
    expect_str(e, "name", "page_view");
    expect_str(e, "params.page_location", "https://x.example/pricing");
    expect_str(e, "params.page_title", "Checkout"); /* context.page.title */
    expect_str(e, "params.page_referrer", "https://www.google.com/");
    expect_str(e, "params.path", "/pricing");
    expect_absent(e, "params.url");
    json_object_put(body);

    json_object *group = make_event("\"type\":\"group\",\"groupId\":\"g-42\",\"traits\":{"
                                    "\"industry\":\"tools\"}");
    run_ok(d, group, &out, 1);
    e = expect_ga4(&out.reqs[0], &body);
    expect_str(e, "name", "join_group");
    expect_str(e, "params.group_id", "g-42");
    expect_str(e, "params.industry", "tools");
    json_object_put(body);

    /* the client id's fallbacks; long values cut to GA4's limits */
    json_object *anon = json_tokener_parse(
        "{\"type\":\"page\",\"rudderId\":\"rid-5e6f\",\"userId\":\"u-1\",\"messageId\":\"m\","
        "\"timestamp\":\"2026-11-25T10:00:00.123Z\",\"properties\":{\"title\":\""
        "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
        "0123456789"
        "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
        "0123456789"
        "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
        "0123456789"
        "xyz\",\"note\":\"é"
        "012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"
        "0123456789"
        "\"},\"context\":{\"traits\":{\"user_id\":\"x\",\"tier\":"
        "\"0123456789012345678901234567890123456789\"}}}");
    assert_non_null(anon);
    run_ok(d, anon, &out, 1);
    body = body_json(&out.reqs[0]);
    expect_str(body, "client_id", "rid-5e6f");
    expect_absent(body, "user_properties.user_id"); /* reserved */
    assert_int_equal(strlen(json_object_get_string(at(body, "user_properties.tier.value"))), 36);
    assert_int_equal(strlen(json_object_get_string(at(body, "events.0.params.page_title"))), 300);
    /* 100 characters, the first of them two bytes */
    assert_int_equal(strlen(json_object_get_string(at(body, "events.0.params.note"))), 101);
    json_object_put(body);
    json_object_put(anon);
    json_object_put(group);
    json_object_put(page);
    free_dest(d);
    pr_desttx_out_free(&out);
}

/* ---- KAFKA ------------------------------------------------------------------------------- */

#define KAFKA_CONF "\"hostname\":\"k1.example,k2.example\",\"port\":\"9093\",\"topic\":\"rudder\""

/* The url of the request made for an event (make_event's type_fields, NULL: track_order)
 * to a KAFKA destination with config. */
static void expect_kafka_url(const char *config, const char *type_fields, const char *want)
{
    sl_destination_t *d = make_dest("KAFKA", config);
    json_object *ev = make_event(type_fields ? type_fields : track_order);
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    int rc = pr_desttx_transform(tx, d, ev, &out);
    if (rc != 0)
        fail_msg("transform failed (%d): %s", rc, out.reason);
    assert_int_equal(out.nreqs, 1);
    if (strcmp(out.reqs[0].url, want) != 0)
        fail_msg("%s: want %s, got %s", type_fields ? type_fields : "track", want, out.reqs[0].url);
    pr_desttx_out_free(&out);
    json_object_put(ev);
    free_dest(d);
}

static void expect_kafka_failure(const char *config, const char *want)
{
    json_object *ev = make_event(track_order);
    sl_destination_t *d = make_dest("KAFKA", config);
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    assert_int_equal(pr_desttx_transform(tx, d, ev, &out), SL_ERR_INVALID);
    assert_int_equal(out.status, PR_DESTTX_FAILED);
    if (!strstr(out.reason, want))
        fail_msg("want a reason containing \"%s\", got \"%s\"", want, out.reason);
    pr_desttx_out_free(&out);
    free_dest(d);
    json_object_put(ev);
}

static void test_kafka(void **state)
{
    (void)state;
    sl_destination_t *d =
        make_dest("KAFKA", "{" KAFKA_CONF ",\"sslEnabled\":true,\"caCertificate\":\"-----BEGIN\","
                           "\"useSASL\":true,\"saslType\":\"sha512\",\"username\":\"u\","
                           "\"password\":\"p\",\"convertToAvro\":false}");
    /* no HTTP Content-Type on a stream; the event, unchanged, is the message value */
    expect_event_as_body(d, "KAFKA", "kafka://rudder", "{}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    free_dest(d);

    /* the job's request object, exactly */
    json_object *ev = make_event(track_order);
    d = make_dest("KAFKA", "{" KAFKA_CONF "}");
    assert_int_equal(pr_desttx_transform_text(tx, d, ev, "{\"a\":\"\\\"\"}", 10, &out), 0);
    sl_buf_t job = SL_BUF_INIT;
    pr_desttx_write_request(&out.reqs[0], &job);
    assert_string_equal(job.data, "{\"method\":\"KAFKA\",\"url\":\"kafka://rudder\",\"headers\":{},"
                                  "\"body\":{\"a\":\"\\\"\"}}");
    sl_buf_free(&job);
    free_dest(d);
    json_object_put(ev);
    pr_desttx_out_free(&out);
}

static void test_kafka_topics(void **state)
{
    (void)state;
    const char *multi = "{" KAFKA_CONF ",\"enableMultiTopic\":true,"
                        "\"eventTypeToTopicMap\":[{\"from\":\"identify\",\"to\":\"ids\"},"
                        "{\"from\":\"track\",\"to\":\"not-for-track\"},"
                        "{\"from\":\"group\",\"to\":\"\"}],"
                        "\"eventToTopicMap\":[{\"from\":\"Signed Up\",\"to\":\"signups\"},"
                        "{\"from\":\"order completed\",\"to\":\"orders\"},"
                        "{\"from\":\"Order Completed\",\"to\":\"second\"}]}";
    static const struct {
        const char *type_fields, *url;
    } cases[] = {
        /* track: by event name (case-insensitively, the first match wins) */
        {NULL, "kafka://orders"},
        /* a track event not in the map, and never the type map: the default topic */
        {"\"type\":\"track\",\"event\":\"Other\"", "kafka://rudder"},
        /* other types: by type */
        {"\"type\":\"identify\",\"traits\":{\"name\":\"Ada\"}", "kafka://ids"},
        {"\"type\":\"page\",\"name\":\"Home\"", "kafka://rudder"},
        /* an empty mapped topic counts as missing */
        {"\"type\":\"group\",\"groupId\":\"g-1\"", "kafka://rudder"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_kafka_url(multi, cases[i].type_fields, cases[i].url);
    /* the maps are ignored unless enableMultiTopic is on */
    expect_kafka_url("{" KAFKA_CONF ",\"enableMultiTopic\":false,\"eventToTopicMap\":[{\"from\":"
                     "\"Order Completed\",\"to\":\"orders\"}]}",
                     NULL, "kafka://rudder");
}

static void test_kafka_bad_config(void **state)
{
    (void)state;
    expect_kafka_failure("{\"port\":9092,\"topic\":\"t\"}",
                         "destination config has no hostname, which Apache Kafka requires");
    expect_kafka_failure("{\"hostname\":\"k\",\"topic\":\"t\"}", "destination config has no port");
    expect_kafka_failure("{\"hostname\":\"k\",\"port\":9092,\"topic\":\"\"}",
                         "destination config has no topic");
    expect_kafka_failure("{" KAFKA_CONF ",\"saslType\":\"gssapi\"}",
                         "destination config saslType is \"gssapi\", expected one of "
                         "[\"plain\",\"sha256\",\"sha512\"]");
    expect_kafka_failure("{" KAFKA_CONF ",\"sslEnabled\":\"yes\"}",
                         "destination config sslEnabled must be a boolean");
    expect_kafka_failure("{" KAFKA_CONF ",\"convertToAvro\":true}",
                         "destination config convertToAvro is true, expected one of [false]");
}

/* ---- the engine's own features, through a test definition -------------------------------- */

static void test_engine_features(void **state)
{
    (void)state;
    const char *def =
        "{\"name\":\"T\",\"displayName\":\"Test\",\"supportedMessageTypes\":[\"track\"],"
        "\"config\":{\"key\":{\"required\":true},\"region\":{\"default\":\"us\"}},"
        "\"vars\":[{\"to\":\"host\",\"from\":\"$config.region\",\"transform\":{\"map\":"
        "{\"eu\":\"eu.t.example\"},\"else\":\"t.example\"}}],"
        "\"messages\":{\"track\":{\"method\":\"PATCH\",\"url\":\"https://{{$var.host}}/v1/"
        "{{event|urlencode}}\",\"headers\":{\"X-Key\":\"{{$config.key}}\",\"X-Opt\":"
        "\"{{$config.missing}}\"},\"format\":\"form\",\"form\":{\"fields\":{\"k\":"
        "\"{{$config.key}}\"},\"json\":\"data\"},\"envelope\":\"$elements\","
        "\"batch\":{\"maxEvents\":50},\"element\":["
        "{\"to\":\"s\",\"from\":\"properties.n\",\"transform\":\"to_string\"},"
        "{\"to\":\"n\",\"from\":\"properties.s\",\"transform\":\"to_number\"},"
        "{\"to\":\"i\",\"from\":\"properties.f\",\"transform\":\"to_int\"},"
        "{\"to\":\"b\",\"from\":\"properties.bs\",\"transform\":\"to_bool\"},"
        "{\"to\":\"sec\",\"from\":\"timestamp\",\"transform\":\"unix_seconds\"},"
        "{\"to\":\"iso\",\"from\":\"properties.ms\",\"transform\":\"iso8601\"},"
        "{\"to\":\"low\",\"from\":\"event\",\"transform\":[\"lowercase\",\"trim\"]},"
        "{\"to\":\"snake\",\"from\":\"properties.camel\",\"transform\":\"snake_case\"},"
        "{\"to\":\"b64\",\"from\":{\"value\":\"hi:\"},\"transform\":\"base64\"},"
        "{\"to\":\"arr\",\"from\":\"properties.n\",\"transform\":\"array\"},"
        "{\"to\":\"js\",\"from\":\"properties.obj\",\"transform\":\"json\"},"
        "{\"to\":\"deep.er.x\",\"from\":[\"properties.none\",{\"template\":\"{{event}}!\"}]},"
        "{\"to\":\"dflt\",\"from\":\"properties.none\",\"default\":{\"a\":[1]}},"
        "{\"to\":\"cond\",\"from\":{\"value\":true},\"if\":{\"not\":{\"path\":\"properties.n\","
        "\"in\":[1,2]}}},"
        "{\"to\":\"empty\",\"from\":\"properties.blank\"},"
        "{\"to\":\"o\",\"from\":\"properties.obj\",\"spread\":true,\"omit\":[\"drop\"],"
        "\"rename\":{\"a\":\"A\"},\"keyTransform\":\"uppercase\"},"
        "{\"to\":\"k.{{properties.kname}}\",\"from\":{\"value\":1}},"
        "{\"to\":\"list\",\"from\":{\"each\":\"properties.list\",\"mapping\":[{\"to\":\"id\","
        "\"from\":\"id\"},{\"to\":\"ev\",\"from\":\"$event.event\"}]}}]}}}";
    pr_desttx_src_t src = {"T.json", def};
    pr_desttx_t *t2;
    char err[512];
    if (pr_desttx_load_sources(&src, 1, &t2, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    json_object *ev = json_tokener_parse(
        "{\"type\":\"track\",\"event\":\" Big Deal "
        "\",\"timestamp\":\"2026-11-25T11:00:00.123+01:00\","
        "\"properties\":{\"n\":7,\"s\":\"2.50\",\"f\":9.9,\"bs\":\"TRUE\",\"ms\":1795600800123,"
        "\"camel\":\"firstName lastName\",\"obj\":{\"a\":1,\"b\":2,\"drop\":3},\"blank\":\"\","
        "\"kname\":\"dyn\",\"list\":[{\"id\":\"a\"},{\"id\":\"b\"},5,{}]}}");
    sl_destination_t *d = make_dest("T", "{\"key\":\"k&1\"}");
    pr_desttx_out_t out = PR_DESTTX_OUT_INIT;
    int rc = pr_desttx_transform(t2, d, ev, &out);
    if (rc)
        fail_msg("%s", out.reason);
    const pr_desttx_req_t *q = &out.reqs[0];
    assert_string_equal(q->method, "PATCH");
    assert_string_equal(q->url, "https://t.example/v1/%20Big%20Deal%20");
    expect_headers(q, "{\"X-Key\":\"k&1\",\"Content-Type\":\"application/x-www-form-urlencoded\"}");
    assert_true(strncmp(q->body, "k=k%261&data=%5B", 16) == 0);
    assert_string_equal(q->batch_prefix, "k=k%261&data=%5B");
    assert_string_equal(q->batch_sep, "%2C");
    assert_string_equal(q->batch_suffix, "%5D");
    assert_int_equal(q->max_events, 50);
    char *data = form_param(q->body, "data");
    json_object *arr = json_tokener_parse(data);
    assert_non_null(arr);
    json_object *e = json_object_array_get_idx(arr, 0);
    expect_str(e, "s", "7");
    expect_num(e, "n", 2.5);
    expect_int(e, "i", 9);
    assert_true(json_object_get_boolean(at(e, "b")));
    expect_int(e, "sec", 1795600800);
    expect_str(e, "iso", "2026-11-25T10:00:00.123Z");
    expect_str(e, "low", "big deal");
    expect_str(e, "snake", "first_name_last_name");
    expect_str(e, "b64", "aGk6");
    expect_int(e, "arr.0", 7);
    expect_str(e, "js", "{\"a\":1,\"b\":2,\"drop\":3}");
    expect_str(e, "deep.er.x", " Big Deal !");
    expect_int(e, "dflt.a.0", 1);
    assert_true(json_object_get_boolean(at(e, "cond")));
    expect_absent(e, "empty");
    expect_int(e, "o.A", 1);
    expect_int(e, "o.B", 2);
    expect_absent(e, "o.drop");
    expect_int(e, "k.dyn", 1);
    /* non-objects are skipped; {} still gets the $event field */
    assert_int_equal(json_object_array_length(at(e, "list")), 3);
    expect_str(e, "list.1.id", "b");
    expect_str(e, "list.1.ev", " Big Deal ");
    expect_absent(e, "list.2.id");
    expect_str(e, "list.2.ev", " Big Deal ");
    json_object_put(arr);
    free(data);
    free_dest(d);

    d = make_dest("T", "{\"key\":\"k\",\"region\":\"EU\",\"missing\":\"m\"}");
    assert_int_equal(pr_desttx_transform(t2, d, ev, &out), 0);
    assert_true(strncmp(out.reqs[0].url, "https://eu.t.example/", 21) == 0);
    expect_headers(&out.reqs[0], "{\"X-Key\":\"k\",\"X-Opt\":\"m\",\"Content-Type\":"
                                 "\"application/x-www-form-urlencoded\"}");
    free_dest(d);
    json_object_put(ev);
    pr_desttx_out_free(&out);
    pr_desttx_free(t2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_definitions),
        cmocka_unit_test(test_bad_definitions),
        cmocka_unit_test(test_supports),
        cmocka_unit_test(test_filtered_and_failed),
        cmocka_unit_test(test_retryable),
        cmocka_unit_test(test_webhook),
        cmocka_unit_test(test_webhook_speed),
        cmocka_unit_test(test_amplitude_track),
        cmocka_unit_test(test_amplitude_page_screen_identify),
        cmocka_unit_test(test_amplitude_group_alias),
        cmocka_unit_test(test_mixpanel_events),
        cmocka_unit_test(test_mixpanel_people),
        cmocka_unit_test(test_ga4_track),
        cmocka_unit_test(test_ga4_page_group),
        cmocka_unit_test(test_kafka),
        cmocka_unit_test(test_kafka_topics),
        cmocka_unit_test(test_kafka_bad_config),
        cmocka_unit_test(test_engine_features),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
