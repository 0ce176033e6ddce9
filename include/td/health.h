/* Active health checks: each server of the running snapshot (each address of a host name) is probed
 * every interval_ms (TCP connect, a TLS handshake, an HTTP request whose status must match
 * expect_status, or a gRPC Health/Check call over HTTP/2 that must answer SERVING), and
 * its verdict in the registry (td_server_stats_t.health_up) turns down after `fall` consecutive
 * failures and up after `rise` consecutive successes (HAProxy's rise/fall). Runs on the main
 * thread's loop. */
#ifndef TD_HEALTH_H
#define TD_HEALTH_H

#include <uv.h>

#include "td/config-t.h"
#include "td/registry-t.h"
#include "td/snapshot-t.h"

/* Makes the set of checks match the servers of snapshot `s` (borrowed; its config's health
 * settings; one check per address, so each address of a host name has its own, and an address
 * the name no longer has stops being checked): servers still present keep their checker, counters
 * and verdict (a reload never makes a dead server look healthy); new servers start up, or down when
 * default_down is set, until their first rise/fall; removed servers stop being checked. Without a
 * health_check section nothing is probed and every server counts as up (passive detection only).
 * The first call also starts a once-a-second sweep that reports passive ejections ending on
 * servers without checks (td_passive_sweep). Returns 0 or TD_ENOMEM. */
int td_health_sync(uv_loop_t *loop, const td_snapshot_t *s);

/* The last check's outcome for a server ("200 OK", "connect: connection refused", ...), or "" when
 * it is not checked. Borrowed; main thread only. */
const char *td_health_last(const td_server_stats_t *st);

/* The checks in a row of server `st`'s checker: passes (counting toward rise) in *ok_run and
 * failures (toward fall) in *fail_run. Returns 1, or 0 when the server is not checked. */
int td_health_runs(const td_server_stats_t *st, int *ok_run, int *fail_run);

/* Sets them (the counts an upgrade hands over, after td_health_sync). Returns 1, or 0 when the
 * server is not checked. Main thread. */
int td_health_set_runs(const td_server_stats_t *st, int ok_run, int fail_run);

/* Stops every check (at shutdown). */
void td_health_stop(void);

#endif
