/* The router: publishes routing snapshots to workers and chooses a backend and a server for
 * each request (round robin, sticky session, failover). */
#ifndef TD_ROUTER_H
#define TD_ROUTER_H

#include <stddef.h>

#include "td/router-t.h"

/* Builds a snapshot from `cfg` (ownership of cfg passes to the snapshot, also on failure) with
 * the given version, taking counters from the process-wide registry (created on first use) and
 * building the TLS contexts (certificates are loaded now: connections made before keep theirs).
 * Returns the snapshot with one reference held by the caller, or NULL with a message in
 * err[errlen] (out of memory, a certificate that no longer loads). Admin thread only. */
td_snapshot_t *td_snapshot_build(td_config_t *cfg, uint64_t version, char *err, size_t errlen);

/* Takes and drops a reference. The last td_snapshot_release frees the snapshot. Any thread. */
void td_snapshot_retain(td_snapshot_t *s);
void td_snapshot_release(td_snapshot_t *s);

/* Makes `s` the current snapshot (the router takes over the caller's reference) and drops the
 * router's reference to the previous one. Workers see it on their next request. */
void td_router_publish(td_snapshot_t *s);

/* Version of the current snapshot: one atomic load, for the per-request "has it changed?" test. */
uint64_t td_router_version(void);

/* Returns the current snapshot with a reference for the caller, or NULL before the first publish. */
td_snapshot_t *td_router_acquire(void);

/* The registry's object for a server / backend, created on first use (NULL when out of memory). */
td_server_stats_t *td_registry_server(const char *backend, const char *address);
td_backend_stats_t *td_registry_backend(const char *name);

/* td's own counters for error answers no backend was chosen for (never NULL). */
td_local_stats_t *td_registry_local(void);

/* Counts td's own 502, 503 or 504 (other statuses are ignored) under backend `b`, the one the
 * request was routed to, or under td itself when `b` is NULL; the caller counts the backend's
 * response class as before. Any thread. */
void td_router_count_local(td_backend_stats_t *b, int status, int64_t now_ms);

/* 1 when the server may receive requests now: its active check says up and it is not ejected. */
int td_server_is_up(const td_server_stats_t *st, int64_t now_ms);

/* td_now_ms() since which the server has been up without a break (0: since td started; the
 * later of its active check's last "up" and the end of its last passive ejection), or -1 when
 * it is down now. */
int64_t td_server_up_since(const td_server_stats_t *st, int64_t now_ms);

/* 1 when any server of the backend is up. */
int td_backend_is_up(const td_snap_backend_t *b, int64_t now_ms);

/* td_now_ms() since which the backend has had a server up without a break (the earliest
 * td_server_up_since of its up servers with weight above 0), or -1 when none is up. */
int64_t td_backend_up_since(const td_snap_backend_t *b, int64_t now_ms);

/* 1 when the backend is draining: weight 0 outside failover (in failover a weight-0 backend is
 * a backup, not drained: its pool and tunnels stay). */
int td_backend_draining(const td_snapshot_t *s, const td_snap_backend_t *b);

/* Failover order: fills order[] (num_backends entries) with backend indices by weight, highest
 * first, ties and weight-0 backups in listed order; order[0] is the primary. Returns the count. */
size_t td_router_failover_order(const td_snapshot_t *s, size_t *order);

/* What new requests get now, as td_router_pick_backend decides it: share[i] (0..1, summing to 1,
 * or all 0 when every request would get 503) for each of the snapshot's num_backends backends.
 * round_robin / sticky: weight over the sum of the weights of the backends that are up;
 * failover: 1 for the serving backend. Returns the serving backend's index in failover, the
 * number of backends with a share above 0 otherwise, or TD_EUNAVAIL when none has one. */
int td_router_shares(const td_snapshot_t *s, int64_t now_ms, double *share);

/* Chooses the backend for a new request. `wrr` is the caller's running score array of
 * num_backends entries (see td_balancer_pick). `pinned` is the backend a valid sticky cookie names
 * (-1 when none): it is used while it is up, whatever its weight. `tried`, when not NULL, marks
 * backends already tried for this request (num_backends entries, 1 = skip).
 * round_robin / sticky: smooth weighted round robin over up backends with weight > 0.
 * failover: the first backend in failover order (td_router_failover_order) that has a server
 * up; `wrr` is not used (may be NULL). With no weight above 0 there is no primary: TD_EUNAVAIL.
 * A backend earlier in that order that came back less than its failback_ms ago is passed over
 * while a later one that was up before it keeps serving, so a flapping primary does not bounce
 * the traffic.
 * Passive ejections alone never make it give up: when they took out every candidate, the pick
 * ignores them. Returns the backend index, or TD_EUNAVAIL when no candidate is up by its active
 * checks. */
int td_router_pick_backend(const td_snapshot_t *s, int *wrr, int pinned, const uint8_t *tried,
                           int64_t now_ms);

/* Chooses a server of backend `b` by smooth weighted round robin over its up servers.
 * `wrr` holds num_servers scores for this backend; `tried` (may be NULL) marks servers to skip.
 * Returns the index within b->servers, or TD_EUNAVAIL. */
int td_router_pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried,
                          int64_t now_ms);

/* Passive detection (Envoy's outlier detection) with the snapshot's "passive" settings: records
 * a connect error, reset or 5xx of a server. After `failures` in a row the server is ejected for
 * eject_ms, doubled for each ejection in a row up to max_eject_ms; a server with active checks
 * then also needs them to pass again (`rise`). Never ejects the last server that is up among the
 * backends with weight above 0 (in failover: among all backends, the backups included): it keeps
 * serving, and the log says so. An ejection is a "down" health event for the server.
 * Returns 1 when this failure ejected the server, 0 otherwise. Any thread. */
int td_passive_failure(const td_snapshot_t *s, td_server_stats_t *st, int64_t now_ms);

/* Main thread, about every second: a passive ejection that ended without an active check
 * (which would say so itself) gets its "up" health event, so every "down" has its "up". */
void td_passive_sweep(const td_snapshot_t *s, int64_t now_ms);

/* Records a good response: the failure run and the ejection count start again. */
void td_passive_success(td_server_stats_t *st);

/* Adds one request duration (ms, from the first byte of its head to the end of its response) to
 * the backend's histogram. */
void td_router_observe(td_backend_stats_t *b, int64_t ms);

/* Counts a request pinned to the backend by a valid sticky cookie, and returns how many came in
 * the last TD_PIN_WINDOW seconds (td_router_pins_recent), for "is anyone still on blue?". */
void td_router_pin_seen(td_backend_stats_t *b, int64_t now_ms);
uint64_t td_router_pins_recent(td_backend_stats_t *b, int64_t now_ms);

/* 1 when the backend has been draining (td_backend_draining) for at least drain_ms: pinned
 * sticky clients then move on, and its tunnels are closed. */
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
 * `now_ms` (td_router_pin_seen). Returns the backend index, or -1 (no valid cookie, or the
 * method is not sticky). */
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
