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
 * its buffers however slow the peer. Writes are tried synchronously first (uv_try_write); only a
 * partial write goes through uv_write, with the bytes left pinned in their read buffer.
 *
 * Objects are freed only in their close callbacks, never inside their own read/write callbacks. */
#include "td/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "td/http1.h"
#include "td/rewrite.h"
#include "td/log.h"
#include "td/router.h"
#include "td/sticky.h"
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
    int alog_fd;          /* access log, or -1 */
    char alog_path[256];  /* what alog_fd was opened from */
    td_snapshot_t *snap; /* one reference held by the worker */
    int *wrr_b, *wrr_s;  /* owned: balancer scores per backend / per flat server index */
    size_t wrr_nb, wrr_ns;
    pool_t *pools;        /* owned */
    client_t *clients;    /* every open client connection (for a stop) */
    char *buf_cache[64];      /* owned: free client buffers, reused instead of malloc/free */
    int num_cached;
    int64_t local_err_ms;     /* when a local resource error was last logged ... */
    unsigned local_err_quiet; /* ... and how many were not logged since */
    uv_idle_t tls_idle;       /* runs tls_pump for connections whose TLS holds plaintext */
    client_t *tls_clients;    /* clients waiting for that (tls_next list) */
    upstream_t *tls_upstreams; /* upstreams waiting for that (tls_next list) */
    td_http1_header_t hdrs[MAX_HDRS];
    const td_http1_request_t *parsed; /* the request start_request parsed into hdrs ... */
    const client_t *parsed_for;       /* ... for this client, while it routes it; else NULL */
    char scratch[CBUF_SIZE + 2048]; /* response/request heads are built here */
    char cipher[UBUF_SIZE];         /* TLS records are read here, then decrypted */
};

enum { C_HEAD, C_EXCHANGE, C_TUNNEL, C_CLOSING };
enum { U_CONNECTING, U_BUSY, U_IDLE, U_CLOSING };

struct client_s {
    uv_tcp_t tcp;
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
    int64_t deadline;   /* uv_now() ms when the head / keep-alive / body timeout fires; 0 none */
    int64_t send_deadline; /* uv_now() ms when a pending write to the client times out; 0 none */
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
    int tries;
    int sticky_set;      /* backend index to pin with Set-Cookie in the response, or -1 */
    uint32_t tried[MAX_TRIES]; /* flat server indices tried for this request */
    uint8_t ntried;            /* entries used in tried */
    int64_t started_ms;
    uint8_t state;
    uint8_t writing;     /* a uv_write to this client is pending */
    uint8_t reading;     /* uv_read_start is on */
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
    td_tls_conn_t *tls;  /* owned; NULL on a plain listener */
    char *last_error;    /* owned: why the last upstream try failed, for the 502 line */
    client_t *tls_next;  /* in w->tls_clients */
    uint8_t tls_queued;
    uint8_t listener;    /* index of the listener it came in on */
};

struct upstream_s {
    uv_tcp_t tcp;
    uv_connect_t creq;
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
    uint8_t state, reused, writing, reading;
    int64_t deadline;      /* uv_now() ms of the connect / response / pool-idle timeout; 0 none */
    uint8_t head_done, resp_body, resp_keep_alive, resp_done, dechunk, tunnel;
    uint8_t interim;       /* 1xx responses seen in this exchange */
    td_tls_conn_t *tls;    /* owned; NULL for plain HTTP to the server */
    upstream_t *tls_next;  /* in w->tls_upstreams */
    uint8_t tls_queued;
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
enum { T_HEADER, T_KEEPALIVE, T_CONNECT, T_RESPONSE, T_SEND };

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
static void access_log_refresh(worker_t *w);

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
    access_log_refresh(w);
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

/* A write that could not finish at once: its request and the bytes that had to be copied (the
 * unwritten part of a rewritten head, or TLS ciphertext). Allocated only then: a connection holds
 * no write request of its own. The callback gets req->data (the owner) and frees the request. */
typedef struct pending_s {
    uv_write_t req; /* first: free(req) frees it all */
    char data[];
} pending_t;

static void loose_write_cb(uv_write_t *req, int status) {
    (void)status;
    free(req);
}

/* Sends the ciphertext a TLS connection has ready: synchronously when the socket takes it all,
 * else through uv_write; with cb NULL the write is fire-and-forget (handshake records).
 * Returns 0, 1 (cb will run with req->data = owner) or a negative uv error. */
static int tls_send(uv_stream_t *dst, void *owner, td_tls_conn_t *t, uv_write_cb cb) {
    size_t n = td_tls_pending_out(t);
    if (!n)
        return 0;
    pending_t *pw = malloc(sizeof(*pw) + n);
    if (!pw)
        return UV_ENOMEM;
    n = td_tls_take(t, pw->data, n);
    uv_buf_t b = uv_buf_init(pw->data, (unsigned)n);
    int r = uv_try_write(dst, &b, 1);
    if (r == UV_EAGAIN || r == UV_ENOSYS)
        r = 0;
    if (r < 0 || (size_t)r == n) {
        free(pw);
        return r < 0 ? r : 0;
    }
    b.base += r;
    b.len -= (unsigned)r;
    pw->req.data = owner;
    r = uv_write(&pw->req, dst, &b, 1, cb ? cb : loose_write_cb);
    if (r < 0) {
        free(pw);
        return r;
    }
    return cb ? 1 : 0;
}

/* Before a TLS connection is closed: its close_notify goes out if the socket takes it at once.
 * A close never waits for the peer, and with a write still queued (uv_try_write refuses then)
 * the alert is left out rather than sent ahead of the data. */
static void tls_close_notify(uv_stream_t *dst, td_tls_conn_t *t) {
    char alert[256];
    if (!td_tls_shutdown(t))
        return;
    size_t n = td_tls_pending_out(t);
    if (!n || n > sizeof(alert))
        return;
    n = td_tls_take(t, alert, n);
    uv_buf_t b = uv_buf_init(alert, (unsigned)n);
    (void)uv_try_write(dst, &b, 1);
}

/* Writes iov[0..n) to `dst`: synchronously when the socket takes it all, else through uv_write.
 * iov[0] may point into the worker's scratch area (`volatile_first`): its unwritten part is then
 * copied; the other pieces stay pinned in their read buffers until `cb` runs. Over TLS the
 * plaintext is encrypted at once and only ciphertext waits.
 * Returns 0 when everything was written now, 1 when `cb` will be called (with req->data =
 * owner; it frees req), or a negative uv error. */
static int send_iov(uv_stream_t *dst, void *owner, uv_buf_t *iov, unsigned n, int volatile_first,
                    uv_write_cb cb, td_tls_conn_t *tls) {
    if (tls) {
        for (unsigned i = 0; i < n; i++)
            if (iov[i].len && td_tls_write(tls, iov[i].base, iov[i].len) < 0)
                return UV_EPROTO;
        return tls_send(dst, owner, tls, cb);
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += iov[i].len;
    if (total == 0)
        return 0;
    int r = uv_try_write(dst, iov, n);
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
    pw->req.data = owner;
    r = uv_write(&pw->req, dst, iov + i, n - i, cb);
    if (r < 0) {
        free(pw);
        return r;
    }
    return 1;
}

static void add_str(char **p, const char *end, const char *s, size_t n) {
    if (*p + n <= end) {
        memcpy(*p, s, n);
        *p += n;
    } else {
        *p = (char *)end + 1; /* marks overflow */
    }
}
#define ADD_LIT(pp, e, lit) add_str(pp, e, lit, sizeof(lit) - 1)
#define ADD_STR(pp, e, s) add_str(pp, e, (s).p, (s).len)

/* Hop-by-hop fields (RFC 9110 §7.6.1) and the ones td rewrites itself. */
static int hop_by_hop(td_str_t n) {
    switch (n.len) {
    case 2: return td_http1_name_is(n, "te");
    case 7: return td_http1_name_is(n, "upgrade") || td_http1_name_is(n, "trailer");
    case 10: return td_http1_name_is(n, "connection") || td_http1_name_is(n, "keep-alive");
    case 16: return td_http1_name_is(n, "proxy-connection");
    case 17: return td_http1_name_is(n, "transfer-encoding");
    default: return 0;
    }
}

/* 1 when `name` is listed in the Connection value `conn` and may be removed as hop-by-hop.
 * Framing fields and Host are never removed that way: "Connection: Content-Length" would
 * otherwise strip the length while the body is still forwarded, and the backend would read the
 * body as a request of its own (request smuggling). */
static int connection_listed(td_str_t conn, td_str_t name) {
    char lower[64];
    if (!conn.len || name.len >= sizeof(lower))
        return 0;
    if ((name.len == 14 && td_http1_name_is(name, "content-length")) ||
        (name.len == 4 && td_http1_name_is(name, "host")))
        return 0;
    for (size_t i = 0; i < name.len; i++) {
        char ch = name.p[i];
        lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    lower[name.len] = 0;
    return td_http1_list_has(conn, lower);
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

static void client_free_cb(uv_handle_t *h) {
    client_t *c = h->data;
    client_buf_put(c);
    free(c->last_error);
    free(c->path);
    if (c->tls) {
        td_tls_free(c->tls);
        free(c->tls);
    }
    free(c);
}

/* Drops the in-flight counts of the current exchange (each taken once, released once). */
static void release_server(client_t *c) {
    if (c->st_inflight) {
        atomic_fetch_sub_explicit(&c->st_inflight->in_flight, 1, memory_order_relaxed);
        c->st_inflight = NULL;
    }
}

/* Opens (or re-opens, after a change) the access log named by the worker's snapshot. */
static void access_log_refresh(worker_t *w) {
    const char *path = w->snap ? w->snap->config->access_log : "";
    if (strcmp(path, w->alog_path) == 0)
        return;
    if (w->alog_fd > 2)
        close(w->alog_fd);
    w->alog_fd = -1;
    snprintf(w->alog_path, sizeof(w->alog_path), "%s", path);
    if (!path[0])
        return;
    if (strcmp(path, "stderr") == 0) {
        w->alog_fd = STDERR_FILENO;
        return;
    }
    w->alog_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (w->alog_fd < 0)
        td_error("access log: cannot open %s: %s", path, strerror(errno));
}

/* Writes one JSON string value (quotes and escapes included) into p, at most `cap` bytes. */
static size_t json_str(char *p, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    if (cap < 8)
        return 0;
    p[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            p[o++] = '\\';
            p[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(p + o, cap - o, "\\u%04x", ch);
        } else {
            p[o++] = (char)ch;
        }
    }
    p[o++] = '"';
    return o;
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
    if (w->alog_fd < 0)
        return;
    char line[1024], tbuf[40];
    int64_t wall = td_wall_ms();
    time_t secs = (time_t)(wall / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
    const char *be = c->snap && c->backend >= 0 ? c->snap->backends[c->backend].name : "";
    const char *sv = c->snap && c->backend >= 0 && c->server >= 0
                         ? c->snap->backends[c->backend].servers[c->server].addr.text
                         : "";
    size_t n = (size_t)snprintf(line, sizeof(line), "{\"time\":\"%s.%03dZ\",\"client\":\"%s\",\"method\":",
                                tbuf, (int)(wall % 1000), c->ip);
    n += json_str(line + n, sizeof(line) - n - 200, c->method, strlen(c->method));
    n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"path\":");
    n += json_str(line + n, sizeof(line) - n - 200, c->path ? c->path : "",
                  c->path ? strlen(c->path) : 0);
    n += (size_t)snprintf(line + n, sizeof(line) - n,
                          ",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%lld,\"backend\":\"%s\","
                          "\"server\":\"%s\"}\n",
                          c->status, (unsigned long long)c->bytes_out, (long long)ms, be, sv);
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    ssize_t wr = write(w->alog_fd, line, n);
    (void)wr;
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
    if (c->tls_queued) /* freed after this loop iteration: not in the TLS pump's list then */
        for (client_t **pp = &c->w->tls_clients; *pp; pp = &(*pp)->tls_next)
            if (*pp == c) {
                *pp = c->tls_next;
                break;
            }
    drop_upstream(c);
    end_exchange(c);
    if (c->b_tunnel)
        atomic_fetch_sub_explicit(&c->b_tunnel->tunnels, 1, memory_order_relaxed);
    if (c->prev)
        c->prev->next = c->next;
    else if (c->w->clients == c)
        c->w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    atomic_fetch_sub(&open_clients, 1);
    if (c->tls)
        tls_close_notify((uv_stream_t *)&c->tcp, c->tls);
    uv_close((uv_handle_t *)&c->tcp, client_free_cb);
}

/* Client timeouts are deadlines checked by the worker's clock (every TICK_MS) rather than a
 * timer handle per connection: an idle connection stays small. */
static void client_timer(client_t *c, int which) {
    c->deadline = (int64_t)uv_now(&c->w->loop) + timeout_ms(c, which);
}

static void client_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    client_t *c = h->data;
    if (c->tls) { /* records land in the worker's cipher buffer and are decrypted at once */
        *out = uv_buf_init(c->w->cipher, sizeof(c->w->cipher));
        return;
    }
    if (client_buf_get(c) < 0) {
        *out = uv_buf_init(NULL, 0);
        return;
    }
    *out = uv_buf_init(c->buf + c->len, c->cap - c->len);
}

static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void tls_wake(worker_t *w);

static void client_read(client_t *c, int on) {
    if (c->state == C_CLOSING || c->reading == on)
        return;
    c->reading = (uint8_t)on;
    if (on)
        uv_read_start((uv_stream_t *)&c->tcp, client_alloc_cb, client_read_cb);
    else
        uv_read_stop((uv_stream_t *)&c->tcp);
    /* Bytes TLS already holds will not wake the socket: queue them for the TLS pump. */
    if (on && c->tls && !c->tls_queued && td_tls_has_input(c->tls)) {
        c->tls_queued = 1;
        c->tls_next = c->w->tls_clients;
        c->w->tls_clients = c;
        tls_wake(c->w);
    }
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
static void client_write_done_cb(uv_write_t *req, int status);

/* A write to the client could not finish at once: the client send timeout starts. It measures
 * the client, not the backend: the upstream's response timeout does not run meanwhile. */
static void client_send_wait(client_t *c) {
    c->writing = 1;
    c->send_left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    c->send_deadline = (int64_t)uv_now(&c->w->loop) + timeout_ms(c, T_SEND);
}

/* The client send deadline passed. A client that took some of the pending bytes since the last
 * look gets a new period (the timeout is between two writes that make progress, as nginx's
 * send_timeout, not for the whole response); one that took nothing is closed, as its own fault:
 * nothing is charged to the backend. */
static void client_send_timeout(client_t *c, int64_t now) {
    size_t left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (left < c->send_left) {
        c->send_left = left;
        c->send_deadline = now + timeout_ms(c, T_SEND);
        return;
    }
    c->send_deadline = 0;
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
    uv_buf_t iov = uv_buf_init(p, (unsigned)n);
    int r = send_iov((uv_stream_t *)&c->tcp, c, &iov, 1, 1, client_write_done_cb, c->tls);
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
    start_request(c);
}

/* Case-insensitive comparison of a field name with a configured (mixed-case) name. */
static int name_eq(td_str_t n, const char *name, size_t len) {
    return n.len == len && strncasecmp(n.p, name, len) == 0;
}

/* 1 when the field is the preview header or its token header ("<header>-Token"): both are
 * stripped before forwarding, valid or not. */
static int preview_field(const td_config_t *cfg, td_str_t n) {
    size_t hl = strlen(cfg->preview_header);
    return name_eq(n, cfg->preview_header, hl) ||
           (n.len == hl + 6 && strncasecmp(n.p, cfg->preview_header, hl) == 0 &&
            strncasecmp(n.p + hl, "-Token", 6) == 0);
}

/* The preview route: "<header>: blue" with "<header>-Token: TOKEN" reaches blue whatever its
 * weight. Returns the backend index, or -1 when absent, unknown or the token is wrong. */
static int preview_backend(const td_snapshot_t *s, const td_http1_request_t *req) {
    const td_config_t *cfg = s->config;
    size_t hl = strlen(cfg->preview_header), tl = strlen(cfg->preview_token);
    td_str_t name = {NULL, 0}, token = {NULL, 0};
    for (size_t i = 0; i < req->num_headers; i++) {
        td_str_t n = req->headers[i].name;
        if (name_eq(n, cfg->preview_header, hl))
            name = req->headers[i].value;
        else if (preview_field(cfg, n))
            token = req->headers[i].value;
    }
    if (!name.len || token.len != tl)
        return -1;
    unsigned diff = 0;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned)(token.p[i] ^ cfg->preview_token[i]);
    return diff ? -1 : td_snapshot_find_backend(s, name.p, name.len);
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
        uv_buf_t iov = uv_buf_init((char *)cont, sizeof(cont) - 1);
        int r = send_iov((uv_stream_t *)&c->tcp, c, &iov, 1, 0, client_write_done_cb, c->tls);
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
    c->deadline = 0; /* from here as without buffering: the upstream side sets the timeouts */
    if (c->req_done)
        client_read(c, 0); /* what comes now is a pipelined request: it waits */
    pick_and_connect(c);
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
    c->deadline = 0;
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
    if (w->alog_fd >= 0)
        c->path = strndup(req.target.p, req.target.len < 512 ? req.target.len : 512);
    const td_config_t *pcfg = c->snap->config;
    if (c->listener < pcfg->num_listeners && pcfg->listeners[c->listener].redirect_https) {
        redirect_https(c, &req, &pcfg->listeners[c->listener]);
        return;
    }
    if (pcfg->preview_token[0])
        c->forced = preview_backend(c->snap, &req);
    int pinned = -1;
    if (c->snap->method == TD_METHOD_STICKY) {
        const td_config_t *cfg = c->snap->config;
        for (size_t i = 0; i < req.num_headers && pinned < 0; i++) {
            td_str_t be;
            if (td_http1_name_is(req.headers[i].name, "cookie") &&
                td_sticky_parse(&c->snap->sticky_key, req.headers[i].value, cfg->cookie_name,
                                td_wall_ms() / 1000, &be))
                pinned = td_snapshot_find_backend(c->snap, be.p, be.len);
        }
        if (pinned >= 0)
            td_router_pin_seen(c->snap->backends[pinned].st, td_now_ms());
    }
    c->pinned = pinned;
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
 * bytes (re-parsed: the head is still at the start of c->buf). Returns its length, or -1. */
/* Field lines that pass through unchanged are copied as they came, one copy per run of
 * consecutive kept lines (lines are contiguous in the buffer): a kept line opens or extends the
 * run; flush_fields copies it up to `stop` (the start of a line not kept, or the head's final
 * CRLF). */
static void keep_field(const char **run, td_str_t name) {
    if (!*run)
        *run = name.p;
}

/* "Content-Length: N" as one field: identical values sent as a list or in several field lines
 * are merged (RFC 9110 §8.6), so the next hop never has to choose between them. */
static void add_content_length(char **p, const char *end, uint64_t n) {
    char f[48];
    int fl = snprintf(f, sizeof(f), "Content-Length: %llu\r\n", (unsigned long long)n);
    add_str(p, end, f, (size_t)fl);
}

static void flush_fields(const char **run, char **p, const char *end, const char *stop) {
    if (*run) {
        add_str(p, end, *run, (size_t)(stop - *run));
        *run = NULL;
    }
}

static int build_request_head(client_t *c) {
    worker_t *w = c->w;
    td_http1_request_t req;
    if (w->parsed_for == c)
        req = *w->parsed; /* still in w->hdrs: the head is being sent as it was parsed */
    else if (td_http1_parse_request(c->buf, c->head_len, &limits, &req, w->hdrs, MAX_HDRS) <= 0)
        return -1;
    char *p = w->scratch, *end = w->scratch + sizeof(w->scratch);
    /* absolute-form ("GET http://example.com/x"): the target's authority is the host (RFC 9112
     * §3.2.2) and the upstream gets origin-form, so Host and target can never disagree. */
    td_str_t target = req.target, authority = {NULL, 0};
    const char *scheme_end = target.len > 7 && target.p[0] != '/'
                                 ? memmem(target.p, target.len, "://", 3)
                                 : NULL;
    if (scheme_end) {
        const char *a = scheme_end + 3, *tend = target.p + target.len;
        const char *slash = memchr(a, '/', (size_t)(tend - a));
        const char *q = memchr(a, '?', (size_t)(tend - a));
        const char *stop = slash && (!q || slash < q) ? slash : q ? q : tend;
        authority = (td_str_t){a, (size_t)(stop - a)};
        target = (td_str_t){stop, (size_t)(tend - stop)};
    }
    ADD_STR(&p, end, req.method);
    ADD_LIT(&p, end, " ");
    if (scheme_end && (!target.len || target.p[0] != '/'))
        ADD_LIT(&p, end, "/"); /* "http://a" or "http://a?q" */
    ADD_STR(&p, end, target);
    ADD_LIT(&p, end, " HTTP/1.1\r\n");
    td_str_t host = authority.len ? authority : req.host;
    td_str_t conn = {NULL, 0};
    if (req.conn_flags & TD_CONN_OTHER)
        conn = find_header(req.headers, req.num_headers, "connection");
    const td_config_t *cfg = c->snap ? c->snap->config : NULL;
    td_str_t xff = {NULL, 0};
    const char *run = NULL;
    for (size_t i = 0; i < req.num_headers; i++) {
        td_str_t n = req.headers[i].name;
        int drop = hop_by_hop(n) ||
                   ((req.conn_flags & TD_CONN_OTHER) && connection_listed(conn, n)) ||
                   (cfg && preview_field(cfg, n)) ||
                   (n.len == 17 && td_http1_name_is(n, "x-forwarded-proto")) ||
                   (n.len == 16 && td_http1_name_is(n, "x-forwarded-host")) ||
                   (authority.len && n.len == 4 && td_http1_name_is(n, "host")) ||
                   (req.content_length_repeated && n.len == 14 &&
                    td_http1_name_is(n, "content-length")) ||
                   (c->continued && n.len == 6 && td_http1_name_is(n, "expect"));
        if (!drop && n.len == 15 && td_http1_name_is(n, "x-forwarded-for")) {
            xff = req.headers[i].value; /* appended to below */
            drop = 1;
        }
        if (drop)
            flush_fields(&run, &p, end, n.p);
        else
            keep_field(&run, n);
    }
    flush_fields(&run, &p, end, c->buf + c->head_len - 2);
    if (req.body == TD_BODY_CHUNKED)
        ADD_LIT(&p, end, "Transfer-Encoding: chunked\r\n");
    if (req.content_length_repeated)
        add_content_length(&p, end, req.content_length);
    if (c->upgrade) {
        td_str_t up = find_header(req.headers, req.num_headers, "upgrade");
        ADD_LIT(&p, end, "Connection: upgrade\r\nUpgrade: ");
        ADD_STR(&p, end, up);
        ADD_LIT(&p, end, "\r\n");
    }
    if (authority.len) {
        ADD_LIT(&p, end, "Host: ");
        ADD_STR(&p, end, authority);
        ADD_LIT(&p, end, "\r\n");
    } else if (!req.host.len && c->snap && c->backend >= 0 && c->server >= 0) {
        /* HTTP/1.0 without Host: an HTTP/1.1 request needs one (RFC 9112 §3.2). */
        const char *a = c->snap->backends[c->backend].servers[c->server].addr.text;
        ADD_LIT(&p, end, "Host: ");
        add_str(&p, end, a, strlen(a));
        ADD_LIT(&p, end, "\r\n");
    }
    ADD_LIT(&p, end, "X-Forwarded-For: ");
    if (xff.len) {
        ADD_STR(&p, end, xff);
        ADD_LIT(&p, end, ", ");
    }
    add_str(&p, end, c->ip, strlen(c->ip));
    if (c->tls)
        ADD_LIT(&p, end, "\r\nX-Forwarded-Proto: https\r\n");
    else
        ADD_LIT(&p, end, "\r\nX-Forwarded-Proto: http\r\n");
    if (host.len) {
        ADD_LIT(&p, end, "X-Forwarded-Host: ");
        ADD_STR(&p, end, host);
        ADD_LIT(&p, end, "\r\n");
    }
    ADD_LIT(&p, end, "\r\n");
    if (p > end)
        return -1;
    return (int)(p - w->scratch);
}

/* Upstream timeouts are deadlines on the worker's clock too: a timer per request costs more than
 * the rest of the exchange's bookkeeping. */
static void upstream_timer(upstream_t *u, int ms) {
    u->deadline = (int64_t)uv_now(&u->w->loop) + ms;
}

static void request_written(client_t *c);
static void upstream_fail(upstream_t *u, const char *why, int kind);
/* F_LOCAL: td itself lacked a resource (file descriptors, memory, local ports) to reach the
 * upstream; it says nothing about the server. */
enum { F_CONNECT, F_IO, F_TIMEOUT, F_PROTOCOL, F_LOCAL };

/* 1 for the errors of td's own resources, not the upstream's: they are not passive failures
 * and retrying them on another server would only repeat them. */
static int local_error(int err) {
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOMEM || err == UV_ENOBUFS ||
           err == UV_EADDRNOTAVAIL;
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

static void upstream_write_cb(uv_write_t *req, int status) {
    upstream_t *u = req->data;
    u->writing = 0;
    free(req);
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (u->c)
            upstream_fail(u, uv_strerror(status), F_IO);
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
        uv_buf_t iov[2];
        unsigned n = 0;
        int volatile_first = 0;
        if (c->state == C_TUNNEL) {
            if (c->len == 0)
                return;
            iov[n++] = uv_buf_init(c->buf, c->len);
        } else {
            if (!c->head_sent) {
                int hl = build_request_head(c);
                if (hl < 0) {
                    c->keep_alive = 0;
                    client_error(c, 400, "request head cannot be forwarded");
                    return;
                }
                iov[n++] = uv_buf_init(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
                c->fwd = c->head_len;
                c->head_sent = 1;
            }
            if (c->req_end > c->fwd) {
                iov[n++] = uv_buf_init(c->buf + c->fwd, c->req_end - c->fwd);
                c->body_sent = 1;
            }
            if (n == 0)
                return;
        }
        int r = send_iov((uv_stream_t *)&u->tcp, u, iov, n, volatile_first, upstream_write_cb,
                         u->tls);
        if (r < 0) {
            upstream_fail(u, uv_strerror(r), F_IO);
            return;
        }
        if (r == 1) {
            u->writing = 1;
            client_read(c, 0);
            c->deadline = 0; /* waiting on the upstream is not the client's delay */
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
        upstream_timer(c->up, timeout_ms(c, T_RESPONSE));
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
    c->deadline = 0;
}

static void client_got(client_t *c, size_t nread);

/* Decrypts what the client's TLS holds into c->buf, as long as the client is being read. */
static void client_tls_pump(client_t *c) {
    while (c->state != C_CLOSING && c->reading) {
        if (client_buf_get(c) < 0) {
            client_close(c);
            return;
        }
        long n = td_tls_read(c->tls, c->buf + c->len, c->cap - c->len);
        if (tls_send((uv_stream_t *)&c->tcp, NULL, c->tls, NULL) < 0 || n < 0) {
            if (n < 0 && strcmp(c->tls->error, "closed") != 0)
                td_info("TLS from %s: %s", c->ip, c->tls->error);
            client_close(c);
            return;
        }
        if (n == 0)
            return;
        client_got(c, (size_t)n);
    }
}

static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    client_t *c = s->data;
    if (nread == UV_ENOBUFS) { /* buffer full: wait until the exchange makes room */
        client_read(c, 0);
        return;
    }
    if (nread == UV_EOF && c->state == C_EXCHANGE && c->req_done) {
        /* Half-close after a whole request: answer it and any pipelined ones already read,
         * then close. */
        c->eof = 1;
        client_read(c, 0);
        return;
    }
    if (nread < 0) {
        if (c->state == C_HEAD && c->len > 0)
            td_debug("client %s closed with an incomplete request head", c->ip);
        client_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (c->tls) {
        if (td_tls_feed(c->tls, b->base, (size_t)nread) < 0)
            client_close(c);
        else
            client_tls_pump(c);
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
        start_request(c);
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

static void upstream_free_cb(uv_handle_t *h) {
    upstream_t *u = h->data;
    free(u->buf);
    if (u->tls) {
        td_tls_free(u->tls);
        free(u->tls);
    }
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
    if (u->tls_queued)
        for (upstream_t **pp = &u->w->tls_upstreams; *pp; pp = &(*pp)->tls_next)
            if (*pp == u) {
                *pp = u->tls_next;
                break;
            }
    if (u->c) {
        u->c->up = NULL;
        u->c = NULL;
    }
    atomic_fetch_sub_explicit(&u->st->active_connections, 1, memory_order_relaxed);
    if (u->tls)
        tls_close_notify((uv_stream_t *)&u->tcp, u->tls);
    uv_close((uv_handle_t *)&u->tcp, upstream_free_cb);
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

static void upstream_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    upstream_t *u = h->data;
    if (u->tls) {
        *out = uv_buf_init(u->w->cipher, sizeof(u->w->cipher));
        return;
    }
    if (!u->buf) {
        u->buf = malloc(UBUF_SIZE);
        if (!u->buf) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
    }
    *out = uv_buf_init(u->buf + u->len, UBUF_SIZE - u->len);
}

static void upstream_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void upstream_read(upstream_t *u, int on) {
    if (u->state == U_CLOSING || u->reading == on)
        return;
    u->reading = (uint8_t)on;
    if (on)
        uv_read_start((uv_stream_t *)&u->tcp, upstream_alloc_cb, upstream_read_cb);
    else
        uv_read_stop((uv_stream_t *)&u->tcp);
    if (on && u->tls && !u->tls_queued && td_tls_has_input(u->tls)) {
        u->tls_queued = 1;
        u->tls_next = u->w->tls_upstreams;
        u->w->tls_upstreams = u;
        tls_wake(u->w);
    }
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
    upstream_timer(u, POOL_IDLE_MS);
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
        upstream_timer(u, timeout_ms(c, T_RESPONSE));
    else
        u->deadline = 0;
    upstream_read(u, 1);
    request_send(c);
}

static void upstream_tls_pump(upstream_t *u);

static void upstream_connect_cb(uv_connect_t *req, int status) {
    upstream_t *u = req->data;
    if (u->state == U_CLOSING)
        return;
    if (status < 0) {
        if (u->c)
            upstream_fail(u, uv_strerror(status), local_error(status) ? F_LOCAL : F_CONNECT);
        else
            upstream_close(u);
        return;
    }
    if (!u->c) {
        upstream_close(u);
        return;
    }
    uv_tcp_nodelay(&u->tcp, 1);
    if (u->tls) { /* the handshake first; upstream_tls_pump attaches when it is done */
        upstream_read(u, 1);
        upstream_tls_pump(u);
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
    u->tcp.data = u->creq.data = u;
    uv_tcp_init(&w->loop, &u->tcp);
    atomic_fetch_add_explicit(&u->st->active_connections, 1, memory_order_relaxed);
    u->state = U_CONNECTING;
    u->c = c;
    c->up = u;
    td_tls_client_t *tls = c->snap->backends[c->backend].tls;
    if (tls && (!(u->tls = calloc(1, sizeof(*u->tls))) || td_tls_connect(u->tls, tls) < 0)) {
        upstream_fail(u, "out of memory", F_LOCAL);
        return;
    }
    int r = uv_tcp_connect(&u->creq, &u->tcp, (const struct sockaddr *)&srv->addr.sa,
                           upstream_connect_cb);
    if (r < 0) {
        upstream_fail(u, uv_strerror(r), local_error(r) ? F_LOCAL : F_CONNECT);
        return;
    }
    upstream_timer(u, timeout_ms(c, T_CONNECT));
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
        if (s->method == TD_METHOD_STICKY && bi != c->pinned && c->forced < 0)
            c->sticky_set = bi;
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

/* Builds the response head for the client into the scratch area. */
static int build_response_head(upstream_t *u, client_t *c, const td_http1_response_t *resp,
                               const char *head_end) {
    char *p = c->w->scratch, *end = c->w->scratch + sizeof(c->w->scratch);
    char line[13] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + resp->status / 100 % 10);
    line[10] = (char)('0' + resp->status / 10 % 10);
    line[11] = (char)('0' + resp->status % 10);
    add_str(&p, end, line, sizeof(line));
    ADD_STR(&p, end, resp->reason);
    ADD_LIT(&p, end, "\r\n");
    td_str_t conn = {NULL, 0};
    if (resp->conn_flags & TD_CONN_OTHER)
        conn = find_header(resp->headers, resp->num_headers, "connection");
    int switching = resp->status == 101;
    const char *run = NULL;
    for (size_t i = 0; i < resp->num_headers; i++) {
        td_str_t h = resp->headers[i].name;
        /* Upgrade stays on a 101: it names the protocol switched to. Transfer-Encoding passes
         * as it came (with every coding it lists) when the chunked body is passed through. */
        int keep_te = !u->dechunk && h.len == 17 && td_http1_name_is(h, "transfer-encoding");
        int drop = !(switching && h.len == 7 && td_http1_name_is(h, "upgrade")) && !keep_te &&
                   (hop_by_hop(h) ||
                    ((resp->conn_flags & TD_CONN_OTHER) && connection_listed(conn, h)) ||
                    (resp->content_length_repeated && h.len == 14 &&
                     td_http1_name_is(h, "content-length")));
        if (drop)
            flush_fields(&run, &p, end, h.p);
        else
            keep_field(&run, h);
    }
    flush_fields(&run, &p, end, head_end - 2);
    if (resp->content_length_repeated)
        add_content_length(&p, end, resp->content_length);
    if (resp->status >= 200) {
        if (c->sticky_set >= 0 && c->snap) {
            const td_config_t *cfg = c->snap->config;
            char v[160];
            int64_t expiry = td_wall_ms() / 1000 + cfg->cookie_max_age_s;
            if (td_sticky_make(&c->snap->sticky_key, v, sizeof(v),
                               c->snap->backends[c->sticky_set].name, expiry)) {
                static const char *const same_site[] = {"Lax", "Strict", "None"};
                int secure = cfg->cookie_secure == TD_COOKIE_SECURE_ALWAYS ||
                             (cfg->cookie_secure == TD_COOKIE_SECURE_AUTO && c->tls);
                char cookie[360];
                int cl = snprintf(cookie, sizeof(cookie),
                                  "Set-Cookie: %s=%s; Max-Age=%d; Path=/%s%s; SameSite=%s\r\n",
                                  cfg->cookie_name, v, cfg->cookie_max_age_s,
                                  cfg->cookie_http_only ? "; HttpOnly" : "",
                                  secure ? "; Secure" : "", same_site[cfg->cookie_same_site]);
                add_str(&p, end, cookie, (size_t)cl);
            }
        }
        if (!c->keep_alive)
            ADD_LIT(&p, end, "Connection: close\r\n");
        else if (c->minor == 0)
            ADD_LIT(&p, end, "Connection: keep-alive\r\n");
    } else if (switching) {
        ADD_LIT(&p, end, "Connection: upgrade\r\n");
    }
    ADD_LIT(&p, end, "\r\n");
    if (p > end)
        return -1;
    return (int)(p - c->w->scratch);
}

static int response_written(upstream_t *u);

static void client_write_done_cb(uv_write_t *req, int status) {
    client_t *c = req->data;
    c->writing = 0;
    c->send_deadline = 0;
    free(req);
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
        uv_buf_t iov[MAX_SPANS + 1];
        unsigned n = 0;
        int volatile_first = 0;
        if (u->tunnel) {
            if (u->off == u->len) {
                upstream_read(u, 1);
                return;
            }
            iov[n++] = uv_buf_init(u->buf + u->off, u->len - u->off);
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
                iov[n++] = uv_buf_init(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
            }
            if (u->head_done && !u->tunnel) {
                uint32_t avail = u->len - u->off;
                if (u->resp_body == TD_BODY_NONE) {
                    u->resp_done = 1;
                } else if (u->resp_body == TD_BODY_LENGTH) {
                    uint32_t take = avail < u->body_left ? avail : (uint32_t)u->body_left;
                    if (take)
                        iov[n++] = uv_buf_init(u->buf + u->off, take);
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
                            iov[n++] = uv_buf_init((char *)spans[i].p, (unsigned)spans[i].len);
                    } else if (used) {
                        iov[n++] = uv_buf_init(u->buf + u->off, (unsigned)used);
                    }
                    u->off += (uint32_t)used;
                    u->resp_done = (uint8_t)done;
                } else if (avail) { /* until close */
                    iov[n++] = uv_buf_init(u->buf + u->off, avail);
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
        int r = send_iov((uv_stream_t *)&c->tcp, c, iov, n, volatile_first, client_write_done_cb,
                         c->tls);
        if (r < 0) {
            client_close(c);
            return;
        }
        if (r == 1) {
            client_send_wait(c);
            upstream_read(u, 0); /* backpressure: a slow client stops the upstream */
            u->deadline = 0;     /* and its response timeout, until the client takes the bytes */
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
        if (c->b_tunnel)
            atomic_fetch_add_explicit(&c->b_tunnel->tunnels, 1, memory_order_relaxed);
        end_exchange(c);
        c->deadline = 0;
        u->deadline = 0;
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
        upstream_timer(u, timeout_ms(c, T_RESPONSE));
    upstream_read(u, 1);
    return u->off < u->len && u->c && u->state == U_BUSY;
}

static void upstream_got(upstream_t *u, ssize_t nread);

/* Drives the TLS handshake to the server, then decrypts what it holds into u->buf. */
static void upstream_tls_pump(upstream_t *u) {
    while (u->state != U_CLOSING) {
        long n;
        if (u->state == U_CONNECTING) {
            n = td_tls_read(u->tls, NULL, 0);
            if (tls_send((uv_stream_t *)&u->tcp, NULL, u->tls, NULL) < 0 || n < 0) {
                char why[200];
                snprintf(why, sizeof(why), "TLS handshake: %s",
                         n < 0 ? u->tls->error : "write failed");
                upstream_fail(u, why, F_CONNECT);
                return;
            }
            if (!td_tls_established(u->tls))
                return;
            if (!u->c) {
                upstream_close(u);
                return;
            }
            upstream_attach(u, u->c);
            continue;
        }
        if (!u->reading)
            return;
        if (!u->buf && !(u->buf = malloc(UBUF_SIZE))) {
            upstream_got(u, UV_ENOMEM);
            return;
        }
        n = td_tls_read(u->tls, u->buf + u->len, UBUF_SIZE - u->len);
        if (tls_send((uv_stream_t *)&u->tcp, NULL, u->tls, NULL) < 0 && n >= 0)
            n = TD_EIO;
        if (n < 0) {
            upstream_got(u, strcmp(u->tls->error, "closed") == 0 ? UV_EOF : UV_EPROTO);
            return;
        }
        if (n == 0)
            return;
        upstream_got(u, n);
    }
}

static void upstream_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    upstream_t *u = s->data;
    if (u->tls && nread > 0) {
        if (td_tls_feed(u->tls, b->base, (size_t)nread) < 0)
            upstream_got(u, UV_ENOMEM);
        else
            upstream_tls_pump(u);
        return;
    }
    if (u->tls && u->state == U_CONNECTING && nread < 0) {
        upstream_fail(u, "TLS handshake: connection closed", F_CONNECT);
        return;
    }
    upstream_got(u, nread);
}

/* nread new response bytes are at the end of u->buf (or nread is an error / UV_EOF). */
static void upstream_got(upstream_t *u, ssize_t nread) {
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
            upstream_fail(u, nread == UV_EOF ? "connection closed before a response"
                                             : uv_strerror((int)nread),
                          F_IO);
        } else {
            upstream_fail(u, nread == UV_EOF ? "connection closed mid-response"
                                             : uv_strerror((int)nread),
                          F_IO);
        }
        return;
    }
    if (nread == 0 || !c)
        return;
    u->len += (uint32_t)nread;
    c->resp_started = 1;
    if (!u->tunnel)
        upstream_timer(u, timeout_ms(c, T_RESPONSE));
    if (c->writing) {
        upstream_read(u, 0);
        u->deadline = 0; /* the client send timeout runs: the response one restarts after it */
        return;
    }
    response_pump(u);
}

/* ---------------------------------------------------------------------------------------------
 * TLS pump: connections whose TLS object holds bytes that no socket event will announce */

static void tls_idle_cb(uv_idle_t *h) {
    worker_t *w = h->data;
    client_t *cl = w->tls_clients;
    upstream_t *ul = w->tls_upstreams;
    w->tls_clients = NULL;
    w->tls_upstreams = NULL;
    while (cl) {
        client_t *c = cl;
        cl = c->tls_next;
        c->tls_queued = 0;
        c->tls_next = NULL;
        client_tls_pump(c);
    }
    while (ul) {
        upstream_t *u = ul;
        ul = u->tls_next;
        u->tls_queued = 0;
        u->tls_next = NULL;
        upstream_tls_pump(u);
    }
    if (!w->tls_clients && !w->tls_upstreams)
        uv_idle_stop(h);
}

static void tls_wake(worker_t *w) {
    if (!uv_is_closing((uv_handle_t *)&w->tls_idle))
        uv_idle_start(&w->tls_idle, tls_idle_cb);
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
    c->tcp.data = c;
    c->backend = c->server = c->sticky_set = c->pinned = -1;
    uv_tcp_init(&w->loop, &c->tcp);
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    atomic_fetch_add(&open_clients, 1);
    if (uv_accept(l, (uv_stream_t *)&c->tcp) < 0) {
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->listener = (uint8_t)((uv_tcp_t *)l - w->listeners);
    worker_refresh(w);
    td_tls_server_t *tls = w->snap ? w->snap->listener_tls[c->listener] : NULL;
    if (tls && (!(c->tls = calloc(1, sizeof(*c->tls))) || td_tls_accept(c->tls, tls) < 0)) {
        client_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof(c->ip));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
    }
    client_timer(c, T_HEADER);
    client_read(c, 1);
}

static void noop_close_cb(uv_handle_t *h) {
    (void)h;
}

/* Every TICK_MS: client deadlines. Once a second also: take a new snapshot even without
 * traffic (so idle pools of drained backends close), and close the tunnels of backends drained
 * for longer than drain_ms. */
static void tick_cb(uv_timer_t *t) {
    worker_t *w = t->data;
    int64_t now_loop = (int64_t)uv_now(&w->loop);
    for (client_t *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (c->up && c->up->deadline && now_loop >= c->up->deadline) {
            c->up->deadline = 0;
            upstream_timeout(c->up); /* may close c */
        } else if (c->send_deadline && now_loop >= c->send_deadline) {
            client_send_timeout(c, now_loop); /* may close c */
        } else if (c->deadline && now_loop >= c->deadline) {
            c->deadline = 0;
            client_timeout(c);
        }
    }
    for (pool_t *p = w->pools; p; p = p->next)
        for (upstream_t *u = p->idle, *unext; u; u = unext) {
            unext = u->next;
            if (u->deadline && now_loop >= u->deadline)
                upstream_close(u);
        }
    if (++w->ticks % (1000 / TICK_MS))
        return;
    worker_refresh(w);
    if (!w->snap)
        return;
    int64_t now = td_now_ms(), drain_ms = w->snap->config->timeouts.drain_ms;
    for (client_t *c = w->clients, *next; c; c = next) {
        next = c->next;
        if (c->state != C_TUNNEL || !c->b_tunnel)
            continue;
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
        uv_close((uv_handle_t *)&w->tls_idle, noop_close_cb);
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
        uv_tcp_init(&w->loop, &w->listeners[i]);
        w->listeners[i].data = w;
        int r = uv_tcp_open(&w->listeners[i], w->listen_fds[i]);
        if (r == 0) {
            w->listen_fds[i] = -1;
            r = uv_listen((uv_stream_t *)&w->listeners[i], 4096, on_accept);
        }
        if (r < 0)
            td_error("worker: listen: %s", uv_strerror(r));
    }
    uv_idle_init(&w->loop, &w->tls_idle);
    w->tls_idle.data = w;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    uv_timer_start(&w->tick, tick_cb, TICK_MS, TICK_MS);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    td_snapshot_release(w->snap);
    w->snap = NULL;
}

/* Opens one listening socket with SO_REUSEPORT, bound but not yet listening. */
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

static int listen_socket(const td_addr_t *a, int first, char *err, size_t errlen) {
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
        w->alog_fd = -1;
        w->num_listeners = cfg->num_listeners;
        w->listeners = calloc(cfg->num_listeners, sizeof(uv_tcp_t));
        w->listen_fds = calloc(cfg->num_listeners, sizeof(int));
        if (!w->listeners || !w->listen_fds)
            goto nomem;
        for (size_t j = 0; j < cfg->num_listeners; j++)
            w->listen_fds[j] = -1;
        for (size_t j = 0; j < cfg->num_listeners; j++) {
            w->listen_fds[j] = listen_socket(&cfg->listeners[j].address, i == 0, err, errlen);
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
