/* Unit tests of common/trace.c: W3C Trace Context traceparent parsing and making, tracestate
 * cleaning, including malformed values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/trace.h"

#include <stdio.h>
#include <string.h>

static const char good[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static bool parse(const char *s, sl_trace_t *t)
{
    return sl_trace_parse(s, strlen(s), t);
}

static void assert_valid_id(const char *id, size_t len)
{
    assert_int_equal(strlen(id), len);
    bool nonzero = false;
    for (size_t i = 0; i < len; i++) {
        assert_true((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'));
        nonzero |= id[i] != '0';
    }
    assert_true(nonzero);
}

static void test_parse_valid(void **state)
{
    (void)state;
    sl_trace_t t;
    assert_true(parse(good, &t));
    assert_string_equal(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(t.span_id, "00f067aa0ba902b7");
    assert_int_equal(t.flags, 1);
    /* not sampled; unknown flags are dropped (only the sampled bit is defined) */
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &t));
    assert_int_equal(t.flags, 0);
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &t));
    assert_int_equal(t.flags, 1);
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe", &t));
    assert_int_equal(t.flags, 0);
    /* OWS around the value, as a header field may have it */
    assert_true(parse(" \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ", &t));
    assert_string_equal(t.span_id, "00f067aa0ba902b7");
    /* a higher version: the first four fields, then the end or a '-' */
    assert_true(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &t));
    assert_true(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next", &t));
    assert_string_equal(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    /* length counts: not NUL-terminated input */
    char buf[80];
    snprintf(buf, sizeof(buf), "%sXYZ", good);
    assert_true(sl_trace_parse(buf, strlen(good), &t));
}

static void test_parse_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "00",
        "00-",
        "hello world",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",   /* short flags */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* 00 is exactly 55 */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  /* trace-id 31 */
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b-01", /* fields shifted */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01", /* separator */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace-id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero parent-id */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", /* higher: '-' or end */
        "00 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 01",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        sl_trace_t t;
        memset(&t, 0x55, sizeof(t));
        if (parse(bad[i], &t))
            fail_msg("accepted invalid traceparent \"%s\"", bad[i]);
    }
    sl_trace_t t;
    assert_false(sl_trace_parse(NULL, 0, &t));
    char nul[56];
    memcpy(nul, good, 55);
    nul[20] = '\0'; /* a NUL inside the value */
    assert_false(sl_trace_parse(nul, 55, &t));
}

static void test_new_child_format(void **state)
{
    (void)state;
    sl_trace_t a, b, p;
    char s[SL_TRACEPARENT_LEN + 1], s2[SL_TRACEPARENT_LEN + 1];
    sl_trace_new(&a);
    sl_trace_new(&b);
    assert_valid_id(a.trace_id, 32);
    assert_valid_id(a.span_id, 16);
    assert_string_not_equal(a.trace_id, b.trace_id);
    assert_int_equal(a.flags, 1);
    sl_trace_format(&a, s);
    assert_int_equal(strlen(s), SL_TRACEPARENT_LEN);
    assert_true(parse(s, &p));
    assert_string_equal(p.trace_id, a.trace_id);
    assert_string_equal(p.span_id, a.span_id);

    /* a child: same trace and flags, another span */
    assert_true(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &p));
    sl_trace_child(&p, &b);
    assert_string_equal(b.trace_id, p.trace_id);
    assert_string_not_equal(b.span_id, p.span_id);
    assert_valid_id(b.span_id, 16);
    assert_int_equal(b.flags, 0);
    sl_trace_format(&b, s);
    assert_memory_equal(s, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    assert_string_equal(s + 52, "-00");
    /* in place */
    char before[17];
    strcpy(before, b.span_id);
    sl_trace_child(&b, &b);
    assert_string_not_equal(b.span_id, before);

    /* continue: a child of a valid value (a higher version becomes 00), else a new trace */
    assert_true(sl_trace_continue(good, strlen(good), &a));
    sl_trace_format(&a, s);
    assert_memory_equal(s, good, 36);
    assert_memory_not_equal(s, good, 55);
    static const char v1[] = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x";
    assert_true(sl_trace_continue(v1, strlen(v1), &a));
    sl_trace_format(&a, s);
    assert_memory_equal(s, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
    static const char bad[] = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    assert_false(sl_trace_continue(bad, strlen(bad), &a));
    assert_false(sl_trace_continue(NULL, 0, &b));
    sl_trace_format(&a, s);
    sl_trace_format(&b, s2);
    assert_true(parse(s, &p));
    assert_true(parse(s2, &p));
    assert_memory_not_equal(s + 3, bad + 3, 32);
    assert_memory_not_equal(s + 3, s2 + 3, 32);
}

static const char *clean(const char *in, char *out)
{
    size_t n = sl_trace_state_clean(in, strlen(in), out, SL_TRACESTATE_MAX + 1);
    assert_int_equal(n, strlen(out));
    return out;
}

static void test_tracestate(void **state)
{
    (void)state;
    char out[SL_TRACESTATE_MAX + 1];
    assert_string_equal(clean("congo=t61rcWkgMzE", out), "congo=t61rcWkgMzE");
    /* OWS and empty members go; order stays */
    assert_string_equal(clean(" rojo=00f067aa0ba902b7 ,\t, congo=t61rcWkgMzE ,", out),
                        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_string_equal(clean("", out), "");
    assert_string_equal(clean(" , ,", out), "");
    /* multi-tenant keys, values with inner spaces and odd printable characters */
    assert_string_equal(clean("t1@vendor=a b,x_-*/@=~!", out), "t1@vendor=a b,x_-*/@=~!");
    /* invalid: the whole value is dropped */
    static const char *const bad[] = {
        "Congo=1",         /* uppercase key */
        "_x=1",            /* key must start with a letter or digit */
        "congo",           /* no '=' */
        "=1",              /* empty key */
        "congo=",          /* empty value */
        "congo=a=b",       /* '=' in the value */
        "congo=a\x01",     /* control character */
        "congo=\xc3\xa9",  /* non-ASCII */
        "congo=1,congo=2", /* one entry per key */
        "a=1 b=2",         /* space in the value is fine, but then '=' */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = sl_trace_state_clean(bad[i], strlen(bad[i]), out, sizeof(out));
        if (n != 0 || *out)
            fail_msg("kept invalid tracestate \"%s\" as \"%s\"", bad[i], out);
    }
    /* at most 32 members */
    char many[600] = "";
    for (int i = 0; i < 33; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sk%d=v", i ? "," : "", i);
    assert_int_equal(sl_trace_state_clean(many, strlen(many), out, sizeof(out)), 0);
    many[strlen(many) - strlen(",k32=v")] = '\0';
    assert_string_equal(clean(many, out), many);
    /* too long: members over 128 characters go first, then from the end */
    char big[2048], v200[201], v100[101];
    memset(v200, 'x', 200);
    v200[200] = '\0';
    memset(v100, 'y', 100);
    v100[100] = '\0';
    snprintf(big, sizeof(big), "a=%s,b=%s,c=%s,d=%s,e=%s,f=%s", v100, v200, v100, v100, v100, v100);
    clean(big, out);
    char want[1024];
    snprintf(want, sizeof(want), "a=%s,c=%s,d=%s,e=%s", v100, v100, v100, v100);
    assert_string_equal(out, want);
    assert_true(strlen(out) <= SL_TRACESTATE_MAX);
    /* a value over 256 characters is invalid; a member of the longest key and value (513
     * characters) is valid but over the limit, so it goes */
    char huge[600], k256[257];
    memset(v200, 'z', 200);
    snprintf(huge, sizeof(huge), "k=%s%.57s", v200, v200);
    assert_int_equal(sl_trace_state_clean(huge, strlen(huge), out, sizeof(out)), 0);
    memset(k256, 'k', 256);
    k256[256] = '\0';
    snprintf(huge, sizeof(huge), "%s=%s%.56s", k256, v200, v200);
    assert_int_equal(strlen(huge), 513);
    assert_int_equal(sl_trace_state_clean(huge, strlen(huge), out, sizeof(out)), 0);
    snprintf(huge, sizeof(huge), "a=1,%s=%s%.56s,b=2", k256, v200, v200);
    assert_string_equal(clean(huge, out), "a=1,b=2");
    /* a small buffer keeps nothing */
    assert_int_equal(sl_trace_state_clean("a=1", 3, out, 16), 0);
    assert_int_equal(sl_trace_state_clean(NULL, 0, out, sizeof(out)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid),
        cmocka_unit_test(test_parse_invalid),
        cmocka_unit_test(test_new_child_format),
        cmocka_unit_test(test_tracestate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
