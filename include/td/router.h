/* The router: the per-request routing decisions on a snapshot: backend pick (round robin,
 * sticky session, failover), server pick, failover order, shares, drain. It includes the layers
 * it decides with (the registry, snapshots, passive detection), so its includers see the whole
 * routing API; those lower headers never include this one. */
#ifndef TD_ROUTER_H
#define TD_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "td/router-t.h"
#include "td/registry.h"
#include "td/snapshot.h"
#include "td/passive.h"

/* 1 when any server of the backend is up. */
int td_backend_is_up(const td_snap_backend_t *b, int64_t now_ms);

/* td_now_ms() since which the backend has had a server up without a break (the earliest
 * td_server_up_since of its up servers with weight above 0), or -1 when none is up. */
int64_t td_backend_up_since(const td_snap_backend_t *b, int64_t now_ms);

/* 1 when the backend is draining: state drain or maint, or weight 0 outside failover (in
 * failover a weight-0 backend is a backup, not drained: its pool and tunnels stay). */
int td_backend_draining(const td_snapshot_t *s, const td_snap_backend_t *b);

/* Failover order: fills order[] (num_backends entries) with the indices of the ready backends by
 * weight, highest first, ties and weight-0 backups in listed order, then the backends in drain or
 * maint (no candidates) as listed. Returns the number of candidates (ready backends); when it is
 * above 0, order[0] is the primary. */
size_t td_router_failover_order(const td_snapshot_t *s, size_t *order);

/* What new requests get now, as td_router_pick_backend decides it: share[i] (0..1, summing to 1,
 * or all 0 when every request would get 503) for each of the snapshot's num_backends backends.
 * round_robin / sticky: weight over the sum of the weights of the ready backends that are up
 * (drain and maint get 0), each at its slow start's ramp (td_router_ramp_weight);
 * failover: 1 for the serving backend. Returns the serving backend's index in failover, the
 * number of backends with a share above 0 otherwise, or TD_EUNAVAIL when none has one. */
int td_router_shares(const td_snapshot_t *s, int64_t now_ms, double *share);

/* Chooses the backend for a new request. `wrr` is the caller's running score array of
 * num_backends entries (see td_balancer_pick). `pinned` is the backend a valid sticky cookie names
 * (-1 when none): it is used while it is up and not drained (td_backend_drained), whatever its
 * weight. `tried`, when not NULL, marks backends already tried for this request (num_backends
 * entries, 1 = skip).
 * round_robin / sticky: smooth weighted round robin over up backends with weight > 0 in state
 * ready, each at its slow start's ramp (td_router_ramp_weight).
 * failover: the first backend in failover order (td_router_failover_order: ready backends only)
 * that has a server up; `wrr` is not used (may be NULL). With no weight above 0 there is no
 * primary: TD_EUNAVAIL (a primary in drain or maint passes its role on, even to a weight-0
 * backup).
 * A backend earlier in that order that came back less than its failback_ms ago is passed over
 * while a later one that was up before it keeps serving, so a flapping primary does not bounce
 * the traffic.
 * Passive ejections alone never make it give up: when they took out every candidate, the pick
 * ignores them. Returns the backend index, or TD_EUNAVAIL when no candidate is up by its active
 * checks. */
int td_router_pick_backend(const td_snapshot_t *s, int *wrr, int pinned, const uint8_t *tried,
                           int64_t now_ms);

/* Slow start (HAProxy's slowstart, nginx Plus's slow_start): a server with slow_start_ms > 0
 * that comes up (its active check says up, a passive ejection ends, or its weight goes from 0 to
 * above 0 in a new snapshot) weighs max(5 %, t / slow_start_ms) of its weight t ms later, until
 * it weighs its full weight at slow_start_ms. A server up since td started (or since the
 * snapshot that added it) is warm. A backend is weighed in round_robin and sticky by the largest
 * ramp among its up servers, and by its own ramp after its weight went from 0 to above 0 (over
 * its largest slow_start_ms), whichever is smaller; failover's choice of backend does not ramp.
 *
 * The ramp after `elapsed_ms` of `slow_start_ms` (<= 0: off), in per mille:
 * TD_RAMP_FLOOR..TD_RAMP_FULL (TD_RAMP_FULL once elapsed_ms >= slow_start_ms). */
int td_router_ramp_permille(int64_t elapsed_ms, int64_t slow_start_ms);

/* `weight` (0..100) at `permille` of its ramp, in the scaled unit picks balance with:
 * weight * TD_RAMP_SCALE * permille / TD_RAMP_FULL (at most 100 * TD_RAMP_SCALE, so sums over
 * TD_CONFIG_MAX_SERVERS servers stay far from INT_MAX). */
int td_router_ramp_weight(int weight, int permille);

/* Milliseconds left of the server's slow start at `now_ms`, or -1 when it is not ramping (off,
 * warm, down, or done). */
int64_t td_router_slow_start_remaining(const td_snap_server_t *sv, int64_t now_ms);

/* Milliseconds left of backend b's slow start at `now_ms` (its own ramp since it started taking
 * new requests, or its warmest up server's), or -1 when it is not ramping (off, warm, or done). */
int64_t td_router_backend_slow_start_remaining(const td_snap_backend_t *b, int64_t now_ms);

/* Chooses a server of backend `b` by smooth weighted round robin over its up servers, each at
 * its slow start's ramp (td_router_ramp_weight). `wrr` holds num_servers scores for this
 * backend; `tried` (may be NULL) marks servers to skip.
 * A server with a max_conns whose slots are all held (td_registry_slot_full) is skipped too; the
 * caller still takes the slot (td_registry_slot_take), which another worker may have won
 * meanwhile. Returns the index within b->servers, TD_EFULL when the only servers that could take
 * the request are at their max_conns (it waits in the backend's queue), or TD_EUNAVAIL. */
int td_router_pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried,
                          int64_t now_ms);

/* 1 when the backend has been draining (td_backend_draining) for at least drain_ms, or at once
 * in state maint: pinned sticky clients then move on, and its tunnels are closed. */
int td_backend_drained(const td_snapshot_t *s, const td_snap_backend_t *b, int64_t now_ms);

/* Index of the backend named name[0..len) in s, or -1. */
int td_snapshot_find_backend(const td_snapshot_t *s, const char *name, size_t len);

/* ---------------------------------------------------------------------------------------------
 * Per-request routing decisions: what a request's head says about where it goes. Worker
 * threads; `s` is the snapshot the request was routed with (borrowed). */

struct td_http1_request_s;

/* The preview route: "<preview_header>: blue" with "<preview_header>-Token: TOKEN" reaches blue
 * whatever its weight (the token compared in constant time). Returns the backend index, or -1
 * when the preview route is off (no token configured), the fields are absent, the backend is
 * unknown or the token is wrong. */
int td_router_preview(const td_snapshot_t *s, const struct td_http1_request_s *req);

/* Sticky sessions: the backend named by the first valid sticky cookie of `req` (signature and
 * expiry checked at wall-clock `now_s`), counted as a pinned request of that backend at
 * `now_ms` (td_router_pin_seen). Returns the backend index, or -1 (no valid cookie, the method
 * is not sticky, or the backend named is in maint: the request is assigned anew and re-pinned). */
int td_router_sticky_pin(const td_snapshot_t *s, const struct td_http1_request_s *req,
                         int64_t now_s, int64_t now_ms);

/* The backend a response must pin with a Set-Cookie: the one that answered (`backend`) when the
 * method is sticky and the request was neither pinned there already nor routed by preview
 * (`forced` >= 0). Returns the backend index, or -1 for no cookie. */
int td_router_sticky_set(const td_snapshot_t *s, int backend, int pinned, int forced);

/* Writes the Set-Cookie line pinning `backend` into line[cap] (value signed with the snapshot's
 * key, expiring cookie_max_age_s after wall-clock `now_s`; Secure when routing.cookie.secure is
 * "always", or "auto" and the client came over TLS: `https`). Returns its length, or 0 when it
 * does not fit. */
size_t td_router_sticky_cookie(const td_snapshot_t *s, int backend, int https, int64_t now_s,
                               char *line, size_t cap);

#endif
