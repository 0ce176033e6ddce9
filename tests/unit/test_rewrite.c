/* Unit tests of the head rewriting: exact bytes of the request and response heads td forwards. */
#include "td/rewrite.h"

#include <string.h>

#include "t.h"
#include "td/http1.h"

static char out[4096];

/* Parses `head` as a request and rewrites it with the given options; out holds the result. */
static int rewrite_req(const char *head, const char *preview, const char *default_host, int https,
                       int upgrade, int drop_expect) {
    td_http1_header_t hdrs[32];
    td_http1_request_t req;
    int n = td_http1_parse_request(head, strlen(head), NULL, &req, hdrs, 32);
    if (n <= 0)
        return -100;
    td_rewrite_request_t r = {.req = &req,
                              .head_end = head + n,
                              .preview_header = preview,
                              .client_ip = "10.0.0.9",
                              .default_host = default_host,
                              .https = https,
                              .upgrade = upgrade,
                              .drop_expect = drop_expect};
    int len = td_rewrite_request(&r, out, sizeof(out) - 1);
    out[len > 0 ? len : 0] = 0;
    return len;
}

static void test_request_plain(void) {
    T_CHECK(rewrite_req("GET /a?b HTTP/1.1\r\nHost: ex.com\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
                        NULL, NULL, 0, 0, 0) > 0);
    T_EQ_STR(out, "GET /a?b HTTP/1.1\r\nHost: ex.com\r\nAccept: */*\r\nUser-Agent: t\r\n"
                  "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
                  "X-Forwarded-Host: ex.com\r\n\r\n");
}

static void test_request_hop_by_hop(void) {
    T_CHECK(rewrite_req("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\n"
                        "Keep-Alive: 5\r\nX-Secret: 1\r\nTE: trailers\r\nProxy-Connection: x\r\n"
                        "A: 1\r\n\r\n",
                        NULL, NULL, 1, 0, 0) > 0);
    T_EQ_STR(out, "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nX-Forwarded-For: 10.0.0.9\r\n"
                  "X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n");
    /* Connection may not remove the framing or the host. */
    T_CHECK(rewrite_req("POST / HTTP/1.1\r\nHost: h\r\nConnection: Content-Length, Host\r\n"
                        "Content-Length: 2\r\n\r\n",
                        NULL, NULL, 0, 0, 0) > 0);
    T_EQ_STR(out, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                  "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
                  "X-Forwarded-Host: h\r\n\r\n");
}

static void test_request_forwarded(void) {
    T_CHECK(rewrite_req("GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nHost: h\r\n"
                        "X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
                        NULL, NULL, 0, 0, 0) > 0);
    T_EQ_STR(out, "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n");
}

static void test_request_absolute_form(void) {
    T_CHECK(rewrite_req("GET http://a.test:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n", NULL, NULL, 0,
                        0, 0) > 0);
    T_EQ_STR(out, "GET /x?y HTTP/1.1\r\nHost: a.test:81\r\nX-Forwarded-For: 10.0.0.9\r\n"
                  "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test:81\r\n\r\n");
    T_CHECK(rewrite_req("GET http://a.test?q HTTP/1.1\r\nHost: a.test\r\n\r\n", NULL, NULL, 0, 0,
                        0) > 0);
    T_CHECK(strncmp(out, "GET /?q HTTP/1.1\r\n", 18) == 0);
    td_str_t auth, rest;
    T_EQ_INT(td_rewrite_absolute_form(TD_STR("https://h/p"), &auth, &rest), 1);
    T_EQ_INT(auth.len, 1);
    T_EQ_INT(rest.len, 2);
    T_EQ_INT(td_rewrite_absolute_form(TD_STR("/http://x"), &auth, &rest), 0);
}

static void test_request_http10_host_and_length(void) {
    T_CHECK(rewrite_req("POST /u HTTP/1.0\r\nContent-Length: 3, 3\r\n\r\n", NULL, "127.0.0.1:9", 0,
                        0, 0) > 0);
    T_EQ_STR(out, "POST /u HTTP/1.1\r\nContent-Length: 3\r\nHost: 127.0.0.1:9\r\n"
                  "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n\r\n");
}

static void test_request_preview_upgrade_expect(void) {
    T_CHECK(rewrite_req("GET /ws HTTP/1.1\r\nHost: h\r\nX-TD-Backend: green\r\n"
                        "x-td-backend-token: s3\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                        "Expect: 100-continue\r\n\r\n",
                        "X-TD-Backend", NULL, 0, 1, 1) > 0);
    T_EQ_STR(out, "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                  "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
                  "X-Forwarded-Host: h\r\n\r\n");
    T_EQ_INT(rewrite_req("GET / HTTP/1.1\r\nHost: h\r\n\r\n", NULL, NULL, 0, 0, 0), 100);
}

static void test_request_too_large(void) {
    td_http1_header_t hdrs[8];
    td_http1_request_t req;
    const char *head = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    int n = td_http1_parse_request(head, strlen(head), NULL, &req, hdrs, 8);
    td_rewrite_request_t r = {.req = &req, .head_end = head + n, .client_ip = "1.1.1.1"};
    T_EQ_INT(td_rewrite_request(&r, out, 20), -1);
}

static int rewrite_resp(const char *head, const char *cookie, int pass_te, int keep_alive,
                        int minor) {
    td_http1_header_t hdrs[32];
    td_http1_response_t resp;
    int n = td_http1_parse_response(head, strlen(head), 0, NULL, &resp, hdrs, 32);
    if (n <= 0)
        return -100;
    td_rewrite_response_t r = {.resp = &resp,
                               .head_end = head + n,
                               .set_cookie = cookie,
                               .pass_te = pass_te,
                               .keep_alive = keep_alive,
                               .minor = minor};
    int len = td_rewrite_response(&r, out, sizeof(out) - 1);
    out[len > 0 ? len : 0] = 0;
    return len;
}

static void test_response(void) {
    T_CHECK(rewrite_resp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: t=5\r\n"
                         "Connection: keep-alive\r\nX: y\r\n\r\n",
                         NULL, 1, 1, 1) > 0);
    T_EQ_STR(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n");
    T_CHECK(rewrite_resp("HTTP/1.0 404 Gone Away\r\nContent-Length: 1, 1\r\n\r\n",
                         "Set-Cookie: S=v\r\n", 1, 0, 1) > 0);
    T_EQ_STR(out, "HTTP/1.1 404 Gone Away\r\nContent-Length: 1\r\nSet-Cookie: S=v\r\n"
                  "Connection: close\r\n\r\n");
    T_CHECK(rewrite_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", NULL, 0, 1, 0) >
            0);
    T_EQ_STR(out, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
    T_CHECK(rewrite_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", NULL, 1, 1,
                         1) > 0);
    T_EQ_STR(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    T_CHECK(rewrite_resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\n\r\n",
                         "Set-Cookie: S=v\r\n", 1, 1, 1) > 0);
    T_EQ_STR(out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: upgrade\r\n\r\n");
    T_CHECK(rewrite_resp("HTTP/1.1 100 Continue\r\n\r\n", "Set-Cookie: S=v\r\n", 1, 0, 1) > 0);
    T_EQ_STR(out, "HTTP/1.1 100 Continue\r\n\r\n");
}

static void test_set_cookie_and_fields(void) {
    td_rewrite_cookie_t c = {"TDSTICKY", "blue.1.sig", 3600, 1, 1, 0};
    char line[200];
    T_CHECK(td_rewrite_set_cookie(&c, line, sizeof(line)) > 0);
    T_EQ_STR(line, "Set-Cookie: TDSTICKY=blue.1.sig; Max-Age=3600; Path=/; HttpOnly; Secure; "
                   "SameSite=Lax\r\n");
    c.http_only = c.secure = 0;
    c.same_site = 2;
    T_CHECK(td_rewrite_set_cookie(&c, line, sizeof(line)) > 0);
    T_EQ_STR(line, "Set-Cookie: TDSTICKY=blue.1.sig; Max-Age=3600; Path=/; SameSite=None\r\n");
    T_EQ_INT(td_rewrite_set_cookie(&c, line, 10), -1);
    T_EQ_INT(td_rewrite_hop_by_hop(TD_STR("Transfer-Encoding")), 1);
    T_EQ_INT(td_rewrite_hop_by_hop(TD_STR("TE")), 1);
    T_EQ_INT(td_rewrite_hop_by_hop(TD_STR("Content-Length")), 0);
    T_EQ_INT(td_rewrite_preview_field(TD_STR("x-td-backend"), "X-TD-Backend"), 1);
    T_EQ_INT(td_rewrite_preview_field(TD_STR("X-TD-Backend-Token"), "X-TD-Backend"), 1);
    T_EQ_INT(td_rewrite_preview_field(TD_STR("X-TD-Backends"), "X-TD-Backend"), 0);
    T_EQ_STR(td_http_reason(503), "Service Unavailable");
    T_EQ_STR(td_http_reason(299), "Status");
}

/* For an HTTP/2 backend a TE listing trailers goes on as "TE: trailers" (gRPC needs it); other
 * codings, and every TE for HTTP/1.1 backends, are dropped. */
static void test_request_te_trailers_for_h2_backends(void) {
    const char *head = "POST /svc/M HTTP/1.1\r\nHost: h\r\nTE: gzip, Trailers\r\n"
                       "Content-Length: 0\r\n\r\n";
    td_http1_header_t hdrs[32];
    td_http1_request_t req;
    int n = td_http1_parse_request(head, strlen(head), NULL, &req, hdrs, 32);
    T_CHECK(n > 0);
    td_rewrite_request_t r = {
        .req = &req, .head_end = head + n, .client_ip = "10.0.0.9", .te_trailers = 1};
    int len = td_rewrite_request(&r, out, sizeof(out) - 1);
    T_CHECK(len > 0);
    out[len > 0 ? len : 0] = 0;
    T_EQ_STR(out, "POST /svc/M HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTE: trailers\r\n"
                  "X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: http\r\n"
                  "X-Forwarded-Host: h\r\n\r\n");
    r.te_trailers = 0;
    len = td_rewrite_request(&r, out, sizeof(out) - 1);
    out[len > 0 ? len : 0] = 0;
    T_CHECK(strstr(out, "TE:") == NULL);
}

int main(void) {
    test_request_plain();
    test_request_hop_by_hop();
    test_request_forwarded();
    test_request_absolute_form();
    test_request_http10_host_and_length();
    test_request_preview_upgrade_expect();
    test_request_too_large();
    test_response();
    test_set_cookie_and_fields();
    test_request_te_trailers_for_h2_backends();
    return t_done("test_rewrite");
}
