/* Cluster mode (config key "cluster"): several td nodes share one desired state kept in etcd.
 *
 * Keys under the configured PREFIX (see DESIGN.md "Cluster"):
 *   PREFIX config          the shared document: the canonical config (as GET /api/v1/config
 *                          writes it) without listeners, workers, admin, cluster, state_file, plus
 *                          "schema": 1;
 *   PREFIX sticky          {"keys": [{"id", "secret" (hex of 32 bytes), "created"}]}, newest first,
 *                          at most 2: the sticky-cookie key ring;
 *   PREFIX nodes/NODE      under the node's lease: {"node", "admin_url", "applied_revision",
 *                          "health", "version", "started", "rollout_step": {"id", "step"}
 *                          (the step of PREFIX rollout it applied)}, rewritten only when it
 *                          changes;
 *   PREFIX audit/TIME-NODE-RND one entry per change: {"time", "node", "client", "what",
 *                          "before", "after"} ("revision", the key's mod_revision, is added
 *                          when read: the entry is written in its change's transaction).
 * Every change is a compare-and-swap on PREFIX config's mod_revision; every node applies the
 * document from its watch with the same snapshot swap as a local change (td_control_apply).
 * Main thread only. */
#ifndef TD_CLUSTER_H
#define TD_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "td/config-t.h"
#include "td/events.h" /* json_t */

/* 1 when the running config has "cluster", else 0. */
int td_cluster_enabled(void);

/* Called by main after the admin API and the workers started (the node's own config already
 * runs: from the cache when there is one, else the file). Starts the etcd client, reads the
 * prefix, applies the shared document, watches, keeps PREFIX nodes/NODE under a lease. Returns
 * 0 (also when etcd is unreachable: it retries with backoff) or TD_E* for a setup failure. */
int td_cluster_start(uv_loop_t *loop);

/* Revokes the lease (best effort), stops the watch and the client. No callback after. */
void td_cluster_stop(void);

/* result: 0 applied (on this node, at etcd revision `revision`); TD_ECONFLICT (409: lost a
 * compare-and-swap race, prefix not initialised, or already initialised); TD_EUNAVAIL (503: the
 * store is unreachable, or this node is still catching up); TD_EINVAL (400). `error` says it for
 * people ("" on success). Both borrowed for the call. */
typedef void td_cluster_done_fn(void *arg, int result, uint64_t revision, const char *error);

/* A change from the admin API: `cfg` (owned) is the whole running config with the change made.
 * Its shared part becomes PREFIX config by compare-and-swap on the revision this node applied
 * (with an audit entry in PREFIX audit/ in the same transaction); then applied here at once.
 * `what` says the change for people, `client` where it came from (both copied).
 * Returns 0 (cb later) or TD_E* (cb not called; cfg freed). */
int td_cluster_propose(td_config_t *cfg, const char *what, const char *client,
                       td_cluster_done_fn *cb, void *arg);

/* `tdctl cluster init FILE`: seeds an empty prefix with the shared part of `cfg` (owned) and a
 * new sticky key ring, create-if-absent. TD_ECONFLICT when already initialised. Returns 0 (cb
 * later) or TD_E* (cb not called; cfg freed). */
int td_cluster_init_prefix(td_config_t *cfg, const char *client, td_cluster_done_fn *cb, void *arg);

/* A new sticky key: it signs from now on, the previous one is still accepted (ring of 2).
 * Returns 0 (cb later) or TD_E* (cb not called). */
int td_cluster_rotate_sticky_key(const char *client, td_cluster_done_fn *cb, void *arg);

/* ?wait=all: cb once every live node (a key under PREFIX nodes/) has applied `revision`
 * (laggards NULL), or after timeout_ms with laggards = ["td-b", ...] (borrowed). Returns 0 (cb
 * later, never from inside the call) or TD_E*. */
typedef void td_cluster_wait_fn(void *arg, const json_t *laggards);
int td_cluster_wait_all(uint64_t revision, int64_t timeout_ms, td_cluster_wait_fn *cb, void *arg);

/* The audit log from PREFIX audit/ (newest first, at most `limit`): entries owned by cb (NULL
 * with error when the store cannot be read). Returns 0 (cb later) or TD_E*. */
typedef void td_cluster_history_fn(void *arg, json_t *entries, const char *error);
int td_cluster_history(long limit, td_cluster_history_fn *cb, void *arg);

/* 0 when a change can be proposed now, else TD_EUNAVAIL / TD_ECONFLICT with why in why[n]. */
int td_cluster_writable(char *why, size_t n);

/* This node's view (new object, caller owns): {"node", "prefix", "initialised": bool,
 * "store": {"reachable": bool, "endpoint", "error" (when not reachable), "since"},
 * "revision" (latest store revision seen), "applied_revision", "schema", "ignored": [paths of a
 * newer schema this td does not know], "from_cache": bool,
 * "nodes": [{"node", "admin_url", "applied_revision", "lag", "health":
 *            {"BACKEND": {"SERVER_ADDRESS": "up" | "down"}}, "version", "started"}],
 * "disagreements": ["green 127.0.0.1:8102 down on td-b only", ...], "leader": null} */
json_t *td_cluster_json(void);

/* ---- for the control plane and the admin API ---- */

/* Called by td_control_init with the config file's config `cfg` (owned) before anything runs:
 * in cluster mode, notes the node's own keys and returns the config of the cache file's shared
 * document with them (cfg freed; "from_cache") when the cache file holds one that loads, else
 * `cfg`; its sticky ring is in force too. Without "cluster", returns cfg untouched. */
td_config_t *td_cluster_boot(td_config_t *cfg, const char *config_path);

/* {"node", "initialised", "reachable", "revision", "applied_revision", "from_cache"}: the
 * "cluster" object of GET /api/v1/state (new object, caller owns). */
json_t *td_cluster_state_json(void);

/* ---- the rollout leader (src/cluster_leader.c) ----
 *
 * Keys: PREFIX leader   {"node", "admin_url", "since"} under the holder's membership lease,
 *                       created by a txn create_revision(PREFIX leader) == 0; the holder's fencing
 *                       token is that key's create_revision;
 *       PREFIX rollout  the rollout object (td_rollout_persist_json's document).
 * Every node of an initialised cluster campaigns whenever PREFIX leader is absent (learned from
 * the watch: a delete, the lease expired or revoked at stop, makes every node campaign again). A
 * node cut off from etcd takes itself for a follower at once (a courtesy: the guarantee is that
 * every leader write compares the fencing token in etcd). */

/* A rollout write by the leader: one txn comparing create_revision(PREFIX leader) with this
 * node's fencing token (and mod_revision(PREFIX config) with the revision this node applied, when
 * `cfg` is given), putting PREFIX config (the shared part of `cfg`, owned; NULL: weights
 * unchanged), PREFIX rollout (`rollout`, borrowed, copied) and an audit entry (`what`, `client`,
 * copied) together. cb's result: 0 (written at `revision`; `cfg` applied here at once);
 * TD_ECONFLICT with error "not the leader" (fenced out: this node logs it and becomes a follower)
 * or with a lost config race ("the shared config changed ..."); TD_EUNAVAIL; TD_EINVAL.
 * Returns 0 (cb later) or TD_E* (cb not called; cfg freed): TD_ECONFLICT when this node does
 * not hold the leader key. */
int td_cluster_propose_fenced(td_config_t *cfg, const json_t *rollout, const char *what,
                              const char *client, td_cluster_done_fn *cb, void *arg);

/* 1 when this node holds PREFIX leader (as last seen from etcd, and etcd is reachable), else 0. */
int td_cluster_is_leader(void);

/* The leader's node name (borrowed, until the next loop turn), or NULL when none is known. */
const char *td_cluster_leader(void);

/* The leader's admin URL ("http://127.0.0.1:9091", borrowed like td_cluster_leader), or NULL. */
const char *td_cluster_leader_url(void);

/* The PREFIX rollout document as last seen from etcd (borrowed, until the next loop turn), or
 * NULL when there is none. */
const json_t *td_cluster_rollout_doc(void);

#endif
