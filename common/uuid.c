/* UUID generation, see uuid.h. */
#include "common/uuid.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

static void format_uuid(const unsigned char b[16], char out[SL_UUID_STRLEN])
{
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 0x0f];
    }
    *o = '\0';
}

/* Random bytes from the kernel CSPRNG, fetched a page at a time per thread (the ingest path
 * makes a UUID per event; a system call each would cost more than the rest of the event). */
void sl_uuid_random(unsigned char *out, size_t len)
{
    static __thread unsigned char pool[4096];
    static __thread size_t avail;
    while (len) {
        if (!avail) {
            size_t got = 0;
            while (got < sizeof(pool)) {
                ssize_t n = getrandom(pool + got, sizeof(pool) - got, 0);
                if (n < 0)
                    abort(); /* the kernel CSPRNG does not fail once initialised */
                got += (size_t)n;
            }
            avail = sizeof(pool);
        }
        size_t n = len < avail ? len : avail;
        memcpy(out, pool + sizeof(pool) - avail, n);
        memset(pool + sizeof(pool) - avail, 0, n); /* never hand out the same bytes twice */
        avail -= n;
        out += n;
        len -= n;
    }
}

void sl_uuid_v4(char out[SL_UUID_STRLEN])
{
    unsigned char b[16];
    sl_uuid_random(b, sizeof(b));
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
}

static EVP_MD *md5;

static void fetch_md5(void)
{
    /* Fetched once: an implicit fetch on every digest costs more than the digest. */
    md5 = EVP_MD_fetch(NULL, "MD5", NULL);
    if (!md5)
        abort();
}

void sl_uuid_md5(const char *data, size_t len, char out[SL_UUID_STRLEN])
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    unsigned char b[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    pthread_once(&once, fetch_md5);
    EVP_Digest(data, len, b, &n, md5, NULL);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x30);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    format_uuid(b, out);
}
