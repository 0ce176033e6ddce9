/* The admin HTTP server: a small HTTP/1.1 server (td's own parser) on the main thread's loop.
 * Every request is handled whole: head and body (Content-Length, at most 1 MiB) are read, checked
 * (Host, Origin, token), handed to the handler, and its reply written; then the next one. With
 * admin.tls every connection speaks TLS through td/tls.h's memory BIOs: ciphertext read from the
 * socket is fed in and the plaintext lands in the connection's buffer as plain reads do, and a
 * reply is encrypted whole before it is written. */
#include "td/admin_http.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "td/http1.h"
#include "td/log.h"
#include "td/rewrite.h"
#include "td/tls.h"

#define ADMIN_MAX_BODY (1024 * 1024)
#define ADMIN_MAX_HDRS 64
#define ADMIN_TIMEOUT_MS 10000 /* idle or half-sent request: the connection is closed */
/* A new connection that has sent nothing by then is closed: an idle socket held open costs a
 * slot of ADMIN_MAX_CONNS, and probes and tdctl send their request at once. */
#define ADMIN_FIRST_BYTE_MS 5000
#define ADMIN_MAX_CONNS 256
/* Log lines (errors of requests, TLS handshakes, evicted connections): one a second per reason,
 * then a count (td_log_reasons_t), as the listeners' error lines. */
#define ADMIN_TARGET_MAX 200 /* bytes of a request-target a log line shows */

typedef struct admin_conn_s admin_conn_t;

/* A reply that comes later (td_admin_http_defer). */
struct td_admin_deferred_s {
    admin_conn_t *conn; /* borrowed; NULL once the connection is gone (the reply is dropped) */
    int head_only;      /* the request was a HEAD */
    int done;           /* finished while its handler still ran: `reply` waits to be sent */
    td_admin_reply_t reply;
    char *header; /* owned: the extra header line of the reply, or NULL */
    /* The request's method and target (cut), for the log line of an error reply. */
    char method[24];
    char target[ADMIN_TARGET_MAX];
    size_t method_len, target_len;
};

struct admin_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* a request must arrive whole within ADMIN_TIMEOUT_MS of its first byte */
    int handles;      /* handles still to close */
    uv_write_t wreq;
    char *buf; /* owned */
    size_t len, cap;
    char *out; /* owned: the response being written */
    int keep_alive;
    int closing;
    int lingering; /* answered and shut down for writing: the rest of the input is discarded */
    int fresh;     /* accepted and nothing read yet: ADMIN_FIRST_BYTE_MS to send something */
    uv_shutdown_t sreq;
    char ip[64];       /* the peer's IP address, without brackets (IPv6) */
    int port;          /* the peer's port */
    char local_ip[64]; /* the address the client reached, as a Host names it ("[::1]" for IPv6) */
    td_admin_deferred_t *deferred; /* owned by whoever finishes it: the reply being waited for */
    td_tls_conn_t *tls;            /* owned; NULL for plain HTTP */
    struct admin_conn_s *next;
};

static uv_tcp_t server;
static int server_open;
/* A listening socket handed over by the td process before (td_admin_http_adopt), or -1. */
static int adopt_fd = -1;
static admin_conn_t *conns;
/* After an upgrade's handover (td_admin_http_hand_off): the new process accepts; this one
 * answers what its open connections send next and closes each after that. */
static int handing_off;
#define HAND_OFF_IDLE_MS 1000 /* an idle connection's last wait, as the data plane's drain */
/* The token in force: set at start, replaced by a reload that sets another one, but never
 * cleared by one (td_admin_update_token): removing protection takes a restart. */
static char bound_token[256];
static char bound_read_token[256]; /* admin.read_token, under the same rule */
static char bound_host[64]; /* admin.address without its port, as written ("[::1]" for IPv6) */
static char open_path[64];  /* td_admin_http_open_path */
static int bound_port;
static td_admin_handler_fn *handler; /* borrowed: answers every request */
static td_tls_server_t *server_tls;  /* a reference: admin.tls's certificates, or NULL */
/* TLS records are read here before they are decrypted into a connection's buffer (the main
 * thread's loop only; each read is handled whole before the next). */
static char cipher[16384 + 512];

static int num_conns;

/* The admin server's own per-reason limiter (main loop only), flushed by rl_timer. */
static td_log_reasons_t admin_rl;
static uv_timer_t rl_timer;
static int rl_timer_open;

static void rl_flush_cb(uv_timer_t *t) {
    (void)t;
    td_log_reasons_flush(&admin_rl, td_now_ms());
}

/* "IP:PORT" ("[IP]:PORT" for IPv6) of c's peer into out[cap]. */
static const char *peer(const admin_conn_t *c, char *out, size_t cap) {
    int v6 = strchr(c->ip, ':') != NULL;
    snprintf(out, cap, "%s%s%s:%d", v6 ? "[" : "", c->ip, v6 ? "]" : "", c->port);
    return out;
}

/* Logs "admin: IP:PORT METHOD TARGET: STATUS" (the target escaped, td_log_escape) for a refused
 * request at most once a second per status, then "N more like this"; at debug level only (and
 * not limited) when `quiet` (the open path's probes). */
static void log_refusal(const admin_conn_t *c, td_str_t method, td_str_t target, int status,
                        int quiet) {
    char reason[TD_LOG_REASON_LEN];
    snprintf(reason, sizeof(reason), "admin: %d %s", status, td_http_reason(status));
    if (quiet ? 0 : !td_log_reasons_take(&admin_rl, reason, td_now_ms()))
        return;
    char m[64], t[ADMIN_TARGET_MAX * 4 + 8], p[80];
    td_log_escape(m, sizeof(m), method.p, method.len, 16);
    td_log_escape(t, sizeof(t), target.p, target.len, ADMIN_TARGET_MAX);
    td_log(quiet ? TD_LOG_DEBUG : TD_LOG_INFO, "admin: %s %s %s: %d", peer(c, p, sizeof(p)),
           m[0] ? m : "-", t[0] ? t : "-", status);
}

static void conn_free_cb(uv_handle_t *h) {
    admin_conn_t *c = h->data;
    if (--c->handles)
        return;
    num_conns--;
    if (c->deferred)
        c->deferred->conn = NULL; /* its reply, when it comes, is dropped */
    for (admin_conn_t **pp = &conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (c->tls) {
        td_tls_free(c->tls);
        free(c->tls);
    }
    free(c->buf);
    free(c->out);
    free(c);
}

static void conn_close(admin_conn_t *c) {
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, conn_free_cb);
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

/* ---- replies */

td_admin_reply_t td_admin_http_json(int status, json_t *j) {
    static const char oom[] = "{\"error\": \"out of memory\"}\n";
    char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    size_t len = text ? strlen(text) : 0;
    char *body = text ? realloc(text, len + 2) : NULL;
    if (!body) {
        free(text);
        status = 500;
        len = sizeof(oom) - 2;
        if (!(body = strdup(oom)))
            return (td_admin_reply_t){500, "application/json", NULL, 0, NULL, NULL};
    }
    body[len++] = '\n';
    body[len] = 0;
    return (td_admin_reply_t){status, "application/json", body, len, NULL, NULL};
}

td_admin_reply_t td_admin_http_error(int status, const char *msg) {
    return td_admin_http_json(status, json_pack("{s:s}", "error", msg));
}

/* ---- checks */

/* An Authorization value "Bearer TOKEN" for `token` (compared in constant time). */
static int bearer_is(td_str_t v, const char *token) {
    size_t tl = strlen(token);
    if (!tl || v.len != 7 + tl || strncasecmp(v.p, "Bearer ", 7) != 0)
        return 0;
    unsigned diff = 0;
    for (size_t k = 0; k < tl; k++)
        diff |= (unsigned)(v.p[7 + k] ^ token[k]);
    return diff == 0;
}

/* 1: no token configured or the token; 2: the read-only token; 0: neither. */
static int authorized(const td_http1_request_t *req) {
    if (!bound_token[0])
        return 1;
    for (size_t i = 0; i < req->num_headers; i++) {
        if (!td_http1_name_is(req->headers[i].name, "authorization"))
            continue;
        td_str_t v = req->headers[i].value;
        return bearer_is(v, bound_token) ? 1 : bearer_is(v, bound_read_token) ? 2 : 0;
    }
    return 0;
}

/* Splits "host[:port]" (an IPv6 host keeps its brackets); a missing port is `default_port`.
 * Returns 0, or -1 when the port is not a number 1..65535. */
static int split_host(td_str_t v, td_str_t *host, int default_port, int *port) {
    *host = v;
    *port = default_port;
    if (!v.len)
        return 0;
    const char *end = v.p + v.len, *close = v.p[0] == '[' ? memchr(v.p, ']', v.len) : NULL;
    const char *colon = memrchr(close ? close : v.p, ':', (size_t)(end - (close ? close : v.p)));
    *host = (td_str_t){v.p, colon ? (size_t)(colon - v.p) : v.len};
    *port = default_port;
    if (!colon)
        return 0;
    long n = 0;
    for (const char *p = colon + 1; p < end; p++) {
        if (*p < '0' || *p > '9' || (n = n * 10 + (*p - '0')) > 65535)
            return -1;
    }
    if (colon + 1 == end || n == 0)
        return -1;
    *port = (int)n;
    return 0;
}

static int host_is(td_str_t h, const char *name) {
    return h.len == strlen(name) && strncasecmp(h.p, name, h.len) == 0;
}

/* Without a token, anyone who can make a browser send a request here controls td: a page on
 * attacker.example whose name re-resolves to 127.0.0.1 (DNS rebinding) sends Host:
 * attacker.example, and any page can send a cross-origin "simple" PUT (text/plain, no
 * preflight). So the Host must name this admin address (as bound, the address the client
 * reached, or a loopback name with the bound port) and an Origin, when sent, must be that same
 * host and port. Browsers always send Host, so a request without one (HTTP/1.0) is not from a
 * page. Returns NULL when the request may go on, else the refusal (status in *status). */
static const char *foreign_request(const admin_conn_t *c, const td_http1_request_t *req,
                                   td_str_t authority, int default_port, int *status) {
    td_str_t origin = {NULL, 0}, host_field = {NULL, 0};
    for (size_t i = 0; i < req->num_headers; i++) {
        if (td_http1_name_is(req->headers[i].name, "origin"))
            origin = req->headers[i].value;
        else if (td_http1_name_is(req->headers[i].name, "host"))
            host_field = req->headers[i].value;
    }
    if (authority.p)
        host_field = authority; /* RFC 9112 §3.2.2: it replaces the Host field */
    if (!host_field.p && !origin.p)
        return NULL;
    td_str_t host;
    int port;
    *status = 421;
    if (split_host(host_field, &host, default_port, &port) < 0 || port != bound_port ||
        !(host_is(host, "localhost") || host_is(host, "127.0.0.1") || host_is(host, "[::1]") ||
          host_is(host, bound_host) || host_is(host, c->local_ip)))
        return "the Host header does not name this admin address (use 127.0.0.1 or localhost "
               "with its port, or set admin.token to use other names)";
    if (!origin.p)
        return NULL;
    *status = 403;
    td_str_t ohost;
    int oport, https = origin.len > 8 && strncasecmp(origin.p, "https://", 8) == 0;
    int http = origin.len > 7 && strncasecmp(origin.p, "http://", 7) == 0;
    if (server_tls ? !https : !http && !https) /* over TLS a page of this address is https */
        return "cross-origin request refused (Origin is not this admin address)";
    td_str_t rest = {origin.p + (https ? 8 : 7), origin.len - (https ? 8u : 7u)};
    if (split_host(rest, &ohost, https ? 443 : 80, &oport) < 0 || oport != port ||
        ohost.len != host.len || strncasecmp(ohost.p, host.p, host.len) != 0)
        return "cross-origin request refused (Origin is not this admin address)";
    return NULL;
}

/* An absolute-form target ("http://host:port/path?q", which the parser has checked): its
 * authority (RFC 9112 §3.2.2: the Host of the request) and its path. The path is "/" when
 * the target has none ("http://a", "http://a?q": no admin endpoint reads the query). Returns 0,
 * or -1 for another form (origin-form "/...", "*", authority-form). */
static int absolute_form(td_str_t t, td_str_t *authority, td_str_t *path, int *default_port) {
    const char *sep = t.len > 3 && t.p[0] != '/' ? memmem(t.p, t.len, "://", 3) : NULL;
    if (!sep)
        return -1;
    *default_port = sep - t.p == 5 && strncasecmp(t.p, "https", 5) == 0 ? 443 : 80;
    const char *a = sep + 3, *end = t.p + t.len, *stop = a;
    while (stop < end && *stop != '/' && *stop != '?')
        stop++;
    *authority = (td_str_t){a, (size_t)(stop - a)};
    *path =
        stop < end && *stop == '/' ? (td_str_t){stop, (size_t)(end - stop)} : (td_str_t){"/", 1};
    return 0;
}

/* The server's own refusals (foreign Host or Origin), else the handler's answer. An
 * absolute-form target is checked by its authority and handed on in origin-form, so the
 * handler routes by its path. */
void td_admin_http_open_path(const char *path) {
    snprintf(open_path, sizeof(open_path), "%s", path ? path : "");
}

/* A GET or HEAD of the open path (its query left out). */
static int is_open(const td_http1_request_t *req, td_str_t target) {
    size_t n = strlen(open_path), tl = target.len;
    const char *q = memchr(target.p, '?', target.len);
    if (q)
        tl = (size_t)(q - target.p);
    int get = (req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0) || req->head;
    return n && get && tl == n && memcmp(target.p, open_path, n) == 0;
}

/* The connection whose request the handler is answering (td_admin_http_defer), else NULL. */
static admin_conn_t *current;

static td_admin_reply_t answer(const admin_conn_t *c, const td_http1_request_t *req,
                               td_str_t body) {
    td_http1_request_t origin_form = *req;
    td_str_t authority = {NULL, 0};
    int default_port = 80;
    if (absolute_form(req->target, &authority, &origin_form.target, &default_port) < 0)
        authority = (td_str_t){NULL, 0};
    if (!bound_token[0] && !is_open(req, origin_form.target)) {
        int status;
        const char *why = foreign_request(c, req, authority, default_port, &status);
        if (why)
            return td_admin_http_error(status, why);
    }
    int auth = authorized(req);
    td_admin_request_t r = {&origin_form, body, c->ip, auth != 0, auth == 2};
    current = (admin_conn_t *)c;
    td_admin_reply_t rep = handler(&r);
    current = NULL;
    return rep;
}

/* ---- connections */

static void resume(admin_conn_t *c);
static void timeout_cb(uv_timer_t *t);

/* Lingering close (nginx's lingering_close): after an answer that ends the connection while the
 * client may still be sending (a 413 before its body), td shuts down its write side and reads and
 * drops what comes until the client closes or ADMIN_TIMEOUT_MS pass. Closing at once with unread
 * bytes would send a reset, and the client would lose the answer it had not read yet. */
static void linger_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    admin_conn_t *c = h->data;
    *out = uv_buf_init(c->buf, (unsigned)c->cap);
}

static void linger_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    if (nread < 0)
        conn_close(s->data);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
    (void)status;
    admin_conn_t *c = req->data;
    if (c->closing)
        return;
    if (!c->buf || !c->cap ||
        uv_read_start((uv_stream_t *)&c->tcp, linger_alloc_cb, linger_read_cb) < 0)
        conn_close(c);
}

static void linger(admin_conn_t *c) {
    c->lingering = 1;
    c->len = 0;
    uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
        conn_close(c);
}

static void write_cb(uv_write_t *w, int status) {
    admin_conn_t *c = w->data;
    free(c->out);
    c->out = NULL;
    if (c->closing)
        return;
    if (status >= 0 && c->lingering) {
        linger(c);
        return;
    }
    if (status < 0 || !c->keep_alive) {
        conn_close(c);
        return;
    }
    resume(c);
}

/* td_admin_http_reply_header's line for the reply being answered, or NULL. */
static const char *extra_header;

void td_admin_http_reply_header(const char *line) {
    extra_header = line;
}

/* Replaces the plaintext c->out[0..*len) by its TLS records. Returns 0 or TD_EIO/TD_ENOMEM. */
static int tls_seal(admin_conn_t *c, size_t *len) {
    if (td_tls_write(c->tls, c->out, *len) < 0)
        return TD_EIO;
    size_t n = td_tls_pending_out(c->tls);
    char *sealed = malloc(n ? n : 1);
    if (!sealed)
        return TD_ENOMEM;
    *len = td_tls_take(c->tls, sealed, n);
    free(c->out);
    c->out = sealed;
    return 0;
}

/* A write of TLS handshake records (outside any reply): freed when done. */
typedef struct tls_write_s {
    uv_write_t req;
    char data[];
} tls_write_t;

static void tls_write_cb(uv_write_t *w, int status) {
    (void)status;
    free(w->data);
}

/* Sends what the handshake produced (or an alert). Returns 0, or -1 when the connection is to be
 * closed. */
static int tls_flush(admin_conn_t *c) {
    size_t n = td_tls_pending_out(c->tls);
    if (!n)
        return 0;
    tls_write_t *w = malloc(sizeof(*w) + n);
    if (!w)
        return -1;
    w->req.data = w;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)td_tls_take(c->tls, w->data, n));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, tls_write_cb) < 0) {
        free(w);
        return -1;
    }
    return 0;
}

static void send_reply(admin_conn_t *c, td_admin_reply_t r, int head_only) {
    const char *reason = td_http_reason(r.status);
    const char *extra = extra_header;
    extra_header = NULL; /* for this reply only */
    char head[2048];
    int hl =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                 "Connection: %s\r\n%s%s%s%s%s%s%s%s%s\r\n",
                 r.status, reason, r.type, r.len, c->keep_alive ? "keep-alive" : "close",
                 r.status == 401 ? "WWW-Authenticate: Bearer\r\n" : "", r.allow ? "Allow: " : "",
                 r.allow ? r.allow : "", r.allow ? "\r\n" : "",
                 r.csp ? "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
                         "Content-Security-Policy: "
                       : "",
                 r.csp ? r.csp : "", r.csp ? "\r\n" : "", extra ? extra : "", extra ? "\r\n" : "");
    size_t blen = head_only ? 0 : r.len;
    c->out = malloc((size_t)hl + blen);
    if (!c->out) {
        free(r.body);
        conn_close(c);
        return;
    }
    memcpy(c->out, head, (size_t)hl);
    if (blen)
        memcpy(c->out + hl, r.body, blen);
    free(r.body);
    size_t olen = (size_t)hl + blen;
    if (c->tls && tls_seal(c, &olen) < 0) {
        conn_close(c);
        return;
    }
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)olen);
    c->wreq.data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) < 0)
        conn_close(c);
}

td_admin_deferred_t *td_admin_http_defer(void) {
    if (!current || current->deferred)
        return NULL;
    td_admin_deferred_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->conn = current;
    current->deferred = d;
    return d;
}

void td_admin_http_finish(td_admin_deferred_t *d, td_admin_reply_t rep, const char *header) {
    if (header) {
        free(d->header);
        d->header = strdup(header);
    }
    admin_conn_t *c = d->conn;
    if (c && c == current) {
        /* Still inside the handler: process() sends it once the handler returned. */
        d->reply = rep;
        d->done = 1;
        return;
    }
    if (!c || c->closing) {
        free(rep.body);
    } else {
        c->deferred = NULL;
        if (rep.status >= 400)
            log_refusal(c, (td_str_t){d->method, d->method_len},
                        (td_str_t){d->target, d->target_len}, rep.status, 0);
        extra_header = d->header;
        send_reply(c, rep, d->head_only);
    }
    if (c)
        c->deferred = NULL;
    free(d->header);
    free(d);
}

/* The method and request-target of a head td's parser refused, from the raw request line at the
 * start of c->buf: the token before the first space, and what follows up to the next space or
 * line end (empty when there is none). */
static td_str_t raw_method(const admin_conn_t *c) {
    size_t m = 0;
    while (m < c->len && m < 16 && c->buf[m] > ' ' && c->buf[m] < 0x7f)
        m++;
    return (td_str_t){c->buf, m};
}

static td_str_t raw_target(const admin_conn_t *c) {
    const char *sp = c->len ? memchr(c->buf, ' ', c->len) : NULL, *end = c->buf + c->len;
    if (!sp)
        return (td_str_t){"", 0};
    const char *p = sp + 1, *q = p;
    while (q < end && *q != ' ' && *q != '\r' && *q != '\n')
        q++;
    return (td_str_t){p, (size_t)(q - p)};
}

/* Handles every complete request in the buffer, one at a time. */
static void process(admin_conn_t *c) {
    td_http1_header_t hdrs[ADMIN_MAX_HDRS];
    td_http1_request_t req;
    td_http1_limits_t lim = td_http1_default_limits();
    lim.max_headers = ADMIN_MAX_HDRS;
    if (c->deferred)
        return; /* one request at a time: the next waits for this one's reply */
    int r = td_http1_parse_request(c->buf, c->len, &lim, &req, hdrs, ADMIN_MAX_HDRS);
    if (r == TD_EAGAIN)
        return;
    if (r < 0) {
        c->keep_alive = 0;
        log_refusal(c, raw_method(c), raw_target(c), r == TD_EHDRTOOLARGE ? 431 : 400, 0);
        send_reply(c, td_admin_http_error(r == TD_EHDRTOOLARGE ? 431 : 400, "malformed request"),
                   0);
        return;
    }
    if (req.body == TD_BODY_CHUNKED) {
        c->keep_alive = 0;
        send_reply(c, td_admin_http_error(411, "send the body with Content-Length"), 0);
        return;
    }
    size_t blen = req.body == TD_BODY_LENGTH ? req.content_length : 0;
    if (blen > ADMIN_MAX_BODY) {
        c->keep_alive = 0;
        c->lingering = 1; /* the body may be on its way: the answer must not be lost to a reset */
        send_reply(c, td_admin_http_error(413, "request body over 1 MiB"), 0);
        return;
    }
    if (c->len < (size_t)r + blen)
        return; /* the body is still coming */
    c->keep_alive = req.keep_alive && !handing_off;
    td_admin_reply_t rep;
    if (handing_off &&
        !(req.head || (req.method.len == 3 && memcmp(req.method.p, "GET", 3) == 0))) {
        /* A change here would be lost: the new process took the state over already. */
        rep = td_admin_http_error(503, "td is handing over to a new process: retry");
        extra_header = "Retry-After: 1";
    } else {
        rep = answer(c, &req, (td_str_t){c->buf + r, blen});
    }
    td_admin_deferred_t *d = c->deferred;
    if (d) {
        d->head_only = req.head;
        d->method_len = req.method.len < sizeof(d->method) ? req.method.len : sizeof(d->method);
        memcpy(d->method, req.method.p, d->method_len);
        d->target_len = req.target.len < sizeof(d->target) ? req.target.len : sizeof(d->target);
        memcpy(d->target, req.target.p, d->target_len);
        size_t used = (size_t)r + blen;
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
        uv_timer_stop(&c->timer); /* waiting for td, not for the client */
        if (d->done)              /* finished inside the handler */
            td_admin_http_finish(d, d->reply, NULL);
        return;
    }
    if (rep.status >= 400)
        log_refusal(c, req.method, req.target, rep.status, is_open(&req, req.target));
    size_t used = (size_t)r + blen;
    int head_only = req.head;
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    send_reply(c, rep, head_only);
}

/* Room for at least 4 KiB more at the end of c->buf, growing it up to the largest head and a body
 * of ADMIN_MAX_BODY bytes. Returns 0, or -1 when there is none. */
static int buf_room(admin_conn_t *c) {
    if (c->cap - c->len < 4096) {
        size_t cap = c->cap ? c->cap * 2 : 16384;
        if (cap > ADMIN_MAX_BODY + 65536)
            cap = ADMIN_MAX_BODY + 65536;
        char *p = cap > c->cap ? realloc(c->buf, cap) : NULL;
        if (!p)
            return c->cap > c->len ? 0 : -1;
        c->buf = p;
        c->cap = cap;
    }
    return 0;
}

/* Decrypts what the TLS session holds into c->buf (as far as it has room) and sends what the
 * handshake answers. Returns 0, or -1 when the connection is to be closed (a TLS error: a
 * plain-HTTP request, an unknown CA on the client's side; or the client's close_notify). */
static int tls_drain(admin_conn_t *c) {
    for (;;) {
        if (buf_room(c) < 0)
            return 0; /* full: the rest stays in the session until the buffer is processed */
        long n = td_tls_read(c->tls, c->buf + c->len, c->cap - c->len);
        if (tls_flush(c) < 0)
            return -1;
        if (n > 0) {
            c->len += (size_t)n;
            continue;
        }
        if (n < 0 && n != TD_TLS_CLOSED) {
            /* A scanner or a plain-HTTP client fails every handshake alike: one line a second
             * per error, then a count. */
            char reason[TD_LOG_REASON_LEN], p[80];
            snprintf(reason, sizeof(reason), "admin: TLS handshake from a client: %s",
                     c->tls->error);
            if (td_log_reasons_take(&admin_rl, reason, td_now_ms()))
                td_info("admin: TLS from %s: %s", peer(c, p, sizeof(p)), c->tls->error);
        }
        return n == 0 ? 0 : -1;
    }
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    admin_conn_t *c = h->data;
    if (c->tls) {
        *out = uv_buf_init(cipher, sizeof(cipher));
        return;
    }
    if (c->cap - c->len < 4096) {
        /* Room for the largest head and a body of ADMIN_MAX_BODY bytes, no more. */
        size_t cap = c->cap ? c->cap * 2 : 16384;
        if (cap > ADMIN_MAX_BODY + 65536)
            cap = ADMIN_MAX_BODY + 65536;
        if (cap <= c->cap || !(c->buf = realloc(c->buf, cap))) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
        c->cap = cap;
    }
    *out = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    admin_conn_t *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (c->tls) {
        if (td_tls_feed(c->tls, cipher, (size_t)nread) < 0 || tls_drain(c) < 0) {
            conn_close(c);
            return;
        }
    } else {
        c->len += (size_t)nread;
    }
    if (c->fresh && nread > 0) {
        c->fresh = 0; /* it speaks: the request's own deadline from now */
        uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    }
    process(c);
}

static void timeout_cb(uv_timer_t *t) {
    conn_close(t->data);
}

static void resume(admin_conn_t *c) {
    uv_timer_start(&c->timer, timeout_cb,
                   handing_off ? HAND_OFF_IDLE_MS
                   : c->fresh  ? ADMIN_FIRST_BYTE_MS
                               : ADMIN_TIMEOUT_MS,
                   0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    /* Records decrypted while the buffer was full wait in the session, not on the socket. */
    if (c->tls && td_tls_has_input(c->tls) && tls_drain(c) < 0) {
        conn_close(c);
        return;
    }
    if (c->len)
        process(c);
}

/* At ADMIN_MAX_CONNS, a new connection takes the place of the oldest one that has no request
 * being handled (idle, or still sending its head or body, or lingering), as nginx and HAProxy
 * reuse idle keep-alive connections: idle sockets held open then cannot lock out /readyz and
 * the API. Returns 0 when one was closed, -1 when every connection has a request being handled
 * (the new one is refused). */
static int evict_oldest_idle(const admin_conn_t *newest) {
    admin_conn_t *oldest = NULL;
    for (admin_conn_t *o = conns; o; o = o->next) /* newest first: the last match is the oldest */
        if (o != newest && !o->closing && !o->deferred && !o->out && o != current)
            oldest = o;
    if (!oldest)
        return -1;
    char reason[TD_LOG_REASON_LEN], p[80];
    snprintf(reason, sizeof(reason), "admin: %d connections: closed the oldest idle one",
             ADMIN_MAX_CONNS);
    if (td_log_reasons_take(&admin_rl, reason, td_now_ms()))
        td_warn("admin: %d connections: closed the oldest idle one from %s", ADMIN_MAX_CONNS,
                peer(oldest, p, sizeof(p)));
    conn_close(oldest);
    return 0;
}

/* The address of `sa` (IPv4 or IPv6, without brackets) into ip[cap] and its port. */
static void addr_name(const struct sockaddr_storage *sa, char *ip, size_t cap, int *port) {
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
        uv_ip6_name(a, ip, cap);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
        uv_ip4_name(a, ip, cap);
        *port = ntohs(a->sin_port);
    }
}

static void on_conn(uv_stream_t *srv, int status) {
    if (status < 0)
        return;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    num_conns++;
    c->next = conns;
    conns = c;
    c->fresh = 1;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0)
        addr_name(&ss, c->ip, sizeof(c->ip), &c->port);
    /* Connections being closed still count until their close callback: the limit counts open
     * ones. */
    int open = 0;
    for (admin_conn_t *o = conns; o; o = o->next)
        open += !o->closing;
    if (open > ADMIN_MAX_CONNS && evict_oldest_idle(c) < 0) {
        conn_close(c);
        return;
    }
    sl = sizeof(ss);
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            char a[48] = "";
            uv_ip6_name((struct sockaddr_in6 *)&ss, a, sizeof(a));
            snprintf(c->local_ip, sizeof(c->local_ip), "[%s]", a);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, c->local_ip, sizeof(c->local_ip));
        }
    }
    if (server_tls) {
        c->tls = calloc(1, sizeof(*c->tls));
        if (!c->tls || td_tls_accept(c->tls, server_tls) < 0) {
            free(c->tls);
            c->tls = NULL;
            conn_close(c);
            return;
        }
    }
    resume(c);
}

int td_admin_http_listen(uv_loop_t *loop, const td_addr_t *address, const char *token,
                         td_admin_handler_fn *fn, char *err, size_t errlen) {
    handler = fn;
    snprintf(bound_token, sizeof(bound_token), "%s", token ? token : "");
    const char *colon = strrchr(address->text, ':');
    size_t hl = colon ? (size_t)(colon - address->text) : strlen(address->text);
    snprintf(bound_host, sizeof(bound_host), "%.*s", (int)hl, address->text);
    bound_port = colon ? atoi(colon + 1) : 0;
    uv_tcp_init(loop, &server);
    server_open = 1;
    if (!rl_timer_open) {
        uv_timer_init(loop, &rl_timer);
        uv_timer_start(&rl_timer, rl_flush_cb, TD_LOG_LIMIT_MS, TD_LOG_LIMIT_MS);
        uv_unref((uv_handle_t *)&rl_timer); /* it never keeps the loop alive by itself */
        rl_timer_open = 1;
    }
    int r;
    if (adopt_fd >= 0) {
        /* Already bound and listening in the process before: its queued connections are ours. */
        r = uv_tcp_open(&server, adopt_fd);
        if (r < 0)
            close(adopt_fd);
        adopt_fd = -1;
    } else {
        r = uv_tcp_bind(&server, (const struct sockaddr *)&address->sa, 0);
    }
    if (r == 0)
        r = uv_listen((uv_stream_t *)&server, 128, on_conn);
    if (r < 0) {
        snprintf(err, errlen, "cannot listen on %s (admin): %s", address->text, uv_strerror(r));
        return TD_EIO;
    }
    return 0;
}

int td_admin_http_set_tls(td_tls_server_t *tls) {
    if (tls)
        td_tls_server_retain(tls);
    if (server_tls)
        td_tls_server_release(server_tls);
    server_tls = tls;
    return 0;
}

int td_admin_http_set_token(const char *token) {
    if (!token || !token[0])
        return bound_token[0] != 0;
    snprintf(bound_token, sizeof(bound_token), "%s", token);
    return 0;
}

int td_admin_http_set_read_token(const char *token) {
    if (!token || !token[0])
        return bound_read_token[0] != 0;
    snprintf(bound_read_token, sizeof(bound_read_token), "%s", token);
    return 0;
}

void td_admin_http_adopt(int fd) {
    adopt_fd = fd;
}

int td_admin_http_fd(void) {
    uv_os_fd_t fd;
    if (!server_open || uv_fileno((const uv_handle_t *)&server, &fd) < 0)
        return -1;
    return fd;
}

void td_admin_http_hand_off(void) {
    if (server_open) {
        uv_close((uv_handle_t *)&server, NULL); /* the new process has the socket */
        server_open = 0;
    }
    handing_off = 1;
    for (admin_conn_t *c = conns; c; c = c->next)
        if (!c->closing && !c->deferred && !c->out && !c->len && !c->lingering)
            uv_timer_start(&c->timer, timeout_cb, HAND_OFF_IDLE_MS, 0);
}

void td_admin_http_stop(void) {
    if (server_open) {
        uv_close((uv_handle_t *)&server, NULL);
        server_open = 0;
    }
    if (rl_timer_open) {
        td_log_reasons_flush(&admin_rl, td_now_ms() + TD_LOG_LIMIT_MS); /* the last counts */
        uv_close((uv_handle_t *)&rl_timer, NULL);
        rl_timer_open = 0;
    }
    for (admin_conn_t *c = conns; c; c = c->next)
        conn_close(c);
    td_admin_http_set_tls(NULL);
}
