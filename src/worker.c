/* The workers: one thread and libuv loop each, with its listeners, its timeout queues (popped by
 * a 100 ms tick), its snapshot (adopted when the router publishes a new one), its client buffer
 * cache, and the stop and drain of a shutdown. Implements td/proxy.h. */
#include "td/worker.h"

#include <errno.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/access_log.h"
#include "td/client.h"
#include "td/exchange.h"
#include "td/http1.h"
#include "td/h2_server.h"
#include "td/listener.h"
#include "td/log.h"
#include "td/queue.h"
#include "td/rewrite.h"
#include "td/router.h"
#include "td/stream.h"
#include "td/timeout.h"
#include "td/h2_client.h"
#include "td/upstream.h"
#include "td/proxy.h"

int64_t td_proxy_connections(void) {
    return atomic_load(&td_client_open_count);
}

static void pool_close_idle(worker_t *w, const td_snap_backend_t *b);

/* How long the idle pooled connections of a backend drained to weight 0 stay open. */
#define POOL_DRAIN_GRACE_MS 1000

/* 1 when a backend's TLS settings (or its protocol) differ between two configs. */
static int tls_changed(const td_config_backend_t *a, const td_config_backend_t *b) {
    return a->tls != b->tls || a->tls_verify != b->tls_verify || strcmp(a->tls_ca, b->tls_ca) ||
           strcmp(a->tls_sni, b->tls_sni) || a->protocol != b->protocol;
}

/* Idle pooled connections made under TLS settings that have changed would let the old policy
 * (CA, name, plain or TLS) serve the next request: they are closed. */
static void close_stale_tls_pools(worker_t *w, const td_snapshot_t *old, const td_snapshot_t *s) {
    for (size_t i = 0; i < s->num_backends; i++) {
        int j = td_snapshot_find_backend(old, s->backends[i].name, strlen(s->backends[i].name));
        if (j >= 0 && tls_changed(&old->config->backends[j], &s->config->backends[i]))
            pool_close_idle(w, &s->backends[i]);
    }
}

void td_worker_refresh(worker_t *w) {
    if (w->snap && w->snap->version == td_router_version())
        return;
    td_snapshot_t *s = td_router_acquire();
    if (!s)
        return;
    td_snapshot_t *old = w->snap;
    w->snap = s;
    if (old)
        close_stale_tls_pools(w, old, s);
    td_snapshot_release(old);
    td_access_log_open(&w->alog, s->config->access_log);
    /* Balancer scores carry over when the shape is unchanged, so a weight change keeps the
     * interleaving smooth; otherwise they start again from zero. */
    if (w->wrr_nb != s->num_backends || w->wrr_ns != s->num_servers) {
        free(w->wrr_b);
        free(w->wrr_s);
        w->wrr_b = calloc(s->num_backends ? s->num_backends : 1, sizeof(int));
        w->wrr_s = calloc(s->num_servers ? s->num_servers : 1, sizeof(int));
        if (!w->wrr_b || !w->wrr_s)
            abort(); /* a few bytes; nothing sensible to do without them */
        w->wrr_nb = s->num_backends;
        w->wrr_ns = s->num_servers;
    }
    /* Drain: idle keep-alive connections to servers of a draining backend are closed: in state
     * drain or maint at once; at weight 0 (not a failover backup) POOL_DRAIN_GRACE_MS later, by
     * the tick (close_drained_pools). A ratio flipped back within that finds the connections
     * still open, instead of every client connection reconnecting to that backend at the same
     * moment, which delayed the first responses of the change by milliseconds. */
    for (size_t i = 0; i < s->num_backends; i++) {
        if (!td_backend_draining(s, &s->backends[i]))
            continue;
        if (s->backends[i].state != TD_BACKEND_READY)
            pool_close_idle(w, &s->backends[i]);
        else if (!w->pool_drain_due_ms)
            w->pool_drain_due_ms = td_now_ms() + POOL_DRAIN_GRACE_MS;
    }
}

/* From the tick, once a weight-0 drain may have lasted POOL_DRAIN_GRACE_MS: closes the idle
 * pooled connections of each backend that has been draining that long (drain_since_ms), and
 * sets the next due time for those drained more recently. */
static void close_drained_pools(worker_t *w, int64_t now_ms) {
    if (!w->pool_drain_due_ms || now_ms < w->pool_drain_due_ms || !w->snap)
        return;
    w->pool_drain_due_ms = 0;
    for (size_t i = 0; i < w->snap->num_backends; i++) {
        const td_snap_backend_t *b = &w->snap->backends[i];
        if (!td_backend_draining(w->snap, b))
            continue;
        int64_t since = atomic_load_explicit(&b->st->drain_since_ms, memory_order_relaxed);
        if (!since || now_ms - since >= POOL_DRAIN_GRACE_MS)
            pool_close_idle(w, b);
        else if (!w->pool_drain_due_ms || since + POOL_DRAIN_GRACE_MS < w->pool_drain_due_ms)
            w->pool_drain_due_ms = since + POOL_DRAIN_GRACE_MS;
    }
}

static void pool_close_idle(worker_t *w, const td_snap_backend_t *b) {
    for (size_t j = 0; j < b->num_servers; j++)
        for (pool_t *p = w->pools; p; p = p->next)
            if (p->key == b->servers[j].st) {
                while (p->idle)
                    td_upstream_close(p->idle);
                td_h2_client_pool_close(p, 0);
            }
}

/* Logs a local resource error at most LOCAL_ERR_BURST times a second per worker (under fd
 * exhaustion every request would log one); the tick writes the count of those not logged. */
void td_worker_local_error_log(worker_t *w, const char *what) {
    td_log_local_error(&w->local_err_rl, LOCAL_ERR_BURST, what);
}

/* accept failed. A limit of td's own (descriptors, memory) paused the listener: the connections
 * wait in the kernel's backlog until the next tick resumes it. */
static void on_accept_error(td_listener_t *l, int err, int paused) {
    worker_t *w = l->data;
    if (paused) {
        char what[100];
        snprintf(what, sizeof(what), "accept: %s (accepting paused for %d ms)", uv_strerror(err),
                 TICK_MS);
        td_worker_local_error_log(w, what);
    } else {
        td_warn("accept: %s", uv_strerror(err));
    }
}

/* The most client connections td keeps open at once, from its open-files limit: each may need
 * an upstream connection too, and some descriptors are kept for the listeners, the admin API,
 * health checks and logs (HAProxy derives its maxconn the same way). Beyond it the listeners
 * pause: new connections wait in the kernel's backlog instead of being accepted only to get a
 * 503 for want of a descriptor for their upstream connection. */
static int64_t max_clients = INT64_MAX;

static void set_max_clients(const td_config_t *cfg) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    size_t servers = 0;
    for (size_t i = 0; i < cfg->num_backends; i++)
        servers += cfg->backends[i].num_servers;
    int64_t reserve = 64 + (int64_t)(cfg->workers * (cfg->num_listeners + 8) + servers);
    int64_t n = ((int64_t)rl.rlim_cur - reserve) / 2;
    max_clients = n > 16 ? n : 16;
}

static int at_client_limit(void) {
    return atomic_load_explicit(&td_client_open_count, memory_order_relaxed) >= max_clients;
}

/* A random number for max_connection_age's jitter: a per-thread xorshift64* seeded from the
 * kernel (or the clock and the thread's address), so td processes started together, or a new
 * one after an upgrade, draw different sequences. */
static uint64_t age_jitter(void) {
    static _Thread_local uint64_t x;
    if (!x && getrandom(&x, sizeof(x), GRND_NONBLOCK) != (ssize_t)sizeof(x))
        x = (uint64_t)td_now_ms() ^ (uint64_t)(uintptr_t)&x;
    if (!x)
        x = 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545F4914F6CDD1DULL;
}

static void on_accept(td_listener_t *l, int fd) {
    worker_t *w = l->data;
    if (at_client_limit()) {
        td_listener_pause(l);
        if (!w->limit_logged_ms || td_now_ms() - w->limit_logged_ms >= 10000) {
            td_warn("%lld client connections open, the most the open-files limit allows: new "
                    "connections wait until some close (raise `ulimit -n` / LimitNOFILE)",
                    (long long)max_clients);
            w->limit_logged_ms = td_now_ms();
        }
    }
    client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return;
    }
    c->w = w;
    c->cbs = &td_exchange_client_cbs;
    td_stream_init(&c->io, &w->sl, c);
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    atomic_fetch_add(&td_client_open_count, 1);
    if (td_stream_open(&c->io, fd) < 0) {
        td_client_close(c);
        return;
    }
    c->listener = (uint8_t)(l - w->listeners);
    td_worker_refresh(w);
    const td_config_t *cfg = w->snap ? w->snap->config : NULL;
    int age = cfg && c->listener < cfg->num_listeners
                  ? cfg->listeners[c->listener].max_connection_age_ms
                  : 0;
    /* Up to 10 % more, at random: connections opened together (a fleet of clients started at
     * once, or reconnecting after a restart) do not all end together again. */
    if (age > 0)
        c->old_at_ms = td_now_ms() + age + (int64_t)(age_jitter() % (uint64_t)(age / 10 + 1));
    td_tls_server_t *tls = w->snap ? w->snap->listener_tls[c->listener] : NULL;
    if (tls && td_stream_tls_accept(&c->io, tls) < 0) {
        td_client_close(c);
        return;
    }
    int port;
    td_stream_peer_addr(&c->io, c->ip, sizeof(c->ip), &port);
    c->port = (uint16_t)port;
    td_client_timer(c, T_HEADER);
    td_client_read(c, 1);
}

static void noop_close_cb(uv_handle_t *h) {
    (void)h;
}

/* 1 when the backend of these counters is in maint in `s`: it takes no traffic, so its tunnels
 * do not wait for drain_ms. */
static int tunnel_in_maint(const td_snapshot_t *s, const td_backend_stats_t *st) {
    for (size_t i = 0; i < s->num_backends; i++)
        if (s->backends[i].st == st)
            return s->backends[i].state == TD_BACKEND_MAINT;
    return 0;
}

/* Every TICK_MS: client deadlines. Once a second also: take a new snapshot even without
 * traffic (so idle pools of drained backends close), and close the tunnels of backends drained
 * for longer than drain_ms (in maint: at once). */
static void tick_cb(uv_timer_t *timer) {
    worker_t *w = timer->data;
    int64_t now_loop = (int64_t)uv_now(&w->loop);
    td_timeout_t *t;
    /* Upstream timeouts first: a response timeout that passed answers 504 before the client's
     * own deadlines are looked at. */
    static const uint8_t upstream_kinds[] = {T_CONNECT, T_RESPONSE, T_POOL};
    for (size_t k = 0; k < sizeof(upstream_kinds); k++)
        while ((t = td_timeout_expired(&w->tq[upstream_kinds[k]], now_loop)))
            td_upstream_timeout(TD_CONTAINER_OF(t, upstream_t, tmo)); /* may close its client */
    while ((t = td_timeout_expired(&w->tq[T_SEND], now_loop)))
        td_client_send_timeout(TD_CONTAINER_OF(t, client_t, send_tmo), now_loop);
    while ((t = td_timeout_expired(&w->tq[T_QUEUE], now_loop)))
        td_exchange_queue_timeout(TD_CONTAINER_OF(t, client_t, tmo));
    /* A wake-up lost in a race with a queueing worker costs one tick, no more. */
    if (w->queue.count)
        td_exchange_queue_run(w);
    static const uint8_t client_kinds[] = {T_HEADER, T_KEEPALIVE};
    for (size_t k = 0; k < sizeof(client_kinds); k++)
        while ((t = td_timeout_expired(&w->tq[client_kinds[k]], now_loop)))
            td_client_timeout(TD_CONTAINER_OF(t, client_t, tmo));
    int64_t now_ms = td_now_ms();
    td_client_log_flush(w, now_ms);
    td_access_log_adopt(&w->alog); /* an idle worker lets go of a rotated file too */
    td_log_local_error_flush(&w->local_err_rl, now_ms);
    close_drained_pools(w, now_ms);
    if (!w->stopping && !at_client_limit())
        for (size_t i = 0; i < w->num_listeners; i++)
            td_listener_resume(&w->listeners[i]);
    if (++w->ticks % (1000 / TICK_MS))
        return;
    td_worker_refresh(w);
    if (!w->snap)
        return;
    int64_t now = td_now_ms(), drain_ms = w->snap->config->timeouts.drain_ms;
    for (td_exchange_t *x = w->tunnels, *next; x; x = next) {
        next = x->tun_next;
        int64_t since = atomic_load_explicit(&x->b_tunnel->drain_since_ms, memory_order_relaxed);
        int maint = tunnel_in_maint(w->snap, x->b_tunnel);
        if (maint || (since && now - since >= drain_ms)) {
            td_info("drain: closing a tunnel of %s from %s %s", x->b_tunnel->name, x->down->ip,
                    maint ? "(state maint)" : "after drain_ms");
            td_client_close(x->down);
        }
    }
}

/* During a stop, a client connection with no request under way and nothing unread (not in the
 * kernel, not decrypted) closes once it has stayed so for DRAIN_IDLE_MS. Closing it the moment it
 * is seen idle would race with a request the client is sending right then on its keep-alive
 * connection (or the first one, on a connection just accepted): that request would fail. One that
 * comes meanwhile is answered, with Connection: close. */
#define DRAIN_IDLE_MS 1000

static int client_idle(client_t *c) {
    /* An HTTP/2 stream's client is its connection's to end (GOAWAY lets it finish). */
    if (c->state != C_HEAD || c->len != 0 || c->writing || c->io.queued || c->io.virt)
        return 0;
    uv_os_fd_t fd;
    int unread = 0;
    if (uv_fileno((const uv_handle_t *)&c->io.tcp, &fd) == 0 && ioctl(fd, FIONREAD, &unread) == 0 &&
        unread > 0)
        return 0;
    return 1;
}

static void close_idle_clients(worker_t *w, int64_t now) {
    for (client_t *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (!client_idle(c))
            c->idle_seen_ms = 0;
        else if (!c->idle_seen_ms)
            c->idle_seen_ms = now;
        else if (now - c->idle_seen_ms >= DRAIN_IDLE_MS)
            td_client_close(c);
    }
}

/* Every 50 ms during a stop: done when no client is left; at the deadline, closes what is. */
static void drain_cb(uv_timer_t *t) {
    worker_t *w = t->data;
    w->drain_ms -= 50;
    close_idle_clients(w, td_now_ms());
    if (w->queue.count) /* the tick is gone: queued requests still get their turn */
        td_exchange_queue_run(w);
    if (w->drain_ms <= 0)
        while (w->clients)
            td_client_close(w->clients);
    if (!w->clients) {
        for (pool_t *p = w->pools; p; p = p->next) {
            while (p->idle)
                td_upstream_close(p->idle);
            td_h2_client_pool_close(p, 1);
        }
        uv_close((uv_handle_t *)t, noop_close_cb);
        uv_close((uv_handle_t *)&w->qwake, noop_close_cb);
        td_stream_loop_close(&w->sl);
    }
}

static void wake_cb(uv_async_t *a) {
    worker_t *w = a->data;
    w->stopping = 1;
    for (size_t i = 0; i < w->num_listeners; i++)
        td_listener_close(&w->listeners[i]);
    uv_close((uv_handle_t *)a, noop_close_cb);
    uv_close((uv_handle_t *)&w->tick, noop_close_cb);
    /* Idle keep-alive clients go once they have stayed idle a while; busy ones close when
     * their exchange ends; an HTTP/2 connection gets GOAWAY, and its streams in flight finish. */
    close_idle_clients(w, td_now_ms());
    for (client_t *c = w->clients; c; c = c->next)
        if (c->state == C_H2)
            td_h2_shutdown(c);
    for (pool_t *p = w->pools; p; p = p->next) {
        while (p->idle)
            td_upstream_close(p->idle);
        td_h2_client_pool_close(p, 0);
    }
    uv_timer_init(&w->loop, &w->drain);
    w->drain.data = w;
    uv_timer_start(&w->drain, drain_cb, 0, 50);
}

static void worker_main(void *arg) {
    worker_t *w = arg;
    /* The access log is open before the first connection: a file renamed or removed early on
     * (logrotate) must not leave a worker that has not served yet without a log. */
    td_worker_refresh(w);
    for (size_t i = 0; i < w->num_listeners; i++) {
        w->listeners[i].data = w;
        int r = td_listener_start(&w->loop, &w->listeners[i], w->listen_fds[i], on_accept,
                                  on_accept_error);
        w->listen_fds[i] = -1;
        if (r < 0)
            td_error("worker: listen: %s", uv_strerror(r));
    }
    td_stream_loop_init(&w->sl, &w->loop);
    for (int k = 0; k < T_KINDS; k++)
        td_timeout_queue_init(&w->tq[k]);
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, tick_cb, TICK_MS, TICK_MS);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    td_snapshot_release(w->snap);
    w->snap = NULL;
}

/* worker_t.queue_wake: a max_conns slot freed while requests wait for its backend, maybe in
 * another worker: each worker runs its queue heads on its own loop. A worker that has stopped
 * gets a harmless signal (its handle and loop stay until every worker has joined). */
static void queue_wake(worker_t *w) {
    for (size_t i = 0; i < w->num_peers; i++)
        uv_async_send(&w->peers[i].qwake);
}

static void qwake_cb(uv_async_t *a) {
    worker_t *w = a->data;
    if (w->queue.count)
        td_exchange_queue_run(w);
}

/* worker_t.snapshot: what an exchange calls before it routes a request. */
static td_snapshot_t *worker_snapshot(worker_t *w) {
    td_worker_refresh(w);
    return w->snap;
}

td_proxy_t *td_proxy_start(const td_config_t *cfg, char *err, size_t errlen) {
    return td_proxy_start_adopt(cfg, NULL, NULL, err, errlen);
}

td_proxy_t *td_proxy_start_adopt(const td_config_t *cfg, td_proxy_adopt_fn *adopt, void *arg,
                                 char *err, size_t errlen) {
    td_proxy_t *p = calloc(1, sizeof(*p));
    if (!p)
        goto nomem;
    p->num_workers = (size_t)cfg->workers;
    set_max_clients(cfg);
    p->workers = calloc(p->num_workers, sizeof(worker_t));
    if (!p->workers)
        goto nomem;
    for (size_t i = 0; i < p->num_workers; i++) {
        worker_t *w = &p->workers[i];
        w->snapshot = worker_snapshot;
        w->queue_wake = queue_wake;
        w->peers = p->workers;
        w->num_peers = p->num_workers;
        td_access_log_init(&w->alog);
        w->num_listeners = cfg->num_listeners;
        w->listeners = calloc(cfg->num_listeners, sizeof(td_listener_t));
        w->listen_fds = calloc(cfg->num_listeners, sizeof(int));
        if (!w->listeners || !w->listen_fds)
            goto nomem;
        for (size_t j = 0; j < cfg->num_listeners; j++)
            w->listen_fds[j] = -1;
        for (size_t j = 0; j < cfg->num_listeners; j++) {
            int fd = adopt ? adopt(j, i, arg) : -1;
            if (fd >= 0) {
                w->listen_fds[j] = fd;
                continue;
            }
            /* A socket added to a group handed over joins it: the address is ours already. */
            int first = i == 0 && !(adopt && adopt(j, SIZE_MAX, arg) >= 0);
            w->listen_fds[j] = td_listener_bind(&cfg->listeners[j].address, first, err, errlen);
            if (w->listen_fds[j] < 0)
                goto fail;
        }
    }
    /* All sockets are bound: only now can nothing fail half-way through starting threads. */
    for (size_t i = 0; i < p->num_workers; i++) {
        worker_t *w = &p->workers[i];
        uv_loop_init(&w->loop);
        uv_async_init(&w->loop, &w->wake, wake_cb);
        w->wake.data = w;
        uv_async_init(&w->loop, &w->qwake, qwake_cb);
        w->qwake.data = w;
    }
    /* Every queue_wake handle is ready before the first worker can signal one. */
    for (size_t i = 0; i < p->num_workers; i++)
        uv_thread_create(&p->workers[i].thread, worker_main, &p->workers[i]);
    return p;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    if (p && p->workers) {
        for (size_t i = 0; i < p->num_workers; i++) {
            worker_t *w = &p->workers[i];
            for (size_t j = 0; w->listen_fds && j < w->num_listeners; j++)
                if (w->listen_fds[j] >= 0)
                    close(w->listen_fds[j]);
            free(w->listeners);
            free(w->listen_fds);
        }
        free(p->workers);
    }
    free(p);
    return NULL;
}

size_t td_proxy_listen_fds(const td_proxy_t *p, size_t listener, int *fds, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < p->num_workers && n < cap; i++) {
        const worker_t *w = &p->workers[i];
        if (listener < w->num_listeners && w->listeners[listener].fd >= 0)
            fds[n++] = w->listeners[listener].fd;
    }
    return n;
}

void td_proxy_stop(td_proxy_t *p, int drain_ms) {
    if (!p)
        return;
    for (size_t i = 0; i < p->num_workers; i++) {
        p->workers[i].drain_ms = drain_ms;
        uv_async_send(&p->workers[i].wake);
    }
    /* Every thread joins before any loop closes: a worker still draining may signal another's
     * queue (queue_wake) until it is done. */
    for (size_t i = 0; i < p->num_workers; i++)
        uv_thread_join(&p->workers[i].thread);
    for (size_t i = 0; i < p->num_workers; i++) {
        worker_t *w = &p->workers[i];
        uv_loop_close(&w->loop);
        td_queue_free(&w->queue);
        for (pool_t *pl = w->pools, *next; pl; pl = next) {
            next = pl->next;
            free(pl);
        }
        free(w->wrr_b);
        free(w->wrr_s);
        while (w->num_cached)
            free(w->buf_cache[--w->num_cached]);
        while (w->num_ex_cached)
            free(w->ex_cache[--w->num_ex_cached]);
        free(w->listeners);
        free(w->listen_fds);
    }
    free(p->workers);
    free(p);
}
