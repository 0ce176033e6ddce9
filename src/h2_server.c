/* HTTP/2 from clients: the glue between a libnghttp2 server session and td's client connections
 * (see td/h2_server.h). One td_h2_conn_t per connection, one td_h2_stream_t per stream, each
 * with a client_t carried by the connection (a virtual stream: td_stream_init_virt) that
 * exchange.c serves as it serves an HTTP/1.1 connection. Work that must not run inside the
 * caller's stack (handing request bytes to a stream's client, completing its pending write,
 * its close callback, sending the session's frames) runs from the connection's idle handle. */
#include "td/h2_server.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "td/bytes.h"
#include "td/client.h"
#include "td/exchange.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/rewrite.h"
#include "td/stream.h"
#include "td/timeout.h"

/* A stream's response bytes (DATA payload) held for the client: above HIGH its client's write
 * stays pending (the exchange stops reading its upstream) until the client's window took them
 * down to LOW. */
#define RESP_HIGH (64 * 1024)
#define RESP_LOW (16 * 1024)
/* The request head a stream's client parses must fit its buffer, with room for the request
 * line and what td adds. */
#define HEAD_MAX (CBUF_SIZE - 512)
#define OUT_CAP (64 * 1024) /* frames gathered into one write to the socket */
/* Rapid reset (CVE-2023-44487): a connection may reset RST_BURST streams at once, and RST_RATE
 * more each second; one that resets more is told ENHANCE_YOUR_CALM (RFC 9113 §7) and ended.
 * nghttp2's own guard (which would say INTERNAL_ERROR) is set above it as a backstop. */
#define RST_BURST 1000
#define RST_RATE 33

typedef struct td_h2_stream_s td_h2_stream_t;

struct td_h2_stream_s {
    td_h2_conn_t *h; /* borrowed */
    int32_t id;
    td_h2_stream_t *prev, *next; /* in h->streams */
    client_t *vc; /* owned: the stream's client, NULL before it is made / once freed */
    /* The request, as HTTP/1.1 bytes for the client: the head, then the body. */
    td_bytes_t in;
    td_bytes_t cookie;                      /* the cookie fields, joined with "; " */
    char *method, *path, *authority, *host; /* owned: the pseudo-header fields, and host */
    size_t unconsumed;                      /* DATA bytes in `in` not given back to the window */
    uint8_t has_length, chunked, req_end, too_large;
    uint8_t bad_scheme; /* :scheme was neither "http" nor "https" */
    /* The response: HTTP/1.1 bytes from the client not framed yet, and the DATA payload. */
    td_bytes_t raw, body;
    td_bytes_t trailers; /* a chunked response's trailer section: a trailing HEADERS */
    td_http1_chunked_t chunk;
    uint64_t left; /* content-length bytes still to come */
    uint8_t framing, head_done, resp_done, deferred, head_req;
    uint8_t want_read;             /* the client reads */
    uint8_t head_open;             /* its header block began and is not whole yet */
    uint8_t ng_closed;             /* nghttp2 closed the stream (or the session is gone) */
    uint8_t close_due;             /* the client's stream was closed: its close callback is due */
    uint8_t write_ended;           /* the pending write's callback is due (done or cancelled) */
    td_stream_write_cb pending_cb; /* the client's write reported pending (1), or NULL */
};

struct td_h2_conn_s {
    client_t *c;             /* borrowed: the connection; NULL once it closed */
    worker_t *w;             /* borrowed; NULL for the fuzz target */
    nghttp2_session *ng;     /* owned; NULL once the connection closed */
    uv_idle_t idle;          /* runs the deferred work; the struct is freed in its close callback */
    td_h2_stream_t *streams; /* owned: the streams not freed yet */
    int nstreams;
    int head_open; /* streams whose header block is not whole yet */
    /* goaway: 1 once the shutdown notice (GOAWAY with the last stream id 2^31-1, then a PING)
     * went out, 2 once the final GOAWAY with the last stream td took was submitted. */
    uint8_t idle_on, writing, goaway, fuzz, freeing, got_req;
    uint8_t linger;  /* the session failed: its GOAWAY went out, the client's bytes are drained */
    int8_t tmo_kind; /* the connection's timeout armed (T_HEADER, T_KEEPALIVE) or -1 for none */
    uint32_t rst_tokens; /* streams the client may still reset (RST_BURST at most) */
    int64_t rst_ms;      /* when rst_tokens was last refilled (td_now_ms) */
    char *rbuf;          /* owned: the socket's bytes are read into it */
    char *out;           /* owned: frames gathered for one write */
    size_t out_len;
};

static const td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

int td_h2_preface_check(const char *buf, size_t len) {
    size_t n = len < TD_H2_PREFACE_LEN ? len : TD_H2_PREFACE_LEN;
    if (memcmp(buf, TD_H2_PREFACE, n) != 0)
        return 0;
    return n == TD_H2_PREFACE_LEN ? 1 : -1;
}

static void conn_kick(td_h2_conn_t *h);
static void conn_flush(td_h2_conn_t *h);

/* Arms the connection's one timeout for what it waits for, counted from the moment it began to
 * wait for it (frames such as PING or SETTINGS do not extend it):
 *  - a header block begun and not whole, or the shutdown notice's PING not answered yet:
 *    client_header_ms;
 *  - no request yet since the preface: the shorter of client_header_ms and keepalive_idle_ms;
 *  - no stream open: keepalive_idle_ms, from the end of the last stream;
 *  - otherwise (streams in flight) none: each stream's client times its own exchange. */
static void conn_timer(td_h2_conn_t *h) {
    if (!h->c || h->fuzz)
        return;
    int kind = -1;
    if (h->head_open || h->goaway == 1 || h->linger)
        kind = T_HEADER;
    else if (!h->got_req && !h->nstreams)
        kind = td_client_timeout_ms(h->c, T_HEADER) < td_client_timeout_ms(h->c, T_KEEPALIVE)
                   ? T_HEADER
                   : T_KEEPALIVE;
    else if (!h->nstreams)
        kind = T_KEEPALIVE;
    if (kind == h->tmo_kind)
        return;
    h->tmo_kind = (int8_t)kind;
    if (kind < 0)
        td_client_timer_stop(h->c);
    else
        td_client_timer(h->c, kind);
}

/* ---------------------------------------------------------------------------------------------
 * Streams */

static void stream_free(td_h2_stream_t *st) {
    td_h2_conn_t *h = st->h;
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    h->nstreams--;
    td_bytes_free(&st->in);
    td_bytes_free(&st->cookie);
    td_bytes_free(&st->raw);
    td_bytes_free(&st->body);
    td_bytes_free(&st->trailers);
    free(st->method);
    free(st->path);
    free(st->authority);
    free(st->host);
    free(st);
    /* A connection with no stream left waits for the next one for the keep-alive timeout. */
    conn_timer(h);
}

/* Gives DATA bytes back to the client's window (the stream's and the connection's). */
static void stream_consume(td_h2_stream_t *st, size_t n) {
    if (!n || !st->h->ng)
        return;
    nghttp2_session_consume_connection(st->h->ng, n);
    if (!st->ng_closed)
        nghttp2_session_consume_stream(st->h->ng, st->id, n);
}

static void stream_reset(td_h2_stream_t *st, uint32_t code) {
    if (!st->ng_closed && st->h->ng)
        nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, code);
    conn_kick(st->h);
}

static int connection_specific(const td_str_t n);

/* Submits the trailer section of a chunked response ("name: value\r\n" lines, then CRLF) as a
 * HEADERS with END_STREAM (RFC 9113 §8.1): gRPC's status comes this way. Returns 0, or -1 when
 * none was submitted (no valid field, or nghttp2 refused). */
static int submit_trailers(td_h2_stream_t *st) {
    nghttp2_nv nv[MAX_HDRS];
    char names[4096];
    size_t n = 0, used = 0;
    const char *p = st->trailers.p + st->trailers.off, *end = st->trailers.p + st->trailers.len;
    while (p < end && n < MAX_HDRS) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol == p)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        td_str_t name = {p, colon ? (size_t)(colon - p) : 0};
        if (colon && !connection_specific(name) && used + name.len <= sizeof(names)) {
            for (size_t k = 0; k < name.len; k++)
                names[used + k] = p[k] >= 'A' && p[k] <= 'Z' ? (char)(p[k] + 32) : p[k];
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            nv[n++] = (nghttp2_nv){(uint8_t *)names + used, (uint8_t *)v, name.len,
                                   (size_t)(ve - v), NGHTTP2_NV_FLAG_NONE};
            used += name.len;
        }
        p = eol + 2;
    }
    st->trailers.off = st->trailers.len;
    if (!n || !st->h->ng)
        return -1;
    return nghttp2_submit_trailer(st->h->ng, st->id, nv, n) == 0 ? 0 : -1;
}

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud) {
    (void)ng;
    (void)id;
    (void)ud;
    td_h2_stream_t *st = src->ptr;
    size_t avail = td_bytes_left(&st->body);
    if (!avail && !st->resp_done) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    memcpy(buf, st->body.p + st->body.off, n);
    st->body.off += n;
    if (st->body.off == st->body.len)
        st->body.off = st->body.len = 0;
    if (st->resp_done && !td_bytes_left(&st->body)) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (td_bytes_left(&st->trailers) && submit_trailers(st) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM; /* the trailers' HEADERS ends it */
    }
    if (st->pending_cb && td_bytes_left(&st->body) < RESP_LOW) {
        st->write_ended = 1; /* the client may write again: from the loop, not from here */
        conn_kick(st->h);
    }
    return (ssize_t)n;
}

/* The data source is waiting for bytes that came (or for the end): it reads again. */
static void stream_resume(td_h2_stream_t *st) {
    if (st->deferred && !st->ng_closed && st->h->ng) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->h->ng, st->id);
    }
    conn_kick(st->h);
}

/* Fields of an HTTP/1.1 response that HTTP/2 has no place for (RFC 9113 §8.2.2). */
static int connection_specific(const td_str_t n) {
    return td_http1_name_is(n, "connection") || td_http1_name_is(n, "keep-alive") ||
           td_http1_name_is(n, "proxy-connection") || td_http1_name_is(n, "transfer-encoding") ||
           td_http1_name_is(n, "upgrade") || td_http1_name_is(n, "te");
}

/* Parses the response head at the start of st->raw and submits it as HEADERS. Returns 1 when
 * a head was taken (interim or final), 0 when more bytes are needed, or a negative code for a
 * response td cannot frame. */
static int response_head(td_h2_stream_t *st) {
    td_http1_header_t hdrs[MAX_HDRS];
    td_http1_response_t resp;
    const char *p = st->raw.p + st->raw.off;
    size_t len = td_bytes_left(&st->raw);
    int r = td_http1_parse_response(p, len, st->head_req, &limits, &resp, hdrs, MAX_HDRS);
    if (r == TD_EAGAIN)
        return 0;
    if (r < 0 || resp.status == 101)
        return TD_EBADMSG;
    nghttp2_nv nv[MAX_HDRS + 1];
    char status[4] = {(char)('0' + resp.status / 100 % 10), (char)('0' + resp.status / 10 % 10),
                      (char)('0' + resp.status % 10), 0};
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    size_t n = 1;
    /* The names lower-cased into one area (HTTP/2 requires it); nghttp2 copies them. */
    char names[CBUF_SIZE];
    size_t used = 0;
    /* A response that ends with its HEADERS (gRPC's trailers-only, as an HTTP/2 backend's is
     * framed: "Content-Length: 0") needs no content-length: END_STREAM says it, and a gRPC
     * client would take the field for trailing metadata. A HEAD's keeps the length it names. */
    int empty = resp.status >= 200 && !st->head_req && resp.body == TD_BODY_LENGTH &&
                resp.content_length == 0;
    for (size_t i = 0; i < resp.num_headers; i++) {
        td_str_t name = resp.headers[i].name;
        if (connection_specific(name) || used + name.len > sizeof(names) ||
            (empty && name.len == 14 && td_http1_name_is(name, "content-length")))
            continue;
        for (size_t k = 0; k < name.len; k++) {
            char ch = name.p[k];
            names[used + k] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        nv[n++] = (nghttp2_nv){(uint8_t *)names + used, (uint8_t *)resp.headers[i].value.p,
                               name.len, resp.headers[i].value.len, NGHTTP2_NV_FLAG_NONE};
        used += name.len;
    }
    st->raw.off += (size_t)r;
    nghttp2_session *ng = st->h->ng;
    if (resp.status < 200) { /* interim (100 Continue, 103): a HEADERS of its own */
        if (ng && !st->ng_closed)
            nghttp2_submit_headers(ng, NGHTTP2_FLAG_NONE, st->id, NULL, nv, n, NULL);
        return 1;
    }
    st->head_done = 1;
    st->framing = (uint8_t)resp.body;
    st->left = resp.content_length;
    if (resp.body == TD_BODY_NONE || (resp.body == TD_BODY_LENGTH && resp.content_length == 0))
        st->resp_done = 1;
    if (!ng || st->ng_closed)
        return 1;
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read_cb};
    int rv = nghttp2_submit_response(ng, st->id, nv, n, st->resp_done ? NULL : &dp);
    return rv < 0 ? TD_EBADMSG : 1;
}

/* Frames what the stream's client wrote: the head(s), then the body into st->body. Returns 0
 * or a negative code (the stream is reset). */
static int response_feed(td_h2_stream_t *st) {
    while (!st->head_done && td_bytes_left(&st->raw)) {
        int r = response_head(st);
        if (r < 0)
            return r;
        if (r == 0)
            return td_bytes_left(&st->raw) > CBUF_SIZE ? TD_EBADMSG : 0;
    }
    if (!st->head_done)
        return 0;
    size_t avail = td_bytes_left(&st->raw);
    const char *p = st->raw.p + st->raw.off;
    if (st->resp_done) {
        st->raw.off = st->raw.len = 0; /* nothing may follow (a HEAD's body is not sent) */
        return 0;
    }
    if (st->framing == TD_BODY_LENGTH) {
        size_t take = avail < st->left ? avail : (size_t)st->left;
        if (take && td_bytes_add(&st->body, p, take) < 0)
            return TD_ENOMEM;
        st->left -= take;
        st->resp_done = st->left == 0;
        st->raw.off = st->raw.len = 0;
    } else if (st->framing == TD_BODY_CHUNKED) {
        while (avail && !st->resp_done) {
            int done = 0;
            td_str_t spans[MAX_SPANS];
            size_t ns = 0, tb = st->chunk.trailer_bytes;
            long used = td_http1_chunked_feed(&st->chunk, p, avail, &done, spans, MAX_SPANS, &ns);
            if (used < 0)
                return TD_EBADMSG;
            for (size_t i = 0; i < ns; i++)
                if (td_bytes_add(&st->body, spans[i].p, spans[i].len) < 0)
                    return TD_ENOMEM;
            /* The trailer section is the last of the bytes used (it ends the body). */
            size_t tl = st->chunk.trailer_bytes - tb;
            if (tl && td_bytes_add(&st->trailers, p + used - (long)tl, tl) < 0)
                return TD_ENOMEM;
            st->raw.off += (size_t)used;
            p += used;
            avail -= (size_t)used;
            st->resp_done = (uint8_t)done;
            if (!used && !ns)
                break;
        }
        if (st->resp_done)
            st->raw.off = st->raw.len = 0;
    } else if (avail) { /* until close: ends when the stream's client closes */
        if (td_bytes_add(&st->body, p, avail) < 0)
            return TD_ENOMEM;
        st->raw.off = st->raw.len = 0;
    }
    return 0;
}

/* The stream's client (its virtual stream) */

static void virt_read_start(td_stream_t *s) {
    td_h2_stream_t *st = s->virt_data;
    st->want_read = 1;
    if (td_bytes_left(&st->in))
        conn_kick(st->h);
}

static void virt_read_stop(td_stream_t *s) {
    td_h2_stream_t *st = s->virt_data;
    st->want_read = 0;
}

static int virt_write(td_stream_t *s, td_iov_t *iov, unsigned n, td_stream_write_cb cb) {
    td_h2_stream_t *st = s->virt_data;
    if (st->ng_closed || !st->h->ng)
        return -EPIPE; /* the client reset the stream, or the connection is gone */
    for (unsigned i = 0; i < n; i++)
        if (iov[i].len && td_bytes_add(&st->raw, iov[i].base, iov[i].len) < 0)
            return -ENOMEM;
    if (response_feed(st) < 0) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return -EPROTO;
    }
    stream_resume(st);
    if (td_bytes_left(&st->body) > RESP_HIGH && cb) {
        st->pending_cb = cb; /* backpressure: the exchange stops reading its upstream */
        return 1;
    }
    return 0;
}

static size_t virt_write_queued(const td_stream_t *s) {
    const td_h2_stream_t *st = s->virt_data;
    return td_bytes_left(&st->body) + td_bytes_left(&st->raw);
}

static void virt_close(td_stream_t *s) {
    td_h2_stream_t *st = s->virt_data;
    st->want_read = 0;
    if (st->pending_cb)
        st->write_ended = 1;
    /* DATA the client will no longer read goes back to the window all the same. */
    stream_consume(st, st->unconsumed);
    st->unconsumed = 0;
    if (!st->ng_closed && st->h->ng) {
        if (st->head_done && !st->resp_done && st->framing == TD_BODY_UNTIL_CLOSE) {
            st->resp_done = 1; /* the body that lasted until close is whole */
            stream_resume(st);
        } else if (!st->head_done || !st->resp_done) {
            stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* the response broke off */
        }
    }
    st->close_due = 1;
    conn_kick(st->h);
}

static const td_stream_virt_t virt_ops = {
    .read_start = virt_read_start,
    .read_stop = virt_read_stop,
    .write = virt_write,
    .write_queued = virt_write_queued,
    .close = virt_close,
};

/* The request head is whole: it becomes HTTP/1.1 bytes in st->in and the stream's client is
 * made to read them. Returns 0 or a negative code (the stream is reset). */
static int stream_request(td_h2_stream_t *st, int end_stream) {
    td_h2_conn_t *h = st->h;
    const char *host = st->authority ? st->authority : st->host;
    if (!st->method || !st->path || !host || st->bad_scheme)
        return TD_EBADMSG;
    /* :authority and a host field that say different things make the request malformed (RFC
     * 9113 §8.3.1): which one the backend should see is not td's to guess (nginx and h2o refuse
     * it too). Host names compare without regard to case. */
    if (st->authority && st->host && strcasecmp(st->authority, st->host) != 0)
        return TD_EBADMSG;
    st->req_end = (uint8_t)end_stream;
    st->chunked = !end_stream && !st->has_length;
    st->head_req = strcmp(st->method, "HEAD") == 0; /* its response has no body */
    char line[HEAD_MAX];
    int n =
        snprintf(line, sizeof(line), "%s %s HTTP/1.1\r\nHost: %s\r\n", st->method, st->path, host);
    if (n < 0 || (size_t)n >= sizeof(line) || st->too_large)
        return TD_EHDRTOOLARGE;
    td_bytes_t head = st->in; /* the regular fields, gathered by on_header */
    memset(&st->in, 0, sizeof(st->in));
    int bad = td_bytes_add(&st->in, line, (size_t)n) < 0 ||
              (head.len && td_bytes_add(&st->in, head.p, head.len) < 0);
    td_bytes_free(&head);
    if (!bad && st->cookie.len)
        bad = td_bytes_add(&st->in, "Cookie: ", 8) < 0 ||
              td_bytes_add(&st->in, st->cookie.p, st->cookie.len) < 0 ||
              td_bytes_add(&st->in, "\r\n", 2) < 0;
    if (!bad && st->chunked)
        bad = td_bytes_add(&st->in, "Transfer-Encoding: chunked\r\n", 28) < 0;
    /* One request per stream: the client closes once it is answered. */
    if (!bad)
        bad = td_bytes_add(&st->in, "Connection: close\r\n\r\n", 21) < 0;
    if (bad)
        return TD_ENOMEM;
    if (st->in.len > HEAD_MAX)
        return TD_EHDRTOOLARGE;
    if (h->fuzz) {
        /* No exchange behind it: a canned response exercises the response framing. */
        static const char canned[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                                     "2\r\nok\r\n0\r\n\r\n";
        if (td_bytes_add(&st->raw, canned, sizeof(canned) - 1) < 0 || response_feed(st) < 0)
            return TD_ENOMEM;
        return 0;
    }
    worker_t *w = h->w;
    client_t *c = h->c, *vc = calloc(1, sizeof(*vc));
    if (!vc)
        return TD_ENOMEM;
    vc->w = w;
    vc->cbs = &td_exchange_client_cbs;
    td_stream_init_virt(&vc->io, &w->sl, vc, &virt_ops, st, td_client_is_tls(c));
    vc->next = w->clients;
    if (w->clients)
        w->clients->prev = vc;
    w->clients = vc; /* not in td_client_open_count: it holds no file descriptor */
    vc->listener = c->listener;
    memcpy(vc->ip, c->ip, sizeof(vc->ip));
    vc->port = c->port;
    vc->served = 1;
    st->vc = vc;
    /* A request without a body needs no more client buffer than its head: not the 16 KB one an
     * HTTP/1.1 connection reads into, which thousands of streams in flight would each hold
     * while they wait for their backends (out of memory, it takes one of those as usual). */
    if (st->req_end)
        (void)td_client_buf_grow(vc, (uint32_t)(st->in.len + 1024) & ~1023u);
    td_client_timer(vc, T_HEADER);
    td_client_read(vc, 1);
    return 0;
}

/* Answers a stream td refuses before it has a client (a head too large for one): a small
 * response of td's own. */
static void stream_refuse(td_h2_stream_t *st, int status) {
    char body[64];
    int bl = snprintf(body, sizeof(body), "%d %s\n", status, td_http_reason(status));
    char resp[256];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
                     status, td_http_reason(status), bl, body);
    if (td_bytes_add(&st->raw, resp, (size_t)n) < 0 || response_feed(st) < 0)
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    st->req_end = 1;
    stream_resume(st);
}

/* ---------------------------------------------------------------------------------------------
 * Session callbacks */

static ssize_t send_cb(nghttp2_session *ng, const uint8_t *data, size_t length, int flags,
                       void *ud) {
    (void)ng;
    (void)flags;
    td_h2_conn_t *h = ud;
    if (h->fuzz)
        return (ssize_t)length;
    if (h->writing || h->out_len + length > OUT_CAP)
        return NGHTTP2_ERR_WOULDBLOCK;
    memcpy(h->out + h->out_len, data, length);
    h->out_len += length;
    return (ssize_t)length;
}

static int begin_headers_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    td_h2_conn_t *h = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    td_h2_stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->h = h;
    st->id = f->hd.stream_id;
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    st->head_open = 1;
    h->head_open++;
    conn_timer(h); /* the header block must be whole within client_header_ms */
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    return 0;
}

static char *dup_value(const uint8_t *v, size_t len) {
    char *p = malloc(len + 1);
    if (p) {
        memcpy(p, v, len);
        p[len] = 0;
    }
    return p;
}

static int header_cb(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers are not passed on to an HTTP/1.1 request */
    td_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!st)
        return 0;
    /* The head the client will parse must fit its buffer: a larger one is answered 431. */
    if (st->in.len + st->cookie.len + namelen + valuelen + 4 > HEAD_MAX) {
        st->too_large = 1;
        return 0;
    }
    char **pseudo = NULL;
    if (namelen && name[0] == ':') {
        if (namelen == 7 && memcmp(name, ":method", 7) == 0)
            pseudo = &st->method;
        else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
            pseudo = &st->path;
        else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
            pseudo = &st->authority;
        else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0) {
            /* The listener says which scheme td serves; a request for another one (ftp, a
             * made-up one) is not an HTTP request td can forward, so the stream is refused. */
            td_str_t v = {(const char *)value, valuelen};
            if (!td_http1_name_is(v, "http") && !td_http1_name_is(v, "https"))
                st->bad_scheme = 1;
            return 0;
        } else
            return 0;
    } else if (namelen == 4 && memcmp(name, "host", 4) == 0) {
        pseudo = &st->host;
    }
    if (pseudo) {
        free(*pseudo);
        return (*pseudo = dup_value(value, valuelen)) ? 0 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    int bad = 0;
    if (namelen == 6 && memcmp(name, "cookie", 6) == 0) {
        /* Cookie crumbs (RFC 9113 §8.2.3) become one field, as HTTP/1.1 has it. */
        if (st->cookie.len)
            bad = td_bytes_add(&st->cookie, "; ", 2) < 0;
        bad = bad || td_bytes_add(&st->cookie, value, valuelen) < 0;
    } else {
        if (namelen == 14 && memcmp(name, "content-length", 14) == 0)
            st->has_length = 1;
        bad = td_bytes_add(&st->in, name, namelen) < 0 || td_bytes_add(&st->in, ": ", 2) < 0 ||
              td_bytes_add(&st->in, value, valuelen) < 0 || td_bytes_add(&st->in, "\r\n", 2) < 0;
    }
    return bad ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static void request_end(td_h2_stream_t *st) {
    if (st->req_end)
        return;
    st->req_end = 1;
    if (st->chunked && td_bytes_add(&st->in, "0\r\n\r\n", 5) < 0) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (st->want_read)
        conn_kick(st->h);
}

/* The final GOAWAY names the last stream td took (RFC 9113 §6.8): the streams the client opened
 * until then are served, those above it it may retry elsewhere. */
static void conn_goaway_final(td_h2_conn_t *h) {
    if (h->goaway == 2 || !h->ng)
        return;
    h->goaway = 2;
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    conn_timer(h);
    conn_kick(h);
}

/* A stream's header block is whole (or the stream ended before): the connection's header
 * timeout no longer waits for it. */
static void stream_head_whole(td_h2_stream_t *st) {
    if (!st->head_open)
        return;
    st->head_open = 0;
    st->h->head_open--;
    conn_timer(st->h);
}

/* Ends the session with GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §5.4.1, the code for a peer that
 * floods), logged once as "h2: GOAWAY after WHAT"; its GOAWAY is written before the close. */
static void conn_calm(td_h2_conn_t *h, const char *what) {
    if (h->c) {
        char why[128];
        snprintf(why, sizeof(why), "h2: GOAWAY after %s", what);
        td_client_log(h->c, 0, why);
    }
    nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    h->linger = 1;
    conn_timer(h);
}

/* One more stream reset by the client: 1 when that is a flood (the session is ended). A token
 * bucket as nghttp2's: RST_BURST tokens, RST_RATE a second added back. */
static int rst_flood(td_h2_conn_t *h) {
    int64_t now = td_now_ms();
    if (!h->rst_ms) {
        h->rst_ms = now;
        h->rst_tokens = RST_BURST;
    }
    int64_t add = (now - h->rst_ms) * RST_RATE / 1000;
    if (add > 0) {
        h->rst_tokens =
            add >= RST_BURST - h->rst_tokens ? RST_BURST : h->rst_tokens + (uint32_t)add;
        h->rst_ms = now;
    }
    if (h->rst_tokens) {
        h->rst_tokens--;
        return 0;
    }
    if (!h->linger)
        conn_calm(h, "a rapid reset flood");
    return 1;
}

static int frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    td_h2_conn_t *h = ud;
    /* The PING sent after the shutdown notice came back: the client has seen the notice, so
     * the streams it opens from now on may be refused. */
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK) && h->goaway == 1) {
        conn_goaway_final(h);
        return 0;
    }
    if (f->hd.type == NGHTTP2_RST_STREAM && rst_flood(h))
        return 0;
    td_h2_stream_t *st =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(ng, f->hd.stream_id) : NULL;
    if (!st)
        return 0;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        h->got_req = 1;
        stream_head_whole(st);
        int r = stream_request(st, end);
        if (r == TD_EHDRTOOLARGE)
            stream_refuse(st, 431);
        else if (r < 0)
            stream_reset(st, r == TD_EBADMSG ? NGHTTP2_PROTOCOL_ERROR : NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) && end)
        request_end(st);
    return 0;
}

static int data_chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    (void)flags;
    (void)ud;
    td_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st || !st->vc || st->close_due || st->req_end) {
        /* No one reads it: straight back to the window. */
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    int bad = 0;
    if (st->chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        bad = td_bytes_add(&st->in, size, (size_t)n) < 0 || td_bytes_add(&st->in, data, len) < 0 ||
              td_bytes_add(&st->in, "\r\n", 2) < 0;
    } else {
        bad = td_bytes_add(&st->in, data, len) < 0;
    }
    if (bad) {
        nghttp2_session_consume(ng, id, len);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->unconsumed += len;
    if (st->want_read)
        conn_kick(st->h);
    return 0;
}

/* A response went out whole while the client's half of the stream is still open (td answered
 * before the request ended: a 408, a 431, an early answer from the backend): RST_STREAM
 * NO_ERROR ends the stream (RFC 9113 §8.1), so that it no longer holds the connection. */
static int frame_send_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    (void)ud;
    if ((f->hd.type != NGHTTP2_DATA && f->hd.type != NGHTTP2_HEADERS) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    td_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (st && !st->req_end && !st->ng_closed)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
    (void)ud;
    td_h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    st->ng_closed = 1;
    stream_head_whole(st);
    if (st->vc) {
        /* Reset by the client (or the session failed): its exchange is over (499). A response
         * sent whole leaves the client to end its exchange itself (its last write completes). */
        if (!st->close_due && !(st->resp_done && code == NGHTTP2_NO_ERROR))
            td_client_close(st->vc);
        return 0; /* freed with its client, from the loop */
    }
    stream_free(st);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The connection */

static void conn_free_cb(uv_handle_t *hd) {
    td_h2_conn_t *h = hd->data;
    free(h->rbuf);
    free(h->out);
    free(h);
}

/* Runs what waits for the loop: completed writes and close callbacks of the streams' clients,
 * request bytes they read; then the frames go out. */
static void idle_cb(uv_idle_t *hd) {
    td_h2_conn_t *h = hd->data;
    uv_idle_stop(&h->idle);
    h->idle_on = 0;
    for (td_h2_stream_t *st = h->streams, *next; st; st = next) {
        next = st->next;
        client_t *vc = st->vc;
        if (vc && st->write_ended && st->pending_cb) {
            td_stream_write_cb cb = st->pending_cb;
            st->pending_cb = NULL;
            st->write_ended = 0;
            cb(&vc->io, st->close_due ? -ECANCELED : 0);
        }
        /* Request bytes to the client, as much as its buffer takes. */
        for (int rounds = 0;
             vc && !st->close_due && st->want_read && td_bytes_left(&st->in) && rounds < 8;
             rounds++) {
            char *buf = NULL;
            size_t cap = 0;
            vc->io.alloc_cb(&vc->io, &buf, &cap);
            if (!cap) {
                vc->io.read_cb(&vc->io, -ENOBUFS);
                break;
            }
            size_t n = td_bytes_left(&st->in) < cap ? td_bytes_left(&st->in) : cap;
            memcpy(buf, st->in.p + st->in.off, n);
            st->in.off += n;
            size_t give = n < st->unconsumed ? n : st->unconsumed;
            st->unconsumed -= give;
            stream_consume(st, give);
            vc->io.read_cb(&vc->io, (long)n);
        }
        /* The whole request was read: its bytes are not needed while the response comes. */
        if (st->req_end && st->in.p && !td_bytes_left(&st->in))
            td_bytes_free(&st->in);
        if (vc && st->close_due) {
            if (st->pending_cb) {
                td_stream_write_cb cb = st->pending_cb;
                st->pending_cb = NULL;
                cb(&vc->io, -ECANCELED);
            }
            st->vc = NULL;
            vc->io.close_cb(&vc->io); /* frees the client */
            if (st->ng_closed)
                stream_free(st);
        }
    }
    if (h->c)
        conn_flush(h);
    else if (!h->nstreams && !h->freeing) {
        h->freeing = 1;
        uv_close((uv_handle_t *)&h->idle, conn_free_cb);
    }
}

static void conn_kick(td_h2_conn_t *h) {
    if (h->idle_on || h->fuzz || h->freeing)
        return;
    h->idle_on = 1;
    uv_idle_start(&h->idle, idle_cb);
}

static void conn_read_cb(td_stream_t *s, long nread);
static void conn_alloc_cb(td_stream_t *s, char **buf, size_t *cap);

static void shutdown_cb(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

/* The session ended (with an error, or after the final GOAWAY once no stream is left) and its
 * GOAWAY is written: the connection is closed only once
 * the client closed its side (or client_header_ms passed), its bytes read and dropped meanwhile.
 * Closing with unread bytes would reset the connection and could take the GOAWAY (or the last
 * response) with it before the client read it. On plain TCP the write side is shut down, so that
 * the client sees the end at once. */
static void conn_linger(td_h2_conn_t *h) {
    client_t *c = h->c;
    if (h->linger == 2)
        return;
    h->linger = 2;
    conn_timer(h);
    if (!td_stream_is_tls(&c->io)) {
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (req && uv_shutdown(req, (uv_stream_t *)&c->io.tcp, shutdown_cb) < 0)
            free(req);
    }
    td_stream_read_start(&c->io, conn_alloc_cb, conn_read_cb);
}

static void conn_write_cb(td_stream_t *s, int status) {
    client_t *c = td_stream_owner(s);
    c->writing = 0;
    td_timeout_stop(&c->send_tmo);
    td_h2_conn_t *h = c->h2;
    if (!h || c->state == C_CLOSING)
        return;
    h->writing = 0;
    if (status < 0) {
        td_client_close(c);
        return;
    }
    conn_flush(h);
}

static void conn_alloc_cb(td_stream_t *s, char **buf, size_t *cap) {
    client_t *c = td_stream_owner(s);
    *buf = c->h2->rbuf;
    *cap = CBUF_SIZE;
}

/* The session's frames to the socket, one write at a time; then whether the connection is
 * done (both sides said GOAWAY or the session failed, or td stops and no stream is left). */
static void conn_flush(td_h2_conn_t *h) {
    client_t *c = h->c;
    /* Past its listener's max_connection_age_ms: the graceful two-step GOAWAY of a stop, looked
     * at whenever the connection reads or writes (a connection with no traffic meets the
     * keep-alive timeout instead). */
    if (c && c->old_at_ms && !h->goaway && !h->linger && td_now_ms() >= c->old_at_ms)
        td_h2_shutdown(c);
    while (c && !h->writing) {
        h->out_len = 0;
        if (nghttp2_session_send(h->ng) < 0) {
            td_client_close(c);
            return;
        }
        if (!h->out_len)
            break;
        /* h->out stays as it is until the write completes (send_cb takes nothing meanwhile):
         * the transport borrows it rather than copying what the socket did not take. */
        td_iov_t iov = td_iov(h->out, h->out_len);
        int r = td_stream_write(&c->io, &iov, 1, 0, conn_write_cb);
        if (r < 0) {
            td_client_close(c);
            return;
        }
        if (r == 1) {
            /* The client does not take its bytes: no more of its frames are read meanwhile, and
             * the send timeout measures it. */
            h->writing = 1;
            td_client_send_wait(c);
            td_stream_read_stop(&c->io);
            return;
        }
    }
    if (!c)
        return;
    if ((!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng)) ||
        (h->goaway == 2 && !h->nstreams)) {
        if (h->linger || h->goaway == 2) {
            conn_linger(h);
            return;
        }
        td_client_close(c);
        return;
    }
    td_stream_read_start(&c->io, conn_alloc_cb, conn_read_cb);
}

static int conn_feed(td_h2_conn_t *h, const char *buf, size_t len) {
    ssize_t r = nghttp2_session_mem_recv(h->ng, (const uint8_t *)buf, len);
    return r < 0 ? (int)r : 0;
}

/* The session failed on the client's bytes (nghttp2 error r): one line per connection so ended,
 * rate-limited per reason with the other client errors, then its GOAWAY and the lingering close. */
static void conn_failed(td_h2_conn_t *h, int r) {
    client_t *c = h->c;
    char why[128];
    snprintf(why, sizeof(why), "h2: GOAWAY after %s", nghttp2_strerror(r));
    td_client_log(c, 0, why);
    /* A GOAWAY the session queued (a flood, a protocol error) goes first, then the
     * lingering close. The floods the library stops without a GOAWAY of its own (PING or
     * SETTINGS frames whose ACKs pile up, CONTINUATION frames without end) are told
     * ENHANCE_YOUR_CALM, as RFC 9113 §5.4.1 has it for a peer that floods. */
    if (r == NGHTTP2_ERR_FLOODED || r == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
        r == NGHTTP2_ERR_TOO_MANY_SETTINGS)
        nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    else if (!nghttp2_session_want_write(h->ng))
        nghttp2_session_terminate_session(h->ng, NGHTTP2_PROTOCOL_ERROR);
    h->linger = 1;
    conn_flush(h);
}

static void conn_read_cb(td_stream_t *s, long nread) {
    client_t *c = td_stream_owner(s);
    td_h2_conn_t *h = c->h2;
    if (nread < 0) {
        td_client_close(c);
        return;
    }
    if (h->linger == 2)
        return; /* dropped: the session is over */
    int r = conn_feed(h, h->rbuf, (size_t)nread);
    if (r < 0) {
        conn_failed(h, r);
        return;
    }
    conn_flush(h);
}

/* The callbacks are the same for every session: made once, shared by the workers. */
static nghttp2_session_callbacks *session_cbs;
static uv_once_t cbs_once = UV_ONCE_INIT;

static void cbs_make(void) {
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, frame_send_cb);
    session_cbs = cbs;
}

static nghttp2_session_callbacks *callbacks(void) {
    uv_once(&cbs_once, cbs_make);
    return session_cbs;
}

/* A server session with td's limits: `streams` concurrent streams at most, the head limit of
 * HTTP/1.1 as the header list limit, the library's guards against floods, and the request
 * bodies' window given back by td (nghttp2_session_consume). */
static int session_new(td_h2_conn_t *h, int streams) {
    nghttp2_session_callbacks *cbs = callbacks();
    nghttp2_option *opt;
    if (!cbs || nghttp2_option_new(&opt) != 0)
        return TD_ENOMEM;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    /* Rapid reset (CVE-2023-44487): td's own guard (rst_flood) answers ENHANCE_YOUR_CALM first;
     * the library's is the backstop. */
    nghttp2_option_set_stream_reset_rate_limit(opt, 2 * RST_BURST, 2 * RST_RATE);
    nghttp2_option_set_max_continuations(opt, 8);
    int r = nghttp2_session_server_new2(&h->ng, cbs, h, opt);
    nghttp2_option_del(opt);
    if (r != 0)
        return TD_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, HEAD_MAX},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0)
        return TD_ENOMEM;
    return 0;
}

int td_h2_start(client_t *c, const td_config_listener_t *l) {
    td_h2_conn_t *h = calloc(1, sizeof(*h));
    if (!h)
        return TD_ENOMEM;
    h->rbuf = malloc(CBUF_SIZE);
    h->out = malloc(OUT_CAP);
    int streams = l && l->h2_max_concurrent_streams ? l->h2_max_concurrent_streams : 100;
    if (!h->rbuf || !h->out || session_new(h, streams) < 0) {
        if (h->ng)
            nghttp2_session_del(h->ng);
        free(h->rbuf);
        free(h->out);
        free(h);
        return TD_ENOMEM;
    }
    h->c = c;
    h->w = c->w;
    uv_idle_init(&c->w->loop, &h->idle);
    h->idle.data = h;
    c->h2 = h;
    c->state = C_H2;
    c->served = 1;
    h->tmo_kind = -1;
    conn_timer(h);
    /* What the client sent so far (the preface, maybe frames) was read into c->buf. */
    int r = c->len ? conn_feed(h, c->buf, c->len) : 0;
    c->len = 0;
    if (r < 0) {
        conn_failed(h, r); /* a flood or an error in the first bytes gets its GOAWAY too */
        return 0;
    }
    conn_flush(h);
    return 0;
}

void td_h2_closed(client_t *c) {
    td_h2_conn_t *h = c->h2;
    if (!h)
        return;
    c->h2 = NULL;
    h->c = NULL;
    for (td_h2_stream_t *st = h->streams; st; st = st->next) {
        st->ng_closed = 1; /* the session goes now: nothing may reach it */
        if (st->vc && !st->close_due)
            td_client_close(st->vc);
    }
    nghttp2_session_del(h->ng);
    h->ng = NULL;
    for (td_h2_stream_t *st = h->streams, *next; st; st = next) {
        next = st->next;
        if (!st->vc)
            stream_free(st);
    }
    if (!h->nstreams) {
        h->freeing = 1;
        uv_close((uv_handle_t *)&h->idle, conn_free_cb);
    } else {
        conn_kick(h);
    }
}

void td_h2_shutdown(client_t *c) {
    td_h2_conn_t *h = c->h2;
    if (!h || h->goaway)
        return;
    /* Two steps (RFC 9113 §6.8): the notice first, so that streams the client opens while it
     * is on its way are still served; the final GOAWAY once the PING's ACK shows the client
     * has seen it (or at the header timeout if no ACK comes). */
    if (nghttp2_submit_shutdown_notice(h->ng) != 0 ||
        nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, NULL) != 0) {
        conn_goaway_final(h);
        return;
    }
    h->goaway = 1;
    conn_timer(h);
    conn_kick(h);
}

void td_h2_timeout(client_t *c) {
    td_h2_conn_t *h = c->h2;
    if (!h)
        return;
    int kind = h->tmo_kind;
    h->tmo_kind = -1; /* the deadline passed: nothing is armed */
    if (h->linger) {
        td_client_close(c);
    } else if (h->head_open) {
        /* A header block that does not end in time holds the connection for nothing: it ends
         * (a 408 needs a whole request head). */
        td_client_log(c, 0, "h2: GOAWAY: header block not whole within client_header_ms");
        nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
        h->goaway = 2;
        conn_kick(h);
    } else if (h->goaway == 1) {
        conn_goaway_final(h); /* no ACK to the notice's PING */
    } else if (!h->nstreams && kind >= 0) {
        /* Idle: one GOAWAY and the connection closes, as other servers do; a stream the client
         * opens meanwhile is above its last stream id, so the client knows to retry it. */
        conn_goaway_final(h);
    } else {
        conn_timer(h);
    }
}

td_h2_conn_t *td_h2_fuzz_new(void) {
    td_h2_conn_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->fuzz = 1;
    if (session_new(h, 100) < 0) {
        free(h);
        return NULL;
    }
    return h;
}

int td_h2_fuzz_feed(td_h2_conn_t *h, const uint8_t *buf, size_t len) {
    ssize_t r = nghttp2_session_mem_recv(h->ng, buf, len);
    if (r < 0)
        return (int)r;
    return nghttp2_session_send(h->ng);
}

void td_h2_fuzz_free(td_h2_conn_t *h) {
    nghttp2_session_del(h->ng);
    h->ng = NULL;
    while (h->streams)
        stream_free(h->streams);
    free(h);
}
