/* Unit tests for common/buf.c, common/timeutil.c and common/uuid.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

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
        cmocka_unit_test(test_uuid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
