/* The rollout engine's pure parts: the check of a POST /api/v1/rollout body, the weights of a
 * step, and the transition table. */
#include "td/rollout.h"

#include <jansson.h>
#include <string.h>

#include "t.h"

static td_rollout_env_t env2(int blue, int green, int green_up) {
    td_rollout_env_t e;
    memset(&e, 0, sizeof(e));
    e.num_backends = 2;
    snprintf(e.names[0], sizeof(e.names[0]), "blue");
    snprintf(e.names[1], sizeof(e.names[1]), "green");
    e.weights[0] = blue;
    e.weights[1] = green;
    e.up[0] = 1;
    e.up[1] = green_up;
    e.ready[0] = e.ready[1] = 1;
    return e;
}

/* Parses `text` against env; returns the result and leaves the message in err. */
static int parse(const char *text, const td_rollout_env_t *e, td_rollout_spec_t *s, char *err) {
    json_t *j = json_loads(text, 0, NULL);
    int r = td_rollout_parse(j, e, s, err, 300);
    json_decref(j);
    return r;
}

static void defaults_fill_every_key(void) {
    td_rollout_env_t e = env2(100, 0, 1);
    td_rollout_spec_t s;
    char err[300] = "";
    T_EQ_INT(parse("{\"to\": \"green\"}", &e, &s, err), 0);
    T_EQ_INT(s.num_steps, 3);
    T_EQ_INT(s.steps[0], 10);
    T_EQ_INT(s.steps[2], 100);
    T_EQ_INT(s.step_s, 60);
    T_EQ_INT(s.ramp_s, 0);
    T_EQ_INT(s.has_pre_check, 0);
    T_EQ_INT(s.min_requests, 200);
    T_EQ_INT(s.compare_baseline, 1);
    T_EQ_INT(s.interval_s, 5);
    T_EQ_INT(s.warmup_s, 5);
    T_EQ_INT(s.on_failure_pause, 0);
    T_EQ_INT(s.drain, 0);
    T_EQ_INT(parse("{\"to\": \"green\", \"pre_check\": {\"path\": \"/healthz\"}}", &e, &s, err), 0);
    T_EQ_STR(s.pc_expect, "2xx");
    T_EQ_INT(s.pc_requests, 10);
    T_EQ_INT(s.pc_webhook_timeout_s, 30);
}

/* Every bad body names its field; the backends are checked against env. */
static void bad_input_names_the_field(void) {
    static const struct {
        const char *body, *field;
    } cases[] = {
        {"{}", "to: "},
        {"{\"to\": \"green\", \"steps\": [50, 50, 100]}", "steps: "},
        {"{\"to\": \"green\", \"steps\": [10, 50]}", "steps: "},
        {"{\"to\": \"green\", \"steps\": []}", "steps: "},
        {"{\"to\": \"green\", \"steps\": [101]}", "steps: "},
        {"{\"to\": \"purple\"}", "to: unknown backend"},
        {"{\"to\": \"green\", \"step_s\": 0}", "step_s: "},
        {"{\"to\": \"green\", \"step_s\": 5, \"ramp_s\": 6}", "ramp_s: "},
        {"{\"to\": \"green\", \"step_s\": 5, \"analysis\": {\"interval_s\": 6}}",
         "analysis.interval_s: "},
        {"{\"to\": \"green\", \"step_s\": 5, \"analysis\": {\"warmup_s\": 6}}",
         "analysis.warmup_s: "},
        {"{\"to\": \"green\", \"analysis\": {\"max_error_rate\": -0.1}}",
         "analysis.max_error_rate: "},
        {"{\"to\": \"green\", \"analysis\": {\"max_ratio\": 0.9}}", "analysis.max_ratio: "},
        {"{\"to\": \"green\", \"analysis\": {\"significance\": 0.51}}", "analysis.significance: "},
        {"{\"to\": \"green\", \"analysis\": {\"webhook\": \"ftp://x\"}}", "analysis.webhook: "},
        {"{\"to\": \"green\", \"extra\": 1}", "extra: unknown key"},
        {"{\"to\": \"green\", \"pre_check\": {\"path\": \"/\", \"result\": {}}}",
         "pre_check.result: unknown key"},
        {"{\"to\": \"green\", \"pre_check\": {\"path\": \"x\"}}", "pre_check.path: "},
        {"{\"to\": \"green\", \"drain\": 1}", "drain: "},
    };
    td_rollout_env_t e = env2(100, 0, 1);
    td_rollout_spec_t s;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[300] = "";
        T_EQ_INT(parse(cases[i].body, &e, &s, err), TD_EINVAL);
        T_CHECK(strncmp(err, cases[i].field, strlen(cases[i].field)) == 0);
        if (strncmp(err, cases[i].field, strlen(cases[i].field)) != 0)
            fprintf(stderr, "  %s -> %s\n", cases[i].body, err);
    }
    char err[300];
    td_rollout_env_t all = env2(0, 100, 1);
    T_EQ_INT(parse("{\"to\": \"green\"}", &all, &s, err), TD_EINVAL);
    T_EQ_STR(err, "to: \"green\" already has 100 % (all the weight)");
    td_rollout_env_t down = env2(100, 0, 0);
    T_EQ_INT(parse("{\"to\": \"green\"}", &down, &s, err), TD_EINVAL);
    T_EQ_STR(err, "to: \"green\" has no server up");
    /* Read back from the state file: the backends are not judged again. */
    T_EQ_INT(parse("{\"to\": \"green\", \"state\": \"running\"}", NULL, &s, err), 0);
}

/* A target in drain or maint has a share of 0 whatever its weight: a rollout to it runs. */
static void a_target_not_ready_does_not_have_the_traffic_already(void) {
    td_rollout_spec_t s;
    char err[300] = "";
    td_rollout_env_t maint = env2(0, 100, 1);
    maint.ready[1] = 0;
    T_EQ_INT(parse("{\"to\": \"green\"}", &maint, &s, err), 0);
    T_EQ_STR(err, "");
}

static void weights_keep_the_others_proportions(void) {
    int out[3];
    int two[2] = {100, 0};
    td_rollout_weights(two, 2, 1, 10, out);
    T_EQ_INT(out[0], 90);
    T_EQ_INT(out[1], 10);
    td_rollout_weights(two, 2, 1, 100, out);
    T_EQ_INT(out[0], 0);
    T_EQ_INT(out[1], 100);
    int three[3] = {60, 0, 30}; /* blue 60, green (to) 0, grey 30: 2:1 */
    td_rollout_weights(three, 3, 1, 10, out);
    T_EQ_INT(out[0], 60);
    T_EQ_INT(out[2], 30);
    T_EQ_INT(out[1], 10);
    td_rollout_weights(three, 3, 1, 50, out);
    T_EQ_INT(out[0] + out[2], 50);
    T_EQ_INT(out[0], 33);
    T_EQ_INT(out[2], 17);
    int zero[3] = {100, 0, 0}; /* a backend at 0 stays at 0 */
    td_rollout_weights(zero, 3, 1, 33, out);
    T_EQ_INT(out[0], 67);
    T_EQ_INT(out[2], 0);
}

static void transitions_apply_only_where_they_make_sense(void) {
    T_EQ_INT(td_rollout_next_state(TD_RO_RUNNING, TD_RO_PAUSE), TD_RO_PAUSED);
    T_EQ_INT(td_rollout_next_state(TD_RO_RUNNING, TD_RO_RESUME), -1);
    T_EQ_INT(td_rollout_next_state(TD_RO_PAUSED, TD_RO_RESUME), TD_RO_RUNNING);
    T_EQ_INT(td_rollout_next_state(TD_RO_PAUSED, TD_RO_PROMOTE), TD_RO_RUNNING);
    T_EQ_INT(td_rollout_next_state(TD_RO_CHECKING, TD_RO_PROMOTE), -1);
    T_EQ_INT(td_rollout_next_state(TD_RO_CHECKING, TD_RO_ABORT), TD_RO_ABORTED);
    T_EQ_INT(td_rollout_next_state(TD_RO_DRAINING, TD_RO_ABORT), TD_RO_ABORTED);
    for (int a = 0; a < TD_RO_NACTIONS; a++) {
        T_EQ_INT(td_rollout_next_state(TD_RO_SUCCEEDED, a), -1);
        T_EQ_INT(td_rollout_next_state(TD_RO_ROLLED_BACK, a), -1);
        T_EQ_INT(td_rollout_next_state(TD_RO_ABORTED, a), -1);
    }
    for (int st = 0; st < TD_RO_NSTATES; st++)
        T_EQ_INT(td_rollout_state_parse(td_rollout_state_name(st)), st);
    T_EQ_INT(td_rollout_state_active(TD_RO_DRAINING), 1);
    T_EQ_INT(td_rollout_state_active(TD_RO_ABORTED), 0);
    T_EQ_INT(td_rollout_expect_valid("2xx,3xx"), 1);
    T_EQ_INT(td_rollout_expect_valid("200,204"), 1);
    T_EQ_INT(td_rollout_expect_valid("2xx,"), 0);
    T_EQ_INT(td_rollout_expect_valid("ok"), 0);
}

int main(void) {
    defaults_fill_every_key();
    bad_input_names_the_field();
    weights_keep_the_others_proportions();
    a_target_not_ready_does_not_have_the_traffic_already();
    transitions_apply_only_where_they_make_sense();
    return t_done("test_rollout");
}
