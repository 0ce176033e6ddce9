/* tdctl config get, tdctl config put FILE: td's configuration read and replaced as a whole;
 * tdctl config diff and reset: the changes td keeps on top of its config file (its state file). */

#include "tdctl.h"

#include <jansson.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file, or standard input for "-". Returns false with errno set (EFBIG when larger
 * than BODY_MAX). */
bool read_file(const char *path, buf_t *b) {
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    char chunk[8192];
    size_t n;
    bool ok = true;

    if (!f)
        return false;
    while (ok && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        ok = buf_append(b, chunk, n);
    if (ok && ferror(f)) {
        ok = false;
        errno = EIO;
    } else if (!ok) {
        errno = b->too_big ? EFBIG : ENOMEM;
    }
    if (!is_stdin)
        fclose(f);
    return ok;
}

static int config_get(const ctl_t *ctl) {
    json_t *config;
    reply_t r;
    int rc = call(ctl, "GET", "/api/v1/config", NULL, 0, &r);

    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (config = parse_reply(&r))) {
        json_dumpf(config, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(config);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

int read_json_file(const char *path, buf_t *file) {
    json_error_t e;
    json_t *doc;

    if (!read_file(path, file)) {
        free(file->p);
        file->p = NULL;
        return usage_error("cannot read %s: %s", path, strerror(errno));
    }
    if (!(doc = json_loadb(file->p ? file->p : "", file->len, 0, &e))) {
        fprintf(stderr, "%s:%d:%d: %s (not sent to td)\n", strcmp(path, "-") ? path : "<stdin>",
                e.line, e.column, e.text);
        free(file->p);
        file->p = NULL;
        return RC_REFUSED;
    }
    json_decref(doc);
    return RC_DONE;
}

/* Sends FILE as it is, so that the LINE:COL of td's problems are those of the user's file; it is
 * parsed here only to catch a file that is not JSON at all. */
static int config_put(const ctl_t *ctl, const char *path) {
    buf_t file = {0};
    json_t *doc;
    reply_t r;
    int rc;

    if ((rc = read_json_file(path, &file)) != RC_DONE)
        return rc;
    rc = call(ctl, "PUT", "/api/v1/config", file.p, file.len, &r);
    free(file.p);
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (doc = parse_reply(&r))) {
        printf("configuration applied: version %s\n", num(doc, "version").s);
        json_decref(doc);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

/* A value of a diff line: compact JSON, or what its absence means. */
static void print_value(const json_t *v, const char *absent) {
    char *s = v && !json_is_null(v) ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    fputs(s ? s : absent, stdout);
    free(s);
}

/* One line per path where what runs differs from td's config file, then one per setting that
 * waits for a restart. Exits like diff(1): 0 no difference, 1 differences, 2 trouble. */
static int config_diff(const ctl_t *ctl) {
    json_t *ov = get_json(ctl, "/api/v1/overrides");
    json_t *state = ov ? get_json(ctl, "/api/v1/state") : NULL;
    if (!ov || !state) {
        json_decref(ov);
        return RC_USAGE;
    }
    json_t *list = json_object_get(ov, "overrides"),
           *pending = json_object_get(state, "pending_restart");
    size_t n = json_array_size(list) + json_array_size(pending), i;
    json_t *o;
    if (ctl->json) {
        json_t *j = json_pack("{s:O,s:O}", "overrides", list ? list : json_null(),
                              "pending_restart", pending ? pending : json_array());
        json_dumpf(j, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(j);
    } else {
        json_array_foreach(list, i, o) {
            printf("%s: file ", str(o, "path"));
            print_value(json_object_get(o, "file_value"), "(absent)");
            fputs(", running ", stdout);
            print_value(json_object_get(o, "value"), "(removed)");
            printf(" (override since %s by %s)\n", str(o, "since"), str(o, "by"));
        }
        json_array_foreach(pending, i, o) {
            printf("%s: asked ", str(o, "key"));
            print_value(json_object_get(o, "asked"), "(absent)");
            fputs(", running ", stdout);
            print_value(json_object_get(o, "running"), "(none)");
            fputs(" (applies at the next restart)\n", stdout);
        }
    }
    if (!json_is_true(json_object_get(ov, "persisted")))
        fprintf(stderr, "tdctl: warning: changes are not being saved: %s\n",
                str(ov, "persist_error"));
    json_decref(ov);
    json_decref(state);
    return n ? RC_REFUSED : RC_DONE;
}

/* Drops every override: td runs its config file alone again. */
static int config_reset(const ctl_t *ctl) {
    reply_t r;
    json_t *doc;
    int rc = call(ctl, "DELETE", "/api/v1/overrides", NULL, 0, &r);
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (doc = parse_reply(&r))) {
        printf("overrides dropped: td runs its config file as it read it\n");
        json_decref(doc);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

int cmd_config(const ctl_t *ctl, int argc, char **argv) {
    if (argc == 1 && strcmp(argv[0], "get") == 0)
        return config_get(ctl);
    if (argc == 2 && strcmp(argv[0], "put") == 0)
        return config_put(ctl, argv[1]);
    if (argc == 1 && strcmp(argv[0], "diff") == 0)
        return config_diff(ctl);
    if (argc == 1 && strcmp(argv[0], "reset") == 0)
        return config_reset(ctl);
    if (argc >= 1 && (strcmp(argv[0], "diff") == 0 || strcmp(argv[0], "reset") == 0))
        return usage_error("config %s takes no argument", argv[0]);
    if (argc >= 1 && strcmp(argv[0], "get") == 0)
        return usage_error("config get takes no argument");
    if (argc >= 1 && strcmp(argv[0], "put") == 0)
        return usage_error("config put takes one FILE (or - for standard input)");
    return usage_error("config needs 'get', 'put FILE', 'diff' or 'reset'");
}
