#include "td/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/config.h"
#include "td/events.h"
#include "td/http1.h"
#include "td/log.h"
#include "td/router.h"
#include "td/tls.h"

#define PROBE_BUF 65536

typedef struct checker_s checker_t;

/* One probe in progress: its socket lives until the close callback. */
typedef struct probe_s {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    checker_t *k; /* NULL once the checker gave up on it */
    char req[512];
    char *buf; /* owned */
    size_t len;
    int done;
    td_tls_conn_t tls; /* used when the backend speaks TLS (tls.ssl != NULL) */
} probe_t;

struct checker_s {
    td_server_stats_t *st; /* borrowed (registry) */
    td_addr_t addr;        /* the server's address, port overridden by health_check.port */
    td_config_health_t hc;
    td_tls_client_t *tls; /* owned reference; NULL for a plain backend */
    uv_timer_t timer;
    probe_t *probe; /* in progress, or NULL */
    int ok_run, fail_run;
    int seen;      /* marked during a sync */
    int removed;
    char last[160];
    checker_t *next;
};

static checker_t *checkers;
static uv_loop_t *hloop;
static uv_timer_t sweep_timer; /* every second: passive ejections that ended (td_passive_sweep) */
static int sweep_on;

static void schedule(checker_t *k, int ms);

static void probe_free_cb(uv_handle_t *h) {
    probe_t *p = h->data;
    free(p->buf);
    if (p->tls.ssl)
        td_tls_free(&p->tls);
    free(p);
}

static void probe_end(probe_t *p) {
    if (p->done)
        return;
    p->done = 1;
    if (p->k)
        p->k->probe = NULL;
    p->k = NULL;
    uv_close((uv_handle_t *)&p->tcp, probe_free_cb);
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
            td_info("health: server %s (%s) is up after %d successful checks (%s)",
                    k->st->address, k->st->backend, k->ok_run, why);
            td_event("health", "server %s (%s) is up (%s)", k->st->address, k->st->backend, why);
        }
    } else {
        k->ok_run = 0;
        k->fail_run++;
        if (up && k->fail_run >= k->hc.fall) {
            atomic_store(&k->st->health_up, 0);
            td_warn("health: server %s (%s) is down after %d failed checks (%s)", k->st->address,
                    k->st->backend, k->fail_run, why);
            td_event("health", "server %s (%s) is down (%s)", k->st->address, k->st->backend,
                     why);
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
        snprintf(why, sizeof(why), "status %d, body lacks \"%s\"", resp.status,
                 k->hc.expect_body);
        finish(p, 0, why);
    }
}

static void loose_write_cb(uv_write_t *w, int status) {
    (void)status;
    free(w);
}

/* Sends what TLS has ready (handshake records, the encrypted request). */
static void tls_flush(probe_t *p) {
    size_t n = td_tls_pending_out(&p->tls);
    if (!n)
        return;
    uv_write_t *w = malloc(sizeof(*w) + n);
    if (!w)
        return;
    char *data = (char *)(w + 1);
    n = td_tls_take(&p->tls, data, n);
    uv_buf_t b = uv_buf_init(data, (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&p->tcp, &b, 1, loose_write_cb) < 0)
        free(w);
}

static void send_request(probe_t *p);

/* TLS: handshake, then plaintext into p->buf. Returns 1 when the probe is finished. */
static int tls_pump(probe_t *p, int eof) {
    checker_t *k = p->k;
    int was_up = td_tls_established(&p->tls);
    long n = td_tls_read(&p->tls, p->buf + p->len, PROBE_BUF - p->len);
    tls_flush(p);
    if (n < 0 && !(was_up && strcmp(p->tls.error, "closed") == 0)) {
        char why[200];
        snprintf(why, sizeof(why), "TLS: %s", p->tls.error);
        finish(p, 0, why);
        return 1;
    }
    if (!was_up && td_tls_established(&p->tls)) {
        if (strcmp(k->hc.type, "ssl_hello") == 0) {
            finish(p, 1, "TLS handshake completed");
            return 1;
        }
        send_request(p);
        return tls_pump(p, eof);
    }
    if (n > 0)
        p->len += (size_t)n;
    judge_http(p, eof || n < 0 || p->len >= PROBE_BUF);
    return p->done;
}

static void probe_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *out) {
    (void)hint;
    probe_t *p = h->data;
    if (!p->buf)
        p->buf = malloc(PROBE_BUF);
    *out = uv_buf_init(p->buf ? p->buf + p->len : NULL, p->buf ? (unsigned)(PROBE_BUF - p->len) : 0);
}

static void probe_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b) {
    (void)b;
    probe_t *p = s->data;
    if (p->done || !p->k)
        return;
    if (nread < 0) {
        if (nread == UV_EOF) {
            judge_http(p, 1);
            if (!p->done)
                finish(p, 0, "connection closed");
        } else {
            char why[128];
            snprintf(why, sizeof(why), "read: %s", uv_strerror((int)nread));
            finish(p, 0, why);
        }
        return;
    }
    if (p->tls.ssl) {
        if (td_tls_feed(&p->tls, p->buf + p->len, (size_t)nread) < 0)
            finish(p, 0, "out of memory");
        else
            tls_pump(p, 0);
        return;
    }
    p->len += (size_t)nread;
    judge_http(p, p->len >= PROBE_BUF);
}

static void probe_write_cb(uv_write_t *w, int status) {
    probe_t *p = w->data;
    if (status < 0 && !p->done && p->k) {
        char why[128];
        snprintf(why, sizeof(why), "write: %s", uv_strerror(status));
        finish(p, 0, why);
    }
}

static void probe_connect_cb(uv_connect_t *c, int status) {
    probe_t *p = c->data;
    if (p->done || !p->k)
        return;
    checker_t *k = p->k;
    if (status < 0) {
        if (local_error(status)) {
            skip(p, status);
            return;
        }
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(status));
        finish(p, 0, why);
        return;
    }
    if (strcmp(k->hc.type, "tcp") == 0) {
        finish(p, 1, "connected");
        return;
    }
    if (k->tls) {
        if (td_tls_connect(&p->tls, k->tls) < 0) {
            finish(p, 0, "out of memory");
            return;
        }
        uv_read_start((uv_stream_t *)&p->tcp, probe_alloc_cb, probe_read_cb);
        if (!p->buf && !(p->buf = malloc(PROBE_BUF))) {
            finish(p, 0, "out of memory");
            return;
        }
        tls_pump(p, 0);
        return;
    }
    send_request(p);
    uv_read_start((uv_stream_t *)&p->tcp, probe_alloc_cb, probe_read_cb);
}

/* The HTTP check's request, with a proper Host; over TLS when the backend speaks it. */
static void send_request(probe_t *p) {
    checker_t *k = p->k;
    int n = snprintf(p->req, sizeof(p->req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: td-health-check\r\n"
                     "Connection: close\r\n\r\n",
                     k->hc.path, k->st->address);
    if (p->tls.ssl) {
        if (td_tls_write(&p->tls, p->req, (size_t)n) == 0)
            tls_flush(p);
        return;
    }
    uv_buf_t buf = uv_buf_init(p->req, (unsigned)n);
    p->wreq.data = p;
    uv_write(&p->wreq, (uv_stream_t *)&p->tcp, &buf, 1, probe_write_cb);
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
    p->tcp.data = p->creq.data = p;
    uv_tcp_init(hloop, &p->tcp);
    int r = uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&k->addr.sa,
                           probe_connect_cb);
    if (r < 0) {
        if (local_error(r)) {
            skip(p, r);
            return;
        }
        char why[128];
        snprintf(why, sizeof(why), "connect: %s", uv_strerror(r));
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

int td_health_sync(uv_loop_t *loop, const td_config_t *cfg) {
    hloop = loop;
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
        for (size_t j = 0; j < b->num_servers; j++) {
            td_server_stats_t *st = td_registry_server(b->name, b->servers[j].address.text);
            if (!st)
                return TD_ENOMEM;
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
                set_params(k, b, &b->servers[j].address);
                continue;
            }
            k = calloc(1, sizeof(*k));
            if (!k)
                return TD_ENOMEM;
            k->st = st;
            k->seen = 1;
            set_params(k, b, &b->servers[j].address);
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
}
