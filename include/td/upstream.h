/* Upstream connections (upstream.c): connect (plain or TLS, through the transport), the keep-alive
 * pool per server and worker, reads into the connection's buffer, writes, and the connect /
 * response / pool-idle timeouts. An upstream connection knows nothing of clients: it reports to
 * its owner through td_upstream_cbs_t. */
#ifndef TD_UPSTREAM_H
#define TD_UPSTREAM_H

#include "td/proxy-t.h"

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
void td_upstream_timer(upstream_t *u, int which, int ms);

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
int td_upstream_local_error(int err);

/* Stops the connection's timeout. */
void td_upstream_timer_stop(upstream_t *u);

/* Writes iov[0..n) to the server (td_stream_write: iov[0] may be scratch when
 * `volatile_first`). Returns 0 when written now, 1 when on_written will say (u->writing is set
 * meanwhile), or a negative code. */
int td_upstream_write(upstream_t *u, td_iov_t *iov, unsigned n, int volatile_first);

/* A message for a code of on_data or td_upstream_write. */
const char *td_upstream_strerror(const upstream_t *u, int code);

/* Closes the connection (not into the pool); its owner must have let go of it (owner NULL) or
 * does so now: no callback follows. */
void td_upstream_close(upstream_t *u);

/* Reads response bytes (on) or stops (off: backpressure). */
void td_upstream_read(upstream_t *u, int on);

/* Parks an upstream connection whose exchange ended cleanly in its server's pool. */
void td_upstream_pool_put(upstream_t *u);

/* Gets a connection to `srv` for `owner` (borrowed) with its callbacks `cbs` (borrowed, static)
 * (for a server of an h2 backend, a stream of an HTTP/2 connection: td/h2_client.h):
 * an idle one from the pool (returns 1: ready now, U_BUSY; on_ready is not called), or a new one
 * (returns 0: U_CONNECTING, with `tls` (borrowed; NULL for plain) and a connect timeout of
 * connect_ms ms; on_ready or on_error follows). *out is the connection. Returns -ENOMEM with *out
 * NULL when none could be made, or another negative code when the connect could not start: *out
 * is then a connection the owner must fail (on its own error path) or close. */
int td_upstream_open(worker_t *w, td_snap_server_t *srv, td_tls_client_t *tls, int connect_ms,
                     td_exchange_t *owner, const td_upstream_cbs_t *cbs, upstream_t **out);

/* An upstream's deadline passed (the worker's tick): an idle pooled connection is closed, a
 * connecting one fails with "connect timed out", a busy one with "no response in time" (F_TIMEOUT,
 * through on_error). */
void td_upstream_timeout(upstream_t *u);

#endif
