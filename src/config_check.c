/* Config checks beyond one value's syntax: files td will need (certificates, a CA bundle, the
 * access log and pid file folders) and rules across fields. The schema (config_schema.c) says
 * where each runs; each reports at the report's path, so its message stands where the problem is.
 */
#include "td/config_check.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "td/config.h"
#include "td/config_report.h"
#include "td/tls.h"

/* ---- files ---- */

/* An access log must be "stderr" or a file td can append to (its folder exists and is
 * writable), so a typo shows at check time rather than at the first request. */
const char *td_config_check_log_path(const char *s) {
    if (strcmp(s, "stderr") == 0)
        return NULL;
    if (s[0] != '/')
        return "must be \"stderr\" or an absolute file path";
    char dir[TD_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", s);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    if (access(s, W_OK) == 0 || (errno == ENOENT && access(dir, W_OK | X_OK) == 0))
        return NULL;
    return "cannot be written (missing folder or no permission)";
}

/* A pid file is written at start (temp file + rename in its folder): the folder must exist and
 * be writable, so `td -t` catches a path that start-up would refuse. */
const char *td_config_check_pid_path(const char *s) {
    if (s[0] != '/')
        return "must be an absolute file path, e.g. \"/run/td.pid\"";
    char dir[TD_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", s);
    char *slash = strrchr(dir, '/');
    if (!slash[1])
        return "must name a file, not a folder";
    if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    if (access(dir, W_OK | X_OK) == 0)
        return NULL;
    return errno == ENOENT ? "cannot be written: its folder does not exist"
                           : "cannot be written: no permission in its folder";
}

/* The state file is written at every API change, but td starts (and changes still apply) when it
 * cannot be: an incident must not wait for a writable disk. So only its shape is checked. */
const char *td_config_check_state_path(const char *s) {
    if (s[0] != '/')
        return "must be an absolute file path, e.g. \"/var/lib/td/state.json\"";
    if (s[strlen(s) - 1] == '/')
        return "must name a file, not a folder";
    return NULL;
}

/* ---- unique addresses and names ---- */

static int addr_eq(const td_addr_t *a, const td_addr_t *b) {
    if (td_addr_is_name(a) || td_addr_is_name(b)) /* DNS names are case-insensitive */
        return td_addr_is_name(a) && td_addr_is_name(b) && strcasecmp(a->text, b->text) == 0;
    return a->salen && a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/* Reports, at the current path, an address already used by one of the first `n` of `others`
 * (whose path is `what`). */
static void unique_addr(td_config_report_t *r, const td_addr_t *a, const td_addr_t *others,
                        size_t n, size_t stride, const char *what) {
    for (size_t j = 0; j < n; j++) {
        const td_addr_t *o = (const td_addr_t *)((const char *)others + j * stride);
        if (addr_eq(a, o)) {
            td_config_report(r, TD_CONFIG_AT_VALUE, "\"%s\" is already used by %s[%zu]", a->text,
                             what, j);
            return;
        }
    }
}

void td_config_check_listener_address(td_config_report_t *r, td_config_t *c, void *obj,
                                      const void *first, size_t index, unsigned read) {
    (void)c, (void)read;
    const td_config_listener_t *l = obj, *ls = first;
    unique_addr(r, &l->address, &ls->address, index, sizeof(td_config_listener_t), "listeners");
}

void td_config_check_server_address(td_config_report_t *r, td_config_t *c, void *obj,
                                    const void *first, size_t index, unsigned read) {
    (void)c, (void)read;
    const td_config_server_t *s = obj, *ss = first;
    unique_addr(r, &s->address, &ss->address, index, sizeof(td_config_server_t), "servers");
}

void td_config_check_admin_address(td_config_report_t *r, td_config_t *c, void *obj,
                                   const void *first, size_t index, unsigned read) {
    (void)obj, (void)first, (void)index, (void)read;
    unique_addr(r, &c->admin_address, &c->listeners[0].address, c->num_listeners,
                sizeof(td_config_listener_t), "listeners");
}

void td_config_check_backend_name(td_config_report_t *r, td_config_t *c, void *obj,
                                  const void *first, size_t index, unsigned read) {
    (void)c, (void)read;
    const td_config_backend_t *b = obj, *bs = first;
    for (size_t j = 0; j < index; j++) {
        if (strcmp(bs[j].name, b->name) == 0) {
            td_config_report(r, TD_CONFIG_AT_VALUE, "\"%s\" is already the name of backends[%zu]",
                             b->name, j);
            break;
        }
    }
}

/* Every weight at 0 would answer 503 to every request (in failover too: there would be no
 * primary), so it is refused like the API's ratio; reported once the weights themselves are
 * fine (and nothing else was found before). */
void td_config_check_backend_weights(td_config_report_t *r, td_config_t *c, void *obj,
                                     const void *first, size_t index, unsigned read) {
    (void)obj, (void)first, (void)index, (void)read;
    size_t weighted = 0;
    for (size_t i = 0; i < c->num_backends; i++)
        weighted += c->backends[i].weight > 0;
    if (!weighted && !r->num_problems)
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "every backend has weight 0, so every request would get 503; give at "
                         "least one backend a weight above 0");
}

/* ---- TLS ---- */

/* A certificate/key pair (fields 0 and 1 read): both files must load, match and be in date; the
 * message stands at the file it names. */
void td_config_check_cert(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                          size_t index, unsigned read) {
    (void)c, (void)first, (void)index;
    td_config_cert_t *cert = obj;
    char err[512];
    if ((read & 3) == 3 && td_tls_check_pair(cert->cert, cert->key, err, sizeof err) < 0) {
        td_config_report_push_key(r, strstr(err, cert->key) == err ? "key" : "cert");
        td_config_report(r, TD_CONFIG_AT_VALUE, "%s", err);
        td_config_report_pop(r);
    }
}

void td_config_check_ca(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                        size_t index, unsigned read) {
    (void)c, (void)first, (void)index, (void)read;
    const td_config_backend_t *b = obj;
    char err[512];
    if (td_tls_check_ca(b->tls_ca, err, sizeof err) < 0)
        td_config_report(r, TD_CONFIG_AT_VALUE, "%s", err);
}

void td_config_check_listener_tls(td_config_report_t *r, td_config_t *c, void *obj,
                                  const void *first, size_t index, unsigned read) {
    (void)c, (void)first, (void)index;
    const td_config_listener_t *l = obj;
    if (l->tls && l->redirect_https) {
        td_config_report_push_key(r, "redirect_https");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "a TLS listener cannot redirect to https (it is https)");
        td_config_report_pop(r);
    }
    /* HTTP/2 is chosen by ALPN on TLS ("http2"), by prior knowledge on plain listeners ("h2c"):
     * each key means nothing on the other kind. Fields 4 and 5 of a listener. */
    if (l->tls && l->h2c) {
        td_config_report_push_key(r, "h2c");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "h2c is for plain listeners: a TLS listener offers HTTP/2 by ALPN "
                         "(\"http2\", on by default)");
        td_config_report_pop(r);
    }
    if (!l->tls && (read & (1u << 4))) {
        td_config_report_push_key(r, "http2");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "http2 is for TLS listeners (ALPN h2): a plain listener takes HTTP/2 "
                         "with \"h2c\": true");
        td_config_report_pop(r);
    }
}

/* ---- health checks ---- */

/* grpc_service (field 10 of health_check, read in this object) names what a "grpc" check asks
 * about; on another type it would do nothing, so it is refused. The type is the one in force
 * here: a backend's own, or the global one it inherits. A backend that changes the type drops an
 * inherited grpc_service, so that the config written back (GET /api/v1/config, the state file)
 * reads again. */
void td_config_check_health(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                            size_t index, unsigned read) {
    (void)c, (void)first, (void)index;
    td_config_health_t *h = obj;
    if (strcmp(h->type, "grpc") == 0)
        return;
    if (!(read & (1u << 10))) {
        h->grpc_service[0] = '\0';
        return;
    }
    td_config_report_push_key(r, "grpc_service");
    td_config_report(r, TD_CONFIG_AT_KEY,
                     "grpc_service is for \"type\": \"grpc\" checks, and this check's type is "
                     "\"%s\"",
                     h->type);
    td_config_report_pop(r);
}

/* ---- the admin tokens ---- */

/* admin.read_token (field 2 of admin, read) only means something next to admin.token: without
 * one every caller may change everything anyway. The same value for both would make the full
 * token read-only or the read token full: refused too. */
void td_config_check_admin_tokens(td_config_report_t *r, td_config_t *c, void *obj,
                                  const void *first, size_t index, unsigned read) {
    (void)obj, (void)first, (void)index;
    if (!(read & (1u << 2)) || !c->admin_read_token[0])
        return;
    td_config_report_push_key(r, "read_token");
    if (!c->admin_token[0])
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "admin.read_token without admin.token means nothing (without a token "
                         "every caller may change everything): set admin.token too");
    else if (strcmp(c->admin_read_token, c->admin_token) == 0)
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "admin.read_token is the same as admin.token: give it a value of its own");
    td_config_report_pop(r);
}

/* ---- the sticky cookie ---- */

/* SameSite=None without Secure is refused by browsers, so a config that would send it is an
 * error at same_site (field 4 of routing.cookie, read); listeners come first in the document's
 * schema, so they are read. */
void td_config_check_cookie(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                            size_t index, unsigned read) {
    (void)obj, (void)first, (void)index;
    if (!(read & (1u << 4)) || c->cookie_same_site != TD_SAME_SITE_NONE)
        return;
    td_config_report_push_key(r, "same_site");
    if (c->cookie_secure == TD_COOKIE_SECURE_NEVER) {
        td_config_report(r, TD_CONFIG_AT_VALUE,
                         "\"None\" needs the Secure attribute (browsers refuse SameSite=None "
                         "without it), but secure is false");
    } else if (c->cookie_secure == TD_COOKIE_SECURE_AUTO) {
        for (size_t i = 0; i < c->num_listeners; i++)
            if (!c->listeners[i].tls && !c->listeners[i].redirect_https) {
                td_config_report(r, TD_CONFIG_AT_VALUE,
                                 "\"None\" needs the Secure attribute, which secure \"auto\" sets "
                                 "only on TLS listeners, and listeners[%zu] is plain HTTP: set "
                                 "secure to true, or use \"Lax\"",
                                 i);
                break;
            }
    }
    td_config_report_pop(r);
}

/* The other nodes read this node's figures from its admin API, and changes come through it.
 * etcd authenticates a user with a password: one without the other (fields 5 and 6 of cluster)
 * would fail at the first call, so `td -t` says so. */
void td_config_check_cluster(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                             size_t index, unsigned read) {
    (void)first, (void)index;
    const td_config_cluster_t *cl = obj;
    if (!c->has_admin)
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "cluster mode needs \"admin\" (changes and the other nodes' views go "
                         "through the admin API)");
    if ((read & (1u << 6)) && cl->password[0] && !cl->username[0]) {
        td_config_report_push_key(r, "password");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "cluster.password without cluster.username: etcd authenticates a user; "
                         "set username too, or remove password");
        td_config_report_pop(r);
    } else if ((read & (1u << 5)) && cl->username[0] && !cl->password[0]) {
        td_config_report_push_key(r, "username");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "cluster.username without cluster.password: etcd authenticates a user "
                         "with a password; set password too");
        td_config_report_pop(r);
    }
}

/* cluster.tls (fields ca, cert, key): the files the etcd client loads at start, checked as a
 * listener's are, so a typo shows at `td -t` rather than as an unreachable store. */
void td_config_check_cluster_tls(td_config_report_t *r, td_config_t *c, void *obj,
                                 const void *first, size_t index, unsigned read) {
    (void)c, (void)first, (void)index;
    const td_config_cluster_t *cl = obj;
    char err[512];
    if ((read & 1) && cl->tls_ca[0] && td_tls_check_ca(cl->tls_ca, err, sizeof err) < 0) {
        td_config_report_push_key(r, "ca");
        td_config_report(r, TD_CONFIG_AT_VALUE, "%s", err);
        td_config_report_pop(r);
    }
    int has_cert = (read & 2) && cl->tls_cert[0], has_key = (read & 4) && cl->tls_key[0];
    if (has_cert != has_key) {
        td_config_report_push_key(r, has_cert ? "cert" : "key");
        td_config_report(r, TD_CONFIG_AT_KEY,
                         "a client certificate needs both cert and key: set %s too",
                         has_cert ? "key" : "cert");
        td_config_report_pop(r);
    } else if (has_cert && td_tls_check_pair(cl->tls_cert, cl->tls_key, err, sizeof err) < 0) {
        td_config_report_push_key(r, strstr(err, cl->tls_key) == err ? "key" : "cert");
        td_config_report(r, TD_CONFIG_AT_VALUE, "%s", err);
        td_config_report_pop(r);
    }
}
