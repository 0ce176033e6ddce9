/* td's etcd client against a real etcd: etcd_client_test [--user U --password P] [--auth-only]
 * [--tls CA CERT KEY] [--ttl-wait-ms N] [--all-dead] [--watch-until-end] ENDPOINT...; and with
 * --fetch URL, fetch.c beneath it against a demo backend. Prints "ok NAME" per check passed and
 * "FAIL NAME: why" per check failed; exits 1 when one failed. tests/e2e/test_etcd_client.py starts
 * etcd and runs it. Each step runs td's loop until its callback came (bounded: 20 s a step). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "td/etcd.h"
#include "td/fetch.h"

static uv_loop_t *loop;
static uv_timer_t guard; /* keeps the loop waiting while the client's handles are unreferenced */
static int failed;
static char prefix[64];

static void check(int cond, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void check(int cond, const char *name, const char *fmt, ...) {
    if (cond) {
        printf("ok %s\n", name);
    } else {
        va_list ap;
        va_start(ap, fmt);
        printf("FAIL %s: ", name);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        failed = 1;
    }
    fflush(stdout);
}

static void on_guard(uv_timer_t *t) {
    (void)t;
}

/* Runs the loop until *done or 20 s passed. Returns *done. */
static int run_until(const int *done) {
    uint64_t end = uv_now(loop) + 20000;
    while (!*done && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    return *done;
}

/* One call's result, copied out of the callback. */
typedef struct res_s {
    int done, ok, succeeded;
    char error[1300];
    int64_t revision, lease_id, ttl;
    size_t n;
    char keys[16][128];
    char values[16][128];
    int64_t mod[16], lease[16];
} res_t;

static void on_result(void *arg, const td_etcd_result_t *r) {
    res_t *s = arg;
    s->done = 1;
    s->ok = r->ok;
    s->succeeded = r->succeeded;
    snprintf(s->error, sizeof(s->error), "%s", r->error);
    s->revision = r->revision;
    s->lease_id = r->lease_id;
    s->ttl = r->ttl;
    s->n = r->num_kvs;
    for (size_t i = 0; i < r->num_kvs && i < 16; i++) {
        snprintf(s->keys[i], sizeof(s->keys[i]), "%.*s", (int)r->kvs[i].key_len, r->kvs[i].key);
        snprintf(s->values[i], sizeof(s->values[i]), "%s", r->kvs[i].value);
        s->mod[i] = r->kvs[i].mod_revision;
        s->lease[i] = r->kvs[i].lease;
    }
}

static char *k(const char *name) {
    static char b[4][128];
    static int i;
    i = (i + 1) % 4;
    snprintf(b[i], sizeof(b[i]), "%s%s", prefix, name);
    return b[i];
}

static res_t put(const char *key, const char *value, int64_t lease) {
    td_etcd_op_t op = {.key = key, .value = value, .value_len = strlen(value), .lease = lease};
    res_t s = {0};
    if (td_etcd_txn(NULL, 0, &op, 1, NULL, on_result, &s) == 0)
        run_until(&s.done);
    return s;
}

static res_t range(const char *key, int pfx, long limit, int desc) {
    res_t s = {0};
    if (td_etcd_range(key, pfx, limit, desc, on_result, &s) == 0)
        run_until(&s.done);
    return s;
}

/* ---- watches */

typedef struct watch_log_s {
    int created, ended, nev;
    int64_t compact;
    char error[1300];
    char ev[16][160]; /* "PUT key=value" / "DELETE key" */
} watch_log_t;

static void on_events(void *arg, int64_t revision, const td_etcd_event_t *ev, size_t n) {
    watch_log_t *w = arg;
    (void)revision;
    w->created = 1;
    for (size_t i = 0; i < n && w->nev < 16; i++, w->nev++) {
        if (ev[i].deleted)
            snprintf(w->ev[w->nev], sizeof(w->ev[0]), "DELETE %.*s", (int)ev[i].kv.key_len,
                     ev[i].kv.key);
        else
            snprintf(w->ev[w->nev], sizeof(w->ev[0]), "PUT %.*s=%s", (int)ev[i].kv.key_len,
                     ev[i].kv.key, ev[i].kv.value);
    }
}

static void on_end(void *arg, int64_t compact, const char *error) {
    watch_log_t *w = arg;
    w->ended = 1;
    w->compact = compact;
    snprintf(w->error, sizeof(w->error), "%s", error);
}

/* Runs the loop until the watch has n events or ended. */
static void watch_wait(watch_log_t *w, int n) {
    uint64_t end = uv_now(loop) + 20000;
    while (w->nev < n && !w->ended && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
}

/* ---- compaction, through fetch.c directly (the client has no call for it) */

typedef struct fetched_s {
    int done, status;
    char body[2000];
} fetched_t;

static void on_fetched(void *arg, int status, const char *error, const char *body, size_t len) {
    fetched_t *f = arg;
    (void)len;
    f->done = 1;
    f->status = status;
    snprintf(f->body, sizeof(f->body), "%s%s", body, error);
}

static int compact(const char *endpoint, int64_t revision) {
    char url[600], body[100];
    snprintf(url, sizeof(url), "%s/v3/kv/compaction", endpoint);
    snprintf(body, sizeof(body), "{\"revision\": \"%" PRId64 "\", \"physical\": true}", revision);
    fetched_t f = {0};
    td_fetch_req_t rq = {.method = "POST", .url = url, .body = body, .timeout_ms = 5000};
    if (td_fetch_start(&rq, on_fetched, NULL, &f, NULL) != 0 || !run_until(&f.done))
        return -1;
    return f.status == 200 ? 0 : -1;
}

/* ---- the checks */

static void kv_checks(void) {
    res_t a = put(k("a"), "1", 0), b = put(k("b"), "2", 0), c = put(k("c"), "3", 0);
    check(a.ok && b.ok && c.ok && c.revision > a.revision, "put via txn", "%s %s %s", a.error,
          b.error, c.error);

    res_t one = range(k("b"), 0, 0, 0);
    check(one.ok && one.n == 1 && strcmp(one.values[0], "2") == 0 && one.mod[0] == b.revision,
          "range single key", "ok %d n %zu error %s", one.ok, one.n, one.error);

    res_t all = range(prefix, 1, 0, 0);
    check(all.ok && all.n == 3 && strcmp(all.keys[0], k("a")) == 0 &&
              strcmp(all.keys[2], k("c")) == 0,
          "range prefix", "ok %d n %zu error %s", all.ok, all.n, all.error);

    res_t lim = range(prefix, 1, 2, 0);
    check(lim.ok && lim.n == 2 && strcmp(lim.keys[1], k("b")) == 0, "range limit", "n %zu", lim.n);

    res_t desc = range(prefix, 1, 1, 1);
    check(desc.ok && desc.n == 1 && strcmp(desc.keys[0], k("c")) == 0, "range descending",
          "n %zu first %s", desc.n, desc.n ? desc.keys[0] : "");

    res_t none = range(k("absent"), 0, 0, 0);
    check(none.ok && none.n == 0 && none.revision >= c.revision, "range of an absent key",
          "ok %d n %zu", none.ok, none.n);

    /* A value with a NUL and high bytes goes through base64 whole. */
    td_etcd_op_t bin = {.key = k("bin"), .value = "x\0\xff\xfe", .value_len = 4};
    res_t sb = {0};
    if (td_etcd_txn(NULL, 0, &bin, 1, NULL, on_result, &sb) == 0)
        run_until(&sb.done);
    check(sb.ok, "put bytes", "%s", sb.error);

    /* Compare-and-swap on the mod revision: holds once, then fails with the key as it is. */
    td_etcd_cmp_t cmp = {.key = k("a"), .target = TD_ETCD_MOD, .value = a.revision};
    td_etcd_op_t op = {.key = k("a"), .value = "10", .value_len = 2};
    res_t cas = {0};
    if (td_etcd_txn(&cmp, 1, &op, 1, k("a"), on_result, &cas) == 0)
        run_until(&cas.done);
    check(cas.ok && cas.succeeded && cas.n == 0, "cas that holds", "ok %d succeeded %d %s", cas.ok,
          cas.succeeded, cas.error);
    res_t lost = {0};
    if (td_etcd_txn(&cmp, 1, &op, 1, k("a"), on_result, &lost) == 0)
        run_until(&lost.done);
    check(lost.ok && !lost.succeeded && lost.n == 1 && strcmp(lost.values[0], "10") == 0 &&
              lost.mod[0] == cas.revision,
          "cas that fails returns the fail range", "ok %d succeeded %d n %zu", lost.ok,
          lost.succeeded, lost.n);

    /* Create-if-absent: CREATE == 0. */
    td_etcd_cmp_t absent = {.key = k("new"), .target = TD_ETCD_CREATE, .value = 0};
    td_etcd_op_t mk = {.key = k("new"), .value = "n", .value_len = 1};
    res_t c1 = {0}, c2 = {0};
    if (td_etcd_txn(&absent, 1, &mk, 1, k("new"), on_result, &c1) == 0)
        run_until(&c1.done);
    if (td_etcd_txn(&absent, 1, &mk, 1, k("new"), on_result, &c2) == 0)
        run_until(&c2.done);
    check(c1.ok && c1.succeeded && c2.ok && !c2.succeeded && c2.n == 1, "create if absent",
          "%d %d %d %d", c1.ok, c1.succeeded, c2.ok, c2.succeeded);

    /* Delete in a txn. */
    td_etcd_op_t del = {.del = 1, .key = k("new")};
    res_t d = {0};
    if (td_etcd_txn(NULL, 0, &del, 1, NULL, on_result, &d) == 0)
        run_until(&d.done);
    res_t gone = range(k("new"), 0, 0, 0);
    check(d.ok && gone.ok && gone.n == 0, "delete via txn", "%s", d.error);
}

static void lease_checks(void) {
    res_t g = {0};
    if (td_etcd_lease_grant(30, on_result, &g) == 0)
        run_until(&g.done);
    check(g.ok && g.lease_id != 0 && g.ttl == 30, "lease grant",
          "ok %d id %" PRId64 " ttl %" PRId64 " %s", g.ok, g.lease_id, g.ttl, g.error);
    res_t p = put(k("leased"), "x", g.lease_id);
    res_t seen = range(k("leased"), 0, 0, 0);
    check(p.ok && seen.n == 1 && seen.lease[0] == g.lease_id, "put under a lease", "%s", p.error);
    res_t ka = {0};
    if (td_etcd_lease_keepalive(g.lease_id, on_result, &ka) == 0)
        run_until(&ka.done);
    check(ka.ok && ka.ttl > 0 && ka.lease_id == g.lease_id, "lease keepalive",
          "ok %d ttl %" PRId64 " %s", ka.ok, ka.ttl, ka.error);
    res_t rv = {0};
    if (td_etcd_lease_revoke(g.lease_id, on_result, &rv) == 0)
        run_until(&rv.done);
    res_t after = range(k("leased"), 0, 0, 0);
    check(rv.ok && after.ok && after.n == 0, "a key under a revoked lease is gone",
          "revoke %d %s, n %zu", rv.ok, rv.error, after.n);
    res_t ka2 = {0};
    if (td_etcd_lease_keepalive(g.lease_id, on_result, &ka2) == 0)
        run_until(&ka2.done);
    check(ka2.ok && ka2.ttl <= 0, "keepalive of a revoked lease says it is gone",
          "ok %d ttl %" PRId64 " %s", ka2.ok, ka2.ttl, ka2.error);
    res_t bad = put(k("leased"), "x", g.lease_id);
    check(!bad.ok && strstr(bad.error, "lease not found"), "put under a revoked lease fails",
          "ok %d %s", bad.ok, bad.error);
}

static void watch_checks(const char *endpoint) {
    watch_log_t w = {0};
    td_etcd_watch_t *h = td_etcd_watch(k("w/"), 0, on_events, on_end, &w);
    uint64_t end = uv_now(loop) + 20000;
    while (h && !w.created && !w.ended && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    check(h && w.created && !w.ended, "watch created", "%s", w.error);
    res_t p1 = put(k("w/1"), "one", 0);
    put(k("other"), "not watched", 0);
    res_t p2 = put(k("w/2"), "two", 0);
    td_etcd_op_t del = {.del = 1, .key = k("w/1")};
    res_t d = {0};
    if (td_etcd_txn(NULL, 0, &del, 1, NULL, on_result, &d) == 0)
        run_until(&d.done);
    watch_wait(&w, 3);
    char e0[160], e1[160], e2[160];
    snprintf(e0, sizeof(e0), "PUT %s=one", k("w/1"));
    snprintf(e1, sizeof(e1), "PUT %s=two", k("w/2"));
    snprintf(e2, sizeof(e2), "DELETE %s", k("w/1"));
    check(w.nev == 3 && strcmp(w.ev[0], e0) == 0 && strcmp(w.ev[1], e1) == 0 &&
              strcmp(w.ev[2], e2) == 0,
          "watch sees PUT and DELETE in order", "%d events: %s | %s | %s", w.nev, w.ev[0], w.ev[1],
          w.ev[2]);
    if (!w.ended)
        td_etcd_watch_cancel(h);

    /* From a past revision: the same events again. */
    watch_log_t past = {0};
    h = td_etcd_watch(k("w/"), p1.revision, on_events, on_end, &past);
    watch_wait(&past, 3);
    check(h && past.nev == 3 && strcmp(past.ev[0], e0) == 0, "watch from a past revision",
          "%d events %s", past.nev, past.error);
    if (!past.ended)
        td_etcd_watch_cancel(h);

    /* Compacted: the watch ends with compact_revision set. */
    res_t p3 = put(k("w/3"), "three", 0);
    if (compact(endpoint, p3.revision) != 0) {
        check(0, "compaction", "POST /v3/kv/compaction failed");
        return;
    }
    watch_log_t old = {0};
    h = td_etcd_watch(k("w/"), p2.revision, on_events, on_end, &old);
    watch_wait(&old, 1);
    check(h && old.ended && old.compact == p3.revision && old.nev == 0,
          "watch from a compacted revision reports compact_revision",
          "ended %d compact %" PRId64 " (want %" PRId64 ") events %d %s", old.ended, old.compact,
          p3.revision, old.nev, old.error);
}

/* A watch cancelled from inside its own callback, and the client shut down from inside a call's
 * callback, call nothing after. */
static int cancelled_calls, self_cancel_created;
static td_etcd_watch_t *self_cancel;
static void cancel_in_events(void *arg, int64_t revision, const td_etcd_event_t *ev, size_t n) {
    int *seen = arg;
    (void)revision, (void)ev;
    self_cancel_created = 1;
    if (n > 0) {
        (*seen)++;
        td_etcd_watch_cancel(self_cancel);
    }
}
static void end_not_expected(void *arg, int64_t compact, const char *error) {
    (void)arg, (void)compact, (void)error;
    cancelled_calls++;
}

/* The client shut down from inside a watch's callback while a call is in flight. */
static int shutdown_seen, late_results, shutdown_watch_created;
static void shutdown_in_events(void *arg, int64_t revision, const td_etcd_event_t *ev, size_t n) {
    (void)arg, (void)revision, (void)ev;
    shutdown_watch_created = 1;
    if (n > 0 && !shutdown_seen++)
        td_etcd_shutdown();
}
static void late_result(void *arg, const td_etcd_result_t *r) {
    (void)arg, (void)r;
    late_results++;
}

static void cancel_checks(void) {
    int seen = 0;
    self_cancel = td_etcd_watch(k("c/"), 0, cancel_in_events, end_not_expected, &seen);
    run_until(&self_cancel_created);
    put(k("c/1"), "1", 0);
    put(k("c/2"), "2", 0);
    res_t r = range(k("c/1"), 0, 0, 0); /* one more round trip for any late event */
    check(self_cancel && seen == 1 && cancelled_calls == 0 && r.ok,
          "a watch cancelled in its callback calls nothing after", "seen %d ends %d", seen,
          cancelled_calls);

    td_etcd_watch_t *w = td_etcd_watch(k("s/"), 0, shutdown_in_events, end_not_expected, NULL);
    run_until(&shutdown_watch_created);
    td_etcd_op_t op = {.key = k("s/1"), .value = "1", .value_len = 1};
    /* The put's own answer may come before or after its event (then never: shut down). */
    td_etcd_txn(NULL, 0, &op, 1, NULL, late_result, NULL);
    td_etcd_range(k("s/"), 1, 0, 0, late_result, NULL);
    td_etcd_range(k("s/"), 1, 0, 0, late_result, NULL);
    uint64_t end = uv_now(loop) + 20000;
    while (!shutdown_seen && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    end = uv_now(loop) + 300;
    while (uv_now(loop) < end) /* what might still come: nothing */
        uv_run(loop, UV_RUN_ONCE);
    check(w && shutdown_seen == 1 && cancelled_calls == 0 && late_results <= 3 &&
              td_etcd_endpoint()[0] == 0,
          "the client shut down from inside a watch callback calls nothing after",
          "seen %d ends %d late %d", shutdown_seen, cancelled_calls, late_results);
}

static void failover_check(const char *live) {
    res_t p = put(k("a"), "1", 0);
    res_t r = range(k("a"), 0, 0, 0);
    check(p.ok && r.ok && r.n == 1 && strcmp(td_etcd_endpoint(), live) == 0,
          "fail-over: the first endpoint dead, calls succeed on the next",
          "put %d %s range %d %s in use %s", p.ok, p.error, r.ok, r.error, td_etcd_endpoint());
    watch_log_t w = {0};
    td_etcd_watch_t *h = td_etcd_watch(k("a"), r.revision, on_events, on_end, &w);
    watch_wait(&w, 1);
    check(h && w.nev == 1, "fail-over of a watch", "%d %s", w.nev, w.error);
    if (!w.ended)
        td_etcd_watch_cancel(h);
}

/* A watch whose stream breaks (tests/e2e cuts the connection when it reads "ok watch live")
 * ends with an error naming the endpoint. */
static void watch_until_end(const char *endpoint) {
    watch_log_t w = {0};
    td_etcd_watch_t *h = td_etcd_watch(k("b/"), 0, on_events, on_end, &w);
    run_until(&w.created);
    put(k("b/1"), "1", 0);
    watch_wait(&w, 1);
    check(h && w.nev == 1 && !w.ended, "watch live", "%d %s", w.nev, w.error);
    uint64_t end = uv_now(loop) + 60000;
    while (h && !w.ended && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    check(w.ended && w.compact == 0 && strstr(w.error, endpoint),
          "a broken watch stream ends the watch with an error", "ended %d: %s", w.ended, w.error);
    if (!w.ended)
        td_etcd_watch_cancel(h);
}

/* fetch.c's abilities on their own, against a demo backend at `base` ("http://127.0.0.1:P"):
 * extra headers, a captured body and its bound, a streamed body, a cancelled request. */
static size_t streamed;
static int stream_status;
static void on_chunk(void *arg, int status, const char *data, size_t len) {
    (void)arg, (void)data;
    stream_status = status;
    streamed += len;
}

static void fetch_checks(const char *base) {
    char url[600];
    const char *hdrs[] = {"X-Td-Check: 42", "Authorization: Bearer abc"};
    snprintf(url, sizeof(url), "%s/headers", base);
    fetched_t f = {0};
    td_fetch_req_t rq = {.url = url, .timeout_ms = 5000, .headers = hdrs, .num_headers = 2};
    if (td_fetch_start(&rq, on_fetched, NULL, &f, NULL) == 0)
        run_until(&f.done);
    check(f.status == 200 && strstr(f.body, "X-Td-Check: 42") &&
              strstr(f.body, "Authorization: Bearer abc"),
          "fetch: extra headers sent, body captured", "%d %s", f.status, f.body);

    snprintf(url, sizeof(url), "%s/bytes/5000", base);
    fetched_t big = {0};
    td_fetch_req_t rb = {.url = url, .timeout_ms = 5000, .max_body = 1000};
    if (td_fetch_start(&rb, on_fetched, NULL, &big, NULL) == 0)
        run_until(&big.done);
    check(big.done && big.status == 0 && strstr(big.body, "response body larger than 1000 bytes"),
          "fetch: a body over max_body is an error", "%d %s", big.status, big.body);

    snprintf(url, sizeof(url), "%s/chunked/300000", base);
    fetched_t st = {0};
    td_fetch_req_t rs = {.url = url, .timeout_ms = 5000};
    if (td_fetch_start(&rs, on_fetched, on_chunk, &st, NULL) == 0)
        run_until(&st.done);
    check(st.status == 200 && streamed == 300000 && stream_status == 200 && st.body[0] == 0,
          "fetch: a streamed body comes whole through the data callback", "%d %zu", st.status,
          streamed);

    snprintf(url, sizeof(url), "%s/delay/1000", base);
    fetched_t cancelled = {0}, after = {0};
    td_fetch_t *h = NULL;
    td_fetch_req_t rc = {.url = url, .timeout_ms = 5000};
    int r = td_fetch_start(&rc, on_fetched, NULL, &cancelled, &h);
    td_fetch_cancel(h);
    snprintf(url, sizeof(url), "%s/delay/1500", base);
    if (td_fetch_start(&rc, on_fetched, NULL, &after, NULL) == 0)
        run_until(&after.done);
    check(r == 0 && h && !cancelled.done && after.status == 200,
          "fetch: a cancelled request calls nothing", "%d %d", cancelled.done, after.status);
}

/* Calls kept in flight while tests/e2e stops the member in use (it reads "ok calls started" and
 * sends SIGTERM): a member shutting down answers what it still holds with errors of its own
 * ("the client connection is closing"); every call must still succeed, on another member. */
#define IN_FLIGHT 8
static int flight_done, flight_ok, flight_failed, flight_after, in_flight;
static char flight_error[1300];
static const char *flight_first;

static void flight_start(int i);

static void flight_result(void *arg, const td_etcd_result_t *r) {
    int i = (int)(intptr_t)arg;
    flight_done++;
    in_flight--;
    if (r->ok)
        flight_ok++;
    else if (!flight_failed++)
        snprintf(flight_error, sizeof(flight_error), "%s", r->error);
    if (strcmp(td_etcd_endpoint(), flight_first) != 0)
        flight_after++;
    if (flight_after < 200)
        flight_start(i);
}

static void flight_start(int i) {
    char value[32];
    snprintf(value, sizeof(value), "%d", flight_done);
    td_etcd_op_t op = {.key = k("f"), .value = value, .value_len = strlen(value)};
    int r = i % 2 ? td_etcd_range(k("f"), 0, 0, 0, flight_result, (void *)(intptr_t)i)
                  : td_etcd_txn(NULL, 0, &op, 1, NULL, flight_result, (void *)(intptr_t)i);
    if (r == 0)
        in_flight++;
    else if (!flight_failed++)
        snprintf(flight_error, sizeof(flight_error), "a call could not start");
}

static void calls_while_killed(const char *first) {
    res_t p = put(k("f"), "0", 0);
    flight_first = first;
    check(p.ok && strcmp(td_etcd_endpoint(), first) == 0, "calls started", "%s in use %s", p.error,
          td_etcd_endpoint());
    for (int i = 0; i < IN_FLIGHT; i++)
        flight_start(i);
    uint64_t end = uv_now(loop) + 60000;
    while (flight_after < 200 && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    while (in_flight > 0 && uv_now(loop) < end)
        uv_run(loop, UV_RUN_ONCE);
    check(flight_after >= 200 && !flight_failed,
          "calls in flight when their member stops succeed on another",
          "%d calls, %d failed (%s), %d after the switch", flight_done, flight_failed, flight_error,
          flight_after);
}

static void all_dead_check(void) {
    res_t r = range("x", 0, 0, 0);
    check(r.done && !r.ok && strstr(r.error, "http://") && strchr(r.error, ';'),
          "no endpoint answers: the error names each", "ok %d %s", r.ok, r.error);
}

int main(int argc, char **argv) {
    const char *user = NULL, *pass = NULL, *eps[16], *ca = NULL, *cert = NULL, *key = NULL;
    const char *label = "with auth";
    size_t n = 0;
    int auth_only = 0, all_dead = 0, until_end = 0, fetch_only = 0, while_killed = 0;
    long ttl_wait_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--user") == 0 && i + 1 < argc)
            user = argv[++i];
        else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
            pass = argv[++i];
        else if (strcmp(argv[i], "--auth-only") == 0)
            auth_only = 1;
        else if (strcmp(argv[i], "--tls") == 0 && i + 3 < argc) {
            /* CA, client certificate, its key: the short run "over TLS" */
            ca = argv[++i];
            cert = argv[++i];
            key = argv[++i];
            auth_only = 1;
            label = "over TLS";
        } else if (strcmp(argv[i], "--all-dead") == 0)
            all_dead = 1;
        else if (strcmp(argv[i], "--watch-until-end") == 0)
            until_end = 1;
        else if (strcmp(argv[i], "--fetch") == 0)
            fetch_only = 1;
        else if (strcmp(argv[i], "--calls-while-killed") == 0)
            while_killed = 1;
        else if (strcmp(argv[i], "--ttl-wait-ms") == 0 && i + 1 < argc)
            ttl_wait_ms = atol(argv[++i]);
        else if (n < 16)
            eps[n++] = argv[i];
    }
    if (n == 0) {
        fprintf(stderr,
                "usage: %s [--user U --password P] [--auth-only] [--all-dead] "
                "[--watch-until-end] [--fetch] [--calls-while-killed] [--ttl-wait-ms N] "
                "ENDPOINT...\n",
                argv[0]);
        return 2;
    }
    loop = uv_default_loop();
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, on_guard, 100, 100);
    snprintf(prefix, sizeof(prefix), "/t%ld-%d/", (long)time(NULL), (int)getpid());
    td_etcd_opts_t o = {.endpoints = eps,
                        .num_endpoints = n,
                        .ca = ca,
                        .cert = cert,
                        .key = key,
                        .username = user,
                        .password = pass,
                        .timeout_ms = 2000};
    if (td_etcd_init(loop, &o) != 0) {
        printf("FAIL init\n");
        return 1;
    }
    if (fetch_only) {
        fetch_checks(eps[0]);
    } else if (all_dead) {
        all_dead_check();
    } else if (until_end) {
        watch_until_end(eps[0]);
    } else if (while_killed) {
        calls_while_killed(eps[0]);
    } else if (auth_only) {
        char name1[64], name2[64];
        snprintf(name1, sizeof(name1), "%s: put and range", label);
        snprintf(name2, sizeof(name2), "%s: watch", label);
        res_t p = put(k("a"), "1", 0);
        res_t r = range(k("a"), 0, 0, 0);
        check(p.ok && r.ok && r.n == 1, name1, "%s %s", p.error, r.error);
        watch_log_t w = {0};
        td_etcd_watch_t *h = td_etcd_watch(k("a"), p.revision, on_events, on_end, &w);
        watch_wait(&w, 1);
        check(h && w.nev == 1, name2, "%d %s", w.nev, w.error);
        if (!w.ended)
            td_etcd_watch_cancel(h);
        if (ttl_wait_ms > 0) {
            /* The token expires (etcd's --auth-token-ttl): the client authenticates again. */
            uint64_t end = uv_now(loop) + (uint64_t)ttl_wait_ms;
            while (uv_now(loop) < end)
                uv_run(loop, UV_RUN_ONCE);
            res_t again = range(k("a"), 0, 0, 0);
            check(again.ok && again.n == 1, "with auth: an expired token is renewed", "%s",
                  again.error);
        }
    } else if (n > 1) {
        failover_check(eps[n - 1]);
    } else {
        kv_checks();
        lease_checks();
        watch_checks(eps[0]);
        cancel_checks();
    }
    td_etcd_shutdown();
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    return failed;
}
