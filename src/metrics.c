/* /metrics: the routing snapshot's counters in the Prometheus text format 0.0.4, one family per
 * metric (HELP and TYPE, then one line per backend or server). */
#include "td/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "td/config.h"
#include "td/control.h"
#include "td/log.h"
#include "td/proxy.h"
#include "td/ready.h"
#include "td/router.h"

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
static long long b_queued(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return (long long)atomic_load(&b->st->queued);
}
static long long b_queue_timeouts(const td_snap_backend_t *b, int64_t now) {
    (void)now;
    return (long long)atomic_load(&b->st->queue_timeouts);
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

/* The name="HOST:port" label of a server resolved from a host name, after its server label (the
 * three strings of "%s%s%s"); nothing for a server configured by its address. */
#define NAME_LABEL(sv)                                                                             \
    (sv)->name ? ",name=\"" : "", (sv)->name ? (sv)->name : "", (sv)->name ? "\"" : ""

static void server_family(FILE *f, const td_snapshot_t *s, int64_t now, const char *name,
                          const char *type, const char *help, server_value_fn *get) {
    family(f, name, type, help);
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++) {
            const td_snap_server_t *sv = &s->backends[i].servers[j];
            fprintf(f, "%s{backend=\"%s\",server=\"%s\"%s%s%s} %lld\n", name, sv->st->backend,
                    sv->st->address, NAME_LABEL(sv), get(sv, now));
        }
}

/* td_server_up 0 for each host name of the config with no address in the snapshot (never
 * resolved, or none now), server="" and its name label, so an alert on td_server_up == 0 sees it
 * as it sees a server that is down. */
static void unresolved_up(FILE *f, const td_snapshot_t *s) {
    const td_config_t *cfg = s->config;
    for (size_t i = 0; cfg && i < s->num_backends && i < cfg->num_backends; i++) {
        const td_config_backend_t *cb = &cfg->backends[i];
        for (size_t j = 0; j < cb->num_servers; j++) {
            const char *name = cb->servers[j].address.text;
            int seen = !td_addr_is_name(&cb->servers[j].address);
            for (size_t k = 0; k < j && !seen; k++) /* one series per name */
                seen = strcasecmp(cb->servers[k].address.text, name) == 0;
            for (size_t k = 0; k < s->backends[i].num_servers && !seen; k++)
                seen = s->backends[i].servers[k].name &&
                       strcasecmp(s->backends[i].servers[k].name, name) == 0;
            if (!seen)
                fprintf(f, "td_server_up{backend=\"%s\",server=\"\",name=\"%s\"} 0\n", cb->name,
                        name);
        }
    }
}

/* One series per state, 1 for the backend's current one (Prometheus' enum-as-gauge habit). */
static void state_family(FILE *f, const td_snapshot_t *s) {
    static const td_backend_state_t states[] = {TD_BACKEND_READY, TD_BACKEND_DRAIN,
                                                TD_BACKEND_MAINT};
    family(f, "td_backend_state", "gauge",
           "1 for the backend's state (ready: by its weight; drain: no new requests; maint: no "
           "user traffic), 0 for the others.");
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t k = 0; k < sizeof(states) / sizeof(states[0]); k++)
            fprintf(f, "td_backend_state{backend=\"%s\",state=\"%s\"} %d\n", s->backends[i].name,
                    td_backend_state_name(states[k]), s->backends[i].state == states[k]);
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
                        "td_server_responses_total{backend=\"%s\",server=\"%s\"%s%s%s,class="
                        "\"%s\"} %llu\n",
                        st->backend, st->address, NAME_LABEL(&s->backends[i].servers[j]),
                        classes[k], (unsigned long long)atomic_load(&st->responses[k]));
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

char *td_metrics_text(size_t *len) {
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f)
        return NULL;
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
    backend_family(f, s, now, "td_backend_in_flight", "gauge", "Requests in flight.", b_in_flight);
    backend_family(f, s, now, "td_backend_tunnels", "gauge",
                   "Open WebSocket and other upgraded tunnels.", b_tunnels);
    backend_family(f, s, now, "td_backend_queue_length", "gauge",
                   "Requests waiting in td for a server of the backend below its max_conns.",
                   b_queued);
    backend_family(f, s, now, "td_backend_queue_timeouts_total", "counter",
                   "Queued requests answered 503 by td after timeouts.queue_ms.", b_queue_timeouts);
    state_family(f, s);
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
    unresolved_up(f, s);
    server_family(f, s, now, "td_server_requests_total", "counter", "Requests sent to the server.",
                  s_requests);
    server_family(f, s, now, "td_server_failures_total", "counter",
                  "Connect errors, resets, timeouts and 5xx answers of the server.", s_failures);
    server_family(f, s, now, "td_server_active_connections", "gauge",
                  "Open upstream connections to the server.", s_connections);
    server_family(f, s, now, "td_server_in_flight", "gauge", "Requests in flight to the server.",
                  s_in_flight);
    family(f, "td_client_connections", "gauge", "Open client connections.");
    fprintf(f, "td_client_connections %lld\n", (long long)td_proxy_connections());
    family(f, "td_ready", "gauge",
           "1 while td serves with a current state (GET /readyz answers 200), 0 while it starts "
           "or stops.");
    char why[128];
    fprintf(f, "td_ready %d\n", td_ready_check(now, why, sizeof(why)));
    family(f, "td_uptime_seconds", "gauge", "Seconds since td started.");
    fprintf(f, "td_uptime_seconds %lld\n",
            (long long)((td_wall_ms() - td_control_started_ms()) / 1000));
    td_snapshot_release(s);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}
