/* HTTP/2 to backends: the glue between libnghttp2 client sessions and the exchanges' upstreams
 * (see td/h2_client.h). One td_h2c_conn_t per connection to a server, in the worker's pool of
 * that server; one h2s_t per stream, carrying the virtual td_stream_t of one upstream_t. Work that
 * must not run inside the caller's stack (a stream's start, its response bytes and errors handed
 * to its upstream, a completed write, its close callback, the session's frames, the end of a
 * connection) runs from the connection's idle handle. */
#include "td/h2_client.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/bytes.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/rewrite.h"
#include "td/stream.h"
#include "td/upstream.h"

/* Request body bytes held for the server: above HIGH the exchange's write stays pending (it stops
 * reading its client) until the server's window took them down to LOW. */
#define REQ_HIGH (64 * 1024)
#define REQ_LOW (16 * 1024)
/* Receive windows well above the 64 KiB default, so that one round trip carries a large
 * response; DATA goes back to them only as the exchange takes it. */
#define STREAM_WINDOW (1 << 20)
#define CONN_WINDOW (16 << 20)
#define OUT_CAP (64 * 1024) /* frames gathered into one write to the socket */
#define RBUF_SIZE (64 * 1024)
#define PING_QUIET_MS 15000 /* an idle connection is PINGed after this */
#define ASSUMED_STREAMS 100 /* concurrent streams assumed before a server's first SETTINGS */

enum { H_CONNECTING, H_READY, H_CLOSING };

typedef struct h2s_s h2s_t;

struct h2s_s {
    struct td_h2c_conn_s *h; /* borrowed: the connection carrying it (it outlives its streams) */
    h2s_t *prev, *next;      /* in h->streams */
    upstream_t *u;           /* borrowed: the upstream it carries; NULL once its close was done */
    /* borrowed (the exchange's snapshot holds them while the try lasts): its server and TLS
     * context, for a connection it moves to */
    td_snap_server_t *srv;
    td_tls_client_t *tls;
    int connect_ms;
    int32_t id; /* the HTTP/2 stream id; 0 before the request was submitted */
    /* The request from the exchange: its head until whole, the DATA payload, the trailers. */
    td_bytes_t head, body, trailers;
    td_http1_chunked_t chunk;
    uint64_t req_left; /* Content-Length bytes still to come */
    uint8_t req_framing, req_head_done, req_done, deferred, head_req;
    uint8_t started;               /* on_ready was called (or open returned 1) */
    uint8_t headers_sent;          /* its HEADERS went to the server */
    uint8_t td_reset;              /* td sent RST_STREAM for it */
    uint8_t want_read;             /* the upstream reads */
    uint8_t ng_closed;             /* nghttp2 closed the stream (or the session is gone) */
    uint8_t close_due;             /* the upstream closed it: its close callback is due */
    uint8_t write_ended;           /* the pending write's callback is due */
    td_stream_write_cb pending_cb; /* the upstream's write reported pending (1), or NULL */
    /* The response, as HTTP/1.1 bytes for the upstream. */
    td_bytes_t in;
    td_bytes_t fields; /* the header (or trailer) fields being gathered, as "name: value\r\n" */
    size_t unconsumed; /* DATA bytes in `in` not given back to the windows */
    int status;
    uint8_t resp_head, resp_chunked, resp_end, resp_any, has_length;
    /* An error to report once `in` was read: F_* + 1, or 0; and why. */
    uint8_t err_kind;
    char why[160];
};

struct td_h2c_conn_s {
    td_stream_t io;             /* the connection to the server (plain or TLS) */
    worker_t *w;                /* borrowed */
    pool_t *pool;               /* borrowed: the server's pool (in_pool: in its list) */
    td_server_stats_t *st;      /* borrowed (registry) */
    nghttp2_session *ng;        /* owned; NULL before the connect and once the connection ended */
    struct td_h2c_conn_s *next; /* in pool->h2 */
    h2s_t *streams;             /* owned: the streams not freed yet */
    int nstreams;
    uv_idle_t idle;   /* runs the deferred work */
    uv_timer_t timer; /* connect deadline; the idle PING and close */
    int64_t idle_since;
    int32_t goaway_last; /* the last stream id of the server's GOAWAY */
    uint8_t state, goaway, writing, idle_on, ping_out, ready_due, io_closed, handles, retire;
    uint8_t in_pool, io_closing, freeing;
    char *rbuf; /* owned */
    char *out;  /* owned: frames gathered for one write */
    size_t out_len;
    char why[160]; /* why the connection failed, for its streams */
    uint8_t why_kind;
    uint8_t heard; /* bytes came from the server */
};

typedef struct td_h2c_conn_s td_h2c_conn_t;

static const td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

static void conn_kick(td_h2c_conn_t *h);
static void conn_fail(td_h2c_conn_t *h, const char *why, int kind);
static int conn_room(td_h2c_conn_t *h);

/* ---------------------------------------------------------------------------------------------
 * Streams */

static void stream_link(h2s_t *s, td_h2c_conn_t *h) {
    s->h = h;
    s->prev = NULL;
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    uv_timer_stop(&h->timer); /* no idle PING or close while it carries a stream */
}

static void stream_unlink(h2s_t *s) {
    td_h2c_conn_t *h = s->h;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    h->nstreams--;
}

static void conn_idle_timer(td_h2c_conn_t *h);

static void stream_free(h2s_t *s) {
    td_h2c_conn_t *h = s->h;
    stream_unlink(s);
    td_bytes_free(&s->head);
    td_bytes_free(&s->body);
    td_bytes_free(&s->trailers);
    td_bytes_free(&s->in);
    td_bytes_free(&s->fields);
    free(s);
    if (!h->nstreams) {
        if (h->state == H_READY && (h->goaway || h->retire))
            conn_fail(h, "no stream left after GOAWAY", F_IO);
        else if (h->state == H_READY)
            conn_idle_timer(h);
        conn_kick(h); /* a closed connection is freed once its last stream is */
    }
}

/* An error for the stream's upstream, reported once the bytes before it were read. */
static void stream_error(h2s_t *s, const char *why, int kind) {
    if (s->err_kind || s->resp_end)
        return;
    s->err_kind = (uint8_t)(kind + 1);
    snprintf(s->why, sizeof(s->why), "%s", why);
    conn_kick(s->h);
}

/* Gives DATA bytes back to the server's windows (the stream's and the connection's). */
static void stream_consume(h2s_t *s, size_t n) {
    nghttp2_session *ng = s->h->ng;
    if (!n || !ng)
        return;
    nghttp2_session_consume_connection(ng, n);
    if (!s->ng_closed && s->id > 0)
        nghttp2_session_consume_stream(ng, s->id, n);
}

static ssize_t req_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *src, void *ud) {
    (void)ud;
    h2s_t *s = src->ptr;
    size_t avail = td_bytes_left(&s->body);
    if (!avail && !s->req_done) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    memcpy(buf, s->body.p + s->body.off, n);
    s->body.off += n;
    if (s->body.off == s->body.len)
        s->body.off = s->body.len = 0;
    if (s->req_done && !td_bytes_left(&s->body)) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (td_bytes_left(&s->trailers)) {
            /* The chunked body's trailer section: "name: value\r\n" lines, then CRLF. */
            nghttp2_nv nv[MAX_HDRS];
            char names[4096];
            size_t nn = 0, used = 0;
            char *p = s->trailers.p + s->trailers.off, *end = s->trailers.p + s->trailers.len;
            while (p < end && nn < MAX_HDRS) {
                char *eol = memchr(p, '\r', (size_t)(end - p));
                char *colon = eol ? memchr(p, ':', (size_t)(eol - p)) : NULL;
                if (!eol || eol == p)
                    break;
                if (colon && (size_t)(colon - p) + used <= sizeof(names)) {
                    size_t nl = (size_t)(colon - p);
                    for (size_t k = 0; k < nl; k++)
                        names[used + k] = p[k] >= 'A' && p[k] <= 'Z' ? (char)(p[k] + 32) : p[k];
                    char *v = colon + 1, *ve = eol;
                    while (v < ve && (*v == ' ' || *v == '\t'))
                        v++;
                    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                        ve--;
                    nv[nn++] = (nghttp2_nv){(uint8_t *)names + used, (uint8_t *)v, nl,
                                            (size_t)(ve - v), NGHTTP2_NV_FLAG_NONE};
                    used += nl;
                }
                p = eol + 2;
            }
            if (nn && nghttp2_submit_trailer(ng, id, nv, nn) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            s->trailers.off = s->trailers.len;
        }
    }
    if (s->pending_cb && td_bytes_left(&s->body) < REQ_LOW) {
        s->write_ended = 1; /* the exchange may write again: from the loop, not from here */
        conn_kick(s->h);
    }
    return (ssize_t)n;
}

/* Fields of an HTTP/1.1 request that HTTP/2 has no place for (RFC 9113 §8.2.2), and Host
 * (it becomes :authority). TE passes only as "trailers". */
static int connection_specific(td_str_t n, td_str_t v) {
    if (n.len == 2 && td_http1_name_is(n, "te"))
        return !(v.len == 8 && td_http1_name_is(v, "trailers"));
    return td_rewrite_hop_by_hop(n) || (n.len == 4 && td_http1_name_is(n, "host")) ||
           (n.len == 14 && td_http1_name_is(n, "http2-settings"));
}

/* The request head at the start of s->head is whole: it goes out as HEADERS. Returns the bytes
 * of the head, 0 when more are needed, or a negative code. */
static int request_head(h2s_t *s) {
    td_http1_header_t hdrs[MAX_HDRS];
    td_http1_request_t req;
    int r = td_http1_parse_request(s->head.p, s->head.len, &limits, &req, hdrs, MAX_HDRS);
    if (r == TD_EAGAIN)
        return 0;
    if (r < 0)
        return TD_EBADMSG;
    nghttp2_nv nv[MAX_HDRS + 4];
    size_t n = 0;
    int tls = td_stream_is_tls(&s->h->io);
    td_str_t host = req.host;
    nv[n++] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)req.method.p, 7, req.method.len,
                           NGHTTP2_NV_FLAG_NONE};
    nv[n++] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)(tls ? "https" : "http"), 7,
                           tls ? 5 : 4, NGHTTP2_NV_FLAG_NONE};
    nv[n++] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)host.p, 10, host.len,
                           NGHTTP2_NV_FLAG_NONE};
    nv[n++] = (nghttp2_nv){(uint8_t *)":path", (uint8_t *)req.target.p, 5, req.target.len,
                           NGHTTP2_NV_FLAG_NONE};
    /* The names lower-cased into one area (HTTP/2 requires it); nghttp2 copies them. */
    char names[CBUF_SIZE];
    size_t used = 0;
    for (size_t i = 0; i < req.num_headers; i++) {
        td_str_t name = req.headers[i].name;
        if (connection_specific(name, req.headers[i].value) || used + name.len > sizeof(names))
            continue;
        for (size_t k = 0; k < name.len; k++) {
            char ch = name.p[k];
            names[used + k] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        nv[n++] = (nghttp2_nv){(uint8_t *)names + used, (uint8_t *)req.headers[i].value.p, name.len,
                               req.headers[i].value.len, NGHTTP2_NV_FLAG_NONE};
        used += name.len;
    }
    s->req_head_done = 1;
    s->head_req = req.head;
    s->req_framing = (uint8_t)req.body;
    s->req_left = req.content_length;
    if (req.body == TD_BODY_NONE || (req.body == TD_BODY_LENGTH && !req.content_length))
        s->req_done = 1;
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = req_read_cb};
    int32_t id = nghttp2_submit_request(s->h->ng, NULL, nv, n,
                                        s->req_done && !td_bytes_left(&s->body) ? NULL : &dp, s);
    if (id < 0)
        return id == NGHTTP2_ERR_NOMEM ? TD_ENOMEM : TD_EBADMSG;
    s->id = id;
    return r;
}

/* Request body bytes after the head: into the DATA payload (chunked: de-chunked, its trailer
 * section kept for a trailing HEADERS). Returns 0 or a negative code. */
static int request_body(h2s_t *s, const char *p, size_t len) {
    if (s->req_done || !len)
        return 0;
    if (s->req_framing == TD_BODY_LENGTH) {
        size_t take = len < s->req_left ? len : (size_t)s->req_left;
        if (td_bytes_add(&s->body, p, take) < 0)
            return TD_ENOMEM;
        s->req_left -= take;
        s->req_done = s->req_left == 0;
        return 0;
    }
    while (len && !s->req_done) {
        int done = 0;
        td_str_t spans[MAX_SPANS];
        size_t ns = 0, tb = s->chunk.trailer_bytes;
        long used = td_http1_chunked_feed(&s->chunk, p, len, &done, spans, MAX_SPANS, &ns);
        if (used < 0)
            return TD_EBADMSG;
        for (size_t i = 0; i < ns; i++)
            if (td_bytes_add(&s->body, spans[i].p, spans[i].len) < 0)
                return TD_ENOMEM;
        /* Trailer bytes are the last of what was used (the section ends the body). */
        size_t tl = s->chunk.trailer_bytes - tb;
        if (tl && td_bytes_add(&s->trailers, p + used - (long)tl, tl) < 0)
            return TD_ENOMEM;
        p += used;
        len -= (size_t)used;
        s->req_done = (uint8_t)done;
        if (!used && !ns)
            break;
    }
    return 0;
}

/* Wakes the request's data source once bytes (or its end) came. */
static void stream_resume(h2s_t *s) {
    if (s->deferred && !s->ng_closed && s->h->ng && s->id > 0) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h->ng, s->id);
    }
    conn_kick(s->h);
}

/* The upstream's stream (virtual) */

static void virt_read_start(td_stream_t *vs) {
    h2s_t *s = vs->virt_data;
    s->want_read = 1;
    if (td_bytes_left(&s->in) || s->err_kind)
        conn_kick(s->h);
}

static void virt_read_stop(td_stream_t *vs) {
    h2s_t *s = vs->virt_data;
    s->want_read = 0;
}

static int virt_write(td_stream_t *vs, td_iov_t *iov, unsigned n, td_stream_write_cb cb) {
    h2s_t *s = vs->virt_data;
    td_h2c_conn_t *h = s->h;
    if (h->state != H_READY || !h->ng || s->ng_closed) {
        /* A response already whole, or an error about to be reported (a refused stream is
         * retried, which a write error would prevent): the bytes are dropped. */
        if (s->resp_end || s->err_kind)
            return 0;
        return -EPIPE; /* the stream was reset, or the connection is gone */
    }
    for (unsigned i = 0; i < n; i++) {
        const char *p = iov[i].base;
        size_t len = iov[i].len;
        if (!s->req_head_done) {
            if (td_bytes_add(&s->head, p, len) < 0)
                return -ENOMEM;
            int r = request_head(s);
            if (r < 0)
                return r == TD_ENOMEM ? -ENOMEM : -EPROTO;
            if (r == 0) {
                if (s->head.len > CBUF_SIZE)
                    return -EPROTO;
                continue;
            }
            p = s->head.p + r;
            len = s->head.len - (size_t)r;
            int b = request_body(s, p, len);
            td_bytes_free(&s->head);
            if (b < 0)
                return b == TD_ENOMEM ? -ENOMEM : -EPROTO;
            continue;
        }
        int b = request_body(s, p, len);
        if (b < 0)
            return b == TD_ENOMEM ? -ENOMEM : -EPROTO;
    }
    stream_resume(s);
    if (td_bytes_left(&s->body) > REQ_HIGH && cb) {
        s->pending_cb = cb; /* backpressure: the exchange stops reading its client */
        return 1;
    }
    return 0;
}

static size_t virt_write_queued(const td_stream_t *vs) {
    const h2s_t *s = vs->virt_data;
    return td_bytes_left(&s->body);
}

/* The upstream closes: an exchange that ended before its stream did resets it (CANCEL); its
 * close callback runs from the loop. */
static void virt_close(td_stream_t *vs) {
    h2s_t *s = vs->virt_data;
    td_h2c_conn_t *h = s->h;
    s->want_read = 0;
    if (s->pending_cb)
        s->write_ended = 1;
    stream_consume(s, s->unconsumed);
    s->unconsumed = 0;
    if (h->ng && h->state != H_CLOSING && s->id > 0 && !s->ng_closed &&
        !(s->resp_end && s->req_done))
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    if (s->id <= 0)
        s->ng_closed = 1; /* never submitted: nghttp2 knows nothing of it */
    s->close_due = 1;
    conn_kick(h);
}

static const td_stream_virt_t virt_ops = {
    .read_start = virt_read_start,
    .read_stop = virt_read_stop,
    .write = virt_write,
    .write_queued = virt_write_queued,
    .close = virt_close,
};

/* ---------------------------------------------------------------------------------------------
 * Session callbacks */

static ssize_t send_cb(nghttp2_session *ng, const uint8_t *data, size_t length, int flags,
                       void *ud) {
    (void)ng;
    (void)flags;
    td_h2c_conn_t *h = ud;
    if (h->writing || h->out_len + length > OUT_CAP)
        return NGHTTP2_ERR_WOULDBLOCK;
    memcpy(h->out + h->out_len, data, length);
    h->out_len += length;
    return (ssize_t)length;
}

static h2s_t *stream_of(nghttp2_session *ng, int32_t id) {
    return id ? nghttp2_session_get_stream_user_data(ng, id) : NULL;
}

static int header_cb(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    (void)flags;
    (void)ud;
    h2s_t *s = f->hd.type == NGHTTP2_HEADERS ? stream_of(ng, f->hd.stream_id) : NULL;
    if (!s)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            st = st * 10 + (value[i] - '0');
        s->status = st;
        return 0;
    }
    if (namelen && name[0] == ':')
        return 0;
    /* The exchange's parser takes heads of CBUF_SIZE at most: a larger one fails there. */
    if (s->fields.len + namelen + valuelen + 4 > CBUF_SIZE)
        return 0;
    if (!s->resp_head && namelen == 14 && memcmp(name, "content-length", 14) == 0)
        s->has_length = 1;
    int bad =
        td_bytes_add(&s->fields, name, namelen) < 0 || td_bytes_add(&s->fields, ": ", 2) < 0 ||
        td_bytes_add(&s->fields, value, valuelen) < 0 || td_bytes_add(&s->fields, "\r\n", 2) < 0;
    return bad ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

/* A response HEADERS is whole: an HTTP/1.1 head (interim or final) for the upstream, or, after
 * the final head, the trailers as the chunked body's trailer section. */
static int response_headers(h2s_t *s, int end) {
    int bad = 0;
    if (s->resp_head) {
        if (s->resp_chunked)
            bad = td_bytes_add(&s->in, "0\r\n", 3) < 0 ||
                  td_bytes_add(&s->in, s->fields.p, s->fields.len) < 0 ||
                  td_bytes_add(&s->in, "\r\n", 2) < 0;
        /* (trailers after a content-length body have no place in HTTP/1.1: dropped) */
        s->resp_end = 1;
    } else {
        char line[64];
        int n = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", s->status,
                         td_http_reason(s->status));
        bad = td_bytes_add(&s->in, line, (size_t)n) < 0 ||
              td_bytes_add(&s->in, s->fields.p, s->fields.len) < 0;
        if (s->status >= 200) {
            s->resp_head = 1;
            /* The stream ends with the response, as an HTTP/1.1 connection that says so: the
             * exchange never puts its upstream in the keep-alive pool. */
            bad = bad || td_bytes_add(&s->in, "Connection: close\r\n", 19) < 0;
            int bodiless = s->head_req || s->status == 204 || s->status == 304;
            if (end) {
                /* A response in one HEADERS (gRPC's trailers-only): its length says it ends. */
                if (!s->has_length && !bodiless)
                    bad = bad || td_bytes_add(&s->in, "Content-Length: 0\r\n", 19) < 0;
                s->resp_end = 1;
            } else if (!s->has_length && !bodiless) {
                bad = bad || td_bytes_add(&s->in, "Transfer-Encoding: chunked\r\n", 28) < 0;
                s->resp_chunked = 1;
            }
        }
        bad = bad || td_bytes_add(&s->in, "\r\n", 2) < 0;
    }
    s->fields.len = s->fields.off = 0;
    s->status = 0;
    s->resp_any = 1;
    return bad ? TD_ENOMEM : 0;
}

static int frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    td_h2c_conn_t *h = ud;
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
        uint32_t max =
            nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (h->pool)
            h->pool->h2_max = max ? max : 1;
        if (h->state == H_CONNECTING) {
            h->state = H_READY;
            h->ready_due = 1; /* the waiting streams start, from the loop */
            uv_timer_stop(&h->timer);
            conn_kick(h);
        }
        return 0;
    }
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
        h->ping_out = 0;
        return 0;
    }
    if (f->hd.type == NGHTTP2_GOAWAY) {
        /* No new stream on it; those above last_stream_id were not processed (nghttp2 closes
         * them with REFUSED_STREAM). */
        h->goaway = 1;
        h->goaway_last = f->goaway.last_stream_id;
        h->ready_due = 1; /* streams waiting for it go elsewhere */
        conn_kick(h);
        return 0;
    }
    h2s_t *s = stream_of(ng, f->hd.stream_id);
    if (!s)
        return 0;
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (response_headers(s, end) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    } else if (f->hd.type == NGHTTP2_DATA && end && !s->resp_end) {
        if (s->resp_chunked && td_bytes_add(&s->in, "0\r\n\r\n", 5) < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        s->resp_end = 1;
    } else {
        return 0;
    }
    if (s->want_read)
        conn_kick(h);
    return 0;
}

static int data_chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    (void)flags;
    (void)ud;
    h2s_t *s = stream_of(ng, id);
    if (!s || !s->u || s->close_due || !s->resp_head) {
        /* No one reads it: straight back to the window. */
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    int bad = 0;
    if (s->resp_chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        bad = td_bytes_add(&s->in, size, (size_t)n) < 0 || td_bytes_add(&s->in, data, len) < 0 ||
              td_bytes_add(&s->in, "\r\n", 2) < 0;
    } else {
        bad = td_bytes_add(&s->in, data, len) < 0;
    }
    if (bad) {
        nghttp2_session_consume(ng, id, len);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    s->unconsumed += len;
    if (s->want_read)
        conn_kick(s->h);
    return 0;
}

static int frame_send_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_RST_STREAM)
        return 0;
    h2s_t *s = stream_of(ng, f->hd.stream_id);
    if (s && f->hd.type == NGHTTP2_HEADERS)
        s->headers_sent = 1;
    else if (s)
        s->td_reset = 1; /* its close reports td's code: the log line says who reset it */
    return 0;
}

static int stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
    td_h2c_conn_t *h = ud;
    h2s_t *s = stream_of(ng, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    s->ng_closed = 1;
    if (!s->resp_end) {
        char why[160];
        /* Not processed by the server (RFC 9113 §8.7): it may go to another server whatever its
         * method, as after a connect failure. */
        if (s->td_reset && s->headers_sent) {
            /* nghttp2 reset it on td's side (a protocol error of the server's). */
            if (code == NGHTTP2_FLOW_CONTROL_ERROR)
                snprintf(why, sizeof(why),
                         "HTTP/2 stream reset by td: the server sent more than its flow-control "
                         "window");
            else
                snprintf(why, sizeof(why), "HTTP/2 stream reset by td (%s)",
                         nghttp2_http2_strerror(code));
            if (s->u)
                s->u->reused = 0;
            stream_error(s, why, F_IO);
        } else if (!s->resp_any && (code == NGHTTP2_REFUSED_STREAM || !s->headers_sent ||
                                    (h->goaway && id > h->goaway_last))) {
            snprintf(why, sizeof(why), "HTTP/2 stream refused (%s)", nghttp2_http2_strerror(code));
            stream_error(s, why, F_CONNECT);
        } else {
            snprintf(why, sizeof(why), "HTTP/2 stream reset by the server (%s)",
                     nghttp2_http2_strerror(code));
            /* The server's own answer about this request, not a connection that went away
             * under it: no free retry on the same server (which could repeat forever). */
            if (s->u)
                s->u->reused = 0;
            stream_error(s, why, F_IO);
        }
    }
    if (!s->u)
        stream_free(s);
    else
        conn_kick(h);
    return 0;
}

/* The callbacks are the same for every session: made once, shared by the workers. */
static nghttp2_session_callbacks *session_cbs;
static uv_once_t cbs_once = UV_ONCE_INIT;

static void cbs_make(void) {
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, frame_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
    session_cbs = cbs;
}

/* ---------------------------------------------------------------------------------------------
 * Connections */

static void handle_closed_cb(uv_handle_t *hd) {
    td_h2c_conn_t *h = hd->data;
    if (--h->handles)
        return;
    free(h->rbuf);
    free(h->out);
    free(h);
}

static void io_closed_cb(td_stream_t *io) {
    td_h2c_conn_t *h = td_stream_owner(io);
    h->io_closed = 1;
    conn_kick(h); /* freed from the loop once no stream is left either */
}

static void pool_unlink(td_h2c_conn_t *h) {
    if (!h->in_pool)
        return;
    for (td_h2c_conn_t **pp = &h->pool->h2; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    h->next = NULL;
    h->in_pool = 0;
}

/* The connection fails (or closes): no new stream, its streams fail with `why` (kind F_*), and
 * it goes away from the loop. */
static void conn_fail(td_h2c_conn_t *h, const char *why, int kind) {
    if (h->state == H_CLOSING)
        return;
    h->state = H_CLOSING;
    snprintf(h->why, sizeof(h->why), "%s", why);
    h->why_kind = (uint8_t)kind;
    pool_unlink(h);
    uv_timer_stop(&h->timer);
    for (h2s_t *s = h->streams; s; s = s->next) {
        if (!s->started && h->goaway)
            h->ready_due = 1; /* not sent before the GOAWAY: it goes to another connection */
        else if (!s->started)
            stream_error(s, why, kind);
        else if (!s->ng_closed)
            stream_error(s, why, kind == F_CONNECT ? F_IO : kind);
    }
    conn_kick(h);
}

static int conn_room(td_h2c_conn_t *h) {
    if (h->state == H_CLOSING || h->goaway || h->retire)
        return 0;
    uint32_t max =
        h->state == H_READY && h->ng
            ? nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        : h->pool && h->pool->h2_max ? h->pool->h2_max
                                     : ASSUMED_STREAMS;
    return (uint32_t)h->nstreams < max;
}

/* 1 for a ready connection whose server allows no stream at all (SETTINGS_MAX_CONCURRENT_STREAMS
 * 0): a stream for it fails at once rather than going to a new connection, which the server would
 * set up the same way (one call opened thousands of them). */
static int conn_zero(td_h2c_conn_t *h) {
    return h->state == H_READY && h->ng && !h->goaway && !h->retire &&
           nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) == 0;
}

static void conn_read_cb(td_stream_t *io, long nread);

static void conn_alloc_cb(td_stream_t *io, char **buf, size_t *cap) {
    td_h2c_conn_t *h = td_stream_owner(io);
    *buf = h->rbuf;
    *cap = RBUF_SIZE;
}

static void conn_flush(td_h2c_conn_t *h);

static void conn_write_cb(td_stream_t *io, int status) {
    td_h2c_conn_t *h = td_stream_owner(io);
    h->writing = 0;
    if (h->state == H_CLOSING)
        return;
    if (status < 0) {
        conn_fail(h, td_stream_strerror(io, status), F_IO);
        return;
    }
    conn_flush(h);
}

/* The session's frames to the socket, one write at a time. */
static void conn_flush(td_h2c_conn_t *h) {
    while (h->ng && h->state != H_CLOSING && !h->writing) {
        h->out_len = 0;
        int rv = nghttp2_session_send(h->ng);
        if (rv < 0) {
            conn_fail(h, nghttp2_strerror(rv), F_IO);
            return;
        }
        if (!h->out_len)
            break;
        /* h->out stays as it is until the write completes (send_cb takes nothing meanwhile). */
        td_iov_t iov = td_iov(h->out, h->out_len);
        int r = td_stream_write(&h->io, &iov, 1, 0, conn_write_cb);
        if (r < 0) {
            conn_fail(h, td_stream_strerror(&h->io, r), F_IO);
            return;
        }
        if (r == 1)
            h->writing = 1;
    }
    if (h->ng && h->state != H_CLOSING && !nghttp2_session_want_read(h->ng) &&
        !nghttp2_session_want_write(h->ng))
        conn_fail(h, "HTTP/2 session ended", F_IO);
}

static void conn_read_cb(td_stream_t *io, long nread) {
    td_h2c_conn_t *h = td_stream_owner(io);
    if (h->state == H_CLOSING)
        return;
    if (nread < 0) {
        conn_fail(h,
                  nread == TD_STREAM_EOF || nread == TD_STREAM_CLOSE_NOTIFY
                      ? "connection closed by the server"
                      : td_stream_strerror(io, (int)nread),
                  F_IO);
        return;
    }
    if (!h->heard && nread >= 7 && memcmp(h->rbuf, "HTTP/1.", 7) == 0) {
        /* The first bytes of an HTTP/2 server are its SETTINGS frame, never a status line. */
        conn_fail(h, "the server answered in HTTP/1.x, not HTTP/2 (backend protocol h2)", F_IO);
        return;
    }
    h->heard = h->heard || nread > 0;
    ssize_t r = nghttp2_session_mem_recv(h->ng, (const uint8_t *)h->rbuf, (size_t)nread);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof(why), "HTTP/2: %s", nghttp2_strerror((int)r));
        conn_fail(h, why, F_IO);
        return;
    }
    conn_flush(h);
}

static int session_new(td_h2c_conn_t *h) {
    uv_once(&cbs_once, cbs_make);
    nghttp2_option *opt;
    if (!session_cbs || nghttp2_option_new(&opt) != 0)
        return TD_ENOMEM;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int r = nghttp2_session_client_new2(&h->ng, session_cbs, h, opt);
    nghttp2_option_del(opt);
    if (r != 0)
        return TD_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
    };
    if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0)
        return TD_ENOMEM;
    return 0;
}

/* Connected (and, over TLS, the handshake done): the session starts; streams wait for the
 * server's SETTINGS. */
static void conn_connect_cb(td_stream_t *io, int status) {
    td_h2c_conn_t *h = td_stream_owner(io);
    if (h->state == H_CLOSING)
        return;
    if (status < 0) {
        char why[200];
        if (status == TD_STREAM_ETLS)
            snprintf(why, sizeof(why), "TLS handshake: %s", td_stream_tls_error(io));
        else
            snprintf(why, sizeof(why), "%s", td_stream_strerror(io, status));
        conn_fail(h, why, td_upstream_local_error(status) ? F_LOCAL : F_CONNECT);
        return;
    }
    if (td_stream_is_tls(io) && !td_stream_alpn_h2(io)) {
        conn_fail(h, "TLS: the server did not select ALPN h2 (backend protocol h2)", F_CONNECT);
        return;
    }
    if (session_new(h) < 0) {
        conn_fail(h, "out of memory", F_LOCAL);
        return;
    }
    td_stream_read_start(io, conn_alloc_cb, conn_read_cb);
    conn_flush(h);
}

static void timer_cb(uv_timer_t *t) {
    td_h2c_conn_t *h = t->data;
    if (h->state == H_CONNECTING) {
        conn_fail(h, "connect timed out", F_TIMEOUT);
        return;
    }
    if (h->state != H_READY || h->nstreams)
        return;
    int64_t idle = td_stream_now(&h->w->sl) - h->idle_since;
    if (h->ping_out || idle >= POOL_IDLE_MS) {
        /* Idle for the pool's timeout, or silent since the last PING: it goes. */
        if (!h->ping_out && h->ng) {
            nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
            conn_flush(h);
        }
        conn_fail(h, h->ping_out ? "no PING answer" : "idle", F_IO);
        return;
    }
    if (h->ng && nghttp2_submit_ping(h->ng, NGHTTP2_FLAG_NONE, NULL) == 0) {
        h->ping_out = 1;
        conn_flush(h);
    }
    uv_timer_start(&h->timer, timer_cb, (uint64_t)(POOL_IDLE_MS - idle), 0);
}

/* No stream on a ready connection: a PING after a quiet period, a close after the pool's idle
 * timeout. */
static void conn_idle_timer(td_h2c_conn_t *h) {
    h->idle_since = td_stream_now(&h->w->sl);
    uv_timer_start(&h->timer, timer_cb, PING_QUIET_MS, 0);
}

static td_h2c_conn_t *conn_new(worker_t *w, pool_t *pool, td_snap_server_t *srv,
                               td_tls_client_t *tls, int connect_ms) {
    td_h2c_conn_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->rbuf = malloc(RBUF_SIZE);
    h->out = malloc(OUT_CAP);
    if (!h->rbuf || !h->out) {
        free(h->rbuf);
        free(h->out);
        free(h);
        return NULL;
    }
    h->w = w;
    h->pool = pool;
    h->in_pool = 1;
    h->st = srv->st;
    h->next = pool->h2;
    pool->h2 = h;
    uv_idle_init(&w->loop, &h->idle);
    h->idle.data = h;
    uv_timer_init(&w->loop, &h->timer);
    h->timer.data = h;
    h->handles = 2;
    td_stream_init(&h->io, &w->sl, h);
    int r = td_stream_connect(&h->io, (const struct sockaddr *)&srv->addr.sa, tls, conn_connect_cb);
    if (r < 0) {
        conn_fail(h, r == -ENOMEM ? "out of memory" : td_stream_strerror(&h->io, r),
                  td_upstream_local_error(r) ? F_LOCAL : F_CONNECT);
        return h;
    }
    uv_timer_start(&h->timer, timer_cb, (uint64_t)connect_ms, 0);
    return h;
}

/* A connection of the pool with room for one more stream (ready ones first), or a new one. */
static td_h2c_conn_t *conn_pick(worker_t *w, pool_t *pool, td_snap_server_t *srv,
                                td_tls_client_t *tls, int connect_ms) {
    td_h2c_conn_t *waiting = NULL, *zero = NULL;
    for (td_h2c_conn_t *h = pool->h2; h; h = h->next)
        if (conn_room(h)) {
            if (h->state == H_READY)
                return h;
            waiting = waiting ? waiting : h;
        } else if (!zero && conn_zero(h))
            zero = h;
    if (waiting || zero)
        return waiting ? waiting : zero;
    return conn_new(w, pool, srv, tls, connect_ms);
}

/* A stream not started yet whose connection cannot take it (the server's limit is lower than
 * assumed, a GOAWAY came) goes to another connection of the pool, or a new one. */
static void stream_rehome(h2s_t *s) {
    td_h2c_conn_t *h = s->h, *to = NULL;
    if (!s->u || !s->u->owner)
        return;
    for (td_h2c_conn_t *c = h->pool->h2; c && !to; c = c->next)
        if (c != h && conn_room(c))
            to = c;
    if (!to)
        to = conn_new(h->w, h->pool, s->srv, s->tls, s->connect_ms);
    if (!to) {
        stream_error(s, "out of memory", F_LOCAL);
        return;
    }
    stream_unlink(s);
    stream_link(s, to);
    if (to->state == H_CLOSING)
        stream_error(s, to->why, to->why_kind);
    else if (to->state == H_READY)
        to->ready_due = 1;
    conn_kick(to);
    conn_kick(h); /* a connection left without a stream may go */
}

/* 1 for a stream that waits for its connection to take it. */
static int waiting(const h2s_t *s) {
    return !s->started && !s->close_due && !s->err_kind && s->u;
}

/* Starts the streams waiting for the connection, as many as the server takes; the others go to
 * other connections (each move changes the list: the walk starts again). */
static void conn_start_streams(td_h2c_conn_t *h) {
    h->ready_due = 0;
    if (conn_zero(h)) {
        /* Not processed (as a refused stream): another server may take it. */
        for (h2s_t *s = h->streams; s; s = s->next)
            if (waiting(s))
                stream_error(s, "server allows 0 concurrent streams", F_CONNECT);
    } else if (h->state == H_READY && !h->goaway && !h->retire) {
        uint32_t max =
            nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        uint32_t active = 0;
        for (h2s_t *o = h->streams; o; o = o->next)
            active += o->started && !o->ng_closed;
        /* on_ready may close the upstream (its close is deferred): the list stays as it is. */
        for (h2s_t *s = h->streams; s && active < max; s = s->next)
            if (waiting(s)) {
                s->started = 1;
                active++;
                s->u->state = U_BUSY;
                s->u->cbs->on_ready(s->u);
            }
    }
    for (int moved = 1; moved;) {
        moved = 0;
        for (h2s_t *s = h->streams; s; s = s->next)
            if (waiting(s)) {
                stream_rehome(s);
                moved = s->h != h;
                if (moved)
                    break;
            }
    }
    if (!h->nstreams && h->state == H_READY)
        conn_idle_timer(h);
}

/* Runs what waits for the loop: waiting streams start, response bytes and errors go to the
 * upstreams, completed writes and close callbacks; then the frames go out, or a closed
 * connection is torn down. */
static void idle_cb(uv_idle_t *hd) {
    td_h2c_conn_t *h = hd->data;
    uv_idle_stop(&h->idle);
    h->idle_on = 0;
    if (h->ready_due)
        conn_start_streams(h);
    for (h2s_t *s = h->streams, *next; s; s = next) {
        next = s->next;
        upstream_t *u = s->u;
        if (!u)
            continue;
        if (s->write_ended && s->pending_cb) {
            td_stream_write_cb cb = s->pending_cb;
            s->pending_cb = NULL;
            s->write_ended = 0;
            cb(&u->io, s->close_due ? -ECANCELED : 0);
        }
        for (int rounds = 0; !s->close_due && s->want_read && td_bytes_left(&s->in) && rounds < 8;
             rounds++) {
            char *buf = NULL;
            size_t cap = 0;
            u->io.alloc_cb(&u->io, &buf, &cap);
            if (!cap)
                break;
            size_t n = td_bytes_left(&s->in) < cap ? td_bytes_left(&s->in) : cap;
            memcpy(buf, s->in.p + s->in.off, n);
            s->in.off += n;
            size_t give = n < s->unconsumed ? n : s->unconsumed;
            s->unconsumed -= give;
            stream_consume(s, give);
            u->io.read_cb(&u->io, (long)n);
        }
        if (!s->close_due && s->want_read && td_bytes_left(&s->in))
            conn_kick(h); /* the rest on the next pass: the server may wait for its window */
        if (!s->close_due && s->err_kind && !td_bytes_left(&s->in) && u->owner &&
            (u->state == U_BUSY || u->state == U_CONNECTING)) {
            int kind = s->err_kind - 1;
            s->err_kind = 0;
            s->resp_end = 1; /* reported once */
            u->cbs->on_error(u, s->why, kind);
        }
        if (s->close_due) {
            if (s->pending_cb) {
                td_stream_write_cb cb = s->pending_cb;
                s->pending_cb = NULL;
                cb(&u->io, -ECANCELED);
            }
            s->u = NULL;
            u->io.close_cb(&u->io); /* frees the upstream */
            if (s->ng_closed || h->state == H_CLOSING)
                stream_free(s);
        }
    }
    if (h->state != H_CLOSING) {
        conn_flush(h);
        if (h->state != H_CLOSING)
            return;
    }
    /* Closed: the session and the socket go; the memory once no stream is left. */
    if (h->ng) {
        for (h2s_t *s = h->streams; s; s = s->next)
            s->ng_closed = 1;
        nghttp2_session_del(h->ng);
        h->ng = NULL;
    }
    for (h2s_t *s = h->streams, *next; s; s = next) {
        next = s->next;
        if (!s->u)
            stream_free(s);
        else if (s->err_kind)
            conn_kick(h); /* its upstream still has an error to hear */
    }
    if (!h->io_closing) {
        h->io_closing = 1;
        td_stream_close(&h->io, io_closed_cb);
    }
    if (h->io_closed && !h->nstreams && !h->freeing) {
        h->freeing = 1;
        uv_close((uv_handle_t *)&h->idle, handle_closed_cb);
        uv_close((uv_handle_t *)&h->timer, handle_closed_cb);
    }
}

static void conn_kick(td_h2c_conn_t *h) {
    if (h->idle_on || h->freeing)
        return;
    h->idle_on = 1;
    uv_idle_start(&h->idle, idle_cb);
}

/* ---------------------------------------------------------------------------------------------
 * The upstream side */

int td_h2_client_open(worker_t *w, pool_t *pool, td_snap_server_t *srv, td_tls_client_t *tls,
                      int connect_ms, td_exchange_t *owner, const td_upstream_cbs_t *cbs,
                      upstream_t **out) {
    *out = NULL;
    upstream_t *u = calloc(1, sizeof(*u));
    h2s_t *s = calloc(1, sizeof(*s));
    td_h2c_conn_t *h = u && s ? conn_pick(w, pool, srv, tls, connect_ms) : NULL;
    if (!h) {
        free(u);
        free(s);
        return -ENOMEM;
    }
    u->w = w;
    u->pool = pool;
    u->st = srv->st;
    u->owner = owner;
    u->cbs = cbs;
    s->u = u;
    s->srv = srv;
    s->tls = tls;
    s->connect_ms = connect_ms;
    stream_link(s, h);
    td_stream_init_virt(&u->io, &w->sl, u, &virt_ops, s, tls != NULL);
    td_registry_connection_open(u->st);
    *out = u;
    if (conn_zero(h)) {
        h->ready_due = 1; /* the stream fails from the loop (conn_start_streams) */
        conn_kick(h);
    } else if (h->state == H_READY && !h->ready_due) {
        s->started = 1;
        u->state = U_BUSY;
        u->reused = 1; /* like a pooled connection: the server may have closed it meanwhile */
        return 1;
    }
    u->state = U_CONNECTING;
    td_upstream_timer(u, T_CONNECT, connect_ms);
    if (h->state == H_CLOSING) /* the connect failed at once: the stream hears it from the loop */
        stream_error(s, h->why, h->why_kind);
    return 0;
}

void td_h2_client_pool_close(pool_t *pool, int all) {
    for (td_h2c_conn_t *h = pool->h2, *next; h; h = next) {
        next = h->next;
        if (all || !h->nstreams) {
            conn_fail(h, all ? "td stops" : "closed", F_IO);
            if (!h->io_closing) { /* now: the loop's transport goes next */
                h->io_closing = 1;
                td_stream_close(&h->io, io_closed_cb);
            }
        } else {
            h->retire = 1;
        }
    }
}
