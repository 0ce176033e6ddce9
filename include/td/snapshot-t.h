/* Types of routing snapshots: the immutable view of backends, servers and settings that workers
 * route with, built per config version. */
#ifndef TD_SNAPSHOT_T_H
#define TD_SNAPSHOT_T_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "td/common-t.h"
#include "td/config-t.h"
#include "td/registry-t.h"
#include "td/sticky-t.h"

typedef struct td_snap_server_s {
    td_addr_t addr;   /* an address, never a name (a name's servers carry its answer's) */
    const char *name; /* borrowed from the snapshot's config: the configured "HOST:port" this
                         address was resolved from (td/resolver.h); NULL for a server configured
                         by its address */
    int weight;
    int max_conns; /* requests in flight (and tunnels) it takes at once; 0 = no limit (picks read
                      the running one, st->max_conns, which td_router_publish stores) */
    int slow_start_ms;     /* resolved: its own, else its backend's; 0 = off */
    td_server_stats_t *st; /* borrowed from the registry */
    uint8_t h2;            /* its backend's "protocol" is "h2": td/h2_client.h carries requests */
} td_snap_server_t;

struct td_tls_server_s;
struct td_tls_client_s;

typedef struct td_snap_backend_s {
    char name[TD_NAME_MAX];
    struct td_tls_client_s *tls; /* owned reference; NULL for plain HTTP to the servers */
    int weight;
    td_backend_state_t state;  /* ready / drain / maint (the backend's "state") */
    td_snap_server_t *servers; /* owned by the snapshot */
    size_t num_servers;
    size_t first_server;    /* index of servers[0] in the snapshot's flat server numbering */
    int64_t failback_ms;    /* failover: how long it must be up again before it takes back
                               traffic from a backend after it (routing.failback_ms resolved) */
    td_backend_stats_t *st; /* borrowed from the registry */
    int limited;            /* 1 when a server of it has max_conns: requests may queue for it */
    int slow_start_ms;      /* the largest slow_start_ms of its servers (0: none ramps): the
                               length of the backend's own ramp, and the router's one check */
    uint8_t h2;             /* "protocol": "h2" (TD_PROTOCOL_H2) */
} td_snap_backend_t;

/* An immutable routing snapshot: what workers read to route a request. Built by the admin thread,
 * published by an atomic swap, freed when the last holder (the publisher or an in-flight request)
 * lets go. */
typedef struct td_snapshot_s {
    _Atomic int refs;
    uint64_t version;    /* config version; grows by one with every applied change */
    td_config_t *config; /* owned: the config this snapshot was built from */
    td_method_t method;
    td_snap_backend_t *backends; /* owned */
    size_t num_backends;
    struct td_tls_server_s **listener_tls; /* owned references, one per listener (NULL: plain) */
    size_t num_servers;                    /* across all backends */
    td_sticky_key_t sticky_key;            /* signs and checks sticky cookies: the first key set by
                                              td_snapshot_set_sticky_secrets, else routing.cookie.secret,
                                              or the process's random key when none is set */
    td_sticky_key_t sticky_prev; /* also accepted when checking: the ring's second key (len 0:
                                    none) */
} td_snapshot_t;

#endif
