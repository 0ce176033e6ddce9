/* HTTP/1.x message parsing (RFC 9112): strict, zero-copy, allocation-free.
 *
 * The head parsers are picohttpparser-style: the caller keeps the bytes in its own buffer and calls
 * again with the whole (grown) buffer whenever more arrive; the result does not depend on how the
 * bytes were split. Nothing is allocated; every string points into the caller's buffer. */
#ifndef TD_HTTP1_H
#define TD_HTTP1_H

#include "td/http1-t.h"

/* Default limits: request line 8192 bytes, head 16384 bytes, 100 headers. */
td_http1_limits_t td_http1_default_limits(void);

/* Parses a request head from buf[0..len).
 * Returns the length of the head in bytes (request line through the empty line), TD_EAGAIN when
 * the head is not complete yet, TD_EURITOOLONG (414), TD_EHDRTOOLARGE (431), TD_EVERSION (505) or
 * TD_EBADMSG (400). Rejected (TD_EBADMSG), as RFC 9112 requires or permits for a safe proxy:
 * Content-Length together with Transfer-Encoding (§6.1), differing or invalid Content-Length values
 * (§6.3), a Transfer-Encoding whose final coding is not chunked (§6.3), obs-fold (§5.2), bare CR or
 * bare LF line endings (§2.2), control characters (NUL, CR, LF, DEL, others but HTAB) in field
 * values, whitespace between field name and colon (§5.1), invalid tokens in method or field names,
 * a missing or repeated Host in HTTP/1.1 (§3.2), spaces or controls in the request-target, an
 * absolute-form target whose authority is empty or not host[:port] (no userinfo: §3.2.2, RFC 3986
 * §3.2), and request field names that spell Content-Length or Transfer-Encoding with "_" for "-"
 * (Content_Length: CGI-style backends map both spellings to one variable).
 * `headers` is an array of `max` entries; req->headers points to it on success.
 *
 * Details of the contract:
 * - `limits` may be NULL for td_http1_default_limits(). The head is only scanned up to max_head
 *   bytes, so a head that has not ended there gives TD_EHDRTOOLARGE without waiting for more;
 *   likewise a request line that has not ended after max_request_line bytes gives TD_EURITOOLONG.
 *   More than min(max, limits->max_headers) field lines give TD_EHDRTOOLARGE.
 * - Empty lines (CRLF) before the request-line are skipped (§2.2) and counted in the head length.
 * - The request-line is `method SP request-target SP HTTP/d.d CRLF` with single spaces. The target
 *   holds visible ASCII only (0x21-0x7e) and must be origin-form ("/..."), absolute-form
 *   ("scheme://..."), authority-form ("host:port", and only for CONNECT) or "*" (only for
 *   OPTIONS). HTTP/1.2 and higher minors are taken as 1.1 (RFC 9110 §2.5, RFC 9112 §2.3:
 *   minor_version is 1); a well-formed version of another major gives TD_EVERSION; a malformed
 *   one TD_EBADMSG.
 * - Field values may hold VCHAR, obs-text (0x80-0xff), SP and HTAB. Host must be an IP-literal
 *   or reg-name, optionally followed by ":" and digits (may be empty).
 * - content_length_repeated is set when identical Content-Length values came as a list or in
 *   several field lines (the caller forwards one field).
 * - Content-Length may be a list of identical values ("5, 5") or repeated with identical values;
 *   values above INT64_MAX are invalid. Transfer-Encoding in an HTTP/1.0 message is refused
 *   (§6.1, faulty framing); chunked must be the final coding, appear once and have no parameters.
 * - keep_alive: HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with "Connection: keep-alive"
 *   and without close. upgrade and expect_continue are only set for HTTP/1.1 (RFC 9110 §7.8,
 *   §10.1.1). body is TD_BODY_CHUNKED, TD_BODY_LENGTH (also for "Content-Length: 0") or
 *   TD_BODY_NONE.
 * - On an error or TD_EAGAIN the contents of *req are unspecified. */
int td_http1_parse_request(const char *buf, size_t len, const td_http1_limits_t *limits,
                           td_http1_request_t *req, td_http1_header_t *headers, size_t max);

/* Parses a response head from buf[0..len). `request_was_head` is non-zero when the request was
 * HEAD (the response then has no body whatever its headers say). 1xx, 204 and 304 responses
 * have no body (§6.3). A response with neither Content-Length nor chunked coding is
 * TD_BODY_UNTIL_CLOSE and not keep-alive. Returns the head length, TD_EAGAIN, TD_EHDRTOOLARGE or
 * TD_EBADMSG (same framing rules as requests; Host not required). HTTP/1.2 and higher minors are
 * taken as 1.1 (RFC 9110 §2.5); a version other than HTTP/1.x is TD_EBADMSG; so is a
 * Transfer-Encoding whose final coding is not chunked (a safe proxy refuses it rather than reading
 * until close). The reason phrase may be absent, with or without the SP before it.
 * resp->content_length holds the Content-Length value whenever one is present, even when the body
 * is TD_BODY_NONE (HEAD, 304). */
int td_http1_parse_response(const char *buf, size_t len, int request_was_head,
                            const td_http1_limits_t *limits, td_http1_response_t *resp,
                            td_http1_header_t *headers, size_t max);

/* Feeds chunked-body bytes to the decoder. Consumes bytes from buf[0..len) up to and including
 * the end of the chunked body (last-chunk, trailers, final CRLF) and no further.
 * If `spans` is not NULL, the chunk-data pieces found in the consumed bytes are stored there
 * (pointers into buf), at most `max_spans`; when the array is full the decoder stops early and
 * returns what it consumed so far. *nspans receives the count (0 when spans is NULL).
 * Returns the number of bytes consumed (>= 0) and sets *done to 1 once the body is complete, or
 * TD_EBADMSG on an invalid chunk size (not hex, overflow beyond 2^62), missing CRLF after data,
 * a chunk-size line or chunk extension longer than 4096 bytes, or trailers over 16384 bytes.
 * The size line must match chunk-size *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ]
 * ) CRLF exactly: whitespace after the size is accepted only before a ";", so "5 \r\n" and "5
 * ;\r\n" are errors. Trailer field lines are checked like header field lines (no obs-fold, no
 * controls). After an error the decoder keeps returning TD_EBADMSG; after the end it consumes
 * nothing. `nspans` may be NULL. */
long td_http1_chunked_feed(td_http1_chunked_t *c, const char *buf, size_t len, int *done,
                           td_str_t *spans, size_t max_spans, size_t *nspans);

/* For a head that td_http1_parse_request refused with TD_EBADMSG: a short phrase naming the rule
 * it broke ("Content-Length together with Transfer-Encoding", "obs-fold ...", "missing Host
 * ..."), for the log. Static string; "malformed request" when no single rule stands out. */
const char *td_http1_request_problem(const char *buf, size_t len);

/* Case-insensitive comparison of a field name (or token) with a NUL-terminated literal made of
 * lower-case letters, digits and '-' (e.g. "content-length"). `name` must hold no control bytes
 * (the parser's field names and values never do). Returns 1 when equal, else 0. */
int td_http1_name_is(td_str_t name, const char *lower);

/* Returns 1 when the comma-separated token list `list` (e.g. a Connection value) contains `token`
 * (lower-case literal), case-insensitively, ignoring whitespace around elements. */
int td_http1_list_has(td_str_t list, const char *token);

#endif
