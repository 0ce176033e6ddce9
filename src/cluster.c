/* Cluster mode: the shared state in etcd (see td/cluster.h). One state machine on the main loop:
 * a sync (range config, sticky, nodes/; watch the prefix from the first range's revision + 1;
 * the node's key under its lease) runs at start and after every failure, with backoff; until it
 * completes the node is cut off (changes answer 503, /readyz 503) and keeps serving what it last
 * applied. A callback of an older sync (`gen`) is ignored. */
#include "td/cluster.h"

#include <openssl/rand.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "td/cluster_doc.h"
#include "td/cluster_leader.h"
#include "td/common-t.h"
#include "td/config.h"
#include "td/control.h"
#include "td/etcd.h"
#include "td/events.h"
#include "td/log.h"
#include "td/ready.h"
#include "td/registry.h"
#include "td/rollout_cluster.h"
#include "td/snapshot.h"
#include "td/version.h"

#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 5000
#define CALL_TIMEOUT_MS 2000
#define HEALTH_POLL_MS 1000
#define STOP_WAIT_MS 1000 /* longest wait for the lease's revocation at a stop */

/* One change, init or rotation in flight: freed when etcd answers, or at td_cluster_stop. */
typedef struct op_s {
    td_config_t *cfg; /* owned: what runs here once the txn succeeded (NULL: a rotation) */
    json_t *shared;   /* owned: the shared document written */
    json_t *ring;     /* owned: the sticky ring written, or NULL */
    int init;         /* td_cluster_init_prefix */
    json_t
        *rollout;  /* owned: PREFIX rollout written with it (td_cluster_propose_fenced), or NULL */
    int64_t token; /* the fencing token compared (td_cluster_propose_fenced), else 0 */
    int64_t base;  /* the revision compared against (what this node had applied) */
    char what[256], client[64];
    td_cluster_done_fn *cb;
    void *arg;
    int dead; /* answered at td_cluster_stop: etcd's late answer is ignored, freed at the end */
    struct op_s *next;
} op_t;

typedef struct wait_s {
    uint64_t revision;
    int64_t deadline_ms; /* td_now_ms() */
    td_cluster_wait_fn *cb;
    void *arg;
    uv_timer_t timer;
    int done;
    struct wait_s *next;
} wait_t;

typedef struct history_s {
    td_cluster_history_fn *cb;
    void *arg;
    int dead; /* as op_t's */
    struct history_s *next;
} history_t;

static struct {
    int on; /* td_cluster_boot saw "cluster" */
    int started, stopping;
    uv_loop_t *loop;
    char node[TD_NAME_MAX], prefix[256], advertise[320], cache_path[4096];
    char config_key[272], sticky_key[272], rollout_key[272], nodes_prefix[272], node_key[352],
        audit_prefix[272];
    int lease_s;
    /* owned: the config file's config, until the cluster's first runs here */
    td_config_t *file;
    json_t *local;  /* owned: the node's own keys of its config file */
    json_t *shared; /* owned: the shared document applied, or NULL */
    json_t *ring;   /* owned: the sticky ring applied ({"keys": [...]}), or NULL */
    json_t *ignored;
    json_t *nodes; /* owned: NODE -> the value of PREFIX nodes/NODE, as the watch sees them */
    int schema, from_cache, initialised, said_uninitialised;
    int64_t revision;    /* latest store revision seen */
    int64_t applied;     /* mod_revision of PREFIX config applied (0: none) */
    int64_t config_rev;  /* mod_revision of PREFIX config as last seen in the store */
    int64_t refused_rev; /* a document refused: not tried again */
    int64_t sticky_rev;  /* mod_revision of PREFIX sticky applied */
    int reachable;       /* the last sync completed and nothing failed since */
    int ever_reachable;
    char error[600]; /* why not reachable */
    char since[40];  /* when reachability last changed (ISO 8601) */
    unsigned gen;    /* the sync in progress; older callbacks are ignored */
    int64_t watch_from;
    td_etcd_watch_t *watch;
    int64_t lease_id;
    char *node_value;  /* owned: the value last put at node_key */
    char rstep_id[64]; /* the rollout whose step this node applied ("" none), and that step */
    int rstep;
    int putting;      /* a put of node_key is in flight */
    int member;       /* node_key is known to be this node's, under lease_id (see name_held) */
    char taken[600];  /* why this node is not a member: another live node has its name, or "" */
    int64_t taken_ms; /* td_now_ms() of the last try to take the name */
    int backoff_ms;
    int64_t rewatch_ms; /* td_now_ms() of the last re-read after a broken watch */
    uv_timer_t retry_timer, keepalive_timer, health_timer, stop_timer;
    int timers_open;
    char started_iso[40];
    op_t *ops;
    wait_t *waits;
    history_t *histories;
} cl;

static void sync_start(void);
static void node_put(void);
static void check_waits(void);
static void on_retry(uv_timer_t *t);
static void on_grant_again(void *arg, const td_etcd_result_t *r);
static void sync_grant(void);
static void sync_node(void);
static void on_keepalive_tick(uv_timer_t *t);

int td_cluster_enabled(void) {
    return cl.on;
}

/* ---- reachability ---- */

static void fail(const char *error) {
    if (cl.stopping)
        return;
    cl.gen++; /* whatever the sync was doing is forgotten */
    /* Said once when the store goes away (and, before it was ever reached, once per reason), not
     * at every retry. */
    if (cl.reachable || (!cl.ever_reachable && strcmp(cl.error, error) != 0)) {
        td_error("cluster store unreachable: %s (serving what was applied: revision %lld)", error,
                 (long long)cl.applied);
        td_event("cluster", "cluster store unreachable: %s", error);
    }
    if (cl.reachable)
        td_wall_iso(cl.since, sizeof(cl.since));
    cl.reachable = 0;
    snprintf(cl.error, sizeof(cl.error), "%s", error);
    char why[700];
    snprintf(why, sizeof(why), "cut off from the cluster store: %s", error);
    td_ready_cut_off(why);
    if (td_rollout_cluster_fall_back(error))
        cl.applied = 0; /* the weights changed underneath: the catch-up applies the store's */
    td_cluster_leader_cut();
    if (cl.watch) {
        td_etcd_watch_cancel(cl.watch);
        cl.watch = NULL;
    }
    uv_timer_stop(&cl.keepalive_timer);
    /* 200 ms doubling to 5 s, with up to a quarter of jitter so nodes do not come back at once. */
    int jitter = cl.backoff_ms / 4 ? rand() % (cl.backoff_ms / 4 + 1) : 0;
    uv_timer_start(&cl.retry_timer, on_retry, (uint64_t)(cl.backoff_ms + jitter), 0);
    cl.backoff_ms = cl.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : cl.backoff_ms * 2;
}

static void on_retry(uv_timer_t *t) {
    (void)t;
    sync_start();
}

static void now_reachable(void) {
    if (!cl.reachable) {
        if (cl.ever_reachable)
            td_info("cluster store reachable again (%s): caught up at revision %lld",
                    td_etcd_endpoint(), (long long)cl.revision);
        else
            td_info("cluster store %s reached: prefix %s, revision %lld", td_etcd_endpoint(),
                    cl.prefix, (long long)cl.revision);
        if (cl.ever_reachable)
            td_event("cluster", "cluster store reachable again");
        td_wall_iso(cl.since, sizeof(cl.since));
    }
    cl.reachable = cl.ever_reachable = 1;
    cl.error[0] = 0;
    cl.backoff_ms = BACKOFF_MIN_MS;
    td_ready_cut_off(NULL);
    uint64_t every = (uint64_t)cl.lease_s * 1000 / 3;
    uv_timer_start(&cl.keepalive_timer, on_keepalive_tick, every, every);
}

static void seen(int64_t revision) {
    if (revision > cl.revision)
        cl.revision = revision;
}

/* A member answered but refused the call (a 4xx: "EP: 400 etcdserver: ..."): the store is
 * there, the call was wrong for it. */
static int refused(const td_etcd_result_t *r) {
    if (r->ok)
        return 0;
    for (const char *p = strstr(r->error, ": 4"); p; p = strstr(p + 1, ": 4"))
        if (p[3] >= '0' && p[3] <= '9' && p[4] >= '0' && p[4] <= '9' && p[5] == ' ')
            return 1;
    return 0;
}

/* The lease is gone in etcd (it expired while the node was away). */
static int lease_gone(const td_etcd_result_t *r) {
    return refused(r) && strstr(r->error, "lease not found") != NULL;
}

/* ---- the cache file: the last document and ring applied, for a start without etcd ---- */

static void cache_write(void) {
    if (!cl.cache_path[0] || !cl.shared)
        return;
    json_t *c =
        json_pack("{s:I,s:O,s:I,s:O?}", "revision", (json_int_t)cl.applied, "config", cl.shared,
                  "sticky_revision", (json_int_t)cl.sticky_rev, "sticky", cl.ring);
    char *text = c ? json_dumps(c, JSON_INDENT(2)) : NULL;
    json_decref(c);
    if (!text || td_config_write_text(text, cl.cache_path) < 0)
        td_warn("cluster: cannot write the cache file %s: %s", cl.cache_path,
                text ? strerror(errno) : "out of memory");
    free(text);
}

/* ---- applying what the store holds ---- */

/* Once after start, when the cluster's config (`running`, borrowed) first runs here: a config
 * file whose shared part differs is said, since in cluster mode it does not run. */
static void compare_file(const td_config_t *running) {
    if (!cl.file || !running)
        return;
    char msg[800];
    if (td_cluster_doc_differs(cl.file, running, msg, sizeof(msg)) > 0) {
        td_warn("cluster: %s: the cluster's run; the file's shared settings are not used in "
                "cluster mode",
                msg);
        td_event("cluster", "%s: the cluster's run", msg);
    }
    td_config_free(cl.file);
    cl.file = NULL;
}

/* The sticky ring `ring` ({"keys": [{"secret"}, ...]}, borrowed) in force from now on. */
static int use_ring(const json_t *ring) {
    const char *secrets[2];
    size_t n = 0, i;
    json_t *k;
    json_array_foreach(json_object_get(ring, "keys"), i, k) {
        const char *s = json_string_value(json_object_get(k, "secret"));
        if (s && s[0] && n < 2)
            secrets[n++] = s;
    }
    if (!n)
        return TD_EINVAL;
    td_snapshot_set_sticky_secrets(secrets, n);
    return 0;
}

static void apply_sticky(const td_etcd_kv_t *kv) {
    if (kv->mod_revision <= cl.sticky_rev)
        return;
    json_t *ring = json_loadb(kv->value, kv->value_len, 0, NULL);
    if (!ring || use_ring(ring) < 0) {
        td_error("cluster: the sticky key ring at revision %lld is refused (expected {\"keys\": "
                 "[{\"id\", \"secret\", \"created\"}, ...]})",
                 (long long)kv->mod_revision);
        td_event("cluster", "sticky key ring at revision %lld refused",
                 (long long)kv->mod_revision);
        json_decref(ring);
        return;
    }
    json_decref(cl.ring);
    cl.ring = ring;
    cl.sticky_rev = kv->mod_revision;
    char what[96];
    snprintf(what, sizeof(what), "sticky key ring at revision %lld", (long long)kv->mod_revision);
    td_control_refresh(what);
    cache_write();
    node_put();
}

/* Runs the shared document `doc` (owned) of revision `rev` here; `said` (may be NULL) says what
 * the change was. Returns 0, or TD_EINVAL after saying why (the running config stays). */
static int apply_doc(json_t *doc, int64_t rev, const char *client, const char *said) {
    char name[300], err[700];
    snprintf(name, sizeof(name), "%sconfig@%lld", cl.prefix, (long long)rev);
    json_t *ignored = NULL;
    td_config_t *cfg = td_cluster_doc_config(doc, cl.local, name, &ignored, err, sizeof(err));
    char what[400];
    if (said && said[0])
        snprintf(what, sizeof(what), "%s", said);
    else
        snprintf(what, sizeof(what), "cluster config at revision %lld", (long long)rev);
    if (cfg && td_control_apply(cfg, what, 0, client, err, sizeof(err)) < 0)
        cfg = NULL;
    if (!cfg) {
        cl.refused_rev = rev;
        td_error("cluster: the config at revision %lld is refused, revision %lld keeps running: %s",
                 (long long)rev, (long long)cl.applied, err);
        td_event("cluster", "config at revision %lld refused: %s", (long long)rev, err);
        json_decref(ignored);
        json_decref(doc);
        return TD_EINVAL;
    }
    cl.schema = (int)json_integer_value(json_object_get(doc, "schema"));
    if (json_array_size(ignored)) {
        char *list = json_dumps(ignored, JSON_COMPACT);
        td_warn("cluster: the config at revision %lld has schema %d, newer than this td's (%d): "
                "ignored %s",
                (long long)rev, cl.schema, TD_CLUSTER_SCHEMA, list ? list : "?");
        td_event("cluster", "config at revision %lld: schema %d, ignored %s", (long long)rev,
                 cl.schema, list ? list : "?");
        free(list);
    }
    json_decref(cl.ignored);
    cl.ignored = ignored;
    json_decref(cl.shared);
    cl.shared = doc;
    cl.applied = rev;
    if (rev > cl.config_rev)
        cl.config_rev = rev;
    cl.from_cache = 0;
    cl.initialised = 1;
    compare_file(td_control_config());
    td_rollout_cluster_caught_up((long long)rev);
    cache_write();
    node_put();
    check_waits();
    return 0;
}

/* apply_config, with what the change was (`said`, may be NULL). */
static void apply_config_said(const td_etcd_kv_t *kv, const char *said) {
    if (kv->mod_revision > cl.config_rev)
        cl.config_rev = kv->mod_revision;
    cl.initialised = 1;
    if (kv->mod_revision <= cl.applied || kv->mod_revision == cl.refused_rev)
        return; /* already running (this node's own change, or the cache's) */
    json_error_t e;
    json_t *doc = json_loadb(kv->value, kv->value_len, JSON_REJECT_DUPLICATES, &e);
    if (!doc) {
        cl.refused_rev = kv->mod_revision;
        td_error("cluster: the config at revision %lld is not JSON (%d:%d: %s): revision %lld "
                 "keeps running",
                 (long long)kv->mod_revision, e.line, e.column, e.text, (long long)cl.applied);
        td_event("cluster", "config at revision %lld refused: not JSON",
                 (long long)kv->mod_revision);
        return;
    }
    apply_doc(doc, kv->mod_revision, "cluster", said);
}

static void apply_config(const td_etcd_kv_t *kv) {
    apply_config_said(kv, NULL);
}

/* What the change of revision `rev` was, from its audit entry among the watch's events `ev`
 * (written in the change's transaction, so it comes in the same response): "cluster revision 53
 * from td-a: ratio blue=60 green=40"; "" when there is none. */
static void change_said(const td_etcd_event_t *ev, size_t n, int64_t rev, char *out, size_t size) {
    size_t pl = strlen(cl.audit_prefix);
    out[0] = 0;
    for (size_t i = 0; i < n; i++) {
        const td_etcd_kv_t *kv = &ev[i].kv;
        if (ev[i].deleted || kv->mod_revision != rev || kv->key_len <= pl ||
            memcmp(kv->key, cl.audit_prefix, pl) != 0)
            continue;
        json_t *e = json_loadb(kv->value, kv->value_len, 0, NULL);
        const char *node = json_string_value(json_object_get(e, "node"));
        const char *what = json_string_value(json_object_get(e, "what"));
        if (node && what && what[0])
            snprintf(out, size, "cluster revision %lld from %s: %s", (long long)rev, node, what);
        json_decref(e);
        return;
    }
}

/* The node name of a key under PREFIX nodes/, or NULL. */
static const char *node_of(const td_etcd_kv_t *kv, char *out, size_t n) {
    size_t pl = strlen(cl.nodes_prefix);
    if (kv->key_len <= pl || kv->key_len - pl >= n || memcmp(kv->key, cl.nodes_prefix, pl) != 0)
        return NULL;
    memcpy(out, kv->key + pl, kv->key_len - pl);
    out[kv->key_len - pl] = 0;
    return out;
}

static void node_seen(const td_etcd_kv_t *kv, int deleted) {
    char name[TD_NAME_MAX + 8];
    if (!node_of(kv, name, sizeof(name)))
        return;
    if (deleted) {
        json_object_del(cl.nodes, name);
        if (strcmp(name, cl.node) == 0 && (cl.node_value || cl.taken[0])) {
            /* Our key went (the lease expired while we were away), or the node that held our
             * name went: written again, if it is still free. */
            free(cl.node_value);
            cl.node_value = NULL;
            cl.member = 0;
            cl.taken_ms = 0;
            node_put();
        }
        return;
    }
    json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
    if (json_is_object(v))
        json_object_set_new(cl.nodes, name, v);
    else
        json_decref(v);
}

static int key_is(const td_etcd_kv_t *kv, const char *key) {
    return kv->key_len == strlen(key) && memcmp(kv->key, key, kv->key_len) == 0;
}

/* The step of PREFIX rollout this node runs, for its membership key: the document's, once the
 * config written with it (the same transaction, earlier in the same watch answer) is applied. */
static void rollout_step_update(void) {
    const json_t *doc = td_cluster_rollout_doc();
    const char *rid = json_string_value(json_object_get(doc, "id"));
    if (!rid || cl.applied < cl.config_rev)
        return;
    int step = (int)json_integer_value(json_object_get(doc, "step"));
    if (strcmp(rid, cl.rstep_id) == 0 && step == cl.rstep)
        return;
    snprintf(cl.rstep_id, sizeof(cl.rstep_id), "%s", rid);
    cl.rstep = step;
    node_put();
}

/* ---- the watch ---- */

static void on_watch(void *arg, int64_t revision, const td_etcd_event_t *ev, size_t n) {
    (void)arg;
    seen(revision);
    for (size_t i = 0; i < n; i++) {
        const td_etcd_kv_t *kv = &ev[i].kv;
        seen(kv->mod_revision);
        if (key_is(kv, cl.config_key)) {
            if (ev[i].deleted) {
                cl.initialised = 0;
                td_warn("cluster: %s was deleted: the running config stays; cluster not "
                        "initialised: run tdctl cluster init FILE",
                        cl.config_key);
                td_event("cluster", "%s deleted: cluster not initialised", cl.config_key);
            } else {
                char said[400];
                change_said(ev, n, kv->mod_revision, said, sizeof(said));
                apply_config_said(kv, said);
            }
        } else if (key_is(kv, cl.sticky_key)) {
            if (!ev[i].deleted)
                apply_sticky(kv);
        } else if (!td_cluster_leader_event(kv, ev[i].deleted)) {
            node_seen(kv, ev[i].deleted);
        }
    }
    rollout_step_update();
    check_waits();
}

static void on_watch_end(void *arg, int64_t compact_revision, const char *error) {
    (void)arg;
    cl.watch = NULL; /* freed by the client after this returns */
    if (cl.stopping)
        return;
    if (compact_revision > 0) {
        /* The history we would resume from is gone: read the keys again, watch from there. */
        td_info("cluster: watch compacted at revision %lld: reading the prefix again",
                (long long)compact_revision);
        sync_start();
        return;
    }
    char why[700];
    snprintf(why, sizeof(why), "watch ended: %s", error && error[0] ? error : "stream closed");
    /* A stream broken by one etcd member going away is no cut-off while another member answers:
     * read again and watch anew at once (the client moves on to the next endpoint), and only if
     * that fails is the node cut off. At most once a second, so that a member closing every new
     * stream does not spin the loop. */
    int64_t now = td_now_ms();
    if (cl.reachable && now - cl.rewatch_ms >= 1000) {
        cl.rewatch_ms = now;
        td_info("cluster: %s; reading the prefix again", why);
        sync_start();
        return;
    }
    fail(why);
}

/* ---- membership: PREFIX nodes/NODE under the lease ---- */

/* The servers of the running snapshot: a host name's are the addresses this node resolved it to
 * (each node resolves by itself). */
static json_t *health_json(void) {
    td_snapshot_t *s = td_router_acquire();
    json_t *h = json_object();
    int64_t now = td_now_ms();
    for (size_t i = 0; s && i < s->num_backends; i++) {
        json_t *b = json_object();
        for (size_t k = 0; k < s->backends[i].num_servers; k++) {
            const td_snap_server_t *sv = &s->backends[i].servers[k];
            json_object_set_new(b, sv->addr.text,
                                json_string(!td_server_is_up(sv->st, now) ? "down" : "up"));
        }
        json_object_set_new(h, s->backends[i].name, b);
    }
    td_snapshot_release(s);
    return h;
}

static int64_t own_applied(void) {
    return cl.applied > cl.sticky_rev ? cl.applied : cl.sticky_rev;
}

static char *node_text(void) {
    json_t *v = json_pack("{s:s,s:s,s:I,s:o,s:s,s:s}", "node", cl.node, "admin_url", cl.advertise,
                          "applied_revision", (json_int_t)own_applied(), "health", health_json(),
                          "version", TD_VERSION, "started", cl.started_iso);
    if (v && cl.rstep_id[0])
        json_object_set_new(v, "rollout_step",
                            json_pack("{s:s,s:i}", "id", cl.rstep_id, "step", cl.rstep));
    char *text = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(v);
    return text;
}

/* The sync a put of node_key belongs to (one of an older sync is forgotten), and the text on its
 * way (owned by the put's callback; freed at the stop when no answer came). */
static unsigned put_gen;
static char *put_text;

/* ---- the node's name: one live node per name ---- */

/* The write of node_key: a plain put once the key is this node's (cl.member); before that a
 * create-if-absent (create_revision 0) that reads the key when it exists, so that a second node
 * with the same name never overwrites the first one's key (see name_held). */
static int node_write(char *text, td_etcd_cb *cb) {
    td_etcd_op_t op = {0, cl.node_key, text, strlen(text), cl.lease_id};
    td_etcd_cmp_t absent = {cl.node_key, TD_ETCD_CREATE, 0};
    cl.taken_ms = td_now_ms();
    return cl.member ? td_etcd_txn(NULL, 0, &op, 1, NULL, cb, text)
                     : td_etcd_txn(&absent, 1, &op, 1, cl.node_key, cb, text);
}

/* What a successful answer `r` to node_write says: 1 written (the name is this node's), 0 the key
 * is already under this node's lease (written by it before a re-sync: write again, as a member),
 * -1 another live node holds the name (said once; this node is not ready, and tries again each
 * lease period, or at once when that node's key goes). */
static int name_held(const td_etcd_result_t *r) {
    if (r->succeeded || !r->num_kvs) {
        if (cl.taken[0]) {
            td_info("cluster: node name %s is free again: this node joins the cluster", cl.node);
            td_event("cluster", "node name %s free again: joined", cl.node);
            cl.taken[0] = 0;
            if (cl.reachable)
                td_ready_cut_off(NULL);
        }
        cl.member = 1;
        return 1;
    }
    const td_etcd_kv_t *kv = &r->kvs[0];
    if (kv->lease == cl.lease_id) {
        cl.member = 1;
        return 0;
    }
    json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
    const char *url = json_string_value(json_object_get(v, "admin_url"));
    char msg[sizeof(cl.taken)];
    snprintf(msg, sizeof(msg),
             "node name %s is taken by %s: give this node a name of its own (cluster.node)",
             cl.node, url && url[0] ? url : "another node");
    json_decref(v);
    if (strcmp(msg, cl.taken) != 0) {
        td_error("cluster: %s; this node serves the cluster's state but is not a member", msg);
        td_event("cluster", "%s", msg);
    }
    snprintf(cl.taken, sizeof(cl.taken), "%s", msg);
    char why[sizeof(msg) + 40];
    snprintf(why, sizeof(why), "not a member of the cluster: %s", msg);
    td_ready_cut_off(why);
    return -1;
}

static void on_node_put(void *arg, const td_etcd_result_t *r) {
    char *text = arg;
    put_text = NULL;
    cl.putting = 0;
    if (cl.stopping || put_gen != cl.gen) {
        free(text);
        return;
    }
    seen(r->revision);
    if (lease_gone(r)) {
        free(text);
        td_warn("cluster: the lease of %s expired: granting a new one", cl.node_key);
        cl.lease_id = 0;
        if (td_etcd_lease_grant(cl.lease_s, on_grant_again, (void *)(uintptr_t)cl.gen) < 0)
            fail("cannot grant a lease: out of memory");
        return;
    }
    if (!r->ok) {
        free(text);
        fail(r->error);
        return;
    }
    int held = name_held(r);
    if (held <= 0) {
        free(text);
        free(cl.node_value);
        cl.node_value = NULL;
        if (held == 0)
            node_put();
        return;
    }
    free(cl.node_value);
    cl.node_value = text;
    /* Something changed while this put was on its way: put again. */
    node_put();
}

/* Puts node_key when what it says changed (and nothing is on its way). */
static void node_put(void) {
    if (!cl.started || cl.stopping || !cl.lease_id || cl.putting || !cl.reachable)
        return;
    char *text = node_text();
    if (!text)
        return;
    if ((cl.node_value && strcmp(text, cl.node_value) == 0) ||
        (cl.taken[0] && td_now_ms() - cl.taken_ms < (int64_t)cl.lease_s * 1000)) {
        free(text);
        return;
    }
    if (node_write(text, on_node_put) < 0) {
        free(text);
        return;
    }
    put_gen = cl.gen;
    put_text = text;
    cl.putting = 1;
}

static void on_health_tick(uv_timer_t *t) {
    (void)t;
    node_put();
}

static void on_keepalive(void *arg, const td_etcd_result_t *r);

static void on_keepalive_tick(uv_timer_t *t) {
    (void)t;
    if (cl.lease_id &&
        td_etcd_lease_keepalive(cl.lease_id, on_keepalive, (void *)(uintptr_t)cl.gen) < 0)
        fail("cannot renew the lease: out of memory");
}

static void on_grant_again(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != cl.gen || cl.stopping)
        return;
    seen(r->revision);
    if (!r->ok || r->ttl <= 0) {
        fail(r->ok ? "lease not granted" : r->error);
        return;
    }
    cl.lease_id = r->lease_id;
    cl.member = 0; /* the key, if there is one, is under the old lease: claimed again */
    free(cl.node_value);
    cl.node_value = NULL;
    node_put();
    td_cluster_leader_lease(cl.lease_id);
}

static void on_keepalive(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != cl.gen || cl.stopping)
        return;
    if (!r->ok && !lease_gone(r)) {
        char why[700];
        snprintf(why, sizeof(why), "lease keepalive failed: %s", r->error);
        fail(why);
        return;
    }
    seen(r->revision);
    if (!r->ok || r->ttl <= 0) {
        /* Expired in etcd (we were away longer than lease_s): a new one, and the key again. */
        td_warn("cluster: the lease of %s expired: granting a new one", cl.node_key);
        cl.lease_id = 0;
        if (td_etcd_lease_grant(cl.lease_s, on_grant_again, (void *)(uintptr_t)cl.gen) < 0)
            fail("cannot grant a lease: out of memory");
    }
}

/* ---- the sync: range, apply, watch, lease, node key; then reachable ---- */

static void on_sync_node_put(void *arg, const td_etcd_result_t *r) {
    char *text = arg;
    put_text = NULL;
    cl.putting = 0;
    if (cl.stopping || put_gen != cl.gen) {
        free(text);
        return;
    }
    if (lease_gone(r)) {
        free(text);
        cl.lease_id = 0;
        sync_grant();
        return;
    }
    if (!r->ok) {
        free(text);
        fail(r->error);
        return;
    }
    seen(r->revision);
    int held = name_held(r);
    if (held == 0) {
        free(text);
        sync_node(); /* the key is this node's: written again as a member */
        return;
    }
    if (held < 0) {
        /* Not a member, but the store is there: the node follows the cluster's state. */
        free(text);
        free(cl.node_value);
        cl.node_value = NULL;
        char why[sizeof(cl.taken) + 40];
        snprintf(why, sizeof(why), "not a member of the cluster: %s", cl.taken);
        now_reachable();
        td_ready_cut_off(why);
        check_waits();
        return;
    }
    free(cl.node_value);
    cl.node_value = text;
    now_reachable();
    td_cluster_leader_reachable(cl.lease_id);
    check_waits();
    node_put(); /* what changed meanwhile */
}

static void sync_node(void) {
    char *text = node_text();
    if (!text) {
        fail("out of memory");
        return;
    }
    if (node_write(text, on_sync_node_put) < 0) {
        free(text);
        fail("cannot write the node's key: out of memory");
        return;
    }
    put_gen = cl.gen;
    put_text = text;
    cl.putting = 1;
}

/* The start of a sync step's callback: 0 when the answer is of an earlier sync (`arg` its
 * generation) or td is stopping, or when no member answered (the node is cut off: fail); else 1,
 * with the store's revision noted. */
static int answered(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != cl.gen || cl.stopping)
        return 0;
    if (!r->ok) {
        fail(r->error);
        return 0;
    }
    seen(r->revision);
    return 1;
}

static void on_sync_grant(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != cl.gen || cl.stopping)
        return;
    if (!r->ok || r->ttl <= 0) {
        fail(r->ok ? "lease not granted" : r->error);
        return;
    }
    seen(r->revision);
    cl.lease_id = r->lease_id;
    cl.member = 0;
    sync_node();
}

static void sync_grant(void) {
    if (td_etcd_lease_grant(cl.lease_s, on_sync_grant, (void *)(uintptr_t)cl.gen) < 0)
        fail("cannot grant a lease: out of memory");
}

static void on_sync_keepalive(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != cl.gen || cl.stopping)
        return;
    if (!r->ok && !lease_gone(r)) {
        fail(r->error);
        return;
    }
    seen(r->revision);
    if (r->ok && r->ttl > 0) {
        sync_node();
        return;
    }
    cl.lease_id = 0;
    sync_grant();
}

static void sync_lease(void) {
    if (cl.lease_id) {
        if (td_etcd_lease_keepalive(cl.lease_id, on_sync_keepalive, (void *)(uintptr_t)cl.gen) < 0)
            fail("cannot renew the lease: out of memory");
        return;
    }
    sync_grant();
}

static void on_sync_nodes(void *arg, const td_etcd_result_t *r) {
    if (!answered(arg, r))
        return;
    json_object_clear(cl.nodes);
    for (size_t i = 0; i < r->num_kvs; i++)
        node_seen(&r->kvs[i], 0);
    if (cl.watch)
        td_etcd_watch_cancel(cl.watch);
    cl.watch = td_etcd_watch(cl.prefix, cl.watch_from, on_watch, on_watch_end, NULL);
    if (!cl.watch) {
        fail("cannot watch: out of memory");
        return;
    }
    sync_lease();
}

static void on_sync_sticky(void *arg, const td_etcd_result_t *r) {
    if (!answered(arg, r))
        return;
    if (r->num_kvs)
        apply_sticky(&r->kvs[0]);
    if (td_etcd_range(cl.nodes_prefix, 1, 0, 0, on_sync_nodes, arg) < 0)
        fail("cannot read the nodes: out of memory");
}

static void on_sync_config(void *arg, const td_etcd_result_t *r) {
    if (!answered(arg, r))
        return;
    cl.watch_from = r->revision + 1;
    if (r->num_kvs && r->kvs[0].mod_revision < cl.applied) {
        /* Revisions only grow in one store: this is another one (restored from a backup, or
         * created anew). What it holds is the cluster's state now. */
        td_warn("cluster: %s is at revision %lld, older than the %lld this node applied (etcd "
                "restored or created anew?): applying the store's",
                cl.config_key, (long long)r->kvs[0].mod_revision, (long long)cl.applied);
        cl.applied = cl.config_rev = cl.refused_rev = 0;
        cl.sticky_rev = 0;
    }
    if (r->num_kvs) {
        apply_config(&r->kvs[0]);
    } else {
        cl.initialised = 0;
        if (!cl.said_uninitialised) {
            cl.said_uninitialised = 1;
            td_warn("cluster not initialised: run tdctl cluster init FILE (serving %s meanwhile)",
                    cl.from_cache ? "the cache file" : "the config file");
            td_event("cluster", "cluster not initialised: run tdctl cluster init FILE");
        }
    }
    if (td_etcd_range(cl.sticky_key, 0, 0, 0, on_sync_sticky, arg) < 0)
        fail("cannot read the sticky key ring: out of memory");
}

static void sync_start(void) {
    if (cl.stopping)
        return;
    cl.gen++;
    uv_timer_stop(&cl.retry_timer);
    if (cl.watch) {
        td_etcd_watch_cancel(cl.watch);
        cl.watch = NULL;
    }
    if (td_etcd_range(cl.config_key, 0, 0, 0, on_sync_config, (void *)(uintptr_t)cl.gen) < 0)
        fail("cannot read the config: out of memory");
}

/* ---- boot and start ---- */

td_config_t *td_cluster_boot(td_config_t *cfg, const char *config_path) {
    if (!cfg->has_cluster)
        return cfg;
    const td_config_cluster_t *c = &cfg->cluster;
    cl.on = 1;
    cl.lease_s = c->lease_s;
    snprintf(cl.prefix, sizeof(cl.prefix), "%s", c->prefix);
    if (c->node[0]) {
        snprintf(cl.node, sizeof(cl.node), "%s", c->node);
    } else {
        char host[256] = "td";
        gethostname(host, sizeof(host) - 1);
        host[strcspn(host, ".")] = 0;
        snprintf(cl.node, sizeof(cl.node), "%s", host[0] ? host : "td");
    }
    if (c->advertise[0])
        snprintf(cl.advertise, sizeof(cl.advertise), "%s", c->advertise);
    else
        snprintf(cl.advertise, sizeof(cl.advertise), "%s://%s",
                 cfg->admin_tls.tls ? "https" : "http", cfg->admin_address.text);
    if (c->cache_file[0])
        snprintf(cl.cache_path, sizeof(cl.cache_path), "%s", c->cache_file);
    else if (config_path && config_path[0])
        snprintf(cl.cache_path, sizeof(cl.cache_path), "%.4000s.cluster-cache.json", config_path);
    snprintf(cl.config_key, sizeof(cl.config_key), "%sconfig", cl.prefix);
    snprintf(cl.sticky_key, sizeof(cl.sticky_key), "%ssticky", cl.prefix);
    snprintf(cl.rollout_key, sizeof(cl.rollout_key), "%srollout", cl.prefix);
    snprintf(cl.nodes_prefix, sizeof(cl.nodes_prefix), "%snodes/", cl.prefix);
    snprintf(cl.node_key, sizeof(cl.node_key), "%s%s", cl.nodes_prefix, cl.node);
    snprintf(cl.audit_prefix, sizeof(cl.audit_prefix), "%saudit/", cl.prefix);
    td_cluster_leader_boot(cl.prefix, cl.node, cl.advertise);
    cl.local = td_cluster_doc_local(cfg);
    cl.file = td_config_dup(cfg);
    cl.nodes = json_object();
    cl.ignored = json_array();
    cl.schema = TD_CLUSTER_SCHEMA;
    td_wall_iso(cl.started_iso, sizeof(cl.started_iso));
    td_info("cluster mode: node %s, prefix %s on %s%s; the state file is not used (the shared "
            "state is in etcd)",
            cl.node, cl.prefix, c->etcd[0], c->num_etcd > 1 ? " and others" : "");
    /* Where the cluster was when this node last saw it, if it has been there. */
    json_error_t e;
    json_t *cache = cl.cache_path[0] ? json_load_file(cl.cache_path, 0, &e) : NULL;
    if (!cache) {
        if (cl.cache_path[0] && access(cl.cache_path, F_OK) == 0)
            td_warn("cluster: cache file %s not used (%d:%d: %s): starting from %s", cl.cache_path,
                    e.line, e.column, e.text, config_path);
        return cfg;
    }
    json_t *doc = json_object_get(cache, "config"), *ring = json_object_get(cache, "sticky");
    json_t *ignored = NULL;
    char err[700];
    td_config_t *from =
        td_cluster_doc_config(doc, cl.local, cl.cache_path, &ignored, err, sizeof(err));
    if (!from) {
        td_warn("cluster: cache file %s not used (%s): starting from %s", cl.cache_path, err,
                config_path);
        json_decref(cache);
        return cfg;
    }
    cl.shared = json_incref(doc);
    cl.applied = cl.config_rev = json_integer_value(json_object_get(cache, "revision"));
    cl.schema = (int)json_integer_value(json_object_get(doc, "schema"));
    json_decref(cl.ignored);
    cl.ignored = ignored;
    if (json_is_object(ring) && use_ring(ring) == 0) {
        cl.ring = json_incref(ring);
        cl.sticky_rev = json_integer_value(json_object_get(cache, "sticky_revision"));
    }
    cl.from_cache = 1;
    cl.initialised = 1;
    td_info("cluster: starting from the cache file %s (revision %lld)", cl.cache_path,
            (long long)cl.applied);
    json_decref(cache);
    td_config_free(cfg);
    return from;
}

int td_cluster_start(uv_loop_t *loop) {
    if (!cl.on)
        return 0;
    const td_config_t *cfg = td_control_config();
    const td_config_cluster_t *c = &cfg->cluster;
    const char *eps[TD_CLUSTER_MAX_ENDPOINTS];
    for (int i = 0; i < c->num_etcd; i++)
        eps[i] = c->etcd[i];
    td_etcd_opts_t o = {eps,        (size_t)c->num_etcd, c->tls_ca,   c->tls_cert,
                        c->tls_key, c->username,         c->password, CALL_TIMEOUT_MS};
    int r = td_etcd_init(loop, &o);
    if (r < 0)
        return r;
    cl.loop = loop;
    uv_timer_init(loop, &cl.retry_timer);
    uv_timer_init(loop, &cl.keepalive_timer);
    uv_timer_init(loop, &cl.health_timer);
    uv_timer_init(loop, &cl.stop_timer);
    cl.timers_open = 1;
    uv_timer_start(&cl.health_timer, on_health_tick, HEALTH_POLL_MS, HEALTH_POLL_MS);
    cl.started = 1;
    if (cl.from_cache)
        compare_file(td_control_config()); /* the cache's document runs: the cluster's */
    cl.backoff_ms = BACKOFF_MIN_MS;
    td_wall_iso(cl.since, sizeof(cl.since));
    snprintf(cl.error, sizeof(cl.error), "connecting to %s", c->etcd[0]);
    char why[700];
    snprintf(why, sizeof(why), "cut off from the cluster store: %s", cl.error);
    td_ready_cut_off(why);
    sync_start();
    return 0;
}

/* ---- changes ---- */

static void op_unlink(op_t *op) {
    for (op_t **pp = &cl.ops; *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            return;
        }
}

static void op_free(op_t *op) {
    td_config_free(op->cfg);
    json_decref(op->shared);
    json_decref(op->ring);
    json_decref(op->rollout);
    free(op);
}

/* A summary of a shared document for the audit entry: the method and every backend's weight. */
static json_t *summary(const json_t *doc) {
    if (!doc)
        return json_null();
    json_t *w = json_object(), *b;
    size_t i;
    json_array_foreach(json_object_get(doc, "backends"), i, b) {
        json_t *name = json_object_get(b, "name");
        if (json_is_string(name))
            json_object_set(w, json_string_value(name), json_object_get(b, "weight"));
    }
    json_t *routing = json_object_get(doc, "routing");
    json_t *method = json_object_get(routing, "method");
    return json_pack("{s:O,s:o}", "method", method ? method : json_null(), "weights", w);
}

/* The audit key and entry of a change (new strings, owned by the caller). */
static int audit_entry(const char *what, const char *client, const json_t *before,
                       const json_t *after, char **key, char **value) {
    char now[40];
    td_wall_iso(now, sizeof(now));
    unsigned char rnd[3];
    RAND_bytes(rnd, sizeof(rnd));
    /* The time sorts the keys; the node and a few random bits keep two changes in the same
     * millisecond apart. */
    if (asprintf(key, "%s%s-%s-%02x%02x%02x", cl.audit_prefix, now, cl.node, rnd[0], rnd[1],
                 rnd[2]) < 0)
        return TD_ENOMEM;
    json_t *e = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o}", "time", now, "node", cl.node, "client",
                          client ? client : "", "what", what ? what : "", "before", summary(before),
                          "after", summary(after));
    *value = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (!*value) {
        free(*key);
        return TD_ENOMEM;
    }
    return 0;
}

static void on_txn(void *arg, const td_etcd_result_t *r) {
    op_t *op = arg;
    if (op->dead)
        return;
    op_unlink(op);
    char err[800] = "";
    int result = 0;
    if (refused(r)) {
        snprintf(err, sizeof(err), "the cluster store refused the change: %s", r->error);
        result = TD_EINVAL;
    } else if (!r->ok) {
        snprintf(err, sizeof(err), "cluster store unreachable: %s", r->error);
        result = TD_EUNAVAIL;
        fail(r->error);
    } else if (!r->succeeded && op->token &&
               (!r->num_kvs || r->kvs[0].create_revision != op->token)) {
        /* The leader key is not the one this node created: another node leads (or none). */
        seen(r->revision);
        snprintf(err, sizeof(err), "not the leader");
        result = TD_ECONFLICT;
        char why[200];
        snprintf(why, sizeof(why), "a write failed its leader compare in etcd at revision %lld",
                 (long long)r->revision);
        td_cluster_leader_deposed(why);
    } else if (!r->succeeded && op->token) {
        seen(r->revision);
        snprintf(err, sizeof(err),
                 "the cluster's config changed meanwhile (this node had applied revision %lld): "
                 "read it again and retry",
                 (long long)op->base);
        result = TD_ECONFLICT;
    } else if (!r->succeeded) {
        seen(r->revision);
        int64_t now_rev = r->num_kvs ? r->kvs[0].mod_revision : 0;
        if (op->init)
            snprintf(err, sizeof(err),
                     "the cluster is already initialised (%s is at revision %lld): change it "
                     "through the API instead",
                     cl.config_key, (long long)now_rev);
        else if (!op->cfg)
            snprintf(err, sizeof(err),
                     "the sticky key ring changed meanwhile (revision %lld, this node had "
                     "applied %lld): try again",
                     (long long)now_rev, (long long)op->base);
        else
            snprintf(err, sizeof(err),
                     "the cluster's config changed meanwhile (revision %lld, this node had "
                     "applied %lld): read it again and retry",
                     (long long)now_rev, (long long)op->base);
        result = TD_ECONFLICT;
        if (r->num_kvs && op->cfg)
            apply_config(&r->kvs[0]); /* catch up */
    } else {
        seen(r->revision);
        if (op->ring) {
            use_ring(op->ring);
            json_decref(cl.ring);
            cl.ring = json_incref(op->ring);
            cl.sticky_rev = r->revision;
            td_control_refresh(op->init ? "sticky key ring seeded" : "sticky key rotated");
        }
        if (op->cfg && r->revision > cl.applied) {
            char e2[700];
            json_t *shared = op->shared;
            op->shared = NULL;
            /* What runs here is the document written with this node's own keys (those of a
             * PUT /api/v1/config or init body are not this node's). */
            td_config_free(op->cfg);
            json_t *ignored = NULL;
            op->cfg =
                td_cluster_doc_config(shared, cl.local, cl.config_key, &ignored, e2, sizeof(e2));
            json_decref(ignored);
            if (op->cfg &&
                td_control_apply(op->cfg, op->what, 0, op->client, e2, sizeof(e2)) == 0) {
                op->cfg = NULL;
                json_decref(cl.shared);
                cl.shared = shared;
                cl.applied = cl.config_rev = r->revision;
                cl.initialised = 1;
                cl.from_cache = 0;
                compare_file(td_control_config());
                json_array_clear(cl.ignored);
                cl.schema = TD_CLUSTER_SCHEMA;
            } else {
                op->cfg = NULL;
                json_decref(shared);
                td_error("cluster: revision %lld was written but does not apply here: %s",
                         (long long)r->revision, e2);
            }
        }
        if (op->rollout)
            td_cluster_leader_rollout_written(op->rollout, r->revision);
        rollout_step_update();
        cache_write();
        node_put();
        check_waits();
    }
    op->cb(op->arg, result, (uint64_t)(result ? 0 : r->revision), err);
    op_free(op);
}

/* Fills op's audit entry and starts the txn. Returns 0 or TD_E* (op freed, cb not called). */
static int start_txn(op_t *op, const td_etcd_cmp_t *cmp, size_t ncmp, const char *fail_range) {
    char *akey = NULL, *aval = NULL;
    char *doc = op->shared ? json_dumps(op->shared, JSON_INDENT(2)) : NULL;
    char *ring = op->ring ? json_dumps(op->ring, JSON_INDENT(2)) : NULL;
    char *ro = op->rollout ? json_dumps(op->rollout, JSON_COMPACT) : NULL;
    int r = TD_ENOMEM;
    if ((op->shared && !doc) || (op->ring && !ring) || (op->rollout && !ro) ||
        audit_entry(op->what, op->client, cl.shared, op->shared ? op->shared : cl.shared, &akey,
                    &aval) < 0)
        goto out;
    td_etcd_op_t ops[4];
    size_t n = 0;
    if (doc)
        ops[n++] = (td_etcd_op_t){0, cl.config_key, doc, strlen(doc), 0};
    if (ring)
        ops[n++] = (td_etcd_op_t){0, cl.sticky_key, ring, strlen(ring), 0};
    if (ro)
        ops[n++] = (td_etcd_op_t){0, cl.rollout_key, ro, strlen(ro), 0};
    ops[n++] = (td_etcd_op_t){0, akey, aval, strlen(aval), 0};
    r = td_etcd_txn(cmp, ncmp, ops, n, fail_range, on_txn, op);
    if (r == 0) {
        op->next = cl.ops;
        cl.ops = op;
    }
out:
    free(doc);
    free(ring);
    free(ro);
    free(akey);
    free(aval);
    if (r < 0)
        op_free(op);
    return r;
}

static op_t *op_new(const char *what, const char *client, td_cluster_done_fn *cb, void *arg) {
    op_t *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    snprintf(op->what, sizeof(op->what), "%s", what ? what : "");
    snprintf(op->client, sizeof(op->client), "%s", client ? client : "");
    op->cb = cb;
    op->arg = arg;
    return op;
}

int td_cluster_propose(td_config_t *cfg, const char *what, const char *client,
                       td_cluster_done_fn *cb, void *arg) {
    char why[700];
    op_t *op = NULL;
    if (td_cluster_writable(why, sizeof(why)) < 0 || !(op = op_new(what, client, cb, arg))) {
        td_config_free(cfg);
        return op ? TD_EUNAVAIL : TD_ENOMEM;
    }
    op->cfg = cfg;
    op->shared = td_cluster_doc_shared(cfg);
    if (!op->shared) {
        op_free(op);
        return TD_ENOMEM;
    }
    op->base = cl.applied;
    td_etcd_cmp_t cmp = {cl.config_key, TD_ETCD_MOD, cl.applied};
    return start_txn(op, &cmp, 1, cl.config_key);
}

int td_cluster_propose_fenced(td_config_t *cfg, const json_t *rollout, const char *what,
                              const char *client, td_cluster_done_fn *cb, void *arg) {
    char why[700];
    op_t *op = NULL;
    int64_t token = td_cluster_leader_token();
    if (!token) {
        td_config_free(cfg);
        return TD_ECONFLICT;
    }
    if (td_cluster_writable(why, sizeof(why)) < 0 || !(op = op_new(what, client, cb, arg))) {
        td_config_free(cfg);
        return op ? TD_EUNAVAIL : TD_ENOMEM;
    }
    op->token = token;
    op->rollout = rollout ? json_deep_copy(rollout) : NULL;
    if (cfg) {
        op->cfg = cfg;
        op->shared = td_cluster_doc_shared(cfg);
        if (!op->shared) {
            op_free(op);
            return TD_ENOMEM;
        }
    }
    op->base = cl.applied;
    td_etcd_cmp_t cmp[2] = {{td_cluster_leader_keyname(), TD_ETCD_CREATE, token},
                            {cl.config_key, TD_ETCD_MOD, cl.applied}};
    return start_txn(op, cmp, cfg ? 2 : 1, td_cluster_leader_keyname());
}

/* A new ring: a fresh key first, then the newest of `old` (borrowed, may be NULL). `seed` (may
 * be NULL or "") is the first key's secret instead of random bytes. */
static json_t *new_ring(const json_t *old, const char *seed) {
    unsigned char b[32];
    char hex[65], id[24], now[40];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return NULL;
    for (size_t i = 0; i < sizeof(b); i++)
        snprintf(hex + 2 * i, 3, "%02x", b[i]);
    snprintf(id, sizeof(id), "%.16s", hex + 48);
    td_wall_iso(now, sizeof(now));
    json_t *keys = json_array();
    json_array_append_new(keys, json_pack("{s:s,s:s,s:s}", "id", id, "secret",
                                          seed && seed[0] ? seed : hex, "created", now));
    json_t *prev = json_array_get(json_object_get(old, "keys"), 0);
    if (prev)
        json_array_append(keys, prev);
    return json_pack("{s:o}", "keys", keys);
}

int td_cluster_init_prefix(td_config_t *cfg, const char *client, td_cluster_done_fn *cb,
                           void *arg) {
    op_t *op = NULL;
    if (!cl.started || !cl.reachable) {
        td_config_free(cfg);
        return TD_EUNAVAIL;
    }
    if (!(op = op_new("cluster initialised", client, cb, arg))) {
        td_config_free(cfg);
        return TD_ENOMEM;
    }
    op->init = 1;
    op->cfg = cfg;
    op->shared = td_cluster_doc_shared(cfg);
    op->ring = new_ring(NULL, cfg->cookie_secret);
    if (!op->shared || !op->ring) {
        op_free(op);
        return TD_ENOMEM;
    }
    td_etcd_cmp_t cmp = {cl.config_key, TD_ETCD_CREATE, 0};
    return start_txn(op, &cmp, 1, cl.config_key);
}

int td_cluster_rotate_sticky_key(const char *client, td_cluster_done_fn *cb, void *arg) {
    char why[700];
    op_t *op = NULL;
    if (td_cluster_writable(why, sizeof(why)) < 0)
        return TD_EUNAVAIL;
    if (!(op = op_new("sticky key rotated", client, cb, arg)))
        return TD_ENOMEM;
    op->ring = new_ring(cl.ring, NULL);
    if (!op->ring) {
        op_free(op);
        return TD_ENOMEM;
    }
    op->base = cl.sticky_rev;
    td_etcd_cmp_t cmp = {cl.sticky_key, TD_ETCD_MOD, cl.sticky_rev};
    return start_txn(op, &cmp, 1, cl.sticky_key);
}

int td_cluster_writable(char *why, size_t n) {
    if (!cl.on) {
        snprintf(why, n, "not in cluster mode");
        return TD_EINVAL;
    }
    if (!cl.reachable) {
        snprintf(why, n, "cluster store unreachable: %s", cl.error);
        return TD_EUNAVAIL;
    }
    if (cl.taken[0]) {
        snprintf(why, n, "this node is not a member of the cluster: %s", cl.taken);
        return TD_ECONFLICT;
    }
    if (!cl.initialised) {
        snprintf(why, n, "cluster not initialised: run tdctl cluster init FILE");
        return TD_ECONFLICT;
    }
    if (cl.applied < cl.config_rev && cl.refused_rev == cl.config_rev) {
        snprintf(why, n,
                 "the cluster's config at revision %lld does not load on this node (see GET "
                 "/api/v1/events), which runs revision %lld: put a valid document at %s",
                 (long long)cl.config_rev, (long long)cl.applied, cl.config_key);
        return TD_ECONFLICT;
    }
    if (cl.applied < cl.config_rev) {
        snprintf(why, n,
                 "this node is catching up with the cluster store (revision %lld, applied "
                 "%lld)",
                 (long long)cl.config_rev, (long long)cl.applied);
        return TD_EUNAVAIL;
    }
    if (n)
        why[0] = 0;
    return 0;
}

/* ---- waiting for every node ---- */

/* The live nodes that have not applied `revision`, as a new array (empty: none). */
static json_t *laggards(uint64_t revision) {
    json_t *out = json_array(), *v;
    const char *name;
    json_object_foreach(cl.nodes, name, v) {
        json_int_t at = strcmp(name, cl.node) == 0 && !cl.taken[0]
                            ? own_applied()
                            : json_integer_value(json_object_get(v, "applied_revision"));
        if (at < (json_int_t)revision)
            json_array_append_new(out, json_string(name));
    }
    return out;
}

static void wait_closed(uv_handle_t *h) {
    free(h->data);
}

static void wait_end(wait_t *w, const json_t *late) {
    for (wait_t **pp = &cl.waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->done = 1;
    uv_timer_stop(&w->timer);
    w->cb(w->arg, late);
    uv_close((uv_handle_t *)&w->timer, wait_closed);
}

static void on_wait_timer(uv_timer_t *t) {
    wait_t *w = t->data;
    json_t *late = laggards(w->revision);
    if (!json_array_size(late)) {
        wait_end(w, NULL);
    } else if (td_now_ms() >= w->deadline_ms) {
        wait_end(w, late);
    } else {
        uv_timer_start(&w->timer, on_wait_timer, (uint64_t)(w->deadline_ms - td_now_ms()), 0);
    }
    json_decref(late);
}

static void check_waits(void) {
    for (wait_t *w = cl.waits, *next; w; w = next) {
        next = w->next;
        json_t *late = laggards(w->revision);
        if (!json_array_size(late))
            wait_end(w, NULL);
        json_decref(late);
    }
}

int td_cluster_wait_all(uint64_t revision, int64_t timeout_ms, td_cluster_wait_fn *cb, void *arg) {
    if (!cl.started || cl.stopping) /* a wait asked from a callback of the stop would stay */
        return TD_EUNAVAIL;
    wait_t *w = calloc(1, sizeof(*w));
    if (!w)
        return TD_ENOMEM;
    w->revision = revision;
    w->deadline_ms = td_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    w->cb = cb;
    w->arg = arg;
    uv_timer_init(cl.loop, &w->timer);
    w->timer.data = w;
    w->next = cl.waits;
    cl.waits = w;
    uv_timer_start(&w->timer, on_wait_timer, 0, 0); /* checked at once, but not from here */
    return 0;
}

/* ---- history ---- */

static void on_history(void *arg, const td_etcd_result_t *r) {
    history_t *h = arg;
    if (h->dead)
        return;
    for (history_t **pp = &cl.histories; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    if (!r->ok) {
        char err[700];
        snprintf(err, sizeof(err), "cluster store unreachable: %s", r->error);
        h->cb(h->arg, NULL, err);
    } else {
        json_t *entries = json_array();
        for (size_t i = 0; i < r->num_kvs; i++) {
            json_t *e = json_loadb(r->kvs[i].value, r->kvs[i].value_len, 0, NULL);
            /* The entry was written in its change's transaction: its revision is the entry's. */
            if (json_is_object(e) &&
                json_object_set_new(e, "revision", json_integer(r->kvs[i].mod_revision)) == 0)
                json_array_append_new(entries, e);
            else
                json_decref(e);
        }
        h->cb(h->arg, entries, NULL);
    }
    free(h);
}

int td_cluster_history(long limit, td_cluster_history_fn *cb, void *arg) {
    if (!cl.started)
        return TD_EUNAVAIL;
    history_t *h = calloc(1, sizeof(*h));
    if (!h)
        return TD_ENOMEM;
    h->cb = cb;
    h->arg = arg;
    int r = td_etcd_range(cl.audit_prefix, 1, limit, 1, on_history, h);
    if (r < 0) {
        free(h);
        return r;
    }
    h->next = cl.histories;
    cl.histories = h;
    return 0;
}

/* ---- the view ---- */

/* "green 127.0.0.1:8102 down on td-b only": a server the live nodes do not agree on. */
static json_t *disagreements(void) {
    json_t *out = json_array();
    const td_config_t *c = td_control_config();
    for (size_t i = 0; c && i < c->num_backends; i++) {
        for (size_t k = 0; k < c->backends[i].num_servers; k++) {
            const char *b = c->backends[i].name, *addr = c->backends[i].servers[k].address.text;
            char up[512] = "", down[512] = "";
            int nup = 0, ndown = 0;
            const char *name;
            json_t *v;
            json_object_foreach(cl.nodes, name, v) {
                const char *h = json_string_value(
                    json_object_get(json_object_get(json_object_get(v, "health"), b), addr));
                if (!h)
                    continue;
                int isdown = strcmp(h, "down") == 0;
                char *list = isdown ? down : up;
                size_t l = strlen(list);
                snprintf(list + l, 512 - l, "%s%s", l ? ", " : "", name);
                isdown ? ndown++ : nup++;
            }
            if (nup && ndown) {
                char msg[1200];
                snprintf(msg, sizeof(msg), "%s %s %s on %s only", b, addr,
                         ndown <= nup ? "down" : "up", ndown <= nup ? down : up);
                json_array_append_new(out, json_string(msg));
            }
        }
    }
    return out;
}

/* `j` (owned, may be NULL) with "error" when this node is not a member. */
static json_t *with_error(json_t *j) {
    if (j && cl.taken[0])
        json_object_set_new(j, "error", json_string(cl.taken));
    return j;
}

json_t *td_cluster_json(void) {
    json_t *nodes = json_array(), *v;
    const char *name;
    json_object_foreach(cl.nodes, name, v) {
        json_int_t at = json_integer_value(json_object_get(v, "applied_revision"));
        json_int_t lag = cl.config_rev > at ? cl.config_rev - at : 0;
        json_t *n = json_deep_copy(v);
        json_object_set_new(n, "node", json_string(name));
        json_object_set_new(n, "lag", json_integer(lag));
        json_array_append_new(nodes, n);
    }
    json_t *store = json_pack("{s:b,s:s,s:s}", "reachable", cl.reachable, "endpoint",
                              cl.started ? td_etcd_endpoint() : "", "since", cl.since);
    if (!cl.reachable)
        json_object_set_new(store, "error", json_string(cl.error));
    json_t *j = json_pack(
        "{s:s,s:s,s:b,s:o,s:I,s:I,s:i,s:O,s:b,s:o,s:o,s:n}", "node", cl.node, "prefix", cl.prefix,
        "initialised", cl.initialised, "store", store, "revision", (json_int_t)cl.revision,
        "applied_revision", (json_int_t)own_applied(), "schema", cl.schema, "ignored", cl.ignored,
        "from_cache", cl.from_cache, "nodes", nodes, "disagreements", disagreements(), "leader");
    json_object_set_new(j, "leader",
                        td_cluster_leader() ? json_string(td_cluster_leader()) : json_null());
    return with_error(j);
}

json_t *td_cluster_state_json(void) {
    return with_error(json_pack("{s:s,s:b,s:b,s:I,s:I,s:b}", "node", cl.node, "initialised",
                                cl.initialised, "reachable", cl.reachable, "revision",
                                (json_int_t)cl.revision, "applied_revision",
                                (json_int_t)own_applied(), "from_cache", cl.from_cache));
}

/* ---- stop ---- */

static void stop_done(void) {
    if (!cl.timers_open)
        return;
    cl.timers_open = 0;
    td_etcd_shutdown();
    while (cl.ops) {
        op_t *op = cl.ops;
        cl.ops = op->next;
        op_free(op);
    }
    while (cl.histories) {
        history_t *h = cl.histories;
        cl.histories = h->next;
        free(h);
    }
    free(put_text); /* a put whose answer never came */
    put_text = NULL;
    uv_close((uv_handle_t *)&cl.retry_timer, NULL);
    uv_close((uv_handle_t *)&cl.keepalive_timer, NULL);
    uv_close((uv_handle_t *)&cl.health_timer, NULL);
    uv_close((uv_handle_t *)&cl.stop_timer, NULL);
    td_config_free(cl.file);
    cl.file = NULL;
    json_decref(cl.local);
    json_decref(cl.shared);
    json_decref(cl.ring);
    json_decref(cl.ignored);
    json_decref(cl.nodes);
    cl.local = cl.shared = cl.ring = cl.ignored = cl.nodes = NULL;
    td_cluster_leader_stop();
    free(cl.node_value);
    cl.node_value = NULL;
}

static void on_stop_timer(uv_timer_t *t) {
    (void)t;
    stop_done();
}

static void on_revoked(void *arg, const td_etcd_result_t *r) {
    (void)arg, (void)r;
    /* Not from inside the client's own callback: on the next loop turn. */
    uv_timer_start(&cl.stop_timer, on_stop_timer, 0, 0);
}

void td_cluster_stop(void) {
    if (!cl.on || cl.stopping)
        return;
    cl.stopping = 1;
    if (!cl.started) {
        td_config_free(cl.file);
        cl.file = NULL;
        json_decref(cl.local);
        json_decref(cl.shared);
        json_decref(cl.ring);
        json_decref(cl.ignored);
        json_decref(cl.nodes);
        cl.local = cl.shared = cl.ring = cl.ignored = cl.nodes = NULL;
        return;
    }
    if (cl.watch) {
        td_etcd_watch_cancel(cl.watch);
        cl.watch = NULL;
    }
    uv_timer_stop(&cl.retry_timer);
    uv_timer_stop(&cl.keepalive_timer);
    uv_timer_stop(&cl.health_timer);
    /* What waits for etcd is answered now (nothing more will come); freed once the client is
     * shut down, since an answer may still be on its way until then. */
    for (op_t *op = cl.ops; op; op = op->next) {
        op->dead = 1;
        op->cb(op->arg, TD_EUNAVAIL, 0, "td is stopping");
    }
    for (history_t *h = cl.histories; h; h = h->next) {
        h->dead = 1;
        h->cb(h->arg, NULL, "td is stopping");
    }
    while (cl.waits) {
        json_t *all = laggards(UINT64_MAX);
        wait_end(cl.waits, all);
        json_decref(all);
    }
    /* The node leaves the list at once rather than when its lease runs out. */
    if (cl.lease_id && cl.reachable && td_etcd_lease_revoke(cl.lease_id, on_revoked, NULL) == 0) {
        uv_timer_start(&cl.stop_timer, on_stop_timer, STOP_WAIT_MS, 0);
        return;
    }
    stop_done();
}
