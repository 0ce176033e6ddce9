/* The rollout leader of a cluster (see td/cluster.h "the rollout leader"): the election on
 * PREFIX leader and the rollout document watched from PREFIX rollout. What this node knows of
 * either key holds as of a store revision (`*_rev`): a range answered at revision R or an event
 * of revision R replaces it only when R is newer, so a range and the watch can cross. Main thread
 * only. */
#include "td/cluster_leader.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/cluster.h"
#include "td/common-t.h"
#include "td/config.h"
#include "td/etcd.h"
#include "td/events.h"
#include "td/log.h"

static struct {
    int on, stopped;
    char key[280], rollout_key[280], node[TD_NAME_MAX], admin_url[320];
    int64_t lease_id;   /* this node's membership lease (0: none) */
    int reachable;      /* the last sync completed and no cut-off since */
    unsigned gen;       /* bumped at every cut-off and lease change: older answers dropped */
    int campaigning;    /* a campaign txn is in flight */
    int64_t leader_rev; /* revision the leader fields below hold as of */
    char leader[TD_NAME_MAX], leader_url[320];
    int64_t leader_lease, leader_create; /* of the leader key; 0: no key */
    int64_t token;                       /* this node's fencing token while it leads, else 0 */
    int64_t rollout_rev;                 /* revision `rollout` holds as of */
    json_t *rollout;                     /* owned: PREFIX rollout, or NULL */
} ld;

static int key_is(const td_etcd_kv_t *kv, const char *key) {
    return kv->key_len == strlen(key) && memcmp(kv->key, key, kv->key_len) == 0;
}

void td_cluster_leader_boot(const char *prefix, const char *node, const char *admin_url) {
    ld.on = 1;
    snprintf(ld.key, sizeof(ld.key), "%sleader", prefix);
    snprintf(ld.rollout_key, sizeof(ld.rollout_key), "%srollout", prefix);
    snprintf(ld.node, sizeof(ld.node), "%s", node);
    snprintf(ld.admin_url, sizeof(ld.admin_url), "%s", admin_url);
}

/* The leader as the store says at `rev` (kv NULL: no leader key). */
static void leader_seen(const td_etcd_kv_t *kv, int64_t rev);

static void campaign(void);

static void on_campaign(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != ld.gen || ld.stopped)
        return;
    ld.campaigning = 0;
    if (!r->ok) {
        td_warn("cluster: campaign for the rollout leader failed: %s", r->error);
        return; /* the cluster's own calls find the store gone; the next sync campaigns again */
    }
    if (r->succeeded) {
        /* Our key, created at the txn's revision: that revision is its create_revision. */
        td_etcd_kv_t mine = {ld.key,      strlen(ld.key), "", 0,
                             r->revision, r->revision,    1,  ld.lease_id};
        leader_seen(&mine, r->revision);
    } else {
        leader_seen(r->num_kvs ? &r->kvs[0] : NULL, r->revision);
    }
}

/* create_revision(PREFIX leader) == 0 -> put {"node", "admin_url", "since"} under this node's
 * lease; else read it, to learn who leads. */
static void campaign(void) {
    if (!ld.on || ld.stopped || !ld.reachable || !ld.lease_id || ld.campaigning ||
        ld.leader_create || !td_cluster_enabled())
        return;
    char since[40];
    td_wall_iso(since, sizeof(since));
    json_t *v =
        json_pack("{s:s,s:s,s:s}", "node", ld.node, "admin_url", ld.admin_url, "since", since);
    char *text = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(v);
    if (!text)
        return;
    td_etcd_cmp_t cmp = {ld.key, TD_ETCD_CREATE, 0};
    td_etcd_op_t op = {0, ld.key, text, strlen(text), ld.lease_id};
    if (td_etcd_txn(&cmp, 1, &op, 1, ld.key, on_campaign, (void *)(uintptr_t)ld.gen) == 0)
        ld.campaigning = 1;
    free(text);
}

static void leader_seen(const td_etcd_kv_t *kv, int64_t rev) {
    if (rev < ld.leader_rev)
        return;
    ld.leader_rev = rev;
    int was = ld.token != 0;
    char before[TD_NAME_MAX];
    snprintf(before, sizeof(before), "%s", ld.leader);
    if (!kv) {
        ld.leader[0] = ld.leader_url[0] = 0;
        ld.leader_lease = ld.leader_create = ld.token = 0;
    } else {
        json_t *v = json_loadb(kv->value, kv->value_len, 0, NULL);
        const char *node = json_string_value(json_object_get(v, "node"));
        const char *url = json_string_value(json_object_get(v, "admin_url"));
        ld.leader_lease = kv->lease;
        ld.leader_create = kv->create_revision;
        /* Ours only under this very lease: a key of this node's previous run is left to expire. */
        int mine = ld.lease_id && kv->lease == ld.lease_id;
        snprintf(ld.leader, sizeof(ld.leader), "%s", mine ? ld.node : node ? node : "?");
        /* A key naming this node under another lease is its previous run's: nobody to ask. */
        int former = !mine && node && strcmp(node, ld.node) == 0;
        snprintf(ld.leader_url, sizeof(ld.leader_url), "%s",
                 mine             ? ld.admin_url
                 : url && !former ? url
                                  : "");
        ld.token = mine ? kv->create_revision : 0;
        json_decref(v);
    }
    if (ld.token && !was) {
        td_info("cluster: this node (%s) is the rollout leader (fencing token %lld)", ld.node,
                (long long)ld.token);
        td_event("cluster", "%s is the rollout leader", ld.node);
    } else if (!ld.token && was) {
        td_warn("cluster: no longer the rollout leader (%s)",
                ld.leader[0] ? "another node holds the leader key" : "the leader key is gone");
        td_event("cluster", "%s is no longer the rollout leader", ld.node);
    } else if (strcmp(before, ld.leader) != 0 && ld.leader[0]) {
        td_info("cluster: %s is the rollout leader", ld.leader);
    }
    if (!kv)
        campaign();
}

static void rollout_seen(const td_etcd_kv_t *kv, int64_t rev) {
    if (rev < ld.rollout_rev)
        return;
    ld.rollout_rev = rev;
    json_t *doc = kv ? json_loadb(kv->value, kv->value_len, 0, NULL) : NULL;
    if (kv && !json_is_object(doc)) {
        td_error("cluster: %s at revision %lld is not a JSON object: ignored", ld.rollout_key,
                 (long long)rev);
        json_decref(doc);
        return;
    }
    json_decref(ld.rollout);
    ld.rollout = doc;
}

int td_cluster_leader_event(const td_etcd_kv_t *kv, int deleted) {
    if (key_is(kv, ld.key)) {
        leader_seen(deleted ? NULL : kv, kv->mod_revision);
        return 1;
    }
    if (key_is(kv, ld.rollout_key)) {
        rollout_seen(deleted ? NULL : kv, kv->mod_revision);
        return 1;
    }
    return 0;
}

/* The rollout document first, then the leader key: a node that finds itself leader knows the
 * rollout it is to continue. */
static void on_read_leader(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != ld.gen || ld.stopped || !r->ok)
        return;
    leader_seen(r->num_kvs ? &r->kvs[0] : NULL, r->revision);
}

static void on_read_rollout(void *arg, const td_etcd_result_t *r) {
    if ((uintptr_t)arg != ld.gen || ld.stopped || !r->ok)
        return;
    rollout_seen(r->num_kvs ? &r->kvs[0] : NULL, r->revision);
    td_etcd_range(ld.key, 0, 0, 0, on_read_leader, arg);
}

void td_cluster_leader_reachable(int64_t lease_id) {
    if (!ld.on || ld.stopped)
        return;
    ld.reachable = 1;
    ld.lease_id = lease_id;
    ld.gen++;
    ld.campaigning = 0;
    td_etcd_range(ld.rollout_key, 0, 0, 0, on_read_rollout, (void *)(uintptr_t)ld.gen);
}

void td_cluster_leader_lease(int64_t lease_id) {
    if (!ld.on || lease_id == ld.lease_id)
        return;
    ld.lease_id = lease_id;
    ld.gen++;
    ld.campaigning = 0;
    /* The old key (if it was ours) goes with the old lease: its delete comes from the watch. */
    if (ld.token) {
        ld.token = 0;
        td_warn("cluster: no longer the rollout leader (the membership lease expired)");
        td_event("cluster", "%s is no longer the rollout leader", ld.node);
    }
    campaign();
}

void td_cluster_leader_cut(void) {
    if (!ld.on)
        return;
    ld.reachable = 0;
    ld.gen++;
    ld.campaigning = 0;
    if (ld.token) {
        td_warn("cluster: no longer the rollout leader (cut off from the cluster store)");
        td_event("cluster", "%s is no longer the rollout leader (cut off)", ld.node);
    }
    ld.token = 0;
    ld.leader[0] = ld.leader_url[0] = 0;
    /* Learned again at the next sync (a range answered then is newer than anything here). */
    ld.leader_rev = 0;
    ld.leader_lease = ld.leader_create = 0;
}

int64_t td_cluster_leader_token(void) {
    return ld.reachable ? ld.token : 0;
}

const char *td_cluster_leader_keyname(void) {
    return ld.key;
}

void td_cluster_leader_deposed(const char *why) {
    if (!ld.token)
        return;
    td_warn("cluster: no longer the rollout leader (%s)", why);
    td_event("cluster", "%s is no longer the rollout leader (%s)", ld.node, why);
    ld.token = 0;
    if (!strcmp(ld.leader, ld.node))
        ld.leader[0] = ld.leader_url[0] = 0;
}

void td_cluster_leader_rollout_written(const json_t *doc, int64_t revision) {
    if (revision <= ld.rollout_rev || !doc)
        return;
    ld.rollout_rev = revision;
    json_decref(ld.rollout);
    ld.rollout = json_deep_copy(doc);
}

void td_cluster_leader_stop(void) {
    ld.stopped = 1;
    ld.token = 0;
    json_decref(ld.rollout);
    ld.rollout = NULL;
}

int td_cluster_is_leader(void) {
    return td_cluster_leader_token() != 0;
}

const char *td_cluster_leader(void) {
    return ld.reachable && ld.leader[0] ? ld.leader : NULL;
}

const char *td_cluster_leader_url(void) {
    return ld.reachable && ld.leader[0] && ld.leader_url[0] ? ld.leader_url : NULL;
}

const json_t *td_cluster_rollout_doc(void) {
    return ld.rollout;
}
