/* Unit tests of the HTTP/1.x parser (src/http1.c): valid messages, the smuggling vectors RFC 9112
 * tells a proxy to refuse, limits, and split independence (every message is also fed byte by byte,
 * each prefix in a heap buffer of exactly its size so that ASan sees any over-read). */
#include "td/http1.h"

#include <stdlib.h>

#include "t.h"

#define NH 128

static td_http1_header_t hdrs[NH];

static int str_is(td_str_t s, const char *lit) {
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

static int off(const char *base, td_str_t s) {
    return s.p ? (int)(s.p - base) : -1;
}

static int same_str(const char *a, td_str_t x, const char *b, td_str_t y) {
    return x.len == y.len && (x.len == 0 || off(a, x) == off(b, y));
}

static int same_request(const char *a, const td_http1_request_t *x, const char *b,
                        const td_http1_request_t *y) {
    if (!same_str(a, x->method, b, y->method) || !same_str(a, x->target, b, y->target) ||
        !same_str(a, x->host, b, y->host) || x->minor_version != y->minor_version ||
        x->num_headers != y->num_headers || x->body != y->body ||
        x->content_length != y->content_length || x->conn_flags != y->conn_flags ||
        x->keep_alive != y->keep_alive || x->expect_continue != y->expect_continue ||
        x->upgrade != y->upgrade || x->head != y->head)
        return 0;
    for (size_t i = 0; i < x->num_headers; i++)
        if (!same_str(a, x->headers[i].name, b, y->headers[i].name) ||
            !same_str(a, x->headers[i].value, b, y->headers[i].value))
            return 0;
    return 1;
}

static int same_response(const char *a, const td_http1_response_t *x, const char *b,
                         const td_http1_response_t *y) {
    if (x->status != y->status || !same_str(a, x->reason, b, y->reason) ||
        x->minor_version != y->minor_version || x->num_headers != y->num_headers ||
        x->body != y->body || x->content_length != y->content_length ||
        x->conn_flags != y->conn_flags || x->keep_alive != y->keep_alive)
        return 0;
    for (size_t i = 0; i < x->num_headers; i++)
        if (!same_str(a, x->headers[i].name, b, y->headers[i].name) ||
            !same_str(a, x->headers[i].value, b, y->headers[i].value))
            return 0;
    return 1;
}

/* Parses every prefix of msg[0..len): while the head is incomplete the parser must say TD_EAGAIN,
 * and once a prefix gives a result every longer prefix must give the same one (for a valid head:
 * exactly from the prefix that ends with the head). Returns the result for the whole message. */
static int split_request(const char *msg, size_t len, const td_http1_limits_t *lim) {
    static td_http1_header_t hf[NH], hp[NH];
    td_http1_request_t full, part;
    int want = td_http1_parse_request(msg, len, lim, &full, hf, NH);
    int settled = 0, ok = 1;
    for (size_t k = 0; k <= len && ok; k++) {
        char *b = malloc(k ? k : 1);
        memcpy(b, msg, k);
        int got = td_http1_parse_request(b, k, lim, &part, hp, NH);
        if (want >= 0)
            ok = (k < (size_t)want) ? got == TD_EAGAIN
                                    : got == want && same_request(msg, &full, b, &part);
        else if (got != TD_EAGAIN || settled)
            ok = got == want, settled = 1;
        if (!ok)
            fprintf(stderr, "split at %zu of %zu: got %d, want %d\n", k, len, got, want);
        free(b);
    }
    T_CHECK(ok);
    return want;
}

static int split_response(const char *msg, size_t len, int head) {
    static td_http1_header_t hf[NH], hp[NH];
    td_http1_response_t full, part;
    int want = td_http1_parse_response(msg, len, head, NULL, &full, hf, NH);
    int settled = 0, ok = 1;
    for (size_t k = 0; k <= len && ok; k++) {
        char *b = malloc(k ? k : 1);
        memcpy(b, msg, k);
        int got = td_http1_parse_response(b, k, head, NULL, &part, hp, NH);
        if (want >= 0)
            ok = (k < (size_t)want) ? got == TD_EAGAIN
                                    : got == want && same_response(msg, &full, b, &part);
        else if (got != TD_EAGAIN || settled)
            ok = got == want, settled = 1;
        if (!ok)
            fprintf(stderr, "split at %zu of %zu: got %d, want %d\n", k, len, got, want);
        free(b);
    }
    T_CHECK(ok);
    return want;
}

static int request(const char *msg, td_http1_request_t *r) {
    return td_http1_parse_request(msg, strlen(msg), NULL, r, hdrs, NH);
}

/* ---- requests that must parse ---- */

static void test_get(void) {
    const char *m = "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n"
                    "Accept:*/*\r\n\r\n";
    td_http1_request_t r;
    T_EQ_INT(request(m, &r), strlen(m));
    T_CHECK(str_is(r.method, "GET"));
    T_CHECK(str_is(r.target, "/index.html?q=1"));
    T_EQ_INT(r.minor_version, 1);
    T_EQ_INT(r.num_headers, 3);
    T_CHECK(r.headers == hdrs);
    T_CHECK(str_is(r.headers[0].name, "Host"));
    T_CHECK(str_is(r.headers[0].value, "example.com"));
    T_CHECK(str_is(r.headers[2].name, "Accept"));
    T_CHECK(str_is(r.headers[2].value, "*/*"));
    T_CHECK(str_is(r.host, "example.com"));
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_EQ_INT(r.keep_alive, 1);
    T_EQ_INT(r.conn_flags, 0);
    T_EQ_INT(r.head, 0);
    T_EQ_INT(r.upgrade, 0);
    T_EQ_INT(r.expect_continue, 0);
    /* zero-copy: the strings point into the buffer */
    T_CHECK(r.method.p == m && r.target.p == m + 4);
}

static void test_values_trimmed(void) {
    const char *m = "GET / HTTP/1.1\r\nHost:   a.example:8080 \t\r\nX-Empty:\r\nX-Ws: \t \r\n"
                    "X-Obs: caf\xc3\xa9 \"q\"\t(x)\r\n\r\n";
    td_http1_request_t r;
    T_EQ_INT(request(m, &r), strlen(m));
    T_CHECK(str_is(r.host, "a.example:8080"));
    T_CHECK(str_is(r.headers[1].value, ""));
    T_CHECK(str_is(r.headers[2].value, ""));
    T_CHECK(str_is(r.headers[3].value, "caf\xc3\xa9 \"q\"\t(x)"));
}

static void test_post_length(void) {
    const char *m = "POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
    td_http1_request_t r;
    T_EQ_INT(request(m, &r), strlen(m) - 5);
    T_EQ_INT(r.body, TD_BODY_LENGTH);
    T_EQ_INT(r.content_length, 5);

    T_EQ_INT(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", &r), 47);
    T_EQ_INT(r.body, TD_BODY_LENGTH);
    T_EQ_INT(r.content_length, 0);

    /* identical values, as a list or repeated, count as one (RFC 9110 §8.6) */
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", &r) > 0);
    T_EQ_INT(r.content_length, 5);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n",
                    &r) > 0);
    T_EQ_INT(r.content_length, 7);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n", &r) > 0);
    T_EQ_INT(r.content_length, 7);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n",
                    &r) > 0);
    T_CHECK(r.content_length == 9223372036854775807ull);
}

static void test_chunked_request(void) {
    const char *m = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    td_http1_request_t r;
    int n = request(m, &r);
    T_EQ_INT(n, 58);
    T_EQ_INT(r.body, TD_BODY_CHUNKED);
    td_http1_chunked_t c = {0};
    td_str_t spans[8];
    size_t ns;
    int done;
    long used = td_http1_chunked_feed(&c, m + n, strlen(m) - (size_t)n, &done, spans, 8, &ns);
    T_EQ_INT(used, strlen(m) - (size_t)n);
    T_EQ_INT(done, 1);
    T_EQ_INT(ns, 2);
    T_CHECK(str_is(spans[0], "hello") && str_is(spans[1], " world"));

    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", &r) >
            0);
    T_EQ_INT(r.body, TD_BODY_CHUNKED);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n",
                    &r) > 0);
    T_EQ_INT(r.body, TD_BODY_CHUNKED);
    T_CHECK(
        request("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: x;a=b;c=\"d,e\" ,chunked\r\n\r\n",
                &r) > 0);
    T_EQ_INT(r.body, TD_BODY_CHUNKED);
}

static void test_pipelined(void) {
    const char *m = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\n"
                    "Content-Length: 2\r\n\r\nxyGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t len = strlen(m), at = 0;
    td_http1_request_t r;
    int n = td_http1_parse_request(m, len, NULL, &r, hdrs, NH);
    T_EQ_INT(n, 28);
    T_CHECK(str_is(r.target, "/a"));
    at += (size_t)n;
    n = td_http1_parse_request(m + at, len - at, NULL, &r, hdrs, NH);
    T_EQ_INT(n, 48);
    T_CHECK(str_is(r.target, "/b"));
    T_EQ_INT(r.content_length, 2);
    at += (size_t)n + 2;
    n = td_http1_parse_request(m + at, len - at, NULL, &r, hdrs, NH);
    T_EQ_INT(n, 28);
    T_CHECK(str_is(r.target, "/c"));
    T_EQ_INT(at + (size_t)n, len);
    /* RFC 9112 §2.2: empty lines before a request line are skipped */
    T_EQ_INT(request("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", &r), 31);
    T_CHECK(str_is(r.method, "GET"));
}

static void test_connection(void) {
    td_http1_request_t r;
    T_CHECK(request("GET / HTTP/1.0\r\n\r\n", &r) > 0);
    T_EQ_INT(r.minor_version, 0);
    T_EQ_INT(r.keep_alive, 0);
    T_EQ_INT(r.host.len, 0);
    T_CHECK(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r) > 0);
    T_EQ_INT(r.keep_alive, 1);
    T_EQ_INT(r.conn_flags, TD_CONN_KEEPALIVE);
    T_CHECK(request("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", &r) > 0);
    T_EQ_INT(r.keep_alive, 0);
    T_CHECK(request("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", &r) > 0);
    T_EQ_INT(r.keep_alive, 0);
    T_EQ_INT(r.conn_flags, TD_CONN_CLOSE);
    T_CHECK(request("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", &r) > 0);
    T_EQ_INT(r.keep_alive, 1);
    T_CHECK(request("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                    "Connection: keep-alive, Upgrade,,X-Foo\r\n\r\n",
                    &r) > 0);
    T_EQ_INT(r.upgrade, 1);
    T_EQ_INT(r.conn_flags, TD_CONN_KEEPALIVE | TD_CONN_UPGRADE | TD_CONN_OTHER);
    T_CHECK(request("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", &r) > 0);
    T_EQ_INT(r.upgrade, 0);
    T_CHECK(request("GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", &r) > 0);
    T_EQ_INT(r.upgrade, 0);
    /* RFC 9110 §7.8: Upgrade is ignored in HTTP/1.0 */
    T_CHECK(request("GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", &r) > 0);
    T_EQ_INT(r.upgrade, 0);
    T_CHECK(
        request("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
                &r) > 0);
    T_EQ_INT(r.expect_continue, 1);
    T_CHECK(request("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", &r) > 0);
    T_EQ_INT(r.head, 1);
}

static void test_targets(void) {
    td_http1_request_t r;
    T_CHECK(request("GET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n", &r) > 0);
    T_CHECK(str_is(r.target, "http://example.com/x?y"));
    T_CHECK(request("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &r) > 0);
    T_CHECK(request("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &r) > 0);
    T_CHECK(request("CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", &r) > 0);
    T_CHECK(str_is(r.host, "[::1]:443"));
    T_CHECK(request("PURGE-X /a/b%20c HTTP/1.1\r\nHost: h\r\n\r\n", &r) > 0);
    T_CHECK(str_is(r.method, "PURGE-X"));
    T_CHECK(request("GET / HTTP/1.1\r\nHost:\r\n\r\n", &r) > 0); /* empty Host is allowed */
}

/* Every valid message: accepted, and the same result however it is split. */
static const char *valid_requests[] = {
    "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    "POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    "GET http://h/ HTTP/1.1\r\nHost: h\r\nX: \t v \t\r\n\r\n",
    "PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
};

/* ---- requests that must be refused ---- */

typedef struct bad_s {
    const char *why;
    const char *msg;
    int err;
    size_t len;
} bad_t;

/* sizeof, not strlen: some vectors hold NUL bytes */
#define B(why, msg, err)                                                                           \
    { why, msg, err, sizeof(msg) - 1 }

static const bad_t bad_requests[] = {
    /* framing: request smuggling vectors */
    B("CL+TE",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      TD_EBADMSG),
    B("TE+CL",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
      TD_EBADMSG),
    B("CL+TE identity",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: "
      "identity\r\n\r\n",
      TD_EBADMSG),
    B("differing CL",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", TD_EBADMSG),
    B("differing CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
      TD_EBADMSG),
    B("CL empty element", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\n", TD_EBADMSG),
    B("CL leading comma", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: ,5\r\n\r\n", TD_EBADMSG),
    B("CL empty", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", TD_EBADMSG),
    B("CL negative", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", TD_EBADMSG),
    B("CL plus", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", TD_EBADMSG),
    B("CL hex", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n", TD_EBADMSG),
    B("CL letters", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", TD_EBADMSG),
    B("CL two numbers", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\n", TD_EBADMSG),
    B("CL decimal", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5.0\r\n\r\n", TD_EBADMSG),
    B("CL overflow", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775808\r\n\r\n",
      TD_EBADMSG),
    B("CL huge", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      TD_EBADMSG),
    B("TE not chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
      TD_EBADMSG),
    B("TE chunked not last",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", TD_EBADMSG),
    B("TE chunked then line",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
      "Transfer-Encoding: identity\r\n\r\n",
      TD_EBADMSG),
    B("TE chunked twice",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", TD_EBADMSG),
    B("TE chunked twice lines",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
      "Transfer-Encoding: chunked\r\n\r\n",
      TD_EBADMSG),
    B("TE chunked params", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;a=b\r\n\r\n",
      TD_EBADMSG),
    B("TE empty element", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked\r\n\r\n",
      TD_EBADMSG),
    B("TE xchunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
      TD_EBADMSG),
    B("TE chunked junk", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked x\r\n\r\n",
      TD_EBADMSG),
    B("TE quoted", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
      TD_EBADMSG),
    B("TE empty", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", TD_EBADMSG),
    B("TE vtab",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0b"
      "chunked\r\n\r\n",
      TD_EBADMSG),
    B("TE in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", TD_EBADMSG),
    B("TE space before colon", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
      TD_EBADMSG),
    B("CL tab before colon", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 5\r\n\r\n",
      TD_EBADMSG),
    /* line structure */
    B("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", TD_EBADMSG),
    B("obs-fold tab", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", TD_EBADMSG),
    B("obs-fold TE", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
      TD_EBADMSG),
    B("space before first field", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", TD_EBADMSG),
    B("bare CR in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", TD_EBADMSG),
    B("bare CR line end", "GET / HTTP/1.1\r\nHost: h\rX: a\r\n\r\n", TD_EBADMSG),
    B("bare CR request line", "GET / HTTP/1.1\rHost: h\r\n\r\n", TD_EBADMSG),
    B("bare CR end of head", "GET / HTTP/1.1\r\nHost: h\r\n\rX", TD_EBADMSG),
    B("bare CR leading", "\rGET / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("bare LF request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", TD_EBADMSG),
    B("bare LF field", "GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n", TD_EBADMSG),
    B("bare LF end", "GET / HTTP/1.1\r\nHost: h\r\n\n", TD_EBADMSG),
    B("bare LF only", "GET / HTTP/1.1\nHost: h\n\n", TD_EBADMSG),
    B("bare LF leading", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", TD_EBADMSG),
    B("SOH in value",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01"
      "b\r\n\r\n",
      TD_EBADMSG),
    B("DEL in value",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f"
      "b\r\n\r\n",
      TD_EBADMSG),
    B("ESC in value", "GET / HTTP/1.1\r\nHost: h\r\nX: \x1b[31m\r\n\r\n", TD_EBADMSG),
    B("NUL in long value",
      "GET / HTTP/1.1\r\nHost: h\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\0b\r\n\r\n", TD_EBADMSG),
    B("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", TD_EBADMSG),
    B("space in name", "GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n", TD_EBADMSG),
    B("bad name char", "GET / HTTP/1.1\r\nHost: h\r\nX(Y): a\r\n\r\n", TD_EBADMSG),
    B("name with high byte", "GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: a\r\n\r\n", TD_EBADMSG),
    B("empty name", "GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n", TD_EBADMSG),
    B("no colon", "GET / HTTP/1.1\r\nHost: h\r\nX\r\n\r\n", TD_EBADMSG),
    /* Host */
    B("no Host in 1.1", "GET / HTTP/1.1\r\nX: a\r\n\r\n", TD_EBADMSG),
    B("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", TD_EBADMSG),
    B("two Hosts in 1.0", "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", TD_EBADMSG),
    B("Host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", TD_EBADMSG),
    B("Host with userinfo", "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", TD_EBADMSG),
    B("Host with path", "GET / HTTP/1.1\r\nHost: h/x\r\n\r\n", TD_EBADMSG),
    /* request line */
    B("double space", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("tab separator", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("trailing space", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("leading space", " GET / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("no version", "GET /\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("version 1.10", "GET / HTTP/1.10\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("version 11", "GET / HTTP/11\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("bad method char", "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("empty target", "GET  HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("control in target", "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("high byte in target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("relative target", "GET foo HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("asterisk with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("CONNECT no port", "CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("scheme without //", "GET http:x HTTP/1.1\r\nHost: h\r\n\r\n", TD_EBADMSG),
    B("garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", TD_EBADMSG),
    /* versions */
    B("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", TD_EVERSION),
    B("HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", TD_EVERSION),
    B("HTTP/3.0", "GET / HTTP/3.0\r\n", TD_EVERSION),
};

static void test_valid_split(void) {
    for (size_t i = 0; i < sizeof valid_requests / sizeof *valid_requests; i++) {
        int n = split_request(valid_requests[i], strlen(valid_requests[i]), NULL);
        if (n <= 0)
            fprintf(stderr, "valid request %zu refused: %d\n", i, n);
        T_CHECK(n > 0);
    }
}

static void test_bad_requests(void) {
    for (size_t i = 0; i < sizeof bad_requests / sizeof *bad_requests; i++) {
        const bad_t *b = &bad_requests[i];
        int n = split_request(b->msg, b->len, NULL);
        if (n != b->err)
            fprintf(stderr, "bad request \"%s\": got %d, want %d\n", b->why, n, b->err);
        T_EQ_INT(n, b->err);
    }
}

/* ---- limits: 414, 431, also on incomplete input ---- */

static void test_limits(void) {
    static char big[40000];
    td_http1_request_t r;
    td_http1_limits_t lim = td_http1_default_limits();
    T_EQ_INT(lim.max_request_line, 8192);
    T_EQ_INT(lim.max_head, 16384);
    T_EQ_INT(lim.max_headers, 100);

    /* 9000 bytes of request line and no CRLF yet: 414 without waiting */
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', 9000 - 5);
    T_EQ_INT(td_http1_parse_request(big, 9000, NULL, &r, hdrs, NH), TD_EURITOOLONG);
    T_EQ_INT(td_http1_parse_request(big, 8192, NULL, &r, hdrs, NH), TD_EAGAIN);
    T_EQ_INT(td_http1_parse_request(big, 8193, NULL, &r, hdrs, NH), TD_EURITOOLONG);
    /* a 9000-byte method is 414 too */
    memset(big, 'G', 9000);
    T_EQ_INT(td_http1_parse_request(big, 9000, NULL, &r, hdrs, NH), TD_EURITOOLONG);

    /* request line of exactly 8192 bytes is fine, 8193 is not */
    const char *tail = " HTTP/1.1\r\nHost: h\r\n\r\n";
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', 8192 - 5 - 9);
    memcpy(big + 8192 - 9, tail, strlen(tail));
    size_t n = 8192 - 9 + strlen(tail);
    T_EQ_INT(td_http1_parse_request(big, n, NULL, &r, hdrs, NH), n);
    memset(big + 5, 'a', 8192 - 5 - 8);
    memcpy(big + 8192 - 8, tail, strlen(tail));
    T_EQ_INT(td_http1_parse_request(big, n + 1, NULL, &r, hdrs, NH), TD_EURITOOLONG);
    T_EQ_INT(td_http1_parse_request(big, 8193, NULL, &r, hdrs, NH), TD_EURITOOLONG);

    /* head over 16384 bytes, complete or not: 431 */
    memcpy(big, "GET / HTTP/1.1\r\nHost: h\r\nX: ", 28);
    memset(big + 28, 'v', 20000);
    T_EQ_INT(td_http1_parse_request(big, 20028, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    T_EQ_INT(td_http1_parse_request(big, 16384, NULL, &r, hdrs, NH), TD_EAGAIN);
    T_EQ_INT(td_http1_parse_request(big, 16385, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    memcpy(big + 20028, "\r\n\r\n", 4);
    T_EQ_INT(td_http1_parse_request(big, 20032, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    /* exactly 16384 bytes of head, CRLFCRLF included, is fine; one more is not */
    memcpy(big + 16384 - 4, "\r\n\r\n", 4);
    T_EQ_INT(td_http1_parse_request(big, 20032, NULL, &r, hdrs, NH), 16384);
    memcpy(big + 16384 - 4, "v\r\n\r", 4);
    memcpy(big + 16384, "\n", 1);
    T_EQ_INT(td_http1_parse_request(big, 20032, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);

    /* header count: the limit and the array size, whichever is smaller */
    size_t at = 0;
    at += (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < 100; i++)
        at += (size_t)sprintf(big + at, "X-%d: %d\r\n", i, i);
    memcpy(big + at, "\r\n", 2);
    T_EQ_INT(td_http1_parse_request(big, at + 2, NULL, &r, hdrs, NH), at + 2);
    T_EQ_INT(r.num_headers, 100);
    at += (size_t)sprintf(big + at, "X-100: 100\r\n");
    memcpy(big + at, "\r\n", 2);
    T_EQ_INT(td_http1_parse_request(big, at + 2, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    T_EQ_INT(td_http1_parse_request(big, at, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    const char *three = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
    T_EQ_INT(td_http1_parse_request(three, strlen(three), NULL, &r, hdrs, 2), TD_EHDRTOOLARGE);
    T_EQ_INT(td_http1_parse_request(three, strlen(three), NULL, &r, hdrs, 3), strlen(three));
    td_http1_limits_t small = {.max_request_line = 16, .max_head = 64, .max_headers = 2};
    T_EQ_INT(td_http1_parse_request(three, strlen(three), &small, &r, hdrs, NH), TD_EHDRTOOLARGE);
    T_EQ_INT(split_request(three, strlen(three), &small), TD_EHDRTOOLARGE);
    small.max_headers = 3;
    T_EQ_INT(split_request(three, strlen(three), &small), strlen(three));
    small.max_request_line = 13;
    T_EQ_INT(split_request(three, strlen(three), &small), TD_EURITOOLONG);
    small.max_request_line = 14; /* "GET / HTTP/1.1" is 14 bytes */
    T_EQ_INT(split_request(three, strlen(three), &small), strlen(three));
    small.max_head = 38;
    T_EQ_INT(split_request(three, strlen(three), &small), TD_EHDRTOOLARGE);
    small.max_head = 39;
    T_EQ_INT(split_request(three, strlen(three), &small), strlen(three));
}

/* ---- chunked decoder ---- */

/* Decodes body[0..len) feeding `step` bytes at a time (each piece in an exact heap buffer) with a
 * span array of max_spans entries. Appends data to out; returns bytes consumed or the error. */
static long dechunk(const char *body, size_t len, size_t step, size_t max_spans, char *out,
                    size_t *out_len, int *done) {
    td_http1_chunked_t c = {0};
    td_str_t spans[4];
    size_t pos = 0, ns;
    *out_len = 0;
    *done = 0;
    while (pos < len) {
        size_t n = len - pos < step ? len - pos : step;
        char *b = malloc(n);
        memcpy(b, body + pos, n);
        long r = td_http1_chunked_feed(&c, b, n, done, spans, max_spans, &ns);
        if (r >= 0) {
            for (size_t i = 0; i < ns; i++) {
                memcpy(out + *out_len, spans[i].p, spans[i].len);
                *out_len += spans[i].len;
            }
        }
        free(b);
        if (r < 0)
            return r;
        pos += (size_t)r;
        if (*done)
            break;
    }
    return (long)pos;
}

typedef struct chunk_case_s {
    const char *body;
    const char *data; /* NULL: the body is invalid */
    size_t len;
} chunk_case_t;

#define C(body, data)                                                                              \
    { body, data, sizeof(body) - 1 }

static const chunk_case_t chunk_cases[] = {
    C("0\r\n\r\n", ""),
    C("5\r\nhello\r\n0\r\n\r\n", "hello"),
    C("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"),
    C("A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
    C("a\r\n0123456789\r\n000\r\n\r\n", "0123456789"),
    C("0005\r\nhello\r\n0\r\n\r\n", "hello"),
    C("5;name=value\r\nhello\r\n0\r\n\r\n", "hello"),
    C("5 ;a\r\nhello\r\n0;b\r\n\r\n", "hello"),
    C("5\t; a = b ;c;d=\"q \\\" ;x\"\r\nhello\r\n0\r\n\r\n", "hello"),
    C("5;a=\"\"\r\nhello\r\n0\r\n\r\n", "hello"),
    C("5\r\nhello\r\n0\r\nX-Trailer: v\r\nY:\r\n\r\n", "hello"),
    C("3\r\n\r\n\r\r\n0\r\n\r\n", "\r\n\r"),
    /* invalid chunk sizes */
    C("0x5\r\nhello\r\n0\r\n\r\n", NULL),
    C("-1\r\nhello\r\n0\r\n\r\n", NULL),
    C("+5\r\nhello\r\n0\r\n\r\n", NULL),
    C("\r\nhello\r\n0\r\n\r\n", NULL),
    C(" 5\r\nhello\r\n0\r\n\r\n", NULL),
    C("g\r\n", NULL),
    C("4000000000000000\r\n", NULL), /* 2^62 */
    C("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", NULL),
    C("10000000000000005\r\nhello\r\n0\r\n\r\n", NULL),
    /* whitespace and extensions */
    C("5 \r\nhello\r\n0\r\n\r\n", NULL),
    C("5 ;\r\nhello\r\n0\r\n\r\n", NULL),
    C("5;\r\nhello\r\n0\r\n\r\n", NULL),
    C("5 junk\r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a=\r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a \r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a=b \r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a=\"b\r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a=b\x01\r\nhello\r\n0\r\n\r\n", NULL),
    C("5;a(=b\r\nhello\r\n0\r\n\r\n", NULL),
    /* line endings */
    C("5\nhello\r\n0\r\n\r\n", NULL),
    C("5\rhello\r\n0\r\n\r\n", NULL),
    C("5\r\nhello\n0\r\n\r\n", NULL),
    C("5\r\nhelloX\r\n0\r\n\r\n", NULL),
    C("5\r\nhell\r\n0\r\n\r\n", NULL),
    C("5\r\nhello\r\n0\r\n\n", NULL),
    C("5\r\nhello\r\n0\n\r\n", NULL),
    /* trailers */
    C("0\r\nX: a\r\n b\r\n\r\n", NULL),
    C("0\r\n X: a\r\n\r\n", NULL),
    C("0\r\nX : a\r\n\r\n", NULL),
    C("0\r\nX: a\0b\r\n\r\n", NULL),
    C("0\r\nX: a\nY: b\r\n\r\n", NULL),
    C("0\r\n: a\r\n\r\n", NULL),
    C("0\r\nX\r\n\r\n", NULL),
};

static void test_chunked_cases(void) {
    static char out[256];
    for (size_t i = 0; i < sizeof chunk_cases / sizeof *chunk_cases; i++) {
        const chunk_case_t *k = &chunk_cases[i];
        size_t len = k->len;
        for (size_t step = 1; step <= len; step = step == 1 ? 2 : step == 2 ? 7 : len) {
            for (size_t ms = 1; ms <= 4; ms += 3) {
                size_t out_len;
                int done;
                long r = dechunk(k->body, len, step, ms, out, &out_len, &done);
                if (k->data) {
                    int ok = r == (long)len && done && out_len == strlen(k->data) &&
                             memcmp(out, k->data, out_len) == 0;
                    if (!ok)
                        fprintf(stderr, "chunk case %zu step %zu: r=%ld done=%d\n", i, step, r,
                                done);
                    T_CHECK(ok);
                } else {
                    if (r != TD_EBADMSG)
                        fprintf(stderr, "chunk case %zu step %zu: r=%ld, want error\n", i, step, r);
                    T_EQ_INT(r, TD_EBADMSG);
                }
            }
            if (step == len)
                break;
        }
    }
}

static void test_chunked_api(void) {
    td_http1_chunked_t c = {0};
    td_str_t spans[4];
    size_t ns = 99;
    int done = 9;
    const char *b = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";

    /* stops after the end of the body */
    long r = td_http1_chunked_feed(&c, b, strlen(b), &done, spans, 4, &ns);
    T_EQ_INT(r, 26);
    T_EQ_INT(done, 1);
    T_EQ_INT(ns, 2);
    /* after the end: nothing more is consumed */
    r = td_http1_chunked_feed(&c, b + 26, strlen(b) - 26, &done, spans, 4, &ns);
    T_EQ_INT(r, 0);
    T_EQ_INT(done, 1);
    T_EQ_INT(ns, 0);

    /* a full span array stops the decoder where the next span would start */
    memset(&c, 0, sizeof c);
    r = td_http1_chunked_feed(&c, b, 26, &done, spans, 1, &ns);
    T_EQ_INT(r, 13);
    T_EQ_INT(done, 0);
    T_EQ_INT(ns, 1);
    T_CHECK(str_is(spans[0], "hello"));
    r = td_http1_chunked_feed(&c, b + 13, 13, &done, spans, 1, &ns);
    T_EQ_INT(r, 13);
    T_EQ_INT(done, 1);
    T_EQ_INT(ns, 1);
    T_CHECK(str_is(spans[0], " world"));

    /* no span array: the data is consumed unreported */
    memset(&c, 0, sizeof c);
    r = td_http1_chunked_feed(&c, b, strlen(b), &done, NULL, 0, &ns);
    T_EQ_INT(r, 26);
    T_EQ_INT(done, 1);
    T_EQ_INT(ns, 0);
    memset(&c, 0, sizeof c);
    r = td_http1_chunked_feed(&c, b, 5, &done, NULL, 0, NULL);
    T_EQ_INT(r, 5);
    T_EQ_INT(c.remaining, 3);

    /* a chunk split across feeds gives one span per feed */
    memset(&c, 0, sizeof c);
    r = td_http1_chunked_feed(&c, b, 6, &done, spans, 4, &ns);
    T_EQ_INT(r, 6);
    T_EQ_INT(ns, 1);
    T_CHECK(str_is(spans[0], "hel"));

    /* after an error it stays in error */
    memset(&c, 0, sizeof c);
    T_EQ_INT(td_http1_chunked_feed(&c, "x", 1, &done, spans, 4, &ns), TD_EBADMSG);
    T_EQ_INT(td_http1_chunked_feed(&c, "0\r\n\r\n", 5, &done, spans, 4, &ns), TD_EBADMSG);

    /* largest size accepted: 2^62 - 1 */
    memset(&c, 0, sizeof c);
    T_EQ_INT(td_http1_chunked_feed(&c, "3fffffffffffffff\r\nab", 20, &done, spans, 4, &ns), 20);
    T_CHECK(c.remaining == 0x3fffffffffffffffull - 2);
}

static void test_chunked_limits(void) {
    static char b[40000];
    td_http1_chunked_t c = {0};
    int done;
    size_t ns;
    /* a size line of exactly 4096 bytes (CRLF excluded) is accepted, 4097 is not */
    memcpy(b, "1;a=", 4);
    memset(b + 4, 'x', 4092);
    memcpy(b + 4096, "\r\nz\r\n0\r\n\r\n", 10);
    T_EQ_INT(td_http1_chunked_feed(&c, b, 4106, &done, NULL, 0, &ns), 4106);
    T_EQ_INT(done, 1);
    memset(&c, 0, sizeof c);
    memset(b + 4, 'x', 4093);
    memcpy(b + 4097, "\r\nz\r\n0\r\n\r\n", 10);
    T_EQ_INT(td_http1_chunked_feed(&c, b, 4107, &done, NULL, 0, &ns), TD_EBADMSG);
    /* long leading zeros count against the line as well */
    memset(&c, 0, sizeof c);
    memset(b, '0', 5000);
    T_EQ_INT(td_http1_chunked_feed(&c, b, 5000, &done, NULL, 0, &ns), TD_EBADMSG);
    /* a trailer section of exactly 16384 bytes (final CRLF included) is accepted */
    memset(&c, 0, sizeof c);
    memcpy(b, "0\r\nX: ", 6);
    memset(b + 6, 'v', 16384 - 3 - 4);
    memcpy(b + 3 + 16384 - 4, "\r\n\r\n", 4);
    T_EQ_INT(td_http1_chunked_feed(&c, b, 3 + 16384, &done, NULL, 0, &ns), 3 + 16384);
    T_EQ_INT(done, 1);
    memset(&c, 0, sizeof c);
    memset(b + 6, 'v', 16384 - 3 - 3);
    memcpy(b + 3 + 16384 - 3, "\r\n\r\n", 4);
    T_EQ_INT(td_http1_chunked_feed(&c, b, 3 + 16385, &done, NULL, 0, &ns), TD_EBADMSG);
}

/* ---- responses ---- */

static int response(const char *m, int head, td_http1_response_t *r) {
    return td_http1_parse_response(m, strlen(m), head, NULL, r, hdrs, NH);
}

static void test_responses(void) {
    td_http1_response_t r;
    const char *m = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
    T_EQ_INT(response(m, 0, &r), strlen(m) - 5);
    T_EQ_INT(r.status, 200);
    T_CHECK(str_is(r.reason, "OK"));
    T_EQ_INT(r.minor_version, 1);
    T_EQ_INT(r.num_headers, 2);
    T_CHECK(r.headers == hdrs);
    T_EQ_INT(r.body, TD_BODY_LENGTH);
    T_EQ_INT(r.content_length, 5);
    T_EQ_INT(r.keep_alive, 1);

    T_CHECK(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_CHUNKED);
    T_EQ_INT(r.keep_alive, 1);

    /* neither Content-Length nor chunked: until close, not keep-alive */
    T_CHECK(response("HTTP/1.1 200 OK\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_UNTIL_CLOSE);
    T_EQ_INT(r.keep_alive, 0);

    /* no body whatever the headers say: HEAD, 1xx, 204, 304 */
    T_CHECK(response("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 1, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_EQ_INT(r.content_length, 100);
    T_EQ_INT(r.keep_alive, 1);
    T_CHECK(response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_CHECK(response("HTTP/1.1 200 OK\r\n\r\n", 1, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_EQ_INT(r.keep_alive, 1);
    T_CHECK(response("HTTP/1.1 204 No Content\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_EQ_INT(r.keep_alive, 1);
    T_CHECK(response("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_CHECK(response("HTTP/1.1 100 Continue\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.status, 100);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_CHECK(response("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\n\r\n",
                     0, &r) > 0);
    T_EQ_INT(r.body, TD_BODY_NONE);
    T_EQ_INT(r.conn_flags, TD_CONN_UPGRADE);

    /* HTTP/1.0 and Connection */
    T_CHECK(response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.minor_version, 0);
    T_EQ_INT(r.keep_alive, 0);
    T_CHECK(response("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", 0,
                     &r) > 0);
    T_EQ_INT(r.keep_alive, 1);
    T_CHECK(response("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", 0, &r) >
            0);
    T_EQ_INT(r.keep_alive, 0);

    /* reason phrase: empty, absent, odd but legal */
    T_CHECK(response("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.reason.len, 0);
    T_CHECK(response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.reason.len, 0);
    T_CHECK(response("HTTP/1.1 599 Ok \t\xe2\x9c\x93 (x)\r\n\r\n", 0, &r) > 0);
    T_CHECK(str_is(r.reason, "Ok \t\xe2\x9c\x93 (x)"));
    T_CHECK(response("HTTP/1.1 404 Not Found\r\nContent-Length: 5, 5\r\n\r\n", 0, &r) > 0);
    T_EQ_INT(r.content_length, 5);
}

static const char *valid_responses[] = {
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "HTTP/1.0 200 OK\r\n\r\n",
    "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "HTTP/1.1 200\r\n\r\n",
};

static const bad_t bad_responses[] = {
    B("CL+TE", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      TD_EBADMSG),
    B("differing CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 4\r\n\r\n",
      TD_EBADMSG),
    B("bad CL", "HTTP/1.1 200 OK\r\nContent-Length: 5a\r\n\r\n", TD_EBADMSG),
    B("TE gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", TD_EBADMSG),
    B("TE in 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", TD_EBADMSG),
    B("obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", TD_EBADMSG),
    B("bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", TD_EBADMSG),
    B("bare CR", "HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n", TD_EBADMSG),
    B("space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", TD_EBADMSG),
    B("control in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", TD_EBADMSG),
    B("two-digit status", "HTTP/1.1 20 OK\r\n\r\n", TD_EBADMSG),
    B("status 099", "HTTP/1.1 099 X\r\n\r\n", TD_EBADMSG),
    B("status letters", "HTTP/1.1 2x0 X\r\n\r\n", TD_EBADMSG),
    B("four-digit status", "HTTP/1.1 2000 X\r\n\r\n", TD_EBADMSG),
    B("HTTP/2.0", "HTTP/2.0 200 OK\r\n\r\n", TD_EBADMSG),
    B("lower-case", "http/1.1 200 OK\r\n\r\n", TD_EBADMSG),
    B("garbage", "garbage\r\n", TD_EBADMSG),
    B("short garbage", "HTTX", TD_EBADMSG),
};

static void test_response_split(void) {
    for (size_t i = 0; i < sizeof valid_responses / sizeof *valid_responses; i++) {
        int n = split_response(valid_responses[i], strlen(valid_responses[i]), 0);
        T_CHECK(n > 0);
        T_CHECK(split_response(valid_responses[i], strlen(valid_responses[i]), 1) == n);
    }
    for (size_t i = 0; i < sizeof bad_responses / sizeof *bad_responses; i++) {
        const bad_t *b = &bad_responses[i];
        int n = split_response(b->msg, b->len, 0);
        if (n != b->err)
            fprintf(stderr, "bad response \"%s\": got %d, want %d\n", b->why, n, b->err);
        T_EQ_INT(n, b->err);
    }
    /* an oversized response head: 431 */
    static char big[20000];
    td_http1_response_t r;
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'v', sizeof big - 20);
    T_EQ_INT(td_http1_parse_response(big, sizeof big, 0, NULL, &r, hdrs, NH), TD_EHDRTOOLARGE);
    T_EQ_INT(td_http1_parse_response(big, 100, 0, NULL, &r, hdrs, NH), TD_EAGAIN);
}

/* ---- helpers ---- */

static void test_helpers(void) {
    T_CHECK(td_http1_name_is(TD_STR("Content-Length"), "content-length"));
    T_CHECK(td_http1_name_is(TD_STR("HOST"), "host"));
    T_CHECK(!td_http1_name_is(TD_STR("Hos"), "host"));
    T_CHECK(!td_http1_name_is(TD_STR("Hosts"), "host"));
    T_CHECK(!td_http1_name_is(TD_STR("Hosu"), "host"));
    T_CHECK(td_http1_name_is(TD_STR(""), ""));
    T_CHECK(td_http1_list_has(TD_STR("keep-alive, Upgrade"), "upgrade"));
    T_CHECK(td_http1_list_has(TD_STR(" close "), "close"));
    T_CHECK(td_http1_list_has(TD_STR("a,,\tb\t,c"), "b"));
    T_CHECK(!td_http1_list_has(TD_STR("closed, xclose"), "close"));
    T_CHECK(!td_http1_list_has(TD_STR(""), "close"));
    T_CHECK(!td_http1_list_has(TD_STR(", ,"), ""));
}

/* The reason given for a refused head names the rule that was broken (for td's 400 log line). */
static void test_request_problem(void) {
    static const struct {
        const char *req, *reason;
    } cases[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
         "Content-Length together with Transfer-Encoding"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs-fold"},
        {"GET / HTTP/1.1\r\n\r\n", "missing Host"},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
         "conflicting Content-Length"},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "whitespace between a header name"},
        {"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"},
        {"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", "bare CR"},
        {"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", "space in the request-target"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         "final coding is not chunked"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        td_http1_header_t h[16];
        td_http1_request_t req;
        size_t n = strlen(cases[i].req);
        T_EQ_INT(td_http1_parse_request(cases[i].req, n, NULL, &req, h, 16), TD_EBADMSG);
        const char *why = td_http1_request_problem(cases[i].req, n);
        if (!strstr(why, cases[i].reason))
            fprintf(stderr, "case %zu: \"%s\" does not say \"%s\"\n", i, why, cases[i].reason);
        T_CHECK(strstr(why, cases[i].reason) != NULL);
    }
}

/* A CGI-style backend maps Content_Length and Content-Length to the same CONTENT_LENGTH: a name
 * that spells a framing field with "_" is refused (any case, any mix), other "_" names pass. */
static void test_framing_lookalike_names_refused(void) {
    static const char *const refused[] = {
        "POST / HTTP/1.1\r\nHost: h\r\nContent_Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\ncontent_length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nCONTENT_LENGTH: 10\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\ntransfer_encoding: chunked\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding_: x\r\nTransfer_Encoding: chunked\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        T_EQ_INT(split_request(refused[i], strlen(refused[i]), NULL), TD_EBADMSG);
        T_CHECK(strstr(td_http1_request_problem(refused[i], strlen(refused[i])), "with \"_\"") !=
                NULL);
    }
    td_http1_request_t r;
    T_CHECK(request("GET / HTTP/1.1\r\nHost: h\r\nX_Custom: 1\r\nContent_Type: a\r\n"
                    "Content_Lengths: 3\r\n\r\n",
                    &r) > 0);
    T_EQ_INT(r.num_headers, 4);
    /* a response may carry such a name: only requests reach CGI variables */
    td_http1_response_t rs;
    T_CHECK(response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent_Length: 9\r\n\r\n", 0, &rs) >
            0);
}

/* Identical Content-Length values, listed or repeated, are flagged so the proxy forwards one. */
static void test_repeated_content_length_flagged(void) {
    td_http1_request_t r;
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", &r) > 0);
    T_EQ_INT(r.content_length_repeated, 0);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", &r) > 0);
    T_EQ_INT(r.content_length_repeated, 1);
    T_EQ_INT(r.content_length, 5);
    T_CHECK(request("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                    &r) > 0);
    T_EQ_INT(r.content_length_repeated, 1);
    td_http1_response_t rs;
    T_CHECK(response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 0, &rs) > 0);
    T_EQ_INT(rs.content_length_repeated, 0);
    T_CHECK(response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 0,
                     &rs) > 0);
    T_EQ_INT(rs.content_length_repeated, 1);
    T_CHECK(response("HTTP/1.1 200 OK\r\nContent-Length: 3,3\r\n\r\n", 1, &rs) > 0);
    T_EQ_INT(rs.content_length_repeated, 1);
}

/* The authority of an absolute-form target becomes the Host: it is checked like one (RFC 3986
 * host and port, no userinfo, not empty). */
static void test_absolute_form_authority_validated(void) {
    static const char *const refused[] = {
        "GET http://a\"b,c@evil/x HTTP/1.1\r\nHost: good\r\n\r\n",
        "GET http://user@h/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h:8x/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h:80:81/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://[::1/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h{x}/ HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://h#frag HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        T_EQ_INT(split_request(refused[i], strlen(refused[i]), NULL), TD_EBADMSG);
        const char *why = td_http1_request_problem(refused[i], strlen(refused[i]));
        if (!strstr(why, "authority"))
            fprintf(stderr, "refused[%zu]: \"%s\"\n", i, why);
        T_CHECK(strstr(why, "authority") != NULL);
    }
    static const char *const accepted[] = {
        "GET http://example.com HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://example.com:8080/p?q=@ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://[::1]:8080/ HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET https://a-b.c_d.example%2e:443?x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://127.0.0.1/ HTTP/1.0\r\n\r\n",
    };
    td_http1_request_t r;
    for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++)
        T_CHECK(request(accepted[i], &r) > 0);
    /* Host itself: host[:port] with digits only after the colon */
    T_EQ_INT(request("GET / HTTP/1.1\r\nHost: h:x\r\n\r\n", &r), TD_EBADMSG);
    T_EQ_INT(request("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", &r), TD_EBADMSG);
    T_CHECK(request("GET / HTTP/1.1\r\nHost: [::1]:9090\r\n\r\n", &r) > 0);
}

/* RFC 9110 §2.5, RFC 9112 §2.3: a recipient of a higher minor version of a major version it
 * implements processes it as the highest minor version it implements; another major is 505. */
static void test_higher_minor_version_is_taken_as_http_1_1(void) {
    td_http1_request_t r;
    const char *m = "GET /x HTTP/1.2\r\nHost: h\r\n\r\n";
    T_EQ_INT(request(m, &r), (int)strlen(m));
    T_EQ_INT(r.minor_version, 1);
    T_EQ_INT(r.keep_alive, 1);
    T_EQ_INT(request("GET / HTTP/1.9\r\nHost: h\r\nConnection: close\r\n\r\n", &r) > 0, 1);
    T_EQ_INT(r.minor_version, 1);
    T_EQ_INT(r.keep_alive, 0);
    /* a higher minor is still HTTP/1.1 in its rules: Host is required */
    T_EQ_INT(request("GET / HTTP/1.2\r\n\r\n", &r), TD_EBADMSG);
    T_EQ_INT(request("GET / HTTP/2.0\r\nHost: h\r\n\r\n", &r), TD_EVERSION);
    T_EQ_INT(request("GET / HTTP/3.0\r\nHost: h\r\n\r\n", &r), TD_EVERSION);
    T_EQ_INT(request("GET / HTTP/2.2\r\nHost: h\r\n\r\n", &r), TD_EVERSION);
}

static void test_higher_minor_version_response_is_taken_as_http_1_1(void) {
    td_http1_response_t r;
    const char *m = "HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\n";
    T_EQ_INT(response(m, 0, &r), (int)strlen(m));
    T_EQ_INT(r.status, 200);
    T_EQ_INT(r.minor_version, 1);
    T_EQ_INT(r.keep_alive, 1);
    T_EQ_INT(r.body, TD_BODY_LENGTH);
    T_EQ_INT(response("HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\n", 0, &r), TD_EBADMSG);
}

int main(void) {
    test_request_problem();
    test_get();
    test_values_trimmed();
    test_post_length();
    test_chunked_request();
    test_pipelined();
    test_connection();
    test_targets();
    test_valid_split();
    test_bad_requests();
    test_limits();
    test_chunked_cases();
    test_chunked_api();
    test_chunked_limits();
    test_responses();
    test_response_split();
    test_helpers();
    test_framing_lookalike_names_refused();
    test_repeated_content_length_flagged();
    test_absolute_form_authority_validated();
    test_higher_minor_version_is_taken_as_http_1_1();
    test_higher_minor_version_response_is_taken_as_http_1_1();
    return t_done("test_http1");
}
