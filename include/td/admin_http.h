/* The admin HTTP server: connections on admin.address, requests parsed with td's HTTP/1.x
 * parser, the Host/Origin checks and the bearer token, the body limit with a lingering close, and
 * the replies. What a request means is its handler's business (admin_api.c). */
#ifndef TD_ADMIN_HTTP_H
#define TD_ADMIN_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "td/admin_http-t.h"
#include "td/config-t.h"

/* Listens on `address` in `loop` and answers every whole request with `handler` (borrowed; a
 * static function). `token` (copied; "" or NULL: none) is the bearer token: the handler learns
 * from td_admin_request_t.authorized whether it was given. Without a token, a request whose Host
 * is not this admin address (as bound, the address the client reached, or localhost / 127.0.0.1 /
 * [::1] with the bound port) gets 421, and one with an Origin that is not http(s)://<that same
 * host:port> gets 403, before the handler sees it. A request must arrive whole within 10 s; a
 * body is read up to 1 MiB (Content-Length only: chunked gets 411), over that td answers 413,
 * shuts down its write side and discards the rest (lingering close). At most 256 connections:
 * a new one beyond that closes the oldest that has no request being handled (idle, or still
 * sending), or is refused when every one has; a new connection that sends nothing for 5 s is
 * closed. Refused requests (4xx/5xx), failed TLS handshakes and those evictions are logged with
 * the client's IP:PORT and the target escaped, one line a second per reason, then
 * "N more like this in the last second: REASON" (from a 1 s timer of `loop`).
 * Returns 0, or TD_EIO with "cannot listen on ADDRESS (admin): reason" in err[errlen]. */
int td_admin_http_listen(uv_loop_t *loop, const td_addr_t *address, const char *token,
                         td_admin_handler_fn *handler, char *err, size_t errlen);

/* Sets the token in force from a newly applied config: a non-empty `token` (copied) replaces it
 * at once; an empty one is ignored. Returns 1 when a token stays in force that the config no
 * longer has, else 0. */
int td_admin_http_set_token(const char *token);

/* Makes new connections speak TLS with `tls`'s certificates (the server takes its own reference;
 * NULL: plain HTTP). Set before td_admin_http_listen; a later call (new certificates on a reload)
 * applies to the connections that come next. Returns 0. */
struct td_tls_server_s;
int td_admin_http_set_tls(struct td_tls_server_s *tls);
/* The same for admin.read_token (td_admin_request_t.read_only tells a request made with it). */
int td_admin_http_set_read_token(const char *token);

/* A path (NUL-terminated, copied; at most 63 bytes) whose GET and HEAD requests skip the Host and
 * Origin checks of a server without a token: an answer that changes nothing and tells nothing
 * secret (td's readiness), for probes that send their own host name (a load balancer's health
 * check). Its non-2xx answers are logged at debug level only, so a probe does not flood the
 * log. One path; "" for none (the default). */
void td_admin_http_open_path(const char *path);

/* Adds the header `line` ("Name: value", no CRLF; borrowed, static storage) to the reply of the
 * request being handled: called by the handler before it returns; the next reply sent carries
 * it, then it is forgotten. NULL adds none. Admin loop. */
void td_admin_http_reply_header(const char *line);

/* A reply that comes later: called by a handler whose answer waits for something asynchronous
 * (etcd). Returns the handle for td_admin_http_finish (NULL when out of memory or called outside
 * a handler); the handler then returns td_admin_http_later(), whatever it is. Until the reply is
 * finished the connection reads no further request (the client may still close it). */
typedef struct td_admin_deferred_s td_admin_deferred_t;
td_admin_deferred_t *td_admin_http_defer(void);

/* What a deferring handler returns (status 0: the reply comes through td_admin_http_finish). */
static inline td_admin_reply_t td_admin_http_later(void) {
    return (td_admin_reply_t){0, NULL, NULL, 0, NULL, NULL};
}

/* Sends `reply` (its body owned: freed here) for the deferred request `d`, with `header`
 * ("Name: value", copied; NULL: none) added; frees `d`. Exactly once per handle; also from
 * inside the handler that deferred. When the connection was closed meanwhile the reply is
 * dropped. Admin loop. */
void td_admin_http_finish(td_admin_deferred_t *d, td_admin_reply_t reply, const char *header);

/* Stops listening and closes every connection. */
void td_admin_http_stop(void);

/* After an upgrade handed the listening socket over: stops listening; each open connection gets
 * its exchange under way finished and its next request answered (a GET or HEAD as always, any
 * other method 503 {"error": ...} with Retry-After: 1: the new process has the state), with
 * Connection: close; a connection idle for a second is closed. td_admin_http_stop still ends
 * it all. */
void td_admin_http_hand_off(void);

/* Makes the next td_admin_http_listen take `fd` (owned from then on: a socket already bound and
 * listening, handed over by the td process before on an upgrade) instead of binding the address.
 */
void td_admin_http_adopt(int fd);

/* The listening socket's descriptor (borrowed), or -1 when not listening. */
int td_admin_http_fd(void);

/* The reply {"error": MSG} (pretty-printed JSON and a newline) with `status`; a 500 "out of
 * memory" when it cannot be built. */
td_admin_reply_t td_admin_http_error(int status, const char *msg);

/* The reply with the JSON document `j` (a jansson json_t *, owned: released here; NULL when it
 * could not be built), pretty-printed with a newline, and `status`; a 500 "out of memory" when
 * the text cannot be made. */
struct json_t;
td_admin_reply_t td_admin_http_json(int status, struct json_t *j);

#endif
