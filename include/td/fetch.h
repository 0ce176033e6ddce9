/* HTTP requests made by td itself (a rollout's pre-check requests and webhooks, the etcd client's
 * calls and watches, other nodes' admin APIs): libcurl's multi interface driven by the main
 * thread's libuv loop (curl_multi_socket_action with a uv_poll_t per socket and one uv_timer_t),
 * so no request ever blocks the loop. Main thread only. */
#ifndef TD_FETCH_H
#define TD_FETCH_H

#include <stddef.h>

#include <uv.h>

/* What one request asks for. Every string is copied by td_fetch; NULL or "" means none. */
typedef struct td_fetch_req_s {
    const char *method;         /* "GET", "POST" (or "PUT", "DELETE": sent with the body too) */
    const char *url;            /* "http://HOST:PORT/PATH" or https:// */
    const char *connect_to;     /* "IP:PORT": connect there whatever the URL's host (a server of a
                                   backend, reached as the preview route reaches it) */
    const char *body;           /* POST body, sent as application/json */
    const char *ca_file;        /* CA bundle for https ("" = the system's) */
    int verify;                 /* 1: verify the peer's certificate and name; 0: do not */
    long timeout_ms;            /* the whole request, connect included (> 0); of a streamed
                                   request (td_fetch_start with `data`): the connect only */
    const char *cert, *key;     /* client certificate and its key (PEM files) for https */
    const char *const *headers; /* extra request headers, "Name: value" each (copied) */
    size_t num_headers;
    size_t max_body; /* td_fetch_start: capture the body up to this many bytes (more: the request
                        fails with "response body larger than N bytes"); 0: TD_FETCH_MAX_BODY.
                        Of a streamed request: the most it holds undelivered. */
} td_fetch_req_t;

/* The bound on a captured body when the request sets none: 8 MiB. */
#define TD_FETCH_MAX_BODY ((size_t)8 << 20)

/* A request started by td_fetch_start, until its done callback runs or td_fetch_cancel. */
typedef struct td_fetch_s td_fetch_t;

/* Called once when a td_fetch_start request ended: `status` and `error` as td_fetch_cb's; `body`
 * the answer's body (NUL-terminated, `len` bytes; "" of a streamed request: its data went to the
 * data callback), borrowed for the call. The handle is already gone. */
typedef void td_fetch_done_fn(void *arg, int status, const char *error, const char *body,
                              size_t len);

/* A streamed request's body as it arrives (`status` the HTTP status of the answer), in order,
 * borrowed for the call. Called from td's loop outside libcurl, so it may start requests or
 * cancel this one (td_fetch_cancel: then nothing more is called). */
typedef void td_fetch_data_fn(void *arg, int status, const char *data, size_t len);

/* Called once per request on the main thread: `status` the HTTP status (> 0), or 0 when no answer
 * came, with `error` saying why (libcurl's message, "timed out after 2000 ms"); `error` is "" with
 * an answer. Both strings are borrowed for the call. */
typedef void td_fetch_cb(void *arg, int status, const char *error);

/* Sets the module up on `loop` before td_fetch; each module that uses it calls it once (the
 * module lives until the matching number of td_fetch_shutdown). Returns 0 or TD_ENOMEM. */
int td_fetch_init(uv_loop_t *loop);

/* Starts request `rq`; `cb(arg, ...)` is called later, never from inside td_fetch. Returns 0, or
 * a negative TD_E* code (nothing started, cb not called). */
int td_fetch(const td_fetch_req_t *rq, td_fetch_cb *cb, void *arg);

/* Starts request `rq` with its body captured (data NULL: handed to `done`) or streamed (data set:
 * each chunk to `data`, no total timeout, TCP keep-alive on, then `done` at the end). `done` is
 * called later, never from inside td_fetch_start. *out (may be NULL) gets the handle, for
 * td_fetch_cancel. Returns 0, or a negative TD_E* code (nothing started, no callback). */
int td_fetch_start(const td_fetch_req_t *rq, td_fetch_done_fn *done, td_fetch_data_fn *data,
                   void *arg, td_fetch_t **out);

/* Ends request `f` (from td_fetch_start, still in flight) at once: no callback after. */
void td_fetch_cancel(td_fetch_t *f);

/* Gives back one td_fetch_init; the last cancels every request in flight (their callbacks are not
 * called) and frees the module: at shutdown, before the loop's handles are closed. */
void td_fetch_shutdown(void);

#endif
