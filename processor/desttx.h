/*
 * Destination transformations as data: every destination type is a JSON definition
 * (schemas/destinations/<NAME>.json, compiled into the binary) read by one generic engine
 * that maps an event and a destination's config into the HTTP request(s) to deliver.
 * The definition format is described at the top of processor/desttx.c.
 */
#ifndef PR_DESTTX_H
#define PR_DESTTX_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"
#include "common/workspace.h"

typedef struct pr_desttx pr_desttx_t;         /* every loaded definition; immutable once loaded */
typedef struct pr_desttx_def pr_desttx_def_t; /* one destination type */

/* A definition's source text, as embedded by cmake/embed_destinations.cmake. */
typedef struct pr_desttx_src {
    const char *file; /* e.g. "AM.json", named in errors */
    const char *text; /* NUL-terminated JSON */
} pr_desttx_src_t;

/* Generated from schemas/destinations/ by cmake/embed_destinations.cmake. */
extern const pr_desttx_src_t pr_desttx_embedded[];
extern const size_t pr_desttx_embedded_count;

/* Loads and validates every embedded definition. Returns 0 and *out (free with
 * pr_desttx_free), or SL_ERR_INVALID with errstr naming the file and the field, e.g.
 * `AM.json: messages.track.url: missing`. Call once at start; a failure is fatal. */
int pr_desttx_load(pr_desttx_t **out, char *errstr, size_t errstr_size);
/* The same for the given sources (tests, tools). Texts are not kept after the call. */
int pr_desttx_load_sources(const pr_desttx_src_t *srcs, size_t n, pr_desttx_t **out, char *errstr,
                           size_t errstr_size);
void pr_desttx_free(pr_desttx_t *tx);

/* The definition for a destinationDefinition.name (e.g. "AM"), case-insensitively, or NULL.
 * Borrowed from tx. */
const pr_desttx_def_t *pr_desttx_find(const pr_desttx_t *tx, const char *name);
const char *pr_desttx_def_name(const pr_desttx_def_t *def);
const char *pr_desttx_def_display_name(const pr_desttx_def_t *def);
/* The definition's supportedMessageTypes, a JSON array of strings borrowed from tx. */
json_object *pr_desttx_def_message_types(const pr_desttx_def_t *def);
/* Whether a destination takes events of this type: the workspace config's
 * destinationDefinition.config.supportedMessageTypes when present, else the definition's;
 * a destination without either takes every type. */
bool pr_desttx_supports(const pr_desttx_t *tx, const sl_destination_t *d, const char *type);
/* Whether an HTTP status from this destination type is worth retrying: the definition's
 * "retryable" list when it has one, else the router's default (408, 429, 5xx). */
bool pr_desttx_retryable(const pr_desttx_def_t *def, int http_status);

/* One delivery request. Every pointer is owned by the pr_desttx_out_t it came from and valid
 * until the next transform into it (body may point into the caller's event text). */
typedef struct pr_desttx_req {
    const char *method;
    const char *url;
    const char *headers; /* a JSON object text: {"Content-Type":"application/json",...} */
    const char *body;    /* NULL for methods without a body (GET, DELETE, HEAD) */
    size_t body_len;
    bool body_json; /* body is JSON text (not a form): a job carries it as JSON, unescaped */
    /* Batching: requests with the same batch_key can be merged into one body,
     * batch_prefix + element + batch_sep + element ... + batch_suffix, where this event's
     * element is body without its prefix and suffix; at most max_events elements and
     * max_bytes bytes of body. max_events 1 (batch_key "") means not batchable. */
    const char *batch_key;
    const char *batch_prefix, *batch_sep, *batch_suffix;
    size_t max_events, max_bytes;
} pr_desttx_req_t;

typedef enum pr_desttx_status {
    PR_DESTTX_OK = 0,
    PR_DESTTX_FILTERED = 1, /* the destination does not take this event (e.g. message type) */
    PR_DESTTX_FAILED = 2    /* the event or the config can't make a valid request */
} pr_desttx_status_t;

typedef struct pr_desttx_req_buf pr_desttx_req_buf_t;

/* Where a transform writes. Initialise with PR_DESTTX_OUT_INIT, reuse across events (its
 * buffers are kept), release with pr_desttx_out_free. */
typedef struct pr_desttx_out {
    pr_desttx_status_t status;
    char reason[256]; /* why FILTERED or FAILED, e.g. `destination config has no apiKey` */
    size_t nreqs;
    pr_desttx_req_t *reqs;
    /* internal */
    pr_desttx_req_buf_t *bufs;
    size_t cap;
} pr_desttx_out_t;

#define PR_DESTTX_OUT_INIT                                                                         \
    {                                                                                              \
        PR_DESTTX_OK, "", 0, NULL, NULL, 0                                                         \
    }

void pr_desttx_out_free(pr_desttx_out_t *out);

/* Maps one event (a gateway-stored Segment/RudderStack event) for destination d into
 * out->reqs. Returns 0 with out->nreqs >= 1, or SL_ERR_INVALID (never worth retrying) with
 * out->status FILTERED or FAILED and out->reason; SL_ERR_NOTFOUND if no definition is named
 * by d->def_name. event is borrowed and not modified. Thread-safe on a shared tx, one out per
 * thread. */
int pr_desttx_transform(const pr_desttx_t *tx, const sl_destination_t *d, json_object *event,
                        pr_desttx_out_t *out);
/* The same, with the event's JSON text as well (event_text may be NULL): definitions whose
 * body is the event unchanged (WEBHOOK) then point the body at the text instead of
 * serialising the event again. The text must be valid JSON (a job may carry it as it is) and
 * outlive the use of out. */
int pr_desttx_transform_text(const pr_desttx_t *tx, const sl_destination_t *d, json_object *event,
                             const char *event_text, size_t event_len, pr_desttx_out_t *out);

/* Appends a request as the delivery job's "request" object:
 * {"method":..,"url":..,"headers":{..},"body":..[,"batch":{"key":..,"maxEvents":..,
 * "maxBytes":..,"prefix":..,"separator":..,"suffix":..}]}. The body is the request's bytes:
 * a JSON body as JSON (its exact text), any other as a string. */
void pr_desttx_write_request(const pr_desttx_req_t *req, sl_buf_t *b);

/* A hook: C code a definition names ("hook": "ga4_limits") for what a mapping can't say.
 * Called with one request's built element and envelope (NULL when the request has none),
 * before they are serialised; may edit both. Returns 0, or -1 with reason to fail the event.
 * Hooks live in processor/desttx_hooks.c; keep them few and small. */
typedef int (*pr_desttx_hook_fn)(json_object *event, json_object *element, json_object *envelope,
                                 char *reason, size_t reason_size);
/* The hook registered under name, or NULL (processor/desttx_hooks.c). */
pr_desttx_hook_fn pr_desttx_hooks_find(const char *name);

#endif
