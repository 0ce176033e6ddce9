/* Listeners: the listening sockets of the proxy, one per configured address and worker, bound
 * with SO_REUSEPORT so that the kernel spreads new connections over the workers. */
#ifndef TD_LISTENER_H
#define TD_LISTENER_H

#include <stddef.h>
#include <uv.h>

#include "td/config-t.h"

/* Opens a socket bound to `a` with SO_REUSEADDR and SO_REUSEPORT, not listening yet. With
 * `first` (the first worker's socket) it first checks that no other socket listens there:
 * SO_REUSEPORT would otherwise share the port silently with another td. Returns the descriptor
 * (owned by the caller), or -1 with a message in err[errlen] ("cannot listen on 0.0.0.0:80:
 * Permission denied", "... address already in use"). */
int td_listener_bind(const td_addr_t *a, int first, char *err, size_t errlen);

/* Makes `fd` (from td_listener_bind; owned by `h` from then on, also on failure once h is
 * initialised) listen on the handle `h` of `loop`, calling `on_accept` with h->data = `owner`
 * for each connection waiting (accept it with td_stream_accept). Returns 0 or a negative errno;
 * *fd_taken says whether fd now belongs to `h`. */
int td_listener_start(uv_loop_t *loop, uv_tcp_t *h, int fd, void *owner, uv_connection_cb on_accept,
                      int *fd_taken);

#endif
