/* tdctl state NAME ready|drain|maint: a backend's state (PUT /api/v1/backends/NAME), which td
 * answers with its new state. */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <string.h>

static const char *const states[] = {"ready", "drain", "maint"};

/* What the state means for the traffic, for the line tdctl prints. */
static const char *meaning(const char *state) {
    if (strcmp(state, "drain") == 0)
        return "no new requests; pinned sticky clients stay until td's drain_ms";
    if (strcmp(state, "maint") == 0)
        return "no user traffic; only the preview route and health checks reach it";
    return "takes traffic by its weight";
}

int cmd_state(const ctl_t *ctl, int argc, char **argv) {
    const char *state = NULL;
    json_t *before, *after;
    char path[128];
    size_t i;

    if (argc != 2)
        return usage_error("state needs a backend NAME and ready, drain or maint "
                           "(e.g. state blue maint)");
    if (!valid_name(argv[0], strlen(argv[0])) || strlen(argv[0]) > 63)
        return usage_error("'%s': a backend name is 1 to 63 of A-Z a-z 0-9 _ -", argv[0]);
    for (i = 0; i < sizeof(states) / sizeof(states[0]); i++) {
        if (strcmp(argv[1], states[i]) == 0)
            state = states[i];
    }
    if (!state)
        return usage_error("unknown state '%s': use ready, drain or maint", argv[1]);
    snprintf(path, sizeof(path), "/api/v1/backends/%s", argv[0]);
    if (ctl->json)
        return put_for_state(ctl, path, json_pack("{s:s}", "state", state));
    if (!(before = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    if (!find_backend(before, argv[0])) {
        int rc = unknown_backend(before, argv[0]);
        json_decref(before);
        return rc;
    }
    if (!(after = put_json(ctl, path, json_pack("{s:s}", "state", state)))) {
        json_decref(before);
        return RC_REFUSED;
    }
    printf("%s: state %s -> %s: %s\n", argv[0], str(find_backend(before, argv[0]), "state"),
           str(find_backend(after, argv[0]), "state"), meaning(state));
    json_decref(before);
    json_decref(after);
    return RC_DONE;
}
