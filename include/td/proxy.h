/* The proxy: worker threads that accept client connections and forward HTTP/1.x requests to
 * upstream servers chosen by the router (see docs/ARCHITECTURE.md for the state machine). */
#ifndef TD_PROXY_H
#define TD_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"

typedef struct td_proxy_s td_proxy_t;

/* Binds every listener of `cfg` once per worker (SO_REUSEPORT, so the kernel spreads connections
 * over the workers) and starts cfg->workers threads, each with its own libuv loop. Routing comes
 * from the router's current snapshot, which must be published before the first request; the
 * timeouts and limits of `cfg` are read per request from that snapshot. Returns the proxy (owned
 * by the caller, freed by td_proxy_stop), or NULL with a message in err[errlen] (e.g. "cannot
 * listen on 0.0.0.0:80: Permission denied"). */
td_proxy_t *td_proxy_start(const td_config_t *cfg, char *err, size_t errlen);

/* Stops accepting, lets in-flight requests finish for at most drain_ms milliseconds (then closes
 * what is left), joins the workers and frees the proxy. Blocks the calling thread. */
void td_proxy_stop(td_proxy_t *p, int drain_ms);

/* Client connections open now, across workers. */
int64_t td_proxy_connections(void);

#endif
