/* Request queues (max_conns): a FIFO per backend per worker of the requests that found every
 * server of their backend at its limit. The worker owns the queue; the exchange pushes and removes
 * its own entry, and the worker dispatches heads when a slot frees. Each push and removal also
 * updates the backend's shared `queued` count (summed over workers), which tells a worker that
 * frees a slot whether anyone waits, and the state API the length. One thread per queue. */
#ifndef TD_QUEUE_H
#define TD_QUEUE_H

#include "td/queue-t.h"

/* Appends `l` (not queued) to the list of backend `b` in `q` (created on first use), at
 * `now_ms`. Returns 0, or TD_ENOMEM (nothing queued then). */
int td_queue_push(td_queue_t *q, td_backend_stats_t *b, td_queue_link_t *l, int64_t now_ms);

/* Takes `l` out of its list, wherever it is in it; nothing when it is not queued. */
void td_queue_remove(td_queue_t *q, td_queue_link_t *l);

/* The number of requests waiting in `q` for backend `b`. */
size_t td_queue_waiting(const td_queue_t *q, const td_backend_stats_t *b);

/* Frees the lists (which must be empty: the requests went with their clients). */
void td_queue_free(td_queue_t *q);

#endif
