/* Unit tests for common/json_scan.c and gateway/ingest.c: what is accepted, what is rejected
 * and how, and the exact bytes the enrichment splices into an event. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/ingest.h"
#include "common/json_scan.h"

static const gw_ingest_ctx_t ctx = {"2026-11-26T10:00:00.000Z", "10.1.2.3", 32 * 1024};

static bool scans(const char *s)
{
    sl_json_error_t e;
    return sl_json_scan_document(s, strlen(s), NULL, &e);
}

static void test_scan_grammar(void **state)
{
    (void)state;
    const char *good[] = {"{}",
                          " [ ] ",
                          "0",
                          "-0.5e+10",
                          "\"\\u00e9\\ud83d\\ude00\"",
                          "{\"a\":[1,true,false,null,{\"b\":\"\xc3\xa9\"}]}",
                          "\"\xf0\x9f\x98\x80\""};
    const char *bad[] = {"",
                         "{",
                         "{\"a\"}",
                         "{\"a\":1,}",
                         "[1,]",
                         "01",
                         "1.",
                         "-",
                         "+1",
                         "tru",
                         "\"\\x\"",
                         "\"\\ud83d\"",
                         "\"\\ude00\"",
                         "\"\xff\"",
                         "\"\xc0\xaf\"",
                         "\"\xed\xa0\x80\"",
                         "\"a\nb\"",
                         "{} {}",
                         "{'a':1}",
                         "NaN"};
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++)
        assert_true(scans(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++)
        assert_false(scans(bad[i]));
    char deep[100] = "";
    for (int i = 0; i < 32; i++)
        strcat(deep, "[");
    for (int i = 0; i < 32; i++)
        strcat(deep, "]");
    assert_true(scans(deep));
    memmove(deep + 1, deep, strlen(deep) + 1);
    deep[0] = '[';
    strcat(deep, "]");
    assert_false(scans(deep)); /* 33 levels */

    sl_json_error_t e;
    assert_false(sl_json_scan_document("{\"a\": x}", 8, NULL, &e));
    assert_int_equal(e.offset, 6);
}

/* Strings are scanned 8 bytes at a time where they are plain ASCII: a byte that needs a look
 * (quote, backslash, control character, UTF-8) is found at every place in and around a block,
 * and every byte value counts as plain or not as the byte-by-byte scan says. */
static void test_scan_string_blocks(void **state)
{
    (void)state;
    char doc[64];
    for (size_t at = 0; at < 24; at++) {
        for (int c = 0; c < 256; c++) {
            /* "aaaa...<c>...aaaa" with 20 plain bytes around c */
            memset(doc, 'a', sizeof(doc));
            doc[0] = '"';
            doc[1 + at] = (char)c;
            doc[26] = '"';
            bool want = c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
            if (c == '"') /* ends the string early: trailing garbage */
                want = false;
            sl_json_error_t e;
            bool got = sl_json_scan_document(doc, 27, NULL, &e);
            if (got != want)
                fail_msg("byte 0x%02x at %zu: scanned %d, want %d", c, at, got, want);
        }
        /* an escape and a two-byte character in place of the byte are fine */
        memset(doc, 'a', sizeof(doc));
        doc[0] = '"';
        memcpy(doc + 1 + at, "\\n\xc3\xa9", 4);
        doc[28] = '"';
        assert_true(sl_json_scan_document(doc, 29, NULL, NULL));
        /* an unterminated string ending at any place */
        assert_false(sl_json_scan_document(doc, 2 + at, NULL, NULL));
    }
}

static void test_string_decode(void **state)
{
    (void)state;
    const char *s = "\"a\\u0049\\n\\ud83d\\ude00\\/\"";
    sl_json_span_t sp = {s, strlen(s), SL_JSON_STRING, NULL};
    char out[32];
    size_t n = sl_json_string_decode(sp, out, sizeof(out));
    assert_int_equal(n, 8);
    assert_string_equal(out, "aI\n\xf0\x9f\x98\x80/");
    char tiny[3];
    assert_int_equal(sl_json_string_decode(sp, tiny, sizeof(tiny)), 8);
    assert_string_equal(tiny, "aI");
    sl_json_span_t key = {"\"user\\u0049d\"", 13, SL_JSON_STRING, NULL};
    assert_true(sl_json_key_is(key, "userId"));
    assert_false(sl_json_key_is(key, "user"));
    sl_json_span_t nul = {"\"messageId\\u0000x\"", 18, SL_JSON_STRING, NULL};
    assert_true(sl_json_key_is(nul, "messageId"));
    assert_false(sl_json_key_is(nul, "messageIdx"));
}

static json_object *event_at(gw_batch_t *b, size_t i)
{
    /* events are back to back: parse a copy of exactly this one */
    char *copy = strndup(b->out.data + b->events[i].off, b->events[i].len);
    json_object *o = json_tokener_parse(copy);
    free(copy);
    assert_non_null(o);
    return o;
}

static const char *str(json_object *o, const char *path)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", path);
    json_object *v = o;
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, "."))
        if (!json_object_object_get_ex(v, tok, &v))
            return NULL;
    return json_object_get_string(v);
}

static void test_enrich(void **state)
{
    (void)state;
    gw_batch_t b;
    gw_batch_init(&b);
    const char *body = "{\"user\\u0049d\": 42, \"type\": \"identify\", \"rudderId\": \"forged\","
                       " \"messageId\": \"m-1\", \"event\": \"E\", \"context\": {\"a\": 1},"
                       " \"type\": \"x\", \"request_ip\": \"1.1.1.1\"}";
    assert_int_equal(gw_ingest_single(&b, body, strlen(body), "track", &ctx), 0);
    assert_int_equal(b.n, 1);
    json_object *o = event_at(&b, 0);
    assert_string_equal(str(o, "type"), "track");
    assert_string_equal(str(o, "messageId"), "m-1");
    assert_string_equal(str(o, "receivedAt"), ctx.received_at);
    assert_string_equal(str(o, "request_ip"), "10.1.2.3");
    assert_string_equal(str(o, "context.ip"), "10.1.2.3");
    assert_string_equal(str(o, "context.a"), "1");
    assert_string_equal(str(o, "rudderId"), b.events[0].rudder_id);
    assert_string_equal(b.events[0].type, "track");
    /* the userId as text, for suppression; the key is MD5(userId + anonymousId) */
    assert_int_equal(b.events[0].user_len, 2);
    assert_memory_equal(b.ids.data + b.events[0].user_off, "42", 2);
    char key[SL_UUID_STRLEN];
    sl_uuid_md5("42", 2, key);
    assert_string_equal(b.events[0].rudder_id, key);
    json_object_put(o);

    /* A context that has an ip keeps it; a non-object context is replaced. */
    gw_batch_reset(&b);
    const char *batch =
        "{\"sentAt\":\"2026-01-01T00:00:00Z\",\"batch\":["
        "{\"type\":\"page\",\"anonymousId\":\"a\",\"context\":{\"ip\":\"9.9.9.9\"}},"
        "{\"type\":\"screen\",\"anonymousId\":\"a\",\"context\":\"junk\","
        "\"sentAt\":\"own\"},"
        "{\"type\":\"alias\",\"userId\":\"u\",\"previousId\":7,\"context\":{}}]}";
    assert_int_equal(gw_ingest_batch(&b, batch, strlen(batch), &ctx), 0);
    assert_int_equal(b.n, 3);
    o = event_at(&b, 0);
    assert_string_equal(str(o, "context.ip"), "9.9.9.9");
    assert_string_equal(str(o, "sentAt"), "2026-01-01T00:00:00Z");
    assert_int_equal(strlen(str(o, "messageId")), 36);
    json_object_put(o);
    o = event_at(&b, 1);
    assert_string_equal(str(o, "context.ip"), "10.1.2.3");
    assert_string_equal(str(o, "sentAt"), "own");
    json_object_put(o);
    o = event_at(&b, 2);
    assert_string_equal(str(o, "context.ip"), "10.1.2.3");
    json_object_put(o);
    assert_string_equal(b.events[0].rudder_id, b.events[1].rudder_id);
    /* A messageId with an escaped NUL is replaced: later stages read it as a C string. */
    gw_batch_reset(&b);
    const char *nul = "{\"userId\":\"u\",\"event\":\"e\",\"messageId\":\"\\u0000m\"}";
    assert_int_equal(gw_ingest_single(&b, nul, strlen(nul), "track", &ctx), 0);
    o = event_at(&b, 0);
    assert_int_equal(strlen(str(o, "messageId")), 36);
    json_object_put(o);
    gw_batch_free(&b);
}

static void test_reject(void **state)
{
    (void)state;
    struct {
        const char *body;
        int status;
        long index;
        const char *reason;
    } cases[] = {
        {"{\"batch\":[{\"type\":\"track\",\"userId\":\"u\",\"event\":\"e\"},3]}", 400, 1,
         "not_object"},
        {"{\"batch\":[{\"type\":\"track\",\"event\":\"e\"}]}", 400, 0, "no_user"},
        {"{\"batch\":[{\"type\":\"track\",\"userId\":\"\",\"event\":\"e\"}]}", 400, 0, "no_user"},
        {"{\"batch\":[{\"type\":\"track\",\"userId\":true,\"event\":\"e\"}]}", 400, 0, "no_user"},
        {"{\"batch\":[{\"type\":\"track\",\"userId\":\"u\"}]}", 400, 0, "no_event_name"},
        {"{\"batch\":[{\"type\":\"group\",\"userId\":\"u\"}]}", 400, 0, "no_group_id"},
        {"{\"batch\":[{\"type\":\"alias\",\"userId\":\"u\"}]}", 400, 0, "no_previous_id"},
        {"{\"batch\":[{\"type\":\"Track\",\"userId\":\"u\",\"event\":\"e\"}]}", 400, 0, "bad_type"},
        {"{\"batch\":[{\"userId\":\"u\",\"event\":\"e\"}]}", 400, 0, "no_type"},
        {"{\"batch\":[]}", 400, -1, "empty_batch"},
        {"{\"batch\":{}}", 400, -1, "no_batch"},
        {"[]", 400, -1, "not_object"},
        {"{\"batch\":[", 400, -1, "invalid_json"},
    };
    gw_batch_t b;
    gw_batch_init(&b);
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        gw_batch_reset(&b);
        assert_int_equal(gw_ingest_batch(&b, cases[i].body, strlen(cases[i].body), &ctx),
                         cases[i].status);
        assert_int_equal(b.index, cases[i].index);
        assert_string_equal(b.reason, cases[i].reason);
        assert_true(strlen(b.error) > 0);
    }
    gw_ingest_ctx_t small = ctx;
    small.max_event_size = 300;
    char big[600];
    snprintf(big, sizeof(big), "{\"userId\":\"u\",\"event\":\"e\",\"p\":\"%0400d\"}", 0);
    gw_batch_reset(&b);
    assert_int_equal(gw_ingest_single(&b, big, strlen(big), "track", &small), 413);
    assert_string_equal(b.reason, "event_too_large");
    gw_batch_free(&b);
}

static void test_params_and_ip(void **state)
{
    (void)state;
    const char *names[] = {"writeKey", "event", "properties.a", "properties.b.c", "x", "x.y", ""};
    const char *values[] = {"k", "E\"", "1", "2", "flat", "nested", "empty"};
    const char *skip[] = {"writeKey", NULL};
    sl_buf_t out = SL_BUF_INIT;
    gw_params_to_json(names, values, 7, skip, &out);
    assert_string_equal(out.data,
                        "{\"event\":\"E\\\"\",\"properties\":{\"a\":\"1\",\"b\":{\"c\":\"2\"}},"
                        "\"x\":{\"y\":\"nested\"}}");
    sl_buf_free(&out);

    char ip[64];
    assert_string_equal(gw_client_ip(" 203.0.113.7, 10.0.0.1", "127.0.0.1", true, ip, 64),
                        "203.0.113.7");
    assert_string_equal(gw_client_ip("2001:db8::1", "127.0.0.1", true, ip, 64), "2001:db8::1");
    assert_string_equal(gw_client_ip("203.0.113.7", "127.0.0.1", false, ip, 64), "127.0.0.1");
    assert_string_equal(gw_client_ip("not-an-ip", "127.0.0.1", true, ip, 64), "127.0.0.1");
    assert_null(gw_client_ip(NULL, "127.0.0.1", true, ip, 4));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_grammar),  cmocka_unit_test(test_scan_string_blocks),
        cmocka_unit_test(test_string_decode), cmocka_unit_test(test_enrich),
        cmocka_unit_test(test_reject),        cmocka_unit_test(test_params_and_ip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
