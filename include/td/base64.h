/* Base64 (RFC 4648 §4, the standard alphabet with "=" padding), as etcd's JSON gateway carries
 * keys and values. Pure functions, any thread. */
#ifndef TD_BASE64_H
#define TD_BASE64_H

#include <stddef.h>

/* The room the encoding of n bytes needs, its NUL included. */
#define TD_BASE64_ENCODED_SIZE(n) ((((n) + 2) / 3) * 4 + 1)

/* Writes the encoding of in[n] into out (TD_BASE64_ENCODED_SIZE(n) bytes), NUL-terminated.
 * Returns its length. */
size_t td_base64_encode(const void *in, size_t n, char *out);

/* Decodes in[n] (padded; n a multiple of 4, or 0) into out (at least n / 4 * 3 + 1 bytes),
 * NUL-terminated. Returns the decoded length, or -1 for anything that is not base64. */
long td_base64_decode(const char *in, size_t n, unsigned char *out);

#endif
