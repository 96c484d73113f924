/*
 * The sandbox worker of user transformations (internal to usertx.c): `sluice js-worker` runs
 * user JavaScript in Duktape heaps and talks to its parent over stdin/stdout in frames:
 *   u32 length (of type byte + payload, little endian), u8 type, payload.
 * Strings in payloads are u32 length + bytes. Worker to parent: READY (empty) once started;
 * LOG (str text) whenever the code calls log(); RESULT (u32 n, then per event: u8 kind,
 * u32 n_events, str json-or-error). Parent to worker: RUN (u32 time_limit_ms, str version_id,
 * str code, u32 n, then per event: str event_json, str metadata_json).
 */
#ifndef PR_JSWORKER_H
#define PR_JSWORKER_H

#include "common/buf.h"

#include <stdint.h>
#include <string.h>

#define PR_JSW_READY  'Y'
#define PR_JSW_LOG    'L'
#define PR_JSW_RESULT 'R'
#define PR_JSW_RUN    'X'

#define PR_JSW_MAX_FRAME (1u << 30)

/* The main function of `sluice js-worker [--memory-limit=BYTES]`; argv[0] is "js-worker".
 * Returns the exit code: 0 when the parent closes the pipe. */
int pr_jsworker_main(int argc, char **argv);

static inline void pr_jsw_put_u32(char *p, uint32_t v)
{
    p[0] = (char)(v & 0xff);
    p[1] = (char)((v >> 8) & 0xff);
    p[2] = (char)((v >> 16) & 0xff);
    p[3] = (char)((v >> 24) & 0xff);
}

static inline uint32_t pr_jsw_get_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

/* A bounds-checked reader over one frame's payload. */
typedef struct pr_jsw_rd {
    const char *p, *end;
    int bad; /* set once a read ran past the end */
} pr_jsw_rd_t;

static inline uint32_t pr_jsw_rd_u32(pr_jsw_rd_t *r)
{
    if (r->end - r->p < 4) {
        r->bad = 1;
        r->p = r->end;
        return 0;
    }
    uint32_t v = pr_jsw_get_u32(r->p);
    r->p += 4;
    return v;
}

static inline int pr_jsw_rd_u8(pr_jsw_rd_t *r)
{
    if (r->p >= r->end) {
        r->bad = 1;
        return 0;
    }
    return (unsigned char)*r->p++;
}

/* Points *s at the string (not NUL-terminated) and returns its length. */
static inline uint32_t pr_jsw_rd_str(pr_jsw_rd_t *r, const char **s)
{
    uint32_t n = pr_jsw_rd_u32(r);
    if ((uint64_t)(r->end - r->p) < n) {
        r->bad = 1;
        r->p = r->end;
        *s = r->p;
        return 0;
    }
    *s = r->p;
    r->p += n;
    return n;
}

/* Writing frames into a buffer: begin returns the frame's offset for end, which fills in the
 * length. */
static inline size_t pr_jsw_frame_begin(sl_buf_t *b, char type)
{
    size_t off = b->len;
    char h[5] = {0, 0, 0, 0, type};
    sl_buf_append(b, h, 5);
    return off;
}

static inline void pr_jsw_frame_end(sl_buf_t *b, size_t off)
{
    pr_jsw_put_u32(b->data + off, (uint32_t)(b->len - off - 4));
}

static inline void pr_jsw_buf_u32(sl_buf_t *b, uint32_t v)
{
    char t[4];
    pr_jsw_put_u32(t, v);
    sl_buf_append(b, t, 4);
}

static inline void pr_jsw_buf_str(sl_buf_t *b, const char *s, size_t n)
{
    pr_jsw_buf_u32(b, (uint32_t)n);
    sl_buf_append(b, s, n);
}

#endif
