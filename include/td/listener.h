/* Listeners: the listening sockets of the proxy, one per configured address and worker, bound
 * with SO_REUSEPORT so that the kernel spreads new connections over the workers.
 *
 * td accepts connections itself (a poll handle on the listening socket and accept4) rather than
 * through uv_listen: when td runs out of file descriptors, libuv's accept loop retries at once
 * and forever, so a full descriptor table would stop the worker from doing anything else. Here a
 * listener that hits a limit of td's own pauses, the connections wait in the kernel's backlog,
 * and the worker resumes it on its next tick (td_listener_resume), once connections have ended
 * and freed descriptors. */
#ifndef TD_LISTENER_H
#define TD_LISTENER_H

#include <stddef.h>
#include <uv.h>

#include "td/config-t.h"

typedef struct td_listener_s td_listener_t;

/* A new connection: `fd` (non-blocking, close-on-exec) belongs to the callee from then on. */
typedef void (*td_listener_accept_cb)(td_listener_t *l, int fd);

/* accept failed with `err` (a negative errno). When the listener paused itself on it (a limit
 * of td's own: EMFILE, ENFILE, ENOBUFS, ENOMEM), `paused` is 1. */
typedef void (*td_listener_error_cb)(td_listener_t *l, int err, int paused);

struct td_listener_s {
    uv_poll_t poll; /* readable: connections are waiting */
    int fd;         /* owned: the listening socket, or -1 */
    int paused;     /* accepting stopped after a limit of td's own was hit */
    int polling;    /* the poll handle was started at least once (it needs closing) */
    void *data;     /* the owner's */
    td_listener_accept_cb on_accept;
    td_listener_error_cb on_error;
};

/* Opens a socket bound to `a` with SO_REUSEADDR and SO_REUSEPORT, not listening yet. With
 * `first` (the first worker's socket) it first checks that no other socket listens there:
 * SO_REUSEPORT would otherwise share the port silently with another td. Returns the descriptor
 * (owned by the caller), or -1 with a message in err[errlen] ("cannot listen on 0.0.0.0:80:
 * Permission denied", "... address already in use"). */
int td_listener_bind(const td_addr_t *a, int first, char *err, size_t errlen);

/* Makes `fd` (from td_listener_bind; owned by `l` from then on, also on failure) listen, and
 * accepts the connections that arrive on `loop`: each goes to `on_accept`, errors to `on_error`.
 * Returns 0 or a negative errno. Whatever it returns, `l` is ended with td_listener_close. */
int td_listener_start(uv_loop_t *loop, td_listener_t *l, int fd, td_listener_accept_cb on_accept,
                      td_listener_error_cb on_error);

/* Stops accepting (the connections wait in the backlog) until td_listener_resume; the owner's
 * choice, e.g. at a connection limit. The connection being accepted, if any, is still handed on. */
void td_listener_pause(td_listener_t *l);

/* Accepting again after a pause (nothing when not paused): waiting connections are taken at
 * once, or the listener pauses again if the limit still holds. */
void td_listener_resume(td_listener_t *l);

/* Stops accepting and closes the listening socket (connections still in its backlog are reset
 * by the kernel). `l` may be freed once the loop has run its close callbacks. */
void td_listener_close(td_listener_t *l);

#endif
