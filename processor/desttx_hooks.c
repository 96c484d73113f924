/*
 * The C hooks destination definitions name ("hook": "...") for what their mappings can't
 * say, see desttx.h. Keep them few and small.
 */
#include "processor/desttx.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* GA4 collection limits (support.google.com/analytics/answer/9267744 and the Measurement
 * Protocol reference): parameter names are letters, digits and underscores starting with a
 * letter, at most 40 characters, not starting with a reserved prefix; at most 25 parameters
 * per event; string values at most 100 characters (page_title 300, page_referrer 420,
 * page_location 1000). User property names at most 24 characters, values at most 36, at most
 * 25, some names reserved. Anything outside is dropped or cut, as GA4 would ignore it. */
static bool ga4_name_ok(const char *k, size_t max)
{
    static const char *const prefixes[] = {"_", "firebase_", "ga_", "google_", "gtag."};
    size_t n = strlen(k);
    if (n == 0 || n > max || !isalpha((unsigned char)k[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)k[i]) && k[i] != '_')
            return false;
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (strncmp(k, prefixes[i], strlen(prefixes[i])) == 0)
            return false;
    return true;
}

/* Cuts s to at most max characters (UTF-8 aware); returns a new string or NULL if short. */
static json_object *ga4_cut(json_object *v, size_t max)
{
    if (!json_object_is_type(v, json_type_string))
        return NULL;
    const unsigned char *s = (const unsigned char *)json_object_get_string(v);
    size_t chars = 0, i = 0;
    for (; s[i]; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            if (chars == max)
                return json_object_new_string_len((const char *)s, (int)i);
            chars++;
        }
    }
    return NULL;
}

static void ga4_params(json_object *params)
{
    char drop[64][64];
    size_t ndrop = 0, kept = 0;
    json_object_object_foreach(params, k, v)
    {
        bool bad = !ga4_name_ok(k, 40) || (strcmp(k, "items") != 0 && kept >= 25);
        if (bad) {
            if (ndrop < 64 && strlen(k) < 64)
                snprintf(drop[ndrop++], sizeof(drop[0]), "%s", k);
            continue;
        }
        kept++;
        size_t max = strcmp(k, "page_title") == 0      ? 300
                     : strcmp(k, "page_referrer") == 0 ? 420
                     : strcmp(k, "page_location") == 0 ? 1000
                                                       : 100;
        json_object *cut = ga4_cut(v, max);
        if (cut)
            json_object_object_add(params, k, cut);
    }
    for (size_t i = 0; i < ndrop; i++)
        json_object_object_del(params, drop[i]);
}

static void ga4_user_properties(json_object *up)
{
    static const char *const reserved[] = {"first_open_time", "first_visit_time",
                                           "last_deep_link_referrer", "user_id",
                                           "first_open_after_install"};
    char drop[64][64];
    size_t ndrop = 0, kept = 0;
    json_object_object_foreach(up, k, v)
    {
        bool bad = !ga4_name_ok(k, 24) || kept >= 25;
        for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]) && !bad; i++)
            bad = strcmp(k, reserved[i]) == 0;
        if (bad) {
            if (ndrop < 64 && strlen(k) < 64)
                snprintf(drop[ndrop++], sizeof(drop[0]), "%s", k);
            continue;
        }
        kept++;
        json_object *val, *cut;
        if (json_object_object_get_ex(v, "value", &val) && (cut = ga4_cut(val, 36)))
            json_object_object_add(v, "value", cut);
    }
    for (size_t i = 0; i < ndrop; i++)
        json_object_object_del(up, drop[i]);
}

static int hook_ga4_limits(json_object *event, json_object *element, json_object *envelope,
                           char *reason, size_t reason_size)
{
    (void)event;
    (void)reason;
    (void)reason_size;
    json_object *x;
    if (json_object_object_get_ex(element, "params", &x) &&
        json_object_is_type(x, json_type_object))
        ga4_params(x);
    if (envelope && json_object_object_get_ex(envelope, "user_properties", &x) &&
        json_object_is_type(x, json_type_object))
        ga4_user_properties(x);
    return 0;
}

static const struct {
    const char *name;
    pr_desttx_hook_fn fn;
} hooks[] = {
    {"ga4_limits", hook_ga4_limits},
};

pr_desttx_hook_fn pr_desttx_hooks_find(const char *name)
{
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
        if (strcmp(hooks[i].name, name) == 0)
            return hooks[i].fn;
    return NULL;
}
