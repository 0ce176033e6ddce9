#include "td/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "td/common-t.h"
#include "td/log.h"

/* Modern defaults: forward-secret AEAD suites only for TLS 1.2 (1.3 suites are all fine). */
#define CIPHERS_12                                                                                 \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static void ssl_error(char *err, size_t errlen, const char *what, const char *file) {
    unsigned long e = ERR_get_error();
    char reason[200] = "unknown error";
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s: %s", file, what, reason);
}

/* ---------------------------------------------------------------------------------------------
 * Checks */

static X509 *read_cert(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %m", path);
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        ssl_error(err, errlen, "not a PEM certificate", path);
    return x;
}

int td_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen) {
    int r = TD_EINVAL;
    EVP_PKEY *pk = NULL;
    X509 *x = read_cert(cert, err, errlen);
    if (!x)
        goto out;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
        BIO *b = BIO_new(BIO_s_mem());
        char when[64] = "";
        ASN1_TIME_print(b, X509_get0_notAfter(x));
        int n = BIO_read(b, when, sizeof(when) - 1);
        when[n > 0 ? n : 0] = 0;
        BIO_free(b);
        snprintf(err, errlen, "%s: certificate expired on %s", cert, when);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
        snprintf(err, errlen, "%s: certificate is not valid yet", cert);
        goto out;
    }
    FILE *f = fopen(key, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %m", key);
        goto out;
    }
    pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!pk) {
        ssl_error(err, errlen, "not a PEM private key", key);
        goto out;
    }
    if (X509_check_private_key(x, pk) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: private key does not match the certificate %s", key, cert);
        goto out;
    }
    r = 0;
out:
    EVP_PKEY_free(pk);
    X509_free(x);
    return r;
}

int td_tls_check_ca(const char *ca, char *err, size_t errlen) {
    X509 *x = read_cert(ca, err, errlen);
    if (!x)
        return TD_EINVAL;
    X509_free(x);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Session tickets: keys made at random and rotated every hour; tickets made with the previous
 * key are still accepted (and renewed) for one more hour. Shared by every listener. */

#define TICKET_ROTATE_S 3600

typedef struct ticket_key_s {
    unsigned char name[16], aes[32], hmac[32];
} ticket_key_t;

static pthread_mutex_t ticket_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key_t ticket_keys[2]; /* [0] current, [1] previous */
static time_t ticket_rotated;

static void ticket_rotate_locked(void) {
    time_t now = time(NULL);
    if (ticket_rotated && now - ticket_rotated < TICKET_ROTATE_S)
        return;
    ticket_keys[1] = ticket_keys[0];
    RAND_bytes((unsigned char *)&ticket_keys[0], sizeof(ticket_keys[0]));
    if (!ticket_rotated)
        ticket_keys[1] = ticket_keys[0];
    ticket_rotated = now;
}

static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *ctx,
                     EVP_MAC_CTX *hctx, int enc) {
    pthread_mutex_lock(&ticket_lock);
    ticket_rotate_locked();
    ticket_key_t k;
    int r = 1;
    if (enc) {
        k = ticket_keys[0];
        memcpy(key_name, k.name, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            r = -1;
    } else if (memcmp(key_name, ticket_keys[0].name, 16) == 0) {
        k = ticket_keys[0];
        /* TLS 1.3 clients use a ticket once (RFC 8446 §C.4): a resumed connection gets a fresh
         * one, or the next connection would need a full handshake. */
        if (SSL_version(s) == TLS1_3_VERSION)
            r = 2;
    } else if (memcmp(key_name, ticket_keys[1].name, 16) == 0) {
        k = ticket_keys[1];
        r = 2; /* valid, but renew it under the current key */
    } else {
        r = 0;
    }
    pthread_mutex_unlock(&ticket_lock);
    if (r <= 0)
        return r;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string("key", k.hmac, sizeof(k.hmac)),
                           OSSL_PARAM_construct_utf8_string("digest", "sha256", 0),
                           OSSL_PARAM_construct_end()};
    if (!EVP_MAC_CTX_set_params(hctx, params))
        return -1;
    if (enc ? !EVP_EncryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, k.aes, iv)
            : !EVP_DecryptInit_ex(ctx, EVP_aes_256_cbc(), NULL, k.aes, iv))
        return -1;
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Server contexts */

typedef struct cert_ctx_s {
    SSL_CTX *ctx;
    char **names; /* owned: DNS names of the leaf (lower case) */
    size_t num_names;
} cert_ctx_t;

struct td_tls_server_s {
    _Atomic int refs;
    cert_ctx_t *certs; /* owned; [0] is the default */
    size_t num_certs;
};

/* ALPN (RFC 7301): "h2" when the listener offers HTTP/2 (`arg` non-NULL) and the client lists
 * it, else "http/1.1"; a client that offers neither is refused. */
static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
    (void)s;
    static const unsigned char h11[] = "\x08http/1.1";
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    const unsigned char *ours = arg ? both : h11;
    unsigned ourlen = arg ? sizeof(both) - 1 : sizeof(h11) - 1;
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, ourlen, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* a client that offers only protocols we lack */
    return SSL_TLSEXT_ERR_OK;
}

int td_tls_alpn_is_h2(const td_tls_conn_t *t) {
    const unsigned char *p = NULL;
    unsigned len = 0;
    if (!t->ssl)
        return 0;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    return len == 2 && p[0] == 'h' && p[1] == '2';
}

static int name_matches(const char *pattern, const char *host) {
    if (strcasecmp(pattern, host) == 0)
        return 2;
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(host, '.');
        if (dot && dot != host && strcasecmp(pattern + 1, dot) == 0)
            return 1;
    }
    return 0;
}

static int sni_cb(SSL *s, int *alert, void *arg) {
    (void)alert;
    td_tls_server_t *srv = arg;
    const char *host = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    if (!host)
        return SSL_TLSEXT_ERR_OK; /* the default certificate */
    cert_ctx_t *wild = NULL;
    for (size_t i = 0; i < srv->num_certs; i++)
        for (size_t j = 0; j < srv->certs[i].num_names; j++) {
            int m = name_matches(srv->certs[i].names[j], host);
            if (m == 2) {
                SSL_set_SSL_CTX(s, srv->certs[i].ctx);
                return SSL_TLSEXT_ERR_OK;
            }
            if (m == 1 && !wild)
                wild = &srv->certs[i];
        }
    if (wild)
        SSL_set_SSL_CTX(s, wild->ctx);
    return SSL_TLSEXT_ERR_OK;
}

static void collect_names(cert_ctx_t *cc, X509 *x) {
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int n = sans ? sk_GENERAL_NAME_num(sans) : 0;
    cc->names = calloc((size_t)n + 1, sizeof(char *));
    if (!cc->names) {
        GENERAL_NAMES_free(sans);
        return;
    }
    for (int i = 0; i < n; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS)
            cc->names[cc->num_names++] = strndup((const char *)ASN1_STRING_get0_data(g->d.dNSName),
                                                 (size_t)ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(sans);
    if (cc->num_names == 0) {
        char cn[256];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn)) > 0)
            cc->names[cc->num_names++] = strdup(cn);
    }
}

static SSL_CTX *server_ctx(const td_config_listener_t *l, const td_config_cert_t *c,
                           td_tls_server_t *srv, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_error(err, errlen, "cannot make a TLS context", c->cert);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, l->min_version ? l->min_version : TLS1_2_VERSION);
    SSL_CTX_set_cipher_list(ctx, CIPHERS_12);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        ssl_error(err, errlen, "cannot load the certificate chain", c->cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        ssl_error(err, errlen, "cannot load the private key", c->key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "%s: private key does not match the certificate %s", c->key, c->cert);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, l->http2 ? (void *)ctx : NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, srv);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

td_tls_server_t *td_tls_server_new(const td_config_listener_t *l, char *err, size_t errlen) {
    td_tls_server_t *srv = calloc(1, sizeof(*srv));
    if (!srv)
        goto nomem;
    atomic_store(&srv->refs, 1);
    srv->certs = calloc(l->num_certs, sizeof(*srv->certs));
    if (!srv->certs)
        goto nomem;
    for (size_t i = 0; i < l->num_certs; i++) {
        cert_ctx_t *cc = &srv->certs[i];
        cc->ctx = server_ctx(l, &l->certs[i], srv, err, errlen);
        if (!cc->ctx)
            goto fail;
        srv->num_certs++;
        collect_names(cc, SSL_CTX_get0_certificate(cc->ctx));
    }
    return srv;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    if (srv) {
        atomic_store(&srv->refs, 1);
        td_tls_server_release(srv);
    }
    return NULL;
}

void td_tls_server_retain(td_tls_server_t *s) {
    atomic_fetch_add(&s->refs, 1);
}

void td_tls_server_release(td_tls_server_t *s) {
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    for (size_t i = 0; i < s->num_certs; i++) {
        SSL_CTX_free(s->certs[i].ctx);
        for (size_t j = 0; j < s->certs[i].num_names; j++)
            free(s->certs[i].names[j]);
        free(s->certs[i].names);
    }
    free(s->certs);
    free(s);
}

/* ---------------------------------------------------------------------------------------------
 * Client contexts */

struct td_tls_client_s {
    _Atomic int refs;
    SSL_CTX *ctx;
    char sni[256];
    int verify;
};

td_tls_client_t *td_tls_client_new(const td_config_backend_t *b, char *err, size_t errlen) {
    td_tls_client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    atomic_store(&c->refs, 1);
    snprintf(c->sni, sizeof(c->sni), "%s", b->tls_sni);
    c->verify = b->tls_verify;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) {
        ssl_error(err, errlen, "cannot make a TLS context", b->name);
        free(c);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char h11[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(c->ctx, h11, sizeof(h11) - 1);
    if (b->tls_verify) {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        int ok = b->tls_ca[0] ? SSL_CTX_load_verify_locations(c->ctx, b->tls_ca, NULL)
                              : SSL_CTX_set_default_verify_paths(c->ctx);
        if (ok != 1) {
            ssl_error(err, errlen, "cannot load CA certificates",
                      b->tls_ca[0] ? b->tls_ca : "system store");
            td_tls_client_release(c);
            return NULL;
        }
    }
    return c;
}

void td_tls_client_release(td_tls_client_t *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    SSL_CTX_free(c->ctx);
    free(c);
}

int td_tls_client_offer_h2(td_tls_client_t *c, int h2_only) {
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    unsigned len = h2_only ? 3 : sizeof(both) - 1; /* "\x02h2" is its first entry */
    /* SSL_CTX_set_alpn_protos returns 0 on success. */
    return SSL_CTX_set_alpn_protos(c->ctx, both, len) == 0 ? 0 : TD_ENOMEM;
}

/* ---------------------------------------------------------------------------------------------
 * Connections over memory BIOs */

static int conn_new(td_tls_conn_t *t, SSL_CTX *ctx) {
    memset(t, 0, sizeof(*t));
    t->ssl = SSL_new(ctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !rbio || !wbio) {
        SSL_free(t->ssl);
        BIO_free(rbio);
        BIO_free(wbio);
        t->ssl = NULL;
        return TD_ENOMEM;
    }
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(t->ssl, rbio, wbio);
    return 0;
}

int td_tls_accept(td_tls_conn_t *t, td_tls_server_t *s) {
    if (conn_new(t, s->certs[0].ctx) < 0)
        return TD_ENOMEM;
    /* The SNI callback reads `s` during the handshake, which may outlive the snapshot that
     * handed it out (a reload): the connection holds its own reference. */
    td_tls_server_retain(s);
    t->server = s;
    SSL_set_accept_state(t->ssl);
    return 0;
}

int td_tls_connect(td_tls_conn_t *t, td_tls_client_t *c) {
    if (conn_new(t, c->ctx) < 0)
        return TD_ENOMEM;
    SSL_set_connect_state(t->ssl);
    if (c->sni[0]) {
        SSL_set_tlsext_host_name(t->ssl, c->sni);
        if (c->verify)
            SSL_set1_host(t->ssl, c->sni);
    }
    return 0;
}

void td_tls_free(td_tls_conn_t *t) {
    SSL_free(t->ssl);
    t->ssl = NULL;
    td_tls_server_release(t->server);
    t->server = NULL;
}

int td_tls_feed(td_tls_conn_t *t, const char *buf, size_t len) {
    return BIO_write(SSL_get_rbio(t->ssl), buf, (int)len) == (int)len ? 0 : TD_ENOMEM;
}

static long tls_fail(td_tls_conn_t *t, int r) {
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    t->failed = 1;
    if (e == SSL_ERROR_ZERO_RETURN) {
        t->closed = 1;
        snprintf(t->error, sizeof(t->error), "closed");
        ERR_clear_error();
        return TD_TLS_CLOSED;
    } else {
        unsigned long code = ERR_get_error();
        long vr = SSL_get_verify_result(t->ssl);
        if (vr != X509_V_OK)
            snprintf(t->error, sizeof(t->error), "certificate verify failed: %s",
                     X509_verify_cert_error_string(vr));
        else if (code)
            ERR_error_string_n(code, t->error, sizeof(t->error));
        else
            snprintf(t->error, sizeof(t->error), "TLS error %d", e);
    }
    ERR_clear_error();
    return TD_EIO;
}

long td_tls_read(td_tls_conn_t *t, char *out, size_t cap) {
    if (!t->handshake_done) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1)
            return tls_fail(t, r);
        t->handshake_done = 1;
    }
    if (cap == 0)
        return 0;
    int r = SSL_read(t->ssl, out, (int)(cap > INT32_MAX ? INT32_MAX : cap));
    return r > 0 ? r : tls_fail(t, r);
}

int td_tls_write(td_tls_conn_t *t, const char *buf, size_t len) {
    while (len) {
        int r = SSL_write(t->ssl, buf, (int)(len > 1 << 30 ? 1 << 30 : len));
        if (r <= 0)
            return tls_fail(t, r) < 0 ? TD_EIO : TD_EIO;
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

size_t td_tls_pending_out(const td_tls_conn_t *t) {
    return (size_t)BIO_ctrl_pending(SSL_get_wbio(t->ssl));
}

size_t td_tls_take(td_tls_conn_t *t, char *out, size_t cap) {
    int n = BIO_read(SSL_get_wbio(t->ssl), out, (int)(cap > INT32_MAX ? INT32_MAX : cap));
    return n > 0 ? (size_t)n : 0;
}

int td_tls_has_input(const td_tls_conn_t *t) {
    return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(SSL_get_rbio(t->ssl)) > 0;
}

int td_tls_shutdown(td_tls_conn_t *t) {
    if (!t->ssl || !t->handshake_done || (t->failed && !t->closed))
        return 0;
    int r = SSL_shutdown(t->ssl);
    ERR_clear_error();
    return r >= 0;
}

int td_tls_established(const td_tls_conn_t *t) {
    return t->handshake_done;
}
