/* A rollout's analysis across a cluster: the counters of its two sides (the target `to`, and the
 * baseline: the backends that had weight before the rollout) read from every live node's
 * GET /api/v1/counters and summed, so the leader judges the whole cluster's traffic, not its own.
 *
 * Each node is read over its admin API (its "admin_url" in td_cluster_json()'s "nodes", with this
 * node's token; this node's own counters directly from the registry), all in parallel, each
 * bounded to TD_ROLLOUT_CLUSTER_TIMEOUT_MS. A node's counters are cumulative since it started;
 * the first reading of a node in a window is its baseline, later readings minus it are its share.
 * A node without a baseline (it joined during the window), or whose counters went down or whose
 * "started" changed (it restarted), takes the reading as its new baseline and adds nothing to
 * that look. A node that does not answer is left out of the look and named in `missing`.
 * Main thread only. */
#ifndef TD_ROLLOUT_CLUSTER_H
#define TD_ROLLOUT_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "td/analysis.h" /* td_analysis_side_t */
#include "td/common-t.h" /* TD_E* */

#define TD_ROLLOUT_CLUSTER_TIMEOUT_MS 1000 /* each node's GET /api/v1/counters */

/* Counters of a rollout's two sides summed over the cluster's live nodes, read from each node's
 * GET /api/v1/counters (bounded 1 s each, in parallel). Main thread only. */
typedef struct td_rollout_sum_s {
    td_analysis_side_t target, baseline; /* deltas since the window opened, summed */
    json_t *missing; /* ["td-c: timed out after 1000 ms", ...]: nodes left out of this look
                        (borrowed for the callback) */
    int nodes;       /* nodes counted */
} td_rollout_sum_t;

/* Called once per open or look, later (never from inside the call), with the sums (borrowed for
 * the call). Of an open, the sums are zero and `nodes` the nodes that gave a baseline. */
typedef void td_rollout_sum_fn(void *arg, const td_rollout_sum_t *sum);

/* Opens the analysis window of rollout target `to` (copied) whose weights before the rollout
 * were `weights_before` ({"NAME": weight}, borrowed: the baseline side is every other backend
 * with weight > 0 there): each live node's counters now become its baseline; a window already
 * open is closed first (its pending callback is not called). Returns 0 (cb later) or TD_ENOMEM /
 * TD_EINVAL (cb not called). */
int td_rollout_cluster_open(const char *to, const json_t *weights_before, td_rollout_sum_fn *cb,
                            void *arg);

/* A look: each node's counters now minus its baseline (a node without one — it joined, or
 * restarted: its counters went down — takes this reading as its baseline and adds nothing),
 * summed. A look still in flight when the next is asked is dropped (its cb not called).
 * Returns 0 (cb later) or TD_EINVAL (no window open) / TD_ENOMEM (cb not called). */
int td_rollout_cluster_look(td_rollout_sum_fn *cb, void *arg);

/* Closes the window: requests in flight are cancelled, no callback after, baselines forgotten. */
void td_rollout_cluster_close(void);

/* ---- a node cut off from the store during an active rollout ---- */

/* Called by cluster.c each time the store is found unreachable, with why (borrowed). When
 * td_cluster_rollout_doc() is an active rollout (checking, running, paused, draining) and this
 * node has not fallen back yet in this cut, it applies the rollout's "weights_before" here only
 * (td_control_apply, not persisted, not written to the store: the known-good weights), logs it and
 * returns 1: the caller must then apply the store's document at the catch-up even when its
 * revision is the one applied before (the weights changed underneath). Else returns 0. */
int td_rollout_cluster_fall_back(const char *why);

/* Called by cluster.c once it applied a document of the store (revision `rev`): a fall-back in
 * force is over (logged). */
void td_rollout_cluster_caught_up(long long rev);

/* Adds "fallback": "weights from before rollout R" to `cluster` (GET /api/v1/state's "cluster",
 * borrowed) while this node serves them. */
void td_rollout_cluster_state(json_t *cluster);

/* ---- the pure part, for the above and for tests ---- */

/* One node's reading: its "started" (copied, at most 63 chars) and the two sides' cumulative
 * counters. */
typedef struct td_rollout_reading_s {
    char started[64];
    td_analysis_side_t target, baseline;
} td_rollout_reading_t;

/* A node's baseline as kept across a window. */
typedef struct td_rollout_base_s {
    int set; /* 0: no baseline yet */
    td_rollout_reading_t r;
} td_rollout_base_t;

/* Folds reading `now` of one node into `sum` against its baseline `base`: adds now - base to the
 * sums and returns 1; or, when the node has no baseline, "started" differs or any counter is
 * below the baseline's (a restart), makes `now` the baseline, adds nothing and returns 0. */
int td_rollout_cluster_fold(td_rollout_base_t *base, const td_rollout_reading_t *now,
                            td_analysis_side_t *target, td_analysis_side_t *baseline);

/* Parses a GET /api/v1/counters body `doc` (borrowed) into *out for target `to` and the baseline
 * of `weights_before`. Returns 0, or TD_EINVAL with why in err[n] (not that shape). */
int td_rollout_cluster_reading(const json_t *doc, const char *to, const json_t *weights_before,
                               td_rollout_reading_t *out, char *err, size_t n);

/* GET /api/v1/counters of this node (new object, caller owns): {"node", "started", "backends":
 * {"NAME": {"requests", "errors" (5xx, td's own included, as the rollout counts them), "latency":
 * [TD_LAT_BUCKETS counts]}}}, all cumulative since the process started. */
json_t *td_rollout_cluster_counters_json(void);

#endif
