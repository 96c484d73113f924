/*
 * Workspace config parsing, validation and indexing, see workspace.h. A snapshot owns its
 * json-c tree; it is never modified after sl_workspace_parse returns, so any thread may read it.
 */
#include "common/workspace.h"
#include "common/err.h"
#include "common/mem.h"

#include <openssl/evp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sl_workspace {
    atomic_int refs;
    json_object *root;
    char *text;
    char version[65];
    const char *id;
    sl_source_t *sources;
    size_t nsources;
    const sl_source_t **by_key; /* sorted by writeKey */
    sl_destination_t **dests;   /* every destination object, sorted by id */
    size_t ndests;
};

static const char *get_str(json_object *o, const char *k)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return NULL;
}

/* Reads an optional boolean (default true). Returns -1 when present but not a boolean. */
static int get_enabled(json_object *o, bool *out)
{
    json_object *v;
    *out = true;
    if (!json_object_object_get_ex(o, "enabled", &v) || !v)
        return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return -1;
    *out = json_object_get_boolean(v);
    return 0;
}

/* The object under key k, created empty when missing so callers never see NULL. */
static json_object *ensure_object(json_object *o, const char *k)
{
    json_object *v;
    if (json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_object))
        return v;
    v = json_object_new_object();
    json_object_object_add(o, k, v);
    return v;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const sl_source_t *const *)a)->write_key,
                  (*(const sl_source_t *const *)b)->write_key);
}

static int cmp_dest(const void *a, const void *b)
{
    return strcmp((*(sl_destination_t *const *)a)->id, (*(sl_destination_t *const *)b)->id);
}

static void ws_free(sl_workspace_t *ws)
{
    for (size_t i = 0; i < ws->nsources; i++)
        free((void *)ws->sources[i].destinations);
    free(ws->sources);
    free(ws->by_key);
    for (size_t i = 0; i < ws->ndests; i++)
        free(ws->dests[i]);
    free(ws->dests);
    free(ws->text);
    if (ws->root)
        json_object_put(ws->root);
    free(ws);
}

static int parse_destination(json_object *dj, size_t si, size_t di, sl_destination_t **out,
                             char *errstr, size_t errstr_size)
{
    if (!json_object_is_type(dj, json_type_object))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "sources[%zu].destinations[%zu] is not an object", si, di);
    sl_destination_t *d = sl_calloc(1, sizeof(*d));
    *out = d;
    d->json = dj;
    d->id = get_str(dj, "id");
    if (!d->id || !*d->id)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "sources[%zu].destinations[%zu].id is missing or not a string", si, di);
    d->name = get_str(dj, "name") ? get_str(dj, "name") : "";
    if (get_enabled(dj, &d->enabled) < 0)
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "sources[%zu].destinations[%zu].enabled is not a boolean", si, di);
    json_object *def;
    if (!json_object_object_get_ex(dj, "destinationDefinition", &def) ||
        !json_object_is_type(def, json_type_object) || !get_str(def, "name"))
        return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                          "sources[%zu].destinations[%zu] (id \"%s\"): destinationDefinition.name "
                          "is missing",
                          si, di, d->id);
    d->def_name = get_str(def, "name");
    d->def_display_name = get_str(def, "displayName") ? get_str(def, "displayName") : "";
    d->config = ensure_object(dj, "config");
    d->def_config = ensure_object(def, "config");
    return 0;
}

int sl_workspace_parse(const char *json, size_t len, sl_workspace_t **wsp, char *errstr,
                       size_t errstr_size)
{
    int err = 0;
    sl_workspace_t *ws = sl_calloc(1, sizeof(*ws));
    atomic_init(&ws->refs, 1);

    json_tokener *tok = json_tokener_new();
    ws->root = json_tokener_parse_ex(tok, json, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!ws->root || jerr != json_tokener_success) {
        int line = 1;
        for (size_t i = 0; i < end && i < len; i++)
            line += json[i] == '\n';
        err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "not valid JSON (line %d): %s", line,
                         jerr == json_tokener_success    ? "unexpected end of input"
                         : jerr == json_tokener_continue ? "unexpected end of input"
                                                         : json_tokener_error_desc(jerr));
        goto out;
    }
    if (!json_object_is_type(ws->root, json_type_object)) {
        err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "the document is not a JSON object");
        goto out;
    }
    /* The canonical text and its hash identify this version; taken before defaults are added. */
    ws->text = sl_strdup(json_object_to_json_string_ext(ws->root, JSON_C_TO_STRING_PLAIN));
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(ws->text, strlen(ws->text), md, &mdlen, EVP_sha256(), NULL);
    for (unsigned int i = 0; i < mdlen && i < 32; i++)
        snprintf(ws->version + 2 * i, 3, "%02x", md[i]);
    ws->id = get_str(ws->root, "workspaceId") ? get_str(ws->root, "workspaceId") : "";

    json_object *sources;
    if (!json_object_object_get_ex(ws->root, "sources", &sources) ||
        !json_object_is_type(sources, json_type_array)) {
        err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                         "\"sources\" is missing or not an array");
        goto out;
    }
    ws->nsources = json_object_array_length(sources);
    ws->sources = sl_calloc(ws->nsources, sizeof(*ws->sources));
    ws->by_key = sl_calloc(ws->nsources, sizeof(*ws->by_key));
    for (size_t i = 0; i < ws->nsources; i++) {
        json_object *sj = json_object_array_get_idx(sources, i);
        sl_source_t *s = &ws->sources[i];
        if (!json_object_is_type(sj, json_type_object)) {
            err =
                sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "sources[%zu] is not an object", i);
            goto out;
        }
        s->json = sj;
        s->id = get_str(sj, "id");
        s->write_key = get_str(sj, "writeKey");
        s->name = get_str(sj, "name") ? get_str(sj, "name") : "";
        if (!s->id || !*s->id) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "sources[%zu].id is missing or not a string", i);
            goto out;
        }
        if (!s->write_key || !*s->write_key) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "sources[%zu].writeKey is missing or not a string", i);
            goto out;
        }
        if (get_enabled(sj, &s->enabled) < 0) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "sources[%zu].enabled is not a boolean", i);
            goto out;
        }
        json_object *def;
        if (json_object_object_get_ex(sj, "sourceDefinition", &def)) {
            s->def_name = get_str(def, "name");
            s->category = get_str(def, "category");
        }
        if (!s->def_name)
            s->def_name = "";
        if (!s->category)
            s->category = "";
        for (size_t j = 0; j < i; j++) {
            if (strcmp(ws->sources[j].write_key, s->write_key) == 0) {
                err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                                 "writeKey \"%s\" is used by sources[%zu] and sources[%zu]",
                                 s->write_key, j, i);
                goto out;
            }
            if (strcmp(ws->sources[j].id, s->id) == 0) {
                err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                                 "source id \"%s\" is used by sources[%zu] and sources[%zu]", s->id,
                                 j, i);
                goto out;
            }
        }
        ws->by_key[i] = s;

        json_object *dests;
        if (!json_object_object_get_ex(sj, "destinations", &dests) || !dests)
            continue;
        if (!json_object_is_type(dests, json_type_array)) {
            err = sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                             "sources[%zu].destinations is not an array", i);
            goto out;
        }
        size_t nd = json_object_array_length(dests);
        const sl_destination_t **list = sl_calloc(nd, sizeof(*list));
        s->destinations = list;
        ws->dests = sl_realloc(ws->dests, (ws->ndests + nd) * sizeof(*ws->dests));
        for (size_t k = 0; k < nd; k++) {
            sl_destination_t *d = NULL;
            err = parse_destination(json_object_array_get_idx(dests, k), i, k, &d, errstr,
                                    errstr_size);
            if (d)
                ws->dests[ws->ndests++] = d;
            if (err)
                goto out;
            list[k] = d;
            s->ndestinations++;
        }
    }
    qsort(ws->by_key, ws->nsources, sizeof(*ws->by_key), cmp_key);
    qsort(ws->dests, ws->ndests, sizeof(*ws->dests), cmp_dest);
out:
    if (err) {
        ws_free(ws);
        return err;
    }
    *wsp = ws;
    return 0;
}

sl_workspace_t *sl_workspace_ref(sl_workspace_t *ws)
{
    atomic_fetch_add(&ws->refs, 1);
    return ws;
}

void sl_workspace_unref(sl_workspace_t *ws)
{
    if (ws && atomic_fetch_sub(&ws->refs, 1) == 1)
        ws_free(ws);
}

const char *sl_workspace_id(const sl_workspace_t *ws)
{
    return ws->id;
}

const char *sl_workspace_version(const sl_workspace_t *ws)
{
    return ws->version;
}

const char *sl_workspace_text(const sl_workspace_t *ws)
{
    return ws->text;
}

json_object *sl_workspace_json(const sl_workspace_t *ws)
{
    return ws->root;
}

size_t sl_workspace_nsources(const sl_workspace_t *ws)
{
    return ws->nsources;
}

const sl_source_t *sl_workspace_source_at(const sl_workspace_t *ws, size_t i)
{
    return i < ws->nsources ? &ws->sources[i] : NULL;
}

const sl_source_t *sl_workspace_source_by_write_key(const sl_workspace_t *ws, const char *key)
{
    size_t lo = 0, hi = ws->nsources;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ws->by_key[mid]->write_key, key);
        if (c == 0)
            return ws->by_key[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const sl_source_t *sl_workspace_source_by_id(const sl_workspace_t *ws, const char *id)
{
    for (size_t i = 0; i < ws->nsources; i++)
        if (strcmp(ws->sources[i].id, id) == 0)
            return &ws->sources[i];
    return NULL;
}

const sl_destination_t *sl_workspace_destination_by_id(const sl_workspace_t *ws, const char *id)
{
    size_t lo = 0, hi = ws->ndests;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ws->dests[mid]->id, id);
        if (c == 0)
            return ws->dests[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}
