/* The admin API: the /api/v1 handlers (state, ratio, backends, routing, config, overrides,
 * events, history), /metrics and the console page, answering JSON. The HTTP server below it
 * (admin_http.c) reads, checks and writes; every change goes through the control plane
 * (td_control_apply). */
#include "td/admin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/admin_cluster.h"
#include "td/admin_http.h"
#include "td/cluster.h"
#include "td/cluster_view.h"
#include "td/config.h"
#include "td/console.h"
#include "td/control.h"
#include "td/events.h"
#include "td/health.h"
#include "td/log.h"
#include "td/metrics.h"
#include "td/proxy.h"
#include "td/ready.h"
#include "td/registry.h"
#include "td/resolver.h"
#include "td/rollout.h"
#include "td/rollout_cluster.h"
#include "td/tls.h"
#include "td/router.h"

/* ---- replies */

/* ---- replies */

/* What the admin server runs with (td_admin_start, td_admin_update_token), for GET
 * /api/v1/config: the config's "admin" may say otherwise until a restart. */
static td_addr_t bound_address;
static char token_in_force[sizeof(((td_config_t *)0)->admin_token)];
static char read_token_in_force[sizeof(((td_config_t *)0)->admin_read_token)];
static int tls_in_force;               /* the admin server was started with admin.tls */
static td_config_listener_t tls_bound; /* that admin.tls, as it was (or last reloaded) */

static td_admin_reply_t json_reply(int status, json_t *j) {
    return td_admin_http_json(status, j);
}

/* 405 with the methods the resource takes (RFC 9110 §15.5.6: Allow is required). */
static td_admin_reply_t not_allowed(const char *allow) {
    char msg[64];
    snprintf(msg, sizeof(msg), "use %s", allow);
    td_admin_reply_t r = td_admin_http_error(405, msg);
    r.allow = allow;
    return r;
}

/* ---- state and changes */

static json_t *class_counts(_Atomic uint64_t *c) {
    return json_pack("{s:I,s:I,s:I,s:I,s:I}", "1xx", (json_int_t)atomic_load(&c[0]), "2xx",
                     (json_int_t)atomic_load(&c[1]), "3xx", (json_int_t)atomic_load(&c[2]), "4xx",
                     (json_int_t)atomic_load(&c[3]), "5xx", (json_int_t)atomic_load(&c[4]));
}

/* Quantile q (0..1) of a histogram, as the upper bound (ms) of the bucket it falls in; the last
 * (+Inf) bucket reports the largest finite bound. 0 when empty. */
static int quantile_ms(const uint64_t *counts, double q) {
    uint64_t total = 0, seen = 0;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        total += counts[i];
    if (!total)
        return 0;
    for (int i = 0; i < TD_LAT_BUCKETS - 1; i++) {
        seen += counts[i];
        if ((double)seen >= q * (double)total)
            return td_lat_bounds_ms[i];
    }
    return td_lat_bounds_ms[TD_LAT_BUCKETS - 2];
}

static json_t *latency_json(td_backend_stats_t *b) {
    uint64_t counts[TD_LAT_BUCKETS];
    json_t *buckets = json_array();
    for (int i = 0; i < TD_LAT_BUCKETS; i++) {
        counts[i] = atomic_load(&b->latency[i]);
        json_array_append_new(buckets, json_integer((json_int_t)counts[i]));
    }
    return json_pack("{s:i,s:i,s:o}", "p50", quantile_ms(counts, 0.5), "p99",
                     quantile_ms(counts, 0.99), "buckets", buckets);
}

static json_t *local_counts(_Atomic uint64_t *c) {
    return json_pack("{s:I,s:I,s:I}", "502", (json_int_t)atomic_load(&c[0]), "503",
                     (json_int_t)atomic_load(&c[1]), "504", (json_int_t)atomic_load(&c[2]));
}

/* Milliseconds since `at` (a td_now_ms() time, 0 = never) as JSON: null when never. */
static json_t *ago(int64_t at, int64_t now) {
    return at ? json_integer(now - at) : json_null();
}

/* Failover: why the serving backend is the one serving, for people. */
static void failover_reason(const td_snapshot_t *s, size_t primary, int serving, int64_t now,
                            char *out, size_t n) {
    const td_snap_backend_t *p = &s->backends[primary];
    int64_t since = td_backend_up_since(p, now);
    if (serving < 0)
        snprintf(out, n, "no backend in state ready has a server up: every request gets 503");
    else if (&s->backends[serving] == p)
        snprintf(out, n, "primary %s is up", p->name);
    else if (since < 0)
        snprintf(out, n, "primary %s has no server up", p->name);
    else
        snprintf(out, n,
                 "primary %s is up again since %.1f s; traffic goes back to it once it has been "
                 "up for failback_ms (%lld ms)",
                 p->name, (double)(now - since) / 1000.0, (long long)p->failback_ms);
}

/* A server from a host name: the name as configured, how long ago it last resolved (null: never)
 * and the last attempt's error (null: it succeeded). */
static void name_json(json_t *srv, const char *name) {
    td_resolver_info_t ri;
    json_object_set_new(srv, "name", json_string(name));
    if (td_resolver_info(name, &ri) < 0) {
        json_object_set_new(srv, "resolved_ago_ms", json_null());
        json_object_set_new(srv, "dns_error", json_null());
        return;
    }
    json_object_set_new(srv, "resolved_ago_ms",
                        ri.resolved_at_ms ? json_integer(td_wall_ms() - ri.resolved_at_ms)
                                          : json_null());
    json_object_set_new(srv, "dns_error", ri.error[0] ? json_string(ri.error) : json_null());
}

/* The state object of backend i of s (as in GET /api/v1/state's "backends"); `share` from
 * td_router_shares, `order` and `candidates` from td_router_failover_order. */
static json_t *backend_json(td_snapshot_t *s, size_t i, int64_t now, const double *share,
                            const size_t *order, size_t candidates) {
    td_snap_backend_t *b = &s->backends[i];
    json_t *servers = json_array();
    int64_t conns_open = 0;
    for (size_t j = 0; j < b->num_servers; j++) {
        td_server_stats_t *st = b->servers[j].st;
        conns_open += atomic_load(&st->active_connections);
        int up = td_server_is_up(st, now);
        json_array_append_new(
            servers,
            json_pack("{s:s,s:i,s:b,s:s,s:I,s:I,s:I,s:I,s:o}", "address", st->address, "weight",
                      b->servers[j].weight, "up", up, "health",
                      !atomic_load(&st->health_up) ? "down"
                      : up                         ? "up"
                                                   : "ejected",
                      "in_flight", (json_int_t)atomic_load(&st->in_flight), "active_connections",
                      (json_int_t)atomic_load(&st->active_connections), "requests",
                      (json_int_t)atomic_load(&st->requests), "failures",
                      (json_int_t)atomic_load(&st->failures), "responses",
                      class_counts(st->responses)));
        /* max_conns (0: no limit) and the slots held against it: requests in flight there and
         * its tunnels. */
        json_object_set_new(json_array_get(servers, j), "max_conns",
                            json_integer(b->servers[j].max_conns));
        if (b->servers[j].max_conns)
            json_object_set_new(json_array_get(servers, j), "slots",
                                json_integer((json_int_t)atomic_load(&st->slots)));
        int64_t ramp = td_router_slow_start_remaining(&b->servers[j], now);
        json_object_set_new(json_array_get(servers, j), "slow_start_remaining_ms",
                            ramp >= 0 ? json_integer(ramp) : json_null());
        const char *last = td_health_last(st);
        if (last[0])
            json_object_set_new(json_array_get(servers, j), "last_check", json_string(last));
        if (b->servers[j].name)
            name_json(json_array_get(servers, j), b->servers[j].name);
    }
    /* A host name without any address (never resolved) is listed too, down, with its error. */
    const td_config_backend_t *cb = &s->config->backends[i];
    for (size_t j = 0; j < cb->num_servers; j++) {
        const char *name = cb->servers[j].address.text;
        int has = !td_addr_is_name(&cb->servers[j].address);
        for (size_t k = 0; k < b->num_servers && !has; k++)
            has = b->servers[k].name && strcmp(b->servers[k].name, name) == 0;
        if (has)
            continue;
        json_t *srv = json_pack("{s:n,s:i,s:b,s:s}", "address", "weight", cb->servers[j].weight,
                                "up", 0, "health", "down");
        name_json(srv, name);
        json_array_append_new(servers, srv);
    }
    int64_t in_flight = atomic_load(&b->st->in_flight), tunnels = atomic_load(&b->st->tunnels);
    int draining = td_backend_draining(s, b);
    json_t *jb = json_pack(
        "{s:s,s:i,s:b,s:I,s:I,s:I,s:I,s:o,s:I,s:b,s:b,s:o}", "name", b->name, "weight", b->weight,
        "up", td_backend_is_up(b, now), "in_flight", (json_int_t)in_flight, "tunnels",
        (json_int_t)tunnels, "active_connections", (json_int_t)conns_open, "requests",
        (json_int_t)atomic_load(&b->st->requests), "responses", class_counts(b->st->responses),
        "sticky_requests_10s", (json_int_t)td_router_pins_recent(b->st, now), "draining", draining,
        "drained", draining && in_flight == 0 && tunnels == 0, "servers", servers);
    json_object_set_new(jb, "state", json_string(td_backend_state_name(b->state)));
    json_object_set_new(jb, "protocol",
                        json_string(cb->protocol == TD_PROTOCOL_H2 ? "h2" : "http/1.1"));
    json_object_set_new(jb, "latency_ms", latency_json(b->st));
    int64_t ramp = td_router_backend_slow_start_remaining(b, now);
    json_object_set_new(jb, "slow_start_remaining_ms",
                        ramp >= 0 ? json_integer(ramp) : json_null());
    int64_t since = atomic_load(&b->st->drain_since_ms);
    json_object_set_new(jb, "drain_elapsed_ms",
                        draining && since ? json_integer(now - since) : json_null());
    /* What it gets now (percent of new requests), computed once here for every client. */
    json_object_set_new(jb, "share", json_real((double)(int)(share[i] * 1000 + 0.5) / 10));
    json_object_set_new(jb, "serving", json_boolean(share[i] > 0));
    /* What it actually answered over the last 10 s: lags `share` while sticky clients stay. */
    uint64_t all = 0, mine = td_registry_answered_recent(b->st, now);
    for (size_t k = 0; k < s->num_backends; k++)
        all += td_registry_answered_recent(s->backends[k].st, now);
    json_object_set_new(jb, "share_actual_10s",
                        all ? json_real((double)(int)((double)mine * 1000 / (double)all + 0.5) / 10)
                            : json_null());
    /* In drain or maint it is no failover candidate: neither primary nor backup. */
    if (s->method == TD_METHOD_FAILOVER && b->state == TD_BACKEND_READY)
        json_object_set_new(jb, "role",
                            json_string(candidates && i == order[0] ? "primary" : "backup"));
    json_object_set_new(jb, "local_responses", local_counts(b->st->local));
    /* Requests waiting for a max_conns slot now (all workers), and those that waited queue_ms
     * and got td's 503. */
    json_object_set_new(jb, "queued", json_integer((json_int_t)atomic_load(&b->st->queued)));
    json_object_set_new(jb, "queue_timeouts",
                        json_integer((json_int_t)atomic_load(&b->st->queue_timeouts)));
    json_object_set_new(jb, "last_5xx_ago_ms", ago(atomic_load(&b->st->last_5xx_ms), now));
    return jb;
}

static json_t *state_json(void) {
    td_snapshot_t *s = td_router_acquire();
    int64_t now = td_now_ms();
    double share[TD_CONFIG_MAX_BACKENDS];
    int serving = td_router_shares(s, now, share);
    size_t order[TD_CONFIG_MAX_BACKENDS];
    size_t candidates = td_router_failover_order(s, order);
    int64_t last_5xx = atomic_load(&td_registry_local()->last_5xx_ms);
    json_t *backends = json_array();
    for (size_t i = 0; i < s->num_backends; i++) {
        int64_t b5 = atomic_load(&s->backends[i].st->last_5xx_ms);
        if (b5 > last_5xx)
            last_5xx = b5;
        json_array_append_new(backends, backend_json(s, i, now, share, order, candidates));
    }
    json_t *j =
        json_pack("{s:I,s:s,s:I,s:I,s:o}", "version", (json_int_t)s->version, "method",
                  td_method_name(s->method), "uptime_s",
                  (json_int_t)((td_wall_ms() - td_control_started_ms()) / 1000),
                  "client_connections", (json_int_t)td_proxy_connections(), "backends", backends);
    json_t *bounds = json_array();
    for (int i = 0; i < TD_LAT_BUCKETS - 1; i++)
        json_array_append_new(bounds, json_integer(td_lat_bounds_ms[i]));
    json_object_set_new(j, "latency_bounds_ms", bounds);
    if (s->method == TD_METHOD_FAILOVER) {
        char why[300];
        if (candidates)
            failover_reason(s, order[0], serving, now, why, sizeof(why));
        else
            snprintf(why, sizeof(why),
                     "no backend is ready (all in drain or maint): every request gets 503");
        json_object_set_new(j, "serving",
                            serving >= 0 ? json_string(s->backends[serving].name) : json_null());
        json_object_set_new(j, "serving_reason", json_string(why));
        json_object_set_new(j, "primary",
                            candidates ? json_string(s->backends[order[0]].name) : json_null());
    }
    td_local_stats_t *own = td_registry_local();
    json_object_set_new(j, "td",
                        json_pack("{s:o,s:o}", "local_responses", local_counts(own->local),
                                  "last_5xx_ago_ms", ago(atomic_load(&own->last_5xx_ms), now)));
    json_object_set_new(j, "last_5xx_ago_ms", ago(last_5xx, now));
    const char *why;
    int persisted = td_control_persisted(&why);
    json_object_set_new(j, "persisted", json_boolean(persisted));
    if (!persisted)
        json_object_set_new(j, "persist_error", json_string(why));
    json_object_set_new(j, "state_file", json_string(td_control_state_path()));
    json_object_set_new(j, "pending_restart", td_control_pending_restart());
    json_object_set_new(j, "rollout", td_rollout_summary_json());
    if (td_cluster_enabled()) {
        json_object_set_new(j, "cluster", td_cluster_state_json());
        td_rollout_cluster_state(json_object_get(j, "cluster"));
    }
    td_snapshot_release(s);
    return j;
}

json_t *td_admin_state_json(void) {
    return state_json();
}

/* The target of the request being handled (its query says ?wait=all in cluster mode). */
static td_str_t cur_target;

/* Applies `cfg` (a change asked for by `client`) and answers with the new state, or the reason it
 * was refused. */
static td_admin_reply_t apply(td_config_t *cfg, const char *what, const char *client) {
    if (td_cluster_enabled())
        return td_admin_cluster_change(cfg, what, client, cur_target, 0);
    char err[512];
    int r = td_control_apply(cfg, what, 1, client, err, sizeof(err));
    if (r < 0)
        return td_admin_http_error(r == TD_ECONFLICT ? 409 : 500, err);
    json_t *j = state_json();
    /* Whether this change reached the state file (it applies either way). */
    json_object_set_new(j, "persisted", json_boolean(td_control_persisted(NULL)));
    return json_reply(200, j);
}

static json_t *parse_body(td_str_t body, td_admin_reply_t *fail) {
    json_error_t e;
    json_t *j = json_loadb(body.p, body.len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        char msg[300];
        snprintf(msg, sizeof(msg), "request:%d:%d: %s", e.line < 1 ? 1 : e.line,
                 e.column < 1 ? 1 : e.column, e.text);
        *fail = td_admin_http_error(400, msg);
    } else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        *fail = td_admin_http_error(400, "request body must be a JSON object");
    }
    return j;
}

/* Whether `cfg` leaves no backend to take new requests, so that every request would get 503:
 * every weight 0, or (round robin, sticky) no backend with a weight above 0 in state ready, or
 * (failover) no backend in state ready at all. Writes the refusal to msg[n] then. A change
 * through the API that does this is refused: one command must not take the whole site down
 * (a config file may still say so; td then answers 503 and says why). */
static int nobody_serves(const td_config_t *cfg, char *msg, size_t n) {
    size_t weighted = 0, ready = 0, ready_weighted = 0;
    for (size_t i = 0; i < cfg->num_backends; i++) {
        int r = cfg->backends[i].state == TD_BACKEND_READY, w = cfg->backends[i].weight > 0;
        weighted += w;
        ready += r;
        ready_weighted += r && w;
    }
    if (!weighted)
        snprintf(msg, n,
                 "refused: every backend would have weight 0, so every request would get 503; "
                 "keep at least one weight above 0 (failover takes 100/0: a primary and a "
                 "backup)");
    else if (cfg->method == TD_METHOD_FAILOVER ? !ready : !ready_weighted)
        snprintf(msg, n,
                 "refused: no backend in state ready would %s, so every request would get 503 "
                 "(drain and maint take no new requests); put one back to ready first (tdctl "
                 "state NAME ready)",
                 cfg->method == TD_METHOD_FAILOVER ? "be left" : "have a weight above 0");
    else
        return 0;
    return 1;
}

/* PUT /api/v1/ratio {"blue": 0, "green": 100}: every key an existing backend, every value an
 * integer 0..100; all checked before anything changes. */
/* 409 while a rollout is active: it owns the weights and the method. */
static int rollout_blocks(td_admin_reply_t *fail) {
    char msg[300], e[400];
    /* Cut off from the cluster store, what this node knows of a rollout may be stale: the store
     * is the reason a change cannot be made (503), as for any change. */
    if (td_cluster_enabled() && td_cluster_writable(e, sizeof(e)) == TD_EUNAVAIL) {
        *fail = td_admin_http_error(503, e);
        return 1;
    }
    if (!td_rollout_active(msg, sizeof(msg)))
        return 0;
    snprintf(e, sizeof(e), "%s: pause, promote or abort it first", msg);
    *fail = td_admin_http_error(409, e);
    return 1;
}

static td_admin_reply_t put_ratio(td_str_t body, const char *client) {
    td_admin_reply_t fail;
    if (rollout_blocks(&fail))
        return fail;
    json_t *j = parse_body(body, &fail);
    if (!j)
        return fail;
    if (json_object_size(j) == 0) {
        json_decref(j);
        return td_admin_http_error(
            400, "give at least one backend weight, e.g. {\"blue\": 0, \"green\": 100}");
    }
    td_config_t *cfg = td_config_dup(td_control_config());
    const char *key;
    json_t *v;
    char msg[300] = "";
    json_object_foreach(j, key, v) {
        size_t i;
        for (i = 0; i < cfg->num_backends; i++)
            if (strcmp(cfg->backends[i].name, key) == 0)
                break;
        if (i == cfg->num_backends) {
            snprintf(msg, sizeof(msg), "unknown backend \"%s\"", key);
            break;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 100) {
            snprintf(msg, sizeof(msg), "weight of \"%s\" must be an integer from 0 to 100", key);
            break;
        }
        cfg->backends[i].weight = (int)json_integer_value(v);
    }
    json_decref(j);
    if (!msg[0])
        nobody_serves(cfg, msg, sizeof(msg));
    if (msg[0]) {
        td_config_free(cfg);
        return td_admin_http_error(400, msg);
    }
    char what[256] = "ratio";
    size_t n = strlen(what);
    for (size_t i = 0; i < cfg->num_backends && n < sizeof(what) - 1; i++)
        n += (size_t)snprintf(what + n, sizeof(what) - n, " %s=%d", cfg->backends[i].name,
                              cfg->backends[i].weight);
    return apply(cfg, what, client);
}

/* GET /api/v1/backends/NAME: that backend's object of GET /api/v1/state. */
static td_admin_reply_t get_backend(td_str_t name) {
    td_snapshot_t *s = td_router_acquire();
    int i = td_snapshot_find_backend(s, name.p, name.len);
    if (i < 0) {
        td_snapshot_release(s);
        char msg[TD_NAME_MAX + 40];
        snprintf(msg, sizeof(msg), "unknown backend \"%.*s\"",
                 (int)(name.len < TD_NAME_MAX ? name.len : TD_NAME_MAX), name.p);
        return td_admin_http_error(404, msg);
    }
    int64_t now = td_now_ms();
    double share[TD_CONFIG_MAX_BACKENDS];
    td_router_shares(s, now, share);
    size_t order[TD_CONFIG_MAX_BACKENDS];
    size_t candidates = td_router_failover_order(s, order);
    json_t *j = backend_json(s, (size_t)i, now, share, order, candidates);
    td_snapshot_release(s);
    return json_reply(200, j);
}

/* A body that must be {"KEY": "a string"} (`example` shows one): copies the string into
 * value[cap] and returns 0, or returns -1 with the 400 in *fail (not JSON, another key, no key,
 * not a string, or one too long to be any valid value). */
static int single_string(td_str_t body, const char *key, const char *example, char *value,
                         size_t cap, td_admin_reply_t *fail) {
    json_t *j = parse_body(body, fail);
    if (!j)
        return -1;
    const char *k;
    json_t *v;
    char msg[300] = "";
    json_object_foreach(j, k, v) {
        if (strcmp(k, key) != 0) {
            snprintf(msg, sizeof(msg), "unknown key \"%.100s\" (valid: %s)", k, key);
            break;
        }
    }
    v = json_object_get(j, key);
    if (!msg[0] && !v)
        snprintf(msg, sizeof(msg), "give the %s, e.g. %s", key, example);
    else if (!msg[0] && (!json_is_string(v) || json_string_length(v) >= cap))
        snprintf(msg, sizeof(msg), "%s must be a string, e.g. %s", key, example);
    else if (!msg[0])
        snprintf(value, cap, "%s", json_string_value(v));
    json_decref(j);
    if (msg[0]) {
        *fail = td_admin_http_error(400, msg);
        return -1;
    }
    return 0;
}

/* PUT /api/v1/backends/NAME {"state": "maint"}: the backend's state (ready, drain, maint); the
 * only key for now. Everything is checked before anything changes. */
static td_admin_reply_t put_backend(td_str_t name, td_str_t body, const char *client) {
    const td_config_t *cur = td_control_config();
    size_t i;
    for (i = 0; i < cur->num_backends; i++)
        if (strlen(cur->backends[i].name) == name.len &&
            memcmp(cur->backends[i].name, name.p, name.len) == 0)
            break;
    if (i == cur->num_backends) {
        char msg[TD_NAME_MAX + 40];
        snprintf(msg, sizeof(msg), "unknown backend \"%.*s\"",
                 (int)(name.len < TD_NAME_MAX ? name.len : TD_NAME_MAX), name.p);
        return td_admin_http_error(404, msg);
    }
    td_admin_reply_t fail;
    char value[16];
    if (single_string(body, "state", "{\"state\": \"maint\"}", value, sizeof(value), &fail) < 0)
        return fail;
    td_backend_state_t st;
    if (td_backend_state_parse(value, &st) < 0)
        return td_admin_http_error(400, "state must be one of ready, drain, maint");
    td_config_t *cfg = td_config_dup(cur);
    if (!cfg)
        return td_admin_http_error(500, "out of memory");
    cfg->backends[i].state = st;
    char refused[300];
    if (nobody_serves(cfg, refused, sizeof(refused))) {
        td_config_free(cfg);
        return td_admin_http_error(409, refused);
    }
    char what[TD_NAME_MAX + 32];
    snprintf(what, sizeof(what), "backend %s state %s", cfg->backends[i].name,
             td_backend_state_name(st));
    return apply(cfg, what, client);
}

static td_admin_reply_t put_routing(td_str_t body, const char *client) {
    td_admin_reply_t fail;
    if (rollout_blocks(&fail))
        return fail;
    char value[16];
    if (single_string(body, "method", "{\"method\": \"sticky\"}", value, sizeof(value), &fail) < 0)
        return fail;
    td_method_t m;
    if (td_method_parse(value, &m) < 0)
        return td_admin_http_error(400, "method must be one of round_robin, sticky, failover");
    td_config_t *cfg = td_config_dup(td_control_config());
    if (!cfg)
        return td_admin_http_error(500, "out of memory");
    cfg->method = m;
    char refused[300];
    if (nobody_serves(cfg, refused, sizeof(refused))) {
        td_config_free(cfg);
        return td_admin_http_error(409, refused);
    }
    char what[64];
    snprintf(what, sizeof(what), "routing method %s", td_method_name(m));
    return apply(cfg, what, client);
}

static td_admin_reply_t put_config(td_str_t body, const char *client) {
    td_admin_reply_t bad;
    td_config_t *cfg = td_admin_config_body(body, &bad);
    if (!cfg)
        return bad;
    if (td_cluster_enabled()) {
        /* The rollout leader's fenced writes own the weights while a rollout runs. */
        if (td_rollout_active(NULL, 0))
            td_control_keep_rollout_weights(cfg, "config replaced through the API");
        return td_admin_cluster_change(cfg, "config replaced through the API", client, cur_target,
                                       1);
    }
    char err[512];
    int r = td_control_apply(cfg, "config replaced through the API", 1, client, err, sizeof(err));
    if (r < 0)
        return td_admin_http_error(r == TD_ECONFLICT ? 409 : 500, err);
    return json_reply(200, json_pack("{s:I,s:b}", "version", (json_int_t)td_control_version(),
                                     "persisted", td_control_persisted(NULL)));
}

/* The keys of td_control_pending_restart as a header line ("TD-Pending-Restart: listeners,
 * workers"), or NULL when nothing waits for a restart. Static: valid until the next call. */
static const char *pending_header(void) {
    static char line[160];
    json_t *pending = td_control_pending_restart(), *p;
    size_t i, n = (size_t)snprintf(line, sizeof(line), "TD-Pending-Restart: ");
    json_array_foreach(pending, i, p) {
        n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%s", i ? ", " : "",
                              json_string_value(json_object_get(p, "key")));
        if (n >= sizeof(line))
            break;
    }
    size_t count = json_array_size(pending);
    json_decref(pending);
    return count ? line : NULL;
}

/* A caller with the read-only token sees neither token (the full one would give it every
 * right; the read one it has). */
static void hide_tokens(json_t *doc) {
    json_t *admin = json_object_get(doc, "admin");
    json_object_del(admin, "token");
    json_object_del(admin, "read_token");
}

/* What runs: the running config with the listeners and workers bound at start and the admin
 * section that runs (the address bound at start and the token in force), which a reload or a
 * PUT does not change until a restart; the TD-Pending-Restart header names what is asked for
 * and waits. With ?source=file: the config file as td last read it. */
static td_admin_reply_t get_config(int source_file, int read_only) {
    char *text = NULL;
    if (source_file) {
        json_t *doc = td_control_file_json();
        if (doc && read_only) {
            json_t *copy = json_deep_copy(doc);
            json_decref(doc);
            doc = copy;
            hide_tokens(doc);
        }
        text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
        json_decref(doc);
        if (!text)
            return td_admin_http_error(500, "out of memory");
        td_admin_reply_t r = {200, "application/json", text, strlen(text), NULL, NULL};
        return r;
    }
    td_config_t *cfg = td_config_dup(td_control_config());
    if (cfg) {
        cfg->has_admin = 1;
        cfg->admin_address = bound_address;
        snprintf(cfg->admin_token, sizeof(cfg->admin_token), "%s", token_in_force);
        snprintf(cfg->admin_read_token, sizeof(cfg->admin_read_token), "%s", read_token_in_force);
        cfg->admin_tls = tls_bound; /* TLS on or off waits for a restart */
        text = td_config_to_json(cfg);
        td_config_free(cfg);
    }
    json_t *doc = text ? json_loads(text, 0, NULL) : NULL, *bound = td_control_bound_json();
    free(text);
    text = NULL;
    json_t *pending = td_control_pending_restart(), *p;
    size_t i;
    if (doc && bound) {
        /* Only what waits for a restart is shown as it runs: new certificates apply at once. */
        json_array_foreach(pending, i, p) {
            const char *key = json_string_value(json_object_get(p, "key"));
            if (json_object_get(bound, key))
                json_object_set(doc, key, json_object_get(bound, key));
        }
        if (read_only)
            hide_tokens(doc);
        text = json_dumps(doc, JSON_INDENT(2));
    }
    json_decref(pending);
    json_decref(doc);
    json_decref(bound);
    if (!text)
        return td_admin_http_error(500, "out of memory");
    td_admin_reply_t r = {200, "application/json", text, strlen(text), NULL, NULL};
    td_admin_http_reply_header(pending_header());
    return r;
}

/* DELETE /api/v1/overrides: the config file alone runs again. */
static td_admin_reply_t delete_overrides(const char *client) {
    if (td_cluster_enabled())
        return td_admin_http_error(409,
                                   "no overrides in cluster mode: the shared state is in etcd");
    char err[512];
    int r = td_control_reset(client, err, sizeof(err));
    if (r < 0)
        return td_admin_http_error(r == TD_EINVAL ? 409 : 500, err);
    return json_reply(200, td_control_overrides_json());
}

/* ---- routes */

static int path_is(td_str_t target, const char *path) {
    size_t n = strlen(path);
    size_t tl = target.len;
    const char *q = memchr(target.p, '?', target.len);
    if (q)
        tl = (size_t)(q - target.p);
    return tl == n && memcmp(target.p, path, n) == 0;
}

/* Whether the target's query is exactly `query` ("source=file"). */
static int query_is(td_str_t target, const char *query) {
    const char *q = memchr(target.p, '?', target.len);
    size_t n = strlen(query);
    return q && (size_t)(target.p + target.len - q - 1) == n && memcmp(q + 1, query, n) == 0;
}

/* When the target's path is `prefix` followed by a non-empty last segment, that segment in
 * *rest (the query left out) and 1; else 0. */
static int path_under(td_str_t target, const char *prefix, td_str_t *rest) {
    size_t n = strlen(prefix), tl = target.len;
    const char *q = memchr(target.p, '?', target.len);
    if (q)
        tl = (size_t)(q - target.p);
    if (tl <= n || memcmp(target.p, prefix, n) != 0 || memchr(target.p + n, '/', tl - n))
        return 0;
    rest->p = target.p + n;
    rest->len = tl - n;
    return 1;
}

static int method_is(td_str_t m, const char *s) {
    return m.len == strlen(s) && memcmp(m.p, s, m.len) == 0;
}

static td_admin_reply_t get_metrics(void) {
    size_t len = 0;
    char *text = td_metrics_text(&len);
    if (!text)
        return td_admin_http_error(500, "out of memory");
    td_admin_reply_t r = {200, "text/plain; version=0.0.4", text, len, NULL, NULL};
    return r;
}

/* GET /readyz: 200 {"ready": true} while td serves with a current state, else 503 with the
 * reason (starting, stopping), for DNS, keepalived or a load balancer's health check. */
static td_admin_reply_t get_readyz(void) {
    char why[600];
    if (td_ready_check(td_now_ms(), why, sizeof(why)))
        return json_reply(200, json_pack("{s:b}", "ready", 1));
    return json_reply(503, json_pack("{s:b,s:s}", "ready", 0, "reason", why));
}

/* A rollout answer of the leader, sent once the engine's writes are in etcd. */
typedef struct ro_reply_s {
    td_admin_deferred_t *d;
    int status;
    json_t *out; /* owned */
} ro_reply_t;

static void on_ro_written(void *arg, int result, const char *error) {
    ro_reply_t *p = arg;
    td_admin_reply_t r;
    if (result == 0) {
        r = json_reply(p->status, p->out);
    } else {
        json_decref(p->out);
        r = td_admin_http_error(result == TD_ECONFLICT ? 409 : 503, error);
    }
    td_admin_http_finish(p->d, r, NULL);
    free(p);
}

static td_admin_reply_t rollout_answer_written(int status, json_t *out) {
    ro_reply_t *p = calloc(1, sizeof(*p));
    td_admin_deferred_t *d = p ? td_admin_http_defer() : NULL;
    if (!d) {
        free(p);
        json_decref(out);
        return td_admin_http_error(500, "out of memory");
    }
    *p = (ro_reply_t){d, status, out};
    if (td_rollout_when_written(on_ro_written, p) < 0) {
        json_decref(out);
        free(p);
        td_admin_http_finish(d, td_admin_http_error(500, "out of memory"), NULL);
    }
    return td_admin_http_later();
}

/* POST /api/v1/rollout (`action` NULL) or /api/v1/rollout/ACTION; GET /api/v1/rollout. */
static td_admin_reply_t rollout_post(const char *action, td_str_t body, const char *client) {
    static const char *const names[] = {"pause", "resume", "promote", "abort"};
    json_t *j = NULL;
    td_admin_reply_t fail;
    if (body.len || !action) {
        j = parse_body(body, &fail);
        if (!j)
            return fail;
    }
    int status = 500;
    json_t *out = NULL;
    if (td_cluster_enabled() && !td_cluster_is_leader()) {
        /* The leader runs the rollout; any node drives it. */
        json_decref(j);
        char path[64];
        snprintf(path, sizeof(path), "/api/v1/rollout%s%s", action ? "/" : "",
                 action ? action : "");
        return td_admin_cluster_forward(path, body);
    }
    if (!action) {
        out = td_rollout_start(j, client, &status);
    } else {
        size_t a = 0;
        while (a < 4 && strcmp(names[a], action) != 0)
            a++;
        if (a == 4) {
            json_decref(j);
            return td_admin_http_error(404, "no such endpoint");
        }
        out = td_rollout_act((td_rollout_action_t)a, j, client, &status);
    }
    json_decref(j);
    if (td_cluster_enabled() && status >= 200 && status < 300)
        return rollout_answer_written(status, out);
    return json_reply(status, out);
}

static td_admin_reply_t rollout_get(void) {
    json_t *j = td_rollout_json();
    return j ? json_reply(200, j) : td_admin_http_error(404, "no rollout yet");
}

/* The admin server's handler: the console page and /readyz, then (with the token) the API. */
static td_admin_reply_t route(const td_admin_request_t *rq) {
    const td_http1_request_t *req = rq->head;
    td_str_t t = req->target, m = req->method, body = rq->body;
    if (path_is(t, "/readyz")) /* no token: a load balancer's probe has none */
        return method_is(m, "GET") || method_is(m, "HEAD") ? get_readyz()
                                                           : not_allowed("GET, HEAD");
    if (path_is(t, "/") || path_is(t, "/index.html")) {
        if (!method_is(m, "GET") && !method_is(m, "HEAD"))
            return not_allowed("GET, HEAD");
        td_admin_reply_t r = {
            200, "text/html; charset=utf-8", strdup(td_console_html), 0, NULL, td_console_csp()};
        r.len = strlen(r.body);
        return r;
    }
    if (!rq->authorized)
        return td_admin_http_error(401,
                                   "missing or wrong bearer token (Authorization: Bearer TOKEN)");
    int get = method_is(m, "GET") || method_is(m, "HEAD"), put = method_is(m, "PUT");
    if (rq->read_only && !get)
        return td_admin_http_error(403,
                                   "the read-only token cannot change anything (admin.read_token)");
    int del = method_is(m, "DELETE");
    cur_target = t;
    if (path_is(t, "/api/v1/cluster"))
        return !get                   ? not_allowed("GET, HEAD")
               : td_cluster_enabled() ? td_cluster_view_reply()
                                      : td_admin_http_error(404, "not in cluster mode: the config "
                                                                 "has no \"cluster\"");
    if (path_is(t, "/api/v1/cluster/init") || path_is(t, "/api/v1/cluster/sticky-key")) {
        if (!method_is(m, "POST"))
            return not_allowed("POST");
        if (!td_cluster_enabled())
            return td_admin_http_error(404, "not in cluster mode: the config has no \"cluster\"");
        return path_is(t, "/api/v1/cluster/init") ? td_admin_cluster_init(body, rq->client)
                                                  : td_admin_cluster_sticky_key(rq->client, t);
    }
    if (path_is(t, "/api/v1/state"))
        return get ? json_reply(200, state_json()) : not_allowed("GET, HEAD");
    if (path_is(t, "/api/v1/ratio"))
        return put ? put_ratio(body, rq->client) : not_allowed("PUT");
    if (path_is(t, "/api/v1/routing"))
        return put ? put_routing(body, rq->client) : not_allowed("PUT");
    td_str_t name;
    if (path_under(t, "/api/v1/backends/", &name))
        return get   ? get_backend(name)
               : put ? put_backend(name, body, rq->client)
                     : not_allowed("GET, HEAD, PUT");
    if (path_is(t, "/api/v1/config"))
        return get   ? get_config(query_is(t, "source=file"), rq->read_only)
               : put ? put_config(body, rq->client)
                     : not_allowed("GET, HEAD, PUT");
    if (path_is(t, "/api/v1/overrides"))
        return get   ? json_reply(200, td_control_overrides_json())
               : del ? delete_overrides(rq->client)
                     : not_allowed("GET, HEAD, DELETE");
    if (path_is(t, "/api/v1/events"))
        return get ? json_reply(200, td_events_json()) : not_allowed("GET, HEAD");
    if (path_is(t, "/api/v1/history"))
        return !get                   ? not_allowed("GET, HEAD")
               : td_cluster_enabled() ? td_admin_cluster_history()
                                      : json_reply(200, td_audit_json());
    if (path_is(t, "/api/v1/rollout"))
        return get                    ? rollout_get()
               : method_is(m, "POST") ? rollout_post(NULL, body, rq->client)
                                      : not_allowed("GET, HEAD, POST");
    td_str_t action;
    if (path_under(t, "/api/v1/rollout/", &action)) {
        char a[16];
        snprintf(a, sizeof(a), "%.*s", action.len < 15 ? (int)action.len : 15, action.p);
        return method_is(m, "POST") ? rollout_post(a, body, rq->client) : not_allowed("POST");
    }
    if (path_is(t, "/metrics"))
        return get ? get_metrics() : not_allowed("GET, HEAD");
    if (path_is(t, "/api/v1/counters")) /* a rollout leader sums these across the nodes */
        return get ? json_reply(200, td_rollout_cluster_counters_json()) : not_allowed("GET, HEAD");
    return td_admin_http_error(404, "no such endpoint");
}

int td_admin_start(uv_loop_t *loop, const td_addr_t *address, const char *token, char *err,
                   size_t errlen) {
    bound_address = *address;
    snprintf(token_in_force, sizeof(token_in_force), "%s", token ? token : "");
    const td_config_t *cfg = td_control_config();
    td_admin_update_read_token(cfg && cfg->has_admin ? cfg->admin_read_token : "");
    if (cfg && cfg->has_admin && cfg->admin_tls.tls) {
        char why[400];
        td_tls_server_t *tls = td_tls_server_new(&cfg->admin_tls, why, sizeof(why));
        if (!tls) {
            snprintf(err, errlen, "admin.tls: %s", why);
            return TD_EINVAL;
        }
        td_admin_http_set_tls(tls);
        td_tls_server_release(tls);
        tls_in_force = 1;
        tls_bound = cfg->admin_tls;
    }
    td_admin_http_open_path("/readyz"); /* probes send their own Host: it tells nothing */
    return td_admin_http_listen(loop, address, token, route, err, errlen);
}

int td_admin_update_token(const char *token) {
    if (token && token[0])
        snprintf(token_in_force, sizeof(token_in_force), "%s", token);
    return td_admin_http_set_token(token);
}

int td_admin_update_tls(const td_config_t *cfg, char *err, size_t errlen) {
    int want = cfg->has_admin && cfg->admin_tls.tls;
    if (want != tls_in_force)
        return 1;
    if (!want)
        return 0;
    td_tls_server_t *tls = td_tls_server_new(&cfg->admin_tls, err, errlen);
    if (!tls)
        return TD_EINVAL;
    td_admin_http_set_tls(tls);
    td_tls_server_release(tls);
    tls_bound = cfg->admin_tls;
    return 0;
}

int td_admin_update_read_token(const char *token) {
    if (token && token[0])
        snprintf(read_token_in_force, sizeof(read_token_in_force), "%s", token);
    return td_admin_http_set_read_token(token);
}

void td_admin_stop(void) {
    td_admin_http_stop();
}

void td_admin_hand_off(void) {
    td_admin_http_hand_off();
}
