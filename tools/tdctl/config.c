/* tdctl config get, tdctl config put FILE: td's configuration read and replaced as a whole. */

#include "tdctl.h"

#include <jansson.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file, or standard input for "-". Returns false with errno set (EFBIG when larger
 * than BODY_MAX). */
static bool read_file(const char *path, buf_t *b) {
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

/* Sends FILE as it is, so that the LINE:COL of td's problems are those of the user's file; it is
 * parsed here only to catch a file that is not JSON at all. */
static int config_put(const ctl_t *ctl, const char *path) {
    buf_t file = {0};
    json_error_t e;
    json_t *doc;
    reply_t r;
    int rc;

    if (!read_file(path, &file)) {
        free(file.p);
        return usage_error("cannot read %s: %s", path, strerror(errno));
    }
    if (!(doc = json_loadb(file.p ? file.p : "", file.len, 0, &e))) {
        fprintf(stderr, "%s:%d:%d: %s (not sent to td)\n", strcmp(path, "-") ? path : "<stdin>",
                e.line, e.column, e.text);
        free(file.p);
        return RC_REFUSED;
    }
    json_decref(doc);
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

int cmd_config(const ctl_t *ctl, int argc, char **argv) {
    if (argc == 1 && strcmp(argv[0], "get") == 0)
        return config_get(ctl);
    if (argc == 2 && strcmp(argv[0], "put") == 0)
        return config_put(ctl, argv[1]);
    if (argc >= 1 && strcmp(argv[0], "get") == 0)
        return usage_error("config get takes no argument");
    if (argc >= 1 && strcmp(argv[0], "put") == 0)
        return usage_error("config put takes one FILE (or - for standard input)");
    return usage_error("config needs 'get' or 'put FILE'");
}
