/*
 * Shared helpers of the fuzz targets (tests/fuzz/README.md). Header-only, so each target is one
 * translation unit that builds both as a libFuzzer binary and, with corpus_main.c, as the
 * regression test of the normal build.
 */
#ifndef SLUICE_FUZZ_UTIL_H
#define SLUICE_FUZZ_UTIL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_scan.h"

/* A broken invariant: say which and abort, so libFuzzer (or the corpus test) reports it. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "\nfuzz invariant failed at %s:%d: %s\n  ", __FILE__, __LINE__,        \
                    #cond);                                                                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/*
 * Known, reported bugs the targets can be told to tolerate while fuzzing goes on looking for
 * others: SLUICE_FUZZ_KNOWN="tag,tag". Unset (CI, the corpus test), every invariant holds.
 * Both tags below are bugs fixed since (306aa99); add a tag for the next one found.
 * Tags: depth33 (json_scan accepts a value nested 33 deep, which json-c rejects), longkey
 * (ingest misses a field whose escaped key is over 40 bytes long; see fuzz_ingest.c).
 */
static inline bool fuzz_known(const char *tag)
{
    const char *k = getenv("SLUICE_FUZZ_KNOWN");
    if (!k)
        return false;
    size_t n = strlen(tag);
    for (const char *p = k; (p = strstr(p, tag)) != NULL; p += n)
        if ((p == k || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

static inline bool fuzz_is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* True if s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF). */
static inline bool fuzz_utf8_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if ((size_t)(end - p) < k)
            return false;
        for (size_t i = 1; i < k; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        p += k;
    }
    return true;
}

/*
 * Parses buf[0..len) as one JSON document with json-c, the way a consumer would: flags (0 or
 * JSON_TOKENER_STRICT), depth (0: json-c's default, 32). The whole buffer must be consumed
 * (trailing whitespace allowed). Returns true with *out (NULL for `null`; the caller puts it),
 * or false with *err.
 */
static inline bool fuzz_jsonc_parse(const char *buf, size_t len, int flags, int depth,
                                    json_object **out, enum json_tokener_error *err)
{
    /* A terminating NUL tells json-c the input ends (else "123" stays json_tokener_continue). */
    char *copy = malloc(len + 1);
    memcpy(copy, buf, len);
    copy[len] = '\0';
    json_tokener *tok = depth ? json_tokener_new_ex(depth) : json_tokener_new();
    json_tokener_set_flags(tok, flags);
    json_object *o = json_tokener_parse_ex(tok, copy, (int)(len + 1));
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    free(copy);
    if (e == json_tokener_success && end < len) {
        /* json-c stops at the value's end in non-strict mode: only whitespace may follow. */
        for (size_t i = end; i < len && e == json_tokener_success; i++)
            if (!fuzz_is_ws(buf[i]))
                e = json_tokener_error_parse_unexpected;
    }
    if (e != json_tokener_success) {
        json_object_put(o);
        *out = NULL;
        if (err)
            *err = e;
        return false;
    }
    *out = o;
    if (err)
        *err = e;
    return true;
}

/* The deepest value of an accepted document, json-c's way: the top-level value is at depth 1
 * and every value (scalars too) inside a container is one deeper. */
static inline int fuzz_value_depth(sl_json_span_t v)
{
    int max = 0;
    if (v.type == SL_JSON_OBJECT) {
        sl_json_members_t it;
        sl_json_members_init(&it, v);
        while (sl_json_members_next(&it)) {
            int d = fuzz_value_depth(it.value);
            max = d > max ? d : max;
        }
    } else if (v.type == SL_JSON_ARRAY) {
        sl_json_elems_t it;
        sl_json_elems_init(&it, v);
        while (sl_json_elems_next(&it)) {
            int d = fuzz_value_depth(it.value);
            max = d > max ? d : max;
        }
    }
    return max + 1;
}

/* A string span decoded into a new NUL-terminated buffer (which may hold NULs); *n its length. */
static inline char *fuzz_decode(sl_json_span_t s, size_t *n)
{
    char probe[1];
    size_t len = sl_json_string_decode(s, probe, sizeof(probe));
    char *out = malloc(len + 1);
    size_t again = sl_json_string_decode(s, out, len + 1);
    FUZZ_CHECK(again == len, "decode length changed: %zu then %zu", len, again);
    *n = len;
    return out;
}

#endif
