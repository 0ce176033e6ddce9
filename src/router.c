/* Per-request routing decisions on a snapshot: which backend (round robin, sticky pin,
 * failover with failback), which server in it, and the shares and drain state they imply. */
#include "td/router.h"

#include <string.h>

#include "td/balancer.h"
#include "td/sticky.h"

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
    return b->state != TD_BACKEND_READY || (b->weight == 0 && s->method != TD_METHOD_FAILOVER);
}

/* Eligibility masks are sized to what the config allows, so every backend and every server of
 * a backend can be picked. */
#define MAX_BACKENDS TD_CONFIG_MAX_BACKENDS
#define MAX_SERVERS TD_CONFIG_MAX_SERVERS

size_t td_router_failover_order(const td_snapshot_t *s, size_t *order) {
    size_t n = s->num_backends < MAX_BACKENDS ? s->num_backends : MAX_BACKENDS, c = 0;
    /* A stable insertion sort of the ready backends: ties keep listed order, so weight-0 backups
     * come last as listed. A handful of backends: cheaper than keeping a sorted copy in step with
     * weights. The others (drain, maint) are no candidates: after them, as listed. */
    for (size_t i = 0; i < n; i++) {
        if (s->backends[i].state != TD_BACKEND_READY)
            continue;
        size_t k = c++;
        while (k > 0 && s->backends[order[k - 1]].weight < s->backends[i].weight) {
            order[k] = order[k - 1];
            k--;
        }
        order[k] = i;
    }
    for (size_t i = 0, k = c; i < n; i++)
        if (s->backends[i].state != TD_BACKEND_READY)
            order[k++] = i;
    return c;
}

/* 1 when some backend has a weight above 0, whatever its state: without one there is no
 * primary in failover. A primary in drain or maint hands its role to the next candidate, even a
 * weight-0 backup: that is what the backup is for. */
static int any_weight(const td_snapshot_t *s) {
    for (size_t i = 0; i < s->num_backends; i++)
        if (s->backends[i].weight > 0)
            return 1;
    return 0;
}

/* ---- slow start */

int td_router_ramp_permille(int64_t elapsed_ms, int64_t slow_start_ms) {
    if (slow_start_ms <= 0 || elapsed_ms >= slow_start_ms)
        return TD_RAMP_FULL;
    int64_t pm = elapsed_ms <= 0 ? 0 : elapsed_ms * TD_RAMP_FULL / slow_start_ms;
    return pm < TD_RAMP_FLOOR ? TD_RAMP_FLOOR : (int)pm;
}

int td_router_ramp_weight(int weight, int permille) {
    return weight * TD_RAMP_SCALE * permille / TD_RAMP_FULL;
}

/* When the server's ramp began: the latest of its active check's "up", the end of its last
 * passive ejection and its weight going from 0 to above 0 (0: never, warm since td started). */
static int64_t ramp_start(const td_server_stats_t *st) {
    int64_t t = atomic_load_explicit(&st->up_since_ms, memory_order_relaxed);
    int64_t e = atomic_load_explicit(&st->down_until_ms, memory_order_relaxed);
    int64_t w = atomic_load_explicit(&st->weight_up_ms, memory_order_relaxed);
    if (e > t)
        t = e;
    return w > t ? w : t;
}

static int server_permille(const td_snap_server_t *sv, int64_t now_ms) {
    if (!sv->slow_start_ms)
        return TD_RAMP_FULL;
    int64_t start = ramp_start(sv->st);
    return start ? td_router_ramp_permille(now_ms - start, sv->slow_start_ms) : TD_RAMP_FULL;
}

/* A backend's ramp: the largest of its up servers' (one warm server makes it warm; a backend
 * that comes back from having none up ramps with them), capped by its own ramp since its
 * weight went from 0 to above 0. */
static int backend_permille(const td_snap_backend_t *b, int64_t now_ms) {
    if (!b->slow_start_ms)
        return TD_RAMP_FULL;
    int best = 0;
    for (size_t i = 0; i < b->num_servers && best < TD_RAMP_FULL; i++)
        if (b->servers[i].weight > 0 && td_server_is_up(b->servers[i].st, now_ms)) {
            int pm = server_permille(&b->servers[i], now_ms);
            if (pm > best)
                best = pm;
        }
    if (!best)
        best = TD_RAMP_FULL; /* none up: it is not picked anyway */
    int64_t up = atomic_load_explicit(&b->st->weight_up_ms, memory_order_relaxed);
    int own = up ? td_router_ramp_permille(now_ms - up, b->slow_start_ms) : TD_RAMP_FULL;
    return own < best ? own : best;
}

int64_t td_router_slow_start_remaining(const td_snap_server_t *sv, int64_t now_ms) {
    if (!sv->slow_start_ms || !td_server_is_up(sv->st, now_ms))
        return -1;
    int64_t start = ramp_start(sv->st);
    int64_t left = start ? start + sv->slow_start_ms - now_ms : 0;
    return left > 0 ? left : -1;
}

int64_t td_router_backend_slow_start_remaining(const td_snap_backend_t *b, int64_t now_ms) {
    if (!b->slow_start_ms)
        return -1;
    /* As backend_permille: the warmest up server's ramp, capped by the backend's own. */
    int64_t best = -1;
    for (size_t i = 0; i < b->num_servers && best != 0; i++)
        if (b->servers[i].weight > 0 && td_server_is_up(b->servers[i].st, now_ms)) {
            int64_t left = td_router_slow_start_remaining(&b->servers[i], now_ms);
            if (left < 0)
                left = 0;
            if (best < 0 || left < best)
                best = left;
        }
    int64_t up = atomic_load_explicit(&b->st->weight_up_ms, memory_order_relaxed);
    int64_t own = up ? up + b->slow_start_ms - now_ms : 0;
    if (own > best)
        best = own;
    return best > 0 ? best : -1;
}

/* Failover: the first candidate in failover order with a server up, unless it came back less
 * than its failback_ms ago while a later candidate, up since before that, is serving. Without
 * a backend of weight above 0 there is no primary, and nothing to fail over from. */
static int pick_failover(const td_snapshot_t *s, const uint8_t *tried, int64_t now_ms) {
    size_t order[MAX_BACKENDS];
    int64_t since[MAX_BACKENDS];
    size_t n = td_router_failover_order(s, order);
    if (!n || !any_weight(s))
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
        weight[i] = td_router_ramp_weight(b->weight, backend_permille(b, now_ms));
        ok[i] = b->weight > 0 && b->state == TD_BACKEND_READY && !(tried && tried[i]) &&
                td_backend_is_up(b, now_ms);
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

static int pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried, int64_t now_ms) {
    size_t n = b->num_servers < MAX_SERVERS ? b->num_servers : MAX_SERVERS;
    uint8_t ok[MAX_SERVERS];
    int weight[MAX_SERVERS];
    int full = 0;
    for (size_t i = 0; i < n; i++) {
        weight[i] =
            td_router_ramp_weight(b->servers[i].weight, server_permille(&b->servers[i], now_ms));
        ok[i] = !(tried && tried[i]) && td_server_is_up(b->servers[i].st, now_ms);
        /* max_conns: a server at its limit is passed over (one branch when it has none). The
         * running limit is the registry's: a request queued under an older snapshot sees a
         * reload's. */
        int max =
            ok[i] ? atomic_load_explicit(&b->servers[i].st->max_conns, memory_order_relaxed) : 0;
        if (max && td_registry_slot_full(b->servers[i].st, max)) {
            ok[i] = 0;
            full += weight[i] > 0;
        }
    }
    int i = td_balancer_pick(weight, wrr, ok, n);
    return i >= 0 ? i : full ? TD_EFULL : TD_EUNAVAIL;
}

int td_router_pick_server(const td_snap_backend_t *b, int *wrr, const uint8_t *tried,
                          int64_t now_ms) {
    int i = pick_server(b, wrr, tried, now_ms);
    return i >= 0 || i == TD_EFULL ? i : pick_server(b, wrr, tried, INT64_MAX);
}

/* round_robin / sticky: does the backend take new requests by its weight? */
static int takes_new(const td_snap_backend_t *b, int64_t now_ms) {
    return b->weight > 0 && b->state == TD_BACKEND_READY && td_backend_is_up(b, now_ms);
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
            if (takes_new(&s->backends[i], now))
                sum += (share[i] = td_router_ramp_weight(s->backends[i].weight,
                                                         backend_permille(&s->backends[i], now)));
        if (sum <= 0)
            continue;
        int count = 0;
        for (size_t i = 0; i < s->num_backends; i++)
            if (share[i] > 0) {
                share[i] /= sum;
                count++;
            }
        return count;
    }
    return TD_EUNAVAIL;
}

int td_backend_drained(const td_snapshot_t *s, const td_snap_backend_t *b, int64_t now_ms) {
    if (b->state == TD_BACKEND_MAINT)
        return 1; /* it takes nothing: no pin, no tunnel waits for drain_ms */
    int64_t since = atomic_load_explicit(&b->st->drain_since_ms, memory_order_relaxed);
    return td_backend_draining(s, b) && since && now_ms - since >= s->config->timeouts.drain_ms;
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
    const td_sticky_key_t *keys[TD_STICKY_RING] = {&s->sticky_key, &s->sticky_prev};
    for (size_t i = 0; i < req->num_headers && pinned < 0; i++) {
        td_str_t be;
        if (td_http1_name_is(req->headers[i].name, "cookie") &&
            td_sticky_parse_ring(keys, TD_STICKY_RING, req->headers[i].value,
                                 s->config->cookie_name, now_s, &be))
            pinned = td_snapshot_find_backend(s, be.p, be.len);
    }
    if (pinned >= 0 && s->backends[pinned].state == TD_BACKEND_MAINT)
        return -1;
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
