/* The transport on libuv: plain TCP, or TLS over memory BIOs (td/tls.h) with libuv doing the
 * socket I/O. Writes are tried synchronously first (uv_try_write); only what the socket did not
 * take goes through uv_write, with a request allocated then (a stream holds no write request of
 * its own). TLS records are read into the loop's cipher buffer and decrypted at once into the
 * owner's buffer. */
#include "td/stream.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* td_iov_t is passed to libuv as uv_buf_t: same layout on unix, no copy. */
_Static_assert(sizeof(td_iov_t) == sizeof(uv_buf_t), "td_iov_t matches uv_buf_t");
_Static_assert(offsetof(td_iov_t, base) == offsetof(uv_buf_t, base), "td_iov_t.base");
_Static_assert(offsetof(td_iov_t, len) == offsetof(uv_buf_t, len), "td_iov_t.len");
_Static_assert((int)TD_STREAM_EOF == (int)UV_EOF, "TD_STREAM_EOF is libuv's end of file");

/* A write that could not finish at once: its request, the owner's callback (NULL for handshake
 * records and other fire-and-forget writes) and the bytes that had to be copied. */
typedef struct pending_s {
    uv_write_t req; /* first: free(req) frees it all */
    td_stream_write_cb cb;
    char data[];
} pending_t;

static void noop_close_cb(uv_handle_t *h) {
    (void)h;
}

void td_stream_loop_init(td_stream_loop_t *sl, uv_loop_t *loop) {
    sl->loop = loop;
    sl->queued = NULL;
    uv_idle_init(loop, &sl->idle);
    sl->idle.data = sl;
}

void td_stream_loop_close(td_stream_loop_t *sl) {
    if (!uv_is_closing((uv_handle_t *)&sl->idle))
        uv_close((uv_handle_t *)&sl->idle, noop_close_cb);
}

void td_stream_init(td_stream_t *s, td_stream_loop_t *sl, void *owner) {
    memset(s, 0, sizeof(*s));
    s->sl = sl;
    s->data = owner;
    uv_tcp_init(sl->loop, &s->tcp);
    s->tcp.data = s;
}

void td_stream_init_virt(td_stream_t *s, td_stream_loop_t *sl, void *owner,
                         const td_stream_virt_t *virt, void *data, int tls) {
    memset(s, 0, sizeof(*s));
    s->sl = sl;
    s->data = owner;
    s->virt = virt;
    s->virt_data = data;
    s->virt_tls = (uint8_t)(tls != 0);
}

int td_stream_alpn_h2(const td_stream_t *s) {
    return s->tls && td_tls_alpn_is_h2(s->tls);
}

int td_stream_open(td_stream_t *s, int fd) {
    int r = uv_tcp_open(&s->tcp, fd);
    if (r < 0)
        close(fd); /* not the stream's yet: nobody else would close it */
    else
        uv_tcp_nodelay(&s->tcp, 1);
    return r;
}

int td_stream_tls_accept(td_stream_t *s, td_tls_server_t *tls) {
    if (!(s->tls = calloc(1, sizeof(*s->tls))))
        return -ENOMEM;
    if (td_tls_accept(s->tls, tls) < 0)
        return -ENOMEM;
    return 0;
}

void td_stream_peer_addr(td_stream_t *s, char *ip, size_t len, int *port) {
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    ip[0] = 0;
    *port = 0;
    if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, len);
            *port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, len);
            *port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
}

void td_stream_peer_ip(td_stream_t *s, char *ip, size_t len) {
    int port;
    td_stream_peer_addr(s, ip, len, &port);
}

const char *td_stream_tls_error(const td_stream_t *s) {
    return s && s->tls ? s->tls->error : "";
}

const char *td_stream_strerror(const td_stream_t *s, int code) {
    switch (code) {
    case TD_STREAM_ETLS:
        return td_stream_tls_error(s);
    case TD_STREAM_CLOSE_NOTIFY:
        return "TLS session closed";
    default:
        return uv_strerror(code);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Writes */

static void write_cb(uv_write_t *req, int status) {
    pending_t *pw = (pending_t *)req;
    td_stream_t *s = req->data;
    td_stream_write_cb cb = pw->cb;
    free(pw);
    if (cb)
        cb(s, status);
}

/* Sends the ciphertext the TLS session has ready: synchronously when the socket takes it all,
 * else through uv_write; with cb NULL the write is fire-and-forget (handshake records).
 * Returns 0, 1 (cb will run) or a negative errno. */
static int tls_send(td_stream_t *s, td_stream_write_cb cb) {
    size_t n = td_tls_pending_out(s->tls);
    if (!n)
        return 0;
    pending_t *pw = malloc(sizeof(*pw) + n);
    if (!pw)
        return UV_ENOMEM;
    n = td_tls_take(s->tls, pw->data, n);
    uv_buf_t b = uv_buf_init(pw->data, (unsigned)n);
    int r = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
    if (r == UV_EAGAIN || r == UV_ENOSYS)
        r = 0;
    if (r < 0 || (size_t)r == n) {
        free(pw);
        return r < 0 ? r : 0;
    }
    b.base += r;
    b.len -= (unsigned)r;
    pw->req.data = s;
    pw->cb = cb;
    r = uv_write(&pw->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
    if (r < 0) {
        free(pw);
        return r;
    }
    return cb ? 1 : 0;
}

int td_stream_write(td_stream_t *s, td_iov_t *tiov, unsigned n, int volatile_first,
                    td_stream_write_cb cb) {
    uv_buf_t *iov = (uv_buf_t *)tiov;
    if (s->virt)
        return s->virt->write(s, tiov, n, cb);
    if (s->tls) {
        for (unsigned i = 0; i < n; i++)
            if (iov[i].len && td_tls_write(s->tls, iov[i].base, iov[i].len) < 0)
                return UV_EPROTO;
        return tls_send(s, cb);
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += iov[i].len;
    if (total == 0)
        return 0;
    int r = uv_try_write((uv_stream_t *)&s->tcp, iov, n);
    if (r == UV_EAGAIN || r == UV_ENOSYS)
        r = 0;
    if (r < 0)
        return r;
    if ((size_t)r == total)
        return 0;
    size_t skip = (size_t)r;
    unsigned i = 0;
    while (skip >= iov[i].len) {
        skip -= iov[i].len;
        i++;
    }
    iov[i].base += skip;
    iov[i].len -= skip;
    size_t copy = i == 0 && volatile_first ? iov[0].len : 0;
    pending_t *pw = malloc(sizeof(*pw) + copy);
    if (!pw)
        return UV_ENOMEM;
    if (copy) {
        memcpy(pw->data, iov[0].base, copy);
        iov[0].base = pw->data;
    }
    pw->req.data = s;
    pw->cb = cb;
    r = uv_write(&pw->req, (uv_stream_t *)&s->tcp, iov + i, n - i, write_cb);
    if (r < 0) {
        free(pw);
        return r;
    }
    return 1;
}

size_t td_stream_write_queued(const td_stream_t *s) {
    if (s->virt)
        return s->virt->write_queued(s);
    return uv_stream_get_write_queue_size((const uv_stream_t *)&s->tcp);
}

/* ---------------------------------------------------------------------------------------------
 * Reads */

static void loop_wake(td_stream_loop_t *sl);

/* A TLS stream being read whose session holds bytes no socket event will announce: queued for
 * the loop's idle pass. */
static void queue_if_input(td_stream_t *s) {
    if (s->tls && s->reading && !s->queued && td_tls_has_input(s->tls)) {
        s->queued = 1;
        s->queue_next = s->sl->queued;
        s->sl->queued = s;
        loop_wake(s->sl);
    }
}

static void unqueue(td_stream_t *s) {
    if (!s->queued)
        return;
    for (td_stream_t **pp = &s->sl->queued; *pp; pp = &(*pp)->queue_next)
        if (*pp == s) {
            *pp = s->queue_next;
            break;
        }
    s->queued = 0;
    s->queue_next = NULL;
}

static void poll_stop(td_stream_t *s) {
    if (s->polling) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        s->polling = 0;
    }
}

/* The client handshake failed: the owner's connect callback says why. */
static void handshake_fail(td_stream_t *s, const char *why) {
    s->handshaking = 0;
    if (why)
        snprintf(s->tls->error, sizeof(s->tls->error), "%s", why);
    td_stream_connect_cb cb = s->connect_cb;
    s->connect_cb = NULL;
    cb(s, TD_STREAM_ETLS);
}

/* Drives a client handshake, then decrypts what the session holds into the owner's buffers, as
 * long as the owner reads. */
static void tls_pump(td_stream_t *s) {
    while (!s->closing) {
        if (s->handshaking) {
            long n = td_tls_read(s->tls, NULL, 0);
            if (tls_send(s, NULL) < 0 || n < 0) {
                handshake_fail(s, n < 0 ? NULL : "write failed");
                return;
            }
            if (!td_tls_established(s->tls))
                return;
            s->handshaking = 0;
            td_stream_connect_cb cb = s->connect_cb;
            s->connect_cb = NULL;
            cb(s, 0);
            if (!s->closing && !s->reading)
                poll_stop(s);
            continue;
        }
        if (!s->reading)
            return;
        char *buf = NULL;
        size_t cap = 0;
        s->alloc_cb(s, &buf, &cap);
        if (!buf) {
            s->read_cb(s, UV_ENOMEM);
            return;
        }
        if (!cap)
            return; /* the owner's buffer is full: it reads again once it made room */
        long n = td_tls_read(s->tls, buf, cap);
        int w = tls_send(s, NULL);
        if (n < 0) {
            s->read_cb(s, n == TD_TLS_CLOSED ? TD_STREAM_CLOSE_NOTIFY : TD_STREAM_ETLS);
            return;
        }
        if (w < 0) {
            s->read_cb(s, w);
            return;
        }
        if (n == 0)
            return;
        s->read_cb(s, n);
    }
}

static void idle_cb(uv_idle_t *h) {
    td_stream_loop_t *sl = h->data;
    td_stream_t *list = sl->queued;
    sl->queued = NULL;
    /* A stream closed by an earlier one's callback is still in this list: tls_pump sees it
     * closing and does nothing; its memory lives until the loop's close phase. */
    while (list) {
        td_stream_t *s = list;
        list = s->queue_next;
        s->queued = 0;
        s->queue_next = NULL;
        tls_pump(s);
    }
    if (!sl->queued)
        uv_idle_stop(h);
}

static void loop_wake(td_stream_loop_t *sl) {
    if (!uv_is_closing((uv_handle_t *)&sl->idle))
        uv_idle_start(&sl->idle, idle_cb);
}

static void plain_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    td_stream_t *s = h->data;
    char *buf = NULL;
    size_t cap = 0;
    s->alloc_cb(s, &buf, &cap);
    *out = uv_buf_init(buf, (unsigned)(buf ? cap : 0));
}

static void plain_read_cb(uv_stream_t *u, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    td_stream_t *s = u->data;
    if (nread == 0 || s->closing)
        return;
    s->read_cb(s, (long)nread);
}

static void tls_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    td_stream_t *s = h->data;
    *out = uv_buf_init(s->sl->cipher, sizeof(s->sl->cipher));
}

static void tls_read_cb(uv_stream_t *u, ssize_t nread, const uv_buf_t *b) {
    td_stream_t *s = u->data;
    if (nread == 0 || s->closing)
        return;
    if (nread < 0) {
        if (s->handshaking)
            handshake_fail(s, "connection closed");
        else if (s->reading)
            s->read_cb(s, (long)nread);
        else
            poll_stop(s);
        return;
    }
    if (td_tls_feed(s->tls, b->base, (size_t)nread) < 0) {
        if (s->handshaking)
            handshake_fail(s, "out of memory");
        else
            s->read_cb(s, UV_ENOMEM);
        return;
    }
    tls_pump(s);
}

static void poll_start(td_stream_t *s) {
    if (s->polling)
        return;
    s->polling = 1;
    if (s->tls)
        uv_read_start((uv_stream_t *)&s->tcp, tls_alloc_cb, tls_read_cb);
    else
        uv_read_start((uv_stream_t *)&s->tcp, plain_alloc_cb, plain_read_cb);
}

void td_stream_read_start(td_stream_t *s, td_stream_alloc_cb alloc, td_stream_read_cb read) {
    s->alloc_cb = alloc;
    s->read_cb = read;
    if (s->closing || s->reading)
        return;
    s->reading = 1;
    if (s->virt) {
        s->virt->read_start(s);
        return;
    }
    poll_start(s);
    queue_if_input(s);
}

void td_stream_read_stop(td_stream_t *s) {
    if (s->closing || !s->reading)
        return;
    s->reading = 0;
    if (s->virt) {
        s->virt->read_stop(s);
        return;
    }
    if (!s->handshaking)
        poll_stop(s);
}

/* ---------------------------------------------------------------------------------------------
 * Connect and close */

static void connect_cb(uv_connect_t *req, int status) {
    td_stream_t *s = req->data;
    free(req); /* libuv calls this before the handle's close callback, also when it is closed */
    if (s->closing)
        return;
    if (status < 0 || !s->tls) {
        if (status == 0)
            uv_tcp_nodelay(&s->tcp, 1);
        td_stream_connect_cb cb = s->connect_cb;
        s->connect_cb = NULL;
        cb(s, status);
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    s->handshaking = 1;
    poll_start(s);
    tls_pump(s);
}

int td_stream_connect(td_stream_t *s, const struct sockaddr *sa, td_tls_client_t *tls,
                      td_stream_connect_cb cb) {
    if (tls && (!(s->tls = calloc(1, sizeof(*s->tls))) || td_tls_connect(s->tls, tls) < 0))
        return UV_ENOMEM;
    /* The request is allocated per connect: a stream that never connects (every client
     * connection) does not carry one. */
    uv_connect_t *req = malloc(sizeof(*req));
    if (!req)
        return UV_ENOMEM;
    req->data = s;
    s->connect_cb = cb;
    int r = uv_tcp_connect(req, &s->tcp, sa, connect_cb);
    if (r < 0)
        free(req);
    return r;
}

static void close_cb(uv_handle_t *h) {
    td_stream_t *s = h->data;
    if (s->tls) {
        td_tls_free(s->tls);
        free(s->tls);
        s->tls = NULL;
    }
    s->close_cb(s);
}

/* Before a TLS stream is closed: its close_notify goes out if the socket takes it at once. With
 * a write still queued (uv_try_write refuses then) the alert is left out rather than sent ahead
 * of the data. */
static void close_notify(td_stream_t *s) {
    char alert[256];
    if (!td_tls_shutdown(s->tls))
        return;
    size_t n = td_tls_pending_out(s->tls);
    if (!n || n > sizeof(alert))
        return;
    n = td_tls_take(s->tls, alert, n);
    uv_buf_t b = uv_buf_init(alert, (unsigned)n);
    (void)uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
}

void td_stream_close(td_stream_t *s, td_stream_close_cb cb) {
    if (s->closing)
        return;
    s->closing = 1;
    s->reading = s->polling = s->handshaking = 0;
    s->close_cb = cb;
    if (s->virt) {
        s->virt->close(s);
        return;
    }
    unqueue(s);
    if (s->tls && s->tls->ssl)
        close_notify(s);
    uv_close((uv_handle_t *)&s->tcp, close_cb);
}
