/* HTTP requests made by td itself (a rollout's pre-check requests and webhooks): libcurl's multi
 * interface driven by the main thread's libuv loop (curl_multi_socket_action with a uv_poll_t per
 * socket and one uv_timer_t), so no request ever blocks the loop. Main thread only. */
#ifndef TD_FETCH_H
#define TD_FETCH_H

#include <stddef.h>

#include <uv.h>

/* What one request asks for. Every string is copied by td_fetch; NULL or "" means none. */
typedef struct td_fetch_req_s {
    const char *method;     /* "GET" or "POST" */
    const char *url;        /* "http://HOST:PORT/PATH" or https:// */
    const char *connect_to; /* "IP:PORT": connect there whatever the URL's host (a server of a
                               backend, reached as the preview route reaches it) */
    const char *body;       /* POST body, sent as application/json */
    const char *ca_file;    /* CA bundle for https ("" = the system's) */
    int verify;             /* 1: verify the peer's certificate and name; 0: do not */
    long timeout_ms;        /* the whole request, connect included (> 0) */
} td_fetch_req_t;

/* Called once per request on the main thread: `status` the HTTP status (> 0), or 0 when no answer
 * came, with `error` saying why (libcurl's message, "timed out after 2000 ms"); `error` is "" with
 * an answer. Both strings are borrowed for the call. */
typedef void td_fetch_cb(void *arg, int status, const char *error);

/* Sets the module up on `loop` (once, before td_fetch). Returns 0 or TD_ENOMEM. */
int td_fetch_init(uv_loop_t *loop);

/* Starts request `rq`; `cb(arg, ...)` is called later, never from inside td_fetch. Returns 0, or
 * a negative TD_E* code (nothing started, cb not called). */
int td_fetch(const td_fetch_req_t *rq, td_fetch_cb *cb, void *arg);

/* Cancels every request in flight (their callbacks are not called) and frees the module: at
 * shutdown, before the loop's handles are closed. */
void td_fetch_shutdown(void);

#endif
