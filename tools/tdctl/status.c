/* tdctl status, and the replies that carry td's state: shown as the table, or as td sent them
 * with --json. */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints a reply that carries td's state: as it came with --json, else as the table. */
int show_state(const ctl_t *ctl, const reply_t *r) {
    json_t *state;

    if (ctl->json) {
        print_raw(&r->body);
        return RC_DONE;
    }
    if (!(state = parse_reply(r)))
        return RC_REFUSED;
    print_state(state);
    json_decref(state);
    return RC_DONE;
}

/* PUTs a JSON document (consumed) and prints the state td answers with. */
int put_for_state(const ctl_t *ctl, const char *path, json_t *doc) {
    char *body = json_dumps(doc, JSON_COMPACT);
    reply_t r;
    int rc;

    json_decref(doc);
    if (!body) {
        fprintf(stderr, "tdctl: out of memory\n");
        return RC_REFUSED;
    }
    rc = call(ctl, "PUT", path, body, strlen(body), &r);
    free(body);
    if (rc == RC_DONE)
        rc = show_state(ctl, &r);
    free(r.body.p);
    return rc;
}

/* A state saying "persisted": false: td's last change did not reach its state file. Says so on
 * stderr (stdout keeps the table or the JSON as they were). */
static void warn_not_saved(const reply_t *r) {
    json_t *state = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, NULL);
    const char *why = json_string_value(json_object_get(state, "persist_error"));

    if (json_is_false(json_object_get(state, "persisted")))
        fprintf(stderr,
                "tdctl: warning: td could not save its last change (%s): changes not saved are "
                "lost at td's next restart\n",
                why && *why ? why : "reason unknown");
    json_decref(state);
}

int cmd_status(const ctl_t *ctl, int argc, char **argv) {
    reply_t r;
    int rc;

    if (argc > 0)
        return usage_error("status takes no argument, got '%s'", argv[0]);
    rc = call(ctl, "GET", "/api/v1/state", NULL, 0, &r);
    if (rc == RC_DONE)
        rc = show_state(ctl, &r);
    if (rc == RC_DONE)
        warn_not_saved(&r);
    if (rc == RC_DONE && !ctl->json) {
        json_t *state = json_loadb(r.body.p ? r.body.p : "", r.body.len, 0, NULL);
        print_cluster_line(ctl, state);
        json_decref(state);
    }
    free(r.body.p);
    return rc;
}
