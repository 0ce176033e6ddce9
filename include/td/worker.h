/* Worker threads (worker.c). The layers below never call into it: the newest snapshot comes
 * through worker_t.snapshot, which the worker installs. */
#ifndef TD_WORKER_H
#define TD_WORKER_H

#include "td/proxy-t.h"

/* Adopts the router's newest snapshot when it published one since the worker's (one atomic load
 * when not). The worker's own: the layers below get the snapshot through worker_t.snapshot. */
void td_worker_refresh(worker_t *w);

/* Logs a local resource error at most once a second per worker (under fd exhaustion every
 * request would log one), with the count of those not logged. */
void td_worker_local_error_log(worker_t *w, const char *what);

#endif
