/* tdctl drain NAME [--wait] [--timeout DURATION]: a backend put in state drain (its weight
 * kept: in failover a weight-0 backend is a backup, never drained), then (--wait) its requests in
 * flight and tunnels watched until they are gone or td's drain time has passed. */

#include "tdctl.h"

#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DRAIN_POLL_S 0.2       /* drain --wait: how often td's state is read */
#define DRAIN_MS_DEFAULT 30000 /* td's timeouts.drain_ms when its config does not say */

enum wait_end { W_GOING, W_DRAINED, W_DRAIN_MS, W_TIMEOUT, W_INTERRUPTED };

/* "3 in flight, 1 tunnel, 12 sticky req/10s" */
static void drain_counts(const json_t *backend, char *out, size_t n) {
    json_int_t tunnels = int_of(backend, "tunnels", 0);

    snprintf(out, n,
             "%" JSON_INTEGER_FORMAT " in flight, %" JSON_INTEGER_FORMAT
             " tunnel%s, %" JSON_INTEGER_FORMAT " sticky req/10s",
             int_of(backend, "in_flight", 0), tunnels, tunnels == 1 ? "" : "s",
             int_of(backend, "sticky_requests_10s", 0));
}

/* The clocks of a wait for a backend to drain, in seconds of now_s(). */
typedef struct wait_s {
    double zero_at;   /* when tdctl saw the drain begin: td's drain clock if td sends none */
    double began;     /* when the wait began: the clock of timeout_s */
    double drain_s;   /* td's timeouts.drain_ms */
    double timeout_s; /* the longest wait */
} wait_t;

/* Seconds the backend has been draining: td's own clock (drain_elapsed_ms) when it sends it,
 * else since zero_at. */
static double drained_for(const json_t *backend, const wait_t *w, double now) {
    const json_t *v = json_object_get(backend, "drain_elapsed_ms");

    return json_is_integer(v) ? (double)json_integer_value(v) / 1000.0 : now - w->zero_at;
}

static enum wait_end wait_verdict(const json_t *backend, const wait_t *w, double now) {
    if (int_of(backend, "in_flight", 0) == 0 && int_of(backend, "tunnels", 0) == 0)
        return W_DRAINED;
    if (interrupted)
        return W_INTERRUPTED;
    if (drained_for(backend, w, now) >= w->drain_s)
        return W_DRAIN_MS;
    return now - w->began >= w->timeout_s ? W_TIMEOUT : W_GOING;
}

/* Says how the wait ended; returns the exit status. */
static int wait_report(enum wait_end end, const char *name, const wait_t *w, double now) {
    switch (end) {
    case W_DRAINED:
        printf("%s: drained %.1fs after its drain began: no request in flight, no tunnel\n", name,
               now - w->zero_at);
        return RC_DONE;
    case W_DRAIN_MS:
        printf("%s: td's drain time (timeouts.drain_ms, %.1fs) has passed: td closes its "
               "tunnels and re-assigns its sticky clients; requests in flight run until they "
               "end\n",
               name, w->drain_s);
        return RC_DONE;
    case W_TIMEOUT:
        fprintf(stderr, "tdctl: %s: not drained after --timeout %.1fs\n", name, w->timeout_s);
        return RC_REFUSED;
    default:
        fprintf(stderr, "tdctl: %s: interrupted before it was drained\n", name);
        return RC_REFUSED;
    }
}

/* td's timeouts.drain_ms in seconds; NAN after saying why td could not tell. */
static double drain_seconds(const ctl_t *ctl) {
    json_t *config = get_json(ctl, "/api/v1/config");
    double s = NAN;

    if (config)
        s = (double)int_of(json_object_get(config, "timeouts"), "drain_ms", DRAIN_MS_DEFAULT) /
            1000.0;
    json_decref(config);
    return s;
}

/* Reads td's state every DRAIN_POLL_S, showing backend `name`'s progress, until it has no request
 * in flight and no tunnel, td's drain_ms has passed since its weight went to 0 (by td's clock, or
 * since zero_at), or timeout_s since now. Returns the exit status after saying which. */
int wait_drained(const ctl_t *ctl, const char *name, double zero_at, double timeout_s) {
    wait_t w = {zero_at, now_s(), drain_seconds(ctl), timeout_s};
    enum wait_end end = W_GOING;
    progress_t prog;
    char line[256];
    double now = w.began;

    if (isnan(w.drain_s))
        return RC_REFUSED;
    progress_init(&prog);
    while (end == W_GOING) {
        json_t *state = get_json(ctl, "/api/v1/state");
        const json_t *b = find_backend(state, name);

        if (!b) {
            if (state)
                fprintf(stderr, "tdctl: td no longer has backend '%s'\n", name);
            json_decref(state);
            progress_end(&prog);
            return RC_REFUSED;
        }
        now = now_s();
        snprintf(line, sizeof(line), "%s: ", name);
        drain_counts(b, line + strlen(line), sizeof(line) - strlen(line));
        progress_show(&prog, line);
        end = wait_verdict(b, &w, now);
        json_decref(state);
        if (end == W_GOING)
            pause_s(DRAIN_POLL_S);
    }
    progress_end(&prog);
    return wait_report(end, name, &w, now);
}

/* true when a ready backend other than `name` could take the traffic: one with a weight above 0,
 * or in failover any (a weight-0 backend is a backup there). */
static bool others_ready(const json_t *state, const char *name) {
    bool failover = strcmp(str(state, "method"), "failover") == 0;
    json_t *b;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        const char *st = json_string_value(json_object_get(b, "state"));
        if (strcmp(str(b, "name"), name) != 0 && (!st || strcmp(st, "ready") == 0) &&
            (failover || int_of(b, "weight", 0) > 0))
            return true;
    }
    return false;
}

/* Puts backend `name` of td's `state` in state drain and says what is left there. */
static int drain_start(const ctl_t *ctl, const json_t *state, const char *name) {
    const json_t *b = find_backend(state, name);
    const char *was = str(b, "state");
    json_t *after;
    char line[256], path[128];

    if (!b)
        return unknown_backend(state, name);
    if (strcmp(was, "drain") == 0 || strcmp(was, "maint") == 0 ||
        (strcmp(was, "ready") == 0 && json_is_true(json_object_get(b, "draining")))) {
        drain_counts(b, line, sizeof(line));
        if (strcmp(was, "ready") == 0)
            printf("%s: already at weight 0; %s\n", name, line);
        else
            printf("%s: already in state %s; %s\n", name, was, line);
        return RC_DONE;
    }
    if (!others_ready(state, name)) {
        fprintf(stderr,
                "tdctl: refused: draining %s would leave no backend with a weight above 0 in "
                "state ready (every request would get 503); give another backend a weight "
                "first\n",
                name);
        return RC_REFUSED;
    }
    snprintf(path, sizeof(path), "/api/v1/backends/%s", name);
    if (!(after = put_json(ctl, path, json_pack("{s:s}", "state", "drain"))))
        return RC_REFUSED;
    drain_counts(find_backend(after, name), line, sizeof(line));
    printf("%s: state %s -> drain (weight %s kept); %s\n", name, was, num(b, "weight").s, line);
    json_decref(after);
    return RC_DONE;
}

int cmd_drain(const ctl_t *ctl, int argc, char **argv) {
    double timeout_s = DRAIN_TIMEOUT_S, since;
    json_t *state;
    int rc;

    if (argc != 1)
        return usage_error("drain needs one backend NAME (e.g. drain blue)");
    if (!valid_name(argv[0], strlen(argv[0])))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", argv[0]);
    if (!CHECK_OPTION(ctl, O_TIMEOUT, parse_duration, &timeout_s,
                      "a duration up to 24h such as 500ms, 30s, 2m"))
        return RC_USAGE;
    if (timeout_s <= 0)
        return usage_error("--timeout must be above 0");
    if ((ctl->given & OPT(O_TIMEOUT)) && !(ctl->given & OPT(O_WAIT)))
        return usage_error("--timeout goes with --wait");
    if (!(state = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    since = now_s(); /* the drain begins during drain_start: count it from here */
    rc = drain_start(ctl, state, argv[0]);
    json_decref(state);
    if (rc != RC_DONE || !(ctl->given & OPT(O_WAIT)))
        return rc;
    return wait_drained(ctl, argv[0], since, timeout_s);
}
