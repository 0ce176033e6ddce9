/* The rollout engine: one rollout at a time, driven by a 1 s timer on the main loop. Its object
 * (GET /api/v1/rollout) is kept as JSON, the same document the state file holds; the engine's
 * clocks and counter marks live beside it and start afresh after a restart. Weights change only
 * through td_control_apply, whose state file write carries the rollout object with them. */
#include "td/rollout.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "td/analysis.h"
#include "td/cluster.h"
#include "td/config.h"
#include "td/control.h"
#include "td/events.h"
#include "td/fetch.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/rollout_cluster.h"
#include "td/router.h"
#include "td/state_file.h"

/* A caller waiting for the engine's writes to be in etcd (td_rollout_when_written). */
typedef struct waiter_s {
    td_rollout_written_fn *cb;
    void *arg;
    struct waiter_s *next;
} waiter_t;

static struct {
    uv_loop_t *loop;
    uv_timer_t timer;
    int ready;
    json_t *doc; /* owned: the current or last rollout object; NULL before the first */
    td_rollout_spec_t spec;
    td_rollout_state_t state;
    size_t step;
    int64_t step_start_ms; /* td_now_ms() when the step (or its restart) began */
    int64_t window_ms;     /* td_now_ms() when its analysis window opened; 0: not yet */
    int looks_done, looks_planned;
    int last_verdict;
    char last_reason[256];
    td_analysis_side_t t0, b0; /* counters when the window opened */
    int ramp_from;             /* `to`'s weight when the step began */
    int weight_now;            /* `to`'s weight last applied */
    unsigned gen;              /* bumped on every transition: late answers of fetches are dropped */
    int pending;               /* fetches in flight for the current gen */
    int pc_sent, pc_ok, pc_failed;
    int64_t drain_start_ms;
    int applying; /* a change of the rollout's own is being applied */
    int seq;
    /* Cluster mode: the rollout leader runs R.doc; its writes are fenced etcd transactions
     * (td_cluster_propose_fenced), one at a time: a write asked for while one is in flight is
     * sent after it, with the object as it is then. */
    int leading;       /* this node drives R.doc as the rollout leader */
    unsigned lead_gen; /* bumped when it stops: late answers of its writes are dropped */
    int writing;       /* a write is in flight */
    int want_write;    /* a write waits (want_weights: with the weights of R.doc) */
    int want_weights, sent_weights;
    char w_what[300], w_by[64];
    uint64_t fence_rev; /* weights written at this revision, not yet applied by every node */
    unsigned fence_seq; /* the wait in flight for fence_rev; older answers are dropped */
    int step_fenced;    /* the step's own weights were applied on every live node */
    int fence_retry;    /* the wait could not be asked for: again at the next tick */
    waiter_t *waiters;  /* owned: answered when the writes are made, or cannot be */
    /* Cluster mode: the analysis window's counters are every live node's, summed
     * (rollout_cluster.h); a look is in flight until its sums come back. */
    unsigned window_seq; /* bumped when a window opens: sums of an older one are dropped */
    int cluster_looking;
    unsigned look_gen; /* R.gen when the look was asked: it counts in R.pending while equal */
} R;

static void cluster_write(int weights, const char *what, const char *by);

static void iso_now(char *out, size_t cap) {
    int64_t ms = td_wall_ms();
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *now_json(void) {
    char at[40];
    iso_now(at, sizeof(at));
    return json_string(at);
}

static const char *id(void) {
    const char *s = json_string_value(json_object_get(R.doc, "id"));
    return s ? s : "r-?";
}

static json_t *step_detail(size_t k) {
    return json_array_get(json_object_get(R.doc, "steps_detail"), k);
}

/* The rollout object this node shows: its own, or in cluster mode on a node that does not drive
 * it, PREFIX rollout as last seen from etcd (borrowed; NULL: none). */
static const json_t *shown(void) {
    if (td_cluster_enabled() && !(R.leading && R.doc))
        return td_cluster_rollout_doc();
    return R.doc;
}

int td_rollout_active(char *msg, size_t n) {
    const json_t *doc = shown();
    if (!doc)
        return 0;
    const char *state = json_string_value(json_object_get(doc, "state"));
    int st = doc == R.doc ? (int)R.state : td_rollout_state_parse(state ? state : "");
    if (st < 0 || !td_rollout_state_active((td_rollout_state_t)st))
        return 0;
    const char *rid = json_string_value(json_object_get(doc, "id"));
    if (msg)
        snprintf(msg, n, "rollout %s is active (%s)", rid ? rid : "r-?",
                 td_rollout_state_name((td_rollout_state_t)st));
    return 1;
}

int td_rollout_owns_weights(void) {
    /* In cluster mode the weights a node runs are the cluster's document, which only the
     * rollout leader's fenced writes change while a rollout is active. */
    return !td_cluster_enabled() && td_rollout_active(NULL, 0) && !R.applying;
}

/* ---- weights */

/* The weight before the rollout of backend `name` (0 when it was not there). */
static int before_of(const char *name) {
    json_t *v = json_object_get(json_object_get(R.doc, "weights_before"), name);
    return json_is_integer(v) ? (int)json_integer_value(v) : 0;
}

/* Applies the weights of `to` at w (the others scaled, td_rollout_weights), or the weights from
 * before the rollout when w < 0, through the control plane, audited as `what` from `by`. The
 * rollout object (already updated by the caller) is written with them. */
static int apply_weights(int w, const char *what, const char *by) {
    const td_config_t *run = td_control_config();
    td_config_t *cfg = td_config_dup(run);
    if (!cfg)
        return TD_ENOMEM;
    int before[TD_CONFIG_MAX_BACKENDS], out[TD_CONFIG_MAX_BACKENDS];
    size_t to = cfg->num_backends;
    for (size_t i = 0; i < cfg->num_backends; i++) {
        before[i] = before_of(cfg->backends[i].name);
        if (strcmp(cfg->backends[i].name, R.spec.to) == 0)
            to = i;
    }
    if (w < 0 || to == cfg->num_backends)
        memcpy(out, before, sizeof(int) * cfg->num_backends);
    else
        td_rollout_weights(before, cfg->num_backends, to, w, out);
    json_t *weights = json_object();
    for (size_t i = 0; i < cfg->num_backends; i++) {
        cfg->backends[i].weight = out[i];
        json_object_set_new(weights, cfg->backends[i].name, json_integer(out[i]));
    }
    json_object_set_new(R.doc, "weights", weights);
    json_object_set_new(R.doc, "updated_at", now_json());
    R.weight_now = to < cfg->num_backends ? out[to] : 0;
    if (td_cluster_enabled()) {
        td_config_free(cfg);
        cluster_write(1, what, by);
        return 0;
    }
    char err[512];
    R.applying = 1;
    int r = td_control_apply(cfg, what, 1, by, err, sizeof(err));
    R.applying = 0;
    if (r < 0) {
        td_error("rollout %s: %s not applied: %s", id(), what, err);
        td_event("rollout", "rollout %s: %s not applied: %s", id(), what, err);
    }
    return r;
}

/* ---- counters */

static void side_add(td_analysis_side_t *s, td_backend_stats_t *b) {
    s->requests += atomic_load(&b->requests);
    s->errors += atomic_load(&b->responses[TD_NCLASS - 1]);
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        s->latency[i] += atomic_load(&b->latency[i]);
}

/* The counters now of the target (`to`) and the baseline (the backends that had weight before). */
static void sides_now(td_analysis_side_t *t, td_analysis_side_t *b) {
    memset(t, 0, sizeof(*t));
    memset(b, 0, sizeof(*b));
    const td_config_t *c = td_control_config();
    for (size_t i = 0; i < c->num_backends; i++) {
        td_backend_stats_t *st = td_registry_backend(c->backends[i].name);
        if (!st)
            continue;
        if (strcmp(c->backends[i].name, R.spec.to) == 0)
            side_add(t, st);
        else if (before_of(c->backends[i].name) > 0)
            side_add(b, st);
    }
}

static void side_delta(td_analysis_side_t *now, const td_analysis_side_t *then) {
    now->requests -= then->requests;
    now->errors -= then->errors;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        now->latency[i] -= then->latency[i];
}

static json_t *side_json(const td_analysis_side_t *s) {
    int p99 = td_analysis_p99_ms(s->latency);
    return json_pack("{s:I,s:I,s:f,s:o}", "requests", (json_int_t)s->requests, "errors",
                     (json_int_t)s->errors, "error_rate",
                     s->requests ? (double)s->errors / (double)s->requests : 0.0, "p99_ms",
                     p99 >= 0 ? json_integer(p99) : json_null());
}

/* `to`'s share of new requests as configured now and as answered over the last 10 s (percent;
 * -1 when nothing was answered). */
static void shares(double *configured, double *actual) {
    td_snapshot_t *s = td_router_acquire();
    int64_t now = td_now_ms();
    double share[TD_CONFIG_MAX_BACKENDS];
    td_router_shares(s, now, share);
    uint64_t all = 0, mine = 0;
    *configured = 0;
    for (size_t i = 0; i < s->num_backends; i++) {
        uint64_t n = td_registry_answered_recent(s->backends[i].st, now);
        all += n;
        if (strcmp(s->backends[i].name, R.spec.to) == 0) {
            mine = n;
            *configured = (double)(int)(share[i] * 1000 + 0.5) / 10;
        }
    }
    *actual = all ? (double)(int)((double)mine * 1000 / (double)all + 0.5) / 10 : -1;
    td_snapshot_release(s);
}

static void record_shares(json_t *d) {
    double conf, act;
    shares(&conf, &act);
    json_object_set_new(d, "share_configured", json_real(conf));
    json_object_set_new(d, "share_actual", act >= 0 ? json_real(act) : json_null());
}

/* ---- transitions */

static void timer_tick(uv_timer_t *t);

/* Moves to state `st` (by `by`, because `why`): the object, an event and a log line. The caller
 * then persists it: with the weights it applies (apply_weights), or with persist(). */
static void enter(td_rollout_state_t st, const char *by, const char *why) {
    R.state = st;
    R.gen++;
    R.pending = 0;
    json_object_set_new(R.doc, "state", json_string(td_rollout_state_name(st)));
    json_object_set_new(R.doc, "updated_at", now_json());
    json_array_append_new(json_object_get(R.doc, "transitions"),
                          json_pack("{s:o,s:s,s:s,s:s}", "at", now_json(), "state",
                                    td_rollout_state_name(st), "by", by, "why", why));
    if (!td_rollout_state_active(st)) {
        json_object_set_new(R.doc, "finished_at", now_json());
        json_object_set_new(R.doc, "step_remaining_s", json_null());
    }
    if (st == TD_RO_PAUSED || !td_rollout_state_active(st))
        json_object_set_new(R.doc, "reason", json_string(why));
    else
        json_object_set_new(R.doc, "reason", json_null());
    td_info("rollout %s: %s (%s; by %s)", id(), td_rollout_state_name(st), why, by);
    td_event("rollout", "rollout %s: %s (%s)", id(), td_rollout_state_name(st), why);
}

/* Writes the rollout object to the state file with an audit entry of its own (a transition that
 * moves no weight). */
static void persist(const char *by) {
    char what[512];
    snprintf(what, sizeof(what), "rollout %s: %s", id(), td_rollout_state_name(R.state));
    if (td_cluster_enabled())
        cluster_write(0, what, by);
    else
        td_control_save(what, by);
}

/* Starts step k: its weight at once, or (ramp_s) from the current one over ramp_s. */
static void start_step(size_t k, const char *by, int restarted) {
    R.step = k;
    R.step_start_ms = td_now_ms();
    R.window_ms = 0;
    R.looks_done = 0;
    R.last_verdict = TD_ANALYSIS_WAIT;
    R.last_reason[0] = 0;
    int span = R.spec.step_s - R.spec.warmup_s;
    R.looks_planned = span / R.spec.interval_s > 0 ? span / R.spec.interval_s : 1;
    json_object_set_new(R.doc, "step", json_integer((json_int_t)k));
    json_object_set_new(R.doc, "step_started_at", now_json());
    json_t *d = step_detail(k);
    json_object_set_new(d, "state", json_string("running"));
    if (!restarted || json_is_null(json_object_get(d, "started_at")))
        json_object_set_new(d, "started_at", now_json());
    int w = R.spec.steps[k];
    R.ramp_from = restarted ? w : R.weight_now;
    char what[300];
    snprintf(what, sizeof(what), "rollout %s: step %zu of %zu, %s %d %%%s", id(), k + 1,
             R.spec.num_steps, R.spec.to, w,
             R.spec.ramp_s > 0 && !restarted ? " (ramp starts)" : "");
    /* In cluster mode the step's clock starts once every live node applied its weights. */
    R.step_fenced = !td_cluster_enabled();
    if (R.spec.ramp_s == 0 || restarted || R.ramp_from >= w) {
        apply_weights(w, what, by);
    } else {
        R.step_fenced = 1; /* a ramp starts from the weights every node already runs */
        persist(by);
    }
}

/* The end of a rollout that moved no weight (succeeded, paused) or restores them (rolled back,
 * aborted: the weights from before, at once). */
static void finish(td_rollout_state_t st, const char *by, const char *why) {
    enter(st, by, why);
    if (st == TD_RO_ROLLED_BACK || st == TD_RO_ABORTED) {
        char what[600];
        snprintf(what, sizeof(what), "rollout %s: %s, weights from before the rollout", id(),
                 td_rollout_state_name(st));
        json_t *d = step_detail(R.step);
        if (d && strcmp(json_string_value(json_object_get(d, "state")), "running") == 0) {
            json_object_set_new(d, "state",
                                json_string(st == TD_RO_ABORTED ? "aborted" : "failed"));
            json_object_set_new(d, "ended_at", now_json());
            record_shares(d);
        }
        /* A rollout aborted in its pre-check has moved nothing. */
        if (json_object_get(R.doc, "weights") && R.weight_now != before_of(R.spec.to))
            apply_weights(-1, what, by);
        else
            persist(by);
    } else {
        persist(by);
    }
}

/* The current step failed (`why`): rollback, or pause (on_failure). */
static void fail_step(const char *why) {
    char msg[700];
    snprintf(msg, sizeof(msg), "step %zu (%d %%): %s", R.step + 1, R.spec.steps[R.step], why);
    json_object_set_new(step_detail(R.step), "detail", json_string(why));
    if (R.spec.on_failure_pause) {
        json_object_set_new(step_detail(R.step), "state", json_string("failed"));
        enter(TD_RO_PAUSED, "td", msg);
        persist("td");
    } else {
        finish(TD_RO_ROLLED_BACK, "td", msg);
    }
}

/* The current step is over and passed: the next one, the drain, or success. */
static void step_passed(const char *by, const char *note) {
    json_t *d = step_detail(R.step);
    json_object_set_new(d, "state", json_string("passed"));
    json_object_set_new(d, "ended_at", now_json());
    if (note && note[0])
        json_object_set_new(d, "detail", json_string(note));
    record_shares(d);
    if (R.step + 1 < R.spec.num_steps) {
        start_step(R.step + 1, by, 0);
    } else if (R.spec.drain) {
        enter(TD_RO_DRAINING, by, "last step passed: waiting for the old side to drain");
        R.drain_start_ms = td_now_ms();
        persist(by);
    } else {
        finish(TD_RO_SUCCEEDED, by, "every step passed");
    }
}

/* ---- cluster mode: the leader's fenced writes, the fenced steps, takeover */

/* The running config with R.doc's weights (new, owned by the caller), or NULL. */
static td_config_t *weights_cfg(void) {
    td_config_t *cfg = td_config_dup(td_control_config());
    json_t *w = json_object_get(R.doc, "weights");
    for (size_t i = 0; cfg && i < cfg->num_backends; i++) {
        json_t *v = json_object_get(w, cfg->backends[i].name);
        if (json_is_integer(v))
            cfg->backends[i].weight = (int)json_integer_value(v);
    }
    return cfg;
}

static void flush(void);

/* Answers every waiter with `result` (0: written). */
static void written(int result, const char *error) {
    waiter_t *w = R.waiters;
    R.waiters = NULL;
    while (w) {
        waiter_t *next = w->next;
        w->cb(w->arg, result, error);
        free(w);
        w = next;
    }
}

int td_rollout_when_written(td_rollout_written_fn *cb, void *arg) {
    if (!R.writing && !R.want_write) {
        int ok = R.leading || !td_cluster_enabled();
        cb(arg, ok ? 0 : TD_ECONFLICT, ok ? "" : "not the leader");
        return 0;
    }
    waiter_t *w = calloc(1, sizeof(*w));
    if (!w)
        return TD_ENOMEM;
    w->cb = cb;
    w->arg = arg;
    w->next = R.waiters;
    R.waiters = w;
    return 0;
}

/* This node stops driving the rollout (`why`): it neither aborts nor rolls back anything, the
 * leader that fenced it out owns the rollout now. */
static void step_down(const char *why) {
    if (!R.leading)
        return;
    if (R.doc)
        td_warn("rollout %s: this node stops driving it: no longer the rollout leader (%s)", id(),
                why);
    R.leading = 0;
    R.lead_gen++;
    R.fence_seq++;
    R.gen++; /* pre-check and webhook answers on their way are dropped */
    R.pending = 0;
    R.writing = R.want_write = R.want_weights = 0;
    R.fence_rev = 0;
    json_decref(R.doc);
    R.doc = NULL;
    written(TD_ECONFLICT, "not the leader");
}

static void on_fenced(void *arg, const json_t *laggards);

/* Waits until every live node applied R.fence_rev; td_cluster_wait_all answers at once when they
 * have, else after FENCE_POLL_MS with those that have not (then it asks again). */
#define FENCE_POLL_MS 2000
static void fence_wait(void) {
    R.fence_seq++;
    if (!R.ready)
        return;
    R.fence_retry = td_cluster_wait_all(R.fence_rev, FENCE_POLL_MS, on_fenced,
                                        (void *)(uintptr_t)R.fence_seq) < 0;
}

static void on_fenced(void *arg, const json_t *laggards) {
    if ((unsigned)(uintptr_t)arg != R.fence_seq || !R.leading || !R.fence_rev || !R.doc)
        return;
    json_t *d = step_detail(R.step);
    if (laggards) {
        /* Shown on GET /api/v1/rollout: who the step waits for. */
        if (d)
            json_object_set(d, "waiting_for", (json_t *)laggards);
        fence_wait();
        return;
    }
    R.fence_rev = 0;
    if (d)
        json_object_del(d, "waiting_for");
    if (!R.step_fenced && R.state == TD_RO_RUNNING && d) {
        /* The step's ramp, warm-up and analysis window begin now: no node runs another step. */
        R.step_fenced = 1;
        R.step_start_ms = td_now_ms();
        json_object_set_new(d, "applied_at", now_json());
        char what[300];
        snprintf(what, sizeof(what), "rollout %s: step %zu of %zu applied on every node", id(),
                 R.step + 1, R.spec.num_steps);
        cluster_write(0, what, "td");
    }
}

static void on_written(void *arg, int result, uint64_t revision, const char *error) {
    if ((unsigned)(uintptr_t)arg != R.lead_gen || !R.leading)
        return;
    R.writing = 0;
    if (result == 0) {
        if (R.sent_weights) {
            R.fence_rev = revision;
            fence_wait();
        }
        flush();
        if (!R.writing && !R.want_write)
            written(0, "");
        return;
    }
    if (result == TD_ECONFLICT && strcmp(error, "not the leader") == 0) {
        step_down(error);
        return;
    }
    /* Another change came in between (or the store is away): the same write again, with the
     * object as it is then, once this node caught up (at the next tick). */
    td_warn("rollout %s: write not made (%s): trying again", id(), error);
    R.want_write = 1;
    R.want_weights |= R.sent_weights;
    char why[600];
    snprintf(why, sizeof(why), "not written to etcd yet (td keeps trying): %s", error);
    written(TD_EUNAVAIL, why);
}

/* Sends the waiting write, unless one is in flight. */
static void flush(void) {
    if (!R.want_write || R.writing || !R.leading || !R.doc)
        return;
    td_config_t *cfg = R.want_weights ? weights_cfg() : NULL;
    if (R.want_weights && !cfg)
        return;
    int weights = R.want_weights;
    int r = td_cluster_propose_fenced(cfg, R.doc, R.w_what, R.w_by, on_written,
                                      (void *)(uintptr_t)R.lead_gen);
    if (r == TD_ECONFLICT) {
        step_down("the leader key is not this node's");
        return;
    }
    if (r < 0)
        return; /* unreachable or catching up: again at the next tick */
    R.writing = 1;
    R.sent_weights = weights;
    R.want_write = R.want_weights = 0;
}

/* Writes R.doc (with its weights when `weights`) to etcd as the leader, audited as `what`. */
static void cluster_write(int weights, const char *what, const char *by) {
    R.want_write = 1;
    R.want_weights |= weights;
    snprintf(R.w_what, sizeof(R.w_what), "%s", what);
    snprintf(R.w_by, sizeof(R.w_by), "%s", by && by[0] ? by : "td");
    flush();
}

static void restore(json_t *doc, const char *after);

/* Follows the election: a node that became leader takes the rollout of PREFIX rollout over (an
 * active one continues at its step, its weights applied on every node first, its analysis window
 * afresh); one that is no longer leader stops. Returns 1 while this node leads. */
static int cluster_role(void) {
    if (!td_cluster_is_leader()) {
        step_down("another node holds the leader key, or none is known");
        return 0;
    }
    const json_t *doc = td_cluster_rollout_doc();
    if (R.leading) {
        /* A leader that had no rollout when it took over, and finds an active one in etcd
         * that is not its own (learned later): it continues that one. */
        const char *st = json_string_value(json_object_get(doc, "state"));
        int s = st ? td_rollout_state_parse(st) : -1;
        if (R.doc || !doc || s < 0 || !td_rollout_state_active((td_rollout_state_t)s))
            return 1;
    }
    R.leading = 1;
    R.lead_gen++;
    if (doc) {
        char after[200];
        snprintf(after, sizeof(after), "on %s, the new rollout leader",
                 td_cluster_leader() ? td_cluster_leader() : "this node");
        restore(json_deep_copy(doc), after);
    }
    return 1;
}

/* ---- webhooks and the pre-check */

static void *gen_arg(void) {
    return (void *)(uintptr_t)R.gen;
}

static int stale(void *arg) {
    return (unsigned)(uintptr_t)arg != R.gen;
}

static char *doc_text(void) {
    return json_dumps(R.doc, JSON_COMPACT);
}

static void on_look_webhook(void *arg, int status, const char *error) {
    if (stale(arg) || R.state != TD_RO_RUNNING)
        return;
    R.pending--;
    if (status >= 200 && status < 300)
        return;
    char why[400];
    if (status)
        snprintf(why, sizeof(why), "analysis webhook %.200s answered %d", R.spec.an_webhook,
                 status);
    else
        snprintf(why, sizeof(why), "analysis webhook %.200s: %.150s", R.spec.an_webhook, error);
    fail_step(why);
}

static void start_running(const char *by, const char *why) {
    enter(TD_RO_RUNNING, by, why);
    start_step(0, by, 0);
}

static void on_pc_webhook(void *arg, int status, const char *error) {
    if (stale(arg) || R.state != TD_RO_CHECKING)
        return;
    json_t *result = json_object_get(json_object_get(R.doc, "pre_check"), "result");
    json_object_set_new(result, "webhook", status ? json_integer(status) : json_string(error));
    char why[600];
    if (status >= 200 && status < 300) {
        snprintf(why, sizeof(why), "pre-check passed: %d of %d answers %s, webhook answered %d",
                 R.pc_ok, R.spec.pc_requests, R.spec.pc_expect, status);
        start_running("td", why);
    } else {
        if (status)
            snprintf(why, sizeof(why), "pre-check: webhook %.200s answered %d", R.spec.pc_webhook,
                     status);
        else
            snprintf(why, sizeof(why), "pre-check: webhook %.200s: %.150s", R.spec.pc_webhook,
                     error);
        finish(TD_RO_ABORTED, "td", why);
    }
}

static void pc_next(void);

/* All pre-check requests answered: judged, then the webhook (when set). */
static void pc_judge(void) {
    json_t *result = json_object_get(json_object_get(R.doc, "pre_check"), "result");
    json_object_set_new(result, "ok", json_integer(R.pc_ok));
    json_object_set_new(result, "failed", json_integer(R.pc_failed));
    char why[700];
    if (R.pc_failed) {
        char list[400] = "";
        size_t n = 0;
        const char *key;
        json_t *v;
        json_object_foreach(json_object_get(result, "statuses"), key, v) {
            if (strncmp(key, "failed", 6) != 0 &&
                td_config_status_expected(R.spec.pc_expect, atoi(key)))
                continue;
            n += (size_t)snprintf(list + n, n < sizeof(list) ? sizeof(list) - n : 0, "%s%s ×%lld",
                                  n ? ", " : "", key, (long long)json_integer_value(v));
            if (n >= sizeof(list))
                break;
        }
        snprintf(why, sizeof(why), "pre-check: %d of %d answers outside %s: %s", R.pc_failed,
                 R.spec.pc_requests, R.spec.pc_expect, list);
        finish(TD_RO_ABORTED, "td", why);
        return;
    }
    if (R.spec.pc_webhook[0]) {
        char *body = doc_text();
        td_fetch_req_t rq = {.method = "POST",
                             .url = R.spec.pc_webhook,
                             .body = body,
                             .verify = 1,
                             .timeout_ms = R.spec.pc_webhook_timeout_s * 1000L};
        int r = td_fetch(&rq, on_pc_webhook, gen_arg());
        free(body);
        if (r < 0)
            finish(TD_RO_ABORTED, "td", "pre-check: the webhook could not be sent");
        return;
    }
    snprintf(why, sizeof(why), "pre-check passed: %d of %d answers %s", R.pc_ok, R.spec.pc_requests,
             R.spec.pc_expect);
    start_running("td", why);
}

static void on_pc_answer(void *arg, int status, const char *error) {
    if (stale(arg) || R.state != TD_RO_CHECKING)
        return;
    json_t *result = json_object_get(json_object_get(R.doc, "pre_check"), "result");
    json_t *statuses = json_object_get(result, "statuses");
    char key[32];
    if (status)
        snprintf(key, sizeof(key), "%d", status);
    else
        snprintf(key, sizeof(key), "failed");
    json_t *v = json_object_get(statuses, key);
    json_object_set_new(statuses, key, json_integer(v ? json_integer_value(v) + 1 : 1));
    if (status && td_config_status_expected(R.spec.pc_expect, status))
        R.pc_ok++;
    else
        R.pc_failed++;
    if (!status)
        td_warn("rollout %s: pre-check request failed: %s", id(), error);
    json_object_set_new(result, "requests", json_integer(R.pc_sent));
    if (R.pc_sent < R.spec.pc_requests)
        pc_next();
    else
        pc_judge();
}

/* The next pre-check request: to the next server of `to` in turn, straight to it (as the
 * preview route reaches it), over TLS with the backend's CA and verify settings. */
static void pc_next(void) {
    const td_config_t *c = td_control_config();
    const td_config_backend_t *b = NULL;
    for (size_t i = 0; i < c->num_backends; i++)
        if (strcmp(c->backends[i].name, R.spec.to) == 0)
            b = &c->backends[i];
    if (!b) {
        finish(TD_RO_ABORTED, "td", "pre-check: the backend is no longer configured");
        return;
    }
    const td_config_server_t *srv = &b->servers[(size_t)R.pc_sent % b->num_servers];
    R.pc_sent++;
    char url[1200];
    snprintf(url, sizeof(url), "%s://%s%s", b->tls ? "https" : "http",
             b->tls && b->tls_sni[0] ? b->tls_sni : srv->address.text, R.spec.pc_path);
    long timeout = (long)c->timeouts.connect_ms + c->timeouts.upstream_response_ms;
    td_fetch_req_t rq = {.method = "GET",
                         .url = url,
                         .connect_to = srv->address.text,
                         .ca_file = b->tls_ca,
                         .verify = b->tls_verify,
                         .timeout_ms = timeout > 10000 ? 10000 : timeout};
    if (td_fetch(&rq, on_pc_answer, gen_arg()) < 0)
        on_pc_answer(gen_arg(), 0, "could not start the request");
}

/* ---- the tick */

/* One look at the step's analysis window. */
/* What the counters cannot show: a target taken out of the traffic by td itself answers (almost)
 * nothing, so its error rate looks clean while users were sent elsewhere. A server of the target
 * ejected by passive detection (failures or 5xx in a row), a target with no server up by its
 * health checks, or a target put in drain or maint, fails the step. Writes the reason and returns
 * 1 then; returns -1 (reason written) when the target is no longer in the config at all; else 0. */
/* In cluster mode, whether another live node sees a server of `to` down that is up here (its
 * passive detection ejected it, or its health checks failed there: a release failing behind that
 * node only), or every server of `to` down: 1 with why[n] naming the node, else 0. The nodes'
 * views come from their membership keys (td_cluster_json), rewritten when they change. */
static int target_down_elsewhere(const td_snap_backend_t *b, int64_t now, char *why, size_t n) {
    json_t *view = td_cluster_json();
    const char *self = json_string_value(json_object_get(view, "node"));
    json_t *node;
    size_t i;
    int out = 0;
    json_array_foreach(json_object_get(view, "nodes"), i, node) {
        const char *name = json_string_value(json_object_get(node, "node"));
        json_t *servers = json_object_get(json_object_get(node, "health"), R.spec.to);
        if (!name || (self && strcmp(name, self) == 0) || !json_is_object(servers))
            continue;
        size_t down = 0, total = 0;
        for (size_t j = 0; j < b->num_servers && !out; j++) {
            const char *v = json_string_value(json_object_get(servers, b->servers[j].addr.text));
            if (!v)
                continue;
            total++;
            if (strcmp(v, "down") != 0)
                continue;
            down++;
            if (td_server_is_up(b->servers[j].st, now)) {
                snprintf(why, n,
                         "%s: server %s is down on node %s only (its passive detection or health "
                         "checks there)",
                         R.spec.to, b->servers[j].addr.text, name);
                out = 1;
            }
        }
        if (!out && total && down == total) {
            snprintf(why, n, "%s: no server up on node %s", R.spec.to, name);
            out = 1;
        }
        if (out)
            break;
    }
    json_decref(view);
    return out;
}

static int target_taken_out(char *why, size_t n) {
    td_snapshot_t *s = td_router_acquire();
    int bi = td_snapshot_find_backend(s, R.spec.to, strlen(R.spec.to)), out = 0;
    int64_t now = td_now_ms();
    if (bi < 0) {
        snprintf(why, n, "%s is no longer in the config", R.spec.to);
        out = -1;
    } else {
        const td_snap_backend_t *b = &s->backends[bi];
        for (size_t j = 0; j < b->num_servers && !out; j++)
            if (atomic_load(&b->servers[j].st->ejected)) {
                snprintf(why, n,
                         "%s: server %s was ejected by passive detection (failures or 5xx in a "
                         "row)",
                         R.spec.to, b->servers[j].addr.text);
                out = 1;
            }
        if (!out && b->state != TD_BACKEND_READY) {
            snprintf(why, n, "%s was put in state %s: it takes no new requests", R.spec.to,
                     td_backend_state_name(b->state));
            out = 1;
        } else if (!out && !td_backend_is_up(b, now)) {
            snprintf(why, n, "%s: no server up by its health checks", R.spec.to);
            out = 1;
        } else if (!out && td_cluster_enabled()) {
            out = target_down_elsewhere(b, now, why, n);
        }
    }
    td_snapshot_release(s);
    return out;
}

/* Judges one look at sides t and b (the deltas of the window), `missing` (borrowed, or NULL)
 * the nodes left out of it: the look is judged on the rest, which is a WAIT while they do not
 * meet min_requests (td_analysis_look's rule). */
static void judge(const td_analysis_side_t *tp, const td_analysis_side_t *bp,
                  const json_t *missing) {
    td_analysis_side_t t = *tp, b = *bp;
    int last_step = R.spec.steps[R.step] == 100;
    td_analysis_config_t cfg = {.max_error_rate = R.spec.max_error_rate,
                                .max_p99_ms = R.spec.max_p99_ms,
                                .min_requests = (uint64_t)R.spec.min_requests,
                                .compare_baseline = R.spec.compare_baseline,
                                .max_ratio = R.spec.max_ratio,
                                .significance = R.spec.significance,
                                .looks = R.looks_planned};
    td_analysis_result_t res;
    td_analysis_verdict_t v = td_analysis_look(&cfg, &t, last_step ? NULL : &b, &res);
    R.looks_done++;
    R.last_verdict = v;
    snprintf(R.last_reason, sizeof(R.last_reason), "%s", res.reason);
    static const char *const names[] = {"wait", "pass", "fail"};
    json_t *d = step_detail(R.step);
    json_array_append_new(json_object_get(d, "looks"),
                          json_pack("{s:o,s:I,s:I,s:I,s:I,s:f,s:f,s:s,s:s}", "at", now_json(),
                                    "target_requests", (json_int_t)t.requests, "target_errors",
                                    (json_int_t)t.errors, "baseline_requests",
                                    (json_int_t)b.requests, "baseline_errors", (json_int_t)b.errors,
                                    "p_value", res.p_value, "threshold", res.threshold, "verdict",
                                    names[v], "reason", res.reason));
    if (missing)
        json_object_set_new(json_array_get(json_object_get(d, "looks"),
                                           json_array_size(json_object_get(d, "looks")) - 1),
                            "missing", json_deep_copy(missing));
    json_object_set_new(d, "target", side_json(&t));
    json_object_set_new(d, "baseline", last_step ? json_null() : side_json(&b));
    record_shares(d);
    if (v == TD_ANALYSIS_FAIL) {
        char why[400];
        snprintf(why, sizeof(why), "%s: %s", R.spec.to, res.reason);
        fail_step(why);
        return;
    }
    if (R.spec.an_webhook[0]) {
        char *body = doc_text();
        td_fetch_req_t rq = {.method = "POST",
                             .url = R.spec.an_webhook,
                             .body = body,
                             .verify = 1,
                             .timeout_ms = 10000};
        if (td_fetch(&rq, on_look_webhook, gen_arg()) == 0)
            R.pending++;
        free(body);
    }
}

static void on_cluster_open(void *arg, const td_rollout_sum_t *sum) {
    (void)arg, (void)sum; /* the baselines are kept by rollout_cluster */
}

/* A look in flight is forgotten; R.pending counts it only within the transition it began in. */
static void drop_cluster_look(void) {
    if (R.cluster_looking && R.look_gen == R.gen)
        R.pending--;
    R.cluster_looking = 0;
}

static void on_cluster_look(void *arg, const td_rollout_sum_t *sum) {
    if ((unsigned)(uintptr_t)arg != R.window_seq || !R.cluster_looking)
        return;
    int current = R.look_gen == R.gen;
    drop_cluster_look();
    if (!current || R.state != TD_RO_RUNNING || !R.leading)
        return;
    judge(&sum->target, &sum->baseline, json_array_size(sum->missing) ? sum->missing : NULL);
}

/* The analysis window opens: this node's counters now, or in cluster mode every live node's. */
static void open_window(void) {
    if (!td_cluster_enabled()) {
        sides_now(&R.t0, &R.b0);
        return;
    }
    R.window_seq++;
    drop_cluster_look();
    if (td_rollout_cluster_open(R.spec.to, json_object_get(R.doc, "weights_before"),
                                on_cluster_open, NULL) < 0)
        td_warn("rollout %s: the analysis window could not ask the nodes (out of memory)", id());
}

static void look(void) {
    if (td_cluster_enabled()) {
        if (R.cluster_looking)
            return;
        if (td_rollout_cluster_look(on_cluster_look, (void *)(uintptr_t)R.window_seq) == 0) {
            R.cluster_looking = 1;
            R.look_gen = R.gen;
            R.pending++;
            return;
        }
        td_analysis_side_t none;
        memset(&none, 0, sizeof(none));
        json_t *why = json_pack("[s]", "the nodes could not be asked (out of memory)");
        judge(&none, &none, why);
        json_decref(why);
        return;
    }
    td_analysis_side_t t, b;
    sides_now(&t, &b);
    side_delta(&t, &R.t0);
    side_delta(&b, &R.b0);
    judge(&t, &b, NULL);
}

static void tick_running(int64_t now) {
    char taken[300];
    int out = target_taken_out(taken, sizeof(taken));
    if (out < 0) {
        finish(TD_RO_ABORTED, "td", taken);
        return;
    }
    if (out > 0) {
        fail_step(taken);
        return;
    }
    int64_t el = now - R.step_start_ms, ramp = R.spec.ramp_s * 1000L;
    int w = R.spec.steps[R.step];
    if (R.weight_now != w && ramp > 0) {
        int next = el >= ramp ? w : R.ramp_from + (int)((w - R.ramp_from) * el / ramp);
        if (next != R.weight_now) {
            char what[300];
            snprintf(what, sizeof(what), "rollout %s: step %zu of %zu, %s %d %% (ramp to %d %%)",
                     id(), R.step + 1, R.spec.num_steps, R.spec.to, next, w);
            apply_weights(next, what, "td");
        }
        if (R.weight_now != w)
            return;
    }
    if (!R.window_ms && el >= ramp + R.spec.warmup_s * 1000L) {
        R.window_ms = now;
        open_window();
    }
    int64_t end = ramp + R.spec.step_s * 1000L;
    if (R.window_ms && !R.cluster_looking && R.looks_done < R.looks_planned &&
        now - R.window_ms >= (int64_t)(R.looks_done + 1) * R.spec.interval_s * 1000L - 200) {
        look();
        if (R.state != TD_RO_RUNNING)
            return;
    }
    if (el < end || R.pending > 0)
        return;
    if (!R.window_ms) {
        R.window_ms = now;
        open_window();
    }
    if (R.looks_done == 0) {
        look();
        if (R.state != TD_RO_RUNNING || R.cluster_looking)
            return; /* in cluster mode the step passes at a tick after the sums came */
    }
    char note[300] = "";
    if (R.last_verdict == TD_ANALYSIS_WAIT)
        snprintf(note, sizeof(note), "not enough answers to judge (%s)", R.last_reason);
    step_passed("td", note);
}

static void tick_draining(int64_t now) {
    const td_config_t *c = td_control_config();
    int busy = 0;
    for (size_t i = 0; i < c->num_backends; i++) {
        if (strcmp(c->backends[i].name, R.spec.to) == 0)
            continue;
        td_backend_stats_t *st = td_registry_backend(c->backends[i].name);
        if (st && (atomic_load(&st->in_flight) > 0 || atomic_load(&st->tunnels) > 0))
            busy = 1;
    }
    if (!busy)
        finish(TD_RO_SUCCEEDED, "td", "every step passed; the old side is drained");
    else if (now - R.drain_start_ms >= c->timeouts.drain_ms)
        finish(TD_RO_SUCCEEDED, "td",
               "every step passed; drain_ms passed with requests still on the old side");
}

static void timer_tick(uv_timer_t *t) {
    (void)t;
    if (td_cluster_enabled()) {
        if (!cluster_role())
            return;
        flush();
        /* The engine waits while its write is in flight and while a step's weights are not
         * applied on every live node. */
        if (R.writing || R.want_write || R.fence_rev) {
            if (R.fence_rev && R.fence_retry)
                fence_wait();
            return;
        }
    }
    if (!R.doc)
        return;
    int64_t now = td_now_ms();
    if (R.state == TD_RO_RUNNING)
        tick_running(now);
    else if (R.state == TD_RO_DRAINING)
        tick_draining(now);
}

/* ---- start, actions, restart */

static void begin_checking(void) {
    R.pc_sent = R.pc_ok = R.pc_failed = 0;
    json_object_set_new(json_object_get(R.doc, "pre_check"), "result",
                        json_pack("{s:i,s:i,s:i,s:{},s:n}", "requests", 0, "ok", 0, "failed", 0,
                                  "statuses", "webhook"));
    pc_next();
}

static void fill_env(td_rollout_env_t *env) {
    td_snapshot_t *s = td_router_acquire();
    int64_t now = td_now_ms();
    env->num_backends = s->num_backends;
    for (size_t i = 0; i < s->num_backends; i++) {
        snprintf(env->names[i], sizeof(env->names[i]), "%s", s->backends[i].name);
        env->weights[i] = s->backends[i].weight;
        env->up[i] = td_backend_is_up(&s->backends[i], now);
        env->ready[i] = s->backends[i].state == TD_BACKEND_READY;
        env->state[i] = s->backends[i].state;
    }
    td_snapshot_release(s);
}

static json_t *error_json(const char *msg) {
    return json_pack("{s:s}", "error", msg);
}

/* Cluster mode: 0 when this node leads and can write to etcd now, else *status and the error. */
static json_t *cluster_refuses(int *status) {
    char why[700], msg[800];
    if (!cluster_role()) {
        *status = 503;
        return error_json("no rollout leader: this node is not the leader and knows none");
    }
    int r = td_cluster_writable(why, sizeof(why));
    if (r == 0)
        return NULL;
    snprintf(msg, sizeof(msg), "%s", why);
    *status = r == TD_ECONFLICT ? 409 : 503;
    return error_json(msg);
}

json_t *td_rollout_start(const json_t *body, const char *client, int *status) {
    char msg[600];
    json_t *refused = td_cluster_enabled() ? cluster_refuses(status) : NULL;
    if (refused)
        return refused;
    if (td_rollout_active(msg, sizeof(msg))) {
        *status = 409;
        return error_json(msg);
    }
    static td_rollout_env_t env; /* large: not on the stack */
    fill_env(&env);
    td_rollout_spec_t spec;
    if (td_rollout_parse(body, &env, &spec, msg, sizeof(msg)) < 0) {
        *status = 400;
        return error_json(msg);
    }
    json_t *doc = td_rollout_spec_json(&spec);
    if (!doc) {
        *status = 500;
        return error_json("out of memory");
    }
    char rid[64], stamp[32];
    time_t tt = (time_t)(td_wall_ms() / 1000);
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
    snprintf(rid, sizeof(rid), "r-%s-%d", stamp, ++R.seq);
    json_t *before = json_object();
    const char *from = "";
    int best = 0;
    for (size_t i = 0; i < env.num_backends; i++) {
        json_object_set_new(before, env.names[i], json_integer(env.weights[i]));
        if (strcmp(env.names[i], spec.to) != 0 && env.weights[i] > best) {
            best = env.weights[i];
            from = env.names[i];
        }
    }
    json_object_set_new(doc, "id", json_string(rid));
    json_object_set_new(doc, "from", json_string(from));
    json_object_set_new(doc, "weights_before", before);
    json_object_set_new(doc, "weights", json_deep_copy(before));
    json_object_set_new(doc, "created_at", now_json());
    json_object_set_new(doc, "updated_at", now_json());
    json_object_set_new(doc, "finished_at", json_null());
    json_object_set_new(doc, "by", json_string(client));
    json_object_set_new(doc, "reason", json_null());
    json_object_set_new(doc, "step_started_at", json_null());
    json_object_set_new(doc, "step_remaining_s", json_null());
    json_decref(R.doc);
    R.doc = doc;
    R.spec = spec;
    /* A target not ready took no new requests whatever its weight: it starts from 0 (a ramp
     * to the first step starts there). */
    for (size_t i = 0; i < env.num_backends; i++)
        if (strcmp(env.names[i], spec.to) == 0)
            R.weight_now = env.ready[i] ? env.weights[i] : 0;
    enter(TD_RO_CHECKING, client, "started");
    if (spec.has_pre_check) {
        persist(client);
        begin_checking();
    } else {
        start_running("td", "no pre-check");
    }
    *status = 201;
    return td_rollout_json();
}

json_t *td_rollout_act(td_rollout_action_t a, const json_t *body, const char *client, int *status) {
    char msg[300];
    /* Only promote takes a body, {"full": true|false}; nothing is changed by a bad one. */
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)body, key, v) {
        if (a != TD_RO_PROMOTE || strcmp(key, "full") != 0) {
            snprintf(msg, sizeof(msg), "unknown key \"%.64s\"%s", key,
                     a == TD_RO_PROMOTE ? " (valid: full)" : ": this action takes no body");
            *status = 400;
            return error_json(msg);
        }
        if (!json_is_boolean(v)) {
            *status = 400;
            return error_json("full: must be true or false");
        }
    }
    json_t *refused = td_cluster_enabled() ? cluster_refuses(status) : NULL;
    if (refused)
        return refused;
    if (!td_rollout_active(msg, sizeof(msg))) {
        *status = 409;
        return error_json(shown() ? "no rollout is active" : "no rollout yet");
    }
    int next = td_rollout_next_state(R.state, a);
    if (next < 0) {
        char e[400];
        snprintf(e, sizeof(e), "%s does not apply: %s", td_rollout_action_name(a), msg);
        *status = 409;
        return error_json(e);
    }
    char why[200];
    snprintf(why, sizeof(why), "%s", td_rollout_action_name(a));
    if (a == TD_RO_PAUSE) {
        enter(TD_RO_PAUSED, client, why);
        persist(client);
    } else if (a == TD_RO_RESUME) {
        enter(TD_RO_RUNNING, client, why);
        /* The step starts over: its analysis window opens afresh; a ramp paused half-way
         * goes on from where it stopped. */
        start_step(R.step, client, !(R.spec.ramp_s > 0 && R.weight_now < R.spec.steps[R.step]));
    } else if (a == TD_RO_PROMOTE) {
        int full = json_is_true(json_object_get(body, "full"));
        size_t to = full ? R.spec.num_steps - 1 : R.step + 1;
        if (full)
            snprintf(why, sizeof(why), "promote to 100 %%");
        enter(TD_RO_RUNNING, client, why);
        json_t *d = step_detail(R.step);
        json_object_set_new(d, "state", json_string("skipped"));
        json_object_set_new(d, "ended_at", now_json());
        record_shares(d);
        for (size_t k = R.step + 1; k < to; k++)
            json_object_set_new(step_detail(k), "state", json_string("skipped"));
        if (to < R.spec.num_steps) {
            start_step(to, client, 0);
        } else {
            R.step = R.spec.num_steps - 1;
            step_passed(client, "promoted");
        }
    } else {
        finish(TD_RO_ABORTED, client, why);
    }
    *status = 200;
    return td_rollout_json();
}

/* Cluster mode: `j` gets "leader" and "nodes": [{"node", "applied_step", "applied_revision"}],
 * each live node's step of this rollout (null: another rollout's, or none) from its membership
 * key. */
static void add_cluster(json_t *j) {
    const char *leader = td_cluster_leader();
    json_object_set_new(j, "leader", leader ? json_string(leader) : json_null());
    json_t *view = td_cluster_json(), *n;
    json_t *nodes = json_array();
    const char *rid = json_string_value(json_object_get(j, "id"));
    size_t i;
    json_array_foreach(json_object_get(view, "nodes"), i, n) {
        json_t *rs = json_object_get(n, "rollout_step");
        const char *sid = json_string_value(json_object_get(rs, "id"));
        json_t *step = rid && sid && strcmp(rid, sid) == 0 ? json_object_get(rs, "step") : NULL;
        json_array_append_new(nodes, json_pack("{s:O,s:O,s:O}", "node", json_object_get(n, "node"),
                                               "applied_step", step ? step : json_null(),
                                               "applied_revision",
                                               json_object_get(n, "applied_revision")));
    }
    json_decref(view);
    json_object_set_new(j, "nodes", nodes);
}

json_t *td_rollout_json(void) {
    if (td_cluster_enabled() && !(R.leading && R.doc)) {
        const json_t *doc = td_cluster_rollout_doc();
        json_t *j = doc ? json_deep_copy(doc) : NULL;
        if (j)
            add_cluster(j);
        return j;
    }
    if (!R.doc)
        return NULL;
    json_t *j = json_deep_copy(R.doc);
    if (td_cluster_enabled())
        add_cluster(j);
    if (R.state == TD_RO_RUNNING) {
        int64_t end = R.step_start_ms + (R.spec.ramp_s + R.spec.step_s) * 1000L;
        double left = (double)(end - td_now_ms()) / 1000.0;
        json_object_set_new(j, "step_remaining_s", json_real(left > 0 ? left : 0));
        json_t *d = json_array_get(json_object_get(j, "steps_detail"), R.step);
        double conf, act;
        shares(&conf, &act);
        json_object_set_new(d, "share_configured", json_real(conf));
        json_object_set_new(d, "share_actual", act >= 0 ? json_real(act) : json_null());
    } else {
        json_object_set_new(j, "step_remaining_s", json_null());
    }
    return j;
}

json_t *td_rollout_summary_json(void) {
    const json_t *doc = shown();
    if (!doc)
        return json_null();
    return json_pack("{s:O?,s:O?,s:O?,s:O?,s:O?}", "id", json_object_get(doc, "id"), "state",
                     json_object_get(doc, "state"), "to", json_object_get(doc, "to"), "step",
                     json_object_get(doc, "step"), "steps", json_object_get(doc, "steps"));
}

json_t *td_rollout_persist_json(void) {
    return R.doc ? json_incref(R.doc) : NULL;
}

/* An upgrade's handed-over step clock (td_rollout_resume_step), used once by restore. */
static struct {
    char id[64];
    size_t step;
    int64_t start_ms;
} resume;

/* An active rollout of the state file continues: at its step, the window afresh. */
static void restore(json_t *doc, const char *after) {
    int st = td_rollout_state_parse(json_string_value(json_object_get(doc, "state")));
    char err[300];
    if (st < 0 || td_rollout_parse(doc, NULL, &R.spec, err, sizeof(err)) < 0) {
        td_error("rollout %s not used: %s", td_cluster_enabled() ? "in etcd" : "in the state file",
                 st < 0 ? "unknown state" : err);
        json_decref(doc);
        return;
    }
    json_decref(R.doc);
    R.doc = doc;
    R.state = (td_rollout_state_t)st;
    json_t *stepv = json_object_get(doc, "step");
    R.step = json_is_integer(stepv) && json_integer_value(stepv) >= 0 &&
                     (size_t)json_integer_value(stepv) < R.spec.num_steps
                 ? (size_t)json_integer_value(stepv)
                 : 0;
    json_t *w = json_object_get(json_object_get(doc, "weights"), R.spec.to);
    R.weight_now = json_is_integer(w) ? (int)json_integer_value(w) : 0;
    if (!td_rollout_state_active(R.state))
        return;
    char why[300];
    if (R.state == TD_RO_CHECKING) {
        snprintf(why, sizeof(why), "rollout %s starts its pre-check again %s", id(), after);
    } else if (R.state == TD_RO_DRAINING) {
        snprintf(why, sizeof(why), "rollout %s continues draining %s", id(), after);
    } else {
        snprintf(why, sizeof(why),
                 "rollout %s continues at step %zu (%d %%) %s; its analysis window starts afresh",
                 id(), R.step + 1, R.spec.steps[R.step], after);
    }
    td_info("%s", why);
    td_event("rollout", "%s", why);
    if (R.state == TD_RO_CHECKING)
        begin_checking();
    else if (R.state == TD_RO_DRAINING)
        R.drain_start_ms = td_now_ms();
    else if (R.state == TD_RO_RUNNING) {
        json_t *was = json_incref(json_object_get(doc, "step_started_at"));
        start_step(R.step, "td", 1);
        if (resume.id[0] && strcmp(resume.id, id()) == 0 && resume.step == R.step &&
            resume.start_ms > 0 && resume.start_ms <= td_now_ms()) {
            /* An upgrade: the step goes on from its real start. */
            R.step_start_ms = resume.start_ms;
            if (was)
                json_object_set(R.doc, "step_started_at", was);
        }
        json_decref(was);
        resume.id[0] = 0;
    }
}

void td_rollout_resume_step(const char *rollout_id, size_t step, int64_t start_ms) {
    snprintf(resume.id, sizeof(resume.id), "%s", rollout_id);
    resume.step = step;
    resume.start_ms = start_ms;
}

int td_rollout_step_clock(const char **rid, size_t *step, int64_t *start_ms) {
    if (!R.doc || R.state != TD_RO_RUNNING)
        return 0;
    *rid = id();
    *step = R.step;
    *start_ms = R.step_start_ms;
    return 1;
}

int td_rollout_init(uv_loop_t *loop) {
    R.loop = loop;
    int r = td_fetch_init(loop);
    if (r < 0)
        return r;
    uv_timer_init(loop, &R.timer);
    uv_timer_start(&R.timer, timer_tick, 1000, 1000);
    uv_unref((uv_handle_t *)&R.timer);
    R.ready = 1;
    const char *path = td_control_state_path();
    json_t *doc = path[0] ? td_state_load_rollout(path) : NULL;
    if (doc)
        restore(doc, "after a restart");
    return 0;
}

void td_rollout_shutdown(void) {
    if (!R.ready)
        return;
    written(TD_EUNAVAIL, "td is stopping");
    R.gen++;
    R.lead_gen++;
    R.fence_seq++;
    R.fence_rev = 0;
    uv_timer_stop(&R.timer);
    uv_close((uv_handle_t *)&R.timer, NULL);
    td_rollout_cluster_close();
    td_fetch_shutdown();
    R.ready = 0;
}
