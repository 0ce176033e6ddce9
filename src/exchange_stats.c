/* The registry counters of exchanges: every update of the per-request counters (requests,
 * responses by class, in flight, tunnels, td's own answers) is made here, so each counter has one
 * place. Worker threads; relaxed atomics (the registry is read by the admin thread). */
#include "td/exchange.h"

#include <stdatomic.h>

#include "td/grpc_status.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/router.h"

/* A try on server `srv` of backend `b`: the request is in flight on both; it counts as a request
 * of either only once answered. A retry on another backend moves it there: counters follow the
 * backend that answers, not the one first chosen. */
void td_exchange_count_try(client_t *c, td_backend_stats_t *b, td_server_stats_t *srv) {
    if (c->ex->b_inflight != b) {
        if (c->ex->b_inflight)
            td_registry_backend_end(c->ex->b_inflight);
        c->ex->b_inflight = b;
        td_registry_backend_begin(b);
    }
    c->ex->st_inflight = srv;
    td_registry_server_begin(srv);
}

/* A max_conns slot goes back; when requests wait for its backend (in any worker), the workers
 * are woken to dispatch them, later on their loops rather than on this stack. */
static void slot_give(client_t *c, td_server_stats_t *st, td_backend_stats_t *b) {
    td_registry_slot_give(st);
    if (atomic_load_explicit(&b->queued, memory_order_relaxed) > 0)
        c->w->queue_wake(c->w);
}

/* Drops the in-flight counts of the current exchange (each taken once, released once). */
void td_exchange_release_server(client_t *c) {
    if (c->ex->st_inflight) {
        td_registry_server_end(c->ex->st_inflight);
        c->ex->st_inflight = NULL;
    }
    if (c->ex->slot_st) {
        td_server_stats_t *st = c->ex->slot_st;
        c->ex->slot_st = NULL;
        slot_give(c, st, c->ex->slot_b);
    }
}

void td_exchange_release_backend(client_t *c) {
    if (c->ex->b_inflight) {
        td_registry_backend_end(c->ex->b_inflight);
        c->ex->b_inflight = NULL;
    }
}

/* A final (or 101) response head from the server on `u`: a request answered, of its class, for
 * the server and for the backend the request is in flight on (and, for a 5xx, the time, for the
 * console's "answering errors"). */
void td_exchange_count_response(client_t *c, upstream_t *u, int status) {
    td_registry_server_response(u->st, status);
    if (c->ex->b_inflight) {
        td_registry_backend_response(c->ex->b_inflight, status);
        td_registry_answered(c->ex->b_inflight, td_now_ms());
        if (td_registry_class(status) == TD_NCLASS - 1)
            atomic_store_explicit(&c->ex->b_inflight->last_5xx_ms, td_now_ms(),
                                  memory_order_relaxed);
    }
}

/* A gRPC response whose class waits for its trailers ends: it counts as the grpc-status they
 * carried, or as UNKNOWN when they had none (the client's call fails so) or when `cut` (the
 * response was cut short: the call fails). */
void td_exchange_count_grpc_end(client_t *c, upstream_t *u, int cut) {
    if (!c->ex->resp.grpc_pending)
        return;
    c->ex->resp.grpc_pending = 0;
    const td_http1_chunked_t *ch = &c->ex->resp.chunk;
    int code = !cut && ch->grpc_seen ? ch->grpc_status : TD_GRPC_UNKNOWN;
    if (!cut)
        c->ex->grpc_status = code;
    c->ex->resp.status = td_grpc_status_http(code);
    td_exchange_count_response(c, u, c->ex->resp.status);
}

/* td's own answer `status`. A 5xx for a backend counts as that backend's: the one the request
 * was routed to, or, once its retries ran out of servers, the last one it tried; a 502/503/504
 * with no backend chosen counts under td itself. A 4xx (a client's fault, such as a body that
 * stopped coming) does not count. */
void td_exchange_count_reply(client_t *c, int status) {
    if (c->ex && c->ex->snap && status >= 500) {
        td_backend_stats_t *bst = c->ex->backend >= 0  ? c->ex->snap->backends[c->ex->backend].st
                                  : c->ex->forced >= 0 ? c->ex->snap->backends[c->ex->forced].st
                                                       : c->ex->b_inflight;
        if (bst) {
            td_registry_backend_response(bst, status);
            td_registry_answered(bst, td_now_ms());
        }
        td_router_count_local(bst, status, td_now_ms());
    } else if (status >= 500) {
        td_router_count_local(NULL, status, td_now_ms());
    }
}

/* 101 delivered: the connection counts as a tunnel of its backend from now on (and is in the
 * worker's list of tunnels, for the drain), no longer as a request in flight. */
void td_exchange_count_tunnel_open(client_t *c) {
    td_exchange_t *x = c->ex;
    x->tun_slot_st = x->slot_st;
    x->tun_slot_b = x->slot_b;
    x->slot_st = NULL;
    x->b_tunnel = x->b_inflight;
    if (!x->b_tunnel)
        return;
    td_registry_tunnel_open(x->b_tunnel);
    x->down = c;
    x->tun_prev = NULL;
    x->tun_next = c->w->tunnels;
    if (x->tun_next)
        x->tun_next->tun_prev = x;
    c->w->tunnels = x;
}

void td_exchange_count_tunnel_close(client_t *c) {
    td_exchange_t *x = c->ex;
    if (x->tun_slot_st) {
        td_server_stats_t *st = x->tun_slot_st;
        x->tun_slot_st = NULL;
        slot_give(c, st, x->tun_slot_b);
    }
    if (!x->b_tunnel)
        return;
    td_registry_tunnel_close(x->b_tunnel);
    if (x->tun_prev)
        x->tun_prev->tun_next = x->tun_next;
    else
        c->w->tunnels = x->tun_next;
    if (x->tun_next)
        x->tun_next->tun_prev = x->tun_prev;
}
