#include "td/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/config.h"
#include "td/events.h"
#include "td/health_grpc.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/router.h"
#include "td/stream.h"
#include "td/tls.h"

#define PROBE_BUF 65536

typedef struct checker_s checker_t;

/* One probe in progress: its stream (plain, or TLS when the backend speaks it) lives until the
 * close callback. */
typedef struct probe_s {
    td_stream_t io;
    checker_t *k; /* NULL once the checker gave up on it */
    char req[512];
    char *buf; /* owned */
    size_t len;
    td_health_grpc_t *grpc; /* owned: the Check call of a "grpc" check, once connected */
    int writing;            /* a write of the grpc call is waiting for its callback */
    int done;
} probe_t;

struct checker_s {
    td_server_stats_t *st; /* borrowed (registry) */
    td_addr_t addr;        /* the server's address, port overridden by health_check.port */
    td_config_health_t hc;
    td_tls_client_t *tls; /* owned reference; NULL for a plain backend */
    uv_timer_t timer;
    probe_t *probe; /* in progress, or NULL */
    int ok_run, fail_run;
    int seen; /* marked during a sync */
    int removed;
    char last[160];
    checker_t *next;
};

static checker_t *checkers;
static td_stream_loop_t hsl_state;
static td_stream_loop_t *hsl;  /* the transport's state for the main loop, once set up */
static uv_timer_t sweep_timer; /* every second: passive ejections that ended (td_passive_sweep) */
static int sweep_on;

static void schedule(checker_t *k, int ms);

static void probe_free_cb(td_stream_t *s) {
    probe_t *p = td_stream_owner(s);
    td_health_grpc_free(p->grpc);
    free(p->buf);
    free(p);
}

static void probe_end(probe_t *p) {
    if (p->done)
        return;
    p->done = 1;
    if (p->k)
        p->k->probe = NULL;
    p->k = NULL;
    td_stream_close(&p->io, probe_free_cb);
}

static void checker_free_cb(uv_handle_t *h) {
    checker_t *k = h->data;
    td_tls_client_release(k->tls);
    free(k);
}

static void verdict(checker_t *k, int ok, const char *why) {
    snprintf(k->last, sizeof(k->last), "%s", why);
    if (atomic_exchange(&k->st->recheck, 0))
        k->ok_run = 0; /* ejected by passive detection: `rise` passes from now on */
    int up = atomic_load(&k->st->health_up);
    if (ok) {
        k->fail_run = 0;
        k->ok_run++;
        if (!up && k->ok_run >= k->hc.rise) {
            atomic_store(&k->st->up_since_ms, td_now_ms());
            atomic_store(&k->st->health_up, 1);
            atomic_store(&k->st->down_until_ms, 0);
            atomic_store(&k->st->consecutive_failures, 0);
            atomic_store(&k->st->ejected, 0); /* this "up" answers a passive "down" too */
            td_info("health: server %s (%s) is up after %d successful checks (%s)", k->st->address,
                    k->st->backend, k->ok_run, why);
            td_event("health", "server %s (%s) is up (%s)", k->st->address, k->st->backend, why);
        }
    } else {
        k->ok_run = 0;
        k->fail_run++;
        if (up && k->fail_run >= k->hc.fall) {
            atomic_store(&k->st->health_up, 0);
            td_warn("health: server %s (%s) is down after %d failed checks (%s)", k->st->address,
                    k->st->backend, k->fail_run, why);
            td_event("health", "server %s (%s) is down (%s)", k->st->address, k->st->backend, why);
        }
    }
}

static void finish(probe_t *p, int ok, const char *why) {
    checker_t *k = p->k;
    probe_end(p);
    if (!k || k->removed)
        return;
    verdict(k, ok, why);
    schedule(k, k->hc.interval_ms);
}

/* A probe that could not start for want of td's own resources (file descriptors, memory, local
 * ports: EMFILE, ENFILE, ENOMEM, ENOBUFS, EADDRNOTAVAIL) says nothing about the server: no
 * verdict, the next check comes at the usual interval. Logged at most once a second. */
static int local_error(int err) {
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOMEM || err == UV_ENOBUFS ||
           err == UV_EADDRNOTAVAIL;
}

static void skip(probe_t *p, int err) {
    static int64_t logged_ms;
    checker_t *k = p->k;
    probe_end(p);
    if (!k || k->removed)
        return;
    int64_t now = td_now_ms();
    if (!logged_ms || now - logged_ms >= 1000) {
        td_error("health: cannot check server %s (%s): connect: %s: a limit of td's own, not "
                 "the server's; no verdict",
                 k->st->address, k->st->backend, uv_strerror(err));
        logged_ms = now;
    }
    schedule(k, k->hc.interval_ms);
}

/* Judges an HTTP response from what was read (the server closes: Connection: close). */
static void judge_http(probe_t *p, int eof) {
    checker_t *k = p->k;
    td_http1_header_t hdrs[64];
    td_http1_response_t resp;
    td_http1_limits_t lim = td_http1_default_limits();
    int r = td_http1_parse_response(p->buf, p->len, 0, &lim, &resp, hdrs, 64);
    if (r == TD_EAGAIN) {
        if (eof)
            finish(p, 0, "connection closed before a full response head");
        return;
    }
    if (r < 0) {
        finish(p, 0, "malformed response");
        return;
    }
    char why[160];
    if (!td_config_status_expected(k->hc.expect_status, resp.status)) {
        snprintf(why, sizeof(why), "status %d, expected %s", resp.status, k->hc.expect_status);
        finish(p, 0, why);
        return;
    }
    if (!k->hc.expect_body[0]) {
        snprintf(why, sizeof(why), "status %d", resp.status);
        finish(p, 1, why);
        return;
    }
    /* The body must contain expect_body: wait for all of it (or the buffer's worth). */
    size_t body = p->len - (size_t)r;
    int complete = eof || p->len >= PROBE_BUF ||
                   (resp.body == TD_BODY_LENGTH && body >= resp.content_length) ||
                   resp.body == TD_BODY_NONE;
    if (!complete)
        return;
    if (memmem(p->buf + r, body, k->hc.expect_body, strlen(k->hc.expect_body))) {
        snprintf(why, sizeof(why), "status %d, body has \"%s\"", resp.status, k->hc.expect_body);
        finish(p, 1, why);
    } else {
        snprintf(why, sizeof(why), "status %d, body lacks \"%s\"", resp.status, k->hc.expect_body);
        finish(p, 0, why);
    }
}

static void probe_alloc_cb(td_stream_t *s, char **buf, size_t *cap) {
    probe_t *p = td_stream_owner(s);
    if (!p->buf && !(p->buf = malloc(PROBE_BUF)))
        return;
    *buf = p->buf + p->len;
    *cap = PROBE_BUF - p->len;
}

static void grpc_judge(probe_t *p, int eof);
static void grpc_read(probe_t *p, size_t n);

static void probe_read_cb(td_stream_t *s, long nread) {
    probe_t *p = td_stream_owner(s);
    if (p->done || !p->k)
        return;
    if (nread == TD_STREAM_EOF || nread == TD_STREAM_CLOSE_NOTIFY) {
        if (p->grpc)
            grpc_judge(p, 1);
        else
            judge_http(p, 1);
        if (!p->done)
            finish(p, 0, "connection closed");
        return;
    }
    if (nread < 0) {
        char why[200];
        if (nread == TD_STREAM_ETLS)
            snprintf(why, sizeof(why), "TLS: %s", td_stream_tls_error(s));
        else
            snprintf(why, sizeof(why), "read: %s", td_stream_strerror(s, (int)nread));
        finish(p, 0, why);
        return;
    }
    if (p->grpc) {
        grpc_read(p, (size_t)nread);
        return;
    }
    p->len += (size_t)nread;
    judge_http(p, p->len >= PROBE_BUF);
}

static void probe_write_cb(td_stream_t *s, int status) {
    probe_t *p = td_stream_owner(s);
    if (status < 0 && !p->done && p->k) {
        char why[128];
        snprintf(why, sizeof(why), "write: %s", td_stream_strerror(s, status));
        finish(p, 0, why);
    }
}

static void send_request(probe_t *p);
static void grpc_start(probe_t *p);

/* Connected (over TLS: the handshake done, which is all an ssl_hello check asks). */
static void probe_connect_cb(td_stream_t *s, int status) {
    probe_t *p = td_stream_owner(s);
    if (p->done || !p->k)
        return;
    checker_t *k = p->k;
    if (status < 0) {
        char why[200];
        if (status == TD_STREAM_ETLS) {
            snprintf(why, sizeof(why), "TLS: %s", td_stream_tls_error(s));
        } else if (local_error(status)) {
            skip(p, status);
            return;
        } else {
            snprintf(why, sizeof(why), "connect: %s", td_stream_strerror(s, status));
        }
        finish(p, 0, why);
        return;
    }
    if (strcmp(k->hc.type, "tcp") == 0) {
        finish(p, 1, "connected");
        return;
    }
    if (td_stream_is_tls(s) && strcmp(k->hc.type, "ssl_hello") == 0) {
        finish(p, 1, "TLS handshake completed");
        return;
    }
    if (strcmp(k->hc.type, "grpc") == 0) {
        grpc_start(p);
        return;
    }
    send_request(p);
    if (!p->done)
        td_stream_read_start(s, probe_alloc_cb, probe_read_cb);
}

/* The HTTP check's request, with a proper Host; over TLS when the backend speaks it. */
static void send_request(probe_t *p) {
    checker_t *k = p->k;
    int n = snprintf(p->req, sizeof(p->req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: td-health-check\r\n"
                     "Connection: close\r\n\r\n",
                     k->hc.path, k->st->address);
    td_iov_t iov = td_iov(p->req, (size_t)n);
    int r = td_stream_write(&p->io, &iov, 1, 0, probe_write_cb);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof(why), "write: %s", td_stream_strerror(&p->io, r));
        finish(p, 0, why);
    }
}

/* ---- "grpc": one grpc.health.v1.Health/Check call over HTTP/2 (td/health_grpc.h) ---- */

static void grpc_flush(probe_t *p);

static void grpc_write_cb(td_stream_t *s, int status) {
    probe_t *p = td_stream_owner(s);
    p->writing = 0;
    if (p->done || !p->k)
        return;
    if (status < 0) {
        char why[128];
        snprintf(why, sizeof(why), "write: %s", td_stream_strerror(s, status));
        finish(p, 0, why);
        return;
    }
    grpc_flush(p);
}

/* Sends what the session has to send. The stream takes one write with a callback at a time, and
 * nghttp2's bytes last only until the next call into the session: the write copies whatever the
 * socket did not take at once (volatile_first), and the rest waits for its callback. */
static void grpc_flush(probe_t *p) {
    while (!p->writing && !p->done) {
        const char *out;
        long n = td_health_grpc_send(p->grpc, &out);
        if (n == 0)
            return;
        if (n < 0) {
            skip(p, UV_ENOMEM);
            return;
        }
        td_iov_t iov = td_iov((char *)out, (size_t)n);
        int r = td_stream_write(&p->io, &iov, 1, 1, grpc_write_cb);
        if (r < 0) {
            char why[128];
            snprintf(why, sizeof(why), "write: %s", td_stream_strerror(&p->io, r));
            finish(p, 0, why);
            return;
        }
        p->writing = r == 1;
    }
}

static void grpc_judge(probe_t *p, int eof) {
    char why[160];
    int v = td_health_grpc_verdict(p->grpc, eof, why, sizeof(why));
    if (v != TD_EAGAIN)
        finish(p, v == 1, why);
}

/* Connected: over TLS only when ALPN chose h2 (gRPC is HTTP/2 only); in plain TCP h2c with prior
 * knowledge (RFC 9113 §3.3). The Check's bytes go out at once. */
static void grpc_start(probe_t *p) {
    checker_t *k = p->k;
    int tls = td_stream_is_tls(&p->io);
    if (tls && !td_stream_alpn_h2(&p->io)) {
        finish(p, 0, "no HTTP/2 (ALPN): the server did not choose h2");
        return;
    }
    p->grpc = td_health_grpc_new(tls ? "https" : "http", k->st->address, k->hc.grpc_service,
                                 k->hc.timeout_ms);
    if (!p->grpc) {
        skip(p, UV_ENOMEM);
        return;
    }
    grpc_flush(p);
    if (!p->done)
        td_stream_read_start(&p->io, probe_alloc_cb, probe_read_cb);
}

/* n bytes landed at p->buf (p->len stays 0: the session keeps what it needs). */
static void grpc_read(probe_t *p, size_t n) {
    td_health_grpc_recv(p->grpc, p->buf, n);
    grpc_flush(p); /* SETTINGS ACK, WINDOW_UPDATE, and the GOAWAY once the answer is in */
    if (!p->done)
        grpc_judge(p, 0);
}

static void timer_cb(uv_timer_t *t) {
    checker_t *k = t->data;
    if (k->probe) { /* the probe in progress ran out of time */
        char why[64];
        snprintf(why, sizeof(why), "no answer within %d ms", k->hc.timeout_ms);
        finish(k->probe, 0, why);
        return;
    }
    probe_t *p = calloc(1, sizeof(*p));
    if (!p) {
        schedule(k, k->hc.interval_ms);
        return;
    }
    p->k = k;
    k->probe = p;
    td_stream_init(&p->io, hsl, p);
    /* A "tcp" check only connects, TLS backend or not. */
    td_tls_client_t *tls = strcmp(k->hc.type, "tcp") == 0 ? NULL : k->tls;
    int r = td_stream_connect(&p->io, (const struct sockaddr *)&k->addr.sa, tls, probe_connect_cb);
    if (r < 0) {
        if (local_error(r)) {
            skip(p, r);
            return;
        }
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", td_stream_strerror(NULL, r));
        finish(p, 0, why);
        return;
    }
    uv_timer_start(&k->timer, timer_cb, (uint64_t)k->hc.timeout_ms, 0);
}

static void schedule(checker_t *k, int ms) {
    uv_timer_start(&k->timer, timer_cb, (uint64_t)ms, 0);
}

static void checker_remove(checker_t *k) {
    k->removed = 1;
    if (k->probe)
        probe_end(k->probe);
    uv_close((uv_handle_t *)&k->timer, checker_free_cb);
}

static void set_params(checker_t *k, const td_config_backend_t *b, const td_addr_t *server) {
    const td_config_health_t *hc = &b->health;
    char err[256];
    td_tls_client_release(k->tls);
    k->tls = b->tls ? td_tls_client_new(b, err, sizeof(err)) : NULL;
    if (b->tls && !k->tls)
        td_warn("health: %s (%s): %s", server->text, b->name, err);
    /* A gRPC check needs HTTP/2: its connections offer h2 (and http/1.1, so that a server without
     * HTTP/2 says so rather than failing the handshake). */
    if (k->tls && strcmp(hc->type, "grpc") == 0 && td_tls_client_offer_h2(k->tls, 0) < 0)
        td_warn("health: %s (%s): cannot offer ALPN h2", server->text, b->name);
    k->hc = *hc;
    k->addr = *server;
    if (hc->port > 0) {
        if (k->addr.sa.ss_family == AF_INET6)
            ((struct sockaddr_in6 *)&k->addr.sa)->sin6_port = htons((uint16_t)hc->port);
        else
            ((struct sockaddr_in *)&k->addr.sa)->sin_port = htons((uint16_t)hc->port);
    }
}

static void sweep_cb(uv_timer_t *t) {
    (void)t;
    td_snapshot_t *s = td_router_acquire();
    if (s)
        td_passive_sweep(s, td_now_ms());
    td_snapshot_release(s);
}

int td_health_sync(uv_loop_t *loop, const td_snapshot_t *s) {
    const td_config_t *cfg = s->config;
    if (!hsl) {
        hsl = &hsl_state;
        td_stream_loop_init(hsl, loop);
    }
    if (!sweep_on) {
        uv_timer_init(loop, &sweep_timer);
        uv_timer_start(&sweep_timer, sweep_cb, 1000, 1000);
        uv_unref((uv_handle_t *)&sweep_timer); /* never what keeps the loop running */
        sweep_on = 1;
    }
    for (checker_t *k = checkers; k; k = k->next)
        k->seen = 0;
    for (size_t i = 0; i < cfg->num_backends; i++) {
        const td_config_backend_t *b = &cfg->backends[i];
        const td_snap_backend_t *sb = &s->backends[i];
        for (size_t j = 0; j < sb->num_servers; j++) {
            td_server_stats_t *st = sb->servers[j].st;
            if (!cfg->has_health && !b->health_override) {
                if (!atomic_exchange(&st->health_up, 1))
                    atomic_store(&st->up_since_ms, td_now_ms());
                /* No checker brings it back any more: a passive ejection must end by itself. */
                atomic_store(&st->checked, 0);
                atomic_store(&st->recheck, 0);
                continue;
            }
            checker_t *k;
            for (k = checkers; k && k->st != st; k = k->next)
                ;
            if (k) {
                k->seen = 1;
                set_params(k, b, &sb->servers[j].addr);
                continue;
            }
            k = calloc(1, sizeof(*k));
            if (!k)
                return TD_ENOMEM;
            k->st = st;
            k->seen = 1;
            set_params(k, b, &sb->servers[j].addr);
            /* A server checked before keeps its verdict; a new one starts as default_down says. */
            if (!atomic_load(&st->checked))
                atomic_store(&st->health_up, !b->health.default_down);
            atomic_store(&st->checked, 1);
            uv_timer_init(loop, &k->timer);
            k->timer.data = k;
            k->next = checkers;
            checkers = k;
            schedule(k, 0);
        }
    }
    for (checker_t **pp = &checkers; *pp;) {
        checker_t *k = *pp;
        if (!k->seen) {
            *pp = k->next;
            checker_remove(k);
        } else {
            pp = &k->next;
        }
    }
    return 0;
}

const char *td_health_last(const td_server_stats_t *st) {
    for (checker_t *k = checkers; k; k = k->next)
        if (k->st == st)
            return k->last;
    return "";
}

int td_health_runs(const td_server_stats_t *st, int *ok_run, int *fail_run) {
    for (checker_t *k = checkers; k; k = k->next)
        if (k->st == st) {
            *ok_run = k->ok_run;
            *fail_run = k->fail_run;
            return 1;
        }
    return 0;
}

int td_health_set_runs(const td_server_stats_t *st, int ok_run, int fail_run) {
    for (checker_t *k = checkers; k; k = k->next)
        if (k->st == st) {
            k->ok_run = ok_run > 0 ? ok_run : 0;
            k->fail_run = fail_run > 0 ? fail_run : 0;
            return 1;
        }
    return 0;
}

void td_health_stop(void) {
    if (sweep_on) {
        uv_close((uv_handle_t *)&sweep_timer, NULL);
        sweep_on = 0;
    }
    while (checkers) {
        checker_t *k = checkers;
        checkers = k->next;
        checker_remove(k);
    }
    if (hsl) {
        td_stream_loop_close(hsl);
        hsl = NULL;
    }
}
