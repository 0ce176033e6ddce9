/* Worker threads: snapshot adoption, buffer cache, resource-error log (worker.c). */
#ifndef TD_WORKER_H
#define TD_WORKER_H

#include "td/proxy-t.h"

/* Client connections open now, across workers (td_proxy_connections). */
extern _Atomic int64_t td_worker_open_clients;

/* Client buffers (CBUF_SIZE) come from a small per-worker cache: an idle keep-alive connection
 * holds none, and a busy one does not cost a malloc/free pair per request. */
char *td_worker_buf_get(worker_t *w);

void td_worker_buf_put(worker_t *w, char *buf);

void td_worker_refresh(worker_t *w);

/* Logs a local resource error at most once a second per worker (under fd exhaustion every
 * request would log one), with the count of those not logged. */
void td_worker_local_error_log(worker_t *w, const char *what);

#endif
