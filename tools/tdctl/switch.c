/* tdctl switch NAME [--steps LIST] [--interval DURATION] [--max-error-rate RATE]
 * [--max-p99-ms MS]: traffic moved to NAME step by step, each step watched for errors and
 * latency, and rolled back when a step fails or the run is interrupted. */

#include "tdctl.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SWITCH_POLL_S 0.5      /* switch: how often td's state is read during a step */
#define SWITCH_INTERVAL_S 30.0 /* switch: default --interval */
#define SWITCH_ERROR_RATE 0.01 /* switch: default --max-error-rate (1%) */
#define MIN_ANSWERS 20         /* switch: answers needed in a step before judging it */
#define MAX_BUCKETS 32         /* latency histogram buckets tdctl reads (td sends 14) */

/* td's latency histogram bounds (latency_bounds_ms): bucket i counts requests that took at most
 * ms[i] (and more than ms[i-1]); the bucket after the last bound is +Inf. */
typedef struct bounds_s {
    double ms[MAX_BUCKETS];
    size_t n;
} bounds_t;

/* A backend's counters at one moment (or their growth between two). */
typedef struct counters_s {
    long long answered;             /* responses of every class */
    long long errors;               /* 5xx responses */
    long long buckets[MAX_BUCKETS]; /* latency histogram, not cumulative; the last is +Inf */
    size_t nbuckets;
} counters_t;

typedef struct plan_s {
    const char *green;             /* borrowed (argv): the new side */
    char old[128];                 /* the old side: td's other backend */
    int steps[WEIGHT_MAX];         /* green's weight at each step; the old side gets 100 - it */
    int nsteps, first;             /* steps[first] is the first step taken */
    double interval_s;             /* how long each step is watched */
    double max_error_rate;         /* a fraction, 0..1 */
    long max_p99_ms;               /* 0: latency is not judged */
    json_int_t green_was, old_was; /* the weights before the switch: a rollback's target */
    char green_state[16];          /* green's state before the switch ("ready", "drain", ...) */
    double share;                  /* green's share of the traffic before it, in % */
    bounds_t bounds;
    counters_t old_start; /* the old side when the switch began */
    double last_put;      /* now_s() when the last step was set */
} plan_t;

/* What one reading of td's state says about the current step. */
typedef struct reading_s {
    counters_t green;          /* green's growth since the step began */
    double green_p99, old_p99; /* ms; -1 without a sample, INFINITY above the last bound */
} reading_t;

enum step_end { STEP_OK, STEP_ROLL_BACK, STEP_STOP };

static counters_t counters_of(const json_t *backend) {
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    const json_t *resp = json_object_get(backend, "responses");
    const json_t *buckets = json_object_get(json_object_get(backend, "latency_ms"), "buckets");
    counters_t c;
    size_t i;

    memset(&c, 0, sizeof(c));
    for (i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
        c.answered += int_of(resp, classes[i], 0);
    c.errors = int_of(resp, "5xx", 0);
    c.nbuckets = json_array_size(buckets) < MAX_BUCKETS ? json_array_size(buckets) : MAX_BUCKETS;
    for (i = 0; i < c.nbuckets; i++)
        c.buckets[i] = json_integer_value(json_array_get(buckets, i));
    return c;
}

/* What was counted from `from` to `to`. */
static counters_t counters_since(const counters_t *to, const counters_t *from) {
    counters_t d = *to;
    size_t i;

    d.answered -= from->answered;
    d.errors -= from->errors;
    for (i = 0; i < d.nbuckets && i < from->nbuckets; i++)
        d.buckets[i] -= from->buckets[i];
    return d;
}

static long long samples(const counters_t *c) {
    long long n = 0;
    size_t i;

    for (i = 0; i < c->nbuckets; i++)
        n += c->buckets[i];
    return n;
}

/* p99 in ms as td computes it: the upper bound of the bucket where the 99th percentile falls;
 * INFINITY in the +Inf bucket, -1 without a sample. */
static double p99_ms(const counters_t *c, const bounds_t *b) {
    long long total = samples(c), seen = 0;
    size_t i;

    if (total <= 0)
        return -1;
    for (i = 0; i < c->nbuckets && i < b->n; i++) {
        seen += c->buckets[i];
        if ((double)seen >= 0.99 * (double)total)
            return b->ms[i];
    }
    return INFINITY;
}

/* "12 ms", "> 10000 ms" or "-". */
static cell_t ms_cell(double ms, const bounds_t *b) {
    cell_t c = {"-"};

    if (isinf(ms))
        snprintf(c.s, sizeof(c.s), "> %.0f ms", b->n ? b->ms[b->n - 1] : 0);
    else if (ms >= 0)
        snprintf(c.s, sizeof(c.s), "%.0f ms", ms);
    return c;
}

/* Checks every argument of switch into p, before td is asked anything. */
static int parse_plan(const ctl_t *ctl, int argc, char **argv, plan_t *p) {
    const char *steps = ctl->given & OPT(O_STEPS) ? ctl->opt[O_STEPS] : SWITCH_STEPS;
    const char *problem;

    memset(p, 0, sizeof(*p));
    p->interval_s = SWITCH_INTERVAL_S;
    p->max_error_rate = SWITCH_ERROR_RATE;
    if (argc != 1)
        return usage_error("switch needs one backend NAME, the new side (e.g. switch green)");
    if (!valid_name(argv[0], strlen(argv[0])))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", argv[0]);
    p->green = argv[0];
    if ((problem = parse_steps(steps, p->steps, &p->nsteps)))
        return usage_error("--steps '%s': %s (e.g. 10,50,100)", steps, problem);
    if (!CHECK_OPTION(ctl, O_INTERVAL, parse_duration, &p->interval_s,
                      "a duration up to 24h such as 500ms, 30s, 2m") ||
        !CHECK_OPTION(ctl, O_MAX_ERROR_RATE, parse_rate, &p->max_error_rate,
                      "a percentage such as 1% or 0.5%, or a fraction from 0 to 1") ||
        !CHECK_OPTION(ctl, O_MAX_P99_MS, parse_p99, &p->max_p99_ms,
                      "milliseconds, an integer from 1 to 3600000"))
        return RC_USAGE;
    if (p->interval_s <= 0)
        return usage_error("--interval must be above 0");
    return RC_DONE;
}

/* Fills the plan from td's state: the old side, the weights to roll back to, where to start. */
static int prepare_plan(plan_t *p, const json_t *state) {
    const json_t *backends = json_object_get(state, "backends"), *green, *old, *v;
    size_t i;

    if (json_array_size(backends) != 2)
        return usage_error("switch needs td to have exactly two backends; it has %zu",
                           json_array_size(backends));
    if (!(green = find_backend(state, p->green)))
        return unknown_backend(state, p->green);
    old = json_array_get(backends, json_array_get(backends, 0) == green ? 1 : 0);
    if ((size_t)snprintf(p->old, sizeof(p->old), "%s", str(old, "name")) >= sizeof(p->old) ||
        strcmp(p->old, p->green) == 0) {
        fprintf(stderr, "tdctl: td's state names its backends oddly\n");
        return RC_REFUSED;
    }
    if (!has_server_up(green)) {
        fprintf(stderr, "tdctl: refused: %s has no server up; nothing changed\n", p->green);
        return RC_REFUSED;
    }
    snprintf(p->green_state, sizeof(p->green_state), "%s",
             json_is_string(json_object_get(green, "state")) ? str(green, "state") : "ready");
    p->green_was = int_of(green, "weight", 0);
    p->old_was = int_of(old, "weight", 0);
    p->old_start = counters_of(old);
    json_array_foreach(json_object_get(state, "latency_bounds_ms"), i, v) {
        if (p->bounds.n < MAX_BUCKETS - 1 && json_is_number(v))
            p->bounds.ms[p->bounds.n++] = json_number_value(v);
    }
    p->share = p->green_was + p->old_was > 0
                   ? 100.0 * (double)p->green_was / (double)(p->green_was + p->old_was)
                   : 0;
    while (p->steps[p->first] < p->share)
        p->first++; /* the last step is 100: never past it */
    return RC_DONE;
}

/* The old side's p99 to compare green's with: over the switch so far when it served enough,
 * else over its lifetime. */
static double old_p99(const plan_t *p, const json_t *old) {
    counters_t now = counters_of(old), during = counters_since(&now, &p->old_start);

    return p99_ms(samples(&during) >= MIN_ANSWERS ? &during : &now, &p->bounds);
}

/* Reads green's growth since the step began (green0) and both p99s from one state. */
static void take_reading(const plan_t *p, const json_t *green, const json_t *old,
                         const counters_t *green0, reading_t *r) {
    counters_t now = counters_of(green);

    r->green = counters_since(&now, green0);
    r->green_p99 = p99_ms(&r->green, &p->bounds);
    r->old_p99 = old_p99(p, old);
}

/* Judges one reading of td's state during the step where green has weight `step`: STEP_OK to
 * go on, else why not in why[n]. */
static enum step_end judge(const plan_t *p, int step, const json_t *state, const reading_t *r,
                           char *why, size_t n) {
    const json_t *green = find_backend(state, p->green), *old = find_backend(state, p->old);
    const counters_t *g = &r->green;

    if (int_of(green, "weight", -1) != step || int_of(old, "weight", -1) != WEIGHT_MAX - step) {
        snprintf(why, n,
                 "someone else changed the weights during the switch (%s=%s %s=%s); tdctl "
                 "stops here and leaves them as they are",
                 p->green, num(green, "weight").s, p->old, num(old, "weight").s);
        return STEP_STOP;
    }
    if (!has_server_up(green)) {
        snprintf(why, n, "%s has no server up any more", p->green);
        return STEP_ROLL_BACK;
    }
    if (g->answered >= MIN_ANSWERS && (double)g->errors > p->max_error_rate * (double)g->answered) {
        snprintf(why, n,
                 "%s: 5xx rate %.1f%% (%lld of %lld answers in this step) is above "
                 "--max-error-rate %g%%",
                 p->green, 100.0 * (double)g->errors / (double)g->answered, g->errors, g->answered,
                 100.0 * p->max_error_rate);
        return STEP_ROLL_BACK;
    }
    if (p->max_p99_ms && samples(g) >= MIN_ANSWERS && r->green_p99 > (double)p->max_p99_ms &&
        r->green_p99 > r->old_p99) {
        snprintf(why, n,
                 "%s: p99 latency %s (%lld answers in this step) is above --max-p99-ms %ld "
                 "and above %s's %s",
                 p->green, ms_cell(r->green_p99, &p->bounds).s, samples(g), p->max_p99_ms, p->old,
                 ms_cell(r->old_p99, &p->bounds).s);
        return STEP_ROLL_BACK;
    }
    return STEP_OK;
}

/* "  1.5s of 30.0s: green 34 answers, 0 5xx (0.0%), p99 2 ms; blue p99 5 ms" */
static void step_line(const plan_t *p, double elapsed, const reading_t *r, char *out, size_t n) {
    const counters_t *g = &r->green;

    snprintf(out, n, "  %.1fs of %.1fs: %s %lld answers, %lld 5xx (%.1f%%), p99 %s; %s p99 %s",
             elapsed, p->interval_s, p->green, g->answered, g->errors,
             g->answered > 0 ? 100.0 * (double)g->errors / (double)g->answered : 0.0,
             ms_cell(r->green_p99, &p->bounds).s, p->old, ms_cell(r->old_p99, &p->bounds).s);
}

/* One reading during a step: takes it, shows it, judges it. */
static enum step_end watch_once(const ctl_t *ctl, const plan_t *p, int step,
                                const counters_t *green0, double elapsed, progress_t *prog,
                                char *why, size_t n) {
    json_t *state = get_json(ctl, "/api/v1/state");
    const json_t *green = find_backend(state, p->green), *old = find_backend(state, p->old);
    enum step_end end = STEP_ROLL_BACK;
    reading_t r;
    char line[256];

    if (green && old) {
        take_reading(p, green, old, green0, &r);
        end = judge(p, step, state, &r, why, n);
        step_line(p, elapsed, &r, line, sizeof(line));
        /* Off a terminal, only how the step ended: not a line every SWITCH_POLL_S. */
        if (prog->tty || elapsed >= p->interval_s || end != STEP_OK)
            progress_show(prog, line);
    } else {
        snprintf(why, n, state ? "td no longer has backends %s and %s" : "lost td (%s, %s)",
                 p->green, p->old);
    }
    json_decref(state);
    return end;
}

/* Watches the step for the interval, reading td's state every SWITCH_POLL_S. */
static enum step_end watch_step(const ctl_t *ctl, const plan_t *p, int step,
                                const counters_t *green0, char *why, size_t n) {
    double start = now_s(), elapsed = 0;
    enum step_end end = STEP_OK;
    progress_t prog;

    progress_init(&prog);
    while (end == STEP_OK && elapsed < p->interval_s) {
        pause_s(min_s(SWITCH_POLL_S, p->interval_s - elapsed));
        if (interrupted) {
            snprintf(why, n, "interrupted");
            end = STEP_ROLL_BACK;
            break;
        }
        elapsed = min_s(now_s() - start, p->interval_s);
        end = watch_once(ctl, p, step, green0, elapsed, &prog, why, n);
    }
    progress_end(&prog);
    return end;
}

/* "[##########..........]  50%  green=50 blue=50  (step 2 of 3)" */
static void print_bar(const plan_t *p, int i) {
    int step = p->steps[i], filled = step / 5;
    char bar[21];

    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(20 - filled));
    bar[20] = '\0';
    printf("[%s] %3d%%  %s=%d %s=%d  (step %d of %d)\n", bar, step, p->green, step, p->old,
           WEIGHT_MAX - step, i - p->first + 1, p->nsteps - p->first);
    fflush(stdout);
}

/* Step i: green at steps[i], the old side at the rest, watched for the interval. */
static enum step_end run_step(const ctl_t *ctl, plan_t *p, int i, char *why, size_t n) {
    int step = p->steps[i];
    json_t *state = put_json(ctl, "/api/v1/ratio",
                             json_pack("{s:i,s:i}", p->green, step, p->old, WEIGHT_MAX - step));
    const json_t *green = find_backend(state, p->green);
    counters_t green0;

    if (!green) {
        snprintf(why, n, "td did not take the step to %s=%d", p->green, step);
        json_decref(state);
        return i == p->first ? STEP_STOP : STEP_ROLL_BACK;
    }
    p->last_put = now_s();
    green0 = counters_of(green);
    json_decref(state);
    print_bar(p, i);
    return watch_step(ctl, p, step, &green0, why, n);
}

/* Sets green's state (PUT /api/v1/backends/NAME); false after saying why not. */
static bool set_green_state(const ctl_t *ctl, const plan_t *p, const char *state) {
    char path[160];
    json_t *reply;

    snprintf(path, sizeof(path), "/api/v1/backends/%s", p->green);
    if (!(reply = put_json(ctl, path, json_pack("{s:s}", "state", state))))
        return false;
    json_decref(reply);
    return true;
}

/* Sets the weights back to those before the switch, after saying why; returns the exit status. */
static int roll_back(const ctl_t *ctl, const plan_t *p, const char *why) {
    json_t *state;

    fprintf(stderr, "tdctl: %s\n", why);
    /* Green left drain or maint for the switch: back to it, so it takes nothing again. */
    if (strcmp(p->green_state, "ready") != 0 && !set_green_state(ctl, p, p->green_state))
        fprintf(stderr, "tdctl: THE ROLLBACK FAILED: put %s back by hand: tdctl state %s %s\n",
                p->green, p->green, p->green_state);
    state = put_json(ctl, "/api/v1/ratio",
                     json_pack("{s:I,s:I}", p->green, p->green_was, p->old, p->old_was));
    if (!state) {
        fprintf(stderr,
                "tdctl: THE ROLLBACK FAILED: set the weights back by hand: tdctl ratio "
                "%s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT "\n",
                p->green, p->green_was, p->old, p->old_was);
        return RC_REFUSED;
    }
    json_decref(state);
    fprintf(stderr,
            "tdctl: rolled back to %s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT "\n",
            p->green, p->green_was, p->old, p->old_was);
    return RC_REFUSED;
}

static void print_plan(const plan_t *p) {
    printf("switch to %s from %s (now %s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT
           "): %d step%s of %.1fs; rolls back if %s's 5xx rate is above %g%%",
           p->green, p->old, p->green, p->green_was, p->old, p->old_was, p->nsteps - p->first,
           p->nsteps - p->first == 1 ? "" : "s", p->interval_s, p->green,
           100.0 * p->max_error_rate);
    if (p->max_p99_ms)
        printf(" or its p99 above %ld ms and %s's", p->max_p99_ms, p->old);
    printf("\n");
    if (p->first > 0)
        printf("%s already has %.0f%% of the traffic: the %d step%s below it skipped\n", p->green,
               p->share, p->first, p->first == 1 ? " is" : "s are");
}

static int run_switch(const ctl_t *ctl, plan_t *p) {
    double start = now_s();
    char why[512];
    int i;

    print_plan(p);
    /* A new side in drain or maint (the colour just redeployed) would take nothing. */
    if (strcmp(p->green_state, "ready") != 0) {
        if (!set_green_state(ctl, p, "ready"))
            return RC_REFUSED;
        printf("%s: state %s -> ready\n", p->green, p->green_state);
    }
    for (i = p->first; i < p->nsteps; i++) {
        enum step_end end = run_step(ctl, p, i, why, sizeof(why));

        if (end == STEP_ROLL_BACK)
            return roll_back(ctl, p, why);
        if (end == STEP_STOP) {
            fprintf(stderr, "tdctl: %s\n", why);
            return RC_REFUSED;
        }
    }
    printf("all traffic goes to %s after %.1fs; waiting for %s's requests in flight\n", p->green,
           now_s() - start, p->old);
    wait_drained(ctl, p->old, p->last_put, DRAIN_TIMEOUT_S);
    printf("switched to %s: %s=100 %s=0\n", p->green, p->green, p->old);
    return RC_DONE;
}

int cmd_switch(const ctl_t *ctl, int argc, char **argv) {
    json_t *state;
    plan_t p;
    int rc = parse_plan(ctl, argc, argv, &p);

    if (rc != RC_DONE)
        return rc;
    if (!(state = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    rc = prepare_plan(&p, state);
    json_decref(state);
    if (rc != RC_DONE)
        return rc;
    catch_signals();
    return run_switch(ctl, &p);
}
