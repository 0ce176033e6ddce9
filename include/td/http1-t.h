/* Types of the HTTP/1.x message parser (RFC 9112). */
#ifndef TD_HTTP1_T_H
#define TD_HTTP1_T_H

#include "td/common-t.h"

/* One header field; both strings point into the caller's buffer. The value has leading and
 * trailing whitespace (SP / HTAB) removed. */
typedef struct td_http1_header_s {
    td_str_t name;
    td_str_t value;
} td_http1_header_t;

/* How the message body is delimited (RFC 9112 §6.3). */
typedef enum td_http1_body_e {
    TD_BODY_NONE = 0,        /* no body (no framing headers; HEAD / 1xx / 204 / 304 responses) */
    TD_BODY_LENGTH = 1,      /* exactly content_length bytes */
    TD_BODY_CHUNKED = 2,     /* chunked transfer coding (the final coding) */
    TD_BODY_UNTIL_CLOSE = 3, /* responses only: body runs until the server closes */
} td_http1_body_t;

/* Limits enforced while parsing, even on incomplete input. */
typedef struct td_http1_limits_s {
    size_t max_request_line; /* bytes, CRLF excluded; longer gives TD_EURITOOLONG (default 8192) */
    size_t max_head; /* bytes of the whole head, CRLFCRLF included; larger gives TD_EHDRTOOLARGE */
    size_t max_headers; /* header fields; more gives TD_EHDRTOOLARGE; at most the array size */
} td_http1_limits_t;

/* Connection-related facts derived from the headers. */
enum {
    TD_CONN_CLOSE = 1 << 0,     /* "Connection: close" present */
    TD_CONN_KEEPALIVE = 1 << 1, /* "Connection: keep-alive" present */
    TD_CONN_UPGRADE = 1 << 2,   /* "Connection: upgrade" present */
    TD_CONN_OTHER = 1 << 3,     /* Connection lists other tokens (headers to remove) */
};

/* A parsed request head. Every td_str_t points into the buffer given to the parser. */
typedef struct td_http1_request_s {
    td_str_t method;
    td_str_t target;   /* request-target as sent (origin-form, absolute-form, "*" or authority) */
    int minor_version; /* 0 or 1 */
    td_http1_header_t *headers; /* borrowed: the caller's array */
    size_t num_headers;
    td_str_t host;           /* value of the single Host header (len 0 when absent) */
    td_http1_body_t body;    /* TD_BODY_NONE, TD_BODY_LENGTH or TD_BODY_CHUNKED */
    uint64_t content_length; /* bytes, when body == TD_BODY_LENGTH */
    unsigned conn_flags;     /* TD_CONN_* */
    /* Content-Length came as several (identical) values, in a list ("5, 5") or in several field
     * lines: a proxy forwards one field instead (RFC 9110 §8.6). Only with TD_BODY_LENGTH. */
    unsigned content_length_repeated : 1;
    unsigned keep_alive : 1;      /* the client wants the connection kept after this exchange */
    unsigned expect_continue : 1; /* "Expect: 100-continue" */
    unsigned upgrade : 1;         /* an Upgrade header and "Connection: upgrade" are both present */
    unsigned head : 1;            /* method is HEAD */
} td_http1_request_t;

/* A parsed response head. */
typedef struct td_http1_response_s {
    int status; /* 100..999 */
    td_str_t reason;
    int minor_version;
    td_http1_header_t *headers; /* borrowed: the caller's array */
    size_t num_headers;
    td_http1_body_t body;    /* NONE, LENGTH, CHUNKED or UNTIL_CLOSE */
    uint64_t content_length; /* bytes: the Content-Length value when present (0 otherwise) */
    unsigned conn_flags;     /* TD_CONN_* */
    /* Content-Length came as several identical values (a list or several field lines): a proxy
     * forwards one field instead (RFC 9110 §8.6). Also set when the body is TD_BODY_NONE. */
    unsigned content_length_repeated : 1;
    unsigned keep_alive : 1; /* the server allows reuse of the connection after this response */
} td_http1_response_t;

/* Incremental chunked-body decoder state (RFC 9112 §7.1). Zero-initialise before the first feed. */
typedef struct td_http1_chunked_s {
    int state;            /* internal */
    uint64_t remaining;   /* data bytes left in the current chunk */
    size_t line_len;      /* bytes seen in the current size / trailer line (bounded) */
    size_t trailer_bytes; /* bytes of trailer section seen (bounded) */
    /* Set by the caller for a gRPC response: the decoder then notes the grpc-status trailer
     * field as it walks the trailer section (no copy). */
    uint8_t want_grpc;
    uint8_t grpc_seen;    /* a grpc-status trailer field was seen */
    uint8_t tr_match;     /* internal: bytes of "grpc-status" matched in a name; 0xff: no match */
    uint8_t tr_grpc;      /* internal: where in a grpc-status value (http1_chunked.c) */
    uint16_t grpc_status; /* its code (0..999; UNKNOWN 2 when not a number), if grpc_seen */
} td_http1_chunked_t;

#endif
