#include "td/events.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "td/log.h"

#define RING 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *events[RING]; /* owned */
static json_t *audit[RING];  /* owned */
static size_t nevents, naudit; /* total ever added */
static char audit_path[4200];

static void iso_now(char *out, size_t cap) {
    int64_t ms = td_wall_ms();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03dZ", (int)(ms % 1000));
}

static void push(json_t **ring, size_t *count, json_t *item) {
    json_decref(ring[*count % RING]);
    ring[*count % RING] = item;
    (*count)++;
}

void td_events_init(const char *path) {
    snprintf(audit_path, sizeof(audit_path), "%s", path ? path : "");
    FILE *f = audit_path[0] ? fopen(audit_path, "r") : NULL;
    if (!f)
        return;
    char line[8192];
    while (fgets(line, sizeof(line), f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (json_is_object(j))
            push(audit, &naudit, j);
        else
            json_decref(j);
    }
    fclose(f);
}

void td_event(const char *kind, const char *fmt, ...) {
    char msg[512], t[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    iso_now(t, sizeof(t));
    json_t *e = json_pack("{s:s,s:s,s:s}", "time", t, "kind", kind, "message", msg);
    pthread_mutex_lock(&lock);
    push(events, &nevents, e);
    pthread_mutex_unlock(&lock);
}

void td_audit(const char *what, json_t *before, json_t *after, const char *client) {
    char t[40];
    iso_now(t, sizeof(t));
    json_t *a = json_pack("{s:s,s:s,s:o,s:o,s:s}", "time", t, "what", what, "before",
                          before ? before : json_null(), "after", after ? after : json_null(),
                          "client", client ? client : "");
    if (audit_path[0] && a) {
        char *line = json_dumps(a, JSON_COMPACT);
        FILE *f = fopen(audit_path, "a");
        if (f && line) {
            fprintf(f, "%s\n", line);
            fflush(f);
        } else {
            td_warn("audit: cannot append to %s", audit_path);
        }
        if (f)
            fclose(f);
        free(line);
    }
    pthread_mutex_lock(&lock);
    push(audit, &naudit, a);
    pthread_mutex_unlock(&lock);
    td_event("change", "%s (from %s)", what, client ? client : "?");
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
