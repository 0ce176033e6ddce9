/* td's own readiness, for whatever sends it traffic (DNS, keepalived, a cloud load balancer):
 * GET /readyz answers 200 only while td serves with a current state. The main thread moves the
 * phase; the admin API and /metrics read it. */
#ifndef TD_READY_H
#define TD_READY_H

#include <stddef.h>
#include <stdint.h>

#include "td/ready-t.h"

/* Moves to `phase`. For TD_READY_GRACE, `until_ms` is the td_now_ms() at which the grace period
 * ends (else ignored). Any thread. */
void td_ready_set(td_ready_phase_t phase, int64_t until_ms);

/* The phase now. */
td_ready_phase_t td_ready_phase(void);

/* A reason to be out of service while serving (`reason` copied, e.g. "cut off from the cluster
 * store: http://127.0.0.1:2379: Connection refused"), or NULL / "" to clear it: td_ready_check
 * then answers 0 with that reason in the serving phase. Any thread. */
void td_ready_cut_off(const char *reason);

/* 1 when td is ready at `now_ms` (td_now_ms()), else 0 with why not, for people, in
 * reason[n] ("starting", "stopping: grace period, N ms left", "stopping: draining"); reason is
 * "" when ready. Any thread. */
int td_ready_check(int64_t now_ms, char *reason, size_t n);

#endif
