/* Routing snapshots: built from a config by the admin thread, published with a version number,
 * acquired by workers, freed when the last holder lets go (the version handoff). */
#ifndef TD_SNAPSHOT_H
#define TD_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "td/snapshot-t.h"

/* Builds a snapshot from `cfg` (ownership of cfg passes to the snapshot, also on failure) with
 * the given version, taking counters from the process-wide registry (created on first use) and
 * building the TLS contexts (certificates are loaded now: connections made before keep theirs).
 * Also keeps each backend's drain bookkeeping in the registry (drain_since_ms: when it started
 * draining, td_backend_draining: its weight went to 0 outside failover or its state left ready).
 * Returns the snapshot with one reference held by the caller, or NULL with a message in err[errlen]
 * (out of memory, a certificate that no longer loads). Admin thread only. */
td_snapshot_t *td_snapshot_build(td_config_t *cfg, uint64_t version, char *err, size_t errlen);

/* The sticky key ring every later td_snapshot_build uses (cluster mode: PREFIX sticky's keys,
 * newest first): secrets[0] signs new cookies, secrets[1] (if any) is still accepted; at most
 * TD_STICKY_RING are used, empty ones are skipped, each is copied (its first TD_STICKY_KEY_MAX
 * bytes). n = 0: back to the config's routing.cookie.secret, or the process key. Main thread;
 * publish a new snapshot for it to take effect. */
void td_snapshot_set_sticky_secrets(const char *const *secrets, size_t n);

/* Takes and drops a reference. The last td_snapshot_release frees the snapshot (NULL is
 * ignored). Any thread. */
void td_snapshot_retain(td_snapshot_t *s);
void td_snapshot_release(td_snapshot_t *s);

/* Makes `s` the current snapshot (the router takes over the caller's reference) and drops the
 * router's reference to the previous one. Workers see it on their next request. Its servers'
 * max_conns become the running limits in their registry objects first. */
void td_router_publish(td_snapshot_t *s);

/* Version of the current snapshot: one atomic load, for the per-request "has it changed?" test
 * (0 before the first publish). */
uint64_t td_router_version(void);

/* Returns the current snapshot with a reference for the caller, or NULL before the first
 * publish. */
td_snapshot_t *td_router_acquire(void);

#endif
