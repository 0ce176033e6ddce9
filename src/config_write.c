/* Writing the configuration back: the contract's JSON shape, and an atomic file replace. */
#include "td/config.h"

#include <openssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "td/common-t.h"

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
        if (cookie) {
            put(cookie, "name", json_string(c->cookie_name), ok);
            put(cookie, "max_age_s", json_integer(c->cookie_max_age_s), ok);
            put(cookie, "secret", json_string(c->cookie_secret), ok);
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
    /* Through a symlink (config management, mounted ConfigMaps) the target is rewritten, so
     * the link and the operator's source of truth stay. */
    char real[4096];
    const char *path = realpath(link, real) ? real : link;
    char *json = td_config_to_json(c), *tmp = NULL;
    int fd = -1, rc = TD_EIO, saved, created = 0;
    struct stat st;

    if (!json) {
        errno = ENOMEM;
        return TD_ENOMEM;
    }
    tmp = malloc(strlen(path) + sizeof ".tmp-XXXXXX");
    if (!tmp) {
        errno = ENOMEM;
        rc = TD_ENOMEM;
        goto out;
    }
    strcat(strcpy(tmp, path), ".tmp-XXXXXX");
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
    free(json);
    errno = saved;
    return rc;
}
