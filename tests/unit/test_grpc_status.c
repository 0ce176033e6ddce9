/* gRPC statuses: the grpc-status trailer noted by the chunked decoder, the head value parsed,
 * and the mappings between gRPC codes and HTTP statuses. */
#include "td/grpc_status.h"

#include "t.h"
#include "td/http1.h"

static void feed_all(td_http1_chunked_t *c, const char *b, int want_done) {
    int done = 0;
    long r = td_http1_chunked_feed(c, b, strlen(b), &done, NULL, 0, NULL);
    T_EQ_INT(r, (long)strlen(b));
    T_EQ_INT(done, want_done);
}

static void grpc_status_is_noted_in_the_trailers_only_when_asked(void) {
    const char *body = "5\r\nhello\r\n0\r\nX-Env: blue\r\nGRPC-Status: 13\r\n"
                       "grpc-message: boom\r\n\r\n";
    td_http1_chunked_t c = {0};
    c.want_grpc = 1;
    feed_all(&c, body, 1);
    T_EQ_INT(c.grpc_seen, 1);
    T_EQ_INT(c.grpc_status, 13);

    td_http1_chunked_t off = {0};
    feed_all(&off, body, 1);
    T_EQ_INT(off.grpc_seen, 0);
}

static void grpc_status_split_across_feeds_and_lookalike_names(void) {
    td_http1_chunked_t c = {0};
    c.want_grpc = 1;
    feed_all(&c, "0\r\ngrpc-status-x: 5\r\ngrpc-statu", 0);
    T_EQ_INT(c.grpc_seen, 0);
    feed_all(&c, "s:  1", 0);
    feed_all(&c, "4 \r\n\r\n", 1);
    T_EQ_INT(c.grpc_seen, 1);
    T_EQ_INT(c.grpc_status, 14);

    td_http1_chunked_t bad = {0};
    bad.want_grpc = 1;
    feed_all(&bad, "0\r\ngrpc-status: 1x\r\n\r\n", 1);
    T_EQ_INT(bad.grpc_seen, 1);
    T_EQ_INT(bad.grpc_status, TD_GRPC_UNKNOWN);

    const char *unknown[] = {"0\r\ngrpc-status:\r\n\r\n", "0\r\ngrpc-status: 1 4\r\n\r\n"};
    for (size_t i = 0; i < 2; i++) {
        td_http1_chunked_t u = {0};
        u.want_grpc = 1;
        feed_all(&u, unknown[i], 1);
        T_EQ_INT(u.grpc_seen, 1);
        T_EQ_INT(u.grpc_status, TD_GRPC_UNKNOWN);
    }
}

static void head_values_and_content_types(void) {
    T_EQ_INT(td_grpc_status_parse(TD_STR("0")), 0);
    T_EQ_INT(td_grpc_status_parse(TD_STR(" 16 ")), 16);
    T_EQ_INT(td_grpc_status_parse(TD_STR("")), TD_GRPC_UNKNOWN);
    T_EQ_INT(td_grpc_status_parse(TD_STR("abc")), TD_GRPC_UNKNOWN);
    T_EQ_INT(td_grpc_is_content_type(TD_STR("application/grpc")), 1);
    T_EQ_INT(td_grpc_is_content_type(TD_STR("Application/GRPC+proto")), 1);
    T_EQ_INT(td_grpc_is_content_type(TD_STR("application/grpc-web")), 0);
    T_EQ_INT(td_grpc_is_content_type(TD_STR("application/json")), 0);
}

static void server_failures_are_5xx_caller_failures_4xx(void) {
    int server[] = {2, 4, 12, 13, 14, 15};
    for (size_t i = 0; i < sizeof(server) / sizeof(server[0]); i++)
        T_EQ_INT(td_grpc_status_http(server[i]) / 100, 5);
    int client[] = {1, 3, 5, 6, 7, 8, 9, 10, 11, 16};
    for (size_t i = 0; i < sizeof(client) / sizeof(client[0]); i++)
        T_EQ_INT(td_grpc_status_http(client[i]) / 100, 4);
    T_EQ_INT(td_grpc_status_http(0), 200);
    T_EQ_INT(td_grpc_status_http(99), 500);
    T_EQ_INT(td_grpc_status_of_http(502), TD_GRPC_UNAVAILABLE);
    T_EQ_INT(td_grpc_status_of_http(503), TD_GRPC_UNAVAILABLE);
    T_EQ_INT(td_grpc_status_of_http(504), TD_GRPC_DEADLINE_EXCEEDED);
    T_EQ_INT(td_grpc_status_of_http(431), TD_GRPC_RESOURCE_EXHAUSTED);
}

int main(void) {
    grpc_status_is_noted_in_the_trailers_only_when_asked();
    grpc_status_split_across_feeds_and_lookalike_names();
    head_values_and_content_types();
    server_failures_are_5xx_caller_failures_4xx();
    return t_done("grpc_status");
}
