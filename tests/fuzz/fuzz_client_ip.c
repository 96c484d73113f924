/*
 * Fuzz target: the request header values the gateway reads besides the body: gw_client_ip,
 * the client address for request_ip (gateway/ingest.h), and the W3C trace context
 * (common/trace.h), sl_trace_parse and sl_trace_state_clean.
 *
 * Byte 0: bit 0 leaves X-Forwarded-For out (NULL), bit 1 the peer. The rest is the
 * forwarded-for value, then after the first '\n' (or NUL) the peer. Every combination of trust
 * and an output buffer of 0 to 64 bytes (allocated to the byte, with a canary after it): the
 * result is NULL or the buffer, NUL-terminated within it, and either the first element of a
 * trusted X-Forwarded-For that inet_pton reads as an address or the peer as given.
 *
 * The bytes after byte 0, as they are (not NUL-terminated, in a buffer of their size), are
 * also a traceparent and a tracestate value: a traceparent accepted has the ids of its
 * characters 3-34 and 36-51 (lowercase hex, not all zero) and formats to a version 00 value
 * that parses back the same; a cleaned tracestate fits SL_TRACESTATE_MAX, is printable ASCII
 * without OWS around its members, and cleans to itself.
 */
#include "common/trace.h"
#include "fuzz_util.h"
#include "gateway/ingest.h"

#include <arpa/inet.h>

static void check(const char *ff, const char *peer, bool trust, size_t out_size)
{
    enum { CANARY = 8 };
    char *out = malloc(out_size + CANARY);
    memset(out, 0x5A, out_size + CANARY);
    const char *r = gw_client_ip(ff, peer, trust, out, out_size);
    for (size_t i = out_size; i < out_size + CANARY; i++)
        FUZZ_CHECK(out[i] == 0x5A, "wrote byte %zu of a %zu-byte buffer", i, out_size);
    if (r) {
        FUZZ_CHECK(r == out, "result isn't the buffer");
        FUZZ_CHECK(memchr(out, '\0', out_size) != NULL, "result not NUL-terminated in %zu bytes",
                   out_size);
        bool is_peer = peer && strcmp(r, peer) == 0;
        unsigned char a[16];
        bool is_addr = inet_pton(AF_INET, r, a) == 1 || inet_pton(AF_INET6, r, a) == 1;
        FUZZ_CHECK(is_peer || (trust && ff && is_addr && strstr(ff, r)),
                   "result \"%s\" is neither the peer nor a trusted forwarded address", r);
    } else {
        FUZZ_CHECK(!peer || strlen(peer) + 1 > out_size,
                   "NULL though the peer \"%s\" fits %zu bytes", peer, out_size);
    }
    /* Exactly out_size bytes, for ASan. */
    char *exact = malloc(out_size ? out_size : 1);
    const char *again = gw_client_ip(ff, peer, trust, exact, out_size);
    FUZZ_CHECK(!again == !r && (!r || strcmp(again, r) == 0), "not the same result twice");
    free(exact);
    free(out);
}

static void check_id(const char *id, size_t len)
{
    bool nonzero = false;
    FUZZ_CHECK(strlen(id) == len, "id \"%s\" is not %zu characters", id, len);
    for (size_t i = 0; i < len; i++) {
        FUZZ_CHECK((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'),
                   "id \"%s\" is not lowercase hex", id);
        nonzero |= id[i] != '0';
    }
    FUZZ_CHECK(nonzero, "id \"%s\" is all zero", id);
}

static void check_trace(const char *v, size_t len)
{
    sl_trace_t t, again;
    if (sl_trace_parse(v, len, &t)) {
        check_id(t.trace_id, SL_TRACE_ID_LEN);
        check_id(t.span_id, SL_SPAN_ID_LEN);
        FUZZ_CHECK(t.flags <= 1, "flags %u", t.flags);
        const char *tid = memmem(v, len, t.trace_id, SL_TRACE_ID_LEN);
        FUZZ_CHECK(tid && tid[-1] == '-' && tid[SL_TRACE_ID_LEN] == '-' &&
                       memcmp(tid + SL_TRACE_ID_LEN + 1, t.span_id, SL_SPAN_ID_LEN) == 0,
                   "ids %s / %s are not the value's", t.trace_id, t.span_id);
        char out[SL_TRACEPARENT_LEN + 1];
        sl_trace_format(&t, out);
        FUZZ_CHECK(sl_trace_parse(out, strlen(out), &again) &&
                       strcmp(again.trace_id, t.trace_id) == 0 &&
                       strcmp(again.span_id, t.span_id) == 0 && again.flags == t.flags,
                   "\"%s\" does not parse back", out);
    }
    char *state = malloc(SL_TRACESTATE_MAX + 1), *twice = malloc(SL_TRACESTATE_MAX + 1);
    size_t n = sl_trace_state_clean(v, len, state, SL_TRACESTATE_MAX + 1);
    FUZZ_CHECK(n == strlen(state) && n <= SL_TRACESTATE_MAX, "tracestate of %zu bytes", n);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(state[i] >= 0x20 && state[i] <= 0x7e, "byte %zu of \"%s\"", i, state);
    FUZZ_CHECK(!n || (state[0] != ',' && state[0] != ' ' && state[n - 1] != ',' &&
                      state[n - 1] != ' ' && !strstr(state, ", ") && !strstr(state, " ,")),
               "OWS or an empty member kept: \"%s\"", state);
    size_t n2 = sl_trace_state_clean(state, n, twice, SL_TRACESTATE_MAX + 1);
    FUZZ_CHECK(n2 == n && strcmp(state, twice) == 0, "\"%s\" cleans to \"%s\"", state, twice);
    free(state);
    free(twice);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char *raw = malloc(size - 1 ? size - 1 : 1); /* exactly the value, for ASan */
    memcpy(raw, data + 1, size - 1);
    check_trace(raw, size - 1);
    free(raw);
    char *copy = malloc(size);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    char *nl = strchr(copy, '\n');
    const char *ff = (data[0] & 1) ? NULL : copy;
    const char *peer = NULL;
    if (!(data[0] & 2))
        peer = nl ? nl + 1 : "";
    if (nl)
        *nl = '\0';
    static const size_t sizes[] = {0, 1, 2, 3, 7, 8, 16, 40, 46, 64};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        check(ff, peer, true, sizes[i]);
        check(ff, peer, false, sizes[i]);
    }
    free(copy);
    return 0;
}
