#include "td/rewrite.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "td/http1.h"

/* RFC 9110 §15: the codes td, its admin API and its demo backend send or pass on. */
static const struct {
    int status;
    const char *reason;
} reasons[] = {
    {100, "Continue"},
    {101, "Switching Protocols"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {303, "See Other"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {421, "Misdirected Request"},
    {426, "Upgrade Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

const char *td_http_reason(int status) {
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].status == status)
            return reasons[i].reason;
    return "Status";
}

/* ---------------------------------------------------------------------------------------------
 * Head rewriting. Output goes through add_str, which marks an overflow by moving p past end. */

static void add_str(char **p, const char *end, const char *s, size_t n) {
    if (*p + n <= end) {
        memcpy(*p, s, n);
        *p += n;
    } else {
        *p = (char *)end + 1;
    }
}
#define ADD_LIT(pp, e, lit) add_str(pp, e, lit, sizeof(lit) - 1)
#define ADD_STR(pp, e, s) add_str(pp, e, (s).p, (s).len)

int td_rewrite_hop_by_hop(td_str_t n) {
    switch (n.len) {
    case 2:
        return td_http1_name_is(n, "te");
    case 7:
        return td_http1_name_is(n, "upgrade") || td_http1_name_is(n, "trailer");
    case 10:
        return td_http1_name_is(n, "connection") || td_http1_name_is(n, "keep-alive");
    case 16:
        return td_http1_name_is(n, "proxy-connection");
    case 17:
        return td_http1_name_is(n, "transfer-encoding");
    default:
        return 0;
    }
}

/* 1 when `name` is listed in the Connection value `conn` and may be removed as hop-by-hop.
 * Framing fields and Host are never removed that way: "Connection: Content-Length" would
 * otherwise strip the length while the body is still forwarded, and the backend would read the
 * body as a request of its own (request smuggling). */
static int connection_listed(td_str_t conn, td_str_t name) {
    char lower[64];
    if (!conn.len || name.len >= sizeof(lower))
        return 0;
    if ((name.len == 14 && td_http1_name_is(name, "content-length")) ||
        (name.len == 4 && td_http1_name_is(name, "host")))
        return 0;
    for (size_t i = 0; i < name.len; i++) {
        char ch = name.p[i];
        lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    lower[name.len] = 0;
    return td_http1_list_has(conn, lower);
}

static td_str_t find_header(const td_http1_header_t *h, size_t n, const char *lower) {
    size_t len = strlen(lower);
    for (size_t i = 0; i < n; i++)
        if (h[i].name.len == len && td_http1_name_is(h[i].name, lower))
            return h[i].value;
    return (td_str_t){NULL, 0};
}

int td_rewrite_preview_field(td_str_t n, const char *header) {
    size_t hl = strlen(header);
    return (n.len == hl && strncasecmp(n.p, header, hl) == 0) ||
           (n.len == hl + 6 && strncasecmp(n.p, header, hl) == 0 &&
            strncasecmp(n.p + hl, "-Token", 6) == 0);
}

int td_rewrite_absolute_form(td_str_t target, td_str_t *authority, td_str_t *rest) {
    const char *scheme_end =
        target.len > 7 && target.p[0] != '/' ? memmem(target.p, target.len, "://", 3) : NULL;
    if (!scheme_end)
        return 0;
    const char *a = scheme_end + 3, *tend = target.p + target.len;
    const char *slash = memchr(a, '/', (size_t)(tend - a));
    const char *q = memchr(a, '?', (size_t)(tend - a));
    const char *stop = slash && (!q || slash < q) ? slash : q ? q : tend;
    *authority = (td_str_t){a, (size_t)(stop - a)};
    *rest = (td_str_t){stop, (size_t)(tend - stop)};
    return 1;
}

/* Field lines that pass through unchanged are copied as they came, one copy per run of
 * consecutive kept lines (lines are contiguous in the buffer): a kept line opens or extends the
 * run; flush_fields copies it up to `stop` (the start of a line not kept, or the head's final
 * CRLF). */
static void keep_field(const char **run, td_str_t name) {
    if (!*run)
        *run = name.p;
}

static void flush_fields(const char **run, char **p, const char *end, const char *stop) {
    if (*run) {
        add_str(p, end, *run, (size_t)(stop - *run));
        *run = NULL;
    }
}

/* "Content-Length: N" as one field: identical values sent as a list or in several field lines
 * are merged (RFC 9110 §8.6), so the next hop never has to choose between them. */
static void add_content_length(char **p, const char *end, uint64_t n) {
    char f[48];
    int fl = snprintf(f, sizeof(f), "Content-Length: %llu\r\n", (unsigned long long)n);
    add_str(p, end, f, (size_t)fl);
}

int td_rewrite_request(const td_rewrite_request_t *r, char *out, size_t cap) {
    const td_http1_request_t *req = r->req;
    char *p = out, *end = out + cap;
    /* absolute-form ("GET http://example.com/x"): the target's authority is the host (RFC 9112
     * §3.2.2) and the upstream gets origin-form, so Host and target can never disagree. */
    td_str_t target = req->target, authority = {NULL, 0};
    int absolute = td_rewrite_absolute_form(req->target, &authority, &target);
    ADD_STR(&p, end, req->method);
    ADD_LIT(&p, end, " ");
    if (absolute && (!target.len || target.p[0] != '/'))
        ADD_LIT(&p, end, "/"); /* "http://a" or "http://a?q" */
    ADD_STR(&p, end, target);
    ADD_LIT(&p, end, " HTTP/1.1\r\n");
    td_str_t host = authority.len ? authority : req->host;
    td_str_t conn = {NULL, 0};
    if (req->conn_flags & TD_CONN_OTHER)
        conn = find_header(req->headers, req->num_headers, "connection");
    td_str_t xff = {NULL, 0};
    const char *run = NULL;
    for (size_t i = 0; i < req->num_headers; i++) {
        td_str_t n = req->headers[i].name;
        int drop = td_rewrite_hop_by_hop(n) ||
                   ((req->conn_flags & TD_CONN_OTHER) && connection_listed(conn, n)) ||
                   (r->preview_header && td_rewrite_preview_field(n, r->preview_header)) ||
                   (n.len == 17 && td_http1_name_is(n, "x-forwarded-proto")) ||
                   (n.len == 16 && td_http1_name_is(n, "x-forwarded-host")) ||
                   (authority.len && n.len == 4 && td_http1_name_is(n, "host")) ||
                   (req->content_length_repeated && n.len == 14 &&
                    td_http1_name_is(n, "content-length")) ||
                   (r->drop_expect && n.len == 6 && td_http1_name_is(n, "expect"));
        if (!drop && n.len == 15 && td_http1_name_is(n, "x-forwarded-for")) {
            xff = req->headers[i].value; /* appended to below */
            drop = 1;
        }
        if (drop)
            flush_fields(&run, &p, end, n.p);
        else
            keep_field(&run, n);
    }
    flush_fields(&run, &p, end, r->head_end - 2);
    if (r->te_trailers) {
        for (size_t i = 0; i < req->num_headers; i++)
            if (req->headers[i].name.len == 2 && td_http1_name_is(req->headers[i].name, "te") &&
                td_http1_list_has(req->headers[i].value, "trailers")) {
                ADD_LIT(&p, end, "TE: trailers\r\n");
                break;
            }
    }
    if (req->body == TD_BODY_CHUNKED)
        ADD_LIT(&p, end, "Transfer-Encoding: chunked\r\n");
    if (req->content_length_repeated)
        add_content_length(&p, end, req->content_length);
    if (r->upgrade) {
        td_str_t up = find_header(req->headers, req->num_headers, "upgrade");
        ADD_LIT(&p, end, "Connection: upgrade\r\nUpgrade: ");
        ADD_STR(&p, end, up);
        ADD_LIT(&p, end, "\r\n");
    }
    if (authority.len) {
        ADD_LIT(&p, end, "Host: ");
        ADD_STR(&p, end, authority);
        ADD_LIT(&p, end, "\r\n");
    } else if (!req->host.len && r->default_host) {
        /* HTTP/1.0 without Host: an HTTP/1.1 request needs one (RFC 9112 §3.2). */
        ADD_LIT(&p, end, "Host: ");
        add_str(&p, end, r->default_host, strlen(r->default_host));
        ADD_LIT(&p, end, "\r\n");
    }
    ADD_LIT(&p, end, "X-Forwarded-For: ");
    if (xff.len) {
        ADD_STR(&p, end, xff);
        ADD_LIT(&p, end, ", ");
    }
    add_str(&p, end, r->client_ip, strlen(r->client_ip));
    if (r->https)
        ADD_LIT(&p, end, "\r\nX-Forwarded-Proto: https\r\n");
    else
        ADD_LIT(&p, end, "\r\nX-Forwarded-Proto: http\r\n");
    if (host.len) {
        ADD_LIT(&p, end, "X-Forwarded-Host: ");
        ADD_STR(&p, end, host);
        ADD_LIT(&p, end, "\r\n");
    }
    ADD_LIT(&p, end, "\r\n");
    if (p > end)
        return -1;
    return (int)(p - out);
}

int td_rewrite_response(const td_rewrite_response_t *r, char *out, size_t cap) {
    const td_http1_response_t *resp = r->resp;
    char *p = out, *end = out + cap;
    char line[13] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + resp->status / 100 % 10);
    line[10] = (char)('0' + resp->status / 10 % 10);
    line[11] = (char)('0' + resp->status % 10);
    add_str(&p, end, line, sizeof(line));
    ADD_STR(&p, end, resp->reason);
    ADD_LIT(&p, end, "\r\n");
    td_str_t conn = {NULL, 0};
    if (resp->conn_flags & TD_CONN_OTHER)
        conn = find_header(resp->headers, resp->num_headers, "connection");
    int switching = resp->status == 101;
    const char *run = NULL;
    for (size_t i = 0; i < resp->num_headers; i++) {
        td_str_t h = resp->headers[i].name;
        /* Upgrade stays on a 101: it names the protocol switched to. Transfer-Encoding passes
         * as it came (with every coding it lists) when the chunked body is passed through. */
        int keep_te = r->pass_te && h.len == 17 && td_http1_name_is(h, "transfer-encoding");
        int drop = !(switching && h.len == 7 && td_http1_name_is(h, "upgrade")) && !keep_te &&
                   (td_rewrite_hop_by_hop(h) ||
                    ((resp->conn_flags & TD_CONN_OTHER) && connection_listed(conn, h)) ||
                    (resp->content_length_repeated && h.len == 14 &&
                     td_http1_name_is(h, "content-length")));
        if (drop)
            flush_fields(&run, &p, end, h.p);
        else
            keep_field(&run, h);
    }
    flush_fields(&run, &p, end, r->head_end - 2);
    if (resp->content_length_repeated)
        add_content_length(&p, end, resp->content_length);
    if (resp->status >= 200) {
        if (r->set_cookie)
            add_str(&p, end, r->set_cookie, strlen(r->set_cookie));
        if (!r->keep_alive)
            ADD_LIT(&p, end, "Connection: close\r\n");
        else if (r->minor == 0)
            ADD_LIT(&p, end, "Connection: keep-alive\r\n");
    } else if (switching) {
        ADD_LIT(&p, end, "Connection: upgrade\r\n");
    }
    ADD_LIT(&p, end, "\r\n");
    if (p > end)
        return -1;
    return (int)(p - out);
}

int td_rewrite_set_cookie(const td_rewrite_cookie_t *c, char *out, size_t cap) {
    static const char *const same_site[] = {"Lax", "Strict", "None"};
    int ss = c->same_site >= 0 && c->same_site < 3 ? c->same_site : 0;
    int n = snprintf(out, cap, "Set-Cookie: %s=%s; Max-Age=%d; Path=/%s%s; SameSite=%s\r\n",
                     c->name, c->value, c->max_age_s, c->http_only ? "; HttpOnly" : "",
                     c->secure ? "; Secure" : "", same_site[ss]);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}
