/* Types of the request queues: per worker, one FIFO per backend of the requests waiting because
 * every server of that backend is at its max_conns (HAProxy's backend queue). */
#ifndef TD_QUEUE_T_H
#define TD_QUEUE_T_H

#include <stddef.h>
#include <stdint.h>

#include "td/registry-t.h"

typedef struct td_queue_link_s td_queue_link_t;
typedef struct td_queue_list_s td_queue_list_t;

/* One waiting request, embedded in its owner (an exchange); in at most one list. */
struct td_queue_link_s {
    td_queue_link_t *prev, *next; /* borrowed: neighbours in the list */
    td_queue_list_t *list;        /* borrowed: the list it waits in, or NULL when not queued */
    int64_t since_ms;             /* td_now_ms() when it was queued */
};

/* The requests of one worker waiting for one backend, first in first out. */
struct td_queue_list_s {
    td_backend_stats_t *key;      /* borrowed (registry): the backend, which outlives snapshots */
    td_queue_link_t *head, *tail; /* borrowed */
    size_t count;
    td_queue_list_t *next; /* owned: the worker's next list */
};

/* A worker's queues: one list per backend that ever had a waiter (kept: a handful). */
typedef struct td_queue_s {
    td_queue_list_t *lists; /* owned */
    size_t count;           /* requests waiting in all lists */
} td_queue_t;

#endif
