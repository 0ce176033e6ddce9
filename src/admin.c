/* The admin API: a small HTTP/1.1 server (td's own parser) answering JSON. Every request is
 * handled whole: head and body (Content-Length, at most 1 MiB) are read, then answered. */
#include "td/admin.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/config.h"
#include "td/control.h"
#include "td/events.h"
#include "td/health.h"
#include "td/http1.h"
#include "td/rewrite.h"
#include "td/log.h"
#include "td/proxy.h"
#include "td/router.h"

#define ADMIN_MAX_BODY (1024 * 1024)
#define ADMIN_MAX_HDRS 64
#define ADMIN_TIMEOUT_MS 10000 /* idle or half-sent request: the connection is closed */
#define ADMIN_MAX_CONNS 256

typedef struct admin_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer; /* a request must arrive whole within ADMIN_TIMEOUT_MS of its first byte */
    int handles;      /* handles still to close */
    uv_write_t wreq;
    char *buf; /* owned */
    size_t len, cap;
    char *out; /* owned: the response being written */
    int keep_alive;
    int closing;
    int lingering; /* answered and shut down for writing: the rest of the input is discarded */
    uv_shutdown_t sreq;
    char ip[64];
    char local_ip[64]; /* the address the client reached, as a Host names it ("[::1]" for IPv6) */
    struct admin_conn_s *next;
} admin_conn_t;

typedef struct reply_s {
    int status;
    const char *type;
    char *body; /* owned */
    size_t len;
    const char *allow; /* the Allow header of a 405 */
    int page;          /* the console page: sent with its CSP and framing headers */
} reply_t;

static uv_tcp_t server;
static int server_open;
static admin_conn_t *conns;
/* The token in force: set at start, replaced by a reload that sets another one, but never
 * cleared by one (td_admin_update_token): removing protection takes a restart. */
static char bound_token[256];
static char bound_host[64]; /* admin.address without its port, as written ("[::1]" for IPv6) */
static int bound_port;

extern const char td_console_html[];

static int num_conns;

static void conn_free_cb(uv_handle_t *h) {
    admin_conn_t *c = h->data;
    if (--c->handles)
        return;
    num_conns--;
    for (admin_conn_t **pp = &conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    free(c->buf);
    free(c->out);
    free(c);
}

static void conn_close(admin_conn_t *c) {
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->timer, conn_free_cb);
    uv_close((uv_handle_t *)&c->tcp, conn_free_cb);
}

/* ---- replies */

static reply_t json_reply(int status, json_t *j) {
    reply_t r = {status, "application/json", json_dumps(j, JSON_INDENT(2)), 0, NULL, 0};
    json_decref(j);
    if (!r.body) {
        r.status = 500;
        r.body = strdup("{\"error\": \"out of memory\"}");
    }
    r.len = strlen(r.body);
    r.body = realloc(r.body, r.len + 2);
    r.body[r.len++] = '\n';
    return r;
}

static reply_t error_reply(int status, const char *msg) {
    return json_reply(status, json_pack("{s:s}", "error", msg));
}

/* 405 with the methods the resource takes (RFC 9110 §15.5.6: Allow is required). */
static reply_t not_allowed(const char *allow) {
    char msg[64];
    snprintf(msg, sizeof(msg), "use %s", allow);
    reply_t r = error_reply(405, msg);
    r.allow = allow;
    return r;
}

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
        snprintf(out, n, "no backend has a server up: every request gets 503");
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

static json_t *state_json(void) {
    td_snapshot_t *s = td_router_acquire();
    int64_t now = td_now_ms();
    double share[TD_CONFIG_MAX_BACKENDS];
    int serving = td_router_shares(s, now, share);
    size_t order[TD_CONFIG_MAX_BACKENDS];
    td_router_failover_order(s, order);
    int64_t last_5xx = atomic_load(&td_registry_local()->last_5xx_ms);
    json_t *backends = json_array();
    for (size_t i = 0; i < s->num_backends; i++) {
        td_snap_backend_t *b = &s->backends[i];
        json_t *servers = json_array();
        int64_t conns_open = 0;
        for (size_t j = 0; j < b->num_servers; j++) {
            td_server_stats_t *st = b->servers[j].st;
            conns_open += atomic_load(&st->active_connections);
            int up = td_server_is_up(st, now);
            json_array_append_new(
                servers,
                json_pack("{s:s,s:i,s:b,s:s,s:I,s:I,s:I,s:I,s:o}", "address", st->address,
                          "weight", b->servers[j].weight, "up", up, "health",
                          !atomic_load(&st->health_up) ? "down"
                          : up                         ? "up"
                                                       : "ejected",
                          "in_flight", (json_int_t)atomic_load(&st->in_flight),
                          "active_connections", (json_int_t)atomic_load(&st->active_connections),
                          "requests", (json_int_t)atomic_load(&st->requests), "failures",
                          (json_int_t)atomic_load(&st->failures), "responses",
                          class_counts(st->responses)));
            const char *last = td_health_last(st);
            if (last[0])
                json_object_set_new(json_array_get(servers, j), "last_check", json_string(last));
        }
        int64_t in_flight = atomic_load(&b->st->in_flight), tunnels = atomic_load(&b->st->tunnels);
        int draining = td_backend_draining(s, b);
        json_t *jb =
            json_pack("{s:s,s:i,s:b,s:I,s:I,s:I,s:I,s:o,s:I,s:b,s:b,s:o}", "name", b->name,
                      "weight", b->weight, "up", td_backend_is_up(b, now), "in_flight",
                      (json_int_t)in_flight, "tunnels", (json_int_t)tunnels, "active_connections",
                      (json_int_t)conns_open, "requests", (json_int_t)atomic_load(&b->st->requests),
                      "responses", class_counts(b->st->responses), "sticky_requests_10s",
                      (json_int_t)td_router_pins_recent(b->st, now), "draining", draining,
                      "drained", draining && in_flight == 0 && tunnels == 0, "servers", servers);
        json_object_set_new(jb, "latency_ms", latency_json(b->st));
        int64_t since = atomic_load(&b->st->drain_since_ms);
        json_object_set_new(jb, "drain_elapsed_ms",
                            draining && since ? json_integer(now - since) : json_null());
        /* What it gets now (percent of new requests), computed once here for every client. */
        json_object_set_new(jb, "share", json_real((double)(int)(share[i] * 1000 + 0.5) / 10));
        json_object_set_new(jb, "serving", json_boolean(share[i] > 0));
        if (s->method == TD_METHOD_FAILOVER)
            json_object_set_new(jb, "role", json_string(i == order[0] ? "primary" : "backup"));
        json_object_set_new(jb, "local_responses", local_counts(b->st->local));
        int64_t b5 = atomic_load(&b->st->last_5xx_ms);
        json_object_set_new(jb, "last_5xx_ago_ms", ago(b5, now));
        if (b5 > last_5xx)
            last_5xx = b5;
        json_array_append_new(backends, jb);
    }
    json_t *j = json_pack("{s:I,s:s,s:I,s:I,s:o}", "version", (json_int_t)s->version, "method",
                          td_method_name(s->method), "uptime_s",
                          (json_int_t)((td_wall_ms() - td_control_started_ms()) / 1000),
                          "client_connections", (json_int_t)td_proxy_connections(), "backends",
                          backends);
    json_t *bounds = json_array();
    for (int i = 0; i < TD_LAT_BUCKETS - 1; i++)
        json_array_append_new(bounds, json_integer(td_lat_bounds_ms[i]));
    json_object_set_new(j, "latency_bounds_ms", bounds);
    if (s->method == TD_METHOD_FAILOVER) {
        char why[300];
        failover_reason(s, order[0], serving, now, why, sizeof(why));
        json_object_set_new(j, "serving",
                            serving >= 0 ? json_string(s->backends[serving].name) : json_null());
        json_object_set_new(j, "serving_reason", json_string(why));
        json_object_set_new(j, "primary", json_string(s->backends[order[0]].name));
    }
    td_local_stats_t *own = td_registry_local();
    json_object_set_new(j, "td",
                        json_pack("{s:o,s:o}", "local_responses", local_counts(own->local),
                                  "last_5xx_ago_ms", ago(atomic_load(&own->last_5xx_ms), now)));
    json_object_set_new(j, "last_5xx_ago_ms", ago(last_5xx, now));
    td_snapshot_release(s);
    return j;
}

/* Applies `cfg` and answers with the new state, or the reason it was refused. */
static const char *current_client = "";

static reply_t apply(td_config_t *cfg, const char *what) {
    char err[512];
    int r = td_control_apply(cfg, what, 1, current_client, err, sizeof(err));
    if (r < 0)
        return error_reply(r == TD_ECONFLICT ? 409 : 500, err);
    return json_reply(200, state_json());
}

static json_t *parse_body(td_str_t body, reply_t *fail) {
    json_error_t e;
    json_t *j = json_loadb(body.p, body.len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        char msg[300];
        snprintf(msg, sizeof(msg), "request body:%d:%d: %s", e.line < 1 ? 1 : e.line,
                 e.column < 1 ? 1 : e.column, e.text);
        *fail = error_reply(400, msg);
    } else if (!json_is_object(j)) {
        json_decref(j);
        j = NULL;
        *fail = error_reply(400, "request body must be a JSON object");
    }
    return j;
}

/* PUT /api/v1/ratio {"blue": 0, "green": 100}: every key an existing backend, every value an
 * integer 0..100; all checked before anything changes. */
static reply_t put_ratio(td_str_t body) {
    reply_t fail;
    json_t *j = parse_body(body, &fail);
    if (!j)
        return fail;
    if (json_object_size(j) == 0) {
        json_decref(j);
        return error_reply(400, "give at least one backend weight, e.g. {\"blue\": 0, \"green\": 100}");
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
    size_t weighted = 0;
    for (size_t i = 0; i < cfg->num_backends; i++)
        weighted += cfg->backends[i].weight > 0;
    if (!msg[0] && !weighted)
        snprintf(msg, sizeof(msg),
                 "refused: every backend would have weight 0, so every request would get 503; "
                 "keep at least one weight above 0 (failover takes 100/0: a primary and a "
                 "backup)");
    if (msg[0]) {
        td_config_free(cfg);
        return error_reply(400, msg);
    }
    char what[256] = "ratio";
    size_t n = strlen(what);
    for (size_t i = 0; i < cfg->num_backends && n < sizeof(what) - 1; i++)
        n += (size_t)snprintf(what + n, sizeof(what) - n, " %s=%d", cfg->backends[i].name,
                              cfg->backends[i].weight);
    return apply(cfg, what);
}

static reply_t put_routing(td_str_t body) {
    reply_t fail;
    json_t *j = parse_body(body, &fail);
    if (!j)
        return fail;
    const char *key;
    json_t *v;
    td_method_t m = 0;
    int have = 0;
    char msg[300] = "";
    json_object_foreach(j, key, v) {
        if (strcmp(key, "method") != 0) {
            snprintf(msg, sizeof(msg), "unknown key \"%s\" (valid: method)", key);
            break;
        }
        if (!json_is_string(v) || td_method_parse(json_string_value(v), &m) < 0) {
            snprintf(msg, sizeof(msg), "method must be one of round_robin, sticky, failover");
            break;
        }
        have = 1;
    }
    json_decref(j);
    if (!msg[0] && !have)
        snprintf(msg, sizeof(msg), "give the method, e.g. {\"method\": \"sticky\"}");
    if (msg[0])
        return error_reply(400, msg);
    td_config_t *cfg = td_config_dup(td_control_config());
    cfg->method = m;
    char what[64];
    snprintf(what, sizeof(what), "routing method %s", td_method_name(m));
    return apply(cfg, what);
}

static reply_t put_config(td_str_t body) {
    char *errs = NULL;
    size_t elen = 0;
    FILE *ef = open_memstream(&errs, &elen);
    td_config_t *cfg = td_config_parse(body.p, body.len, "request", ef);
    fclose(ef);
    if (!cfg) {
        while (elen && errs[elen - 1] == '\n')
            errs[--elen] = 0;
        reply_t r = error_reply(400, errs);
        free(errs);
        return r;
    }
    free(errs);
    char err[512];
    int r = td_control_apply(cfg, "config replaced through the API", 1, current_client, err,
                             sizeof(err));
    if (r < 0)
        return error_reply(r == TD_ECONFLICT ? 409 : 500, err);
    return json_reply(200, json_pack("{s:I}", "version", (json_int_t)td_control_version()));
}

static reply_t get_config(void) {
    char *text = td_config_to_json(td_control_config());
    if (!text)
        return error_reply(500, "out of memory");
    reply_t r = {200, "application/json", text, strlen(text), NULL, 0};
    return r;
}

/* ---- /metrics (Prometheus text format 0.0.4) */

typedef long long backend_value_fn(const td_snap_backend_t *b, int64_t now);
typedef long long server_value_fn(const td_snap_server_t *sv, int64_t now);

static long long b_weight(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return b->weight;
}
static long long b_up(const td_snap_backend_t *b, int64_t now) {
    return td_backend_is_up(b, now);
}
static long long b_requests(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return (long long)atomic_load(&b->st->requests);
}
static long long b_in_flight(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return (long long)atomic_load(&b->st->in_flight);
}
static long long b_tunnels(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return (long long)atomic_load(&b->st->tunnels);
}
static long long s_weight(const td_snap_server_t *sv, int64_t now) {
    (void)now;
    return sv->weight;
}
static long long s_up(const td_snap_server_t *sv, int64_t now) {
    return td_server_is_up(sv->st, now);
}
static long long s_requests(const td_snap_server_t *sv, int64_t now) {
    (void)now;
    return (long long)atomic_load(&sv->st->requests);
}
static long long s_failures(const td_snap_server_t *sv, int64_t now) {
    (void)now;
    return (long long)atomic_load(&sv->st->failures);
}
static long long s_connections(const td_snap_server_t *sv, int64_t now) {
    (void)now;
    return (long long)atomic_load(&sv->st->active_connections);
}
static long long s_in_flight(const td_snap_server_t *sv, int64_t now) {
    (void)now;
    return (long long)atomic_load(&sv->st->in_flight);
}

static void family(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void backend_family(FILE *f, const td_snapshot_t *s, int64_t now, const char *name,
                           const char *type, const char *help, backend_value_fn *get) {
    family(f, name, type, help);
    for (size_t i = 0; i < s->num_backends; i++)
        fprintf(f, "%s{backend=\"%s\"} %lld\n", name, s->backends[i].name,
                get(&s->backends[i], now));
}

static void server_family(FILE *f, const td_snapshot_t *s, int64_t now, const char *name,
                          const char *type, const char *help, server_value_fn *get) {
    family(f, name, type, help);
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++) {
            const td_snap_server_t *sv = &s->backends[i].servers[j];
            fprintf(f, "%s{backend=\"%s\",server=\"%s\"} %lld\n", name, sv->st->backend,
                    sv->st->address, get(sv, now));
        }
}

static const char *const classes[TD_NCLASS] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

static void responses_family(FILE *f, const td_snapshot_t *s) {
    family(f, "td_backend_responses_total", "counter", "Responses by status class.");
    for (size_t i = 0; i < s->num_backends; i++)
        for (int k = 0; k < TD_NCLASS; k++)
            fprintf(f, "td_backend_responses_total{backend=\"%s\",class=\"%s\"} %llu\n",
                    s->backends[i].name, classes[k],
                    (unsigned long long)atomic_load(&s->backends[i].st->responses[k]));
    family(f, "td_server_responses_total", "counter", "Responses from the server by status class.");
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++) {
            td_server_stats_t *st = s->backends[i].servers[j].st;
            for (int k = 0; k < TD_NCLASS; k++)
                fprintf(f,
                        "td_server_responses_total{backend=\"%s\",server=\"%s\",class=\"%s\"} "
                        "%llu\n",
                        st->backend, st->address, classes[k],
                        (unsigned long long)atomic_load(&st->responses[k]));
        }
}

/* td's own 502/503/504, by the backend they were for ("" when none was chosen). */
static void local_family(FILE *f, const td_snapshot_t *s) {
    static const char *const codes[TD_NLOCAL] = {"502", "503", "504"};
    family(f, "td_local_responses_total", "counter",
           "Error responses td answered itself, by the backend the request was for (\"\" when "
           "none was chosen) and status code.");
    td_local_stats_t *own = td_registry_local();
    for (int k = 0; k < TD_NLOCAL; k++)
        fprintf(f, "td_local_responses_total{backend=\"\",code=\"%s\"} %llu\n", codes[k],
                (unsigned long long)atomic_load(&own->local[k]));
    for (size_t i = 0; i < s->num_backends; i++)
        for (int k = 0; k < TD_NLOCAL; k++)
            fprintf(f, "td_local_responses_total{backend=\"%s\",code=\"%s\"} %llu\n",
                    s->backends[i].name, codes[k],
                    (unsigned long long)atomic_load(&s->backends[i].st->local[k]));
}

static void duration_family(FILE *f, const td_snapshot_t *s) {
    family(f, "td_request_duration_seconds", "histogram",
           "Time from the request head to the end of the response.");
    for (size_t i = 0; i < s->num_backends; i++) {
        td_backend_stats_t *b = s->backends[i].st;
        unsigned long long cum = 0;
        for (int k = 0; k < TD_LAT_BUCKETS; k++) {
            char le[32];
            cum += atomic_load(&b->latency[k]);
            if (k < TD_LAT_BUCKETS - 1)
                snprintf(le, sizeof(le), "%g", td_lat_bounds_ms[k] / 1000.0);
            else
                snprintf(le, sizeof(le), "+Inf");
            fprintf(f, "td_request_duration_seconds_bucket{backend=\"%s\",le=\"%s\"} %llu\n",
                    b->name, le, cum);
        }
        fprintf(f, "td_request_duration_seconds_sum{backend=\"%s\"} %g\n", b->name,
                (double)atomic_load(&b->latency_sum_ms) / 1000.0);
        fprintf(f, "td_request_duration_seconds_count{backend=\"%s\"} %llu\n", b->name, cum);
    }
}

static reply_t get_metrics(void) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    td_snapshot_t *s = td_router_acquire();
    int64_t now = td_now_ms();
    backend_family(f, s, now, "td_backend_weight", "gauge", "Configured weight of the backend.",
                   b_weight);
    backend_family(f, s, now, "td_backend_up", "gauge", "1 when any server of the backend is up.",
                   b_up);
    backend_family(f, s, now, "td_backend_requests_total", "counter",
                   "Requests the backend answered (or td answered for it), counted as the "
                   "response starts.",
                   b_requests);
    backend_family(f, s, now, "td_backend_in_flight", "gauge", "Requests in flight.",
                   b_in_flight);
    backend_family(f, s, now, "td_backend_tunnels", "gauge",
                   "Open WebSocket and other upgraded tunnels.", b_tunnels);
    responses_family(f, s);
    local_family(f, s);
    double share[TD_CONFIG_MAX_BACKENDS];
    td_router_shares(s, now, share);
    family(f, "td_backend_traffic_share", "gauge",
           "Share of new requests the backend gets now (0..1): its weight among the backends "
           "up, or in failover 1 for the serving backend.");
    for (size_t i = 0; i < s->num_backends; i++)
        fprintf(f, "td_backend_traffic_share{backend=\"%s\"} %g\n", s->backends[i].name, share[i]);
    duration_family(f, s);
    server_family(f, s, now, "td_server_weight", "gauge", "Weight of the server in its backend.",
                  s_weight);
    server_family(f, s, now, "td_server_up", "gauge", "1 when the server may receive requests.",
                  s_up);
    server_family(f, s, now, "td_server_requests_total", "counter",
                  "Requests sent to the server.", s_requests);
    server_family(f, s, now, "td_server_failures_total", "counter",
                  "Connect errors, resets, timeouts and 5xx answers of the server.", s_failures);
    server_family(f, s, now, "td_server_active_connections", "gauge",
                  "Open upstream connections to the server.", s_connections);
    server_family(f, s, now, "td_server_in_flight", "gauge", "Requests in flight to the server.",
                  s_in_flight);
    family(f, "td_client_connections", "gauge", "Open client connections.");
    fprintf(f, "td_client_connections %lld\n", (long long)td_proxy_connections());
    family(f, "td_uptime_seconds", "gauge", "Seconds since td started.");
    fprintf(f, "td_uptime_seconds %lld\n",
            (long long)((td_wall_ms() - td_control_started_ms()) / 1000));
    td_snapshot_release(s);
    fclose(f);
    reply_t r = {200, "text/plain; version=0.0.4", text, len, NULL, 0};
    return r;
}

static int path_is(td_str_t target, const char *path) {
    size_t n = strlen(path);
    size_t tl = target.len;
    const char *q = memchr(target.p, '?', target.len);
    if (q)
        tl = (size_t)(q - target.p);
    return tl == n && memcmp(target.p, path, n) == 0;
}

static int authorized(const td_http1_request_t *req) {
    if (!bound_token[0])
        return 1;
    size_t tl = strlen(bound_token);
    for (size_t i = 0; i < req->num_headers; i++) {
        if (!td_http1_name_is(req->headers[i].name, "authorization"))
            continue;
        td_str_t v = req->headers[i].value;
        if (v.len != 7 + tl || strncasecmp(v.p, "Bearer ", 7) != 0)
            return 0;
        unsigned diff = 0;
        for (size_t k = 0; k < tl; k++)
            diff |= (unsigned)(v.p[7 + k] ^ bound_token[k]);
        return diff == 0;
    }
    return 0;
}

/* Splits "host[:port]" (an IPv6 host keeps its brackets); a missing port is `default_port`.
 * Returns 0, or -1 when the port is not a number 1..65535. */
static int split_host(td_str_t v, td_str_t *host, int default_port, int *port) {
    *host = v;
    *port = default_port;
    if (!v.len)
        return 0;
    const char *end = v.p + v.len, *close = v.p[0] == '[' ? memchr(v.p, ']', v.len) : NULL;
    const char *colon = memrchr(close ? close : v.p, ':', (size_t)(end - (close ? close : v.p)));
    *host = (td_str_t){v.p, colon ? (size_t)(colon - v.p) : v.len};
    *port = default_port;
    if (!colon)
        return 0;
    long n = 0;
    for (const char *p = colon + 1; p < end; p++) {
        if (*p < '0' || *p > '9' || (n = n * 10 + (*p - '0')) > 65535)
            return -1;
    }
    if (colon + 1 == end || n == 0)
        return -1;
    *port = (int)n;
    return 0;
}

static int host_is(td_str_t h, const char *name) {
    return h.len == strlen(name) && strncasecmp(h.p, name, h.len) == 0;
}

/* Without a token, anyone who can make a browser send a request here controls td: a page on
 * attacker.example whose name re-resolves to 127.0.0.1 (DNS rebinding) sends Host:
 * attacker.example, and any page can send a cross-origin "simple" PUT (text/plain, no
 * preflight). So the Host must name this admin address (as bound, the address the client
 * reached, or a loopback name with the bound port) and an Origin, when sent, must be that same
 * host and port. Browsers always send Host, so a request without one (HTTP/1.0) is not from a
 * page. Returns NULL when the request may go on, else the refusal (status in *status). */
static const char *foreign_request(const admin_conn_t *c, const td_http1_request_t *req,
                                   int *status) {
    td_str_t origin = {NULL, 0}, host_field = {NULL, 0};
    for (size_t i = 0; i < req->num_headers; i++) {
        if (td_http1_name_is(req->headers[i].name, "origin"))
            origin = req->headers[i].value;
        else if (td_http1_name_is(req->headers[i].name, "host"))
            host_field = req->headers[i].value;
    }
    if (!host_field.p && !origin.p)
        return NULL;
    td_str_t host;
    int port;
    *status = 421;
    if (split_host(host_field, &host, 80, &port) < 0 || port != bound_port ||
        !(host_is(host, "localhost") || host_is(host, "127.0.0.1") || host_is(host, "[::1]") ||
          host_is(host, bound_host) || host_is(host, c->local_ip)))
        return "the Host header does not name this admin address (use 127.0.0.1 or localhost "
               "with its port, or set admin.token to use other names)";
    if (!origin.p)
        return NULL;
    *status = 403;
    td_str_t ohost;
    int oport, https = origin.len > 8 && strncasecmp(origin.p, "https://", 8) == 0;
    int http = origin.len > 7 && strncasecmp(origin.p, "http://", 7) == 0;
    if (!http && !https)
        return "cross-origin request refused (Origin is not this admin address)";
    td_str_t rest = {origin.p + (https ? 8 : 7), origin.len - (https ? 8u : 7u)};
    if (split_host(rest, &ohost, https ? 443 : 80, &oport) < 0 || oport != port ||
        ohost.len != host.len || strncasecmp(ohost.p, host.p, host.len) != 0)
        return "cross-origin request refused (Origin is not this admin address)";
    return NULL;
}

static int method_is(td_str_t m, const char *s) {
    return m.len == strlen(s) && memcmp(m.p, s, m.len) == 0;
}

/* Adds the base64 SHA-256 of every element <tag>...</tag> in the page to the CSP source list. */
static size_t add_hashes(char *out, size_t cap, size_t n, const char *tag) {
    char open[16], close[16];
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    for (const char *p = td_console_html; (p = strstr(p, open)) != NULL;) {
        p += strlen(open);
        const char *e = strstr(p, close);
        if (!e)
            break;
        unsigned char md[32];
        unsigned char b64[48];
        if (!EVP_Digest(p, (size_t)(e - p), md, NULL, EVP_sha256(), NULL))
            break;
        EVP_EncodeBlock(b64, md, sizeof(md));
        if (n < cap)
            n += (size_t)snprintf(out + n, cap - n, " 'sha256-%s'", b64);
        p = e;
    }
    return n;
}

/* The console's Content-Security-Policy: only its own inline script and style (by their
 * SHA-256, computed from the embedded page once, so an edited page needs no edited policy),
 * fetches to this origin, no framing (clickjacking), no plugins, forms or base changes. */
static const char *console_csp(void) {
    static char csp[1024];
    if (csp[0])
        return csp;
    size_t n = (size_t)snprintf(csp, sizeof(csp), "default-src 'none'; script-src");
    n = add_hashes(csp, sizeof(csp), n, "script");
    n += (size_t)snprintf(csp + n, sizeof(csp) - n, "; style-src");
    n = add_hashes(csp, sizeof(csp), n, "style");
    snprintf(csp + n, sizeof(csp) - n,
             "; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'");
    return csp;
}

static reply_t route(const admin_conn_t *c, const td_http1_request_t *req, td_str_t body) {
    td_str_t t = req->target, m = req->method;
    if (!bound_token[0]) {
        int status;
        const char *why = foreign_request(c, req, &status);
        if (why)
            return error_reply(status, why);
    }
    if (path_is(t, "/") || path_is(t, "/index.html")) {
        if (!method_is(m, "GET") && !method_is(m, "HEAD"))
            return not_allowed("GET, HEAD");
        reply_t r = {200, "text/html; charset=utf-8", strdup(td_console_html), 0, NULL, 0};
        r.len = strlen(r.body);
        r.page = 1;
        return r;
    }
    if (!authorized(req))
        return error_reply(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)");
    int get = method_is(m, "GET") || method_is(m, "HEAD"), put = method_is(m, "PUT");
    if (path_is(t, "/api/v1/state"))
        return get ? json_reply(200, state_json()) : not_allowed("GET, HEAD");
    if (path_is(t, "/api/v1/ratio"))
        return put ? put_ratio(body) : not_allowed("PUT");
    if (path_is(t, "/api/v1/routing"))
        return put ? put_routing(body) : not_allowed("PUT");
    if (path_is(t, "/api/v1/config"))
        return get ? get_config() : put ? put_config(body) : not_allowed("GET, HEAD, PUT");
    if (path_is(t, "/api/v1/events"))
        return get ? json_reply(200, td_events_json()) : not_allowed("GET, HEAD");
    if (path_is(t, "/api/v1/history"))
        return get ? json_reply(200, td_audit_json()) : not_allowed("GET, HEAD");
    if (path_is(t, "/metrics"))
        return get ? get_metrics() : not_allowed("GET, HEAD");
    return error_reply(404, "no such endpoint");
}

/* ---- connections */

static void resume(admin_conn_t *c);
static void timeout_cb(uv_timer_t *t);

/* Lingering close (nginx's lingering_close): after an answer that ends the connection while the
 * client may still be sending (a 413 before its body), td shuts down its write side and reads and
 * drops what comes until the client closes or ADMIN_TIMEOUT_MS pass. Closing at once with unread
 * bytes would send a reset, and the client would lose the answer it had not read yet. */
static void linger_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    admin_conn_t *c = h->data;
    *out = uv_buf_init(c->buf, (unsigned)c->cap);
}

static void linger_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    if (nread < 0)
        conn_close(s->data);
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
    (void)status;
    admin_conn_t *c = req->data;
    if (c->closing)
        return;
    if (!c->buf || !c->cap ||
        uv_read_start((uv_stream_t *)&c->tcp, linger_alloc_cb, linger_read_cb) < 0)
        conn_close(c);
}

static void linger(admin_conn_t *c) {
    c->lingering = 1;
    c->len = 0;
    uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    c->sreq.data = c;
    if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, shutdown_cb) < 0)
        conn_close(c);
}

static void write_cb(uv_write_t *w, int status) {
    admin_conn_t *c = w->data;
    free(c->out);
    c->out = NULL;
    if (c->closing)
        return;
    if (status >= 0 && c->lingering) {
        linger(c);
        return;
    }
    if (status < 0 || !c->keep_alive) {
        conn_close(c);
        return;
    }
    resume(c);
}

static void send_reply(admin_conn_t *c, reply_t r, int head_only) {
    const char *reason = td_http_reason(r.status);
    char head[2048];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                      "Connection: %s\r\n%s%s%s%s%s%s%s\r\n",
                      r.status, reason, r.type, r.len, c->keep_alive ? "keep-alive" : "close",
                      r.status == 401 ? "WWW-Authenticate: Bearer\r\n" : "",
                      r.allow ? "Allow: " : "", r.allow ? r.allow : "", r.allow ? "\r\n" : "",
                      r.page ? "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n"
                               "Content-Security-Policy: "
                             : "",
                      r.page ? console_csp() : "", r.page ? "\r\n" : "");
    size_t blen = head_only ? 0 : r.len;
    c->out = malloc((size_t)hl + blen);
    memcpy(c->out, head, (size_t)hl);
    if (blen)
        memcpy(c->out + hl, r.body, blen);
    free(r.body);
    uv_buf_t buf = uv_buf_init(c->out, (unsigned)((size_t)hl + blen));
    c->wreq.data = c;
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) < 0)
        conn_close(c);
}

/* Handles every complete request in the buffer, one at a time. */
static void process(admin_conn_t *c) {
    td_http1_header_t hdrs[ADMIN_MAX_HDRS];
    td_http1_request_t req;
    td_http1_limits_t lim = td_http1_default_limits();
    lim.max_headers = ADMIN_MAX_HDRS;
    int r = td_http1_parse_request(c->buf, c->len, &lim, &req, hdrs, ADMIN_MAX_HDRS);
    if (r == TD_EAGAIN)
        return;
    if (r < 0) {
        c->keep_alive = 0;
        send_reply(c, error_reply(r == TD_EHDRTOOLARGE ? 431 : 400, "malformed request"), 0);
        return;
    }
    if (req.body == TD_BODY_CHUNKED) {
        c->keep_alive = 0;
        send_reply(c, error_reply(411, "send the body with Content-Length"), 0);
        return;
    }
    size_t blen = req.body == TD_BODY_LENGTH ? req.content_length : 0;
    if (blen > ADMIN_MAX_BODY) {
        c->keep_alive = 0;
        c->lingering = 1; /* the body may be on its way: the answer must not be lost to a reset */
        send_reply(c, error_reply(413, "request body over 1 MiB"), 0);
        return;
    }
    if (c->len < (size_t)r + blen)
        return; /* the body is still coming */
    c->keep_alive = req.keep_alive;
    current_client = c->ip;
    reply_t rep = route(c, &req, (td_str_t){c->buf + r, blen});
    if (rep.status >= 400)
        td_info("admin: %s %.*s %.*s: %d", c->ip, (int)req.method.len, req.method.p,
                (int)req.target.len, req.target.p, rep.status);
    size_t used = (size_t)r + blen;
    int head_only = req.head;
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    send_reply(c, rep, head_only);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    admin_conn_t *c = h->data;
    if (c->cap - c->len < 4096) {
        /* Room for the largest head and a body of ADMIN_MAX_BODY bytes, no more. */
        size_t cap = c->cap ? c->cap * 2 : 16384;
        if (cap > ADMIN_MAX_BODY + 65536)
            cap = ADMIN_MAX_BODY + 65536;
        if (cap <= c->cap || !(c->buf = realloc(c->buf, cap))) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
        c->cap = cap;
    }
    *out = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    admin_conn_t *c = s->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    process(c);
}

static void timeout_cb(uv_timer_t *t) {
    conn_close(t->data);
}

static void resume(admin_conn_t *c) {
    uv_timer_start(&c->timer, timeout_cb, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (c->len)
        process(c);
}

static void on_conn(uv_stream_t *srv, int status) {
    if (status < 0)
        return;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    num_conns++;
    c->next = conns;
    conns = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0 || num_conns > ADMIN_MAX_CONNS) {
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0)
        uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
    sl = sizeof(ss);
    if (uv_tcp_getsockname(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            char a[48] = "";
            uv_ip6_name((struct sockaddr_in6 *)&ss, a, sizeof(a));
            snprintf(c->local_ip, sizeof(c->local_ip), "[%s]", a);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, c->local_ip, sizeof(c->local_ip));
        }
    }
    resume(c);
}

int td_admin_start(uv_loop_t *loop, const td_addr_t *address, const char *token, char *err,
                   size_t errlen) {
    snprintf(bound_token, sizeof(bound_token), "%s", token ? token : "");
    const char *colon = strrchr(address->text, ':');
    size_t hl = colon ? (size_t)(colon - address->text) : strlen(address->text);
    snprintf(bound_host, sizeof(bound_host), "%.*s", (int)hl, address->text);
    bound_port = colon ? atoi(colon + 1) : 0;
    uv_tcp_init(loop, &server);
    server_open = 1;
    int r = uv_tcp_bind(&server, (const struct sockaddr *)&address->sa, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&server, 128, on_conn);
    if (r < 0) {
        snprintf(err, errlen, "cannot listen on %s (admin): %s", address->text, uv_strerror(r));
        return TD_EIO;
    }
    return 0;
}

int td_admin_update_token(const char *token) {
    if (!token || !token[0])
        return bound_token[0] != 0;
    snprintf(bound_token, sizeof(bound_token), "%s", token);
    return 0;
}

void td_admin_stop(void) {
    if (server_open) {
        uv_close((uv_handle_t *)&server, NULL);
        server_open = 0;
    }
    for (admin_conn_t *c = conns; c; c = c->next)
        conn_close(c);
}
