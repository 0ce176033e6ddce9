/* Upstream connections: connect (plain or TLS), the keep-alive pool per server and worker, reads
 * of response bytes, and the connect / response / pool-idle timeouts. */
#include "td/upstream.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/access_log.h"
#include "td/client.h"
#include "td/exchange.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/rewrite.h"
#include "td/router.h"
#include "td/stream.h"
#include "td/timeout.h"
#include "td/worker.h"

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
void td_upstream_timer(upstream_t *u, int which, int ms) {
    td_timeout_arm(&u->w->tq[which], &u->tmo, (int64_t)uv_now(&u->w->loop), ms);
}

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
int td_upstream_local_error(int err) {
    return err == -EMFILE || err == -ENFILE || err == -ENOMEM || err == -ENOBUFS ||
           err == -EADDRNOTAVAIL;
}

void td_upstream_write_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    u->writing = 0;
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (u->c)
            td_exchange_upstream_fail(u, td_stream_strerror(s, status), F_IO);
        else
            td_upstream_close(u);
        return;
    }
    if (u->c)
        td_exchange_request_written(u->c);
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
    if (u->c) {
        u->c->up = NULL;
        u->c = NULL;
    }
    atomic_fetch_sub_explicit(&u->st->active_connections, 1, memory_order_relaxed);
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
    u->c = NULL;
    u->len = u->off = u->fwd = 0; /* the buffer stays: the next exchange needs one at once */
    u->next = u->pool->idle;
    u->pool->idle = u;
    u->pool->num_idle++;
    td_upstream_timer(u, T_POOL, POOL_IDLE_MS);
    td_upstream_read(u, 1); /* to notice the server closing it */
}

/* Binds the upstream to the client and starts the exchange on it. */
static void upstream_attach(upstream_t *u, client_t *c) {
    u->c = c;
    c->up = u;
    u->state = U_BUSY;
    u->head_done = u->resp_done = u->tunnel = u->dechunk = u->interim = 0;
    u->body_left = 0;
    u->status = 0;
    memset(&u->chunk, 0, sizeof(u->chunk));
    /* The response timeout runs once the whole request is sent; while the body comes, the
     * client's body timeout applies (a stalled client gets 408, not the backend a 504). */
    if (c->req_done)
        td_upstream_timer(u, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    else
        td_timeout_stop(&u->tmo);
    td_upstream_read(u, 1);
    td_exchange_request_send(c);
}

/* Connected (and, to a TLS backend, the handshake done): the exchange starts. The connect
 * timeout covers the handshake too. */
static void upstream_connect_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (!u->c) {
            td_upstream_close(u);
        } else if (status == TD_STREAM_ETLS) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake: %s", td_stream_tls_error(s));
            td_exchange_upstream_fail(u, why, F_CONNECT);
        } else {
            td_exchange_upstream_fail(u, td_stream_strerror(s, status),
                          td_upstream_local_error(status) ? F_LOCAL : F_CONNECT);
        }
        return;
    }
    if (!u->c) {
        td_upstream_close(u);
        return;
    }
    upstream_attach(u, u->c);
}

/* Gets a pooled connection to the chosen server, or starts a new one. */
void td_upstream_open(client_t *c, td_snap_server_t *srv) {
    worker_t *w = c->w;
    pool_t *pool = pool_of(w, srv->st);
    if (!pool) {
        td_client_error(c, 502, "out of memory");
        return;
    }
    upstream_t *u = pool->idle;
    if (u) {
        pool->idle = u->next;
        pool->num_idle--;
        u->next = NULL;
        u->reused = 1;
        upstream_attach(u, c);
        return;
    }
    u = calloc(1, sizeof(*u));
    if (!u) {
        td_client_error(c, 502, "out of memory");
        return;
    }
    u->w = w;
    u->pool = pool;
    u->st = srv->st;
    td_stream_init(&u->io, &w->sl, u);
    atomic_fetch_add_explicit(&u->st->active_connections, 1, memory_order_relaxed);
    u->state = U_CONNECTING;
    u->c = c;
    c->up = u;
    int r = td_stream_connect(&u->io, (const struct sockaddr *)&srv->addr.sa,
                              c->snap->backends[c->backend].tls, upstream_connect_cb);
    if (r < 0) {
        td_exchange_upstream_fail(u, r == -ENOMEM ? "out of memory" : td_stream_strerror(NULL, r),
                      td_upstream_local_error(r) ? F_LOCAL : F_CONNECT);
        return;
    }
    td_upstream_timer(u, T_CONNECT, td_client_timeout_ms(c, T_CONNECT));
}

/* An upstream's deadline passed. */
void td_upstream_timeout(upstream_t *u) {
    if (u->state == U_IDLE) {
        td_upstream_close(u);
    } else if (u->state == U_CONNECTING) {
        td_exchange_upstream_fail(u, "connect timed out", F_TIMEOUT);
    } else if (u->state == U_BUSY && u->c && !u->tunnel) {
        td_exchange_upstream_fail(u, "no response in time", F_TIMEOUT);
    }
}

static void upstream_got(upstream_t *u, long nread);

static void upstream_read_cb(td_stream_t *s, long nread) {
    /* A TLS close_notify ends the response as a FIN does. */
    upstream_got(td_stream_owner(s), nread == TD_STREAM_CLOSE_NOTIFY ? TD_STREAM_EOF : nread);
}

/* nread new response bytes are at the end of u->buf (or nread is an error / TD_STREAM_EOF). */
static void upstream_got(upstream_t *u, long nread) {
    if (u->state == U_IDLE) {
        td_upstream_close(u); /* closed by the server, or bytes nobody asked for */
        return;
    }
    if (u->state != U_BUSY)
        return;
    client_t *c = u->c;
    if (nread < 0) {
        if (!c) {
            td_upstream_close(u);
        } else if (u->tunnel) {
            if (c->writing) {
                c->close_after = 1;
                td_exchange_drop_upstream(c);
            } else {
                td_client_close(c);
            }
        } else if (u->head_done && u->resp_body == TD_BODY_UNTIL_CLOSE) {
            u->resp_done = 1;
            u->resp_keep_alive = 0;
            c->keep_alive = 0;
            if (!c->writing && !u->writing)
                td_exchange_done(u);
        } else if (!c->resp_started) {
            td_exchange_upstream_fail(u, nread == TD_STREAM_EOF ? "connection closed before a response"
                                             : td_stream_strerror(&u->io, (int)nread),
                          F_IO);
        } else {
            td_exchange_upstream_fail(u, nread == TD_STREAM_EOF ? "connection closed mid-response"
                                             : td_stream_strerror(&u->io, (int)nread),
                          F_IO);
        }
        return;
    }
    if (nread == 0 || !c)
        return;
    u->len += (uint32_t)nread;
    c->resp_started = 1;
    if (!u->tunnel)
        td_upstream_timer(u, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    if (c->writing) {
        td_upstream_read(u, 0);
        td_timeout_stop(&u->tmo); /* the client send timeout runs: the response one restarts after it */
        return;
    }
    td_exchange_response_pump(u);
}
