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

/* The listening socket handed over for listener `listener` (index in cfg->listeners) and worker
 * `worker`: a descriptor (owned by the proxy from then on) already bound and listening, or -1 to
 * bind one. Called with worker SIZE_MAX to ask whether any socket of that listener is handed
 * over (then a socket bound for a further worker joins the same SO_REUSEPORT group without the
 * "address already in use" probe); that call must not give a descriptor away. */
typedef int td_proxy_adopt_fn(size_t listener, size_t worker, void *arg);

/* td_proxy_start taking the listening sockets `adopt` gives (an upgrade: the sockets of the td
 * process before, with the connections queued on them); those it gives -1 for are bound. */
td_proxy_t *td_proxy_start_adopt(const td_config_t *cfg, td_proxy_adopt_fn *adopt, void *arg,
                                 char *err, size_t errlen);

/* Writes to fds[0..cap) the listening sockets of listener `listener` (index in the config's
 * listeners), one per worker that still has it; returns how many. Borrowed: they stay the
 * workers' and close when the proxy stops. Main thread, while the proxy runs (the workers set
 * them when they start). */
size_t td_proxy_listen_fds(const td_proxy_t *p, size_t listener, int *fds, size_t cap);

/* Stops accepting, lets in-flight requests finish for at most drain_ms milliseconds (then closes
 * what is left), joins the workers and frees the proxy. Blocks the calling thread. */
void td_proxy_stop(td_proxy_t *p, int drain_ms);

/* Client connections open now, across workers. */
int64_t td_proxy_connections(void);

#endif
