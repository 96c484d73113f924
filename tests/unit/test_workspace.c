/* Unit tests for common/workspace.c: the RudderStack workspace config format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/workspace.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *s = malloc(*len + 1);
    assert_int_equal(fread(s, 1, *len, f), *len);
    s[*len] = '\0';
    fclose(f);
    return s;
}

static void test_example_config(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof(path), "%s/examples/workspaceConfig.json",
             getenv("SLUICE_TEST_SOURCE_DIR") ? getenv("SLUICE_TEST_SOURCE_DIR") : "..");
    size_t len;
    char *json = read_file(path, &len);
    sl_workspace_t *ws;
    char err[256];
    assert_int_equal(sl_workspace_parse(json, len, &ws, err, sizeof(err)), 0);
    const sl_source_t *s = sl_workspace_source_by_write_key(ws, "sluice-dev-key");
    assert_non_null(s);
    assert_string_equal(s->id, "src-dev-http");
    assert_true(s->enabled);
    assert_int_equal(s->ndestinations, 1);
    assert_string_equal(s->destinations[0]->def_name, "WEBHOOK");
    assert_ptr_equal(sl_workspace_destination_by_id(ws, "dst-dev-webhook"), s->destinations[0]);
    assert_null(sl_workspace_source_by_write_key(ws, "nope"));
    assert_int_equal(strlen(sl_workspace_version(ws)), 64);
    sl_workspace_t *again = sl_workspace_ref(ws);
    sl_workspace_unref(ws);
    assert_string_equal(sl_workspace_source_by_id(again, "src-dev-http")->write_key,
                        "sluice-dev-key");
    sl_workspace_unref(again);
    free(json);
}

static void expect_error(const char *json, const char *want)
{
    sl_workspace_t *ws = NULL;
    char err[256] = "";
    assert_int_not_equal(sl_workspace_parse(json, strlen(json), &ws, err, sizeof(err)), 0);
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not contain \"%s\"", err, want);
}

static void test_errors_name_the_problem(void **state)
{
    (void)state;
    expect_error("{\"sources\": [\n{\"id\": ", "line 2");
    expect_error("[]", "not a JSON object");
    expect_error("{}", "\"sources\" is missing");
    expect_error("{\"sources\":[{\"id\":\"a\"}]}", "sources[0].writeKey is missing");
    expect_error(
        "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\"},{\"id\":\"b\",\"writeKey\":\"k\"}]}",
        "writeKey \"k\" is used by sources[0] and sources[1]");
    expect_error("{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\",\"enabled\":\"yes\"}]}",
                 "sources[0].enabled is not a boolean");
    expect_error(
        "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\",\"destinations\":[{\"id\":\"d\"}]}]}",
        "destinationDefinition.name is missing");
}

static void test_defaults(void **state)
{
    (void)state;
    const char *json = "{\"sources\":[{\"id\":\"a\",\"writeKey\":\"k\",\"destinations\":[{\"id\":"
                       "\"d\",\"destinationDefinition\":{\"name\":\"WEBHOOK\"}}]}]}";
    sl_workspace_t *ws;
    char err[256];
    assert_int_equal(sl_workspace_parse(json, strlen(json), &ws, err, sizeof(err)), 0);
    const sl_source_t *s = sl_workspace_source_by_write_key(ws, "k");
    assert_true(s->enabled);
    assert_true(s->destinations[0]->enabled);
    assert_non_null(s->destinations[0]->config);
    assert_non_null(s->destinations[0]->def_config);
    sl_workspace_unref(ws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_config),
        cmocka_unit_test(test_errors_name_the_problem),
        cmocka_unit_test(test_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
