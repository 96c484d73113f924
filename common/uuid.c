/* UUID generation, see uuid.h. */
#include "common/uuid.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

static void format_uuid(const unsigned char b[16], char out[SL_UUID_STRLEN])
{
    snprintf(out, SL_UUID_STRLEN,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

void sl_uuid_v4(char out[SL_UUID_STRLEN])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
        if (n < 0)
            abort(); /* the kernel CSPRNG does not fail once initialised */
        got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
}

void sl_uuid_md5(const char *data, size_t len, char out[SL_UUID_STRLEN])
{
    unsigned char b[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data, len, b, &n, EVP_md5(), NULL);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x30);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
}
