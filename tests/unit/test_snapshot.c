/* Routing snapshots: what a build takes from the config and the registry, drain bookkeeping
 * across builds, references, and the version handoff (publish, version, acquire). */
#include "td/snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "t.h"
#include "td/config.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/router.h"

/* A snapshot of version `version` with backends `prefix`-blue (weight wa; servers 127.0.0.1:2
 * weight 3 and 127.0.0.1:3 weight 1) and `prefix`-green (weight wb; server `green_addr`), routed
 * by `method`; `extra` is added to the routing object. */
static td_snapshot_t *snap(const char *prefix, const char *method, int wa, int wb,
                           const char *green_addr, const char *extra, uint64_t version) {
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
             " \"routing\": {\"method\": \"%s\"%s},"
             " \"timeouts\": {\"drain_ms\": 500},"
             " \"backends\": ["
             "  {\"name\": \"%s-blue\", \"weight\": %d, \"servers\": ["
             "    {\"address\": \"127.0.0.1:2\", \"weight\": 3}, {\"address\": \"127.0.0.1:3\"}]},"
             "  {\"name\": \"%s-green\", \"weight\": %d, \"servers\": [{\"address\": \"%s\"}]}]}",
             method, extra, prefix, wa, prefix, wb, green_addr);
    td_config_t *cfg = td_config_parse(json, strlen(json), "t.json", stderr);
    T_CHECK(cfg != NULL);
    if (!cfg)
        return NULL;
    char err[256] = "";
    td_snapshot_t *s = td_snapshot_build(cfg, version, err, sizeof(err));
    T_CHECK(s != NULL);
    if (s)
        T_CHECK(s->config == cfg);
    return s;
}

/* Before anything is published there is no current snapshot (this runs first). */
static void test_nothing_published_yet(void) {
    T_EQ_INT(td_router_version(), 0);
    T_CHECK(td_router_acquire() == NULL);
}

static void test_build_takes_config_and_registry_objects(void) {
    td_snapshot_t *s = snap("sb", "sticky", 70, 30, "127.0.0.1:4", "", 42);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&s->refs), 1);
    T_EQ_INT(s->version, 42);
    T_EQ_INT(s->method, TD_METHOD_STICKY);
    T_EQ_INT(s->num_backends, 2);
    T_EQ_INT(s->num_servers, 3);
    T_EQ_STR(s->backends[0].name, "sb-blue");
    T_EQ_STR(s->backends[1].name, "sb-green");
    T_EQ_INT(s->backends[0].weight, 70);
    T_EQ_INT(s->backends[1].weight, 30);
    T_EQ_INT(s->backends[0].num_servers, 2);
    T_EQ_INT(s->backends[1].num_servers, 1);
    /* Flat server numbering: blue's are 0 and 1, green's starts at 2. */
    T_EQ_INT(s->backends[0].first_server, 0);
    T_EQ_INT(s->backends[1].first_server, 2);
    T_EQ_INT(s->backends[0].servers[0].weight, 3);
    T_EQ_INT(s->backends[0].servers[1].weight, 1);
    T_EQ_STR(s->backends[0].servers[1].addr.text, "127.0.0.1:3");
    T_EQ_STR(s->backends[1].servers[0].addr.text, "127.0.0.1:4");
    /* Plain HTTP on both sides: no TLS contexts. */
    T_CHECK(s->backends[0].tls == NULL && s->listener_tls[0] == NULL);
    /* Counters are the registry's, by backend name and address. */
    T_CHECK(s->backends[0].st == td_registry_backend("sb-blue"));
    T_CHECK(s->backends[0].servers[0].st == td_registry_server("sb-blue", "127.0.0.1:2"));
    T_CHECK(s->backends[1].servers[0].st == td_registry_server("sb-green", "127.0.0.1:4"));
    /* Without health checks or routing.failback_ms, failback is immediate. */
    T_EQ_INT(s->backends[0].failback_ms, 0);
    /* The sticky key is set (the process's random one when no secret is configured). */
    T_CHECK(s->sticky_key.len > 0);
    td_snapshot_release(s);

    s = snap("sf", "failover", 100, 0, "127.0.0.1:4", ", \"failback_ms\": 1234", 1);
    if (!s)
        return;
    T_EQ_INT(s->backends[0].failback_ms, 1234);
    T_EQ_INT(s->backends[1].failback_ms, 1234);
    td_snapshot_release(s);
}

static void test_rebuild_keeps_registry_objects(void) {
    td_snapshot_t *a = snap("sr", "round_robin", 50, 50, "127.0.0.1:4", "", 1);
    if (!a)
        return;
    atomic_store(&a->backends[0].servers[0].st->requests, 7);
    atomic_store(&a->backends[0].st->requests, 9);
    /* The next version moves green to another address. */
    td_snapshot_t *b = snap("sr", "round_robin", 50, 50, "127.0.0.1:5", "", 2);
    if (!b) {
        td_snapshot_release(a);
        return;
    }
    T_CHECK(b->backends[0].servers[0].st == a->backends[0].servers[0].st);
    T_CHECK(b->backends[0].st == a->backends[0].st);
    T_EQ_INT(atomic_load(&b->backends[0].servers[0].st->requests), 7);
    T_EQ_INT(atomic_load(&b->backends[0].st->requests), 9);
    /* Same backend, new address: a new server object; the backend's is the same. */
    T_CHECK(b->backends[1].servers[0].st != a->backends[1].servers[0].st);
    T_CHECK(b->backends[1].st == a->backends[1].st);
    T_EQ_STR(b->backends[1].servers[0].st->address, "127.0.0.1:5");
    td_snapshot_release(a);
    td_snapshot_release(b);
}

static void test_drain_since_follows_the_weight(void) {
    td_snapshot_t *s = snap("sd", "round_robin", 100, 100, "127.0.0.1:4", "", 1);
    if (!s)
        return;
    td_backend_stats_t *green = s->backends[1].st;
    T_EQ_INT(atomic_load(&green->drain_since_ms), 0);
    T_EQ_INT(green->last_weight, 100);
    td_snapshot_release(s);

    /* Weight 0: draining since this build. */
    int64_t before = td_now_ms();
    s = snap("sd", "round_robin", 100, 0, "127.0.0.1:4", "", 2);
    int64_t after = td_now_ms();
    if (!s)
        return;
    int64_t since = atomic_load(&green->drain_since_ms);
    T_CHECK(since >= before && since <= after);
    T_EQ_INT(green->last_weight, 0);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 1);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], since + 499), 0);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], since + 500), 1);
    td_snapshot_release(s);

    /* Still 0 in the next version: the drain goes on from when it began. */
    s = snap("sd", "round_robin", 100, 0, "127.0.0.1:4", "", 3);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&green->drain_since_ms), since);
    td_snapshot_release(s);

    /* In failover a weight-0 backend is a backup, not draining. */
    s = snap("sd", "failover", 100, 0, "127.0.0.1:4", "", 4);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&green->drain_since_ms), 0);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 0);
    td_snapshot_release(s);

    /* Back above 0: not draining. */
    s = snap("sd", "round_robin", 100, 10, "127.0.0.1:4", "", 5);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&green->drain_since_ms), 0);
    T_EQ_INT(green->last_weight, 10);
    td_snapshot_release(s);
}

/* A snapshot like snap()'s (round robin, 100/100) with green in state `st`. */
static td_snapshot_t *snap_state(td_backend_state_t st, uint64_t version) {
    const char *json = "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
                       " \"timeouts\": {\"drain_ms\": 500},"
                       " \"backends\": ["
                       "  {\"name\": \"ss-blue\", \"weight\": 100, \"servers\": ["
                       "    {\"address\": \"127.0.0.1:2\"}]},"
                       "  {\"name\": \"ss-green\", \"weight\": 100, \"servers\": ["
                       "    {\"address\": \"127.0.0.1:4\"}]}]}";
    td_config_t *cfg = td_config_parse(json, strlen(json), "t.json", stderr);
    T_CHECK(cfg != NULL);
    if (!cfg)
        return NULL;
    cfg->backends[1].state = st;
    char err[256] = "";
    td_snapshot_t *s = td_snapshot_build(cfg, version, err, sizeof(err));
    T_CHECK(s != NULL);
    return s;
}

static void test_drain_since_follows_the_state(void) {
    td_snapshot_t *s = snap_state(TD_BACKEND_READY, 1);
    if (!s)
        return;
    td_backend_stats_t *green = s->backends[1].st;
    T_EQ_INT(atomic_load(&green->drain_since_ms), 0);
    td_snapshot_release(s);

    /* State drain at weight 100: draining since this build, and still from then in the next. */
    int64_t before = td_now_ms();
    s = snap_state(TD_BACKEND_DRAIN, 2);
    int64_t after = td_now_ms();
    if (!s)
        return;
    int64_t since = atomic_load(&green->drain_since_ms);
    T_CHECK(since >= before && since <= after);
    T_EQ_INT(s->backends[1].state, TD_BACKEND_DRAIN);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 1);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], since + 499), 0);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], since + 500), 1);
    td_snapshot_release(s);
    usleep(3000); /* a later build must not restart the drain's clock */
    s = snap_state(TD_BACKEND_DRAIN, 3);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&green->drain_since_ms), since);
    td_snapshot_release(s);

    /* Maint: drained at once; ready again: not draining. */
    s = snap_state(TD_BACKEND_MAINT, 4);
    if (!s)
        return;
    T_EQ_INT(td_backend_drained(s, &s->backends[1], since), 1);
    td_snapshot_release(s);
    s = snap_state(TD_BACKEND_READY, 5);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&green->drain_since_ms), 0);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 0);
    td_snapshot_release(s);
}

static void test_references(void) {
    td_snapshot_t *s = snap("sx", "round_robin", 1, 1, "127.0.0.1:4", "", 1);
    if (!s)
        return;
    td_snapshot_retain(s);
    td_snapshot_retain(s);
    T_EQ_INT(atomic_load(&s->refs), 3);
    td_snapshot_release(s);
    td_snapshot_release(s);
    T_EQ_INT(atomic_load(&s->refs), 1);
    td_snapshot_release(s); /* the last one frees it (ASan checks) */
    td_snapshot_release(NULL);
}

static void test_publish_and_acquire(void) {
    td_snapshot_t *a = snap("sp", "round_robin", 1, 1, "127.0.0.1:4", "", 5);
    if (!a)
        return;
    td_snapshot_retain(a); /* ours, to watch the router's reference come and go */
    td_router_publish(a);  /* the router takes over the build's reference */
    T_EQ_INT(td_router_version(), 5);
    T_EQ_INT(atomic_load(&a->refs), 2);
    td_snapshot_t *got = td_router_acquire();
    T_CHECK(got == a);
    T_EQ_INT(atomic_load(&a->refs), 3);
    td_snapshot_release(got);

    td_snapshot_t *b = snap("sp", "round_robin", 1, 1, "127.0.0.1:4", "", 6);
    if (!b) {
        td_snapshot_release(a);
        return;
    }
    td_router_publish(b);
    T_EQ_INT(td_router_version(), 6);
    /* The router dropped its reference to the previous one: only ours is left. */
    T_EQ_INT(atomic_load(&a->refs), 1);
    td_snapshot_release(a);
    got = td_router_acquire();
    T_CHECK(got == b);
    T_EQ_INT(atomic_load(&b->refs), 2);
    td_snapshot_release(got);
}

static void test_find_backend_by_name(void) {
    td_snapshot_t *s = snap("sn", "round_robin", 1, 1, "127.0.0.1:4", "", 1);
    if (!s)
        return;
    T_EQ_INT(td_snapshot_find_backend(s, "sn-green", 8), 1);
    T_EQ_INT(td_snapshot_find_backend(s, "sn-blue", 7), 0);
    /* Names are compared whole, over the given length: no prefix, no terminator needed. */
    T_EQ_INT(td_snapshot_find_backend(s, "sn-blu", 6), -1);
    T_EQ_INT(td_snapshot_find_backend(s, "sn-blue=1", 7), 0);
    T_EQ_INT(td_snapshot_find_backend(s, "sn-bluex", 8), -1);
    T_EQ_INT(td_snapshot_find_backend(s, "", 0), -1);
    td_snapshot_release(s);
}

int main(void) {
    test_nothing_published_yet();
    test_build_takes_config_and_registry_objects();
    test_rebuild_keeps_registry_objects();
    test_drain_since_follows_the_weight();
    test_drain_since_follows_the_state();
    test_references();
    test_publish_and_acquire();
    test_find_backend_by_name();
    return t_done("test_snapshot");
}
