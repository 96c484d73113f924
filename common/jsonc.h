/*
 * Small json-c accessors shared by the roles.
 */
#ifndef SL_JSONC_H
#define SL_JSONC_H

#include <json-c/json.h>

/* o[name] if it is a string, else NULL (also when o is NULL). Owned by o. */
static inline const char *sl_jsonc_str(json_object *o, const char *name)
{
    json_object *v;
    if (o && json_object_object_get_ex(o, name, &v) && json_object_is_type(v, json_type_string))
        return json_object_get_string(v);
    return NULL;
}

#endif
