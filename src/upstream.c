/* Upstream connections: connect (plain or TLS), the keep-alive pool per server and worker, reads
 * of response bytes, and the connect / response / pool-idle timeouts. */
#include "td/upstream.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/h2_client.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/stream.h"
#include "td/timeout.h"

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
void td_upstream_timer(upstream_t *u, int which, int ms) {
    td_timeout_arm(&u->w->tq[which], &u->tmo, td_stream_now(&u->w->sl), ms);
}

void td_upstream_timer_stop(upstream_t *u) {
    td_timeout_stop(&u->tmo);
}

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
int td_upstream_local_error(int err) {
    return err == -EMFILE || err == -ENFILE || err == -ENOMEM || err == -ENOBUFS ||
           err == -EADDRNOTAVAIL;
}

const char *td_upstream_strerror(const upstream_t *u, int code) {
    return td_stream_strerror(&u->io, code);
}

static void upstream_write_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    u->writing = 0;
    if (u->state == U_CLOSING)
        return;
    if (!u->owner) {
        if (status < 0)
            td_upstream_close(u);
        return;
    }
    if (status < 0)
        u->cbs->on_error(u, td_stream_strerror(s, status), F_IO);
    else
        u->cbs->on_written(u);
}

int td_upstream_write(upstream_t *u, td_iov_t *iov, unsigned n, int volatile_first) {
    int r = td_stream_write(&u->io, iov, n, volatile_first, upstream_write_cb);
    if (r == 1)
        u->writing = 1;
    return r;
}

static void upstream_free_cb(td_stream_t *s) {
    upstream_t *u = td_stream_owner(s);
    free(u->buf);
    free(u);
}

static void pool_remove(upstream_t *u) {
    if (!u->pool)
        return;
    for (upstream_t **pp = &u->pool->idle; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            u->pool->num_idle--;
            break;
        }
    u->next = NULL;
}

void td_upstream_close(upstream_t *u) {
    if (u->state == U_CLOSING)
        return;
    if (u->state == U_IDLE)
        pool_remove(u);
    u->state = U_CLOSING;
    u->owner = NULL;
    td_registry_connection_close(u->st);
    td_timeout_stop(&u->tmo);
    td_stream_close(&u->io, upstream_free_cb);
}

static pool_t *pool_of(worker_t *w, td_server_stats_t *st) {
    for (pool_t *p = w->pools; p; p = p->next)
        if (p->key == st)
            return p;
    pool_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->key = st;
    p->next = w->pools;
    w->pools = p;
    return p;
}

static void upstream_alloc_cb(td_stream_t *s, char **buf, size_t *cap) {
    upstream_t *u = td_stream_owner(s);
    if (!u->buf && !(u->buf = malloc(UBUF_SIZE)))
        return;
    *buf = u->buf + u->len;
    *cap = UBUF_SIZE - u->len;
}

static void upstream_read_cb(td_stream_t *s, long nread);

void td_upstream_read(upstream_t *u, int on) {
    if (u->state == U_CLOSING)
        return;
    if (on)
        td_stream_read_start(&u->io, upstream_alloc_cb, upstream_read_cb);
    else
        td_stream_read_stop(&u->io);
}

/* Parks an upstream connection whose exchange ended cleanly in its server's pool. */
void td_upstream_pool_put(upstream_t *u) {
    if (u->pool->num_idle >= POOL_MAX_IDLE) {
        td_upstream_close(u);
        return;
    }
    u->state = U_IDLE;
    u->owner = NULL;
    u->len = u->off = u->fwd = 0; /* the buffer stays: the next exchange needs one at once */
    u->next = u->pool->idle;
    u->pool->idle = u;
    u->pool->num_idle++;
    td_upstream_timer(u, T_POOL, POOL_IDLE_MS);
    td_upstream_read(u, 1); /* to notice the server closing it */
}

/* Connected (and, to a TLS backend, the handshake done): the exchange starts. The connect
 * timeout covers the handshake too. */
static void upstream_connect_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    if (u->state == U_CLOSING)
        return;
    if (!u->owner) {
        td_upstream_close(u);
        return;
    }
    if (status < 0) {
        if (status == TD_STREAM_ETLS) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake: %s", td_stream_tls_error(s));
            u->cbs->on_error(u, why, F_CONNECT);
        } else {
            u->cbs->on_error(u, td_stream_strerror(s, status),
                             td_upstream_local_error(status) ? F_LOCAL : F_CONNECT);
        }
        return;
    }
    u->state = U_BUSY;
    u->cbs->on_ready(u);
}

int td_upstream_open(worker_t *w, td_snap_server_t *srv, td_tls_client_t *tls, int connect_ms,
                     td_exchange_t *owner, const td_upstream_cbs_t *cbs, upstream_t **out) {
    *out = NULL;
    pool_t *pool = pool_of(w, srv->st);
    if (!pool)
        return -ENOMEM;
    if (srv->h2)
        return td_h2_client_open(w, pool, srv, tls, connect_ms, owner, cbs, out);
    upstream_t *u = pool->idle;
    if (u) {
        pool->idle = u->next;
        pool->num_idle--;
        u->next = NULL;
        u->reused = 1;
        u->owner = owner;
        u->cbs = cbs;
        u->state = U_BUSY;
        *out = u;
        return 1;
    }
    u = calloc(1, sizeof(*u));
    if (!u)
        return -ENOMEM;
    u->w = w;
    u->pool = pool;
    u->st = srv->st;
    td_stream_init(&u->io, &w->sl, u);
    td_registry_connection_open(u->st);
    u->state = U_CONNECTING;
    u->owner = owner;
    u->cbs = cbs;
    *out = u;
    int r =
        td_stream_connect(&u->io, (const struct sockaddr *)&srv->addr.sa, tls, upstream_connect_cb);
    if (r < 0)
        return r;
    td_upstream_timer(u, T_CONNECT, connect_ms);
    return 0;
}

void td_upstream_timeout(upstream_t *u) {
    if (u->state == U_IDLE)
        td_upstream_close(u);
    else if (u->state == U_CONNECTING)
        u->cbs->on_error(u, "connect timed out", F_TIMEOUT);
    else if (u->state == U_BUSY && u->owner)
        u->cbs->on_error(u, "no response in time", F_TIMEOUT);
}

static void upstream_read_cb(td_stream_t *s, long nread) {
    upstream_t *u = td_stream_owner(s);
    if (u->state == U_IDLE) {
        td_upstream_close(u); /* closed by the server, or bytes nobody asked for */
        return;
    }
    if (u->state != U_BUSY)
        return;
    if (!u->owner) {
        if (nread < 0)
            td_upstream_close(u);
        return;
    }
    if (nread > 0)
        u->len += (uint32_t)nread;
    /* A TLS close_notify ends the response as a FIN does. */
    u->cbs->on_data(u, nread == TD_STREAM_CLOSE_NOTIFY ? TD_STREAM_EOF : nread);
}
