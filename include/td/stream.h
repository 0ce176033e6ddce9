/* The transport: one byte stream, plain TCP or TLS over it, used by client connections, upstream
 * connections and health checks alike. The layers above see only this interface: reads go into a
 * buffer the owner lends, writes take an iovec, a close ends it, each with a completion callback.
 * This implementation sits on libuv (and td/tls.h for TLS over memory BIOs); nothing above it
 * touches a libuv handle, so another implementation (io_uring) can sit behind the same calls.
 *
 * Rules: at most one write with a callback is outstanding per stream (the owner waits for it);
 * callbacks run on the loop's thread; the stream's memory (embedded in its owner) stays valid
 * until the close callback. */
#ifndef TD_STREAM_H
#define TD_STREAM_H

#include <stddef.h>
#include <sys/socket.h>

#include "td/stream-t.h"

static inline td_iov_t td_iov(char *base, size_t len) {
    return (td_iov_t){base, len};
}

/* Sets up the state shared by the streams of `loop` (borrowed; one per loop thread). */
void td_stream_loop_init(td_stream_loop_t *sl, uv_loop_t *loop);
/* Releases it: after the last stream of the loop was closed, before the loop runs out. */
void td_stream_loop_close(td_stream_loop_t *sl);

/* The loop's clock in ms (monotonic), read once per loop pass: the time deadlines are armed
 * with. */
static inline int64_t td_stream_now(const td_stream_loop_t *sl) {
    return (int64_t)uv_now(sl->loop);
}

/* Makes `s` a new, unconnected stream of `sl` whose callbacks get `owner` back through
 * td_stream_owner. Once this returned, the stream must be ended with td_stream_close. */
void td_stream_init(td_stream_t *s, td_stream_loop_t *sl, void *owner);

/* Makes `s` a stream carried by another connection (td_stream_virt_t): its reads, writes and
 * close are `virt`'s (borrowed, static), with `data` (borrowed) for it; `tls` says whether the
 * carrier speaks TLS (td_stream_is_tls). Ended with td_stream_close like any stream. */
void td_stream_init_virt(td_stream_t *s, td_stream_loop_t *sl, void *owner,
                         const td_stream_virt_t *virt, void *data, int tls);

/* 1 for a stream carried by another connection (td_stream_init_virt): it holds no socket. */
static inline int td_stream_is_virt(const td_stream_t *s) {
    return s->virt != NULL;
}

/* 1 when TLS ALPN chose "h2" on this stream (accepted, or connected to a server). */
int td_stream_alpn_h2(const td_stream_t *s);

static inline void *td_stream_owner(const td_stream_t *s) {
    return s->data;
}

/* Makes the accepted connection `fd` (owned by the stream from then on, closed on failure too)
 * the socket of `s`. Returns 0 or a negative errno. */
int td_stream_open(td_stream_t *s, int fd);

/* Speaks TLS as the server with the certificates of `tls` (borrowed; the connection holds its
 * own reference): the handshake runs within the first reads. Returns 0 or -ENOMEM. */
int td_stream_tls_accept(td_stream_t *s, td_tls_server_t *tls);

/* Connects to `sa` and, with `tls` (borrowed; NULL for plain TCP), does the TLS handshake as the
 * client. `cb` gets 0 once the stream is ready, a negative errno when the TCP connect failed, or
 * TD_STREAM_ETLS when the handshake failed (td_stream_tls_error says why: a TLS alert, "connection
 * closed", "write failed"). Returns 0, or a negative errno (-ENOMEM) when nothing was started:
 * `cb` is not called then. */
int td_stream_connect(td_stream_t *s, const struct sockaddr *sa, td_tls_client_t *tls,
                      td_stream_connect_cb cb);

/* Starts (or, with other callbacks, goes on) reading: each time bytes are ready `alloc` is asked
 * for a buffer and `read` told what landed in it (see td/stream-t.h for the codes). Reading stays
 * on until td_stream_read_stop; bytes a TLS session already holds are delivered from the loop
 * without waiting for the socket. */
void td_stream_read_start(td_stream_t *s, td_stream_alloc_cb alloc, td_stream_read_cb read);
void td_stream_read_stop(td_stream_t *s);

/* Writes iov[0..n): synchronously when the socket takes it all, else the rest is queued. iov[0]
 * may point into a scratch area the caller reuses (`volatile_first`): its unwritten part is then
 * copied; the other pieces stay borrowed until `cb` runs. Over TLS the plaintext is encrypted at
 * once and only ciphertext waits. `iov` itself may be modified. Returns 0 when everything was
 * written now, 1 when `cb` will be called, or a negative errno (-EPROTO for a TLS failure). */
int td_stream_write(td_stream_t *s, td_iov_t *iov, unsigned n, int volatile_first,
                    td_stream_write_cb cb);

/* Bytes queued by writes that did not finish at once and not yet taken by the peer. */
size_t td_stream_write_queued(const td_stream_t *s);

/* The peer's address as text ("127.0.0.1", "::1") into ip[len]; "" when unknown. */
void td_stream_peer_ip(td_stream_t *s, char *ip, size_t len);
/* The same and the peer's port into *port (0 when unknown), from one getpeername(2). */
void td_stream_peer_addr(td_stream_t *s, char *ip, size_t len, int *port);

/* 1 when the stream speaks TLS. */
static inline int td_stream_is_tls(const td_stream_t *s) {
    return s->tls != NULL || s->virt_tls;
}

/* Why TLS failed (after TD_STREAM_ETLS), or "". Borrowed from the stream. */
const char *td_stream_tls_error(const td_stream_t *s);

/* A message for a code of this interface: TD_STREAM_ETLS gives the TLS error of `s` (may be NULL
 * for others). Static or borrowed from `s`. */
const char *td_stream_strerror(const td_stream_t *s, int code);

/* Closes the stream: no callback of the owner runs after this but pending writes' (with a
 * negative status) and then `cb`, after which the owner may free it. A TLS session gets its
 * close_notify when the socket takes it at once; a close never waits for the peer. Idempotent. */
void td_stream_close(td_stream_t *s, td_stream_close_cb cb);

#endif
