/* The gRPC health protocol's messages: HealthCheckRequest encoded with its 5-byte prefix,
 * HealthCheckResponse decoded (unknown fields skipped, malformed or partial input refused), and a
 * Check call's verdict on what a server that does not speak HTTP/2 answers. */
#include "td/health_grpc.h"

#include <string.h>

#include "t.h"
#include "td/common-t.h"

static void request_without_service_is_the_empty_message(void) {
    unsigned char out[64];
    T_EQ_INT(td_health_grpc_request("", out, sizeof(out)), 5);
    T_CHECK(memcmp(out, "\0\0\0\0\0", 5) == 0);
    T_EQ_INT(td_health_grpc_request("", out, 4), 0); /* does not fit */
}

static void request_with_service_has_field_1(void) {
    unsigned char out[64];
    size_t n = td_health_grpc_request("shop.Cart", out, sizeof(out));
    T_EQ_INT(n, 5 + 2 + 9);
    T_CHECK(memcmp(out, "\0\0\0\0\x0b\x0a\x09shop.Cart", n) == 0);
    T_EQ_INT(td_health_grpc_request("shop.Cart", out, n - 1), 0);
}

static void long_service_gets_a_two_byte_varint(void) {
    char svc[201];
    unsigned char out[256];
    memset(svc, 'a', 200);
    svc[200] = '\0';
    size_t n = td_health_grpc_request(svc, out, sizeof(out));
    T_EQ_INT(n, 5 + 1 + 2 + 200);
    T_EQ_INT(out[4], 203); /* the message: tag, 2 length bytes, 200 bytes */
    T_EQ_INT(out[5], 0x0a);
    T_EQ_INT(out[6], 0xc8); /* 200 = 0x48 | 0x80, then 1 */
    T_EQ_INT(out[7], 0x01);
}

static int decode(const char *buf, size_t len, int *st) {
    return td_health_grpc_response((const unsigned char *)buf, len, st);
}

static void response_status_is_read(void) {
    int st = -1;
    T_EQ_INT(decode("\0\0\0\0\x02\x08\x01", 7, &st), 0);
    T_EQ_INT(st, TD_GRPC_HEALTH_SERVING);
    T_EQ_INT(decode("\0\0\0\0\x02\x08\x02", 7, &st), 0);
    T_EQ_INT(st, TD_GRPC_HEALTH_NOT_SERVING);
    st = -1; /* proto3: an absent field is its zero value, UNKNOWN */
    T_EQ_INT(decode("\0\0\0\0\0", 5, &st), 0);
    T_EQ_INT(st, TD_GRPC_HEALTH_UNKNOWN);
}

static void unknown_fields_are_skipped(void) {
    int st = -1;
    /* field 2 varint 300, field 3 bytes "xy", field 4 fixed32, field 5 fixed64, then status 1 */
    static const char m[] = "\0\0\0\0\x17"
                            "\x10\xac\x02"
                            "\x1a\x02xy"
                            "\x25\x01\x02\x03\x04"
                            "\x29\x01\x02\x03\x04\x05\x06\x07\x08"
                            "\x08\x01";
    T_EQ_INT(decode(m, sizeof(m) - 1, &st), 0);
    T_EQ_INT(st, TD_GRPC_HEALTH_SERVING);
    /* the last status wins, as protobuf merges repeated scalars */
    T_EQ_INT(decode("\0\0\0\0\x04\x08\x02\x08\x01", 9, &st), 0);
    T_EQ_INT(st, TD_GRPC_HEALTH_SERVING);
}

static void partial_input_asks_for_more(void) {
    int st = -1;
    T_EQ_INT(decode("\0\0\0", 3, &st), TD_EAGAIN);
    T_EQ_INT(decode("\0\0\0\0\x02\x08", 6, &st), TD_EAGAIN);
    T_EQ_INT(st, -1);
}

static void malformed_input_is_refused(void) {
    int st = -1;
    T_EQ_INT(decode("\x01\0\0\0\x02\x08\x01", 7, &st), TD_EINVAL);   /* compressed */
    T_EQ_INT(decode("\0\0\0\0\x02\x08\x01\x00", 8, &st), TD_EINVAL); /* bytes after it */
    T_EQ_INT(decode("\0\0\0\0\x01\x08", 6, &st), TD_EINVAL);         /* varint cut short */
    T_EQ_INT(decode("\0\0\0\0\x03\x1a\x05x", 8, &st), TD_EINVAL);    /* bytes past the end */
    T_EQ_INT(decode("\0\0\0\0\x02\x0b\x00", 7, &st), TD_EINVAL);     /* a group */
    T_EQ_INT(decode("\0\0\0\0\x02\x0a\x00", 7, &st), TD_EINVAL);     /* status as bytes */
    T_EQ_INT(decode("\0\0\0\0\x02\x00\x01", 7, &st), TD_EINVAL);     /* field number 0 */
    static const char eleven[] = "\0\0\0\0\x0c\x08"
                                 "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"; /* 11 bytes */
    T_EQ_INT(decode(eleven, sizeof(eleven) - 1, &st), TD_EINVAL);
    T_EQ_INT(st, -1);
}

static void names_of_codes_and_statuses(void) {
    T_EQ_STR(td_health_grpc_code_name(0), "OK");
    T_EQ_STR(td_health_grpc_code_name(5), "NOT_FOUND");
    T_EQ_STR(td_health_grpc_code_name(12), "UNIMPLEMENTED");
    T_EQ_STR(td_health_grpc_code_name(16), "UNAUTHENTICATED");
    T_EQ_STR(td_health_grpc_code_name(17), "");
    T_EQ_STR(td_health_grpc_code_name(-1), "");
    T_EQ_STR(td_health_grpc_status_name(2), "NOT_SERVING");
    T_EQ_STR(td_health_grpc_status_name(3), "SERVICE_UNKNOWN");
    T_EQ_STR(td_health_grpc_status_name(4), "");
}

static void call_starts_with_the_preface_and_fails_on_http1(void) {
    td_health_grpc_t *g = td_health_grpc_new("http", "127.0.0.1:1", "shop.Cart", 1000);
    T_CHECK(g != NULL);
    if (!g)
        return;
    const char *out;
    long n = td_health_grpc_send(g, &out);
    T_CHECK(n >= 24 && memcmp(out, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) == 0);
    while (n > 0)
        n = td_health_grpc_send(g, &out);
    T_EQ_INT(n, 0);
    char why[160];
    T_EQ_INT(td_health_grpc_verdict(g, 0, why, sizeof(why)), TD_EAGAIN);
    static const char h1[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    T_EQ_INT(td_health_grpc_recv(g, h1, sizeof(h1) - 1), TD_EBADMSG);
    T_EQ_INT(td_health_grpc_verdict(g, 0, why, sizeof(why)), 0);
    T_EQ_STR(why, "no HTTP/2: the server answered in HTTP/1.x");
    td_health_grpc_free(g);
}

static void call_closed_early_fails(void) {
    td_health_grpc_t *g = td_health_grpc_new("https", "a.test:443", "", 1000);
    T_CHECK(g != NULL);
    if (!g)
        return;
    char why[160];
    T_EQ_INT(td_health_grpc_verdict(g, 1, why, sizeof(why)), 0);
    T_EQ_STR(why, "connection closed before any HTTP/2 frame (no HTTP/2?)");
    td_health_grpc_free(g);
}

int main(void) {
    request_without_service_is_the_empty_message();
    request_with_service_has_field_1();
    long_service_gets_a_two_byte_varint();
    response_status_is_read();
    unknown_fields_are_skipped();
    partial_input_asks_for_more();
    malformed_input_is_refused();
    names_of_codes_and_statuses();
    call_starts_with_the_preface_and_fails_on_http1();
    call_closed_early_fails();
    return t_done("test_health_grpc");
}
