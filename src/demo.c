/* The demo backend: a small HTTP/1.1 application server on libuv, used by `td demo`, `td backend`
 * and the end-to-end tests as a real upstream. See include/td/demo.h for the routes.
 *
 * One connection runs one request at a time: its head is parsed with td's own parser, its body
 * (Content-Length or chunked) is counted as it streams past, then the response is queued. Only
 * then is the next pipelined request looked at, so answers leave in request order. Big bodies
 * are written a 64 KiB piece at a time and the next piece waits until fewer than WRITE_HIGH bytes
 * are queued; reading stops while a response is in progress or the write queue is full, so
 * neither a slow reader nor a fast pipeliner can grow memory. */
#include "td/demo.h"

#include "td/http1.h"
#include "td/rewrite.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

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

static char pattern[PIECE + PATTERN_LEN]; /* written once under init_once, then read-only */
static uv_once_t init_once = UV_ONCE_INIT;

/* Servers live as long as the process. They, and through their lists every open connection,
 * stay reachable from here: a program that ends by closing all of a loop's handles with its own
 * close callback (uv_walk) never runs ours, and what it leaves is not reported as leaked. */
static server_t *servers;
static uv_mutex_t servers_lock;

static void init(void) {
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = PATTERN[i % PATTERN_LEN];
    if (uv_mutex_init(&servers_lock) != 0)
        abort();
}

static void process(conn_t *c);

/* ---- closing ---------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h) {
    conn_t *c = h->data;
    if (--c->handles == 0) {
        if (c->prev != NULL)
            c->prev->next = c->next;
        else
            c->srv->conns = c->next;
        if (c->next != NULL)
            c->next->prev = c->prev;
        free(c->head_copy);
        free(c);
    }
}

/* Closes both handles now; queued writes are cancelled. Safe to call more than once, and after
 * the loop's owner closed our handles itself (uv_walk at exit): cancelled write and shutdown
 * callbacks then land here and must not close a handle twice. */
static void conn_close(conn_t *c, int reset) {
    if (c->closing)
        return;
    c->closing = 1;
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (!reset || uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_linger_timeout(uv_timer_t *t) {
    conn_close(t->data, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0 || c->eof) {
        conn_close(c, 0);
        return;
    }
    /* Our FIN is out. Keep reading (and discarding) until the client closes too, so that bytes
     * it still sends do not make the kernel answer with a reset that could destroy the
     * response before the client has read it. */
    uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
    process(c);
}

/* Ends the connection once everything queued has been written: FIN, then linger, then close. */
static void begin_shutdown(conn_t *c) {
    if (c->closing || c->shut)
        return;
    c->shut = 1;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c, 0);
}

/* The current exchange is the last: discard further input, close after the writes drain. */
static void close_after_drain(conn_t *c, int reset) {
    c->state = ST_CLOSING;
    if (reset)
        c->drain_then_reset = 1;
    else
        c->drain_then_close = 1;
}

/* ---- writing ---------------------------------------------------------------------------- */

static wreq_t *wreq_new(size_t cap) {
    return malloc(sizeof(wreq_t) + cap);
}

static void on_write(uv_write_t *req, int status) {
    wreq_t *w = (wreq_t *)req;
    conn_t *c = req->handle->data;
    c->pending -= w->bytes;
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c, 0);
        return;
    }
    process(c);
}

/* Queues bufs (which must stay valid: in w->data or static) and takes ownership of w. Returns 0,
 * or -1 after closing the connection. */
static int send_bufs(conn_t *c, wreq_t *w, uv_buf_t *bufs, unsigned n) {
    if (c->closing || c->shut) {
        free(w);
        return -1;
    }
    w->bytes = 0;
    for (unsigned i = 0; i < n; i++)
        w->bytes += bufs[i].len;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        free(w);
        conn_close(c, 0);
        return -1;
    }
    c->pending += w->bytes;
    return 0;
}

static int send_copy(conn_t *c, const void *p, size_t len) {
    wreq_t *w = wreq_new(len);
    if (w == NULL) {
        conn_close(c, 0);
        return -1;
    }
    memcpy(w->data, p, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    return send_bufs(c, w, &b, 1);
}

/* ---- HTTP responses --------------------------------------------------------------------- */


enum framing {
    F_LENGTH,  /* Content-Length: length */
    F_CHUNKED, /* Transfer-Encoding: chunked */
    F_NONE,    /* no framing header: 1xx, 204, 304 */
    F_CLOSE,   /* body runs until we close (HTTP/1.0 client and unknown length) */
};

/* Writes a response head into out[0..cap) and returns its length (cap is always enough for the
 * heads built here: the variable parts are bounded). keep is whether the connection stays. */
static size_t build_head(conn_t *c, char *out, size_t cap, int status, const char *ctype,
                         enum framing fr, uint64_t length, const char *extra, int keep) {
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Server: td-demo\r\n"
                     "X-TD-Demo-Backend: %s\r\n"
                     "X-TD-Demo-Server: %s\r\n",
                     status, td_http_reason(status), c->srv->name, c->srv->address);
    size_t len = (size_t)n;
    if (ctype != NULL)
        len += (size_t)snprintf(out + len, cap - len, "Content-Type: %s\r\n", ctype);
    if (fr == F_LENGTH)
        len += (size_t)snprintf(out + len, cap - len, "Content-Length: %" PRIu64 "\r\n", length);
    else if (fr == F_CHUNKED)
        len += (size_t)snprintf(out + len, cap - len, "Transfer-Encoding: chunked\r\n");
    if (status >= 200) {
        if (!keep)
            len += (size_t)snprintf(out + len, cap - len, "Connection: close\r\n");
        else if (!c->http11)
            len += (size_t)snprintf(out + len, cap - len, "Connection: keep-alive\r\n");
    }
    if (extra != NULL)
        len += (size_t)snprintf(out + len, cap - len, "%s", extra);
    len += (size_t)snprintf(out + len, cap - len, "\r\n");
    return len;
}

/* After a response is fully queued: on to the next request, or close. */
static void end_exchange(conn_t *c, int keep) {
    if (keep)
        c->state = ST_HEAD;
    else
        close_after_drain(c, 0);
}

/* Queues a complete response with a body held in memory (omitted for HEAD). */
static void respond(conn_t *c, int status, const char *ctype, const char *body, size_t body_len,
                    const char *extra, int keep) {
    keep = keep && c->keep_alive;
    enum framing fr = (status == 204 || status == 304) ? F_NONE : F_LENGTH;
    /* HEAD: the same Content-Length as GET, no body (RFC 9110 §9.3.2) */
    size_t send_body = (fr == F_NONE || c->head_only) ? 0 : body_len;
    wreq_t *w = wreq_new(HEAD_CAP + send_body);
    if (w == NULL) {
        conn_close(c, 0);
        return;
    }
    size_t len = build_head(c, w->data, HEAD_CAP, status, ctype, fr, body_len, extra, keep);
    memcpy(w->data + len, body, send_body);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(len + send_body));
    if (send_bufs(c, w, &b, 1) == 0)
        end_exchange(c, keep);
}

/* A request we cannot read: answer with status and close (the framing may be lost). */
static void respond_error(conn_t *c, int status) {
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, td_http_reason(status));
    c->keep_alive = 0;
    respond(c, status, "text/plain", body, (size_t)n, NULL, 0);
}

/* Writes as many body pieces of a /bytes or /chunked response as the write budget allows. */
static void pump(conn_t *c) {
    while (c->out_left > 0 && c->pending < WRITE_HIGH && !c->closing) {
        size_t n = c->out_left < PIECE ? (size_t)c->out_left : PIECE;
        wreq_t *w = wreq_new(32);
        if (w == NULL) {
            conn_close(c, 0);
            return;
        }
        uv_buf_t b[3];
        unsigned nb = 0;
        if (c->out_chunked) {
            int hl = snprintf(w->data, 32, "%zx\r\n", n);
            b[nb++] = uv_buf_init(w->data, (unsigned)hl);
        }
        b[nb++] = uv_buf_init(pattern + c->out_pos % PATTERN_LEN, (unsigned)n);
        if (c->out_chunked)
            b[nb++] = uv_buf_init((char *)"\r\n", 2);
        if (send_bufs(c, w, b, nb) != 0)
            return;
        c->out_left -= n;
        c->out_pos += n;
    }
    if (c->out_left > 0 || c->closing)
        return;
    if (c->out_chunked && send_copy(c, "0\r\n\r\n", 5) != 0)
        return;
    end_exchange(c, c->keep_alive);
}

/* Starts a /bytes/N (chunked == 0) or /chunked/N response. */
static void respond_stream(conn_t *c, uint64_t n, int chunked) {
    char head[HEAD_CAP];
    enum framing fr = F_LENGTH;
    if (chunked)
        fr = c->http11 ? F_CHUNKED : F_CLOSE;
    if (fr == F_CLOSE)
        c->keep_alive = 0;
    size_t len = build_head(c, head, sizeof(head), 200, "application/octet-stream", fr, n, NULL,
                            c->keep_alive);
    if (send_copy(c, head, len) != 0)
        return;
    if (c->head_only) {
        end_exchange(c, c->keep_alive);
        return;
    }
    c->out_left = n;
    c->out_pos = 0;
    c->out_chunked = fr == F_CHUNKED;
    c->state = ST_RESPOND;
    pump(c);
}

static void on_delay(uv_timer_t *t) {
    conn_t *c = t->data;
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"delay_ms\": %" PRIu64 "}\n", c->param);
    respond(c, 200, "application/json", body, (size_t)n, NULL, 1);
    process(c);
}

/* ---- WebSocket (RFC 6455) ----------------------------------------------------------------- */

static void ws_accept_key(td_str_t key, char out[32]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char digest[SHA_DIGEST_LENGTH];
    char tmp[128 + sizeof(guid)];
    size_t klen = key.len < 128 ? key.len : 128;
    memcpy(tmp, key.p, klen);
    memcpy(tmp + klen, guid, sizeof(guid) - 1);
    SHA1((const unsigned char *)tmp, klen + sizeof(guid) - 1, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}

/* Queues one unmasked frame header for a payload of len bytes. */
static int ws_send_header(conn_t *c, uint8_t b0, uint64_t len) {
    uint8_t h[10];
    size_t hl;
    h[0] = b0;
    if (len < 126) {
        h[1] = (uint8_t)len;
        hl = 2;
    } else if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    return send_copy(c, h, hl);
}

static void ws_send_close(conn_t *c, const uint8_t *payload, size_t len) {
    uint8_t f[2 + 125];
    f[0] = 0x88;
    f[1] = (uint8_t)len;
    memcpy(f + 2, payload, len);
    if (send_copy(c, f, 2 + len) == 0)
        close_after_drain(c, 0);
}

static void ws_fail(conn_t *c, unsigned code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    ws_send_close(c, p, 2);
}

static void ws_control(conn_t *c) {
    if (c->ws_op == 0x9) { /* ping: pong with the same payload */
        uint8_t f[2 + 125];
        f[0] = 0x8a;
        f[1] = (uint8_t)c->ctrl_len;
        memcpy(f + 2, c->ctrl, c->ctrl_len);
        send_copy(c, f, 2 + c->ctrl_len);
    } else if (c->ws_op == 0x8) { /* close: answer with the same status code, then shut down */
        if (c->ctrl_len == 1)
            ws_fail(c, 1002);
        else
            ws_send_close(c, c->ctrl, c->ctrl_len < 2 ? 0 : 2);
    } /* pong: nothing to do */
}

/* Consumes WebSocket bytes from the read buffer. Returns 1 to go on, 0 when more input is needed
 * (or the write budget is spent). */
static int ws_step(conn_t *c) {
    const uint8_t *p = (const uint8_t *)c->buf + c->rpos;
    size_t avail = c->rlen - c->rpos;

    if (c->ws_state == WS_HDR) {
        if (avail < 2)
            return 0;
        unsigned fin = p[0] & 0x80, rsv = p[0] & 0x70, op = p[0] & 0x0f;
        unsigned masked = p[1] & 0x80, len7 = p[1] & 0x7f;
        size_t hl = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
        if (avail < hl)
            return 0;
        uint64_t len = len7;
        if (len7 == 126) {
            len = (uint64_t)p[2] << 8 | p[3];
        } else if (len7 == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
        }
        int control = op >= 0x8;
        if (rsv || !masked || (op > 0x2 && op < 0x8) || op > 0xa || (len7 == 127 && len >> 63)) {
            ws_fail(c, 1002);
            return 1;
        }
        if (control && (!fin || len > 125)) {
            ws_fail(c, 1002);
            return 1;
        }
        if (!control && ((op == 0) != c->ws_in_message)) {
            ws_fail(c, 1002); /* continuation without a start, or a new message inside one */
            return 1;
        }
        if (len > WS_MAX_FRAME) {
            ws_fail(c, 1009);
            return 1;
        }
        memcpy(c->ws_mask, p + hl - 4, 4);
        c->rpos += hl;
        c->ws_op = (uint8_t)op;
        c->ws_left = len;
        c->ws_off = 0;
        if (control) {
            c->ctrl_len = 0;
            c->ws_state = WS_CTRL;
        } else {
            c->ws_in_message = !fin;
            /* Echo frame by frame, keeping FIN and opcode: fragmented messages come back
             * fragmented the same way, and memory stays bounded whatever the frame size. */
            if (ws_send_header(c, (uint8_t)(fin | op), len) != 0)
                return 0;
            c->ws_state = WS_PAYLOAD;
        }
    }

    if (c->ws_state == WS_PAYLOAD && c->ws_left > 0) {
        avail = c->rlen - c->rpos;
        if (avail == 0)
            return 0;
        size_t n = avail < c->ws_left ? avail : (size_t)c->ws_left;
        wreq_t *w = wreq_new(n);
        if (w == NULL) {
            conn_close(c, 0);
            return 0;
        }
        const uint8_t *src = (const uint8_t *)c->buf + c->rpos;
        for (size_t i = 0; i < n; i++)
            w->data[i] = (char)(src[i] ^ c->ws_mask[(c->ws_off + i) & 3]);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
        if (send_bufs(c, w, &b, 1) != 0)
            return 0;
        c->rpos += n;
        c->ws_off += n;
        c->ws_left -= n;
    }
    if (c->ws_state == WS_PAYLOAD && c->ws_left == 0)
        c->ws_state = WS_HDR;

    if (c->ws_state == WS_CTRL) {
        avail = c->rlen - c->rpos;
        size_t n = avail < c->ws_left ? avail : (size_t)c->ws_left;
        const uint8_t *src = (const uint8_t *)c->buf + c->rpos;
        for (size_t i = 0; i < n; i++)
            c->ctrl[c->ctrl_len + i] = src[i] ^ c->ws_mask[(c->ctrl_len + i) & 3];
        c->ctrl_len += n;
        c->rpos += n;
        c->ws_left -= n;
        if (c->ws_left > 0)
            return 0;
        c->ws_state = WS_HDR;
        ws_control(c);
    }
    return 1;
}

/* ---- requests --------------------------------------------------------------------------- */

/* Parses a decimal number of 1 to 19 digits filling all of s, at most max. */
static int parse_num(const char *s, size_t len, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    if (len == 0 || len > 19)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int path_is(const char *p, size_t len, const char *lit) {
    return strlen(lit) == len && memcmp(p, lit, len) == 0;
}

/* Matches "PREFIX<number>" and stores the number; 1 when the prefix matches (then *ok says
 * whether the number was valid), 0 otherwise. */
static int path_num(const char *p, size_t len, const char *prefix, uint64_t min, uint64_t max,
                    uint64_t *v, int *ok) {
    size_t pl = strlen(prefix);
    if (len < pl || memcmp(p, prefix, pl) != 0)
        return 0;
    *ok = parse_num(p + pl, len - pl, max, v) == 0 && *v >= min;
    return 1;
}

static enum route route_of(td_str_t target, uint64_t *param) {
    const char *p = target.p;
    size_t len = target.len;
    /* absolute-form: skip "scheme://authority" */
    if (len > 0 && p[0] != '/') {
        const char *s = memchr(p, ':', len);
        if (s == NULL || (size_t)(p + len - s) < 3 || memcmp(s, "://", 3) != 0)
            return R_NOTFOUND;
        const char *slash = memchr(s + 3, '/', (size_t)(p + len - s - 3));
        if (slash == NULL)
            return R_PAGE;
        len -= (size_t)(slash - p);
        p = slash;
    }
    const char *q = memchr(p, '?', len);
    if (q != NULL)
        len = (size_t)(q - p);
    int ok = 0;
    if (path_is(p, len, "/") || path_is(p, len, "/index.html"))
        return R_PAGE;
    if (path_num(p, len, "/status/", 200, 599, param, &ok))
        return ok ? R_STATUS : R_BADPARAM;
    if (path_num(p, len, "/delay/", 0, MAX_DELAY_MS, param, &ok))
        return ok ? R_DELAY : R_BADPARAM;
    if (path_num(p, len, "/bytes/", 0, MAX_BYTES, param, &ok))
        return ok ? R_BYTES : R_BADPARAM;
    if (path_num(p, len, "/chunked/", 0, MAX_BYTES, param, &ok))
        return ok ? R_CHUNKED : R_BADPARAM;
    if (path_is(p, len, "/echo"))
        return R_ECHO;
    if (path_is(p, len, "/headers"))
        return R_HEADERS;
    if (path_is(p, len, "/close"))
        return R_CLOSE;
    if (path_is(p, len, "/reset"))
        return R_RESET;
    if (path_is(p, len, "/ws"))
        return R_WS;
    return R_NOTFOUND;
}

/* Looks at the WebSocket handshake fields (RFC 6455 §4.2.1) while the head is still in the
 * buffer. */
static void ws_check(conn_t *c, const td_http1_request_t *req) {
    td_str_t key = {NULL, 0};
    int upgrade_ws = 0, version13 = 0, version_seen = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const td_http1_header_t *h = &req->headers[i];
        if (td_http1_name_is(h->name, "upgrade"))
            upgrade_ws = td_http1_list_has(h->value, "websocket");
        else if (td_http1_name_is(h->name, "sec-websocket-key"))
            key = h->value;
        else if (td_http1_name_is(h->name, "sec-websocket-version")) {
            version_seen = 1;
            version13 = h->value.len == 2 && memcmp(h->value.p, "13", 2) == 0;
        }
    }
    int get = req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0;
    /* the key is 16 random bytes in base64: 24 characters */
    c->ws_ok =
        get && req->minor_version == 1 && req->upgrade && upgrade_ws && key.len == 24 && version13;
    c->ws_bad_version = version_seen && !version13;
    if (c->ws_ok)
        ws_accept_key(key, c->ws_accept);
}

static void respond_ws(conn_t *c) {
    if (!c->ws_ok) {
        if (c->ws_bad_version)
            respond(c, 426, "text/plain", "WebSocket version 13 required\n", 30,
                    "Sec-WebSocket-Version: 13\r\n", 1);
        else
            respond(c, 400, "text/plain", "WebSocket handshake expected\n", 29, NULL, 1);
        return;
    }
    char extra[128];
    snprintf(extra, sizeof(extra),
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
             c->ws_accept);
    char head[HEAD_CAP];
    size_t len = build_head(c, head, sizeof(head), 101, NULL, F_NONE, 0, extra, 1);
    if (send_copy(c, head, len) != 0)
        return;
    c->state = ST_WS;
    c->ws_state = WS_HDR;
    c->ws_in_message = 0;
}

/* The request (head and body) has been read: answer it. */
static void dispatch(conn_t *c) {
    server_t *s = c->srv;
    char body[128];
    int n;
    switch (c->route) {
    case R_PAGE:
        respond(c, 200, "text/html; charset=utf-8", s->page, s->page_len, NULL, 1);
        break;
    case R_STATUS:
        respond(c, (int)c->param, NULL, "", 0, NULL, 1);
        break;
    case R_DELAY:
        c->state = ST_RESPOND;
        uv_timer_start(&c->timer, on_delay, c->param, 0);
        break;
    case R_BYTES:
    case R_CHUNKED:
        respond_stream(c, c->param, c->route == R_CHUNKED);
        break;
    case R_ECHO:
        n = snprintf(body, sizeof(body), "{\"received\": %" PRIu64 ", \"sum\": %" PRIu32 "}\n",
                     c->received, c->sum);
        respond(c, 200, "application/json", body, (size_t)n, NULL, 1);
        break;
    case R_HEADERS:
        respond(c, 200, "text/plain", c->head_copy, c->head_len, NULL, 1);
        free(c->head_copy);
        c->head_copy = NULL;
        break;
    case R_CLOSE:
        respond(c, 200, "text/plain", "closing\n", 8, NULL, 0);
        break;
    case R_RESET:
        close_after_drain(c, 1);
        break;
    case R_WS:
        respond_ws(c);
        break;
    case R_BADPARAM:
        respond(c, 400, "text/plain", "bad number in path\n", 19, NULL, 1);
        break;
    case R_NOTFOUND:
        respond(c, 404, "text/plain", "not found\n", 10, NULL, 1);
        break;
    }
}

static int status_for_error(int r) {
    switch (r) {
    case TD_EURITOOLONG:
        return 414;
    case TD_EHDRTOOLARGE:
        return 431;
    case TD_EVERSION:
        return 505;
    default:
        return 400;
    }
}

/* Parses the head at buf[rpos..rlen). Returns 1 when a request was taken, 0 for more input. */
static int take_head(conn_t *c) {
    td_http1_limits_t lim = td_http1_default_limits();
    td_http1_header_t headers[100];
    td_http1_request_t req;
    size_t avail = c->rlen - c->rpos;
    const char *p = c->buf + c->rpos;
    size_t max = lim.max_headers < 100 ? lim.max_headers : 100;
    lim.max_headers = max;

    int r = td_http1_parse_request(p, avail, &lim, &req, headers, max);
    if (r == TD_EAGAIN) {
        if (avail == sizeof(c->buf)) { /* cannot happen with a parser honouring max_head */
            respond_error(c, 431);
            return 1;
        }
        if (c->eof) {
            if (avail > 0) /* an incomplete request, then EOF */
                respond_error(c, 400);
            else
                close_after_drain(c, 0);
            return 1;
        }
        return 0;
    }
    if (r < 0) {
        c->http11 = 1;
        c->head_only = 0;
        respond_error(c, status_for_error(r));
        return 1;
    }

    c->http11 = req.minor_version == 1;
    c->keep_alive = req.keep_alive;
    c->head_only = req.head;
    c->route = route_of(req.target, &c->param);
    c->body = req.body;
    c->body_left = req.content_length;
    memset(&c->chunked, 0, sizeof(c->chunked));
    c->received = 0;
    c->sum = 0;
    if (c->route == R_HEADERS) {
        free(c->head_copy);
        c->head_copy = malloc((size_t)r);
        if (c->head_copy == NULL) {
            conn_close(c, 0);
            return 1;
        }
        memcpy(c->head_copy, p, (size_t)r);
        c->head_len = (size_t)r;
    }
    if (c->route == R_WS)
        ws_check(c, &req);
    c->rpos += (size_t)r;

    int has_body = req.body == TD_BODY_CHUNKED || (req.body == TD_BODY_LENGTH && c->body_left);
    if (!has_body) {
        c->body = TD_BODY_NONE;
        dispatch(c);
        return 1;
    }
    if (req.expect_continue && c->http11) {
        char cont[HEAD_CAP];
        size_t len = build_head(c, cont, sizeof(cont), 100, NULL, F_NONE, 0, NULL, 1);
        if (send_copy(c, cont, len) != 0)
            return 1;
    }
    c->state = ST_BODY;
    return 1;
}

static void count(conn_t *c, const char *p, size_t n) {
    uint32_t s = c->sum;
    for (size_t i = 0; i < n; i++)
        s += (unsigned char)p[i];
    c->sum = s;
    c->received += n;
}

/* Counts body bytes from the buffer. Returns 1 when progress was made, 0 for more input. */
static int take_body(conn_t *c) {
    const char *p = c->buf + c->rpos;
    size_t avail = c->rlen - c->rpos;
    int done = 0;

    if (c->body == TD_BODY_LENGTH) {
        size_t n = avail < c->body_left ? avail : (size_t)c->body_left;
        count(c, p, n);
        c->rpos += n;
        c->body_left -= n;
        done = c->body_left == 0;
    } else {
        td_str_t spans[16];
        size_t nspans = 0;
        long r = td_http1_chunked_feed(&c->chunked, p, avail, &done, spans, 16, &nspans);
        if (r < 0) {
            respond_error(c, 400);
            return 1;
        }
        for (size_t i = 0; i < nspans; i++)
            count(c, spans[i].p, spans[i].len);
        c->rpos += (size_t)r;
        if (!done && r > 0)
            return 1; /* maybe stopped early with the span array full: feed again */
        if (!done && avail == sizeof(c->buf)) {
            respond_error(c, 400); /* the decoder cannot progress even with a full buffer */
            return 1;
        }
    }
    if (done) {
        dispatch(c);
        return 1;
    }
    if (c->eof) /* the body was cut short */
        conn_close(c, 0);
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    conn_t *c = h->data;
    (void)suggested;
    if (c->rpos > 0) {
        memmove(c->buf, c->buf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    *buf = uv_buf_init(c->buf + c->rlen, (unsigned)(sizeof(c->buf) - c->rlen));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
    conn_t *c = stream->data;
    (void)buf;
    if (c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->state == ST_CLOSING) {
            conn_close(c, 0);
            return;
        }
        c->eof = 1;
    } else {
        c->rlen += (size_t)nread;
    }
    process(c);
}

/* Reads only when there is room and the write side keeps up (backpressure both ways). */
static void update_reading(conn_t *c) {
    int want;
    if (c->closing || c->eof)
        want = 0;
    else if (c->state == ST_CLOSING)
        want = c->shut; /* lingering: read and discard until the client's FIN */
    else if (c->state == ST_RESPOND)
        want = 0;
    else
        want = c->pending < WRITE_HIGH && c->rlen - c->rpos < sizeof(c->buf);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
            conn_close(c, 0);
            return;
        }
        c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* Drives the connection as far as the buffered input and the write budget allow. Called from
 * every callback; never frees the connection (that happens in on_handle_closed). */
static void process(conn_t *c) {
    for (;;) {
        if (c->closing)
            return;
        if (c->state == ST_CLOSING) {
            c->rpos = c->rlen = 0;
            if (c->pending == 0 && c->drain_then_reset) {
                conn_close(c, 1);
                return;
            }
            if (c->pending == 0 && c->drain_then_close)
                begin_shutdown(c);
            break;
        }
        if (c->state == ST_RESPOND) {
            if (c->out_left > 0)
                pump(c);
            if (c->state == ST_RESPOND)
                break;
            continue;
        }
        if (c->pending >= WRITE_HIGH)
            break;
        int progress;
        if (c->state == ST_HEAD)
            progress = take_head(c);
        else if (c->state == ST_BODY)
            progress = take_body(c);
        else { /* ST_WS */
            progress = ws_step(c);
            if (!progress && c->eof && !c->closing)
                close_after_drain(c, 0);
            else if (!progress)
                break;
            continue;
        }
        if (!progress)
            break;
    }
    if (!c->closing)
        update_reading(c);
}

/* ---- accepting -------------------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status) {
    server_t *s = listener->data;
    if (status < 0)
        return;
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->srv = s;
    c->state = ST_HEAD;
    uv_tcp_init(listener->loop, &c->tcp);
    uv_timer_init(listener->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c, 0);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    process(c);
}

/* ---- setup ------------------------------------------------------------------------------ */

static const char *colour_of(const char *name) {
    if (strcasecmp(name, "blue") == 0)
        return "#2563eb";
    if (strcasecmp(name, "green") == 0)
        return "#16a34a";
    return "#6b7280";
}

/* Appends s to out with HTML escaping; returns the new length. */
static size_t html_escape(char *out, size_t len, const char *s) {
    for (; *s; s++) {
        const char *e = NULL;
        switch (*s) {
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '&':
            e = "&amp;";
            break;
        case '"':
            e = "&quot;";
            break;
        case '\'':
            e = "&#39;";
            break;
        }
        if (e != NULL) {
            memcpy(out + len, e, strlen(e));
            len += strlen(e);
        } else {
            out[len++] = *s;
        }
    }
    return len;
}

static char *build_page(const char *name, const char *address, size_t *page_len) {
    /* each escaped character takes at most 6 bytes; the name and address are bounded */
    char label[6 * 256 * 2 + 32];
    size_t l = html_escape(label, 0, name);
    static const char sep[] = " \xe2\x80\x94 served by "; /* U+2014 EM DASH in UTF-8 */
    memcpy(label + l, sep, sizeof(sep) - 1);
    l += sizeof(sep) - 1;
    l = html_escape(label, l, address);
    label[l] = '\0';
    size_t cap = 2 * l + 1024;
    char *page = malloc(cap);
    if (page == NULL)
        return NULL;
    int n = snprintf(page, cap,
                     "<!DOCTYPE html>\n"
                     "<html><head><meta charset=\"utf-8\"><title>%s</title>\n"
                     "<style>body{margin:0;height:100vh;display:flex;align-items:center;"
                     "justify-content:center;background:%s;color:#fff;"
                     "font-family:system-ui,sans-serif}h1{font-size:3em}</style></head>\n"
                     "<body><h1>%s</h1></body></html>\n",
                     label, colour_of(name), label);
    *page_len = (size_t)n;
    return page;
}

static void on_listener_closed(uv_handle_t *h) {
    server_t *s = h->data;
    free(s->name);
    free(s->address);
    free(s->page);
    free(s);
}

/* Accepts "IPv4:port" and "[IPv6]:port". */
static int parse_address(const char *address, struct sockaddr_storage *ss) {
    char host[64];
    const char *colon = strrchr(address, ':');
    if (colon == NULL)
        return -1;
    const char *h = address;
    size_t hl = (size_t)(colon - address);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host))
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    uint64_t port;
    if (parse_num(colon + 1, strlen(colon + 1), 65535, &port) != 0)
        return -1;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -1;
}

static int valid_name(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f)
            return 0;
    return 1;
}

int td_demo_listen(uv_loop_t *loop, const char *name, const char *address, char *err,
                   size_t errlen) {
    struct sockaddr_storage ss;
    int r;

    uv_once(&init_once, init);
    if (!valid_name(name)) {
        snprintf(err, errlen,
                 "invalid backend name \"%s\": expected 1 to 255 visible ASCII "
                 "characters",
                 name);
        return TD_EINVAL;
    }
    if (strlen(address) > 255 || parse_address(address, &ss) != 0) {
        snprintf(err, errlen, "invalid address \"%s\": expected IP:port, e.g. 127.0.0.1:9001",
                 address);
        return TD_EINVAL;
    }
    server_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    s->name = strdup(name);
    s->address = strdup(address);
    if (s->name == NULL || s->address == NULL)
        goto nomem;
    s->page = build_page(name, address, &s->page_len);
    if (s->page == NULL)
        goto nomem;

    r = uv_tcp_init_ex(loop, &s->listener, ss.ss_family);
    if (r != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(r));
        free(s->page);
        free(s->name);
        free(s->address);
        free(s);
        return TD_EIO;
    }
    s->listener.data = s;
    /* libuv sets SO_REUSEADDR in uv_tcp_bind on Unix too; saying it here keeps it explicit. */
    uv_os_fd_t fd;
    int on = 1;
    if (uv_fileno((uv_handle_t *)&s->listener, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    r = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (r != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(r));
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return TD_EIO;
    }
    uv_mutex_lock(&servers_lock);
    s->next = servers;
    servers = s;
    uv_mutex_unlock(&servers_lock);
    return 0;

nomem:
    snprintf(err, errlen, "cannot start demo backend %s on %s: out of memory", name, address);
    if (s != NULL) {
        free(s->name);
        free(s->address);
        free(s);
    }
    return TD_ENOMEM;
}
