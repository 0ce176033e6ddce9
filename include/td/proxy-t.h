/* Types of the proxy's data plane: workers, client connections, upstream connections and their
 * pools, shared by worker.c, client.c, upstream.c and exchange.c.
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
#ifndef TD_PROXY_T_H
#define TD_PROXY_T_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "td/access_log.h"
#include "td/http1-t.h"
#include "td/listener.h"
#include "td/log.h"
#include "td/queue-t.h"
#include "td/router-t.h"
#include "td/stream-t.h"
#include "td/timeout-t.h"

#define CBUF_SIZE (16 * 1024) /* client read buffer: the largest request head, then body pieces */
#define UBUF_SIZE (64 * 1024) /* upstream read buffer: response head, then body pieces */
#define MAX_HDRS 100
#define MAX_TRIES 6        /* upstream attempts per request */
#define POOL_IDLE_MS 60000 /* idle pooled upstream connections are closed after this */
#define POOL_MAX_IDLE 256  /* idle connections kept per server and worker */
#define MAX_SPANS 64
#define TICK_MS 100           /* granularity of client timeouts */
#define MAX_INTERIM 16        /* 1xx responses passed on before a final one; more is a 502 */
#define TD_LOG_TARGET_MAX 200 /* bytes of a request-target an error line shows */
#define LOCAL_ERR_BURST 1     /* lines a second per worker for td's own resource errors */

/* Kinds of timeouts; each has a queue per worker (td/timeout.h). T_HEADER also times the
 * request body (between two reads), T_POOL is POOL_IDLE_MS, T_QUEUE a request's wait for a
 * max_conns slot (timeouts.queue_ms, in the client's timeout slot). */
enum { T_HEADER, T_KEEPALIVE, T_CONNECT, T_RESPONSE, T_SEND, T_POOL, T_QUEUE, T_KINDS };

/* Why an upstream try failed (td_exchange_upstream_fail). F_LOCAL: td itself lacked a resource
 * (file descriptors, memory, local ports) to reach the upstream; it says nothing about the server.
 */
enum { F_CONNECT, F_IO, F_TIMEOUT, F_PROTOCOL, F_LOCAL };

typedef struct worker_s worker_t;
typedef struct client_s client_t;
typedef struct upstream_s upstream_t;
typedef struct td_exchange_s td_exchange_t;

/* One exchange: a request and its response, from routing to the access log line, over its
 * downstream (the client connection that carried the request; for HTTP/1 the exchange lives in
 * it, one at a time) and one upstream connection at a time. Written only by exchange.c and
 * exchange_stats.c; td_exchange_end releases what it holds. It owns its upstream connection
 * (upstream_t.owner) and the response's framing state. HTTP/2 streams (h2_server.c) are clients
 * of their own, each with one of these. */
struct td_exchange_s {
    client_t *down;                 /* borrowed: the client connection it answers on */
    upstream_t *up;                 /* borrowed: the upstream of the current try, or NULL */
    td_snapshot_t *snap;            /* one reference, held from routing to the end, or NULL */
    int backend, server;            /* indices in snap of the current try, or -1 */
    int pinned;                     /* backend named by a valid sticky cookie, or -1 */
    int forced;                     /* backend named by a valid preview header, or -1 */
    int sticky_set;                 /* backend to pin with Set-Cookie in the response, or -1 */
    int tries;                      /* upstream tries so far (at most MAX_TRIES) */
    uint32_t tried[MAX_TRIES];      /* flat server indices tried for this request */
    uint8_t ntried;                 /* entries used in tried */
    int status;                     /* status of the response sent, for the logs; 0 none yet */
    uint64_t bytes_out;             /* response bytes handed to the client (head included) */
    int grpc_status;                /* grpc-status sent (server's or td's), for the logs; -1 */
    int64_t started_ms;             /* td_now_ms() at the parsed head; 0: no exchange */
    char *path;                     /* owned: request-target (512 bytes at most), for the logs */
    char *last_error;               /* owned: why the last upstream try failed, for the 502 line */
    td_server_stats_t *st_inflight; /* borrowed: server whose in_flight this request holds */
    td_backend_stats_t *b_inflight; /* borrowed: backend whose in_flight this request holds */
    td_backend_stats_t *b_tunnel;   /* borrowed: backend whose tunnel count this one holds */
    td_exchange_t *tun_prev, *tun_next; /* in the worker's tunnels while b_tunnel is set */
    /* max_conns: the server whose slot the current try holds (and its backend, whose queue a
     * freed slot wakes), or NULL; a tunnel keeps its slot in tun_slot until it closes. */
    td_server_stats_t *slot_st, *tun_slot_st; /* borrowed */
    td_backend_stats_t *slot_b, *tun_slot_b;  /* borrowed */
    /* In the worker's queue of `backend` while it waits for a max_conns slot. */
    td_queue_link_t qlink;
    uint32_t fwd;         /* bytes of the client's buffer already written to the upstream */
    uint8_t idempotent;   /* the method may be sent again (RFC 9110 §9.2.2) */
    uint8_t head_sent;    /* the rewritten head went to the current upstream */
    uint8_t body_sent;    /* request-body bytes went to the current upstream */
    uint8_t discarded;    /* request bytes were dropped after sending: no replay */
    uint8_t resp_started; /* a response byte came from the upstream */
    uint8_t buffering;    /* the body is read into the client's buffer before routing */
    uint8_t continued;    /* td answered Expect: 100-continue itself: Expect is not forwarded */
    uint8_t continue_out; /* that 100 Continue is the client's pending write */
    /* The response of the current try as its bytes are framed (exchange_response.c); zeroed
     * when a try starts on an upstream. */
    struct {
        uint64_t body_left;       /* Content-Length bytes still to forward */
        td_http1_chunked_t chunk; /* the chunked decoder's state */
        int status;               /* the final (or 101) status (gRPC: its class); 0 before it */
        uint8_t head_done;        /* the final (or 101) head went to the client */
        uint8_t resp_body;        /* its framing: TD_BODY_* */
        uint8_t resp_keep_alive;  /* the server allows reuse after it */
        uint8_t resp_done;        /* the whole response was handed to the client */
        uint8_t dechunk;          /* chunked, de-chunked for an HTTP/1.0 client */
        uint8_t tunnel;           /* a 101: bytes flow both ways from now on */
        uint8_t interim;          /* 1xx responses seen in this exchange */
        /* a gRPC response whose grpc-status comes in the trailers: its class is counted at its
         * end (td_exchange_count_grpc_end), not at its head */
        uint8_t grpc_pending;
    } resp;
};

/* What a client connection reports to the exchange over it, through a table set when it is
 * accepted; each gets the connection. */
typedef struct td_client_cbs_s {
    /* A request head was parsed into `req` (borrowed: pointers into the client's buffer and the
     * worker's header array, valid during the call); the client is in state EXCHANGE with the
     * head's framing, keep-alive and method set: start an exchange. Malformed, oversized or
     * truncated heads are answered (400, 414, 431, 505) or closed by the client itself. */
    void (*on_head)(client_t *c, const td_http1_request_t *req);
    /* New request-body bytes were accounted (EXCHANGE), or tunnel bytes came (TUNNEL). */
    void (*on_body)(client_t *c);
    /* A pending write to the client is done. Returns 1 when it was the exchange's, 0 when it was
     * an answer of td's own (the client then goes on to its next request or closes). */
    int (*on_written)(client_t *c);
    /* td answers the current request itself with `status`: the exchange counts it and lets go
     * of its upstream. */
    void (*on_reply)(client_t *c, int status);
    /* The current exchange is over (the next request comes), or the connection closes. */
    void (*on_end)(client_t *c);
    void (*on_close)(client_t *c);
    /* The current request's target as the exchange kept it (NUL-terminated, borrowed until the
     * exchange ends), or NULL: for the log lines about it. */
    const char *(*target)(const client_t *c);
} td_client_cbs_t;

/* What an upstream connection reports to its owner (the exchange over it), through a table the
 * owner gives to td_upstream_open; each gets the connection, whose `owner` says whose it is. */
typedef struct td_upstream_cbs_s {
    /* Connected (to a TLS backend: the handshake done), or taken from the pool: the request may
     * be sent. */
    void (*on_ready)(upstream_t *u);
    /* nread > 0 response bytes were appended to u->buf (u->len counts them), or the connection
     * ended: TD_STREAM_EOF (a FIN or a TLS close_notify) or another negative code
     * (td_upstream_strerror). */
    void (*on_data)(upstream_t *u, long nread);
    /* The write that td_upstream_write left pending is done. */
    void (*on_written)(upstream_t *u);
    /* The connection failed: a connect error, a write error, a timeout (`kind`: F_*). */
    void (*on_error)(upstream_t *u, const char *why, int kind);
} td_upstream_cbs_t;

/* Idle keep-alive connections to one server, in one worker. Keyed by the server's registry
 * object, which outlives reloads, so pools survive them. */
typedef struct pool_s {
    td_server_stats_t *key; /* borrowed */
    upstream_t *idle;       /* most recently used first */
    int num_idle;
    struct pool_s *next;
    /* owned: the server's HTTP/2 connections (td/h2_client.h), for an h2 backend */
    struct td_h2c_conn_s *h2;
    uint32_t h2_max; /* the server's last SETTINGS_MAX_CONCURRENT_STREAMS; 0: none seen yet */
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
    /* td_now_ms() after which idle pooled connections of backends drained at weight 0 close
     * (0: none due); see td_worker_refresh. */
    int64_t pool_drain_due_ms;
    td_listener_t *listeners; /* owned */
    int *listen_fds;          /* owned; -1 once handed to its listener */
    int64_t limit_logged_ms;  /* when the client-connection limit was last logged */
    size_t num_listeners;
    int stopping;
    td_access_log_t alog;
    td_snapshot_t *snap; /* one reference held by the worker */
    /* Installed by worker.c at start: adopts the router's newest snapshot when one was published
     * and returns it (borrowed: the worker's reference; NULL before the first). An exchange calls
     * it before routing a request, so nothing below the worker calls up into it. */
    td_snapshot_t *(*snapshot)(worker_t *w);
    /* Installed by worker.c: a max_conns slot of a backend someone waits for was freed; wakes
     * every worker (this one too) to dispatch the heads of its queues, outside the caller's
     * stack. */
    void (*queue_wake)(worker_t *w);
    td_queue_t queue; /* requests waiting for a max_conns slot, per backend */
    uv_async_t qwake; /* queue_wake's signal: run the queue heads */
    worker_t *peers;  /* borrowed: every worker (the proxy's array), for queue_wake */
    size_t num_peers;
    int *wrr_b, *wrr_s; /* owned: balancer scores per backend / per flat server index */
    size_t wrr_nb, wrr_ns;
    pool_t *pools;          /* owned */
    client_t *clients;      /* every open client connection (for a stop) */
    td_exchange_t *tunnels; /* the exchanges in a tunnel counted for a backend (for its drain) */
    char *buf_cache[64];    /* owned: free client buffers, reused instead of malloc/free */
    int num_cached;
    td_exchange_t *ex_cache[64]; /* owned: free exchanges, reused the same way */
    int num_ex_cached;
    td_log_limit_t local_err_rl;    /* the log of td's own resource errors */
    td_log_reasons_t req_err_rl;    /* the per-request error lines, by reason */
    td_stream_loop_t sl;            /* the transport's per-loop state (TLS buffer and queue) */
    td_timeout_queue_t tq[T_KINDS]; /* armed timeouts by kind */
    td_http1_header_t hdrs[MAX_HDRS];
    const td_http1_request_t *parsed; /* the request td_exchange_start parsed into hdrs ... */
    const client_t *parsed_for;       /* ... for this client, while it routes it; else NULL */
    char scratch[CBUF_SIZE + 2048];   /* response/request heads are built here */
};

/* C_H2: the connection speaks HTTP/2 (td/h2_server.h); each of its streams is a client of its
 * own, carried by it (td_stream_init_virt). */
enum { C_HEAD, C_EXCHANGE, C_TUNNEL, C_CLOSING, C_H2 };
enum { U_CONNECTING, U_BUSY, U_IDLE, U_CLOSING };

struct client_s {
    td_stream_t io;             /* the connection to the client (plain or TLS) */
    const td_client_cbs_t *cbs; /* borrowed: the exchange's callbacks */
    /* borrowed: the timeouts of the current exchange's snapshot (td_client_use_timeouts), or
     * NULL: the worker's newest */
    const td_config_timeouts_t *timeouts;
    worker_t *w;
    client_t *prev, *next;
    char *buf;          /* owned: request bytes; NULL while idle */
    uint32_t cap;       /* size of buf: CBUF_SIZE, or more while a request body is buffered */
    uint32_t len;       /* bytes in buf */
    uint32_t head_len;  /* length of the current request's head */
    uint32_t req_end;   /* end in buf of the bytes known to belong to the current request */
    uint64_t body_left; /* Content-Length bytes not yet seen */
    td_http1_chunked_t chunk;
    td_timeout_t tmo;      /* the head / keep-alive / body timeout, when armed */
    td_timeout_t send_tmo; /* the timeout of a pending write to the client, when armed */
    size_t send_left;      /* bytes of that write not taken by the client at the last look */
    uint8_t state;
    uint8_t writing;  /* a write to this client is pending */
    uint8_t req_body; /* td_http1_body_t of the request */
    uint8_t req_done; /* the whole request has been read */
    uint8_t eof;      /* the client half-closed: answer what was read, then close */
    uint8_t keep_alive, head_req, upgrade, minor, expect;
    uint8_t resp_sent;   /* a final response head was written for the current request */
    uint8_t grpc;        /* Content-Type application/grpc*: td's own answers are gRPC statuses */
    uint8_t close_after; /* close once the pending write completes */
    char ip[INET6_ADDRSTRLEN];
    uint16_t port; /* the client's port, for the log */
    char method[16];
    uint8_t listener;   /* index of the listener it came in on */
    uint8_t processing; /* client_process is running for it (further up the stack) */
    uint8_t more;       /* an exchange ended meanwhile: client_process takes the next request */
    /* owned: the connection's one exchange at a time (HTTP/1), from the worker's cache when a
     * request starts (or td answers one itself), back to it when the exchange ends; NULL while
     * idle. Opaque to client.c: only exchange.c and exchange_stats.c touch it. */
    td_exchange_t *ex;
    /* During a stop's drain: td_now_ms() since which it has been idle (worker.c); 0 while not. */
    int64_t idle_seen_ms;
    /* owned: the HTTP/2 session of a C_H2 connection (h2_server.c), else NULL */
    struct td_h2_conn_s *h2;
    uint8_t served; /* a request head was taken: no HTTP/2 preface is looked for any more */
    /* td_now_ms() from which the connection is too old (its listener's max_connection_age_ms
     * and a jitter, from its accept): HTTP/1.1 answers with Connection: close, HTTP/2 sends
     * GOAWAY. 0 = no limit (also for an HTTP/2 stream's client). */
    int64_t old_at_ms;
};

struct upstream_s {
    td_stream_t io; /* the connection to the server (plain or TLS) */
    worker_t *w;
    pool_t *pool;                 /* borrowed */
    td_server_stats_t *st;        /* borrowed (registry) */
    td_exchange_t *owner;         /* borrowed: the exchange over it, or NULL (idle) */
    const td_upstream_cbs_t *cbs; /* borrowed: the owner's callbacks */
    upstream_t *next;             /* pool list */
    char *buf;                    /* owned */
    uint32_t len, off;            /* bytes in buf; bytes consumed */
    uint32_t fwd;                 /* bytes of buf pinned by the pending write to the client */
    uint8_t state, reused, writing;
    td_timeout_t tmo; /* the connect / response / pool-idle timeout, when armed */
};

#endif
