/* LD_PRELOAD shim for wrk's HTTPS runs (bench/run.sh builds it into the run folder with cc):
 * counts the TLS handshakes wrk completes and how many of them resumed a session, notes the
 * protocol and cipher of the first one, and counts the connections wrk closes and how many of
 * them it closes holding a session it can resume (in TLS 1.3: the server sent a new session
 * ticket on that connection; OpenSSL clients use a TLS 1.3 ticket once). At exit it writes one
 * JSON line to $TLS_COUNT_OUT:
 *   {"handshakes":N,"resumed":R,"closed":C,"closed_resumable":K,"protocol":"TLSv1.3",
 *    "cipher":"TLS_AES_256_GCM_SHA384"}
 * It wraps SSL_connect and SSL_shutdown (one more indirect call each), so wrk runs as it does
 * without it. Declares the few OpenSSL functions it uses itself: no OpenSSL headers needed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_st SSL;
typedef struct ssl_cipher_st SSL_CIPHER;
typedef struct ssl_session_st SSL_SESSION;
extern SSL_SESSION *SSL_get_session(const SSL *s);
extern int SSL_SESSION_is_resumable(const SSL_SESSION *s);
extern int SSL_session_reused(const SSL *s);
extern const char *SSL_get_version(const SSL *s);
extern const SSL_CIPHER *SSL_get_current_cipher(const SSL *s);
extern const char *SSL_CIPHER_get_name(const SSL_CIPHER *c);

static unsigned long handshakes, resumed, closed, closed_resumable;
static char protocol[32], cipher[64];

int SSL_connect(SSL *s) {
    static int (*real)(SSL *);
    if (!real)
        real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    int r = real(s);
    if (r == 1) {
        __atomic_add_fetch(&handshakes, 1, __ATOMIC_RELAXED);
        if (SSL_session_reused(s))
            __atomic_add_fetch(&resumed, 1, __ATOMIC_RELAXED);
        if (!protocol[0]) {
            const SSL_CIPHER *c = SSL_get_current_cipher(s);
            snprintf(cipher, sizeof(cipher), "%s", c ? SSL_CIPHER_get_name(c) : "?");
            snprintf(protocol, sizeof(protocol), "%s", SSL_get_version(s));
        }
    }
    return r;
}

int SSL_shutdown(SSL *s) {
    static int (*real)(SSL *);
    if (!real)
        real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_shutdown");
    SSL_SESSION *sess = SSL_get_session(s);
    __atomic_add_fetch(&closed, 1, __ATOMIC_RELAXED);
    if (sess && SSL_SESSION_is_resumable(sess))
        __atomic_add_fetch(&closed_resumable, 1, __ATOMIC_RELAXED);
    return real(s);
}

__attribute__((destructor)) static void tls_count_report(void) {
    const char *path = getenv("TLS_COUNT_OUT");
    FILE *f = path ? fopen(path, "w") : NULL;
    if (!f)
        return;
    fprintf(f,
            "{\"handshakes\":%lu,\"resumed\":%lu,\"closed\":%lu,\"closed_resumable\":%lu,"
            "\"protocol\":\"%s\",\"cipher\":\"%s\"}\n",
            handshakes, resumed, closed, closed_resumable, protocol[0] ? protocol : "?",
            cipher[0] ? cipher : "?");
    fclose(f);
}
