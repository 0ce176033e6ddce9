#include "td/control.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "td/admin.h"
#include "td/cluster.h"
#include "td/config.h"
#include "td/events.h"
#include "td/health.h"
#include "td/log.h"
#include "td/notify.h"
#include "td/resolver.h"
#include "td/rollout.h"
#include "td/router.h"
#include "td/state_file.h"

static td_config_t *running; /* owned by the current snapshot; borrowed here */
static char config_path[4096];
static char state_path[4096];  /* "" with the demo config: nothing is kept */
static char state_sha[65];     /* SHA-256 of the state file's text as td last read or wrote it */
static json_t *file_doc;       /* owned: the config file's canonical JSON as td last read it */
static json_t *overrides;      /* owned: the state file's overrides (td_state_diff) */
static json_t *bound;          /* owned: {"listeners", "workers"} as bound at start */
static int persisted = 1;      /* the last change reached the state file */
static char persist_why[8800]; /* why not, when !persisted */
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

void td_control_set_version(uint64_t v) {
    version = v;
}

int64_t td_control_started_ms(void) {
    return started_ms;
}

int td_control_persisted(const char **why) {
    if (why)
        *why = persist_why;
    return persisted;
}

const char *td_control_state_path(void) {
    return state_path;
}

/* The canonical JSON of a config (a new reference), or NULL when out of memory. */
static json_t *doc_of(const td_config_t *c) {
    char *text = td_config_to_json(c);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return j;
}

json_t *td_control_file_json(void) {
    return file_doc ? json_incref(file_doc) : doc_of(running);
}

json_t *td_control_bound_json(void) {
    return json_incref(bound);
}

json_t *td_control_overrides_json(void) {
    json_t *list = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(overrides, i, o) {
        json_array_append_new(
            list, json_pack("{s:O,s:O,s:O,s:O,s:O,s:O}", "path", json_object_get(o, "path"), "keys",
                            json_object_get(o, "keys"), "value", json_object_get(o, "value"),
                            "file_value", json_object_get(o, "file_value"), "since",
                            json_object_get(o, "since"), "by", json_object_get(o, "by")));
    }
    json_t *j = json_pack("{s:s,s:b,s:o}", "state_file", state_path, "persisted", persisted,
                          "overrides", list);
    if (j && !persisted)
        json_object_set_new(j, "persist_error", json_string(persist_why));
    return j;
}

/* What binding a listener depends on: its address and whether it speaks TLS (certificates and
 * the rest of a listener apply at once, with the next snapshot). */
static json_t *bindings(const json_t *listeners) {
    json_t *out = json_array(), *l;
    size_t i;
    json_array_foreach(listeners, i, l) {
        json_array_append_new(out, json_pack("[O,b]", json_object_get(l, "address"),
                                             json_object_get(l, "tls") != NULL));
    }
    return out;
}

static int same_bindings(const json_t *a, const json_t *b) {
    json_t *x = bindings(a), *y = bindings(b);
    int same = json_equal(x, y);
    json_decref(x);
    json_decref(y);
    return same;
}

json_t *td_control_pending_restart(void) {
    json_t *pending = json_array(), *doc = doc_of(running);
    static const char *const keys[] = {"listeners", "workers"};
    for (size_t i = 0; doc && bound && i < sizeof(keys) / sizeof(keys[0]); i++) {
        json_t *asked = json_object_get(doc, keys[i]), *runs = json_object_get(bound, keys[i]);
        if (i == 0 ? !same_bindings(asked, runs) : !json_equal(asked, runs))
            json_array_append_new(pending, json_pack("{s:s,s:O,s:O}", "key", keys[i], "asked",
                                                     asked, "running", runs));
    }
    json_decref(doc);
    if (running && running->has_admin &&
        (!admin_bound || strcmp(running->admin_address.text, admin_bound_address.text) != 0))
        json_array_append_new(
            pending, json_pack("{s:s,s:s,s:o}", "key", "admin.address", "asked",
                               running->admin_address.text, "running",
                               admin_bound ? json_string(admin_bound_address.text) : json_null()));
    return pending;
}

/* A host name's answer changed: its addresses are the servers of a new snapshot. */
static void resolved(void) {
    td_control_refresh("a host name's addresses changed");
}

/* A config change whose host names have not answered yet: its snapshot (owning `running`),
 * published when they have (or failed, or the resolvers' bound passed); the previous snapshot
 * serves meanwhile, so that a new name never means a moment without servers. */
static td_snapshot_t *waiting;
static uv_timer_t waiting_timer;
static int waiting_timer_on;

static void publish(td_snapshot_t *s) {
    /* Checks first: a new default_down server must be down before any worker can see it. */
    td_health_sync(uv_default_loop(), s);
    td_router_publish(s);
}

/* Publishes the waiting snapshot, built again from its config so that it has the answers that
 * came meanwhile (the one built before them when that fails). */
static void publish_waiting(void) {
    td_snapshot_t *s = waiting;
    waiting = NULL;
    if (waiting_timer_on)
        uv_timer_stop(&waiting_timer);
    char err[512];
    td_config_t *cfg = td_config_dup(running);
    td_snapshot_t *fresh = cfg ? td_snapshot_build(cfg, s->version, err, sizeof(err)) : NULL;
    if (fresh) {
        running = cfg;
        td_snapshot_release(s);
        s = fresh;
    }
    publish(s);
}

static void first_answer(void) {
    if (waiting && td_resolver_unanswered(running) == 0)
        publish_waiting();
}

static void waiting_timeout(uv_timer_t *t) {
    (void)t;
    if (!waiting)
        return;
    td_warn("resolver: the new host names of config version %llu did not answer within %llu ms; "
            "it applies without their addresses",
            (unsigned long long)waiting->version,
            (unsigned long long)td_resolver_bound_ms(running));
    publish_waiting();
}

/* Makes the built snapshot `s` (of config `cfg`) the running one. With `may_wait`, when cfg has
 * host names never resolved yet, they are asked first and `s` is published when they have all
 * answered (first_answer), never blocking the loop; a later change replaces a waiting one. */
static void commit(td_snapshot_t *s, td_config_t *cfg, int may_wait) {
    version++;
    running = cfg;
    if (waiting) {
        td_snapshot_release(waiting);
        waiting = NULL;
    }
    td_resolver_on_first_answer(first_answer);
    td_resolver_sync(uv_default_loop(), cfg, resolved);
    if (may_wait && td_resolver_unanswered(cfg)) {
        waiting = s;
        if (!waiting_timer_on) {
            uv_timer_init(uv_default_loop(), &waiting_timer);
            waiting_timer_on = 1;
        }
        uv_timer_start(&waiting_timer, waiting_timeout, td_resolver_bound_ms(cfg), 0);
        td_info("config version %llu waits for the first answer of its new host names (at most "
                "%llu ms); the running snapshot serves meanwhile",
                (unsigned long long)version, (unsigned long long)td_resolver_bound_ms(cfg));
        return;
    }
    if (waiting_timer_on)
        uv_timer_stop(&waiting_timer);
    publish(s);
}

/* The SHA-256 of the state file as it is now; that of "" when there is none, so that an audit
 * entry written before the first state file can be told from one whose state landed. */
static void state_sha_now(char out[65]) {
    if (td_config_file_sha256(state_path, out) < 0)
        td_sha256_hex("", 0, out);
}

/* Whether the last write of the state file succeeded; said loudly each time it did not, since
 * every change then lasts only until td stops. */
static void note_persisted(int ok, const char *why) {
    if (!ok) {
        snprintf(persist_why, sizeof(persist_why), "%s", why);
        td_error("changes are not being saved: %s", why);
        td_event("state", "changes are not being saved: %s", why);
    } else if (!persisted) {
        td_info("changes are saved again to %s", state_path);
        td_event("state", "changes are saved again to %s", state_path);
        persist_why[0] = 0;
    }
    persisted = ok;
}

/* Records the overrides `next` (borrowed) in the state file, audited: the audit entry (naming
 * the SHA-256 of the new state text and of the current one) is appended and fsynced first, then
 * the state file is replaced atomically. A crash in between leaves an entry whose state never
 * landed, which td_audit_recover recognises at the next start; never a state without its entry.
 * When either write fails the change still applies (controlling traffic comes first), unsaved:
 * note_persisted says so. *entry receives the audit entry (for td_audit_commit). */
static void save(const json_t *next, const char *what, json_t *before, json_t *after,
                 const char *client, uint64_t at_version, json_t **entry) {
    json_t *ro = state_path[0] ? td_rollout_persist_json() : NULL;
    char *text = state_path[0] ? td_state_text_rollout(next, config_path, ro) : NULL;
    json_decref(ro);
    char sha[65] = "";
    if (text)
        td_sha256_hex(text, strlen(text), sha);
    int changed = text && strcmp(sha, state_sha) != 0;
    int r = td_audit_begin(what, before, after, client, at_version, changed ? sha : NULL,
                           changed ? state_sha : NULL, entry);
    char why[sizeof(persist_why)];
    if (!state_path[0])
        return;
    if (!text) {
        note_persisted(0, "out of memory");
    } else if (changed && r < 0) {
        char audit[sizeof(state_path) + 16];
        td_state_audit_path(state_path, audit, sizeof(audit));
        /* A state without its audit entry is what a crash must never leave: not written. */
        snprintf(why, sizeof(why), "cannot append to the audit log %s: %s", audit,
                 r == TD_ENOMEM ? "out of memory" : strerror(errno));
        note_persisted(0, why);
    } else if (changed && td_config_write_text(text, state_path) < 0) {
        snprintf(why, sizeof(why), "cannot write the state file %s: %s", state_path,
                 strerror(errno));
        note_persisted(0, why);
    } else {
        if (changed)
            snprintf(state_sha, sizeof(state_sha), "%s", sha);
        note_persisted(1, "");
    }
    free(text);
}

/* Says, in the log and the events, which overrides the config file replaced. */
static void report_replaced(const json_t *replaced) {
    size_t i;
    json_t *r;
    json_array_foreach(replaced, i, r) {
        char msg[512];
        td_state_replaced_message(r, msg, sizeof(msg));
        td_warn("%s", msg);
        td_event("reload", "%s", msg);
    }
}

/* The config of document `fdoc` (borrowed) with the overrides `ov` (borrowed) merged on top, or
 * NULL when the merge is not a valid config (its first problem in err[n]) or out of memory.
 * *kept (may be NULL) receives the overrides that applied, *replaced those the file replaced
 * (new arrays, owned by the caller, when not NULL). */
static td_config_t *parse_merged(const json_t *fdoc, const json_t *ov, json_t **kept,
                                 json_t **replaced, char *err, size_t n) {
    json_t *k = NULL, *r = NULL;
    json_t *merged = td_state_merge(fdoc, ov, &k, &r);
    snprintf(err, n, "out of memory");
    char *text = merged ? json_dumps(merged, JSON_INDENT(2)) : NULL, *buf = NULL;
    json_decref(merged);
    size_t len = 0;
    FILE *errs = open_memstream(&buf, &len);
    td_config_t *out = text ? td_config_parse(text, strlen(text), state_path, errs) : NULL;
    fclose(errs);
    free(text);
    if (!out && buf && buf[0]) {
        char *nl = strchr(buf, '\n');
        if (nl)
            *nl = 0;
        snprintf(err, n, "%s", buf);
    }
    free(buf);
    if (kept)
        *kept = k;
    else
        json_decref(k);
    if (replaced)
        *replaced = r;
    else
        json_decref(r);
    return out;
}

/* The config file `cfg` (owned) with the overrides `ov` (borrowed) on top: the config that runs
 * (owned by the caller; `cfg` itself when no override applies). *kept receives the overrides in
 * force (a new array). When the merged document is not a valid config (the file's edit and an
 * override no longer fit together: say every weight would be 0), the overrides are taken one by
 * one, in order, and each that makes the config invalid gives way to the file's value, with an
 * error and an event naming it; the others stay (a `maint` that protects a colour being redeployed
 * is never dropped for an unrelated key's sake). NULL only when out of memory (cfg freed). */
static td_config_t *with_overrides(td_config_t *cfg, const json_t *fdoc, const json_t *ov,
                                   json_t **kept) {
    json_t *replaced = NULL;
    char err[600];
    td_config_t *out = fdoc ? parse_merged(fdoc, ov, kept, &replaced, err, sizeof(err)) : NULL;
    if (!fdoc || !*kept) {
        td_error("state: out of memory merging the overrides of %s: running the config file alone",
                 state_path);
        json_decref(replaced);
        if (*kept)
            json_decref(*kept);
        *kept = json_array();
        return cfg;
    }
    report_replaced(replaced);
    json_decref(replaced);
    if (json_array_size(*kept) == 0) {
        td_config_free(out);
        return cfg;
    }
    if (!out) {
        json_t *fits = json_array(), *o;
        size_t i;
        json_array_foreach(*kept, i, o) {
            json_array_append(fits, o);
            td_config_t *c = parse_merged(fdoc, fits, NULL, NULL, err, sizeof(err));
            if (c) {
                td_config_free(c);
                continue;
            }
            json_array_remove(fits, json_array_size(fits) - 1);
            const char *path = json_string_value(json_object_get(o, "path"));
            char *value = json_dumps(json_object_get(o, "value"), JSON_ENCODE_ANY);
            td_error("state: the override %s = %s of %s no longer fits the config file (%s): the "
                     "file's value is used",
                     path ? path : "?", value ? value : "?", state_path, err);
            td_event("reload",
                     "the override %s = %s no longer fits the config file (%s): the "
                     "file's value is used",
                     path ? path : "?", value ? value : "?", err);
            free(value);
        }
        json_decref(*kept);
        *kept = fits;
        out = json_array_size(fits) ? parse_merged(fdoc, fits, NULL, NULL, err, sizeof(err)) : NULL;
        if (!out)
            return cfg;
    }
    td_config_free(cfg);
    return out;
}

int td_control_state_path_check(const td_config_t *cfg, const char *config_file, char *err,
                                size_t n) {
    char state[4096], a[4096], b[4096];
    if (!config_file || !config_file[0])
        return 0;
    if (cfg->state_file[0])
        snprintf(state, sizeof(state), "%s", cfg->state_file);
    else
        td_state_default_path(config_file, state, sizeof(state));
    if (!realpath(config_file, a) || !realpath(state, b) || strcmp(a, b) != 0)
        return 0;
    snprintf(err, n,
             "%s: state_file \"%s\" is the config file itself: td keeps its changes apart from the "
             "config file and never writes that; give the state file a path of its own",
             config_file, cfg->state_file);
    return TD_EINVAL;
}

static void start_unresolved(void *arg, int b, int sv, const char *error) {
    const td_config_t *cfg = arg;
    if (b < 0)
        td_warn("resolver: %s", error);
    else
        td_warn("resolver: backend %s: server %s does not resolve (%s); it has no address until "
                "it does",
                cfg->backends[b].name, cfg->backends[b].servers[sv].address.text, error);
}

int td_control_init(td_config_t *cfg, const char *path) {
    snprintf(config_path, sizeof(config_path), "%s", path ? path : "");
    started_ms = td_wall_ms();
    char audit[sizeof(state_path) + 16] = "";
    char why[4400];
    if (td_control_state_path_check(cfg, config_path, why, sizeof(why)) < 0) {
        fprintf(stderr, "td: %s\n", why);
        td_config_free(cfg);
        return TD_EINVAL;
    }
    if (cfg->has_cluster) {
        /* The shared state is in etcd: no state file, no overrides, no local audit log. What
         * starts is the cache file's document when there is one (etcd may be down). */
        file_doc = doc_of(cfg);
        cfg = td_cluster_boot(cfg, config_path);
    } else if (config_path[0]) {
        if (cfg->state_file[0])
            snprintf(state_path, sizeof(state_path), "%s", cfg->state_file);
        else
            td_state_default_path(config_path, state_path, sizeof(state_path));
        td_state_audit_path(state_path, audit, sizeof(audit));
    } else {
        snprintf(persist_why, sizeof(persist_why),
                 "td runs the embedded demo config, which has no file: changes last until td "
                 "stops");
        persisted = 0;
    }
    td_events_init(audit);
    td_event("start", "td started with %s", config_path[0] ? config_path : "the demo config");
    json_t *ov = json_array();
    if (state_path[0]) {
        /* What a stop during a write left behind: its temporary file, and an audited change
         * whose state never landed. */
        int removed = td_config_remove_temps(state_path);
        if (removed > 0)
            td_warn("state: removed %d temporary file%s left next to %s by an interrupted write",
                    removed, removed == 1 ? "" : "s", state_path);
        state_sha_now(state_sha);
        td_audit_recover(state_sha, state_path);
        file_doc = doc_of(cfg);
        char err[600];
        json_t *loaded = td_state_load(state_path, err, sizeof(err));
        if (!loaded) {
            td_error("state: %s: running the config file alone", err);
            td_event("start", "state file not used (%s): running the config file alone", err);
        } else {
            json_decref(ov);
            ov = loaded;
        }
    }
    json_t *kept = NULL;
    if (json_array_size(ov)) {
        cfg = with_overrides(cfg, file_doc, ov, &kept);
        td_info("state: %zu override%s of %s from %s", json_array_size(kept),
                json_array_size(kept) == 1 ? "" : "s", config_path, state_path);
    } else {
        kept = json_array();
    }
    admin_bound = cfg->has_admin;
    admin_bound_address = cfg->admin_address;
    json_t *doc = doc_of(cfg);
    bound = json_pack("{s:O,s:O}", "listeners", json_object_get(doc, "listeners"), "workers",
                      json_object_get(doc, "workers"));
    json_decref(doc);
    /* The first snapshot already has the host names' addresses: td waits for them at start (at
     * most the resolvers' timeouts), not on the running loop. */
    td_resolver_resolve_all(cfg, 1, start_unresolved, NULL, (void *)cfg);
    char err[512];
    td_snapshot_t *s = td_snapshot_build(cfg, version + 1, err, sizeof(err));
    if (!s) {
        fprintf(stderr, "td: %s\n", err);
        json_decref(ov);
        json_decref(kept);
        return TD_EINVAL;
    }
    overrides = kept;
    if (json_array_size(kept) != json_array_size(ov)) {
        /* The file replaced some: the state file says so from now on. */
        json_t *entry;
        save(kept, "overrides replaced by the config file at start", NULL, NULL, "td", 1, &entry);
        td_audit_commit(entry);
    }
    json_decref(ov);
    commit(s, cfg, 0);
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
    int cluster_changed = cfg->has_cluster != old->has_cluster ||
                          strcmp(cfg->cluster.prefix, old->cluster.prefix) != 0 ||
                          strcmp(cfg->cluster.node, old->cluster.node) != 0 ||
                          cfg->cluster.num_etcd != old->cluster.num_etcd;
    for (int i = 0; !cluster_changed && i < cfg->cluster.num_etcd; i++)
        cluster_changed = strcmp(cfg->cluster.etcd[i], old->cluster.etcd[i]) != 0;
    if (cluster_changed)
        td_warn("config: cluster changed; it applies at the next restart");
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
    const char *read = cfg->has_admin ? cfg->admin_read_token : "";
    if (td_admin_update_read_token(read) &&
        strcmp(read, old->has_admin ? old->admin_read_token : ""))
        td_warn("config: admin.read_token removed; it applies at the next restart: the admin API "
                "keeps taking it for reading until then");
    if (!admin_bound)
        return;
    char err[400];
    int r = td_admin_update_tls(cfg, err, sizeof(err));
    if (r == 1)
        td_warn("config: admin.tls turned %s; it applies at the next restart",
                cfg->has_admin && cfg->admin_tls.tls ? "on" : "off");
    else if (r < 0)
        td_error("config: admin.tls: %s; the certificates in force stay", err);
}

/* What a change is judged by in the audit log: the method and every backend's weight. */
static json_t *summary(const td_config_t *c) {
    json_t *w = json_object();
    for (size_t i = 0; i < c->num_backends; i++)
        json_object_set_new(w, c->backends[i].name, json_integer(c->backends[i].weight));
    return json_pack("{s:s,s:o}", "method", td_method_name(c->method), "weights", w);
}

/* A change to the weights from elsewhere (the config file, PUT /api/v1/config, DELETE
 * /api/v1/overrides) while a rollout runs is reported and the running weights stay. */
int td_control_keep_rollout_weights(td_config_t *cfg, const char *what) {
    int kept = 0;
    for (size_t i = 0; i < cfg->num_backends; i++)
        for (size_t j = 0; j < running->num_backends; j++)
            if (strcmp(cfg->backends[i].name, running->backends[j].name) == 0 &&
                cfg->backends[i].weight != running->backends[j].weight) {
                char active[128];
                td_rollout_active(active, sizeof(active));
                td_warn("%s: weight of %s stays %d (not %d): %s and owns the weights", what,
                        cfg->backends[i].name, running->backends[j].weight, cfg->backends[i].weight,
                        active);
                td_event("rollout", "%s: weight of %s stays %d (not %d): %s and owns the weights",
                         what, cfg->backends[i].name, running->backends[j].weight,
                         cfg->backends[i].weight, active);
                cfg->backends[i].weight = running->backends[j].weight;
                kept = 1;
            }
    return kept;
}

/* td_control_apply; `next` (owned, or NULL: computed from the file as last read) the overrides
 * that make `cfg` from the config file, `fdoc` (owned, or NULL: unchanged) the file's new
 * document (a reload). Everything that can refuse the change comes first, so a refused change
 * changes nothing; computing the overrides and writing the state file cannot refuse it (see
 * save). */
static int apply(td_config_t *cfg, const char *what, const char *client, json_t *next, json_t *fdoc,
                 char *err, size_t errlen) {
    keep_startup_settings(cfg);
    if (td_rollout_owns_weights() && td_control_keep_rollout_weights(cfg, what)) {
        /* The overrides are computed again: they must keep the rollout's weights. */
        json_decref(next);
        next = NULL;
    }
    td_snapshot_t *s = td_snapshot_build(cfg, version + 1, err, errlen);
    if (!s) {
        json_decref(next);
        json_decref(fdoc);
        return TD_EINVAL;
    }
    json_t *before = summary(running), *after = summary(cfg);
    if (fdoc) {
        json_decref(file_doc);
        file_doc = fdoc;
    }
    update_admin_token(cfg, running);
    /* Published before the overrides are computed and the audit and state files written: that
     * work (JSON documents, fsyncs) takes milliseconds, and traffic follows the change without
     * waiting for it. The answer still waits for them; a crash in between loses a change that
     * was never answered, and one that cannot be recorded still applies, unsaved (see save). */
    commit(s, cfg, 1);
    if (!next && state_path[0]) {
        char since[40];
        td_wall_iso(since, sizeof(since));
        json_t *doc = doc_of(cfg);
        next = doc ? td_state_diff(file_doc, doc, overrides, since, client) : NULL;
        json_decref(doc);
    }
    json_t *entry = NULL;
    if (!next && state_path[0]) {
        json_decref(before);
        json_decref(after);
        note_persisted(0, "out of memory");
    } else {
        if (next) {
            json_decref(overrides);
            overrides = next;
        }
        save(overrides, what, before, after, client, version, &entry);
    }
    td_info("config version %llu applied (%s)", (unsigned long long)version, what);
    td_audit_commit(entry);
    td_notify_status(); /* systemctl status shows the weights that run */
    return 0;
}

int td_control_apply(td_config_t *cfg, const char *what, int persist, const char *client, char *err,
                     size_t errlen) {
    /* Not persisted: the overrides stay as they are (the state file is not written). */
    json_t *next = persist ? NULL : json_incref(overrides);
    return apply(cfg, what, client, next, NULL, err, errlen);
}

int td_control_refresh(const char *what) {
    char err[512];
    td_config_t *cfg = td_config_dup(running);
    td_snapshot_t *s = cfg ? td_snapshot_build(cfg, version + 1, err, sizeof(err)) : NULL;
    if (!s) {
        td_error("%s: cannot publish a new snapshot: %s", what, cfg ? err : "out of memory");
        return cfg ? TD_EINVAL : TD_ENOMEM;
    }
    commit(s, cfg, 1);
    td_info("config version %llu applied (%s)", (unsigned long long)version, what);
    return 0;
}

int td_control_save(const char *what, const char *client) {
    json_t *entry = NULL;
    save(overrides, what, NULL, NULL, client, version, &entry);
    td_audit_commit(entry);
    return 0;
}

int td_control_reset(const char *client, char *err, size_t errlen) {
    char *text = file_doc ? json_dumps(file_doc, JSON_INDENT(2)) : NULL;
    if (!text) {
        snprintf(err, errlen, state_path[0] ? "out of memory" : "the demo config has no file");
        return state_path[0] ? TD_ENOMEM : TD_EINVAL;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *errs = open_memstream(&buf, &len);
    td_config_t *cfg = td_config_parse(text, strlen(text), config_path, errs);
    fclose(errs);
    free(text);
    if (!cfg) {
        snprintf(err, errlen, "the config file as last read no longer loads: %s", buf);
        free(buf);
        return TD_EINVAL;
    }
    free(buf);
    return apply(cfg, "overrides dropped: the config file alone runs", client, json_array(), NULL,
                 err, errlen);
}

int td_control_reload(void) {
    if (td_cluster_enabled()) {
        td_warn("reload: in cluster mode the shared state comes from etcd; a change to this "
                "node's own keys in %s applies at the next restart",
                config_path);
        return TD_EINVAL;
    }
    if (!config_path[0]) {
        td_warn("reload: no config file (running the embedded demo config)");
        return TD_EINVAL;
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *errs = open_memstream(&buf, &len);
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
    if (strcmp(cfg->state_file, running->state_file) != 0)
        td_warn("config: state_file changed; it applies at the next restart");
    json_t *fdoc = doc_of(cfg), *kept = NULL;
    if (!fdoc) {
        td_error("reload: out of memory");
        td_config_free(cfg);
        return TD_ENOMEM;
    }
    cfg = with_overrides(cfg, fdoc, overrides, &kept);
    char err[256];
    int r = apply(cfg, "reload of the config file", "signal", kept, fdoc, err, sizeof(err));
    if (r < 0)
        td_error("reload rejected: %s", err);
    return r;
}

void td_control_shutdown(void) {
    if (waiting) { /* the router lets go of it with the rest */
        td_router_publish(waiting);
        waiting = NULL;
    }
    if (waiting_timer_on) {
        uv_close((uv_handle_t *)&waiting_timer, NULL);
        waiting_timer_on = 0;
    }
    td_health_stop();
    td_resolver_stop();
}
