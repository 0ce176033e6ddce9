/* Base64 through OpenSSL's block coder (EVP_EncodeBlock / EVP_DecodeBlock), with the padding
 * EVP_DecodeBlock leaves counted as data taken off again. */
#include "td/base64.h"

#include <openssl/evp.h>

size_t td_base64_encode(const void *in, size_t n, char *out) {
    if (n == 0) {
        out[0] = 0;
        return 0;
    }
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

long td_base64_decode(const char *in, size_t n, unsigned char *out) {
    if (n == 0) {
        out[0] = 0;
        return 0;
    }
    if (n % 4 != 0 || n > 0x7ffffffc)
        return -1;
    /* EVP_DecodeBlock is lenient (blanks, "=" inside): only the alphabet, then at most two "="
     * at the end, is base64. */
    size_t pad = in[n - 1] == '=' ? (in[n - 2] == '=' ? 2 : 1) : 0;
    for (size_t i = 0; i < n - pad; i++) {
        char c = in[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '+' || c == '/'))
            return -1;
    }
    int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0)
        return -1;
    len -= (int)pad;
    out[len] = 0;
    return len;
}
