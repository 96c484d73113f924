/*
 * Fuzz target: turning request bodies into events (gateway/ingest.h).
 *
 * Byte 0 selects the call: bits 0-2 gw_ingest_single with track, identify, page, screen, group
 * or alias (0-5), gw_ingest_batch (6) or gw_ingest_webhook (7); bit 3 sets ctx.ip; bits 4-5
 * pick max_event_size (32 KB, 256, 1024, 64 MB). The rest of the input is the body.
 *
 * A rejection is 400 or 413 with a reason and an error text. Every event of an accepted body is
 * checked the way the processor reads it (json-c, default flags and depth): an object whose
 * "type", "messageId", "receivedAt" and "rudderId" are strings ("type" the event's, "rudderId"
 * 36 characters, "receivedAt" the ctx's), with "request_ip" and a "context" object holding
 * "ip" when ctx.ip is set, no bigger than max_event_size; the gateway's own scanner accepts it
 * too. The client's members survive: every member of the event as json-c reads it, but those
 * the gateway owns, is in the output with the same value, and so is every member of its
 * "context" object. A "no_user" rejection means json-c sees neither id either. The batch is then
 * reset and the same body ingested again with the same outcome.
 */
#include "fuzz_util.h"
#include "gateway/ingest.h"

static const char *const types[] = {"track", "identify", "page", "screen", "group", "alias"};
static const size_t sizes[] = {32768, 256, 1024, 64 << 20};
#define RECEIVED_AT   "2024-05-06T07:08:09.123Z"
#define CLIENT_IP     "2001:db8::7"
#define WEBHOOK_EVENT "fuzz \"webhook\"\n"

enum { BATCH = 6, WEBHOOK = 7 };

/*
 * Known bug "longkey" (SLUICE_FUZZ_KNOWN; fixed in 306aa99): ingest.c's collect() skipped keys
 * longer than 40 bytes as written, but "\u0061\u006e..." spells anonymousId in 68, messageId in
 * 56, context in 44: such a field was missed (a 400 no_user, the client's context lost, a
 * second messageId kept). True if the body has such a key, anywhere.
 */
static bool long_field_key(sl_json_span_t v)
{
    static const char *const fields[] = {"type",       "userId",  "anonymousId",
                                         "messageId",  "event",   "groupId",
                                         "previousId", "context", "sentAt"};
    if (v.type == SL_JSON_ARRAY) {
        sl_json_elems_t it;
        sl_json_elems_init(&it, v);
        while (sl_json_elems_next(&it))
            if (long_field_key(it.value))
                return true;
    } else if (v.type == SL_JSON_OBJECT) {
        sl_json_members_t it;
        sl_json_members_init(&it, v);
        while (sl_json_members_next(&it)) {
            for (size_t i = 0; it.key.len > 40 && i < sizeof(fields) / sizeof(fields[0]); i++)
                if (sl_json_key_is(it.key, fields[i]))
                    return true;
            if (long_field_key(it.value))
                return true;
        }
    }
    return false;
}

static bool g_tolerate_longkey;

static int ingest(gw_batch_t *b, int call, const char *body, size_t len, const gw_ingest_ctx_t *c)
{
    if (call < BATCH)
        return gw_ingest_single(b, body, len, types[call], c);
    if (call == BATCH)
        return gw_ingest_batch(b, body, len, c);
    return gw_ingest_webhook(b, body, len, WEBHOOK_EVENT, c);
}

static const char *str_member(json_object *o, const char *name)
{
    json_object *v;
    if (!json_object_object_get_ex(o, name, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

/* Members the gateway writes itself (or may replace): not compared with the client's. */
static bool owned(const char *key)
{
    static const char *const names[] = {"type",     "messageId",  "receivedAt",
                                        "rudderId", "request_ip", "context"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(key, names[i]) == 0)
            return true;
    return false;
}

static bool id_present(json_object *o, const char *name)
{
    json_object *v;
    if (!json_object_object_get_ex(o, name, &v))
        return false;
    return (json_object_is_type(v, json_type_string) && json_object_get_string_len(v) > 0) ||
           json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double);
}

/* The client's event (json-c's reading of the input) against the gateway's output. */
static void check_preserved(json_object *in, json_object *out, const gw_ingest_ctx_t *ctx)
{
    if (!json_object_is_type(in, json_type_object))
        return;
    json_object_object_foreach(in, key, val)
    {
        json_object *o;
        if (owned(key))
            continue;
        FUZZ_CHECK(json_object_object_get_ex(out, key, &o) && json_object_equal(val, o),
                   "the client's member \"%s\" is lost or changed", key);
    }
    json_object *mid, *omid;
    if (json_object_object_get_ex(in, "messageId", &mid) &&
        json_object_is_type(mid, json_type_string) && json_object_get_string_len(mid) > 0)
        FUZZ_CHECK(json_object_object_get_ex(out, "messageId", &omid) &&
                       json_object_equal(mid, omid),
                   "the client's messageId \"%s\" is replaced", json_object_get_string(mid));
    json_object *ic, *oc;
    if (!json_object_object_get_ex(in, "context", &ic))
        return;
    FUZZ_CHECK(json_object_object_get_ex(out, "context", &oc), "the client's context is lost");
    if (!ctx->ip) {
        FUZZ_CHECK(json_object_equal(ic, oc), "the client's context is changed");
    } else if (json_object_is_type(ic, json_type_object)) {
        json_object_object_foreach(ic, ckey, cval)
        {
            json_object *o;
            FUZZ_CHECK(json_object_object_get_ex(oc, ckey, &o) && json_object_equal(cval, o),
                       "the client's context.%s is lost or changed", ckey);
        }
    }
}

/* json-c's view of the body's event number i (single, webhook: the body), or NULL. */
static json_object *input_event(json_object *doc, int call, long i)
{
    if (call != BATCH)
        return doc;
    json_object *arr;
    if (!json_object_object_get_ex(doc, "batch", &arr) ||
        !json_object_is_type(arr, json_type_array) || i < 0 ||
        (size_t)i >= json_object_array_length(arr))
        return NULL;
    return json_object_array_get_idx(arr, (size_t)i);
}

static void check_event(const gw_batch_t *b, size_t i, int call, json_object *indoc,
                        const gw_ingest_ctx_t *ctx)
{
    const gw_event_t *e = &b->events[i];
    size_t expect_off = i ? b->events[i - 1].off + b->events[i - 1].len : 0;
    FUZZ_CHECK(e->off == expect_off && e->len > 0 && e->off + e->len <= b->out.len,
               "event %zu at %zu+%zu, not back to back in %zu bytes", i, e->off, e->len,
               b->out.len);
    FUZZ_CHECK(e->len <= ctx->max_event_size, "event %zu of %zu bytes accepted over the limit %zu",
               i, e->len, ctx->max_event_size);
    FUZZ_CHECK(strlen(e->rudder_id) == 36, "rudder_id \"%s\" isn't 36 characters", e->rudder_id);
    FUZZ_CHECK(e->user_off + e->user_len <= b->ids.len, "userId outside the ids buffer");
    bool known = false;
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
        known |= strcmp(e->type, types[t]) == 0;
    FUZZ_CHECK(known, "event type \"%s\"", e->type);
    if (call < BATCH)
        FUZZ_CHECK(strcmp(e->type, types[call]) == 0, "type %s from endpoint %s", e->type,
                   types[call]);
    if (call == WEBHOOK)
        FUZZ_CHECK(strcmp(e->type, "track") == 0, "webhook event of type %s", e->type);

    const char *p = b->out.data + e->off;
    sl_json_span_t span;
    sl_json_error_t err;
    FUZZ_CHECK(sl_json_scan_document(p, e->len, &span, &err) && span.type == SL_JSON_OBJECT,
               "the gateway's scanner rejects its own event %zu: %s at %zu: %.*s", i,
               err.msg ? err.msg : "not an object", err.offset, (int)e->len, p);

    json_object *o;
    enum json_tokener_error jerr;
    if (!fuzz_jsonc_parse(p, e->len, 0, 0, &o, &jerr)) {
        bool known_gap = fuzz_known("depth33") && jerr == json_tokener_error_depth &&
                         fuzz_value_depth(span) > SL_JSON_MAX_DEPTH;
        FUZZ_CHECK(known_gap, "json-c (as the processor reads events) rejects event %zu: %s%s", i,
                   json_tokener_error_desc(jerr),
                   jerr == json_tokener_error_depth
                       ? " (the scanner accepts a value nested 33 deep; json-c doesn't)"
                       : "");
        return;
    }
    FUZZ_CHECK(json_object_is_type(o, json_type_object), "event %zu isn't an object", i);
    const char *type = str_member(o, "type"), *mid = str_member(o, "messageId"),
               *rat = str_member(o, "receivedAt"), *rid = str_member(o, "rudderId");
    FUZZ_CHECK(type && strcmp(type, e->type) == 0, "event %zu: \"type\" is %s, not \"%s\"", i,
               type ? type : "not a string", e->type);
    /* Non-empty as JSON: "\u0000x" passes, though a C string reading of it is empty. */
    json_object *mido = NULL;
    json_object_object_get_ex(o, "messageId", &mido);
    FUZZ_CHECK((mid && json_object_get_string_len(mido) > 0) || g_tolerate_longkey,
               "event %zu: \"messageId\" isn't a non-empty string", i);
    FUZZ_CHECK(rat && strcmp(rat, RECEIVED_AT) == 0, "event %zu: \"receivedAt\" is %s", i,
               rat ? rat : "not a string");
    FUZZ_CHECK(rid && strcmp(rid, e->rudder_id) == 0, "event %zu: \"rudderId\" is %s, not %s", i,
               rid ? rid : "not a string", e->rudder_id);
    if (ctx->ip) {
        const char *rip = str_member(o, "request_ip");
        FUZZ_CHECK(rip && strcmp(rip, ctx->ip) == 0, "event %zu: \"request_ip\" is %s", i,
                   rip ? rip : "not a string");
        json_object *c, *ip;
        FUZZ_CHECK(json_object_object_get_ex(o, "context", &c) &&
                       json_object_is_type(c, json_type_object) &&
                       json_object_object_get_ex(c, "ip", &ip),
                   "event %zu: no \"context\" object with \"ip\"", i);
    }
    if (call == WEBHOOK) {
        const char *name = str_member(o, "event"), *anon = str_member(o, "anonymousId");
        FUZZ_CHECK(name && strcmp(name, WEBHOOK_EVENT) == 0, "webhook event name %s", name);
        FUZZ_CHECK(anon && strlen(anon) == 36, "webhook anonymousId %s", anon);
        json_object *props;
        FUZZ_CHECK(json_object_object_get_ex(o, "properties", &props), "webhook: no properties");
        if (indoc) {
            json_object *body = NULL;
            if (!json_object_is_type(indoc, json_type_object))
                json_object_object_get_ex(props, "body", &body);
            else
                body = props;
            FUZZ_CHECK(json_object_equal(indoc, body), "webhook properties aren't the body");
        }
    } else {
        json_object *in = indoc ? input_event(indoc, call, (long)i) : NULL;
        if (in && !g_tolerate_longkey)
            check_preserved(in, o, ctx);
    }
    json_object_put(o);
}

static void check(const gw_batch_t *b, int st, int call, const char *body, size_t len,
                  const gw_ingest_ctx_t *ctx)
{
    /* json-c's reading of the body, for comparison: none when json-c cuts a key at an escaped
     * NUL ("type\u0000" is "type" to json-c, not to the gateway) or can't read it. */
    json_object *indoc = NULL;
    bool have_in = !memmem(body, len, "\\u0000", 6) &&
                   fuzz_jsonc_parse(body, len, JSON_TOKENER_STRICT, 0, &indoc, NULL);
    if (st) {
        FUZZ_CHECK(st == b->status && (st == 400 || st == 413), "status %d (batch %d)", st,
                   b->status);
        FUZZ_CHECK(b->error[0] && b->reason && b->reason[0], "rejection without error/reason");
        FUZZ_CHECK(st != 413 || strcmp(b->reason, "event_too_large") == 0, "413 for %s", b->reason);
        FUZZ_CHECK(b->index >= -1 && (call == BATCH || b->index == -1), "index %ld", b->index);
        if (have_in && call != WEBHOOK && !g_tolerate_longkey &&
            strcmp(b->reason, "no_user") == 0) {
            json_object *in = input_event(indoc, call, call == BATCH ? b->index : -1);
            FUZZ_CHECK(!in || (!id_present(in, "userId") && !id_present(in, "anonymousId")),
                       "rejected for no userId/anonymousId, but json-c reads one: %s",
                       json_object_to_json_string(in));
        }
    } else {
        FUZZ_CHECK(b->n >= 1 && (call == BATCH || b->n == 1), "%zu events", b->n);
        for (size_t i = 0; i < b->n; i++)
            check_event(b, i, call, have_in ? indoc : NULL, ctx);
    }
    json_object_put(indoc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int call = data[0] & 7;
    gw_ingest_ctx_t ctx = {
        .received_at = RECEIVED_AT,
        .ip = (data[0] & 8) ? CLIENT_IP : NULL,
        .max_event_size = sizes[(data[0] >> 4) & 3],
    };
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    sl_json_span_t doc;
    g_tolerate_longkey = fuzz_known("longkey") && sl_json_scan_document(body, len, &doc, NULL) &&
                         long_field_key(doc);

    gw_batch_t b;
    gw_batch_init(&b);
    int st = ingest(&b, call, body, len, &ctx);
    check(&b, st, call, body, len, &ctx);

    /* Again in the same batch, reset: the same outcome. */
    size_t n = b.n;
    long index = b.index;
    gw_batch_reset(&b);
    FUZZ_CHECK(b.n == 0 && b.out.len == 0 && b.ids.len == 0 && b.status == 0 && b.index == -1,
               "gw_batch_reset left state");
    int st2 = ingest(&b, call, body, len, &ctx);
    FUZZ_CHECK(st2 == st && b.n == n && b.index == index,
               "second run: status %d, %zu events, index %ld; first: %d, %zu, %ld", st2, b.n,
               b.index, st, n, index);
    check(&b, st2, call, body, len, &ctx);
    gw_batch_free(&b);
    return 0;
}
