/* Types of the configuration (the JSON file of the contract in docs/ARCHITECTURE.md). */
#ifndef TD_CONFIG_T_H
#define TD_CONFIG_T_H

#include <stddef.h>
#include <sys/socket.h>

#define TD_NAME_MAX 64

/* Upper bounds a config may not exceed (they keep checking and routing cheap). */
#define TD_CONFIG_MAX_LISTENERS 64
#define TD_CONFIG_MAX_BACKENDS 256
#define TD_CONFIG_MAX_SERVERS 1024 /* per backend */

/* The SameSite attribute of the sticky cookie (routing.cookie.same_site). */
typedef enum td_same_site_e {
    TD_SAME_SITE_LAX = 0, /* "Lax" (default) */
    TD_SAME_SITE_STRICT = 1,
    TD_SAME_SITE_NONE = 2, /* needs Secure */
} td_same_site_t;

/* When the sticky cookie carries Secure (routing.cookie.secure). */
typedef enum td_cookie_secure_e {
    TD_COOKIE_SECURE_AUTO = 0,   /* "auto" (default): on responses sent over TLS listeners */
    TD_COOKIE_SECURE_ALWAYS = 1, /* true */
    TD_COOKIE_SECURE_NEVER = 2,  /* false */
} td_cookie_secure_t;

/* A backend's state (backend key "state", PUT /api/v1/backends/NAME). */
typedef enum td_backend_state_e {
    TD_BACKEND_READY = 0, /* "ready" (default): takes traffic by its weight */
    TD_BACKEND_DRAIN = 1, /* "drain": no new requests; pinned sticky clients stay until drain_ms */
    TD_BACKEND_MAINT = 2, /* "maint": no user traffic at all, only the preview route and health
                             checks reach it */
} td_backend_state_t;

/* How td speaks to a backend's servers (backend key "protocol"). */
typedef enum td_backend_protocol_e {
    TD_PROTOCOL_HTTP1 = 0, /* "http/1.1" (default): keep-alive connections, one request each */
    TD_PROTOCOL_H2 = 1,    /* "h2": HTTP/2 (RFC 9113), streams over few connections: over TLS
                              by ALPN h2, else h2c with prior knowledge; trailers pass (gRPC) */
} td_backend_protocol_t;

typedef enum td_method_e {
    TD_METHOD_ROUND_ROBIN = 0,
    TD_METHOD_STICKY = 1,
    TD_METHOD_FAILOVER = 2,
} td_method_t;

/* An "IP:port" (or "[IPv6]:port") address, parsed. A server's address may also be "HOST:port"
 * with a host name (td_addr_parse_name): then salen is 0 and sa unset until the resolver
 * (td/resolver.h) gives it addresses. */
typedef struct td_addr_s {
    char text[64]; /* as written in the config, NUL-terminated */
    struct sockaddr_storage sa;
    socklen_t salen; /* 0: text is HOST:port with a name, not an address */
} td_addr_t;

#define TD_CONFIG_MAX_CERTS 16
#define TD_PATH_MAX 256

/* A certificate chain (leaf first) and its private key, PEM files. */
typedef struct td_config_cert_s {
    char cert[TD_PATH_MAX];
    char key[TD_PATH_MAX];
} td_config_cert_t;

typedef struct td_config_listener_s {
    td_addr_t address;
    int tls; /* 1 when "tls" is present: HTTPS on this listener */
    td_config_cert_t certs[TD_CONFIG_MAX_CERTS]; /* the first is the default (no SNI) */
    size_t num_certs;                            /* 1..TD_CONFIG_MAX_CERTS when tls */
    int min_version;    /* TLS1_2_VERSION (default, "1.2") or TLS1_3_VERSION ("1.3") */
    int redirect_https; /* plain listener: answer every request with a redirect to https */
    int https_port;     /* port written in that redirect; 0 = none (443) */
    int http2;          /* TLS listener: ALPN offers h2 besides http/1.1 (default 1) */
    int h2c;            /* plain listener: HTTP/2 with prior knowledge too (default 0) */
    int h2_max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS, 1..1000; default 100 */
    /* 0..604800000 ms; 0 (default) = no limit: a connection older than this (plus up to 10 %)
     * is ended gracefully: HTTP/2 by the two-step GOAWAY, HTTP/1.1 by Connection: close on its
     * next response (nginx's keepalive_time, gRPC's MAX_CONNECTION_AGE) */
    int max_connection_age_ms;
} td_config_listener_t;

typedef struct td_config_server_s {
    td_addr_t address;
    int weight;        /* 0..100; default 1 */
    int max_conns;     /* 0..1000000 requests in flight (tunnels included) at once; 0 (default) = no
                          limit. Beyond it requests wait in td's queue (timeouts.queue_ms) */
    int slow_start_ms; /* 0..86400000: after it comes up, its weight grows from 5 % to full over
                          this long (0 = off); -1 (default) = its backend's slow_start_ms */
    int resolve_ms;    /* 100..86400000; default 10000: with a host name in `address`, how often
                          it is resolved again (a record's shorter TTL wins) */
} td_config_server_t;

/* Top-level "resolvers": the DNS servers td asks for servers' host names (HAProxy's
 * `resolvers` section). Absent: /etc/resolv.conf (c-ares' defaults). */
#define TD_CONFIG_MAX_NAMESERVERS 8
typedef struct td_config_resolvers_s {
    td_addr_t nameservers[TD_CONFIG_MAX_NAMESERVERS]; /* "IP:port" each */
    int num_nameservers; /* 0..TD_CONFIG_MAX_NAMESERVERS; 0 = those of /etc/resolv.conf */
    int timeout_ms;      /* 1..60000; default 2000: one query's wait for an answer */
    int attempts;        /* 1..10; default 2: tries per name server */
    int hold_nx_ms;      /* 0..86400000; default TD_RESOLVER_HOLD_NX_MS: how long a name answered
                          * NXDOMAIN or NODATA keeps its last addresses */
} td_config_resolvers_t;

/* resolvers.hold_nx_ms's default (HAProxy's `hold nx`), also without "resolvers". */
#define TD_RESOLVER_HOLD_NX_MS 30000

typedef struct td_config_health_s {
    char type[16];          /* "tcp" | "http" | "ssl_hello" (TLS handshake only) | "grpc"
                               (grpc.health.v1.Health/Check over HTTP/2); default "http" */
    char path[256];         /* http: request path, starts with '/', printable ASCII; default "/" */
    char expect_status[64]; /* "2xx,3xx" or "200,204" ...; default "2xx,3xx" (see
                               td_config_status_expected) */
    int interval_ms;        /* 1..86400000; default 3000 */
    int timeout_ms;         /* 1..86400000; default 1000 */
    int fall, rise;         /* 1..100; default 3 and 3 */
    int port;               /* 0..65535; 0 (default) = the server's own */
    int default_down;       /* bool: servers start down until `rise` checks pass; default 0 */
    char expect_body[128];  /* http: a substring the response body must contain; "" = any */
    char grpc_service[256]; /* grpc: the service asked about, printable ASCII; "" (default) = the
                               server as a whole */
} td_config_health_t;

/* Passive detection (Envoy's outlier detection): `failures` consecutive connect errors, resets or
 * 5xx eject a server for eject_ms, doubled on each repeat up to max_eject_ms; it comes back when
 * the ejection ends (and, with active checks, only while they pass). */
typedef struct td_config_passive_s {
    int failures;     /* 1..1000; default 3 */
    int eject_ms;     /* 1..86400000; default 5000 */
    int max_eject_ms; /* 1..86400000; default 300000 */
} td_config_passive_t;

typedef struct td_config_backend_s {
    char name[TD_NAME_MAX];      /* [A-Za-z0-9_-]{1,63}, unique */
    int weight;                  /* 0..100 */
    td_backend_state_t state;    /* default TD_BACKEND_READY */
    td_config_server_t *servers; /* owned */
    size_t num_servers;          /* 1..TD_CONFIG_MAX_SERVERS */
    int tls;                     /* 1 when "tls" is present: HTTPS to the servers */
    int tls_verify;              /* verify the server's certificate (default 1) */
    char tls_ca[TD_PATH_MAX];    /* CA bundle; "" = the system's */
    char tls_sni[256];           /* server name sent and verified; "" = none */
    td_config_health_t health;   /* the global health_check with this backend's overrides */
    int health_override;         /* 1 when the backend has its own "health_check" object */
    int slow_start_ms;           /* 0..86400000; default 0 (off): the slow_start_ms of its
                                    servers that do not set their own */
    int protocol;                /* td_backend_protocol_t; default TD_PROTOCOL_HTTP1 */
} td_config_backend_t;

/* All 1..86400000 ms, except drain_ms and stop_grace_ms 0..86400000 (drain_ms 0 = stop without
 * waiting). */
typedef struct td_config_timeouts_s {
    int connect_ms;           /* default 5000 */
    int client_header_ms;     /* default 10000 */
    int upstream_response_ms; /* default 60000 */
    int keepalive_idle_ms;    /* default 75000 */
    int drain_ms;             /* default 30000 */
    int client_send_ms;       /* default 60000: longest wait for a client to take response bytes
                                 (nginx's send_timeout); then td closes, the client's fault */
    int queue_ms;             /* default 10000: longest wait of a request queued because every
                                 server of its backend is at max_conns; then td answers 503
                                 (HAProxy's timeout queue) */
    int stop_grace_ms;        /* default 0: on SIGTERM/SIGINT, how long /readyz answers 503 while
                                 td still accepts and serves, before it drains (HAProxy's
                                 grace) */
} td_config_timeouts_t;

/* Request bodies read into td before a backend is chosen (nginx's proxy_request_buffering,
 * HAProxy's http-buffer-request): a slow upload holds no backend connection while it comes. */
typedef struct td_config_buffering_s {
    int max_bytes; /* 0..1048576 body bytes (chunked: with their framing); default 65536; 0 = off.
                      A larger body is buffered up to this, then streamed. */
} td_config_buffering_t;

/* Cluster mode (key "cluster", DESIGN.md "Cluster"): the shared state lives in etcd under
 * `prefix`; see td/cluster.h. */
#define TD_CLUSTER_MAX_ENDPOINTS 16
typedef struct td_config_cluster_s {
    char etcd[TD_CLUSTER_MAX_ENDPOINTS][256]; /* "http://HOST:PORT" or "https://HOST:PORT" */
    int num_etcd;                             /* 1..TD_CLUSTER_MAX_ENDPOINTS */
    char prefix[256];                         /* starts and ends with "/", e.g. "/td/shop/" */
    char node[TD_NAME_MAX];                   /* this node's name; "" (default) = the host name */
    int lease_s;                /* 2..60; default 5: PREFIX nodes/NODE lives this long unrenewed */
    int has_tls;                /* 1 when "tls" is present */
    char tls_ca[TD_PATH_MAX];   /* CA bundle for https endpoints; "" = the system's */
    char tls_cert[TD_PATH_MAX]; /* client certificate (PEM); "" = none */
    char tls_key[TD_PATH_MAX];  /* its key; "" = none */
    char username[128];         /* etcd user; "" = no authentication */
    char password[128];
    char cache_file[TD_PATH_MAX]; /* "" = FILE.cluster-cache.json next to the config file */
    char advertise[256];          /* the admin URL other nodes use; "" = http://ADMIN_ADDRESS */
} td_config_cluster_t;

typedef struct td_config_s {
    td_config_listener_t *listeners; /* owned */
    size_t num_listeners;            /* 1..TD_CONFIG_MAX_LISTENERS */
    int workers;      /* 1..64; "auto" resolved to the number of online CPUs (capped) */
    int workers_auto; /* 1 when written as "auto" (kept when the file is written back) */
    td_addr_t admin_address;
    int has_admin;              /* 0 when "admin" is absent */
    char admin_token[256];      /* printable ASCII without spaces; "" = no token required */
    char admin_read_token[256]; /* the same for GET/HEAD only (dashboards); "" = none */
    /* admin.tls: the admin API over HTTPS, with the keys of a listener's "tls" (certificates,
     * min_version) in the same fields; admin_tls.tls is 1 when it is present. Its address and
     * redirect fields are unused. */
    td_config_listener_t admin_tls;
    td_method_t method;               /* default round robin when "routing" is absent */
    int failback_ms;                  /* routing.failback_ms, 0..86400000: how long a failover
                                         primary must have been up again before traffic goes back
                                         to it; -1 (default) = one full rise of its health check
                                         (rise x interval_ms), 0 without active checks */
    char cookie_name[TD_NAME_MAX];    /* RFC 6265 token; default "TDSTICKY" */
    int cookie_max_age_s;             /* 1..315360000 (10 years); default 3600 */
    char cookie_secret[128];          /* key for signing the sticky cookie; "" = none (default) */
    int cookie_http_only;             /* bool: HttpOnly on the sticky cookie; default 1 */
    td_same_site_t cookie_same_site;  /* default TD_SAME_SITE_LAX */
    td_cookie_secure_t cookie_secure; /* default TD_COOKIE_SECURE_AUTO */
    char preview_header[TD_NAME_MAX]; /* routing.preview.header; default "X-TD-Backend" */
    char preview_token[128];          /* routing.preview.token; "" = preview route off (default) */
    char access_log[256];             /* "" = off (default), "stderr", or a file path (appended) */
    char pid_file[TD_PATH_MAX];    /* "" = none (default), or an absolute path written at start */
    char state_file[TD_PATH_MAX];  /* where API changes are kept; "" = FILE.state.json next to
                                      the config file (td_state_default_path) */
    td_config_backend_t *backends; /* owned */
    size_t num_backends;           /* 1..TD_CONFIG_MAX_BACKENDS */
    td_config_health_t health;
    int has_health; /* 0 when "health_check" is absent (no active checks but overrides) */
    td_config_passive_t passive;
    td_config_timeouts_t timeouts;
    td_config_buffering_t request_buffering;
    td_config_cluster_t cluster;
    int has_cluster; /* 0 when "cluster" is absent (single-node mode) */
    td_config_resolvers_t resolvers;
    int has_resolvers; /* 0 when "resolvers" is absent */
} td_config_t;

#endif
