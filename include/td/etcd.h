/* etcd v3 through its JSON gateway (POST /v3/kv/range, /v3/kv/txn, /v3/watch, /v3/lease/grant,
 * /v3/lease/keepalive, /v3/lease/revoke, /v3/auth/authenticate), over libcurl's multi interface
 * on the main loop (fetch.c's): nothing blocks. Keys and values are bytes here, base64 on the
 * wire. Main thread only.
 *
 * Every call returns 0 (cb called later, never from inside the call) or a negative TD_E* code
 * (cb not called). A call that gets no answer from the endpoint in use (connect error, timeout,
 * 5xx, a broken body, or what a member says while it shuts down or has no leader: 408, 429,
 * "the client connection is closing", "etcdserver: leader changed", "etcdserver: no leader")
 * tries the next endpoints once each in order, and the first that answers
 * becomes the one in use. With a username, the client authenticates first and again when etcd
 * says the token is invalid or expired; the token goes in the `Authorization` header. Source:
 * etcd's API reference (etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/, rpc.proto). */
#ifndef TD_ETCD_H
#define TD_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* How to reach the store: copied by td_etcd_init. */
typedef struct td_etcd_opts_s {
    const char *const *endpoints; /* "http://127.0.0.1:2379" or "https://..."; 1..16 */
    size_t num_endpoints;
    const char *ca, *cert, *key;     /* TLS files ("" or NULL: none; ca "" = the system's) */
    const char *username, *password; /* "" or NULL: no auth */
    long timeout_ms;                 /* one unary call on one endpoint (> 0; 2000 is sensible) */
} td_etcd_opts_t;

/* One key as etcd holds it. */
typedef struct td_etcd_kv_s {
    const char *key;
    size_t key_len; /* decoded, borrowed for the callback */
    const char *value;
    size_t value_len; /* decoded (NUL-terminated too), borrowed */
    int64_t create_revision, mod_revision, version, lease;
} td_etcd_kv_t;

/* The outcome of one call, borrowed for the callback. */
typedef struct td_etcd_result_s {
    int ok;            /* 1: an etcd member answered; 0: none did (error says why), or one
                          refused the call (4xx: error is "EP: 404 etcdserver: requested lease
                          not found", no other endpoint tried) */
    const char *error; /* "" when ok; else "http://127.0.0.1:2379: Connection refused; ..." */
    int64_t revision;  /* header.revision: the store's revision when it answered */
    int succeeded;     /* txn: 1 when every compare held */
    const td_etcd_kv_t *kvs;
    size_t num_kvs;        /* range results (of a txn: its range op's) */
    int64_t lease_id, ttl; /* lease grant/keepalive: ttl <= 0 means the lease is gone */
} td_etcd_result_t;

typedef void td_etcd_cb(void *arg, const td_etcd_result_t *r); /* r borrowed for the call */

/* Sets the client up on `loop` (fetch.c's module is initialised too). Copies `o`. Returns 0,
 * TD_EINVAL (no endpoint, more than 16, or timeout_ms <= 0) or TD_ENOMEM. */
int td_etcd_init(uv_loop_t *loop, const td_etcd_opts_t *o);

/* Cancels everything (calls and watches); no callback after. */
void td_etcd_shutdown(void);

/* The endpoint in use now (borrowed; "" before td_etcd_init). */
const char *td_etcd_endpoint(void);

/* Range: `key` alone, or (prefix=1) every key starting with it; limit 0 = all; descending=1
 * sorts by key from the end. */
int td_etcd_range(const char *key, int prefix, long limit, int descending, td_etcd_cb *cb,
                  void *arg);

/* What a compare looks at. */
typedef enum { TD_ETCD_MOD = 0, TD_ETCD_CREATE = 1, TD_ETCD_VERSION = 2 } td_etcd_target_t;

/* One compare of a transaction: `key`'s target EQUAL to `value` (0 with CREATE: absent). */
typedef struct td_etcd_cmp_s {
    const char *key;
    td_etcd_target_t target;
    int64_t value;
} td_etcd_cmp_t;

/* One operation of a transaction's success branch. */
typedef struct td_etcd_op_s {
    int del; /* 1: delete key; 0: put */
    const char *key;
    const char *value;
    size_t value_len;
    int64_t lease; /* put under this lease (0: none) */
} td_etcd_op_t;

/* A transaction: if every compare holds, the ops; else a range of `fail_range` (NULL: none), so
 * the caller learns the key as it is now. Result: succeeded, revision, kvs of that range. */
int td_etcd_txn(const td_etcd_cmp_t *cmp, size_t ncmp, const td_etcd_op_t *ops, size_t nops,
                const char *fail_range, td_etcd_cb *cb, void *arg);

/* Leases (seconds). grant: lease_id and ttl of the new lease; keepalive: ttl left (<= 0: the
 * lease is gone); revoke: ok (every key under it is deleted). */
int td_etcd_lease_grant(int64_t ttl_s, td_etcd_cb *cb, void *arg);
int td_etcd_lease_keepalive(int64_t id, td_etcd_cb *cb, void *arg);
int td_etcd_lease_revoke(int64_t id, td_etcd_cb *cb, void *arg);

/* A watch on every key under `prefix` from `start_revision` (0: from now). on_events gets each
 * response's events in order, with `revision` the store's revision when etcd sent it (header
 * revision; an event's own is ev->kv.mod_revision); its first call, when etcd created the
 * watch, has n = 0: from then on no change is missed. on_end is called once when the watch ends
 * by itself (stream closed or broken: error; compacted: compact_revision > 0, the caller reads
 * again and watches from there); not after td_etcd_watch_cancel. Until created, a watch that gets
 * no answer tries the other endpoints like a call; once streaming, a broken stream ends it (the
 * caller watches again from the revision it has). A stream that went silent is found by TCP
 * keep-alive (about 25 s). Returns NULL when it cannot start (ENOMEM). */
typedef struct td_etcd_event_s {
    int deleted;
    td_etcd_kv_t kv;
} td_etcd_event_t;
typedef void td_etcd_watch_fn(void *arg, int64_t revision, const td_etcd_event_t *ev, size_t n);
typedef void td_etcd_watch_end_fn(void *arg, int64_t compact_revision, const char *error);
typedef struct td_etcd_watch_s td_etcd_watch_t;
td_etcd_watch_t *td_etcd_watch(const char *prefix, int64_t start_revision,
                               td_etcd_watch_fn *on_events, td_etcd_watch_end_fn *on_end,
                               void *arg);

/* Stops the watch `w` and frees it; its callbacks are not called after. Only while it runs: a
 * watch that ended by itself (on_end called) is already freed, and must not be cancelled. */
void td_etcd_watch_cancel(td_etcd_watch_t *w);

#endif
