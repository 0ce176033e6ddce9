/* The demo backend's connection, shared by its files (internal to src/demo/): conn.c runs the
 * connection (closing, writing, reading and parsing requests), app.c the routes and the listening
 * servers, ws.c the WebSocket echo. The routes are documented in include/td/demo.h. */
#ifndef TD_DEMO_CONN_H
#define TD_DEMO_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "td/http1.h"

#define READ_BUF 65536           /* bytes per connection; holds any head the parser accepts */
#define PIECE 65536              /* bytes of body per write for /bytes and /chunked */
#define WRITE_HIGH (256 * 1024)  /* queued bytes above which we stop producing and reading */
#define LINGER_MS 2000           /* after our FIN, how long we drain the client's bytes */
#define MAX_DELAY_MS 3600000ULL  /* /delay/MS limit: one hour */
#define MAX_BYTES (1ULL << 40)   /* /bytes/N and /chunked/N limit: 1 TiB */
#define WS_MAX_FRAME (16u << 20) /* WebSocket frame payload limit: 16 MiB */
#define HEAD_CAP 1024 /* bytes for a response head: name and address are each at most 255 */
#define PATTERN "abcdefghijklmnopqrstuvwxyz" /* /bytes and /chunked body, repeated */
#define PATTERN_LEN 26

typedef struct conn_s conn_t;

typedef struct server_s {
    uv_tcp_t listener;
    struct server_s *next; /* borrowed: the registry's list */
    conn_t *conns;         /* borrowed: open connections (each owned by its handles) */
    char *name;            /* owned */
    char *address;         /* owned */
    char *page;            /* owned: the "/" HTML page */
    size_t page_len;
} server_t;

enum state {
    ST_HEAD,    /* waiting for (or parsing) a request head */
    ST_BODY,    /* counting a request body */
    ST_RESPOND, /* a delayed or streamed response is in progress; input waits */
    ST_WS,      /* WebSocket echo */
    ST_CLOSING, /* last response queued; input is discarded until we close */
};

enum route {
    R_PAGE,
    R_STATUS,
    R_DELAY,
    R_BYTES,
    R_CHUNKED,
    R_ECHO,
    R_HEADERS,
    R_CLOSE,
    R_RESET,
    R_WS,
    R_NOTFOUND,
    R_BADPARAM,
};

enum ws_state { WS_HDR, WS_PAYLOAD, WS_CTRL };

struct conn_s {
    uv_tcp_t tcp;
    conn_t *prev, *next; /* borrowed: the server's list of open connections */
    uv_timer_t timer;    /* /delay and the lingering close */
    uv_shutdown_t shutdown;
    server_t *srv; /* borrowed */
    enum state state;
    int handles;    /* open handles; the connection is freed when this reaches 0 */
    size_t pending; /* bytes queued for writing, not yet confirmed by a write callback */
    unsigned closing : 1;
    unsigned reading : 1;
    unsigned eof : 1;
    unsigned drain_then_close : 1;
    unsigned drain_then_reset : 1;
    unsigned shut : 1;

    /* the current request */
    enum route route;
    uint64_t param;
    unsigned http11 : 1; /* HTTP/1.1 (else 1.0) */
    unsigned keep_alive : 1;
    unsigned head_only : 1;
    unsigned ws_ok : 1;
    unsigned ws_bad_version : 1;
    char ws_accept[32];
    char *head_copy; /* owned: the request head, for /headers */
    size_t head_len;
    td_http1_body_t body;
    uint64_t body_left;
    td_http1_chunked_t chunked;
    uint64_t received;
    uint32_t sum;

    /* a streamed response */
    uint64_t out_left;
    uint64_t out_pos;
    unsigned out_chunked : 1;

    /* WebSocket */
    enum ws_state ws_state;
    unsigned ws_in_message : 1;
    uint8_t ws_op;
    uint8_t ws_mask[4];
    uint64_t ws_left;
    uint64_t ws_off; /* payload bytes already unmasked in the current frame */
    uint8_t ctrl[125];
    size_t ctrl_len;

    size_t rpos, rlen; /* buf[rpos..rlen) holds unprocessed input */
    char buf[READ_BUF];
};

/* One queued write and the bytes it owns (data[]); bufs may also point at static memory. */
typedef struct wreq_s {
    uv_write_t req;
    size_t bytes;
    char data[];
} wreq_t;

enum framing {
    F_LENGTH,  /* Content-Length: length */
    F_CHUNKED, /* Transfer-Encoding: chunked */
    F_NONE,    /* no framing header: 1xx, 204, 304 */
    F_CLOSE,   /* body runs until we close (HTTP/1.0 client and unknown length) */
};

/* ---- conn.c: the connection ---- */

/* Fills the /bytes and /chunked body pattern; called once (under uv_once) before any server
 * starts. */
void td_demo_conn_init(void);

/* The listening socket's connection callback: accepts one client of server `listener->data`. */
void td_demo_accept(uv_stream_t *listener, int status);

/* Drives the connection as far as the buffered input and the write budget allow. Called from
 * every callback; never frees the connection (that happens once its handles are closed). */
void td_demo_process(conn_t *c);

/* Closes both handles now (with a TCP reset when `reset`); queued writes are cancelled. Safe to
 * call more than once. */
void td_demo_close(conn_t *c, int reset);

/* The current exchange is the last: discard further input, close (or reset) after the writes
 * drain. */
void td_demo_close_after_drain(conn_t *c, int reset);

/* A write request with room for `cap` bytes of data (owned by the caller until queued), or NULL. */
wreq_t *td_demo_wreq_new(size_t cap);

/* Queues bufs (which must stay valid: in w->data or static) and takes ownership of w. Returns 0,
 * or -1 after closing the connection. */
int td_demo_send_bufs(conn_t *c, wreq_t *w, uv_buf_t *bufs, unsigned n);

/* Queues a copy of p[0..len). Returns 0, or -1 after closing the connection. */
int td_demo_send_copy(conn_t *c, const void *p, size_t len);

/* Writes a response head into out[0..cap) and returns its length (HEAD_CAP is always enough for
 * the heads built here). `extra` (NULL or whole "Name: value\r\n" lines) is added as is; `keep`
 * is whether the connection stays. */
size_t td_demo_build_head(conn_t *c, char *out, size_t cap, int status, const char *ctype,
                          enum framing fr, uint64_t length, const char *extra, int keep);

/* Queues a complete response with a body held in memory (omitted for HEAD), then goes on to the
 * next request (keep, and the client's keep-alive) or closes after the writes drain. */
void td_demo_respond(conn_t *c, int status, const char *ctype, const char *body, size_t body_len,
                     const char *extra, int keep);

/* Starts a /bytes/N (chunked == 0) or /chunked/N response, streamed with backpressure. */
void td_demo_respond_stream(conn_t *c, uint64_t n, int chunked);

/* ---- app.c: the routes ---- */

/* Parses a decimal number of 1 to 19 digits filling s[0..len), at most max. Returns 0 or -1. */
int td_demo_parse_num(const char *s, size_t len, uint64_t max, uint64_t *out);

/* The route of a request target (origin or absolute form; the query is ignored), with its
 * number in *param for /status, /delay, /bytes and /chunked. */
enum route td_demo_route_of(td_str_t target, uint64_t *param);

/* The request (head and body) has been read: answer it by its route. */
void td_demo_dispatch(conn_t *c);

/* ---- ws.c: the WebSocket echo (RFC 6455) ---- */

/* Looks at the handshake fields (RFC 6455 §4.2.1) while the head is still in the buffer, and sets
 * c->ws_ok, c->ws_bad_version and c->ws_accept. */
void td_demo_ws_check(conn_t *c, const td_http1_request_t *req);

/* Answers a /ws request: 101 and the echo from then on, or 426 / 400. */
void td_demo_ws_respond(conn_t *c);

/* Consumes WebSocket bytes from the read buffer. Returns 1 to go on, 0 when more input is needed
 * (or the write budget is spent). */
int td_demo_ws_step(conn_t *c);

#endif
