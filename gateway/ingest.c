/*
 * Validation and enrichment of ingested events, see ingest.h. Each event is scanned once
 * (json_scan), then written out as its original members, minus the fields the gateway owns,
 * plus those fields: no tree is built and nothing is serialized twice.
 */
#include "gateway/ingest.h"
#include "common/mem.h"
#include "common/json_scan.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ID_MAX 1024 /* longest userId / anonymousId used for the partition key */

static const char *const event_types[] = {"track", "identify", "page", "screen", "group", "alias"};

void gw_batch_init(gw_batch_t *b)
{
    memset(b, 0, sizeof(*b));
    b->index = -1;
}

void gw_batch_reset(gw_batch_t *b)
{
    sl_buf_reset(&b->out);
    sl_buf_reset(&b->ids);
    b->n = 0;
    b->status = 0;
    b->index = -1;
    b->reason = NULL;
    b->error[0] = '\0';
}

void gw_batch_free(gw_batch_t *b)
{
    sl_buf_free(&b->out);
    sl_buf_free(&b->ids);
    free(b->events);
    sl_json_index_free(&b->idx);
    gw_batch_init(b);
}

static int reject(gw_batch_t *b, int status, long index, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int reject(gw_batch_t *b, int status, long index, const char *reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->error, sizeof(b->error), fmt, ap);
    va_end(ap);
    b->status = status;
    b->index = index;
    b->reason = reason;
    return status;
}

static int reject_json(gw_batch_t *b, const sl_json_error_t *e)
{
    return reject(b, 400, -1, "invalid_json", "invalid JSON at byte %zu: %s", e->offset, e->msg);
}

/* The identity fields of an event: a non-empty string or a number counts. */
static bool id_present(const sl_json_span_t *v)
{
    if (!v->p)
        return false;
    if (v->type == SL_JSON_STRING)
        return v->len > 2;
    return v->type == SL_JSON_NUMBER;
}

/* The identity as text (decoded string or the number as written) into out; returns length. */
static size_t id_text(const sl_json_span_t *v, char *out, size_t out_size)
{
    if (!id_present(v)) {
        out[0] = '\0';
        return 0;
    }
    if (v->type == SL_JSON_STRING) {
        size_t n = sl_json_string_decode(*v, out, out_size);
        return n < out_size ? n : out_size - 1;
    }
    size_t n = v->len < out_size - 1 ? v->len : out_size - 1;
    memcpy(out, v->p, n);
    out[n] = '\0';
    return n;
}

typedef struct fields {
    sl_json_span_t type, user_id, anonymous_id, message_id, event, group_id, previous_id, context,
        sent_at;
} fields_t;

/* Members the gateway writes itself; any sent by the client are dropped. */
static bool owned_key(sl_json_span_t key)
{
    return sl_json_key_is(key, "type") || sl_json_key_is(key, "receivedAt") ||
           sl_json_key_is(key, "rudderId") || sl_json_key_is(key, "request_ip");
}

/* The members add_event reads, by name. */
static const struct {
    const char *name;
    size_t off;
} wanted[] = {
    {"type", offsetof(fields_t, type)},
    {"userId", offsetof(fields_t, user_id)},
    {"anonymousId", offsetof(fields_t, anonymous_id)},
    {"messageId", offsetof(fields_t, message_id)},
    {"event", offsetof(fields_t, event)},
    {"groupId", offsetof(fields_t, group_id)},
    {"previousId", offsetof(fields_t, previous_id)},
    {"context", offsetof(fields_t, context)},
    {"sentAt", offsetof(fields_t, sent_at)},
};

static void collect(sl_json_span_t ev, fields_t *f)
{
    memset(f, 0, sizeof(*f));
    sl_json_members_t it;
    sl_json_members_init(&it, ev);
    while (sl_json_members_next(&it)) {
        if (it.key.len < 6)
            continue; /* shorter than any wanted name */
        for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
            if (sl_json_key_is(it.key, wanted[i].name)) {
                *(sl_json_span_t *)((char *)f + wanted[i].off) = it.value;
                break;
            }
        }
    }
}

/* A client's messageId is kept when it is a non-empty string without an escaped NUL (later
 * stages read it as a C string); otherwise the gateway makes one. */
static bool message_id_ok(const fields_t *f)
{
    const sl_json_span_t *m = &f->message_id;
    return m->p && m->type == SL_JSON_STRING && m->len > 2 && !memmem(m->p, m->len, "\\u0000", 6);
}

static void put_member_str(sl_buf_t *o, bool *first, const char *name, const char *value)
{
    if (!*first)
        sl_buf_putc(o, ',');
    *first = false;
    sl_buf_putc(o, '"');
    sl_buf_puts(o, name);
    sl_buf_puts(o, "\":");
    sl_buf_json_str(o, value, strlen(value));
}

/* The context member, with "ip" added when the client's context has none. */
static void put_context(sl_buf_t *o, bool *first, sl_json_span_t ctx, const char *ip)
{
    if (!ip) {
        if (ctx.p) {
            if (!*first)
                sl_buf_putc(o, ',');
            *first = false;
            sl_buf_puts(o, "\"context\":");
            sl_buf_append(o, ctx.p, ctx.len);
        }
        return;
    }
    bool has_ip = false, empty = true;
    if (ctx.p && ctx.type == SL_JSON_OBJECT) {
        sl_json_members_t it;
        sl_json_members_init(&it, ctx);
        while (sl_json_members_next(&it)) {
            empty = false;
            if (sl_json_key_is(it.key, "ip"))
                has_ip = true;
        }
    }
    if (!*first)
        sl_buf_putc(o, ',');
    *first = false;
    sl_buf_puts(o, "\"context\":");
    if (has_ip) {
        sl_buf_append(o, ctx.p, ctx.len);
        return;
    }
    sl_buf_puts(o, "{\"ip\":");
    sl_buf_json_str(o, ip, strlen(ip));
    if (ctx.p && ctx.type == SL_JSON_OBJECT && !empty) {
        sl_buf_putc(o, ',');
        sl_buf_append(o, ctx.p + 1, ctx.len - 1); /* the members and the closing brace */
    } else {
        sl_buf_putc(o, '}');
    }
}

/*
 * Validates one event and appends it, enriched, to b. type is the endpoint's (NULL in a batch:
 * the event's own). sent_at is the batch's top-level "sentAt" span, if any.
 */
static int add_event(gw_batch_t *b, sl_json_span_t ev, const char *type, long index,
                     sl_json_span_t sent_at, const gw_ingest_ctx_t *ctx)
{
    if (ev.type != SL_JSON_OBJECT)
        return reject(b, 400, index, "not_object", "event must be a JSON object");
    fields_t f;
    collect(ev, &f);

    char tbuf[16];
    if (!type) {
        if (!f.type.p || f.type.type != SL_JSON_STRING)
            return reject(b, 400, index, "no_type", "event has no \"type\"");
        size_t n = sl_json_string_decode(f.type, tbuf, sizeof(tbuf));
        type = n < sizeof(tbuf) ? tbuf : "";
    }
    bool known = false;
    for (size_t i = 0; i < sizeof(event_types) / sizeof(event_types[0]) && !known; i++)
        known = strcmp(type, event_types[i]) == 0;
    if (!known)
        return reject(b, 400, index, "bad_type",
                      "event \"type\" must be one of track, identify, page, screen, group, "
                      "alias");
    if (!id_present(&f.user_id) && !id_present(&f.anonymous_id))
        return reject(b, 400, index, "no_user", "event has neither \"userId\" nor \"anonymousId\"");
    if (strcmp(type, "track") == 0 &&
        !(f.event.p && f.event.type == SL_JSON_STRING && f.event.len > 2))
        return reject(b, 400, index, "no_event_name", "track event has no \"event\" name");
    if (strcmp(type, "group") == 0 && !id_present(&f.group_id))
        return reject(b, 400, index, "no_group_id", "group event has no \"groupId\"");
    if (strcmp(type, "alias") == 0 && !id_present(&f.previous_id))
        return reject(b, 400, index, "no_previous_id", "alias event has no \"previousId\"");

    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->events = sl_realloc(b->events, b->cap * sizeof(*b->events));
    }
    gw_event_t *e = &b->events[b->n];
    snprintf(e->type, sizeof(e->type), "%.11s", type);

    /* Partition key: RudderStack's rudderId, from userId + anonymousId. */
    char key[2 * ID_MAX];
    size_t ulen = id_text(&f.user_id, key, ID_MAX);
    e->user_off = b->ids.len;
    e->user_len = ulen;
    sl_buf_append(&b->ids, key, ulen);
    size_t alen = id_text(&f.anonymous_id, key + ulen, ID_MAX);
    sl_uuid_md5(key, ulen + alen, e->rudder_id);

    sl_buf_t *o = &b->out;
    e->off = o->len;
    sl_buf_putc(o, '{');
    bool first = true;
    bool keep_mid = message_id_ok(&f);
    sl_json_members_t it;
    sl_json_members_init(&it, ev);
    while (sl_json_members_next(&it)) {
        if (owned_key(it.key) || sl_json_key_is(it.key, "context") ||
            (!keep_mid && sl_json_key_is(it.key, "messageId")))
            continue;
        if (!first)
            sl_buf_putc(o, ',');
        first = false;
        sl_buf_append(o, it.member_start, (size_t)(it.value.p + it.value.len - it.member_start));
    }
    put_member_str(o, &first, "type", type);
    if (!keep_mid) {
        char id[SL_UUID_STRLEN];
        sl_uuid_v4(id);
        put_member_str(o, &first, "messageId", id);
    }
    put_member_str(o, &first, "receivedAt", ctx->received_at);
    if (ctx->ip)
        put_member_str(o, &first, "request_ip", ctx->ip);
    put_member_str(o, &first, "rudderId", e->rudder_id);
    if (!f.sent_at.p && sent_at.p) {
        sl_buf_puts(o, ",\"sentAt\":");
        sl_buf_append(o, sent_at.p, sent_at.len);
    }
    put_context(o, &first, f.context, ctx->ip);
    sl_buf_putc(o, '}');
    e->len = o->len - e->off;
    if (e->len > ctx->max_event_size)
        return reject(b, 413, index, "event_too_large",
                      "event is %zu bytes, over the limit of %zu bytes", e->len,
                      ctx->max_event_size);
    b->n++;
    return 0;
}

int gw_ingest_single(gw_batch_t *b, const char *body, size_t len, const char *type,
                     const gw_ingest_ctx_t *ctx)
{
    sl_json_span_t doc;
    sl_json_error_t e;
    if (!sl_json_scan_indexed(body, len, &doc, &e, &b->idx))
        return reject_json(b, &e);
    if (doc.type != SL_JSON_OBJECT)
        return reject(b, 400, -1, "not_object", "request body must be a JSON object");
    sl_json_span_t none = {.p = NULL};
    return add_event(b, doc, type, -1, none, ctx);
}

int gw_ingest_batch(gw_batch_t *b, const char *body, size_t len, const gw_ingest_ctx_t *ctx)
{
    sl_json_span_t doc;
    sl_json_error_t e;
    if (!sl_json_scan_indexed(body, len, &doc, &e, &b->idx))
        return reject_json(b, &e);
    if (doc.type != SL_JSON_OBJECT)
        return reject(b, 400, -1, "not_object", "request body must be a JSON object");
    sl_json_span_t batch = {.p = NULL}, sent_at = {.p = NULL};
    sl_json_members_t it;
    sl_json_members_init(&it, doc);
    while (sl_json_members_next(&it)) {
        if (sl_json_key_is(it.key, "batch"))
            batch = it.value;
        else if (sl_json_key_is(it.key, "sentAt") && it.value.type == SL_JSON_STRING)
            sent_at = it.value;
    }
    if (!batch.p || batch.type != SL_JSON_ARRAY)
        return reject(b, 400, -1, "no_batch", "request body must have a \"batch\" array");
    sl_json_elems_t el;
    sl_json_elems_init(&el, batch);
    long i = 0;
    for (; sl_json_elems_next(&el); i++) {
        int st = add_event(b, el.value, NULL, i, sent_at, ctx);
        if (st)
            return st;
    }
    if (i == 0)
        return reject(b, 400, -1, "empty_batch", "\"batch\" is empty");
    return 0;
}

int gw_ingest_webhook(gw_batch_t *b, const char *body, size_t len, const char *event_name,
                      const gw_ingest_ctx_t *ctx)
{
    sl_json_span_t doc;
    sl_json_error_t e;
    if (!sl_json_scan_indexed(body, len, &doc, &e, &b->idx))
        return reject_json(b, &e);
    sl_buf_t ev = SL_BUF_INIT;
    char anon[SL_UUID_STRLEN];
    sl_uuid_v4(anon);
    sl_buf_puts(&ev, "{\"event\":");
    sl_buf_json_str(&ev, event_name, strlen(event_name));
    sl_buf_puts(&ev, ",\"anonymousId\":\"");
    sl_buf_puts(&ev, anon);
    sl_buf_puts(&ev, "\",\"properties\":");
    if (doc.type == SL_JSON_OBJECT) {
        sl_buf_append(&ev, doc.p, doc.len);
    } else {
        sl_buf_puts(&ev, "{\"body\":");
        sl_buf_append(&ev, doc.p, doc.len);
        sl_buf_putc(&ev, '}');
    }
    sl_buf_putc(&ev, '}');
    /* The wrapper is valid JSON by construction; scan it to get its span. */
    int st = gw_ingest_single(b, ev.data, ev.len, "track", ctx);
    sl_buf_free(&ev);
    return st;
}

/* --- query parameters --- */

typedef struct pnode {
    char *name;
    char *value;        /* a leaf, or NULL for an object */
    struct pnode *kids; /* first child */
    struct pnode *next; /* next sibling */
} pnode_t;

static pnode_t *child(pnode_t *parent, const char *name, size_t n)
{
    pnode_t *last = NULL;
    for (pnode_t *k = parent->kids; k; last = k, k = k->next)
        if (strlen(k->name) == n && memcmp(k->name, name, n) == 0)
            return k;
    pnode_t *k = sl_calloc(1, sizeof(*k));
    k->name = sl_strndup(name, n);
    if (last)
        last->next = k;
    else
        parent->kids = k;
    return k;
}

static void pnode_free(pnode_t *n)
{
    while (n) {
        pnode_t *next = n->next;
        pnode_free(n->kids);
        free(n->name);
        free(n->value);
        free(n);
        n = next;
    }
}

static void pnode_write(const pnode_t *n, sl_buf_t *out)
{
    sl_buf_putc(out, '{');
    for (const pnode_t *k = n->kids; k; k = k->next) {
        if (k != n->kids)
            sl_buf_putc(out, ',');
        sl_buf_json_str(out, k->name, strlen(k->name));
        sl_buf_putc(out, ':');
        if (k->value)
            sl_buf_json_str(out, k->value, strlen(k->value));
        else
            pnode_write(k, out);
    }
    sl_buf_putc(out, '}');
}

void gw_params_to_json(const char *const *names, const char *const *values, size_t n,
                       const char *const *skip, sl_buf_t *out)
{
    pnode_t root = {0};
    for (size_t i = 0; i < n; i++) {
        const char *name = names[i];
        bool skipped = !*name;
        for (const char *const *s = skip; s && *s && !skipped; s++)
            skipped = strcmp(*s, name) == 0;
        if (skipped)
            continue;
        pnode_t *at = &root;
        const char *p = name;
        for (;;) {
            const char *dot = strchr(p, '.');
            size_t seg = dot ? (size_t)(dot - p) : strlen(p);
            if (seg == 0)
                break; /* "a..b" or a trailing dot: the rest is ignored */
            at = child(at, p, seg);
            if (!dot)
                break;
            if (at->value) { /* "a=1&a.b=2": the object wins */
                free(at->value);
                at->value = NULL;
            }
            p = dot + 1;
        }
        if (at == &root)
            continue;
        pnode_free(at->kids);
        at->kids = NULL;
        free(at->value);
        at->value = sl_strdup(values[i] ? values[i] : "");
    }
    pnode_write(&root, out);
    pnode_free(root.kids);
}

const char *gw_client_ip(const char *forwarded_for, const char *peer, bool trust_forwarded,
                         char *out, size_t out_size)
{
    if (trust_forwarded && forwarded_for) {
        const char *p = forwarded_for;
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, ", \t");
        char addr[64];
        if (n > 0 && n < sizeof(addr)) {
            memcpy(addr, p, n);
            addr[n] = '\0';
            unsigned char tmp[16];
            if ((inet_pton(AF_INET, addr, tmp) == 1 || inet_pton(AF_INET6, addr, tmp) == 1) &&
                n < out_size) {
                memcpy(out, addr, n + 1);
                return out;
            }
        }
    }
    if (!peer || strlen(peer) >= out_size)
        return NULL;
    strcpy(out, peer);
    return out;
}
