/* Passive detection: failure runs, ejections and their end, on the registry's server objects. */
#include "td/passive.h"

#include "td/events.h"
#include "td/log.h"
#include "td/registry.h"

/* 1 when some server other than `st` is up in a backend that could take its requests: a ready
 * one with weight above 0, or in failover any ready backend (weight-0 backends are the backups);
 * drain and maint take no new requests. */
static int others_up(const td_snapshot_t *s, const td_server_stats_t *st, int64_t now_ms) {
    for (size_t i = 0; i < s->num_backends; i++) {
        const td_snap_backend_t *b = &s->backends[i];
        if ((b->weight <= 0 && s->method != TD_METHOD_FAILOVER) || b->state != TD_BACKEND_READY)
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
            td_warn("passive: server %s (%s) failed %d time%s in a row but is the last one up; "
                    "it keeps serving",
                    st->address, st->backend, run, run == 1 ? "" : "s");
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
    if (atomic_load(&st->checked)) {
        atomic_store(&st->recheck, 1); /* back through the active check: `rise` fresh passes */
        atomic_store(&st->health_up, 0);
    }
    atomic_store(&st->ejected, 1);
    const char *plural = run == 1 ? "" : "s";
    td_warn("passive: server %s (%s) ejected for %lld ms after %d failure%s in a row", st->address,
            st->backend, (long long)ms, run, plural);
    td_event("health",
             "server %s (%s) is down (passive: ejected for %lld ms after %d failure%s in "
             "a row)",
             st->address, st->backend, (long long)ms, run, plural);
    return 1;
}

void td_passive_sweep(const td_snapshot_t *s, int64_t now_ms) {
    for (size_t i = 0; i < s->num_backends; i++)
        for (size_t j = 0; j < s->backends[i].num_servers; j++) {
            td_server_stats_t *st = s->backends[i].servers[j].st;
            /* With an active check, its "up" after `rise` passes is the event. */
            if (atomic_load_explicit(&st->checked, memory_order_relaxed) ||
                !atomic_load_explicit(&st->ejected, memory_order_relaxed) ||
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
