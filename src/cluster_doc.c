/* The cluster's shared document: a config split into what every node shares and what stays with
 * each node, and put back together; keys of a newer schema dropped by walking the config
 * schema's tables (config_schema.c). */
#include "td/cluster_doc.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"
#include "td/config.h"
#include "td/config_schema.h"

/* What each node keeps of its own config file (DESIGN.md "Cluster"): what binds it to its
 * machine (addresses, processes, files on its disk, the DNS servers of its network), never
 * another node's. */
static const char *const local_keys[] = {"listeners",  "workers",  "admin",      "cluster",
                                         "state_file", "pid_file", "access_log", "resolvers"};
#define NUM_LOCAL (sizeof(local_keys) / sizeof(local_keys[0]))

static int is_local(const char *key) {
    for (size_t i = 0; i < NUM_LOCAL; i++)
        if (strcmp(key, local_keys[i]) == 0)
            return 1;
    return 0;
}

static json_t *canonical(const td_config_t *c) {
    char *text = td_config_to_json(c);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return j;
}

json_t *td_cluster_doc_shared(const td_config_t *c) {
    json_t *doc = canonical(c);
    if (!doc)
        return NULL;
    for (size_t i = 0; i < NUM_LOCAL; i++)
        json_object_del(doc, local_keys[i]);
    if (json_object_set_new(doc, "schema", json_integer(TD_CLUSTER_SCHEMA)) < 0) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

json_t *td_cluster_doc_local(const td_config_t *c) {
    json_t *doc = canonical(c), *out = json_object();
    for (size_t i = 0; doc && out && i < NUM_LOCAL; i++) {
        json_t *v = json_object_get(doc, local_keys[i]);
        if (v)
            json_object_set(out, local_keys[i], v);
    }
    json_decref(doc);
    return out;
}

/* Removes from `obj` (at `path`) every key the schema object `o` does not have, recording each
 * path in `ignored`; walks into sub-objects and arrays of objects. */
static void drop_unknown(json_t *obj, const td_config_object_t *o, const char *path,
                         json_t *ignored) {
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(obj, tmp, key, v) {
        char sub[512];
        snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", key);
        int i = td_config_schema_find(o, key);
        if (i < 0) {
            if (!path[0] && strcmp(key, "schema") == 0)
                continue;
            json_array_append_new(ignored, json_string(sub));
            json_object_del(obj, key);
            continue;
        }
        const td_config_field_t *f = &o->fields[i];
        if (f->kind == TD_CF_OBJECT && json_is_object(v)) {
            drop_unknown(v, f->sub, sub, ignored);
        } else if (f->kind == TD_CF_ARRAY && json_is_array(v)) {
            size_t k;
            json_t *e;
            json_array_foreach(v, k, e) {
                char at[560];
                snprintf(at, sizeof(at), "%s[%zu]", sub, k);
                if (json_is_object(e))
                    drop_unknown(e, f->sub, at, ignored);
            }
        }
    }
}

td_config_t *td_cluster_doc_config(const json_t *shared, const json_t *local, const char *name,
                                   json_t **ignored, char *err, size_t n) {
    *ignored = NULL;
    snprintf(err, n, "out of memory");
    if (!json_is_object(shared)) {
        snprintf(err, n, "%s: the shared document is not a JSON object", name);
        return NULL;
    }
    json_t *schema = json_object_get(shared, "schema");
    if (!json_is_integer(schema) || json_integer_value(schema) < 1) {
        snprintf(err, n, "%s: \"schema\" must be an integer from 1 (this td writes %d)", name,
                 TD_CLUSTER_SCHEMA);
        return NULL;
    }
    json_t *doc = json_deep_copy(shared), *dropped = json_array();
    if (!doc || !dropped) {
        json_decref(doc);
        json_decref(dropped);
        return NULL;
    }
    /* The node's own keys are never taken from the shared document. */
    for (size_t i = 0; i < NUM_LOCAL; i++)
        json_object_del(doc, local_keys[i]);
    if (json_integer_value(schema) > TD_CLUSTER_SCHEMA)
        drop_unknown(doc, &td_config_schema, "", dropped);
    json_object_del(doc, "schema");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)local, key, v) {
        if (is_local(key))
            json_object_set(doc, key, v);
    }
    char *text = json_dumps(doc, JSON_INDENT(2)), *buf = NULL;
    json_decref(doc);
    size_t len = 0;
    FILE *errs = open_memstream(&buf, &len);
    td_config_t *cfg = text && errs ? td_config_parse(text, strlen(text), name, errs) : NULL;
    if (errs)
        fclose(errs);
    free(text);
    if (!cfg && buf && buf[0]) {
        char *nl = strchr(buf, '\n');
        if (nl)
            *nl = 0;
        snprintf(err, n, "%s", buf);
    }
    free(buf);
    if (!cfg) {
        json_decref(dropped);
        return NULL;
    }
    err[0] = 0;
    *ignored = dropped;
    return cfg;
}

/* The shared document of `c` as compared: without "schema" and what moves at run time. */
static json_t *comparable(const td_config_t *c) {
    json_t *doc = td_cluster_doc_shared(c), *b;
    size_t i;
    json_object_del(doc, "schema");
    json_array_foreach(json_object_get(doc, "backends"), i, b) {
        json_object_del(b, "weight");
        json_object_del(b, "state");
    }
    return doc;
}

/* The names of the backends of `doc`, "a, b", into out[n]. */
static void backend_names(const json_t *doc, char *out, size_t n) {
    size_t i, len = 0;
    json_t *b;
    out[0] = 0;
    json_array_foreach(json_object_get(doc, "backends"), i, b) {
        if (len < n)
            len += (size_t)snprintf(out + len, n - len, "%s%s", i ? ", " : "",
                                    json_string_value(json_object_get(b, "name")));
    }
}

static json_t *backend_named(const json_t *doc, const char *name) {
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(doc, "backends"), i, b) {
        if (strcmp(json_string_value(json_object_get(b, "name")), name) == 0)
            return b;
    }
    return NULL;
}

/* Appends `s` to the list of n items in out[size] ("a", "a and b", "a, b and c" as it grows:
 * the last " and " becomes ", " when another comes). */
static void add_item(char *out, size_t size, int *n, const char *s) {
    size_t len = strlen(out);
    char *last = *n >= 2 ? strstr(out, " and ") : NULL;
    if (last) {
        /* only the last " and " is the list's: later items have no " and " of their own */
        for (char *p = last; (p = strstr(p + 1, " and ")) != NULL;)
            last = p;
        memmove(last + 2, last + 5, strlen(last + 5) + 1);
        memcpy(last, ", ", 2);
        len = strlen(out);
    }
    snprintf(out + len, size - len, "%s%s", *n ? " and " : "", s);
    (*n)++;
}

int td_cluster_doc_differs(const td_config_t *file, const td_config_t *cluster, char *msg,
                           size_t n) {
    json_t *a = comparable(file), *b = comparable(cluster);
    int r = TD_ENOMEM, items = 0;
    msg[0] = 0;
    if (!a || !b)
        goto out;
    char list[600] = "", names_a[300], names_b[300], theirs[320] = "";
    backend_names(a, names_a, sizeof(names_a));
    backend_names(b, names_b, sizeof(names_b));
    if (strcmp(names_a, names_b) != 0) {
        char item[320];
        snprintf(item, sizeof(item), "backends (%s)", names_a);
        add_item(list, sizeof(list), &items, item);
        snprintf(theirs, sizeof(theirs), " (%s)", names_b);
    } else if (!json_equal(json_object_get(a, "backends"), json_object_get(b, "backends"))) {
        char which[300] = "", item[320];
        size_t i, len = 0;
        json_t *e;
        json_array_foreach(json_object_get(a, "backends"), i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (!json_equal(e, backend_named(b, name)) && len < sizeof(which))
                len += (size_t)snprintf(which + len, sizeof(which) - len, "%s%s", len ? ", " : "",
                                        name);
        }
        snprintf(item, sizeof(item), "backends (%s)", which);
        add_item(list, sizeof(list), &items, item);
    }
    /* The other top-level keys, those of the file first, then those only the cluster has. */
    json_t *docs[2] = {a, b};
    for (int d = 0; d < 2; d++) {
        const char *key;
        json_t *v;
        json_object_foreach(docs[d], key, v) {
            if (strcmp(key, "backends") == 0 || (d == 1 && json_object_get(a, key)))
                continue;
            if (!json_equal(v, json_object_get(docs[1 - d], key)))
                add_item(list, sizeof(list), &items, key);
        }
    }
    if (items)
        snprintf(msg, n, "the config file's %s differ%s from the cluster's%s", list,
                 items == 1 && strncmp(list, "backends", 8) != 0 ? "s" : "", theirs);
    r = items > 0;
out:
    json_decref(a);
    json_decref(b);
    return r;
}
