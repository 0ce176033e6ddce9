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

/* Connections accepted per readable event before the loop looks at its other handles: a flood
 * of new connections must not starve the ones already open. */
#define ACCEPT_BATCH 64

static int own_limit(int err) {
    return err == -EMFILE || err == -ENFILE || err == -ENOBUFS || err == -ENOMEM;
}

static void poll_cb(uv_poll_t *h, int status, int events) {
    td_listener_t *l = h->data;
    (void)events;
    if (status < 0) {
        l->on_error(l, status, 0);
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && !l->paused && l->fd >= 0; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            l->on_accept(l, fd);
            continue;
        }
        int err = -errno;
        if (err == -EAGAIN || err == -EWOULDBLOCK)
            return;
        if (err == -EINTR || err == -ECONNABORTED || err == -EPROTO)
            continue; /* that connection is gone; the next may be there */
        if (own_limit(err)) {
            l->paused = 1;
            uv_poll_stop(&l->poll);
        }
        l->on_error(l, err, l->paused);
        return;
    }
}

int td_listener_start(uv_loop_t *loop, td_listener_t *l, int fd, td_listener_accept_cb on_accept,
                      td_listener_error_cb on_error) {
    l->fd = fd;
    l->paused = 0;
    l->on_accept = on_accept;
    l->on_error = on_error;
    if (listen(fd, 4096) < 0)
        return -errno;
    int r = uv_poll_init_socket(loop, &l->poll, fd);
    if (r < 0)
        return r;
    l->poll.data = l;
    l->polling = 1;
    return uv_poll_start(&l->poll, UV_READABLE, poll_cb);
}

void td_listener_pause(td_listener_t *l) {
    if (l->paused || l->fd < 0)
        return;
    l->paused = 1;
    uv_poll_stop(&l->poll);
}

void td_listener_resume(td_listener_t *l) {
    if (!l->paused || l->fd < 0)
        return;
    l->paused = 0;
    if (uv_poll_start(&l->poll, UV_READABLE, poll_cb) == 0)
        poll_cb(&l->poll, 0, UV_READABLE); /* what waited meanwhile, without waiting for epoll */
}

static void close_cb(uv_handle_t *h) {
    (void)h;
}

void td_listener_close(td_listener_t *l) {
    if (l->polling && !uv_is_closing((uv_handle_t *)&l->poll))
        uv_close((uv_handle_t *)&l->poll, close_cb);
    l->polling = 0;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
}
