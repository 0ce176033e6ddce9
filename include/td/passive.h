/* Passive detection (Envoy's outlier detection): servers that fail requests in a row are ejected
 * for a while, without ever taking out the last server up. State lives in the registry's server
 * objects; the settings are the snapshot's config "passive" section. */
#ifndef TD_PASSIVE_H
#define TD_PASSIVE_H

#include <stdint.h>

#include "td/snapshot-t.h"

/* Records a connect error, reset or 5xx of a server, with the snapshot's "passive" settings.
 * After `failures` in a row the server is ejected for eject_ms, doubled for each ejection in a
 * row up to max_eject_ms; a server with active checks then also needs them to pass again
 * (`rise`). Never ejects the last server that is up among the backends with weight above 0 (in
 * failover: among all backends, the backups included): it keeps serving, and the log says so.
 * An ejection is a "down" health event for the server.
 * Returns 1 when this failure ejected the server, 0 otherwise. Any thread. */
int td_passive_failure(const td_snapshot_t *s, td_server_stats_t *st, int64_t now_ms);

/* Main thread, about every second: a passive ejection that ended without an active check
 * (which would say so itself) gets its "up" health event, so every "down" has its "up". */
void td_passive_sweep(const td_snapshot_t *s, int64_t now_ms);

/* Records a good response: the failure run starts again, and so does the ejection count once
 * the last ejection is over (by td_now_ms()). */
void td_passive_success(td_server_stats_t *st);

#endif
