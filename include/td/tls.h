/* TLS with OpenSSL 3: server contexts for TLS listeners (several certificates chosen by SNI,
 * ALPN h2 and http/1.1, session tickets with rotated keys), client contexts for TLS to backends,
 * and a memory-BIO connection wrapper that lets libuv do the socket I/O. */
#ifndef TD_TLS_H
#define TD_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

/* Checks a certificate chain file and its private key: both readable PEM, the key matches the
 * leaf certificate, the leaf is not expired nor not yet valid. Returns 0, or TD_EINVAL with a
 * message naming the file in err[errlen]. */
int td_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen);

/* Checks that a CA bundle file is readable PEM with at least one certificate. */
int td_tls_check_ca(const char *ca, char *err, size_t errlen);

/* A TLS listener's certificates: SSL_CTX per certificate; SNI picks the one whose names (subject
 * alternative names, else common name) match exactly, then by wildcard ("*.example.com" matches
 * one label), else the first (the default for clients without SNI). Reference-counted. */
typedef struct td_tls_server_s td_tls_server_t;

/* Builds the server contexts of a listener. Returns NULL with a message in err. */
td_tls_server_t *td_tls_server_new(const td_config_listener_t *l, char *err, size_t errlen);
void td_tls_server_retain(td_tls_server_t *s);
void td_tls_server_release(td_tls_server_t *s);

/* A client context for TLS to a backend (verify with `ca` or the system store, SNI). */
typedef struct td_tls_client_s td_tls_client_t;
td_tls_client_t *td_tls_client_new(const td_config_backend_t *b, char *err, size_t errlen);
void td_tls_client_release(td_tls_client_t *c);
/* Makes the connections `c` starts from now on offer ALPN "h2" (RFC 7301, RFC 9113 §3.2):
 * alone when `h2_only` (a backend with "protocol": "h2"), else ahead of "http/1.1" (the grpc
 * health check, which then tells a server without HTTP/2 by its choice); td_stream_alpn_h2
 * tells what the server chose. Call before the context is shared with connections. Returns 0
 * or TD_ENOMEM. */
int td_tls_client_offer_h2(td_tls_client_t *c, int h2_only);

/* One TLS connection over memory BIOs. The caller moves bytes between the socket and the
 * connection: received ciphertext goes in with td_tls_feed, plaintext comes out of td_tls_read,
 * plaintext goes in with td_tls_write, and ciphertext to send comes out of td_tls_take. */
typedef struct td_tls_conn_s {
    SSL *ssl;                       /* owned */
    struct td_tls_server_s *server; /* a reference, held while the SNI callback may need it */
    int handshake_done;
    int failed;
    int closed;      /* the peer sent its close_notify (failed is set too) */
    char error[160]; /* why the handshake or a record failed, for the log */
} td_tls_conn_t;

/* Starts a server-side connection (handshake on first read). Returns 0 or TD_ENOMEM. */
int td_tls_accept(td_tls_conn_t *t, td_tls_server_t *s);
/* Starts a client-side connection with the backend's client context `c` (borrowed; the
 * connection takes its own reference to the SSL_CTX). When `c` has an `sni` name it is sent as
 * SNI and, with `verify`, the server certificate must be valid for it; without one no SNI is sent
 * and only the chain is checked. Returns 0 or TD_ENOMEM. */
int td_tls_connect(td_tls_conn_t *t, td_tls_client_t *c);
void td_tls_free(td_tls_conn_t *t);

/* Gives ciphertext read from the socket to the connection. Returns 0 or TD_ENOMEM. */
int td_tls_feed(td_tls_conn_t *t, const char *buf, size_t len);

/* td_tls_read's code for the peer's close_notify: a clean end of the session, not an error. */
#define TD_TLS_CLOSED (-100)

/* Decrypts into out[cap], driving the handshake first. Returns the plaintext bytes (> 0),
 * 0 when more ciphertext is needed (or only handshake progress was made), TD_TLS_CLOSED when the
 * peer sent its close_notify, or TD_EIO on a TLS error (t->error says why). Check
 * td_tls_pending_out afterwards: the handshake may have output. */
long td_tls_read(td_tls_conn_t *t, char *out, size_t cap);

/* Encrypts all of buf[0..len). Returns 0 or TD_EIO. */
int td_tls_write(td_tls_conn_t *t, const char *buf, size_t len);

/* Ciphertext waiting to be sent, and taking it: copies up to cap bytes into out, returns the
 * count. */
size_t td_tls_pending_out(const td_tls_conn_t *t);
size_t td_tls_take(td_tls_conn_t *t, char *out, size_t cap);

/* 1 when the connection holds received bytes not read yet (ciphertext or decrypted records):
 * after a pause, the caller must read them without waiting for the socket. */
int td_tls_has_input(const td_tls_conn_t *t);

/* Queues a close_notify alert (RFC 8446 §6.1, RFC 5246 §7.2.1) to be taken with td_tls_take:
 * one SSL_shutdown, without waiting for the peer's own close_notify, so that a close never blocks
 * on the peer. Does nothing before the handshake is done or after a fatal error (no alert may
 * follow one); a connection the peer closed cleanly still gets its answer. Returns 1 when the
 * alert was queued, else 0. */
int td_tls_shutdown(td_tls_conn_t *t);

/* 1 when ALPN chose "h2" for this connection: server-side, the listener has "http2" on and the
 * client offered it; client-side, td offered it (td_tls_client_offer_h2) and the server chose
 * it. */
int td_tls_alpn_is_h2(const td_tls_conn_t *t);

/* 1 when the handshake is done (for ssl_hello health checks and for upstreams). */
int td_tls_established(const td_tls_conn_t *t);

#endif
