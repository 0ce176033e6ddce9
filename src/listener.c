#include "td/listener.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* 1 when some other socket already listens on the address. SO_REUSEPORT would let td share the
 * port with it silently (another td, a forgotten test run), so td refuses instead: a probe
 * bound without SO_REUSEPORT fails with EADDRINUSE then. */
static int address_taken(const td_addr_t *a) {
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, taken = 0;
    if (fd < 0)
        return 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->sa, a->salen) < 0 && errno == EADDRINUSE)
        taken = 1;
    close(fd);
    return taken;
}

int td_listener_bind(const td_addr_t *a, int first, char *err, size_t errlen) {
    if (first && address_taken(a)) {
        snprintf(err, errlen, "cannot listen on %s: address already in use", a->text);
        return -1;
    }
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)&a->sa, a->salen) < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int td_listener_start(uv_loop_t *loop, uv_tcp_t *h, int fd, void *owner, uv_connection_cb on_accept,
                      int *fd_taken) {
    uv_tcp_init(loop, h);
    h->data = owner;
    *fd_taken = 0;
    int r = uv_tcp_open(h, fd);
    if (r < 0)
        return r;
    *fd_taken = 1;
    return uv_listen((uv_stream_t *)h, 4096, on_accept);
}
