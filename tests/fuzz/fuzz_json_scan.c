/*
 * Fuzz target: the gateway's strict JSON scanner (common/json_scan.h).
 *
 * For every input: sl_json_scan_document either accepts with a span inside the input or
 * rejects with a message and an offset inside it. An accepted document is walked with the
 * member and element iterators, every value span is scanned again on its own (same type and
 * length), every string is decoded into buffers of several sizes (never written past, always
 * NUL-terminated, a prefix of the full text, valid UTF-8) and every key checked with
 * sl_json_key_is.
 *
 * Differential check against json-c 0.16 (JSON_TOKENER_STRICT, default depth 32):
 *   - what the scanner accepts, json-c accepts, with the same tree: types, array lengths,
 *     object keys (json-c keeps the last of duplicate keys and cuts a key at an escaped NUL)
 *     and string contents byte for byte (but for a json-c 0.16 bug: see ref_decode()). json-c's
 * depth counts every value (a scalar inside 32 nested containers is too deep for it); the scanner
 * must not accept more.
 *   - what json-c accepts and the scanner rejects must be something json-c doesn't check:
 *     invalid UTF-8, unpaired UTF-16 surrogates, raw control characters in strings, and
 *     json-c's lax grammar (NaN, Infinity, "1.", "00", single-quoted keys); see lax_jsonc().
 *     Inputs with NUL bytes are left out of this direction (json-c stops at a NUL).
 */
#include "fuzz_util.h"

/* Decodes s into buffers of several sizes: the result never changes, nothing is written past
 * out_size, the text is NUL-terminated and a prefix of the full decoding. */
static void check_decode_sizes(sl_json_span_t s, const char *full, size_t n)
{
    const size_t sizes[] = {1, 2, 3, 4, 5, 7, 16, n, n + 1, n + 2};
    enum { CANARY = 16 };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t k = sizes[i];
        if (k == 0)
            continue;
        /* Exactly k bytes, so ASan sees any overflow... */
        char *exact = malloc(k);
        size_t r = sl_json_string_decode(s, exact, k);
        FUZZ_CHECK(r == n, "decode into %zu bytes returned %zu, full length %zu", k, r, n);
        size_t t = n < k - 1 ? n : k - 1;
        FUZZ_CHECK(memcmp(exact, full, t) == 0 && exact[t] == '\0',
                   "decode into %zu bytes is not the NUL-terminated %zu-byte prefix", k, t);
        free(exact);
        /* ...and a canary after them for the builds without it. */
        char *b = malloc(k + CANARY);
        memset(b, 0xA5, k + CANARY);
        sl_json_string_decode(s, b, k);
        for (size_t j = k; j < k + CANARY; j++)
            FUZZ_CHECK((unsigned char)b[j] == 0xA5, "decode into %zu bytes wrote byte %zu", k, j);
        free(b);
    }
}

static void check_reparse(sl_json_span_t v)
{
    sl_json_span_t again;
    sl_json_error_t err;
    FUZZ_CHECK(sl_json_scan_document(v.p, v.len, &again, &err),
               "a value span the iterator gave doesn't scan on its own: %s at %zu", err.msg,
               err.offset);
    FUZZ_CHECK(again.p == v.p && again.len == v.len && again.type == v.type,
               "value span rescans differently: len %zu type %d, then len %zu type %d", v.len,
               (int)v.type, again.len, (int)again.type);
}

static uint32_t hex4(const char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 4 | (uint32_t)(p[i] <= '9' ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10);
    return v;
}

/*
 * A second decoder of a validated string span, written apart from json_scan.c, into out (room
 * for s.len bytes). With jsonc, an escaped surrogate pair whose code point is U+xD800..U+xDFFF
 * of planes 1-16 (U+1D800, U+2D800, ...) becomes U+FFFD, as json-c 0.16 decodes it (its bug:
 * it checks the combined code point with a 16-bit surrogate mask).
 */
static size_t ref_decode(sl_json_span_t s, bool jsonc, char *out)
{
    const char *p = s.p + 1, *end = s.p + s.len - 1;
    size_t n = 0;
    while (p < end) {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        char e = p[1];
        p += 2;
        const char *simple = strchr("\"\"\\\\//b\bf\fn\nr\rt\t", e);
        if (e != 'u') {
            out[n++] = simple[1];
            continue;
        }
        uint32_t cp = hex4(p);
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(p + 2) - 0xDC00);
            p += 6;
            if (jsonc && (cp & 0xF800) == 0xD800)
                cp = 0xFFFD;
        }
        if (cp < 0x80) {
            out[n++] = (char)cp;
        } else if (cp < 0x800) {
            out[n++] = (char)(0xC0 | cp >> 6);
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[n++] = (char)(0xE0 | cp >> 12);
            out[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[n++] = (char)(0xF0 | cp >> 18);
            out[n++] = (char)(0x80 | (cp >> 12 & 0x3F));
            out[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
            out[n++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return n;
}

static void walk(sl_json_span_t v, const char *lo, const char *hi, json_object *jc, bool cmp);

/* A string value or key: decoded text checked; returned (caller frees) with its length. */
static char *check_string(sl_json_span_t s, size_t *n)
{
    FUZZ_CHECK(s.type == SL_JSON_STRING && s.len >= 2 && s.p[0] == '"' && s.p[s.len - 1] == '"',
               "string span of %zu bytes isn't quoted", s.len);
    char *text = fuzz_decode(s, n);
    FUZZ_CHECK(*n <= s.len - 2, "decoded %zu bytes from a %zu-byte string", *n, s.len);
    FUZZ_CHECK(fuzz_utf8_ok(text, *n), "decoded string is not valid UTF-8");
    char *ref = malloc(s.len);
    FUZZ_CHECK(ref_decode(s, false, ref) == *n && memcmp(ref, text, *n) == 0,
               "sl_json_string_decode and the reference decoder differ");
    free(ref);
    check_decode_sizes(s, text, *n);
    return text;
}

static void walk_object(sl_json_span_t v, json_object *jc, bool cmp)
{
    FUZZ_CHECK(!cmp || json_object_is_type(jc, json_type_object), "json-c: not an object");
    enum { MAX_MEMBERS = 4096 };
    sl_json_span_t *keys = malloc(MAX_MEMBERS * sizeof(*keys));
    sl_json_span_t *vals = malloc(MAX_MEMBERS * sizeof(*vals));
    char **names = malloc(MAX_MEMBERS * sizeof(*names));
    size_t m = 0;
    sl_json_members_t it;
    sl_json_members_init(&it, v);
    const char *prev_end = v.p + 1;
    while (sl_json_members_next(&it)) {
        FUZZ_CHECK(m < MAX_MEMBERS, "more members than fit a fuzz input");
        FUZZ_CHECK(it.key.p >= prev_end && it.member_start == it.key.p &&
                       it.value.p >= it.key.p + it.key.len &&
                       it.value.p + it.value.len <= v.p + v.len - 1,
                   "member spans out of order or outside the object");
        prev_end = it.value.p + it.value.len;
        check_reparse(it.key);
        size_t n;
        char *name = check_string(it.key, &n);
        if (n < 128 && memchr(name, '\0', n) == NULL) {
            /* sl_json_key_is compares up to 127 decoded bytes (its buffer). */
            FUZZ_CHECK(sl_json_key_is(it.key, name), "sl_json_key_is(key, its own text) false");
            char *longer = malloc(n + 2);
            memcpy(longer, name, n);
            memcpy(longer + n, "x", 2);
            FUZZ_CHECK(!sl_json_key_is(it.key, longer), "sl_json_key_is true for a longer name");
            free(longer);
            if (n > 0) {
                char *shorter = strndup(name, n - 1);
                FUZZ_CHECK(!sl_json_key_is(it.key, shorter), "sl_json_key_is true for a prefix");
                free(shorter);
            }
        }
        free(name);
        /* The key as json-c has it: its decoding, cut at a NUL. */
        char *jname = malloc(it.key.len);
        jname[ref_decode(it.key, true, jname)] = '\0';
        keys[m] = it.key, vals[m] = it.value, names[m] = jname;
        m++;
    }
    /* The iterator used up the object: only whitespace is left before the '}'. */
    const char *p = it.p;
    while (p < it.end && fuzz_is_ws(*p))
        p++;
    FUZZ_CHECK(p == v.p + v.len - 1, "member iterator stopped %zu bytes before the '}'",
               (size_t)(v.p + v.len - 1 - p));

    /* json-c keeps the last of duplicate keys, and a key only up to an escaped NUL. */
    size_t distinct = 0;
    for (size_t i = 0; i < m; i++) {
        bool last = true;
        for (size_t j = i + 1; j < m && last; j++)
            last = strcmp(names[i], names[j]) != 0;
        distinct += last;
        json_object *child = NULL;
        if (cmp && last)
            FUZZ_CHECK(json_object_object_get_ex(jc, names[i], &child),
                       "json-c has no member \"%s\"", names[i]);
        walk(vals[i], keys[i].p + keys[i].len, v.p + v.len - 1, child, cmp && last);
    }
    if (cmp)
        FUZZ_CHECK((size_t)json_object_object_length(jc) == distinct,
                   "json-c has %d members, the scanner %zu distinct keys",
                   json_object_object_length(jc), distinct);
    for (size_t i = 0; i < m; i++)
        free(names[i]);
    free(names);
    free(keys);
    free(vals);
}

static void walk_array(sl_json_span_t v, json_object *jc, bool cmp)
{
    FUZZ_CHECK(!cmp || json_object_is_type(jc, json_type_array), "json-c: not an array");
    sl_json_elems_t it;
    sl_json_elems_init(&it, v);
    size_t i = 0;
    const char *prev_end = v.p + 1;
    while (sl_json_elems_next(&it)) {
        FUZZ_CHECK(it.value.p >= prev_end && it.value.p + it.value.len <= v.p + v.len - 1,
                   "element span out of order or outside the array");
        prev_end = it.value.p + it.value.len;
        json_object *child = NULL;
        if (cmp) {
            FUZZ_CHECK(i < json_object_array_length(jc), "json-c's array is shorter");
            child = json_object_array_get_idx(jc, i);
        }
        walk(it.value, v.p + 1, v.p + v.len - 1, child, cmp);
        i++;
    }
    const char *p = it.p;
    while (p < it.end && fuzz_is_ws(*p))
        p++;
    FUZZ_CHECK(p == v.p + v.len - 1, "element iterator stopped %zu bytes before the ']'",
               (size_t)(v.p + v.len - 1 - p));
    if (cmp)
        FUZZ_CHECK(json_object_array_length(jc) == i, "json-c's array has %zu elements, not %zu",
                   json_object_array_length(jc), i);
}

/* v is a value of an accepted document, inside [lo, hi); jc json-c's value for it when cmp. */
static void walk(sl_json_span_t v, const char *lo, const char *hi, json_object *jc, bool cmp)
{
    FUZZ_CHECK(v.p >= lo && v.len > 0 && v.p + v.len <= hi, "value span outside its parent");
    check_reparse(v);
    switch (v.type) {
    case SL_JSON_OBJECT:
        walk_object(v, jc, cmp);
        break;
    case SL_JSON_ARRAY:
        walk_array(v, jc, cmp);
        break;
    case SL_JSON_STRING: {
        size_t n;
        char *text = check_string(v, &n);
        if (cmp) {
            FUZZ_CHECK(json_object_is_type(jc, json_type_string), "json-c: not a string");
            char *like_jsonc = malloc(v.len);
            size_t m = ref_decode(v, true, like_jsonc);
            FUZZ_CHECK((size_t)json_object_get_string_len(jc) == m &&
                           memcmp(json_object_get_string(jc), like_jsonc, m) == 0,
                       "string decodes to %zu bytes (%zu the json-c way), json-c's to %d", n, m,
                       json_object_get_string_len(jc));
            free(like_jsonc);
        }
        free(text);
        break;
    }
    case SL_JSON_NUMBER:
        FUZZ_CHECK(!cmp || json_object_is_type(jc, json_type_int) ||
                       json_object_is_type(jc, json_type_double),
                   "json-c: not a number");
        break;
    case SL_JSON_TRUE:
    case SL_JSON_FALSE:
        FUZZ_CHECK(!cmp || (json_object_is_type(jc, json_type_boolean) &&
                            json_object_get_boolean(jc) == (v.type == SL_JSON_TRUE)),
                   "json-c: not the same boolean");
        break;
    case SL_JSON_NULL:
        FUZZ_CHECK(!cmp || jc == NULL, "json-c: not null");
        break;
    default:
        FUZZ_CHECK(0, "span of type %d", (int)v.type);
    }
}

/* json-c 0.16 strict mode still takes these, which RFC 8259 doesn't: NaN and Infinity, numbers
 * with leading zeros ("00", "-01" at the top level) or ending in '.' ("1.", "0.e1") and
 * single-quoted object keys ({'a':1}). A rejection by the scanner is one of them only if it
 * happened at such a place. */
static bool lax_jsonc(const char *buf, size_t len, const sl_json_error_t *err)
{
    if (err->offset >= len)
        return false;
    char c = buf[err->offset];
    const char *m = err->msg;
    if (strcmp(m, "invalid number") == 0)
        return true;
    if (strcmp(m, "unexpected data after the JSON value") == 0 ||
        strncmp(m, "expected ','", 12) == 0)
        return c >= '0' && c <= '9';
    if (strcmp(m, "expected a string key in object") == 0)
        return c == '\'';
    return (c == 'N' || c == 'I') && strcmp(m, "unexpected character (expected a JSON value)") == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    sl_json_span_t v;
    sl_json_error_t err = {0, NULL};
    bool ours = sl_json_scan_document(buf, size, &v, &err);
    if (!ours) {
        FUZZ_CHECK(err.msg && *err.msg && err.offset <= size,
                   "rejection without a message or with offset %zu of %zu", err.offset, size);
    } else {
        FUZZ_CHECK(v.p >= buf && v.len > 0 && v.p + v.len <= buf + size &&
                       v.type != SL_JSON_INVALID,
                   "accepted with a span outside the input");
    }

    json_object *jc = NULL;
    enum json_tokener_error jerr = json_tokener_success;
    bool theirs = fuzz_jsonc_parse(buf, size, JSON_TOKENER_STRICT, 0, &jc, &jerr);
    if (ours) {
        if (!theirs && fuzz_known("depth33") && fuzz_value_depth(v) > SL_JSON_MAX_DEPTH)
            FUZZ_CHECK(jerr == json_tokener_error_depth, "json-c: %s, not too deep",
                       json_tokener_error_desc(jerr));
        else
            FUZZ_CHECK(theirs, "the scanner accepts what json-c (strict) rejects: %s%s",
                       json_tokener_error_desc(jerr),
                       jerr == json_tokener_error_depth
                           ? " (json-c counts scalars in the depth; the scanner doesn't)"
                           : "");
        walk(v, buf, buf + size, jc, theirs);
    } else if (theirs && !memchr(buf, '\0', size)) {
        bool json_c_unchecked = strcmp(err.msg, "invalid UTF-8 in string") == 0 ||
                                strcmp(err.msg, "unpaired UTF-16 surrogate in string") == 0 ||
                                strcmp(err.msg, "control character in string (escape it)") == 0 ||
                                lax_jsonc(buf, size, &err);
        FUZZ_CHECK(json_c_unchecked, "json-c (strict) accepts what the scanner rejects: %s at %zu",
                   err.msg, err.offset);
    }
    json_object_put(jc);
    return 0;
}
