/* Cluster mode: the shared state in etcd (see td/cluster.h). */
#include "td/cluster.h"

#include "td/common-t.h"
#include "td/config.h"

#include <jansson.h>
#include <stdio.h>

int td_cluster_enabled(void) {
    return 0;
}

int td_cluster_start(uv_loop_t *loop) {
    (void)loop;
    return 0;
}

void td_cluster_stop(void) {}

int td_cluster_propose(td_config_t *cfg, const char *what, const char *client,
                       td_cluster_done_fn *cb, void *arg) {
    (void)what, (void)client, (void)cb, (void)arg;
    td_config_free(cfg);
    return TD_EUNAVAIL;
}

int td_cluster_init_prefix(td_config_t *cfg, const char *client, td_cluster_done_fn *cb,
                           void *arg) {
    (void)client, (void)cb, (void)arg;
    td_config_free(cfg);
    return TD_EUNAVAIL;
}

int td_cluster_rotate_sticky_key(const char *client, td_cluster_done_fn *cb, void *arg) {
    (void)client, (void)cb, (void)arg;
    return TD_EUNAVAIL;
}

int td_cluster_wait_all(uint64_t revision, int64_t timeout_ms, td_cluster_wait_fn *cb, void *arg) {
    (void)revision, (void)timeout_ms, (void)cb, (void)arg;
    return TD_EUNAVAIL;
}

int td_cluster_history(long limit, td_cluster_history_fn *cb, void *arg) {
    (void)limit, (void)cb, (void)arg;
    return TD_EUNAVAIL;
}

int td_cluster_writable(char *why, size_t n) {
    snprintf(why, n, "cluster mode is not configured");
    return TD_EUNAVAIL;
}

json_t *td_cluster_json(void) {
    return json_object();
}
