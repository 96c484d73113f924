/* Unit tests for processor/select.c (destination selection, timestamp correction) and
 * processor/dedup.c (the messageId window). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "processor/dedup.h"
#include "processor/select.h"

typedef struct fixture {
    sl_destination_t d;
    json_object *config, *def_config;
} fixture_t;

static void dest(fixture_t *f, const char *config, const char *types)
{
    memset(f, 0, sizeof(*f));
    f->config = json_tokener_parse(config);
    char def[256];
    snprintf(def, sizeof(def), "{\"supportedMessageTypes\": %s}", types ? types : "null");
    f->def_config = json_tokener_parse(types ? def : "{}");
    f->d.id = "d1";
    f->d.enabled = true;
    f->d.def_name = "AM";
    f->d.def_display_name = "Amplitude";
    f->d.config = f->config;
    f->d.def_config = f->def_config;
}

static void undest(fixture_t *f)
{
    json_object_put(f->config);
    json_object_put(f->def_config);
}

static const char *why(fixture_t *f, const char *event)
{
    static char out[200];
    json_object *ev = json_tokener_parse(event);
    assert_non_null(ev);
    json_object *t;
    const char *type = json_object_object_get_ex(ev, "type", &t) ? json_object_get_string(t) : "";
    const char *r = pr_select_reason(ev, type, &f->d);
    snprintf(out, sizeof(out), "%s", r ? r : "");
    json_object_put(ev);
    return out;
}

static void test_types_and_integrations(void **state)
{
    (void)state;
    fixture_t f;
    dest(&f, "{}", "[\"track\", \"identify\"]");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"x\"}"), "");
    assert_string_equal(why(&f, "{\"type\":\"page\"}"),
                        "message type is not in the destination's supportedMessageTypes");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"integrations\":{\"All\":false}}"),
                        "turned off by the event's integrations");
    assert_string_equal(
        why(&f, "{\"type\":\"track\",\"integrations\":{\"All\":false,\"Amplitude\":true}}"), "");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"integrations\":{\"All\":false,\"AM\":{}}}"),
                        "");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"integrations\":{\"amplitude\":false}}"),
                        "turned off by the event's integrations");
    f.d.enabled = false;
    assert_string_equal(why(&f, "{\"type\":\"track\"}"), "destination is disabled");
    undest(&f);
}

static void test_consent(void **state)
{
    (void)state;
    fixture_t f;
    dest(&f,
         "{\"oneTrustCookieCategories\":[{\"oneTrustCookieCategory\":\"C0004\"}],"
         "\"ketchConsentPurposes\":[{\"purpose\":\"analytics\"}],"
         "\"consentManagement\":[{\"provider\":\"custom\",\"consents\":[{\"consent\":\"ads\"}]}]}",
         NULL);
    const char *denied = "a consent category of the destination is denied by the event";
    assert_string_equal(why(&f, "{\"type\":\"track\",\"context\":{\"consentManagement\":"
                                "{\"deniedConsentIds\":[\"C0004\"]}}}"),
                        denied);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"context\":{\"consentManagement\":"
                                "{\"deniedConsentIds\":[\"analytics\"]}}}"),
                        denied);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"context\":{\"consentManagement\":"
                                "{\"provider\":\"custom\",\"deniedConsentIds\":[\"ads\"]}}}"),
                        denied);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"context\":{\"consentManagement\":"
                                "{\"provider\":\"other\",\"deniedConsentIds\":[\"ads\"]}}}"),
                        "");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"context\":{\"consentManagement\":"
                                "{\"deniedConsentIds\":[\"C0001\"]}}}"),
                        "");
    assert_string_equal(why(&f, "{\"type\":\"track\"}"), "");
    undest(&f);
}

static void test_event_filters(void **state)
{
    (void)state;
    fixture_t f;
    dest(&f,
         "{\"eventFilteringOption\":\"whitelistedEvents\","
         "\"whitelistedEvents\":[{\"eventName\":\"Order Completed\"}],"
         "\"blacklistedEvents\":[{\"eventName\":\"Order Completed\"}]}",
         NULL);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"Order Completed\"}"), "");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"Page Scrolled\"}"),
                        "not in the destination's whitelistedEvents");
    assert_string_equal(why(&f, "{\"type\":\"identify\"}"), ""); /* track events only */
    undest(&f);
    dest(&f,
         "{\"eventFilteringOption\":\"blacklistedEvents\","
         "\"blacklistedEvents\":[{\"eventName\":\"Page Scrolled\"}]}",
         NULL);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"Page Scrolled\"}"),
                        "in the destination's blacklistedEvents");
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"Order Completed\"}"), "");
    undest(&f);
    dest(&f, "{\"eventFilteringOption\":\"disable\",\"whitelistedEvents\":[]}", NULL);
    assert_string_equal(why(&f, "{\"type\":\"track\",\"event\":\"Anything\"}"), "");
    undest(&f);
}

static void test_timestamp(void **state)
{
    (void)state;
    const char *recv = "2026-11-26T10:00:10.000Z";
    char out[SL_TIME_STRLEN];
    json_object *ev = json_tokener_parse("{\"timestamp\":\"2026-01-01T00:00:00Z\"}");
    assert_false(pr_timestamp_correct(ev, recv, out));
    json_object_put(ev);
    /* The client's clock is 1 h fast: the event happened 2 s before it was sent. */
    ev = json_tokener_parse("{\"originalTimestamp\":\"2026-11-26T11:00:05.000Z\","
                            "\"sentAt\":\"2026-11-26T11:00:07.000Z\"}");
    assert_true(pr_timestamp_correct(ev, recv, out));
    assert_string_equal(out, "2026-11-26T10:00:08.000Z");
    json_object_put(ev);
    ev = json_tokener_parse("{\"timestamp\":\"garbage\",\"sentAt\":\"2026-11-26T10:00:09Z\"}");
    assert_true(pr_timestamp_correct(ev, recv, out)); /* originalTimestamp = receivedAt */
    assert_string_equal(out, "2026-11-26T10:00:11.000Z");
    json_object_put(ev);
    ev = json_tokener_parse("{}");
    assert_true(pr_timestamp_correct(ev, recv, out));
    assert_string_equal(out, recv);
    json_object_put(ev);
}

static void test_dedup(void **state)
{
    (void)state;
    pr_dedup_t *d = pr_dedup_new(1000, 3);
    assert_false(pr_dedup_seen(d, 0, "a", 1, 100));
    assert_true(pr_dedup_seen(d, 0, "a", 1, 200));
    assert_false(pr_dedup_seen(d, 1, "a", 1, 200)); /* per partition */
    assert_false(pr_dedup_seen(d, 0, "b", 1, 300));
    assert_false(pr_dedup_seen(d, 0, "c", 1, 400));
    assert_int_equal(pr_dedup_size(d, 0), 3);
    assert_false(pr_dedup_seen(d, 0, "d", 1, 500)); /* over max: "a" goes */
    assert_int_equal(pr_dedup_size(d, 0), 3);
    assert_false(pr_dedup_seen(d, 0, "a", 1, 600));
    assert_true(pr_dedup_seen(d, 0, "d", 1, 700));
    /* Out of the window: everything before 2500 - 1000 expires. */
    assert_false(pr_dedup_seen(d, 0, "d", 1, 2500));
    assert_int_equal(pr_dedup_size(d, 0), 1);
    pr_dedup_forget(d, 0);
    assert_int_equal(pr_dedup_size(d, 0), 0);
    /* Many ids: the table stays correct through evictions and tombstone rehashes. */
    pr_dedup_t *big = pr_dedup_new(1000000, 1000);
    char id[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof(id), "m-%d", i);
        assert_false(pr_dedup_seen(big, 3, id, strlen(id), i));
        if (i >= 10) {
            snprintf(id, sizeof(id), "m-%d", i - 10);
            assert_true(pr_dedup_seen(big, 3, id, strlen(id), i));
        }
    }
    assert_int_equal(pr_dedup_size(big, 3), 1000);
    pr_dedup_free(big);
    pr_dedup_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types_and_integrations),
        cmocka_unit_test(test_consent),
        cmocka_unit_test(test_event_filters),
        cmocka_unit_test(test_timestamp),
        cmocka_unit_test(test_dedup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
