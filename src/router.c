#include "td/router.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "td/balancer.h"
#include "td/config.h"
#include "td/events.h"
#include "td/log.h"
#include "td/sticky.h"
#include "td/tls.h"

/* The registry: counters by server and backend, created on first use, never freed while the
 * process runs (a handful of objects per configured server). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static td_server_stats_t *servers;
static td_backend_stats_t *backends;

/* The current snapshot. Workers test `current_version` on every request (one atomic load) and
 * take the lock only when it changed; the lock makes "load pointer + take reference" atomic with
 * respect to the publisher dropping its reference. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static td_snapshot_t *current;
static _Atomic uint64_t current_version;

td_server_stats_t *td_registry_server(const char *backend, const char *address) {
    pthread_mutex_lock(&registry_lock);
    td_server_stats_t *s;
    for (s = servers; s; s = s->next)
        if (strcmp(s->backend, backend) == 0 && strcmp(s->address, address) == 0)
            goto out;
    s = calloc(1, sizeof(*s));
    if (!s)
        goto out;
    snprintf(s->backend, sizeof(s->backend), "%s", backend);
    snprintf(s->address, sizeof(s->address), "%s", address);
    atomic_store(&s->health_up, 1);
    /* Appended, so listings keep configuration order. */
    td_server_stats_t **tail = &servers;
    while (*tail)
        tail = &(*tail)->next;
    *tail = s;
out:
    pthread_mutex_unlock(&registry_lock);
    return s;
}

td_backend_stats_t *td_registry_backend(const char *name) {
    pthread_mutex_lock(&registry_lock);
    td_backend_stats_t *b;
    for (b = backends; b; b = b->next)
        if (strcmp(b->name, name) == 0)
            goto out;
    b = calloc(1, sizeof(*b));
    if (!b)
        goto out;
    snprintf(b->name, sizeof(b->name), "%s", name);
    b->next = backends;
    backends = b;
out:
    pthread_mutex_unlock(&registry_lock);
    return b;
}

static td_local_stats_t local_stats;

td_local_stats_t *td_registry_local(void) {
    return &local_stats;
}

void td_router_count_local(td_backend_stats_t *b, int status, int64_t now_ms) {
    if (status < 502 || status > 504)
        return;
    _Atomic uint64_t *local = b ? b->local : local_stats.local;
    atomic_fetch_add_explicit(&local[status - 502], 1, memory_order_relaxed);
    atomic_store_explicit(b ? &b->last_5xx_ms : &local_stats.last_5xx_ms, now_ms ? now_ms : 1,
                          memory_order_relaxed);
}

td_snapshot_t *td_snapshot_build(td_config_t *cfg, uint64_t version, char *err, size_t errlen) {
    snprintf(err, errlen, "out of memory");
    td_snapshot_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto err;
    atomic_store(&s->refs, 1);
    s->version = version;
    s->config = cfg;
    s->method = cfg->method;
    td_sticky_key_init(&s->sticky_key, cfg->cookie_secret);
    s->num_backends = cfg->num_backends;
    s->backends = calloc(cfg->num_backends, sizeof(*s->backends));
    s->listener_tls = calloc(cfg->num_listeners ? cfg->num_listeners : 1, sizeof(void *));
    if (!s->backends || !s->listener_tls)
        goto err;
    for (size_t i = 0; i < cfg->num_listeners; i++)
        if (cfg->listeners[i].tls &&
            !(s->listener_tls[i] = td_tls_server_new(&cfg->listeners[i], err, errlen)))
            goto err;
    for (size_t i = 0; i < cfg->num_backends; i++) {
        const td_config_backend_t *cb = &cfg->backends[i];
        td_snap_backend_t *b = &s->backends[i];
        snprintf(b->name, sizeof(b->name), "%s", cb->name);
        b->weight = cb->weight;
        b->first_server = s->num_servers;
        b->num_servers = cb->num_servers;
        b->servers = calloc(cb->num_servers, sizeof(*b->servers));
        b->st = td_registry_backend(cb->name);
        if (!b->servers || !b->st)
            goto err;
        if (cb->tls && !(b->tls = td_tls_client_new(cb, err, errlen)))
            goto err;
        /* Failback: one full rise of its checks by default; without checks the passive
         * ejection's own length already holds traffic off. */
        if (cfg->failback_ms >= 0)
            b->failback_ms = cfg->failback_ms;
        else if (cfg->has_health || cb->health_override)
            b->failback_ms = (int64_t)cb->health.rise * cb->health.interval_ms;
        /* Drain bookkeeping: when did this backend's weight go to 0? A failover backup at
         * weight 0 is not draining. */
        if (cb->weight > 0 || cfg->method == TD_METHOD_FAILOVER)
            atomic_store(&b->st->drain_since_ms, 0);
        else if (b->st->last_weight > 0 || !atomic_load(&b->st->drain_since_ms))
            atomic_store(&b->st->drain_since_ms, td_now_ms());
        b->st->last_weight = cb->weight;
        for (size_t j = 0; j < cb->num_servers; j++) {
            b->servers[j].addr = cb->servers[j].address;
            b->servers[j].weight = cb->servers[j].weight;
            b->servers[j].st = td_registry_server(cb->name, cb->servers[j].address.text);
            if (!b->servers[j].st)
                goto err;
        }
        s->num_servers += cb->num_servers;
    }
    return s;
err:
    if (s) {
        atomic_store(&s->refs, 1);
        td_snapshot_release(s);
    } else {
        td_config_free(cfg);
    }
    return NULL;
}

void td_snapshot_retain(td_snapshot_t *s) {
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void td_snapshot_release(td_snapshot_t *s) {
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (s->backends)
        for (size_t i = 0; i < s->num_backends; i++) {
            free(s->backends[i].servers);
            td_tls_client_release(s->backends[i].tls);
        }
    free(s->backends);
    if (s->listener_tls)
        for (size_t i = 0; i < s->config->num_listeners; i++)
            td_tls_server_release(s->listener_tls[i]);
    free(s->listener_tls);
    td_config_free(s->config);
    free(s);
}

void td_router_publish(td_snapshot_t *s) {
    pthread_mutex_lock(&current_lock);
    td_snapshot_t *old = current;
    current = s;
    atomic_store_explicit(&current_version, s->version, memory_order_release);
    pthread_mutex_unlock(&current_lock);
    td_snapshot_release(old);
}

uint64_t td_router_version(void) {
    return atomic_load_explicit(&current_version, memory_order_acquire);
}

td_snapshot_t *td_router_acquire(void) {
    pthread_mutex_lock(&current_lock);
    td_snapshot_t *s = current;
    if (s)
        td_snapshot_retain(s);
    pthread_mutex_unlock(&current_lock);
    return s;
}

int td_server_is_up(const td_server_stats_t *st, int64_t now_ms) {
    return atomic_load_explicit(&st->health_up, memory_order_relaxed) &&
           atomic_load_explicit(&st->down_until_ms, memory_order_relaxed) <= now_ms;
}

int64_t td_server_up_since(const td_server_stats_t *st, int64_t now_ms) {
    if (!td_server_is_up(st, now_ms))
        return -1;
    int64_t checked = atomic_load_explicit(&st->up_since_ms, memory_order_relaxed);
    int64_t ejection_end = atomic_load_explicit(&st->down_until_ms, memory_order_relaxed);
    return checked > ejection_end ? checked : ejection_end;
}

int td_backend_is_up(const td_snap_backend_t *b, int64_t now_ms) {
    for (size_t i = 0; i < b->num_servers; i++)
        if (b->servers[i].weight > 0 && td_server_is_up(b->servers[i].st, now_ms))
            return 1;
    return 0;
}

int64_t td_backend_up_since(const td_snap_backend_t *b, int64_t now_ms) {
    int64_t since = -1;
    for (size_t i = 0; i < b->num_servers; i++) {
        if (b->servers[i].weight <= 0)
            continue;
        int64_t t = td_server_up_since(b->servers[i].st, now_ms);
        if (t >= 0 && (since < 0 || t < since))
            since = t;
    }
    return since;
}

int td_backend_draining(const td_snapshot_t *s, const td_snap_backend_t *b) {
    return b->weight == 0 && s->method != TD_METHOD_FAILOVER;
}

/* Eligibility masks are sized to what the config allows, so every backend and every server of
 * a backend can be picked. */
#define MAX_BACKENDS TD_CONFIG_MAX_BACKENDS
#define MAX_SERVERS TD_CONFIG_MAX_SERVERS

size_t td_router_failover_order(const td_snapshot_t *s, size_t *order) {
    size_t n = s->num_backends < MAX_BACKENDS ? s->num_backends : MAX_BACKENDS;
    /* A stable insertion sort: ties keep listed order, so weight-0 backups come last as
     * listed. A handful of backends: cheaper than keeping a sorted copy in step with weights. */
    for (size_t i = 0; i < n; i++) {
        size_t k = i;
        while (k > 0 && s->backends[order[k - 1]].weight < s->backends[i].weight) {
            order[k] = order[k - 1];
            k--;
        }
        order[k] = i;
    }
    return n;
}

/* Failover: the first candidate in failover order with a server up, unless it came back less
 * than its failback_ms ago while a later candidate, up since before that, is serving. Without
 * a backend of weight above 0 there is no primary, and nothing to fail over from. */
static int pick_failover(const td_snapshot_t *s, const uint8_t *tried, int64_t now_ms) {
    size_t order[MAX_BACKENDS];
    int64_t since[MAX_BACKENDS];
    size_t n = td_router_failover_order(s, order);
    if (!n || s->backends[order[0]].weight <= 0)
        return TD_EUNAVAIL;
    for (size_t k = 0; k < n; k++) {
        size_t i = order[k];
        since[k] = tried && tried[i] ? -1 : td_backend_up_since(&s->backends[i], now_ms);
    }
    for (size_t k = 0; k < n; k++) {
        if (since[k] < 0)
            continue;
        int held = 0;
        if (now_ms - since[k] < s->backends[order[k]].failback_ms)
            for (size_t j = k + 1; j < n && !held; j++)
                held = since[j] >= 0 && since[j] < since[k];
        if (!held)
            return (int)order[k];
    }
    return TD_EUNAVAIL;
}

static int pick_backend(const td_snapshot_t *s, int *wrr, int pinned, const uint8_t *tried,
                        int64_t now_ms) {
    if (s->method == TD_METHOD_FAILOVER)
        return pick_failover(s, tried, now_ms);
    size_t n = s->num_backends < MAX_BACKENDS ? s->num_backends : MAX_BACKENDS;
    if (pinned >= 0 && (size_t)pinned < n && !(tried && tried[pinned]) &&
        td_backend_is_up(&s->backends[pinned], now_ms) &&
        !td_backend_drained(s, &s->backends[pinned], now_ms))
        return pinned;
    uint8_t ok[MAX_BACKENDS];
    int weight[MAX_BACKENDS];
    for (size_t i = 0; i < n; i++) {
        const td_snap_backend_t *b = &s->backends[i];
        weight[i] = b->weight;
        ok[i] = b->weight > 0 && !(tried && tried[i]) && td_backend_is_up(b, now_ms);
    }
    int i = td_balancer_pick(weight, wrr, ok, n);
    return i >= 0 ? i : TD_EUNAVAIL;
}

/* Passive ejections alone never leave a request with nowhere to go: when they took out every
 * candidate, the pick is made again as if there were none (now = INT64_MAX makes every ejection
 * look over); active health checks still count. */
int td_router_pick_backend(const td_snapshot_t *s, int *wrr, int pinned, const uint8_t *tried,
                           int64_t now_ms) {
    int i = pick_backend(s, wrr, pinned, tried, now_ms);
    return i >= 0 ? i : pick_backend(s, wrr, pinned, tried, INT64_MAX);
}

static int pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried,
                       int64_t now_ms) {
    size_t n = b->num_servers < MAX_SERVERS ? b->num_servers : MAX_SERVERS;
    uint8_t ok[MAX_SERVERS];
    int weight[MAX_SERVERS];
    for (size_t i = 0; i < n; i++) {
        weight[i] = b->servers[i].weight;
        ok[i] = !(tried && tried[i]) && td_server_is_up(b->servers[i].st, now_ms);
    }
    int i = td_balancer_pick(weight, wrr, ok, n);
    return i >= 0 ? i : TD_EUNAVAIL;
}

int td_router_pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried,
                          int64_t now_ms) {
    int i = pick_server(b, wrr, tried, now_ms);
    return i >= 0 ? i : pick_server(b, wrr, tried, INT64_MAX);
}

int td_router_shares(const td_snapshot_t *s, int64_t now_ms, double *share) {
    for (size_t i = 0; i < s->num_backends; i++)
        share[i] = 0;
    if (s->method == TD_METHOD_FAILOVER) {
        int i = td_router_pick_backend(s, NULL, -1, NULL, now_ms);
        if (i >= 0)
            share[i] = 1;
        return i;
    }
    /* As td_router_pick_backend: when passive ejections took out every backend, they are
     * ignored. */
    for (int pass = 0; pass < 2; pass++) {
        int64_t now = pass ? INT64_MAX : now_ms;
        double sum = 0;
        for (size_t i = 0; i < s->num_backends; i++)
            if (s->backends[i].weight > 0 && td_backend_is_up(&s->backends[i], now))
                sum += s->backends[i].weight;
        if (sum <= 0)
            continue;
        int count = 0;
        for (size_t i = 0; i < s->num_backends; i++)
            if (s->backends[i].weight > 0 && td_backend_is_up(&s->backends[i], now)) {
                share[i] = s->backends[i].weight / sum;
                count++;
            }
        return count;
    }
    return TD_EUNAVAIL;
}

/* 1 when some server other than `st` is up in a backend that could take its requests: one with
 * weight above 0, or in failover any backend (weight-0 backends are the backups). */
static int others_up(const td_snapshot_t *s, const td_server_stats_t *st, int64_t now_ms) {
    for (size_t i = 0; i < s->num_backends; i++) {
        const td_snap_backend_t *b = &s->backends[i];
        if (b->weight <= 0 && s->method != TD_METHOD_FAILOVER)
            continue;
        for (size_t j = 0; j < b->num_servers; j++)
            if (b->servers[j].st != st && b->servers[j].weight > 0 &&
                td_server_is_up(b->servers[j].st, now_ms))
                return 1;
    }
    return 0;
}

int td_passive_failure(const td_snapshot_t *s, td_server_stats_t *st, int64_t now_ms) {
    const td_config_passive_t *p = &s->config->passive;
    atomic_fetch_add(&st->failures, 1);
    int run = atomic_fetch_add(&st->consecutive_failures, 1) + 1;
    if (run < p->failures || atomic_load(&st->down_until_ms) > now_ms)
        return 0;
    if (!others_up(s, st, now_ms)) {
        if (run == p->failures)
            td_warn("passive: server %s (%s) failed %d times in a row but is the last one up; "
                    "it keeps serving",
                    st->address, st->backend, run);
        return 0;
    }
    int n = atomic_fetch_add(&st->ejections, 1);
    int64_t ms = p->eject_ms;
    for (int i = 0; i < n && ms < p->max_eject_ms; i++)
        ms *= 2;
    if (ms > p->max_eject_ms)
        ms = p->max_eject_ms;
    atomic_store(&st->down_until_ms, now_ms + ms);
    atomic_store(&st->consecutive_failures, 0);
    if (st->checked) {
        atomic_store(&st->recheck, 1); /* back through the active check: `rise` fresh passes */
        atomic_store(&st->health_up, 0);
    }
    atomic_store(&st->ejected, 1);
    td_warn("passive: server %s (%s) ejected for %lld ms after %d failures in a row", st->address,
            st->backend, (long long)ms, run);
    td_event("health",
             "server %s (%s) is down (passive: ejected for %lld ms after %d failures in "
             "a row)",
             st->address, st->backend, (long long)ms, run);
    return 1;
}

void td_passive_sweep(const td_snapshot_t *s, int64_t now_ms) {
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++) {
            td_server_stats_t *st = s->backends[i].servers[j].st;
            /* With an active check, its "up" after `rise` passes is the event. */
            if (st->checked || !atomic_load_explicit(&st->ejected, memory_order_relaxed) ||
                !td_server_is_up(st, now_ms) || !atomic_exchange(&st->ejected, 0))
                continue;
            td_info("passive: server %s (%s) is back after its ejection", st->address, st->backend);
            td_event("health", "server %s (%s) is up (passive ejection over)", st->address,
                     st->backend);
        }
}

void td_passive_success(td_server_stats_t *st) {
    if (atomic_load_explicit(&st->consecutive_failures, memory_order_relaxed))
        atomic_store(&st->consecutive_failures, 0);
    if (atomic_load_explicit(&st->ejections, memory_order_relaxed) &&
        atomic_load_explicit(&st->down_until_ms, memory_order_relaxed) <= td_now_ms())
        atomic_store(&st->ejections, 0);
}

const int td_lat_bounds_ms[TD_LAT_BUCKETS - 1] = {1,   2,    5,    10,   25,   50,   100,
                                                  250, 500, 1000, 2500, 5000, 10000};

void td_router_observe(td_backend_stats_t *b, int64_t ms) {
    int i = 0;
    while (i < TD_LAT_BUCKETS - 1 && ms > td_lat_bounds_ms[i])
        i++;
    atomic_fetch_add_explicit(&b->latency[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->latency_sum_ms, (uint64_t)(ms < 0 ? 0 : ms),
                              memory_order_relaxed);
}

int td_backend_drained(const td_snapshot_t *s, const td_snap_backend_t *b, int64_t now_ms) {
    int64_t since = atomic_load_explicit(&b->st->drain_since_ms, memory_order_relaxed);
    return td_backend_draining(s, b) && since && now_ms - since >= s->config->timeouts.drain_ms;
}

void td_router_pin_seen(td_backend_stats_t *b, int64_t now_ms) {
    int64_t sec = now_ms / 1000;
    size_t i = (size_t)(sec % TD_PIN_WINDOW);
    if (atomic_load_explicit(&b->pin_second[i], memory_order_relaxed) != sec) {
        /* A new second for this slot; a count lost in the race is only a statistic. */
        atomic_store(&b->pin_second[i], sec);
        atomic_store(&b->pin_count[i], 0);
    }
    atomic_fetch_add_explicit(&b->pin_count[i], 1, memory_order_relaxed);
}

uint64_t td_router_pins_recent(td_backend_stats_t *b, int64_t now_ms) {
    int64_t sec = now_ms / 1000;
    uint64_t n = 0;
    for (size_t i = 0; i < TD_PIN_WINDOW; i++)
        if (sec - atomic_load(&b->pin_second[i]) < TD_PIN_WINDOW)
            n += atomic_load(&b->pin_count[i]);
    return n;
}

int td_snapshot_find_backend(const td_snapshot_t *s, const char *name, size_t len) {
    for (size_t i = 0; i < s->num_backends; i++)
        if (strlen(s->backends[i].name) == len && memcmp(s->backends[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

/* ---------------------------------------------------------------------------------------------
 * Per-request routing decisions */

#include <strings.h>

#include "td/http1.h"
#include "td/rewrite.h"

int td_router_preview(const td_snapshot_t *s, const struct td_http1_request_s *req) {
    const td_config_t *cfg = s->config;
    if (!cfg->preview_token[0])
        return -1;
    size_t hl = strlen(cfg->preview_header), tl = strlen(cfg->preview_token);
    td_str_t name = {NULL, 0}, token = {NULL, 0};
    for (size_t i = 0; i < req->num_headers; i++) {
        td_str_t n = req->headers[i].name;
        if (n.len == hl && strncasecmp(n.p, cfg->preview_header, hl) == 0)
            name = req->headers[i].value;
        else if (td_rewrite_preview_field(n, cfg->preview_header))
            token = req->headers[i].value;
    }
    if (!name.len || token.len != tl)
        return -1;
    unsigned diff = 0;
    for (size_t i = 0; i < tl; i++)
        diff |= (unsigned)(token.p[i] ^ cfg->preview_token[i]);
    return diff ? -1 : td_snapshot_find_backend(s, name.p, name.len);
}

int td_router_sticky_pin(const td_snapshot_t *s, const struct td_http1_request_s *req,
                         int64_t now_s, int64_t now_ms) {
    if (s->method != TD_METHOD_STICKY)
        return -1;
    int pinned = -1;
    for (size_t i = 0; i < req->num_headers && pinned < 0; i++) {
        td_str_t be;
        if (td_http1_name_is(req->headers[i].name, "cookie") &&
            td_sticky_parse(&s->sticky_key, req->headers[i].value, s->config->cookie_name, now_s,
                            &be))
            pinned = td_snapshot_find_backend(s, be.p, be.len);
    }
    if (pinned >= 0)
        td_router_pin_seen(s->backends[pinned].st, now_ms);
    return pinned;
}

int td_router_sticky_set(const td_snapshot_t *s, int backend, int pinned, int forced) {
    return s->method == TD_METHOD_STICKY && backend != pinned && forced < 0 ? backend : -1;
}

size_t td_router_sticky_cookie(const td_snapshot_t *s, int backend, int https, int64_t now_s,
                               char *line, size_t cap) {
    const td_config_t *cfg = s->config;
    char v[160];
    if (!td_sticky_make(&s->sticky_key, v, sizeof(v), s->backends[backend].name,
                        now_s + cfg->cookie_max_age_s))
        return 0;
    td_rewrite_cookie_t c = {
        .name = cfg->cookie_name,
        .value = v,
        .max_age_s = cfg->cookie_max_age_s,
        .http_only = cfg->cookie_http_only,
        .secure = cfg->cookie_secure == TD_COOKIE_SECURE_ALWAYS ||
                  (cfg->cookie_secure == TD_COOKIE_SECURE_AUTO && https),
        .same_site = (int)cfg->cookie_same_site,
    };
    int n = td_rewrite_set_cookie(&c, line, cap);
    return n < 0 ? 0 : (size_t)n;
}
