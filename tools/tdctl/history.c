/* tdctl rollback, tdctl history: td's audit history of changes listed, and its last change of
 * weights undone (right after a rollout: the whole rollout). */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most recent entry of td's history that changed a weight (borrowed from it), or NULL. */
static json_t *last_weight_change(const json_t *history) {
    size_t i = json_array_size(history);

    while (i-- > 0) {
        json_t *e = json_array_get(history, i);
        json_t *before = json_object_get(json_object_get(e, "before"), "weights");
        json_t *after = json_object_get(json_object_get(e, "after"), "weights");

        /* A change td audited but never ran (it stopped before writing it) undoes nothing. */
        if (json_is_false(json_object_get(e, "applied")))
            continue;
        if (json_is_object(before) && json_is_object(after) && !json_equal(before, after))
            return e;
    }
    return NULL;
}

/* true when every backend named in weights has that weight in td's state. */
static bool weights_are(const json_t *state, const json_t *weights) {
    const char *name;
    json_t *w;

    json_object_foreach((json_t *)weights, name, w) {
        if (!json_is_integer(w) ||
            int_of(find_backend(state, name), "weight", -1) != json_integer_value(w))
            return false;
    }
    return true;
}

/* Sets the weights back to the `before` of a history entry. */
static int undo_change(const ctl_t *ctl, const json_t *change) {
    const json_t *weights = json_object_get(json_object_get(change, "before"), "weights");
    json_t *state = get_json(ctl, "/api/v1/state");
    char text[512];
    bool already;

    if (!state)
        return RC_REFUSED;
    already = weights_are(state, weights);
    json_decref(state);
    weights_text(weights, text, sizeof(text));
    if (already) {
        printf("the weights already are those before \"%s\" (%s): nothing to do\n",
               str(change, "what"), text);
        return RC_DONE;
    }
    if (!ctl->json)
        printf("undoing \"%s\" of %s from %s: %s\n\n", str(change, "what"), str(change, "time"),
               str(change, "client"), text);
    return put_for_state(ctl, "/api/v1/ratio", json_deep_copy(weights));
}

/* true when the change was made after `iso` (both UTC timestamps of td; to the second, so a
 * change of the rollout's own last second is not counted as after it). */
static bool changed_after(const json_t *change, const char *iso) {
    return change && strncmp(str(change, "time"), iso, 19) > 0;
}

/* true when `change` took the weights from those the rollout left to those from before it: the
 * rollout's undo itself (a first tdctl rollback), not a later change to be undone. */
static bool undid_rollout(const json_t *change, const json_t *left, const json_t *before) {
    return json_equal(json_object_get(json_object_get(change, "before"), "weights"), left) &&
           json_equal(json_object_get(json_object_get(change, "after"), "weights"), before);
}

/* The rollout's undo: the weights from before it, when it has ended and left the weights as they
 * are (no change of weights since). Returns -1 when rollback should undo the history's last
 * change instead, else the exit status. */
static int undo_rollout(const ctl_t *ctl, const json_t *ro, const json_t *change) {
    const json_t *left = json_object_get(ro, "weights");
    const json_t *before = json_object_get(ro, "weights_before");
    json_t *state;
    char text[512];
    bool as_left, already;

    if (!rollout_ended(ro)) {
        fprintf(stderr,
                "tdctl: rollout %s is active (%s): tdctl rollout abort puts the weights back to "
                "those before it\n",
                str(ro, "id"), str(ro, "state"));
        return RC_REFUSED;
    }
    if (!json_is_object(before) || !json_is_object(left) ||
        (changed_after(change, str(ro, "finished_at")) && !undid_rollout(change, left, before)))
        return -1;
    if (!(state = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    as_left = weights_are(state, left);
    already = weights_are(state, before);
    json_decref(state);
    if (!as_left && !already)
        return -1;
    weights_text(before, text, sizeof(text));
    if (already) {
        printf("the weights already are those before rollout %s (%s): nothing to do\n",
               str(ro, "id"), text);
        return RC_DONE;
    }
    if (!ctl->json)
        printf("undoing rollout %s (%s to %s, %s at %s): %s\n\n", str(ro, "id"), str(ro, "from"),
               str(ro, "to"), str(ro, "state"), str(ro, "finished_at"), text);
    return put_for_state(ctl, "/api/v1/ratio", json_deep_copy(before));
}

int cmd_rollback(const ctl_t *ctl, int argc, char **argv) {
    json_t *history, *change = NULL, *ro = NULL;
    int rc = -1;

    if (argc > 0)
        return usage_error("rollback takes no argument, got '%s'", argv[0]);
    if (get_rollout(ctl, &ro) != RC_DONE)
        return RC_REFUSED;
    if (!(history = get_json(ctl, "/api/v1/history"))) {
        json_decref(ro);
        return RC_REFUSED;
    }
    if (json_is_array(history))
        change = last_weight_change(history);
    if (ro)
        rc = undo_rollout(ctl, ro, change);
    if (rc < 0) {
        rc = RC_REFUSED;
        if (!json_is_array(history))
            fprintf(stderr, "tdctl: td's history is not a list\n");
        else if (!change)
            fprintf(stderr, "tdctl: td's history has no change of weights to roll back\n");
        else
            rc = undo_change(ctl, change);
    }
    json_decref(history);
    json_decref(ro);
    return rc;
}

/* The history as a table; in cluster mode (entries that carry "node") with a NODE column: the
 * node whose API took the change. */
static void print_history(const json_t *history) {
    size_t i, width = strlen("CLIENT"), nwidth = 0;
    const json_t *e;

    if (json_array_size(history) == 0) {
        printf("no change recorded\n");
        return;
    }
    json_array_foreach(history, i, e) {
        size_t len = strlen(str(e, "client"));
        if (len > width)
            width = len > 64 ? 64 : len;
        if (json_is_string(json_object_get(e, "node"))) {
            len = strlen(str(e, "node"));
            if (len < strlen("NODE"))
                len = strlen("NODE");
            if (len > nwidth)
                nwidth = len > 64 ? 64 : len;
        }
    }
    if (nwidth)
        printf("%-24s  %-*s  %-*s  %s\n", "TIME", (int)nwidth, "NODE", (int)width, "CLIENT",
               "WHAT");
    else
        printf("%-24s  %-*s  %s\n", "TIME", (int)width, "CLIENT", "WHAT");
    json_array_foreach(history, i, e) {
        const char *client = str(e, "client"), *node = str(e, "node");
        printf("%-24s  ", str(e, "time"));
        if (nwidth)
            printf("%-*s  ", (int)nwidth, *node ? node : "-");
        printf("%-*s  %s%s\n", (int)width, *client ? client : "-", str(e, "what"),
               json_is_false(json_object_get(e, "applied")) ? " [not applied]" : "");
    }
}

int cmd_history(const ctl_t *ctl, int argc, char **argv) {
    json_t *history;
    reply_t r;
    int rc;

    if (argc > 0)
        return usage_error("history takes no argument, got '%s'", argv[0]);
    rc = call(ctl, "GET", "/api/v1/history", NULL, 0, &r);
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (history = parse_reply(&r))) {
        print_history(history);
        json_decref(history);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}
