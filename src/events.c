#include "td/events.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "td/log.h"

#define RING 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *events[RING];   /* owned */
static json_t *audit[RING];    /* owned */
static size_t nevents, naudit; /* total ever added */
static char audit_path[4200];

/* fsync of the directory holding `path`, so a newly created file survives a crash. */
static void sync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(dir);
}

static void push(json_t **ring, size_t *count, json_t *item) {
    json_decref(ring[*count % RING]);
    ring[*count % RING] = item;
    (*count)++;
}

/* The entry of the ring with this "id", or NULL (borrowed). Caller holds the lock or is the
 * only thread (init). */
static json_t *audit_entry(int64_t id) {
    size_t first = naudit > RING ? naudit - RING : 0;
    for (size_t i = naudit; i-- > first;)
        if (json_integer_value(json_object_get(audit[i % RING], "id")) == id)
            return audit[i % RING];
    return NULL;
}

/* A loaded or new record {"not_applied": ID}: marks entry ID as never applied. */
static void mark_not_applied(const json_t *record) {
    json_t *id = json_object_get(record, "not_applied");
    json_t *e = json_is_integer(id) ? audit_entry(json_integer_value(id)) : NULL;
    if (e)
        json_object_set_new(e, "applied", json_false());
}

void td_events_init(const char *path) {
    snprintf(audit_path, sizeof(audit_path), "%s", path ? path : "");
    FILE *f = audit_path[0] ? fopen(audit_path, "r+") : NULL;
    int writable = f != NULL;
    if (!f && audit_path[0])
        f = fopen(audit_path, "r");
    if (!f)
        return;
    char line[8192];
    long good = 0; /* end of the last whole line */
    while (fgets(line, sizeof(line), f)) {
        size_t n = strlen(line);
        if (n == 0 || line[n - 1] != '\n') {
            if (feof(f))
                break; /* cut short by a crash while it was appended */
            int ch;    /* longer than any entry td writes: skipped */
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            good = ftell(f);
            continue;
        }
        good = ftell(f);
        json_t *j = json_loads(line, 0, NULL);
        if (json_is_object(j)) {
            push(audit, &naudit, j);
            mark_not_applied(j);
        } else {
            json_decref(j);
        }
    }
    /* A partial last line was never a whole, synced entry, so its change never reached the
     * state file (see td_audit_begin): drop it, or the next entry would be glued to it. */
    if (writable && fseek(f, 0, SEEK_END) == 0 && ftell(f) > good &&
        ftruncate(fileno(f), good) == 0)
        td_warn("audit: removed an incomplete last line from %s", audit_path);
    fclose(f);
}

void td_event(const char *kind, const char *fmt, ...) {
    char msg[512], t[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    td_wall_iso(t, sizeof(t));
    json_t *e = json_pack("{s:s,s:s,s:s}", "time", t, "kind", kind, "message", msg);
    pthread_mutex_lock(&lock);
    push(events, &nevents, e);
    pthread_mutex_unlock(&lock);
}

/* Appends one line to the audit file and makes it durable before returning. Returns 0 or
 * TD_EIO (errno set), or 0 at once without an audit file. */
static int append_line(json_t *entry) {
    if (!audit_path[0])
        return 0;
    char *line = json_dumps(entry, JSON_COMPACT);
    struct stat st;
    int created = stat(audit_path, &st) != 0, rc = TD_EIO;
    int fd = line ? open(audit_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : -1;
    if (fd >= 0) {
        size_t len = strlen(line);
        line[len] = '\n'; /* one write(2) of the whole line: appends do not interleave */
        if (write(fd, line, len + 1) == (ssize_t)(len + 1) && fsync(fd) == 0)
            rc = 0;
        int saved = errno;
        close(fd);
        errno = saved;
    }
    if (rc == 0 && created)
        sync_parent(audit_path);
    if (rc < 0)
        td_warn("audit: cannot append to %s: %m", audit_path);
    free(line);
    return rc;
}

int td_audit_begin(const char *what, json_t *before, json_t *after, const char *client,
                   uint64_t version, const char *config_sha256, const char *before_sha256,
                   json_t **entry) {
    char t[40];
    td_wall_iso(t, sizeof(t));
    json_t *a = json_pack("{s:I,s:s,s:s,s:o,s:o,s:s,s:I}", "id", (json_int_t)(naudit + 1), "time",
                          t, "what", what, "before", before ? before : json_null(), "after",
                          after ? after : json_null(), "client", client ? client : "", "version",
                          (json_int_t)version);
    *entry = a;
    if (!a)
        return TD_ENOMEM;
    if (config_sha256 && config_sha256[0])
        json_object_set_new(a, "config_sha256", json_string(config_sha256));
    if (before_sha256 && before_sha256[0])
        json_object_set_new(a, "before_sha256", json_string(before_sha256));
    return append_line(a);
}

void td_audit_commit(json_t *entry) {
    if (!entry)
        return;
    char what[300], client[100];
    snprintf(what, sizeof(what), "%s", json_string_value(json_object_get(entry, "what")));
    snprintf(client, sizeof(client), "%s", json_string_value(json_object_get(entry, "client")));
    pthread_mutex_lock(&lock);
    push(audit, &naudit, entry);
    pthread_mutex_unlock(&lock);
    td_event("change", "%s (from %s)", what, client[0] ? client : "?");
}

void td_audit_abandon(json_t *entry, const char *why) {
    if (!entry)
        return;
    json_object_set_new(entry, "applied", json_false());
    char t[40], what[600];
    td_wall_iso(t, sizeof(t));
    snprintf(what, sizeof(what), "not applied: %s (%s)",
             json_string_value(json_object_get(entry, "what")), why);
    json_t *r =
        json_pack("{s:I,s:s,s:s,s:s,s:O}", "id", (json_int_t)(naudit + 2), "time", t, "what", what,
                  "client", "td", "not_applied", json_object_get(entry, "id"));
    if (r)
        append_line(r);
    pthread_mutex_lock(&lock);
    push(audit, &naudit, entry);
    if (r)
        push(audit, &naudit, r);
    pthread_mutex_unlock(&lock);
    td_event("change", "%s", what);
}

void td_audit_recover(const char *state_sha256, const char *state_path) {
    if (!state_sha256 || !state_sha256[0] || !naudit)
        return;
    json_t *last = audit[(naudit - 1) % RING];
    const char *after = json_string_value(json_object_get(last, "config_sha256"));
    const char *before = json_string_value(json_object_get(last, "before_sha256"));
    if (!after || !before || json_object_get(last, "applied") || strcmp(after, state_sha256) == 0 ||
        strcmp(before, state_sha256) != 0)
        return;
    /* The state file is still as it was before the last change: td stopped after the change was
     * audited and before the state file was replaced, so the change never ran. */
    char why[4300];
    snprintf(why, sizeof(why), "td stopped before writing it to %s", state_path);
    json_t *e = json_incref(last);
    pthread_mutex_lock(&lock);
    naudit--; /* td_audit_abandon puts it back in its place */
    audit[naudit % RING] = NULL;
    pthread_mutex_unlock(&lock);
    td_warn("audit: the last change (%s) is not in %s: recorded as not applied",
            json_string_value(json_object_get(e, "what")), state_path);
    td_audit_abandon(e, why);
    json_decref(e);
}

void td_audit(const char *what, json_t *before, json_t *after, const char *client) {
    json_t *e;
    td_audit_begin(what, before, after, client, 0, NULL, NULL, &e);
    td_audit_commit(e);
}

static json_t *ring_json(json_t **ring, size_t count) {
    json_t *arr = json_array();
    pthread_mutex_lock(&lock);
    size_t first = count > RING ? count - RING : 0;
    for (size_t i = first; i < count; i++)
        json_array_append(arr, ring[i % RING]);
    pthread_mutex_unlock(&lock);
    return arr;
}

json_t *td_events_json(void) {
    return ring_json(events, nevents);
}

json_t *td_audit_json(void) {
    return ring_json(audit, naudit);
}
