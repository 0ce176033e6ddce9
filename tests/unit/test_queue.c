/* The request queues (max_conns): first in first out per backend, removal from anywhere, the
 * backend's shared `queued` count, one list per backend. */
#include "td/queue.h"

#include <stdatomic.h>
#include <stddef.h>

#include "t.h"

typedef struct req_s {
    int id;
    td_queue_link_t link;
} req_t;

static int head_id(const td_queue_list_t *l) {
    return l && l->head ? ((req_t *)(void *)((char *)l->head - offsetof(req_t, link)))->id : -1;
}

static void test_fifo_and_remove_anywhere(void) {
    td_queue_t q = {0};
    td_backend_stats_t blue = {.name = "blue"}, green = {.name = "green"};
    req_t r[5] = {{0, {0}}, {1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}};
    for (int i = 0; i < 4; i++)
        T_EQ_INT(td_queue_push(&q, &blue, &r[i].link, 100 + i), 0);
    T_EQ_INT(td_queue_push(&q, &green, &r[4].link, 200), 0);
    T_EQ_INT(q.count, 5);
    T_EQ_INT(atomic_load(&blue.queued), 4);
    T_EQ_INT(atomic_load(&green.queued), 1);
    T_EQ_INT(td_queue_waiting(&q, &blue), 4);
    T_EQ_INT(td_queue_waiting(&q, &green), 1);
    T_EQ_INT(r[2].link.since_ms, 102);
    td_queue_list_t *lb = r[0].link.list;
    T_CHECK(lb && lb->key == &blue && r[4].link.list != lb);
    T_EQ_INT(head_id(lb), 0);
    /* Out of the middle (a client gone), then the head (dispatched), then the tail. */
    td_queue_remove(&q, &r[2].link);
    T_CHECK(r[2].link.list == NULL);
    td_queue_remove(&q, &r[2].link); /* not queued: nothing */
    T_EQ_INT(td_queue_waiting(&q, &blue), 3);
    td_queue_remove(&q, &r[0].link);
    T_EQ_INT(head_id(lb), 1);
    T_CHECK(lb->head->next == &r[3].link && lb->tail == &r[3].link);
    td_queue_remove(&q, &r[3].link);
    T_CHECK(lb->head == &r[1].link && lb->tail == &r[1].link);
    /* Pushed again: to the tail, behind those waiting. */
    T_EQ_INT(td_queue_push(&q, &blue, &r[0].link, 300), 0);
    T_EQ_INT(head_id(lb), 1);
    T_CHECK(lb->tail == &r[0].link);
    td_queue_remove(&q, &r[1].link);
    td_queue_remove(&q, &r[0].link);
    td_queue_remove(&q, &r[4].link);
    T_CHECK(lb->head == NULL && lb->tail == NULL);
    T_EQ_INT(q.count, 0);
    T_EQ_INT(atomic_load(&blue.queued), 0);
    T_EQ_INT(atomic_load(&green.queued), 0);
    /* The list stays for the next waiter: one per backend. */
    T_EQ_INT(td_queue_push(&q, &blue, &r[1].link, 400), 0);
    T_CHECK(r[1].link.list == lb);
    td_queue_remove(&q, &r[1].link);
    td_queue_free(&q);
    T_CHECK(q.lists == NULL);
}

int main(void) {
    test_fifo_and_remove_anywhere();
    return t_done("test_queue");
}
