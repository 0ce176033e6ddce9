/* Types of the timeout queues: deadlines kept in FIFO lists, one list per timeout value, so that
 * arming, re-arming and stopping cost O(1) and a clock tick looks only at expired entries. */
#ifndef TD_TIMEOUT_T_H
#define TD_TIMEOUT_T_H

#include <stddef.h>
#include <stdint.h>

/* Distinct timeout values one queue keeps in lists of their own: a config reload that changes a
 * timeout opens a second list while the entries armed before expire in the first. */
#define TD_TIMEOUT_LISTS 4

typedef struct td_timeout_s td_timeout_t;
typedef struct td_timeout_list_s td_timeout_list_t;

/* One deadline, embedded in its owner (a connection), armed in at most one list. */
struct td_timeout_s {
    td_timeout_t *prev, *next; /* borrowed: neighbours in the list; NULL when not armed */
    td_timeout_list_t *list;   /* borrowed: the list it is in, or NULL */
    int64_t at;                /* ms on the loop's clock */
};

/* Entries armed with the same timeout `ms`: appending keeps them sorted by deadline. */
struct td_timeout_list_s {
    td_timeout_t head; /* sentinel of a circular list */
    int ms;            /* the timeout of its entries; meaningful while it holds any */
    size_t count;
};

/* The deadlines of one kind (keep-alive idle, request head, ...) of one loop. */
typedef struct td_timeout_queue_s {
    td_timeout_list_t lists[TD_TIMEOUT_LISTS];
} td_timeout_queue_t;

#endif
