/* Unit tests for common/buf.c, common/timeutil.c and common/uuid.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/buf.h"
#include "common/timeutil.h"
#include "common/uuid.h"

static void test_buf(void **state)
{
    (void)state;
    sl_buf_t b = SL_BUF_INIT;
    sl_buf_puts(&b, "a");
    sl_buf_printf(&b, "%d", 42);
    sl_buf_json_str(&b, "q\"\n\x01", 4);
    assert_string_equal(b.data, "a42\"q\\\"\\n\\u0001\"");
    for (int i = 0; i < 1000; i++)
        sl_buf_putc(&b, 'x');
    assert_int_equal(b.len, 16 + 1000);
    sl_buf_free(&b);
}

static void test_time(void **state)
{
    (void)state;
    int64_t ms;
    char s[SL_TIME_STRLEN];
    assert_int_equal(sl_time_parse_ms("2026-11-25T10:00:00.123Z", &ms), 0);
    sl_time_format_ms(ms, s);
    assert_string_equal(s, "2026-11-25T10:00:00.123Z");
    assert_int_equal(sl_time_parse_ms("2026-11-25T12:00:00+02:00", &ms), 0);
    sl_time_format_ms(ms, s);
    assert_string_equal(s, "2026-11-25T10:00:00.000Z");
    assert_int_equal(sl_time_parse_ms("2026-11-25", &ms), 0);
    assert_int_equal(sl_time_parse_ms("not a date", &ms), -1);
    assert_int_equal(sl_time_parse_ms("2026-13-01T00:00:00Z", &ms), -1);
    assert_int_equal(sl_time_parse_ms("2026-11-25T10:00:00Zjunk", &ms), -1);
    /* the same text as gmtime_r and strftime, from 1601 to 2400, leap days and negatives */
    uint64_t x = 88172645463325252ULL;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int64_t v = (int64_t)(x % 25250000000000ULL) - 11650000000000LL;
        if (i < 4)
            v = (int64_t[]){0, -1, 951782400000LL, 4107542399999LL}[i];
        char want[SL_TIME_STRLEN];
        time_t t = (time_t)(v / 1000 - (v % 1000 < 0));
        struct tm tm;
        gmtime_r(&t, &tm);
        size_t n = strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(want + n, sizeof(want) - n, ".%03dZ", (int)((v % 1000 + 1000) % 1000));
        sl_time_format_ms(v, s);
        assert_string_equal(s, want);
    }
}

/* The forms of `kafka-consumer-groups --to-datetime` and `--by-duration`. */
static void test_time_kafka(void **state)
{
    (void)state;
    int64_t ms, utc;
    assert_int_equal(sl_time_parse_kafka_ms("2026-11-25T10:00:00.123", &utc), 0);
    assert_int_equal(sl_time_parse_kafka_ms("2026-11-25T10:00:00.123Z", &ms), 0);
    assert_true(ms == utc);
    assert_int_equal(sl_time_parse_kafka_ms("2026-11-25T12:00:00.123+02:00", &ms), 0);
    assert_true(ms == utc);
    assert_int_equal(sl_time_parse_kafka_ms("2026-11-25T08:00:00.123-02", &ms), 0);
    assert_true(ms == utc);
    assert_int_equal(sl_time_parse_kafka_ms("2024-02-29T00:00:00.000", &ms), 0);
    const char *bad[] = {"2026-11-25T10:00:00",         "2026-11-25T10:00:00Z",
                         "2026-11-25 10:00:00.000",     "2026-11-25T10:00:00.1234",
                         "2026-02-29T00:00:00.000",     "2026-11-31T00:00:00.000",
                         "2026-11-25T24:00:00.000",     "2026-11-25T10:00:00.000+0200",
                         "2026-11-25T10:00:00.000+02:", "2026-11-25T10:00:00.000 ",
                         "2026-11-25T10:00:00.000+24",  "yesterday"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sl_time_parse_kafka_ms(bad[i], &ms), -1);

    struct {
        const char *s;
        int64_t ms;
    } good[] = {{"PT10M", 600000}, {"P1D", 86400000},  {"P1DT2H", 93600000}, {"pt1.5s", 1500},
                {"PT0.001S", 1},   {"-PT1M", -60000},  {"PT-1M30S", -30000}, {"PT1H2M3S", 3723000},
                {"+P0D", 0},       {"PT-1.5S", -1500}, {"-PT-1M", 60000},    {"P2DT0H", 172800000}};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(sl_time_parse_iso_duration_ms(good[i].s, &ms), 0);
        assert_true(ms == good[i].ms);
    }
    const char *bad_d[] = {"",
                           "P",
                           "PT",
                           "P1DT",
                           "10m",
                           "PT10",
                           "P1M",
                           "P1H",
                           "PT1D",
                           "PT1M1H",
                           "PT1.5M",
                           "P1W",
                           "PT1S1S",
                           "PT99999999999999999999S",
                           "PT1.0000000001S"};
    for (size_t i = 0; i < sizeof(bad_d) / sizeof(bad_d[0]); i++)
        assert_int_equal(sl_time_parse_iso_duration_ms(bad_d[i], &ms), -1);
}

static void test_uuid(void **state)
{
    (void)state;
    char a[SL_UUID_STRLEN], b[SL_UUID_STRLEN];
    sl_uuid_v4(a);
    sl_uuid_v4(b);
    assert_int_equal(strlen(a), 36);
    assert_int_equal(a[14], '4');
    assert_string_not_equal(a, b);
    sl_uuid_md5("u1", 2, a);
    sl_uuid_md5("u1", 2, b);
    assert_string_equal(a, b);
    assert_int_equal(a[14], '3');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_time),
        cmocka_unit_test(test_time_kafka),
        cmocka_unit_test(test_uuid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
