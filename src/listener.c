#include "td/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* 1 when the kernel's table `path` (/proc/net/tcp or tcp6) has a socket in LISTEN state on
 * `port` whose address is `want` (`words` 32-bit words, as the kernel prints them: each word
 * in hex as it sits in memory) or where either side is the wildcard address; with `any_only`,
 * only a socket on the wildcard address counts. */
static int listed_listening(const char *path, const uint32_t *want, int words, unsigned port,
                            int any_only) {
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    char line[512];
    int found = 0;
    uint32_t any[4] = {0};
    int want_any = !memcmp(want, any, (size_t)words * 4);
    while (!found && fgets(line, sizeof(line), f)) {
        char addr[33];
        unsigned lport, state;
        /* "  0: 0100007F:1F90 00000000:0000 0A ..." (the heading line does not match) */
        if (sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x", addr, &lport, &state) !=
                3 ||
            lport != port || state != 0x0A || strlen(addr) != (size_t)words * 8)
            continue;
        uint32_t got[4];
        for (int i = 0; i < words; i++) {
            char word[9];
            memcpy(word, addr + i * 8, 8);
            word[8] = 0;
            got[i] = (uint32_t)strtoul(word, NULL, 16);
        }
        int got_any = !memcmp(got, any, (size_t)words * 4);
        found = any_only ? got_any : want_any || got_any || !memcmp(got, want, (size_t)words * 4);
    }
    fclose(f);
    return found;
}

/* 1 when some other socket already listens on the address. SO_REUSEPORT would let td share the
 * port with it silently (another td, a forgotten test run), so td refuses instead. Only a
 * listening socket counts: a connection in TIME-WAIT that used the port as its local port
 * (an outgoing one) does not take connections, and a bind it really blocks fails on its own
 * with the kernel's error. A probe bind cannot tell the two apart, so td looks the port up in
 * the kernel's socket tables. */
static int address_taken(const td_addr_t *a) {
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
        uint32_t want[1], any6[4] = {0};
        memcpy(want, &in->sin_addr, 4);
        /* A listener on [::] takes IPv4 connections too (unless IPV6_V6ONLY, which the table
         * does not show). */
        return listed_listening("/proc/net/tcp", want, 1, ntohs(in->sin_port), 0) ||
               listed_listening("/proc/net/tcp6", any6, 4, ntohs(in->sin_port), 1);
    }
    if (a->sa.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
        uint32_t want[4], any4[1] = {0};
        memcpy(want, &in6->sin6_addr, 16);
        /* td's own socket on [::] would take IPv4 connections too. */
        return listed_listening("/proc/net/tcp6", want, 4, ntohs(in6->sin6_port), 0) ||
               (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr) &&
                listed_listening("/proc/net/tcp", any4, 1, ntohs(in6->sin6_port), 0));
    }
    return 0;
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
