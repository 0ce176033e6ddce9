/* HTTP/2 to backends (h2_client.c, over libnghttp2): for a backend with "protocol": "h2", the
 * connections to each server (per worker: a list in the server's pool_t) carry many requests at
 * once, one stream each. An exchange's try gets an upstream_t as for HTTP/1.1, whose td_stream_t
 * is carried by one stream of such a connection (td_stream_init_virt): the exchange writes its
 * HTTP/1.1 request bytes (the rewritten head, then the body with Content-Length or chunked) and
 * reads HTTP/1.1 response bytes, so its retries, counters, timeouts, passive detection,
 * max_conns and drain are the same code for both protocols.
 *
 * Request: the head becomes HEADERS (:method, :scheme, :authority from Host, :path; the
 * connection-specific fields dropped, RFC 9113 §8.2.2, "te: trailers" kept), the body DATA with
 * END_STREAM at its end, a chunked body's trailer section a trailing HEADERS. Response: HEADERS
 * become an HTTP/1.1 head (interim ones too), with the server's content-length, else
 * "Transfer-Encoding: chunked" with DATA as chunks and the trailers as the trailer section; a
 * HEADERS with END_STREAM (gRPC's trailers-only) a head with "Content-Length: 0". A final head
 * says "Connection: close": the stream ends with the exchange, never in the keep-alive pool (an
 * exchange that ends early closes it, which resets the stream with CANCEL).
 *
 * Connections: over TLS td offers ALPN "h2" alone and fails the try when the server selects
 * nothing; without TLS it speaks h2c with prior knowledge (RFC 9113 §3.3). A try goes to a
 * connection with room under the server's SETTINGS_MAX_CONCURRENT_STREAMS, else to a new one
 * (never a queue). Streams start once the server's SETTINGS came. A stream the server refused
 * (RST_STREAM REFUSED_STREAM, or above a GOAWAY's last stream id) reports F_CONNECT: it was not
 * processed, so the exchange retries it whatever its method; so does a try for a server that
 * allows 0 concurrent streams (its ready connection takes it and fails it at once: no new
 * connection is opened for it); a connection that got GOAWAY takes
 * no new stream. A connection that dies fails its streams (F_IO). Idle connections get a PING
 * after a quiet period and close after POOL_IDLE_MS without a stream. */
#ifndef TD_H2_CLIENT_H
#define TD_H2_CLIENT_H

#include "td/proxy-t.h"

/* td_upstream_open for a server of an h2 backend (srv->h2), in its pool `pool` (borrowed): the
 * same contract. Returns 1 when the stream starts now on a connection that is up (U_BUSY;
 * on_ready is not called), 0 when it waits for a connection (U_CONNECTING, connect timeout
 * connect_ms: on_ready or on_error follows; a connect that fails at once is reported through
 * on_error too), or -ENOMEM with *out NULL. */
int td_h2_client_open(worker_t *w, pool_t *pool, td_snap_server_t *srv, td_tls_client_t *tls,
                      int connect_ms, td_exchange_t *owner, const td_upstream_cbs_t *cbs,
                      upstream_t **out);

/* Closes the pool's HTTP/2 connections that carry no stream; those that do take no new stream
 * and close after their last (a drain, changed TLS settings). With `all`, every connection
 * closes now, its streams failed (the end of a worker's stop, when no client is left). */
void td_h2_client_pool_close(pool_t *pool, int all);

#endif
