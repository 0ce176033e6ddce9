/* The config schema: one table of fields per JSON object of the document. The reader
 * (config_load.c) walks it to check and fill a td_config_t, the writer (config_write.c) to write
 * one back, so a new key is declared here once. Also the syntax of single values (names, tokens,
 * paths, status lists, addresses), which the tables name. */
#include "td/config_schema.h"

#include <openssl/ssl.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "td/common-t.h"
#include "td/config.h"
#include "td/config_check.h"

#define MAX_MS 86400000          /* one day */
#define MAX_COOKIE_AGE 315360000 /* ten years */
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- the syntax of single values ---- */

static int lower(int ch) {
    return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

static int is_alnum(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

static int is_visible(const char *s) {
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7E)
            return 0;
    return 1;
}

static const char *check_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || *p == '_' || *p == '-')
        p++;
    return *s && !*p ? NULL : "is not a valid name (1 to 63 of A-Z a-z 0-9 _ -)";
}

/* RFC 6265 §4.1.1: a cookie name is an RFC 9110 token. */
static const char *check_cookie_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || (*p && strchr("!#$%&'*+-.^_`|~", *p)))
        p++;
    return *s && !*p ? NULL : "is not a valid cookie name (an RFC 6265 token, e.g. TDSTICKY)";
}

static const char *check_header_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || (*p && strchr("!#$%&'*+-.^_`|~", *p)))
        p++;
    if (!*s || *p)
        return "is not a valid header name (an RFC 9110 token, e.g. X-TD-Backend)";
    static const char *const reserved[] = {"host",
                                           "content-length",
                                           "transfer-encoding",
                                           "connection",
                                           "upgrade",
                                           "te",
                                           "trailer",
                                           "expect",
                                           "cookie",
                                           "authorization",
                                           "keep-alive",
                                           "proxy-connection",
                                           "x-forwarded-for",
                                           "x-forwarded-proto",
                                           "x-forwarded-host",
                                           NULL};
    for (size_t i = 0; reserved[i]; i++)
        if (strcasecmp(s, reserved[i]) == 0)
            return "is a header td or the backend needs (choose e.g. X-TD-Backend)";
    return NULL;
}

static const char *check_token(const char *s) {
    return is_visible(s) ? NULL : "is not a valid token (printable ASCII without spaces)";
}

static const char *check_path(const char *s) {
    return s[0] == '/' && is_visible(s)
               ? NULL
               : "is not a valid path (starts with \"/\", printable ASCII without spaces)";
}

static int is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

/* One item of an expect_status list at p: its length (3), or 0. */
static int status_item(const char *p) {
    if (p[0] >= '1' && p[0] <= '5' && lower(p[1]) == 'x' && lower(p[2]) == 'x')
        return 3;
    if (p[0] >= '1' && p[0] <= '5' && is_digit(p[1]) && is_digit(p[2]))
        return 3;
    return 0;
}

static const char *check_status(const char *s) {
    static const char *const bad =
        "is not a valid status list (classes like 2xx and codes 100..599, comma-separated)";

    for (;;) {
        if (!status_item(s))
            return bad;
        s += 3;
        if (*s == '\0')
            return NULL;
        if (*s++ != ',')
            return bad;
    }
}

int td_config_status_expected(const char *expect_status, int status) {
    for (const char *p = expect_status; status_item(p); p += 4) {
        int cls = p[0] - '0';
        if (lower(p[1]) == 'x' ? status / 100 == cls
                               : status == cls * 100 + (p[1] - '0') * 10 + (p[2] - '0'))
            return 1;
        if (p[3] != ',')
            break;
    }
    return 0;
}

/* A gRPC service name as the health protocol takes it ("grpc.health.v1.Health", "shop.Cart"),
 * or "" for the server as a whole. */
static const char *check_grpc_service(const char *s) {
    return is_visible(s) ? NULL
                         : "is not a valid gRPC service name (printable ASCII without spaces, "
                           "e.g. \"shop.Cart\", or \"\" for the server as a whole)";
}

/* An etcd endpoint: "http://HOST:PORT" or "https://HOST:PORT" (a name or an address, no path). */
const char *td_config_check_etcd_url(const char *s) {
    static const char *const bad = "is not a valid etcd endpoint (http://HOST:PORT or "
                                   "https://HOST:PORT, e.g. \"http://127.0.0.1:2379\")";
    const char *p = strncmp(s, "http://", 7) == 0    ? s + 7
                    : strncmp(s, "https://", 8) == 0 ? s + 8
                                                     : NULL;
    if (!p || !*p || *p == ':' || *p == '/' || !is_visible(p))
        return bad;
    const char *colon = p[0] == '[' ? strstr(p, "]:") : strrchr(p, ':');
    if (colon && p[0] == '[')
        colon++;
    if (!colon || !colon[1] || strlen(colon + 1) > 5)
        return bad;
    long port = 0;
    for (const char *q = colon + 1; *q; q++) {
        if (!is_digit(*q))
            return bad;
        port = port * 10 + (*q - '0');
    }
    return port >= 1 && port <= 65535 ? NULL : bad;
}

/* cluster.prefix: an etcd key prefix, "/" ... "/", but not "/" alone: td reads, watches and
 * writes everything under it. */
static const char *check_prefix(const char *s) {
    size_t n = strlen(s);
    if (strcmp(s, "/") == 0)
        return "would be the whole etcd keyspace: give td a prefix of its own, e.g. "
               "\"/td/shop/\"";
    return n >= 1 && s[0] == '/' && s[n - 1] == '/' && is_visible(s)
               ? NULL
               : "is not a valid prefix (starts and ends with \"/\", printable ASCII without "
                 "spaces, e.g. \"/td/shop/\")";
}

/* cluster.advertise: the URL of this node's admin API for the other nodes. */
static const char *check_admin_url(const char *s) {
    const char *p = strncmp(s, "http://", 7) == 0    ? s + 7
                    : strncmp(s, "https://", 8) == 0 ? s + 8
                                                     : NULL;
    return p && *p && *p != '/' && is_visible(p)
               ? NULL
               : "is not a valid admin URL (http://HOST:PORT, e.g. \"http://10.0.0.1:9090\")";
}

/* ---- the tables ---- */

static const char *const method_names[] = {"round_robin", "sticky", "failover", NULL};
static const char *const backend_state_names[] = {"ready", "drain", "maint", NULL};
static const char *const same_site_names[] = {"Lax", "Strict", "None", NULL};
static const char *const protocol_names[] = {"http/1.1", "h2", NULL};
static const char *const health_types[] = {"tcp", "http", "ssl_hello", "grpc", NULL};
static const char *const tls_versions[] = {"1.2", "1.3", NULL};
static const int tls_version_values[] = {TLS1_2_VERSION, TLS1_3_VERSION};

/* One macro per kind: the key, the struct it lives in and the member, then what the kind needs. */
#define INT(k, st, m, l, h, d, fl)                                                                 \
    {                                                                                              \
        .key = k, .kind = TD_CF_INT, .flags = fl, .offset = offsetof(st, m), .lo = l, .hi = h,     \
        .def = d                                                                                   \
    }
#define BOOL(k, st, m, d, fl)                                                                      \
    { .key = k, .kind = TD_CF_BOOL, .flags = fl, .offset = offsetof(st, m), .def = d }
#define STR(k, st, m, d, chk, fl)                                                                  \
    {                                                                                              \
        .key = k, .kind = TD_CF_STR, .flags = fl, .offset = offsetof(st, m),                       \
        .size = sizeof(((st *)0)->m), .def_str = d, .check = chk                                   \
    }
#define ENUM(k, st, m, nm, vals, d, fl)                                                            \
    {                                                                                              \
        .key = k, .kind = TD_CF_ENUM, .flags = fl, .offset = offsetof(st, m), .names = nm,         \
        .values = vals, .def = d                                                                   \
    }
#define ADDR(k, st, m, hook)                                                                       \
    {                                                                                              \
        .key = k, .kind = TD_CF_ADDR, .flags = TD_CF_REQUIRED, .offset = offsetof(st, m),          \
        .after = hook                                                                              \
    }
/* A sub-object whose struct is member m of st (or, with offset 0 and st ignored, st itself). */
#define OBJECT(k, off, sb, pres, fl)                                                               \
    { .key = k, .kind = TD_CF_OBJECT, .flags = fl, .offset = off, .sub = &sb, .present = pres }
#define ARRAY(k, st, m, cnt, elem, sb, max, wh, fl)                                                \
    {                                                                                              \
        .key = k, .kind = TD_CF_ARRAY, .flags = TD_CF_REQUIRED | (fl), .offset = offsetof(st, m),  \
        .size = sizeof(elem), .hi = max, .sub = &sb, .count_offset = offsetof(st, cnt), .what = wh \
    }
#define OBJ(f, ...)                                                                                \
    { f, COUNT(f), __VA_ARGS__ }

static const td_config_field_t cert_fields[] = {
    STR("cert", td_config_cert_t, cert, NULL, NULL, TD_CF_REQUIRED),
    STR("key", td_config_cert_t, key, NULL, NULL, TD_CF_REQUIRED),
};
static const td_config_object_t cert_object = OBJ(cert_fields, NULL, td_config_check_cert, NULL);

static const td_config_field_t listener_tls_fields[] = {
    ARRAY("certificates", td_config_listener_t, certs, num_certs, td_config_cert_t, cert_object,
          TD_CONFIG_MAX_CERTS, "certificate", TD_CF_EMBEDDED),
    ENUM("min_version", td_config_listener_t, min_version, tls_versions, tls_version_values,
         TLS1_2_VERSION, 0),
};
static const td_config_object_t listener_tls_object = OBJ(listener_tls_fields, NULL, NULL, NULL);

static const td_config_field_t listener_fields[] = {
    ADDR("address", td_config_listener_t, address, td_config_check_listener_address),
    OBJECT("tls", 0, listener_tls_object, offsetof(td_config_listener_t, tls), 0),
    BOOL("redirect_https", td_config_listener_t, redirect_https, 0, TD_CF_CHANGED),
    INT("https_port", td_config_listener_t, https_port, 0, 65535, 0, TD_CF_CHANGED),
    BOOL("http2", td_config_listener_t, http2, 1, TD_CF_CHANGED),
    BOOL("h2c", td_config_listener_t, h2c, 0, TD_CF_CHANGED),
    INT("h2_max_concurrent_streams", td_config_listener_t, h2_max_concurrent_streams, 1, 1000, 100,
        TD_CF_CHANGED),
    INT("max_connection_age_ms", td_config_listener_t, max_connection_age_ms, 0, 604800000, 0,
        TD_CF_CHANGED),
};
static const unsigned char listener_order[] = {0, 2, 3, 4, 5, 6, 7, 1};
static const td_config_object_t listener_object =
    OBJ(listener_fields, listener_order, td_config_check_listener_tls, NULL);

static const td_config_field_t admin_fields[] = {
    ADDR("address", td_config_t, admin_address, td_config_check_admin_address),
    STR("token", td_config_t, admin_token, NULL, check_token, TD_CF_HIDE),
    STR("read_token", td_config_t, admin_read_token, NULL, check_token, TD_CF_HIDE | TD_CF_CHANGED),
    OBJECT("tls", offsetof(td_config_t, admin_tls), listener_tls_object,
           offsetof(td_config_t, admin_tls.tls), 0),
};
static const td_config_object_t admin_object =
    OBJ(admin_fields, NULL, td_config_check_admin_tokens, NULL);

static const td_config_field_t cookie_fields[] = {
    STR("name", td_config_t, cookie_name, "TDSTICKY", check_cookie_name, 0),
    INT("max_age_s", td_config_t, cookie_max_age_s, 1, MAX_COOKIE_AGE, 3600, 0),
    STR("secret", td_config_t, cookie_secret, NULL, NULL, TD_CF_HIDE),
    BOOL("http_only", td_config_t, cookie_http_only, 1, TD_CF_CHANGED),
    ENUM("same_site", td_config_t, cookie_same_site, same_site_names, NULL, TD_SAME_SITE_LAX,
         TD_CF_CHANGED),
    /* "auto", true or false */
    {.key = "secure",
     .kind = TD_CF_CUSTOM,
     .flags = TD_CF_CHANGED,
     .offset = offsetof(td_config_t, cookie_secure),
     .def = TD_COOKIE_SECURE_AUTO,
     .id = TD_CF_ID_COOKIE_SECURE},
};
static const td_config_object_t cookie_object =
    OBJ(cookie_fields, NULL, td_config_check_cookie, NULL);

static const td_config_field_t preview_fields[] = {
    STR("header", td_config_t, preview_header, "X-TD-Backend", check_header_name, 0),
    STR("token", td_config_t, preview_token, NULL, check_token,
        TD_CF_REQUIRED | TD_CF_HIDE | TD_CF_CHANGED),
};
static const td_config_object_t preview_object = OBJ(preview_fields, NULL, NULL, NULL);

static const td_config_field_t routing_fields[] = {
    ENUM("method", td_config_t, method, method_names, NULL, TD_METHOD_ROUND_ROBIN, 0),
    OBJECT("cookie", 0, cookie_object, -1, 0),
    OBJECT("preview", 0, preview_object, -1, TD_CF_CHANGED), /* written when it has a token */
    INT("failback_ms", td_config_t, failback_ms, 0, MAX_MS, -1, TD_CF_CHANGED),
};
static const unsigned char routing_order[] = {0, 3, 1, 2};
static const td_config_object_t routing_object = OBJ(routing_fields, routing_order, NULL, NULL);

static const td_config_field_t health_fields[] = {
    {.key = "type",
     .kind = TD_CF_ENUM_STR,
     .offset = offsetof(td_config_health_t, type),
     .size = sizeof(((td_config_health_t *)0)->type),
     .def_str = "http",
     .names = health_types},
    STR("path", td_config_health_t, path, "/", check_path, 0),
    STR("expect_status", td_config_health_t, expect_status, "2xx,3xx", check_status, 0),
    INT("interval_ms", td_config_health_t, interval_ms, 1, MAX_MS, 3000, 0),
    INT("timeout_ms", td_config_health_t, timeout_ms, 1, MAX_MS, 1000, 0),
    INT("fall", td_config_health_t, fall, 1, 100, 3, 0),
    INT("rise", td_config_health_t, rise, 1, 100, 3, 0),
    INT("port", td_config_health_t, port, 0, 65535, 0, 0),
    BOOL("default_down", td_config_health_t, default_down, 0, 0),
    STR("expect_body", td_config_health_t, expect_body, NULL, NULL, TD_CF_CHANGED),
    STR("grpc_service", td_config_health_t, grpc_service, NULL, check_grpc_service, TD_CF_CHANGED),
};
static const td_config_object_t health_object =
    OBJ(health_fields, NULL, td_config_check_health, NULL);

static const td_config_field_t server_fields[] = {
    {.key = "address",
     .kind = TD_CF_ADDR,
     .flags = TD_CF_REQUIRED | TD_CF_NAME_OK,
     .offset = offsetof(td_config_server_t, address),
     .after = td_config_check_server_address},
    INT("weight", td_config_server_t, weight, 0, 100, 1, 0),
    INT("max_conns", td_config_server_t, max_conns, 0, 1000000, 0, TD_CF_CHANGED),
    INT("slow_start_ms", td_config_server_t, slow_start_ms, 0, MAX_MS, -1, TD_CF_CHANGED),
    INT("resolve_ms", td_config_server_t, resolve_ms, 100, MAX_MS, 10000, TD_CF_CHANGED),
};
static const td_config_object_t server_object = OBJ(server_fields, NULL, NULL, NULL);

static const td_config_field_t backend_tls_fields[] = {
    BOOL("verify", td_config_backend_t, tls_verify, 1, 0),
    {.key = "ca",
     .kind = TD_CF_STR,
     .flags = TD_CF_CHANGED,
     .offset = offsetof(td_config_backend_t, tls_ca),
     .size = sizeof(((td_config_backend_t *)0)->tls_ca),
     .after = td_config_check_ca},
    STR("sni", td_config_backend_t, tls_sni, NULL, check_token, TD_CF_CHANGED),
};
static const td_config_object_t backend_tls_object = OBJ(backend_tls_fields, NULL, NULL, NULL);

/* A backend's health check starts from the global one (read first: TD_CF_EARLY below). */
static void inherit_health(td_config_report_t *r, td_config_t *c, void *obj, const void *first,
                           size_t index, unsigned read) {
    (void)r, (void)first, (void)index, (void)read;
    ((td_config_backend_t *)obj)->health = c->health;
}

static const td_config_field_t backend_fields[] = {
    {.key = "name",
     .kind = TD_CF_STR,
     .flags = TD_CF_REQUIRED,
     .offset = offsetof(td_config_backend_t, name),
     .size = TD_NAME_MAX,
     .check = check_name,
     .after = td_config_check_backend_name},
    INT("weight", td_config_backend_t, weight, 0, 100, 0, TD_CF_REQUIRED),
    ARRAY("servers", td_config_backend_t, servers, num_servers, td_config_server_t, server_object,
          TD_CONFIG_MAX_SERVERS, "server", 0),
    OBJECT("health_check", offsetof(td_config_backend_t, health), health_object,
           offsetof(td_config_backend_t, health_override), 0),
    OBJECT("tls", 0, backend_tls_object, offsetof(td_config_backend_t, tls), 0),
    ENUM("state", td_config_backend_t, state, backend_state_names, NULL, TD_BACKEND_READY,
         TD_CF_CHANGED),
    INT("slow_start_ms", td_config_backend_t, slow_start_ms, 0, MAX_MS, 0, TD_CF_CHANGED),
    ENUM("protocol", td_config_backend_t, protocol, protocol_names, NULL, TD_PROTOCOL_HTTP1,
         TD_CF_CHANGED),
};
static const unsigned char backend_order[] = {0, 1, 5, 6, 7, 2, 4, 3};
static const td_config_object_t backend_object =
    OBJ(backend_fields, backend_order, NULL, inherit_health);

static const td_config_field_t timeout_fields[] = {
    INT("connect_ms", td_config_timeouts_t, connect_ms, 1, MAX_MS, 5000, 0),
    INT("client_header_ms", td_config_timeouts_t, client_header_ms, 1, MAX_MS, 10000, 0),
    INT("upstream_response_ms", td_config_timeouts_t, upstream_response_ms, 1, MAX_MS, 60000, 0),
    INT("keepalive_idle_ms", td_config_timeouts_t, keepalive_idle_ms, 1, MAX_MS, 75000, 0),
    INT("drain_ms", td_config_timeouts_t, drain_ms, 0, MAX_MS, 30000, 0),
    INT("client_send_ms", td_config_timeouts_t, client_send_ms, 1, MAX_MS, 60000, 0),
    INT("queue_ms", td_config_timeouts_t, queue_ms, 1, MAX_MS, 10000, TD_CF_CHANGED),
    INT("stop_grace_ms", td_config_timeouts_t, stop_grace_ms, 0, MAX_MS, 0, TD_CF_CHANGED),
};
static const td_config_object_t timeout_object = OBJ(timeout_fields, NULL, NULL, NULL);

static const td_config_field_t passive_fields[] = {
    INT("failures", td_config_passive_t, failures, 1, 1000, 3, 0),
    INT("eject_ms", td_config_passive_t, eject_ms, 1, MAX_MS, 5000, 0),
    INT("max_eject_ms", td_config_passive_t, max_eject_ms, 1, MAX_MS, 300000, 0),
};
static const td_config_object_t passive_object = OBJ(passive_fields, NULL, NULL, NULL);

static const td_config_field_t buffering_fields[] = {
    INT("max_bytes", td_config_buffering_t, max_bytes, 0, 1024 * 1024, 65536, 0),
};
static const td_config_object_t buffering_object = OBJ(buffering_fields, NULL, NULL, NULL);

static const td_config_field_t cluster_tls_fields[] = {
    STR("ca", td_config_cluster_t, tls_ca, NULL, td_config_check_state_path, TD_CF_CHANGED),
    STR("cert", td_config_cluster_t, tls_cert, NULL, td_config_check_state_path, TD_CF_CHANGED),
    STR("key", td_config_cluster_t, tls_key, NULL, td_config_check_state_path, TD_CF_CHANGED),
};
static const td_config_object_t cluster_tls_object =
    OBJ(cluster_tls_fields, NULL, td_config_check_cluster_tls, NULL);

static const td_config_field_t cluster_fields[] = {
    /* ["http://HOST:PORT", ...] */
    {.key = "etcd",
     .kind = TD_CF_CUSTOM,
     .flags = TD_CF_REQUIRED,
     .offset = offsetof(td_config_cluster_t, num_etcd),
     .id = TD_CF_ID_ENDPOINTS},
    STR("prefix", td_config_cluster_t, prefix, NULL, check_prefix, TD_CF_REQUIRED),
    STR("node", td_config_cluster_t, node, NULL, check_name, TD_CF_CHANGED),
    INT("lease_s", td_config_cluster_t, lease_s, 2, 60, 5, 0),
    OBJECT("tls", 0, cluster_tls_object, offsetof(td_config_cluster_t, has_tls), 0),
    STR("username", td_config_cluster_t, username, NULL, check_token, TD_CF_CHANGED),
    STR("password", td_config_cluster_t, password, NULL, NULL, TD_CF_HIDE | TD_CF_CHANGED),
    STR("cache_file", td_config_cluster_t, cache_file, NULL, td_config_check_state_path,
        TD_CF_CHANGED),
    STR("advertise", td_config_cluster_t, advertise, NULL, check_admin_url, TD_CF_CHANGED),
};
static const td_config_object_t cluster_object =
    OBJ(cluster_fields, NULL, td_config_check_cluster, NULL);

static const td_config_field_t resolvers_fields[] = {
    /* ["IP:PORT", ...] */
    {.key = "nameservers",
     .kind = TD_CF_CUSTOM,
     .offset = offsetof(td_config_resolvers_t, num_nameservers),
     .id = TD_CF_ID_NAMESERVERS},
    INT("timeout_ms", td_config_resolvers_t, timeout_ms, 1, 60000, 2000, 0),
    INT("attempts", td_config_resolvers_t, attempts, 1, 10, 2, 0),
    INT("hold_nx_ms", td_config_resolvers_t, hold_nx_ms, 0, 86400000, TD_RESOLVER_HOLD_NX_MS, 0),
};
static const td_config_object_t resolvers_object = OBJ(resolvers_fields, NULL, NULL, NULL);

static const td_config_field_t root_fields[] = {
    ARRAY("listeners", td_config_t, listeners, num_listeners, td_config_listener_t, listener_object,
          TD_CONFIG_MAX_LISTENERS, "listener", 0),
    /* "auto" or 1..64 */
    {.key = "workers",
     .kind = TD_CF_CUSTOM,
     .offset = offsetof(td_config_t, workers_auto),
     .def = 1,
     .id = TD_CF_ID_WORKERS},
    OBJECT("admin", 0, admin_object, offsetof(td_config_t, has_admin), 0),
    OBJECT("routing", 0, routing_object, -1, 0),
    {.key = "backends",
     .kind = TD_CF_ARRAY,
     .flags = TD_CF_REQUIRED,
     .offset = offsetof(td_config_t, backends),
     .size = sizeof(td_config_backend_t),
     .hi = TD_CONFIG_MAX_BACKENDS,
     .sub = &backend_object,
     .count_offset = offsetof(td_config_t, num_backends),
     .what = "backend",
     .after = td_config_check_backend_weights},
    OBJECT("health_check", offsetof(td_config_t, health), health_object,
           offsetof(td_config_t, has_health), TD_CF_EARLY),
    OBJECT("timeouts", offsetof(td_config_t, timeouts), timeout_object, -1, 0),
    OBJECT("passive", offsetof(td_config_t, passive), passive_object, -1, 0),
    STR("access_log", td_config_t, access_log, NULL, td_config_check_log_path, TD_CF_CHANGED),
    STR("pid_file", td_config_t, pid_file, NULL, td_config_check_pid_path, TD_CF_CHANGED),
    OBJECT("request_buffering", offsetof(td_config_t, request_buffering), buffering_object, -1, 0),
    STR("state_file", td_config_t, state_file, NULL, td_config_check_state_path, TD_CF_CHANGED),
    OBJECT("cluster", offsetof(td_config_t, cluster), cluster_object,
           offsetof(td_config_t, has_cluster), 0),
    OBJECT("resolvers", offsetof(td_config_t, resolvers), resolvers_object,
           offsetof(td_config_t, has_resolvers), 0),
};
static const unsigned char root_order[] = {0, 1, 2, 3, 4, 5, 6, 7, 10, 8, 9, 11, 12, 13};
const td_config_object_t td_config_schema = OBJ(root_fields, root_order, NULL, NULL);

void td_config_schema_defaults(const td_config_object_t *o, void *base) {
    for (size_t i = 0; i < o->num_fields; i++) {
        const td_config_field_t *f = &o->fields[i];
        char *at = (char *)base + f->offset;
        switch (f->kind) {
        case TD_CF_INT:
        case TD_CF_BOOL:
        case TD_CF_ENUM:
        case TD_CF_CUSTOM:
            *(int *)at = (int)f->def;
            break;
        case TD_CF_STR:
        case TD_CF_ENUM_STR:
            snprintf(at, f->size, "%s", f->def_str ? f->def_str : "");
            break;
        case TD_CF_OBJECT:
            td_config_schema_defaults(f->sub, at);
            break;
        case TD_CF_ADDR:
        case TD_CF_ARRAY:
            break;
        }
    }
}

int td_config_schema_find(const td_config_object_t *o, const char *key) {
    for (size_t i = 0; i < o->num_fields; i++)
        if (strcmp(o->fields[i].key, key) == 0)
            return (int)i;
    return -1;
}

/* ---- value types ---- */

int td_addr_parse(const char *text, td_addr_t *out) {
    td_addr_t a;
    char host[64];
    const char *colon, *port;
    size_t len = strlen(text), hlen;
    long p = 0;

    if (len == 0 || len >= sizeof a.text)
        return TD_EINVAL;
    memset(&a, 0, sizeof a);
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return TD_EINVAL;
        hlen = (size_t)(close - text - 1);
        memcpy(host, text + 1, hlen);
        port = close + 2;
    } else {
        colon = strrchr(text, ':');
        if (!colon)
            return TD_EINVAL;
        hlen = (size_t)(colon - text);
        memcpy(host, text, hlen);
        port = colon + 1;
    }
    host[hlen] = '\0';
    if (!*port || strlen(port) > 5)
        return TD_EINVAL;
    for (const char *q = port; *q; q++) {
        if (!is_digit(*q))
            return TD_EINVAL;
        p = p * 10 + (*q - '0');
    }
    if (p < 1 || p > 65535)
        return TD_EINVAL;
    if (text[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.sa;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return TD_EINVAL;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
        a.salen = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a.sa;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return TD_EINVAL;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p);
        a.salen = sizeof *s4;
    }
    memcpy(a.text, text, len + 1);
    *out = a;
    return 0;
}

int td_addr_parse_name(const char *text, td_addr_t *out) {
    const char *colon = strrchr(text, ':');
    size_t len = strlen(text);
    int label = 0, alpha = 0;
    long p = 0;

    if (!colon || colon == text || len >= sizeof out->text || !colon[1] || strlen(colon) > 6)
        return TD_EINVAL;
    for (const char *q = colon + 1; *q; q++) {
        if (!is_digit(*q))
            return TD_EINVAL;
        p = p * 10 + (*q - '0');
    }
    if (p < 1 || p > 65535)
        return TD_EINVAL;
    /* Labels of 1..63 characters, no '-' at either end; a name of digits and dots only would be
     * an IPv4 address td_addr_parse refused. */
    for (const char *q = text; q <= colon; q++) {
        if (q == colon && label == 0 && q - text > 1 && q[-1] == '.')
            break; /* a trailing dot: the fully qualified "green.internal.:80" */
        if (q == colon || *q == '.') {
            if (label == 0 || q[-1] == '-')
                return TD_EINVAL;
            label = 0;
            continue;
        }
        if (!is_alnum(*q) && *q != '-' && *q != '_')
            return TD_EINVAL;
        if (label == 0 && *q == '-')
            return TD_EINVAL;
        if (!is_digit(*q))
            alpha = 1;
        if (++label > 63)
            return TD_EINVAL;
    }
    if (!alpha)
        return TD_EINVAL;
    memset(out, 0, sizeof *out);
    memcpy(out->text, text, len + 1);
    return 0;
}

const char *td_method_name(td_method_t m) {
    return (unsigned)m < COUNT(method_names) - 1 ? method_names[m] : "unknown";
}

int td_method_parse(const char *s, td_method_t *out) {
    for (size_t i = 0; method_names[i]; i++) {
        if (strcmp(s, method_names[i]) == 0) {
            *out = (td_method_t)i;
            return 0;
        }
    }
    return TD_EINVAL;
}

const char *td_backend_state_name(td_backend_state_t st) {
    return (unsigned)st < COUNT(backend_state_names) - 1 ? backend_state_names[st] : "unknown";
}

int td_backend_state_parse(const char *s, td_backend_state_t *out) {
    for (size_t i = 0; backend_state_names[i]; i++) {
        if (strcmp(s, backend_state_names[i]) == 0) {
            *out = (td_backend_state_t)i;
            return 0;
        }
    }
    return TD_EINVAL;
}
