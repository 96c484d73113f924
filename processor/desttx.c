/*
 * The destination transformation engine, see desttx.h: compiles the JSON definitions of
 * schemas/destinations/ once at start and runs them per event.
 *
 * A definition (schemas/destinations/<NAME>.json):
 *   name, displayName           destinationDefinition.name / displayName it serves
 *   docs, comment               where the request format comes from, and the choices made
 *   supportedMessageTypes       ["track", ...]; every one needs an entry in "messages"
 *   config                      {"apiKey": {"required": true, "type": "string",
 *                                "enum": [...], "default": ...}}: checked per event
 *   vars                        a mapping evaluated first into $var (endpoints, auth, ...)
 *   defaults                    request fields shared by every message type
 *   messages                    {"track": REQUEST or {"requests": [REQUEST, ...]}, ...}
 *   retryable                   HTTP statuses worth retrying, e.g. [408, 429, "5xx"]
 * REQUEST (each field falls back to "defaults"):
 *   method, url                 templates ("https://x/{{$config.region|lowercase}}")
 *   headers                     {"Name": template}; a header whose template misses a value
 *                               is left out
 *   headerList                  {"from": "$config.headers", "name": "from", "value": "to"}
 *   format                      "json" | "form" (form: {"fields": {"api_key": template},
 *                               "json": "mapping"}: the JSON goes in that parameter) |
 *                               "event" (the event itself, unchanged)
 *   element                     a mapping building this event's object
 *   envelope                    "$elements" (body = [element, ...]) or a mapping whose
 *                               {"to": "events", "from": "$elements"} entry places them
 *   batch                       {"maxEvents": 2000, "maxBytes": 1000000}
 *   hook                        a C hook by name, run on the built element and envelope
 *   when                        a condition; the request is made only when it holds
 * A mapping is a list of entries, applied in order (later ones overwrite):
 *   {"to": "a.b", "from": SOURCE or [SOURCE, ...] (the first present one wins),
 *    "transform": STEP or [STEP, ...], "default": value, "if": COND,
 *    "required": true, "reason": "...",
 *    "spread": true (merge the object's keys into "to"), "omit": [keys],
 *    "rename": {"email": "$email"}, "keyTransform": STEP, "wrap": "value",
 *    "scalarsOnly": true}
 *   An entry without "to" only checks (with "required") that a source is present.
 * SOURCE: a path ("context.os.name", "properties.products.0.sku"; "$config.x", "$var.x",
 *   "$event.x" from inside "each"), or {"value": constant}, {"template": "Viewed {{name}}"},
 *   {"object": mapping}, {"each": path, "mapping": mapping} (one object per array element,
 *   paths relative to the element), {"array": [SOURCE, ...]}, {"path": p},
 *   {"lookup": path, "key": path, "match": "from", "take": "to"} (in a list of objects like
 *   [{"from": "Order Completed", "to": "orders"}], the "take" field of the first one whose
 *   "match" field equals the key; match and take default to from and to); any of them
 *   with "if": COND and "transform". JSON null and "" count as missing.
 * STEP: to_string, to_number, to_int, to_bool, unix_seconds, unix_millis, unix_micros,
 *   iso8601, lowercase, uppercase, trim, snake_case, ga4_event_name, urlencode, base64,
 *   json, array, or {"map": {"from": "to"}, "else": value}.
 * COND: a path (present), {"path": p, "equals": v}, {"path": p, "in": [v, ...]},
 *   {"not": COND}, {"all": [COND, ...]}, {"any": [COND, ...]}; strings compare
 *   case-insensitively.
 * Templates: "text {{path|step|step}} text"; paths of "to" and sources may hold templates.
 */
#include "processor/desttx.h"
#include "common/err.h"
#include "common/mem.h"
#include "common/timeutil.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ELEMENTS_MARK      "\x01sluice-elements\x01"
#define ELEMENTS_MARK_JSON "\"\\u0001sluice-elements\\u0001\""

/* ---- the compiled form ---------------------------------------------------------------- */

enum { R_CUR, R_EVENT, R_CONFIG, R_VAR };

typedef struct tpl tpl_t;
typedef struct mapping mapping_t;

typedef struct path {
    int root;
    size_t n;
    char **seg;
    tpl_t **dyn; /* per segment: a template when it holds {{ }}, else NULL */
} path_t;

typedef enum {
    T_TO_STRING,
    T_TO_NUMBER,
    T_TO_INT,
    T_TO_BOOL,
    T_UNIX_S,
    T_UNIX_MS,
    T_UNIX_US,
    T_ISO8601,
    T_LOWER,
    T_UPPER,
    T_TRIM,
    T_SNAKE,
    T_GA4_NAME,
    T_URLENC,
    T_BASE64,
    T_JSON,
    T_ARRAY,
    T_MAP
} tkind_t;

static const char *const step_names[] = {
    "to_string",      "to_number", "to_int",    "to_bool",   "unix_seconds", "unix_millis",
    "unix_micros",    "iso8601",   "lowercase", "uppercase", "trim",         "snake_case",
    "ga4_event_name", "urlencode", "base64",    "json",      "array"};

typedef struct step {
    tkind_t kind;
    json_object *map, *else_; /* T_MAP; else_ may be NULL */
} step_t;

typedef struct steps {
    step_t *s;
    size_t n;
} steps_t;

typedef struct tpl_part {
    char *lit; /* NULL for a reference */
    size_t lit_len;
    path_t ref;
    steps_t steps;
} tpl_part_t;

struct tpl {
    tpl_part_t *parts;
    size_t n;
};

typedef enum { C_PRESENT, C_EQUALS, C_IN, C_NOT, C_ALL, C_ANY } ckind_t;

typedef struct cond {
    ckind_t kind;
    path_t path;
    json_object *vals; /* C_EQUALS: the value; C_IN: the array */
    struct cond *sub;
    size_t nsub;
} cond_t;

typedef enum {
    S_PATH,
    S_VALUE,
    S_TEMPLATE,
    S_OBJECT,
    S_EACH,
    S_ARRAY,
    S_ELEMENTS,
    S_LOOKUP
} skind_t;

typedef struct src {
    skind_t kind;
    bool at;            /* S_OBJECT: paths are relative to path */
    path_t path;        /* S_PATH, S_EACH, S_OBJECT with at, S_LOOKUP (the list) */
    path_t key;         /* S_LOOKUP */
    char *match, *take; /* S_LOOKUP: the element's fields */
    json_object *value;
    tpl_t *tpl;
    mapping_t *sub;
    struct src *items;
    size_t nitems;
    cond_t *cond;
    steps_t steps;
} src_t;

typedef struct entry {
    bool has_to;
    path_t to;
    src_t *from;
    size_t nfrom;
    steps_t steps;
    json_object *dflt;
    cond_t *cond;
    bool required;
    char *reason;
    bool spread, scalars_only;
    char **omit;
    size_t nomit;
    json_object *rename;
    steps_t key_steps;
    char *wrap;
} entry_t;

struct mapping {
    entry_t *e;
    size_t n;
};

typedef enum { F_JSON, F_FORM, F_EVENT } fmt_t;
typedef enum { ENV_NONE, ENV_ELEMENTS, ENV_MAP } env_t;

typedef struct hdr {
    char *name;
    tpl_t *value;
} hdr_t;

typedef struct reqdef {
    tpl_t *method, *url;
    hdr_t *hdrs;
    size_t nhdrs;
    bool has_hlist;
    path_t hlist;
    char *hname, *hvalue;
    fmt_t fmt;
    hdr_t *form;
    size_t nform;
    char *form_json;
    mapping_t element;
    env_t env;
    mapping_t envelope;
    size_t max_events, max_bytes;
    pr_desttx_hook_fn hook;
    cond_t *when;
} reqdef_t;

typedef struct msgdef {
    char *type;
    reqdef_t *reqs;
    size_t n;
} msgdef_t;

typedef struct cfgkey {
    char *name;
    bool required;
    json_type type;
    bool has_type;
    json_object *enumv, *dflt;
} cfgkey_t;

struct pr_desttx_def {
    char *name, *display;
    json_object *types; /* supportedMessageTypes, owned */
    cfgkey_t *cfg;
    size_t ncfg;
    mapping_t vars;
    msgdef_t *msgs;
    size_t nmsgs;
    int *retry; /* statuses; 1..9 stand for a class (5 = 5xx) */
    size_t nretry;
};

struct pr_desttx {
    pr_desttx_def_t **defs;
    size_t n;
};

struct pr_desttx_req_buf {
    sl_buf_t method, url, headers, body, key, prefix, sep, suffix;
};

/* ---- compiling ------------------------------------------------------------------------- */

typedef struct cc {
    const char *file;
    char *err;
    size_t errsz;
    bool failed;
    json_object *named; /* the definition's "mappings", for {"include": name} */
    int depth;
} cc_t;

static void cerr(cc_t *cc, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cerr(cc_t *cc, const char *where, const char *fmt, ...)
{
    if (cc->failed)
        return;
    cc->failed = true;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(cc->err, cc->errsz, "%s: %s: %s", cc->file, where, msg);
}

/* buf = a + b + c, cut to sz; any of them may be buf itself. */
static const char *join3(char *buf, size_t sz, const char *a, const char *b, const char *c)
{
    char tmp[512];
    size_t n = 0;
    const char *parts[3] = {a, b, c};
    for (size_t i = 0; i < 3; i++)
        for (const char *p = parts[i]; *p && n + 1 < sizeof(tmp); p++)
            tmp[n++] = *p;
    tmp[n] = '\0';
    if (n + 1 > sz)
        n = sz - 1;
    memcpy(buf, tmp, n);
    buf[n] = '\0';
    return buf;
}

/* where + "." + key, into buf (which may hold where) */
static const char *sub_where(char *buf, size_t sz, const char *where, const char *key)
{
    return join3(buf, sz, where, *where ? "." : "", key);
}

/* where + "[i]", into buf (which may hold where) */
static const char *sub_index(char *buf, size_t sz, const char *where, size_t i)
{
    char idx[24];
    snprintf(idx, sizeof(idx), "[%zu]", i);
    return join3(buf, sz, where, idx, "");
}

static json_object *jget(json_object *o, const char *key)
{
    json_object *v;
    if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v))
        return v;
    return NULL;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v = jget(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static tpl_t *compile_tpl(cc_t *cc, const char *where, const char *text);

/* Splits on dots outside {{ }}. */
static void compile_path(cc_t *cc, const char *where, const char *text, bool target, path_t *p)
{
    memset(p, 0, sizeof(*p));
    p->root = R_CUR;
    if (!target) {
        static const struct {
            const char *name;
            int root;
        } roots[] = {{"$event", R_EVENT}, {"$config", R_CONFIG}, {"$var", R_VAR}};
        for (size_t i = 0; i < 3; i++) {
            size_t l = strlen(roots[i].name);
            if (strncmp(text, roots[i].name, l) == 0 && (text[l] == '.' || text[l] == '\0')) {
                p->root = roots[i].root;
                text += l + (text[l] == '.');
                break;
            }
        }
        if (p->root == R_CUR && text[0] == '$') {
            cerr(cc, where, "path \"%s\" has an unknown root (use $event, $config or $var)", text);
            return;
        }
        if ((p->root == R_CONFIG || p->root == R_VAR) && !*text) {
            cerr(cc, where, "path needs a key after its root");
            return;
        }
    }
    if (!*text)
        return;
    const char *s = text;
    for (;;) {
        const char *e = s;
        int depth = 0;
        while (*e && (depth > 0 || *e != '.')) {
            if (e[0] == '{' && e[1] == '{') {
                depth++;
                e++;
            } else if (e[0] == '}' && e[1] == '}') {
                depth--;
                e++;
            }
            e++;
        }
        if (e == s) {
            cerr(cc, where, "path \"%s\" has an empty segment", text);
            return;
        }
        p->seg = sl_realloc(p->seg, (p->n + 1) * sizeof(*p->seg));
        p->dyn = sl_realloc(p->dyn, (p->n + 1) * sizeof(*p->dyn));
        p->seg[p->n] = sl_strndup(s, (size_t)(e - s));
        p->dyn[p->n] = strstr(p->seg[p->n], "{{") ? compile_tpl(cc, where, p->seg[p->n]) : NULL;
        p->n++;
        if (!*e)
            break;
        s = e + 1;
    }
}

static void compile_steps(cc_t *cc, const char *where, json_object *j, steps_t *st)
{
    st->s = NULL;
    st->n = 0;
    if (!j)
        return;
    size_t n = json_object_is_type(j, json_type_array) ? json_object_array_length(j) : 1;
    st->s = sl_calloc(n ? n : 1, sizeof(*st->s));
    for (size_t i = 0; i < n; i++) {
        json_object *x =
            json_object_is_type(j, json_type_array) ? json_object_array_get_idx(j, i) : j;
        step_t *s = &st->s[st->n];
        if (json_object_is_type(x, json_type_string)) {
            const char *name = json_object_get_string(x);
            size_t k;
            for (k = 0; k < sizeof(step_names) / sizeof(step_names[0]); k++)
                if (strcmp(name, step_names[k]) == 0)
                    break;
            if (k == sizeof(step_names) / sizeof(step_names[0])) {
                cerr(cc, where, "unknown transform \"%s\"", name);
                return;
            }
            s->kind = (tkind_t)k;
        } else if (json_object_is_type(x, json_type_object) && jget(x, "map") &&
                   json_object_is_type(jget(x, "map"), json_type_object)) {
            s->kind = T_MAP;
            s->map = json_object_get(jget(x, "map"));
            s->else_ = jget(x, "else") ? json_object_get(jget(x, "else")) : NULL;
        } else {
            cerr(cc, where, "a transform is a name or {\"map\": {...}, \"else\": value}");
            return;
        }
        st->n++;
    }
}

static tpl_t *compile_tpl(cc_t *cc, const char *where, const char *text)
{
    tpl_t *t = sl_calloc(1, sizeof(*t));
    const char *s = text;
    while (*s) {
        const char *open = strstr(s, "{{");
        t->parts = sl_realloc(t->parts, (t->n + 1) * sizeof(*t->parts));
        tpl_part_t *pt = &t->parts[t->n];
        memset(pt, 0, sizeof(*pt));
        if (open != s) {
            size_t l = open ? (size_t)(open - s) : strlen(s);
            pt->lit = sl_strndup(s, l);
            pt->lit_len = l;
            t->n++;
            s += l;
            continue;
        }
        const char *close = strstr(open + 2, "}}");
        if (!close) {
            cerr(cc, where, "template \"%s\" has an unclosed {{", text);
            return t;
        }
        char *inner = sl_strndup(open + 2, (size_t)(close - open - 2));
        char *pipe = strchr(inner, '|');
        char *rest = pipe ? pipe + 1 : NULL;
        if (pipe)
            *pipe = '\0';
        /* trim spaces around the path */
        char *pth = inner;
        while (*pth == ' ')
            pth++;
        for (char *e = pth + strlen(pth); e > pth && e[-1] == ' ';)
            *--e = '\0';
        if (!*pth) {
            cerr(cc, where, "template \"%s\" has an empty {{ }}", text);
            free(inner);
            return t;
        }
        compile_path(cc, where, pth, false, &pt->ref);
        if (rest) {
            json_object *names = json_object_new_array();
            char *save = NULL;
            for (char *tok = strtok_r(rest, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
                while (*tok == ' ')
                    tok++;
                for (char *e = tok + strlen(tok); e > tok && e[-1] == ' ';)
                    *--e = '\0';
                json_object_array_add(names, json_object_new_string(tok));
            }
            compile_steps(cc, where, names, &pt->steps);
            json_object_put(names);
        }
        free(inner);
        t->n++;
        s = close + 2;
    }
    return t;
}

static cond_t *compile_cond(cc_t *cc, const char *where, json_object *j)
{
    cond_t *c = sl_calloc(1, sizeof(*c));
    if (json_object_is_type(j, json_type_string)) {
        c->kind = C_PRESENT;
        compile_path(cc, where, json_object_get_string(j), false, &c->path);
        return c;
    }
    if (!json_object_is_type(j, json_type_object)) {
        cerr(cc, where, "a condition is a path or an object");
        return c;
    }
    json_object *list;
    if ((list = jget(j, "not"))) {
        c->kind = C_NOT;
        c->sub = compile_cond(cc, where, list);
        c->nsub = 1;
        return c;
    }
    if ((list = jget(j, "all")) || (list = jget(j, "any"))) {
        c->kind = jget(j, "all") ? C_ALL : C_ANY;
        if (!json_object_is_type(list, json_type_array)) {
            cerr(cc, where, "\"all\" / \"any\" take a list of conditions");
            return c;
        }
        c->nsub = json_object_array_length(list);
        c->sub = sl_calloc(c->nsub ? c->nsub : 1, sizeof(*c->sub));
        for (size_t i = 0; i < c->nsub; i++) {
            cond_t *x = compile_cond(cc, where, json_object_array_get_idx(list, i));
            c->sub[i] = *x;
            free(x);
        }
        return c;
    }
    const char *p = jstr(j, "path");
    if (!p) {
        cerr(cc, where, "condition has no \"path\"");
        return c;
    }
    compile_path(cc, where, p, false, &c->path);
    if (jget(j, "equals")) {
        c->kind = C_EQUALS;
        c->vals = json_object_get(jget(j, "equals"));
    } else if (jget(j, "in")) {
        c->kind = C_IN;
        c->vals = json_object_get(jget(j, "in"));
        if (!json_object_is_type(c->vals, json_type_array))
            cerr(cc, where, "\"in\" takes a list");
    } else {
        c->kind = C_PRESENT;
    }
    return c;
}

static void compile_mapping(cc_t *cc, const char *where, json_object *j, mapping_t *m);

static void compile_src(cc_t *cc, const char *where, json_object *j, src_t *s)
{
    memset(s, 0, sizeof(*s));
    char w[512];
    if (json_object_is_type(j, json_type_string)) {
        const char *t = json_object_get_string(j);
        if (strcmp(t, "$elements") == 0) {
            s->kind = S_ELEMENTS;
            return;
        }
        s->kind = S_PATH;
        compile_path(cc, where, t, false, &s->path);
        return;
    }
    if (!json_object_is_type(j, json_type_object)) {
        cerr(cc, where, "a source is a path or an object");
        return;
    }
    json_object *x;
    if ((x = jget(j, "lookup"))) {
        s->kind = S_LOOKUP;
        if (!json_object_is_type(x, json_type_string) || !jstr(j, "key")) {
            cerr(cc, where, "\"lookup\" takes a path and needs a \"key\" path");
            return;
        }
        compile_path(cc, where, json_object_get_string(x), false, &s->path);
        compile_path(cc, sub_where(w, sizeof(w), where, "key"), jstr(j, "key"), false, &s->key);
        s->match = sl_strdup(jstr(j, "match") ? jstr(j, "match") : "from");
        s->take = sl_strdup(jstr(j, "take") ? jstr(j, "take") : "to");
    } else if ((x = jget(j, "value"))) {
        s->kind = S_VALUE;
        s->value = json_object_get(x);
    } else if ((x = jget(j, "template"))) {
        s->kind = S_TEMPLATE;
        if (!json_object_is_type(x, json_type_string)) {
            cerr(cc, where, "\"template\" must be a string");
            return;
        }
        s->tpl =
            compile_tpl(cc, sub_where(w, sizeof(w), where, "template"), json_object_get_string(x));
    } else if ((x = jget(j, "object"))) {
        s->kind = S_OBJECT;
        s->sub = sl_calloc(1, sizeof(*s->sub));
        compile_mapping(cc, sub_where(w, sizeof(w), where, "object"), x, s->sub);
        if (jstr(j, "at")) {
            s->at = true;
            compile_path(cc, sub_where(w, sizeof(w), where, "at"), jstr(j, "at"), false, &s->path);
        }
    } else if ((x = jget(j, "each"))) {
        s->kind = S_EACH;
        if (!json_object_is_type(x, json_type_string)) {
            cerr(cc, where, "\"each\" must be a path");
            return;
        }
        compile_path(cc, where, json_object_get_string(x), false, &s->path);
        s->sub = sl_calloc(1, sizeof(*s->sub));
        if (!jget(j, "mapping")) {
            cerr(cc, where, "\"each\" needs a \"mapping\"");
            return;
        }
        compile_mapping(cc, sub_where(w, sizeof(w), where, "mapping"), jget(j, "mapping"), s->sub);
    } else if ((x = jget(j, "array"))) {
        s->kind = S_ARRAY;
        if (!json_object_is_type(x, json_type_array)) {
            cerr(cc, where, "\"array\" takes a list of sources");
            return;
        }
        s->nitems = json_object_array_length(x);
        s->items = sl_calloc(s->nitems ? s->nitems : 1, sizeof(*s->items));
        for (size_t i = 0; i < s->nitems; i++)
            compile_src(cc, sub_index(w, sizeof(w), where, i), json_object_array_get_idx(x, i),
                        &s->items[i]);
    } else if ((x = jget(j, "path"))) {
        s->kind = S_PATH;
        if (!json_object_is_type(x, json_type_string)) {
            cerr(cc, where, "\"path\" must be a string");
            return;
        }
        compile_path(cc, where, json_object_get_string(x), false, &s->path);
    } else {
        cerr(cc, where,
             "a source object needs one of value, template, object, each, array, path, lookup");
        return;
    }
    if ((x = jget(j, "if")))
        s->cond = compile_cond(cc, sub_where(w, sizeof(w), where, "if"), x);
    if ((x = jget(j, "transform")))
        compile_steps(cc, sub_where(w, sizeof(w), where, "transform"), x, &s->steps);
}

static const char *const entry_keys[] = {
    "to",     "from", "transform", "default",      "if",   "required",    "reason",
    "spread", "omit", "rename",    "keyTransform", "wrap", "scalarsOnly", "comment"};

static void compile_entry(cc_t *cc, const char *where, json_object *j, entry_t *e)
{
    memset(e, 0, sizeof(*e));
    char w[512];
    if (!json_object_is_type(j, json_type_object)) {
        cerr(cc, where, "a mapping entry is an object");
        return;
    }
    json_object_object_foreach(j, key, val)
    {
        (void)val;
        size_t k;
        for (k = 0; k < sizeof(entry_keys) / sizeof(entry_keys[0]); k++)
            if (strcmp(key, entry_keys[k]) == 0)
                break;
        if (k == sizeof(entry_keys) / sizeof(entry_keys[0])) {
            cerr(cc, where, "unknown field \"%s\"", key);
            return;
        }
    }
    json_object *x;
    if ((x = jget(j, "to"))) {
        if (!json_object_is_type(x, json_type_string)) {
            cerr(cc, sub_where(w, sizeof(w), where, "to"), "must be a string");
            return;
        }
        e->has_to = true;
        const char *t = json_object_get_string(x);
        compile_path(cc, sub_where(w, sizeof(w), where, "to"), strcmp(t, ".") == 0 ? "" : t, true,
                     &e->to);
    }
    x = jget(j, "from");
    if (!x) {
        cerr(cc, sub_where(w, sizeof(w), where, "from"), "missing");
        return;
    }
    if (json_object_is_type(x, json_type_array)) {
        e->nfrom = json_object_array_length(x);
        e->from = sl_calloc(e->nfrom ? e->nfrom : 1, sizeof(*e->from));
        for (size_t i = 0; i < e->nfrom; i++)
            compile_src(cc, sub_index(w, sizeof(w), sub_where(w, sizeof(w), where, "from"), i),
                        json_object_array_get_idx(x, i), &e->from[i]);
    } else {
        e->nfrom = 1;
        e->from = sl_calloc(1, sizeof(*e->from));
        compile_src(cc, sub_where(w, sizeof(w), where, "from"), x, &e->from[0]);
    }
    if ((x = jget(j, "transform")))
        compile_steps(cc, sub_where(w, sizeof(w), where, "transform"), x, &e->steps);
    if ((x = jget(j, "keyTransform")))
        compile_steps(cc, sub_where(w, sizeof(w), where, "keyTransform"), x, &e->key_steps);
    if ((x = jget(j, "default")))
        e->dflt = json_object_get(x);
    if ((x = jget(j, "if")))
        e->cond = compile_cond(cc, sub_where(w, sizeof(w), where, "if"), x);
    e->required = json_object_get_boolean(jget(j, "required"));
    if (jstr(j, "reason"))
        e->reason = sl_strdup(jstr(j, "reason"));
    e->spread = json_object_get_boolean(jget(j, "spread"));
    e->scalars_only = json_object_get_boolean(jget(j, "scalarsOnly"));
    if (jstr(j, "wrap"))
        e->wrap = sl_strdup(jstr(j, "wrap"));
    if ((x = jget(j, "rename"))) {
        if (!json_object_is_type(x, json_type_object)) {
            cerr(cc, sub_where(w, sizeof(w), where, "rename"), "must be an object");
            return;
        }
        e->rename = json_object_get(x);
    }
    if ((x = jget(j, "omit"))) {
        if (!json_object_is_type(x, json_type_array)) {
            cerr(cc, sub_where(w, sizeof(w), where, "omit"), "must be a list of keys");
            return;
        }
        e->nomit = json_object_array_length(x);
        e->omit = sl_calloc(e->nomit ? e->nomit : 1, sizeof(*e->omit));
        for (size_t i = 0; i < e->nomit; i++)
            e->omit[i] = sl_strdup(json_object_get_string(json_object_array_get_idx(x, i)));
    }
    if (!e->has_to && !e->required)
        cerr(cc, where, "an entry without \"to\" must be \"required\" (it only checks)");
    if (!e->spread && (e->wrap || e->rename || e->nomit || e->key_steps.n))
        cerr(cc, where, "omit, rename, keyTransform and wrap need \"spread\": true");
}

/* Appends the entries of j to m; {"include": "name"} splices the definition's
 * mappings.name in place. */
static void compile_entries(cc_t *cc, const char *where, json_object *j, mapping_t *m)
{
    char w[512];
    if (!json_object_is_type(j, json_type_array)) {
        cerr(cc, where, "a mapping is a list of entries");
        return;
    }
    size_t n = json_object_array_length(j);
    for (size_t i = 0; i < n && !cc->failed; i++) {
        json_object *x = json_object_array_get_idx(j, i);
        const char *inc = jstr(x, "include");
        sub_index(w, sizeof(w), where, i);
        if (inc) {
            json_object *named = jget(cc->named, inc);
            if (!named) {
                cerr(cc, w, "no mapping named \"%s\" in \"mappings\"", inc);
                return;
            }
            if (++cc->depth > 8) {
                cerr(cc, w, "includes nest too deep (a cycle?)");
                return;
            }
            char w2[512];
            snprintf(w2, sizeof(w2), "mappings.%s", inc);
            compile_entries(cc, w2, named, m);
            cc->depth--;
            continue;
        }
        m->e = sl_realloc(m->e, (m->n + 1) * sizeof(*m->e));
        compile_entry(cc, w, x, &m->e[m->n]);
        m->n++;
    }
}

static void compile_mapping(cc_t *cc, const char *where, json_object *j, mapping_t *m)
{
    m->e = NULL;
    m->n = 0;
    compile_entries(cc, where, j, m);
}

static size_t count_elements(const mapping_t *m)
{
    size_t c = 0;
    for (size_t i = 0; i < m->n; i++)
        for (size_t k = 0; k < m->e[i].nfrom; k++)
            c += m->e[i].from[k].kind == S_ELEMENTS;
    return c;
}

static const char *const req_keys[] = {"method", "url",  "headers", "headerList",
                                       "format", "form", "element", "envelope",
                                       "batch",  "hook", "when",    "comment"};

/* The request field key: the message's own, else the defaults'. */
static json_object *rfield(json_object *own, json_object *defaults, const char *key)
{
    json_object *v = jget(own, key);
    return v ? v : jget(defaults, key);
}

static size_t positive(cc_t *cc, const char *where, json_object *v)
{
    if (!v)
        return 0;
    if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 1) {
        cerr(cc, where, "must be a positive integer");
        return 0;
    }
    return (size_t)json_object_get_int64(v);
}

static void compile_req(cc_t *cc, const char *where, json_object *own, json_object *defaults,
                        reqdef_t *r)
{
    char w[512];
    memset(r, 0, sizeof(*r));
    if (!json_object_is_type(own, json_type_object)) {
        cerr(cc, where, "a request is an object");
        return;
    }
    json_object *objs[2] = {own, defaults};
    for (size_t o = 0; o < 2; o++) {
        if (!objs[o])
            continue;
        json_object_object_foreach(objs[o], key, val)
        {
            (void)val;
            size_t k;
            for (k = 0; k < sizeof(req_keys) / sizeof(req_keys[0]); k++)
                if (strcmp(key, req_keys[k]) == 0)
                    break;
            if (k == sizeof(req_keys) / sizeof(req_keys[0])) {
                cerr(cc, o ? "defaults" : where, "unknown field \"%s\"", key);
                return;
            }
        }
    }
    json_object *x;
    const char *s;
    x = rfield(own, defaults, "method");
    s = x ? json_object_get_string(x) : "POST";
    r->method = compile_tpl(cc, sub_where(w, sizeof(w), where, "method"), s);
    x = rfield(own, defaults, "url");
    if (!x || !json_object_is_type(x, json_type_string) || !*json_object_get_string(x)) {
        cerr(cc, sub_where(w, sizeof(w), where, "url"), "missing");
        return;
    }
    r->url = compile_tpl(cc, sub_where(w, sizeof(w), where, "url"), json_object_get_string(x));

    x = rfield(own, defaults, "format");
    s = x ? json_object_get_string(x) : "json";
    if (strcmp(s, "json") == 0)
        r->fmt = F_JSON;
    else if (strcmp(s, "form") == 0)
        r->fmt = F_FORM;
    else if (strcmp(s, "event") == 0)
        r->fmt = F_EVENT;
    else {
        cerr(cc, sub_where(w, sizeof(w), where, "format"), "\"%s\" is not one of json, form, event",
             s);
        return;
    }

    if ((x = rfield(own, defaults, "headers"))) {
        if (!json_object_is_type(x, json_type_object)) {
            cerr(cc, sub_where(w, sizeof(w), where, "headers"), "must be an object");
            return;
        }
        r->hdrs = sl_calloc((size_t)json_object_object_length(x) + 1, sizeof(*r->hdrs));
        json_object_object_foreach(x, hk, hv)
        {
            if (!json_object_is_type(hv, json_type_string)) {
                cerr(cc, sub_where(w, sizeof(w), where, "headers"), "\"%s\" must be a string", hk);
                return;
            }
            r->hdrs[r->nhdrs].name = sl_strdup(hk);
            r->hdrs[r->nhdrs].value = compile_tpl(cc, sub_where(w, sizeof(w), where, "headers"),
                                                  json_object_get_string(hv));
            r->nhdrs++;
        }
    }
    if ((x = rfield(own, defaults, "headerList"))) {
        const char *from = jstr(x, "from"), *n = jstr(x, "name"), *v = jstr(x, "value");
        if (!from || !n || !v) {
            cerr(cc, sub_where(w, sizeof(w), where, "headerList"),
                 "needs \"from\", \"name\" and \"value\"");
            return;
        }
        r->has_hlist = true;
        compile_path(cc, sub_where(w, sizeof(w), where, "headerList"), from, false, &r->hlist);
        r->hname = sl_strdup(n);
        r->hvalue = sl_strdup(v);
    }
    if (r->fmt == F_FORM) {
        x = rfield(own, defaults, "form");
        if (!x || !jstr(x, "json")) {
            cerr(cc, sub_where(w, sizeof(w), where, "form"),
                 "format form needs {\"fields\": {...}, \"json\": \"<parameter>\"}");
            return;
        }
        r->form_json = sl_strdup(jstr(x, "json"));
        json_object *f = jget(x, "fields");
        if (f) {
            if (!json_object_is_type(f, json_type_object)) {
                cerr(cc, sub_where(w, sizeof(w), where, "form.fields"), "must be an object");
                return;
            }
            r->form = sl_calloc((size_t)json_object_object_length(f) + 1, sizeof(*r->form));
            json_object_object_foreach(f, fk, fv)
            {
                r->form[r->nform].name = sl_strdup(fk);
                r->form[r->nform].value = compile_tpl(
                    cc, sub_where(w, sizeof(w), where, "form.fields"), json_object_get_string(fv));
                r->nform++;
            }
        }
    }
    if (r->fmt != F_EVENT) {
        x = rfield(own, defaults, "element");
        if (!x) {
            cerr(cc, sub_where(w, sizeof(w), where, "element"), "missing (format %s needs it)", s);
            return;
        }
        compile_mapping(cc, sub_where(w, sizeof(w), where, "element"), x, &r->element);
        if (count_elements(&r->element))
            cerr(cc, sub_where(w, sizeof(w), where, "element"), "can't use $elements");
        x = rfield(own, defaults, "envelope");
        if (x && json_object_is_type(x, json_type_string) &&
            strcmp(json_object_get_string(x), "$elements") == 0) {
            r->env = ENV_ELEMENTS;
        } else if (x) {
            r->env = ENV_MAP;
            compile_mapping(cc, sub_where(w, sizeof(w), where, "envelope"), x, &r->envelope);
            if (!cc->failed && count_elements(&r->envelope) != 1)
                cerr(cc, sub_where(w, sizeof(w), where, "envelope"),
                     "needs exactly one entry from \"$elements\"");
        }
    }
    r->max_events = r->max_bytes = 0;
    if ((x = rfield(own, defaults, "batch"))) {
        if (r->env == ENV_NONE) {
            cerr(cc, sub_where(w, sizeof(w), where, "batch"), "needs an envelope");
            return;
        }
        r->max_events =
            positive(cc, sub_where(w, sizeof(w), where, "batch.maxEvents"), jget(x, "maxEvents"));
        r->max_bytes =
            positive(cc, sub_where(w, sizeof(w), where, "batch.maxBytes"), jget(x, "maxBytes"));
    }
    if (r->max_events == 0)
        r->max_events = 1;
    if ((s = jstr(own, "hook")) || (s = jstr(defaults, "hook"))) {
        r->hook = pr_desttx_hooks_find(s);
        if (!r->hook)
            cerr(cc, sub_where(w, sizeof(w), where, "hook"), "no hook named \"%s\"", s);
    }
    if ((x = jget(own, "when")))
        r->when = compile_cond(cc, sub_where(w, sizeof(w), where, "when"), x);
}

static const char *const def_keys[] = {
    "name",     "displayName", "docs",     "comment",  "supportedMessageTypes", "config", "vars",
    "mappings", "defaults",    "messages", "retryable"};

static const char *const message_types[] = {"identify", "track", "page",
                                            "screen",   "group", "alias"};

static pr_desttx_def_t *compile_def(cc_t *cc, json_object *j)
{
    char w[512], w2[512];
    if (!json_object_is_type(j, json_type_object)) {
        cerr(cc, "(top)", "a definition is a JSON object");
        return NULL;
    }
    json_object_object_foreach(j, key, val)
    {
        (void)val;
        size_t k;
        for (k = 0; k < sizeof(def_keys) / sizeof(def_keys[0]); k++)
            if (strcmp(key, def_keys[k]) == 0)
                break;
        if (k == sizeof(def_keys) / sizeof(def_keys[0])) {
            cerr(cc, "(top)", "unknown field \"%s\"", key);
            return NULL;
        }
    }
    pr_desttx_def_t *d = sl_calloc(1, sizeof(*d));
    const char *s;
    cc->named = jget(j, "mappings");
    if (cc->named && !json_object_is_type(cc->named, json_type_object)) {
        cerr(cc, "mappings", "must be an object of named mappings");
        return d;
    }
    if (!(s = jstr(j, "name")) || !*s) {
        cerr(cc, "name", "missing");
        return d;
    }
    d->name = sl_strdup(s);
    d->display = sl_strdup(jstr(j, "displayName") ? jstr(j, "displayName") : s);

    json_object *types = jget(j, "supportedMessageTypes");
    if (!types || !json_object_is_type(types, json_type_array) ||
        json_object_array_length(types) == 0) {
        cerr(cc, "supportedMessageTypes", "missing (a non-empty list of message types)");
        return d;
    }
    d->types = json_object_get(types);
    json_object *msgs = jget(j, "messages");
    if (!msgs || !json_object_is_type(msgs, json_type_object)) {
        cerr(cc, "messages", "missing (an object keyed by message type)");
        return d;
    }
    for (size_t i = 0; i < json_object_array_length(types); i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(types, i));
        size_t k;
        for (k = 0; k < 6; k++)
            if (t && strcmp(t, message_types[k]) == 0)
                break;
        if (k == 6) {
            cerr(cc, sub_index(w, sizeof(w), "supportedMessageTypes", i),
                 "\"%s\" is not a message type (identify, track, page, screen, group, alias)",
                 t ? t : "");
            return d;
        }
        if (!jget(msgs, t)) {
            cerr(cc, sub_where(w, sizeof(w), "messages", t), "missing (\"%s\" is supported)", t);
            return d;
        }
    }

    json_object *cfg = jget(j, "config");
    if (cfg) {
        if (!json_object_is_type(cfg, json_type_object)) {
            cerr(cc, "config", "must be an object keyed by config key");
            return d;
        }
        d->cfg = sl_calloc((size_t)json_object_object_length(cfg) + 1, sizeof(*d->cfg));
        json_object_object_foreach(cfg, ck, cv)
        {
            cfgkey_t *c = &d->cfg[d->ncfg++];
            c->name = sl_strdup(ck);
            sub_where(w, sizeof(w), "config", ck);
            if (!json_object_is_type(cv, json_type_object)) {
                cerr(cc, w, "must be an object like {\"required\": true}");
                return d;
            }
            c->required = json_object_get_boolean(jget(cv, "required"));
            if (jget(cv, "default"))
                c->dflt = json_object_get(jget(cv, "default"));
            if ((s = jstr(cv, "type"))) {
                static const struct {
                    const char *n;
                    json_type t;
                } types_[] = {{"string", json_type_string},
                              {"boolean", json_type_boolean},
                              {"number", json_type_double},
                              {"array", json_type_array},
                              {"object", json_type_object}};
                size_t k;
                for (k = 0; k < 5; k++)
                    if (strcmp(s, types_[k].n) == 0)
                        break;
                if (k == 5) {
                    cerr(cc, sub_where(w2, sizeof(w2), w, "type"),
                         "\"%s\" is not one of string, boolean, number, array, object", s);
                    return d;
                }
                c->has_type = true;
                c->type = types_[k].t;
            }
            if (jget(cv, "enum")) {
                if (!json_object_is_type(jget(cv, "enum"), json_type_array)) {
                    cerr(cc, sub_where(w2, sizeof(w2), w, "enum"), "must be a list");
                    return d;
                }
                c->enumv = json_object_get(jget(cv, "enum"));
            }
        }
    }
    if (jget(j, "vars"))
        compile_mapping(cc, "vars", jget(j, "vars"), &d->vars);
    json_object *defaults = jget(j, "defaults");
    if (defaults && !json_object_is_type(defaults, json_type_object)) {
        cerr(cc, "defaults", "must be an object");
        return d;
    }
    d->msgs = sl_calloc((size_t)json_object_object_length(msgs) + 1, sizeof(*d->msgs));
    json_object_object_foreach(msgs, mk, mv)
    {
        if (cc->failed)
            break;
        sub_where(w, sizeof(w), "messages", mk);
        bool listed = false;
        for (size_t i = 0; i < json_object_array_length(types); i++)
            listed |= strcmp(mk, json_object_get_string(json_object_array_get_idx(types, i))) == 0;
        if (!listed) {
            cerr(cc, w, "\"%s\" is not in supportedMessageTypes", mk);
            break;
        }
        msgdef_t *m = &d->msgs[d->nmsgs++];
        m->type = sl_strdup(mk);
        json_object *reqs = jget(mv, "requests");
        if (reqs) {
            if (!json_object_is_type(reqs, json_type_array) ||
                json_object_array_length(reqs) == 0) {
                cerr(cc, sub_where(w2, sizeof(w2), w, "requests"), "must be a non-empty list");
                break;
            }
            m->n = json_object_array_length(reqs);
            m->reqs = sl_calloc(m->n, sizeof(*m->reqs));
            for (size_t i = 0; i < m->n; i++)
                compile_req(cc,
                            sub_index(w2, sizeof(w2), sub_where(w2, sizeof(w2), w, "requests"), i),
                            json_object_array_get_idx(reqs, i), defaults, &m->reqs[i]);
        } else {
            m->n = 1;
            m->reqs = sl_calloc(1, sizeof(*m->reqs));
            compile_req(cc, w, mv, defaults, &m->reqs[0]);
        }
    }
    json_object *retry = jget(j, "retryable");
    if (retry) {
        if (!json_object_is_type(retry, json_type_array)) {
            cerr(cc, "retryable", "must be a list of statuses like 429 or \"5xx\"");
            return d;
        }
        d->nretry = json_object_array_length(retry);
        d->retry = sl_calloc(d->nretry + 1, sizeof(*d->retry));
        for (size_t i = 0; i < d->nretry; i++) {
            json_object *v = json_object_array_get_idx(retry, i);
            const char *t = json_object_get_string(v);
            if (json_object_is_type(v, json_type_int) && json_object_get_int(v) >= 100 &&
                json_object_get_int(v) <= 599)
                d->retry[i] = json_object_get_int(v);
            else if (json_object_is_type(v, json_type_string) && strlen(t) == 3 && t[0] >= '1' &&
                     t[0] <= '5' && t[1] == 'x' && t[2] == 'x')
                d->retry[i] = t[0] - '0';
            else {
                cerr(cc, sub_index(w, sizeof(w), "retryable", i),
                     "\"%s\" is not an HTTP status or a class like \"5xx\"", t);
                return d;
            }
        }
    }
    return d;
}

/* ---- freeing --------------------------------------------------------------------------- */

static void free_tpl(tpl_t *t);
static void free_mapping(mapping_t *m);

static void free_path(path_t *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->seg[i]);
        if (p->dyn && p->dyn[i])
            free_tpl(p->dyn[i]);
    }
    free(p->seg);
    free(p->dyn);
}

static void free_steps(steps_t *st)
{
    for (size_t i = 0; i < st->n; i++) {
        if (st->s[i].map)
            json_object_put(st->s[i].map);
        if (st->s[i].else_)
            json_object_put(st->s[i].else_);
    }
    free(st->s);
}

static void free_tpl(tpl_t *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->parts[i].lit);
        free_path(&t->parts[i].ref);
        free_steps(&t->parts[i].steps);
    }
    free(t->parts);
    free(t);
}

static void free_cond_inner(cond_t *c)
{
    free_path(&c->path);
    if (c->vals)
        json_object_put(c->vals);
    for (size_t i = 0; i < c->nsub; i++)
        free_cond_inner(&c->sub[i]);
    free(c->sub);
}

static void free_cond(cond_t *c)
{
    if (!c)
        return;
    free_cond_inner(c);
    free(c);
}

static void free_src(src_t *s)
{
    free_path(&s->path);
    free_path(&s->key);
    free(s->match);
    free(s->take);
    if (s->value)
        json_object_put(s->value);
    free_tpl(s->tpl);
    if (s->sub) {
        free_mapping(s->sub);
        free(s->sub);
    }
    for (size_t i = 0; i < s->nitems; i++)
        free_src(&s->items[i]);
    free(s->items);
    free_cond(s->cond);
    free_steps(&s->steps);
}

static void free_mapping(mapping_t *m)
{
    for (size_t i = 0; i < m->n; i++) {
        entry_t *e = &m->e[i];
        free_path(&e->to);
        for (size_t k = 0; k < e->nfrom; k++)
            free_src(&e->from[k]);
        free(e->from);
        free_steps(&e->steps);
        free_steps(&e->key_steps);
        if (e->dflt)
            json_object_put(e->dflt);
        free_cond(e->cond);
        free(e->reason);
        for (size_t k = 0; k < e->nomit; k++)
            free(e->omit[k]);
        free(e->omit);
        if (e->rename)
            json_object_put(e->rename);
        free(e->wrap);
    }
    free(m->e);
    m->e = NULL;
    m->n = 0;
}

static void free_hdrs(hdr_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free_tpl(h[i].value);
    }
    free(h);
}

static void free_def(pr_desttx_def_t *d)
{
    if (!d)
        return;
    free(d->name);
    free(d->display);
    if (d->types)
        json_object_put(d->types);
    for (size_t i = 0; i < d->ncfg; i++) {
        free(d->cfg[i].name);
        if (d->cfg[i].enumv)
            json_object_put(d->cfg[i].enumv);
        if (d->cfg[i].dflt)
            json_object_put(d->cfg[i].dflt);
    }
    free(d->cfg);
    free_mapping(&d->vars);
    for (size_t i = 0; i < d->nmsgs; i++) {
        msgdef_t *m = &d->msgs[i];
        for (size_t k = 0; k < m->n; k++) {
            reqdef_t *r = &m->reqs[k];
            free_tpl(r->method);
            free_tpl(r->url);
            free_hdrs(r->hdrs, r->nhdrs);
            free_path(&r->hlist);
            free(r->hname);
            free(r->hvalue);
            free_hdrs(r->form, r->nform);
            free(r->form_json);
            free_mapping(&r->element);
            free_mapping(&r->envelope);
            free_cond(r->when);
        }
        free(m->reqs);
        free(m->type);
    }
    free(d->msgs);
    free(d->retry);
    free(d);
}

void pr_desttx_free(pr_desttx_t *tx)
{
    if (!tx)
        return;
    for (size_t i = 0; i < tx->n; i++)
        free_def(tx->defs[i]);
    free(tx->defs);
    free(tx);
}

int pr_desttx_load_sources(const pr_desttx_src_t *srcs, size_t n, pr_desttx_t **out, char *errstr,
                           size_t errstr_size)
{
    pr_desttx_t *tx = sl_calloc(1, sizeof(*tx));
    tx->defs = sl_calloc(n ? n : 1, sizeof(*tx->defs));
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        char err[1024] = "";
        cc_t cc = {.file = srcs[i].file, .err = err, .errsz = sizeof(err)};
        json_tokener *tok = json_tokener_new();
        json_object *j = json_tokener_parse_ex(tok, srcs[i].text, (int)strlen(srcs[i].text));
        enum json_tokener_error jerr = json_tokener_get_error(tok);
        json_tokener_free(tok);
        if (jerr != json_tokener_success || !j) {
            if (j)
                json_object_put(j);
            pr_desttx_free(tx);
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID,
                              "destination definition %s: invalid JSON: %s", srcs[i].file,
                              jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                                                           : "unexpected end of data");
        }
        pr_desttx_def_t *d = compile_def(&cc, j);
        json_object_put(j);
        if (d)
            tx->defs[tx->n++] = d;
        if (!cc.failed && pr_desttx_find(tx, d->name) != d)
            cerr(&cc, "name", "\"%s\" is also defined by another file", d->name);
        if (cc.failed) {
            pr_desttx_free(tx);
            return sl_err_set(errstr, errstr_size, SL_ERR_INVALID, "bad destination definition %s",
                              err);
        }
    }
    *out = tx;
    return 0;
}

int pr_desttx_load(pr_desttx_t **out, char *errstr, size_t errstr_size)
{
    return pr_desttx_load_sources(pr_desttx_embedded, pr_desttx_embedded_count, out, errstr,
                                  errstr_size);
}

const pr_desttx_def_t *pr_desttx_find(const pr_desttx_t *tx, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < tx->n; i++)
        if (strcasecmp(tx->defs[i]->name, name) == 0)
            return tx->defs[i];
    return NULL;
}

const char *pr_desttx_def_name(const pr_desttx_def_t *def)
{
    return def->name;
}

const char *pr_desttx_def_display_name(const pr_desttx_def_t *def)
{
    return def->display;
}

json_object *pr_desttx_def_message_types(const pr_desttx_def_t *def)
{
    return def->types;
}

static bool list_has(json_object *list, const char *type)
{
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(list, i));
        if (t && type && strcasecmp(t, type) == 0)
            return true;
    }
    return false;
}

bool pr_desttx_supports(const pr_desttx_t *tx, const sl_destination_t *d, const char *type)
{
    json_object *list = jget(d->def_config, "supportedMessageTypes");
    if (list && json_object_is_type(list, json_type_array))
        return list_has(list, type);
    const pr_desttx_def_t *def = pr_desttx_find(tx, d->def_name);
    return def ? list_has(def->types, type) : true;
}

bool pr_desttx_retryable(const pr_desttx_def_t *def, int status)
{
    if (!def || !def->retry)
        return status == 408 || status == 429 || (status >= 500 && status <= 599);
    for (size_t i = 0; i < def->nretry; i++)
        if (def->retry[i] == status || (def->retry[i] < 10 && def->retry[i] == status / 100))
            return true;
    return false;
}

/* ---- running --------------------------------------------------------------------------- */

/* One transform. The event (and vars) belong to the calling thread; the destination's
 * config and the definition are shared with other threads, and json-c's reference counts and
 * serialisation caches are not thread-safe, so values from those are copied (take()). */
typedef struct rt {
    const pr_desttx_def_t *def;
    json_object *event, *config, *vars, *cur;
    bool cur_shared; /* cur lies in the shared config */
    pr_desttx_out_t *out;
    bool failed;
} rt_t;

static void rfail(rt_t *rt, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rfail(rt_t *rt, const char *fmt, ...)
{
    if (rt->failed)
        return;
    rt->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rt->out->reason, sizeof(rt->out->reason), fmt, ap);
    va_end(ap);
}

static bool missing(json_object *v)
{
    return !v || json_object_is_type(v, json_type_null) ||
           (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) == 0);
}

static bool render(rt_t *rt, const tpl_t *t, sl_buf_t *b);

/* A path's value, borrowed; NULL when missing. */
static json_object *resolve(rt_t *rt, const path_t *p)
{
    json_object *v;
    switch (p->root) {
    case R_EVENT:
        v = rt->event;
        break;
    case R_CONFIG:
        v = rt->config;
        break;
    case R_VAR:
        v = rt->vars;
        break;
    default:
        v = rt->cur;
    }
    for (size_t i = 0; i < p->n && v; i++) {
        const char *seg = p->seg[i];
        sl_buf_t dyn = SL_BUF_INIT;
        if (p->dyn[i]) {
            if (!render(rt, p->dyn[i], &dyn)) {
                sl_buf_free(&dyn);
                return NULL;
            }
            seg = dyn.data;
        }
        json_object *next = NULL;
        if (json_object_is_type(v, json_type_object)) {
            if (!json_object_object_get_ex(v, seg, &next))
                next = NULL;
        } else if (json_object_is_type(v, json_type_array) && isdigit((unsigned char)seg[0])) {
            next = json_object_array_get_idx(v, (size_t)strtoul(seg, NULL, 10));
        }
        if (!next && p->root == R_CONFIG && i == 0) {
            for (size_t k = 0; k < rt->def->ncfg; k++)
                if (strcmp(rt->def->cfg[k].name, seg) == 0)
                    next = rt->def->cfg[k].dflt;
        }
        sl_buf_free(&dyn);
        v = next;
    }
    return missing(v) ? NULL : v;
}

/* A value as text: strings as they are, anything else as JSON. */
static void put_text(sl_buf_t *b, json_object *v)
{
    if (json_object_is_type(v, json_type_string))
        sl_buf_append(b, json_object_get_string(v), (size_t)json_object_get_string_len(v));
    else
        sl_buf_puts(b, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
}

static json_object *apply_steps(rt_t *rt, const steps_t *st, json_object *v);
static json_object *dup_value(json_object *v);

static bool shared_path(const rt_t *rt, const path_t *p)
{
    return p->root == R_CONFIG || (p->root == R_CUR && rt->cur_shared);
}

/* A path's value as a reference the caller owns (a copy when shared), or NULL. */
static json_object *take(rt_t *rt, const path_t *p)
{
    json_object *v = resolve(rt, p);
    if (!v)
        return NULL;
    return shared_path(rt, p) ? dup_value(v) : json_object_get(v);
}

/* Renders t into b. False if a referenced value is missing. */
static bool render(rt_t *rt, const tpl_t *t, sl_buf_t *b)
{
    for (size_t i = 0; i < t->n; i++) {
        const tpl_part_t *p = &t->parts[i];
        if (p->lit) {
            sl_buf_append(b, p->lit, p->lit_len);
            continue;
        }
        json_object *v = take(rt, &p->ref);
        if (!v)
            return false;
        v = apply_steps(rt, &p->steps, v);
        if (!v)
            return false;
        put_text(b, v);
        json_object_put(v);
    }
    if (!b->data)
        sl_buf_puts(b, "");
    return true;
}

static json_object *new_string_buf(sl_buf_t *b)
{
    json_object *s = json_object_new_string_len(b->data ? b->data : "", (int)b->len);
    sl_buf_free(b);
    return s;
}

static void snake(sl_buf_t *b, const char *s)
{
    bool under = true; /* suppresses leading and repeated underscores */
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p)) {
            if (isupper(*p) && !under && p > (const unsigned char *)s && islower(p[-1]))
                sl_buf_putc(b, '_');
            sl_buf_putc(b, (char)tolower(*p));
            under = false;
        } else if (!under) {
            sl_buf_putc(b, '_');
            under = true;
        }
    }
    while (b->len && b->data[b->len - 1] == '_')
        b->data[--b->len] = '\0';
}

static const char *const ga4_reserved[] = {"ad_activeview",
                                           "ad_click",
                                           "ad_exposure",
                                           "ad_impression",
                                           "ad_query",
                                           "adunit_exposure",
                                           "app_clear_data",
                                           "app_install",
                                           "app_update",
                                           "app_remove",
                                           "error",
                                           "first_open",
                                           "first_visit",
                                           "in_app_purchase",
                                           "notification_dismiss",
                                           "notification_foreground",
                                           "notification_open",
                                           "notification_receive",
                                           "os_update",
                                           "screen_view",
                                           "session_start",
                                           "user_engagement"};

/* A copy of a definition's constant: definitions are shared between threads and json-c's
 * reference counts are not atomic, so outputs never reference them. */
static json_object *dup_value(json_object *v)
{
    json_object *c = NULL;
    if (!v || json_object_deep_copy(v, &c, NULL) != 0)
        return NULL;
    return c;
}

static bool parse_ms(json_object *v, int64_t *ms)
{
    if (json_object_is_type(v, json_type_string))
        return sl_time_parse_ms(json_object_get_string(v), ms) == 0;
    if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double)) {
        double d = json_object_get_double(v);
        *ms = (int64_t)(fabs(d) >= 1e11 ? d : d * 1000);
        return true;
    }
    return false;
}

/* Takes v (owned), returns the result (owned) or NULL. */
static json_object *apply_step(rt_t *rt, const step_t *s, json_object *v)
{
    json_object *r = NULL;
    sl_buf_t b = SL_BUF_INIT;
    int64_t ms;
    bool is_str = json_object_is_type(v, json_type_string);
    const char *str = is_str ? json_object_get_string(v) : NULL;
    switch (s->kind) {
    case T_TO_STRING:
        if (is_str)
            return v;
        put_text(&b, v);
        r = new_string_buf(&b);
        break;
    case T_TO_NUMBER:
    case T_TO_INT:
        if (json_object_is_type(v, json_type_int) ||
            (s->kind == T_TO_NUMBER && json_object_is_type(v, json_type_double)))
            return v;
        if (json_object_is_type(v, json_type_double)) {
            r = json_object_new_int64((int64_t)json_object_get_double(v));
        } else if (is_str) {
            char *end;
            errno = 0;
            long long ll = strtoll(str, &end, 10);
            if (!*end && end != str && !errno) {
                r = json_object_new_int64(ll);
                break;
            }
            double d = strtod(str, &end);
            if (*end || end == str || !isfinite(d))
                break;
            r = s->kind == T_TO_INT ? json_object_new_int64((int64_t)d)
                                    : json_object_new_double_s(d, str);
        } else if (json_object_is_type(v, json_type_boolean)) {
            r = json_object_new_int(json_object_get_boolean(v));
        }
        break;
    case T_TO_BOOL:
        if (json_object_is_type(v, json_type_boolean))
            return v;
        if (is_str && (strcasecmp(str, "true") == 0 || strcasecmp(str, "false") == 0))
            r = json_object_new_boolean(strcasecmp(str, "true") == 0);
        else if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
            r = json_object_new_boolean(json_object_get_double(v) != 0);
        break;
    case T_UNIX_S:
    case T_UNIX_MS:
    case T_UNIX_US:
        if (!parse_ms(v, &ms))
            break;
        r = json_object_new_int64(s->kind == T_UNIX_S    ? ms / 1000
                                  : s->kind == T_UNIX_MS ? ms
                                                         : ms * 1000);
        break;
    case T_ISO8601: {
        char t[SL_TIME_STRLEN];
        if (!parse_ms(v, &ms))
            break;
        sl_time_format_ms(ms, t);
        r = json_object_new_string(t);
        break;
    }
    case T_LOWER:
    case T_UPPER:
        if (!is_str)
            return v;
        for (const char *p = str; *p; p++)
            sl_buf_putc(&b, (char)(s->kind == T_LOWER ? tolower((unsigned char)*p)
                                                      : toupper((unsigned char)*p)));
        r = new_string_buf(&b);
        break;
    case T_TRIM: {
        if (!is_str)
            return v;
        const char *e = str + strlen(str);
        while (isspace((unsigned char)*str))
            str++;
        while (e > str && isspace((unsigned char)e[-1]))
            e--;
        r = json_object_new_string_len(str, (int)(e - str));
        break;
    }
    case T_SNAKE:
        if (!is_str)
            return v;
        snake(&b, str);
        r = new_string_buf(&b);
        break;
    case T_GA4_NAME: {
        /* GA4: letters, digits and underscores, starting with a letter, at most 40 */
        if (!is_str)
            break;
        snake(&b, str);
        size_t skip = 0;
        while (skip < b.len && !isalpha((unsigned char)b.data[skip]))
            skip++;
        size_t len = b.len - skip > 40 ? 40 : b.len - skip;
        while (len && b.data[skip + len - 1] == '_')
            len--;
        if (!len) {
            rfail(rt, "event name \"%s\" has no letters GA4 accepts", str);
            sl_buf_free(&b);
            break;
        }
        r = json_object_new_string_len(b.data + skip, (int)len);
        sl_buf_free(&b);
        const char *n = json_object_get_string(r);
        for (size_t i = 0; i < sizeof(ga4_reserved) / sizeof(ga4_reserved[0]); i++)
            if (strcmp(n, ga4_reserved[i]) == 0) {
                rfail(rt, "event name \"%s\" is reserved by GA4", n);
                json_object_put(r);
                r = NULL;
                break;
            }
        if (r && (strncmp(n, "firebase_", 9) == 0 || strncmp(n, "ga_", 3) == 0 ||
                  strncmp(n, "google_", 7) == 0)) {
            rfail(rt, "event name \"%s\" uses a prefix reserved by GA4", n);
            json_object_put(r);
            r = NULL;
        }
        break;
    }
    case T_URLENC: {
        static const char hex[] = "0123456789ABCDEF";
        sl_buf_t t = SL_BUF_INIT;
        put_text(&t, v);
        for (size_t i = 0; i < t.len; i++) {
            unsigned char c = (unsigned char)t.data[i];
            if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
                sl_buf_putc(&b, (char)c);
            } else {
                char e[3] = {'%', hex[c >> 4], hex[c & 15]};
                sl_buf_append(&b, e, 3);
            }
        }
        sl_buf_free(&t);
        r = new_string_buf(&b);
        break;
    }
    case T_BASE64: {
        static const char tab[] =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        sl_buf_t t = SL_BUF_INIT;
        put_text(&t, v);
        const unsigned char *p = (const unsigned char *)(t.data ? t.data : "");
        for (size_t i = 0; i < t.len; i += 3) {
            unsigned n = (unsigned)p[i] << 16;
            if (i + 1 < t.len)
                n |= (unsigned)p[i + 1] << 8;
            if (i + 2 < t.len)
                n |= p[i + 2];
            char q[4] = {tab[(n >> 18) & 63], tab[(n >> 12) & 63],
                         i + 1 < t.len ? tab[(n >> 6) & 63] : '=',
                         i + 2 < t.len ? tab[n & 63] : '='};
            sl_buf_append(&b, q, 4);
        }
        sl_buf_free(&t);
        r = new_string_buf(&b);
        break;
    }
    case T_JSON:
        r = json_object_new_string(json_object_to_json_string_ext(
            v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        break;
    case T_ARRAY:
        if (json_object_is_type(v, json_type_array))
            return v;
        r = json_object_new_array();
        json_object_array_add(r, json_object_get(v));
        break;
    case T_MAP: {
        json_object *m = NULL;
        sl_buf_t t = SL_BUF_INIT;
        put_text(&t, v);
        bool hit = false;
        json_object_object_foreach(s->map, mk, mv)
        {
            if (!hit && strcasecmp(mk, t.data ? t.data : "") == 0) {
                hit = true;
                m = mv;
            }
        }
        sl_buf_free(&t);
        if (hit)
            r = dup_value(m);
        else if (s->else_)
            r = dup_value(s->else_);
        else
            return v;
        break;
    }
    }
    json_object_put(v);
    return r;
}

static json_object *apply_steps(rt_t *rt, const steps_t *st, json_object *v)
{
    for (size_t i = 0; i < st->n && v; i++)
        v = apply_step(rt, &st->s[i], v);
    return missing(v) ? (json_object_put(v), NULL) : v;
}

static bool same_value(json_object *a, json_object *b)
{
    if (json_object_is_type(a, json_type_string) && json_object_is_type(b, json_type_string))
        return strcasecmp(json_object_get_string(a), json_object_get_string(b)) == 0;
    return json_object_equal(a, b);
}

static bool eval_cond(rt_t *rt, const cond_t *c)
{
    json_object *v;
    switch (c->kind) {
    case C_NOT:
        return !eval_cond(rt, c->sub);
    case C_ALL:
        for (size_t i = 0; i < c->nsub; i++)
            if (!eval_cond(rt, &c->sub[i]))
                return false;
        return true;
    case C_ANY:
        for (size_t i = 0; i < c->nsub; i++)
            if (eval_cond(rt, &c->sub[i]))
                return true;
        return false;
    case C_PRESENT:
        v = resolve(rt, &c->path);
        return v && !(json_object_is_type(v, json_type_boolean) && !json_object_get_boolean(v));
    case C_EQUALS:
        v = resolve(rt, &c->path);
        return v && same_value(v, c->vals);
    case C_IN:
        v = resolve(rt, &c->path);
        for (size_t i = 0; v && i < json_object_array_length(c->vals); i++)
            if (same_value(v, json_object_array_get_idx(c->vals, i)))
                return true;
        return false;
    }
    return false;
}

static void apply_mapping(rt_t *rt, const mapping_t *m, json_object *target);

/* A source's value (owned), or NULL when missing. */
static json_object *eval_src(rt_t *rt, const src_t *s)
{
    if (s->cond && !eval_cond(rt, s->cond))
        return NULL;
    json_object *v = NULL;
    switch (s->kind) {
    case S_PATH:
        v = take(rt, &s->path);
        break;
    case S_VALUE:
        v = dup_value(s->value);
        break;
    case S_TEMPLATE: {
        sl_buf_t b = SL_BUF_INIT;
        if (render(rt, s->tpl, &b))
            v = new_string_buf(&b);
        sl_buf_free(&b);
        break;
    }
    case S_OBJECT: {
        json_object *saved = rt->cur, *at = s->at ? resolve(rt, &s->path) : rt->cur;
        bool saved_shared = rt->cur_shared;
        if (!at || !json_object_is_type(at, json_type_object))
            break;
        rt->cur = at;
        rt->cur_shared = s->at ? shared_path(rt, &s->path) : saved_shared;
        v = json_object_new_object();
        apply_mapping(rt, s->sub, v);
        rt->cur = saved;
        rt->cur_shared = saved_shared;
        break;
    }
    case S_EACH: {
        json_object *arr = resolve(rt, &s->path);
        if (!arr || !json_object_is_type(arr, json_type_array))
            break;
        json_object *saved = rt->cur;
        bool saved_shared = rt->cur_shared;
        rt->cur_shared = shared_path(rt, &s->path);
        v = json_object_new_array();
        for (size_t i = 0; i < json_object_array_length(arr) && !rt->failed; i++) {
            rt->cur = json_object_array_get_idx(arr, i);
            if (!rt->cur || !json_object_is_type(rt->cur, json_type_object))
                continue;
            json_object *o = json_object_new_object();
            apply_mapping(rt, s->sub, o);
            if (json_object_object_length(o))
                json_object_array_add(v, o);
            else
                json_object_put(o);
        }
        rt->cur = saved;
        rt->cur_shared = saved_shared;
        break;
    }
    case S_ARRAY:
        v = json_object_new_array();
        for (size_t i = 0; i < s->nitems && !rt->failed; i++) {
            json_object *x = eval_src(rt, &s->items[i]);
            if (x)
                json_object_array_add(v, x);
        }
        break;
    case S_ELEMENTS:
        v = json_object_new_string(ELEMENTS_MARK);
        break;
    case S_LOOKUP: {
        json_object *list = resolve(rt, &s->path), *key = resolve(rt, &s->key);
        for (size_t i = 0; key && list && json_object_is_type(list, json_type_array) &&
                           i < json_object_array_length(list);
             i++) {
            json_object *el = json_object_array_get_idx(list, i);
            json_object *m = jget(el, s->match), *t = jget(el, s->take);
            if (m && !missing(t) && same_value(m, key)) {
                v = dup_value(t);
                break;
            }
        }
        break;
    }
    }
    if (v && ((json_object_is_type(v, json_type_object) && !json_object_object_length(v)) ||
              (json_object_is_type(v, json_type_array) && !json_object_array_length(v)))) {
        json_object_put(v);
        return NULL;
    }
    return v ? apply_steps(rt, &s->steps, v) : NULL;
}

/* The object at path p under target, created as needed; NULL if p runs into a non-object or
 * a template segment is missing. With last, stops before the last segment and puts its name
 * in *key (allocated into kbuf). */
static json_object *walk_target(rt_t *rt, json_object *target, const path_t *p, size_t upto,
                                sl_buf_t *kbuf, const char **key)
{
    json_object *o = target;
    /* every templated segment must render before anything is created */
    for (size_t i = 0; i < p->n && i <= upto; i++) {
        sl_buf_reset(kbuf);
        if (p->dyn[i] && !render(rt, p->dyn[i], kbuf))
            return NULL;
    }
    for (size_t i = 0; i < p->n; i++) {
        const char *seg = p->seg[i];
        sl_buf_reset(kbuf);
        if (p->dyn[i]) {
            if (!render(rt, p->dyn[i], kbuf))
                return NULL;
            seg = kbuf->data;
        }
        if (i == upto) {
            *key = seg;
            return o;
        }
        json_object *next;
        if (!json_object_object_get_ex(o, seg, &next)) {
            next = json_object_new_object();
            json_object_object_add(o, seg, next);
        }
        if (!json_object_is_type(next, json_type_object))
            return NULL;
        o = next;
    }
    return o;
}

static void apply_entry(rt_t *rt, const entry_t *e, json_object *target)
{
    if (e->cond && !eval_cond(rt, e->cond))
        return;
    json_object *v = NULL;
    for (size_t i = 0; i < e->nfrom && !v && !rt->failed; i++)
        v = eval_src(rt, &e->from[i]);
    if (v)
        v = apply_steps(rt, &e->steps, v);
    if (rt->failed) {
        json_object_put(v);
        return;
    }
    if (!v && e->dflt)
        v = dup_value(e->dflt);
    if (!v) {
        if (!e->required)
            return;
        if (e->reason) {
            rfail(rt, "%s", e->reason);
            return;
        }
        sl_buf_t b = SL_BUF_INIT;
        for (size_t i = 0; i < e->nfrom; i++) {
            if (e->from[i].kind != S_PATH)
                continue;
            const path_t *p = &e->from[i].path;
            if (b.len)
                sl_buf_puts(&b, " or ");
            sl_buf_puts(&b, p->root == R_CONFIG ? "$config." : p->root == R_VAR ? "$var." : "");
            for (size_t k = 0; k < p->n; k++)
                sl_buf_printf(&b, "%s%s", k ? "." : "", p->seg[k]);
        }
        rfail(rt, "event has no %s, which %s needs", b.data ? b.data : "value", rt->def->display);
        sl_buf_free(&b);
        return;
    }
    if (!e->has_to) {
        json_object_put(v);
        return;
    }
    sl_buf_t kbuf = SL_BUF_INIT;
    const char *key = NULL;
    if (e->spread) {
        json_object *dst = walk_target(rt, target, &e->to, (size_t)-1, &kbuf, &key);
        if (dst && json_object_is_type(v, json_type_object)) {
            json_object_object_foreach(v, k, val)
            {
                bool skip = false;
                for (size_t i = 0; i < e->nomit && !skip; i++)
                    skip = strcmp(k, e->omit[i]) == 0;
                if (skip || (e->scalars_only && (json_object_is_type(val, json_type_object) ||
                                                 json_object_is_type(val, json_type_array))))
                    continue;
                json_object *nk = NULL, *r;
                if (e->rename && json_object_object_get_ex(e->rename, k, &r))
                    nk = json_object_new_string(json_object_get_string(r));
                else if (e->key_steps.n)
                    nk = apply_steps(rt, &e->key_steps, json_object_new_string(k));
                const char *name = nk ? json_object_get_string(nk) : k;
                if (!*name || missing(val)) {
                    json_object_put(nk);
                    continue;
                }
                json_object *item = json_object_get(val);
                if (e->wrap) {
                    json_object *w = json_object_new_object();
                    json_object_object_add(w, e->wrap, item);
                    item = w;
                }
                json_object_object_add(dst, name, item);
                json_object_put(nk);
            }
        }
        json_object_put(v);
    } else if (e->to.n == 0) {
        json_object_put(v); /* "to": "." without spread: nothing to name it */
    } else {
        json_object *dst = walk_target(rt, target, &e->to, e->to.n - 1, &kbuf, &key);
        if (dst && key)
            json_object_object_add(dst, key, v);
        else
            json_object_put(v);
    }
    sl_buf_free(&kbuf);
}

static void apply_mapping(rt_t *rt, const mapping_t *m, json_object *target)
{
    for (size_t i = 0; i < m->n && !rt->failed; i++)
        apply_entry(rt, &m->e[i], target);
}

/* ---- building requests ----------------------------------------------------------------- */

static pr_desttx_req_buf_t *req_buf(pr_desttx_out_t *out, size_t i)
{
    if (i >= out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 2;
        out->bufs = sl_realloc(out->bufs, cap * sizeof(*out->bufs));
        out->reqs = sl_realloc(out->reqs, cap * sizeof(*out->reqs));
        memset(out->bufs + out->cap, 0, (cap - out->cap) * sizeof(*out->bufs));
        out->cap = cap;
    }
    pr_desttx_req_buf_t *b = &out->bufs[i];
    sl_buf_reset(&b->method);
    sl_buf_reset(&b->url);
    sl_buf_reset(&b->headers);
    sl_buf_reset(&b->body);
    sl_buf_reset(&b->key);
    sl_buf_reset(&b->prefix);
    sl_buf_reset(&b->sep);
    sl_buf_reset(&b->suffix);
    return b;
}

void pr_desttx_out_free(pr_desttx_out_t *out)
{
    for (size_t i = 0; i < out->cap; i++) {
        pr_desttx_req_buf_t *b = &out->bufs[i];
        sl_buf_free(&b->method);
        sl_buf_free(&b->url);
        sl_buf_free(&b->headers);
        sl_buf_free(&b->body);
        sl_buf_free(&b->key);
        sl_buf_free(&b->prefix);
        sl_buf_free(&b->sep);
        sl_buf_free(&b->suffix);
    }
    free(out->bufs);
    free(out->reqs);
    out->bufs = NULL;
    out->reqs = NULL;
    out->cap = out->nreqs = 0;
}

static void put_header(sl_buf_t *h, const char *name, const char *value, size_t vlen)
{
    sl_buf_putc(h, h->len ? ',' : '{');
    sl_buf_json_str(h, name, strlen(name));
    sl_buf_putc(h, ':');
    sl_buf_json_str(h, value, vlen);
}

static void urlenc(sl_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    sl_buf_reserve(b, n * 3);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            b->data[b->len++] = (char)c;
        } else {
            b->data[b->len++] = '%';
            b->data[b->len++] = hex[c >> 4];
            b->data[b->len++] = hex[c & 15];
        }
    }
    b->data[b->len] = '\0';
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return (h ^ 0xff) * 1099511628211ULL; /* a separator between fields */
}

#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* Builds one request into b. False (with rt->failed) if the event can't make it. */
static bool build_req(rt_t *rt, const reqdef_t *r, const char *event_text, size_t event_len,
                      pr_desttx_req_buf_t *b, pr_desttx_req_t *q)
{
    json_object *element = NULL, *envelope = NULL;
    bool ok = false;
    if (!render(rt, r->method, &b->method) || !b->method.len) {
        rfail(rt, "destination config gives no HTTP method");
        goto out;
    }
    if (!render(rt, r->url, &b->url) || !b->url.len) {
        rfail(rt, "destination config gives no URL for %s", rt->def->display);
        goto out;
    }
    const char *ctype = r->fmt == F_FORM ? "application/x-www-form-urlencoded" : "application/json";
    bool has_ctype = false;
    sl_buf_t v = SL_BUF_INIT;
    for (size_t i = 0; i < r->nhdrs; i++) {
        sl_buf_reset(&v);
        if (!render(rt, r->hdrs[i].value, &v))
            continue; /* a header whose value is missing is left out */
        has_ctype |= strcasecmp(r->hdrs[i].name, "Content-Type") == 0;
        put_header(&b->headers, r->hdrs[i].name, v.data, v.len);
    }
    sl_buf_free(&v);
    /* A streaming destination (method KAFKA, a kafka:// url) and a warehouse one (method
     * WAREHOUSE) have no HTTP headers. */
    bool streaming =
        strcasecmp(b->method.data, "KAFKA") == 0 || strcasecmp(b->method.data, "WAREHOUSE") == 0;
    if (!has_ctype && !streaming)
        put_header(&b->headers, "Content-Type", ctype, strlen(ctype));
    if (r->has_hlist) {
        json_object *list = resolve(rt, &r->hlist);
        for (size_t i = 0; list && json_object_is_type(list, json_type_array) &&
                           i < json_object_array_length(list);
             i++) {
            json_object *h = json_object_array_get_idx(list, i);
            const char *hn = jstr(h, r->hname), *hv = jstr(h, r->hvalue);
            if (hn && *hn && hv)
                put_header(&b->headers, hn, hv, strlen(hv));
        }
    }
    if (!b->headers.len)
        sl_buf_putc(&b->headers, '{');
    sl_buf_putc(&b->headers, '}');

    q->method = b->method.data;
    q->url = b->url.data;
    q->headers = b->headers.data;
    q->max_events = 1;
    q->max_bytes = r->max_bytes;
    q->batch_key = q->batch_prefix = q->batch_sep = q->batch_suffix = "";
    bool bodyless = strcasecmp(q->method, "GET") == 0 || strcasecmp(q->method, "DELETE") == 0 ||
                    strcasecmp(q->method, "HEAD") == 0;
    q->body_json = r->fmt != F_FORM;
    if (r->fmt == F_EVENT) {
        if (bodyless) {
            q->body = NULL;
            q->body_len = 0;
        } else if (event_text) {
            q->body = event_text; /* no second serialisation of the event */
            q->body_len = event_len;
        } else {
            sl_buf_puts(&b->body, json_object_to_json_string_ext(rt->event, JSON_FLAGS));
            q->body = b->body.data;
            q->body_len = b->body.len;
        }
        ok = true;
        goto out;
    }

    element = json_object_new_object();
    apply_mapping(rt, &r->element, element);
    if (rt->failed)
        goto out;
    if (r->env == ENV_MAP) {
        envelope = json_object_new_object();
        apply_mapping(rt, &r->envelope, envelope);
        if (rt->failed)
            goto out;
    }
    if (r->hook &&
        r->hook(rt->event, element, envelope, rt->out->reason, sizeof(rt->out->reason)) != 0) {
        rt->failed = true;
        goto out;
    }
    const char *elem = json_object_to_json_string_ext(element, JSON_FLAGS);
    if (r->env == ENV_ELEMENTS) {
        sl_buf_putc(&b->prefix, '[');
        sl_buf_putc(&b->suffix, ']');
    } else if (r->env == ENV_MAP) {
        /* The mark, a string, stands where the array of elements goes. */
        const char *env_text = json_object_to_json_string_ext(envelope, JSON_FLAGS);
        const char *mark = strstr(env_text, ELEMENTS_MARK_JSON);
        if (!mark) {
            rfail(rt, "definition %s: the envelope lost its $elements entry", rt->def->name);
            goto out;
        }
        sl_buf_append(&b->prefix, env_text, (size_t)(mark - env_text));
        sl_buf_putc(&b->prefix, '[');
        sl_buf_putc(&b->suffix, ']');
        sl_buf_puts(&b->suffix, mark + strlen(ELEMENTS_MARK_JSON));
    }
    if (r->fmt == F_FORM) {
        sl_buf_t fp = SL_BUF_INIT, v2 = SL_BUF_INIT;
        for (size_t i = 0; i < r->nform; i++) {
            sl_buf_reset(&v2);
            if (!render(rt, r->form[i].value, &v2))
                continue;
            urlenc(&fp, r->form[i].name, strlen(r->form[i].name));
            sl_buf_putc(&fp, '=');
            urlenc(&fp, v2.data, v2.len);
            sl_buf_putc(&fp, '&');
        }
        urlenc(&fp, r->form_json, strlen(r->form_json));
        sl_buf_putc(&fp, '=');
        urlenc(&fp, b->prefix.data ? b->prefix.data : "", b->prefix.len);
        sl_buf_reset(&v2);
        urlenc(&v2, b->suffix.data ? b->suffix.data : "", b->suffix.len);
        sl_buf_reset(&b->prefix);
        sl_buf_append(&b->prefix, fp.data, fp.len);
        sl_buf_reset(&b->suffix);
        sl_buf_append(&b->suffix, v2.data ? v2.data : "", v2.len);
        sl_buf_free(&fp);
        sl_buf_free(&v2);
        sl_buf_puts(&b->sep, "%2C");
        sl_buf_append(&b->body, b->prefix.data, b->prefix.len);
        urlenc(&b->body, elem, strlen(elem));
    } else {
        sl_buf_puts(&b->sep, ",");
        sl_buf_append(&b->body, b->prefix.data ? b->prefix.data : "", b->prefix.len);
        sl_buf_puts(&b->body, elem);
    }
    sl_buf_append(&b->body, b->suffix.data ? b->suffix.data : "", b->suffix.len);
    if (!b->prefix.data)
        sl_buf_puts(&b->prefix, "");
    if (!b->suffix.data)
        sl_buf_puts(&b->suffix, "");
    q->body = bodyless ? NULL : b->body.data;
    q->body_len = bodyless ? 0 : b->body.len;
    if (r->max_events > 1 && !bodyless) {
        /* Events merge when everything but their element is the same. */
        uint64_t h = 1469598103934665603ULL;
        h = fnv1a(h, rt->def->name, strlen(rt->def->name));
        h = fnv1a(h, q->method, b->method.len);
        h = fnv1a(h, q->url, b->url.len);
        h = fnv1a(h, q->headers, b->headers.len);
        h = fnv1a(h, b->prefix.data, b->prefix.len);
        h = fnv1a(h, b->suffix.data, b->suffix.len);
        sl_buf_printf(&b->key, "%s:%016" PRIx64, rt->def->name, h);
        q->batch_key = b->key.data;
        q->batch_prefix = b->prefix.data;
        q->batch_sep = b->sep.data;
        q->batch_suffix = b->suffix.data;
        q->max_events = r->max_events;
    }
    ok = true;
out:
    if (element)
        json_object_put(element);
    if (envelope)
        json_object_put(envelope);
    return ok;
}

static int finish(pr_desttx_out_t *out, pr_desttx_status_t st, int err)
{
    out->status = st;
    out->nreqs = 0;
    return err;
}

/* Checks the destination's config against the definition; false with a reason if unusable. */
static bool check_config(rt_t *rt)
{
    const pr_desttx_def_t *def = rt->def;
    for (size_t i = 0; i < def->ncfg; i++) {
        const cfgkey_t *c = &def->cfg[i];
        json_object *v = jget(rt->config, c->name);
        if (missing(v)) {
            if (c->required) {
                rfail(rt, "destination config has no %s, which %s requires", c->name, def->display);
                return false;
            }
            continue;
        }
        if (c->has_type) {
            json_type t = json_object_get_type(v);
            bool ok = t == c->type || (c->type == json_type_double && t == json_type_int);
            if (!ok) {
                rfail(rt, "destination config %s must be a %s", c->name,
                      c->type == json_type_double ? "number" : json_type_to_name(c->type));
                return false;
            }
        }
        if (c->enumv) {
            bool ok = false;
            for (size_t k = 0; k < json_object_array_length(c->enumv) && !ok; k++)
                ok = same_value(v, json_object_array_get_idx(c->enumv, k));
            if (!ok) {
                json_object *vc = dup_value(v), *ec = dup_value(c->enumv);
                rfail(rt, "destination config %s is %s, expected one of %s", c->name,
                      json_object_to_json_string_ext(vc, JSON_FLAGS),
                      json_object_to_json_string_ext(ec, JSON_FLAGS));
                json_object_put(vc);
                json_object_put(ec);
                return false;
            }
        }
    }
    return true;
}

int pr_desttx_transform_text(const pr_desttx_t *tx, const sl_destination_t *d, json_object *event,
                             const char *event_text, size_t event_len, pr_desttx_out_t *out)
{
    out->reason[0] = '\0';
    out->nreqs = 0;
    const pr_desttx_def_t *def = pr_desttx_find(tx, d->def_name);
    if (!def) {
        snprintf(out->reason, sizeof(out->reason), "no destination definition for type \"%s\"",
                 d->def_name ? d->def_name : "");
        return finish(out, PR_DESTTX_FAILED, SL_ERR_NOTFOUND);
    }
    rt_t rt = {.def = def, .event = event, .config = d->config, .cur = event, .out = out};
    const char *type = jstr(event, "type");
    if (!type || !*type) {
        snprintf(out->reason, sizeof(out->reason), "event has no type");
        return finish(out, PR_DESTTX_FAILED, SL_ERR_INVALID);
    }
    const msgdef_t *m = NULL;
    for (size_t i = 0; i < def->nmsgs && !m; i++)
        if (strcasecmp(def->msgs[i].type, type) == 0)
            m = &def->msgs[i];
    if (!m) {
        snprintf(out->reason, sizeof(out->reason), "message type \"%s\" is not supported by %s",
                 type, def->display);
        return finish(out, PR_DESTTX_FILTERED, SL_ERR_INVALID);
    }
    if (!check_config(&rt))
        return finish(out, PR_DESTTX_FAILED, SL_ERR_INVALID);
    if (def->vars.n) {
        rt.vars = json_object_new_object();
        apply_mapping(&rt, &def->vars, rt.vars);
    }
    size_t n = 0;
    for (size_t i = 0; i < m->n && !rt.failed; i++) {
        const reqdef_t *r = &m->reqs[i];
        if (r->when && !eval_cond(&rt, r->when))
            continue;
        pr_desttx_req_buf_t *b = req_buf(out, n);
        if (build_req(&rt, r, event_text, event_len, b, &out->reqs[n]))
            n++;
    }
    if (rt.vars)
        json_object_put(rt.vars);
    if (rt.failed)
        return finish(out, PR_DESTTX_FAILED, SL_ERR_INVALID);
    if (n == 0) {
        snprintf(out->reason, sizeof(out->reason), "%s makes no request for this %s event",
                 def->display, type);
        return finish(out, PR_DESTTX_FILTERED, SL_ERR_INVALID);
    }
    out->status = PR_DESTTX_OK;
    out->nreqs = n;
    return 0;
}

int pr_desttx_transform(const pr_desttx_t *tx, const sl_destination_t *d, json_object *event,
                        pr_desttx_out_t *out)
{
    return pr_desttx_transform_text(tx, d, event, NULL, 0, out);
}

void pr_desttx_write_request(const pr_desttx_req_t *q, sl_buf_t *b)
{
    sl_buf_puts(b, "{\"method\":");
    sl_buf_json_str(b, q->method, strlen(q->method));
    sl_buf_puts(b, ",\"url\":");
    sl_buf_json_str(b, q->url, strlen(q->url));
    sl_buf_puts(b, ",\"headers\":");
    sl_buf_puts(b, q->headers);
    if (q->body) {
        sl_buf_puts(b, ",\"body\":");
        /* JSON goes in as JSON: no escaping here and no unescaping in the router. Not for the
         * warehouse, which takes its event as a string. */
        if (q->body_json && strcmp(q->method, "WAREHOUSE") != 0)
            sl_buf_append(b, q->body, q->body_len);
        else
            sl_buf_json_str(b, q->body, q->body_len);
    }
    if (q->max_events > 1) {
        sl_buf_puts(b, ",\"batch\":{\"key\":");
        sl_buf_json_str(b, q->batch_key, strlen(q->batch_key));
        sl_buf_printf(b, ",\"maxEvents\":%zu,\"maxBytes\":%zu,\"prefix\":", q->max_events,
                      q->max_bytes);
        sl_buf_json_str(b, q->batch_prefix, strlen(q->batch_prefix));
        sl_buf_puts(b, ",\"separator\":");
        sl_buf_json_str(b, q->batch_sep, strlen(q->batch_sep));
        sl_buf_puts(b, ",\"suffix\":");
        sl_buf_json_str(b, q->batch_suffix, strlen(q->batch_suffix));
        sl_buf_putc(b, '}');
    }
    sl_buf_putc(b, '}');
}
