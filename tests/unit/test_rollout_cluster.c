/* The rollout's analysis across nodes, its pure part: a node's counters document read into the
 * two sides, per-node baselines, deltas summed over nodes, and a node that restarted (its
 * "started" changed, or its counters went down) taking a new baseline instead of counting. */
#include "td/rollout_cluster.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "t.h"

static json_t *before;

/* A counters document: green (the target) and blue (the baseline) with these counters, and
 * red, which had weight 0 before the rollout (neither side). latency[2] holds the requests. */
static json_t *counters(const char *started, int g_req, int g_err, int b_req, int b_err) {
    json_t *lat_g = json_array(), *lat_b = json_array(), *lat_r = json_array();
    for (int i = 0; i < TD_LAT_BUCKETS; i++) {
        json_array_append_new(lat_g, json_integer(i == 2 ? g_req : 0));
        json_array_append_new(lat_b, json_integer(i == 2 ? b_req : 0));
        json_array_append_new(lat_r, json_integer(i == 2 ? 1000 : 0));
    }
    return json_pack("{s:s,s:s,s:{s:{s:i,s:i,s:o},s:{s:i,s:i,s:o},s:{s:i,s:i,s:o}}}", "node",
                     "td-x", "started", started, "backends", "green", "requests", g_req, "errors",
                     g_err, "latency", lat_g, "blue", "requests", b_req, "errors", b_err, "latency",
                     lat_b, "red", "requests", 1000, "errors", 1000, "latency", lat_r);
}

static td_rollout_reading_t reading(const char *started, int g_req, int g_err, int b_req,
                                    int b_err) {
    td_rollout_reading_t r;
    char err[200] = "";
    json_t *doc = counters(started, g_req, g_err, b_req, b_err);
    int rc = td_rollout_cluster_reading(doc, "green", before, &r, err, sizeof(err));
    T_EQ_INT(rc, 0);
    json_decref(doc);
    return r;
}

static void test_reading_splits_the_sides_by_weights_before(void) {
    td_rollout_reading_t r = reading("s1", 30, 3, 70, 1);
    T_EQ_STR(r.started, "s1");
    T_EQ_INT(r.target.requests, 30);
    T_EQ_INT(r.target.errors, 3);
    T_EQ_INT(r.target.latency[2], 30);
    T_EQ_INT(r.baseline.requests, 70); /* red (weight 0 before) is not in it */
    T_EQ_INT(r.baseline.errors, 1);
    T_EQ_INT(r.baseline.latency[2], 70);
}

static void test_reading_rejects_other_shapes(void) {
    td_rollout_reading_t r;
    char err[200] = "";
    json_t *doc = json_pack("{s:s}", "node", "td-x");
    T_EQ_INT(td_rollout_cluster_reading(doc, "green", before, &r, err, sizeof(err)), TD_EINVAL);
    T_CHECK(strstr(err, "not a counters document") != NULL);
    json_decref(doc);
    doc = json_pack("{s:s,s:{s:{s:i}}}", "started", "s1", "backends", "green", "requests", 1);
    T_EQ_INT(td_rollout_cluster_reading(doc, "green", before, &r, err, sizeof(err)), TD_EINVAL);
    T_CHECK(strstr(err, "backend green") != NULL);
    json_decref(doc);
}

/* Three nodes, each below 100 target requests alone; the sum is what the leader judges. */
static void test_deltas_summed_over_nodes(void) {
    td_rollout_base_t base[3];
    memset(base, 0, sizeof(base));
    td_analysis_side_t t, b;
    memset(&t, 0, sizeof(t));
    memset(&b, 0, sizeof(b));
    td_rollout_reading_t open[3] = {reading("a", 100, 0, 900, 0), reading("b", 5, 0, 50, 0),
                                    reading("c", 0, 0, 0, 0)};
    for (int i = 0; i < 3; i++)
        T_EQ_INT(td_rollout_cluster_fold(&base[i], &open[i], &t, &b), 0); /* baselines only */
    T_EQ_INT(t.requests, 0);
    T_EQ_INT(b.requests, 0);
    td_rollout_reading_t now[3] = {reading("a", 170, 6, 1500, 2), reading("b", 80, 0, 600, 1),
                                   reading("c", 60, 1, 500, 0)};
    for (int i = 0; i < 3; i++)
        T_EQ_INT(td_rollout_cluster_fold(&base[i], &now[i], &t, &b), 1);
    T_EQ_INT(t.requests, 70 + 75 + 60);
    T_EQ_INT(t.errors, 7);
    T_EQ_INT(t.latency[2], 205);
    T_EQ_INT(b.requests, 600 + 550 + 500);
    T_EQ_INT(b.errors, 3);
    /* The baseline stays that of the window's opening: a later look counts from it again. */
    memset(&t, 0, sizeof(t));
    memset(&b, 0, sizeof(b));
    td_rollout_reading_t later = reading("a", 200, 6, 1600, 2);
    T_EQ_INT(td_rollout_cluster_fold(&base[0], &later, &t, &b), 1);
    T_EQ_INT(t.requests, 100);
    T_EQ_INT(b.requests, 700);
}

static void test_restarted_node_takes_a_new_baseline(void) {
    td_rollout_base_t base;
    memset(&base, 0, sizeof(base));
    td_analysis_side_t t, b;
    memset(&t, 0, sizeof(t));
    memset(&b, 0, sizeof(b));
    td_rollout_reading_t r0 = reading("s1", 500, 10, 500, 0);
    T_EQ_INT(td_rollout_cluster_fold(&base, &r0, &t, &b), 0);
    /* Its counters went down: a restart; this reading is the new baseline, nothing counted. */
    td_rollout_reading_t r1 = reading("s1", 20, 0, 30, 0);
    T_EQ_INT(td_rollout_cluster_fold(&base, &r1, &t, &b), 0);
    T_EQ_INT(t.requests, 0);
    T_EQ_INT(b.requests, 0);
    td_rollout_reading_t r2 = reading("s1", 50, 1, 90, 0);
    T_EQ_INT(td_rollout_cluster_fold(&base, &r2, &t, &b), 1);
    T_EQ_INT(t.requests, 30);
    T_EQ_INT(t.errors, 1);
    T_EQ_INT(b.requests, 60);
    /* "started" changed with counters already above the old baseline (a restart that served
     * more since): still a new baseline, not a delta against another process's counters. */
    memset(&t, 0, sizeof(t));
    memset(&b, 0, sizeof(b));
    td_rollout_reading_t r3 = reading("s2", 900, 10, 900, 0);
    T_EQ_INT(td_rollout_cluster_fold(&base, &r3, &t, &b), 0);
    T_EQ_INT(t.requests, 0);
    T_EQ_STR(base.r.started, "s2");
    td_rollout_reading_t r4 = reading("s2", 901, 10, 905, 0);
    T_EQ_INT(td_rollout_cluster_fold(&base, &r4, &t, &b), 1);
    T_EQ_INT(t.requests, 1);
    T_EQ_INT(b.requests, 5);
}

int main(void) {
    before = json_pack("{s:i,s:i,s:i}", "blue", 100, "green", 0, "red", 0);
    test_reading_splits_the_sides_by_weights_before();
    test_reading_rejects_other_shapes();
    test_deltas_summed_over_nodes();
    test_restarted_node_takes_a_new_baseline();
    json_decref(before);
    return t_done("test_rollout_cluster");
}
