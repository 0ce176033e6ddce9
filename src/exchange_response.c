/* The response side of an exchange: the upstream's response head parsed and rewritten (with the
 * sticky cookie the router asks for), its body forwarded in its framing (Content-Length, chunked
 * as it came or de-chunked for an HTTP/1.0 client, until close) with backpressure both ways, the
 * switch to a tunnel after a 101, and the end of the exchange. */
#include "td/exchange.h"

#include <string.h>
#include <strings.h>

#include "td/client.h"
#include "td/grpc_status.h"
#include "td/http1.h"
#include "td/rewrite.h"
#include "td/router.h"
#include "td/upstream.h"

static td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

/* The status a final response head counts as. A gRPC answer (HTTP 200, Content-Type
 * application/grpc*, to a gRPC request) counts as its grpc-status (td_grpc_status_http): from the
 * head for a trailers-only answer; else, when it is chunked, from its trailers at its end (0
 * returned: counted later, the decoder told to note grpc-status). Anything else counts as its HTTP
 * status. */
static int response_count_status(client_t *c, const td_http1_response_t *resp) {
    if (resp->status != 200 || !c->grpc) /* HTTP traffic pays this one check */
        return resp->status;
    const td_http1_header_t *gs = NULL;
    int grpc = 0;
    for (size_t i = 0; i < resp->num_headers; i++) {
        const td_http1_header_t *h = &resp->headers[i];
        if (h->name.len == 12 && strncasecmp(h->name.p, "content-type", 12) == 0)
            grpc = td_grpc_is_content_type(h->value);
        else if (h->name.len == 11 && strncasecmp(h->name.p, "grpc-status", 11) == 0)
            gs = h;
    }
    if (!grpc)
        return resp->status;
    if (gs) {
        c->ex->grpc_status = td_grpc_status_parse(gs->value);
        return td_grpc_status_http(c->ex->grpc_status);
    }
    if (resp->body != TD_BODY_CHUNKED)
        return resp->status;
    c->ex->resp.chunk.want_grpc = 1;
    c->ex->resp.grpc_pending = 1;
    return 0;
}

/* Builds the response head for the client into the scratch area, with the sticky cookie the
 * router asks for. */
static int build_response_head(client_t *c, const td_http1_response_t *resp, const char *head_end) {
    char cookie[360];
    size_t cl = 0;
    if (resp->status >= 200 && c->ex->sticky_set >= 0 && c->ex->snap)
        cl = td_router_sticky_cookie(c->ex->snap, c->ex->sticky_set, td_client_is_tls(c),
                                     td_wall_ms() / 1000, cookie, sizeof(cookie));
    td_rewrite_response_t r = {
        .resp = resp,
        .head_end = head_end,
        .set_cookie = cl ? cookie : NULL,
        .pass_te = !c->ex->resp.dechunk,
        .keep_alive = c->keep_alive,
        .minor = c->minor,
    };
    return td_rewrite_response(&r, c->w->scratch, sizeof(c->w->scratch));
}

/* The exchange's response is complete and written: recycle both sides. */
void td_exchange_done(upstream_t *u) {
    client_t *c = td_exchange_client_of(u);
    worker_t *w = u->w;
    int reusable = c->ex->resp.resp_keep_alive && c->req_done && c->ex->fwd == c->req_end &&
                   u->off == u->len && !c->ex->resp.tunnel && !w->stopping;
    if (c->ex->resp.status >= 500 && c->ex->snap)
        td_passive_failure(c->ex->snap, u->st, td_now_ms());
    else
        td_passive_success(u->st);
    td_exchange_release_server(c);
    c->ex->up = NULL;
    u->owner = NULL;
    if (reusable)
        td_upstream_pool_put(u);
    else
        td_upstream_close(u);
    td_client_end(c);
}

/* Hands the response bytes in u->buf to the client, honouring its framing. */
void td_exchange_response_pump(upstream_t *u) {
    client_t *c = td_exchange_client_of(u);
    while (c && !u->writing && !c->writing && u->state == U_BUSY && c->state != C_CLOSING) {
        td_iov_t iov[MAX_SPANS + 1];
        unsigned n = 0;
        int volatile_first = 0;
        if (c->ex->resp.tunnel) {
            if (u->off == u->len) {
                td_upstream_read(u, 1);
                return;
            }
            iov[n++] = td_iov(u->buf + u->off, u->len - u->off);
            u->off = u->len;
        } else {
            if (!c->ex->resp.head_done) {
                if (u->off == u->len) {
                    td_upstream_read(u, 1);
                    return;
                }
                td_http1_response_t resp;
                int r = td_http1_parse_response(u->buf + u->off, u->len - u->off, c->head_req,
                                                &limits, &resp, c->w->hdrs, MAX_HDRS);
                if (r == TD_EAGAIN) {
                    if (u->len - u->off >= UBUF_SIZE / 2) {
                        td_exchange_upstream_fail(u, "response head too large", F_PROTOCOL);
                        return;
                    }
                    if (u->off) {
                        memmove(u->buf, u->buf + u->off, u->len - u->off);
                        u->len -= u->off;
                        u->off = 0;
                    }
                    td_upstream_read(u, 1);
                    return;
                }
                if (r < 0) {
                    td_exchange_upstream_fail(u, "malformed response", F_PROTOCOL);
                    return;
                }
                if (resp.status == 101 && !c->upgrade) {
                    td_exchange_upstream_fail(u, "101 without an upgrade request", F_PROTOCOL);
                    return;
                }
                u->off += (uint32_t)r;
                if (resp.status < 200 && resp.status != 101 &&
                    ++c->ex->resp.interim > MAX_INTERIM) {
                    td_exchange_upstream_fail(u, "too many interim (1xx) responses", F_PROTOCOL);
                    return;
                }
                if (resp.status < 200 && resp.status != 101 && c->minor == 0)
                    continue; /* HTTP/1.0 clients get no interim responses */
                if (resp.status >= 200 || resp.status == 101) {
                    c->ex->resp.head_done = 1;
                    c->ex->resp.status = resp.status;
                    c->ex->resp.resp_body = (uint8_t)resp.body;
                    c->ex->resp.body_left = resp.content_length;
                    c->ex->resp.resp_keep_alive = resp.keep_alive;
                    c->ex->resp.dechunk = resp.body == TD_BODY_CHUNKED && c->minor == 0;
                    if (resp.body == TD_BODY_UNTIL_CLOSE || c->ex->resp.dechunk || c->w->stopping)
                        td_client_no_keep_alive(c);
                    if (!c->req_done)
                        td_client_no_keep_alive(
                            c); /* the rest of the request body cannot be skipped */
                    int counted = response_count_status(c, &resp);
                    if (counted) {
                        c->ex->resp.status = counted;
                        td_exchange_count_response(c, u, counted);
                    }
                    if (resp.status == 101)
                        c->ex->resp.tunnel = 1;
                }
                int hl = build_response_head(c, &resp, u->buf + u->off);
                if (hl < 0) {
                    td_exchange_upstream_fail(u, "response head too large", F_PROTOCOL);
                    return;
                }
                if (c->ex->resp.head_done)
                    c->ex->status = resp.status; /* the log keeps the HTTP status */
                iov[n++] = td_iov(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
            }
            if (c->ex->resp.head_done && !c->ex->resp.tunnel) {
                uint32_t avail = u->len - u->off;
                if (c->ex->resp.resp_body == TD_BODY_NONE) {
                    c->ex->resp.resp_done = 1;
                } else if (c->ex->resp.resp_body == TD_BODY_LENGTH) {
                    uint32_t take =
                        avail < c->ex->resp.body_left ? avail : (uint32_t)c->ex->resp.body_left;
                    if (take)
                        iov[n++] = td_iov(u->buf + u->off, take);
                    u->off += take;
                    c->ex->resp.body_left -= take;
                    c->ex->resp.resp_done = c->ex->resp.body_left == 0;
                } else if (c->ex->resp.resp_body == TD_BODY_CHUNKED) {
                    int done = 0;
                    td_str_t spans[MAX_SPANS];
                    size_t ns = 0;
                    long used =
                        td_http1_chunked_feed(&c->ex->resp.chunk, u->buf + u->off, avail, &done,
                                              c->ex->resp.dechunk ? spans : NULL, MAX_SPANS, &ns);
                    if (used < 0) {
                        td_exchange_upstream_fail(u, "invalid chunked response body", F_PROTOCOL);
                        return;
                    }
                    if (c->ex->resp.dechunk) {
                        for (size_t i = 0; i < ns; i++)
                            iov[n++] = td_iov((char *)spans[i].p, (unsigned)spans[i].len);
                    } else if (used) {
                        iov[n++] = td_iov(u->buf + u->off, (unsigned)used);
                    }
                    u->off += (uint32_t)used;
                    c->ex->resp.resp_done = (uint8_t)done;
                    if (done)
                        td_exchange_count_grpc_end(c, u, 0);
                } else if (avail) { /* until close */
                    iov[n++] = td_iov(u->buf + u->off, avail);
                    u->off += avail;
                }
            }
        }
        if (n == 0) {
            if (!td_exchange_response_written(u))
                return;
            c = td_exchange_client_of(u);
            continue;
        }
        for (unsigned i = 0; i < n; i++)
            c->ex->bytes_out += iov[i].len;
        /* A head that goes out (final or interim) means td can no longer answer with its own
         * status. */
        int r = td_client_send(c, iov, n, volatile_first, volatile_first);
        if (r < 0) {
            td_client_close(c);
            return;
        }
        if (r == 1) {
            td_upstream_read(u, 0); /* backpressure: a slow client stops the upstream */
            td_upstream_timer_stop(
                u); /* and its response timeout, until the client takes the bytes */
            return;
        }
        if (!td_exchange_response_written(u))
            return;
        c = td_exchange_client_of(u);
    }
}

/* The bytes handed to the client so far are written. Returns 1 when buffered response bytes
 * are waiting for the pump, 0 when it has nothing to do now (reading resumed, or exchange over). */
int td_exchange_response_written(upstream_t *u) {
    client_t *c = td_exchange_client_of(u);
    if (u->off == u->len)
        u->off = u->len = 0;
    if (c->ex->resp.tunnel && c->state == C_EXCHANGE) {
        /* 101 delivered: both directions become a raw byte tunnel. It counts as a tunnel of
         * its backend from now on, no longer as a request in flight. */
        td_client_tunnel(c);
        td_exchange_count_tunnel_open(c);
        td_exchange_end(c);
        td_upstream_timer_stop(u);
        c->ex->fwd = 0;
        if (c->len)
            td_exchange_request_send(c);
        else
            td_client_read(c, 1);
    }
    if (c->ex->resp.resp_done) {
        td_exchange_done(u);
        return 0;
    }
    /* The response timeout stopped while the client was taking the bytes: it starts again
     * (after an interim response only once the whole request is sent). */
    if (!c->ex->resp.tunnel && (c->ex->resp.head_done || c->req_done))
        td_upstream_timer(u, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    td_upstream_read(u, 1);
    return u->off < u->len && u->owner && u->state == U_BUSY;
}
