/* Cross-checks td's HTTP/1.x request parser against an independent one: Debian's libhttp-parser
 * (the Node.js http_parser, 2.9), linked with -lhttp_parser.
 *
 * - valid: both accept; they agree on method, URL, header names and values, Content-Length or
 *   chunked, keep-alive, and the decoded body bytes.
 * - invalid: the oracle rejects them, and td must reject every one (head or body).
 * - td_stricter: the oracle accepts them, td refuses them on purpose (RFC 9112 lets or tells a
 *   proxy to: bare LF, obs-fold, junk in chunk extensions, ...).
 * - td_lenient: the oracle refuses them, td accepts them as RFC 9110 allows: identical duplicate
 *   Content-Length values (§8.6), and methods the oracle does not know (any token is a method,
 *   case-sensitively, §9.1: "get" is an extension method, not GET). Listed so that each
 *   difference is deliberate and visible; none of them changes how a message is delimited. */
#include "td/http1.h"

#include <http_parser.h>
#include <stdlib.h>

#include "t.h"

/* sizeof, not strlen: some messages hold NUL bytes */
typedef struct msg_s {
    const char *why;
    const char *data;
    size_t len;
} msg_t;

#define M(why, data)                                                                               \
    { why, data, sizeof(data) - 1 }

static const msg_t valid[] = {
    M("simple GET", "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    M("GET with query", "GET /search?q=td&lang=en HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"),
    M("browser GET", "GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n"
                     "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101\r\n"
                     "Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\r\n"
                     "Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
                     "Cookie: a=1; b=2\r\nUpgrade-Insecure-Requests: 1\r\n\r\n"),
    M("percent-encoded path", "GET /a%20b/%C3%A9?x=%2F HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("absolute-form",
      "GET http://example.com:8080/p?q HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"),
    M("HEAD", "HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("DELETE", "DELETE /items/7 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer abc.def\r\n\r\n"),
    M("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("POST length", "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-"
                     "urlencoded\r\nContent-Length: 7\r\n\r\na=1&b=2"),
    M("PUT length 0", "PUT /empty HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
    M("PATCH json", "PATCH /o/1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                    "Content-Length: 13\r\n\r\n{\"a\": [1, 2]}"),
    M("POST binary body", "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n\0\r\n\xff"),
    M("chunked", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    M("chunked upper-case hex", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "A\r\n0123456789\r\n1F\r\nabcdefghijklmnopqrstuvwxyz01234\r\n"
                                "0\r\n\r\n"),
    M("chunked extension", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5;name=value\r\nhello\r\n0;last\r\n\r\n"),
    M("chunked trailers", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                          "Trailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n"),
    M("chunked empty", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "0\r\n\r\n"),
    M("chunked binary", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "4\r\n\r\n\0\xff\r\n2\r\n\r\n\r\n0\r\n\r\n"),
    M("chunked leading zeros", "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "0003\r\nabc\r\n000\r\n\r\n"),
    M("TE mixed case", "POST /c HTTP/1.1\r\nHost: h\r\ntransfer-encoding: Chunked\r\n\r\n"
                       "1\r\nz\r\n0\r\n\r\n"),
    M("HTTP/1.0", "GET / HTTP/1.0\r\n\r\n"),
    M("HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
    M("HTTP/1.0 with Host", "GET /x HTTP/1.0\r\nHost: h\r\nUser-Agent: curl/8\r\n\r\n"),
    M("HTTP/1.1 close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"),
    M("HTTP/1.1 keep-alive", "GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n"),
    M("Expect", "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
                "\r\nabc"),
    M("whitespace around values", "GET / HTTP/1.1\r\nHost:h\r\nX-A:   spaced\r\nX-B:\ttabbed\r\n"
                                  "X-C: inner  spaces here\r\n\r\n"),
    M("empty value", "GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Also: \r\n\r\n"),
    M("obs-text value", "GET / HTTP/1.1\r\nHost: h\r\nX-Name: Andr\xc3\xa9 \xe2\x9c\x93\r\n\r\n"),
    M("token characters in name", "GET / HTTP/1.1\r\nHost: h\r\nX-!#$%&'*+-.^_`|~09: v\r\n\r\n"),
    M("many headers", "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n"
                      "F: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\nJ: 10\r\nK: 11\r\nL: 12\r\n\r\n"),
    M("long URL",
      "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/"
      "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb?cccccccccccccccccccccc=d"
      " HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("quoted value", "GET / HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"abc\", W/\"def\"\r\n\r\n"),
    M("PURGE", "PURGE /cache/x HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("IPv6 Host", "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"),
    M("websocket upgrade", "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n"),
};

static const msg_t invalid[] = {
    M("CL + TE", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    M("TE + CL", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    M("differing CL", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n"
                      "\r\nhello!"),
    M("CL letters", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n"),
    M("CL negative", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
    M("CL plus", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello"),
    M("CL hex", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\nhello"),
    M("CL two numbers", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n"),
    M("CL overflow", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n"
                     "\r\n"),
    M("chunk size 0x5", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "0x5\r\nhello\r\n0\r\n\r\n"),
    M("chunk size -1", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "-1\r\nhello\r\n0\r\n\r\n"),
    M("chunk size overflow", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    M("chunk size empty", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "\r\nhello\r\n0\r\n\r\n"),
    M("chunk size letters", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "xyz\r\nhello\r\n0\r\n\r\n"),
    M("bad name char", "GET / HTTP/1.1\r\nHost: h\r\nX(Y): a\r\n\r\n"),
    M("NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"),
    M("SOH in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01"
                      "b\r\n\r\n"),
    M("DEL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f"
                      "b\r\n\r\n"),
    M("unknown version", "GET / HTTP/1.x\r\nHost: h\r\n\r\n"),
    M("lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n"),
    M("version junk", "GET / HTTP/1.1x\r\nHost: h\r\n\r\n"),
    M("control in URL", "GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("DEL in URL", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("relative URL", "GET foo HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("bad method char", "G(T / HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("leading space", " GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("TLS hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    M("missing CRLF after chunk", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                  "\r\n5\r\nhelloX\r\n0\r\n\r\n"),
    M("TE gzip then CL", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
                         "Content-Length: 3\r\n\r\nabc"),
    M("TE in HTTP/1.0 with CL", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"
                                "Content-Length: 5\r\n\r\n0\r\n\r\n"),
    M("empty header name", "GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n"),
    M("TE not ending in chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
    M("TE chunked twice", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n"
                          "\r\n0\r\n\r\n"),
    M("TE with empty element", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n"
                               "\r\n0\r\n\r\n"),
    M("CL list of differing values", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n"
                                     "ab"),
    M("bare LF after chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                  "\r\n5\nhello\r\n0\r\n\r\n"),
};

static const msg_t td_stricter[] = {
    M("bare LF line ends", "GET / HTTP/1.1\nHost: h\n\n"),
    M("bare LF in fields", "GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n"),
    M("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"),
    M("obs-fold on Transfer-Encoding", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n"
                                       " chunked\r\n\r\n0\r\n\r\n"),
    M("missing Host in 1.1", "GET / HTTP/1.1\r\nX: a\r\n\r\n"),
    M("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    M("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@h\r\n\r\n"),
    M("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    M("chunk size then junk", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5 junk\r\nhello\r\n0\r\n\r\n"),
    M("chunk size then space", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "5 \r\nhello\r\n0\r\n\r\n"),
    M("chunk ext without name", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                "5 ;\r\nhello\r\n0\r\n\r\n"),
    M("trailer obs-fold", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "0\r\nX: a\r\n b\r\n\r\n"),
    M("double space in request line", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("asterisk target with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("CONNECT origin-form", "CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"),
    M("raw UTF-8 in target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"),
    /* "HTTP/1.2" is not compared: both accept it, but td takes it as 1.1 (RFC 9110 §2.5, RFC 9112
     * §2.3) where http_parser reports minor version 2; tests/unit/test_http1.c holds it. */
    M("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n"),
    M("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n"),
    M("space in name", "GET / HTTP/1.1\r\nHost: h\r\nX Y: a\r\n\r\n"),
    M("ESC in value", "GET / HTTP/1.1\r\nHost: h\r\nX: \x1b[1m\r\n\r\n"),
    M("no version", "GET /\r\nHost: h\r\n\r\n"),
};

static const msg_t td_lenient[] = {
    M("identical CL twice", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3"
                            "\r\n\r\nabc"),
    M("identical CL list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc"),
    M("lower-case method", "get / HTTP/1.1\r\nHost: h\r\n\r\n"),
};

/* ---- the oracle: http_parser over the whole message ---- */

#define MAXH 32
#define CAP 4096

typedef struct oracle_s {
    char url[CAP];
    size_t url_len;
    char name[MAXH][256], value[MAXH][CAP];
    size_t name_len[MAXH], value_len[MAXH];
    int nh, in_value, head_nh;
    char body[CAP];
    size_t body_len;
    int headers_done, complete, chunked, keep_alive;
    uint64_t content_length;
    int has_cl;
} oracle_t;

static oracle_t orc;

static void append(char *dst, size_t *len, size_t cap, const char *at, size_t n) {
    if (*len + n > cap)
        n = cap - *len;
    memcpy(dst + *len, at, n);
    *len += n;
}

static int on_url(http_parser *p, const char *at, size_t n) {
    (void)p;
    append(orc.url, &orc.url_len, CAP, at, n);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
    (void)p;
    if (orc.in_value || orc.nh == 0) {
        if (orc.nh == MAXH)
            return 1;
        orc.nh++;
        orc.in_value = 0;
    }
    append(orc.name[orc.nh - 1], &orc.name_len[orc.nh - 1], 256, at, n);
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
    (void)p;
    orc.in_value = 1;
    append(orc.value[orc.nh - 1], &orc.value_len[orc.nh - 1], CAP, at, n);
    return 0;
}

static int on_headers_complete(http_parser *p) {
    orc.headers_done = 1;
    orc.head_nh = orc.nh; /* http_parser reports trailer fields through the same callbacks */
    orc.chunked = (p->flags & F_CHUNKED) != 0;
    orc.has_cl = (p->flags & F_CONTENTLENGTH) != 0;
    orc.content_length = p->content_length;
    orc.keep_alive = http_should_keep_alive(p);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
    (void)p;
    append(orc.body, &orc.body_len, CAP, at, n);
    return 0;
}

static int on_message_complete(http_parser *p) {
    orc.complete = 1;
    /* one message per corpus entry: stop here */
    http_parser_pause(p, 1);
    return 0;
}

/* Returns 1 when the oracle accepts m as one complete request, 0 when it rejects it, -1 when it
 * wants more bytes. The parsed facts are left in orc. */
static int oracle(const msg_t *m, http_parser *p) {
    http_parser_settings s;
    memset(&s, 0, sizeof s);
    s.on_url = on_url;
    s.on_header_field = on_header_field;
    s.on_header_value = on_header_value;
    s.on_headers_complete = on_headers_complete;
    s.on_body = on_body;
    s.on_message_complete = on_message_complete;
    memset(&orc, 0, sizeof orc);
    http_parser_init(p, HTTP_REQUEST);
    size_t n = http_parser_execute(p, &s, m->data, m->len);
    enum http_errno e = HTTP_PARSER_ERRNO(p);
    if (e != HPE_OK && e != HPE_PAUSED)
        return 0;
    if (p->upgrade && orc.headers_done)
        return 1; /* the rest of the bytes belong to the upgraded protocol */
    if (!orc.complete)
        return -1;
    return n == m->len ? 1 : 0;
}

/* ---- td over the same message ---- */

typedef struct td_result_s {
    td_http1_request_t req;
    td_http1_header_t headers[MAXH];
    char body[CAP];
    size_t body_len;
    int head_err; /* < 0: the head was refused (or incomplete) */
    int body_err; /* < 0: the body was refused (or incomplete) */
} td_result_t;

static td_result_t tdr;

/* Returns 1 when td accepts m as exactly one complete request (head and body), 0 otherwise. */
static int td(const msg_t *m) {
    memset(&tdr, 0, sizeof tdr);
    int n = td_http1_parse_request(m->data, m->len, NULL, &tdr.req, tdr.headers, MAXH);
    tdr.head_err = n < 0 ? n : 0;
    if (n < 0)
        return 0;
    size_t rest = m->len - (size_t)n;
    const char *b = m->data + n;
    if (tdr.req.upgrade || (tdr.req.method.len == 7 && !memcmp(tdr.req.method.p, "CONNECT", 7)))
        return 1;
    if (tdr.req.body == TD_BODY_LENGTH) {
        if (tdr.req.content_length != rest)
            return tdr.body_err = TD_EAGAIN, 0;
        append(tdr.body, &tdr.body_len, CAP, b, rest);
        return 1;
    }
    if (tdr.req.body == TD_BODY_CHUNKED) {
        td_http1_chunked_t c = {0};
        td_str_t spans[16];
        size_t ns;
        int done = 0;
        long used = td_http1_chunked_feed(&c, b, rest, &done, spans, 16, &ns);
        if (used < 0)
            return tdr.body_err = (int)used, 0;
        for (size_t i = 0; i < ns; i++)
            append(tdr.body, &tdr.body_len, CAP, spans[i].p, spans[i].len);
        if (!done || (size_t)used != rest)
            return tdr.body_err = TD_EAGAIN, 0;
        return 1;
    }
    return rest == 0;
}

static int eq_str(td_str_t s, const char *p, size_t n) {
    return s.len == n && memcmp(s.p, p, n) == 0;
}

static int is_ws(char c) {
    return c == ' ' || c == '\t';
}

/* http_parser hands values over as sent after the leading whitespace; td trims both ends. */
static int eq_trimmed(td_str_t s, const char *p, size_t n) {
    while (n && is_ws(p[n - 1]))
        n--;
    while (n && is_ws(*p))
        p++, n--;
    return eq_str(s, p, n);
}

static void check_valid(const msg_t *m) {
    http_parser p;
    int o = oracle(m, &p);
    int t = td(m);
    if (o != 1 || t != 1)
        fprintf(stderr, "valid \"%s\": oracle %d (%s), td %d (head %d, body %d)\n", m->why, o,
                http_errno_name(HTTP_PARSER_ERRNO(&p)), t, tdr.head_err, tdr.body_err);
    T_EQ_INT(o, 1);
    T_EQ_INT(t, 1);
    if (o != 1 || t != 1)
        return;
    const td_http1_request_t *r = &tdr.req;
    const char *method = http_method_str((enum http_method)p.method);
    int ok = eq_str(r->method, method, strlen(method)) && eq_str(r->target, orc.url, orc.url_len) &&
             r->minor_version == p.http_minor && p.http_major == 1 &&
             r->num_headers == (size_t)orc.head_nh;
    for (size_t i = 0; ok && i < r->num_headers; i++)
        ok = eq_str(r->headers[i].name, orc.name[i], orc.name_len[i]) &&
             eq_trimmed(r->headers[i].value, orc.value[i], orc.value_len[i]);
    if (!ok)
        fprintf(stderr, "valid \"%s\": method, target, version or headers differ\n", m->why);
    T_CHECK(ok);

    int framing = (r->body == TD_BODY_CHUNKED) == orc.chunked &&
                  (r->body == TD_BODY_LENGTH) == (orc.has_cl != 0) &&
                  (r->body != TD_BODY_LENGTH || r->content_length == orc.content_length);
    if (!framing)
        fprintf(stderr, "valid \"%s\": framing differs (td %d/%llu, oracle chunked %d cl %d)\n",
                m->why, r->body, (unsigned long long)r->content_length, orc.chunked, orc.has_cl);
    T_CHECK(framing);
    if (r->keep_alive != orc.keep_alive)
        fprintf(stderr, "valid \"%s\": keep-alive td %d, oracle %d\n", m->why, r->keep_alive,
                orc.keep_alive);
    T_EQ_INT(r->keep_alive, orc.keep_alive);
    int body = tdr.body_len == orc.body_len && memcmp(tdr.body, orc.body, orc.body_len) == 0;
    if (!body)
        fprintf(stderr, "valid \"%s\": body differs (td %zu bytes, oracle %zu)\n", m->why,
                tdr.body_len, orc.body_len);
    T_CHECK(body);
}

int main(void) {
    size_t nv = sizeof valid / sizeof *valid, ni = sizeof invalid / sizeof *invalid;
    size_t ns = sizeof td_stricter / sizeof *td_stricter,
           nl = sizeof td_lenient / sizeof *td_lenient;
    T_CHECK(nv >= 30);
    T_CHECK(ni >= 30);

    for (size_t i = 0; i < nv; i++)
        check_valid(&valid[i]);

    for (size_t i = 0; i < ni; i++) {
        http_parser p;
        int o = oracle(&invalid[i], &p);
        int t = td(&invalid[i]);
        if (o != 0 || t != 0)
            fprintf(stderr, "invalid \"%s\": oracle %d, td %d\n", invalid[i].why, o, t);
        T_EQ_INT(o, 0); /* the corpus entry really is refused by the oracle */
        T_EQ_INT(t, 0); /* and td refuses it too */
        T_CHECK(tdr.head_err != TD_EAGAIN && tdr.body_err != TD_EAGAIN);
    }

    for (size_t i = 0; i < ns; i++) {
        http_parser p;
        int o = oracle(&td_stricter[i], &p);
        int t = td(&td_stricter[i]);
        if (o != 1 || t != 0)
            fprintf(stderr, "td stricter \"%s\": oracle %d, td %d\n", td_stricter[i].why, o, t);
        T_EQ_INT(o, 1);
        T_EQ_INT(t, 0);
        T_CHECK(tdr.head_err != TD_EAGAIN && tdr.body_err != TD_EAGAIN);
    }

    for (size_t i = 0; i < nl; i++) {
        http_parser p;
        int o = oracle(&td_lenient[i], &p);
        int t = td(&td_lenient[i]);
        if (o != 0 || t != 1)
            fprintf(stderr, "td lenient \"%s\": oracle %d, td %d\n", td_lenient[i].why, o, t);
        T_EQ_INT(o, 0);
        T_EQ_INT(t, 1);
    }
    printf("oracle corpus: %zu valid, %zu invalid, %zu td stricter, %zu td lenient\n", nv, ni, ns,
           nl);
    return t_done("test_http1_oracle");
}
