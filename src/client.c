/* Client connections: reading and accounting request bytes, td's own answers (errors,
 * redirects), keep-alive and pipelining, and the client's timeouts. */
#include "td/client.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "td/grpc_status.h"
#include "td/h2_server.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/rewrite.h"
#include "td/stream.h"
#include "td/timeout.h"

_Atomic int64_t td_client_open_count;

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

static void client_process(client_t *c);

static td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

int td_client_timeout_ms(const client_t *c, int which) {
    const td_config_timeouts_t *t = c->timeouts ? c->timeouts : &c->w->snap->config->timeouts;
    switch (which) {
    case 0:
        return t->client_header_ms;
    case 1:
        return t->keepalive_idle_ms;
    case 2:
        return t->connect_ms;
    case 4:
        return t->client_send_ms;
    case T_QUEUE:
        return t->queue_ms;
    default:
        return t->upstream_response_ms;
    }
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
int td_client_buf_grow(client_t *c, uint32_t cap) {
    if (cap <= c->cap)
        return 0;
    char *nb = malloc(cap);
    if (!nb)
        return TD_ENOMEM;
    if (c->len)
        memcpy(nb, c->buf, c->len);
    client_buf_put(c);
    c->buf = nb;
    c->cap = cap;
    return 0;
}

static void client_free_cb(td_stream_t *s) {
    client_t *c = td_stream_owner(s);
    client_buf_put(c);
    free(c);
}

void td_client_close(client_t *c) {
    if (c->state == C_CLOSING)
        return;
    c->state = C_CLOSING;
    c->cbs->on_close(c);
    if (c->prev)
        c->prev->next = c->next;
    else if (c->w->clients == c)
        c->w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!td_stream_is_virt(&c->io)) /* an HTTP/2 stream's client holds no file descriptor */
        atomic_fetch_sub(&td_client_open_count, 1);
    td_timeout_stop(&c->tmo);
    td_timeout_stop(&c->send_tmo);
    if (c->h2)
        td_h2_closed(c);
    td_stream_close(&c->io, client_free_cb);
}

/* Client timeouts are deadlines in the worker's timeout queues, checked by its clock (every
 * TICK_MS) rather than a timer handle per connection: an idle connection stays small, and the
 * tick looks only at the expired ones. */
void td_client_timer(client_t *c, int which) {
    td_timeout_arm(&c->w->tq[which], &c->tmo, td_stream_now(&c->w->sl),
                   td_client_timeout_ms(c, which));
}

static void client_alloc_cb(td_stream_t *s, char **buf, size_t *cap) {
    client_t *c = td_stream_owner(s);
    if (client_buf_get(c) < 0)
        return;
    *buf = c->buf + c->len;
    *cap = c->cap - c->len;
}

static void client_read_cb(td_stream_t *s, long nread);

void td_client_read(client_t *c, int on) {
    if (c->state == C_CLOSING)
        return;
    if (on)
        td_stream_read_start(&c->io, client_alloc_cb, client_read_cb);
    else
        td_stream_read_stop(&c->io);
}

/* Counts the request-body bytes that have arrived in buf[req_end..len) and moves req_end past
 * them. Returns 0, or TD_EBADMSG for invalid chunked framing. */
int td_client_account_body(client_t *c) {
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
        long n = td_http1_chunked_feed(&c->chunk, c->buf + c->req_end, avail, &done, NULL, 0, NULL);
        if (n < 0)
            return TD_EBADMSG;
        c->req_end += (uint32_t)n;
        c->req_done = (uint8_t)done;
    } else {
        c->req_done = 1;
    }
    return 0;
}

/* A write to the client could not finish at once: the client send timeout starts. It measures
 * the client, not the backend: the upstream's response timeout does not run meanwhile. */
void td_client_send_wait(client_t *c) {
    c->writing = 1;
    c->send_left = td_stream_write_queued(&c->io);
    td_timeout_arm(&c->w->tq[T_SEND], &c->send_tmo, td_stream_now(&c->w->sl),
                   td_client_timeout_ms(c, T_SEND));
}

/* The client send deadline passed. A client that took some of the pending bytes since the last
 * look gets a new period (the timeout is between two writes that make progress, as nginx's
 * send_timeout, not for the whole response); one that took nothing is closed, as its own fault:
 * nothing is charged to the backend. */
void td_client_send_timeout(client_t *c, int64_t now) {
    size_t left = td_stream_write_queued(&c->io);
    if (left < c->send_left) {
        c->send_left = left;
        td_timeout_arm(&c->w->tq[T_SEND], &c->send_tmo, now, td_client_timeout_ms(c, T_SEND));
        return;
    }
    char why[120];
    snprintf(why, sizeof(why),
             "client took no response bytes for %d ms (timeouts.client_send_ms); connection "
             "closed",
             td_client_timeout_ms(c, T_SEND));
    td_client_log(c, 0, why);
    td_client_close(c);
}

void td_client_log_flush(worker_t *w, int64_t now_ms) {
    td_log_reasons_flush(&w->req_err_rl, now_ms);
}

/* The request-target of the current request: as the exchange kept it, else from the request
 * line at the start of the buffer (a head td refuses before any exchange starts), up to its
 * next space or line end; "" when there is none. */
static td_str_t request_target(const client_t *c) {
    const char *kept = c->cbs && c->cbs->target ? c->cbs->target(c) : NULL;
    if (kept)
        return (td_str_t){kept, strlen(kept)};
    if (!c->buf || c->state == C_TUNNEL)
        return (td_str_t){"", 0};
    const char *sp = memchr(c->buf, ' ', c->len), *end = c->buf + c->len;
    if (!sp)
        return (td_str_t){"", 0};
    const char *p = sp + 1, *q = p;
    while (q < end && *q != ' ' && *q != '\r' && *q != '\n')
        q++;
    return (td_str_t){p, (size_t)(q - p)};
}

void td_client_log(client_t *c, int status, const char *why) {
    char reason[TD_LOG_REASON_LEN];
    if (status)
        snprintf(reason, sizeof(reason), "%d %s", status, why);
    else
        snprintf(reason, sizeof(reason), "%s", why);
    /* A flood (slowloris; every request of a site with no server left) must not flood the log:
     * one line a second per reason and worker, then "N more like this" from the worker's tick. */
    if (!td_log_reasons_take(&c->w->req_err_rl, reason, td_now_ms()))
        return;
    char method[sizeof(c->method)];
    size_t m = 0;
    if (c->method[0]) {
        snprintf(method, sizeof(method), "%s", c->method);
    } else if (c->buf && c->state != C_TUNNEL) {
        /* Not parsed (a refused head): the token before the first space, if it is one. */
        while (m < sizeof(method) - 1 && m < c->len && c->buf[m] > ' ' && c->buf[m] < 0x7f)
            m++;
        memcpy(method, c->buf, m);
        method[m] = 0;
    } else {
        method[0] = 0;
    }
    td_str_t t = request_target(c);
    char target[TD_LOG_TARGET_MAX * 4 + 8];
    td_log_escape(target, sizeof(target), t.p, t.len, TD_LOG_TARGET_MAX);
    char st[8] = "";
    if (status)
        snprintf(st, sizeof(st), "%d ", status);
    int v6 = strchr(c->ip, ':') != NULL;
    td_warn("%s%s %s from %s%s%s:%d: %s", st, method[0] ? method : "-", target[0] ? target : "-",
            v6 ? "[" : "", c->ip, v6 ? "]" : "", c->port, why);
}

void td_client_error(client_t *c, int status, const char *why) {
    if (c->state == C_CLOSING)
        return;
    if (c->resp_sent || c->writing) {
        td_client_close(c);
        return;
    }
    if (status >= 400 && status < 600)
        td_client_log(c, status, why);
    td_client_reply(c, status, td_http_reason(status), "");
}

/* Answers with a small response of td's own (an error, a redirect), then ends the exchange:
 * the connection stays for 3xx and 5xx when the whole request was read, else it closes.
 * `headers` are extra header lines, each ending in CRLF. */
void td_client_reply(client_t *c, int status, const char *reason, const char *headers) {
    c->cbs->on_reply(c, status);
    /* Keep the connection for 502/503/504 when the whole request was read; close otherwise. */
    int keep = (status >= 500 || (status >= 300 && status < 400)) && c->req_done && c->keep_alive &&
               !c->w->stopping;
    char body[160];
    int blen = snprintf(body, sizeof(body), "%d %s\n", status, reason);
    char *p = c->w->scratch;
    int n;
    if (c->grpc && status >= 400) {
        /* A gRPC client reads a call's failure from grpc-status, not from the HTTP status: td's
         * answer is a trailers-only gRPC response (HTTP 200, no body; over HTTP/2 one HEADERS
         * frame with END_STREAM), grpc-message carrying the reason percent-encoded (gRPC's
         * PROTOCOL-HTTP2.md). */
        char msg[3 * 160];
        size_t m = 0;
        for (int i = 0; i < blen - 1 && m + 4 < sizeof(msg); i++) {
            unsigned char ch = (unsigned char)body[i];
            if (ch < 0x20 || ch > 0x7e || ch == '%')
                m += (size_t)snprintf(msg + m, sizeof(msg) - m, "%%%02X", ch);
            else
                msg[m++] = (char)ch;
        }
        msg[m] = 0;
        n = snprintf(p, sizeof(c->w->scratch),
                     "HTTP/1.1 200 OK\r\n%sContent-Type: application/grpc\r\ngrpc-status: %d\r\n"
                     "grpc-message: %s\r\nContent-Length: 0\r\nConnection: %s\r\n\r\n",
                     headers, td_grpc_status_of_http(status), msg, keep ? "keep-alive" : "close");
    } else {
        n = snprintf(p, sizeof(c->w->scratch),
                     "HTTP/1.1 %d %s\r\n%sContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "Connection: %s\r\n\r\n%s",
                     status, reason, headers, blen, keep ? "keep-alive" : "close", body);
    }
    if (n < 0 || (size_t)n >= sizeof(c->w->scratch)) {
        td_client_close(c);
        return;
    }
    c->resp_sent = 1;
    c->close_after = !keep;
    td_iov_t iov = td_iov(p, (unsigned)n);
    int r = td_stream_write(&c->io, &iov, 1, 1, td_client_write_done_cb);
    if (r < 0) {
        td_client_close(c);
    } else if (r == 1) {
        td_client_send_wait(c);
        td_client_read(c, 0);
    } else if (c->close_after) {
        td_client_close(c);
    } else {
        td_client_next(c);
    }
}

int td_client_send(client_t *c, td_iov_t *iov, unsigned n, int volatile_first, int final_head) {
    if (final_head)
        c->resp_sent = 1; /* td can no longer answer with its own status */
    int r = td_stream_write(&c->io, iov, n, volatile_first, td_client_write_done_cb);
    if (r == 1)
        td_client_send_wait(c);
    return r;
}

void td_client_use_timeouts(client_t *c, const td_config_timeouts_t *t) {
    c->timeouts = t;
}

void td_client_end(client_t *c) {
    if (c->keep_alive && c->req_done && !c->close_after)
        td_client_next(c);
    else
        td_client_close(c);
}

void td_client_no_keep_alive(client_t *c) {
    c->keep_alive = 0;
}

void td_client_no_upgrade(client_t *c) {
    c->upgrade = 0;
}

void td_client_close_after_write(client_t *c) {
    c->close_after = 1;
}

void td_client_timer_stop(client_t *c) {
    td_timeout_stop(&c->tmo);
}

void td_client_drop_sent(client_t *c) {
    c->len = c->req_end = c->head_len = 0;
}

void td_client_tunnel(client_t *c) {
    c->state = C_TUNNEL;
    td_timeout_stop(&c->tmo);
    if (c->len > c->req_end) {
        memmove(c->buf, c->buf + c->req_end, c->len - c->req_end);
        c->len -= c->req_end;
    } else {
        c->len = 0;
    }
    c->req_end = c->head_len = 0;
}

void td_client_tunnel_sent(client_t *c) {
    c->len = 0;
    td_client_read(c, 1);
}

/* A client's deadline passed. */
void td_client_timeout(client_t *c) {
    if (c->state == C_H2) {
        td_h2_timeout(c);
    } else if (c->state == C_HEAD) {
        if (c->len > 0) {
            c->keep_alive = 0;
            td_client_error(c, 408, "client too slow to send its request head");
        } else {
            td_client_close(c);
        }
    } else if (c->state == C_EXCHANGE && !c->req_done) {
        c->keep_alive = 0;
        if (c->resp_sent)
            td_client_close(c);
        else
            td_client_error(c, 408, "client too slow to send its request body");
    }
}

/* Ends the current exchange and starts on the next request (pipelined bytes first). */
void td_client_next(client_t *c) {
    if (c->state == C_CLOSING)
        return;
    c->cbs->on_end(c);
    if (c->w->stopping) {
        td_client_close(c);
        return;
    }
    uint32_t rest = c->len > c->req_end ? c->len - c->req_end : 0;
    if (rest && c->req_end)
        memmove(c->buf, c->buf + c->req_end, rest);
    c->len = rest;
    c->head_len = c->req_end = 0;
    c->body_left = 0;
    memset(&c->chunk, 0, sizeof(c->chunk));
    c->req_done = c->resp_sent = c->close_after = 0;
    c->upgrade = c->expect = 0;
    c->method[0] = 0;
    c->state = C_HEAD;
    if (!rest) {
        if (c->eof) { /* the client said all it had to say */
            td_client_close(c);
            return;
        }
        client_buf_put(c); /* idle keep-alive connections hold no buffer */
        td_client_timer(c, T_KEEPALIVE);
        td_client_read(c, 1);
        return;
    }
    td_client_timer(c, T_HEADER);
    if (!c->eof)
        td_client_read(c, 1);
    client_process(c);
}

/* Parses the request head at the start of buf. Returns 1 with `req` and the connection's fields
 * set (state EXCHANGE), or 0 when the head is incomplete (waits for more), or answered or closed
 * here (a malformed or oversized head). */
static int client_parse_head(client_t *c, td_http1_request_t *req) {
    worker_t *w = c->w;
    c->grpc = 0; /* until this request's head says */
    int r = td_http1_parse_request(c->buf, c->len, &limits, req, w->hdrs, MAX_HDRS);
    if (r == TD_EAGAIN) {
        if (c->len >= CBUF_SIZE)
            td_client_error(c, 431, "request head too large");
        else if (c->eof)
            td_client_close(c); /* half a head and no more to come */
        return 0;
    }
    if (r < 0) {
        c->keep_alive = 0;
        c->req_done = 0;
        switch (r) {
        case TD_EURITOOLONG:
            td_client_error(c, 414, "request line too long");
            break;
        case TD_EHDRTOOLARGE:
            td_client_error(c, 431, "request head too large");
            break;
        case TD_EVERSION:
            td_client_error(c, 505, "unsupported HTTP version");
            break;
        default: {
            /* The log names the method (when the line has one) and the rule that was broken. */
            size_t m = 0;
            while (m < sizeof(c->method) - 1 && m < c->len && c->buf[m] > ' ' && c->buf[m] < 0x7f)
                m++;
            memcpy(c->method, c->buf, m);
            c->method[m] = 0;
            td_client_error(c, 400, td_http1_request_problem(c->buf, c->len));
            break;
        }
        }
        return 0;
    }
    td_timeout_stop(&c->tmo);
    c->state = C_EXCHANGE;
    c->served = 1;
    c->head_len = c->req_end = (uint32_t)r;
    c->req_body = (uint8_t)req->body;
    c->body_left = req->body == TD_BODY_LENGTH ? req->content_length : 0;
    c->keep_alive = req->keep_alive;
    /* Past its listener's max_connection_age_ms: this response says Connection: close. */
    if (c->old_at_ms && td_now_ms() >= c->old_at_ms)
        c->keep_alive = 0;
    c->head_req = req->head;
    c->upgrade = req->upgrade;
    c->minor = (uint8_t)req->minor_version;
    c->expect = req->expect_continue;
    for (size_t i = 0; i < req->num_headers; i++)
        if (req->headers[i].name.len == 12 &&
            strncasecmp(req->headers[i].name.p, "content-type", 12) == 0)
            c->grpc = (uint8_t)td_grpc_is_content_type(req->headers[i].value);
    size_t ml = req->method.len < sizeof(c->method) - 1 ? req->method.len : sizeof(c->method) - 1;
    memcpy(c->method, req->method.p, ml);
    c->method[ml] = 0;
    return 1;
}

/* Takes the requests buffered in c->buf one after another. An exchange that ends at once (an
 * error or redirect of td's own, answered with one write) calls td_client_next, which lands here
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
        td_http1_request_t req;
        if (client_parse_head(c, &req))
            c->cbs->on_head(c, &req);
    } while (c->more && c->state == C_HEAD);
    c->processing = 0;
}

static void client_got(client_t *c, size_t nread);

static void client_read_cb(td_stream_t *s, long nread) {
    client_t *c = td_stream_owner(s);
    if (nread == -ENOBUFS) { /* buffer full: wait until the exchange makes room */
        td_client_read(c, 0);
        return;
    }
    if (nread == TD_STREAM_EOF && c->state == C_EXCHANGE && c->req_done && c->ex &&
        c->ex->qlink.list) {
        /* Closed while its request waits in the max_conns queue: the client gave up (a
         * timeout of its own, most often). The request leaves the queue unsent (499) rather
         * than take a backend's slot for no one (HAProxy's abortonclose). */
        td_client_close(c);
        return;
    }
    if (nread == TD_STREAM_EOF && c->state == C_EXCHANGE && c->req_done) {
        /* Half-close after a whole request: answer it and any pipelined ones already read,
         * then close. */
        c->eof = 1;
        td_client_read(c, 0);
        return;
    }
    if (nread < 0) {
        if (nread == TD_STREAM_ETLS) {
            /* A scanner or a misconfigured client fails every handshake the same way: one line
             * a second per error, then a count, as for the request errors. */
            char reason[TD_LOG_REASON_LEN];
            snprintf(reason, sizeof(reason), "TLS handshake from a client: %s",
                     td_stream_tls_error(s));
            if (td_log_reasons_take(&c->w->req_err_rl, reason, td_now_ms()))
                td_info("TLS from %s:%d: %s", c->ip, c->port, td_stream_tls_error(s));
        } else if (c->state == C_HEAD && c->len > 0 && nread != TD_STREAM_CLOSE_NOTIFY)
            td_debug("client %s closed with an incomplete request head", c->ip);
        td_client_close(c);
        return;
    }
    client_got(c, (size_t)nread);
}

/* HTTP/2 on a connection that has not served a request yet: ALPN chose h2, or the listener
 * takes h2c and the bytes begin with the client preface. Returns 1 when the connection became
 * HTTP/2 (or was closed), 0 for HTTP/1.1, -1 while the bytes may still be a preface. */
static int client_h2(client_t *c) {
    const td_config_t *cfg = c->w->snap ? c->w->snap->config : NULL;
    const td_config_listener_t *l =
        cfg && c->listener < cfg->num_listeners ? &cfg->listeners[c->listener] : NULL;
    int h2 = td_stream_alpn_h2(&c->io);
    if (!h2 && l && l->h2c && !td_client_is_tls(c)) {
        h2 = td_h2_preface_check(c->buf, c->len);
        /* "PRI * HTTP/2.0" that goes on otherwise than the preface: an HTTP/2 client that got
         * it wrong, said so rather than as an HTTP/1.1 request without Host. */
        if (!h2 && c->len >= 16 && memcmp(c->buf, "PRI * HTTP/2.0\r\n", 16) == 0) {
            c->keep_alive = 0;
            td_client_error(c, 400, "not an HTTP/2 preface");
            return 1;
        }
    }
    if (h2 <= 0)
        return h2;
    if (td_h2_start(c, l) < 0)
        td_client_close(c);
    return 1;
}

/* nread new request bytes are at the end of c->buf. */
static void client_got(client_t *c, size_t nread) {
    c->len += (uint32_t)nread;
    if (c->state == C_HEAD) {
        if (c->len == (uint32_t)nread)
            td_client_timer(c, T_HEADER); /* first byte of a request: the head timeout starts */
        if (!c->served && client_h2(c) != 0)
            return;
        client_process(c);
        return;
    }
    if (c->state == C_EXCHANGE) {
        if (c->req_done) {
            /* Pipelined bytes: keep them for later and stop reading. */
            td_client_read(c, 0);
            return;
        }
        if (td_client_account_body(c) < 0) {
            c->keep_alive = 0;
            td_client_error(c, 400, "invalid chunked body");
            return;
        }
        c->cbs->on_body(c);
        return;
    }
    if (c->state == C_TUNNEL) {
        td_client_read(c, 0);
        c->cbs->on_body(c);
    }
}

void td_client_write_done_cb(td_stream_t *s, int status) {
    client_t *c = td_stream_owner(s);
    c->writing = 0;
    td_timeout_stop(&c->send_tmo);
    if (c->state == C_CLOSING)
        return;
    if (status < 0) {
        td_client_close(c);
        return;
    }
    if (c->cbs->on_written(c))
        return;
    /* An error response of td's own. */
    if (c->close_after)
        td_client_close(c);
    else
        td_client_next(c);
}
