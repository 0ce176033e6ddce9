/* The registry of per-server and per-backend objects (counters, passive state, health verdict),
 * and the counters' helpers: td's own gateway errors, the latency histogram, the pin window. */
#include "td/registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Objects by server and backend, created on first use, never freed while the process runs (a
 * handful of objects per configured server). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static td_server_stats_t *servers;   /* owned */
static td_backend_stats_t *backends; /* owned */
static td_local_stats_t local_stats;

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

int64_t td_server_up_since(const td_server_stats_t *st, int64_t now_ms) {
    if (!td_server_is_up(st, now_ms))
        return -1;
    int64_t checked = atomic_load_explicit(&st->up_since_ms, memory_order_relaxed);
    int64_t ejection_end = atomic_load_explicit(&st->down_until_ms, memory_order_relaxed);
    return checked > ejection_end ? checked : ejection_end;
}

const int td_lat_bounds_ms[TD_LAT_BUCKETS - 1] = {1,   2,   5,    10,   25,   50,   100,
                                                  250, 500, 1000, 2500, 5000, 10000};

void td_router_observe(td_backend_stats_t *b, int64_t ms) {
    int i = 0;
    while (i < TD_LAT_BUCKETS - 1 && ms > td_lat_bounds_ms[i])
        i++;
    atomic_fetch_add_explicit(&b->latency[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->latency_sum_ms, (uint64_t)(ms < 0 ? 0 : ms),
                              memory_order_relaxed);
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

void td_registry_answered(td_backend_stats_t *b, int64_t now_ms) {
    int64_t sec = now_ms / 1000;
    size_t i = (size_t)(sec % TD_PIN_WINDOW);
    if (atomic_load_explicit(&b->answered_second[i], memory_order_relaxed) != sec) {
        /* A new second for this slot; a count lost in the race is only a statistic. */
        atomic_store(&b->answered_second[i], sec);
        atomic_store(&b->answered_count[i], 0);
    }
    atomic_fetch_add_explicit(&b->answered_count[i], 1, memory_order_relaxed);
}

uint64_t td_registry_answered_recent(td_backend_stats_t *b, int64_t now_ms) {
    int64_t sec = now_ms / 1000;
    uint64_t n = 0;
    for (size_t i = 0; i < TD_PIN_WINDOW; i++)
        if (sec - atomic_load(&b->answered_second[i]) < TD_PIN_WINDOW)
            n += atomic_load(&b->answered_count[i]);
    return n;
}
