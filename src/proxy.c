/* The proxy's workers and connections.
 *
 * Each worker thread runs its own libuv loop with its own SO_REUSEPORT listeners, its own
 * keep-alive pools of upstream connections and its own balancer scores. A client connection goes
 * through these states:
 *
 *   HEAD ──parsed──▶ EXCHANGE ──response done, keep-alive──▶ HEAD (next, possibly pipelined)
 *                       │  └──101 Switching Protocols──▶ TUNNEL
 *                       └──error──▶ error response, or close
 *
 * During an exchange the client is bound to one upstream connection. Bytes flow through one read
 * buffer per side and at most one write per side is outstanding: while a write is pending, the
 * side that produced the bytes is not read (backpressure), so a connection never holds more than
 * its buffers however slow the peer. Writes go through the transport (td/stream.h), which tries
 * them synchronously first; only a partial write waits, with the bytes left pinned in their read
 * buffer.
 *
 * Objects are freed only in their close callbacks, never inside their own read/write callbacks. */
#include "td/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "td/access_log.h"
#include "td/http1.h"
#include "td/rewrite.h"
#include "td/listener.h"
#include "td/log.h"
#include "td/router.h"
#include "td/sticky.h"
#include "td/stream.h"
#include "td/timeout.h"
#include "td/tls.h"

#define CBUF_SIZE (16 * 1024) /* client read buffer: the largest request head, then body pieces */
#define UBUF_SIZE (64 * 1024) /* upstream read buffer: response head, then body pieces */
#define MAX_HDRS 100
#define MAX_TRIES 6           /* upstream attempts per request */
#define POOL_IDLE_MS 60000    /* idle pooled upstream connections are closed after this */
#define POOL_MAX_IDLE 256     /* idle connections kept per server and worker */
#define MAX_SPANS 64
#define TICK_MS 100           /* granularity of client timeouts */
#define MAX_INTERIM 16        /* 1xx responses passed on before a final one; more is a 502 */

/* Kinds of timeouts; each has a queue per worker (td/timeout.h). T_HEADER also times the
 * request body (between two reads), T_POOL is POOL_IDLE_MS. */
enum { T_HEADER, T_KEEPALIVE, T_CONNECT, T_RESPONSE, T_SEND, T_POOL, T_KINDS };

typedef struct worker_s worker_t;
typedef struct client_s client_t;
typedef struct upstream_s upstream_t;

/* Idle keep-alive connections to one server, in one worker. Keyed by the server's registry
 * object, which outlives reloads, so pools survive them. */
typedef struct pool_s {
    td_server_stats_t *key; /* borrowed */
    upstream_t *idle;       /* most recently used first */
    int num_idle;
    struct pool_s *next;
} pool_t;

struct td_proxy_s {
    worker_t *workers; /* owned */
    size_t num_workers;
};

struct worker_s {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake;  /* stop request from the main thread */
    uv_timer_t drain; /* force-close deadline after a stop */
    uv_timer_t tick;  /* every TICK_MS: client deadlines; each second: drained tunnels */
    unsigned ticks;
    int drain_ms;
    uv_tcp_t *listeners; /* owned */
    int *listen_fds;     /* owned; -1 once handed to a uv_tcp_t */
    size_t num_listeners;
    int stopping;
    td_access_log_t alog;
    td_snapshot_t *snap; /* one reference held by the worker */
    int *wrr_b, *wrr_s;  /* owned: balancer scores per backend / per flat server index */
    size_t wrr_nb, wrr_ns;
    pool_t *pools;        /* owned */
    client_t *clients;    /* every open client connection (for a stop) */
    client_t *tunnels;    /* the clients in a tunnel counted for a backend (for its drain) */
    char *buf_cache[64];      /* owned: free client buffers, reused instead of malloc/free */
    int num_cached;
    int64_t local_err_ms;     /* when a local resource error was last logged ... */
    unsigned local_err_quiet; /* ... and how many were not logged since */
    td_stream_loop_t sl;      /* the transport's per-loop state (TLS buffer and queue) */
    td_timeout_queue_t tq[T_KINDS]; /* armed timeouts by kind */
    td_http1_header_t hdrs[MAX_HDRS];
    const td_http1_request_t *parsed; /* the request start_request parsed into hdrs ... */
    const client_t *parsed_for;       /* ... for this client, while it routes it; else NULL */
    char scratch[CBUF_SIZE + 2048]; /* response/request heads are built here */
};

enum { C_HEAD, C_EXCHANGE, C_TUNNEL, C_CLOSING };
enum { U_CONNECTING, U_BUSY, U_IDLE, U_CLOSING };

struct client_s {
    td_stream_t io;     /* the connection to the client (plain or TLS) */
    worker_t *w;
    client_t *prev, *next;
    upstream_t *up;     /* the upstream of the current exchange, or NULL */
    char *buf;          /* owned: request bytes; NULL while idle */
    uint32_t cap;       /* size of buf: CBUF_SIZE, or more while a request body is buffered */
    uint32_t len;       /* bytes in buf */
    uint32_t head_len;  /* length of the current request's head */
    uint32_t req_end;   /* end in buf of the bytes known to belong to the current request */
    uint32_t fwd;       /* bytes of buf already written to the upstream */
    uint64_t body_left; /* Content-Length bytes not yet seen */
    td_http1_chunked_t chunk;
    td_timeout_t tmo;      /* the head / keep-alive / body timeout, when armed */
    td_timeout_t send_tmo; /* the timeout of a pending write to the client, when armed */
    size_t send_left;      /* bytes of that write not taken by the client at the last look */
    td_snapshot_t *snap; /* a reference, held during an exchange */
    int backend, server; /* indices in snap */
    int pinned;          /* backend named by a valid sticky cookie, or -1 */
    int forced;          /* backend named by a valid preview header, or -1 */
    int status;          /* status of the response sent, for the logs */
    uint64_t bytes_out;  /* response bytes written to the client in this exchange */
    char *path;          /* owned: request-target, kept only while the access log is on */
    td_server_stats_t *st_inflight;  /* borrowed: server whose in_flight this request holds */
    td_backend_stats_t *b_inflight;  /* borrowed: backend whose in_flight this request holds */
    td_backend_stats_t *b_tunnel;    /* borrowed: backend whose tunnel count this one holds */
    client_t *tun_prev, *tun_next;   /* in w->tunnels while b_tunnel is set */
    int tries;
    int sticky_set;      /* backend index to pin with Set-Cookie in the response, or -1 */
    uint32_t tried[MAX_TRIES]; /* flat server indices tried for this request */
    uint8_t ntried;            /* entries used in tried */
    int64_t started_ms;
    uint8_t state;
    uint8_t writing;     /* a write to this client is pending */
    uint8_t req_body;    /* td_http1_body_t of the request */
    uint8_t req_done;    /* the whole request has been read */
    uint8_t discarded;   /* request bytes were dropped from buf after sending: no replay */
    uint8_t head_sent;   /* the rewritten head went to the current upstream */
    uint8_t eof;         /* the client half-closed: answer what was read, then close */
    uint8_t body_sent;   /* request-body bytes went to the current upstream */
    uint8_t keep_alive, head_req, upgrade, minor, expect, idempotent;
    uint8_t resp_started; /* a response byte came from the upstream */
    uint8_t resp_sent;    /* a response head was written to the client */
    uint8_t close_after;  /* close once the pending write completes */
    uint8_t buffering;    /* the body is read into buf before a backend is chosen */
    uint8_t continued;    /* td answered Expect: 100-continue itself: Expect is not forwarded */
    uint8_t continue_out; /* that 100 Continue is the pending write */
    char ip[INET6_ADDRSTRLEN];
    char method[16];
    char *last_error;    /* owned: why the last upstream try failed, for the 502 line */
    uint8_t listener;    /* index of the listener it came in on */
    uint8_t processing;  /* client_process is running for it (further up the stack) */
    uint8_t more;        /* an exchange ended meanwhile: client_process takes the next request */
};

struct upstream_s {
    td_stream_t io;        /* the connection to the server (plain or TLS) */
    worker_t *w;
    pool_t *pool;          /* borrowed */
    td_server_stats_t *st; /* borrowed (registry) */
    client_t *c;           /* the client of the current exchange, or NULL */
    upstream_t *next;      /* pool list */
    char *buf;             /* owned */
    uint32_t len, off;     /* bytes in buf; bytes consumed */
    uint32_t fwd;          /* bytes of buf pinned by the pending write to the client */
    uint64_t body_left;
    td_http1_chunked_t chunk;
    int status;
    uint8_t state, reused, writing;
    td_timeout_t tmo;      /* the connect / response / pool-idle timeout, when armed */
    uint8_t head_done, resp_body, resp_keep_alive, resp_done, dechunk, tunnel;
    uint8_t interim;       /* 1xx responses seen in this exchange */
};

static _Atomic int64_t open_clients;

int64_t td_proxy_connections(void) {
    return atomic_load(&open_clients);
}

static td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

/* ---------------------------------------------------------------------------------------------
 * Small helpers */

static void client_close(client_t *c);
static void upstream_close(upstream_t *u);
static void client_next(client_t *c);
static void client_process(client_t *c);
static void start_request(client_t *c);
static void response_pump(upstream_t *u);
static void pick_and_connect(client_t *c);
static void client_error(client_t *c, int status, const char *why);

/* The servers a request has tried: few (at most MAX_TRIES), so a short list of flat indices
 * covers every server of a snapshot of any size. */
static int tried_has(const client_t *c, size_t flat) {
    for (uint8_t i = 0; i < c->ntried; i++)
        if (c->tried[i] == flat)
            return 1;
    return 0;
}

static void tried_add(client_t *c, size_t flat) {
    if (c->ntried < MAX_TRIES && !tried_has(c, flat))
        c->tried[c->ntried++] = (uint32_t)flat;
}

static void tried_del(client_t *c, size_t flat) {
    for (uint8_t i = 0; i < c->ntried; i++)
        if (c->tried[i] == flat) {
            c->tried[i] = c->tried[--c->ntried];
            return;
        }
}


static int class_of(int status) {
    int k = status / 100 - 1;
    return k < 0 ? 0 : k > 4 ? 4 : k;
}

static int timeout_ms(const client_t *c, int which) {
    const td_snapshot_t *s = c->snap ? c->snap : c->w->snap;
    const td_config_timeouts_t *t = &s->config->timeouts;
    switch (which) {
    case 0: return t->client_header_ms;
    case 1: return t->keepalive_idle_ms;
    case 2: return t->connect_ms;
    case 4: return t->client_send_ms;
    default: return t->upstream_response_ms;
    }
}

/* Client buffers (CBUF_SIZE) come from a small per-worker cache: an idle keep-alive connection
 * holds none, and a busy one does not cost a malloc/free pair per request. */
static char *buf_get(worker_t *w) {
    return w->num_cached ? w->buf_cache[--w->num_cached] : malloc(CBUF_SIZE);
}

static void buf_put(worker_t *w, char *buf) {
    if (!buf)
        return;
    if (w->num_cached < (int)(sizeof(w->buf_cache) / sizeof(w->buf_cache[0])))
        w->buf_cache[w->num_cached++] = buf;
    else
        free(buf);
}

/* The client's buffer: taken from the cache when it has none; a larger one (a buffered body)
 * is freed rather than cached. */
static int client_buf_get(client_t *c) {
    if (!c->buf) {
        c->buf = buf_get(c->w);
        c->cap = c->buf ? CBUF_SIZE : 0;
    }
    return c->buf ? 0 : TD_ENOMEM;
}

static void client_buf_put(client_t *c) {
    if (c->cap == CBUF_SIZE)
        buf_put(c->w, c->buf);
    else
        free(c->buf);
    c->buf = NULL;
    c->cap = 0;
}

/* Makes buf hold at least `cap` bytes, keeping its contents. Returns 0 or TD_ENOMEM (buf is
 * unchanged then). Pointers into the old buffer (a parsed head) are invalid afterwards. */
static int client_buf_grow(client_t *c, uint32_t cap) {
    if (cap <= c->cap)
        return 0;
    char *nb = malloc(cap);
    if (!nb)
        return TD_ENOMEM;
    memcpy(nb, c->buf, c->len);
    client_buf_put(c);
    c->buf = nb;
    c->cap = cap;
    return 0;
}

static void pool_close_idle(worker_t *w, const td_snap_backend_t *b);

/* 1 when a backend's TLS settings differ between two configs. */
static int tls_changed(const td_config_backend_t *a, const td_config_backend_t *b) {
    return a->tls != b->tls || a->tls_verify != b->tls_verify || strcmp(a->tls_ca, b->tls_ca) ||
           strcmp(a->tls_sni, b->tls_sni);
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

/* Takes the newest snapshot when the router has published one since the last request. */

static void worker_refresh(worker_t *w) {
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
    /* Drain: idle keep-alive connections to servers of a draining backend (weight 0, and not
     * a failover backup) are closed. */
    for (size_t i = 0; i < s->num_backends; i++)
        if (td_backend_draining(s, &s->backends[i]))
            pool_close_idle(w, &s->backends[i]);
}

static void pool_close_idle(worker_t *w, const td_snap_backend_t *b) {
    for (size_t j = 0; j < b->num_servers; j++)
        for (pool_t *p = w->pools; p; p = p->next)
            if (p->key == b->servers[j].st)
                while (p->idle)
                    upstream_close(p->idle);
}

static td_str_t find_header(const td_http1_header_t *h, size_t n, const char *lower) {
    size_t len = strlen(lower);
    for (size_t i = 0; i < n; i++)
        if (h[i].name.len == len && td_http1_name_is(h[i].name, lower))
            return h[i].value;
    return (td_str_t){NULL, 0};
}

/* ---------------------------------------------------------------------------------------------
 * Client connections */

static void client_free_cb(td_stream_t *s) {
    client_t *c = td_stream_owner(s);
    client_buf_put(c);
    free(c->last_error);
    free(c->path);
    free(c);
}

/* Drops the in-flight counts of the current exchange (each taken once, released once). */
static void release_server(client_t *c) {
    if (c->st_inflight) {
        atomic_fetch_sub_explicit(&c->st_inflight->in_flight, 1, memory_order_relaxed);
        c->st_inflight = NULL;
    }
}

/* The exchange is over: its duration goes to the backend's histogram, and a line to the access
 * log when there is one: {"time","client","method","path","status","bytes","duration_ms",
 * "backend","server"}. */
static void exchange_log(client_t *c) {
    if (!c->started_ms || !c->status)
        return;
    int64_t ms = td_now_ms() - c->started_ms;
    if (c->b_inflight)
        td_router_observe(c->b_inflight, ms);
    worker_t *w = c->w;
    if (!td_access_log_on(&w->alog))
        return;
    td_access_entry_t e = {
        .client = c->ip,
        .method = c->method,
        .path = c->path ? c->path : "",
        .status = c->status,
        .bytes = c->bytes_out,
        .duration_ms = ms,
        .backend = c->snap && c->backend >= 0 ? c->snap->backends[c->backend].name : "",
        .server = c->snap && c->backend >= 0 && c->server >= 0
                      ? c->snap->backends[c->backend].servers[c->server].addr.text
                      : "",
    };
    td_access_log_write(&w->alog, &e);
}

static void end_exchange(client_t *c) {
    exchange_log(c);
    c->started_ms = 0;
    c->status = 0;
    c->bytes_out = 0;
    free(c->path);
    c->path = NULL;
    release_server(c);
    if (c->b_inflight) {
        atomic_fetch_sub_explicit(&c->b_inflight->in_flight, 1, memory_order_relaxed);
        c->b_inflight = NULL;
    }
    if (c->snap) {
        td_snapshot_release(c->snap);
        c->snap = NULL;
    }
}

/* Detaches and closes the exchange's upstream connection (it cannot be reused). */
static void drop_upstream(client_t *c) {
    upstream_t *u = c->up;
    if (!u)
        return;
    c->up = NULL;
    u->c = NULL;
    release_server(c);
    upstream_close(u);
}

static void client_close(client_t *c) {
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    if (c->started_ms && !c->status)
        c->status = 499; /* the client went away before its answer: the access log says so */
    drop_upstream(c);
    end_exchange(c);
    if (c->b_tunnel) {
        atomic_fetch_sub_explicit(&c->b_tunnel->tunnels, 1, memory_order_relaxed);
        if (c->tun_prev)
            c->tun_prev->tun_next = c->tun_next;
        else
            c->w->tunnels = c->tun_next;
        if (c->tun_next)
            c->tun_next->tun_prev = c->tun_prev;
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (c->w->clients == c)
        c->w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub(&open_clients, 1);
    td_timeout_stop(&c->tmo);
    td_timeout_stop(&c->send_tmo);
    td_stream_close(&c->io, client_free_cb);
}

/* Client timeouts are deadlines in the worker's timeout queues, checked by its clock (every
 * TICK_MS) rather than a timer handle per connection: an idle connection stays small, and the
 * tick looks only at the expired ones. */
static void client_timer(client_t *c, int which) {
    td_timeout_arm(&c->w->tq[which], &c->tmo, (int64_t)uv_now(&c->w->loop), timeout_ms(c, which));
}

static void client_alloc_cb(td_stream_t *s, char **buf, size_t *cap) {
    client_t *c = td_stream_owner(s);
    if (client_buf_get(c) < 0)
        return;
    *buf = c->buf + c->len;
    *cap = c->cap - c->len;
}

static void client_read_cb(td_stream_t *s, long nread);

static void client_read(client_t *c, int on) {
    if (c->state == C_CLOSING)
        return;
    if (on)
        td_stream_read_start(&c->io, client_alloc_cb, client_read_cb);
    else
        td_stream_read_stop(&c->io);
}

/* Counts the request-body bytes that have arrived in buf[req_end..len) and moves req_end past
 * them. Returns 0, or TD_EBADMSG for invalid chunked framing. */
static int account_body(client_t *c) {
    if (c->req_done)
        return 0;
    uint32_t avail = c->len - c->req_end;
    if (c->req_body == TD_BODY_LENGTH) {
        uint64_t take = avail < c->body_left ? avail : c->body_left;
        c->req_end += (uint32_t)take;
        c->body_left -= take;
        c->req_done = c->body_left == 0;
    } else if (c->req_body == TD_BODY_CHUNKED) {
        int done = 0;
        long n = td_http1_chunked_feed(&c->chunk, c->buf + c->req_end, avail, &done, NULL, 0,
                                       NULL);
        if (n < 0)
            return TD_EBADMSG;
        c->req_end += (uint32_t)n;
        c->req_done = (uint8_t)done;
    } else {
        c->req_done = 1;
    }
    return 0;
}

/* Writes a complete small response of td's own (an error) and ends the exchange. */
static void client_write_done_cb(td_stream_t *s, int status);

/* A write to the client could not finish at once: the client send timeout starts. It measures
 * the client, not the backend: the upstream's response timeout does not run meanwhile. */
static void client_send_wait(client_t *c) {
    c->writing = 1;
    c->send_left = td_stream_write_queued(&c->io);
    td_timeout_arm(&c->w->tq[T_SEND], &c->send_tmo, (int64_t)uv_now(&c->w->loop),
                   timeout_ms(c, T_SEND));
}

/* The client send deadline passed. A client that took some of the pending bytes since the last
 * look gets a new period (the timeout is between two writes that make progress, as nginx's
 * send_timeout, not for the whole response); one that took nothing is closed, as its own fault:
 * nothing is charged to the backend. */
static void client_send_timeout(client_t *c, int64_t now) {
    size_t left = td_stream_write_queued(&c->io);
    if (left < c->send_left) {
        c->send_left = left;
        td_timeout_arm(&c->w->tq[T_SEND], &c->send_tmo, now, timeout_ms(c, T_SEND));
        return;
    }
    td_warn("%s %s: client took no response bytes for %d ms (timeouts.client_send_ms); "
            "connection closed",
            c->ip, c->method[0] ? c->method : "-", timeout_ms(c, T_SEND));
    client_close(c);
}

static void client_reply(client_t *c, int status, const char *reason, const char *headers);

static void client_error(client_t *c, int status, const char *why) {
    if (c->state == C_CLOSING)
        return;
    if (c->resp_sent || c->writing) {
        client_close(c);
        return;
    }
    td_warn("%d %s %s: %s", status, c->ip, c->method[0] ? c->method : "-", why);
    client_reply(c, status, td_http_reason(status), "");
}

/* Answers with a small response of td's own (an error, a redirect), then ends the exchange:
 * the connection stays for 3xx and 5xx when the whole request was read, else it closes.
 * `headers` are extra header lines, each ending in CRLF. */
static void client_reply(client_t *c, int status, const char *reason, const char *headers) {
    /* td's own 5xx answer for a backend counts as that backend's: the one the request was
     * routed to, or, once its retries ran out of servers, the last one it tried; a 502/503/504
     * with no backend chosen counts under td itself. A 4xx (a client's fault, such as a body
     * that stopped coming) does not count. */
    if (c->snap && status >= 500) {
        td_backend_stats_t *bst = c->backend >= 0  ? c->snap->backends[c->backend].st
                                  : c->forced >= 0 ? c->snap->backends[c->forced].st
                                                   : c->b_inflight;
        if (bst) {
            atomic_fetch_add_explicit(&bst->requests, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&bst->responses[class_of(status)], 1, memory_order_relaxed);
        }
        td_router_count_local(bst, status, td_now_ms());
    } else if (status >= 500) {
        td_router_count_local(NULL, status, td_now_ms());
    }
    drop_upstream(c);
    /* Keep the connection for 502/503/504 when the whole request was read; close otherwise. */
    int keep = (status >= 500 || (status >= 300 && status < 400)) && c->req_done &&
               c->keep_alive && !c->w->stopping;
    char body[160];
    int blen = snprintf(body, sizeof(body), "%d %s\n", status, reason);
    char *p = c->w->scratch;
    int n = snprintf(p, sizeof(c->w->scratch),
                     "HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "Connection: %s\r\n\r\n%s",
                     status, reason, headers, blen, keep ? "keep-alive" : "close", body);
    if (n < 0 || (size_t)n >= sizeof(c->w->scratch)) {
        client_close(c);
        return;
    }
    c->resp_sent = 1;
    c->status = status;
    if (!c->started_ms)
        c->started_ms = td_now_ms();
    c->close_after = !keep;
    td_iov_t iov = td_iov(p, (unsigned)n);
    int r = td_stream_write(&c->io, &iov, 1, 1, client_write_done_cb);
    if (r < 0) {
        client_close(c);
    } else if (r == 1) {
        client_send_wait(c);
        client_read(c, 0);
    } else if (c->close_after) {
        client_close(c);
    } else {
        client_next(c);
    }
}

/* A client's deadline passed. */
static void client_timeout(client_t *c) {
    if (c->state == C_HEAD) {
        if (c->len > 0) {
            c->keep_alive = 0;
            client_error(c, 408, "client too slow to send its request head");
        } else {
            client_close(c);
        }
    } else if (c->state == C_EXCHANGE && !c->req_done) {
        c->keep_alive = 0;
        if (c->resp_sent)
            client_close(c);
        else
            client_error(c, 408, "client too slow to send its request body");
    }
}

/* Ends the current exchange and starts on the next request (pipelined bytes first). */
static void client_next(client_t *c) {
    if (c->state == C_CLOSING)
        return;
    end_exchange(c);
    if (c->w->stopping) {
        client_close(c);
        return;
    }
    uint32_t rest = c->len > c->req_end ? c->len - c->req_end : 0;
    if (rest && c->req_end)
        memmove(c->buf, c->buf + c->req_end, rest);
    c->len = rest;
    c->head_len = c->req_end = c->fwd = 0;
    c->body_left = 0;
    memset(&c->chunk, 0, sizeof(c->chunk));
    c->req_done = c->discarded = c->head_sent = c->body_sent = c->resp_started = c->resp_sent = 0;
    c->close_after = c->buffering = c->continued = c->continue_out = 0;
    c->upgrade = c->expect = 0;
    c->backend = c->server = c->sticky_set = c->pinned = -1;
    c->tries = 0;
    c->ntried = 0;
    free(c->last_error);
    c->last_error = NULL;
    c->method[0] = 0;
    c->state = C_HEAD;
    if (!rest) {
        if (c->eof) { /* the client said all it had to say */
            client_close(c);
            return;
        }
        client_buf_put(c); /* idle keep-alive connections hold no buffer */
        client_timer(c, T_KEEPALIVE);
        client_read(c, 1);
        return;
    }
    client_timer(c, T_HEADER);
    if (!c->eof)
        client_read(c, 1);
    client_process(c);
}

/* A plain listener set to redirect: 301 (GET, HEAD) or 308 (others, which keeps the method and
 * body) to the same host and path over https. */
static void redirect_https(client_t *c, const td_http1_request_t *req,
                           const td_config_listener_t *l) {
    td_str_t host = req->host;
    /* The host without its port ("[::1]:8080" keeps its brackets). */
    size_t hl = host.len;
    const char *close = host.len && host.p[0] == '[' ? memchr(host.p, ']', host.len) : NULL;
    const char *colon = host.len ? memrchr(host.p, ':', host.len) : NULL;
    if (colon && (!close || colon > close))
        hl = (size_t)(colon - host.p);
    if (!hl || req->target.len == 0 || req->target.p[0] != '/') {
        c->keep_alive = 0;
        client_error(c, 400, "redirect to https needs a Host and an origin-form target");
        return;
    }
    char port[16] = "";
    if (l->https_port && l->https_port != 443)
        snprintf(port, sizeof(port), ":%d", l->https_port);
    char headers[CBUF_SIZE];
    int n = snprintf(headers, sizeof(headers), "Location: https://%.*s%s%.*s\r\n", (int)hl,
                     host.p, port, (int)req->target.len, req->target.p);
    if (n < 0 || (size_t)n >= sizeof(headers)) {
        client_error(c, 414, "redirect location too long");
        return;
    }
    int get = req->head || (req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0);
    client_reply(c, get ? 301 : 308, get ? "Moved Permanently" : "Permanent Redirect", headers);
}

/* Request buffering (request_buffering.max_bytes): a body still coming is read into the
 * client's buffer, up to the limit, before a backend is chosen, so a slow upload holds no
 * backend connection (and no worker of an application server with a fixed pool) while it
 * trickles in; the client's body timeout applies meanwhile (408). A body that fits is then sent
 * whole; a larger one is streamed from there on, as without buffering. A client that waits
 * for "100 Continue" gets it from td (RFC 9110 §10.1.1: a proxy may answer it), and the Expect
 * field is not forwarded. Returns 1 when buffering started (routing waits for body_buffered),
 * 0 to route now. */
static int body_buffer_start(client_t *c) {
    uint32_t max = (uint32_t)c->snap->config->request_buffering.max_bytes;
    if (c->req_done || !max || c->upgrade)
        return 0;
    uint64_t want = max;
    if (c->req_body == TD_BODY_LENGTH && c->body_left + (c->req_end - c->head_len) < want)
        want = c->body_left + (c->req_end - c->head_len);
    if (c->req_end - c->head_len >= want)
        return 0;
    /* Room for the head, the body up to the limit and what was already read past it. */
    uint64_t cap = (uint64_t)c->head_len + want + (c->len - c->req_end);
    if (cap > UINT32_MAX || client_buf_grow(c, (uint32_t)cap) < 0)
        return 0; /* no memory for it: streamed as without buffering */
    c->buffering = 1;
    if (c->expect && c->minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        td_iov_t iov = td_iov((char *)cont, sizeof(cont) - 1);
        int r = td_stream_write(&c->io, &iov, 1, 0, client_write_done_cb);
        if (r < 0) {
            client_close(c);
            return 1;
        }
        c->continued = 1;
        if (r == 1) {
            c->continue_out = 1;
            client_send_wait(c);
        }
    }
    client_timer(c, T_HEADER);
    client_read(c, 1);
    return 1;
}

/* While buffering: new body bytes were accounted. Routes the request once the body is whole,
 * or the limit (or the buffer) is reached. */
static void body_buffered(client_t *c) {
    uint32_t max = (uint32_t)c->snap->config->request_buffering.max_bytes;
    if (!c->req_done && c->req_end - c->head_len < max && c->len < c->cap) {
        client_timer(c, T_HEADER); /* the body timeout runs between two reads */
        return;
    }
    c->buffering = 0;
    td_timeout_stop(&c->tmo); /* from here as without buffering: the upstream side sets the timeouts */
    if (c->req_done)
        client_read(c, 0); /* what comes now is a pipelined request: it waits */
    pick_and_connect(c);
}

/* Takes the requests buffered in c->buf one after another. An exchange that ends at once (an
 * error or redirect of td's own, answered with one write) calls client_next, which lands here
 * again further down the stack: that call only notes that there is more, and this loop takes
 * the next pipelined request, so a run of bad requests costs no stack (redis'
 * processInputBuffer). */
static void client_process(client_t *c) {
    if (c->processing) {
        c->more = 1;
        return;
    }
    c->processing = 1;
    do {
        c->more = 0;
        start_request(c);
    } while (c->more && c->state == C_HEAD);
    c->processing = 0;
}

/* Parses the request head; on success routes the request and starts the exchange. */
static void start_request(client_t *c) {
    worker_t *w = c->w;
    td_http1_request_t req;
    int r = td_http1_parse_request(c->buf, c->len, &limits, &req, w->hdrs, MAX_HDRS);
    if (r == TD_EAGAIN) {
        if (c->len >= CBUF_SIZE)
            client_error(c, 431, "request head too large");
        else if (c->eof)
            client_close(c); /* half a head and no more to come */
        return;
    }
    if (r < 0) {
        c->keep_alive = 0;
        c->req_done = 0;
        switch (r) {
        case TD_EURITOOLONG: client_error(c, 414, "request line too long"); break;
        case TD_EHDRTOOLARGE: client_error(c, 431, "request head too large"); break;
        case TD_EVERSION: client_error(c, 505, "unsupported HTTP version"); break;
        default: {
            /* The log names the method (when the line has one) and the rule that was broken. */
            size_t m = 0;
            while (m < sizeof(c->method) - 1 && m < c->len && c->buf[m] > ' ' &&
                   c->buf[m] < 0x7f)
                m++;
            memcpy(c->method, c->buf, m);
            c->method[m] = 0;
            client_error(c, 400, td_http1_request_problem(c->buf, c->len));
            break;
        }
        }
        return;
    }
    td_timeout_stop(&c->tmo);
    c->state = C_EXCHANGE;
    c->head_len = c->req_end = (uint32_t)r;
    c->req_body = (uint8_t)req.body;
    c->body_left = req.body == TD_BODY_LENGTH ? req.content_length : 0;
    c->keep_alive = req.keep_alive;
    c->head_req = req.head;
    c->upgrade = req.upgrade;
    c->minor = (uint8_t)req.minor_version;
    c->expect = req.expect_continue;
    size_t ml = req.method.len < sizeof(c->method) - 1 ? req.method.len : sizeof(c->method) - 1;
    memcpy(c->method, req.method.p, ml);
    c->method[ml] = 0;
    if (strcmp(c->method, "CONNECT") == 0) {
        c->keep_alive = 0;
        client_reply(c, 405, "Method Not Allowed", "Allow: GET, HEAD, POST, PUT, DELETE, "
                                                    "PATCH, OPTIONS\r\n");
        return;
    }
    if (!req.host.len && (req.target.p[0] == '/' || req.target.p[0] == '*') &&
        find_header(req.headers, req.num_headers, "host").p) {
        /* "Host:" with an empty value and no authority in the target: there is no host to
         * forward, and adding one would make two Host fields. nginx refuses it the same way. */
        c->keep_alive = 0;
        client_error(c, 400, "empty Host");
        return;
    }
    if (req.body == TD_BODY_CHUNKED) {
        /* Only plain chunked is forwarded (td re-frames it); other codings would be lost:
         * RFC 9112 §6.1 asks for 501. */
        td_str_t te = find_header(req.headers, req.num_headers, "transfer-encoding");
        if (te.len != 7 || !td_http1_name_is(te, "chunked")) {
            c->keep_alive = 0;
            td_warn("501 %s %s: transfer coding \"%.*s\" not supported", c->ip, c->method,
                    (int)(te.len > 64 ? 64 : te.len), te.p);
            client_reply(c, 501, "Not Implemented", "");
            return;
        }
    }
    if (c->upgrade) {
        /* h2c through a reverse proxy is a known smuggling vector: it is not passed on. */
        td_str_t up = find_header(req.headers, req.num_headers, "upgrade");
        if (td_http1_list_has(up, "h2c"))
            c->upgrade = 0;
    }
    c->idempotent = strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0 ||
                    strcmp(c->method, "OPTIONS") == 0 || strcmp(c->method, "PUT") == 0 ||
                    strcmp(c->method, "DELETE") == 0 || strcmp(c->method, "TRACE") == 0;
    c->started_ms = td_now_ms();
    if (account_body(c) < 0) {
        c->keep_alive = 0;
        client_error(c, 400, "invalid chunked body");
        return;
    }
    worker_refresh(w);
    if (!w->snap) {
        client_error(c, 503, "no routing configuration");
        return;
    }
    c->snap = w->snap;
    td_snapshot_retain(c->snap);
    c->backend = c->server = c->sticky_set = c->pinned = c->forced = -1;
    if (td_access_log_on(&w->alog))
        c->path = strndup(req.target.p, req.target.len < 512 ? req.target.len : 512);
    const td_config_t *pcfg = c->snap->config;
    if (c->listener < pcfg->num_listeners && pcfg->listeners[c->listener].redirect_https) {
        redirect_https(c, &req, &pcfg->listeners[c->listener]);
        return;
    }
    c->forced = td_router_preview(c->snap, &req);
    c->pinned = td_router_sticky_pin(c->snap, &req, td_wall_ms() / 1000, td_now_ms());
    if (body_buffer_start(c))
        return;
    /* A pooled connection takes the head at once, as parsed: build_request_head may use it. */
    w->parsed = &req;
    w->parsed_for = c;
    pick_and_connect(c);
    w->parsed_for = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Request: client -> upstream */

/* Builds the request head for the upstream into the worker's scratch area from the client's head
 * bytes (re-parsed unless the head is being sent as it was just parsed: it is still at the start
 * of c->buf). Returns its length, or -1. */
static int build_request_head(client_t *c) {
    worker_t *w = c->w;
    td_http1_request_t req;
    if (w->parsed_for == c)
        req = *w->parsed; /* still in w->hdrs: the head is being sent as it was parsed */
    else if (td_http1_parse_request(c->buf, c->head_len, &limits, &req, w->hdrs, MAX_HDRS) <= 0)
        return -1;
    td_rewrite_request_t r = {
        .req = &req,
        .head_end = c->buf + c->head_len,
        .preview_header = c->snap ? c->snap->config->preview_header : NULL,
        .client_ip = c->ip,
        .default_host = c->snap && c->backend >= 0 && c->server >= 0
                            ? c->snap->backends[c->backend].servers[c->server].addr.text
                            : NULL,
        .https = td_stream_is_tls(&c->io),
        .upgrade = c->upgrade,
        .drop_expect = c->continued,
    };
    return td_rewrite_request(&r, w->scratch, sizeof(w->scratch));
}

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
static void upstream_timer(upstream_t *u, int which, int ms) {
    td_timeout_arm(&u->w->tq[which], &u->tmo, (int64_t)uv_now(&u->w->loop), ms);
}

static void request_written(client_t *c);
static void upstream_fail(upstream_t *u, const char *why, int kind);
/* F_LOCAL: td itself lacked a resource (file descriptors, memory, local ports) to reach the
 * upstream; it says nothing about the server. */
enum { F_CONNECT, F_IO, F_TIMEOUT, F_PROTOCOL, F_LOCAL };

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
static int local_error(int err) {
    return err == -EMFILE || err == -ENFILE || err == -ENOMEM || err == -ENOBUFS ||
           err == -EADDRNOTAVAIL;
}

/* Logs a local resource error at most once a second per worker (under fd exhaustion every
 * request would log one), with the count of those not logged. */
static void local_error_log(worker_t *w, const char *what) {
    int64_t now = td_now_ms();
    if (w->local_err_ms && now - w->local_err_ms < 1000) {
        w->local_err_quiet++;
        return;
    }
    td_error("%s: a limit of td's own (open files: see `ulimit -n`; memory; local ports), not "
             "the backend's (%u more in the last second)",
             what, w->local_err_quiet);
    w->local_err_ms = now;
    w->local_err_quiet = 0;
}

static void upstream_write_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    u->writing = 0;
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (u->c)
            upstream_fail(u, td_stream_strerror(s, status), F_IO);
        else
            upstream_close(u);
        return;
    }
    if (u->c)
        request_written(u->c);
}

/* Sends what the upstream has not had yet of the current request (head, body bytes read so far;
 * in a tunnel, whatever the client sent). */
static void request_send(client_t *c) {
    upstream_t *u = c->up;
    while (u && u->state == U_BUSY && !u->writing && c->state != C_CLOSING) {
        td_iov_t iov[2];
        unsigned n = 0;
        int volatile_first = 0;
        if (c->state == C_TUNNEL) {
            if (c->len == 0)
                return;
            iov[n++] = td_iov(c->buf, c->len);
        } else {
            if (!c->head_sent) {
                int hl = build_request_head(c);
                if (hl < 0) {
                    c->keep_alive = 0;
                    client_error(c, 400, "request head cannot be forwarded");
                    return;
                }
                iov[n++] = td_iov(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
                c->fwd = c->head_len;
                c->head_sent = 1;
            }
            if (c->req_end > c->fwd) {
                iov[n++] = td_iov(c->buf + c->fwd, c->req_end - c->fwd);
                c->body_sent = 1;
            }
            if (n == 0)
                return;
        }
        int r = td_stream_write(&u->io, iov, n, volatile_first, upstream_write_cb);
        if (r < 0) {
            upstream_fail(u, td_stream_strerror(&u->io, r), F_IO);
            return;
        }
        if (r == 1) {
            u->writing = 1;
            client_read(c, 0);
            td_timeout_stop(&c->tmo); /* waiting on the upstream is not the client's delay */
            return;
        }
        request_written(c);
        u = c->up;
        if (c->state != C_TUNNEL)
            return; /* request_written decided what comes next */
    }
}

/* All bytes handed to the upstream so far have been written. */
static void request_written(client_t *c) {
    if (c->state == C_TUNNEL) {
        c->len = 0;
        client_read(c, 1);
        return;
    }
    c->fwd = c->req_end;
    if (c->up && c->req_done)
        upstream_timer(c->up, T_RESPONSE, timeout_ms(c, T_RESPONSE));
    if (!c->req_done) {
        /* Body still coming: make room, giving up replay only when the buffer runs short. */
        if (c->cap - c->len < 4096) {
            c->len = c->req_end = c->fwd = c->head_len = 0;
            c->discarded = 1;
        }
        client_timer(c, T_HEADER);
        client_read(c, 1);
        return;
    }
    /* The whole request is out. The client stays readable (no epoll change per request): a
     * pipelined request that comes now stops reading until this exchange ends. */
    td_timeout_stop(&c->tmo);
}

static void client_got(client_t *c, size_t nread);

static void client_read_cb(td_stream_t *s, long nread) {
    client_t *c = td_stream_owner(s);
    if (nread == -ENOBUFS) { /* buffer full: wait until the exchange makes room */
        client_read(c, 0);
        return;
    }
    if (nread == TD_STREAM_EOF && c->state == C_EXCHANGE && c->req_done) {
        /* Half-close after a whole request: answer it and any pipelined ones already read,
         * then close. */
        c->eof = 1;
        client_read(c, 0);
        return;
    }
    if (nread < 0) {
        if (nread == TD_STREAM_ETLS)
            td_info("TLS from %s: %s", c->ip, td_stream_tls_error(s));
        else if (c->state == C_HEAD && c->len > 0 && nread != TD_STREAM_CLOSE_NOTIFY)
            td_debug("client %s closed with an incomplete request head", c->ip);
        client_close(c);
        return;
    }
    client_got(c, (size_t)nread);
}

/* nread new request bytes are at the end of c->buf. */
static void client_got(client_t *c, size_t nread) {
    c->len += (uint32_t)nread;
    if (c->state == C_HEAD) {
        if (c->len == (uint32_t)nread)
            client_timer(c, T_HEADER); /* first byte of a request: the head timeout starts */
        client_process(c);
        return;
    }
    if (c->state == C_EXCHANGE) {
        if (c->req_done) {
            /* Pipelined bytes: keep them for later and stop reading. */
            client_read(c, 0);
            return;
        }
        if (account_body(c) < 0) {
            c->keep_alive = 0;
            client_error(c, 400, "invalid chunked body");
            return;
        }
        if (c->buffering) {
            body_buffered(c);
            return;
        }
        if (!c->up || c->up->state != U_BUSY || c->up->writing)
            client_read(c, 0);
        request_send(c);
        return;
    }
    if (c->state == C_TUNNEL) {
        client_read(c, 0);
        request_send(c);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Upstream connections and pools */

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

static void upstream_close(upstream_t *u) {
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

static void upstream_read(upstream_t *u, int on) {
    if (u->state == U_CLOSING)
        return;
    if (on)
        td_stream_read_start(&u->io, upstream_alloc_cb, upstream_read_cb);
    else
        td_stream_read_stop(&u->io);
}

/* Parks an upstream connection whose exchange ended cleanly in its server's pool. */
static void pool_put(upstream_t *u) {
    if (u->pool->num_idle >= POOL_MAX_IDLE) {
        upstream_close(u);
        return;
    }
    u->state = U_IDLE;
    u->c = NULL;
    u->len = u->off = u->fwd = 0; /* the buffer stays: the next exchange needs one at once */
    u->next = u->pool->idle;
    u->pool->idle = u;
    u->pool->num_idle++;
    upstream_timer(u, T_POOL, POOL_IDLE_MS);
    upstream_read(u, 1); /* to notice the server closing it */
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
        upstream_timer(u, T_RESPONSE, timeout_ms(c, T_RESPONSE));
    else
        td_timeout_stop(&u->tmo);
    upstream_read(u, 1);
    request_send(c);
}

/* Connected (and, to a TLS backend, the handshake done): the exchange starts. The connect
 * timeout covers the handshake too. */
static void upstream_connect_cb(td_stream_t *s, int status) {
    upstream_t *u = td_stream_owner(s);
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (!u->c) {
            upstream_close(u);
        } else if (status == TD_STREAM_ETLS) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake: %s", td_stream_tls_error(s));
            upstream_fail(u, why, F_CONNECT);
        } else {
            upstream_fail(u, td_stream_strerror(s, status),
                          local_error(status) ? F_LOCAL : F_CONNECT);
        }
        return;
    }
    if (!u->c) {
        upstream_close(u);
        return;
    }
    upstream_attach(u, u->c);
}

/* Gets a pooled connection to the chosen server, or starts a new one. */
static void upstream_open(client_t *c, td_snap_server_t *srv) {
    worker_t *w = c->w;
    pool_t *pool = pool_of(w, srv->st);
    if (!pool) {
        client_error(c, 502, "out of memory");
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
        client_error(c, 502, "out of memory");
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
        upstream_fail(u, r == -ENOMEM ? "out of memory" : td_stream_strerror(NULL, r),
                      local_error(r) ? F_LOCAL : F_CONNECT);
        return;
    }
    upstream_timer(u, T_CONNECT, timeout_ms(c, T_CONNECT));
}

/* An upstream's deadline passed. */
static void upstream_timeout(upstream_t *u) {
    if (u->state == U_IDLE) {
        upstream_close(u);
    } else if (u->state == U_CONNECTING) {
        upstream_fail(u, "connect timed out", F_TIMEOUT);
    } else if (u->state == U_BUSY && u->c && !u->tunnel) {
        upstream_fail(u, "no response in time", F_TIMEOUT);
    }
}

static const char *unreachable(const client_t *c) {
    return c->last_error ? c->last_error : "no upstream server could be reached";
}

/* The upstream connection failed during an exchange: retry on another server when that is
 * safe (nothing of the response seen, the request still whole in the buffer, and the failure was
 * a connect error, or a reset/close of an idempotent request or of one none of whose bytes left),
 * else answer 502 (504 for a timeout), or just close when the response had already started. */
static void upstream_fail(upstream_t *u, const char *why, int kind) {
    client_t *c = u->c;
    int fresh = !u->reused;
    td_server_stats_t *st = u->st;
    if (c)
        drop_upstream(c);
    else
        upstream_close(u);
    if (kind == F_LOCAL) {
        /* No passive failure, no retry, not the backend's 5xx: the request gets a 503 from td. */
        char what[300];
        snprintf(what, sizeof(what),
                 "cannot connect to upstream %s (%s): %s; answering 503, no passive failure",
                 st->address, st->backend, why);
        local_error_log(u->w, what);
        if (!c)
            return;
        c->backend = c->server = -1;
        c->keep_alive = c->keep_alive && c->req_done;
        if (c->resp_sent || c->writing)
            client_close(c);
        else
            client_reply(c, 503, td_http_reason(503), "Retry-After: 1\r\n");
        return;
    }
    int64_t now = td_now_ms();
    if (kind == F_CONNECT || (kind == F_IO && fresh && (!c || !c->resp_started))) {
        td_snapshot_t *s = c && c->snap ? c->snap : u->w->snap;
        if (s)
            td_passive_failure(s, st, now);
        td_debug("upstream %s (%s): %s", st->address, st->backend, why);
    }
    if (!c)
        return;
    free(c->last_error);
    if (asprintf(&c->last_error, "upstream %s (%s): %s", st->address, st->backend, why) < 0)
        c->last_error = NULL;
    if (!fresh && kind == F_IO && !c->resp_started && c->snap && c->backend >= 0 &&
        c->server >= 0) {
        /* A pooled connection the server closed as the request crossed it says nothing about
         * the server: the retry is free and may go to the same server (nginx does the same). */
        tried_del(c, c->snap->backends[c->backend].first_server + (size_t)c->server);
        if (c->tries > 0)
            c->tries--;
    }
    /* RFC 9110 §9.2.2: an idempotent request may be sent again; another one only when none of
     * its bytes reached the upstream (a connect failure), body or not: the server may have acted
     * on a POST whose head alone it read (nginx's proxy_next_upstream without non_idempotent).
     * That holds for the free retry of a pooled connection too. */
    int safe = !c->resp_started && !c->discarded &&
               (kind == F_CONNECT || (kind == F_IO && (c->idempotent || !c->head_sent)));
    if (safe && c->tries < MAX_TRIES) {
        c->fwd = 0;
        c->head_sent = c->body_sent = 0;
        pick_and_connect(c);
        return;
    }
    if (c->resp_sent) {
        td_warn("%s %s: %s; response cut short", c->ip, c->method, unreachable(c));
        client_close(c);
    } else {
        c->keep_alive = c->keep_alive && c->req_done;
        client_error(c, kind == F_TIMEOUT ? 504 : 502, unreachable(c));
    }
}

/* Chooses a backend and a server for the request (or the next try) and connects. */
static void pick_and_connect(client_t *c) {
    worker_t *w = c->w;
    td_snapshot_t *s = c->snap;
    int64_t now = td_now_ms();
    uint8_t exhausted[TD_CONFIG_MAX_BACKENDS] = {0};
    for (;;) {
        if (c->tries >= MAX_TRIES) {
            client_error(c, 502, unreachable(c));
            return;
        }
        int bi = c->backend;
        if (bi >= 0 && exhausted[bi])
            bi = -1;
        if (c->forced >= 0) {
            /* Preview: this backend only, whatever its weight. */
            if (exhausted[c->forced] || !td_backend_is_up(&s->backends[c->forced], now)) {
                client_error(c, c->tries ? 502 : 503, "preview backend has no server up");
                return;
            }
            bi = c->forced;
        } else if (bi < 0) {
            int pinned = c->tries == 0 ? c->pinned : -1;
            bi = td_router_pick_backend(s, w->wrr_b, pinned, exhausted, now);
            if (bi < 0) {
                if (c->tries == 0)
                    client_error(c, 503, "no backend with weight above 0 is up");
                else
                    client_error(c, 502, unreachable(c));
                return;
            }
        }
        td_snap_backend_t *b = &s->backends[bi];
        uint8_t tried[TD_CONFIG_MAX_SERVERS];
        size_t ns = b->num_servers < TD_CONFIG_MAX_SERVERS ? b->num_servers : TD_CONFIG_MAX_SERVERS;
        memset(tried, 0, ns);
        for (uint8_t i = 0; i < c->ntried; i++)
            if (c->tried[i] >= b->first_server && c->tried[i] - b->first_server < ns)
                tried[c->tried[i] - b->first_server] = 1;
        int si = td_router_pick_server(b, w->wrr_s + b->first_server, tried, now);
        if (si < 0) {
            if ((size_t)bi < sizeof(exhausted))
                exhausted[bi] = 1;
            c->backend = -1;
            if (c->tries == 0 && c->pinned == bi)
                c->pinned = -1;
            /* Every server of every backend exhausted ends in the pick_backend branch above. */
            continue;
        }
        tried_add(c, b->first_server + (size_t)si);
        c->tries++;
        if (c->b_inflight != b->st) {
            /* A retry on another backend moves the request there: counters follow the backend
             * that answers, not the one first chosen. */
            if (c->b_inflight)
                atomic_fetch_sub_explicit(&c->b_inflight->in_flight, 1, memory_order_relaxed);
            c->b_inflight = b->st;
            atomic_fetch_add_explicit(&b->st->in_flight, 1, memory_order_relaxed);
        }
        c->backend = bi;
        c->server = si;
        int pin = td_router_sticky_set(s, bi, c->pinned, c->forced);
        if (pin >= 0)
            c->sticky_set = pin;
        td_snap_server_t *srv = &b->servers[si];
        c->st_inflight = srv->st;
        atomic_fetch_add_explicit(&srv->st->in_flight, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&srv->st->requests, 1, memory_order_relaxed);
        upstream_open(c, srv);
        return;
    }
}

/* ---------------------------------------------------------------------------------------------
 * Response: upstream -> client */

/* Builds the response head for the client into the scratch area, with the sticky cookie the
 * router asks for. */
static int build_response_head(upstream_t *u, client_t *c, const td_http1_response_t *resp,
                               const char *head_end) {
    char cookie[360];
    size_t cl = 0;
    if (resp->status >= 200 && c->sticky_set >= 0 && c->snap)
        cl = td_router_sticky_cookie(c->snap, c->sticky_set, td_stream_is_tls(&c->io),
                                     td_wall_ms() / 1000, cookie, sizeof(cookie));
    td_rewrite_response_t r = {
        .resp = resp,
        .head_end = head_end,
        .set_cookie = cl ? cookie : NULL,
        .pass_te = !u->dechunk,
        .keep_alive = c->keep_alive,
        .minor = c->minor,
    };
    return td_rewrite_response(&r, c->w->scratch, sizeof(c->w->scratch));
}

static int response_written(upstream_t *u);

static void client_write_done_cb(td_stream_t *s, int status) {
    client_t *c = td_stream_owner(s);
    c->writing = 0;
    td_timeout_stop(&c->send_tmo);
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        client_close(c);
        return;
    }
    if (c->continue_out) { /* td's own 100 Continue is out: the body may come */
        c->continue_out = 0;
        if (!c->up) {
            if (c->buffering)
                client_timer(c, T_HEADER);
            client_read(c, 1);
            return;
        }
        if (c->up->state != U_BUSY)
            return; /* the body is in and the upstream still connecting */
        /* The body came and went on meanwhile: a response may be waiting for this write. */
    }
    if (c->up) {
        upstream_t *u = c->up;
        if (response_written(u))
            response_pump(u);
        return;
    }
    /* An error response of td's own. */
    if (c->close_after)
        client_close(c);
    else
        client_next(c);
}

/* The exchange's response is complete and written: recycle both sides. */
static void exchange_done(upstream_t *u) {
    client_t *c = u->c;
    worker_t *w = u->w;
    int reusable = u->resp_keep_alive && c->req_done && c->fwd == c->req_end &&
                   u->off == u->len && !u->tunnel && !w->stopping;
    if (u->status >= 500 && c->snap)
        td_passive_failure(c->snap, u->st, td_now_ms());
    else
        td_passive_success(u->st);
    release_server(c);
    c->up = NULL;
    u->c = NULL;
    if (reusable)
        pool_put(u);
    else
        upstream_close(u);
    if (c->keep_alive && c->req_done && !c->close_after)
        client_next(c);
    else
        client_close(c);
}

/* Hands the response bytes in u->buf to the client, honouring its framing. */
static void response_pump(upstream_t *u) {
    client_t *c = u->c;
    while (c && !u->writing && !c->writing && u->state == U_BUSY && c->state != C_CLOSING) {
        td_iov_t iov[MAX_SPANS + 1];
        unsigned n = 0;
        int volatile_first = 0;
        if (u->tunnel) {
            if (u->off == u->len) {
                upstream_read(u, 1);
                return;
            }
            iov[n++] = td_iov(u->buf + u->off, u->len - u->off);
            u->off = u->len;
        } else {
            if (!u->head_done) {
                if (u->off == u->len) {
                    upstream_read(u, 1);
                    return;
                }
                td_http1_response_t resp;
                int r = td_http1_parse_response(u->buf + u->off, u->len - u->off, c->head_req,
                                                &limits, &resp, c->w->hdrs, MAX_HDRS);
                if (r == TD_EAGAIN) {
                    if (u->len - u->off >= UBUF_SIZE / 2) {
                        upstream_fail(u, "response head too large", F_PROTOCOL);
                        return;
                    }
                    if (u->off) {
                        memmove(u->buf, u->buf + u->off, u->len - u->off);
                        u->len -= u->off;
                        u->off = 0;
                    }
                    upstream_read(u, 1);
                    return;
                }
                if (r < 0) {
                    upstream_fail(u, "malformed response", F_PROTOCOL);
                    return;
                }
                if (resp.status == 101 && !c->upgrade) {
                    upstream_fail(u, "101 without an upgrade request", F_PROTOCOL);
                    return;
                }
                u->off += (uint32_t)r;
                if (resp.status < 200 && resp.status != 101 && ++u->interim > MAX_INTERIM) {
                    upstream_fail(u, "too many interim (1xx) responses", F_PROTOCOL);
                    return;
                }
                if (resp.status < 200 && resp.status != 101 && c->minor == 0)
                    continue; /* HTTP/1.0 clients get no interim responses */
                if (resp.status >= 200 || resp.status == 101) {
                    u->head_done = 1;
                    u->status = resp.status;
                    u->resp_body = (uint8_t)resp.body;
                    u->body_left = resp.content_length;
                    u->resp_keep_alive = resp.keep_alive;
                    u->dechunk = resp.body == TD_BODY_CHUNKED && c->minor == 0;
                    if (resp.body == TD_BODY_UNTIL_CLOSE || u->dechunk || c->w->stopping)
                        c->keep_alive = 0;
                    if (!c->req_done)
                        c->keep_alive = 0; /* the rest of the request body cannot be skipped */
                    int k = class_of(resp.status);
                    atomic_fetch_add_explicit(&u->st->responses[k], 1, memory_order_relaxed);
                    if (c->b_inflight) {
                        atomic_fetch_add_explicit(&c->b_inflight->requests, 1,
                                                  memory_order_relaxed);
                        atomic_fetch_add_explicit(&c->b_inflight->responses[k], 1,
                                                  memory_order_relaxed);
                        if (k == TD_NCLASS - 1) /* for the console's "answering errors" */
                            atomic_store_explicit(&c->b_inflight->last_5xx_ms, td_now_ms(),
                                                  memory_order_relaxed);
                    }
                    if (resp.status == 101)
                        u->tunnel = 1;
                }
                int hl = build_response_head(u, c, &resp, u->buf + u->off);
                if (hl < 0) {
                    upstream_fail(u, "response head too large", F_PROTOCOL);
                    return;
                }
                if (u->head_done)
                    c->status = u->status;
                iov[n++] = td_iov(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
            }
            if (u->head_done && !u->tunnel) {
                uint32_t avail = u->len - u->off;
                if (u->resp_body == TD_BODY_NONE) {
                    u->resp_done = 1;
                } else if (u->resp_body == TD_BODY_LENGTH) {
                    uint32_t take = avail < u->body_left ? avail : (uint32_t)u->body_left;
                    if (take)
                        iov[n++] = td_iov(u->buf + u->off, take);
                    u->off += take;
                    u->body_left -= take;
                    u->resp_done = u->body_left == 0;
                } else if (u->resp_body == TD_BODY_CHUNKED) {
                    int done = 0;
                    td_str_t spans[MAX_SPANS];
                    size_t ns = 0;
                    long used = td_http1_chunked_feed(&u->chunk, u->buf + u->off, avail, &done,
                                                      u->dechunk ? spans : NULL, MAX_SPANS, &ns);
                    if (used < 0) {
                        upstream_fail(u, "invalid chunked response body", F_PROTOCOL);
                        return;
                    }
                    if (u->dechunk) {
                        for (size_t i = 0; i < ns; i++)
                            iov[n++] = td_iov((char *)spans[i].p, (unsigned)spans[i].len);
                    } else if (used) {
                        iov[n++] = td_iov(u->buf + u->off, (unsigned)used);
                    }
                    u->off += (uint32_t)used;
                    u->resp_done = (uint8_t)done;
                } else if (avail) { /* until close */
                    iov[n++] = td_iov(u->buf + u->off, avail);
                    u->off += avail;
                }
            }
        }
        if (n == 0) {
            if (!response_written(u))
                return;
            c = u->c;
            continue;
        }
        if (volatile_first)
            c->resp_sent = 1; /* a head goes out: td can no longer answer with its own status */
        for (unsigned i = 0; i < n; i++)
            c->bytes_out += iov[i].len;
        int r = td_stream_write(&c->io, iov, n, volatile_first, client_write_done_cb);
        if (r < 0) {
            client_close(c);
            return;
        }
        if (r == 1) {
            client_send_wait(c);
            upstream_read(u, 0); /* backpressure: a slow client stops the upstream */
            td_timeout_stop(&u->tmo);     /* and its response timeout, until the client takes the bytes */
            return;
        }
        if (!response_written(u))
            return;
        c = u->c;
    }
}

/* The bytes handed to the client so far are written. Returns 1 when buffered response bytes
 * are waiting for the pump, 0 when it has nothing to do now (reading resumed, or exchange over). */
static int response_written(upstream_t *u) {
    client_t *c = u->c;
    if (u->off == u->len)
        u->off = u->len = 0;
    if (u->tunnel && c->state == C_EXCHANGE) {
        /* 101 delivered: both directions become a raw byte tunnel. It counts as a tunnel of
         * its backend from now on, no longer as a request in flight. */
        c->state = C_TUNNEL;
        c->b_tunnel = c->b_inflight;
        if (c->b_tunnel) {
            atomic_fetch_add_explicit(&c->b_tunnel->tunnels, 1, memory_order_relaxed);
            c->tun_prev = NULL;
            c->tun_next = c->w->tunnels;
            if (c->tun_next)
                c->tun_next->tun_prev = c;
            c->w->tunnels = c;
        }
        end_exchange(c);
        td_timeout_stop(&c->tmo);
        td_timeout_stop(&u->tmo);
        if (c->len > c->req_end) {
            memmove(c->buf, c->buf + c->req_end, c->len - c->req_end);
            c->len -= c->req_end;
        } else {
            c->len = 0;
        }
        c->req_end = c->fwd = c->head_len = 0;
        if (c->len)
            request_send(c);
        else
            client_read(c, 1);
    }
    if (u->resp_done) {
        exchange_done(u);
        return 0;
    }
    /* The response timeout stopped while the client was taking the bytes: it starts again
     * (after an interim response only once the whole request is sent). */
    if (!u->tunnel && (u->head_done || c->req_done))
        upstream_timer(u, T_RESPONSE, timeout_ms(c, T_RESPONSE));
    upstream_read(u, 1);
    return u->off < u->len && u->c && u->state == U_BUSY;
}

static void upstream_got(upstream_t *u, long nread);

static void upstream_read_cb(td_stream_t *s, long nread) {
    /* A TLS close_notify ends the response as a FIN does. */
    upstream_got(td_stream_owner(s), nread == TD_STREAM_CLOSE_NOTIFY ? TD_STREAM_EOF : nread);
}

/* nread new response bytes are at the end of u->buf (or nread is an error / TD_STREAM_EOF). */
static void upstream_got(upstream_t *u, long nread) {
    if (u->state == U_IDLE) {
        upstream_close(u); /* closed by the server, or bytes nobody asked for */
        return;
    }
    if (u->state != U_BUSY)
        return;
    client_t *c = u->c;
    if (nread < 0) {
        if (!c) {
            upstream_close(u);
        } else if (u->tunnel) {
            if (c->writing) {
                c->close_after = 1;
                drop_upstream(c);
            } else {
                client_close(c);
            }
        } else if (u->head_done && u->resp_body == TD_BODY_UNTIL_CLOSE) {
            u->resp_done = 1;
            u->resp_keep_alive = 0;
            c->keep_alive = 0;
            if (!c->writing && !u->writing)
                exchange_done(u);
        } else if (!c->resp_started) {
            upstream_fail(u, nread == TD_STREAM_EOF ? "connection closed before a response"
                                             : td_stream_strerror(&u->io, (int)nread),
                          F_IO);
        } else {
            upstream_fail(u, nread == TD_STREAM_EOF ? "connection closed mid-response"
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
        upstream_timer(u, T_RESPONSE, timeout_ms(c, T_RESPONSE));
    if (c->writing) {
        upstream_read(u, 0);
        td_timeout_stop(&u->tmo); /* the client send timeout runs: the response one restarts after it */
        return;
    }
    response_pump(u);
}

/* ---------------------------------------------------------------------------------------------
 * Workers */

static void on_accept(uv_stream_t *l, int status) {
    worker_t *w = l->data;
    if (status < 0) {
        if (local_error(status)) {
            char what[100];
            snprintf(what, sizeof(what), "accept: %s", uv_strerror(status));
            local_error_log(w, what);
        } else {
            td_warn("accept: %s", uv_strerror(status));
        }
        return;
    }
    client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->w = w;
    c->backend = c->server = c->sticky_set = c->pinned = -1;
    td_stream_init(&c->io, &w->sl, c);
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    atomic_fetch_add(&open_clients, 1);
    if (td_stream_accept(&c->io, l) < 0) {
        client_close(c);
        return;
    }
    c->listener = (uint8_t)((uv_tcp_t *)l - w->listeners);
    worker_refresh(w);
    td_tls_server_t *tls = w->snap ? w->snap->listener_tls[c->listener] : NULL;
    if (tls && td_stream_tls_accept(&c->io, tls) < 0) {
        client_close(c);
        return;
    }
    td_stream_peer_ip(&c->io, c->ip, sizeof(c->ip));
    client_timer(c, T_HEADER);
    client_read(c, 1);
}

static void noop_close_cb(uv_handle_t *h) {
    (void)h;
}

/* Every TICK_MS: client deadlines. Once a second also: take a new snapshot even without
 * traffic (so idle pools of drained backends close), and close the tunnels of backends drained
 * for longer than drain_ms. */
static void tick_cb(uv_timer_t *timer) {
    worker_t *w = timer->data;
    int64_t now_loop = (int64_t)uv_now(&w->loop);
    td_timeout_t *t;
    /* Upstream timeouts first: a response timeout that passed answers 504 before the client's
     * own deadlines are looked at. */
    static const uint8_t upstream_kinds[] = {T_CONNECT, T_RESPONSE, T_POOL};
    for (size_t k = 0; k < sizeof(upstream_kinds); k++)
        while ((t = td_timeout_expired(&w->tq[upstream_kinds[k]], now_loop)))
            upstream_timeout(TD_CONTAINER_OF(t, upstream_t, tmo)); /* may close its client */
    while ((t = td_timeout_expired(&w->tq[T_SEND], now_loop)))
        client_send_timeout(TD_CONTAINER_OF(t, client_t, send_tmo), now_loop);
    static const uint8_t client_kinds[] = {T_HEADER, T_KEEPALIVE};
    for (size_t k = 0; k < sizeof(client_kinds); k++)
        while ((t = td_timeout_expired(&w->tq[client_kinds[k]], now_loop)))
            client_timeout(TD_CONTAINER_OF(t, client_t, tmo));
    if (++w->ticks % (1000 / TICK_MS))
        return;
    worker_refresh(w);
    if (!w->snap)
        return;
    int64_t now = td_now_ms(), drain_ms = w->snap->config->timeouts.drain_ms;
    for (client_t *c = w->tunnels, *next; c; c = next) {
        next = c->tun_next;
        int64_t since = atomic_load_explicit(&c->b_tunnel->drain_since_ms, memory_order_relaxed);
        if (since && now - since >= drain_ms) {
            td_info("drain: closing a tunnel of %s from %s after %lld ms at weight 0",
                    c->b_tunnel->name, c->ip, (long long)drain_ms);
            client_close(c);
        }
    }
}

/* Every 50 ms during a stop: done when no client is left; at the deadline, closes what is. */
static void drain_cb(uv_timer_t *t) {
    worker_t *w = t->data;
    w->drain_ms -= 50;
    if (w->drain_ms <= 0)
        while (w->clients)
            client_close(w->clients);
    if (!w->clients) {
        for (pool_t *p = w->pools; p; p = p->next)
            while (p->idle)
                upstream_close(p->idle);
        uv_close((uv_handle_t *)t, noop_close_cb);
        td_stream_loop_close(&w->sl);
    }
}

static void wake_cb(uv_async_t *a) {
    worker_t *w = a->data;
    w->stopping = 1;
    for (size_t i = 0; i < w->num_listeners; i++)
        uv_close((uv_handle_t *)&w->listeners[i], noop_close_cb);
    uv_close((uv_handle_t *)a, noop_close_cb);
    uv_close((uv_handle_t *)&w->tick, noop_close_cb);
    /* Idle keep-alive clients go now; busy ones close when their exchange ends. */
    for (client_t *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (c->state == C_HEAD && c->len == 0 && !c->writing)
            client_close(c);
    }
    for (pool_t *p = w->pools; p; p = p->next)
        while (p->idle)
            upstream_close(p->idle);
    uv_timer_init(&w->loop, &w->drain);
    w->drain.data = w;
    uv_timer_start(&w->drain, drain_cb, 0, 50);
}

static void worker_main(void *arg) {
    worker_t *w = arg;
    for (size_t i = 0; i < w->num_listeners; i++) {
        int taken;
        int r = td_listener_start(&w->loop, &w->listeners[i], w->listen_fds[i], w, on_accept,
                                  &taken);
        if (taken)
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

td_proxy_t *td_proxy_start(const td_config_t *cfg, char *err, size_t errlen) {
    td_proxy_t *p = calloc(1, sizeof(*p));
    if (!p)
        goto nomem;
    p->num_workers = (size_t)cfg->workers;
    p->workers = calloc(p->num_workers, sizeof(worker_t));
    if (!p->workers)
        goto nomem;
    for (size_t i = 0; i < p->num_workers; i++) {
        worker_t *w = &p->workers[i];
        td_access_log_init(&w->alog);
        w->num_listeners = cfg->num_listeners;
        w->listeners = calloc(cfg->num_listeners, sizeof(uv_tcp_t));
        w->listen_fds = calloc(cfg->num_listeners, sizeof(int));
        if (!w->listeners || !w->listen_fds)
            goto nomem;
        for (size_t j = 0; j < cfg->num_listeners; j++)
            w->listen_fds[j] = -1;
        for (size_t j = 0; j < cfg->num_listeners; j++) {
            w->listen_fds[j] = td_listener_bind(&cfg->listeners[j].address, i == 0, err, errlen);
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
        uv_thread_create(&w->thread, worker_main, w);
    }
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

void td_proxy_stop(td_proxy_t *p, int drain_ms) {
    if (!p)
        return;
    for (size_t i = 0; i < p->num_workers; i++) {
        p->workers[i].drain_ms = drain_ms;
        uv_async_send(&p->workers[i].wake);
    }
    for (size_t i = 0; i < p->num_workers; i++) {
        worker_t *w = &p->workers[i];
        uv_thread_join(&w->thread);
        uv_loop_close(&w->loop);
        for (pool_t *pl = w->pools, *next; pl; pl = next) {
            next = pl->next;
            free(pl);
        }
        free(w->wrr_b);
        free(w->wrr_s);
        while (w->num_cached)
            free(w->buf_cache[--w->num_cached]);
        free(w->listeners);
        free(w->listen_fds);
    }
    free(p->workers);
    free(p);
}
