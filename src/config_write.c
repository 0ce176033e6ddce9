/* Writing the configuration back: the JSON document built from the schema (config_schema.c) the
 * reader walks too, and an atomic file replace. */
#include "td/config.h"

#include <openssl/evp.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "td/common-t.h"
#include "td/config_schema.h"

/* What td_config_write_text appends to the file name for its temporary file (mkostemp fills in
 * the X). td_config_remove_temps removes exactly these names. */
#define TEMP_SUFFIX ".tmp-XXXXXX"

/* Adds key: value to obj, taking the reference; a NULL value (out of memory) poisons *ok. */
static void put(json_t *obj, const char *key, json_t *value, int *ok) {
    if (!value || json_object_set_new(obj, key, value) != 0)
        *ok = 0;
}

/* Whether the value of f at `at` is its default (an OBJECT: whether every TD_CF_CHANGED field of
 * it is), so a TD_CF_CHANGED key can be left out. */
static int is_default(const td_config_field_t *f, const char *at) {
    switch (f->kind) {
    case TD_CF_INT:
    case TD_CF_BOOL:
    case TD_CF_ENUM:
    case TD_CF_CUSTOM:
        return *(const int *)at == f->def;
    case TD_CF_STR:
    case TD_CF_ENUM_STR:
        return strcmp(at, f->def_str ? f->def_str : "") == 0;
    case TD_CF_OBJECT:
        for (size_t i = 0; i < f->sub->num_fields; i++) {
            const td_config_field_t *g = &f->sub->fields[i];
            if ((g->flags & TD_CF_CHANGED) && !is_default(g, at + g->offset))
                return 0;
        }
        return 1;
    default:
        return 0;
    }
}

static json_t *write_object(const td_config_object_t *o, const char *base, int *ok);

/* The JSON value of field f of the struct at `base`, or NULL (out of memory). */
static json_t *write_value(const td_config_field_t *f, const char *base, int *ok) {
    const char *at = base + f->offset;
    int v = *(const int *)at;
    json_t *a;

    switch (f->kind) {
    case TD_CF_INT:
        return json_integer(v);
    case TD_CF_BOOL:
        return json_boolean(v);
    case TD_CF_STR:
    case TD_CF_ENUM_STR:
        return json_string(at);
    case TD_CF_ENUM:
        for (int i = 0; f->names[i]; i++)
            if ((f->values ? f->values[i] : i) == v)
                return json_string(f->names[i]);
        return NULL;
    case TD_CF_ADDR:
        return json_string(((const td_addr_t *)at)->text);
    case TD_CF_OBJECT:
        return write_object(f->sub, at, ok);
    case TD_CF_ARRAY: {
        const char *elems = f->flags & TD_CF_EMBEDDED ? at : *(const char *const *)at;
        size_t n = *(const size_t *)(base + f->count_offset);
        a = json_array();
        for (size_t i = 0; a && i < n; i++)
            if (json_array_append_new(a, write_object(f->sub, elems + i * f->size, ok)) != 0)
                *ok = 0;
        return a;
    }
    case TD_CF_CUSTOM:
        if (f->id == TD_CF_ID_WORKERS)
            return v ? json_string("auto") : json_integer(((const td_config_t *)base)->workers);
        if (f->id == TD_CF_ID_ENDPOINTS) {
            const td_config_cluster_t *cl = (const td_config_cluster_t *)base;
            a = json_array();
            for (int i = 0; a && i < cl->num_etcd; i++)
                if (json_array_append_new(a, json_string(cl->etcd[i])) != 0)
                    *ok = 0;
            return a;
        }
        if (f->id == TD_CF_ID_NAMESERVERS) {
            const td_config_resolvers_t *rs = (const td_config_resolvers_t *)base;
            a = json_array();
            for (int i = 0; a && i < rs->num_nameservers; i++)
                if (json_array_append_new(a, json_string(rs->nameservers[i].text)) != 0)
                    *ok = 0;
            return a;
        }
        return json_boolean(v == TD_COOKIE_SECURE_ALWAYS); /* TD_CF_ID_COOKIE_SECURE */
    }
    return NULL;
}

/* The object of the struct at `base`, keys in o's write order (jansson keeps insertion order):
 * every key but a sub-object that was not given and a TD_CF_CHANGED key at its default. */
static json_t *write_object(const td_config_object_t *o, const char *base, int *ok) {
    json_t *obj = json_object();

    if (!obj)
        return NULL;
    for (size_t k = 0; k < o->num_fields; k++) {
        const td_config_field_t *f = &o->fields[o->write_order ? o->write_order[k] : k];
        if (f->kind == TD_CF_OBJECT && f->present >= 0 && !*(const int *)(base + f->present))
            continue;
        if ((f->flags & TD_CF_CHANGED) && is_default(f, base + f->offset))
            continue;
        put(obj, f->key, write_value(f, base, ok), ok);
    }
    return obj;
}

char *td_config_to_json(const td_config_t *c) {
    int ok = 1;
    json_t *root = write_object(&td_config_schema, (const char *)c, &ok);
    char *s = NULL, *out = NULL;
    size_t len;

    if (ok)
        s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    if (!s)
        return NULL;
    /* End with a newline, as text files do; json_dumps allocates with malloc by default. */
    len = strlen(s);
    out = realloc(s, len + 2);
    if (!out) {
        free(s);
        return NULL;
    }
    memcpy(out + len, "\n", 2);
    return out;
}

static int write_all(int fd, const char *p, size_t len) {
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* fsync of the directory holding `path`, so the rename itself survives a crash. */
static int sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd, rc = -1;

    if (!dir)
        return -1;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        rc = fsync(fd);
        close(fd);
    }
    free(dir);
    return rc;
}

int td_config_write(const td_config_t *c, const char *link) {
    char *json = td_config_to_json(c);
    int rc;

    if (!json) {
        errno = ENOMEM;
        return TD_ENOMEM;
    }
    rc = td_config_write_text(json, link);
    free(json);
    return rc;
}

int td_config_write_text(const char *json, const char *link) {
    /* Through a symlink (config management, mounted ConfigMaps) the target is rewritten, so
     * the link and the operator's source of truth stay. */
    char real[4096];
    const char *path = realpath(link, real) ? real : link;
    char *tmp = NULL;
    int fd = -1, rc = TD_EIO, saved, created = 0;
    struct stat st;

    tmp = malloc(strlen(path) + sizeof TEMP_SUFFIX);
    if (!tmp) {
        errno = ENOMEM;
        return TD_ENOMEM;
    }
    strcat(strcpy(tmp, path), TEMP_SUFFIX);
    fd = mkostemp(tmp, O_CLOEXEC); /* created 0600 */
    if (fd < 0)
        goto out;
    created = 1;
    if (stat(path, &st) == 0 && fchmod(fd, st.st_mode & 07777) != 0)
        goto out;
    if (write_all(fd, json, strlen(json)) != 0 || fsync(fd) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto out;
    created = 0; /* renamed: nothing left to remove */
    if (sync_dir(path) != 0)
        goto out;
    rc = 0;
out:
    saved = errno;
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    free(tmp);
    errno = saved;
    return rc;
}

/* A name td_config_write_text makes for `base`: base ".tmp-" and mkostemp's six characters. */
static int is_temp_of(const char *name, const char *base) {
    size_t n = strlen(base), k = sizeof TEMP_SUFFIX - 1;

    if (strncmp(name, base, n) != 0 || strlen(name) != n + k ||
        strncmp(name + n, TEMP_SUFFIX, k - 6) != 0)
        return 0;
    for (const char *p = name + n + k - 6; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            return 0;
    return 1;
}

int td_config_remove_temps(const char *link) {
    char real[4096];
    const char *path = realpath(link, real) ? real : link;
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    const char *base = slash ? slash + 1 : path;
    int removed = 0;
    DIR *d;
    struct dirent *e;

    if (!dir)
        return TD_ENOMEM;
    d = opendir(dir);
    if (!d) {
        free(dir);
        return TD_EIO;
    }
    while ((e = readdir(d))) {
        if (!is_temp_of(e->d_name, base))
            continue;
        char *full = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (!full)
            break;
        sprintf(full, "%s/%s", dir, e->d_name);
        if (unlink(full) == 0)
            removed++;
        free(full);
    }
    closedir(d);
    free(dir);
    return removed;
}

void td_sha256_hex(const char *p, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    static const char hex[] = "0123456789abcdef";

    if (EVP_Digest(p, len, md, &n, EVP_sha256(), NULL) != 1)
        n = 0;
    for (unsigned int i = 0; i < n && i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[n ? 64 : 0] = 0;
}

int td_config_file_sha256(const char *path, char out[65]) {
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    size_t len = 0, cap = 0, n;
    int rc = 0;

    out[0] = 0;
    if (!f)
        return TD_EIO;
    do {
        if (len == cap) {
            char *bigger = realloc(text, cap ? cap * 2 : 16384);
            if (!bigger) {
                rc = TD_ENOMEM;
                break;
            }
            text = bigger;
            cap = cap ? cap * 2 : 16384;
        }
        n = fread(text + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    if (rc == 0 && ferror(f))
        rc = TD_EIO;
    fclose(f);
    if (rc == 0)
        td_sha256_hex(text ? text : "", len, out);
    free(text);
    return rc;
}
