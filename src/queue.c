/* Request queues: a FIFO per backend per worker of requests waiting for a max_conns slot. */
#include "td/queue.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "td/common-t.h"

static td_queue_list_t *find(const td_queue_t *q, const td_backend_stats_t *b) {
    for (td_queue_list_t *l = q->lists; l; l = l->next)
        if (l->key == b)
            return l;
    return NULL;
}

int td_queue_push(td_queue_t *q, td_backend_stats_t *b, td_queue_link_t *l, int64_t now_ms) {
    td_queue_list_t *list = find(q, b);
    if (!list) {
        list = calloc(1, sizeof(*list));
        if (!list)
            return TD_ENOMEM;
        list->key = b;
        list->next = q->lists;
        q->lists = list;
    }
    l->list = list;
    l->since_ms = now_ms;
    l->next = NULL;
    l->prev = list->tail;
    if (list->tail)
        list->tail->next = l;
    else
        list->head = l;
    list->tail = l;
    list->count++;
    q->count++;
    atomic_fetch_add_explicit(&b->queued, 1, memory_order_relaxed);
    return 0;
}

void td_queue_remove(td_queue_t *q, td_queue_link_t *l) {
    td_queue_list_t *list = l->list;
    if (!list)
        return;
    if (l->prev)
        l->prev->next = l->next;
    else
        list->head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    else
        list->tail = l->prev;
    l->prev = l->next = NULL;
    l->list = NULL;
    list->count--;
    q->count--;
    atomic_fetch_sub_explicit(&list->key->queued, 1, memory_order_relaxed);
}

size_t td_queue_waiting(const td_queue_t *q, const td_backend_stats_t *b) {
    const td_queue_list_t *l = find(q, b);
    return l ? l->count : 0;
}

void td_queue_free(td_queue_t *q) {
    for (td_queue_list_t *l = q->lists, *next; l; l = next) {
        next = l->next;
        free(l);
    }
    q->lists = NULL;
    q->count = 0;
}
