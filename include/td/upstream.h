/* Upstream connections and their pools (upstream.c). */
#ifndef TD_UPSTREAM_H
#define TD_UPSTREAM_H

#include "td/proxy-t.h"

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
void td_upstream_timer(upstream_t *u, int which, int ms);

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
int td_upstream_local_error(int err);

void td_upstream_write_cb(td_stream_t *s, int status);

void td_upstream_close(upstream_t *u);

void td_upstream_read(upstream_t *u, int on);

/* Parks an upstream connection whose exchange ended cleanly in its server's pool. */
void td_upstream_pool_put(upstream_t *u);

/* Gets a pooled connection to the chosen server, or starts a new one. */
void td_upstream_open(client_t *c, td_snap_server_t *srv);

/* An upstream's deadline passed. */
void td_upstream_timeout(upstream_t *u);

#endif
