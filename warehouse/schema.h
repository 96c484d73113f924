/*
 * Warehouse rows from events: which tables and columns an event becomes, with RudderStack's
 * naming rules and type inference, and the conversions between warehouse types. Pure
 * functions of their input (plus the clock for uuid_ts): safe to call from any thread.
 */
#ifndef WH_SCHEMA_H
#define WH_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest identifier Postgres keeps (NAMEDATALEN - 1); buffers for names need one more. */
#define WH_NAME_MAX 63
/* More columns than this in one row rejects the event (RudderStack's WH_MAX_COLUMNS_IN_EVENT),
 * so one bad event cannot add thousands of columns to a table. */
#define WH_MAX_COLUMNS 200

typedef enum wh_type { WH_INT, WH_FLOAT, WH_BOOL, WH_DATETIME, WH_STRING, WH_JSON } wh_type_t;

/* "int", "float", "boolean", "datetime", "string", "json" (static strings). */
const char *wh_type_name(wh_type_t t);
/* The type named by wh_type_name's string; false for any other name. */
bool wh_type_parse(const char *name, wh_type_t *t);

typedef struct wh_col {
    char *name;     /* an identifier (wh_identifier's rules), at most WH_NAME_MAX bytes */
    wh_type_t type; /* the type inferred from this event's value */
    char *value;    /* text form, NULL = SQL NULL; datetime as 2006-01-02T15:04:05.000Z */
} wh_col_t;

typedef struct wh_row {
    char *table;
    wh_col_t *cols;
    size_t ncols;
} wh_row_t;

typedef struct wh_rows {
    wh_row_t *rows;
    size_t n, cap;
} wh_rows_t;

/*
 * Appends to *out the rows for one event as RudderStack's warehouse destinations make them
 * (Postgres flavour): track -> `tracks` and the event's own table; identify -> `identifies`
 * and, when the event has a userId, `users`; page -> `pages`; screen -> `screens`; group ->
 * `groups`; alias -> `aliases`.
 *
 * Every row has uuid_ts (now), received_at (the event's receivedAt when it is a timestamp,
 * else received_at, else now), context.* flattened as context_*, and when present sent_at,
 * timestamp, original_timestamp, context_ip (context.ip, else request_ip), context_request_ip
 * and context_passed_ip. All but users rows add id (messageId; "auto-<uuid>" when missing or
 * not a scalar), anonymous_id, user_id and channel. Tracks rows add event_text (the name) and
 * event (the name snake_cased); event tables add properties flattened; identifies and users
 * add traits flattened, users with id = userId; pages/screens add properties and name;
 * groups traits and group_id; aliases traits and previous_id. A property or trait whose
 * column name is one of these built-in columns is dropped. Null, "" and [] values make no column;
 * arrays are JSON text (string); paths named in integrations.POSTGRES.options.jsonPaths (or
 * DATA_WAREHOUSE's) are JSON text (json). integrations.POSTGRES.options.skipTracksTable and
 * skipUsersTable are honoured.
 *
 * event_json: the event (len bytes, need not be NUL-terminated). received_at: the envelope's
 * receivedAt, may be NULL. *out must be zeroed or hold earlier rows; on error it is left as it
 * was. Returns 0, or SL_ERR_INVALID with errstr filled (not JSON, not an object, unknown type,
 * more than WH_MAX_COLUMNS columns). The caller frees *out with wh_rows_free.
 */
int wh_event_rows(const char *event_json, size_t len, const char *received_at, wh_rows_t *out,
                  char *errstr, size_t errstr_size);

/* Frees every row and empties *rows (it can be reused). NULL is fine. */
void wh_rows_free(wh_rows_t *rows);

/*
 * A warehouse identifier from user data: ASCII letters and digits kept, every other run of
 * bytes (UTF-8 included) becomes one `_`, words split and snake_cased (camelCase ->
 * camel_case, digits stay with the letters before them: v2 -> v2, Case123Key -> case123_key),
 * leading underscores kept, a leading digit prefixed with `_`, cut to WH_NAME_MAX, lowercased, and
 * a Postgres reserved word prefixed with `_`. The result is empty when the name has no ASCII
 * letter, digit or leading underscore. Always writes a NUL-terminated string to out
 * (truncated to out_size - 1; out_size > WH_NAME_MAX gives the whole identifier).
 */
void wh_identifier(const char *name, char *out, size_t out_size);

/*
 * The table for track events named event: wh_identifier's rules, and `_` before a name that
 * would be one of the built-in tables (tracks, users, identifies, pages, screens, groups,
 * aliases, accounts, rudder_discards). Empty when the name gives no identifier (no event
 * table then). Same out/out_size contract as wh_identifier.
 */
void wh_event_table(const char *event, char *out, size_t out_size);

/* The text of an int / float value (the whole string, in range, finite) as a number. */
bool wh_value_int(const char *s, int64_t *v);
bool wh_value_float(const char *s, double *v);

/*
 * Converts a value's text of type from into column type to, RudderStack's rules when the
 * type already in the warehouse wins: anything into string (as text; json as its JSON text);
 * int into float; float into int (truncated toward zero, as RudderStack does); a string that
 * parses as a timestamp into datetime (normalised to UTC milliseconds); int, float, boolean
 * into json as they are and string/datetime as a JSON string. Anything else (string into
 * int, boolean into float, ...) can't convert. Returns true with *out set (malloc'ed, caller
 * frees; NULL when value is NULL), or false with *out NULL: the caller writes NULL and a
 * rudder_discards row (RudderStack's reason: "incompatible schema conversion from <from> to <to>").
 */
bool wh_convert(const char *value, wh_type_t from, wh_type_t to, char **out);

#endif
