/* Writing the configuration back: the contract's JSON shape, and an atomic file replace. */
#include "td/config.h"

#include <openssl/evp.h>
#include <openssl/ssl.h>

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

/* What td_config_write_text appends to the file name for its temporary file (mkostemp fills in
 * the X). td_config_remove_temps removes exactly these names. */
#define TEMP_SUFFIX ".tmp-XXXXXX"

/* Adds key: value to obj, taking the reference; a NULL value (out of memory) poisons *ok. */
static void put(json_t *obj, const char *key, json_t *value, int *ok) {
    if (!value || json_object_set_new(obj, key, value) != 0)
        *ok = 0;
}

static json_t *address_object(const td_addr_t *a, int *ok) {
    json_t *o = json_object();

    if (o)
        put(o, "address", json_string(a->text), ok);
    return o;
}

static json_t *health_object(const td_config_health_t *h, int *ok);

static json_t *listener_object(const td_config_listener_t *l, int *ok) {
    json_t *o = address_object(&l->address, ok);

    if (!o)
        return NULL;
    if (l->redirect_https)
        put(o, "redirect_https", json_true(), ok);
    if (l->https_port)
        put(o, "https_port", json_integer(l->https_port), ok);
    if (l->tls) {
        json_t *t = json_object(), *certs = json_array();
        for (size_t i = 0; certs && i < l->num_certs; i++)
            if (json_array_append_new(certs, json_pack("{s:s,s:s}", "cert", l->certs[i].cert,
                                                       "key", l->certs[i].key)) != 0)
                *ok = 0;
        if (t) {
            put(t, "certificates", certs, ok);
            put(t, "min_version", json_string(l->min_version == TLS1_3_VERSION ? "1.3" : "1.2"),
                ok);
        } else {
            json_decref(certs);
        }
        put(o, "tls", t, ok);
    }
    return o;
}

static json_t *backend_object(const td_config_backend_t *b, int *ok) {
    json_t *o = json_object(), *servers = json_array();

    if (o) {
        put(o, "name", json_string(b->name), ok);
        put(o, "weight", json_integer(b->weight), ok);
    }
    for (size_t i = 0; servers && i < b->num_servers; i++) {
        json_t *s = address_object(&b->servers[i].address, ok);
        if (s)
            put(s, "weight", json_integer(b->servers[i].weight), ok);
        if (!s || json_array_append_new(servers, s) != 0)
            *ok = 0;
    }
    if (o)
        put(o, "servers", servers, ok);
    else
        json_decref(servers);
    if (o && b->tls) {
        json_t *t = json_pack("{s:b}", "verify", b->tls_verify);
        if (t && b->tls_ca[0])
            put(t, "ca", json_string(b->tls_ca), ok);
        if (t && b->tls_sni[0])
            put(t, "sni", json_string(b->tls_sni), ok);
        put(o, "tls", t, ok);
    }
    if (o && b->health_override)
        put(o, "health_check", health_object(&b->health, ok), ok);
    return o;
}

static json_t *health_object(const td_config_health_t *h, int *ok) {
    json_t *o = json_object();

    if (!o)
        return NULL;
    put(o, "type", json_string(h->type), ok);
    put(o, "path", json_string(h->path), ok);
    put(o, "expect_status", json_string(h->expect_status), ok);
    put(o, "interval_ms", json_integer(h->interval_ms), ok);
    put(o, "timeout_ms", json_integer(h->timeout_ms), ok);
    put(o, "fall", json_integer(h->fall), ok);
    put(o, "rise", json_integer(h->rise), ok);
    put(o, "port", json_integer(h->port), ok);
    put(o, "default_down", json_boolean(h->default_down), ok);
    if (h->expect_body[0])
        put(o, "expect_body", json_string(h->expect_body), ok);
    return o;
}

static json_t *timeouts_object(const td_config_timeouts_t *t, int *ok) {
    json_t *o = json_object();

    if (!o)
        return NULL;
    put(o, "connect_ms", json_integer(t->connect_ms), ok);
    put(o, "client_header_ms", json_integer(t->client_header_ms), ok);
    put(o, "upstream_response_ms", json_integer(t->upstream_response_ms), ok);
    put(o, "keepalive_idle_ms", json_integer(t->keepalive_idle_ms), ok);
    put(o, "drain_ms", json_integer(t->drain_ms), ok);
    put(o, "client_send_ms", json_integer(t->client_send_ms), ok);
    return o;
}

/* Builds the document in the contract's key order (jansson keeps insertion order). */
static json_t *config_object(const td_config_t *c, int *ok) {
    json_t *root = json_object(), *listeners = json_array(), *backends = json_array();
    json_t *routing = json_object(), *cookie = json_object(), *admin;

    if (!root) {
        json_decref(listeners);
        json_decref(backends);
        json_decref(routing);
        json_decref(cookie);
        *ok = 0;
        return NULL;
    }
    for (size_t i = 0; listeners && i < c->num_listeners; i++)
        if (json_array_append_new(listeners, listener_object(&c->listeners[i], ok)) != 0)
            *ok = 0;
    put(root, "listeners", listeners, ok);
    put(root, "workers", c->workers_auto ? json_string("auto") : json_integer(c->workers), ok);
    if (c->has_admin) {
        admin = address_object(&c->admin_address, ok);
        if (admin)
            put(admin, "token", json_string(c->admin_token), ok);
        put(root, "admin", admin, ok);
    }
    if (routing) {
        put(routing, "method", json_string(td_method_name(c->method)), ok);
        if (c->failback_ms >= 0)
            put(routing, "failback_ms", json_integer(c->failback_ms), ok);
        if (cookie) {
            put(cookie, "name", json_string(c->cookie_name), ok);
            put(cookie, "max_age_s", json_integer(c->cookie_max_age_s), ok);
            put(cookie, "secret", json_string(c->cookie_secret), ok);
            /* the attributes only when set otherwise than the defaults */
            if (!c->cookie_http_only)
                put(cookie, "http_only", json_false(), ok);
            if (c->cookie_same_site != TD_SAME_SITE_LAX)
                put(cookie, "same_site",
                    json_string(c->cookie_same_site == TD_SAME_SITE_STRICT ? "Strict" : "None"),
                    ok);
            if (c->cookie_secure != TD_COOKIE_SECURE_AUTO)
                put(cookie, "secure",
                    json_boolean(c->cookie_secure == TD_COOKIE_SECURE_ALWAYS), ok);
        }
        put(routing, "cookie", cookie, ok);
        if (c->preview_token[0]) {
            json_t *pv = json_object();
            if (pv) {
                put(pv, "header", json_string(c->preview_header), ok);
                put(pv, "token", json_string(c->preview_token), ok);
            }
            put(routing, "preview", pv, ok);
        }
    } else {
        json_decref(cookie);
    }
    put(root, "routing", routing, ok);
    for (size_t i = 0; backends && i < c->num_backends; i++)
        if (json_array_append_new(backends, backend_object(&c->backends[i], ok)) != 0)
            *ok = 0;
    put(root, "backends", backends, ok);
    if (c->has_health)
        put(root, "health_check", health_object(&c->health, ok), ok);
    put(root, "timeouts", timeouts_object(&c->timeouts, ok), ok);
    json_t *passive = json_object();
    if (passive) {
        put(passive, "failures", json_integer(c->passive.failures), ok);
        put(passive, "eject_ms", json_integer(c->passive.eject_ms), ok);
        put(passive, "max_eject_ms", json_integer(c->passive.max_eject_ms), ok);
    }
    put(root, "passive", passive, ok);
    json_t *buffering = json_object();
    if (buffering)
        put(buffering, "max_bytes", json_integer(c->request_buffering.max_bytes), ok);
    put(root, "request_buffering", buffering, ok);
    if (c->access_log[0])
        put(root, "access_log", json_string(c->access_log), ok);
    if (c->pid_file[0])
        put(root, "pid_file", json_string(c->pid_file), ok);
    return root;
}

char *td_config_to_json(const td_config_t *c) {
    int ok = 1;
    json_t *root = config_object(c, &ok);
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
