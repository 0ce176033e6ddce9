/* Between cluster.c (the sync, the watch, the changes) and cluster_leader.c (the election on
 * PREFIX leader, the rollout document of PREFIX rollout): internal to cluster mode. Main thread
 * only. */
#ifndef TD_CLUSTER_LEADER_H
#define TD_CLUSTER_LEADER_H

#include <stdint.h>

#include "td/etcd.h"
#include "td/events.h" /* json_t */

/* ---- cluster_leader.c, called by cluster.c */

/* At boot: the keys' prefix, this node's name and admin URL (copied). */
void td_cluster_leader_boot(const char *prefix, const char *node, const char *admin_url);

/* A watch event: returns 1 when `kv` was PREFIX leader or PREFIX rollout (taken in), else 0. */
int td_cluster_leader_event(const td_etcd_kv_t *kv, int deleted);

/* The sync completed (the store is reachable, this node's key is under lease `lease_id`): reads
 * PREFIX leader and PREFIX rollout, campaigns when there is no leader. */
void td_cluster_leader_reachable(int64_t lease_id);

/* The membership lease changed (a new one granted: the leader key under the old one is gone). */
void td_cluster_leader_lease(int64_t lease_id);

/* Cut off from the store: this node takes itself for a follower at once (a courtesy: the
 * guarantee is the fencing compare in etcd). */
void td_cluster_leader_cut(void);

/* This node's fencing token (the leader key's create_revision) while it leads, else 0. */
int64_t td_cluster_leader_token(void);

/* The leader key's name ("PREFIX leader"; borrowed). */
const char *td_cluster_leader_keyname(void);

/* A fenced write failed its leader compare: this node logs "no longer the rollout leader (why)"
 * and is a follower. */
void td_cluster_leader_deposed(const char *why);

/* A fenced write succeeded at `revision`: `doc` (borrowed, copied) is PREFIX rollout now. */
void td_cluster_leader_rollout_written(const json_t *doc, int64_t revision);

/* Everything freed (td_cluster_stop); no callback after. */
void td_cluster_leader_stop(void);

#endif
