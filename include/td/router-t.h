/* Types of the router: live counters that outlive reloads, and immutable routing snapshots. */
#ifndef TD_ROUTER_T_H
#define TD_ROUTER_T_H

#include <stdatomic.h>
#include <stdint.h>

#include "td/common-t.h"
#include "td/config-t.h"
#include "td/sticky-t.h"

/* Seconds over which pinned sticky requests are counted per backend. */
#define TD_PIN_WINDOW 10

/* Request-duration histogram buckets (upper bounds in ms; the last one is +Inf). */
#define TD_LAT_BUCKETS 14
extern const int td_lat_bounds_ms[TD_LAT_BUCKETS - 1];

/* Response classes counted per server and backend: 1xx..5xx. */
#define TD_NCLASS 5

/* td's own gateway errors, counted by code: 502, 503, 504 (index code - 502). */
#define TD_NLOCAL 3

/* Live counters and passive health of one server (identified by backend name + address). Created
 * by the registry on first use and kept for the life of the process, so counters, health and the
 * workers' keep-alive pools (keyed by this object) survive reloads. Written by any thread. */
typedef struct td_server_stats_s {
    char backend[TD_NAME_MAX];
    char address[64];
    _Atomic uint64_t requests;       /* requests sent to this server */
    _Atomic uint64_t failures;       /* connect errors, resets, timeouts */
    _Atomic uint64_t responses[TD_NCLASS];
    _Atomic int64_t active_connections; /* open upstream connections (busy + idle) */
    _Atomic int64_t in_flight;       /* requests waiting for or receiving a response */
    _Atomic int64_t down_until_ms;   /* passive ejection: down while td_now_ms() < this */
    _Atomic int consecutive_failures;
    _Atomic int health_up;           /* active health check verdict: 1 up, 0 down */
    _Atomic int64_t up_since_ms;     /* td_now_ms() when health_up last went to 1 (0: up from
                                        the start); with down_until_ms it tells how long the
                                        server has been up (td_server_up_since) */
    _Atomic int ejected;             /* a passive ejection's "down" event awaits its "up" */
    int checked;                     /* main thread: an active check has been set up for it */
    _Atomic int ejections;           /* passive ejections in a row (the next one lasts longer) */
    _Atomic int recheck;             /* set on a passive ejection: the checker counts rise anew */
    struct td_server_stats_s *next;  /* registry list; owned by the registry */
} td_server_stats_t;

/* Live counters of one backend, by name; kept for the life of the process. */
typedef struct td_backend_stats_s {
    char name[TD_NAME_MAX];
    _Atomic uint64_t requests;       /* requests answered, by it or by td for it (retries count
                                        where they ended) */
    _Atomic uint64_t responses[TD_NCLASS];
    _Atomic uint64_t local[TD_NLOCAL]; /* td's own 502/503/504 for it (also in responses) */
    _Atomic int64_t last_5xx_ms;       /* td_now_ms() of the last 5xx answered for it; 0 none */
    _Atomic int64_t in_flight;
    _Atomic int64_t tunnels;         /* open WebSocket / Upgrade tunnels */
    _Atomic uint64_t latency[TD_LAT_BUCKETS]; /* request durations (not cumulative) */
    _Atomic uint64_t latency_sum_ms;
    _Atomic int64_t drain_since_ms;  /* td_now_ms() when the weight went to 0; 0 while above 0 */
    int last_weight;                 /* admin thread: weight in the last snapshot built */
    /* Requests carrying a valid sticky cookie for this backend, per second, over the last
     * TD_PIN_WINDOW seconds (a ring indexed by second). */
    _Atomic uint32_t pin_count[10];
    _Atomic int64_t pin_second[10];
    struct td_backend_stats_s *next;
} td_backend_stats_t;

/* td's own gateway errors for requests no backend was chosen for (no backend up, no routing
 * configuration); kept for the life of the process. */
typedef struct td_local_stats_s {
    _Atomic uint64_t local[TD_NLOCAL]; /* 502, 503, 504 */
    _Atomic int64_t last_5xx_ms;       /* td_now_ms() of the last one; 0 none */
} td_local_stats_t;

typedef struct td_snap_server_s {
    td_addr_t addr;
    int weight;
    td_server_stats_t *st; /* borrowed from the registry */
} td_snap_server_t;

struct td_tls_server_s;
struct td_tls_client_s;

typedef struct td_snap_backend_s {
    char name[TD_NAME_MAX];
    struct td_tls_client_s *tls; /* owned reference; NULL for plain HTTP to the servers */
    int weight;
    td_snap_server_t *servers; /* owned by the snapshot */
    size_t num_servers;
    size_t first_server;       /* index of servers[0] in the snapshot's flat server numbering */
    int64_t failback_ms;       /* failover: how long it must be up again before it takes back
                                  traffic from a backend after it (routing.failback_ms resolved) */
    td_backend_stats_t *st;    /* borrowed from the registry */
} td_snap_backend_t;

/* An immutable routing snapshot: what workers read to route a request. Built by the admin thread,
 * published by an atomic swap, freed when the last holder (the publisher or an in-flight request)
 * lets go. */
typedef struct td_snapshot_s {
    _Atomic int refs;
    uint64_t version;       /* config version; grows by one with every applied change */
    td_config_t *config;    /* owned: the config this snapshot was built from */
    td_method_t method;
    td_snap_backend_t *backends; /* owned */
    size_t num_backends;
    struct td_tls_server_s **listener_tls; /* owned references, one per listener (NULL: plain) */
    size_t num_servers;     /* across all backends */
    td_sticky_key_t sticky_key; /* signs and checks sticky cookies: routing.cookie.secret, or
                                   the process's random key when none is set */
} td_snapshot_t;

#endif
