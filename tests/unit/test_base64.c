/* Base64 as etcd's gateway speaks it: RFC 4648's test vectors both ways, bytes with NULs and
 * high bits, and what is not base64 refused. */
#include "td/base64.h"

#include <string.h>

#include "t.h"

static void rfc4648_vectors_round_trip(void) {
    static const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char out[32];
        unsigned char back[32];
        T_EQ_INT(td_base64_encode(plain[i], strlen(plain[i]), out), strlen(coded[i]));
        T_EQ_STR(out, coded[i]);
        T_EQ_INT(td_base64_decode(coded[i], strlen(coded[i]), back), strlen(plain[i]));
        T_EQ_STR((char *)back, plain[i]);
    }
}

static void binary_bytes_round_trip(void) {
    unsigned char in[256], back[400];
    char out[TD_BASE64_ENCODED_SIZE(256)];
    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)(255 - i);
    for (size_t n = 1; n <= 256; n += 17) {
        size_t len = td_base64_encode(in, n, out);
        T_EQ_INT(len, TD_BASE64_ENCODED_SIZE(n) - 1);
        T_EQ_INT(td_base64_decode(out, len, back), n);
        T_CHECK(memcmp(in, back, n) == 0);
    }
    /* etcd's range end for the prefix "/td/" is "/td0": the key as bytes, 0x00 included. */
    T_EQ_INT(td_base64_decode("AA==", 4, back), 1);
    T_EQ_INT(back[0], 0);
}

static void what_is_not_base64_is_refused(void) {
    unsigned char back[32];
    T_EQ_INT(td_base64_decode("Zm9", 3, back), -1);
    T_EQ_INT(td_base64_decode("Zm9*", 4, back), -1);
    T_EQ_INT(td_base64_decode("Z===", 4, back), -1);
    T_EQ_INT(td_base64_decode("Zg=a", 4, back), -1);
    T_EQ_INT(td_base64_decode(" Zg=", 4, back), -1);
}

int main(void) {
    rfc4648_vectors_round_trip();
    binary_bytes_round_trip();
    what_is_not_base64_is_refused();
    return t_done("base64");
}
