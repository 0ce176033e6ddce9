/* Exchanges: one request/response pair (exchange.c). */
#ifndef TD_EXCHANGE_H
#define TD_EXCHANGE_H

#include "td/proxy-t.h"

/* The client connection the exchange over `u` answers on, or NULL when `u` has no owner. */
static inline client_t *td_exchange_client_of(const upstream_t *u) {
    return u->owner ? u->owner->down : NULL;
}

void td_exchange_end(client_t *c);

/* Detaches and closes the exchange's upstream connection (it cannot be reused). */
void td_exchange_drop_upstream(client_t *c);

/* While buffering: new body bytes were accounted. Routes the request once the body is whole,
 * or the limit (or the buffer) is reached. */
void td_exchange_body_buffered(client_t *c);

/* A request head was parsed (`req`, into the worker's header array; the client's fields are set
 * from it): routes the request and starts the exchange, or answers it with td's own status. */
void td_exchange_start(client_t *c, const td_http1_request_t *req);

/* Sends what the upstream has not had yet of the current request (head, body bytes read so far;
 * in a tunnel, whatever the client sent). */
void td_exchange_request_send(client_t *c);

/* All bytes handed to the upstream so far have been written. */
void td_exchange_request_written(client_t *c);

/* The upstream connection failed during an exchange: retry on another server when that is
 * safe (nothing of the response seen, the request still whole in the buffer, and the failure was
 * a connect error, or a reset/close of an idempotent request or of one none of whose bytes left),
 * else answer 502 (504 for a timeout), or just close when the response had already started. */
void td_exchange_upstream_fail(upstream_t *u, const char *why, int kind);

/* The exchange's response is complete and written: recycle both sides. */
void td_exchange_done(upstream_t *u);

/* Hands the response bytes in u->buf to the client, honouring its framing. */
void td_exchange_response_pump(upstream_t *u);

/* The bytes handed to the client so far are written. Returns 1 when buffered response bytes
 * are waiting for the pump, 0 when it has nothing to do now (reading resumed, or exchange over). */
int td_exchange_response_written(upstream_t *u);

/* max_conns queue: dispatches the heads of the worker's queues in order, each while a server of
 * its backend has a free slot (called by the worker when a slot freed, and every tick so that a
 * missed wake-up delays a request by one tick at most). A request whose client has closed is
 * dropped unsent (499) instead. */
void td_exchange_queue_run(worker_t *w);

/* The queue deadline (timeouts.queue_ms) of the request on `c` passed: td answers 503, counted
 * in its backend's queue_timeouts and local 503s; a client that has closed is just closed (499,
 * no queue timeout). Nothing when it is no longer queued. */
void td_exchange_queue_timeout(client_t *c);

/* Counters (exchange_stats.c). */

/* A try on server `srv` of backend `b`: the request is in flight on both; it counts as a request
 * of either only once answered (a failed try counts in the server's `failures`). A retry on
 * another backend moves it there: counters follow the backend that answers, not the one first
 * chosen. */
void td_exchange_count_try(client_t *c, td_backend_stats_t *b, td_server_stats_t *srv);

/* Drops the in-flight counts of the current exchange (each taken once, released once), and the
 * server's max_conns slot the try holds: when someone waits for that backend, the workers are
 * woken to dispatch their queues (worker_t.queue_wake). */
void td_exchange_release_server(client_t *c);

void td_exchange_release_backend(client_t *c);

/* A final (or 101) response head from the server on `u`: a request answered, of its class, for
 * the server and for the backend the request is in flight on (and, for a 5xx, the time, for the
 * console's "answering errors"). */
void td_exchange_count_response(client_t *c, upstream_t *u, int status);

/* A gRPC response whose class waits for its trailers (resp.grpc_pending) ends: it counts as the
 * grpc-status they carried (td_grpc_status_http), as UNKNOWN when they had none, or when `cut`
 * (cut short: the client's call fails). Nothing when no count is pending. */
void td_exchange_count_grpc_end(client_t *c, upstream_t *u, int cut);

/* td's own answer `status`. A 5xx for a backend counts as that backend's: the one the request
 * was routed to, or, once its retries ran out of servers, the last one it tried; a 502/503/504
 * with no backend chosen counts under td itself. A 4xx (a client's fault, such as a body that
 * stopped coming) does not count. */
void td_exchange_count_reply(client_t *c, int status);

/* 101 delivered: the connection counts as a tunnel of its backend from now on (and is in the
 * worker's list of tunnels, for the drain), no longer as a request in flight. It keeps its
 * server's max_conns slot until it closes (a WebSocket holds a server connection). */
void td_exchange_count_tunnel_open(client_t *c);

void td_exchange_count_tunnel_close(client_t *c);

/* The callbacks of the client connections (set at accept). */
extern const td_client_cbs_t td_exchange_client_cbs;

#endif
