/* Worker threads (worker.c): what the layers below ask of their worker: the newest snapshot,
 * the rate-limited log of td's own resource errors. */
#ifndef TD_WORKER_H
#define TD_WORKER_H

#include "td/proxy-t.h"

void td_worker_refresh(worker_t *w);

/* Logs a local resource error at most once a second per worker (under fd exhaustion every
 * request would log one), with the count of those not logged. */
void td_worker_local_error_log(worker_t *w, const char *what);

#endif
