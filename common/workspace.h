/*
 * The workspace config in RudderStack's `workspaceConfig.json` format: parsed, validated and
 * indexed into an immutable, reference-counted snapshot. Lookups are by writeKey, source id
 * and destination id. See ../shared/REFERENCE.md for the format.
 */
#ifndef SL_WORKSPACE_H
#define SL_WORKSPACE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct sl_destination {
    const char *id;
    const char *name;
    bool enabled;
    const char *def_name;         /* destinationDefinition.name, e.g. "WEBHOOK" */
    const char *def_display_name; /* destinationDefinition.displayName, e.g. "Webhook" */
    json_object *config;          /* the destination's "config" object (never NULL) */
    json_object *def_config;      /* destinationDefinition.config (never NULL) */
    json_object *json;            /* the whole destination object */
} sl_destination_t;

typedef struct sl_source {
    const char *id;
    const char *name;
    const char *write_key;
    bool enabled;
    const char *def_name; /* sourceDefinition.name, e.g. "HTTP", "webhook" */
    const char *category; /* sourceDefinition.category, may be "" */
    const sl_destination_t *const *destinations;
    size_t ndestinations;
    json_object *json; /* the whole source object */
} sl_source_t;

typedef struct sl_workspace sl_workspace_t;

/* Parses and validates a config document. Returns 0 and a snapshot with one reference, or
 * SL_ERR_INVALID with errstr naming the problem and where, e.g.
 * `sources[1].writeKey is missing` or `writeKey "abc" is used by sources[0] and sources[2]`. */
int sl_workspace_parse(const char *json, size_t len, sl_workspace_t **wsp, char *errstr,
                       size_t errstr_size);

sl_workspace_t *sl_workspace_ref(sl_workspace_t *ws);
void sl_workspace_unref(sl_workspace_t *ws);

const char *sl_workspace_id(const sl_workspace_t *ws);
/* A content hash (hex) identifying this version of the config. */
const char *sl_workspace_version(const sl_workspace_t *ws);
/* The canonical JSON text of the document (what is stored as the last good config). */
const char *sl_workspace_text(const sl_workspace_t *ws);
json_object *sl_workspace_json(const sl_workspace_t *ws);

size_t sl_workspace_nsources(const sl_workspace_t *ws);
const sl_source_t *sl_workspace_source_at(const sl_workspace_t *ws, size_t i);
const sl_source_t *sl_workspace_source_by_write_key(const sl_workspace_t *ws, const char *key);
const sl_source_t *sl_workspace_source_by_id(const sl_workspace_t *ws, const char *id);
const sl_destination_t *sl_workspace_destination_by_id(const sl_workspace_t *ws, const char *id);

#endif
