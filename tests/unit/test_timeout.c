/* Unit tests of the timeout queues: expiry order, re-arming, stopping, several timeout values. */
#include "td/timeout.h"

#include "t.h"

typedef struct conn_s {
    int id;
    td_timeout_t tmo;
} conn_t;

static int pop(td_timeout_queue_t *q, int64_t now) {
    td_timeout_t *t = td_timeout_expired(q, now);
    return t ? TD_CONTAINER_OF(t, conn_t, tmo)->id : -1;
}

static void test_fifo(void) {
    td_timeout_queue_t q;
    td_timeout_queue_init(&q);
    conn_t c[4] = {{0, {0}}, {1, {0}}, {2, {0}}, {3, {0}}};
    for (int i = 0; i < 4; i++)
        td_timeout_arm(&q, &c[i].tmo, 100 + i, 50);
    T_EQ_INT(pop(&q, 149), -1);
    T_EQ_INT(pop(&q, 151), 0);
    T_EQ_INT(pop(&q, 151), 1);
    T_EQ_INT(pop(&q, 151), -1);
    T_EQ_INT(td_timeout_armed(&c[0].tmo), 0);
    /* Re-arming moves to the tail; stopping takes out. */
    td_timeout_arm(&q, &c[2].tmo, 120, 50);
    td_timeout_stop(&c[3].tmo);
    td_timeout_stop(&c[3].tmo);
    T_EQ_INT(td_timeout_armed(&c[3].tmo), 0);
    T_EQ_INT(pop(&q, 160), -1);
    T_EQ_INT(pop(&q, 170), 2);
    T_EQ_INT(pop(&q, 1000), -1);
}

static void test_values(void) {
    /* A reload shortens the timeout: the new entries expire first although armed later. */
    td_timeout_queue_t q;
    td_timeout_queue_init(&q);
    conn_t c[8];
    for (int i = 0; i < 8; i++)
        c[i] = (conn_t){i, {0}};
    td_timeout_arm(&q, &c[0].tmo, 0, 1000);
    td_timeout_arm(&q, &c[1].tmo, 10, 100);
    T_EQ_INT(pop(&q, 110), 1);
    T_EQ_INT(pop(&q, 110), -1);
    T_EQ_INT(pop(&q, 1000), 0);
    /* More values than lists: still in deadline order. */
    for (int i = 0; i < 6; i++)
        td_timeout_arm(&q, &c[i].tmo, 0, 600 - 100 * i);
    for (int i = 5; i >= 0; i--) {
        T_EQ_INT(pop(&q, 600 - 100 * i - 1), -1);
        T_EQ_INT(pop(&q, 600 - 100 * i), i);
    }
    T_EQ_INT(pop(&q, 1000), -1);
    td_timeout_arm(&q, &c[6].tmo, 0, 5);
    td_timeout_arm(&q, &c[7].tmo, 0, 700);
    T_EQ_INT(pop(&q, 5), 6);
    T_EQ_INT(pop(&q, 699), -1);
    T_EQ_INT(pop(&q, 700), 7);
}

int main(void) {
    test_fifo();
    test_values();
    return t_done("test_timeout");
}
