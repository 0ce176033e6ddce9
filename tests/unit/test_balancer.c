/* Smooth weighted round robin and backend choice: exact sequences and counts. */
#include "td/balancer.h"

#include <stdlib.h>

#include "t.h"
#include "td/config.h"
#include "td/router.h"

static void test_sequence_5_1_1(void) {
    int w[3] = {5, 1, 1}, cur[3] = {0};
    char got[15] = {0};
    for (int i = 0; i < 14; i++)
        got[i] = (char)('a' + td_balancer_pick(w, cur, NULL, 3));
    /* nginx's smooth WRR: interleaved, and the cycle repeats exactly. */
    T_EQ_STR(got, "aabacaaaabacaa");
}

static void test_30_70_exact(void) {
    int w[2] = {30, 70}, cur[2] = {0}, count[2] = {0};
    for (int i = 0; i < 1000; i++)
        count[td_balancer_pick(w, cur, NULL, 2)]++;
    T_EQ_INT(count[0], 300);
    T_EQ_INT(count[1], 700);
}

static void test_weight_zero_never(void) {
    int w[2] = {0, 100}, cur[2] = {0}, count[2] = {0};
    for (int i = 0; i < 10000; i++)
        count[td_balancer_pick(w, cur, NULL, 2)]++;
    T_EQ_INT(count[0], 0);
    T_EQ_INT(count[1], 10000);
    int none[2] = {0, 0};
    T_EQ_INT(td_balancer_pick(none, cur, NULL, 2), -1);
}

static void test_live_change_next_pick(void) {
    int w[2] = {50, 50}, cur[2] = {0};
    for (int i = 0; i < 7; i++)
        td_balancer_pick(w, cur, NULL, 2);
    w[0] = 0; /* blue to 0: the very next pick is green, and every one after */
    for (int i = 0; i < 100; i++)
        T_EQ_INT(td_balancer_pick(w, cur, NULL, 2), 1);
    w[0] = 100;
    w[1] = 0;
    T_EQ_INT(td_balancer_pick(w, cur, NULL, 2), 0);
}

static void test_eligible_mask(void) {
    int w[3] = {1, 1, 1}, cur[3] = {0};
    uint8_t ok[3] = {1, 0, 1};
    int count[3] = {0};
    for (int i = 0; i < 100; i++)
        count[td_balancer_pick(w, cur, ok, 3)]++;
    T_EQ_INT(count[1], 0);
    T_EQ_INT(count[0], 50);
    T_EQ_INT(count[2], 50);
}

static td_snapshot_t *snapshot(int wb, int wg, td_method_t m) {
    td_config_t *cfg = td_config_demo();
    cfg->backends[0].weight = wb;
    cfg->backends[1].weight = wg;
    cfg->method = m;
    char err[256];
    return td_snapshot_build(cfg, 1, err, sizeof(err));
}

static void test_router_methods(void) {
    td_snapshot_t *s = snapshot(30, 70, TD_METHOD_ROUND_ROBIN);
    int wrr[2] = {0}, count[2] = {0};
    for (int i = 0; i < 1000; i++)
        count[td_router_pick_backend(s, wrr, -1, NULL, 0)]++;
    T_EQ_INT(count[0], 300);
    T_EQ_INT(count[1], 700);
    /* A pinned (sticky) client stays on its backend while it is up, even at weight 0. */
    s->backends[0].weight = 0;
    T_EQ_INT(td_router_pick_backend(s, wrr, 0, NULL, 0), 0);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 0), 1);
    /* Failover: the up backend with the highest weight; ties to the first listed. */
    s->method = TD_METHOD_FAILOVER;
    s->backends[0].weight = 100;
    s->backends[1].weight = 50;
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 0), 0);
    uint8_t tried[2] = {1, 0};
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, tried, 0), 1);
    s->backends[1].weight = 100;
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 0), 0);
    /* Passive detection: `failures` in a row eject the server, and its backend with it, until
     * the ejection ends; the second ejection in a row lasts twice as long. */
    s->config->passive.failures = 2;
    s->config->passive.eject_ms = 5000;
    td_server_stats_t *blue = s->backends[0].servers[0].st;
    s->backends[0].failback_ms = 0; /* back at once: failback is tested in test_router.c */
    T_EQ_INT(td_passive_failure(s, blue, 1000), 0);
    T_EQ_INT(td_passive_failure(s, blue, 1000), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 2000), 1);
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 6000), 0);
    td_passive_failure(s, blue, 6000);
    T_EQ_INT(td_passive_failure(s, blue, 6000), 1);
    T_EQ_INT(atomic_load(&blue->down_until_ms), 16000);
    /* Passive ejection alone never leaves a request with nowhere to go: blue is ejected, then
     * the ratio moves everything to blue; requests go to blue rather than failing (503). (In
     * round robin: in failover, green at weight 0 would be blue's backup.) */
    s->method = TD_METHOD_ROUND_ROBIN;
    s->backends[0].weight = 100;
    s->backends[1].weight = 0;
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 7000), 0);
    T_EQ_INT(td_router_pick_server(&s->backends[0], wrr, NULL, 7000), 0);
    s->backends[1].weight = 100;
    /* The last server up is never ejected on passive signals alone. */
    td_server_stats_t *green = s->backends[1].servers[0].st;
    td_passive_failure(s, green, 7000);
    T_EQ_INT(td_passive_failure(s, green, 7000), 0);
    T_CHECK(td_server_is_up(green, 7000));
    /* No backend with weight above 0: unavailable. */
    s->backends[0].weight = s->backends[1].weight = 0;
    T_EQ_INT(td_router_pick_backend(s, wrr, -1, NULL, 20000), TD_EUNAVAIL);
    td_snapshot_release(s);
}

int main(void) {
    test_sequence_5_1_1();
    test_30_70_exact();
    test_weight_zero_never();
    test_live_change_next_pick();
    test_eligible_mask();
    test_router_methods();
    return t_done("test_balancer");
}
