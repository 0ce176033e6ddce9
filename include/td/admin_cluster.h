/* The admin API in cluster mode (admin_cluster.c): every change goes to etcd through
 * td_cluster_propose and is answered once it completed there (a deferred reply, see
 * td_admin_http_defer), with ?wait=all once every live node applied it. Admin loop. */
#ifndef TD_ADMIN_CLUSTER_H
#define TD_ADMIN_CLUSTER_H

#include "td/admin_http-t.h"
#include "td/config-t.h"
#include "td/events.h" /* json_t */

/* A change: `cfg` (owned) is the whole running config with the change made, `what` says it for
 * the audit log, `target` the request's target (its query: "wait=all", "timeout_ms=N", default
 * 5000). Answers 200 with GET /api/v1/state's object plus "revision" (or, `config_reply`, PUT
 * /api/v1/config's {"version", "persisted", "revision"}); 409 (lost race, not initialised), 503
 * (store unreachable, catching up), 400; with ?wait=all 504 {"error": "not applied on td-c
 * within 5000 ms", "laggards": [...]} when some live node has not applied it in time (the change
 * itself is made). */
td_admin_reply_t td_admin_cluster_change(td_config_t *cfg, const char *what, const char *client,
                                         td_str_t target, int config_reply);

/* POST /api/v1/cluster/init: `body` a whole config document (checked as PUT /api/v1/config
 * checks it) seeds an empty prefix: 200 {"initialised": true, "revision"}; 409 when it is
 * already initialised. */
td_admin_reply_t td_admin_cluster_init(td_str_t body, const char *client);

/* A whole config document from a request body (PUT /api/v1/config, POST /api/v1/cluster/init),
 * parsed and checked as a file is ("request:LINE:COL: ..."): the config (owned by the caller),
 * or NULL with *fail set to the 400 naming every problem. */
td_config_t *td_admin_config_body(td_str_t body, td_admin_reply_t *fail);

/* POST /api/v1/cluster/sticky-key: a new sticky key signs from now on, the previous one is still
 * accepted: 200 {"rotated": true, "revision"}. */
td_admin_reply_t td_admin_cluster_sticky_key(const char *client, td_str_t target);

/* GET /api/v1/history in cluster mode: the audit entries of PREFIX audit/ (every node's),
 * oldest first as in single-node mode, each {"time", "node", "client", "what", "before",
 * "after", "revision", "version" (= revision)}; 503 when the store cannot be read. */
td_admin_reply_t td_admin_cluster_history(void);

/* POST /api/v1/rollout or /api/v1/rollout/ACTION (`path`, copied) with `body` on a node that
 * is not the rollout leader: sent on to the leader's admin API (the admin_url of PREFIX leader,
 * with this node's token: the nodes of a cluster share it) and the leader's answer returned as
 * is, status and body. 503 {"error": "no rollout leader: ..."} when no leader is known (or the
 * leader key is this node's previous run's, until its lease expires); 502 when the leader does
 * not answer within 10 s. */
td_admin_reply_t td_admin_cluster_forward(const char *path, td_str_t body);

/* GET /api/v1/state's object (admin_api.c): a new object, caller owns. */
json_t *td_admin_state_json(void);

#endif
