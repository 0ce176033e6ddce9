/* The state file's overrides: a key-level diff between two config documents, and the merge of
 * overrides on top of a config file (see include/td/state_file.h). */
#include "td/state_file.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the keyed form: the document as nested objects only ----
 *
 * "backends" (at the root) and "servers" (in a backend) become objects keyed by name and
 * address, so that a path names a backend or a server whatever its place in the array. */

static json_t *keyed(const json_t *v, int level);

/* An array of objects with distinct string values of `id` as an object by that value (each
 * element in keyed form at `level`), or NULL when it is not one (then it stays one value). */
static json_t *keyed_array(const json_t *arr, const char *id, int level) {
    json_t *o = json_object();
    size_t i;
    json_t *e;
    if (!o)
        return NULL;
    json_array_foreach(arr, i, e) {
        const char *k = json_string_value(json_object_get(e, id));
        json_t *sub;
        if (!k || json_object_get(o, k) || !(sub = keyed(e, level)) ||
            json_object_set_new(o, k, sub) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* `v` in keyed form (a new reference). level 0: the root; 1: a backend; 2: anything else. */
static json_t *keyed(const json_t *v, int level) {
    if (!json_is_object(v))
        return json_deep_copy(v);
    json_t *o = json_object();
    const char *k;
    json_t *e;
    if (!o)
        return NULL;
    json_object_foreach((json_t *)v, k, e) {
        json_t *sub = NULL;
        if (level == 0 && strcmp(k, "backends") == 0 && json_is_array(e))
            sub = keyed_array(e, "name", 1);
        else if (level == 1 && strcmp(k, "servers") == 0 && json_is_array(e))
            sub = keyed_array(e, "address", 2);
        if (!sub)
            sub = keyed(e, 2);
        if (!sub || json_object_set_new(o, k, sub) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* The inverse of keyed(): steals `v`, returns the document (NULL when out of memory). */
static json_t *unkeyed(json_t *v, int level) {
    if (!json_is_object(v))
        return v;
    const char *k;
    json_t *e;
    json_object_foreach(v, k, e) {
        int as_array =
            (level == 0 && strcmp(k, "backends") == 0) || (level == 1 && strcmp(k, "servers") == 0);
        if (as_array && json_is_object(e)) {
            json_t *arr = json_array();
            const char *k2;
            json_t *e2;
            json_object_foreach(e, k2, e2) {
                json_t *u = unkeyed(json_incref(e2), level + 1);
                if (!arr || json_array_append_new(arr, u) != 0) {
                    json_decref(arr);
                    json_decref(v);
                    return NULL;
                }
            }
            json_object_set_new(v, k, arr);
        } else if (json_is_object(e)) {
            json_t *u = unkeyed(json_incref(e), 2);
            if (!u) {
                json_decref(v);
                return NULL;
            }
            json_object_set_new(v, k, u);
        }
    }
    return v;
}

/* ---- paths ---- */

/* Appends every leaf of the keyed object `o` (a non-object value, or an empty object) under
 * `prefix` to `out` as [keys, value] (value borrowed from `o`) and to `index` (the compact JSON of
 * keys -> position in out). Returns 0 or -1 (out of memory). */
static int flatten(const json_t *o, json_t *prefix, json_t *out, json_t *index) {
    const char *k;
    json_t *e;
    json_object_foreach((json_t *)o, k, e) {
        json_t *keys = json_copy(prefix);
        if (!keys || json_array_append_new(keys, json_string(k)) != 0) {
            json_decref(keys);
            return -1;
        }
        int r = 0;
        if (json_is_object(e) && json_object_size(e) > 0) {
            r = flatten(e, keys, out, index);
        } else {
            char *id = json_dumps(keys, JSON_COMPACT);
            r = id &&
                        json_object_set_new(index, id,
                                            json_integer((json_int_t)json_array_size(out))) == 0 &&
                        json_array_append_new(out, json_pack("[O,O]", keys, e)) == 0
                    ? 0
                    : -1;
            free(id);
        }
        json_decref(keys);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* The flattened form of a document: {"list": [[keys, value], ...], "index": {...}}. */
static json_t *flat(const json_t *doc) {
    json_t *k = keyed(doc, 0), *list = json_array(), *index = json_object();
    json_t *f = NULL, *root = json_array();
    if (k && list && index && root && flatten(k, root, list, index) == 0)
        f = json_pack("{s:O,s:O,s:O}", "list", list, "index", index, "tree", k);
    json_decref(root);
    json_decref(k);
    json_decref(list);
    json_decref(index);
    return f;
}

/* The value at `keys` in a flattened document (borrowed), or NULL. */
static json_t *flat_get(const json_t *f, const json_t *keys) {
    char *id = json_dumps(keys, JSON_COMPACT);
    json_t *at = id ? json_object_get(json_object_get(f, "index"), id) : NULL;
    free(id);
    if (!at)
        return NULL;
    return json_array_get(
        json_array_get(json_object_get(f, "list"), (size_t)json_integer_value(at)), 1);
}

/* Equal by content, null and NULL both meaning absent. */
static int same(const json_t *a, const json_t *b) {
    if (!a || json_is_null(a))
        return !b || json_is_null(b);
    return b && !json_is_null(b) && json_equal((json_t *)a, (json_t *)b);
}

static char *path_text(const json_t *keys) {
    size_t len = 0, i;
    json_t *k;
    json_array_foreach(keys, i, k) len += strlen(json_string_value(k)) + 1;
    char *s = malloc(len + 1), *p = s;
    if (!s)
        return NULL;
    *s = 0;
    json_array_foreach(keys, i, k) {
        p += sprintf(p, "%s%s", i ? "." : "", json_string_value(k));
    }
    return s;
}

/* Sets `value` (borrowed) at `keys` in the keyed tree, creating objects on the way. */
static int tree_set(json_t *tree, const json_t *keys, json_t *value) {
    size_t n = json_array_size(keys);
    for (size_t i = 0; i + 1 < n; i++) {
        const char *k = json_string_value(json_array_get(keys, i));
        json_t *next = json_object_get(tree, k);
        if (!json_is_object(next)) {
            next = json_object();
            if (!next || json_object_set_new(tree, k, next) != 0)
                return -1;
        }
        tree = next;
    }
    json_t *copy = json_deep_copy(value);
    return copy && json_object_set_new(tree, json_string_value(json_array_get(keys, n - 1)),
                                       copy) == 0
               ? 0
               : -1;
}

/* Removes `keys` from the keyed tree, and the objects that this leaves empty (a removed backend
 * goes with its last key). */
static void tree_remove(json_t *tree, const json_t *keys, size_t depth) {
    const char *k = json_string_value(json_array_get(keys, depth));
    if (depth + 1 == json_array_size(keys)) {
        json_object_del(tree, k);
        return;
    }
    json_t *next = json_object_get(tree, k);
    if (!json_is_object(next))
        return;
    tree_remove(next, keys, depth + 1);
    if (json_object_size(next) == 0)
        json_object_del(tree, k);
}

/* ---- diff and merge ---- */

static json_t *find_override(const json_t *list, const json_t *keys) {
    size_t i;
    json_t *o;
    json_array_foreach(list, i,
                       o) if (json_equal(json_object_get(o, "keys"), (json_t *)keys)) return o;
    return NULL;
}

static int add(json_t *out, const json_t *old, const json_t *keys, json_t *value,
               json_t *file_value, const char *since, const char *by) {
    json_t *prev = old ? find_override(old, keys) : NULL;
    if (prev && same(json_object_get(prev, "value"), value))
        return json_array_append(out, prev);
    char *path = path_text(keys);
    json_t *o = path ? json_pack("{s:s,s:O,s:O,s:O,s:s,s:s}", "path", path, "keys", keys, "value",
                                 value ? value : json_null(), "file_value",
                                 file_value ? file_value : json_null(), "since", since ? since : "",
                                 "by", by ? by : "")
                     : NULL;
    free(path);
    return o ? json_array_append_new(out, o) : -1;
}

static int skipped(const json_t *keys) {
    return strcmp(json_string_value(json_array_get(keys, 0)), "state_file") == 0;
}

json_t *td_state_diff(const json_t *file, const json_t *running, const json_t *old,
                      const char *since, const char *by) {
    json_t *ff = flat(file), *fr = flat(running), *out = json_array();
    int ok = ff && fr && out;
    size_t i;
    json_t *pair;
    json_array_foreach(ok ? json_object_get(fr, "list") : NULL, i, pair) {
        json_t *keys = json_array_get(pair, 0), *rv = json_array_get(pair, 1);
        json_t *fv = flat_get(ff, keys);
        if (!skipped(keys) && !same(fv, rv) && add(out, old, keys, rv, fv, since, by) < 0)
            ok = 0;
    }
    json_array_foreach(ok ? json_object_get(ff, "list") : NULL, i, pair) {
        json_t *keys = json_array_get(pair, 0);
        if (!skipped(keys) && !flat_get(fr, keys) &&
            add(out, old, keys, NULL, json_array_get(pair, 1), since, by) < 0)
            ok = 0;
    }
    json_decref(ff);
    json_decref(fr);
    if (!ok) {
        json_decref(out);
        return NULL;
    }
    return out;
}

json_t *td_state_merge(const json_t *file, const json_t *overrides, json_t **kept,
                       json_t **replaced) {
    json_t *ff = flat(file), *tree = ff ? json_deep_copy(json_object_get(ff, "tree")) : NULL;
    *kept = json_array();
    *replaced = json_array();
    int ok = tree && *kept && *replaced;
    size_t i;
    json_t *o;
    json_array_foreach(ok ? overrides : NULL, i, o) {
        json_t *now = flat_get(ff, json_object_get(o, "keys"));
        if (same(now, json_object_get(o, "file_value"))) {
            ok = ok && json_array_append(*kept, o) == 0;
        } else {
            json_t *r = json_copy(o);
            ok = ok && r && json_object_set(r, "file_now", now ? now : json_null()) == 0 &&
                 json_array_append(*replaced, r) == 0;
            json_decref(r);
        }
    }
    /* Removals first: an override that replaces an empty object ({}) by a filled one is a
     * removal of the {} and a set of the keys inside. */
    json_array_foreach(ok ? *kept : NULL, i, o) if (json_is_null(json_object_get(o, "value")))
        tree_remove(tree, json_object_get(o, "keys"), 0);
    json_array_foreach(ok ? *kept : NULL, i, o) {
        json_t *v = json_object_get(o, "value");
        if (!json_is_null(v) && tree_set(tree, json_object_get(o, "keys"), v) < 0)
            ok = 0;
    }
    json_decref(ff);
    json_t *doc = ok ? unkeyed(tree, 0) : NULL;
    if (!ok)
        json_decref(tree);
    if (!doc) {
        json_decref(*kept);
        json_decref(*replaced);
        *kept = *replaced = NULL;
    }
    return doc;
}

/* ---- for people and files ---- */

static void value_text(const json_t *v, char *out, size_t n) {
    char *s = v && !json_is_null(v) ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    snprintf(out, n, "%s", s ? s : "(absent)");
    free(s);
}

void td_state_replaced_message(const json_t *r, char *out, size_t n) {
    char was[96], now[96], value[96];
    value_text(json_object_get(r, "file_value"), was, sizeof(was));
    value_text(json_object_get(r, "file_now"), now, sizeof(now));
    json_t *v = json_object_get(r, "value");
    if (json_is_null(v))
        snprintf(value, sizeof(value), "removing it");
    else
        value_text(v, value, sizeof(value));
    snprintf(out, n,
             "config file changed %s from %s to %s: the override %s set through the API at %s by "
             "%s is replaced",
             json_string_value(json_object_get(r, "path")), was, now, value,
             json_string_value(json_object_get(r, "since")),
             json_string_value(json_object_get(r, "by")));
}

char *td_state_text(const json_t *overrides, const char *config_path) {
    return td_state_text_rollout(overrides, config_path, NULL);
}

char *td_state_text_rollout(const json_t *overrides, const char *config_path,
                            const json_t *rollout) {
    json_t *doc = json_pack("{s:s,s:s,s:O}", "about",
                            "changes made through td's admin API, on top of the config file; "
                            "written by td (see tdctl config diff)",
                            "config_file", config_path ? config_path : "", "overrides", overrides);
    if (doc && rollout)
        json_object_set(doc, "rollout", (json_t *)rollout);
    char *s = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    json_decref(doc);
    if (!s)
        return NULL;
    size_t len = strlen(s);
    char *out = realloc(s, len + 2);
    if (!out) {
        free(s);
        return NULL;
    }
    memcpy(out + len, "\n", 2);
    return out;
}

static int is_override(const json_t *o) {
    json_t *keys = json_object_get(o, "keys"), *k;
    size_t i;
    if (!json_is_array(keys) || !json_array_size(keys) || !json_object_get(o, "value") ||
        !json_object_get(o, "file_value") || !json_is_string(json_object_get(o, "path")))
        return 0;
    json_array_foreach(keys, i, k) if (!json_is_string(k)) return 0;
    return 1;
}

json_t *td_state_load(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT)
            return json_array();
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    json_error_t e;
    json_t *doc = json_loadf(f, JSON_REJECT_DUPLICATES, &e);
    fclose(f);
    if (!doc) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, e.line < 1 ? 1 : e.line,
                 e.column < 1 ? 1 : e.column, e.text);
        return NULL;
    }
    json_t *list = json_object_get(doc, "overrides"), *out = NULL;
    if (!json_is_array(list)) {
        snprintf(err, errlen, "%s: not a state file (no \"overrides\" array)", path);
    } else if ((out = json_array())) {
        size_t i;
        json_t *o;
        json_array_foreach(list, i, o) if (is_override(o)) json_array_append(out, o);
    } else {
        snprintf(err, errlen, "out of memory");
    }
    json_decref(doc);
    return out;
}

void td_state_default_path(const char *config_path, char *out, size_t n) {
    snprintf(out, n, "%s.state.json", config_path);
}

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && strcmp(s + a - b, tail) == 0;
}

void td_state_audit_path(const char *state_path, char *out, size_t n) {
    size_t len = strlen(state_path);
    if (ends_with(state_path, ".state.json"))
        len -= strlen(".state.json");
    else if (ends_with(state_path, ".json"))
        len -= strlen(".json");
    snprintf(out, n, "%.*s.audit.jsonl", (int)len, state_path);
}

json_t *td_state_load_rollout(const char *path) {
    json_t *doc = path && path[0] ? json_load_file(path, 0, NULL) : NULL;
    json_t *r = json_object_get(doc, "rollout");
    r = json_is_object(r) ? json_incref(r) : NULL;
    json_decref(doc);
    return r;
}
