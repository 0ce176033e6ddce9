/* tdctl switch, tdctl rollout: td's rollouts started (POST /api/v1/rollout), followed (GET
 * /api/v1/rollout every 0.5 s, a progress line per step) and driven (pause, resume, promote,
 * abort). The rollout runs in td ("Rollouts" in docs/ARCHITECTURE.md): tdctl only asks and
 * watches, so an interrupted tdctl leaves it running. */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FOLLOW_POLL_S 0.5 /* switch: how often the rollout is read */
#define LOST_TD_S 10.0    /* switch: td unanswered this long and tdctl stops following */
#define MIN_REQUESTS_MAX 100000000L
#define BAR_WIDTH 20
#define ANALYSIS_LOOK_S 5.0 /* td's default analysis interval_s and warmup_s */

/* What switch posts: the rollout's body, built from the options. */
typedef struct plan_s {
    const char *to;    /* borrowed (argv): the new side */
    json_t *body;      /* owned: POST /api/v1/rollout's body */
    bool detach;       /* --detach: post and return */
    char to_state[16]; /* the new side's state before the switch ("ready", "drain", "maint") */
    /* The new side's weight before the switch (-1: left as it was), and whether tdctl set it
     * ready (from to_state): what is put back when td refuses the rollout. */
    json_int_t to_weight;
    bool made_ready;
} plan_t;

/* What the follower last printed, to print only what changed. */
typedef struct follow_s {
    char id[64];
    char state[16];
    json_int_t step; /* -1 before the first */
    progress_t progress;
    char leader[64];   /* cluster mode: the leader last printed */
    char waiting[256]; /* cluster mode: the nodes last printed as not at the step */
} follow_t;

/* ---------------------------------------------------------------------------------------------
 * Reading a rollout object */

static const char *rstate(const json_t *ro) {
    return str(ro, "state");
}

bool rollout_ended(const json_t *ro) {
    const char *s = rstate(ro);

    return !strcmp(s, "succeeded") || !strcmp(s, "rolled_back") || !strcmp(s, "aborted");
}

int get_rollout(const ctl_t *ctl, json_t **rollout) {
    reply_t r;
    int rc = call_quiet(ctl, "GET", "/api/v1/rollout", NULL, 0, &r);

    *rollout = NULL;
    if (rc == RC_DONE) {
        if (!(*rollout = parse_reply(&r)) || !json_is_object(*rollout)) {
            json_decref(*rollout);
            *rollout = NULL;
            rc = RC_REFUSED;
        }
    } else if (r.status == 404) {
        rc = RC_DONE; /* no rollout yet */
    } else if (r.status != 0) {
        json_t *doc = r.body.len ? json_loadb(r.body.p, r.body.len, 0, NULL) : NULL;
        const char *msg = json_string_value(json_object_get(doc, "error"));

        fprintf(stderr, "tdctl: td refused (HTTP %ld): %s\n", r.status, msg ? msg : "?");
        json_decref(doc);
    }
    free(r.body.p);
    return rc;
}

/* A number member as a double, or dflt when td did not send one (or sent null). */
static double real_of(const json_t *obj, const char *key, double dflt) {
    const json_t *v = json_object_get(obj, key);

    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* One side's figures of a step: "512 req 0.20% p99 25ms", "-" parts where td sent none. */
static void side_figures(const json_t *side, char *out, size_t n) {
    const json_t *rate = json_object_get(side, "error_rate");
    const json_t *p99 = json_object_get(side, "p99_ms");
    char r[24] = "-", p[24] = "-";

    if (json_is_number(rate))
        snprintf(r, sizeof(r), "%.2f%%", 100.0 * json_number_value(rate));
    if (json_is_number(p99))
        snprintf(p, sizeof(p), "%.0fms", json_number_value(p99));
    snprintf(out, n, "%s req %s p99 %s", num(side, "requests").s, r, p);
}

/* "green 512 req 0.20% p99 25ms vs blue 4601 req 0.19% p99 24ms" for step detail d. */
static void step_figures(const json_t *ro, const json_t *d, char *out, size_t n) {
    char t[64], b[64];

    side_figures(json_object_get(d, "target"), t, sizeof(t));
    side_figures(json_object_get(d, "baseline"), b, sizeof(b));
    snprintf(out, n, "%s %s vs %s %s", str(ro, "to"), t, str(ro, "from"), b);
}

static const json_t *step_detail(const json_t *ro, json_int_t i) {
    return json_array_get(json_object_get(ro, "steps_detail"), (size_t)i);
}

static size_t nsteps(const json_t *ro) {
    return json_array_size(json_object_get(ro, "steps"));
}

/* Cluster mode: the nodes that have not applied the rollout's current step, "td-c (step 1), td-b
 * (none)" ("" when every node has, or outside cluster mode). */
static void waiting_text(const json_t *ro, char *out, size_t n) {
    const json_t *node;
    json_int_t step = int_of(ro, "step", 0);
    size_t i, len = 0;

    out[0] = '\0';
    json_array_foreach(json_object_get(ro, "nodes"), i, node) {
        const json_t *at = json_object_get(node, "applied_step");
        char was[32];
        int w;

        if (json_is_integer(at) && json_integer_value(at) == step)
            continue;
        if (json_is_integer(at))
            snprintf(was, sizeof(was), "step %" JSON_INTEGER_FORMAT, json_integer_value(at) + 1);
        else
            snprintf(was, sizeof(was), "none");
        w = snprintf(out + len, n - len, "%s%s (%s)", len ? ", " : "", str(node, "node"), was);
        if (w < 0 || (size_t)w >= n - len)
            break;
        len += (size_t)w;
    }
}

/* The progress line of the current step: "[#####---] step 2/3 green 50% 12s left  figures". */
static void bar_line(const json_t *ro, char *out, size_t n) {
    json_int_t step = int_of(ro, "step", 0);
    double step_s = real_of(ro, "step_s", 0), left = real_of(ro, "step_remaining_s", -1);
    const json_t *d = step_detail(ro, step);
    char bar[BAR_WIDTH + 1], figures[160], when[32];
    int i, done = step_s > 0 && left >= 0 ? (int)(BAR_WIDTH * (step_s - left) / step_s) : 0;

    for (i = 0; i < BAR_WIDTH; i++)
        bar[i] = i < done ? '#' : '-';
    bar[BAR_WIDTH] = '\0';
    if (left >= 0)
        snprintf(when, sizeof(when), "%.0fs left", left);
    else
        snprintf(when, sizeof(when), "%s", rstate(ro));
    step_figures(ro, d, figures, sizeof(figures));
    char waiting[200];
    waiting_text(ro, waiting, sizeof(waiting));
    snprintf(out, n,
             "[%s] step %" JSON_INTEGER_FORMAT "/%zu %s %" JSON_INTEGER_FORMAT "%% %s  %s%s%s", bar,
             step + 1, nsteps(ro), str(ro, "to"),
             int_of(json_object_get(ro, "weights"), str(ro, "to"), int_of(d, "weight", 0)), when,
             figures, waiting[0] ? "  waiting for " : "", waiting);
}

/* The why of the last transition, or "". */
static const char *last_why(const json_t *ro) {
    const json_t *t = json_object_get(ro, "transitions");
    const json_t *last = json_array_get(t, json_array_size(t) ? json_array_size(t) - 1 : 0);
    const char *why = json_string_value(json_object_get(last, "why"));

    return why ? why : "";
}

/* ---------------------------------------------------------------------------------------------
 * Following a rollout */

/* Prints the end of step i (its final figures): a line of its own. */
static void print_step_end(const json_t *ro, json_int_t i) {
    const json_t *d = step_detail(ro, i);
    char figures[160];

    if (!d)
        return;
    step_figures(ro, d, figures, sizeof(figures));
    printf("step %" JSON_INTEGER_FORMAT "/%zu (%s %" JSON_INTEGER_FORMAT "%%) %s: %s\n", i + 1,
           nsteps(ro), str(ro, "to"), int_of(d, "weight", 0), str(d, "state"), figures);
}

/* Shows what changed since the last look: a line per change of state (with td's why, or the
 * reason of a pause); per step, on a terminal its bar rewritten in place, otherwise a line when
 * it starts and one with its final figures. */
static void show(follow_t *f, const json_t *ro) {
    json_int_t step = int_of(ro, "step", 0);
    char line[512], waiting[256];
    const char *leader = json_string_value(json_object_get(ro, "leader"));

    if (leader && strcmp(leader, f->leader) != 0) {
        progress_end(&f->progress);
        printf("%s %s\n", f->leader[0] ? "leader now:" : "leader:", leader);
        fflush(stdout);
        snprintf(f->leader, sizeof(f->leader), "%s", leader);
    }
    waiting_text(ro, waiting, sizeof(waiting));
    if (!f->progress.tty && !rollout_ended(ro) && strcmp(waiting, f->waiting) != 0 && waiting[0]) {
        printf("step %" JSON_INTEGER_FORMAT "/%zu: waiting for %s to apply it\n", step + 1,
               nsteps(ro), waiting);
        fflush(stdout);
    }
    snprintf(f->waiting, sizeof(f->waiting), "%s", waiting);

    if (f->step >= 0 && step != f->step) {
        progress_end(&f->progress);
        if (!f->progress.tty)
            print_step_end(ro, f->step);
    }
    if (strcmp(f->state, rstate(ro)) != 0) {
        const char *reason = json_string_value(json_object_get(ro, "reason"));
        const char *why = reason && strcmp(rstate(ro), "paused") == 0 ? reason : last_why(ro);

        progress_end(&f->progress);
        /* The step the rollout ended on is over before the rollout is: its figures come first. */
        if (!f->progress.tty && rollout_ended(ro))
            print_step_end(ro, step);
        printf("rollout %s: %s%s%s\n", str(ro, "id"), rstate(ro), *why ? ": " : "", why);
        fflush(stdout);
        snprintf(f->state, sizeof(f->state), "%s", rstate(ro));
    }
    if (f->progress.tty && !rollout_ended(ro)) {
        bar_line(ro, line, sizeof(line));
        progress_show(&f->progress, line);
    } else if (step != f->step && !rollout_ended(ro)) {
        const json_t *d = step_detail(ro, step);

        printf("step %" JSON_INTEGER_FORMAT "/%zu: %s %" JSON_INTEGER_FORMAT "%% for %gs\n",
               step + 1, nsteps(ro), str(ro, "to"), int_of(d, "weight", 0),
               real_of(ro, "step_s", 0));
        fflush(stdout);
    }
    f->step = step;
}

/* How the rollout ended, and the exit status: 0 succeeded, 1 rolled back or aborted. */
static int report_end(follow_t *f, const json_t *ro) {
    const json_t *reason = json_object_get(ro, "reason");
    char w[256];

    progress_end(&f->progress);
    weights_text(json_object_get(ro, "weights"), w, sizeof(w));
    if (strcmp(rstate(ro), "succeeded") == 0) {
        printf("switched to %s: %s (rollout %s succeeded)\n", str(ro, "to"), w, str(ro, "id"));
        return RC_DONE;
    }
    fprintf(stderr, "tdctl: rollout %s %s: %s\ntdctl: weights back to %s\n", str(ro, "id"),
            strcmp(rstate(ro), "aborted") == 0 ? "aborted" : "rolled back",
            json_is_string(reason) ? json_string_value(reason) : "td gave no reason", w);
    return RC_REFUSED;
}

/* Reads the rollout every FOLLOW_POLL_S until it ends or tdctl is interrupted. */
static int follow(const ctl_t *ctl, const char *id) {
    follow_t f = {.step = -1};
    double lost_since = -1;

    snprintf(f.id, sizeof(f.id), "%s", id);
    progress_init(&f.progress);
    catch_signals();
    for (;;) {
        json_t *ro = NULL;

        if (interrupted) {
            progress_end(&f.progress);
            printf("detached: rollout %s keeps running in td; tdctl rollout pause|abort to stop "
                   "it\n",
                   f.id);
            return RC_DETACHED;
        }
        if (get_rollout(ctl, &ro) != RC_DONE || !ro) {
            json_decref(ro);
            if (lost_since < 0)
                lost_since = now_s();
            if (now_s() - lost_since > LOST_TD_S) {
                progress_end(&f.progress);
                fprintf(stderr,
                        "tdctl: lost td for %.0fs; rollout %s may still run there: see tdctl "
                        "rollout status\n",
                        LOST_TD_S, f.id);
                return RC_REFUSED;
            }
        } else if (strcmp(str(ro, "id"), f.id) != 0) {
            progress_end(&f.progress);
            fprintf(stderr, "tdctl: td now runs rollout %s, not %s: see tdctl rollout status\n",
                    str(ro, "id"), f.id);
            json_decref(ro);
            return RC_REFUSED;
        } else {
            int rc = -1;

            lost_since = -1;
            show(&f, ro);
            if (rollout_ended(ro))
                rc = report_end(&f, ro);
            json_decref(ro);
            if (rc >= 0)
                return rc;
        }
        pause_s(FOLLOW_POLL_S);
    }
}

/* ---------------------------------------------------------------------------------------------
 * tdctl switch */

/* A duration of td's rollout API: whole seconds. */
static json_t *seconds(double s) {
    return json_integer((json_int_t)s);
}

static bool whole(double s) {
    return s == (double)(json_int_t)s;
}

static bool parse_count(const char *s, long *n) {
    long v = 0;

    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > MIN_REQUESTS_MAX)
            return false;
    }
    *n = v;
    return true;
}

/* Checks every argument of switch and builds the rollout's body, before td is asked anything. */
static int parse_plan(const ctl_t *ctl, int argc, char **argv, plan_t *p) {
    const char *list = ctl->given & OPT(O_STEPS) ? ctl->opt[O_STEPS] : SWITCH_STEPS;
    const char *problem, *failure = ctl->opt[O_ON_FAILURE];
    int steps[WEIGHT_MAX], n, i;
    double step_s = SWITCH_STEP_S, ramp_s = 0, rate = 0;
    long p99 = 0, min_requests = 0;
    json_t *arr, *analysis;

    memset(p, 0, sizeof(*p));
    if (argc != 1)
        return usage_error("switch needs one backend NAME, the new side (e.g. switch green)");
    if (!valid_name(argv[0], strlen(argv[0])))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", argv[0]);
    p->to = argv[0];
    if ((problem = parse_steps(list, steps, &n)))
        return usage_error("--steps '%s': %s (e.g. 10,50,100)", list, problem);
    if ((ctl->given & OPT(O_STEP_TIME)) && (ctl->given & OPT(O_INTERVAL)))
        return usage_error("--step-time and --interval are the same option: give one");
    if (!CHECK_OPTION(ctl, O_STEP_TIME, parse_duration, &step_s,
                      "a duration from 1s to 24h such as 30s, 2m") ||
        !CHECK_OPTION(ctl, O_INTERVAL, parse_duration, &step_s,
                      "a duration from 1s to 24h such as 30s, 2m") ||
        !CHECK_OPTION(ctl, O_RAMP, parse_duration, &ramp_s,
                      "a duration up to --step-time such as 0s, 10s") ||
        !CHECK_OPTION(ctl, O_MAX_ERROR_RATE, parse_rate, &rate,
                      "a percentage such as 1% or 0.5%, or a fraction from 0 to 1") ||
        !CHECK_OPTION(ctl, O_MAX_P99_MS, parse_p99, &p99,
                      "milliseconds, an integer from 1 to 3600000") ||
        !CHECK_OPTION(ctl, O_MIN_REQUESTS, parse_count, &min_requests,
                      "an integer from 0 to 100000000"))
        return RC_USAGE;
    if (step_s < 1 || !whole(step_s) || !whole(ramp_s))
        return usage_error("--%s: td takes whole seconds, a step at least 1s",
                           !whole(ramp_s)                 ? "ramp"
                           : ctl->given & OPT(O_INTERVAL) ? "interval"
                                                          : "step-time");
    if (ramp_s > step_s)
        return usage_error("--ramp %s is longer than a step (%gs)", ctl->opt[O_RAMP], step_s);
    if (failure && strcmp(failure, "rollback") != 0 && strcmp(failure, "pause") != 0)
        return usage_error("--on-failure '%s': rollback or pause", failure);
    if ((ctl->given & OPT(O_PRE_CHECK)) && ctl->opt[O_PRE_CHECK][0] != '/')
        return usage_error("--pre-check '%s': a path such as /healthz", ctl->opt[O_PRE_CHECK]);

    /* Only what was given: td fills in its own defaults for the rest (its rollout says them). */
    arr = json_array();
    for (i = 0; i < n; i++)
        json_array_append_new(arr, json_integer(steps[i]));
    p->body = json_pack("{s:s,s:o}", "to", p->to, "steps", arr);
    analysis = json_object();
    if (ctl->given & (OPT(O_STEP_TIME) | OPT(O_INTERVAL))) {
        json_object_set_new(p->body, "step_s", seconds(step_s));
        /* td looks at a step every interval_s after warmup_s (5 s each by default), both within
         * the step: a shorter step is looked at every second, its first fifth not judged. */
        if (step_s < ANALYSIS_LOOK_S) {
            json_object_set_new(analysis, "interval_s", json_integer(1));
            json_object_set_new(analysis, "warmup_s", seconds(step_s / 5));
        }
    }
    if (ctl->given & OPT(O_RAMP))
        json_object_set_new(p->body, "ramp_s", seconds(ramp_s));
    if (failure)
        json_object_set_new(p->body, "on_failure", json_string(failure));
    if (ctl->given & OPT(O_DRAIN))
        json_object_set_new(p->body, "drain", json_true());
    if (ctl->given & OPT(O_PRE_CHECK))
        json_object_set_new(p->body, "pre_check",
                            json_pack("{s:s}", "path", ctl->opt[O_PRE_CHECK]));
    if (ctl->given & OPT(O_MAX_ERROR_RATE))
        json_object_set_new(analysis, "max_error_rate", json_real(rate));
    if (ctl->given & OPT(O_MIN_REQUESTS))
        json_object_set_new(analysis, "min_requests", json_integer(min_requests));
    if (p99)
        json_object_set_new(analysis, "max_p99_ms", json_integer(p99));
    if (json_object_size(analysis))
        json_object_set(p->body, "analysis", analysis);
    json_decref(analysis);
    p->detach = (ctl->given & OPT(O_DETACH)) != 0;
    if (!p->body) {
        fprintf(stderr, "tdctl: out of memory\n");
        return RC_REFUSED;
    }
    return RC_DONE;
}

/* Sets the new side's state (PUT /api/v1/backends/NAME); false after saying why not. */
static bool set_state(const ctl_t *ctl, const char *name, const char *state) {
    char path[160];
    json_t *reply;

    snprintf(path, sizeof(path), "/api/v1/backends/%s", name);
    if (!(reply = put_json(ctl, path, json_pack("{s:s}", "state", state))))
        return false;
    json_decref(reply);
    return true;
}

/* Sets the new side's weight, the others' as they are in `state` (PUT /api/v1/ratio); false after
 * saying why not. */
static bool set_weight(const ctl_t *ctl, const json_t *state, const char *name, json_int_t w) {
    json_t *weights = json_object(), *b, *reply;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        const char *n = str(b, "name");

        json_object_set_new(weights, n,
                            json_integer(strcmp(n, name) == 0 ? w : int_of(b, "weight", 0)));
    }
    if (!(reply = put_json(ctl, "/api/v1/ratio", weights)))
        return false;
    json_decref(reply);
    return true;
}

/* The weights of the backends other than `name` in `state`, summed. */
static json_int_t others_weight(const json_t *state, const char *name) {
    json_int_t sum = 0;
    const json_t *b;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        if (strcmp(str(b, "name"), name) != 0)
            sum += int_of(b, "weight", 0);
    }
    return sum;
}

/* A new side in drain or maint (the colour just redeployed) would take nothing of its steps:
 * tdctl sets it ready first, and back when td refuses the rollout. It took no new requests, so
 * its weight is set to 0 before (while the others have weight to carry the traffic): ready at
 * its old weight it would take that share at once, and the rollout starts from 0 instead, its
 * first step first. Knows td's backends. */
static int prepare(const ctl_t *ctl, plan_t *p) {
    json_t *state = get_json(ctl, "/api/v1/state"), *to;
    int rc = RC_DONE;

    p->to_weight = -1;
    p->made_ready = false;
    if (!state)
        return RC_REFUSED;
    if (!(to = find_backend(state, p->to))) {
        rc = unknown_backend(state, p->to);
    } else {
        snprintf(p->to_state, sizeof(p->to_state), "%s",
                 json_is_string(json_object_get(to, "state")) ? str(to, "state") : "ready");
        if (strcmp(p->to_state, "ready") != 0 && has_server_up(to)) {
            json_int_t w = int_of(to, "weight", 0);

            if (w > 0 && others_weight(state, p->to) > 0) {
                if (!set_weight(ctl, state, p->to, 0)) {
                    json_decref(state);
                    return RC_REFUSED;
                }
                p->to_weight = w;
                printf("%s: weight %" JSON_INTEGER_FORMAT " -> 0 (in %s it took no traffic)\n",
                       p->to, w, p->to_state);
            }
            if (!set_state(ctl, p->to, "ready")) {
                rc = RC_REFUSED;
            } else {
                p->made_ready = true;
                printf("%s: state %s -> ready\n", p->to, p->to_state);
            }
        }
    }
    json_decref(state);
    return rc;
}

/* Refused: nothing of the rollout happened; the new side goes back to its state and weight. */
static void unprepare(const ctl_t *ctl, const plan_t *p) {
    json_t *state;

    if (p->made_ready && set_state(ctl, p->to, p->to_state))
        printf("%s: state ready -> %s\n", p->to, p->to_state);
    if (p->to_weight >= 0 && (state = get_json(ctl, "/api/v1/state"))) {
        if (set_weight(ctl, state, p->to, p->to_weight))
            printf("%s: weight 0 -> %" JSON_INTEGER_FORMAT "\n", p->to, p->to_weight);
        json_decref(state);
    }
}

int cmd_switch(const ctl_t *ctl, int argc, char **argv) {
    json_t *ro = NULL;
    char *body, w[256];
    reply_t r;
    plan_t p;
    int rc = parse_plan(ctl, argc, argv, &p);

    if (rc != RC_DONE)
        return rc;
    if ((rc = prepare(ctl, &p)) != RC_DONE) {
        unprepare(ctl, &p);
        goto out;
    }
    body = json_dumps(p.body, JSON_COMPACT);
    rc = body ? call(ctl, "POST", "/api/v1/rollout", body, strlen(body), &r) : RC_REFUSED;
    free(body);
    if (rc != RC_DONE) {
        unprepare(ctl, &p);
        goto out;
    }
    if (!(ro = parse_reply(&r))) {
        rc = RC_REFUSED;
    } else {
        weights_text(json_object_get(ro, "weights_before"), w, sizeof(w));
        printf("rollout %s: %s to %s in %zu step%s of %gs (from %s)\n", str(ro, "id"),
               str(ro, "from"), str(ro, "to"), nsteps(ro), nsteps(ro) == 1 ? "" : "s",
               real_of(ro, "step_s", 0), w);
        fflush(stdout);
        if (p.detach)
            printf("detached: follow it with tdctl rollout status; stop it with tdctl rollout "
                   "pause|abort\n");
        else
            rc = follow(ctl, str(ro, "id"));
    }
    free(r.body.p);
out:
    json_decref(ro);
    json_decref(p.body);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * tdctl rollout [status] | pause | resume | promote [--full] | abort */

/* The rollout as a table: its line, its weights, a row per step, its reason. */
static void print_rollout(const json_t *ro) {
    const json_t *reason = json_object_get(ro, "reason"), *d;
    json_int_t step = int_of(ro, "step", 0);
    double left = real_of(ro, "step_remaining_s", -1);
    char now[256], before[256], t[64], b[64];
    size_t i;

    weights_text(json_object_get(ro, "weights"), now, sizeof(now));
    weights_text(json_object_get(ro, "weights_before"), before, sizeof(before));
    printf("rollout %s: %s, %s -> %s, step %" JSON_INTEGER_FORMAT " of %zu", str(ro, "id"),
           rstate(ro), str(ro, "from"), str(ro, "to"), step + 1, nsteps(ro));
    if (!rollout_ended(ro) && left >= 0)
        printf(", %.0fs left in the step", left);
    printf("\nweights: %s (before the rollout: %s)\n", now, before);
    printf("started %s by %s", str(ro, "created_at"), str(ro, "by"));
    if (json_is_string(json_object_get(ro, "finished_at")))
        printf(", ended %s", str(ro, "finished_at"));
    if (json_object_get(ro, "leader")) {
        char waiting[256];
        const json_t *l = json_object_get(ro, "leader");

        waiting_text(ro, waiting, sizeof(waiting));
        printf("\nleader: %s", json_is_string(l) ? json_string_value(l) : "none");
        if (!rollout_ended(ro))
            printf("; %s%s",
                   waiting[0] ? "not at the current step yet: "
                              : "every node at the "
                                "current step",
                   waiting);
    }
    printf("\n\n%-5s %-7s %-8s %-32s %s\n", "STEP", "WEIGHT", "STATE", "TARGET", "BASELINE");
    json_array_foreach(json_object_get(ro, "steps_detail"), i, d) {
        side_figures(json_object_get(d, "target"), t, sizeof(t));
        side_figures(json_object_get(d, "baseline"), b, sizeof(b));
        printf("%-5zu %-7s %-8s %-32s %s\n", i + 1,
               (snprintf(before, sizeof(before), "%s%%", num(d, "weight").s), before),
               str(d, "state"), t, b);
    }
    if (json_is_string(reason))
        printf("\nreason: %s\n", json_string_value(reason));
}

static int rollout_status(const ctl_t *ctl) {
    json_t *ro;
    reply_t r;
    int rc;

    if (ctl->json) {
        rc = call(ctl, "GET", "/api/v1/rollout", NULL, 0, &r);
        if (rc == RC_DONE)
            print_raw(&r.body);
        free(r.body.p);
        return rc;
    }
    if ((rc = get_rollout(ctl, &ro)) != RC_DONE)
        return rc;
    if (!ro) {
        printf("no rollout yet\n");
        return RC_DONE;
    }
    print_rollout(ro);
    json_decref(ro);
    return RC_DONE;
}

/* POST /api/v1/rollout/ACTION, then prints the rollout td answers with. */
static int rollout_action(const ctl_t *ctl, const char *action) {
    const char *body = ctl->given & OPT(O_FULL) ? "{\"full\":true}" : "{}";
    char path[64];
    json_t *ro;
    reply_t r;
    int rc;

    snprintf(path, sizeof(path), "/api/v1/rollout/%s", action);
    if ((rc = call(ctl, "POST", path, body, strlen(body), &r)) != RC_DONE)
        return rc;
    if (ctl->json) {
        print_raw(&r.body);
    } else if ((ro = parse_reply(&r))) {
        print_rollout(ro);
        json_decref(ro);
    } else {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

int cmd_rollout(const ctl_t *ctl, int argc, char **argv) {
    static const char *const actions[] = {"pause", "resume", "promote", "abort"};
    const char *what = argc ? argv[0] : "status";
    size_t i;

    if (argc > 1)
        return usage_error("rollout takes one of status, pause, resume, promote, abort; got '%s'",
                           argv[1]);
    if ((ctl->given & OPT(O_FULL)) && strcmp(what, "promote") != 0)
        return usage_error("--full is an option of rollout promote only");
    if (strcmp(what, "status") == 0)
        return rollout_status(ctl);
    for (i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
        if (strcmp(what, actions[i]) == 0)
            return rollout_action(ctl, what);
    }
    return usage_error("rollout %s: use status, pause, resume, promote or abort", what);
}
