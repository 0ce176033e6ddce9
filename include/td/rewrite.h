/* HTTP message rewriting that needs no connection: pure functions over heads and status codes.
 * A proxied request or response head is rebuilt for the next hop: hop-by-hop fields removed
 * (RFC 9110 §7.6.1), X-Forwarded-* set, absolute-form targets turned into origin-form (RFC 9112
 * §3.2.2), repeated Content-Length merged (RFC 9110 §8.6). Shared by the proxy, the admin API and
 * the demo backend. */
#ifndef TD_REWRITE_H
#define TD_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "td/http1-t.h"

/* The reason phrase for a status code (RFC 9110 §15), e.g. 503 → "Service Unavailable"; a code
 * with no registered phrase that td uses gets "Status". The string is static: never freed. */
const char *td_http_reason(int status);

/* 1 for the hop-by-hop fields (RFC 9110 §7.6.1: Connection, Keep-Alive, Proxy-Connection, TE,
 * Trailer, Transfer-Encoding, Upgrade), which td never forwards as they came. */
int td_rewrite_hop_by_hop(td_str_t name);

/* 1 when `name` is the preview header `header` (configured, mixed case) or its token header
 * ("<header>-Token"): both are removed before forwarding. */
int td_rewrite_preview_field(td_str_t name, const char *header);

/* Splits an absolute-form target ("http://example.com/x?q") into its authority ("example.com")
 * and the origin-form rest ("/x?q", possibly empty or starting with '?'). Returns 1 for an
 * absolute-form target, else 0 (nothing written). Pointers are into `target`. */
int td_rewrite_absolute_form(td_str_t target, td_str_t *authority, td_str_t *rest);

/* What the request head for the upstream is built from. */
typedef struct td_rewrite_request_s {
    const td_http1_request_t *req; /* borrowed: the parsed head; its strings point into ... */
    const char *head_end;          /* borrowed: ... the head bytes, which end here (after CRLF) */
    const char *preview_header;    /* borrowed: removed with its token header; NULL: none */
    const char *client_ip;         /* borrowed: appended to X-Forwarded-For */
    const char *default_host;      /* borrowed: Host for a request without one, or NULL */
    int https;                     /* X-Forwarded-Proto: https, else http */
    int upgrade;                   /* the Upgrade is forwarded (Connection: upgrade) */
    int drop_expect;               /* td answered Expect: 100-continue itself: not forwarded */
    int te_trailers; /* an HTTP/2 backend: a TE listing "trailers" goes on as "TE: trailers"
                        (the one TE HTTP/2 allows, RFC 9113 §8.2.2; gRPC needs it) */
} td_rewrite_request_t;

/* Writes the request head for the upstream into out[cap]: the method, the origin-form target and
 * HTTP/1.1; the field lines that pass copied as they came (one copy per run of kept lines); then
 * Transfer-Encoding: chunked for a chunked body, the merged Content-Length, Connection/Upgrade,
 * Host (from an absolute-form authority, or default_host), X-Forwarded-For (the client's chain
 * plus client_ip), X-Forwarded-Proto and X-Forwarded-Host, and with te_trailers "TE: trailers"
 * when the client's TE listed trailers. Fields listed in Connection are
 * removed, except Content-Length and Host (removing those would let a body be read as a request
 * of its own). Returns the length, or -1 when it does not fit. */
int td_rewrite_request(const td_rewrite_request_t *r, char *out, size_t cap);

/* What the response head for the client is built from. */
typedef struct td_rewrite_response_s {
    const td_http1_response_t *resp; /* borrowed: the parsed head; its strings point into ... */
    const char *head_end;            /* borrowed: ... the head bytes, which end here */
    const char *set_cookie;          /* borrowed: a whole "Set-Cookie: ...\r\n" line, or NULL */
    int pass_te;    /* Transfer-Encoding passes as it came (the chunked body is passed through) */
    int keep_alive; /* the client connection stays open after this response */
    int minor;      /* the client's HTTP/1.x minor version */
} td_rewrite_response_t;

/* Writes the response head for the client into out[cap]: HTTP/1.1, the status and reason, the
 * field lines that pass (hop-by-hop removed; Upgrade kept on a 101), the merged Content-Length,
 * then for a final response the Set-Cookie line and Connection: close (or keep-alive for an
 * HTTP/1.0 client), for a 101 Connection: upgrade. Returns the length, or -1. */
int td_rewrite_response(const td_rewrite_response_t *r, char *out, size_t cap);

/* The sticky cookie's attributes (routing.cookie). */
typedef struct td_rewrite_cookie_s {
    const char *name;  /* borrowed */
    const char *value; /* borrowed: td_sticky_make's value */
    int max_age_s;
    int http_only;
    int secure;
    int same_site; /* td_same_site_t: Lax, Strict, None */
} td_rewrite_cookie_t;

/* Writes "Set-Cookie: name=value; Max-Age=N; Path=/[; HttpOnly][; Secure]; SameSite=X\r\n" into
 * out[cap]. Returns the length, or -1 when it does not fit (RFC 6265 §4.1). */
int td_rewrite_set_cookie(const td_rewrite_cookie_t *c, char *out, size_t cap);

#endif
