/* Routing snapshots: building one from a config, its references, and the handoff of the current
 * one from the admin thread to the workers. */
#include "td/snapshot.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/config.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/resolver.h"
#include "td/router.h"
#include "td/sticky.h"
#include "td/tls.h"

/* The current snapshot. Workers test `current_version` on every request (one atomic load) and
 * take the lock only when it changed; the lock makes "load pointer + take reference" atomic with
 * respect to the publisher dropping its reference. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static td_snapshot_t *current; /* one reference owned */
static _Atomic uint64_t current_version;

/* The sticky key ring set from outside the config (td_snapshot_set_sticky_secrets). */
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static td_sticky_key_t ring[TD_STICKY_RING];
static size_t ring_n;

void td_snapshot_set_sticky_secrets(const char *const *secrets, size_t n) {
    td_sticky_key_t keys[TD_STICKY_RING];
    size_t k = 0;
    for (size_t i = 0; i < n && k < TD_STICKY_RING; i++)
        if (secrets[i] && secrets[i][0])
            td_sticky_key_init(&keys[k++], secrets[i]);
    pthread_mutex_lock(&ring_lock);
    memcpy(ring, keys, k * sizeof(keys[0]));
    ring_n = k;
    pthread_mutex_unlock(&ring_lock);
}

static int server_build(td_snap_backend_t *b, td_snap_server_t *sv, const td_config_backend_t *cb,
                        const td_config_server_t *cs);

td_snapshot_t *td_snapshot_build(td_config_t *cfg, uint64_t version, char *err, size_t errlen) {
    snprintf(err, errlen, "out of memory");
    td_snapshot_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto err;
    atomic_store(&s->refs, 1);
    s->version = version;
    s->config = cfg;
    s->method = cfg->method;
    pthread_mutex_lock(&ring_lock);
    if (ring_n) {
        s->sticky_key = ring[0];
        if (ring_n > 1)
            s->sticky_prev = ring[1];
    } else {
        td_sticky_key_init(&s->sticky_key, cfg->cookie_secret);
    }
    pthread_mutex_unlock(&ring_lock);
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
        /* A server named by a host name is one server per address of its last answer (none
         * before its first); an address given twice (by two names, or a name and the address
         * itself) is one server: one registry object, one set of counters. */
        size_t cap = 0;
        for (size_t j = 0; j < cb->num_servers; j++)
            cap += td_addr_is_name(&cb->servers[j].address) ? TD_RESOLVER_MAX_ADDRS : 1;
        b->servers = calloc(cap ? cap : 1, sizeof(*b->servers));
        b->st = td_registry_backend(cb->name);
        if (!b->servers || !b->st)
            goto err;
        if (cb->tls && !(b->tls = td_tls_client_new(cb, err, errlen)))
            goto err;
        b->h2 = cb->protocol == TD_PROTOCOL_H2;
        if (b->tls && b->h2 && td_tls_client_offer_h2(b->tls, 1) < 0) {
            snprintf(err, errlen, "out of memory");
            goto err;
        }
        /* Failback: one full rise of its checks by default; without checks the passive
         * ejection's own length already holds traffic off. */
        if (cfg->failback_ms >= 0)
            b->failback_ms = cfg->failback_ms;
        else if (cfg->has_health || cb->health_override)
            b->failback_ms = (int64_t)cb->health.rise * cb->health.interval_ms;
        b->state = cb->state;
        /* Drain bookkeeping: since when has this backend been draining (weight 0 outside
         * failover, or a state other than ready)? A failover backup at weight 0 is not. */
        int draining = td_backend_draining(s, b);
        if (!draining)
            atomic_store(&b->st->drain_since_ms, 0);
        else if (!b->st->last_draining || !atomic_load(&b->st->drain_since_ms))
            atomic_store(&b->st->drain_since_ms, td_now_ms());
        b->st->last_draining = draining;
        /* Slow start: a backend starting to take new requests (weight from 0 to above 0, or
         * its state from drain or maint back to ready) starts a ramp: it took none, so it is
         * cold. What the first snapshot holding it (td's start, or a reload that adds it) finds
         * is taken as warm. */
        int takes = cb->weight > 0 && cb->state == TD_BACKEND_READY;
        if (takes && b->st->built && !b->st->last_takes)
            atomic_store(&b->st->weight_up_ms, td_now_ms());
        b->st->built = 1;
        b->st->last_weight = cb->weight;
        b->st->last_takes = takes;
        b->num_servers = 0;
        for (size_t j = 0; j < cb->num_servers; j++) {
            const td_config_server_t *cs = &cb->servers[j];
            td_addr_t got[TD_RESOLVER_MAX_ADDRS];
            size_t n = 1;
            if (td_addr_is_name(&cs->address))
                n = td_resolver_addrs(cs->address.text, got, TD_RESOLVER_MAX_ADDRS);
            else
                got[0] = cs->address;
            for (size_t k = 0; k < n; k++) {
                int dup = b->num_servers >= TD_CONFIG_MAX_SERVERS;
                for (size_t m = 0; m < b->num_servers && !dup; m++)
                    dup = strcmp(b->servers[m].addr.text, got[k].text) == 0;
                /* One server per (backend, address): a server configured by that address wins
                 * over a name's answer wherever it stands in the list; among names the first
                 * (td_resolver_overlaps says so). */
                for (size_t m = 0; m < cb->num_servers && !dup && td_addr_is_name(&cs->address);
                     m++)
                    dup = !td_addr_is_name(&cb->servers[m].address) &&
                          strcmp(cb->servers[m].address.text, got[k].text) == 0;
                if (dup)
                    continue;
                td_snap_server_t *sv = &b->servers[b->num_servers];
                sv->addr = got[k];
                sv->name = td_addr_is_name(&cs->address) ? cs->address.text : NULL;
                sv->h2 = b->h2;
                if (!server_build(b, sv, cb, cs))
                    goto err;
                b->num_servers++;
            }
        }
        s->num_servers += b->num_servers;
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

/* Fills the snap server `sv` (its addr set) of backend `b` from its config server `cs`; returns 0
 * when the registry is out of memory. */
static int server_build(td_snap_backend_t *b, td_snap_server_t *sv, const td_config_backend_t *cb,
                        const td_config_server_t *cs) {
    sv->weight = cs->weight;
    sv->max_conns = cs->max_conns;
    if (cs->max_conns)
        b->limited = 1;
    sv->st = td_registry_server(cb->name, sv->addr.text);
    if (!sv->st)
        return 0;
    sv->slow_start_ms = cs->slow_start_ms >= 0 ? cs->slow_start_ms : cb->slow_start_ms;
    if (sv->slow_start_ms > b->slow_start_ms)
        b->slow_start_ms = sv->slow_start_ms;
    if (sv->weight > 0 && sv->st->built && sv->st->last_weight <= 0)
        atomic_store(&sv->st->weight_up_ms, td_now_ms());
    sv->st->built = 1;
    sv->st->last_weight = sv->weight;
    return 1;
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
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++)
            atomic_store_explicit(&s->backends[i].servers[j].st->max_conns,
                                  s->backends[i].servers[j].max_conns, memory_order_relaxed);
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
