/* The rollout leader of a cluster (see td/cluster.h "the rollout leader"): the election on
 * PREFIX leader and the rollout document watched from PREFIX rollout. Main thread only. */
#include "td/cluster.h"

#include <jansson.h>
#include <stddef.h>

#include "td/common-t.h"
#include "td/config.h"

static struct { td_cluster_leader_fn *on_change; } ld;

int td_cluster_is_leader(void) {
    return 0;
}

const char *td_cluster_leader(void) {
    return NULL;
}

const char *td_cluster_leader_url(void) {
    return NULL;
}

const json_t *td_cluster_rollout_doc(void) {
    return NULL;
}

void td_cluster_on_leader(td_cluster_leader_fn *fn) {
    ld.on_change = fn;
}

void td_cluster_set_rollout_step(const char *id, int step) {
    (void)id;
    (void)step;
}

int td_cluster_propose_fenced(td_config_t *cfg, const json_t *rollout, const char *what,
                              const char *client, td_cluster_done_fn *cb, void *arg) {
    (void)rollout;
    (void)what;
    (void)client;
    (void)cb;
    (void)arg;
    td_config_free(cfg);
    return TD_ECONFLICT;
}
