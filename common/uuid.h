/* UUIDs: random (v4) message ids and the stable, name-derived rudderId. */
#ifndef SL_UUID_H
#define SL_UUID_H

#include <stddef.h>

#define SL_UUID_STRLEN 37 /* 36 characters and the NUL */

/* A random version 4 UUID, lowercase, from the kernel's CSPRNG. */
void sl_uuid_v4(char out[SL_UUID_STRLEN]);
/* len bytes from the kernel's CSPRNG (pooled per thread: no system call per use). */
void sl_uuid_random(unsigned char *out, size_t len);
/* RudderStack's rudderId: the MD5 of the input shaped as a UUID (version 3 bits set). */
void sl_uuid_md5(const char *data, size_t len, char out[SL_UUID_STRLEN]);

#endif
