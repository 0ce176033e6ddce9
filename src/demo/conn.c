/* The demo backend's connection: a small HTTP/1.1 server on libuv (the routes are in app.c, the
 * WebSocket echo in ws.c; include/td/demo.h documents them).
 *
 * One connection runs one request at a time: its head is parsed with td's own parser, its body
 * (Content-Length or chunked) is counted as it streams past, then the response is queued. Only
 * then is the next pipelined request looked at, so answers leave in request order. Big bodies
 * are written a 64 KiB piece at a time and the next piece waits until fewer than WRITE_HIGH bytes
 * are queued; reading stops while a response is in progress or the write queue is full, so
 * neither a slow reader nor a fast pipeliner can grow memory. */
#include "conn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"
#include "td/rewrite.h"

static char pattern[PIECE + PATTERN_LEN]; /* written once by td_demo_conn_init, then read-only */

void td_demo_conn_init(void) {
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = PATTERN[i % PATTERN_LEN];
}

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
void td_demo_close(conn_t *c, int reset) {
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
    td_demo_close(t->data, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    conn_t *c = req->data;
    if (c->closing)
        return;
    if (status < 0 || c->eof) {
        td_demo_close(c, 0);
        return;
    }
    /* Our FIN is out. Keep reading (and discarding) until the client closes too, so that bytes
     * it still sends do not make the kernel answer with a reset that could destroy the
     * response before the client has read it. */
    uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
    td_demo_process(c);
}

/* Ends the connection once everything queued has been written: FIN, then linger, then close. */
static void begin_shutdown(conn_t *c) {
    if (c->closing || c->shut)
        return;
    c->shut = 1;
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        td_demo_close(c, 0);
}

/* The current exchange is the last: discard further input, close after the writes drain. */
void td_demo_close_after_drain(conn_t *c, int reset) {
    c->state = ST_CLOSING;
    if (reset)
        c->drain_then_reset = 1;
    else
        c->drain_then_close = 1;
}

/* ---- writing ---------------------------------------------------------------------------- */

wreq_t *td_demo_wreq_new(size_t cap) {
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
        td_demo_close(c, 0);
        return;
    }
    td_demo_process(c);
}

/* Queues bufs (which must stay valid: in w->data or static) and takes ownership of w. Returns 0,
 * or -1 after closing the connection. */
int td_demo_send_bufs(conn_t *c, wreq_t *w, uv_buf_t *bufs, unsigned n) {
    if (c->closing || c->shut) {
        free(w);
        return -1;
    }
    w->bytes = 0;
    for (unsigned i = 0; i < n; i++)
        w->bytes += bufs[i].len;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        free(w);
        td_demo_close(c, 0);
        return -1;
    }
    c->pending += w->bytes;
    return 0;
}

int td_demo_send_copy(conn_t *c, const void *p, size_t len) {
    wreq_t *w = td_demo_wreq_new(len);
    if (w == NULL) {
        td_demo_close(c, 0);
        return -1;
    }
    memcpy(w->data, p, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    return td_demo_send_bufs(c, w, &b, 1);
}

/* ---- HTTP responses --------------------------------------------------------------------- */

/* Writes a response head into out[0..cap) and returns its length (cap is always enough for the
 * heads built here: the variable parts are bounded). keep is whether the connection stays. */
size_t td_demo_build_head(conn_t *c, char *out, size_t cap, int status, const char *ctype,
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
        td_demo_close_after_drain(c, 0);
}

/* Queues a complete response with a body held in memory (omitted for HEAD). */
void td_demo_respond(conn_t *c, int status, const char *ctype, const char *body, size_t body_len,
                     const char *extra, int keep) {
    keep = keep && c->keep_alive;
    enum framing fr = (status == 204 || status == 304) ? F_NONE : F_LENGTH;
    /* HEAD: the same Content-Length as GET, no body (RFC 9110 §9.3.2) */
    size_t send_body = (fr == F_NONE || c->head_only) ? 0 : body_len;
    wreq_t *w = td_demo_wreq_new(HEAD_CAP + send_body);
    if (w == NULL) {
        td_demo_close(c, 0);
        return;
    }
    size_t len = td_demo_build_head(c, w->data, HEAD_CAP, status, ctype, fr, body_len, extra, keep);
    memcpy(w->data + len, body, send_body);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(len + send_body));
    if (td_demo_send_bufs(c, w, &b, 1) == 0)
        end_exchange(c, keep);
}

/* A request we cannot read: answer with status and close (the framing may be lost). */
void td_demo_respond_error(conn_t *c, int status) {
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, td_http_reason(status));
    c->keep_alive = 0;
    td_demo_respond(c, status, "text/plain", body, (size_t)n, NULL, 0);
}

/* Writes as many body pieces of a /bytes or /chunked response as the write budget allows. */
static void pump(conn_t *c) {
    while (c->out_left > 0 && c->pending < WRITE_HIGH && !c->closing) {
        size_t n = c->out_left < PIECE ? (size_t)c->out_left : PIECE;
        wreq_t *w = td_demo_wreq_new(32);
        if (w == NULL) {
            td_demo_close(c, 0);
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
        if (td_demo_send_bufs(c, w, b, nb) != 0)
            return;
        c->out_left -= n;
        c->out_pos += n;
    }
    if (c->out_left > 0 || c->closing)
        return;
    if (c->out_chunked && td_demo_send_copy(c, "0\r\n\r\n", 5) != 0)
        return;
    end_exchange(c, c->keep_alive);
}

/* Starts a /bytes/N (chunked == 0) or /chunked/N response. */
void td_demo_respond_stream(conn_t *c, uint64_t n, int chunked) {
    char head[HEAD_CAP];
    enum framing fr = F_LENGTH;
    if (chunked)
        fr = c->http11 ? F_CHUNKED : F_CLOSE;
    if (fr == F_CLOSE)
        c->keep_alive = 0;
    size_t len = td_demo_build_head(c, head, sizeof(head), 200, "application/octet-stream", fr, n,
                                    NULL, c->keep_alive);
    if (td_demo_send_copy(c, head, len) != 0)
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
            td_demo_respond_error(c, 431);
            return 1;
        }
        if (c->eof) {
            if (avail > 0) /* an incomplete request, then EOF */
                td_demo_respond_error(c, 400);
            else
                td_demo_close_after_drain(c, 0);
            return 1;
        }
        return 0;
    }
    if (r < 0) {
        c->http11 = 1;
        c->head_only = 0;
        td_demo_respond_error(c, status_for_error(r));
        return 1;
    }

    c->http11 = req.minor_version == 1;
    c->keep_alive = req.keep_alive;
    c->head_only = req.head;
    c->route = td_demo_route_of(req.target, &c->param);
    c->body = req.body;
    c->body_left = req.content_length;
    memset(&c->chunked, 0, sizeof(c->chunked));
    c->received = 0;
    c->sum = 0;
    if (c->route == R_HEADERS) {
        free(c->head_copy);
        c->head_copy = malloc((size_t)r);
        if (c->head_copy == NULL) {
            td_demo_close(c, 0);
            return 1;
        }
        memcpy(c->head_copy, p, (size_t)r);
        c->head_len = (size_t)r;
    }
    if (c->route == R_WS)
        td_demo_ws_check(c, &req);
    c->rpos += (size_t)r;

    int has_body = req.body == TD_BODY_CHUNKED || (req.body == TD_BODY_LENGTH && c->body_left);
    if (!has_body) {
        c->body = TD_BODY_NONE;
        td_demo_dispatch(c);
        return 1;
    }
    if (req.expect_continue && c->http11) {
        char cont[HEAD_CAP];
        size_t len = td_demo_build_head(c, cont, sizeof(cont), 100, NULL, F_NONE, 0, NULL, 1);
        if (td_demo_send_copy(c, cont, len) != 0)
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
            td_demo_respond_error(c, 400);
            return 1;
        }
        for (size_t i = 0; i < nspans; i++)
            count(c, spans[i].p, spans[i].len);
        c->rpos += (size_t)r;
        if (!done && r > 0)
            return 1; /* maybe stopped early with the span array full: feed again */
        if (!done && avail == sizeof(c->buf)) {
            td_demo_respond_error(c, 400); /* the decoder cannot progress even with a full buffer */
            return 1;
        }
    }
    if (done) {
        td_demo_dispatch(c);
        return 1;
    }
    if (c->eof) /* the body was cut short */
        td_demo_close(c, 0);
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
            td_demo_close(c, 0);
            return;
        }
        c->eof = 1;
    } else {
        c->rlen += (size_t)nread;
    }
    td_demo_process(c);
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
            td_demo_close(c, 0);
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
void td_demo_process(conn_t *c) {
    for (;;) {
        if (c->closing)
            return;
        if (c->state == ST_CLOSING) {
            c->rpos = c->rlen = 0;
            if (c->pending == 0 && c->drain_then_reset) {
                td_demo_close(c, 1);
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
            progress = td_demo_ws_step(c);
            if (!progress && c->eof && !c->closing)
                td_demo_close_after_drain(c, 0);
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

void td_demo_accept(uv_stream_t *listener, int status) {
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
        td_demo_close(c, 0);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    td_demo_process(c);
}
