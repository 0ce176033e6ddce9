/* GET /api/v1/cluster's answer: this node's view of the cluster (td_cluster_json) with, for each
 * node, the figures read from that node's admin API at the time of asking. Counters are never
 * written to etcd (a write per node per second would fill etcd's history); whoever needs them
 * reads them from the nodes themselves, as this does. Main thread only. */
#ifndef TD_CLUSTER_VIEW_H
#define TD_CLUSTER_VIEW_H

#include "td/admin_http-t.h"
#include "td/events.h" /* json_t */

/* Called once with the view (owned by the callee; NULL when out of memory): td_cluster_json()'s
 * object where each member of "nodes" also has
 *   "self": true for this node, false for the others;
 *   "reachable": whether its admin API answered GET ADMIN_URL/api/v1/state (with this node's
 *                admin token: the nodes of a cluster share it), and "error" when it did not
 *                ("http://127.0.0.1:9091: Connection refused", "HTTP 401: ...");
 *   "requests": its requests in total, "backends": {"NAME": {"requests", "share" (percent of
 *                new requests it gets there now)}}, "version" of its routing snapshot;
 *   "ready": its GET ADMIN_URL/readyz answered 200 (false with "ready_reason" otherwise).
 * Every node is asked in parallel, each request bounded by 1 s, so the answer comes within about
 * a second whatever the nodes do. */
typedef void td_cluster_view_fn(void *arg, json_t *view);

/* Starts reading the nodes; cb(arg, view) is called later, never from inside this call. Returns
 * 0, or TD_ENOMEM (cb not called). */
int td_cluster_view(td_cluster_view_fn *cb, void *arg);

/* GET /api/v1/cluster as the admin API's handler: defers the reply (td_admin_http_defer) and
 * finishes it with the view, 200; 404 when td is not in cluster mode; 500 when out of memory. */
td_admin_reply_t td_cluster_view_reply(void);

/* Cancels the views in progress (their callbacks are not called): at shutdown, before
 * td_fetch_shutdown. */
void td_cluster_view_shutdown(void);

#endif
