/* Unit tests of Burrow's evaluation rules in common/lag.c (sl_lag_evaluate). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/lag.h"

/* A window from parallel offset and lag arrays, one sample a second. */
static sl_lag_status_t eval(const int64_t *off, const int64_t *lag, size_t n, int owned)
{
    sl_lag_obs_t w[16];
    for (size_t i = 0; i < n; i++)
        w[i] = (sl_lag_obs_t){(int64_t)i * 1000, off[i], lag[i]};
    return sl_lag_evaluate(w, n, owned);
}

#define EVAL(owned, off, lag) eval(off, lag, sizeof(off) / sizeof(off[0]), owned)

static void test_rules(void **state)
{
    (void)state;
    assert_int_equal(sl_lag_evaluate(NULL, 0, 1), SL_LAG_OK);

    /* 1: a zero lag in the latest sample is OK; a zero earlier in the window is never an
     * error: WARN while the lag has only grown since (a consumer that stopped, before the
     * window is all lag), OK once it went down */
    int64_t o1[] = {5, 5, 5}, l1[] = {0, 3, 9};
    assert_int_equal(EVAL(0, o1, l1), SL_LAG_WARN);
    assert_int_equal(EVAL(1, o1, l1), SL_LAG_WARN);
    int64_t o1b[] = {9, 2, 2}, l1b[] = {4, 0, 6};
    assert_int_equal(EVAL(1, o1b, l1b), SL_LAG_WARN);
    int64_t o1c[] = {5, 5, 9}, l1c[] = {4, 4, 0}; /* caught up now */
    assert_int_equal(EVAL(1, o1c, l1c), SL_LAG_OK);
    int64_t o1d[] = {5, 5, 5}, l1d[] = {0, 6, 6}; /* fixed since: still WARN */
    assert_int_equal(EVAL(0, o1d, l1d), SL_LAG_WARN);
    int64_t o1e[] = {5, 7, 9}, l1e[] = {0, 6, 3}; /* went down since: OK */
    assert_int_equal(EVAL(1, o1e, l1e), SL_LAG_OK);
    int64_t o1f[] = {5, 5, 9, 9}, l1f[] = {3, 0, 2, 0}; /* bursty, caught up: OK */
    assert_int_equal(EVAL(1, o1f, l1f), SL_LAG_OK);

    /* 2: the offset went back: REWIND, before STOP */
    int64_t o2[] = {10, 12, 7}, l2[] = {3, 3, 8};
    assert_int_equal(EVAL(1, o2, l2), SL_LAG_REWIND);
    assert_int_equal(EVAL(0, o2, l2), SL_LAG_REWIND);

    /* 3: the offset did not move and nobody holds the partition: STOP; a consumer that
     * moved within the window and left since is not STOP yet (Burrow waits for its commits to
     * have ceased for a window) */
    int64_t o3[] = {5, 5, 5}, l3[] = {2, 4, 6};
    assert_int_equal(EVAL(0, o3, l3), SL_LAG_STOP);
    int64_t o3b[] = {5, 6, 7}, l3b[] = {2, 4, 6};
    assert_int_equal(EVAL(0, o3b, l3b), SL_LAG_WARN);
    int64_t o3c[] = {5, 6, 6}, l3c[] = {9, 4, 6};
    assert_int_equal(EVAL(0, o3c, l3c), SL_LAG_OK);

    /* 4: held (or unknown) but the offset never moved: STALL, lag fixed or growing */
    assert_int_equal(EVAL(1, o3, l3), SL_LAG_STALL);
    assert_int_equal(EVAL(-1, o3, l3), SL_LAG_STALL);
    int64_t l4[] = {6, 6, 6};
    assert_int_equal(EVAL(1, o3, l4), SL_LAG_STALL);
    int64_t o4[] = {-1, -1}, l4b[] = {3, 3}; /* never committed */
    assert_int_equal(EVAL(1, o4, l4b), SL_LAG_STALL);

    /* 5: moving but the lag never goes down: WARN (slow consumer) */
    int64_t o5[] = {5, 8, 12}, l5[] = {10, 10, 14};
    assert_int_equal(EVAL(1, o5, l5), SL_LAG_WARN);
    assert_int_equal(EVAL(-1, o5, l5), SL_LAG_WARN);

    /* 6: moving and the lag went down once: OK */
    int64_t o6[] = {5, 8, 12}, l6[] = {10, 9, 14};
    assert_int_equal(EVAL(1, o6, l6), SL_LAG_OK);

    assert_string_equal(sl_lag_status_name(SL_LAG_STALL), "STALL");
    assert_string_equal(sl_lag_status_name(SL_LAG_ERR), "ERR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_rules)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
