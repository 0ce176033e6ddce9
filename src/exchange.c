/* Exchanges: one request and its response across a client and an upstream connection: routing
 * and retries, the request side, the max_conns queue, the access log line, and what the client
 * and upstream connections report (the response side is in exchange_response.c, the counters in
 * exchange_stats.c). */
#include "td/exchange.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "td/access_log.h"
#include "td/client.h"
#include "td/grpc_status.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/queue.h"
#include "td/rewrite.h"
#include "td/router.h"
#include "td/stream.h"
#include "td/timeout.h"
#include "td/upstream.h"

static td_http1_limits_t limits = {8192, CBUF_SIZE, MAX_HDRS};

static int pick_and_connect(client_t *c);

/* The servers a request has tried: few (at most MAX_TRIES), so a short list of flat indices
 * covers every server of a snapshot of any size. */
static int tried_has(const client_t *c, size_t flat) {
    for (uint8_t i = 0; i < c->ex->ntried; i++)
        if (c->ex->tried[i] == flat)
            return 1;
    return 0;
}

static void tried_add(client_t *c, size_t flat) {
    if (c->ex->ntried < MAX_TRIES && !tried_has(c, flat))
        c->ex->tried[c->ex->ntried++] = (uint32_t)flat;
}

static void tried_del(client_t *c, size_t flat) {
    for (uint8_t i = 0; i < c->ex->ntried; i++)
        if (c->ex->tried[i] == flat) {
            c->ex->tried[i] = c->ex->tried[--c->ex->ntried];
            return;
        }
}

static td_str_t find_header(const td_http1_header_t *h, size_t n, const char *lower) {
    size_t len = strlen(lower);
    for (size_t i = 0; i < n; i++)
        if (h[i].name.len == len && td_http1_name_is(h[i].name, lower))
            return h[i].value;
    return (td_str_t){NULL, 0};
}

/* The exchange is over: its duration goes to the backend's histogram, and a line to the access
 * log when there is one: {"time","client","method","path","protocol","status","bytes",
 * "duration_ms","backend","server"} (and "grpc_status" for a gRPC answer). */
static void exchange_log(client_t *c) {
    if (!c->ex->started_ms || !c->ex->status)
        return;
    int64_t ms = td_now_ms() - c->ex->started_ms;
    if (c->ex->b_inflight)
        td_router_observe(c->ex->b_inflight, ms);
    worker_t *w = c->w;
    if (!td_access_log_on(&w->alog))
        return;
    td_access_entry_t e = {
        .client = c->ip,
        .method = c->method,
        .path = c->ex->path ? c->ex->path : "",
        /* An HTTP/2 stream's client reads its request as HTTP/1.1 bytes: its carrier says. */
        .protocol = td_stream_is_virt(&c->io) ? "HTTP/2"
                    : !c->method[0]           ? ""
                    : c->minor                ? "HTTP/1.1"
                                              : "HTTP/1.0",
        .status = c->ex->status,
        .grpc_status = c->ex->grpc_status,
        .bytes = c->ex->bytes_out,
        .duration_ms = ms,
        .backend =
            c->ex->snap && c->ex->backend >= 0 ? c->ex->snap->backends[c->ex->backend].name : "",
        .server = c->ex->snap && c->ex->backend >= 0 && c->ex->server >= 0
                      ? c->ex->snap->backends[c->ex->backend].servers[c->ex->server].addr.text
                      : "",
    };
    td_access_log_write(&w->alog, &e);
}

/* The client's exchange, taken from the worker's cache (or allocated) when it has none: an idle
 * keep-alive connection holds none, and a busy one costs no malloc/free pair per request. NULL
 * when out of memory. */
static td_exchange_t *exchange_take(client_t *c) {
    if (c->ex)
        return c->ex;
    worker_t *w = c->w;
    td_exchange_t *x = w->num_ex_cached ? w->ex_cache[--w->num_ex_cached] : malloc(sizeof(*x));
    if (!x)
        return NULL;
    memset(x, 0, sizeof(*x));
    x->down = c;
    x->backend = x->server = x->sticky_set = x->pinned = x->forced = -1;
    x->grpc_status = -1;
    c->ex = x;
    return x;
}

/* Gives the client's (ended) exchange back to the worker's cache. */
static void exchange_put(client_t *c) {
    td_exchange_t *x = c->ex;
    worker_t *w = c->w;
    c->ex = NULL;
    free(x->last_error);
    if (w->num_ex_cached < (int)(sizeof(w->ex_cache) / sizeof(w->ex_cache[0])))
        w->ex_cache[w->num_ex_cached++] = x;
    else
        free(x);
}

void td_exchange_end(client_t *c) {
    if (c->ex->qlink.list) { /* answered or gone while it waited for a slot (499) */
        td_queue_remove(&c->w->queue, &c->ex->qlink);
        td_client_timer_stop(c);
    }
    exchange_log(c);
    c->ex->started_ms = 0;
    c->ex->status = 0;
    c->ex->grpc_status = -1;
    c->ex->bytes_out = 0;
    free(c->ex->path);
    c->ex->path = NULL;
    td_exchange_release_server(c);
    td_exchange_release_backend(c);
    if (c->ex->snap) {
        td_client_use_timeouts(c, NULL);
        td_snapshot_release(c->ex->snap);
        c->ex->snap = NULL;
    }
}

/* The client goes on to its next request: the exchange is over, its storage goes back to the
 * worker's cache (the next request takes one afresh). */
static void exchange_next(client_t *c) {
    if (!c->ex)
        return;
    td_exchange_end(c);
    exchange_put(c);
}

/* Detaches and closes the exchange's upstream connection (it cannot be reused). */
void td_exchange_drop_upstream(client_t *c) {
    upstream_t *u = c->ex ? c->ex->up : NULL;
    if (!u)
        return;
    c->ex->up = NULL;
    u->owner = NULL;
    td_exchange_release_server(c);
    td_upstream_close(u);
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
        td_client_no_keep_alive(c);
        td_client_error(c, 400, "redirect to https needs a Host and an origin-form target");
        return;
    }
    char port[16] = "";
    if (l->https_port && l->https_port != 443)
        snprintf(port, sizeof(port), ":%d", l->https_port);
    char headers[CBUF_SIZE];
    int n = snprintf(headers, sizeof(headers), "Location: https://%.*s%s%.*s\r\n", (int)hl, host.p,
                     port, (int)req->target.len, req->target.p);
    if (n < 0 || (size_t)n >= sizeof(headers)) {
        td_client_error(c, 414, "redirect location too long");
        return;
    }
    int get = req->head || (req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0);
    td_client_reply(c, get ? 301 : 308, get ? "Moved Permanently" : "Permanent Redirect", headers);
}

/* Request buffering (request_buffering.max_bytes): a body still coming is read into the
 * client's buffer, up to the limit, before a backend is chosen, so a slow upload holds no
 * backend connection (and no worker of an application server with a fixed pool) while it
 * trickles in; the client's body timeout applies meanwhile (408). A body that fits is then sent
 * whole; a larger one is streamed from there on, as without buffering. A client that waits
 * for "100 Continue" gets it from td (RFC 9110 §10.1.1: a proxy may answer it), and the Expect
 * field is not forwarded. A gRPC request (`stream`: content-type application/grpc*) is
 * never buffered: its body is a stream of messages the backend answers as they come (a bidi
 * call's client waits for a reply before it sends more), so each piece is forwarded as it
 * arrives, as nginx's grpc_pass does. Returns 1 when buffering started (routing waits for
 * td_exchange_body_buffered), 0 to route now. */
static int body_buffer_start(client_t *c, int stream) {
    uint32_t max = (uint32_t)c->ex->snap->config->request_buffering.max_bytes;
    if (c->req_done || !max || c->upgrade || stream)
        return 0;
    uint64_t want = max;
    if (c->req_body == TD_BODY_LENGTH && c->body_left + (c->req_end - c->head_len) < want)
        want = c->body_left + (c->req_end - c->head_len);
    if (c->req_end - c->head_len >= want)
        return 0;
    /* Room for the head, the body up to the limit and what was already read past it. */
    uint64_t cap = (uint64_t)c->head_len + want + (c->len - c->req_end);
    if (cap > UINT32_MAX || td_client_buf_grow(c, (uint32_t)cap) < 0)
        return 0; /* no memory for it: streamed as without buffering */
    c->ex->buffering = 1;
    if (c->expect && c->minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        td_iov_t iov = td_iov((char *)cont, sizeof(cont) - 1);
        int r = td_client_send(c, &iov, 1, 0, 0);
        if (r < 0) {
            td_client_close(c);
            return 1;
        }
        c->ex->continued = 1;
        if (r == 1)
            c->ex->continue_out = 1;
    }
    td_client_timer(c, T_HEADER);
    td_client_read(c, 1);
    return 1;
}

/* While buffering: new body bytes were accounted. Routes the request once the body is whole,
 * or the limit (or the buffer) is reached. */
void td_exchange_body_buffered(client_t *c) {
    uint32_t max = (uint32_t)c->ex->snap->config->request_buffering.max_bytes;
    if (!c->req_done && c->req_end - c->head_len < max && c->len < c->cap) {
        td_client_timer(c, T_HEADER); /* the body timeout runs between two reads */
        return;
    }
    c->ex->buffering = 0;
    td_client_timer_stop(c); /* from here as without buffering: the upstream sets the timeouts */
    if (c->req_done)
        td_client_read(c, 0); /* what comes now is a pipelined request: it waits */
    pick_and_connect(c);
}

/* A request head was parsed (`req`, into the worker's header array; the client's fields are set
 * from it): routes the request and starts the exchange, or answers it with td's own status. */
void td_exchange_start(client_t *c, const td_http1_request_t *reqp) {
    worker_t *w = c->w;
    td_http1_request_t req = *reqp;
    if (!exchange_take(c)) {
        td_client_log(c, 0, "out of memory for the request: connection closed");
        td_client_close(c);
        return;
    }
    /* Kept for the access log and for the error lines about this request. */
    free(c->ex->path);
    c->ex->path = strndup(req.target.p, req.target.len < 512 ? req.target.len : 512);
    if (strcmp(c->method, "CONNECT") == 0) {
        td_client_no_keep_alive(c);
        td_client_reply(c, 405, "Method Not Allowed",
                        "Allow: GET, HEAD, POST, PUT, DELETE, "
                        "PATCH, OPTIONS\r\n");
        return;
    }
    if (!req.host.len && (req.target.p[0] == '/' || req.target.p[0] == '*') &&
        find_header(req.headers, req.num_headers, "host").p) {
        /* "Host:" with an empty value and no authority in the target: there is no host to
         * forward, and adding one would make two Host fields. nginx refuses it the same way. */
        td_client_no_keep_alive(c);
        td_client_error(c, 400, "empty Host");
        return;
    }
    if (req.body == TD_BODY_CHUNKED) {
        /* Only plain chunked is forwarded (td re-frames it); other codings would be lost:
         * RFC 9112 §6.1 asks for 501. */
        td_str_t te = find_header(req.headers, req.num_headers, "transfer-encoding");
        if (te.len != 7 || !td_http1_name_is(te, "chunked")) {
            td_client_no_keep_alive(c);
            char coding[64 * 4 + 8], why[sizeof(coding) + 40];
            td_log_escape(coding, sizeof(coding), te.p, te.len, 64);
            snprintf(why, sizeof(why), "transfer coding \"%s\" not supported", coding);
            td_client_log(c, 501, why);
            td_client_reply(c, 501, "Not Implemented", "");
            return;
        }
    }
    if (c->upgrade) {
        /* h2c through a reverse proxy is a known smuggling vector: it is not passed on. */
        td_str_t up = find_header(req.headers, req.num_headers, "upgrade");
        if (td_http1_list_has(up, "h2c"))
            td_client_no_upgrade(c);
    }
    c->ex->idempotent = strcmp(c->method, "GET") == 0 || strcmp(c->method, "HEAD") == 0 ||
                        strcmp(c->method, "OPTIONS") == 0 || strcmp(c->method, "PUT") == 0 ||
                        strcmp(c->method, "DELETE") == 0 || strcmp(c->method, "TRACE") == 0;
    c->ex->started_ms = td_now_ms();
    if (td_client_account_body(c) < 0) {
        td_client_no_keep_alive(c);
        td_client_error(c, 400, "invalid chunked body");
        return;
    }
    td_snapshot_t *snap = w->snapshot(w);
    if (!snap) {
        td_client_error(c, 503, "no routing configuration");
        return;
    }
    c->ex->snap = snap;
    td_snapshot_retain(c->ex->snap);
    td_client_use_timeouts(c, &snap->config->timeouts);
    const td_config_t *pcfg = c->ex->snap->config;
    if (c->listener < pcfg->num_listeners && pcfg->listeners[c->listener].redirect_https) {
        redirect_https(c, &req, &pcfg->listeners[c->listener]);
        return;
    }
    c->ex->forced = td_router_preview(c->ex->snap, &req);
    c->ex->pinned = td_router_sticky_pin(c->ex->snap, &req, td_wall_ms() / 1000, td_now_ms());
    if (body_buffer_start(c, c->grpc)) /* c->grpc: the head's content-type (client.c) */
        return;
    /* A pooled connection takes the head at once, as parsed: build_request_head may use it. */
    w->parsed = &req;
    w->parsed_for = c;
    pick_and_connect(c);
    w->parsed_for = NULL;
}

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
        .preview_header = c->ex->snap ? c->ex->snap->config->preview_header : NULL,
        .client_ip = c->ip,
        .default_host = c->ex->snap && c->ex->backend >= 0 && c->ex->server >= 0
                            ? c->ex->snap->backends[c->ex->backend].servers[c->ex->server].addr.text
                            : NULL,
        .https = td_client_is_tls(c),
        .upgrade = c->upgrade,
        .drop_expect = c->ex->continued,
        .te_trailers =
            c->ex->snap && c->ex->backend >= 0 && c->ex->snap->backends[c->ex->backend].h2,
    };
    return td_rewrite_request(&r, w->scratch, sizeof(w->scratch));
}

/* Sends what the upstream has not had yet of the current request (head, body bytes read so far;
 * in a tunnel, whatever the client sent). */
void td_exchange_request_send(client_t *c) {
    upstream_t *u = c->ex->up;
    while (u && u->state == U_BUSY && !u->writing && c->state != C_CLOSING) {
        td_iov_t iov[2];
        unsigned n = 0;
        int volatile_first = 0;
        if (c->state == C_TUNNEL) {
            if (c->len == 0)
                return;
            iov[n++] = td_iov(c->buf, c->len);
        } else {
            if (!c->ex->head_sent) {
                int hl = build_request_head(c);
                if (hl < 0) {
                    td_client_no_keep_alive(c);
                    td_client_error(c, 400, "request head cannot be forwarded");
                    return;
                }
                iov[n++] = td_iov(c->w->scratch, (unsigned)hl);
                volatile_first = 1;
                c->ex->fwd = c->head_len;
                c->ex->head_sent = 1;
            }
            if (c->req_end > c->ex->fwd) {
                iov[n++] = td_iov(c->buf + c->ex->fwd, c->req_end - c->ex->fwd);
                c->ex->body_sent = 1;
            }
            if (n == 0)
                return;
        }
        int r = td_upstream_write(u, iov, n, volatile_first);
        if (r < 0) {
            td_exchange_upstream_fail(u, td_upstream_strerror(u, r), F_IO);
            return;
        }
        if (r == 1) {
            td_client_read(c, 0);
            td_client_timer_stop(c); /* waiting on the upstream is not the client's delay */
            return;
        }
        td_exchange_request_written(c);
        u = c->ex->up;
        if (c->state != C_TUNNEL)
            return; /* td_exchange_request_written decided what comes next */
    }
}

/* All bytes handed to the upstream so far have been written. */
void td_exchange_request_written(client_t *c) {
    if (c->state == C_TUNNEL) {
        td_client_tunnel_sent(c);
        return;
    }
    c->ex->fwd = c->req_end;
    if (c->ex->up && c->req_done)
        td_upstream_timer(c->ex->up, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    if (!c->req_done) {
        /* Body still coming: make room, giving up replay only when the buffer runs short. */
        if (c->cap - c->len < 4096) {
            td_client_drop_sent(c);
            c->ex->fwd = 0;
            c->ex->discarded = 1;
        }
        td_client_timer(c, T_HEADER);
        td_client_read(c, 1);
        return;
    }
    /* The whole request is out. The client stays readable (no epoll change per request): a
     * pipelined request that comes now stops reading until this exchange ends. */
    td_client_timer_stop(c);
}

static const char *unreachable(const client_t *c) {
    return c->ex->last_error ? c->ex->last_error : "no upstream server could be reached";
}

/* The upstream connection failed during an exchange: retry on another server when that is
 * safe (nothing of the response seen, the request still whole in the buffer, and the failure was
 * a connect error, or a reset/close of an idempotent request or of one none of whose bytes left),
 * else answer 502 (504 for a timeout), or just close when the response had already started. */
void td_exchange_upstream_fail(upstream_t *u, const char *why, int kind) {
    client_t *c = td_exchange_client_of(u);
    int fresh = !u->reused;
    td_server_stats_t *st = u->st;
    if (c)
        td_exchange_count_grpc_end(c, u, 1); /* a gRPC answer cut short: the call failed */
    if (c)
        td_exchange_drop_upstream(c);
    else
        td_upstream_close(u);
    if (kind == F_LOCAL) {
        /* No passive failure, no retry, not the backend's 5xx: the request gets a 503 from td. */
        char what[300];
        snprintf(what, sizeof(what),
                 "cannot connect to upstream %s (%s): %s; answering 503, no passive failure",
                 st->address, st->backend, why);
        td_log_local_error(&u->w->local_err_rl, LOCAL_ERR_BURST, what);
        if (!c)
            return;
        c->ex->backend = c->ex->server = -1;
        if (!c->req_done)
            td_client_no_keep_alive(c);
        if (c->resp_sent || c->writing)
            td_client_close(c);
        else
            td_client_reply(c, 503, td_http_reason(503), "Retry-After: 1\r\n");
        return;
    }
    int64_t now = td_now_ms();
    if (kind == F_CONNECT || (kind == F_IO && fresh && (!c || !c->ex->resp_started))) {
        td_snapshot_t *s = c && c->ex->snap ? c->ex->snap : u->w->snap;
        if (s)
            td_passive_failure(s, st, now);
        td_debug("upstream %s (%s): %s", st->address, st->backend, why);
    }
    if (!c)
        return;
    free(c->ex->last_error);
    if (asprintf(&c->ex->last_error, "backend %s server %s: %s", st->backend, st->address, why) < 0)
        c->ex->last_error = NULL;
    if (!fresh && kind == F_IO && !c->ex->resp_started && c->ex->snap && c->ex->backend >= 0 &&
        c->ex->server >= 0) {
        /* A pooled connection the server closed as the request crossed it says nothing about
         * the server: the retry is free and may go to the same server (nginx does the same). */
        tried_del(c, c->ex->snap->backends[c->ex->backend].first_server + (size_t)c->ex->server);
        if (c->ex->tries > 0)
            c->ex->tries--;
    }
    /* RFC 9110 §9.2.2: an idempotent request may be sent again; another one only when none of
     * its bytes reached the upstream (a connect failure), body or not: the server may have acted
     * on a POST whose head alone it read (nginx's proxy_next_upstream without non_idempotent).
     * That holds for the free retry of a pooled connection too. */
    int safe = !c->ex->resp_started && !c->ex->discarded &&
               (kind == F_CONNECT || (kind == F_IO && (c->ex->idempotent || !c->ex->head_sent)));
    if (safe && c->ex->tries < MAX_TRIES) {
        c->ex->fwd = 0;
        c->ex->head_sent = c->ex->body_sent = 0;
        pick_and_connect(c);
        return;
    }
    if (c->resp_sent) {
        char what[400];
        snprintf(what, sizeof(what), "%s; response cut short", unreachable(c));
        td_client_log(c, 0, what);
        td_client_close(c);
    } else {
        if (!c->req_done)
            td_client_no_keep_alive(c);
        td_client_error(c, kind == F_TIMEOUT ? 504 : 502, unreachable(c));
    }
}

static void upstream_ready(upstream_t *u);
static const td_upstream_cbs_t upstream_cbs;

/* max_conns: the request waits in the worker's queue of backend `bi` (already there: it stays at
 * its place), with the queue deadline in the client's timeout slot. A queued request holds no
 * slot and counts nowhere as in flight. */
static void queue_wait(client_t *c, int bi) {
    td_exchange_t *x = c->ex;
    td_backend_stats_t *b = x->snap->backends[bi].st;
    x->backend = bi;
    x->server = -1;
    if (x->qlink.list && x->qlink.list->key == b)
        return;
    int armed = x->qlink.list != NULL; /* moved to another backend: its deadline stays */
    td_queue_remove(&c->w->queue, &x->qlink);
    if (td_queue_push(&c->w->queue, b, &x->qlink, td_now_ms()) < 0) {
        td_client_error(c, 503, "out of memory for the queue");
        return;
    }
    if (!armed)
        td_client_timer(c, T_QUEUE);
}

void td_exchange_queue_run(worker_t *w) {
    for (td_queue_list_t *l = w->queue.lists; l; l = l->next) {
        /* In order: a first try that still finds every server full ends the pass (nothing
         * behind it could do better). A retry may wait for a server of its own (it skips those
         * it tried): when it still waits, those behind it get their chance. Lists are never
         * freed while the worker runs. */
        td_queue_link_t *h = l->head;
        while (h) {
            td_queue_link_t *next = h->next;
            td_exchange_t *x = TD_CONTAINER_OF(h, td_exchange_t, qlink);
            int first = x->tries == 0;
            if (x->down->eof) {
                /* Its client has closed: never sent (499), it takes no slot. */
                td_client_close(x->down);
            } else if (pick_and_connect(x->down) && first) {
                break;
            }
            if (next && next->list != l)
                next = l->head; /* taken out meanwhile: start again from the head */
            h = next;
        }
    }
}

void td_exchange_queue_timeout(client_t *c) {
    td_exchange_t *x = c->ex;
    if (!x->qlink.list)
        return;
    if (c->eof) { /* its client has closed: it gave up, no queue timeout (499) */
        td_client_close(c);
        return;
    }
    td_backend_stats_t *b = x->qlink.list->key;
    td_queue_remove(&c->w->queue, &x->qlink);
    atomic_fetch_add_explicit(&b->queue_timeouts, 1, memory_order_relaxed);
    char why[200];
    /* The configured wait, not the measured one: it is part of the reason lines are counted by. */
    snprintf(why, sizeof(why),
             "queue timeout after %d ms (timeouts.queue_ms): every server of %s at max_conns",
             td_client_timeout_ms(c, T_QUEUE), b->name);
    if (!c->req_done)
        td_client_no_keep_alive(c);
    td_client_error(c, 503, why);
}

/* Chooses a backend and a server for the request (or the next try) and connects. Returns 1 when
 * the request waits in a queue for a max_conns slot (still, or from now on), else 0. */
static int pick_and_connect(client_t *c) {
    worker_t *w = c->w;
    td_snapshot_t *s = c->ex->snap;
    int64_t now = td_now_ms();
    uint8_t exhausted[TD_CONFIG_MAX_BACKENDS] = {0};
    int races = 0;
    for (;;) {
        if (c->ex->tries >= MAX_TRIES) {
            td_client_error(c, 502, unreachable(c));
            return 0;
        }
        int bi = c->ex->backend;
        if (bi >= 0 && exhausted[bi])
            bi = -1;
        if (c->ex->forced >= 0) {
            /* Preview: this backend only, whatever its weight. */
            if (exhausted[c->ex->forced] || !td_backend_is_up(&s->backends[c->ex->forced], now)) {
                td_client_error(c, c->ex->tries ? 502 : 503, "preview backend has no server up");
                return 0;
            }
            bi = c->ex->forced;
        } else if (bi < 0) {
            int pinned = c->ex->tries == 0 ? c->ex->pinned : -1;
            bi = td_router_pick_backend(s, w->wrr_b, pinned, exhausted, now);
            if (bi < 0) {
                if (c->ex->tries == 0)
                    td_client_error(c, 503, "no backend in state ready with weight above 0 is up");
                else
                    td_client_error(c, 502, unreachable(c));
                return 0;
            }
        }
        td_snap_backend_t *b = &s->backends[bi];
        /* A new request does not overtake those already waiting in this worker for the
         * backend: a slot that just freed is theirs (the wake-up dispatches them). */
        if (b->limited && c->ex->tries == 0 && !c->ex->qlink.list &&
            atomic_load_explicit(&b->st->queued, memory_order_relaxed) > 0 &&
            td_queue_waiting(&w->queue, b->st) > 0) {
            queue_wait(c, bi);
            return c->ex->qlink.list != NULL;
        }
        uint8_t tried[TD_CONFIG_MAX_SERVERS];
        size_t ns = b->num_servers < TD_CONFIG_MAX_SERVERS ? b->num_servers : TD_CONFIG_MAX_SERVERS;
        memset(tried, 0, ns);
        for (uint8_t i = 0; i < c->ex->ntried; i++)
            if (c->ex->tried[i] >= b->first_server && c->ex->tried[i] - b->first_server < ns)
                tried[c->ex->tried[i] - b->first_server] = 1;
        int si = td_router_pick_server(b, w->wrr_s + b->first_server, tried, now);
        if (si == TD_EFULL) {
            queue_wait(c, bi);
            return c->ex->qlink.list != NULL;
        }
        if (si < 0) {
            if ((size_t)bi < sizeof(exhausted))
                exhausted[bi] = 1;
            c->ex->backend = -1;
            if (c->ex->tries == 0 && c->ex->pinned == bi)
                c->ex->pinned = -1;
            /* Every server of every backend exhausted ends in the pick_backend branch above. */
            continue;
        }
        td_snap_server_t *srv = &b->servers[si];
        int max = atomic_load_explicit(&srv->st->max_conns, memory_order_relaxed);
        if (max) {
            if (!td_registry_slot_take(srv->st, max)) {
                /* Another worker took the last slot since the pick looked: pick again on the
                 * same backend (the server now looks full). */
                c->ex->backend = bi;
                if (++races < MAX_TRIES)
                    continue;
                queue_wait(c, bi);
                return c->ex->qlink.list != NULL;
            }
            c->ex->slot_st = srv->st;
            c->ex->slot_b = b->st;
        }
        if (c->ex->qlink.list) { /* its turn came: out of the queue, the deadline off */
            td_queue_remove(&w->queue, &c->ex->qlink);
            td_client_timer_stop(c);
        }
        tried_add(c, b->first_server + (size_t)si);
        c->ex->tries++;
        c->ex->backend = bi;
        c->ex->server = si;
        int pin = td_router_sticky_set(s, bi, c->ex->pinned, c->ex->forced);
        if (pin >= 0)
            c->ex->sticky_set = pin;
        td_exchange_count_try(c, b->st, srv->st);
        upstream_t *u;
        int r = td_upstream_open(w, srv, b->tls, td_client_timeout_ms(c, T_CONNECT), c->ex,
                                 &upstream_cbs, &u);
        if (!u) {
            td_client_error(c, 502, "out of memory");
            return 0;
        }
        c->ex->up = u;
        if (r == 1)
            upstream_ready(u);
        else if (r < 0)
            td_exchange_upstream_fail(u,
                                      r == -ENOMEM ? "out of memory" : td_upstream_strerror(u, r),
                                      td_upstream_local_error(r) ? F_LOCAL : F_CONNECT);
        return 0;
    }
}

/* ---------------------------------------------------------------------------------------------
 * What the upstream connection reports */

/* The upstream is bound to the client (connected, or taken from the pool): the exchange starts
 * on it. */
static void upstream_ready(upstream_t *u) {
    client_t *c = td_exchange_client_of(u);
    memset(&c->ex->resp, 0, sizeof(c->ex->resp)); /* a new try: no response yet */
    /* The response timeout runs once the whole request is sent; while the body comes, the
     * client's body timeout applies (a stalled client gets 408, not the backend a 504). */
    if (c->req_done)
        td_upstream_timer(u, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    else
        td_upstream_timer_stop(u);
    td_upstream_read(u, 1);
    td_exchange_request_send(c);
}

/* Response bytes came (u->len counts them), or the connection ended. */
static void upstream_data(upstream_t *u, long nread) {
    client_t *c = td_exchange_client_of(u);
    if (nread < 0) {
        if (c->ex->resp.tunnel) {
            if (c->writing) {
                td_client_close_after_write(c);
                td_exchange_drop_upstream(c);
            } else {
                td_client_close(c);
            }
        } else if (c->ex->resp.head_done && c->ex->resp.resp_body == TD_BODY_UNTIL_CLOSE) {
            c->ex->resp.resp_done = 1;
            c->ex->resp.resp_keep_alive = 0;
            td_client_no_keep_alive(c);
            if (!c->writing && !u->writing)
                td_exchange_done(u);
        } else if (!c->ex->resp_started) {
            td_exchange_upstream_fail(u,
                                      nread == TD_STREAM_EOF ? "connection closed before a response"
                                                             : td_upstream_strerror(u, (int)nread),
                                      F_IO);
        } else {
            td_exchange_upstream_fail(u,
                                      nread == TD_STREAM_EOF ? "connection closed mid-response"
                                                             : td_upstream_strerror(u, (int)nread),
                                      F_IO);
        }
        return;
    }
    c->ex->resp_started = 1;
    if (!c->ex->resp.tunnel)
        td_upstream_timer(u, T_RESPONSE, td_client_timeout_ms(c, T_RESPONSE));
    if (c->writing) {
        td_upstream_read(u, 0);
        td_upstream_timer_stop(
            u); /* the client send timeout runs: the response one restarts after it */
        return;
    }
    td_exchange_response_pump(u);
}

static void upstream_written(upstream_t *u) {
    td_exchange_request_written(td_exchange_client_of(u));
}

static void upstream_error(upstream_t *u, const char *why, int kind) {
    if (kind == F_TIMEOUT && u->state == U_BUSY && u->owner && u->owner->resp.tunnel)
        return; /* a tunnel has no response timeout */
    td_exchange_upstream_fail(u, why, kind);
}

static const td_upstream_cbs_t upstream_cbs = {
    .on_ready = upstream_ready,
    .on_data = upstream_data,
    .on_written = upstream_written,
    .on_error = upstream_error,
};

/* ---------------------------------------------------------------------------------------------
 * What the client connection reports */

static void client_head(client_t *c, const td_http1_request_t *req) {
    td_exchange_start(c, req);
}

static void client_body(client_t *c) {
    if (c->state == C_TUNNEL) {
        td_exchange_request_send(c);
        return;
    }
    if (!c->ex) /* td's own answer without an exchange (out of memory): nothing to forward */
        return;
    if (c->ex->buffering) {
        td_exchange_body_buffered(c);
        return;
    }
    if (!c->ex->up || c->ex->up->state != U_BUSY || c->ex->up->writing)
        td_client_read(c, 0);
    td_exchange_request_send(c);
}

static int client_written(client_t *c) {
    if (!c->ex)
        return 0;
    if (c->ex->continue_out) { /* td's own 100 Continue is out: the body may come */
        c->ex->continue_out = 0;
        if (!c->ex->up) {
            if (c->ex->buffering)
                td_client_timer(c, T_HEADER);
            td_client_read(c, 1);
            return 1;
        }
        if (c->ex->up->state != U_BUSY)
            return 1; /* the body is in and the upstream still connecting */
        /* The body came and went on meanwhile: a response may be waiting for this write. */
    }
    if (!c->ex->up)
        return 0;
    upstream_t *u = c->ex->up;
    if (td_exchange_response_written(u))
        td_exchange_response_pump(u);
    return 1;
}

static void client_reply(client_t *c, int status) {
    if (!exchange_take(c)) {
        td_exchange_count_reply(c, status); /* counted all the same; no access log line */
        return;
    }
    td_exchange_count_reply(c, status);
    td_exchange_drop_upstream(c);
    c->ex->status = status;
    if (c->grpc && status >= 400)
        c->ex->grpc_status = td_grpc_status_of_http(status);
    if (!c->ex->started_ms)
        c->ex->started_ms = td_now_ms();
}

static void client_close(client_t *c) {
    if (!c->ex)
        return;
    if (c->ex->started_ms && !c->ex->status)
        c->ex->status = 499; /* the client went away before its answer: the access log says so */
    td_exchange_drop_upstream(c);
    td_exchange_end(c);
    td_exchange_count_tunnel_close(c);
    exchange_put(c);
}

static const char *client_target(const client_t *c) {
    return c->ex ? c->ex->path : NULL;
}

const td_client_cbs_t td_exchange_client_cbs = {
    .on_head = client_head,
    .on_body = client_body,
    .on_written = client_written,
    .on_reply = client_reply,
    .on_end = exchange_next,
    .on_close = client_close,
    .target = client_target,
};
