#include "td/control.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include "td/admin.h"
#include "td/config.h"
#include "td/events.h"
#include "td/health.h"
#include "td/log.h"
#include "td/router.h"

static td_config_t *running; /* owned by the current snapshot; borrowed here */
static char config_path[4096];
static struct stat file_seen; /* the config file as td last read or wrote it */
static char file_sha[65];     /* SHA-256 of its text then ("" when unknown) */
static uint64_t version;
static int64_t started_ms;
/* The admin address the first config bound (main.c starts the admin server with it): what a
 * reload's admin.address is judged against, since it never changes until a restart. */
static int admin_bound;
static td_addr_t admin_bound_address;

const td_config_t *td_control_config(void) {
    return running;
}

uint64_t td_control_version(void) {
    return version;
}

int64_t td_control_started_ms(void) {
    return started_ms;
}

/* Remembers the config file as it is now; td_control_apply refuses to overwrite other edits. */
static void note_file(void) {
    if (!config_path[0] || stat(config_path, &file_seen) != 0)
        memset(&file_seen, 0, sizeof(file_seen));
}

static int file_changed(void) {
    struct stat now;
    if (!config_path[0] || stat(config_path, &now) != 0)
        return 0;
    return now.st_mtim.tv_sec != file_seen.st_mtim.tv_sec ||
           now.st_mtim.tv_nsec != file_seen.st_mtim.tv_nsec || now.st_size != file_seen.st_size ||
           now.st_ino != file_seen.st_ino;
}

/* Makes the built snapshot `s` (of config `cfg`) the running one. */
static void commit(td_snapshot_t *s, td_config_t *cfg) {
    version++;
    running = cfg;
    /* Checks first: a new default_down server must be down before any worker can see it. */
    td_health_sync(uv_default_loop(), cfg);
    td_router_publish(s);
}

int td_control_init(td_config_t *cfg, const char *path) {
    snprintf(config_path, sizeof(config_path), "%s", path ? path : "");
    started_ms = td_wall_ms();
    admin_bound = cfg->has_admin;
    admin_bound_address = cfg->admin_address;
    char audit[sizeof(config_path) + 16] = "";
    if (config_path[0])
        snprintf(audit, sizeof(audit), "%s.audit.jsonl", config_path);
    td_events_init(audit);
    td_event("start", "td started with %s", config_path[0] ? config_path : "the demo config");
    note_file();
    if (config_path[0]) {
        /* What a stop during a write-back left behind: its temporary file, and an audited
         * change that never reached the file. */
        int removed = td_config_remove_temps(config_path);
        if (removed > 0)
            td_warn("config: removed %d temporary file%s left next to %s by an interrupted write",
                    removed, removed == 1 ? "" : "s", config_path);
        td_config_file_sha256(config_path, file_sha);
        td_audit_recover(file_sha, config_path);
    }
    char err[512];
    td_snapshot_t *s = td_snapshot_build(cfg, version + 1, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "td: %s\n", err);
        return TD_EINVAL;
    }
    commit(s, cfg);
    return 0;
}

/* Settings bound at start-up stay as they are; the rest of the new config applies. */
static void keep_startup_settings(td_config_t *cfg) {
    const td_config_t *old = running;
    int changed = cfg->num_listeners != old->num_listeners;
    for (size_t i = 0; !changed && i < cfg->num_listeners; i++)
        changed = strcmp(cfg->listeners[i].address.text, old->listeners[i].address.text) != 0 ||
                  cfg->listeners[i].tls != old->listeners[i].tls;
    if (changed)
        td_warn("config: listeners changed; they apply at the next restart");
    if (cfg->workers != old->workers)
        td_warn("config: workers changed; they apply at the next restart");
    /* Against what is bound, not the previous config: removing "admin" and putting the same
     * address back changes nothing that runs. */
    if (cfg->has_admin &&
        (!admin_bound || strcmp(cfg->admin_address.text, admin_bound_address.text) != 0))
        td_warn("config: admin address changed; it applies at the next restart");
    else if (!cfg->has_admin && admin_bound && old->has_admin)
        td_info("config: admin removed; the admin API stays on %s until the next restart",
                admin_bound_address.text);
    if (strcmp(cfg->pid_file, old->pid_file) != 0)
        td_warn("config: pid_file changed; it applies at the next restart");
}

/* A new admin.token applies at once; a removed one only at the next restart: a reload must
 * never open the bound admin port to anyone (td_admin_update_token). */
static void update_admin_token(const td_config_t *cfg, const td_config_t *old) {
    const char *token = cfg->has_admin ? cfg->admin_token : "";
    int removed = td_admin_update_token(token);
    /* Once per removal: a config without "admin" and one with an empty token ask the same. */
    if (removed && strcmp(token, old->has_admin ? old->admin_token : ""))
        td_warn("config: admin.token removed; it applies at the next restart: the admin API keeps "
                "requiring the current token until then");
}

/* What a change is judged by in the audit log: the method and every backend's weight. */
static json_t *summary(const td_config_t *c) {
    json_t *w = json_object();
    for (size_t i = 0; i < c->num_backends; i++)
        json_object_set_new(w, c->backends[i].name, json_integer(c->backends[i].weight));
    return json_pack("{s:s,s:o}", "method", td_method_name(c->method), "weights", w);
}

/* td_control_apply; `read_sha` is the SHA-256 of the config file text `cfg` was just read from
 * (a reload), else NULL.
 *
 * A change written back to the file is audited first: the audit entry (with the SHA-256 of the
 * new file text and of the current one) is appended and fsynced, then the file is replaced, then
 * the snapshot is published. A crash in between leaves an entry whose change is not in the
 * file, which td_audit_recover recognises at the next start; never a change in the file without
 * its entry. */
static int apply(td_config_t *cfg, const char *what, int persist, const char *client,
                 const char *read_sha, char *err, size_t errlen) {
    keep_startup_settings(cfg);
    /* Everything that can fail comes first, so a refused change changes nothing. */
    td_snapshot_t *s = td_snapshot_build(cfg, version + 1, err, errlen);
    if (!s)
        return TD_EINVAL;
    int to_file = persist && config_path[0];
    if (to_file && file_changed()) {
        /* Writing back would silently drop edits made to the file since td read it. */
        snprintf(err, errlen,
                 "%s was changed on disk since td read it: reload it first (SIGHUP or PUT "
                 "/api/v1/config), then repeat the change",
                 config_path);
        td_snapshot_release(s);
        return TD_ECONFLICT;
    }
    char *text = NULL, sha[65] = "";
    if (to_file) {
        if (!(text = td_config_to_json(cfg))) {
            snprintf(err, errlen, "out of memory");
            td_snapshot_release(s);
            return TD_ENOMEM;
        }
        td_sha256_hex(text, strlen(text), sha);
    } else if (read_sha) {
        snprintf(sha, sizeof(sha), "%s", read_sha);
    }
    json_t *entry;
    /* Only a write-back names the file it started from: td_audit_recover looks at those. */
    int r = td_audit_begin(what, summary(running), summary(cfg), client, version + 1, sha,
                           to_file ? file_sha : NULL, &entry);
    if (r < 0 && to_file) {
        /* Applying it would be a change nobody can find in the audit log. */
        snprintf(err, errlen, "cannot append to the audit log %s.audit.jsonl: %s; nothing changed",
                 config_path, r == TD_ENOMEM ? "out of memory" : strerror(errno));
        td_audit_abandon(entry, "the audit log could not be written");
        free(text);
        td_snapshot_release(s);
        return r;
    }
    if (to_file && td_config_write_text(text, config_path) < 0) {
        snprintf(err, errlen, "cannot write %s: %m", config_path);
        td_audit_abandon(entry, err);
        free(text);
        td_snapshot_release(s);
        return TD_EIO;
    }
    free(text);
    if (to_file) {
        note_file();
        snprintf(file_sha, sizeof(file_sha), "%s", sha);
    } else if (read_sha) {
        snprintf(file_sha, sizeof(file_sha), "%s", read_sha);
    }
    update_admin_token(cfg, running);
    commit(s, cfg);
    td_info("config version %llu applied (%s)", (unsigned long long)version, what);
    td_audit_commit(entry);
    return 0;
}

int td_control_apply(td_config_t *cfg, const char *what, int persist, const char *client, char *err,
                     size_t errlen) {
    return apply(cfg, what, persist, client, NULL, err, errlen);
}

int td_control_reload(void) {
    if (!config_path[0]) {
        td_warn("reload: no config file (running the embedded demo config)");
        return TD_EINVAL;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *errs = open_memstream(&buf, &len);
    struct stat before;
    int have_before = stat(config_path, &before) == 0;
    char read_sha[65];
    td_config_file_sha256(config_path, read_sha);
    td_config_t *cfg = td_config_load(config_path, errs);
    fclose(errs);
    if (!cfg) {
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            td_error("reload rejected: %s", line);
            td_event("reload", "rejected: %s", line);
        }
        td_error("reload rejected: keeping config version %llu", (unsigned long long)version);
        free(buf);
        return TD_EINVAL;
    }
    free(buf);
    char err[256];
    int r = apply(cfg, "reload of the config file", 0, "signal", read_sha, err, sizeof(err));
    if (r == 0 && have_before)
        file_seen = before; /* what was read is now what runs */
    return r;
}

void td_control_shutdown(void) {
    td_health_stop();
}
