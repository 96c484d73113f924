/*
 * A strict JSON scanner for the ingest path. It checks a document against RFC 8259 (grammar,
 * escapes, UTF-8, nesting depth) without building a tree, and walks an object's members as
 * spans of the original bytes, so the gateway can splice its fields into an event instead of
 * parsing and serializing it again. Pure functions over a buffer: no allocation, no globals.
 */
#ifndef GW_JSON_SCAN_H
#define GW_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* Deepest nesting accepted, counted from the value scanned (json-c's default limit). */
#define GW_JSON_MAX_DEPTH 32

typedef enum gw_json_type {
    GW_JSON_INVALID,
    GW_JSON_OBJECT,
    GW_JSON_ARRAY,
    GW_JSON_STRING,
    GW_JSON_NUMBER,
    GW_JSON_TRUE,
    GW_JSON_FALSE,
    GW_JSON_NULL
} gw_json_type_t;

/* Where each container of a scanned document ends, so walking it never rescans bytes: the
 * containers' start and end offsets in document order. Owned by the caller, reusable. */
typedef struct gw_json_index {
    const char *base;
    size_t *starts, *ends;
    size_t n, cap;
} gw_json_index_t;

/* A value in the document: its bytes (a string's quotes included) and its type. idx, when
 * set, speeds up iterating it (spans built by hand leave it NULL). */
typedef struct gw_json_span {
    const char *p;
    size_t len;
    gw_json_type_t type;
    const gw_json_index_t *idx;
} gw_json_span_t;

/* Where scanning failed and why. */
typedef struct gw_json_error {
    size_t offset;   /* from the start of the buffer given to gw_json_scan_document */
    const char *msg; /* static text, e.g. "invalid escape in string" */
} gw_json_error_t;

/* Checks that buf[0..len) is exactly one JSON value, surrounded by optional whitespace.
 * Returns true and the value's span, or false with err. */
bool gw_json_scan_document(const char *buf, size_t len, gw_json_span_t *value, gw_json_error_t *err);
/* The same, also filling idx (emptied first), which the returned span and every span the
 * iterators derive from it refer to: idx must outlive them. */
bool gw_json_scan_indexed(const char *buf, size_t len, gw_json_span_t *value, gw_json_error_t *err,
                          gw_json_index_t *idx);
void gw_json_index_init(gw_json_index_t *idx);
void gw_json_index_free(gw_json_index_t *idx);

/* Iterates the members of an object span that gw_json_scan_document accepted (no error
 * checking is repeated). Usage:
 *   gw_json_members_t it; gw_json_members_init(&it, obj);
 *   while (gw_json_members_next(&it)) { it.key, it.member_start, it.value ... } */
typedef struct gw_json_members {
    const char *p, *end;
    const gw_json_index_t *idx;
    gw_json_span_t key;      /* the key string, quotes included */
    gw_json_span_t value;    /* the member's value */
    const char *member_start; /* the member's first byte (the key's opening quote) */
} gw_json_members_t;

void gw_json_members_init(gw_json_members_t *it, gw_json_span_t obj);
bool gw_json_members_next(gw_json_members_t *it);

/* Iterates the elements of an array span, like gw_json_members. */
typedef struct gw_json_elems {
    const char *p, *end;
    const gw_json_index_t *idx;
    gw_json_span_t value;
} gw_json_elems_t;

void gw_json_elems_init(gw_json_elems_t *it, gw_json_span_t arr);
bool gw_json_elems_next(gw_json_elems_t *it);

/* Decodes a string span (quotes included, already validated) into out as UTF-8, at most
 * out_size - 1 bytes, NUL-terminated. Returns the decoded length, which may exceed
 * out_size - 1 (the text was truncated then). */
size_t gw_json_string_decode(gw_json_span_t s, char *out, size_t out_size);

/* True if the key span (quotes included) decodes to exactly name. */
bool gw_json_key_is(gw_json_span_t key, const char *name);

#endif
