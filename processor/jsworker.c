/*
 * The sandbox worker of user transformations, see jsworker.h: one Duktape heap per
 * transformation (version id + code hash), each allocating through a counter that refuses
 * memory past the cap. Duktape gives the code no files, network or processes, and we add none:
 * the only ways out are the return value, log() and metadata().
 *
 * The worker is single-threaded and serves one call at a time, so the call's state is static.
 * It never needs to interrupt user code: the parent kills it when a call overruns.
 */
#include "processor/jsworker.h"
#include "common/buf.h"
#include "common/mem.h"

#include <duktape.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#define JW_MAX_HEAPS     16   /* transformations kept compiled per worker */
#define JW_MAX_LOG_LINES 200  /* log() lines forwarded per call; the rest are counted */
#define JW_MAX_LOG_LINE  2000 /* bytes per log line */
#define JW_MAX_ERROR     2000 /* bytes per error message */
#define JW_HDR           16   /* allocation header: the size, keeping 16-byte alignment */

#if defined(__SANITIZE_ADDRESS__)
#define JW_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JW_ASAN 1
#endif
#endif

/* What one heap has allocated: live bytes against the limit. Blocks of up to JW_SLAB_MAX
 * bytes come from per-heap free lists carved out of 64 KB chunks, because Duktape allocates
 * and frees many small objects per event and malloc was a fifth of the time; the chunks go
 * when the heap goes. refused is set when an allocation was refused, so that the error Duktape
 * throws then can be reported as the memory limit. */
#define JW_SLAB_MAX     512
#define JW_SLAB_CLASSES (JW_SLAB_MAX / 16)
#define JW_SLAB_CHUNK   (64 * 1024)

typedef struct jw_mem {
    size_t used, limit;
    bool refused;
    void *free_list[JW_SLAB_CLASSES]; /* by size class: 16, 32, ... 512 bytes */
    void *chunks;                     /* the chunks, linked through their first word */
    char *bump;                       /* unused space of the newest chunk */
    size_t bump_left;
} jw_mem_t;

typedef struct jw_heap {
    duk_context *ctx; /* NULL if the code failed to load: then error says why */
    jw_mem_t mem;
    char *version_id;
    uint64_t hash;
    uint64_t last_used;
    char *error;
    bool batch; /* transformBatch is defined; it wins over transformEvent */
} jw_heap_t;

/* The worker's state; the call's fields are valid while a RUN is served. */
static struct {
    size_t memory_limit;
    size_t output_limit;
    jw_heap_t *heaps[JW_MAX_HEAPS];
    uint64_t clock;
    /* the call */
    uint32_t n;
    const char **ev, **md; /* event and metadata JSON, pointing into the request */
    uint32_t *ev_len, *md_len;
    uint32_t cur;     /* transformEvent: the event being transformed */
    bool wrap;        /* transformEvent returned one object: its JSON needs [ ] */
    bool batch;       /* transformBatch call: metadata() looks events up by messageId */
    char bad[256];    /* set by the call when the return value breaks the contract */
    sl_buf_t *outs;   /* transformBatch: output events per input event */
    uint32_t *counts; /* transformBatch: their number */
    size_t out_bytes;
    int log_lines, log_dropped;
    sl_buf_t line;
    sl_buf_t conv; /* scratch for jw_push_json and jw_utf8 */
} jw;

/* ---- frames on stdout ------------------------------------------------------------------ */

static void jw_write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(1, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(0); /* the parent is gone */
        p += w;
        n -= (size_t)w;
    }
}

static bool jw_read_all(char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(0, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

/* ---- the allocator with the cap -------------------------------------------------------- */

static inline size_t jw_class(size_t size)
{
    return size ? (size - 1) / 16 : 0;
}

/* A block is JW_HDR bytes of header (its size) and then what Duktape asked for. */
static size_t *jw_block_alloc(jw_mem_t *m, size_t size)
{
#ifndef JW_ASAN /* under AddressSanitizer every block is its own malloc, so it is checked */
    if (size <= JW_SLAB_MAX) {
        size_t c = jw_class(size);
        size_t *h = m->free_list[c];
        if (h) {
            m->free_list[c] = *(void **)(h + JW_HDR / sizeof(size_t));
            return h;
        }
        size_t bsize = JW_HDR + (c + 1) * 16;
        if (m->bump_left < bsize) {
            void **chunk = malloc(JW_SLAB_CHUNK);
            if (!chunk)
                return NULL;
            *chunk = m->chunks;
            m->chunks = chunk;
            m->bump = (char *)chunk + JW_HDR;
            m->bump_left = JW_SLAB_CHUNK - JW_HDR;
        }
        h = (size_t *)(void *)m->bump;
        m->bump += bsize;
        m->bump_left -= bsize;
        return h;
    }
#endif
    return malloc(size + JW_HDR);
}

static void jw_block_free(jw_mem_t *m, size_t *h)
{
#ifndef JW_ASAN
    if (h[0] <= JW_SLAB_MAX) {
        size_t c = jw_class(h[0]);
        *(void **)(h + JW_HDR / sizeof(size_t)) = m->free_list[c];
        m->free_list[c] = h;
        return;
    }
#endif
    free(h);
}

static void *jw_alloc(void *ud, duk_size_t size)
{
    jw_mem_t *m = ud;
    if (size > m->limit - m->used) {
        m->refused = true;
        return NULL;
    }
    size_t *h = jw_block_alloc(m, size);
    if (!h) {
        m->refused = true;
        return NULL;
    }
    h[0] = size;
    m->used += size;
    return (char *)h + JW_HDR;
}

static void jw_free(void *ud, void *ptr)
{
    if (!ptr)
        return;
    jw_mem_t *m = ud;
    size_t *h = (size_t *)(void *)((char *)ptr - JW_HDR);
    m->used -= h[0];
    jw_block_free(m, h);
}

static void *jw_realloc(void *ud, void *ptr, duk_size_t size)
{
    if (!ptr)
        return jw_alloc(ud, size);
    if (size == 0) {
        jw_free(ud, ptr);
        return NULL;
    }
    jw_mem_t *m = ud;
    size_t *h = (size_t *)(void *)((char *)ptr - JW_HDR);
    size_t old = h[0];
    if (size > old && size - old > m->limit - m->used) {
        m->refused = true;
        return NULL;
    }
#ifndef JW_ASAN
    if (old <= JW_SLAB_MAX || size <= JW_SLAB_MAX) {
        if (old <= JW_SLAB_MAX && size <= JW_SLAB_MAX && jw_class(old) == jw_class(size)) {
            h[0] = size; /* the same size class */
            m->used = m->used - old + size;
            return ptr;
        }
        size_t *nh = jw_block_alloc(m, size);
        if (!nh) {
            m->refused = true;
            return NULL;
        }
        memcpy((char *)nh + JW_HDR, ptr, old < size ? old : size);
        nh[0] = size;
        m->used = m->used - old + size;
        jw_block_free(m, h);
        return (char *)nh + JW_HDR;
    }
#endif
    size_t *nh = realloc(h, size + JW_HDR);
    if (!nh) {
        m->refused = true;
        return NULL;
    }
    nh[0] = size;
    m->used = m->used - old + size;
    return (char *)nh + JW_HDR;
}

/* Frees the slab chunks, after the heap is destroyed. */
static void jw_mem_release(jw_mem_t *m)
{
    while (m->chunks) {
        void **c = m->chunks;
        m->chunks = *c;
        free(c);
    }
    memset(m->free_list, 0, sizeof(m->free_list));
    m->bump = NULL;
    m->bump_left = 0;
}

/* Duktape calls this only for errors outside a protected call, which we never make; if it
 * happens the parent sees the worker die and reports it. */
static void jw_fatal(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "sluice js-worker: fatal javascript engine error: %s\n", msg ? msg : "");
    _exit(70);
}

/* ---- errors ---------------------------------------------------------------------------- */

static bool jw_is_memory_error(jw_heap_t *h, duk_context *ctx, duk_idx_t idx)
{
    if (!h->mem.refused)
        return false;
    int code = duk_get_error_code(ctx, idx);
    return code == DUK_ERR_RANGE_ERROR || code == DUK_ERR_ERROR || !duk_is_error(ctx, idx);
}

static duk_ret_t jw_format_call(duk_context *ctx, void *udata)
{
    sl_buf_t *out = udata;
    duk_idx_t e = duk_get_top(ctx) - 1; /* a safe call shares its caller's frame */
    int line = 0;
    if (duk_is_error(ctx, e)) {
        duk_get_prop_string(ctx, e, "lineNumber");
        line = duk_get_int_default(ctx, -1, 0);
        duk_pop(ctx);
    }
    duk_dup(ctx, e);
    duk_size_t len;
    const char *msg = duk_safe_to_lstring(ctx, -1, &len);
    sl_buf_append(out, msg, len < JW_MAX_ERROR ? len : JW_MAX_ERROR);
    if (line > 0 && !strstr(out->data, "(line "))
        sl_buf_printf(out, " (line %d)", line);
    return 0;
}

/* Formats the thrown value at the top of the stack as "Name: message (line N)" into out and
 * pops it. Returns true if it was the memory limit. */
static bool jw_format_error(jw_heap_t *h, sl_buf_t *out)
{
    duk_context *ctx = h->ctx;
    sl_buf_reset(out);
    if (jw_is_memory_error(h, ctx, -1)) {
        duk_pop(ctx);
        sl_buf_puts(out, "memory limit exceeded");
        return true;
    }
    if (duk_safe_call(ctx, jw_format_call, out, 1, 1) != DUK_EXEC_SUCCESS && out->len == 0)
        sl_buf_puts(out, h->mem.refused ? "memory limit exceeded" : "unknown error");
    duk_pop(ctx);
    return false;
}

/* ---- UTF-8 at the boundary ------------------------------------------------------------ */

/* Duktape keeps strings in CESU-8: a character outside the BMP made in JavaScript or read from
 * a \ud83d\ude00 escape is two 3-byte surrogates, which is not UTF-8; and a 4-byte UTF-8
 * character read from raw input is one character where JavaScript has two. So input JSON gets
 * its 4-byte characters escaped as surrogate pairs (standard semantics: '😀'.length is 2), and
 * output JSON gets surrogate pairs joined back into UTF-8 and lone surrogates \u-escaped. */

/* Pushes JSON text as a string, non-BMP characters escaped. */
static void jw_push_json(duk_context *ctx, const char *s, size_t len)
{
    size_t i = 0;
    while (i < len && (unsigned char)s[i] < 0xF0)
        i++;
    if (i == len) {
        duk_push_lstring(ctx, s, len);
        return;
    }
    sl_buf_t *b = &jw.conv;
    sl_buf_reset(b);
    sl_buf_append(b, s, i);
    while (i < len) {
        const unsigned char *u = (const unsigned char *)s + i;
        if (u[0] >= 0xF0 && u[0] <= 0xF4 && i + 3 < len && (u[1] & 0xC0) == 0x80 &&
            (u[2] & 0xC0) == 0x80 && (u[3] & 0xC0) == 0x80) {
            uint32_t cp = (uint32_t)(u[0] & 7) << 18 | (uint32_t)(u[1] & 0x3F) << 12 |
                          (uint32_t)(u[2] & 0x3F) << 6 | (uint32_t)(u[3] & 0x3F);
            if (cp >= 0x10000 && cp <= 0x10FFFF) {
                cp -= 0x10000;
                sl_buf_printf(b, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
                i += 4;
                continue;
            }
        }
        sl_buf_putc(b, s[i++]);
    }
    duk_push_lstring(ctx, b->data, b->len);
}

/* The JSON text s as UTF-8: s itself, or a converted copy valid until the next call. */
static const char *jw_utf8(const char *s, size_t len, size_t *out_len)
{
    *out_len = len;
    if (!memchr(s, 0xED, len))
        return s;
    sl_buf_t *b = &jw.conv;
    sl_buf_reset(b);
    sl_buf_reserve(b, len);
    size_t i = 0;
    while (i < len) {
        const unsigned char *u = (const unsigned char *)s + i;
        if (u[0] == 0xED && i + 2 < len && u[1] >= 0xA0) { /* a surrogate */
            uint32_t hi = 0xD000 | (uint32_t)(u[1] & 0x3F) << 6 | (uint32_t)(u[2] & 0x3F);
            if (hi < 0xDC00 && i + 5 < len && u[3] == 0xED && u[4] >= 0xB0) {
                uint32_t lo = 0xD000 | (uint32_t)(u[4] & 0x3F) << 6 | (uint32_t)(u[5] & 0x3F);
                uint32_t cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                char o[4] = {(char)(0xF0 | cp >> 18), (char)(0x80 | ((cp >> 12) & 0x3F)),
                             (char)(0x80 | ((cp >> 6) & 0x3F)), (char)(0x80 | (cp & 0x3F))};
                sl_buf_append(b, o, 4);
                i += 6;
            } else {
                sl_buf_printf(b, "\\u%04x", hi);
                i += 3;
            }
            continue;
        }
        sl_buf_putc(b, s[i++]);
    }
    *out_len = b->len;
    return b->data;
}

/* ---- the functions the code sees: log() and metadata() --------------------------------- */

static duk_ret_t jw_json_encode_top(duk_context *ctx, void *udata)
{
    (void)udata;
    duk_json_encode(ctx, -1);
    return 1;
}

/* log(...): one line to the parent, which writes it to the processor log. */
static duk_ret_t jw_log(duk_context *ctx)
{
    if (jw.log_lines >= JW_MAX_LOG_LINES) {
        jw.log_dropped++;
        return 0;
    }
    jw.log_lines++;
    sl_buf_t *b = &jw.line;
    sl_buf_reset(b);
    duk_idx_t n = duk_get_top(ctx);
    for (duk_idx_t i = 0; i < n && b->len < JW_MAX_LOG_LINE; i++) {
        if (i > 0)
            sl_buf_putc(b, ' ');
        duk_dup(ctx, i);
        if (duk_is_object(ctx, -1) && !duk_is_function(ctx, -1) && !duk_is_error(ctx, -1) &&
            duk_safe_call(ctx, jw_json_encode_top, NULL, 1, 1) == DUK_EXEC_SUCCESS &&
            duk_is_string(ctx, -1)) {
            /* the JSON text is on the stack */
        }
        duk_size_t len;
        const char *s = duk_safe_to_lstring(ctx, -1, &len);
        sl_buf_append(b, s, len);
        duk_pop(ctx);
    }
    if (b->len > JW_MAX_LOG_LINE) {
        b->len = JW_MAX_LOG_LINE;
        b->data[b->len] = '\0';
    }
    for (size_t i = 0; i < b->len; i++)
        if ((unsigned char)b->data[i] < 0x20)
            b->data[i] = ' ';
    sl_buf_t f = SL_BUF_INIT;
    size_t off = pr_jsw_frame_begin(&f, PR_JSW_LOG);
    size_t tlen;
    const char *text = jw_utf8(b->data ? b->data : "", b->len, &tlen);
    pr_jsw_buf_str(&f, text, tlen);
    pr_jsw_frame_end(&f, off);
    jw_write_all(f.data, f.len);
    sl_buf_free(&f);
    return 0;
}

/* metadata(event): the metadata of the event the object came from (a hidden index that the
 * code can't see or forge), else in transformBatch the input with the same messageId, else in
 * transformEvent the event being transformed; {} if none. Parsed once per call and event. */
static duk_ret_t jw_metadata(duk_context *ctx)
{
    long idx = -1;
    if (duk_is_object(ctx, 0)) {
        if (duk_get_prop_string(ctx, 0, DUK_HIDDEN_SYMBOL("i")) && duk_is_number(ctx, -1))
            idx = (long)duk_get_int(ctx, -1);
        duk_pop(ctx);
        if (idx < 0 && jw.batch) {
            duk_push_global_stash(ctx);
            duk_get_prop_string(ctx, -1, "mids");
            duk_get_prop_string(ctx, 0, "messageId");
            if (duk_is_string(ctx, -1) && duk_get_prop(ctx, -2))
                idx = (long)duk_get_int(ctx, -1);
            duk_pop_3(ctx);
        }
    }
    if (idx < 0 && !jw.batch)
        idx = (long)jw.cur;
    if (idx < 0 || (uint32_t)idx >= jw.n || !jw.md[idx] || jw.md_len[idx] == 0) {
        duk_push_object(ctx);
        return 1;
    }
    duk_push_global_stash(ctx);
    duk_get_prop_string(ctx, -1, "meta");
    if (duk_get_prop_index(ctx, -1, (duk_uarridx_t)idx))
        return 1;
    duk_pop(ctx);
    jw_push_json(ctx, jw.md[idx], jw.md_len[idx]);
    duk_json_decode(ctx, -1);
    if (!duk_is_object(ctx, -1) || duk_is_array(ctx, -1)) {
        duk_pop(ctx);
        duk_push_object(ctx);
    }
    duk_dup_top(ctx);
    duk_put_prop_index(ctx, -3, (duk_uarridx_t)idx);
    return 1;
}

/* ---- loading a transformation ---------------------------------------------------------- */

static uint64_t jw_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void jw_heap_free(jw_heap_t *h)
{
    if (!h)
        return;
    if (h->ctx)
        duk_destroy_heap(h->ctx);
    jw_mem_release(&h->mem);
    free(h->version_id);
    free(h->error);
    free(h);
}

/* Sandbox setup, inside the protected load: Duktape's own namespace (coroutines, finalizers,
 * internals) goes; log(), console.* and the metadata function come in. */
static void jw_setup(duk_context *ctx, void *udata)
{
    (void)udata;
    duk_push_global_object(ctx);
    duk_del_prop_string(ctx, -1, "Duktape");
    duk_push_c_function(ctx, jw_log, DUK_VARARGS);
    duk_put_prop_string(ctx, -2, "log");
    duk_push_object(ctx);
    static const char *const levels[] = {"log", "info", "warn", "error", "debug"};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        duk_push_c_function(ctx, jw_log, DUK_VARARGS);
        duk_put_prop_string(ctx, -2, levels[i]);
    }
    duk_put_prop_string(ctx, -2, "console");
    duk_pop(ctx);
    duk_push_global_stash(ctx);
    duk_push_c_function(ctx, jw_metadata, 1);
    duk_put_prop_string(ctx, -2, "mdfn");
    duk_pop(ctx);
}

/* Duktape is ES5.1 with parts of ES2015+. Library methods that transformations commonly use
 * and Duktape lacks are added here (non-enumerable, like the real ones); syntax it lacks
 * (arrow functions, let, template literals, classes, destructuring) can't be added. */
static const char jw_prelude[] =
    "(function () {\n"
    "  function def(o, n, f) {\n"
    "    if (!o[n]) Object.defineProperty(o, n, {value: f, writable: true, configurable: true});\n"
    "  }\n"
    "  function pad(t, n, s) {\n"
    "    t = String(t); s = s === undefined ? ' ' : String(s);\n"
    "    var need = n - t.length, f = '';\n"
    "    if (need <= 0 || !s) return '';\n"
    "    while (f.length < need) f += s;\n"
    "    return f.slice(0, need);\n"
    "  }\n"
    "  def(Array.prototype, 'includes', function (v, from) {\n"
    "    var n = this.length >>> 0, i = from | 0;\n"
    "    if (i < 0) i = Math.max(n + i, 0);\n"
    "    for (; i < n; i++) { var x = this[i]; if (x === v || (x !== x && v !== v)) return true; "
    "}\n"
    "    return false;\n"
    "  });\n"
    "  def(Array.prototype, 'find', function (f, t) {\n"
    "    for (var i = 0, n = this.length >>> 0; i < n; i++) if (f.call(t, this[i], i, this)) "
    "return this[i];\n"
    "  });\n"
    "  def(Array.prototype, 'findIndex', function (f, t) {\n"
    "    for (var i = 0, n = this.length >>> 0; i < n; i++) if (f.call(t, this[i], i, this)) "
    "return i;\n"
    "    return -1;\n"
    "  });\n"
    "  def(Array, 'from', function (a, f, t) {\n"
    "    var r = [];\n"
    "    for (var i = 0, n = a.length >>> 0; i < n; i++) r.push(f ? f.call(t, a[i], i) : a[i]);\n"
    "    return r;\n"
    "  });\n"
    "  def(Object, 'entries', function (o) {\n"
    "    return Object.keys(o).map(function (k) { return [k, o[k]]; });\n"
    "  });\n"
    "  def(Object, 'values', function (o) {\n"
    "    return Object.keys(o).map(function (k) { return o[k]; });\n"
    "  });\n"
    "  def(Object, 'fromEntries', function (a) {\n"
    "    var o = {};\n"
    "    for (var i = 0; i < a.length; i++) o[a[i][0]] = a[i][1];\n"
    "    return o;\n"
    "  });\n"
    "  def(String.prototype, 'padStart', function (n, s) { return pad(this, n, s) + this; });\n"
    "  def(String.prototype, 'padEnd', function (n, s) { return this + pad(this, n, s); });\n"
    "})();\n";

typedef struct jw_src {
    const char *vid, *code;
    size_t vid_len, code_len;
    int found; /* 2 transformBatch, 1 transformEvent, 0 neither */
} jw_src_t;

/* Compiles and runs the code's top level, protected; finds the entry point. */
static duk_ret_t jw_load_call(duk_context *ctx, void *udata)
{
    jw_src_t *src = udata;
    jw_setup(ctx, NULL);
    duk_push_literal(ctx, "prelude");
    duk_compile_lstring_filename(ctx, 0, jw_prelude, sizeof(jw_prelude) - 1);
    duk_call(ctx, 0);
    duk_pop(ctx);
    duk_push_lstring(ctx, src->vid, src->vid_len);
    duk_compile_lstring_filename(ctx, 0, src->code, src->code_len);
    duk_call(ctx, 0);
    duk_pop(ctx);
    if (duk_get_global_string(ctx, "transformBatch") && duk_is_function(ctx, -1))
        src->found = 2;
    else if (duk_get_global_string(ctx, "transformEvent") && duk_is_function(ctx, -1))
        src->found = 1;
    return 0;
}

/* Creates the heap and runs the code's top level. On failure the heap goes and error says
 * why; the caller decides whether to keep that (not after running out of memory). */
static jw_heap_t *jw_heap_load(const char *vid, size_t vid_len, const char *code, size_t code_len,
                               uint64_t hash)
{
    jw_heap_t *h = sl_calloc(1, sizeof(*h));
    h->version_id = sl_strndup(vid, vid_len);
    h->hash = hash;
    h->mem.limit = jw.memory_limit;
    sl_buf_t err = SL_BUF_INIT;
    h->ctx = duk_create_heap(jw_alloc, jw_realloc, jw_free, &h->mem, jw_fatal);
    if (!h->ctx) {
        sl_buf_puts(&err, "memory limit exceeded");
        goto fail;
    }
    jw_src_t src = {vid, code, vid_len, code_len, 0};
    if (duk_safe_call(h->ctx, jw_load_call, &src, 0, 1) != DUK_EXEC_SUCCESS) {
        jw_format_error(h, &err);
        goto fail;
    }
    duk_pop(h->ctx);
    if (!src.found) {
        sl_buf_puts(&err, "the transformation defines neither transformEvent(event, metadata) "
                          "nor transformBatch(events, metadata)");
        goto fail;
    }
    h->batch = src.found == 2;
    return h;
fail:
    h->error = err.data ? sl_buf_steal(&err) : sl_strdup("could not load the transformation");
    if (h->ctx) {
        duk_destroy_heap(h->ctx);
        h->ctx = NULL;
    }
    jw_mem_release(&h->mem);
    sl_buf_free(&err);
    return h;
}

/* Drops least recently used heaps while they hold more than one memory limit in total, so a
 * worker's memory stays near two limits however many transformations it has served. */
static void jw_heaps_trim(jw_heap_t *keep)
{
    for (;;) {
        size_t total = 0;
        int lru = -1;
        for (int i = 0; i < JW_MAX_HEAPS; i++) {
            jw_heap_t *h = jw.heaps[i];
            if (!h)
                continue;
            total += h->mem.used;
            if (h != keep && (lru < 0 || h->last_used < jw.heaps[lru]->last_used))
                lru = i;
        }
        if (total <= jw.memory_limit || lru < 0)
            return;
        jw_heap_free(jw.heaps[lru]);
        jw.heaps[lru] = NULL;
    }
}

/* The heap of this transformation, loading it if needed (evicting the least recently used). */
static jw_heap_t *jw_heap_get(const char *vid, size_t vid_len, const char *code, size_t code_len)
{
    uint64_t hash = jw_hash(code, code_len);
    int slot = -1;
    for (int i = 0; i < JW_MAX_HEAPS; i++) {
        jw_heap_t *h = jw.heaps[i];
        if (!h) {
            if (slot < 0)
                slot = i;
            continue;
        }
        if (h->hash == hash && strlen(h->version_id) == vid_len &&
            memcmp(h->version_id, vid, vid_len) == 0) {
            h->last_used = ++jw.clock;
            return h;
        }
    }
    if (slot < 0) {
        slot = 0;
        for (int i = 1; i < JW_MAX_HEAPS; i++)
            if (jw.heaps[i]->last_used < jw.heaps[slot]->last_used)
                slot = i;
        jw_heap_free(jw.heaps[slot]);
        jw.heaps[slot] = NULL;
    }
    jw_heap_t *h = jw_heap_load(vid, vid_len, code, code_len, hash);
    h->last_used = ++jw.clock;
    jw.heaps[slot] = h;
    jw_heaps_trim(h);
    return h;
}

/* Forgets a heap, e.g. after it ran out of memory: the next event loads it afresh. */
static void jw_heap_drop(jw_heap_t *h)
{
    for (int i = 0; i < JW_MAX_HEAPS; i++)
        if (jw.heaps[i] == h)
            jw.heaps[i] = NULL;
    jw_heap_free(h);
}

/* ---- running ------------------------------------------------------------------------- */

static void jw_out_error(sl_buf_t *out, const char *msg, size_t len)
{
    msg = jw_utf8(msg, len, &len);
    char k = 2; /* PR_USERTX_ERROR */
    sl_buf_append(out, &k, 1);
    pr_jsw_buf_u32(out, 0);
    pr_jsw_buf_str(out, msg, len);
}

static void jw_out_drop(sl_buf_t *out)
{
    char k = 0; /* PR_USERTX_DROP */
    sl_buf_append(out, &k, 1);
    pr_jsw_buf_u32(out, 0);
    pr_jsw_buf_str(out, "", 0);
}

/* Output events: json is their array, or one object if wrap. */
static void jw_out_events(sl_buf_t *out, uint32_t count, const char *json, size_t len, bool wrap)
{
    char k = 1; /* PR_USERTX_EVENTS */
    sl_buf_append(out, &k, 1);
    pr_jsw_buf_u32(out, count);
    json = jw_utf8(json, len, &len);
    if (!wrap) {
        pr_jsw_buf_str(out, json, len);
        return;
    }
    pr_jsw_buf_u32(out, (uint32_t)len + 2);
    sl_buf_putc(out, '[');
    sl_buf_append(out, json, len);
    sl_buf_putc(out, ']');
}

static const char *jw_type_name(duk_context *ctx, duk_idx_t idx)
{
    switch (duk_get_type(ctx, idx)) {
    case DUK_TYPE_BOOLEAN:
        return "a boolean";
    case DUK_TYPE_NUMBER:
        return "a number";
    case DUK_TYPE_STRING:
        return "a string";
    case DUK_TYPE_NULL:
        return "null";
    case DUK_TYPE_UNDEFINED:
        return "undefined";
    case DUK_TYPE_OBJECT:
        if (duk_is_function(ctx, idx))
            return "a function";
        if (duk_is_array(ctx, idx))
            return "an array";
        return "an object";
    default:
        return "a buffer or pointer";
    }
}

static bool jw_is_event_object(duk_context *ctx, duk_idx_t idx)
{
    return duk_is_object(ctx, idx) && !duk_is_array(ctx, idx) && !duk_is_function(ctx, idx);
}

/* The function to call and the metadata function, for a call: [fn, mdfn]. Protected. */
static duk_ret_t jw_prepare_call(duk_context *ctx, void *udata)
{
    duk_get_global_string(ctx, (const char *)udata);
    duk_push_global_stash(ctx);
    duk_get_prop_string(ctx, -1, "mdfn");
    duk_push_array(ctx);
    duk_put_prop_string(ctx, -3, "meta");
    duk_push_bare_object(ctx); /* no prototype: any messageId is a plain key */
    duk_put_prop_string(ctx, -3, "mids");
    duk_remove(ctx, -2);
    return 2;
}

/* One transformEvent call, protected: args [fn, mdfn]. Returns [count, output events as a
 * JSON array string], or undefined to drop; sets jw.bad if the return value breaks the
 * contract. */
static duk_ret_t jw_event_call(duk_context *ctx, void *udata)
{
    (void)udata;
    duk_idx_t b = duk_get_top(ctx) - 2; /* a safe call shares its caller's frame */
    uint32_t i = jw.cur;
    jw_push_json(ctx, jw.ev[i], jw.ev_len[i]);
    duk_json_decode(ctx, b + 2); /* metadata() knows it by jw.cur: no hidden index needed */
    duk_dup(ctx, b);
    duk_dup(ctx, b + 2);
    duk_dup(ctx, b + 1);
    duk_call(ctx, 2);
    if (duk_is_null_or_undefined(ctx, -1)) {
        duk_push_undefined(ctx);
        return 1;
    }
    if (duk_is_array(ctx, -1)) {
        duk_size_t len = duk_get_length(ctx, -1);
        for (duk_size_t k = 0; k < len; k++) {
            duk_get_prop_index(ctx, -1, (duk_uarridx_t)k);
            if (!jw_is_event_object(ctx, -1)) {
                snprintf(jw.bad, sizeof(jw.bad),
                         "transformEvent returned an array holding %s at index %zu; each element "
                         "must be an event object",
                         jw_type_name(ctx, -1), (size_t)k);
                return 0;
            }
            duk_pop(ctx);
        }
        if (len == 0) {
            duk_push_undefined(ctx);
            return 1;
        }
        duk_push_uint(ctx, (duk_uint_t)len);
        duk_insert(ctx, -2);
        duk_json_encode(ctx, -1);
        return 2;
    }
    if (jw_is_event_object(ctx, -1)) {
        duk_push_uint(ctx, 1);
        duk_insert(ctx, -2);
        duk_json_encode(ctx, -1);
        jw.wrap = true; /* the caller adds the brackets, saving a string */
        return 2;
    }
    snprintf(jw.bad, sizeof(jw.bad),
             "transformEvent returned %s; it must return an event object, an array of events, "
             "null or undefined",
             jw_type_name(ctx, -1));
    return 0;
}

/* Runs transformEvent over every event of the call, one protected call per event so that an
 * exception fails only its event. A heap that ran out of memory is dropped and loaded afresh
 * for the next event. */
static void jw_run_events(const char *vid, size_t vid_len, const char *code, size_t code_len,
                          sl_buf_t *out)
{
    sl_buf_t err = SL_BUF_INIT;
    jw_heap_t *h = NULL;
    for (uint32_t i = 0; i < jw.n; i++) {
        if (!h) {
            h = jw_heap_get(vid, vid_len, code, code_len);
            if (h->ctx && duk_safe_call(h->ctx, jw_prepare_call, "transformEvent", 0, 2) !=
                              DUK_EXEC_SUCCESS) {
                duk_pop(h->ctx);
                jw_format_error(h, &err);
                jw_out_error(out, err.data, err.len);
                jw_heap_drop(h);
                h = NULL;
                continue;
            }
        }
        if (!h->ctx) {
            jw_out_error(out, h->error, strlen(h->error));
            if (h->mem.refused) { /* not worth keeping: it may load next time */
                jw_heap_drop(h);
                h = NULL;
            }
            continue;
        }
        duk_context *ctx = h->ctx;
        jw.cur = i;
        jw.bad[0] = '\0';
        jw.wrap = false;
        h->mem.refused = false;
        duk_dup(ctx, -2);
        duk_dup(ctx, -2);
        if (duk_safe_call(ctx, jw_event_call, NULL, 2, 2) != DUK_EXEC_SUCCESS) {
            duk_pop(ctx); /* [fn, mdfn, error, undefined] */
            bool mem = jw_format_error(h, &err);
            jw_out_error(out, err.data, err.len);
            if (mem) {
                jw_heap_drop(h);
                h = NULL;
            }
            continue;
        }
        /* [fn, mdfn, count, json] */
        if (jw.bad[0]) {
            jw_out_error(out, jw.bad, strlen(jw.bad));
        } else if (!duk_is_string(ctx, -1)) {
            jw_out_drop(out);
        } else {
            duk_size_t len;
            const char *json = duk_get_lstring(ctx, -1, &len);
            jw.out_bytes += len;
            if (jw.out_bytes > jw.output_limit) {
                sl_buf_reset(&err);
                sl_buf_printf(&err, "the transformation's output exceeds %zu bytes",
                              jw.output_limit);
                jw_out_error(out, err.data, err.len);
            } else {
                jw_out_events(out, (uint32_t)duk_get_uint(ctx, -2), json, len, jw.wrap);
            }
        }
        duk_pop_2(ctx);
    }
    if (h && h->ctx)
        duk_pop_2(h->ctx);
    sl_buf_free(&err);
}

/* The state of a transformBatch call. */
typedef struct jw_batch {
    jw_heap_t *heap;
    char **perr;   /* per event: why its JSON did not parse, or NULL */
    uint32_t good; /* events that parsed */
} jw_batch_t;

static duk_ret_t jw_decode(duk_context *ctx, void *udata)
{
    (void)udata;
    jw_push_json(ctx, jw.ev[jw.cur], jw.ev_len[jw.cur]);
    duk_json_decode(ctx, -1);
    return 1;
}

/* The transformBatch call, protected: args [fn, mdfn]. Fills jw.outs/jw.counts, or jw.bad.
 * Events whose JSON does not parse fail alone and are left out of the array. */
static duk_ret_t jw_batch_call(duk_context *ctx, void *udata)
{
    jw_batch_t *b = udata;
    duk_idx_t base = duk_get_top(ctx) - 2; /* a safe call shares its caller's frame */
    sl_buf_t err = SL_BUF_INIT;
    duk_push_global_stash(ctx);
    duk_get_prop_string(ctx, -1, "mids");
    duk_remove(ctx, -2); /* [fn, mdfn, mids] */
    duk_push_array(ctx); /* [fn, mdfn, mids, events] */
    duk_uarridx_t k = 0;
    for (uint32_t i = 0; i < jw.n; i++) {
        jw.cur = i;
        if (duk_safe_call(ctx, jw_decode, NULL, 0, 1) != DUK_EXEC_SUCCESS) {
            jw_format_error(b->heap, &err);
            b->perr[i] = sl_buf_steal(&err);
            continue;
        }
        b->good++;
        if (duk_is_object(ctx, -1)) {
            duk_push_uint(ctx, i);
            duk_put_prop_string(ctx, -2, DUK_HIDDEN_SYMBOL("i"));
            if (duk_get_prop_string(ctx, -1, "messageId") && duk_is_string(ctx, -1)) {
                duk_dup_top(ctx);
                if (!duk_has_prop(ctx, base + 2)) { /* the first event with a messageId wins */
                    duk_push_uint(ctx, i);
                    duk_put_prop(ctx, base + 2);
                } else {
                    duk_pop(ctx);
                }
            } else {
                duk_pop(ctx);
            }
        }
        duk_put_prop_index(ctx, base + 3, k++);
    }
    sl_buf_free(&err);
    if (b->good == 0)
        return 0;
    duk_dup(ctx, base);
    duk_dup(ctx, base + 3);
    duk_dup(ctx, base + 1);
    duk_call(ctx, 2); /* [fn, mdfn, mids, events, result] */
    if (!duk_is_array(ctx, -1)) {
        snprintf(jw.bad, sizeof(jw.bad),
                 "transformBatch returned %s; it must return an array of events",
                 jw_type_name(ctx, -1));
        return 0;
    }
    uint32_t first = 0;
    while (first < jw.n && b->perr[first])
        first++;
    duk_size_t len = duk_get_length(ctx, -1);
    for (duk_size_t j = 0; j < len; j++) {
        duk_get_prop_index(ctx, base + 4, (duk_uarridx_t)j);
        if (!jw_is_event_object(ctx, -1)) {
            snprintf(jw.bad, sizeof(jw.bad),
                     "transformBatch returned an array holding %s at index %zu; each element "
                     "must be an event object",
                     jw_type_name(ctx, -1), (size_t)j);
            return 0;
        }
        long idx = -1;
        if (duk_get_prop_string(ctx, -1, DUK_HIDDEN_SYMBOL("i")) && duk_is_number(ctx, -1))
            idx = (long)duk_get_int(ctx, -1);
        duk_pop(ctx);
        if (idx < 0) {
            duk_get_prop_string(ctx, -1, "messageId");
            if (duk_is_string(ctx, -1) && duk_get_prop(ctx, base + 2))
                idx = (long)duk_get_int(ctx, -1);
            duk_pop(ctx);
        }
        if (idx < 0 || (uint32_t)idx >= jw.n || b->perr[idx])
            idx = first;
        duk_json_encode(ctx, -1);
        duk_size_t slen;
        const char *s = duk_get_lstring(ctx, -1, &slen);
        jw.out_bytes += slen;
        if (jw.out_bytes > jw.output_limit) {
            snprintf(jw.bad, sizeof(jw.bad), "the transformation's output exceeds %zu bytes",
                     jw.output_limit);
            return 0;
        }
        sl_buf_t *o = &jw.outs[idx];
        sl_buf_putc(o, jw.counts[idx]++ ? ',' : '[');
        s = jw_utf8(s, slen, &slen);
        sl_buf_append(o, s, slen);
        duk_pop(ctx);
    }
    return 0;
}

/* Runs transformBatch once over the call's events: an exception fails them all. */
static void jw_run_batch(jw_heap_t *h, sl_buf_t *out)
{
    duk_context *ctx = h->ctx;
    size_t n1 = jw.n ? jw.n : 1;
    sl_buf_t err = SL_BUF_INIT;
    jw_batch_t b = {h, sl_calloc(n1, sizeof(char *)), 0};
    jw.outs = sl_calloc(n1, sizeof(sl_buf_t));
    jw.counts = sl_calloc(n1, sizeof(uint32_t));
    jw.bad[0] = '\0';
    h->mem.refused = false;
    bool mem = false;
    char *all_err = NULL;
    if (duk_safe_call(ctx, jw_prepare_call, "transformBatch", 0, 2) != DUK_EXEC_SUCCESS) {
        duk_pop(ctx);
        mem = jw_format_error(h, &err);
        all_err = sl_buf_steal(&err);
    } else {
        if (duk_safe_call(ctx, jw_batch_call, &b, 2, 1) != DUK_EXEC_SUCCESS) {
            mem = jw_format_error(h, &err);
            all_err = sl_buf_steal(&err);
        } else {
            duk_pop(ctx);
            if (jw.bad[0])
                all_err = sl_strdup(jw.bad);
        }
    }
    for (uint32_t i = 0; i < jw.n; i++) {
        if (b.perr[i])
            jw_out_error(out, b.perr[i], strlen(b.perr[i]));
        else if (all_err)
            jw_out_error(out, all_err, strlen(all_err));
        else if (jw.counts[i] == 0)
            jw_out_drop(out);
        else {
            sl_buf_putc(&jw.outs[i], ']');
            jw_out_events(out, jw.counts[i], jw.outs[i].data, jw.outs[i].len, false);
        }
        free(b.perr[i]);
        sl_buf_free(&jw.outs[i]);
    }
    free(all_err);
    free(b.perr);
    free(jw.outs);
    free(jw.counts);
    jw.outs = NULL;
    jw.counts = NULL;
    sl_buf_free(&err);
    if (mem)
        jw_heap_drop(h);
}

/* Serves one RUN frame; returns false if it is malformed. */
static bool jw_serve(const char *p, size_t n)
{
    pr_jsw_rd_t r = {p, p + n, 0};
    uint32_t time_limit_ms = pr_jsw_rd_u32(&r);
    const char *vid, *code;
    uint32_t vid_len = pr_jsw_rd_str(&r, &vid);
    uint32_t code_len = pr_jsw_rd_str(&r, &code);
    uint32_t count = pr_jsw_rd_u32(&r);
    if (r.bad || count > n / 8)
        return false;
    jw.n = count;
    jw.ev = sl_calloc(count ? count : 1, sizeof(char *));
    jw.md = sl_calloc(count ? count : 1, sizeof(char *));
    jw.ev_len = sl_calloc(count ? count : 1, sizeof(uint32_t));
    jw.md_len = sl_calloc(count ? count : 1, sizeof(uint32_t));
    for (uint32_t i = 0; i < count; i++) {
        jw.ev_len[i] = pr_jsw_rd_str(&r, &jw.ev[i]);
        jw.md_len[i] = pr_jsw_rd_str(&r, &jw.md[i]);
    }
    bool ok = !r.bad;
    if (ok) {
        /* A backstop only: if the parent stopped watching, don't spin forever. */
        struct itimerval it = {{0, 0}, {(time_t)(time_limit_ms / 1000) * 2 + 5, 0}};
        setitimer(ITIMER_REAL, &it, NULL);
        jw.out_bytes = 0;
        jw.log_lines = 0;
        jw.log_dropped = 0;
        sl_buf_t out = SL_BUF_INIT;
        size_t off = pr_jsw_frame_begin(&out, PR_JSW_RESULT);
        pr_jsw_buf_u32(&out, count);
        jw_heap_t *h = jw_heap_get(vid, vid_len, code, code_len);
        if (h->ctx && h->batch) {
            jw.batch = true;
            jw_run_batch(h, &out);
        } else {
            jw.batch = false;
            jw_run_events(vid, vid_len, code, code_len, &out);
        }
        if (jw.log_dropped > 0) {
            sl_buf_t f = SL_BUF_INIT;
            size_t lo = pr_jsw_frame_begin(&f, PR_JSW_LOG);
            char msg[96];
            int ml = snprintf(msg, sizeof(msg), "(%d more log lines of this call dropped)",
                              jw.log_dropped);
            pr_jsw_buf_str(&f, msg, (size_t)ml);
            pr_jsw_frame_end(&f, lo);
            jw_write_all(f.data, f.len);
            sl_buf_free(&f);
        }
        pr_jsw_frame_end(&out, off);
        jw_write_all(out.data, out.len);
        sl_buf_free(&out);
        struct itimerval off_it = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off_it, NULL);
    }
    free(jw.ev);
    free(jw.md);
    free(jw.ev_len);
    free(jw.md_len);
    jw.ev = jw.md = NULL;
    jw.ev_len = jw.md_len = NULL;
    jw.n = 0;
    return ok;
}

/* The address-space backstop: generously above what the heaps may use, so that only a bug
 * in the engine, not user code, can reach it. Not under AddressSanitizer, whose shadow
 * memory is terabytes of address space. */
static void jw_limit_address_space(void)
{
#ifndef JW_ASAN
    long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    rlim_t base = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
    rlim_t lim = base + (rlim_t)jw.memory_limit * 8 + ((rlim_t)1 << 30);
    struct rlimit rl = {lim, lim};
    setrlimit(RLIMIT_AS, &rl);
    setrlimit(RLIMIT_DATA, &rl);
#endif
}

int pr_jsworker_main(int argc, char **argv)
{
    jw.memory_limit = 128u * 1024 * 1024;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--memory-limit=", 15) == 0) {
            char *end;
            unsigned long long v = strtoull(argv[i] + 15, &end, 10);
            if (*end || v < 1024 * 1024) {
                fprintf(stderr, "sluice js-worker: bad --memory-limit \"%s\"\n", argv[i] + 15);
                return 2;
            }
            jw.memory_limit = (size_t)v;
        } else {
            fprintf(stderr, "sluice js-worker: internal command of the processor, not for use "
                            "by hand\n");
            return 2;
        }
    }
    jw.output_limit = jw.memory_limit * 2;
    /* The parent decides when the worker ends: by closing the pipe or by SIGKILL. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    jw_limit_address_space();

    char ready[5];
    pr_jsw_put_u32(ready, 1);
    ready[4] = PR_JSW_READY;
    jw_write_all(ready, sizeof(ready));

    int rc = 0;
    char *req = NULL;
    size_t req_cap = 0;
    for (;;) {
        char hdr[5];
        if (!jw_read_all(hdr, 4))
            break;
        uint32_t len = pr_jsw_get_u32(hdr);
        if (len < 1 || len > PR_JSW_MAX_FRAME) {
            rc = 2;
            break;
        }
        if (len > req_cap) {
            free(req);
            req_cap = len;
            req = sl_malloc(req_cap);
        }
        if (!jw_read_all(req, len))
            break;
        if (req[0] != PR_JSW_RUN || !jw_serve(req + 1, len - 1)) {
            fprintf(stderr, "sluice js-worker: malformed request from the processor\n");
            rc = 2;
            break;
        }
    }
    free(req);
    for (int i = 0; i < JW_MAX_HEAPS; i++) {
        jw_heap_free(jw.heaps[i]);
        jw.heaps[i] = NULL;
    }
    sl_buf_free(&jw.line);
    sl_buf_free(&jw.conv);
    return rc;
}
