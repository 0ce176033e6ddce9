/* The etcd v3 client over the JSON gateway (see td/etcd.h). */
#include "td/etcd.h"

#include "td/common-t.h"

int td_etcd_init(uv_loop_t *loop, const td_etcd_opts_t *o) {
    (void)loop;
    (void)o;
    return TD_EIO;
}

void td_etcd_shutdown(void) {}

const char *td_etcd_endpoint(void) {
    return "";
}

int td_etcd_range(const char *key, int prefix, long limit, int descending, td_etcd_cb *cb,
                  void *arg) {
    (void)key, (void)prefix, (void)limit, (void)descending, (void)cb, (void)arg;
    return TD_EIO;
}

int td_etcd_txn(const td_etcd_cmp_t *cmp, size_t ncmp, const td_etcd_op_t *ops, size_t nops,
                const char *fail_range, td_etcd_cb *cb, void *arg) {
    (void)cmp, (void)ncmp, (void)ops, (void)nops, (void)fail_range, (void)cb, (void)arg;
    return TD_EIO;
}

int td_etcd_lease_grant(int64_t ttl_s, td_etcd_cb *cb, void *arg) {
    (void)ttl_s, (void)cb, (void)arg;
    return TD_EIO;
}

int td_etcd_lease_keepalive(int64_t id, td_etcd_cb *cb, void *arg) {
    (void)id, (void)cb, (void)arg;
    return TD_EIO;
}

int td_etcd_lease_revoke(int64_t id, td_etcd_cb *cb, void *arg) {
    (void)id, (void)cb, (void)arg;
    return TD_EIO;
}

td_etcd_watch_t *td_etcd_watch(const char *prefix, int64_t start_revision,
                               td_etcd_watch_fn *on_events, td_etcd_watch_end_fn *on_end,
                               void *arg) {
    (void)prefix, (void)start_revision, (void)on_events, (void)on_end, (void)arg;
    return NULL;
}

void td_etcd_watch_cancel(td_etcd_watch_t *w) {
    (void)w;
}
