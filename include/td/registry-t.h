/* Types of the registry: the live counters, passive state and health verdict of each server and
 * backend, which outlive routing snapshots (and so reloads). */
#ifndef TD_REGISTRY_T_H
#define TD_REGISTRY_T_H

#include <stdatomic.h>
#include <stdint.h>

#include "td/config-t.h"

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
    _Atomic uint64_t requests; /* requests answered: the server sent a response head */
    _Atomic uint64_t failures; /* failed tries: connect errors, resets, timeouts, 5xx */
    _Atomic uint64_t responses[TD_NCLASS];
    _Atomic int64_t active_connections; /* open upstream connections (busy + idle) */
    _Atomic int64_t in_flight;          /* requests waiting for or receiving a response */
    _Atomic int64_t down_until_ms;      /* passive ejection: down while td_now_ms() < this */
    _Atomic int consecutive_failures;
    /* max_conns slots held: requests in flight and tunnels, counted only while the server has a
     * max_conns (td_registry_slot_take). */
    _Atomic int64_t slots;
    /* The running config's max_conns (0: none), stored when a snapshot is published: picks judge
     * by it whatever snapshot a request holds, so a queued request sees a raised limit at once. */
    _Atomic int max_conns;
    _Atomic int health_up;          /* active health check verdict: 1 up, 0 down */
    _Atomic int64_t up_since_ms;    /* td_now_ms() when health_up last went to 1 (0: up from
                                       the start); with down_until_ms it tells how long the
                                       server has been up (td_server_up_since) */
    _Atomic int ejected;            /* a passive ejection's "down" event awaits its "up" */
    _Atomic int checked;            /* an active check is set up for it: written by the main
                                       thread (td_health_sync), read by workers */
    _Atomic int ejections;          /* passive ejections in a row (the next one lasts longer) */
    _Atomic int recheck;            /* set on a passive ejection: the checker counts rise anew */
    _Atomic int64_t weight_up_ms;   /* td_now_ms() when its weight last went from 0 to above 0
                                       in a new snapshot (0: never); a slow start begins there */
    int last_weight;                /* admin thread: weight in the last snapshot built */
    int built;                      /* admin thread: 1 once a snapshot held it (the first one
                                       takes it as it is: warm) */
    struct td_server_stats_s *next; /* registry list; owned by the registry */
} td_server_stats_t;

/* Live counters of one backend, by name; kept for the life of the process. */
typedef struct td_backend_stats_s {
    char name[TD_NAME_MAX];
    _Atomic uint64_t requests; /* requests answered, by one of its servers or by td for it
                                  (502/503/504; retries count where they ended): the sum of
                                  its servers' requests plus td's own answers for it */
    _Atomic uint64_t responses[TD_NCLASS];
    _Atomic uint64_t local[TD_NLOCAL]; /* td's own 502/503/504 for it (also in responses) */
    _Atomic int64_t last_5xx_ms;       /* td_now_ms() of the last 5xx answered for it; 0 none */
    _Atomic int64_t in_flight;
    /* Requests waiting in the workers' queues (every server at max_conns), summed over workers
     * (td/queue.h), and those of them answered 503 after queue_ms. */
    _Atomic int64_t queued;
    _Atomic uint64_t queue_timeouts;
    _Atomic int64_t tunnels;                  /* open WebSocket / Upgrade tunnels */
    _Atomic uint64_t latency[TD_LAT_BUCKETS]; /* request durations (not cumulative) */
    _Atomic uint64_t latency_sum_ms;
    _Atomic int64_t drain_since_ms; /* td_now_ms() when it started draining (td_backend_draining:
                                       weight 0 outside failover, or state drain / maint); 0
                                       while not draining */
    int last_weight;                /* admin thread: weight in the last snapshot built */
    int last_draining;              /* admin thread: draining in the last snapshot built */
    int last_takes;                 /* admin thread: took new requests in the last snapshot
                                       built (weight above 0 and state ready) */
    _Atomic int64_t weight_up_ms;   /* td_now_ms() when it last started taking new requests in
                                       a new snapshot (weight from 0 to above 0, or state back to
                                       ready; 0: never); a slow start begins there */
    int built;                      /* admin thread: 1 once a snapshot held it */
    /* Requests carrying a valid sticky cookie for this backend, per second, over the last
     * TD_PIN_WINDOW seconds (a ring indexed by second). */
    _Atomic uint32_t pin_count[TD_PIN_WINDOW];
    _Atomic int64_t pin_second[TD_PIN_WINDOW];
    /* Requests answered for this backend (as `requests` counts them), per second, over the last
     * TD_PIN_WINDOW seconds: its actual share of the traffic (td_registry_answered_recent). */
    _Atomic uint32_t answered_count[TD_PIN_WINDOW];
    _Atomic int64_t answered_second[TD_PIN_WINDOW];
    struct td_backend_stats_s *next; /* registry list; owned by the registry */
} td_backend_stats_t;

/* td's own gateway errors for requests no backend was chosen for (no backend up, no routing
 * configuration); kept for the life of the process. */
typedef struct td_local_stats_s {
    _Atomic uint64_t local[TD_NLOCAL]; /* 502, 503, 504 */
    _Atomic int64_t last_5xx_ms;       /* td_now_ms() of the last one; 0 none */
} td_local_stats_t;

#endif
