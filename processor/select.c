/* Destination selection and timestamp correction, see select.h. */
#include "processor/select.h"
#include "common/jsonc.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool supports_type(const sl_destination_t *d, const char *type)
{
    json_object *list;
    if (!json_object_object_get_ex(d->def_config, "supportedMessageTypes", &list) ||
        !json_object_is_type(list, json_type_array))
        return true;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        const char *t = json_object_get_string(json_object_array_get_idx(list, i));
        if (t && type && strcasecmp(t, type) == 0)
            return true;
    }
    return false;
}

static bool integrations_allow(json_object *ev, const sl_destination_t *d)
{
    json_object *integ, *v;
    if (!json_object_object_get_ex(ev, "integrations", &integ) ||
        !json_object_is_type(integ, json_type_object))
        return true;
    const char *names[] = {d->def_name, d->def_display_name};
    for (size_t i = 0; i < 2; i++) {
        if (!names[i] || !*names[i])
            continue;
        json_object_object_foreach(integ, key, val)
        {
            /* Any non-false value (true, or an options object) enables the destination. */
            if (strcasecmp(key, names[i]) == 0)
                return !json_object_is_type(val, json_type_boolean) || json_object_get_boolean(val);
        }
    }
    if (json_object_object_get_ex(integ, "All", &v) && json_object_is_type(v, json_type_boolean))
        return json_object_get_boolean(v);
    return true;
}

/* True if id is in the event's context.consentManagement.deniedConsentIds. */
static bool denied(json_object *denied_ids, const char *id)
{
    if (!id || !*id)
        return false;
    for (size_t i = 0; i < json_object_array_length(denied_ids); i++) {
        const char *d = json_object_get_string(json_object_array_get_idx(denied_ids, i));
        if (d && strcmp(d, id) == 0)
            return true;
    }
    return false;
}

/* Any of list[i][field] denied. */
static bool any_denied(json_object *list, const char *field, json_object *denied_ids)
{
    if (!list || !json_object_is_type(list, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(list); i++)
        if (denied(denied_ids, sl_jsonc_str(json_object_array_get_idx(list, i), field)))
            return true;
    return false;
}

static bool consent_allows(json_object *ev, const sl_destination_t *d)
{
    json_object *ctx, *cm, *ids, *v;
    if (!json_object_object_get_ex(ev, "context", &ctx) ||
        !json_object_object_get_ex(ctx, "consentManagement", &cm) ||
        !json_object_object_get_ex(cm, "deniedConsentIds", &ids) ||
        !json_object_is_type(ids, json_type_array) || json_object_array_length(ids) == 0)
        return true;
    if (json_object_object_get_ex(d->config, "oneTrustCookieCategories", &v) &&
        any_denied(v, "oneTrustCookieCategory", ids))
        return false;
    if (json_object_object_get_ex(d->config, "ketchConsentPurposes", &v) &&
        any_denied(v, "purpose", ids))
        return false;
    /* Generic: consentManagement: [{provider, consents: [{consent: "id"}]}]. */
    if (json_object_object_get_ex(d->config, "consentManagement", &v) &&
        json_object_is_type(v, json_type_array)) {
        const char *provider = sl_jsonc_str(cm, "provider");
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            json_object *p = json_object_array_get_idx(v, i), *consents;
            const char *pp = sl_jsonc_str(p, "provider");
            if (provider && pp && strcmp(provider, pp) != 0)
                continue;
            if (json_object_object_get_ex(p, "consents", &consents) &&
                any_denied(consents, "consent", ids))
                return false;
        }
    }
    return true;
}

/* True if name is listed in cfg[key] as [{"eventName": name}, ...] (or plain strings). */
static bool listed(json_object *cfg, const char *key, const char *name)
{
    json_object *list;
    if (!json_object_object_get_ex(cfg, key, &list) || !json_object_is_type(list, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *e = json_object_array_get_idx(list, i);
        const char *n = json_object_is_type(e, json_type_string) ? json_object_get_string(e)
                                                                 : sl_jsonc_str(e, "eventName");
        if (n && name && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static const char *event_filter(json_object *ev, const char *type, const sl_destination_t *d)
{
    if (!type || strcmp(type, "track") != 0)
        return NULL;
    const char *opt = sl_jsonc_str(d->config, "eventFilteringOption");
    if (!opt || strcmp(opt, "disable") == 0)
        return NULL;
    const char *name = sl_jsonc_str(ev, "event");
    if (strcmp(opt, "whitelistedEvents") == 0 && !listed(d->config, "whitelistedEvents", name))
        return "not in the destination's whitelistedEvents";
    if (strcmp(opt, "blacklistedEvents") == 0 && listed(d->config, "blacklistedEvents", name))
        return "in the destination's blacklistedEvents";
    return NULL;
}

const char *pr_select_reason(json_object *ev, const char *type, const sl_destination_t *d)
{
    if (!d->enabled)
        return "destination is disabled";
    if (!supports_type(d, type))
        return "message type is not in the destination's supportedMessageTypes";
    if (!integrations_allow(ev, d))
        return "turned off by the event's integrations";
    if (!consent_allows(ev, d))
        return "a consent category of the destination is denied by the event";
    return event_filter(ev, type, d);
}

/* The field as a time, if it is a string that parses. */
static bool time_field(json_object *ev, const char *name, int64_t *ms)
{
    const char *s = sl_jsonc_str(ev, name);
    return s && sl_time_parse_ms(s, ms) == 0;
}

bool pr_timestamp_correct(json_object *ev, const char *received_at, char out[SL_TIME_STRLEN])
{
    int64_t ts, recv, sent, orig;
    if (time_field(ev, "timestamp", &ts))
        return false;
    if (!received_at || sl_time_parse_ms(received_at, &recv) != 0)
        return false;
    if (!time_field(ev, "sentAt", &sent))
        sent = recv;
    if (!time_field(ev, "originalTimestamp", &orig))
        orig = recv;
    sl_time_format_ms(recv - (sent - orig), out);
    return true;
}
