/*
 * Fuzz target: gw_params_to_json, the query string of the pixel and webhook endpoints as a
 * JSON object (gateway/ingest.h).
 *
 * The input is split into parameters at '&' (and NUL), each into name and value at its first
 * '=' (no '=': a NULL value). Each run is done twice, with the gateway's skip list
 * ({"writeKey"}) and without one. The output must parse with json-c (strict; depth unbounded:
 * every dot nests one level) as an object; a parameter with a plain name (no dot), not skipped
 * and not overridden later, is in it as a string with its value. The gateway's scanner must
 * accept the output too, unless a value is not UTF-8 or the names nest over 32 deep (both then
 * 400s of the ingest path, which scans what this builds).
 */
#include "fuzz_util.h"
#include "common/buf.h"
#include "gateway/ingest.h"

enum { MAX_PARAMS = 4096 };

static void run(char **names, char **values, size_t n, const char *const *skip)
{
    sl_buf_t out = SL_BUF_INIT;
    gw_params_to_json((const char *const *)names, (const char *const *)values, n, skip, &out);
    FUZZ_CHECK(out.data && out.len == strlen(out.data), "output of %zu bytes isn't one C string",
               out.len);
    json_object *o;
    enum json_tokener_error jerr;
    /* Deep enough for the output: one level per dot (json-c allocates the depth up front). */
    int depth = 2;
    for (size_t i = 0; i < n; i++) {
        int dots = 2;
        for (const char *c = names[i]; *c; c++)
            dots += *c == '.';
        depth = dots > depth ? dots : depth;
    }
    FUZZ_CHECK(fuzz_jsonc_parse(out.data, out.len, JSON_TOKENER_STRICT, depth, &o, &jerr) &&
                   json_object_is_type(o, json_type_object),
               "json-c: %s: %s", json_tokener_error_desc(jerr), out.data);
    for (size_t i = 0; i < n; i++) {
        const char *name = names[i];
        if (!*name || strchr(name, '.'))
            continue;
        bool skipped = false;
        for (const char *const *s = skip; s && *s; s++)
            skipped |= strcmp(*s, name) == 0;
        /* A later parameter named "name" or "name.x" decides its value. */
        bool later = false;
        size_t k = strlen(name);
        for (size_t j = i + 1; j < n && !later; j++)
            later = strncmp(names[j], name, k) == 0 && (names[j][k] == '\0' || names[j][k] == '.');
        if (skipped || later)
            continue;
        json_object *v;
        const char *want = values[i] ? values[i] : "";
        FUZZ_CHECK(json_object_object_get_ex(o, name, &v) &&
                       json_object_is_type(v, json_type_string) &&
                       strcmp(json_object_get_string(v), want) == 0,
                   "parameter \"%s\" isn't the string \"%s\" in %s", name, want, out.data);
    }
    json_object_put(o);

    sl_json_span_t span;
    sl_json_error_t err;
    if (!sl_json_scan_document(out.data, out.len, &span, &err))
        FUZZ_CHECK(strcmp(err.msg, "invalid UTF-8 in string") == 0 ||
                       strcmp(err.msg, "nesting is too deep") == 0,
                   "the gateway's scanner rejects the output: %s at %zu: %s", err.msg, err.offset,
                   out.data);
    else
        FUZZ_CHECK(span.type == SL_JSON_OBJECT, "not an object");
    sl_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    char **names = malloc(MAX_PARAMS * sizeof(char *));
    char **values = malloc(MAX_PARAMS * sizeof(char *));
    size_t n = 0;
    char *p = copy, *end = copy + size;
    while (p <= end && n < MAX_PARAMS) {
        char *q = p;
        while (q < end && *q != '&' && *q != '\0')
            q++;
        *q = '\0';
        char *eq = strchr(p, '=');
        if (eq)
            *eq = '\0';
        names[n] = p;
        values[n] = eq ? eq + 1 : NULL;
        n++;
        p = q + 1;
    }
    static const char *const skip[] = {"writeKey", NULL};
    run(names, values, n, skip);
    run(names, values, n, NULL);
    free(names);
    free(values);
    free(copy);
    return 0;
}
