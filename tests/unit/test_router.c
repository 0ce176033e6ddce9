/* The router: failover order, backups, failback, effective shares, passive ejection with
 * backups, sticky pins and drain, the fallback over passive ejections, server weights, slow
 * start, and picks among more servers than a small mask would hold. (The registry's counters are
 * tested in test_registry.c, passive detection in test_passive.c.) */
#include "td/router.h"

#include <stdio.h>
#include <stdlib.h>

#include "t.h"
#include "td/config.h"
#include "td/log.h"

/* A snapshot of the config document `json` (NULL on a bad document, which fails the test). */
static td_snapshot_t *snap_of(const char *json) {
    td_config_t *cfg = td_config_parse(json, strlen(json), "t.json", stderr);
    T_CHECK(cfg != NULL);
    if (!cfg)
        return NULL;
    char err[256];
    td_snapshot_t *s = td_snapshot_build(cfg, 1, err, sizeof(err));
    T_CHECK(s != NULL);
    return s;
}

/* Two backends of one server each, `method`, weights wa and wb; names prefixed so each test has
 * its own registry objects. */
static td_snapshot_t *two(const char *prefix, const char *method, int wa, int wb,
                          const char *extra) {
    char json[1024];
    snprintf(
        json, sizeof(json),
        "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
        " \"routing\": {\"method\": \"%s\"%s},"
        " \"backends\": ["
        "  {\"name\": \"%s-blue\", \"weight\": %d, \"servers\": [{\"address\": \"127.0.0.1:2\"}]},"
        "  {\"name\": \"%s-green\", \"weight\": %d, \"servers\": [{\"address\": "
        "\"127.0.0.1:3\"}]}]}",
        method, extra, prefix, wa, prefix, wb);
    return snap_of(json);
}

static td_server_stats_t *server0(td_snapshot_t *s, int b) {
    return s->backends[b].servers[0].st;
}

static void test_pick_server_beyond_256_servers(void) {
    /* 300 servers; only the last three are up: they still get every request. */
    size_t cap = 64 * 1024, n = 0;
    char *json = malloc(cap);
    n += (size_t)snprintf(json + n, cap - n,
                          "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}], \"backends\": ["
                          "{\"name\": \"many\", \"weight\": 100, \"servers\": [");
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(json + n, cap - n, "%s{\"address\": \"127.0.0.%d:%d\"}", i ? "," : "",
                              1 + i / 200, 1000 + i);
    snprintf(json + n, cap - n, "]}]}");
    td_snapshot_t *s = snap_of(json);
    free(json);
    if (!s)
        return;
    td_snap_backend_t *b = &s->backends[0];
    T_EQ_INT(b->num_servers, 300);
    for (size_t i = 0; i < 297; i++)
        atomic_store(&b->servers[i].st->health_up, 0);
    int *wrr = calloc(b->num_servers, sizeof(int));
    int count[3] = {0};
    for (int i = 0; i < 300; i++) {
        int si = td_router_pick_server(b, wrr, NULL, 0);
        T_CHECK(si >= 297);
        if (si >= 297)
            count[si - 297]++;
    }
    T_EQ_INT(count[0], 100);
    T_EQ_INT(count[1], 100);
    T_EQ_INT(count[2], 100);
    /* A tried mask as large as the backend: the tried ones are skipped. */
    uint8_t *tried = calloc(b->num_servers, 1);
    tried[297] = tried[298] = 1;
    T_EQ_INT(td_router_pick_server(b, wrr, tried, 0), 299);
    free(tried);
    free(wrr);
    td_snapshot_release(s);
}

static void test_failover_100_0_backup_takes_over_and_failback_waits(void) {
    td_snapshot_t *s = two("fo", "failover", 100, 0, ", \"failback_ms\": 3000");
    if (!s)
        return;
    size_t order[2];
    T_EQ_INT(td_router_failover_order(s, order), 2);
    T_EQ_INT(order[0], 0);
    T_EQ_INT(order[1], 1);
    /* Primary up: it gets everything; the weight-0 backup is not draining. */
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 1000), 0);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 0);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], 1000000), 0);
    /* Primary down (its check says so): the weight-0 backup takes every request. */
    atomic_store(&server0(s, 0)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 2000), 1);
    double share[2];
    T_EQ_INT(td_router_shares(s, 2000, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1);
    /* Primary up again at 5000: the backup keeps serving for failback_ms... */
    atomic_store(&server0(s, 0)->up_since_ms, 5000);
    atomic_store(&server0(s, 0)->health_up, 1);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 5000), 1);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 7999), 1);
    /* ... then the primary has it back. */
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 8000), 0);
    T_EQ_INT(td_router_shares(s, 8000, share), 0);
    T_CHECK(share[0] == 1 && share[1] == 0);
    /* A retry after the primary failed goes to the backup. */
    uint8_t tried[2] = {1, 0};
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, tried, 9000), 1);
    /* A primary and a backup that come up together (start with default_down): no hold. */
    atomic_store(&server0(s, 1)->up_since_ms, 20000);
    atomic_store(&server0(s, 0)->up_since_ms, 20000);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 20000), 0);
    td_snapshot_release(s);
}

static void test_failover_100_50_and_backup_order(void) {
    char json[1024];
    snprintf(
        json, sizeof(json),
        "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
        " \"routing\": {\"method\": \"failover\", \"failback_ms\": 0},"
        " \"backends\": ["
        "  {\"name\": \"ord-a\", \"weight\": 0, \"servers\": [{\"address\": \"127.0.0.1:2\"}]},"
        "  {\"name\": \"ord-b\", \"weight\": 50, \"servers\": [{\"address\": \"127.0.0.1:3\"}]},"
        "  {\"name\": \"ord-c\", \"weight\": 100, \"servers\": [{\"address\": \"127.0.0.1:4\"}]},"
        "  {\"name\": \"ord-d\", \"weight\": 0, \"servers\": [{\"address\": \"127.0.0.1:5\"}]}]}");
    td_snapshot_t *s = snap_of(json);
    if (!s)
        return;
    size_t order[4];
    td_router_failover_order(s, order);
    /* By weight, then the weight-0 backups in listed order. */
    T_EQ_INT(order[0], 2);
    T_EQ_INT(order[1], 1);
    T_EQ_INT(order[2], 0);
    T_EQ_INT(order[3], 3);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 2);
    atomic_store(&server0(s, 2)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 1);
    atomic_store(&server0(s, 1)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 0);
    atomic_store(&server0(s, 0)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 3);
    atomic_store(&server0(s, 3)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), TD_EUNAVAIL);
    td_snapshot_release(s);
}

static void test_failover_passive_ejects_primary_when_backup_is_up(void) {
    td_snapshot_t *s = two("pe", "failover", 100, 0, "");
    if (!s)
        return;
    s->config->passive.failures = 2;
    td_server_stats_t *blue = server0(s, 0);
    T_EQ_INT(td_passive_failure(s, blue, 1000), 0);
    /* The backup counts as somewhere else to go: blue's only server is ejected. */
    T_EQ_INT(td_passive_failure(s, blue, 1000), 1);
    T_EQ_INT(td_server_is_up(blue, 1001), 0);
    T_EQ_INT(atomic_load(&blue->ejected), 1);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 1001), 1);
    /* Without checks failback_ms defaults to 0: blue is back when its ejection ends. */
    T_EQ_INT(s->backends[0].failback_ms, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 6000), 0);
    T_EQ_INT(td_server_up_since(blue, 6000), 6000);
    /* The sweep says "up" once, then forgets the ejection. */
    td_passive_sweep(s, 6000);
    T_EQ_INT(atomic_load(&blue->ejected), 0);
    td_snapshot_release(s);

    /* In round robin a weight-0 backend is not somewhere to go: blue is the last one up. */
    s = two("pr", "round_robin", 100, 0, "");
    if (!s)
        return;
    s->config->passive.failures = 1;
    T_EQ_INT(td_passive_failure(s, server0(s, 0), 1000), 0);
    T_CHECK(td_server_is_up(server0(s, 0), 1000));
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 1);
    td_snapshot_release(s);
}

static void test_failback_default_is_one_full_rise(void) {
    td_snapshot_t *s =
        two("fd", "failover", 100, 0, "}, \"health_check\": {\"interval_ms\": 200, \"rise\": 4");
    if (!s)
        return;
    T_EQ_INT(s->backends[0].failback_ms, 800);
    td_snapshot_release(s);
}

static void test_shares_round_robin_count_only_backends_up(void) {
    td_snapshot_t *s = two("sh", "round_robin", 50, 50, "");
    if (!s)
        return;
    double share[2];
    T_EQ_INT(td_router_shares(s, 0, share), 2);
    T_CHECK(share[0] == 0.5 && share[1] == 0.5);
    atomic_store(&server0(s, 0)->health_up, 0);
    T_EQ_INT(td_router_shares(s, 0, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1);
    atomic_store(&server0(s, 1)->health_up, 0);
    T_EQ_INT(td_router_shares(s, 0, share), TD_EUNAVAIL);
    T_CHECK(share[0] == 0 && share[1] == 0);
    td_snapshot_release(s);
}

static void test_pinned_backend_while_up_and_not_drained(void) {
    td_snapshot_t *s = two("pn", "sticky", 100, 100, "");
    if (!s)
        return;
    int wrr[2] = {0};
    /* A pin wins over the balance while its backend is up. */
    for (int i = 0; i < 4; i++)
        T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 1000), 1);
    /* Tried already (a retry): the balance decides among the others. */
    uint8_t tried[2] = {0, 1};
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, tried, 1000), 0);
    /* Its server down: the pin is not honoured. */
    atomic_store(&server0(s, 1)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 1000), 0);
    atomic_store(&server0(s, 1)->health_up, 1);
    /* A pin out of range is no pin. */
    memset(wrr, 0, sizeof(wrr));
    T_EQ_INT(td_router_pick_backend(s, wrr, 7, NULL, 1000), 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, 7, NULL, 1000), 1);
    /* Weight 0 (draining): pinned clients stay until drain_ms has passed since it began. */
    s->backends[1].weight = 0;
    atomic_store(&s->backends[1].st->drain_since_ms, 10000);
    s->config->timeouts.drain_ms = 3000;
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 12999), 1);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], 12999), 0);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], 13000), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 13000), 0);
    td_snapshot_release(s);
}

static void test_passive_ejections_alone_never_give_up(void) {
    td_snapshot_t *s = two("pj", "round_robin", 50, 50, "");
    if (!s)
        return;
    int wrr[2] = {0};
    double share[2];
    /* Both ejected by passive detection: the pick goes on as if they were not. */
    atomic_store(&server0(s, 0)->down_until_ms, 5000);
    atomic_store(&server0(s, 1)->down_until_ms, 5000);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 1);
    T_EQ_INT(td_router_pick_server(&s->backends[0], wrr, NULL, 1000), 0);
    T_EQ_INT(td_router_shares(s, 1000, share), 2);
    T_CHECK(share[0] == 0.5 && share[1] == 0.5);
    /* One of them ejected: the other takes everything. */
    atomic_store(&server0(s, 1)->down_until_ms, 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 1);
    T_EQ_INT(td_router_shares(s, 1000, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1);
    /* Down by active checks is down: no fallback then. */
    atomic_store(&server0(s, 1)->health_up, 0);
    atomic_store(&server0(s, 0)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), TD_EUNAVAIL);
    T_EQ_INT(td_router_pick_server(&s->backends[0], wrr, NULL, 1000), TD_EUNAVAIL);
    td_snapshot_release(s);
}

static void test_servers_by_weight_and_backend_up_since(void) {
    td_snapshot_t *s =
        snap_of("{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
                " \"backends\": [{\"name\": \"sw-blue\", \"weight\": 1, \"servers\": ["
                "  {\"address\": \"127.0.0.1:2\", \"weight\": 3}, {\"address\": \"127.0.0.1:3\"},"
                "  {\"address\": \"127.0.0.1:4\", \"weight\": 0}]}]}");
    if (!s)
        return;
    td_snap_backend_t *b = &s->backends[0];
    int wrr[3] = {0};
    /* Smooth weighted round robin, 3:1: a a b a, again and again; weight 0 never. */
    const int want[] = {0, 0, 1, 0, 0, 0, 1, 0};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), want[i]);
    /* Up since the earliest of its up servers with weight above 0. */
    atomic_store(&b->servers[0].st->up_since_ms, 4000);
    atomic_store(&b->servers[1].st->up_since_ms, 3000);
    atomic_store(&b->servers[2].st->up_since_ms, 1000); /* weight 0: does not count */
    T_EQ_INT(td_backend_up_since(b, 9000), 3000);
    atomic_store(&b->servers[1].st->health_up, 0);
    T_EQ_INT(td_backend_up_since(b, 9000), 4000);
    T_EQ_INT(td_backend_is_up(b, 9000), 1);
    /* Only the weight-0 server up: the backend is not. */
    atomic_store(&b->servers[0].st->health_up, 0);
    T_EQ_INT(td_backend_is_up(b, 9000), 0);
    T_EQ_INT(td_backend_up_since(b, 9000), -1);
    td_snapshot_release(s);
}

static void test_failover_without_a_primary(void) {
    /* Every weight 0 (a config refuses that, a snapshot is told): no primary, nothing to fail
     * over from. */
    td_snapshot_t *s = two("fz", "failover", 100, 0, "");
    if (!s)
        return;
    s->backends[0].weight = 0;
    double share[2];
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), TD_EUNAVAIL);
    T_EQ_INT(td_router_shares(s, 0, share), TD_EUNAVAIL);
    T_CHECK(share[0] == 0 && share[1] == 0);
    /* Not draining either: in failover weight 0 means backup. */
    T_EQ_INT(td_backend_draining(s, &s->backends[0]), 0);
    td_snapshot_release(s);
}

static void test_pick_server_skips_servers_at_max_conns_and_says_full(void) {
    td_snapshot_t *s = snap_of("{\"listeners\": [{\"address\": \"127.0.0.1:1\"}], \"backends\": ["
                               " {\"name\": \"mc\", \"weight\": 100, \"servers\": ["
                               "  {\"address\": \"127.0.0.1:2\", \"max_conns\": 1},"
                               "  {\"address\": \"127.0.0.1:3\", \"max_conns\": 2}]}]}");
    if (!s)
        return;
    td_snap_backend_t *b = &s->backends[0];
    T_EQ_INT(b->limited, 1);
    T_EQ_INT(b->servers[0].max_conns, 1);
    /* The running limits, as td_router_publish stores them. */
    atomic_store(&b->servers[0].st->max_conns, 1);
    atomic_store(&b->servers[1].st->max_conns, 2);
    int wrr[2] = {0};
    /* Slots taken as the exchange does: 0 gets its one, then 1 its two; then all are full. */
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 0);
    T_EQ_INT(td_registry_slot_take(b->servers[0].st, 1), 1);
    T_EQ_INT(td_registry_slot_take(b->servers[0].st, 1), 0);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 1);
    T_EQ_INT(td_registry_slot_take(b->servers[1].st, 2), 1);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 1);
    T_EQ_INT(td_registry_slot_take(b->servers[1].st, 2), 1);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), TD_EFULL);
    /* A full server that was tried, or is down, is not a reason to wait: nowhere to go. */
    uint8_t tried[2] = {1, 1};
    T_EQ_INT(td_router_pick_server(b, wrr, tried, 0), TD_EUNAVAIL);
    /* Passive ejection of a full server: still full (the fallback over ejections waits too). */
    atomic_store(&b->servers[0].st->down_until_ms, 5000);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 1000), TD_EFULL);
    atomic_store(&b->servers[0].st->down_until_ms, 0);
    /* A slot given back is picked again. */
    td_registry_slot_give(b->servers[0].st);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 0);
    /* A reload raises server 1's limit: the next pick sees it, whatever snapshot it holds. */
    T_EQ_INT(td_registry_slot_take(b->servers[0].st, 1), 1);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), TD_EFULL);
    atomic_store(&b->servers[1].st->max_conns, 3);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 1);
    /* No limit any more: slots are not looked at. */
    atomic_store(&b->servers[1].st->max_conns, 0);
    T_EQ_INT(td_registry_slot_take(b->servers[1].st, 3), 1);
    T_EQ_INT(td_router_pick_server(b, wrr, NULL, 0), 1);
    td_registry_slot_give(b->servers[0].st);
    for (int k = 0; k < 3; k++)
        td_registry_slot_give(b->servers[1].st);
    T_EQ_INT(atomic_load(&b->servers[1].st->slots), 0);
    td_snapshot_release(s);
}

static void test_maint_and_drain_never_picked_by_weight(void) {
    td_snapshot_t *s = two("st", "round_robin", 50, 50, "");
    if (!s)
        return;
    int wrr[2] = {0};
    double share[2];
    s->backends[0].state = TD_BACKEND_MAINT;
    for (int i = 0; i < 4; i++)
        T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 1);
    T_EQ_INT(td_router_shares(s, 1000, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1);
    /* The other one down: nothing is left, maint is no fallback (passive or not). */
    atomic_store(&server0(s, 1)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), TD_EUNAVAIL);
    T_EQ_INT(td_router_shares(s, 1000, share), TD_EUNAVAIL);
    T_CHECK(share[0] == 0 && share[1] == 0);
    atomic_store(&server0(s, 1)->health_up, 1);
    /* Drain: no new requests either, and it counts as draining whatever its weight. */
    s->backends[0].state = TD_BACKEND_DRAIN;
    T_EQ_INT(td_backend_draining(s, &s->backends[0]), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 1000), 1);
    T_EQ_INT(td_router_shares(s, 1000, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1);
    /* Not a retry target: the other one tried, nothing is left. */
    uint8_t tried[2] = {0, 1};
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, tried, 1000), TD_EUNAVAIL);
    s->backends[0].state = TD_BACKEND_READY;
    T_EQ_INT(td_backend_draining(s, &s->backends[0]), 0);
    T_EQ_INT(td_router_shares(s, 1000, share), 2);
    td_snapshot_release(s);
}

static void test_pins_on_drain_last_until_drain_ms_and_on_maint_not_at_all(void) {
    td_snapshot_t *s = two("sp", "sticky", 100, 100, "");
    if (!s)
        return;
    int wrr[2] = {0};
    s->config->timeouts.drain_ms = 3000;
    s->backends[1].state = TD_BACKEND_DRAIN;
    atomic_store(&s->backends[1].st->drain_since_ms, 10000);
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 12999), 1);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], 12999), 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 13000), 0);
    /* Maint is drained at once: it takes nothing, not even its pinned clients. */
    s->backends[1].state = TD_BACKEND_MAINT;
    atomic_store(&s->backends[1].st->drain_since_ms, 12000);
    T_EQ_INT(td_backend_drained(s, &s->backends[1], 12000), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, 1, NULL, 12000), 0);
    td_snapshot_release(s);
}

static void test_failover_order_leaves_out_maint_and_drain(void) {
    char json[1024];
    snprintf(
        json, sizeof(json),
        "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
        " \"routing\": {\"method\": \"failover\", \"failback_ms\": 0},"
        " \"backends\": ["
        "  {\"name\": \"fs-a\", \"weight\": 100, \"state\": \"maint\","
        "   \"servers\": [{\"address\": \"127.0.0.1:2\"}]},"
        "  {\"name\": \"fs-b\", \"weight\": 0, \"servers\": [{\"address\": \"127.0.0.1:3\"}]},"
        "  {\"name\": \"fs-c\", \"weight\": 50, \"state\": \"drain\","
        "   \"servers\": [{\"address\": \"127.0.0.1:4\"}]},"
        "  {\"name\": \"fs-d\", \"weight\": 0, \"servers\": [{\"address\": \"127.0.0.1:5\"}]}]}");
    td_snapshot_t *s = snap_of(json);
    if (!s)
        return;
    T_EQ_INT(s->backends[0].state, TD_BACKEND_MAINT);
    T_EQ_INT(s->backends[2].state, TD_BACKEND_DRAIN);
    size_t order[4];
    /* The ready ones are the candidates (the weight-0 backups, as listed: the primary in maint
     * passed its role on), then the others as listed. */
    T_EQ_INT(td_router_failover_order(s, order), 2);
    T_EQ_INT(order[0], 1);
    T_EQ_INT(order[1], 3);
    T_EQ_INT(order[2], 0);
    T_EQ_INT(order[3], 2);
    double share[4];
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 1);
    T_EQ_INT(td_router_shares(s, 0, share), 1);
    T_CHECK(share[0] == 0 && share[1] == 1 && share[2] == 0 && share[3] == 0);
    atomic_store(&server0(s, 1)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), 3);
    /* Every candidate down: maint and drain are never used, even with their servers up. */
    atomic_store(&server0(s, 3)->health_up, 0);
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 0), TD_EUNAVAIL);
    T_EQ_INT(td_router_shares(s, 0, share), TD_EUNAVAIL);
    /* A draining primary in failover is draining (its weight alone would make it a backup). */
    T_EQ_INT(td_backend_draining(s, &s->backends[2]), 1);
    T_EQ_INT(td_backend_draining(s, &s->backends[1]), 0);
    td_snapshot_release(s);
}

static void test_passive_backup_in_maint_is_not_somewhere_else_to_go(void) {
    td_snapshot_t *s = two("pm", "failover", 100, 0, "");
    if (!s)
        return;
    s->config->passive.failures = 1;
    s->backends[1].state = TD_BACKEND_MAINT;
    T_EQ_INT(td_passive_failure(s, server0(s, 0), 1000), 0);
    T_CHECK(td_server_is_up(server0(s, 0), 1000));
    td_snapshot_release(s);
}

static void test_slow_start_ramp_arithmetic(void) {
    /* Off, or over: the full weight. */
    T_EQ_INT(td_router_ramp_permille(0, 0), TD_RAMP_FULL);
    T_EQ_INT(td_router_ramp_permille(1000, 1000), TD_RAMP_FULL);
    T_EQ_INT(td_router_ramp_permille(INT64_MAX - 1, 86400000), TD_RAMP_FULL);
    /* The first 5 % of the time at the floor, then linear. */
    T_EQ_INT(td_router_ramp_permille(-5, 1000), TD_RAMP_FLOOR);
    T_EQ_INT(td_router_ramp_permille(0, 1000), TD_RAMP_FLOOR);
    T_EQ_INT(td_router_ramp_permille(49, 1000), TD_RAMP_FLOOR);
    T_EQ_INT(td_router_ramp_permille(100, 1000), 100);
    T_EQ_INT(td_router_ramp_permille(500, 1000), 500);
    T_EQ_INT(td_router_ramp_permille(999, 1000), 999);
    T_EQ_INT(td_router_ramp_permille(43200000, 86400000), 500);
    /* Scaled weights: a weight-1 server at its floor is 5 units of 100. */
    T_EQ_INT(td_router_ramp_weight(1, TD_RAMP_FLOOR), 5);
    T_EQ_INT(td_router_ramp_weight(1, TD_RAMP_FULL), TD_RAMP_SCALE);
    T_EQ_INT(td_router_ramp_weight(100, TD_RAMP_FULL), 100 * TD_RAMP_SCALE);
    T_EQ_INT(td_router_ramp_weight(3, 500), 150);
    T_EQ_INT(td_router_ramp_weight(0, 500), 0);
}

/* Picks of server `want` in `n` picks of backend b at now_ms, from fresh scores. */
static int picks_of(const td_snap_backend_t *b, int want, int n, int64_t now_ms) {
    int wrr[4] = {0}, count = 0;
    for (int i = 0; i < n; i++)
        count += td_router_pick_server(b, wrr, NULL, now_ms) == want;
    return count;
}

static void test_slow_start_server_ramps_after_it_comes_up(void) {
    td_snapshot_t *s =
        snap_of("{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
                " \"backends\": [{\"name\": \"ss-blue\", \"weight\": 1, \"slow_start_ms\": 10000,"
                "  \"servers\": [{\"address\": \"127.0.0.1:2\"}, {\"address\": \"127.0.0.1:3\"},"
                "   {\"address\": \"127.0.0.1:4\", \"slow_start_ms\": 0},"
                "   {\"address\": \"127.0.0.1:5\", \"slow_start_ms\": 2000, \"weight\": 0}]}]}");
    if (!s)
        return;
    td_snap_backend_t *b = &s->backends[0];
    /* A server's own value wins over its backend's; the backend ramps over the largest. */
    T_EQ_INT(b->servers[0].slow_start_ms, 10000);
    T_EQ_INT(b->servers[2].slow_start_ms, 0);
    T_EQ_INT(b->servers[3].slow_start_ms, 2000);
    T_EQ_INT(b->slow_start_ms, 10000);
    atomic_store(&b->servers[2].st->health_up, 0); /* two servers in play: 0 (warm) and 1 */
    /* Up since td started: warm, nothing ramps. */
    T_EQ_INT(picks_of(b, 1, 200, 100000), 100);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 100000), -1);
    /* Server 1's check says up at 100000: 5 % of its weight, then linear to all of it. */
    atomic_store(&b->servers[1].st->up_since_ms, 100000);
    T_EQ_INT(picks_of(b, 1, 105, 100000), 5);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 100000), 10000);
    T_EQ_INT(picks_of(b, 1, 125, 102500), 25);
    T_EQ_INT(picks_of(b, 1, 150, 105000), 50);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 105000), 5000);
    T_EQ_INT(picks_of(b, 1, 200, 110000), 100);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 110000), -1);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[0], 105000), -1);
    /* A passive ejection until 200000: none while it lasts, then a ramp from its end. */
    atomic_store(&b->servers[1].st->down_until_ms, 200000);
    T_EQ_INT(picks_of(b, 1, 100, 199999), 0);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 199999), -1);
    T_EQ_INT(picks_of(b, 1, 105, 200000), 5);
    T_EQ_INT(picks_of(b, 1, 200, 210000), 100);
    /* Every candidate ejected: the fallback pick ignores ejections, and their ramps. */
    atomic_store(&b->servers[0].st->down_until_ms, 300000);
    atomic_store(&b->servers[1].st->down_until_ms, 300000);
    T_EQ_INT(picks_of(b, 1, 200, 250000), 100);
    /* Without slow start a server takes its full share at once (the old behaviour). */
    b->servers[1].slow_start_ms = 0;
    atomic_store(&b->servers[0].st->down_until_ms, 0);
    atomic_store(&b->servers[1].st->down_until_ms, 0);
    atomic_store(&b->servers[1].st->up_since_ms, 400000);
    T_EQ_INT(picks_of(b, 1, 200, 400000), 100);
    T_EQ_INT(td_router_slow_start_remaining(&b->servers[1], 400000), -1);
    td_snapshot_release(s);
}

/* A config of backends sw0-blue and sw0-green (one server each, slow_start_ms 10000), with
 * weights wb, wg and the green server's weight ws. */
static td_snapshot_t *ramp_pair(int wb, int wg, int ws) {
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
             " \"backends\": ["
             "  {\"name\": \"sw0-blue\", \"weight\": %d, \"slow_start_ms\": 10000,"
             "   \"servers\": [{\"address\": \"127.0.0.1:2\"}]},"
             "  {\"name\": \"sw0-green\", \"weight\": %d, \"slow_start_ms\": 10000,"
             "   \"servers\": [{\"address\": \"127.0.0.1:3\", \"weight\": %d},"
             "    {\"address\": \"127.0.0.1:4\"}]}]}",
             wb, wg, ws);
    return snap_of(json);
}

static void test_slow_start_weight_from_0_in_a_new_snapshot(void) {
    /* The first snapshot is taken as it is: warm, whatever the weights. */
    td_snapshot_t *s = ramp_pair(50, 0, 0);
    if (!s)
        return;
    td_server_stats_t *sv0 = s->backends[1].servers[0].st;
    T_EQ_INT(atomic_load(&s->backends[1].st->weight_up_ms), 0);
    T_EQ_INT(atomic_load(&sv0->weight_up_ms), 0);
    td_snapshot_release(s);
    /* Green's weight 0 -> 50, its first server's 0 -> 1: both ramps start now. */
    int64_t before = td_now_ms();
    s = ramp_pair(50, 50, 1);
    if (!s)
        return;
    int64_t up = atomic_load(&s->backends[1].st->weight_up_ms);
    T_CHECK(up >= before && up <= td_now_ms());
    T_CHECK(atomic_load(&sv0->weight_up_ms) >= before);
    T_EQ_INT(atomic_load(&s->backends[0].st->weight_up_ms), 0); /* blue stayed at 50 */
    int64_t t = atomic_load(&sv0->weight_up_ms);
    T_EQ_INT(td_router_slow_start_remaining(&s->backends[1].servers[0], t), 10000);
    /* Green as a whole starts at 5 % of its share, though its other server is warm: its own
     * ramp caps it. */
    double share[2];
    T_EQ_INT(td_router_shares(s, up, share), 2);
    T_CHECK(share[1] > 0.045 && share[1] < 0.05); /* 250 / (5000 + 250) */
    T_EQ_INT(td_router_shares(s, up + 5000, share), 2);
    T_CHECK(share[1] > 0.33 && share[1] < 0.34); /* 2500 / 7500 */
    T_EQ_INT(td_router_shares(s, up + 10000, share), 2);
    T_CHECK(share[1] == 0.5);
    int wrr[2] = {0}, green = 0;
    for (int i = 0; i < 5250; i++)
        green += td_router_pick_backend(s, wrr, -1, NULL, up) == 1;
    T_EQ_INT(green, 250);
    td_snapshot_release(s);
    /* A rebuild at the same weights starts nothing again. */
    s = ramp_pair(50, 50, 1);
    if (!s)
        return;
    T_EQ_INT(atomic_load(&s->backends[1].st->weight_up_ms), up);
    td_snapshot_release(s);
}

static void test_slow_start_backend_back_from_no_server_up(void) {
    td_snapshot_t *s = two("sbk", "round_robin", 50, 50, "");
    if (!s)
        return;
    s->backends[1].slow_start_ms = s->backends[1].servers[0].slow_start_ms = 8000;
    double share[2];
    /* Green's only server came back at 50000: green ramps with it. */
    atomic_store(&server0(s, 1)->up_since_ms, 50000);
    T_EQ_INT(td_router_shares(s, 50000, share), 2);
    T_CHECK(share[1] > 0.045 && share[1] < 0.05);
    T_EQ_INT(td_router_shares(s, 54000, share), 2);
    T_CHECK(share[1] > 0.33 && share[1] < 0.34);
    T_EQ_INT(td_router_shares(s, 58000, share), 2);
    T_CHECK(share[1] == 0.5);
    /* Failover does not ramp the choice of backend: the primary takes all once it serves. */
    s->method = TD_METHOD_FAILOVER;
    s->backends[0].weight = 0;
    T_EQ_INT(td_router_pick_backend(s, NULL, -1, NULL, 50000), 1);
    T_EQ_INT(td_router_shares(s, 50000, share), 1);
    T_CHECK(share[1] == 1);
    td_snapshot_release(s);
}

int main(void) {
    test_pick_server_beyond_256_servers();
    test_pick_server_skips_servers_at_max_conns_and_says_full();
    test_failover_100_0_backup_takes_over_and_failback_waits();
    test_failover_100_50_and_backup_order();
    test_failover_passive_ejects_primary_when_backup_is_up();
    test_failback_default_is_one_full_rise();
    test_shares_round_robin_count_only_backends_up();
    test_pinned_backend_while_up_and_not_drained();
    test_passive_ejections_alone_never_give_up();
    test_servers_by_weight_and_backend_up_since();
    test_failover_without_a_primary();
    test_maint_and_drain_never_picked_by_weight();
    test_pins_on_drain_last_until_drain_ms_and_on_maint_not_at_all();
    test_failover_order_leaves_out_maint_and_drain();
    test_passive_backup_in_maint_is_not_somewhere_else_to_go();
    test_slow_start_ramp_arithmetic();
    test_slow_start_server_ramps_after_it_comes_up();
    test_slow_start_weight_from_0_in_a_new_snapshot();
    test_slow_start_backend_back_from_no_server_up();
    return t_done("test_router");
}
