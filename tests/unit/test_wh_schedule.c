/* Unit tests for warehouse/schedule.c: syncStartAt + k x syncFrequency, UTC. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>

#include "warehouse/schedule.h"

#define MIN  60000LL
#define HOUR (60 * MIN)
#define DAY  (24 * HOUR)
/* 2024-05-01T00:00:00Z */
#define D0 1714521600000LL

static void test_parse(void **state)
{
    (void)state;
    assert_int_equal(wh_sync_start_parse("00:00"), 0);
    assert_int_equal(wh_sync_start_parse("13:00"), 13 * 60);
    assert_int_equal(wh_sync_start_parse("9:30"), 9 * 60 + 30);
    assert_int_equal(wh_sync_start_parse("23:59"), 23 * 60 + 59);
    const char *bad[] = {"",      "24:00", "12:60", "12",    "12:5",  "12:000",
                         "ab:cd", " 1:00", "1:00 ", "-1:00", "123:00"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(wh_sync_start_parse(bad[i]), -1);
    assert_int_equal(wh_sync_start_parse(NULL), -1);
}

/* Every 3 hours from 13:00: 01:00, 04:00, 07:00, 10:00, 13:00, 16:00, 19:00, 22:00. */
static void test_every_3h_from_13(void **state)
{
    (void)state;
    int start = 13 * 60;
    int64_t f = 3 * HOUR;
    assert_int_equal(wh_sync_prev(D0 + 18 * HOUR, start, f), D0 + 16 * HOUR);
    assert_int_equal(wh_sync_prev(D0 + 13 * HOUR, start, f), D0 + 13 * HOUR);
    assert_int_equal(wh_sync_prev(D0 + 13 * HOUR - 1, start, f), D0 + 10 * HOUR);
    assert_int_equal(wh_sync_prev(D0 + 2 * HOUR, start, f), D0 + 1 * HOUR);
    /* before the day's first time: the previous day's last (22:00) */
    assert_int_equal(wh_sync_prev(D0 + 30 * MIN, start, f), D0 - 2 * HOUR);
    assert_int_equal(wh_sync_prev(D0 + 23 * HOUR + 59 * MIN, start, f), D0 + 22 * HOUR);
}

/* A frequency that does not divide the day: each UTC day starts again from syncStartAt. */
static void test_restarts_each_day(void **state)
{
    (void)state;
    int start = 0;
    int64_t f = 7 * HOUR; /* 00:00, 07:00, 14:00, 21:00, then 00:00 the next day */
    assert_int_equal(wh_sync_prev(D0 + 23 * HOUR, start, f), D0 + 21 * HOUR);
    assert_int_equal(wh_sync_prev(D0 + DAY + 1 * HOUR, start, f), D0 + DAY);
    assert_int_equal(wh_sync_prev(D0 + DAY + 8 * HOUR, start, f), D0 + DAY + 7 * HOUR);
    /* every 30 minutes from 00:15: 00:15, 00:45, ... 23:45 */
    assert_int_equal(wh_sync_prev(D0 + 10 * HOUR + 44 * MIN, 15, 30 * MIN),
                     D0 + 10 * HOUR + 15 * MIN);
    assert_int_equal(wh_sync_prev(D0 + 10 * MIN, 15, 30 * MIN), D0 - 15 * MIN);
}

/* Events consumed at 10:05 with syncs every 3 hours from 13:00 load at 13:00, not at 13:05
 * (syncStartAt) and not at 10:00 + 3 h; without syncStartAt, 3 hours after 10:05. */
static void test_due(void **state)
{
    (void)state;
    int64_t since = D0 + 10 * HOUR + 5 * MIN, f = 3 * HOUR;
    int start = 13 * 60;
    assert_false(wh_sync_due(since, D0 + 12 * HOUR + 59 * MIN, start, f));
    assert_true(wh_sync_due(since, D0 + 13 * HOUR, start, f));
    assert_true(wh_sync_due(since, D0 + 13 * HOUR + 1 * MIN, start, f));
    /* since exactly a scheduled time: due at the next one */
    assert_false(wh_sync_due(D0 + 13 * HOUR, D0 + 15 * HOUR, start, f));
    assert_true(wh_sync_due(D0 + 13 * HOUR, D0 + 16 * HOUR, start, f));
    /* no syncStartAt: one frequency after the first event */
    assert_false(wh_sync_due(since, D0 + 13 * HOUR, -1, f));
    assert_true(wh_sync_due(since, D0 + 13 * HOUR + 5 * MIN, -1, f));
    /* across midnight: consumed 23:00, every 3 h from 13:00 -> 01:00 the next day */
    assert_false(wh_sync_due(D0 + 23 * HOUR, D0 + DAY + 59 * MIN, start, f));
    assert_true(wh_sync_due(D0 + 23 * HOUR, D0 + DAY + 1 * HOUR, start, f));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_every_3h_from_13),
        cmocka_unit_test(test_restarts_each_day),
        cmocka_unit_test(test_due),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
