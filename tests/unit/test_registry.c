/* The registry: one object per server and backend, health and ejection as "up", td's own
 * gateway errors, the latency histogram, the pin window and the counter helpers. */
#include "td/registry.h"

#include <stdio.h>
#include <string.h>

#include "t.h"

static void test_one_object_per_key(void) {
    td_server_stats_t *a = td_registry_server("rk-blue", "127.0.0.1:2");
    td_server_stats_t *b = td_registry_server("rk-blue", "127.0.0.1:3");
    td_server_stats_t *c = td_registry_server("rk-green", "127.0.0.1:2");
    T_CHECK(a && b && c);
    if (!a || !b || !c)
        return;
    T_CHECK(a != b && a != c && b != c);
    T_CHECK(td_registry_server("rk-blue", "127.0.0.1:2") == a);
    T_EQ_STR(a->backend, "rk-blue");
    T_EQ_STR(a->address, "127.0.0.1:2");
    /* Servers are listed in creation order. */
    T_CHECK(a->next == b && b->next == c);
    /* A new server is up by its (absent) check, with nothing counted. */
    T_EQ_INT(atomic_load(&a->health_up), 1);
    T_EQ_INT(atomic_load(&a->requests), 0);
    T_EQ_INT(a->checked, 0);

    td_backend_stats_t *blue = td_registry_backend("rk-blue");
    T_CHECK(blue != NULL && td_registry_backend("rk-blue") == blue);
    T_CHECK(td_registry_backend("rk-green") != blue);
    if (blue)
        T_EQ_STR(blue->name, "rk-blue");

    /* A name longer than the field is cut to it. */
    char longname[200];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    td_backend_stats_t *l = td_registry_backend(longname);
    T_CHECK(l != NULL);
    if (l)
        T_EQ_INT(strlen(l->name), TD_NAME_MAX - 1);

    T_CHECK(td_registry_local() != NULL && td_registry_local() == td_registry_local());
}

static void test_up_is_check_and_no_ejection(void) {
    td_server_stats_t *st = td_registry_server("ru-blue", "127.0.0.1:2");
    if (!st)
        return;
    /* Up from the start. */
    T_EQ_INT(td_server_is_up(st, 0), 1);
    T_EQ_INT(td_server_up_since(st, 0), 0);
    /* Ejected until 5000: down before, up since 5000 at and after. */
    atomic_store(&st->down_until_ms, 5000);
    T_EQ_INT(td_server_is_up(st, 4999), 0);
    T_EQ_INT(td_server_up_since(st, 4999), -1);
    T_EQ_INT(td_server_is_up(st, 5000), 1);
    T_EQ_INT(td_server_up_since(st, 9000), 5000);
    /* Its check turned it up later than that: up since then. */
    atomic_store(&st->up_since_ms, 7000);
    T_EQ_INT(td_server_up_since(st, 9000), 7000);
    /* Down by its check: down whatever the ejection says. */
    atomic_store(&st->health_up, 0);
    T_EQ_INT(td_server_is_up(st, 9000), 0);
    T_EQ_INT(td_server_up_since(st, 9000), -1);
}

static void test_local_responses_counted_under_backend_or_td(void) {
    td_backend_stats_t *b = td_registry_backend("lr-blue");
    td_router_count_local(b, 502, 10);
    td_router_count_local(b, 504, 11);
    td_router_count_local(NULL, 503, 12);
    td_router_count_local(NULL, 501, 13); /* not a gateway error: not counted */
    T_EQ_INT(atomic_load(&b->local[0]), 1);
    T_EQ_INT(atomic_load(&b->local[1]), 0);
    T_EQ_INT(atomic_load(&b->local[2]), 1);
    T_EQ_INT(atomic_load(&b->last_5xx_ms), 11);
    T_EQ_INT(atomic_load(&td_registry_local()->local[1]), 1);
    T_EQ_INT(atomic_load(&td_registry_local()->last_5xx_ms), 12);
    /* 0 means "none": a 5xx at time 0 is recorded as 1. */
    td_router_count_local(b, 503, 0);
    T_EQ_INT(atomic_load(&b->last_5xx_ms), 1);
    T_EQ_INT(atomic_load(&b->local[1]), 1);
    /* The response class is the caller's to count. */
    T_EQ_INT(atomic_load(&b->responses[4]), 0);
    T_EQ_INT(atomic_load(&b->requests), 0);
}

static void test_latency_buckets(void) {
    td_backend_stats_t *b = td_registry_backend("rl-blue");
    /* Upper bounds are inclusive: 1 ms is in the first bucket, 2 in the second. */
    const int64_t ms[] = {-5, 0, 1, 2, 3, 10, 11, 10000, 10001, 3600000};
    const int bucket[] = {0, 0, 0, 1, 2, 3, 4, 12, 13, 13};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
        td_router_observe(b, ms[i]);
    uint64_t want[TD_LAT_BUCKETS] = {0};
    for (size_t i = 0; i < sizeof(bucket) / sizeof(bucket[0]); i++)
        want[bucket[i]]++;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        T_EQ_INT(atomic_load(&b->latency[i]), want[i]);
    /* A negative duration adds 0 to the sum. */
    T_EQ_INT(atomic_load(&b->latency_sum_ms), 0 + 1 + 2 + 3 + 10 + 11 + 10000 + 10001 + 3600000);
    T_EQ_INT(td_lat_bounds_ms[0], 1);
    T_EQ_INT(td_lat_bounds_ms[TD_LAT_BUCKETS - 2], 10000);
}

static void test_pin_window(void) {
    td_backend_stats_t *b = td_registry_backend("rp-blue");
    T_EQ_INT(td_router_pins_recent(b, 100000), 0);
    td_router_pin_seen(b, 101000);
    td_router_pin_seen(b, 101999);
    td_router_pin_seen(b, 102000);
    T_EQ_INT(td_router_pins_recent(b, 102000), 3);
    /* Second 101 leaves the window when second 111 begins; 102 still counts. */
    T_EQ_INT(td_router_pins_recent(b, 110999), 3);
    T_EQ_INT(td_router_pins_recent(b, 111000), 1);
    T_EQ_INT(td_router_pins_recent(b, 112000), 0);
    /* Second 111 reuses 101's slot: its old count does not come back. */
    td_router_pin_seen(b, 111500);
    T_EQ_INT(td_router_pins_recent(b, 111500), 2);
    T_EQ_INT(td_router_pins_recent(b, 112000), 1);
}

static void test_counter_helpers(void) {
    const int status[] = {0, 99, 100, 101, 199, 200, 302, 404, 499, 500, 503, 599, 600, 999};
    const int cls[] = {0, 0, 0, 0, 0, 1, 2, 3, 3, 4, 4, 4, 4, 4};
    for (size_t i = 0; i < sizeof(status) / sizeof(status[0]); i++)
        T_EQ_INT(td_registry_class(status[i]), cls[i]);

    td_server_stats_t *st = td_registry_server("rc-blue", "127.0.0.1:2");
    td_backend_stats_t *b = td_registry_backend("rc-blue");
    if (!st || !b)
        return;
    td_registry_backend_begin(b);
    td_registry_server_begin(st);
    T_EQ_INT(atomic_load(&st->in_flight), 1);
    T_EQ_INT(atomic_load(&st->requests), 0); /* counted when answered, as the backend's */
    T_EQ_INT(atomic_load(&b->in_flight), 1);
    T_EQ_INT(atomic_load(&b->requests), 0); /* counted when answered */
    td_registry_server_response(st, 503);
    td_registry_backend_response(b, 503);
    T_EQ_INT(atomic_load(&st->responses[4]), 1);
    T_EQ_INT(atomic_load(&st->requests), 1);
    T_EQ_INT(atomic_load(&b->responses[4]), 1);
    T_EQ_INT(atomic_load(&b->requests), 1);
    T_EQ_INT(atomic_load(&b->last_5xx_ms), 0); /* the caller's */
    td_registry_server_end(st);
    td_registry_backend_end(b);
    T_EQ_INT(atomic_load(&st->in_flight), 0);
    T_EQ_INT(atomic_load(&b->in_flight), 0);

    td_registry_connection_open(st);
    td_registry_connection_open(st);
    td_registry_connection_close(st);
    T_EQ_INT(atomic_load(&st->active_connections), 1);
    td_registry_tunnel_open(b);
    T_EQ_INT(atomic_load(&b->tunnels), 1);
    td_registry_tunnel_close(b);
    T_EQ_INT(atomic_load(&b->tunnels), 0);
}

int main(void) {
    test_one_object_per_key();
    test_up_is_check_and_no_ejection();
    test_local_responses_counted_under_backend_or_td();
    test_latency_buckets();
    test_pin_window();
    test_counter_helpers();
    return t_done("test_registry");
}
