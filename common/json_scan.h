/*
 * A strict JSON scanner for the hot paths. It checks a document against RFC 8259 (grammar,
 * escapes, UTF-8, nesting depth) without building a tree, and walks an object's members as
 * spans of the original bytes, so the gateway can splice its fields into an event, and the
 * processor can read the few fields it decides on, without parsing and serializing it again.
 * Pure functions over a buffer; the only allocation is the optional index's.
 */
#ifndef SL_JSON_SCAN_H
#define SL_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* Deepest nesting accepted, counted from the value scanned (json-c's default limit). */
#define SL_JSON_MAX_DEPTH 32

typedef enum sl_json_type {
    SL_JSON_INVALID,
    SL_JSON_OBJECT,
    SL_JSON_ARRAY,
    SL_JSON_STRING,
    SL_JSON_NUMBER,
    SL_JSON_TRUE,
    SL_JSON_FALSE,
    SL_JSON_NULL
} sl_json_type_t;

/* Where each container of a scanned document ends, so walking it never rescans bytes: the
 * containers' start and end offsets in document order. Owned by the caller, reusable. */
typedef struct sl_json_index {
    const char *base;
    size_t *starts, *ends;
    size_t n, cap;
} sl_json_index_t;

/* A value in the document: its bytes (a string's quotes included) and its type. idx, when
 * set, speeds up iterating it (spans built by hand leave it NULL). */
typedef struct sl_json_span {
    const char *p;
    size_t len;
    sl_json_type_t type;
    const sl_json_index_t *idx;
} sl_json_span_t;

/* Where scanning failed and why. */
typedef struct sl_json_error {
    size_t offset;   /* from the start of the buffer given to sl_json_scan_document */
    const char *msg; /* static text, e.g. "invalid escape in string" */
} sl_json_error_t;

/* Checks that buf[0..len) is exactly one JSON value, surrounded by optional whitespace.
 * Returns true and the value's span, or false with err. */
bool sl_json_scan_document(const char *buf, size_t len, sl_json_span_t *value,
                           sl_json_error_t *err);
/* The same, also filling idx (emptied first), which the returned span and every span the
 * iterators derive from it refer to: idx must outlive them. */
bool sl_json_scan_indexed(const char *buf, size_t len, sl_json_span_t *value, sl_json_error_t *err,
                          sl_json_index_t *idx);
void sl_json_index_init(sl_json_index_t *idx);
void sl_json_index_free(sl_json_index_t *idx);

/* Iterates the members of an object span that sl_json_scan_document accepted (no error
 * checking is repeated). Usage:
 *   sl_json_members_t it; sl_json_members_init(&it, obj);
 *   while (sl_json_members_next(&it)) { it.key, it.member_start, it.value ... } */
typedef struct sl_json_members {
    const char *p, *end;
    const sl_json_index_t *idx;
    sl_json_span_t key;       /* the key string, quotes included */
    sl_json_span_t value;     /* the member's value */
    const char *member_start; /* the member's first byte (the key's opening quote) */
} sl_json_members_t;

void sl_json_members_init(sl_json_members_t *it, sl_json_span_t obj);
bool sl_json_members_next(sl_json_members_t *it);

/* Iterates the elements of an array span, like sl_json_members. */
typedef struct sl_json_elems {
    const char *p, *end;
    const sl_json_index_t *idx;
    sl_json_span_t value;
} sl_json_elems_t;

void sl_json_elems_init(sl_json_elems_t *it, sl_json_span_t arr);
bool sl_json_elems_next(sl_json_elems_t *it);

/* Decodes a string span (quotes included, already validated) into out as UTF-8, at most
 * out_size - 1 bytes, NUL-terminated. Returns the decoded length, which may exceed
 * out_size - 1 (the text was truncated then). */
size_t sl_json_string_decode(sl_json_span_t s, char *out, size_t out_size);

/* True if the key span (quotes included) decodes to exactly name, or to name followed by a NUL
 * and anything (json-c cuts keys at a NUL). */
bool sl_json_key_is(sl_json_span_t key, const char *name);

#endif
