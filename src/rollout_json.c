/* The pure parts of the rollout engine: state names and the transition table, the check of a
 * POST /api/v1/rollout body, the weights of a step, and the rollout object's skeleton. */
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "td/common-t.h"
#include "td/config.h"
#include "td/rollout.h"

static const char *const state_names[TD_RO_NSTATES] = {
    "checking", "running", "paused", "draining", "succeeded", "rolled_back", "aborted"};
static const char *const action_names[TD_RO_NACTIONS] = {"pause", "resume", "promote", "abort"};

/* next[state][action]: the state an action leads to, -1 where it does not apply. */
static const int next_table[TD_RO_NSTATES][TD_RO_NACTIONS] = {
    [TD_RO_CHECKING] = {-1, -1, -1, TD_RO_ABORTED},
    [TD_RO_RUNNING] = {TD_RO_PAUSED, -1, TD_RO_RUNNING, TD_RO_ABORTED},
    [TD_RO_PAUSED] = {-1, TD_RO_RUNNING, TD_RO_RUNNING, TD_RO_ABORTED},
    [TD_RO_DRAINING] = {-1, -1, -1, TD_RO_ABORTED},
    [TD_RO_SUCCEEDED] = {-1, -1, -1, -1},
    [TD_RO_ROLLED_BACK] = {-1, -1, -1, -1},
    [TD_RO_ABORTED] = {-1, -1, -1, -1},
};

const char *td_rollout_state_name(td_rollout_state_t s) {
    return (unsigned)s < TD_RO_NSTATES ? state_names[s] : "";
}

const char *td_rollout_action_name(td_rollout_action_t a) {
    return (unsigned)a < TD_RO_NACTIONS ? action_names[a] : "";
}

int td_rollout_state_parse(const char *name) {
    for (int i = 0; name && i < TD_RO_NSTATES; i++)
        if (strcmp(name, state_names[i]) == 0)
            return i;
    return -1;
}

int td_rollout_state_active(td_rollout_state_t s) {
    return s == TD_RO_CHECKING || s == TD_RO_RUNNING || s == TD_RO_PAUSED || s == TD_RO_DRAINING;
}

int td_rollout_next_state(td_rollout_state_t s, td_rollout_action_t a) {
    if ((unsigned)s >= TD_RO_NSTATES || (unsigned)a >= TD_RO_NACTIONS)
        return -1;
    return next_table[s][a];
}

int td_rollout_expect_valid(const char *list) {
    const char *p = list;
    if (!p || !*p)
        return 0;
    for (;;) {
        if (p[0] < '1' || p[0] > '5' || !p[1] || !p[2])
            return 0;
        int cls = (p[1] == 'x' || p[1] == 'X') && (p[2] == 'x' || p[2] == 'X');
        int num = isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[2]);
        if (!cls && !num)
            return 0;
        p += 3;
        if (!*p)
            return 1;
        if (*p++ != ',')
            return 0;
    }
}

void td_rollout_weights(const int *before, size_t num, size_t to, int w, int *out) {
    long sum = 0;
    size_t others = 0;
    for (size_t i = 0; i < num; i++)
        if (i != to) {
            sum += before[i];
            others++;
        }
    int left = 100 - w, given = 0;
    double rem[TD_CONFIG_MAX_BACKENDS];
    for (size_t i = 0; i < num; i++) {
        if (i == to) {
            out[i] = w;
            rem[i] = -1;
            continue;
        }
        double exact = sum > 0 ? (double)left * before[i] / (double)sum
                               : (double)left / (double)(others ? others : 1);
        out[i] = (int)floor(exact);
        rem[i] = sum > 0 && before[i] == 0 ? -1 : exact - out[i];
        given += out[i];
    }
    /* The points lost to rounding go to the largest remainders (first listed on a tie). */
    while (given < left) {
        size_t best = num;
        for (size_t i = 0; i < num; i++)
            if (rem[i] >= 0 && (best == num || rem[i] > rem[best]))
                best = i;
        if (best == num)
            break;
        out[best]++;
        rem[best] = -1;
        given++;
    }
}

/* ---- the body's check */

/* One error: "FIELD: message". Returns TD_EINVAL. */
static int bad(char *err, size_t n, const char *field, const char *msg) {
    snprintf(err, n, "%s: %s", field, msg);
    return TD_EINVAL;
}

static int get_int(const json_t *o, const char *key, const char *field, long lo, long hi, int *out,
                   char *err, size_t n) {
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    char msg[128];
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(msg, sizeof(msg), "must be an integer from %ld to %ld", lo, hi);
        return bad(err, n, field, msg);
    }
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_num(const json_t *o, const char *key, const char *field, double *out, char *err,
                   size_t n) {
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return bad(err, n, field, "must be a number");
    *out = json_number_value(v);
    return 0;
}

static int get_str(const json_t *o, const char *key, const char *field, char *out, size_t cap,
                   char *err, size_t n) {
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return bad(err, n, field, "must be a string (not too long)");
    snprintf(out, cap, "%s", json_string_value(v));
    return 0;
}

static int get_bool(const json_t *o, const char *key, const char *field, int *out, char *err,
                    size_t n) {
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return bad(err, n, field, "must be true or false");
    *out = json_is_true(v);
    return 0;
}

/* Every key of `o` is one of `known` (NULL-terminated); else the first stranger is named. */
static int only_keys(const json_t *o, const char *const *known, const char *prefix, char *err,
                     size_t n) {
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        size_t i = 0;
        while (known[i] && strcmp(known[i], key) != 0)
            i++;
        if (!known[i]) {
            char field[160];
            snprintf(field, sizeof(field), "%s%s", prefix, key);
            return bad(err, n, field, "unknown key");
        }
    }
    return 0;
}

static int url_ok(const char *u) {
    return !u[0] || strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0;
}

static int parse_pre_check(const json_t *pc, td_rollout_spec_t *s, int restoring, char *err,
                           size_t n) {
    static const char *const known[] = {
        "path", "expect_status", "requests", "webhook", "webhook_timeout_s", "result", NULL};
    if (!json_is_object(pc))
        return bad(err, n, "pre_check", "must be an object");
    /* "result" is the engine's: only a rollout read back from the state file has it. */
    if (only_keys(pc, known, "pre_check.", err, n) < 0)
        return TD_EINVAL;
    if (!restoring && json_object_get(pc, "result"))
        return bad(err, n, "pre_check.result", "unknown key");
    s->has_pre_check = 1;
    if (!json_object_get(pc, "path"))
        return bad(err, n, "pre_check.path", "required (e.g. \"/healthz\")");
    if (get_str(pc, "path", "pre_check.path", s->pc_path, sizeof(s->pc_path), err, n) < 0)
        return TD_EINVAL;
    if (s->pc_path[0] != '/')
        return bad(err, n, "pre_check.path", "must start with /");
    for (const char *p = s->pc_path; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return bad(err, n, "pre_check.path", "must not hold spaces or control characters");
    if (get_str(pc, "expect_status", "pre_check.expect_status", s->pc_expect, sizeof(s->pc_expect),
                err, n) < 0)
        return TD_EINVAL;
    if (!td_rollout_expect_valid(s->pc_expect))
        return bad(err, n, "pre_check.expect_status",
                   "must be a list of statuses or classes such as \"2xx\", \"2xx,3xx\", \"200\"");
    if (get_int(pc, "requests", "pre_check.requests", 1, 1000, &s->pc_requests, err, n) < 0 ||
        get_str(pc, "webhook", "pre_check.webhook", s->pc_webhook, sizeof(s->pc_webhook), err, n) <
            0 ||
        get_int(pc, "webhook_timeout_s", "pre_check.webhook_timeout_s", 1, 3600,
                &s->pc_webhook_timeout_s, err, n) < 0)
        return TD_EINVAL;
    if (!url_ok(s->pc_webhook))
        return bad(err, n, "pre_check.webhook", "must be an http:// or https:// URL");
    return 0;
}

static int parse_analysis(const json_t *a, td_rollout_spec_t *s, char *err, size_t n) {
    static const char *const known[] = {
        "max_error_rate", "max_p99_ms",   "min_requests", "compare",  "max_ratio",
        "webhook",        "significance", "interval_s",   "warmup_s", NULL};
    if (!json_is_object(a))
        return bad(err, n, "analysis", "must be an object");
    if (only_keys(a, known, "analysis.", err, n) < 0)
        return TD_EINVAL;
    char compare[16] = "baseline";
    if (get_num(a, "max_error_rate", "analysis.max_error_rate", &s->max_error_rate, err, n) < 0 ||
        get_int(a, "max_p99_ms", "analysis.max_p99_ms", 0, 3600000, &s->max_p99_ms, err, n) < 0 ||
        get_int(a, "min_requests", "analysis.min_requests", 1, 1000000000, &s->min_requests, err,
                n) < 0 ||
        get_str(a, "compare", "analysis.compare", compare, sizeof(compare), err, n) < 0 ||
        get_num(a, "max_ratio", "analysis.max_ratio", &s->max_ratio, err, n) < 0 ||
        get_str(a, "webhook", "analysis.webhook", s->an_webhook, sizeof(s->an_webhook), err, n) <
            0 ||
        get_num(a, "significance", "analysis.significance", &s->significance, err, n) < 0 ||
        get_int(a, "interval_s", "analysis.interval_s", 1, 86400, &s->interval_s, err, n) < 0 ||
        get_int(a, "warmup_s", "analysis.warmup_s", 0, 86400, &s->warmup_s, err, n) < 0)
        return TD_EINVAL;
    if (strcmp(compare, "baseline") == 0)
        s->compare_baseline = 1;
    else if (strcmp(compare, "none") == 0)
        s->compare_baseline = 0;
    else
        return bad(err, n, "analysis.compare", "must be \"baseline\" or \"none\"");
    if (!(s->max_error_rate >= 0 && s->max_error_rate <= 1))
        return bad(err, n, "analysis.max_error_rate", "must be from 0 to 1 (0.01 is 1 %)");
    if (!(s->max_ratio >= 1))
        return bad(err, n, "analysis.max_ratio", "must be 1 or more");
    if (!(s->significance > 0 && s->significance <= 0.5))
        return bad(err, n, "analysis.significance", "must be above 0 and at most 0.5");
    if (!url_ok(s->an_webhook))
        return bad(err, n, "analysis.webhook", "must be an http:// or https:// URL");
    return 0;
}

int td_rollout_parse(const json_t *body, const td_rollout_env_t *env, td_rollout_spec_t *s,
                     char *err, size_t n) {
    static const char *const known[] = {"to",       "steps",      "step_s", "ramp_s", "pre_check",
                                        "analysis", "on_failure", "drain",  NULL};
    memset(s, 0, sizeof(*s));
    static const int default_steps[] = {10, 50, 100};
    memcpy(s->steps, default_steps, sizeof(default_steps));
    s->num_steps = 3;
    s->step_s = 60;
    snprintf(s->pc_expect, sizeof(s->pc_expect), "2xx");
    s->pc_requests = 10;
    s->pc_webhook_timeout_s = 30;
    s->max_error_rate = 0.01;
    s->min_requests = 200;
    s->compare_baseline = 1;
    s->max_ratio = 1.5;
    s->significance = 0.01;
    s->interval_s = -1; /* defaults from step_s, below */
    s->warmup_s = -1;
    if (!json_is_object(body))
        return bad(err, n, "request", "body must be a JSON object");
    if (!env) {
        /* Read back from the state file: only the keys a POST body has count. */
    } else if (only_keys(body, known, "", err, n) < 0) {
        return TD_EINVAL;
    }
    json_t *to = json_object_get(body, "to");
    if (!to)
        return bad(err, n, "to", "required: the backend to move the traffic to");
    if (get_str(body, "to", "to", s->to, sizeof(s->to), err, n) < 0)
        return TD_EINVAL;
    json_t *steps = json_object_get(body, "steps");
    if (steps) {
        const char *msg = "must be strictly increasing integers from 1 to 100 ending at 100, "
                          "e.g. [10, 50, 100]";
        if (!json_is_array(steps) || json_array_size(steps) == 0 ||
            json_array_size(steps) > TD_ROLLOUT_MAX_STEPS)
            return bad(err, n, "steps", msg);
        s->num_steps = json_array_size(steps);
        for (size_t i = 0; i < s->num_steps; i++) {
            json_t *v = json_array_get(steps, i);
            json_int_t w = json_is_integer(v) ? json_integer_value(v) : -1;
            if (w < 1 || w > 100 || (i && w <= s->steps[i - 1]))
                return bad(err, n, "steps", msg);
            s->steps[i] = (int)w;
        }
        if (s->steps[s->num_steps - 1] != 100)
            return bad(err, n, "steps", msg);
    }
    if (get_int(body, "step_s", "step_s", 1, 86400, &s->step_s, err, n) < 0)
        return TD_EINVAL;
    s->ramp_s = 0;
    if (get_int(body, "ramp_s", "ramp_s", 0, s->step_s, &s->ramp_s, err, n) < 0)
        return TD_EINVAL;
    char on_failure[16] = "rollback";
    if (get_str(body, "on_failure", "on_failure", on_failure, sizeof(on_failure), err, n) < 0 ||
        get_bool(body, "drain", "drain", &s->drain, err, n) < 0)
        return TD_EINVAL;
    if (strcmp(on_failure, "rollback") == 0)
        s->on_failure_pause = 0;
    else if (strcmp(on_failure, "pause") == 0)
        s->on_failure_pause = 1;
    else
        return bad(err, n, "on_failure", "must be \"rollback\" or \"pause\"");
    json_t *pc = json_object_get(body, "pre_check");
    if (pc && !json_is_null(pc) && parse_pre_check(pc, s, env == NULL, err, n) < 0)
        return TD_EINVAL;
    json_t *an = json_object_get(body, "analysis");
    if (an && parse_analysis(an, s, err, n) < 0)
        return TD_EINVAL;
    /* A step of 25 s or more: a look every 5 s after a 5 s warm-up; a shorter one: both a fifth
     * of it (at least a 1 s interval), so that every step is judged. */
    if (s->interval_s < 0)
        s->interval_s = s->step_s >= 25 ? 5 : (s->step_s / 5 > 1 ? s->step_s / 5 : 1);
    if (s->warmup_s < 0)
        s->warmup_s = s->step_s >= 25 ? 5 : s->step_s / 5;
    char msg[300];
    if (s->interval_s > s->step_s) {
        snprintf(msg, sizeof(msg), "must be from 1 to step_s (%d)", s->step_s);
        return bad(err, n, "analysis.interval_s", msg);
    }
    if (s->warmup_s >= s->step_s) {
        snprintf(msg, sizeof(msg),
                 "must be from 0 to below step_s (%d): a step that is all warm-up judges nothing",
                 s->step_s);
        return bad(err, n, "analysis.warmup_s", msg);
    }
    if (!env)
        return 0;
    size_t i, total = 0;
    for (i = 0; i < env->num_backends; i++)
        total += (size_t)env->weights[i];
    for (i = 0; i < env->num_backends; i++)
        if (strcmp(env->names[i], s->to) == 0)
            break;
    if (i == env->num_backends) {
        snprintf(msg, sizeof(msg), "unknown backend \"%.64s\"", s->to);
        return bad(err, n, "to", msg);
    }
    if (env->num_backends < 2 || (env->ready[i] && (size_t)env->weights[i] == total)) {
        snprintf(msg, sizeof(msg), "\"%.64s\" already has 100 %% (all the weight)", s->to);
        return bad(err, n, "to", msg);
    }
    if (env->state[i] != TD_BACKEND_READY) {
        snprintf(msg, sizeof(msg),
                 "\"%.64s\" is in state %s (no user traffic): put it back to ready first "
                 "(PUT /api/v1/backends/%.64s {\"state\": \"ready\"})",
                 s->to, td_backend_state_name(env->state[i]), s->to);
        return bad(err, n, "to", msg);
    }
    if (!env->up[i]) {
        snprintf(msg, sizeof(msg), "\"%.64s\" has no server up", s->to);
        return bad(err, n, "to", msg);
    }
    return 0;
}

json_t *td_rollout_spec_json(const td_rollout_spec_t *s) {
    json_t *steps = json_array(), *detail = json_array();
    for (size_t i = 0; i < s->num_steps; i++) {
        json_array_append_new(steps, json_integer(s->steps[i]));
        json_array_append_new(detail, json_pack("{s:i,s:s,s:n,s:n,s:n,s:n,s:n,s:n,s:[]}", "weight",
                                                s->steps[i], "state", "pending", "started_at",
                                                "ended_at", "share_configured", "share_actual",
                                                "target", "baseline", "looks"));
    }
    json_t *pc = json_null();
    if (s->has_pre_check)
        pc = json_pack("{s:s,s:s,s:i,s:s,s:i,s:n}", "path", s->pc_path, "expect_status",
                       s->pc_expect, "requests", s->pc_requests, "webhook", s->pc_webhook,
                       "webhook_timeout_s", s->pc_webhook_timeout_s, "result");
    json_t *an = json_pack("{s:f,s:i,s:i,s:s,s:f,s:s,s:f,s:i,s:i}", "max_error_rate",
                           s->max_error_rate, "max_p99_ms", s->max_p99_ms, "min_requests",
                           s->min_requests, "compare", s->compare_baseline ? "baseline" : "none",
                           "max_ratio", s->max_ratio, "webhook", s->an_webhook, "significance",
                           s->significance, "interval_s", s->interval_s, "warmup_s", s->warmup_s);
    return json_pack("{s:s,s:s,s:o,s:i,s:i,s:i,s:s,s:b,s:o,s:o,s:o,s:[]}", "state", "checking",
                     "to", s->to, "steps", steps, "step", 0, "step_s", s->step_s, "ramp_s",
                     s->ramp_s, "on_failure", s->on_failure_pause ? "pause" : "rollback", "drain",
                     s->drain, "pre_check", pc, "analysis", an, "steps_detail", detail,
                     "transitions");
}
