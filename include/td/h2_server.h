/* HTTP/2 from clients (h2_server.c): a libnghttp2 server session on a client connection that
 * negotiated "h2" by TLS ALPN, or that began with the HTTP/2 client preface on a listener with
 * "h2c" (prior knowledge, RFC 9113 §3.3). The framing, HPACK, flow control and the floods the
 * library guards against (SETTINGS, PING and CONTINUATION floods) are nghttp2's, rapid reset
 * (CVE-2023-44487) is counted by td; every flood ends the connection with GOAWAY
 * ENHANCE_YOUR_CALM. A request whose :authority and host differ, or whose :scheme is not http or
 * https, is reset with PROTOCOL_ERROR (RFC 9113 §8.3.1). The proxying is td's.
 *
 * Each stream is a client of its own: a client_t carried by the connection
 * (td_stream_init_virt) that reads its request as an HTTP/1.1 request (the request line from
 * :method and :path, Host from :authority, the cookie fields joined with "; " as RFC 9113 §8.2.3
 * says, the body as it comes in DATA frames, chunked when no content-length was given) and
 * writes its HTTP/1.1 response, which becomes HEADERS (":status", the fields lower-cased, the
 * connection-specific ones left out) and DATA frames. So every stream goes through exchange.c
 * exactly as an HTTP/1.1 request does: routing, sticky cookie, preview header, failover,
 * retries, passive detection, max_conns queue, counters and access log.
 *
 * Flow control follows the other side: a stream's response bytes wait in a bounded buffer while
 * the client's window is closed (the data source defers, and the stream's client write stays
 * pending, so its exchange stops reading the upstream); the request's DATA bytes are given back
 * to the client's window (nghttp2_session_consume) only once the stream's client took them. */
#ifndef TD_H2_SERVER_H
#define TD_H2_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "td/proxy-t.h"

typedef struct td_h2_conn_s td_h2_conn_t;

/* The client preface of HTTP/2 (RFC 9113 §3.4), 24 bytes. */
#define TD_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define TD_H2_PREFACE_LEN 24

/* Whether the first bytes of a connection, buf[0..len), are HTTP/2: 1 when they begin with the
 * client preface, 0 when they cannot, -1 when they are a beginning of it (wait for more). */
int td_h2_preface_check(const char *buf, size_t len);

/* Makes the client connection `c` (state C_HEAD, nothing served yet) an HTTP/2 connection:
 * state C_H2, a server session with the limits of its listener `l` (borrowed), SETTINGS sent,
 * and the bytes already in c->buf given to the session. Returns 0, or TD_ENOMEM (the caller
 * closes the connection). */
int td_h2_start(client_t *c, const td_config_listener_t *l);

/* The connection `c` closes (td_client_close): every stream's client is closed, the session is
 * freed, and what remains is freed from the loop once the streams' clients are. */
void td_h2_closed(client_t *c);

/* td stops: GOAWAY (NO_ERROR, the last stream taken) goes to the client; the streams in flight
 * finish, then the connection closes. */
void td_h2_shutdown(client_t *c);

/* The connection's idle timeout (the keep-alive timeout, armed while it has no stream) passed:
 * GOAWAY and close. */
void td_h2_timeout(client_t *c);

/* For the fuzz target: a server session with td's callbacks and no socket. Every output is
 * dropped and no stream's client is made (requests are refused once parsed). Returns NULL when
 * out of memory. */
td_h2_conn_t *td_h2_fuzz_new(void);
/* Feeds buf[0..len) to it. Returns 0, or a negative nghttp2 code once the session failed. */
int td_h2_fuzz_feed(td_h2_conn_t *h, const uint8_t *buf, size_t len);
void td_h2_fuzz_free(td_h2_conn_t *h);

#endif
