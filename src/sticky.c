#include "td/sticky.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define MAC_BYTES 12

/* The key used when no secret is configured: made once, kept for the life of the process. */
static td_sticky_key_t process_key;
static pthread_once_t process_key_once = PTHREAD_ONCE_INIT;

static td_sticky_key_t adopted_key; /* handed over by the td before (td_sticky_adopt_process_key) */
static int process_key_made;

static void make_process_key(void) {
    process_key_made = 1;
    if (adopted_key.len) {
        process_key = adopted_key;
        return;
    }
    process_key.len = 32;
    if (RAND_bytes(process_key.bytes, (int)process_key.len) != 1)
        for (size_t i = 0; i < process_key.len; i++)
            process_key.bytes[i] =
                (unsigned char)(i * 131 + 7); /* never reached on a working system */
}

void td_sticky_key_init(td_sticky_key_t *key, const char *secret) {
    if (secret && *secret) {
        size_t n = strlen(secret);
        key->len = n < sizeof(key->bytes) ? n : sizeof(key->bytes);
        memcpy(key->bytes, secret, key->len);
    } else {
        pthread_once(&process_key_once, make_process_key);
        *key = process_key;
    }
}

void td_sticky_process_key(td_sticky_key_t *key) {
    pthread_once(&process_key_once, make_process_key);
    *key = process_key;
}

int td_sticky_adopt_process_key(const td_sticky_key_t *key) {
    if (process_key_made || !key->len || key->len > sizeof(key->bytes))
        return TD_EINVAL;
    adopted_key = *key;
    return 0;
}

static void mac_hex(const td_sticky_key_t *key, const char *msg, size_t len,
                    char out[2 * MAC_BYTES + 1]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    HMAC(EVP_sha256(), key->bytes, (int)key->len, (const unsigned char *)msg, len, md, &md_len);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < MAC_BYTES; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * MAC_BYTES] = 0;
}

size_t td_sticky_make(const td_sticky_key_t *key, char *out, size_t cap, const char *backend,
                      int64_t expiry_s) {
    char msg[128];
    int n = snprintf(msg, sizeof(msg), "%s.%lld", backend, (long long)expiry_s);
    if (n <= 0 || (size_t)n >= sizeof(msg) || (size_t)n + 2 + 2 * MAC_BYTES > cap)
        return 0;
    char mac[2 * MAC_BYTES + 1];
    mac_hex(key, msg, (size_t)n, mac);
    return (size_t)snprintf(out, cap, "%s.%s", msg, mac);
}

/* Checks one cookie value "NAME.EXPIRY.MAC". */
static int verify(const td_sticky_key_t *key, const char *v, size_t len, int64_t now_s,
                  td_str_t *backend) {
    if (len <= 2 * MAC_BYTES + 3 || len > 120 || v[len - 2 * MAC_BYTES - 1] != '.')
        return 0;
    size_t msg_len = len - 2 * MAC_BYTES - 1;
    char mac[2 * MAC_BYTES + 1];
    mac_hex(key, v, msg_len, mac);
    /* Constant-time compare: a forger learns nothing from timing. */
    unsigned diff = 0;
    for (int i = 0; i < 2 * MAC_BYTES; i++)
        diff |= (unsigned)(mac[i] ^ v[msg_len + 1 + (size_t)i]);
    if (diff)
        return 0;
    const char *dot = memrchr(v, '.', msg_len);
    if (!dot || dot == v)
        return 0;
    long long expiry = 0;
    for (const char *p = dot + 1; p < v + msg_len; p++) {
        if (*p < '0' || *p > '9' || expiry > 1000000000000LL)
            return 0;
        expiry = expiry * 10 + (*p - '0');
    }
    if (expiry < now_s)
        return 0;
    backend->p = v;
    backend->len = (size_t)(dot - v);
    return 1;
}

int td_sticky_parse(const td_sticky_key_t *key, td_str_t header, const char *name, int64_t now_s,
                    td_str_t *backend) {
    return td_sticky_parse_ring(&key, 1, header, name, now_s, backend);
}

int td_sticky_parse_ring(const td_sticky_key_t *const *keys, size_t n, td_str_t header,
                         const char *name, int64_t now_s, td_str_t *backend) {
    size_t nlen = strlen(name);
    const char *p = header.p, *end = header.p + header.len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ';'))
            p++;
        const char *pair = p;
        while (p < end && *p != ';')
            p++;
        const char *pe = p;
        while (pe > pair && (pe[-1] == ' ' || pe[-1] == '\t'))
            pe--;
        if ((size_t)(pe - pair) > nlen && memcmp(pair, name, nlen) == 0 && pair[nlen] == '=') {
            const char *v = pair + nlen + 1;
            size_t vlen = (size_t)(pe - v);
            if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
                v++;
                vlen -= 2;
            }
            for (size_t k = 0; k < n; k++)
                if (keys[k]->len && verify(keys[k], v, vlen, now_s, backend))
                    return 1;
        }
    }
    return 0;
}
