/*
 * Fuzz target: gw_client_ip, the client address for request_ip (gateway/ingest.h).
 *
 * Byte 0: bit 0 leaves X-Forwarded-For out (NULL), bit 1 the peer. The rest is the
 * forwarded-for value, then after the first '\n' (or NUL) the peer. Every combination of trust
 * and an output buffer of 0 to 64 bytes (allocated to the byte, with a canary after it): the
 * result is NULL or the buffer, NUL-terminated within it, and either the first element of a
 * trusted X-Forwarded-For that inet_pton reads as an address or the peer as given.
 */
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
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
