/* Warehouse rows from events: RudderStack's tables, naming rules and type inference (schema.h). */
#include "warehouse/schema.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/mem.h"
#include "common/timeutil.h"
#include "common/uuid.h"

/* ---- types ---- */

static const char *const type_names[] = {"int", "float", "boolean", "datetime", "string", "json"};

const char *wh_type_name(wh_type_t t)
{
    return (unsigned)t < sizeof(type_names) / sizeof(type_names[0]) ? type_names[t] : "string";
}

bool wh_type_parse(const char *name, wh_type_t *t)
{
    for (size_t i = 0; name && i < sizeof(type_names) / sizeof(type_names[0]); i++) {
        if (strcmp(name, type_names[i]) == 0) {
            *t = (wh_type_t)i;
            return true;
        }
    }
    return false;
}

/* ---- timestamps ---- */

/* RudderStack accepts years 0001-9999 (its validTimestamp range). */
#define TS_MIN_MS (-62135596800000LL) /* 0001-01-01T00:00:00Z */
#define TS_MAX_MS (253402300799999LL) /* 9999-12-31T23:59:59.999Z */

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

/* 2006-01-02T15:04:05.000Z, as JavaScript's toISOString (years 0001-9999). */
static void ts_format(int64_t ms, char out[SL_TIME_STRLEN])
{
    int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    unsigned rem = (unsigned)(ms - days * 86400000);
    int y;
    unsigned mo, d;
    civil_from_days(days, &y, &mo, &d);
    /* the ranges are the callers' (years 0001-9999); the modulos tell the compiler */
    snprintf(out, SL_TIME_STRLEN, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ", (unsigned)y % 10000,
             mo % 13, d % 32, rem / 3600000 % 24, rem / 60000 % 60, rem / 1000 % 60, rem % 1000);
}

static bool digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return false;
        v = v * 10 + (**p - '0');
    }
    *out = v;
    return true;
}

/*
 * The date-times RudderStack types as datetime (its ISO 8601 validTimestamp): a date
 * YYYY-MM-DD, optionally followed by T or a space, HH:MM, optional :SS and fraction, and an
 * optional Z or +-HH[[:]MM] offset. Times without an offset are UTC (RudderStack runs in UTC).
 * Unlike JavaScript's Date, an impossible day (02-30) is not rolled into the next month: the
 * value stays a string.
 */
static bool ts_parse(const char *s, int64_t *ms)
{
    const char *p = s;
    int y, mo, d, h = 0, mi = 0, sec = 0, frac = 0, off = 0;
    if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
        !digits(&p, 2, &d))
        return false;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap))
        return false;
    if (*p == 'T' || isspace((unsigned char)*p)) {
        p++;
        if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi) || h > 23 || mi > 59)
            return false;
        if (*p == ':') {
            p++;
            if (!digits(&p, 2, &sec) || sec > 59)
                return false;
            if (*p == '.') {
                p++;
                if (!isdigit((unsigned char)*p))
                    return false;
                for (int scale = 100; isdigit((unsigned char)*p); p++, scale /= 10)
                    frac += (*p - '0') * scale; /* beyond milliseconds: cut, as Date does */
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
            if (!digits(&p, 2, &oh) || oh > 23)
                return false;
            if (*p == ':')
                p++;
            if (isdigit((unsigned char)*p) && (!digits(&p, 2, &om) || om > 59))
                return false;
            off = sign * (oh * 60 + om);
        }
    }
    if (*p)
        return false;
    int64_t t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + sec;
    t = (t - (int64_t)off * 60) * 1000 + frac;
    if (t < TS_MIN_MS || t > TS_MAX_MS)
        return false;
    *ms = t;
    return true;
}

/* ---- identifiers ---- */

/* RudderStack's Postgres reserved keywords (its ReservedKeywords.json), sorted for bsearch. */
/* clang-format off */
static const char *const pg_reserved[] = {
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
    "between", "binary", "both", "case", "cast", "check", "collate", "column", "constraint",
    "create", "cross", "current_date", "current_role", "current_time", "current_timestamp",
    "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except",
    "false", "for", "foreign", "freeze", "from", "full", "grant", "group", "having", "ilike", "in",
    "initially", "inner", "intersect", "into", "is", "isnull", "join", "leading", "left", "like",
    "limit", "localtime", "localtimestamp", "natural", "new", "not", "notnull", "null", "off",
    "offset", "old", "on", "only", "or", "order", "outer", "overlaps", "placing", "primary",
    "references", "right", "select", "session_user", "similar", "some", "symmetric", "table",
    "then", "to", "trailing", "true", "union", "unique", "user", "using", "verbose", "when",
    "where"};
/* clang-format on */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool is_reserved(const char *name)
{
    return bsearch(&name, pg_reserved, sizeof(pg_reserved) / sizeof(pg_reserved[0]),
                   sizeof(pg_reserved[0]), cmp_str) != NULL;
}

#define IS_UP(c)    ((c) >= 'A' && (c) <= 'Z')
#define IS_LO(c)    ((c) >= 'a' && (c) <= 'z')
#define IS_DI(c)    ((c) >= '0' && (c) <= '9')
#define IS_ALNUM(c) (IS_UP(c) || IS_LO(c) || IS_DI(c))

/*
 * End of the word starting at s[i] in the ASCII alphanumeric run s[i..e): RudderStack's
 * snake case "with numbers" (lodash's word regex where digits stay with the letters before
 * them): abc123, ABC123, 123abc, 123Abc, 123ABC, Camel, HTML (before Parser), 123.
 */
static size_t word_end(const char *s, size_t i, size_t e)
{
    size_t j = i;
    if (IS_LO(s[i]) || (IS_UP(s[i]) && i + 1 < e && IS_LO(s[i + 1]))) {
        j += IS_UP(s[i]);
        while (j < e && IS_LO(s[j]))
            j++;
        while (j < e && IS_DI(s[j]))
            j++;
        return j;
    }
    if (IS_UP(s[i])) {
        while (j < e && IS_UP(s[j]))
            j++;
        if (j < e && IS_DI(s[j])) {
            while (j < e && IS_DI(s[j]))
                j++;
            return j;
        }
        return j < e && IS_LO(s[j]) ? j - 1 : j; /* HTMLParser: HTML, then Parser */
    }
    while (j < e && IS_DI(s[j]))
        j++;
    if (j < e && IS_UP(s[j]) && j + 1 < e && IS_LO(s[j + 1]))
        j++;
    if (j < e && IS_LO(s[j])) {
        while (j < e && IS_LO(s[j]))
            j++;
    } else {
        while (j < e && IS_UP(s[j]))
            j++;
    }
    return j;
}

/*
 * RudderStack's transformName: the snake_case words of the ASCII alphanumeric runs of name,
 * joined by `_`, after name's own leading underscores; `_` before a leading digit. Appends
 * to b, stopping once b holds more than limit bytes (0: no limit).
 */
static void snake_name(sl_buf_t *b, const char *name, size_t limit)
{
    size_t start = b->len;
    const char *p = name;
    while (*p == '_')
        sl_buf_putc(b, *p++);
    bool first = true;
    while (*p && (!limit || b->len - start <= limit)) {
        if (!IS_ALNUM(*p)) {
            p++;
            continue;
        }
        size_t e = 0;
        while (IS_ALNUM(p[e]))
            e++;
        for (size_t i = 0; i < e;) {
            size_t j = word_end(p, i, e);
            if (!first)
                sl_buf_putc(b, '_');
            first = false;
            for (size_t k = i; k < j; k++)
                sl_buf_putc(b, (char)tolower((unsigned char)p[k]));
            i = j;
        }
        p += e;
    }
    if (b->len > start && IS_DI(b->data[start])) {
        sl_buf_putc(b, '\0');
        memmove(b->data + start + 1, b->data + start, b->len - start - 1);
        b->data[start] = '_';
    }
}

/* wh_identifier into a buffer with room for a `_` prefix before cutting back to WH_NAME_MAX;
 * scratch (emptied here) saves an allocation per name on the event path. */
static void identifier(const char *name, char out[WH_NAME_MAX + 2], sl_buf_t *scratch)
{
    sl_buf_t local = SL_BUF_INIT, *b = scratch ? scratch : &local;
    sl_buf_reset(b);
    snake_name(b, name ? name : "", WH_NAME_MAX + 1);
    size_t n = b->len < WH_NAME_MAX ? b->len : WH_NAME_MAX;
    if (n)
        memcpy(out, b->data, n);
    out[n] = '\0';
    sl_buf_free(&local);
    if (is_reserved(out)) {
        memmove(out + 1, out, n + 1);
        out[0] = '_';
        out[WH_NAME_MAX] = '\0';
    }
}

static void copy_out(const char *s, char *out, size_t out_size)
{
    if (out_size)
        snprintf(out, out_size, "%s", s);
}

void wh_identifier(const char *name, char *out, size_t out_size)
{
    char id[WH_NAME_MAX + 2];
    identifier(name, id, NULL);
    copy_out(id, out, out_size);
}

/* RudderStack's own tables (rudderCreatedTables, rudderIsolatedTables) and our discards. */
static const char *const builtin_tables[] = {"accounts",        "aliases", "groups",
                                             "identifies",      "pages",   "screens",
                                             "rudder_discards", "tracks",  "users"};

void wh_event_table(const char *event, char *out, size_t out_size)
{
    char id[WH_NAME_MAX + 2];
    identifier(event, id, NULL);
    for (size_t i = 0; i < sizeof(builtin_tables) / sizeof(builtin_tables[0]); i++) {
        if (strcmp(id, builtin_tables[i]) == 0) {
            memmove(id + 1, id, strlen(id) + 1);
            id[0] = '_';
            break;
        }
    }
    copy_out(id, out, out_size);
}

/* ---- values ---- */

/* Shortest text that reads back as d (JavaScript prints numbers the same way). */
static char *format_double(double d)
{
    char buf[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    return sl_strdup(buf);
}

/* An integral double in int64 range, as JavaScript's Number.isInteger sees it. */
static bool double_is_int(double d)
{
    return isfinite(d) && d == trunc(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0;
}

static char *json_text(json_object *v)
{
    return sl_strdup(
        json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* lodash isEmpty(toString(v)), RudderStack's isBlank: null, "", [] and [null], [""], [[]]. */
static bool is_blank(json_object *v)
{
    if (!v)
        return true;
    switch (json_object_get_type(v)) {
    case json_type_string:
        return json_object_get_string_len(v) == 0;
    case json_type_array: {
        size_t n = json_object_array_length(v);
        return n == 0 || (n == 1 && is_blank(json_object_array_get_idx(v, 0)));
    }
    default:
        return false;
    }
}

/* The type and text of a scalar or array value (RudderStack's getDataType). */
static void infer(json_object *v, wh_type_t *t, char **text)
{
    switch (json_object_get_type(v)) {
    case json_type_boolean:
        *t = WH_BOOL;
        *text = sl_strdup(json_object_get_boolean(v) ? "true" : "false");
        return;
    case json_type_int: {
        int64_t i = json_object_get_int64(v);
        uint64_t u = json_object_get_uint64(v);
        if (i == INT64_MAX && u > (uint64_t)INT64_MAX) { /* too big for bigint */
            *t = WH_FLOAT;
            *text = sl_asprintf("%" PRIu64, u);
        } else {
            *t = WH_INT;
            *text = sl_asprintf("%" PRId64, i);
        }
        return;
    }
    case json_type_double: {
        double d = json_object_get_double(v);
        if (double_is_int(d)) {
            *t = WH_INT;
            *text = sl_asprintf("%" PRId64, (int64_t)d);
        } else {
            *t = WH_FLOAT;
            *text = format_double(d);
        }
        return;
    }
    case json_type_string: {
        const char *s = json_object_get_string(v);
        int64_t ms;
        if (ts_parse(s, &ms)) {
            char iso[SL_TIME_STRLEN];
            ts_format(ms, iso);
            *t = WH_DATETIME;
            *text = sl_strdup(iso);
        } else {
            *t = WH_STRING;
            *text = sl_strdup(s);
        }
        return;
    }
    default: /* arrays (objects are flattened before this) */
        *t = WH_STRING;
        *text = json_text(v);
        return;
    }
}

/* ---- rows under construction ---- */

typedef struct rowb {
    wh_col_t *cols;
    size_t n, cap;
} rowb_t;

static wh_col_t *col_find(rowb_t *b, const char *name)
{
    for (size_t i = 0; i < b->n; i++)
        if (strcmp(b->cols[i].name, name) == 0)
            return &b->cols[i];
    return NULL;
}

static void col_append(rowb_t *b, const char *name, wh_type_t t, char *value)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 32;
        b->cols = sl_realloc(b->cols, b->cap * sizeof(*b->cols));
    }
    b->cols[b->n++] = (wh_col_t){sl_strdup(name), t, value};
}

/* Sets column name to (t, value), value owned by the row; a later value for a name wins but
 * keeps the column's place, as assigning a JavaScript object's key does. */
static void col_set(rowb_t *b, const char *name, wh_type_t t, char *value)
{
    wh_col_t *c = col_find(b, name);
    if (!c) {
        col_append(b, name, t, value);
        return;
    }
    free(c->value);
    c->type = t;
    c->value = value;
}

static void col_del(rowb_t *b, const char *name)
{
    wh_col_t *c = col_find(b, name);
    if (!c)
        return;
    free(c->name);
    free(c->value);
    size_t i = (size_t)(c - b->cols);
    memmove(c, c + 1, (b->n - i - 1) * sizeof(*c));
    b->n--;
}

static void cols_merge(rowb_t *dst, const rowb_t *src)
{
    bool empty = dst->n == 0; /* names in src are unique: no lookups needed */
    for (size_t i = 0; i < src->n; i++) {
        const wh_col_t *c = &src->cols[i];
        char *v = c->value ? sl_strdup(c->value) : NULL;
        if (empty)
            col_append(dst, c->name, c->type, v);
        else
            col_set(dst, c->name, c->type, v);
    }
}

static void cols_free(wh_col_t *cols, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(cols[i].name);
        free(cols[i].value);
    }
    free(cols);
}

static void rowb_free(rowb_t *b)
{
    cols_free(b->cols, b->n);
    memset(b, 0, sizeof(*b));
}

/* ---- one event ---- */

typedef struct jpath {
    char *key; /* the path's parts joined by `_` */
    int level; /* number of parts - 1 */
    bool full; /* starts with the event type (track.properties.x); else legacy (x) */
} jpath_t;

typedef struct ev {
    json_object *msg;
    char type[16];          /* lowercased */
    const char *const *own; /* the event type's built-in columns, user data can't use them */
    jpath_t *jpaths;
    size_t njpaths;
    bool skip_tracks, skip_users;
    char now[SL_TIME_STRLEN];
    sl_buf_t name, cname; /* column name prefix and RudderStack's "complete" prefix */
    sl_buf_t scratch;
} ev_t;

/* clang-format off */
static const char *const own_default[] = {
    "id", "anonymous_id", "user_id", "sent_at", "timestamp", "received_at", "channel",
    "context_ip", "original_timestamp", "context_request_ip", "context_passed_ip", "uuid_ts",
    NULL};
/* clang-format on */

/* Built-in columns beyond own_default, per event type (RudderStack's rudderReservedColums). */
static const char *const own_track[] = {"event_text", "record_id", NULL};
static const char *const own_page[] = {"name", NULL};
static const char *const own_group[] = {"group_id", NULL};
static const char *const own_alias[] = {"previous_id", NULL};

static bool in_list(const char *const *list, const char *name)
{
    for (; list && *list; list++)
        if (strcmp(*list, name) == 0)
            return true;
    return false;
}

static bool is_own_column(const ev_t *e, const char *name)
{
    return in_list(own_default, name) || in_list(e->own, name);
}

static json_object *get(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v)
               ? v
               : NULL;
}

/* o at a dotted path ("context.ip"). */
static json_object *get_path(json_object *o, const char *path)
{
    char key[64];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        o = get(o, key);
        path += n + (path[n] == '.');
    }
    return o;
}

static void add_jpaths(ev_t *e, json_object *paths)
{
    if (!paths || !json_object_is_type(paths, json_type_array))
        return;
    static const char *const prefixes[] = {"track.", "identify.", "page.", "screen.",
                                           "alias.", "group.",    NULL};
    for (size_t i = 0; i < json_object_array_length(paths); i++) {
        json_object *p = json_object_array_get_idx(paths, i);
        if (!json_object_is_type(p, json_type_string))
            continue;
        const char *s = json_object_get_string(p);
        while (isspace((unsigned char)*s))
            s++;
        size_t n = strlen(s);
        while (n && isspace((unsigned char)s[n - 1]))
            n--;
        if (!n)
            continue;
        jpath_t jp = {sl_strndup(s, n), 0, false};
        for (char *c = jp.key; *c; c++) {
            if (*c == '.') {
                *c = '_';
                jp.level++;
            }
        }
        for (size_t k = 0; prefixes[k]; k++)
            jp.full = jp.full || strncmp(s, prefixes[k], strlen(prefixes[k])) == 0;
        e->jpaths = sl_realloc(e->jpaths, (e->njpaths + 1) * sizeof(*e->jpaths));
        e->jpaths[e->njpaths++] = jp;
    }
}

/* Is prefix + key one of the JSON column paths at this depth? */
static bool is_jpath(const ev_t *e, bool full, const sl_buf_t *prefix, const char *key, int level)
{
    size_t plen = prefix->len, klen = strlen(key);
    for (size_t i = 0; i < e->njpaths; i++) {
        const jpath_t *jp = &e->jpaths[i];
        if (jp->full != full || jp->level != level || strlen(jp->key) != plen + klen)
            continue;
        if ((!plen || memcmp(jp->key, prefix->data, plen) == 0) && strcmp(jp->key + plen, key) == 0)
            return true;
    }
    return false;
}

/* Adds a column from user data: its name made an identifier, dropped when it is empty or one
 * of the event type's built-in columns. */
static void add_user_col(ev_t *e, rowb_t *b, wh_type_t t, char *value)
{
    char id[WH_NAME_MAX + 2];
    identifier(e->name.data ? e->name.data : "", id, &e->scratch);
    if (!id[0] || is_own_column(e, id)) {
        free(value);
        return;
    }
    col_set(b, id, t, value);
}

/*
 * Flattens obj into b, nested objects joined with `_` (RudderStack's
 * setDataFromInputAndComputeColumnTypes). e->name holds the column name prefix, e->cname the
 * "complete" prefix (<type>_<field>_...) that full JSON paths are matched against, at clevel;
 * legacy paths (track events only) match the column name at level.
 */
static void flatten(ev_t *e, rowb_t *b, json_object *obj, int clevel, int level)
{
    if (!obj || !json_object_is_type(obj, json_type_object))
        return;
    json_object_object_foreach(obj, key, val)
    {
        size_t nlen = e->name.len, clen = e->cname.len;
        bool as_json =
            e->njpaths &&
            (is_jpath(e, true, &e->cname, key, clevel) ||
             (strcmp(e->type, "track") == 0 && is_jpath(e, false, &e->name, key, level)));
        sl_buf_puts(&e->name, key);
        if (as_json) {
            if (!is_blank(val))
                add_user_col(e, b, WH_JSON, json_text(val));
        } else if (val && json_object_is_type(val, json_type_object)) {
            sl_buf_putc(&e->name, '_');
            sl_buf_puts(&e->cname, key);
            sl_buf_putc(&e->cname, '_');
            flatten(e, b, val, clevel + 1, level + 1);
        } else if (!is_blank(val)) {
            wh_type_t t;
            char *text;
            infer(val, &t, &text);
            add_user_col(e, b, t, text);
        }
        e->name.len = nlen;
        e->cname.len = clen;
        if (e->name.data)
            e->name.data[nlen] = '\0';
        if (e->cname.data)
            e->cname.data[clen] = '\0';
    }
}

/* Flattens msg[field] with column prefix prefix ("" or "context_"). */
static void flatten_field(ev_t *e, rowb_t *b, const char *field, const char *prefix)
{
    sl_buf_reset(&e->name);
    sl_buf_reset(&e->cname);
    sl_buf_puts(&e->name, prefix);
    sl_buf_printf(&e->cname, "%s_%s_", e->type, field);
    flatten(e, b, get(e->msg, field), 2, 0);
}

/* A built-in column from the message (RudderStack's column mapping rules): the first
 * non-blank of the paths; objects, arrays and blanks remove the column. */
typedef struct rule {
    const char *col;
    const char *path, *alt;
} rule_t;

static const rule_t rules_default[] = {{"id", "messageId", NULL},
                                       {"anonymous_id", "anonymousId", NULL},
                                       {"user_id", "userId", NULL},
                                       {"sent_at", "sentAt", NULL},
                                       {"timestamp", "timestamp", NULL},
                                       {"received_at", "receivedAt", NULL},
                                       {"original_timestamp", "originalTimestamp", NULL},
                                       {"channel", "channel", NULL},
                                       {"context_ip", "context.ip", "request_ip"},
                                       {"context_request_ip", "request_ip", NULL},
                                       {"context_passed_ip", "context.ip", NULL},
                                       {NULL, NULL, NULL}};
static const rule_t rules_users[] = {{"context_ip", "context.ip", "request_ip"},
                                     {"context_request_ip", "request_ip", NULL},
                                     {"context_passed_ip", "context.ip", NULL},
                                     {"sent_at", "sentAt", NULL},
                                     {"timestamp", "timestamp", NULL},
                                     {"original_timestamp", "originalTimestamp", NULL},
                                     {NULL, NULL, NULL}};
static const rule_t rules_track[] = {{"event_text", "event", NULL}, {NULL, NULL, NULL}};
static const rule_t rules_page[] = {{"name", "name", "properties.name"}, {NULL, NULL, NULL}};
static const rule_t rules_group[] = {{"group_id", "groupId", NULL}, {NULL, NULL, NULL}};
static const rule_t rules_alias[] = {{"previous_id", "previousId", NULL}, {NULL, NULL, NULL}};

static void apply_rules(ev_t *e, rowb_t *b, const rule_t *rules)
{
    for (; rules->col; rules++) {
        json_object *v = get_path(e->msg, rules->path);
        if (is_blank(v) && rules->alt)
            v = get_path(e->msg, rules->alt);
        if (is_blank(v) || json_object_is_type(v, json_type_object) ||
            json_object_is_type(v, json_type_array)) {
            col_del(b, rules->col);
            continue;
        }
        wh_type_t t;
        char *text;
        infer(v, &t, &text);
        col_set(b, rules->col, t, text);
    }
}

/* Moves b into a new row of out for table. */
static void emit(ev_t *e, wh_rows_t *out, const char *table, rowb_t *b)
{
    col_set(b, "uuid_ts", WH_DATETIME, sl_strdup(e->now));
    if (out->n == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 8;
        out->rows = sl_realloc(out->rows, out->cap * sizeof(*out->rows));
    }
    wh_row_t *r = &out->rows[out->n++];
    r->table = sl_strdup(table);
    r->cols = b->cols;
    r->ncols = b->n;
    memset(b, 0, sizeof(*b));
}

static void rows_track(ev_t *e, wh_rows_t *out)
{
    rowb_t common = {0}, row = {0};
    flatten_field(e, &common, "context", "context_");
    apply_rules(e, &common, rules_track);
    apply_rules(e, &common, rules_default);
    /* event: the name snake_cased, in full (the table name is cut to 63 characters) */
    wh_col_t *text = col_find(&common, "event_text");
    sl_buf_t event = SL_BUF_INIT;
    snake_name(&event, text && text->value ? text->value : "", 0);
    col_set(&common, "event", WH_STRING, sl_strdup(event.data ? event.data : ""));
    if (!e->skip_tracks) {
        cols_merge(&row, &common);
        emit(e, out, "tracks", &row);
    }
    char table[WH_NAME_MAX + 2];
    wh_event_table(event.data ? event.data : "", table, sizeof(table));
    if (table[0]) {
        flatten_field(e, &row, "properties", "");
        flatten_field(e, &row, "userProperties", "");
        cols_merge(&row, &common);
        emit(e, out, table, &row);
    }
    sl_buf_free(&event);
    rowb_free(&common);
}

static void rows_identify(ev_t *e, wh_rows_t *out)
{
    rowb_t common = {0}, row = {0};
    flatten_field(e, &common, "userProperties", "");
    flatten_field(e, &common, "traits", "");
    flatten_field(e, &common, "context", "context_");
    cols_merge(&row, &common);
    apply_rules(e, &row, rules_default);
    emit(e, out, "identifies", &row);

    json_object *uid = get(e->msg, "userId");
    if (!e->skip_users && !is_blank(uid) && !json_object_is_type(uid, json_type_object) &&
        !json_object_is_type(uid, json_type_array)) {
        cols_merge(&row, &common);
        apply_rules(e, &row, rules_users);
        wh_type_t t;
        char *text;
        infer(uid, &t, &text);
        col_set(&row, "id", t, text);
        infer(get(e->msg, "receivedAt"), &t, &text);
        col_set(&row, "received_at", t, text);
        emit(e, out, "users", &row);
    }
    rowb_free(&common);
}

/* pages, screens, groups and aliases: one row of field flattened, context and the rules. */
static void rows_single(ev_t *e, wh_rows_t *out, const char *table, const char *field,
                        const rule_t *rules)
{
    rowb_t row = {0};
    flatten_field(e, &row, field, "");
    flatten_field(e, &row, "context", "context_");
    apply_rules(e, &row, rules_default);
    apply_rules(e, &row, rules);
    emit(e, out, table, &row);
}

/* Sets messageId and receivedAt as RudderStack does before making rows. */
static void normalise(ev_t *e, const char *received_at)
{
    json_object *id = get(e->msg, "messageId");
    if (is_blank(id) || json_object_is_type(id, json_type_object) ||
        json_object_is_type(id, json_type_array)) { /* rows need an id to be loaded once */
        char uuid[SL_UUID_STRLEN];
        sl_uuid_v4(uuid);
        char *auto_id = sl_asprintf("auto-%s", uuid);
        json_object_object_add(e->msg, "messageId", json_object_new_string(auto_id));
        free(auto_id);
    }
    json_object *r = get(e->msg, "receivedAt");
    int64_t ms;
    if (!r || !json_object_is_type(r, json_type_string) ||
        !ts_parse(json_object_get_string(r), &ms)) {
        char now[SL_TIME_STRLEN];
        if (!received_at || !ts_parse(received_at, &ms))
            ms = sl_time_now_ms();
        ts_format(ms, now);
        json_object_object_add(e->msg, "receivedAt", json_object_new_string(now));
    }
}

static void read_options(ev_t *e)
{
    json_object *integrations = get(e->msg, "integrations");
    json_object *pg = get(get(integrations, "POSTGRES"), "options");
    json_object *v;
    e->skip_tracks = (v = get(pg, "skipTracksTable")) && json_object_get_boolean(v);
    e->skip_users = (v = get(pg, "skipUsersTable")) && json_object_get_boolean(v);
    add_jpaths(e, get(get(get(integrations, "DATA_WAREHOUSE"), "options"), "jsonPaths"));
    add_jpaths(e, get(pg, "jsonPaths"));
}

static void ev_free(ev_t *e)
{
    for (size_t i = 0; i < e->njpaths; i++)
        free(e->jpaths[i].key);
    free(e->jpaths);
    sl_buf_free(&e->name);
    sl_buf_free(&e->cname);
    sl_buf_free(&e->scratch);
    json_object_put(e->msg);
}

static void rows_truncate(wh_rows_t *rows, size_t n)
{
    while (rows->n > n) {
        wh_row_t *r = &rows->rows[--rows->n];
        free(r->table);
        cols_free(r->cols, r->ncols);
    }
}

static json_object *parse(const char *json, size_t len, char *errstr, size_t errstr_size)
{
    if (len > INT_MAX) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "event of %zu bytes is too large", len);
        return NULL;
    }
    json_tokener *tok = json_tokener_new();
    json_object *o = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    if (!o && jerr == json_tokener_continue) { /* a bare number ends only at the end of input */
        o = json_tokener_parse_ex(tok, "", 1);
        jerr = json_tokener_get_error(tok);
    }
    json_tokener_free(tok);
    while (o && end < len && isspace((unsigned char)json[end]))
        end++;
    if (!o || jerr != json_tokener_success || end < len) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "event is not valid JSON: %s",
                   jerr == json_tokener_continue  ? "unexpected end of input"
                   : jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                                                  : "trailing data");
        json_object_put(o);
        return NULL;
    }
    if (!json_object_is_type(o, json_type_object)) {
        sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "event is not a JSON object");
        json_object_put(o);
        return NULL;
    }
    return o;
}

int wh_event_rows(const char *event_json, size_t len, const char *received_at, wh_rows_t *out,
                  char *errstr, size_t errstr_size)
{
    ev_t e = {0};
    size_t first = out->n;
    int rc = SL_OK;
    if (!event_json || !(e.msg = parse(event_json, len, errstr, errstr_size)))
        return event_json ? SL_ERR_INVALID
                          : sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "no event");
    json_object *type = get(e.msg, "type");
    const char *ts =
        type && json_object_is_type(type, json_type_string) ? json_object_get_string(type) : "";
    size_t i;
    for (i = 0; ts[i] && i + 1 < sizeof(e.type); i++)
        e.type[i] = (char)tolower((unsigned char)ts[i]);
    if (ts[i]) /* longer than any type we know */
        e.type[0] = '\0';
    ts_format(sl_time_now_ms(), e.now);
    read_options(&e);
    normalise(&e, received_at);

    if (strcmp(e.type, "track") == 0) {
        e.own = own_track;
        rows_track(&e, out);
    } else if (strcmp(e.type, "identify") == 0) {
        rows_identify(&e, out);
    } else if (strcmp(e.type, "page") == 0 || strcmp(e.type, "screen") == 0) {
        e.own = own_page;
        rows_single(&e, out, e.type[0] == 'p' ? "pages" : "screens", "properties", rules_page);
    } else if (strcmp(e.type, "group") == 0) {
        e.own = own_group;
        rows_single(&e, out, "groups", "traits", rules_group);
    } else if (strcmp(e.type, "alias") == 0) {
        e.own = own_alias;
        rows_single(&e, out, "aliases", "traits", rules_alias);
    } else {
        rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "unknown event type \"%.40s\"", ts);
        goto out;
    }

    json_object *channel = get(e.msg, "channel");
    bool from_sources = channel && json_object_is_type(channel, json_type_string) &&
                        strcmp(json_object_get_string(channel), "sources") == 0;
    for (i = first; i < out->n && !from_sources; i++) {
        if (out->rows[i].ncols > WH_MAX_COLUMNS) {
            rc = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                            "event has %zu columns for table \"%s\", more than %d",
                            out->rows[i].ncols, out->rows[i].table, WH_MAX_COLUMNS);
            goto out;
        }
    }
out:
    if (rc != SL_OK)
        rows_truncate(out, first);
    ev_free(&e);
    return rc;
}

void wh_rows_free(wh_rows_t *rows)
{
    if (!rows)
        return;
    rows_truncate(rows, 0);
    free(rows->rows);
    memset(rows, 0, sizeof(*rows));
}

/* ---- conversions ---- */

bool wh_value_int(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *v = x;
    return true;
}

bool wh_value_float(const char *s, double *v)
{
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (end == s || *end || !isfinite(x) || (errno == ERANGE && x == 0))
        return false;
    *v = x;
    return true;
}

bool wh_convert(const char *value, wh_type_t from, wh_type_t to, char **out)
{
    *out = NULL;
    if (!value)
        return true;
    if (from == to || to == WH_STRING) {
        *out = sl_strdup(value);
        return true;
    }
    int64_t i;
    double d;
    switch (to) {
    case WH_FLOAT:
        if (from == WH_INT && wh_value_int(value, &i)) {
            *out = sl_strdup(value);
            return true;
        }
        return false;
    case WH_INT:
        if (from == WH_FLOAT && wh_value_float(value, &d) && d >= -9223372036854775808.0 &&
            d < 9223372036854775808.0) {
            *out = sl_asprintf("%" PRId64, (int64_t)d);
            return true;
        }
        return false;
    case WH_DATETIME: {
        int64_t ms;
        if (from != WH_STRING || !ts_parse(value, &ms))
            return false;
        char iso[SL_TIME_STRLEN];
        ts_format(ms, iso);
        *out = sl_strdup(iso);
        return true;
    }
    case WH_JSON:
        if (from == WH_INT || from == WH_FLOAT || from == WH_BOOL) {
            *out = sl_strdup(value);
        } else {
            sl_buf_t b = SL_BUF_INIT;
            sl_buf_json_str(&b, value, strlen(value));
            *out = sl_buf_steal(&b);
        }
        return true;
    default: /* boolean: only from boolean */
        return false;
    }
}
