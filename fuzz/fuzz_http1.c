/* libFuzzer target for the HTTP/1.x parser (src/http1.c).
 *
 * Input: one control byte, then the message bytes. The control byte picks the limits, whether the
 * response answers a HEAD request, and where to split the input. For each input the target runs
 * td_http1_parse_request, td_http1_parse_response and td_http1_chunked_feed and aborts when an
 * invariant breaks:
 * - a head length is at most the input length (and max_head); every string lies inside the head;
 * - a prefix of the input parses to TD_EAGAIN or to exactly the whole input's result (same
 *   offsets), and any prefix that holds the whole head gives the same result;
 * - the chunked decoder gives the same consumed count, done flag, error and data bytes whether the
 *   input is fed at once, split in two, or byte by byte, and with a small span array. */
#include "td/http1.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NH 64
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static const td_http1_limits_t limit_sets[4] = {
    {8192, 16384, 100}, /* the defaults */
    {16, 64, 4},
    {40, 200, 8},
    {0, 0, 0},
};

static int inside(td_str_t s, const char *buf, size_t len) {
    if (s.len == 0)
        return 1;
    return s.p >= buf && s.p <= buf + len && s.len <= (size_t)(buf + len - s.p);
}

static long off(td_str_t s, const char *buf) {
    return s.len ? (long)(s.p - buf) : -1;
}

static int same(td_str_t x, const char *a, td_str_t y, const char *b) {
    return x.len == y.len && off(x, a) == off(y, b);
}

static int known(int r) {
    return r == TD_EAGAIN || r == TD_EBADMSG || r == TD_EURITOOLONG || r == TD_EHDRTOOLARGE ||
           r == TD_EVERSION;
}

/* ---- requests ---- */

static void check_request(const td_http1_request_t *r, int n, const char *buf, size_t len,
                          const td_http1_limits_t *lim) {
    CHECK((size_t)n <= len && (size_t)n <= lim->max_head);
    CHECK(inside(r->method, buf, (size_t)n) && r->method.len > 0);
    CHECK(inside(r->target, buf, (size_t)n) && r->target.len > 0);
    CHECK(r->target.len <= lim->max_request_line);
    CHECK(inside(r->host, buf, (size_t)n));
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(r->num_headers <= NH && r->num_headers <= lim->max_headers);
    for (size_t i = 0; i < r->num_headers; i++) {
        CHECK(inside(r->headers[i].name, buf, (size_t)n) && r->headers[i].name.len > 0);
        CHECK(inside(r->headers[i].value, buf, (size_t)n));
    }
    CHECK(r->body == TD_BODY_NONE || r->body == TD_BODY_LENGTH || r->body == TD_BODY_CHUNKED);
    CHECK(r->body == TD_BODY_LENGTH || r->content_length == 0);
    /* HTTP/1.1 requires exactly one Host field */
    size_t hosts = 0;
    for (size_t i = 0; i < r->num_headers; i++)
        hosts += (size_t)td_http1_name_is(r->headers[i].name, "host");
    CHECK(r->minor_version == 1 ? hosts == 1 : hosts <= 1);
}

static int same_request(const td_http1_request_t *x, const char *a, const td_http1_request_t *y,
                        const char *b) {
    if (!same(x->method, a, y->method, b) || !same(x->target, a, y->target, b) ||
        !same(x->host, a, y->host, b) || x->minor_version != y->minor_version ||
        x->num_headers != y->num_headers || x->body != y->body ||
        x->content_length != y->content_length || x->conn_flags != y->conn_flags ||
        x->keep_alive != y->keep_alive || x->expect_continue != y->expect_continue ||
        x->upgrade != y->upgrade || x->head != y->head)
        return 0;
    for (size_t i = 0; i < x->num_headers; i++)
        if (!same(x->headers[i].name, a, y->headers[i].name, b) ||
            !same(x->headers[i].value, a, y->headers[i].value, b))
            return 0;
    return 1;
}

static void fuzz_request(const char *buf, size_t len, size_t split, const td_http1_limits_t *lim) {
    static td_http1_header_t h1[NH], h2[NH];
    td_http1_request_t full, part;
    int n = td_http1_parse_request(buf, len, lim, &full, h1, NH);
    CHECK(n >= 0 || known(n));
    if (n > 0)
        check_request(&full, n, buf, len, lim);
    if (n == TD_EBADMSG) /* the explanation for the log must cope with anything refused */
        CHECK(td_http1_request_problem(buf, len)[0] != 0);

    size_t cuts[3] = {split, len ? len - 1 : 0, n > 0 ? (size_t)n : 0};
    for (int i = 0; i < 3; i++) {
        size_t k = cuts[i];
        if (k > len)
            continue;
        /* an exact-size copy, so that ASan sees any read past the prefix */
        char *b = malloc(k ? k : 1);
        memcpy(b, buf, k);
        int m = td_http1_parse_request(b, k, lim, &part, h2, NH);
        if (n == TD_EAGAIN)
            CHECK(m == TD_EAGAIN);
        else if (n > 0 && k >= (size_t)n)
            CHECK(m == n);
        else
            CHECK(m == TD_EAGAIN || m == n);
        if (m > 0)
            CHECK(same_request(&full, buf, &part, b));
        free(b);
    }
}

/* ---- responses ---- */

static int same_response(const td_http1_response_t *x, const char *a, const td_http1_response_t *y,
                         const char *b) {
    if (x->status != y->status || !same(x->reason, a, y->reason, b) ||
        x->minor_version != y->minor_version || x->num_headers != y->num_headers ||
        x->body != y->body || x->content_length != y->content_length ||
        x->conn_flags != y->conn_flags || x->keep_alive != y->keep_alive)
        return 0;
    for (size_t i = 0; i < x->num_headers; i++)
        if (!same(x->headers[i].name, a, y->headers[i].name, b) ||
            !same(x->headers[i].value, a, y->headers[i].value, b))
            return 0;
    return 1;
}

static void fuzz_response(const char *buf, size_t len, size_t split, int head,
                          const td_http1_limits_t *lim) {
    static td_http1_header_t h1[NH], h2[NH];
    td_http1_response_t full, part;
    int n = td_http1_parse_response(buf, len, head, lim, &full, h1, NH);
    CHECK(n >= 0 || n == TD_EAGAIN || n == TD_EBADMSG || n == TD_EHDRTOOLARGE);
    if (n > 0) {
        CHECK((size_t)n <= len && (size_t)n <= lim->max_head);
        CHECK(full.status >= 100 && full.status <= 999);
        CHECK(full.minor_version == 0 || full.minor_version == 1);
        CHECK(inside(full.reason, buf, (size_t)n));
        CHECK(full.num_headers <= NH && full.num_headers <= lim->max_headers);
        for (size_t i = 0; i < full.num_headers; i++) {
            CHECK(inside(full.headers[i].name, buf, (size_t)n) && full.headers[i].name.len > 0);
            CHECK(inside(full.headers[i].value, buf, (size_t)n));
        }
        if (head || full.status < 200 || full.status == 204 || full.status == 304)
            CHECK(full.body == TD_BODY_NONE);
        if (full.body == TD_BODY_UNTIL_CLOSE)
            CHECK(!full.keep_alive);
    }
    size_t cuts[3] = {split, len ? len - 1 : 0, n > 0 ? (size_t)n : 0};
    for (int i = 0; i < 3; i++) {
        size_t k = cuts[i];
        if (k > len)
            continue;
        char *b = malloc(k ? k : 1);
        memcpy(b, buf, k);
        int m = td_http1_parse_response(b, k, head, lim, &part, h2, NH);
        if (n == TD_EAGAIN)
            CHECK(m == TD_EAGAIN);
        else if (n > 0 && k >= (size_t)n)
            CHECK(m == n);
        else
            CHECK(m == TD_EAGAIN || m == n);
        if (m > 0)
            CHECK(same_response(&full, buf, &part, b));
        free(b);
    }
}

/* ---- chunked bodies ---- */

typedef struct decoded_s {
    long consumed; /* or the error */
    int done;
    size_t len;
    char *data; /* owned */
} decoded_t;

/* Decodes buf[0..len) fed in pieces of at most `step` bytes (each in an exact-size copy) with a
 * span array of `max_spans` entries (0: no spans, data not collected). */
static void dechunk(const char *buf, size_t len, size_t step, size_t max_spans, decoded_t *out) {
    td_http1_chunked_t c = {0};
    c.want_grpc = step & 1; /* noting grpc-status must not change the framing */
    td_str_t spans[4];
    size_t pos = 0, ns;
    out->consumed = 0;
    out->done = 0;
    out->len = 0;
    out->data = malloc(len ? len : 1);
    while (pos < len && !out->done) {
        size_t n = len - pos < step ? len - pos : step;
        char *b = malloc(n);
        memcpy(b, buf + pos, n);
        long r =
            td_http1_chunked_feed(&c, b, n, &out->done, max_spans ? spans : NULL, max_spans, &ns);
        if (r < 0) {
            CHECK(r == TD_EBADMSG);
            free(b);
            out->consumed = r;
            return;
        }
        CHECK((size_t)r <= n);
        CHECK(max_spans ? ns <= max_spans : ns == 0);
        size_t covered = 0;
        for (size_t i = 0; i < ns; i++) {
            CHECK(spans[i].len > 0 && inside(spans[i], b, (size_t)r));
            covered += spans[i].len;
            memcpy(out->data + out->len, spans[i].p, spans[i].len);
            out->len += spans[i].len;
        }
        CHECK(covered <= (size_t)r);
        /* the decoder stops short of a piece only at the end of the body or on a full array */
        if ((size_t)r < n)
            CHECK(out->done || (max_spans && ns == max_spans));
        /* a feed that makes no progress must be at the end (or need a free span) */
        CHECK(r > 0 || out->done);
        pos += (size_t)r;
        free(b);
    }
    out->consumed = (long)pos;
    if (out->done) {
        /* after the end, nothing more is consumed */
        int d = 0;
        size_t k;
        CHECK(td_http1_chunked_feed(&c, buf, len, &d, spans, 4, &k) == 0 && d == 1 && k == 0);
    }
}

static int same_decoding(const decoded_t *a, const decoded_t *b, int compare_data) {
    if (a->consumed != b->consumed || a->done != b->done)
        return 0;
    if (a->consumed < 0 || !compare_data)
        return 1;
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static void fuzz_chunked(const char *buf, size_t len, size_t split) {
    decoded_t whole, two, bytes, small, blind;
    dechunk(buf, len, len ? len : 1, 4, &whole);
    dechunk(buf, len, split ? split : 1, 4, &two);
    CHECK(same_decoding(&whole, &two, 1));
    dechunk(buf, len, len ? len : 1, 1, &small);
    CHECK(same_decoding(&whole, &small, 1));
    dechunk(buf, len, len ? len : 1, 0, &blind);
    CHECK(same_decoding(&whole, &blind, 0));
    if (len <= 4096) {
        dechunk(buf, len, 1, 4, &bytes);
        CHECK(same_decoding(&whole, &bytes, 1));
        free(bytes.data);
    }
    free(whole.data);
    free(two.data);
    free(small.data);
    free(blind.data);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    unsigned ctl = data[0];
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;
    const td_http1_limits_t *lim = &limit_sets[ctl & 3];
    int head = (ctl >> 2) & 1;
    size_t split = len ? ((size_t)(ctl >> 3) * 7919u) % (len + 1) : 0;

    fuzz_request(buf, len, split, lim);
    fuzz_response(buf, len, split, head, lim);
    fuzz_chunked(buf, len, split);

    /* the helpers on arbitrary bytes: must not read out of bounds */
    td_str_t s = {buf, len};
    (void)td_http1_list_has(s, "close");
    (void)td_http1_name_is(s, "content-length");
    return 0;
}
