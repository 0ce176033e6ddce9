/* Timeout queues: per kind of timeout, FIFO lists of deadlines (h2o's timer wheel and HAProxy's
 * timer trees serve the same end). With one timeout value per list, the entry armed last expires
 * last, so appending keeps each list sorted and the clock tick pops only expired heads: idle
 * connections cost nothing per tick. Single-threaded: one set of queues per loop. */
#ifndef TD_TIMEOUT_H
#define TD_TIMEOUT_H

#include "td/timeout-t.h"

/* The owner of an embedded entry: TD_CONTAINER_OF(t, client_t, head_timeout). */
#define TD_CONTAINER_OF(ptr, type, field) ((type *)(void *)((char *)(ptr)-offsetof(type, field)))

/* Empties a queue. */
void td_timeout_queue_init(td_timeout_queue_t *q);

/* Arms `t` (embedded, not armed yet or armed anywhere: it is moved) to expire `ms` after `now`
 * (both ms on the loop's clock): appended to the list of that value. When every list holds
 * another value (more than TD_TIMEOUT_LISTS values alive after reloads), it is inserted in
 * order into the list of the nearest value, walking from its tail: still sound, O(1) when
 * deadlines keep coming in order. */
void td_timeout_arm(td_timeout_queue_t *q, td_timeout_t *t, int64_t now, int ms);

/* Disarms `t`; nothing when it is not armed. */
void td_timeout_stop(td_timeout_t *t);

static inline int td_timeout_armed(const td_timeout_t *t) {
    return t->list != NULL;
}

/* Takes one entry whose deadline is at or before `now` out of the queue (disarmed) and returns
 * it, or NULL when none has expired. Call until NULL; the entry's owner may re-arm it or close
 * other owners meanwhile. */
td_timeout_t *td_timeout_expired(td_timeout_queue_t *q, int64_t now);

#endif
