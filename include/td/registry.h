/* The registry: one object per server (backend name + address) and per backend, created on
 * first use and kept for the life of the process, holding the live counters, the passive state
 * and the active check's verdict. Routing snapshots borrow these objects, so a reload keeps them
 * for unchanged servers. Every counter is an atomic written by any thread. */
#ifndef TD_REGISTRY_H
#define TD_REGISTRY_H

#include <stdatomic.h>
#include <stdint.h>

#include "td/registry-t.h"

/* The registry's object for a server / backend, created on first use (NULL when out of memory).
 * `backend`, `name` and `address` are NUL-terminated and copied (cut to the fields' sizes).
 * Servers are listed in creation order; a new server starts up by its active check (health_up
 * 1). Any thread (a mutex guards the lists; objects are never freed). */
td_server_stats_t *td_registry_server(const char *backend, const char *address);
td_backend_stats_t *td_registry_backend(const char *name);

/* td's own counters for error answers no backend was chosen for (never NULL). */
td_local_stats_t *td_registry_local(void);

/* Counts td's own 502, 503 or 504 (other statuses are ignored) under backend `b`, the one the
 * request was routed to, or under td itself when `b` is NULL, and sets its last_5xx_ms to
 * `now_ms` (1 when now_ms is 0, since 0 means "none"); the caller counts the backend's response
 * class as before. Any thread. */
void td_router_count_local(td_backend_stats_t *b, int status, int64_t now_ms);

/* 1 when the server may receive requests now: its active check says up and it is not ejected
 * (now_ms, td_now_ms(), is at or past down_until_ms). Inline: every pick tests it for each
 * candidate server. */
static inline int td_server_is_up(const td_server_stats_t *st, int64_t now_ms) {
    return atomic_load_explicit(&st->health_up, memory_order_relaxed) &&
           atomic_load_explicit(&st->down_until_ms, memory_order_relaxed) <= now_ms;
}

/* td_now_ms() since which the server has been up without a break (0: since td started; the
 * later of its active check's last "up" and the end of its last passive ejection), or -1 when
 * it is down now. */
int64_t td_server_up_since(const td_server_stats_t *st, int64_t now_ms);

/* Adds one request duration (ms, from the first byte of its head to the end of its response) to
 * the backend's histogram (buckets td_lat_bounds_ms, a negative duration counts as 0 in the
 * sum). */
void td_router_observe(td_backend_stats_t *b, int64_t ms);

/* Counts a request pinned to the backend by a valid sticky cookie, and returns how many came in
 * the last TD_PIN_WINDOW seconds (td_router_pins_recent), for "is anyone still on blue?". */
void td_router_pin_seen(td_backend_stats_t *b, int64_t now_ms);
uint64_t td_router_pins_recent(td_backend_stats_t *b, int64_t now_ms);

/* Counts a request answered for the backend at `now_ms` (td_now_ms()), where `requests` is
 * counted (exchange_stats.c), and returns how many were answered in the last TD_PIN_WINDOW
 * seconds (td_registry_answered_recent): the backend's actual share of the traffic, which lags
 * the configured one while sticky clients stay pinned. */
void td_registry_answered(td_backend_stats_t *b, int64_t now_ms);
uint64_t td_registry_answered_recent(td_backend_stats_t *b, int64_t now_ms);

/* Counter updates of one exchange, in one place. Each is a relaxed atomic add (the counters are
 * statistics read by the admin thread; nothing is ordered by them), inline: no call on the hot
 * path. */

/* The response class index (0..TD_NCLASS-1) of an HTTP status: 1xx -> 0 ... 5xx -> 4; a status
 * below 100 counts as 1xx, one above 599 as 5xx. */
static inline int td_registry_class(int status) {
    int k = status / 100 - 1;
    return k < 0 ? 0 : k > TD_NCLASS - 1 ? TD_NCLASS - 1 : k;
}

/* A try of a request goes to the server: it is in flight there until td_registry_server_end.
 * It counts as a request of the server only once the server answers (td_registry_server_response);
 * a try that fails counts in its `failures` (td_passive_failure). */
static inline void td_registry_server_begin(td_server_stats_t *st) {
    atomic_fetch_add_explicit(&st->in_flight, 1, memory_order_relaxed);
}

static inline void td_registry_server_end(td_server_stats_t *st) {
    atomic_fetch_sub_explicit(&st->in_flight, 1, memory_order_relaxed);
}

/* The server sent a response head with `status` (final, or 101): one request answered and its
 * class are counted, as td_registry_backend_response does for its backend. */
static inline void td_registry_server_response(td_server_stats_t *st, int status) {
    atomic_fetch_add_explicit(&st->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->responses[td_registry_class(status)], 1, memory_order_relaxed);
}

/* A request is routed to the backend (in flight until td_registry_backend_end). */
static inline void td_registry_backend_begin(td_backend_stats_t *b) {
    atomic_fetch_add_explicit(&b->in_flight, 1, memory_order_relaxed);
}

static inline void td_registry_backend_end(td_backend_stats_t *b) {
    atomic_fetch_sub_explicit(&b->in_flight, 1, memory_order_relaxed);
}

/* A request routed to the backend was answered with `status`, by a server of it or by td for
 * it: one request and its class are counted. last_5xx_ms is the caller's (a server's 5xx sets
 * it, td's own through td_router_count_local). */
static inline void td_registry_backend_response(td_backend_stats_t *b, int status) {
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->responses[td_registry_class(status)], 1, memory_order_relaxed);
}

/* max_conns: takes one of the server's `max` slots (max > 0) when one is free. A compare-and-swap
 * on the shared counter, so the limit holds across workers. Returns 1 when taken (give it back
 * with td_registry_slot_give), 0 when the server is at its limit. Called only for servers with a
 * limit: a server without one costs nothing. */
static inline int td_registry_slot_take(td_server_stats_t *st, int max) {
    int64_t n = atomic_load_explicit(&st->slots, memory_order_relaxed);
    while (n < max)
        if (atomic_compare_exchange_weak_explicit(&st->slots, &n, n + 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return 1;
    return 0;
}

static inline void td_registry_slot_give(td_server_stats_t *st) {
    atomic_fetch_sub_explicit(&st->slots, 1, memory_order_acq_rel);
}

/* 1 when the server (with a limit `max` > 0) has no slot free now. */
static inline int td_registry_slot_full(const td_server_stats_t *st, int max) {
    return atomic_load_explicit(&st->slots, memory_order_relaxed) >= max;
}

/* An upstream connection to the server opened / closed (busy or idle in a pool). */
static inline void td_registry_connection_open(td_server_stats_t *st) {
    atomic_fetch_add_explicit(&st->active_connections, 1, memory_order_relaxed);
}

static inline void td_registry_connection_close(td_server_stats_t *st) {
    atomic_fetch_sub_explicit(&st->active_connections, 1, memory_order_relaxed);
}

/* A tunnel (WebSocket / Upgrade) to the backend opened / closed. */
static inline void td_registry_tunnel_open(td_backend_stats_t *b) {
    atomic_fetch_add_explicit(&b->tunnels, 1, memory_order_relaxed);
}

static inline void td_registry_tunnel_close(td_backend_stats_t *b) {
    atomic_fetch_sub_explicit(&b->tunnels, 1, memory_order_relaxed);
}

#endif
