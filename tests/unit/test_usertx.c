/* Unit tests of user transformations (processor/usertx.c, processor/jsworker.c): RudderStack's
 * contract, and that user code can't crash or stall the caller. The workers are the real
 * `sluice js-worker`, found through SLUICE_BIN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/timeutil.h"
#include "processor/usertx.h"

#define TIME_LIMIT_MS 2000
#define MEMORY_LIMIT  (32u * 1024 * 1024)

static pr_usertx_pool_t *pool;

static int setup(void **state)
{
    (void)state;
    const char *bin = getenv("SLUICE_BIN");
    if (!bin || !*bin) {
        fprintf(stderr, "SLUICE_BIN is not set: it names the sluice binary for the workers\n");
        return -1;
    }
    const char *argv[] = {bin, "js-worker", NULL};
    pr_usertx_opts_t o = {.workers = 2,
                          .time_limit_ms = TIME_LIMIT_MS,
                          .memory_limit_bytes = MEMORY_LIMIT,
                          .worker_argv = argv};
    char err[256];
    pool = pr_usertx_pool_new(&o, err, sizeof(err));
    if (!pool)
        fprintf(stderr, "pr_usertx_pool_new: %s\n", err);
    return pool ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    pr_usertx_pool_free(pool);
    return 0;
}

/* Runs code over n events (with metadata md, may be NULL) and checks the call succeeded. */
static void run(const char *vid, const char *code, const char *const *ev, const char *const *md,
                size_t n, pr_usertx_result_t *out)
{
    assert_int_equal(pr_usertx_run(pool, vid, code, ev, md, n, out), 0);
}

static void assert_events(const pr_usertx_result_t *r, size_t n, const char *json)
{
    if (r->kind != PR_USERTX_EVENTS)
        fail_msg("expected events %s, got kind %d error %s", json, r->kind,
                 r->error ? r->error : "-");
    assert_int_equal(r->n_events, n);
    assert_string_equal(r->events_json, json);
}

static void assert_error(const pr_usertx_result_t *r, const char *error)
{
    if (r->kind != PR_USERTX_ERROR)
        fail_msg("expected error \"%s\", got kind %d events %s", error, r->kind,
                 r->events_json ? r->events_json : "-");
    assert_string_equal(r->error, error);
}

static void test_event_one_drop_many(void **state)
{
    (void)state;
    const char *code = "function transformEvent(event, metadata) {\n"
                       "  if (event.event === 'drop') return null;\n"
                       "  if (event.event === 'undef') return;\n"
                       "  if (event.event === 'empty') return [];\n"
                       "  if (event.event === 'many') return [{n: 1}, {n: 2}, {n: 3}];\n"
                       "  event.properties = {seen: true};\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"event\":\"one\"}", "{\"event\":\"drop\"}", "{\"event\":\"undef\"}",
                        "{\"event\":\"empty\"}", "{\"event\":\"many\"}"};
    pr_usertx_result_t out[5];
    run("v-basic", code, ev, NULL, 5, out);
    assert_events(&out[0], 1, "[{\"event\":\"one\",\"properties\":{\"seen\":true}}]");
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(out[i].kind, PR_USERTX_DROP);
        assert_null(out[i].events_json);
        assert_null(out[i].error);
    }
    assert_events(&out[4], 3, "[{\"n\":1},{\"n\":2},{\"n\":3}]");
    pr_usertx_results_free(out, 5);
}

static void test_batch(void **state)
{
    (void)state;
    /* Outputs go to their own input (object kept), to the input with their messageId, or to
     * the first input. */
    const char *code = "function transformBatch(events, metadata) {\n"
                       "  var out = [];\n"
                       "  events[2].seen = true;\n"
                       "  out.push(events[2]);\n"
                       "  out.push({messageId: 'm1', made: 1});\n"
                       "  out.push({made: 2});\n"
                       "  return out;\n"
                       "}\n";
    const char *ev[] = {"{\"messageId\":\"m1\"}", "{\"messageId\":\"m2\"}",
                        "{\"messageId\":\"m3\"}"};
    pr_usertx_result_t out[3];
    run("v-batch", code, ev, NULL, 3, out);
    assert_events(&out[0], 2, "[{\"messageId\":\"m1\",\"made\":1},{\"made\":2}]");
    assert_int_equal(out[1].kind, PR_USERTX_DROP);
    assert_events(&out[2], 1, "[{\"messageId\":\"m3\",\"seen\":true}]");
    pr_usertx_results_free(out, 3);

    const char *bad = "function transformBatch(events) { return events.length; }";
    run("v-batch-bad", bad, ev, NULL, 3, out);
    for (int i = 0; i < 3; i++)
        assert_error(&out[i],
                     "transformBatch returned a number; it must return an array of events");
    pr_usertx_results_free(out, 3);

    const char *thrower = "function transformBatch(events) {\n  throw new Error('nope');\n}";
    run("v-batch-throw", thrower, ev, NULL, 3, out);
    for (int i = 0; i < 3; i++)
        assert_error(&out[i], "Error: nope (line 2)");
    pr_usertx_results_free(out, 3);
}

static const char *const md_fields =
    "'sourceId','destinationId','destinationType','workspaceId','messageId','rudderId',"
    "'receivedAt','eventName','eventType'";

static void test_metadata(void **state)
{
    (void)state;
    char code[1024];
    snprintf(code, sizeof(code),
             "var F = [%s];\n"
             "function transformEvent(event, metadata) {\n"
             "  var m = metadata(event), copy = {};\n"
             "  for (var i = 0; i < F.length; i++) copy[F[i]] = m[F[i]];\n"
             "  return {md: copy, other: metadata({}).messageId};\n"
             "}\n",
             md_fields);
    const char *ev[] = {"{\"messageId\":\"m1\"}", "{\"messageId\":\"m2\"}"};
    const char *md[] = {"{\"sourceId\":\"s1\",\"destinationId\":\"d1\",\"destinationType\":"
                        "\"WEBHOOK\",\"workspaceId\":\"w1\",\"messageId\":\"m1\",\"rudderId\":"
                        "\"r1\",\"receivedAt\":\"2026-01-01T00:00:00.000Z\",\"eventName\":"
                        "\"Signed Up\",\"eventType\":\"track\"}",
                        "{\"messageId\":\"m2\",\"eventType\":\"identify\"}"};
    pr_usertx_result_t out[2];
    run("v-md", code, ev, md, 2, out);
    assert_events(&out[0], 1,
                  "[{\"md\":{\"sourceId\":\"s1\",\"destinationId\":\"d1\",\"destinationType\":"
                  "\"WEBHOOK\",\"workspaceId\":\"w1\",\"messageId\":\"m1\",\"rudderId\":\"r1\","
                  "\"receivedAt\":\"2026-01-01T00:00:00.000Z\",\"eventName\":\"Signed Up\","
                  "\"eventType\":\"track\"},\"other\":\"m1\"}]");
    assert_events(&out[1], 1,
                  "[{\"md\":{\"messageId\":\"m2\",\"eventType\":\"identify\"},\"other\":\"m2\"}]");
    pr_usertx_results_free(out, 2);

    /* transformBatch: by the event object, else by messageId; none: {} */
    const char *batch = "function transformBatch(events, metadata) {\n"
                        "  return [{a: metadata(events[1]).eventType,\n"
                        "           b: metadata({messageId: 'm1'}).eventName,\n"
                        "           c: JSON.stringify(metadata({messageId: 'zz'}))}];\n"
                        "}\n";
    run("v-md-batch", batch, ev, md, 2, out);
    assert_events(&out[0], 1, "[{\"a\":\"identify\",\"b\":\"Signed Up\",\"c\":\"{}\"}]");
    assert_int_equal(out[1].kind, PR_USERTX_DROP);
    pr_usertx_results_free(out, 2);

    /* No metadata given: {} */
    run("v-md", code, ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"md\":{}}]"); /* undefined fields: not in JSON */
    pr_usertx_results_free(out, 1);
}

static void test_log(void **state)
{
    (void)state;
    char path[] = "/tmp/sluice-usertx-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    const char *code = "function transformEvent(event) {\n"
                       "  log('hello', event.event, {a: 1}, 3);\n"
                       "  console.log('via console');\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"event\":\"e1\"}"};
    pr_usertx_result_t out[1];
    run("v-log", code, ev, NULL, 1, out);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    pr_usertx_results_free(out, 1);
    char buf[4096] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(path);
    assert_true(n > 0);
    if (!strstr(buf, "transformation log versionId=v-log: hello e1 {\"a\":1} 3") ||
        !strstr(buf, "transformation log versionId=v-log: via console"))
        fail_msg("log lines missing from: %s", buf);
}

static void test_throw(void **state)
{
    (void)state;
    const char *code = "function transformEvent(event) {\n"
                       "  var nothing;\n"
                       "  if (event.event === 'bad') return nothing.x;\n"
                       "  if (event.event === 'err') throw new Error('custom failure');\n"
                       "  if (event.event === 'str') throw 'just a string';\n"
                       "  if (event.event === 'json') return JSON.parse('{x');\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"event\":\"ok1\"}",
                        "{\"event\":\"bad\"}",
                        "{\"event\":\"err\"}",
                        "{\"event\":\"str\"}",
                        "{\"event\":\"json\"}",
                        "{\"event\":\"ok2\"}",
                        "{not json"};
    pr_usertx_result_t out[7];
    run("v-throw", code, ev, NULL, 7, out);
    assert_events(&out[0], 1, "[{\"event\":\"ok1\"}]");
    assert_error(&out[1], "TypeError: cannot read property 'x' of undefined (line 3)");
    assert_error(&out[2], "Error: custom failure (line 4)");
    assert_error(&out[3], "just a string");
    assert_error(&out[4], "SyntaxError: invalid json (at offset 2) (line 6)");
    assert_events(&out[5], 1, "[{\"event\":\"ok2\"}]");
    assert_int_equal(out[6].kind, PR_USERTX_ERROR);
    assert_non_null(strstr(out[6].error, "SyntaxError"));
    pr_usertx_results_free(out, 7);
}

static void test_bad_return(void **state)
{
    (void)state;
    const char *code = "function transformEvent(event) {\n"
                       "  if (event.t === 'n') return 42;\n"
                       "  if (event.t === 's') return 'text';\n"
                       "  if (event.t === 'b') return true;\n"
                       "  if (event.t === 'a') return [{}, 7];\n"
                       "  if (event.t === 'f') return function () {};\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"t\":\"n\"}", "{\"t\":\"s\"}", "{\"t\":\"b\"}",
                        "{\"t\":\"a\"}", "{\"t\":\"f\"}", "{\"t\":\"ok\"}"};
    pr_usertx_result_t out[6];
    run("v-ret", code, ev, NULL, 6, out);
    assert_error(&out[0], "transformEvent returned a number; it must return an event object, "
                          "an array of events, null or undefined");
    assert_error(&out[1], "transformEvent returned a string; it must return an event object, "
                          "an array of events, null or undefined");
    assert_error(&out[2], "transformEvent returned a boolean; it must return an event object, "
                          "an array of events, null or undefined");
    assert_error(&out[3], "transformEvent returned an array holding a number at index 1; each "
                          "element must be an event object");
    assert_error(&out[4], "transformEvent returned a function; it must return an event object, "
                          "an array of events, null or undefined");
    assert_events(&out[5], 1, "[{\"t\":\"ok\"}]");
    pr_usertx_results_free(out, 6);
}

static void test_syntax_error(void **state)
{
    (void)state;
    const char *ev[] = {"{\"event\":\"a\"}", "{\"event\":\"b\"}"};
    pr_usertx_result_t out[2];
    run("v-syntax", "function transformEvent(event) {\n  return event +;\n}\n", ev, NULL, 2, out);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(out[i].kind, PR_USERTX_ERROR);
        if (!strstr(out[i].error, "SyntaxError") || !strstr(out[i].error, "(line 2"))
            fail_msg("unexpected compile error: %s", out[i].error);
    }
    pr_usertx_results_free(out, 2);

    run("v-toplevel", "var x = undefinedThing.y;\nfunction transformEvent(e) { return e; }", ev,
        NULL, 2, out);
    for (int i = 0; i < 2; i++)
        assert_error(&out[i], "ReferenceError: identifier 'undefinedThing' undefined (line 1)");
    pr_usertx_results_free(out, 2);

    run("v-none", "var transformEvent = 3;", ev, NULL, 1, out);
    assert_error(&out[0], "the transformation defines neither transformEvent(event, metadata) "
                          "nor transformBatch(events, metadata)");
    pr_usertx_results_free(out, 1);
}

static void test_no_escape(void **state)
{
    (void)state;
    const char *code =
        "function transformEvent(event) {\n"
        "  if (event.t === 'require') return require('fs').readFileSync('/etc/passwd');\n"
        "  if (event.t === 'process') return process.env;\n"
        "  if (event.t === 'duktape') return Duktape.env;\n"
        "  if (event.t === 'print') return print('to stdout');\n"
        "  return {g: typeof fetch + typeof XMLHttpRequest + typeof setTimeout};\n"
        "}\n";
    const char *ev[] = {"{\"t\":\"require\"}", "{\"t\":\"process\"}", "{\"t\":\"duktape\"}",
                        "{\"t\":\"print\"}", "{\"t\":\"types\"}"};
    pr_usertx_result_t out[5];
    run("v-escape", code, ev, NULL, 5, out);
    assert_error(&out[0], "ReferenceError: identifier 'require' undefined (line 2)");
    assert_error(&out[1], "ReferenceError: identifier 'process' undefined (line 3)");
    assert_error(&out[2], "ReferenceError: identifier 'Duktape' undefined (line 4)");
    assert_error(&out[3], "ReferenceError: identifier 'print' undefined (line 5)");
    assert_events(&out[4], 1, "[{\"g\":\"undefinedundefinedundefined\"}]");
    pr_usertx_results_free(out, 5);
}

/* Library methods Duktape lacks come from the prelude, and stay out of for-in. */
static void test_prelude(void **state)
{
    (void)state;
    const char *code =
        "function transformEvent(e) {\n"
        "  var keys = [];\n"
        "  for (var k in [1]) keys.push(k);\n"
        "  return {inc: [1, NaN].includes(NaN), find: [1, 5, 7].find(function (x) {\n"
        "    return x > 4; }), idx: [1, 5].findIndex(function (x) { return x > 9; }),\n"
        "    from: Array.from('ab'), ent: Object.entries({a: 1}),\n"
        "    vals: Object.values({a: 1, b: 2}), fe: Object.fromEntries([['k', 'v']]),\n"
        "    ps: 'abc'.padStart(10, 'foo'), pe: '5'.padEnd(3, '0'), keys: keys};\n"
        "}\n";
    const char *ev[] = {"{}"};
    pr_usertx_result_t out[1];
    run("v-prelude", code, ev, NULL, 1, out);
    assert_events(&out[0], 1,
                  "[{\"inc\":true,\"find\":5,\"idx\":-1,\"from\":[\"a\",\"b\"],\"ent\":[[\"a\",1]],"
                  "\"vals\":[1,2],\"fe\":{\"k\":\"v\"},\"ps\":\"foofoofabc\",\"pe\":\"500\","
                  "\"keys\":[\"0\"]}]");
    pr_usertx_results_free(out, 1);
}

/* Duktape's strings are CESU-8 inside; what comes out is UTF-8, with JavaScript's lengths. */
static void test_unicode(void **state)
{
    (void)state;
    const char *code = "function transformEvent(e) {\n"
                       "  e.len = e.s.length;\n"
                       "  e.made = '\\ud83d\\ude00';\n"
                       "  e.lone = '\\ud800';\n"
                       "  e.hangul = '\\ud55c';\n"
                       "  return e;\n"
                       "}\n";
    const char *ev[] = {"{\"s\":\"\xf0\x9f\x98\x80 \xc3\xa9 \\ud83d\\ude01\"}"};
    pr_usertx_result_t out[1];
    run("v-utf8", code, ev, NULL, 1, out);
    assert_events(
        &out[0], 1,
        "[{\"s\":\"\xf0\x9f\x98\x80 \xc3\xa9 \xf0\x9f\x98\x81\",\"len\":7,"
        "\"made\":\"\xf0\x9f\x98\x80\",\"lone\":\"\\ud800\",\"hangul\":\"\xed\x95\x9c\"}]");
    pr_usertx_results_free(out, 1);
}

static void test_timeout(void **state)
{
    (void)state;
    const char *code = "function transformEvent(event) {\n"
                       "  if (event.event === 'loop') while (true) {}\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"event\":\"ok\"}", "{\"event\":\"loop\"}", "{\"event\":\"ok\"}"};
    pr_usertx_result_t out[3];
    /* Twice: more than the pool's two workers are killed and replaced. */
    for (int round = 0; round < 3; round++) {
        int64_t t0 = sl_time_mono_ms();
        run("v-loop", code, ev, NULL, 3, out);
        int64_t took = sl_time_mono_ms() - t0;
        if (took < TIME_LIMIT_MS - 50 || took > TIME_LIMIT_MS + 1000)
            fail_msg("timed out after %lld ms, limit %d", (long long)took, TIME_LIMIT_MS);
        for (int i = 0; i < 3; i++)
            assert_error(&out[i], "transformation timed out after 2000 ms");
        pr_usertx_results_free(out, 3);
    }
    /* The pool works afterwards. */
    run("v-loop", code, ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"event\":\"ok\"}]");
    pr_usertx_results_free(out, 1);
    /* An endless loop at the top level is caught the same way. */
    run("v-loop-top", "for (;;) {}", ev, NULL, 1, out);
    assert_error(&out[0], "transformation timed out after 2000 ms");
    pr_usertx_results_free(out, 1);
}

static void test_memory(void **state)
{
    (void)state;
    /* Objects that stay reachable, and a string that doubles: past the cap the allocation
     * fails and the event fails with it; the other events of the call go on. */
    const char *code = "function transformEvent(event) {\n"
                       "  var a = [], s = 'x';\n"
                       "  if (event.event === 'objects') while (true) a.push({n: a.length});\n"
                       "  if (event.event === 'string') while (true) s += s;\n"
                       "  return event;\n"
                       "}\n";
    const char *ev[] = {"{\"event\":\"ok1\"}", "{\"event\":\"objects\"}", "{\"event\":\"ok2\"}",
                        "{\"event\":\"string\"}", "{\"event\":\"ok3\"}"};
    pr_usertx_result_t out[5];
    run("v-bomb", code, ev, NULL, 5, out);
    assert_events(&out[0], 1, "[{\"event\":\"ok1\"}]");
    assert_error(&out[1], "memory limit exceeded");
    assert_events(&out[2], 1, "[{\"event\":\"ok2\"}]");
    assert_error(&out[3], "memory limit exceeded");
    assert_events(&out[4], 1, "[{\"event\":\"ok3\"}]");
    pr_usertx_results_free(out, 5);

    /* A bomb that keeps what it took in a global: the heap is dropped and loaded afresh. */
    const char *global =
        "var keep = [];\n"
        "function transformEvent(event) {\n"
        "  if (event.event === 'objects') while (true) keep.push({n: keep.length});\n"
        "  return event;\n"
        "}\n";
    for (int round = 0; round < 2; round++) {
        run("v-bomb-global", global, ev, NULL, 3, out);
        assert_events(&out[0], 1, "[{\"event\":\"ok1\"}]");
        assert_error(&out[1], "memory limit exceeded");
        assert_events(&out[2], 1, "[{\"event\":\"ok2\"}]");
        pr_usertx_results_free(out, 3);
    }

    /* At the top level: every event fails, and the pool goes on. */
    run("v-bomb-top",
        "var s = 'x'; while (true) s += s;\n"
        "function transformEvent(e) { return e; }",
        ev, NULL, 2, out);
    assert_error(&out[0], "memory limit exceeded");
    assert_error(&out[1], "memory limit exceeded");
    pr_usertx_results_free(out, 2);

    /* The classic bomb: Duktape interns strings, so the identical 1 MB strings are one string
     * and this never grows; each join takes ~0.25 s, so it ends at the time limit instead. */
    const char *join = "function transformEvent(e) {\n"
                       "  var a = []; while (true) a.push(new Array(1e6).join('x'));\n"
                       "}\n";
    run("v-bomb-join", join, ev, NULL, 1, out);
    assert_int_equal(out[0].kind, PR_USERTX_ERROR);
    if (strcmp(out[0].error, "memory limit exceeded") != 0 &&
        strcmp(out[0].error, "transformation timed out after 2000 ms") != 0)
        fail_msg("unexpected error %s", out[0].error);
    pr_usertx_results_free(out, 1);

    run("v-basic2", "function transformEvent(e) { return e; }", ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"event\":\"ok1\"}]");
    pr_usertx_results_free(out, 1);
}

static void test_state_and_versions(void **state)
{
    (void)state;
    /* A transformation keeps its globals between calls on a worker; a new code for the same
     * versionId is a new heap. */
    const char *v1 = "function transformEvent(e) { return {v: 1}; }";
    const char *v2 = "function transformEvent(e) { return {v: 2}; }";
    const char *ev[] = {"{}"};
    pr_usertx_result_t out[1];
    run("v-same", v1, ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"v\":1}]");
    pr_usertx_results_free(out, 1);
    run("v-same", v2, ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"v\":2}]");
    pr_usertx_results_free(out, 1);
    /* No events: nothing to do. */
    assert_int_equal(pr_usertx_run(pool, "v-same", v1, ev, NULL, 0, out), 0);
    assert_int_equal(pr_usertx_run(pool, NULL, v1, ev, NULL, 1, out), SL_ERR_INVALID);
}

typedef struct thread_arg {
    int id;
    int failures;
} thread_arg_t;

static void *thread_main(void *p)
{
    thread_arg_t *a = p;
    const char *code = "function transformEvent(e, md) { e.n = e.n * 2; return e; }";
    for (int call = 0; call < 30; call++) {
        char bufs[50][48];
        const char *ev[50];
        for (int i = 0; i < 50; i++) {
            snprintf(bufs[i], sizeof(bufs[i]), "{\"n\":%d}", a->id * 100000 + call * 100 + i);
            ev[i] = bufs[i];
        }
        pr_usertx_result_t out[50];
        if (pr_usertx_run(pool, "v-threads", code, ev, NULL, 50, out) != 0) {
            a->failures++;
            continue;
        }
        for (int i = 0; i < 50; i++) {
            char want[64];
            snprintf(want, sizeof(want), "[{\"n\":%d}]", 2 * (a->id * 100000 + call * 100 + i));
            if (out[i].kind != PR_USERTX_EVENTS || strcmp(out[i].events_json, want) != 0)
                a->failures++;
        }
        pr_usertx_results_free(out, 50);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    thread_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg_t){i + 1, 0};
        pthread_create(&t[i], NULL, thread_main, &args[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
}

/* The pids of this process's children (from /proc), at most max. */
static size_t children(pid_t *pids, size_t max)
{
    size_t n = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *close_paren = strrchr(buf, ')');
        int ppid = 0;
        if (close_paren && sscanf(close_paren + 1, " %*c %d", &ppid) == 1 && ppid == getpid())
            pids[n++] = (pid_t)atoi(e->d_name);
    }
    if (d)
        closedir(d);
    return n;
}

/* A worker that dies mid-call is reported, and replaced for the next call. */
static void test_worker_crash(void **state)
{
    (void)state;
    const char *argv[] = {"/bin/sh", "-c",
                          "printf '\\001\\000\\000\\000Y'; head -c 1 >/dev/null; kill -SEGV $$",
                          "fake-worker", NULL};
    pr_usertx_opts_t o = {.workers = 1, .time_limit_ms = 2000, .worker_argv = argv};
    char err[256];
    pr_usertx_pool_t *p = pr_usertx_pool_new(&o, err, sizeof(err));
    assert_non_null(p);
    const char *ev[] = {"{}", "{}"};
    pr_usertx_result_t out[2];
    for (int round = 0; round < 2; round++) {
        assert_int_equal(pr_usertx_run(p, "v-crash", "function transformEvent(e) { return e; }", ev,
                                       NULL, 2, out),
                         0);
        for (int i = 0; i < 2; i++)
            assert_error(&out[i], "transformation worker was killed by signal 11 (Segmentation "
                                  "fault) while running the transformation");
        pr_usertx_results_free(out, 2);
    }
    pr_usertx_pool_free(p);

    /* A worker that died while idle is replaced before the call, which then succeeds. */
    const char *argv2[] = {getenv("SLUICE_BIN"), "js-worker", NULL};
    o.worker_argv = argv2;
    pid_t before[64], after[64];
    size_t nb = children(before, 64);
    p = pr_usertx_pool_new(&o, err, sizeof(err));
    assert_non_null(p);
    size_t na = children(after, 64);
    pid_t worker = 0;
    for (size_t i = 0; i < na; i++) {
        bool old = false;
        for (size_t j = 0; j < nb; j++)
            old = old || after[i] == before[j];
        if (!old)
            worker = after[i];
    }
    assert_true(worker > 0);
    assert_int_equal(kill(worker, SIGKILL), 0);
    usleep(100 * 1000);
    assert_int_equal(
        pr_usertx_run(p, "v-idle", "function transformEvent(e) { return e; }", ev, NULL, 1, out),
        0);
    assert_events(&out[0], 1, "[{}]");
    pr_usertx_results_free(out, 1);
    pr_usertx_pool_free(p);

    /* A command that is not a worker fails at start. */
    const char *bad[] = {"/bin/false", NULL};
    o.worker_argv = bad;
    assert_null(pr_usertx_pool_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "did not start"));
    const char *missing[] = {"/nonexistent/sluice", "js-worker", NULL};
    o.worker_argv = missing;
    assert_null(pr_usertx_pool_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "could not start transformation worker"));
}

static void test_load_code(void **state)
{
    (void)state;
    char dir[] = "/tmp/sluice-usertx-code-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/v-file.js", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("function transformEvent(e) { e.fromFile = true; return e; }\n", f);
    fclose(f);
    char *code = NULL, err[256];
    assert_int_equal(pr_usertx_load_code(dir, "v-file", &code, err, sizeof(err)), 0);
    const char *ev[] = {"{}"};
    pr_usertx_result_t out[1];
    run("v-file", code, ev, NULL, 1, out);
    assert_events(&out[0], 1, "[{\"fromFile\":true}]");
    pr_usertx_results_free(out, 1);
    free(code);
    assert_int_equal(pr_usertx_load_code(dir, "v-missing", &code, err, sizeof(err)),
                     SL_ERR_NOTFOUND);
    assert_null(code);
    assert_int_equal(pr_usertx_load_code(dir, "../etc/passwd", &code, err, sizeof(err)),
                     SL_ERR_INVALID);
    assert_int_equal(pr_usertx_load_code(dir, ".hidden", &code, err, sizeof(err)), SL_ERR_INVALID);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_one_drop_many),
        cmocka_unit_test(test_batch),
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_log),
        cmocka_unit_test(test_throw),
        cmocka_unit_test(test_bad_return),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_no_escape),
        cmocka_unit_test(test_prelude),
        cmocka_unit_test(test_unicode),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_state_and_versions),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_worker_crash),
        cmocka_unit_test(test_load_code),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
