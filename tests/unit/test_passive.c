/* Passive detection: failures in a row eject a server, ejections double up to max_eject_ms, the
 * last server up is never ejected (failover backups count as somewhere to go), a good response
 * starts the run again, and the sweep gives each ejection's end its "up" event once. */
#include "td/passive.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "t.h"
#include "td/config.h"
#include "td/events.h"
#include "td/log.h"
#include "td/registry.h"
#include "td/snapshot.h"

/* A snapshot of: backends `prefix`-blue (weight wa, servers 127.0.0.1:2 and :3 when two is set,
 * else :2 only) and `prefix`-green (weight wb, 127.0.0.1:4), with `method` and passive settings
 * failures / eject_ms / max_eject_ms. Each test has its own prefix, so its own registry objects. */
static td_snapshot_t *snap(const char *prefix, const char *method, int wa, int wb, int two,
                           int failures, int eject_ms, int max_eject_ms) {
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"listeners\": [{\"address\": \"127.0.0.1:1\"}],"
             " \"routing\": {\"method\": \"%s\"},"
             " \"passive\": {\"failures\": %d, \"eject_ms\": %d, \"max_eject_ms\": %d},"
             " \"backends\": ["
             "  {\"name\": \"%s-blue\", \"weight\": %d, \"servers\": [{\"address\": "
             "\"127.0.0.1:2\"}%s]},"
             "  {\"name\": \"%s-green\", \"weight\": %d, \"servers\": [{\"address\": "
             "\"127.0.0.1:4\"}]}]}",
             method, failures, eject_ms, max_eject_ms, prefix, wa,
             two ? ", {\"address\": \"127.0.0.1:3\"}" : "", prefix, wb);
    td_config_t *cfg = td_config_parse(json, strlen(json), "t.json", stderr);
    T_CHECK(cfg != NULL);
    if (!cfg)
        return NULL;
    char err[256];
    td_snapshot_t *s = td_snapshot_build(cfg, 1, err, sizeof(err));
    T_CHECK(s != NULL);
    return s;
}

static td_server_stats_t *server(td_snapshot_t *s, size_t b, size_t i) {
    return s->backends[b].servers[i].st;
}

/* The number of events recorded so far, and the message of the last one ("" when none). */
static size_t events(char *last, size_t cap) {
    json_t *a = td_events_json();
    size_t n = json_array_size(a);
    const char *m =
        n ? json_string_value(json_object_get(json_array_get(a, n - 1), "message")) : "";
    snprintf(last, cap, "%s", m ? m : "");
    json_decref(a);
    return n;
}

static void test_ejects_after_failures_in_a_row(void) {
    td_snapshot_t *s = snap("pa", "round_robin", 100, 100, 0, 3, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *st = server(s, 0, 0);
    T_EQ_INT(td_passive_failure(s, st, 5000), 0);
    T_EQ_INT(td_passive_failure(s, st, 5000), 0);
    T_CHECK(td_server_is_up(st, 5000));
    T_EQ_INT(atomic_load(&st->consecutive_failures), 2);
    /* The third in a row ejects it for eject_ms: down until 6000 exactly. */
    T_EQ_INT(td_passive_failure(s, st, 5000), 1);
    T_EQ_INT(atomic_load(&st->down_until_ms), 6000);
    T_EQ_INT(td_server_is_up(st, 5999), 0);
    T_EQ_INT(td_server_is_up(st, 6000), 1);
    T_EQ_INT(atomic_load(&st->failures), 3);
    T_EQ_INT(atomic_load(&st->consecutive_failures), 0);
    T_EQ_INT(atomic_load(&st->ejections), 1);
    T_EQ_INT(atomic_load(&st->ejected), 1);
    /* Without an active check the verdict stays up: only the ejection holds it off. */
    T_EQ_INT(atomic_load(&st->health_up), 1);
    T_EQ_INT(atomic_load(&st->recheck), 0);
    char last[512];
    events(last, sizeof(last));
    T_EQ_STR(last, "server 127.0.0.1:2 (pa-blue) is down (passive: ejected for 1000 ms after 3 "
                   "failures in a row)");
    /* Failures while it is ejected count, but neither eject it again nor lengthen the ejection. */
    T_EQ_INT(td_passive_failure(s, st, 5500), 0);
    T_EQ_INT(td_passive_failure(s, st, 5500), 0);
    T_EQ_INT(td_passive_failure(s, st, 5500), 0);
    T_EQ_INT(atomic_load(&st->down_until_ms), 6000);
    T_EQ_INT(atomic_load(&st->ejections), 1);
    T_EQ_INT(atomic_load(&st->failures), 6);
    td_snapshot_release(s);
}

static void test_ejection_doubles_up_to_max(void) {
    td_snapshot_t *s = snap("pd", "round_robin", 100, 100, 0, 1, 1000, 5000);
    if (!s)
        return;
    td_server_stats_t *st = server(s, 0, 0);
    /* Each failure comes as the previous ejection ends: 1000, 2000, 4000, then capped at 5000. */
    const int64_t want[] = {1000, 2000, 4000, 5000, 5000};
    int64_t now = 10000;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        T_EQ_INT(td_passive_failure(s, st, now), 1);
        T_EQ_INT(atomic_load(&st->down_until_ms) - now, want[i]);
        T_EQ_INT(atomic_load(&st->ejections), (int)i + 1);
        now = atomic_load(&st->down_until_ms);
    }
    td_snapshot_release(s);

    /* A max_eject_ms below eject_ms caps the first ejection too. */
    s = snap("pm", "round_robin", 100, 100, 0, 1, 1000, 300);
    if (!s)
        return;
    T_EQ_INT(td_passive_failure(s, server(s, 0, 0), 100), 1);
    T_EQ_INT(atomic_load(&server(s, 0, 0)->down_until_ms), 400);
    td_snapshot_release(s);
}

static void test_success_starts_the_run_again(void) {
    td_snapshot_t *s = snap("ps", "round_robin", 100, 100, 0, 3, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *st = server(s, 0, 0);
    T_EQ_INT(td_passive_failure(s, st, 1000), 0);
    T_EQ_INT(td_passive_failure(s, st, 1000), 0);
    td_passive_success(st);
    T_EQ_INT(atomic_load(&st->consecutive_failures), 0);
    /* Two more are not three in a row. */
    T_EQ_INT(td_passive_failure(s, st, 1000), 0);
    T_EQ_INT(td_passive_failure(s, st, 1000), 0);
    T_EQ_INT(td_passive_failure(s, st, 1000), 1);
    T_EQ_INT(atomic_load(&st->failures), 5);
    /* That ejection ended long before td_now_ms(): a success forgets it, so the next ejection
     * lasts eject_ms again instead of twice that. */
    td_passive_success(st);
    T_EQ_INT(atomic_load(&st->ejections), 0);
    for (int i = 0; i < 3; i++)
        td_passive_failure(s, st, 3000);
    T_EQ_INT(atomic_load(&st->down_until_ms), 4000);
    td_snapshot_release(s);

    /* A success while the ejection still runs (by td_now_ms()) keeps the count: a server that
     * fails again right after its ejection is ejected for longer. */
    s = snap("pt", "round_robin", 100, 100, 0, 1, 600000, 6000000);
    if (!s)
        return;
    st = server(s, 0, 0);
    int64_t now = td_now_ms();
    T_EQ_INT(td_passive_failure(s, st, now), 1);
    td_passive_success(st);
    T_EQ_INT(atomic_load(&st->ejections), 1);
    T_EQ_INT(td_passive_failure(s, st, now + 600000), 1);
    T_EQ_INT(atomic_load(&st->down_until_ms), now + 600000 + 1200000);
    td_snapshot_release(s);
}

static void test_never_ejects_the_last_server_up(void) {
    /* Two servers in blue, green at weight 0 (draining, not somewhere to go in round robin). */
    td_snapshot_t *s = snap("pl", "round_robin", 100, 0, 1, 1, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *a = server(s, 0, 0), *b = server(s, 0, 1);
    T_EQ_INT(td_passive_failure(s, a, 1000), 1);
    /* a is ejected: b is the last one up, and keeps serving whatever it does. */
    T_EQ_INT(td_passive_failure(s, b, 1000), 0);
    T_EQ_INT(td_passive_failure(s, b, 1000), 0);
    T_CHECK(td_server_is_up(b, 1000));
    T_EQ_INT(atomic_load(&b->ejections), 0);
    T_EQ_INT(atomic_load(&b->failures), 2);
    /* Once a is back, b's next failure ejects it (its run went on meanwhile). */
    T_EQ_INT(td_passive_failure(s, b, 2000), 1);
    T_EQ_INT(atomic_load(&b->down_until_ms), 3000);
    /* A server down by its active check is not somewhere to go either. */
    atomic_store(&a->health_up, 0);
    T_EQ_INT(td_passive_failure(s, b, 3000), 0);
    T_CHECK(td_server_is_up(b, 3000));
    td_snapshot_release(s);

    /* With green at weight above 0, its server counts. */
    s = snap("pg", "round_robin", 100, 50, 0, 1, 1000, 300000);
    if (!s)
        return;
    T_EQ_INT(td_passive_failure(s, server(s, 0, 0), 1000), 1);
    T_EQ_INT(td_passive_failure(s, server(s, 1, 0), 1000), 0);
    td_snapshot_release(s);
}

static void test_backups_count_in_failover(void) {
    /* Failover, blue primary with one server, green a weight-0 backup. */
    td_snapshot_t *s = snap("pf", "failover", 100, 0, 0, 1, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *blue = server(s, 0, 0), *green = server(s, 1, 0);
    T_EQ_INT(td_passive_failure(s, blue, 1000), 1);
    /* Now the backup is the last one up: never ejected. */
    T_EQ_INT(td_passive_failure(s, green, 1000), 0);
    T_CHECK(td_server_is_up(green, 1000));
    /* When blue is back, the backup can be ejected too. */
    T_EQ_INT(td_passive_failure(s, green, 2000), 1);
    td_snapshot_release(s);
}

static void test_checked_server_comes_back_through_its_check(void) {
    td_snapshot_t *s = snap("pc", "round_robin", 100, 100, 0, 1, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *st = server(s, 0, 0);
    st->checked = 1;
    T_EQ_INT(td_passive_failure(s, st, 1000), 1);
    /* Its check must pass `rise` times anew: down after the ejection too, until it does. */
    T_EQ_INT(atomic_load(&st->recheck), 1);
    T_EQ_INT(atomic_load(&st->health_up), 0);
    T_EQ_INT(td_server_is_up(st, 5000), 0);
    /* The sweep leaves its "up" to the check. */
    td_passive_sweep(s, 5000);
    T_EQ_INT(atomic_load(&st->ejected), 1);
    td_snapshot_release(s);
}

static void test_sweep_reports_each_ejection_end_once(void) {
    td_snapshot_t *s = snap("pw", "round_robin", 100, 100, 0, 1, 1000, 300000);
    if (!s)
        return;
    td_server_stats_t *st = server(s, 0, 0);
    T_EQ_INT(td_passive_failure(s, st, 1000), 1);
    char last[512];
    size_t n = events(last, sizeof(last));
    /* Still ejected: nothing to say. */
    td_passive_sweep(s, 1999);
    T_EQ_INT(atomic_load(&st->ejected), 1);
    T_EQ_INT(events(last, sizeof(last)), n);
    /* Over: one "up" event, then nothing more. */
    td_passive_sweep(s, 2000);
    T_EQ_INT(atomic_load(&st->ejected), 0);
    T_EQ_INT(events(last, sizeof(last)), n + 1);
    T_EQ_STR(last, "server 127.0.0.1:2 (pw-blue) is up (passive ejection over)");
    td_passive_sweep(s, 3000);
    T_EQ_INT(events(last, sizeof(last)), n + 1);
    td_snapshot_release(s);
}

int main(void) {
    test_ejects_after_failures_in_a_row();
    test_ejection_doubles_up_to_max();
    test_success_starts_the_run_again();
    test_never_ejects_the_last_server_up();
    test_backups_count_in_failover();
    test_checked_server_comes_back_through_its_check();
    test_sweep_reports_each_ejection_end_once();
    return t_done("test_passive");
}
