#include "td/timeout.h"

static void list_init(td_timeout_list_t *l) {
    l->head.prev = l->head.next = &l->head;
    l->head.list = l;
    l->count = 0;
    l->ms = 0;
}

void td_timeout_queue_init(td_timeout_queue_t *q) {
    for (int i = 0; i < TD_TIMEOUT_LISTS; i++)
        list_init(&q->lists[i]);
}

void td_timeout_stop(td_timeout_t *t) {
    if (!t->list)
        return;
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->list->count--;
    t->prev = t->next = NULL;
    t->list = NULL;
}

/* The list for timeout `ms`: the one holding that value, else an empty one, else the one of the
 * nearest value. */
static td_timeout_list_t *list_for(td_timeout_queue_t *q, int ms) {
    td_timeout_list_t *empty = NULL, *near = NULL;
    long best = -1;
    for (int i = 0; i < TD_TIMEOUT_LISTS; i++) {
        td_timeout_list_t *l = &q->lists[i];
        if (!l->count) {
            if (!empty)
                empty = l;
            continue;
        }
        if (l->ms == ms)
            return l;
        long d = l->ms > ms ? (long)l->ms - ms : (long)ms - l->ms;
        if (best < 0 || d < best) {
            best = d;
            near = l;
        }
    }
    if (empty) {
        empty->ms = ms;
        return empty;
    }
    return near;
}

void td_timeout_arm(td_timeout_queue_t *q, td_timeout_t *t, int64_t now, int ms) {
    /* Re-arming with the same value (a response timeout restarted on every read) keeps the
     * list without looking for it. */
    td_timeout_list_t *l = t->list;
    if (!l || l < q->lists || l >= q->lists + TD_TIMEOUT_LISTS || l->ms != ms)
        l = NULL;
    td_timeout_stop(t);
    if (!l)
        l = list_for(q, ms);
    t->at = now + ms;
    /* From the tail: one comparison when deadlines come in order, which they do in a list of
     * one value; a list shared by several values (after many reloads) stays sorted too. */
    td_timeout_t *after = l->head.prev;
    while (after != &l->head && after->at > t->at)
        after = after->prev;
    t->prev = after;
    t->next = after->next;
    after->next->prev = t;
    after->next = t;
    t->list = l;
    l->count++;
}

td_timeout_t *td_timeout_expired(td_timeout_queue_t *q, int64_t now) {
    for (int i = 0; i < TD_TIMEOUT_LISTS; i++) {
        td_timeout_list_t *l = &q->lists[i];
        td_timeout_t *t = l->head.next;
        if (t != &l->head && t->at <= now) {
            td_timeout_stop(t);
            return t;
        }
    }
    return NULL;
}
