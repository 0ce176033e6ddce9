/* Client connections (client.c). */
#ifndef TD_CLIENT_H
#define TD_CLIENT_H

#include "td/proxy-t.h"
#include "td/stream.h"

/* Client connections open now, across workers (td_proxy_connections). */
extern _Atomic int64_t td_client_open_count;

int td_client_timeout_ms(const client_t *c, int which);

/* Makes buf hold at least `cap` bytes, keeping its contents. Returns 0 or TD_ENOMEM (buf is
 * unchanged then). Pointers into the old buffer (a parsed head) are invalid afterwards. */
int td_client_buf_grow(client_t *c, uint32_t cap);

void td_client_close(client_t *c);

/* Client timeouts are deadlines in the worker's timeout queues, checked by its clock (every
 * TICK_MS) rather than a timer handle per connection: an idle connection stays small, and the
 * tick looks only at the expired ones. */
void td_client_timer(client_t *c, int which);

void td_client_read(client_t *c, int on);

/* Counts the request-body bytes that have arrived in buf[req_end..len) and moves req_end past
 * them. Returns 0, or TD_EBADMSG for invalid chunked framing. */
int td_client_account_body(client_t *c);

/* A write to the client could not finish at once: the client send timeout starts. It measures
 * the client, not the backend: the upstream's response timeout does not run meanwhile. */
void td_client_send_wait(client_t *c);

/* The client send deadline passed. A client that took some of the pending bytes since the last
 * look gets a new period (the timeout is between two writes that make progress, as nginx's
 * send_timeout, not for the whole response); one that took nothing is closed, as its own fault:
 * nothing is charged to the backend. */
void td_client_send_timeout(client_t *c, int64_t now);

/* Answers the current request with td's own `status` (td_client_reply, the standard reason) and
 * logs it with td_client_log; when the response already started or a write is pending, closes
 * instead. */
void td_client_error(client_t *c, int status, const char *why);

/* Logs a warning about the current request of `c`: "STATUS METHOD TARGET from IP:PORT: why"
 * ("502 GET /api/cart from 127.0.0.1:5312: backend green server 127.0.0.1:8102: connection
 * refused"; no STATUS when `status` is 0; "-" for a method or target not known). The target is
 * cut at TD_LOG_TARGET_MAX bytes and escaped (td_log_escape): a client cannot put a line break
 * or a terminal escape into td's log. At most one line a second per worker for each reason
 * (status and why); the rest are counted in the summary td_client_log_flush writes. */
void td_client_log(client_t *c, int status, const char *why);

/* Writes "N more like this in the last second: REASON" for each reason whose second of rate
 * limiting is over at `now_ms` (td_now_ms()) and that had lines not logged (none when there were
 * none). The worker calls it every tick. */
void td_client_log_flush(worker_t *w, int64_t now_ms);

/* Answers with a small response of td's own (an error, a redirect), then ends the exchange:
 * the connection stays for 3xx and 5xx when the whole request was read, else it closes.
 * `headers` are extra header lines, each ending in CRLF. To a gRPC request (Content-Type
 * application/grpc*) a 4xx or 5xx goes out as a trailers-only gRPC answer: 200, grpc-status
 * td_grpc_status_of_http(status), grpc-message "STATUS REASON"; the log keeps `status`. */
void td_client_reply(client_t *c, int status, const char *reason, const char *headers);

/* A client's deadline passed. */
void td_client_timeout(client_t *c);

/* Ends the current exchange and starts on the next request (pipelined bytes first). */
void td_client_next(client_t *c);

void td_client_write_done_cb(td_stream_t *s, int status);

/* What an exchange uses of its downstream (the connection it answers on). */

/* Writes iov[0..n) to the client (td_stream_write: iov[0] may be scratch when `volatile_first`);
 * `final_head` says a final response head is among them (td can no longer answer with its own
 * status then). Returns 0 when written now, 1 when pending (the client send timeout runs and
 * on_written follows), or a negative code (the caller closes the connection). */
int td_client_send(client_t *c, td_iov_t *iov, unsigned n, int volatile_first, int final_head);

/* The timeouts the connection's deadlines use: `t` (borrowed: the exchange's snapshot's, held
 * while it lasts), or NULL for the worker's newest snapshot's. */
void td_client_use_timeouts(client_t *c, const td_config_timeouts_t *t);

/* The connection closes after this request (its response says Connection: close). */
void td_client_no_keep_alive(client_t *c);

/* The request's Upgrade is not passed on (h2c): the request is forwarded as a plain one. */
void td_client_no_upgrade(client_t *c);

/* Close once the pending write completes (the other side of a tunnel ended). */
void td_client_close_after_write(client_t *c);

/* Stops the head / keep-alive / body timeout. */
void td_client_timer_stop(client_t *c);

/* The request bytes in buf were all forwarded and the body goes on: they are dropped to make room
 * (the request can no longer be replayed). */
void td_client_drop_sent(client_t *c);

/* A 101 was delivered: the connection becomes a byte tunnel (state TUNNEL, no timeout); the bytes
 * read past the request move to the front of buf, to be forwarded. */
void td_client_tunnel(client_t *c);

/* The tunnel bytes in buf were forwarded: buf is emptied and reading resumes. */
void td_client_tunnel_sent(client_t *c);

/* 1 when the connection is TLS (for X-Forwarded-Proto and the sticky cookie's Secure). */
static inline int td_client_is_tls(const client_t *c) {
    return td_stream_is_tls(&c->io);
}

/* The exchange's response is complete: the next request (td_client_next) when the connection
 * is kept alive and the whole request was read, else close. */
void td_client_end(client_t *c);

#endif
