/* The rollout's analysis across nodes (see rollout_cluster.h): one window at a time, each open or
 * look a set of parallel bounded GET /api/v1/counters, folded into per-node baselines when the
 * last answer came. Main thread only. */
#include "td/rollout_cluster.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "td/cluster.h"
#include "td/common-t.h"
#include "td/config-t.h"
#include "td/config.h"
#include "td/control.h"
#include "td/events.h"
#include "td/fetch.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/rollout.h"

/* ---- the pure part */

static int side_below(const td_analysis_side_t *now, const td_analysis_side_t *then) {
    if (now->requests < then->requests || now->errors < then->errors)
        return 1;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        if (now->latency[i] < then->latency[i])
            return 1;
    return 0;
}

static void side_add_delta(td_analysis_side_t *sum, const td_analysis_side_t *now,
                           const td_analysis_side_t *then) {
    sum->requests += now->requests - then->requests;
    sum->errors += now->errors - then->errors;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        sum->latency[i] += now->latency[i] - then->latency[i];
}

int td_rollout_cluster_fold(td_rollout_base_t *base, const td_rollout_reading_t *now,
                            td_analysis_side_t *target, td_analysis_side_t *baseline) {
    if (!base->set || strcmp(base->r.started, now->started) != 0 ||
        side_below(&now->target, &base->r.target) ||
        side_below(&now->baseline, &base->r.baseline)) {
        base->set = 1;
        base->r = *now;
        return 0;
    }
    side_add_delta(target, &now->target, &base->r.target);
    side_add_delta(baseline, &now->baseline, &base->r.baseline);
    return 1;
}

static int side_parse(const json_t *b, td_analysis_side_t *s) {
    json_t *rq = json_object_get(b, "requests"), *er = json_object_get(b, "errors");
    json_t *lat = json_object_get(b, "latency");
    if (!json_is_integer(rq) || !json_is_integer(er) || !json_is_array(lat) ||
        json_array_size(lat) != TD_LAT_BUCKETS || json_integer_value(rq) < 0 ||
        json_integer_value(er) < 0)
        return TD_EINVAL;
    s->requests += (uint64_t)json_integer_value(rq);
    s->errors += (uint64_t)json_integer_value(er);
    for (size_t i = 0; i < TD_LAT_BUCKETS; i++) {
        json_t *v = json_array_get(lat, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return TD_EINVAL;
        s->latency[i] += (uint64_t)json_integer_value(v);
    }
    return 0;
}

int td_rollout_cluster_reading(const json_t *doc, const char *to, const json_t *weights_before,
                               td_rollout_reading_t *out, char *err, size_t n) {
    memset(out, 0, sizeof(*out));
    json_t *backends = json_object_get(doc, "backends"), *b;
    const char *started = json_string_value(json_object_get(doc, "started"));
    if (!json_is_object(backends) || !started) {
        snprintf(err, n, "not a counters document (no \"started\" or \"backends\")");
        return TD_EINVAL;
    }
    snprintf(out->started, sizeof(out->started), "%s", started);
    const char *name;
    json_object_foreach(backends, name, b) {
        td_analysis_side_t *side = NULL;
        json_t *w = json_object_get(weights_before, name);
        if (strcmp(name, to) == 0)
            side = &out->target;
        else if (json_is_integer(w) && json_integer_value(w) > 0)
            side = &out->baseline;
        if (side && side_parse(b, side) < 0) {
            snprintf(err, n, "backend %s: not {\"requests\", \"errors\", \"latency\": [%d]}", name,
                     TD_LAT_BUCKETS);
            return TD_EINVAL;
        }
    }
    return 0;
}

/* This process's "started": the wall clock of the first reading with the pid, so two runs
 * within one millisecond still differ. */
static const char *started_mark(void) {
    static char mark[64];
    if (!mark[0]) {
        char iso[32];
        td_wall_iso(iso, sizeof(iso));
        snprintf(mark, sizeof(mark), "%s/%ld", iso, (long)getpid());
    }
    return mark;
}

json_t *td_rollout_cluster_counters_json(void) {
    const td_config_t *c = td_control_config();
    json_t *backends = json_object();
    for (size_t i = 0; c && backends && i < c->num_backends; i++) {
        td_backend_stats_t *st = td_registry_backend(c->backends[i].name);
        if (!st)
            continue;
        json_t *lat = json_array();
        for (int k = 0; k < TD_LAT_BUCKETS; k++)
            json_array_append_new(lat, json_integer((json_int_t)atomic_load(&st->latency[k])));
        json_object_set_new(
            backends, c->backends[i].name,
            json_pack("{s:I,s:I,s:o}", "requests", (json_int_t)atomic_load(&st->requests), "errors",
                      (json_int_t)atomic_load(&st->responses[TD_NCLASS - 1]), "latency", lat));
    }
    const char *node = "";
    json_t *cl = td_cluster_enabled() ? td_cluster_state_json() : NULL;
    if (json_is_string(json_object_get(cl, "node")))
        node = json_string_value(json_object_get(cl, "node"));
    json_t *out =
        json_pack("{s:s,s:s,s:o}", "node", node, "started", started_mark(), "backends", backends);
    json_decref(cl);
    return out;
}

/* ---- the window and its looks */

typedef struct look_s look_t;

/* One node's answer in a look. */
typedef struct ask_s {
    look_t *l;     /* borrowed: the look it is part of */
    char node[64]; /* the node's name */
    td_fetch_t *f; /* borrowed: the request while in flight, else NULL */
    int ok;        /* 1: r holds its reading */
    td_rollout_reading_t r;
    char error[300]; /* why not, when !ok */
} ask_t;

struct look_s {
    ask_t *asks; /* owned */
    size_t num_asks, pending;
    int open; /* 1: this reading opens the window */
    td_rollout_sum_fn *cb;
    void *arg;
    uv_timer_t soon; /* the answer, always from the loop (never inside the call) */
    int cancelled;
};

typedef struct node_base_s {
    char node[64];
    td_rollout_base_t base;
} node_base_t;

static struct {
    int on;       /* a window is open */
    int fetch_on; /* td_fetch_init done */
    char to[TD_NAME_MAX];
    json_t *before;     /* owned: the rollout's weights_before */
    node_base_t *bases; /* owned */
    size_t num_bases;
    look_t *look; /* owned: the look in flight, NULL none */
} W;

static void look_free(uv_handle_t *h) {
    look_t *l = h->data;
    free(l->asks);
    free(l);
}

static void look_cancel(look_t *l) {
    for (size_t i = 0; i < l->num_asks; i++)
        if (l->asks[i].f)
            td_fetch_cancel(l->asks[i].f);
    l->cancelled = 1;
    uv_close((uv_handle_t *)&l->soon, look_free);
}

static td_rollout_base_t *base_of(const char *node) {
    for (size_t i = 0; i < W.num_bases; i++)
        if (strcmp(W.bases[i].node, node) == 0)
            return &W.bases[i].base;
    node_base_t *nb = realloc(W.bases, (W.num_bases + 1) * sizeof(*nb));
    if (!nb)
        return NULL;
    W.bases = nb;
    memset(&nb[W.num_bases], 0, sizeof(*nb));
    snprintf(nb[W.num_bases].node, sizeof(nb->node), "%s", node);
    return &nb[W.num_bases++].base;
}

static void on_soon(uv_timer_t *t) {
    look_t *l = t->data;
    W.look = NULL;
    td_rollout_sum_t sum;
    memset(&sum, 0, sizeof(sum));
    sum.missing = json_array();
    for (size_t i = 0; i < l->num_asks; i++) {
        ask_t *a = &l->asks[i];
        if (!a->ok) {
            char line[400];
            snprintf(line, sizeof(line), "%s: %s", a->node, a->error);
            json_array_append_new(sum.missing, json_string(line));
            continue;
        }
        td_rollout_base_t *b = base_of(a->node);
        if (!b)
            continue;
        int added = td_rollout_cluster_fold(b, &a->r, &sum.target, &sum.baseline);
        if (added || l->open)
            sum.nodes++;
    }
    if (l->open) /* the baselines were taken: nothing is counted yet */
        memset(&sum.target, 0, sizeof(sum.target)), memset(&sum.baseline, 0, sizeof(sum.baseline));
    td_rollout_sum_fn *cb = l->cb;
    void *arg = l->arg;
    uv_close((uv_handle_t *)&l->soon, look_free);
    cb(arg, &sum);
    json_decref(sum.missing);
}

static void answered(look_t *l) {
    if (--l->pending == 0)
        uv_timer_start(&l->soon, on_soon, 0, 0);
}

static void on_answer(void *arg, int status, const char *error, const char *body, size_t len) {
    ask_t *a = arg;
    a->f = NULL;
    json_t *doc = status > 0 ? json_loadb(body ? body : "", len, 0, NULL) : NULL;
    if (status == 200 && json_is_object(doc)) {
        char why[200];
        if (td_rollout_cluster_reading(doc, W.to, W.before, &a->r, why, sizeof(why)) == 0)
            a->ok = 1;
        else
            snprintf(a->error, sizeof(a->error), "%s", why);
    } else if (status > 0) {
        const char *e = json_string_value(json_object_get(doc, "error"));
        snprintf(a->error, sizeof(a->error), "HTTP %d from its admin API: %s", status,
                 e ? e : "not a counters document");
    } else {
        snprintf(a->error, sizeof(a->error), "%s", error && error[0] ? error : "no answer");
    }
    json_decref(doc);
    answered(a->l);
}

/* GET admin_url/api/v1/counters with this node's token (the nodes of a cluster share it). */
static int ask(ask_t *a, const char *admin_url) {
    const td_config_t *cfg = td_control_config();
    char url[600], auth[300] = "";
    size_t n = strlen(admin_url);
    while (n > 0 && admin_url[n - 1] == '/')
        n--;
    snprintf(url, sizeof(url), "%.*s/api/v1/counters", (int)n, admin_url);
    if (cfg && cfg->admin_token[0])
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg->admin_token);
    const char *headers[] = {auth};
    td_fetch_req_t rq = {.method = "GET",
                         .url = url,
                         .timeout_ms = TD_ROLLOUT_CLUSTER_TIMEOUT_MS,
                         .headers = headers,
                         .num_headers = auth[0] ? 1 : 0,
                         .max_body = 1 << 20};
    return td_fetch_start(&rq, on_answer, NULL, a, &a->f);
}

/* Starts a reading of every live node (this one read directly). */
static int start(int open, td_rollout_sum_fn *cb, void *arg) {
    if (!W.fetch_on) {
        if (td_fetch_init(uv_default_loop()) < 0)
            return TD_ENOMEM;
        W.fetch_on = 1;
    }
    json_t *view = td_cluster_json();
    if (!view)
        return TD_ENOMEM;
    const char *self = json_string_value(json_object_get(view, "node"));
    json_t *nodes = json_object_get(view, "nodes"), *node;
    look_t *l = calloc(1, sizeof(*l));
    size_t n = json_array_size(nodes), i;
    if (l)
        l->asks = calloc(n ? n : 1, sizeof(ask_t));
    if (!l || !l->asks) {
        free(l);
        json_decref(view);
        return TD_ENOMEM;
    }
    if (W.look)
        look_cancel(W.look);
    W.look = l;
    l->open = open;
    l->cb = cb;
    l->arg = arg;
    l->num_asks = n;
    uv_timer_init(uv_default_loop(), &l->soon);
    l->soon.data = l;
    l->pending = 1; /* held until every request started: no answer completes it before */
    json_array_foreach(nodes, i, node) {
        ask_t *a = &l->asks[i];
        const char *name = json_string_value(json_object_get(node, "node"));
        const char *url = json_string_value(json_object_get(node, "admin_url"));
        a->l = l;
        snprintf(a->node, sizeof(a->node), "%s", name ? name : "?");
        if (self && name && strcmp(self, name) == 0) {
            json_t *mine = td_rollout_cluster_counters_json();
            char why[200];
            if (mine &&
                td_rollout_cluster_reading(mine, W.to, W.before, &a->r, why, sizeof(why)) == 0)
                a->ok = 1;
            else
                snprintf(a->error, sizeof(a->error), "its own counters: out of memory");
            json_decref(mine);
            continue;
        }
        if (!url) {
            snprintf(a->error, sizeof(a->error), "it publishes no admin_url");
            continue;
        }
        l->pending++;
        if (ask(a, url) < 0) {
            l->pending--;
            snprintf(a->error, sizeof(a->error), "cannot start a request to %s", url);
        }
    }
    json_decref(view);
    answered(l);
    return 0;
}

int td_rollout_cluster_open(const char *to, const json_t *weights_before, td_rollout_sum_fn *cb,
                            void *arg) {
    if (!to || !to[0] || !json_is_object(weights_before) || !cb)
        return TD_EINVAL;
    td_rollout_cluster_close();
    json_t *before = json_deep_copy(weights_before);
    if (!before)
        return TD_ENOMEM;
    snprintf(W.to, sizeof(W.to), "%s", to);
    W.before = before;
    W.on = 1;
    int r = start(1, cb, arg);
    if (r < 0)
        td_rollout_cluster_close();
    return r;
}

int td_rollout_cluster_look(td_rollout_sum_fn *cb, void *arg) {
    if (!W.on || !cb)
        return TD_EINVAL;
    return start(0, cb, arg);
}

void td_rollout_cluster_close(void) {
    if (W.look)
        look_cancel(W.look);
    W.look = NULL;
    json_decref(W.before);
    W.before = NULL;
    free(W.bases);
    W.bases = NULL;
    W.num_bases = 0;
    W.on = 0;
    if (W.fetch_on)
        td_fetch_shutdown();
    W.fetch_on = 0;
}

/* ---- the fall-back of a node cut off during an active rollout */

static char fallback[160]; /* "weights from before rollout R" while in force, else "" */

int td_rollout_cluster_fall_back(const char *why) {
    const json_t *doc = td_cluster_rollout_doc();
    const char *rid = json_string_value(json_object_get(doc, "id"));
    int st = td_rollout_state_parse(json_string_value(json_object_get(doc, "state")));
    json_t *before = json_object_get(doc, "weights_before");
    if (fallback[0] || !rid || st < 0 || !td_rollout_state_active((td_rollout_state_t)st) ||
        !json_is_object(before))
        return 0;
    td_config_t *cfg = td_config_dup(td_control_config());
    if (!cfg)
        return 0;
    for (size_t i = 0; i < cfg->num_backends; i++) {
        json_t *w = json_object_get(before, cfg->backends[i].name);
        cfg->backends[i].weight = json_is_integer(w) ? (int)json_integer_value(w) : 0;
    }
    char what[200], err[512];
    snprintf(what, sizeof(what), "weights from before rollout %s (cut off from the cluster store)",
             rid);
    if (td_control_apply(cfg, what, 0, "cluster", err, sizeof(err)) < 0) {
        td_error("cluster: cut off during rollout %s, the weights from before it are not applied: "
                 "%s",
                 rid, err);
        td_event("cluster", "cut off during rollout %s: weights from before it not applied: %s",
                 rid, err);
        return 0;
    }
    snprintf(fallback, sizeof(fallback), "weights from before rollout %s", rid);
    td_warn("cluster: cut off from the store during rollout %s (%s): serving the weights from "
            "before it until the store can be read again",
            rid, why ? why : "");
    td_event("cluster", "cut off during rollout %s: serving the weights from before it", rid);
    return 1;
}

void td_rollout_cluster_caught_up(long long rev) {
    if (!fallback[0])
        return;
    td_info("cluster: caught up at revision %lld: no longer serving the %s", rev, fallback);
    td_event("cluster", "caught up at revision %lld: no longer serving the %s", rev, fallback);
    fallback[0] = 0;
}

void td_rollout_cluster_state(json_t *cluster) {
    if (fallback[0] && json_is_object(cluster))
        json_object_set_new(cluster, "fallback", json_string(fallback));
}
