/* Unit tests for warehouse/schema.c: the rows, tables and columns events become, the naming
 * rules, type inference and conversions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "warehouse/schema.h"

/* ---- helpers ---- */

static void rows_ok(const char *json, wh_rows_t *rows)
{
    char err[256] = "";
    int rc = wh_event_rows(json, strlen(json), "2024-05-06T07:08:09.010Z", rows, err, sizeof(err));
    if (rc != 0)
        fail_msg("wh_event_rows: %s", err);
}

static const wh_row_t *row_of(const wh_rows_t *rows, const char *table)
{
    for (size_t i = 0; i < rows->n; i++)
        if (strcmp(rows->rows[i].table, table) == 0)
            return &rows->rows[i];
    fail_msg("no row for table %s", table);
    return NULL;
}

static const wh_col_t *col_of(const wh_row_t *r, const char *name)
{
    for (size_t i = 0; i < r->ncols; i++)
        if (strcmp(r->cols[i].name, name) == 0)
            return &r->cols[i];
    return NULL;
}

static void check_col(const wh_row_t *r, const char *name, wh_type_t t, const char *value)
{
    const wh_col_t *c = col_of(r, name);
    if (!c)
        fail_msg("table %s has no column %s", r->table, name);
    if (c->type != t)
        fail_msg("%s.%s is %s, not %s", r->table, name, wh_type_name(c->type), wh_type_name(t));
    assert_non_null(c->value);
    assert_string_equal(c->value, value);
}

static void check_no_col(const wh_row_t *r, const char *name)
{
    if (col_of(r, name))
        fail_msg("table %s has a column %s", r->table, name);
}

static const char *ident(const char *name)
{
    static char out[WH_NAME_MAX + 1];
    wh_identifier(name, out, sizeof(out));
    return out;
}

static const char *event_table(const char *name)
{
    static char out[WH_NAME_MAX + 1];
    wh_event_table(name, out, sizeof(out));
    return out;
}

/* A harmless identifier: [a-z_][a-z0-9_]*, at most 63 bytes. */
static void check_safe_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > WH_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
        fail_msg("unsafe identifier \"%s\"", s);
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            fail_msg("unsafe identifier \"%s\"", s);
}

static void check_all_names_safe(const wh_rows_t *rows)
{
    for (size_t i = 0; i < rows->n; i++) {
        check_safe_name(rows->rows[i].table);
        for (size_t j = 0; j < rows->rows[i].ncols; j++)
            check_safe_name(rows->rows[i].cols[j].name);
    }
}

/* ---- message types ---- */

static const char *track_event =
    "{\"type\":\"track\",\"event\":\"Product Added\",\"messageId\":\"m1\",\"anonymousId\":\"a1\","
    "\"userId\":\"u1\",\"channel\":\"web\",\"sentAt\":\"2024-05-06T07:08:00.000Z\","
    "\"timestamp\":\"2024-05-06T09:08:01+02:00\",\"originalTimestamp\":\"2024-05-06T07:07:59Z\","
    "\"receivedAt\":\"2024-05-06T07:08:02.500Z\",\"context\":{\"library\":{\"name\":\"web\","
    "\"version\":\"1.0\"},\"ip\":\"1.2.3.4\",\"traits\":{\"email\":\"a@b.c\"}},"
    "\"properties\":{\"price\":9.99,\"qty\":2,\"sku\":\"A1\",\"onSale\":true,\"tags\":[\"a\","
    "\"b\"],\"nested\":{\"size\":{\"w\":1}},\"id\":\"evil\",\"user_id\":\"x\",\"uuid_ts\":\"x\","
    "\"emptyStr\":\"\",\"nothing\":null,\"emptyArr\":[],\"emptyObj\":{}}}";

static void test_track(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok(track_event, &rows);
    assert_int_equal(rows.n, 2);

    const wh_row_t *t = row_of(&rows, "tracks");
    check_col(t, "id", WH_STRING, "m1");
    check_col(t, "anonymous_id", WH_STRING, "a1");
    check_col(t, "user_id", WH_STRING, "u1");
    check_col(t, "channel", WH_STRING, "web");
    check_col(t, "event_text", WH_STRING, "Product Added");
    check_col(t, "event", WH_STRING, "product_added");
    check_col(t, "sent_at", WH_DATETIME, "2024-05-06T07:08:00.000Z");
    check_col(t, "timestamp", WH_DATETIME, "2024-05-06T07:08:01.000Z");
    check_col(t, "original_timestamp", WH_DATETIME, "2024-05-06T07:07:59.000Z");
    check_col(t, "received_at", WH_DATETIME, "2024-05-06T07:08:02.500Z");
    check_col(t, "context_library_name", WH_STRING, "web");
    check_col(t, "context_library_version", WH_STRING, "1.0");
    check_col(t, "context_traits_email", WH_STRING, "a@b.c");
    check_col(t, "context_ip", WH_STRING, "1.2.3.4");
    check_col(t, "context_passed_ip", WH_STRING, "1.2.3.4");
    check_no_col(t, "context_request_ip");
    assert_int_equal(col_of(t, "uuid_ts")->type, WH_DATETIME);
    check_no_col(t, "price"); /* properties only in the event's own table */

    const wh_row_t *e = row_of(&rows, "product_added");
    check_col(e, "price", WH_FLOAT, "9.99");
    check_col(e, "qty", WH_INT, "2");
    check_col(e, "sku", WH_STRING, "A1");
    check_col(e, "on_sale", WH_BOOL, "true");
    check_col(e, "tags", WH_STRING, "[\"a\",\"b\"]");
    check_col(e, "nested_size_w", WH_INT, "1");
    check_col(e, "id", WH_STRING, "m1");      /* a property can't replace a built-in column */
    check_col(e, "user_id", WH_STRING, "u1"); /* ... */
    assert_int_equal(col_of(e, "uuid_ts")->type, WH_DATETIME);
    check_col(e, "event", WH_STRING, "product_added");
    check_col(e, "context_library_name", WH_STRING, "web");
    check_col(e, "timestamp", WH_DATETIME, "2024-05-06T07:08:01.000Z");
    check_no_col(e, "empty_str");
    check_no_col(e, "nothing");
    check_no_col(e, "empty_arr");
    check_no_col(e, "empty_obj");
    check_all_names_safe(&rows);
    wh_rows_free(&rows);
}

static void test_track_without_event_table(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    /* no name, and a name with no ASCII letter: tracks only */
    rows_ok("{\"type\":\"track\",\"messageId\":\"m\",\"properties\":{\"a\":1}}", &rows);
    assert_int_equal(rows.n, 1);
    check_col(row_of(&rows, "tracks"), "event", WH_STRING, "");
    check_no_col(row_of(&rows, "tracks"), "event_text");
    rows_ok("{\"type\":\"TRACK\",\"event\":\"\xe6\x97\xa5\xe6\x9c\xac\",\"messageId\":\"m\"}",
            &rows);
    assert_int_equal(rows.n, 2);
    assert_string_equal(rows.rows[1].table, "tracks");
    check_col(&rows.rows[1], "event_text", WH_STRING, "\xe6\x97\xa5\xe6\x9c\xac");
    /* context, properties of the wrong shape are ignored */
    rows_ok("{\"type\":\"track\",\"event\":\"e\",\"context\":[1],\"properties\":\"x\"}", &rows);
    assert_int_equal(rows.n, 4);
    assert_string_equal(rows.rows[3].table, "e");
    wh_rows_free(&rows);
    assert_int_equal(rows.n, 0);
    assert_null(rows.rows);
}

static void test_identify(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"identify\",\"messageId\":\"m2\",\"anonymousId\":\"a2\",\"userId\":\"u2\","
            "\"sentAt\":\"2024-05-06T07:08:00Z\",\"timestamp\":\"not a time\","
            "\"request_ip\":\"5.6.7.8\",\"traits\":{\"email\":\"x@y.z\",\"firstName\":\"Ann\","
            "\"age\":30,\"userId\":\"t\",\"id\":\"t\",\"address\":{\"city\":\"Oslo\"}},"
            "\"context\":{\"traits\":{\"plan\":\"pro\"}}}",
            &rows);
    assert_int_equal(rows.n, 2);
    const wh_row_t *i = row_of(&rows, "identifies");
    check_col(i, "id", WH_STRING, "m2");
    check_col(i, "user_id", WH_STRING, "u2");
    check_col(i, "anonymous_id", WH_STRING, "a2");
    check_col(i, "email", WH_STRING, "x@y.z");
    check_col(i, "first_name", WH_STRING, "Ann");
    check_col(i, "age", WH_INT, "30");
    check_col(i, "address_city", WH_STRING, "Oslo");
    check_col(i, "context_traits_plan", WH_STRING, "pro");
    check_col(i, "context_ip", WH_STRING, "5.6.7.8"); /* no context.ip: request_ip */
    check_col(i, "context_request_ip", WH_STRING, "5.6.7.8");
    check_col(i, "sent_at", WH_DATETIME, "2024-05-06T07:08:00.000Z");
    check_col(i, "timestamp", WH_STRING, "not a time");
    check_col(i, "received_at", WH_DATETIME, "2024-05-06T07:08:09.010Z"); /* the envelope's */
    check_no_col(i, "_user_id");
    check_no_col(i, "event");

    const wh_row_t *u = row_of(&rows, "users");
    check_col(u, "id", WH_STRING, "u2");
    check_col(u, "email", WH_STRING, "x@y.z");
    check_col(u, "first_name", WH_STRING, "Ann");
    check_col(u, "age", WH_INT, "30");
    check_col(u, "context_traits_plan", WH_STRING, "pro");
    check_col(u, "received_at", WH_DATETIME, "2024-05-06T07:08:09.010Z");
    check_col(u, "sent_at", WH_DATETIME, "2024-05-06T07:08:00.000Z");
    check_col(u, "context_ip", WH_STRING, "5.6.7.8");
    assert_int_equal(col_of(u, "uuid_ts")->type, WH_DATETIME);
    check_no_col(u, "user_id");
    check_no_col(u, "anonymous_id");
    wh_rows_free(&rows);

    /* no userId: no users row; a numeric userId is an int id */
    rows_ok("{\"type\":\"identify\",\"anonymousId\":\"a\",\"traits\":{\"x\":1}}", &rows);
    assert_int_equal(rows.n, 1);
    assert_string_equal(rows.rows[0].table, "identifies");
    rows_ok("{\"type\":\"identify\",\"userId\":42}", &rows);
    check_col(row_of(&rows, "users"), "id", WH_INT, "42");
    wh_rows_free(&rows);
}

static void test_page_screen(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"page\",\"messageId\":\"m3\",\"name\":\"Home\",\"properties\":{"
            "\"category\":\"Docs\",\"url\":\"https://x.y/\",\"name\":\"ignored\"},"
            "\"context\":{\"page\":{\"path\":\"/\"}}}",
            &rows);
    assert_int_equal(rows.n, 1);
    const wh_row_t *p = row_of(&rows, "pages");
    check_col(p, "id", WH_STRING, "m3");
    check_col(p, "name", WH_STRING, "Home");
    check_col(p, "category", WH_STRING, "Docs");
    check_col(p, "url", WH_STRING, "https://x.y/");
    check_col(p, "context_page_path", WH_STRING, "/");
    wh_rows_free(&rows);

    rows_ok("{\"type\":\"screen\",\"messageId\":\"m4\",\"properties\":{\"name\":\"Main\","
            "\"category\":\"App\"}}",
            &rows);
    const wh_row_t *s = row_of(&rows, "screens");
    check_col(s, "name", WH_STRING, "Main"); /* from properties.name */
    check_col(s, "category", WH_STRING, "App");
    wh_rows_free(&rows);
}

static void test_group_alias(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"group\",\"messageId\":\"m5\",\"userId\":\"u\",\"groupId\":\"g1\","
            "\"traits\":{\"plan\":\"pro\",\"employees\":10,\"group_id\":\"evil\"}}",
            &rows);
    const wh_row_t *g = row_of(&rows, "groups");
    check_col(g, "group_id", WH_STRING, "g1");
    check_col(g, "plan", WH_STRING, "pro");
    check_col(g, "employees", WH_INT, "10");
    check_col(g, "user_id", WH_STRING, "u");
    rows_ok("{\"type\":\"alias\",\"messageId\":\"m6\",\"userId\":\"new\",\"previousId\":\"old\"}",
            &rows);
    assert_int_equal(rows.n, 2);
    const wh_row_t *a = row_of(&rows, "aliases");
    check_col(a, "previous_id", WH_STRING, "old");
    check_col(a, "user_id", WH_STRING, "new");
    check_col(a, "id", WH_STRING, "m6");
    wh_rows_free(&rows);
}

static void test_defaults(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    char err[128];
    /* no messageId: auto-<uuid>; a receivedAt that is not a timestamp: the envelope's */
    const char *ev = "{\"type\":\"page\",\"receivedAt\":\"yesterday\"}";
    assert_int_equal(
        wh_event_rows(ev, strlen(ev), "2024-01-02T03:04:05+01:00", &rows, err, sizeof(err)), 0);
    const wh_col_t *id = col_of(&rows.rows[0], "id");
    assert_non_null(id);
    assert_int_equal(strncmp(id->value, "auto-", 5), 0);
    assert_int_equal(strlen(id->value), 5 + 36);
    check_col(&rows.rows[0], "received_at", WH_DATETIME, "2024-01-02T02:04:05.000Z");
    /* neither: now */
    assert_int_equal(wh_event_rows(ev, strlen(ev), NULL, &rows, err, sizeof(err)), 0);
    const wh_col_t *r = col_of(&rows.rows[1], "received_at");
    assert_int_equal(r->type, WH_DATETIME);
    assert_int_equal(strncmp(r->value, "20", 2), 0);
    wh_rows_free(&rows);
}

static void test_options(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"track\",\"event\":\"e\",\"integrations\":{\"POSTGRES\":{\"options\":{"
            "\"skipTracksTable\":true}}}}",
            &rows);
    assert_int_equal(rows.n, 1);
    assert_string_equal(rows.rows[0].table, "e");
    wh_rows_free(&rows);
    rows_ok("{\"type\":\"identify\",\"userId\":\"u\",\"integrations\":{\"POSTGRES\":{\"options\":{"
            "\"skipUsersTable\":true}}}}",
            &rows);
    assert_int_equal(rows.n, 1);
    assert_string_equal(rows.rows[0].table, "identifies");
    wh_rows_free(&rows);

    /* JSON columns: full paths per event type, legacy paths on track properties */
    rows_ok(
        "{\"type\":\"track\",\"event\":\"e\",\"properties\":{\"meta\":{\"a\":[1,2],\"b\":\"/\"},"
        "\"old\":{\"x\":{\"y\":1}},\"flat\":{\"z\":true}},\"context\":{\"c\":{\"d\":1}},"
        "\"integrations\":{\"POSTGRES\":{\"options\":{\"jsonPaths\":["
        "\"track.properties.meta\",\" old.x \",\"track.context.c\"]}}}}",
        &rows);
    const wh_row_t *e = row_of(&rows, "e");
    check_col(e, "meta", WH_JSON, "{\"a\":[1,2],\"b\":\"/\"}");
    check_col(e, "old_x", WH_JSON, "{\"y\":1}");
    check_col(e, "flat_z", WH_BOOL, "true");
    check_col(e, "context_c", WH_JSON, "{\"d\":1}");
    check_col(row_of(&rows, "tracks"), "context_c", WH_JSON, "{\"d\":1}");
    wh_rows_free(&rows);
    rows_ok("{\"type\":\"page\",\"properties\":{\"m\":{\"k\":1}},\"integrations\":{"
            "\"DATA_WAREHOUSE\":{\"options\":{\"jsonPaths\":[\"page.properties.m\"]}}}}",
            &rows);
    check_col(row_of(&rows, "pages"), "m", WH_JSON, "{\"k\":1}");
    wh_rows_free(&rows);
}

/* ---- naming ---- */

static void test_identifier(void **state)
{
    (void)state;
    /* RudderStack's own examples (rudder-server's warehouse transformer tests, new
     * destinations: underscoreDivideNumbers false) */
    static const char *const cases[][2] = {
        {"omega", "omega"},
        {"omega v2", "omega_v2"},
        {"9mega", "_9mega"},
        {"mega&", "mega"},
        {"ome$ga", "ome_ga"},
        {"omega$", "omega"},
        {"ome_ ga", "ome_ga"},
        {"9mega________-________90", "_9mega_90"},
        {"C\xc3\xadz\xc7\x94", "c_z"},
        {"CamelCase123Key", "camel_case123_key"},
        {"path to $1,00,000", "path_to_1_00_000"},
        {"@#$%", ""},
        {"test123", "test123"},
        {"abc123def456", "abc123_def456"},
        {"abc_123_def_456", "abc_123_def_456"},
        {"__abc_123_def_456", "__abc_123_def_456"},
        {"_abc_123_def_456", "_abc_123_def_456"},
        {"&4yasdfa(84224_fs9##_____*3q", "_4yasdfa_84224_fs9_3q"},
        /* more word splits */
        {"firstName", "first_name"},
        {"HTMLParser", "html_parser"},
        {"iPhone11Pro", "i_phone11_pro"},
        {"ABC123", "abc123"},
        {"123ABC", "_123abc"},
        {"123Abc", "_123abc"},
        {"Case123Key", "case123_key"},
        {"ABc", "a_bc"},
        {"user-agent.Name", "user_agent_name"},
        {"_timestamp", "_timestamp"},
        {"  spaced  out  ", "spaced_out"},
        /* reserved words get `_` */
        {"select", "_select"},
        {"Group", "_group"},
        {"user", "_user"},
        {"FROM", "_from"},
        {"current_timestamp", "_current_timestamp"},
        {"users", "users"}, /* a column may be called users */
        {"selection", "selection"},
        /* unicode and emoji are separators */
        {"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", ""},
        {"emoji \xf0\x9f\x8e\x89 party", "emoji_party"},
        {"caf\xc3\xa9 au lait", "caf_au_lait"},
        {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = ident(cases[i][0]);
        if (strcmp(got, cases[i][1]) != 0)
            fail_msg("identifier(\"%s\") = \"%s\", want \"%s\"", cases[i][0], got, cases[i][1]);
    }
    /* 63 characters at most, cut after the leading-digit prefix */
    char long_name[300];
    memset(long_name, 'a', 299);
    long_name[299] = '\0';
    assert_int_equal(strlen(ident(long_name)), WH_NAME_MAX);
    long_name[0] = '7';
    const char *got = ident(long_name);
    assert_int_equal(strlen(got), WH_NAME_MAX);
    assert_int_equal(strncmp(got, "_7aaa", 5), 0);
    char us[200];
    memset(us, '_', 199);
    us[199] = '\0';
    assert_int_equal(strlen(ident(us)), WH_NAME_MAX);
    /* a small buffer is cut, still terminated */
    char small[4];
    wh_identifier("abcdef", small, sizeof(small));
    assert_string_equal(small, "abc");
    wh_identifier(NULL, small, sizeof(small));
    assert_string_equal(small, "");
}

static void test_identifier_random_bytes(void **state)
{
    (void)state;
    srand(6);
    char name[80];
    for (int n = 0; n < 5000; n++) {
        size_t len = (size_t)(rand() % 79);
        for (size_t i = 0; i < len; i++)
            name[i] = (char)(1 + rand() % 255);
        name[len] = '\0';
        const char *id = ident(name);
        if (id[0])
            check_safe_name(id);
    }
}

static void test_event_table_names(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"Order Completed", "order_completed"},
        {"tracks", "_tracks"},
        {"Users", "_users"},
        {"identifies", "_identifies"},
        {"pages", "_pages"},
        {"SCREENS", "_screens"},
        {"groups", "_groups"},
        {"aliases", "_aliases"},
        {"accounts", "_accounts"},
        {"rudder_discards", "_rudder_discards"},
        {"Rudder Discards", "_rudder_discards"},
        {"track", "track"},
        {"select", "_select"},
        {"_tracks", "_tracks"},
        {"1st purchase", "_1st_purchase"},
        {"\xf0\x9f\x8e\x89", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = event_table(cases[i][0]);
        if (strcmp(got, cases[i][1]) != 0)
            fail_msg("event_table(\"%s\") = \"%s\", want \"%s\"", cases[i][0], got, cases[i][1]);
    }

    /* an event named like a built-in table gets its own table, tracks stays tracks */
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"track\",\"event\":\"tracks\",\"properties\":{\"a\":1}}", &rows);
    rows_ok("{\"type\":\"track\",\"event\":\"users\",\"properties\":{\"a\":1}}", &rows);
    assert_int_equal(rows.n, 4);
    assert_string_equal(rows.rows[0].table, "tracks");
    assert_string_equal(rows.rows[1].table, "_tracks");
    check_col(&rows.rows[1], "a", WH_INT, "1");
    assert_string_equal(rows.rows[3].table, "_users");
    check_col(&rows.rows[0], "event", WH_STRING, "tracks");
    wh_rows_free(&rows);

    /* a long name: the table is cut to 63, the event column keeps the whole name */
    sl_buf_t ev = SL_BUF_INIT;
    sl_buf_puts(&ev, "{\"type\":\"track\",\"event\":\"");
    for (int i = 0; i < 20; i++)
        sl_buf_puts(&ev, "Very Long ");
    sl_buf_puts(&ev, "\"}");
    rows_ok(ev.data, &rows);
    assert_int_equal(strlen(rows.rows[1].table), WH_NAME_MAX);
    assert_int_equal(strlen(col_of(&rows.rows[0], "event")->value), 20 * 10 - 1);
    sl_buf_free(&ev);
    wh_rows_free(&rows);
}

static void test_injection(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"track\",\"event\":\"x\\\"; DROP TABLE tracks; --\","
            "\"properties\":{\"a\\\"; DROP TABLE users; --\":\"x\\\"; DROP TABLE tracks; --\","
            "\"'); DELETE FROM pages; --\":1,\"\\\"\":2,\"\\u0000\":3}}",
            &rows);
    assert_int_equal(rows.n, 2);
    const wh_row_t *e = row_of(&rows, "x_drop_table_tracks");
    check_col(e, "a_drop_table_users", WH_STRING, "x\"; DROP TABLE tracks; --");
    check_col(e, "delete_from_pages", WH_INT, "1");
    check_col(row_of(&rows, "tracks"), "event", WH_STRING, "x_drop_table_tracks");
    check_col(row_of(&rows, "tracks"), "event_text", WH_STRING, "x\"; DROP TABLE tracks; --");
    check_all_names_safe(&rows);
    wh_rows_free(&rows);
    /* the same in every user-named place */
    rows_ok("{\"type\":\"identify\",\"userId\":\"u\",\"traits\":{\"x\\\"; DROP TABLE t; --\":1},"
            "\"context\":{\"\\\"); --\":{\"\\\\\":2}}}",
            &rows);
    check_all_names_safe(&rows);
    wh_rows_free(&rows);
}

static void test_name_collisions(void **state)
{
    (void)state;
    wh_rows_t rows = {0};
    /* two keys with one identifier: one column, the later value */
    rows_ok("{\"type\":\"page\",\"properties\":{\"firstName\":\"a\",\"first_name\":\"b\","
            "\"First Name\":\"c\",\"order\":1,\"from\":\"x\"}}",
            &rows);
    const wh_row_t *p = row_of(&rows, "pages");
    size_t n = 0;
    for (size_t i = 0; i < p->ncols; i++)
        n += strcmp(p->cols[i].name, "first_name") == 0;
    assert_int_equal(n, 1);
    check_col(p, "first_name", WH_STRING, "c");
    check_col(p, "_order", WH_INT, "1");
    check_col(p, "_from", WH_STRING, "x");
    wh_rows_free(&rows);
}

/* ---- types ---- */

static void test_type_inference(void **state)
{
    (void)state;
    static const struct {
        const char *json, *col;
        wh_type_t t;
        const char *value;
    } cases[] = {
        {"5", "v", WH_INT, "5"},
        {"-3", "v", WH_INT, "-3"},
        {"1.5", "v", WH_FLOAT, "1.5"},
        {"0.1", "v", WH_FLOAT, "0.1"},
        {"-2.25e-7", "v", WH_FLOAT, "-2.25e-07"},
        {"1.0", "v", WH_INT, "1"}, /* JavaScript: Number.isInteger(1.0) */
        {"1e3", "v", WH_INT, "1000"},
        {"1e300", "v", WH_FLOAT, "1e+300"},
        {"9223372036854775807", "v", WH_INT, "9223372036854775807"},
        {"18446744073709551615", "v", WH_FLOAT, "18446744073709551615"},
        {"true", "v", WH_BOOL, "true"},
        {"false", "v", WH_BOOL, "false"},
        {"\"hello\"", "v", WH_STRING, "hello"},
        {"\"12345\"", "v", WH_STRING, "12345"},
        {"\"2021-03-04\"", "v", WH_DATETIME, "2021-03-04T00:00:00.000Z"},
        {"\"2021-03-04T05:06:07+02:00\"", "v", WH_DATETIME, "2021-03-04T03:06:07.000Z"},
        {"\"2021-03-04T05:06:07-0130\"", "v", WH_DATETIME, "2021-03-04T06:36:07.000Z"},
        {"\"2021-03-04 05:06\"", "v", WH_DATETIME, "2021-03-04T05:06:00.000Z"},
        {"\"2021-03-04T05:06:07.123456Z\"", "v", WH_DATETIME, "2021-03-04T05:06:07.123Z"},
        {"\"2020-02-29T23:59:59.9Z\"", "v", WH_DATETIME, "2020-02-29T23:59:59.900Z"},
        {"\"0001-01-01T00:00:00Z\"", "v", WH_DATETIME, "0001-01-01T00:00:00.000Z"},
        {"\"9999-12-31T23:59:59.999Z\"", "v", WH_DATETIME, "9999-12-31T23:59:59.999Z"},
        {"\"1969-12-31T23:59:59.999Z\"", "v", WH_DATETIME, "1969-12-31T23:59:59.999Z"},
        {"\"0001-01-01T00:00:00+01:00\"", "v", WH_STRING, "0001-01-01T00:00:00+01:00"},
        {"\"0000-01-01\"", "v", WH_STRING, "0000-01-01"},
        {"\"2021-02-29\"", "v", WH_STRING, "2021-02-29"},
        {"\"2021-13-01\"", "v", WH_STRING, "2021-13-01"},
        {"\"2021-03-04T25:00\"", "v", WH_STRING, "2021-03-04T25:00"},
        {"\"2021-03-04t05:06:07Z\"", "v", WH_STRING, "2021-03-04t05:06:07Z"},
        {"\"2021-03-04T\"", "v", WH_STRING, "2021-03-04T"},
        {"\"2021-03-04T05:06:07Zjunk\"", "v", WH_STRING, "2021-03-04T05:06:07Zjunk"},
        {"\"1614834367\"", "v", WH_STRING, "1614834367"},
        {"[1,\"a\",null]", "v", WH_STRING, "[1,\"a\",null]"},
        {"[\"\",\"\"]", "v", WH_STRING, "[\"\",\"\"]"},
        {"[{\"k\":\"v\"}]", "v", WH_STRING, "[{\"k\":\"v\"}]"},
        {"\"caf\xc3\xa9 \\u00e9\"", "v", WH_STRING, "caf\xc3\xa9 \xc3\xa9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char ev[256];
        snprintf(ev, sizeof(ev), "{\"type\":\"page\",\"properties\":{\"v\":%s}}", cases[i].json);
        wh_rows_t rows = {0};
        rows_ok(ev, &rows);
        const wh_col_t *c = col_of(&rows.rows[0], cases[i].col);
        if (!c)
            fail_msg("%s: no column", cases[i].json);
        if (c->type != cases[i].t || strcmp(c->value, cases[i].value) != 0)
            fail_msg("%s: %s %s, want %s %s", cases[i].json, wh_type_name(c->type), c->value,
                     wh_type_name(cases[i].t), cases[i].value);
        wh_rows_free(&rows);
    }
    /* blanks make no column: null, "", [], [null], [""] */
    static const char *const blanks[] = {"null", "\"\"", "[]", "[null]", "[\"\"]", "[[]]", "{}"};
    for (size_t i = 0; i < sizeof(blanks) / sizeof(blanks[0]); i++) {
        char ev[128];
        snprintf(ev, sizeof(ev), "{\"type\":\"page\",\"properties\":{\"v\":%s}}", blanks[i]);
        wh_rows_t rows = {0};
        rows_ok(ev, &rows);
        check_no_col(&rows.rows[0], "v");
        wh_rows_free(&rows);
    }
}

static void test_type_names(void **state)
{
    (void)state;
    static const char *const names[] = {"int", "float", "boolean", "datetime", "string", "json"};
    for (int t = WH_INT; t <= WH_JSON; t++) {
        assert_string_equal(wh_type_name((wh_type_t)t), names[t]);
        wh_type_t back;
        assert_true(wh_type_parse(names[t], &back));
        assert_int_equal(back, t);
    }
    wh_type_t x;
    assert_false(wh_type_parse("bigint", &x));
    assert_false(wh_type_parse(NULL, &x));
}

static void convert_ok(const char *v, wh_type_t from, wh_type_t to, const char *want)
{
    char *out = (char *)1;
    if (!wh_convert(v, from, to, &out))
        fail_msg("%s from %s to %s: can't convert", v, wh_type_name(from), wh_type_name(to));
    assert_non_null(out);
    assert_string_equal(out, want);
    free(out);
}

static void convert_fails(const char *v, wh_type_t from, wh_type_t to)
{
    char *out = (char *)1;
    if (wh_convert(v, from, to, &out))
        fail_msg("%s from %s to %s converted to %s", v, wh_type_name(from), wh_type_name(to), out);
    assert_null(out);
}

static void test_convert(void **state)
{
    (void)state;
    /* widening and the conversions RudderStack makes */
    convert_ok("5", WH_INT, WH_FLOAT, "5");
    convert_ok("-9223372036854775808", WH_INT, WH_FLOAT, "-9223372036854775808");
    convert_ok("2.9", WH_FLOAT, WH_INT, "2");
    convert_ok("-2.9", WH_FLOAT, WH_INT, "-2");
    convert_ok("2020-01-01T10:00:00+01:00", WH_STRING, WH_DATETIME, "2020-01-01T09:00:00.000Z");
    convert_ok("2020-01-01", WH_STRING, WH_DATETIME, "2020-01-01T00:00:00.000Z");
    /* anything into a string column */
    convert_ok("5", WH_INT, WH_STRING, "5");
    convert_ok("1.5", WH_FLOAT, WH_STRING, "1.5");
    convert_ok("true", WH_BOOL, WH_STRING, "true");
    convert_ok("2020-01-01T00:00:00.000Z", WH_DATETIME, WH_STRING, "2020-01-01T00:00:00.000Z");
    convert_ok("{\"a\":1}", WH_JSON, WH_STRING, "{\"a\":1}");
    /* into json */
    convert_ok("5", WH_INT, WH_JSON, "5");
    convert_ok("false", WH_BOOL, WH_JSON, "false");
    convert_ok("a\"b\\c", WH_STRING, WH_JSON, "\"a\\\"b\\\\c\"");
    convert_ok("2020-01-01T00:00:00.000Z", WH_DATETIME, WH_JSON, "\"2020-01-01T00:00:00.000Z\"");
    /* same type */
    convert_ok("x", WH_STRING, WH_STRING, "x");
    convert_ok("true", WH_BOOL, WH_BOOL, "true");
    convert_ok("2020-01-01T00:00:00.000Z", WH_DATETIME, WH_DATETIME, "2020-01-01T00:00:00.000Z");
    /* NULL stays NULL */
    char *out = (char *)1;
    assert_true(wh_convert(NULL, WH_STRING, WH_INT, &out));
    assert_null(out);
    /* impossible */
    convert_fails("abc", WH_STRING, WH_INT);
    convert_fails("5", WH_STRING, WH_INT); /* the event said string: RudderStack discards */
    convert_fails("abc", WH_STRING, WH_FLOAT);
    convert_fails("true", WH_BOOL, WH_INT);
    convert_fails("true", WH_BOOL, WH_FLOAT);
    convert_fails("true", WH_STRING, WH_BOOL);
    convert_fails("1", WH_INT, WH_BOOL);
    convert_fails("not a time", WH_STRING, WH_DATETIME);
    convert_fails("2021-02-30", WH_STRING, WH_DATETIME);
    convert_fails("5", WH_INT, WH_DATETIME);
    convert_fails("1.5", WH_FLOAT, WH_DATETIME);
    convert_fails("2020-01-01T00:00:00.000Z", WH_DATETIME, WH_INT);
    convert_fails("{\"a\":1}", WH_JSON, WH_INT);
    convert_fails("abc", WH_INT, WH_FLOAT); /* not an int's text */
    convert_fails("1e400", WH_FLOAT, WH_INT);
    convert_fails("1e19", WH_FLOAT, WH_INT); /* beyond bigint */

    int64_t i;
    double d;
    assert_true(wh_value_int("-42", &i));
    assert_int_equal(i, -42);
    assert_false(wh_value_int("42x", &i));
    assert_false(wh_value_int("", &i));
    assert_false(wh_value_int("99999999999999999999", &i));
    assert_true(wh_value_float("2.5e3", &d));
    assert_true(d == 2500.0);
    assert_false(wh_value_float("nan", &d));
    assert_false(wh_value_float("1e999", &d));
    assert_false(wh_value_float("1e-999", &d));
    assert_false(wh_value_float("1.5 ", &d));
}

/* ---- bad input ---- */

static void expect_invalid(const char *json, size_t len, const char *errpart)
{
    wh_rows_t rows = {0};
    rows_ok("{\"type\":\"page\"}", &rows); /* rows from before stay as they were */
    char err[256] = "";
    int rc = wh_event_rows(json, len, NULL, &rows, err, sizeof(err));
    if (rc != SL_ERR_INVALID)
        fail_msg("%.60s: rc %d, want SL_ERR_INVALID", json ? json : "(null)", rc);
    if (!strstr(err, errpart))
        fail_msg("%.60s: error \"%s\" lacks \"%s\"", json ? json : "(null)", err, errpart);
    assert_int_equal(rows.n, 1);
    assert_string_equal(rows.rows[0].table, "pages");
    wh_rows_free(&rows);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *const bad[][2] = {
        {"", "not valid JSON"},
        {"{", "not valid JSON"},
        {"{\"type\":\"track\"", "not valid JSON"},
        {"{\"type\":\"track\"} x", "not valid JSON"},
        {"nope", "not valid JSON"},
        {"[1,2]", "not a JSON object"},
        {"\"track\"", "not a JSON object"},
        {"42", "not a JSON object"},
        {"null", "not valid JSON"},
        {"{}", "unknown event type"},
        {"{\"type\":\"bogus\"}", "unknown event type \"bogus\""},
        {"{\"type\":7}", "unknown event type"},
        {"{\"type\":\"trackxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}", "unknown event type"},
        {"{\"type\":\"merge\"}", "unknown event type"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_invalid(bad[i][0], strlen(bad[i][0]), bad[i][1]);
    expect_invalid(NULL, 0, "no event");
    /* a length shorter than the text: only that much is parsed */
    expect_invalid("{\"type\":\"page\"}", 8, "not valid JSON");
    /* an embedded NUL */
    expect_invalid("{\"type\":\"page\"}\0{}", 17, "not valid JSON");

    /* nesting deeper than json-c's limit */
    sl_buf_t deep = SL_BUF_INIT;
    sl_buf_puts(&deep, "{\"type\":\"page\",\"properties\":");
    for (int i = 0; i < 200; i++)
        sl_buf_puts(&deep, "{\"a\":");
    sl_buf_puts(&deep, "1");
    for (int i = 0; i < 200; i++)
        sl_buf_putc(&deep, '}');
    sl_buf_putc(&deep, '}');
    expect_invalid(deep.data, deep.len, "not valid JSON");
    sl_buf_free(&deep);

    /* too many columns for one row; events from cloud sources (channel "sources") may */
    sl_buf_t wide = SL_BUF_INIT;
    sl_buf_puts(&wide, "{\"type\":\"track\",\"event\":\"w\",\"properties\":{");
    for (int i = 0; i < WH_MAX_COLUMNS; i++)
        sl_buf_printf(&wide, "%s\"p%d\":%d", i ? "," : "", i, i);
    sl_buf_puts(&wide, "}");
    sl_buf_t sources = SL_BUF_INIT;
    sl_buf_append(&sources, wide.data, wide.len);
    sl_buf_puts(&wide, "}");
    expect_invalid(wide.data, wide.len, "more than 200");
    sl_buf_puts(&sources, ",\"channel\":\"sources\"}");
    wh_rows_t rows = {0};
    rows_ok(sources.data, &rows);
    assert_true(row_of(&rows, "w")->ncols > WH_MAX_COLUMNS);
    wh_rows_free(&rows);
    sl_buf_free(&wide);
    sl_buf_free(&sources);

    /* values of the wrong shape for built-in columns are left out, not a crash */
    rows_ok("{\"type\":\"identify\",\"userId\":{\"a\":1},\"messageId\":[1],\"anonymousId\":true,"
            "\"sentAt\":5,\"context\":null,\"traits\":[1,2]}",
            &rows);
    assert_int_equal(rows.n, 1); /* no users row for an object userId */
    const wh_row_t *i = row_of(&rows, "identifies");
    check_no_col(i, "user_id");
    assert_int_equal(strncmp(col_of(i, "id")->value, "auto-", 5), 0);
    check_col(i, "anonymous_id", WH_BOOL, "true");
    check_col(i, "sent_at", WH_INT, "5");
    wh_rows_free(&rows);
    wh_rows_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_track),
        cmocka_unit_test(test_track_without_event_table),
        cmocka_unit_test(test_identify),
        cmocka_unit_test(test_page_screen),
        cmocka_unit_test(test_group_alias),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_identifier),
        cmocka_unit_test(test_identifier_random_bytes),
        cmocka_unit_test(test_event_table_names),
        cmocka_unit_test(test_injection),
        cmocka_unit_test(test_name_collisions),
        cmocka_unit_test(test_type_inference),
        cmocka_unit_test(test_type_names),
        cmocka_unit_test(test_convert),
        cmocka_unit_test(test_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
