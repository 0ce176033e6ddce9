/* The rollout's analysis across nodes (see rollout_cluster.h). Not yet wired. */
#include "td/rollout_cluster.h"

#include "td/common-t.h"

int td_rollout_cluster_open(const char *to, const json_t *weights_before, td_rollout_sum_fn *cb,
                            void *arg) {
    (void)to, (void)weights_before, (void)cb, (void)arg;
    return TD_EINVAL;
}

int td_rollout_cluster_look(td_rollout_sum_fn *cb, void *arg) {
    (void)cb, (void)arg;
    return TD_EINVAL;
}

void td_rollout_cluster_close(void) {}
