/* tdctl ratio NAME=WEIGHT... | A:B, and tdctl method METHOD: the changes of the routing that td
 * answers with its new state. */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const methods[] = {"round_robin", "sticky", "failover"};

/* --wait-all: td answers once every live node of its cluster has applied the change. */
static const char *ratio_path(const ctl_t *ctl) {
    return ctl->given & OPT(O_WAIT_ALL) ? "/api/v1/ratio?wait=all" : "/api/v1/ratio";
}

/* "A:B" into two weights; false when it is not that shape. */
static bool parse_pair(const char *arg, int *a, int *b) {
    const char *colon = strchr(arg, ':');

    return colon && parse_weight(arg, (size_t)(colon - arg), a) &&
           parse_weight(colon + 1, strlen(colon + 1), b);
}

/* td's backends, in state order: the "backends" array of its state (the caller owns the
 * reference), or NULL after printing why not. */
static json_t *state_backends(const ctl_t *ctl) {
    json_t *state, *backends;
    reply_t r;

    if (call(ctl, "GET", "/api/v1/state", NULL, 0, &r) != RC_DONE)
        return NULL;
    state = parse_reply(&r);
    free(r.body.p);
    backends = json_incref(json_object_get(state, "backends"));
    json_decref(state);
    if (state && !json_is_array(backends))
        fprintf(stderr, "tdctl: td's state has no backends array\n");
    if (!json_is_array(backends)) {
        json_decref(backends);
        return NULL;
    }
    return backends;
}

/* "ratio A:B": the first two backends in state order, which td must have exactly two of. */
static int ratio_pair(const ctl_t *ctl, const char *arg) {
    json_t *backends, *doc;
    const char *first, *second;
    int a, b;

    if (!parse_pair(arg, &a, &b))
        return usage_error("'%s': the short form of ratio is A:B, two weights 0..100 (e.g. 30:70)",
                           arg);
    if (!(backends = state_backends(ctl)))
        return RC_REFUSED;
    if (json_array_size(backends) != 2) {
        size_t n = json_array_size(backends);

        json_decref(backends);
        return usage_error("'ratio %s' needs td to have exactly two backends; it has %zu: "
                           "name them instead (ratio NAME=WEIGHT...)",
                           arg, n);
    }
    first = json_string_value(json_object_get(json_array_get(backends, 0), "name"));
    second = json_string_value(json_object_get(json_array_get(backends, 1), "name"));
    doc = json_object();
    if (first && second) {
        json_object_set_new(doc, first, json_integer(a));
        json_object_set_new(doc, second, json_integer(b));
    }
    json_decref(backends);
    if (json_object_size(doc) != 2) {
        json_decref(doc);
        fprintf(stderr, "tdctl: td's state lacks the names of its two backends\n");
        return RC_REFUSED;
    }
    return put_for_state(ctl, ratio_path(ctl), doc);
}

/* Adds one "NAME=WEIGHT" to doc; returns RC_DONE, or RC_USAGE after saying what is wrong. */
static int add_weight(json_t *doc, const char *arg) {
    const char *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : 0;
    int weight;

    if (!eq)
        return usage_error("'%s': ratio takes NAME=WEIGHT... or A:B", arg);
    if (name_len == 0)
        return usage_error("'%s': the backend name is empty", arg);
    if (!valid_name(arg, name_len))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", arg);
    if (!parse_weight(eq + 1, strlen(eq + 1), &weight))
        return usage_error("'%s': a weight is an integer from 0 to %d", arg, WEIGHT_MAX);
    if (json_object_getn(doc, arg, name_len))
        return usage_error("'%s': backend '%.*s' is given twice", arg, (int)name_len, arg);
    json_object_setn_new(doc, arg, name_len, json_integer(weight));
    return RC_DONE;
}

int cmd_ratio(const ctl_t *ctl, int argc, char **argv) {
    json_t *doc;
    int i, rc = RC_DONE;

    if (argc == 0)
        return usage_error(
            "ratio needs NAME=WEIGHT... (e.g. blue=0 green=100) or A:B (e.g. 30:70)");
    if (argc == 1 && strchr(argv[0], ':') && !strchr(argv[0], '='))
        return ratio_pair(ctl, argv[0]);
    doc = json_object();
    for (i = 0; i < argc && rc == RC_DONE; i++)
        rc = add_weight(doc, argv[i]);
    if (rc != RC_DONE) {
        json_decref(doc);
        return rc;
    }
    return put_for_state(ctl, ratio_path(ctl), doc);
}

int cmd_method(const ctl_t *ctl, int argc, char **argv) {
    size_t i;

    if (argc != 1)
        return usage_error("method needs exactly one of round_robin, sticky, failover");
    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(argv[0], methods[i]) == 0)
            return put_for_state(ctl, "/api/v1/routing", json_pack("{s:s}", "method", methods[i]));
    }
    return usage_error("unknown method '%s': use round_robin, sticky or failover", argv[0]);
}
