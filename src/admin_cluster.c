/* The admin API in cluster mode: changes proposed to etcd (td_cluster_propose) and answered when
 * they completed, the cluster's init and sticky key rotation, and the audit log read from etcd.
 * Each reply is deferred (td_admin_http_defer) and finished from the cluster's callback. */
#include "td/admin_cluster.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/admin_http.h"
#include "td/cluster.h"
#include "td/config.h"
#include "td/control.h"
#include "td/fetch.h"

#define HISTORY_LIMIT 1000
#define WAIT_DEFAULT_MS 5000
#define WAIT_MAX_MS 600000

/* One deferred answer. */
typedef struct pending_s {
    td_admin_deferred_t *d; /* finished exactly once */
    int wait_all;
    int64_t timeout_ms;
    int kind; /* what the 200 carries */
    uint64_t revision;
} pending_t;

enum { KIND_STATE, KIND_CONFIG, KIND_INIT, KIND_ROTATE };

/* The value of `name` in the target's query ("" when absent) into out[n]. */
static void query_value(td_str_t target, const char *name, char *out, size_t n) {
    out[0] = 0;
    const char *q = memchr(target.p, '?', target.len), *end = target.p + target.len;
    size_t nl = strlen(name);
    while (q && q < end) {
        const char *p = q + 1, *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = (size_t)(stop - p) - nl - 1;
            snprintf(out, n, "%.*s", (int)(vl < n ? vl : n - 1), p + nl + 1);
            return;
        }
        q = amp;
    }
}

static int status_of(int result) {
    return result == TD_EUNAVAIL    ? 503
           : result == TD_ECONFLICT ? 409
           : result == TD_EINVAL    ? 400
                                    : 500;
}

static void finish_error(pending_t *p, int status, const char *msg) {
    td_admin_http_finish(p->d, td_admin_http_error(status, msg), NULL);
    free(p);
}

static void finish_ok(pending_t *p) {
    json_t *j;
    switch (p->kind) {
    case KIND_CONFIG:
        j = json_pack("{s:I,s:b}", "version", (json_int_t)td_control_version(), "persisted", 1);
        break;
    case KIND_INIT:
        j = json_pack("{s:b}", "initialised", 1);
        break;
    case KIND_ROTATE:
        j = json_pack("{s:b}", "rotated", 1);
        break;
    default:
        j = td_admin_state_json();
    }
    if (j)
        json_object_set_new(j, "revision", json_integer((json_int_t)p->revision));
    td_admin_http_finish(p->d, td_admin_http_json(200, j), NULL);
    free(p);
}

static void on_waited(void *arg, const json_t *laggards) {
    pending_t *p = arg;
    if (!laggards) {
        finish_ok(p);
        return;
    }
    char names[400] = "";
    size_t i, n = 0;
    json_t *l;
    json_array_foreach(laggards, i, l) {
        if (n < sizeof(names))
            n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", i ? ", " : "",
                                  json_string_value(l));
    }
    char msg[600];
    snprintf(msg, sizeof(msg),
             "the change is made (revision %llu) but %s %s not applied it within "
             "%lld ms",
             (unsigned long long)p->revision, n ? names : "the nodes",
             json_array_size(laggards) == 1 ? "has" : "have", (long long)p->timeout_ms);
    json_t *j = json_pack("{s:s,s:O,s:I}", "error", msg, "laggards", laggards, "revision",
                          (json_int_t)p->revision);
    td_admin_http_finish(p->d, td_admin_http_json(504, j), NULL);
    free(p);
}

static void on_done(void *arg, int result, uint64_t revision, const char *error) {
    pending_t *p = arg;
    if (result < 0) {
        finish_error(p, status_of(result), error);
        return;
    }
    p->revision = revision;
    if (p->wait_all && td_cluster_wait_all(revision, p->timeout_ms, on_waited, p) == 0)
        return;
    finish_ok(p);
}

/* A pending answer for the request being handled, with its ?wait=all; NULL when out of memory
 * (*fail is the reply then). */
static pending_t *pending_new(td_str_t target, int kind, td_admin_reply_t *fail) {
    pending_t *p = calloc(1, sizeof(*p));
    char v[32];
    if (p)
        p->d = td_admin_http_defer();
    if (!p || !p->d) {
        free(p);
        *fail = td_admin_http_error(500, "out of memory");
        return NULL;
    }
    p->kind = kind;
    query_value(target, "wait", v, sizeof(v));
    p->wait_all = strcmp(v, "all") == 0;
    query_value(target, "timeout_ms", v, sizeof(v));
    char *end;
    long long t = strtoll(v, &end, 10);
    p->timeout_ms = v[0] && !*end && t >= 0 && t <= WAIT_MAX_MS ? t : WAIT_DEFAULT_MS;
    return p;
}

/* Starting `r` (of td_cluster_*) failed at once: the answer says why. */
static td_admin_reply_t start_failed(pending_t *p, int r, const char *why) {
    finish_error(p, status_of(r), why[0] ? why : r == TD_ENOMEM ? "out of memory" : "refused");
    return td_admin_http_later();
}

td_admin_reply_t td_admin_cluster_change(td_config_t *cfg, const char *what, const char *client,
                                         td_str_t target, int config_reply) {
    char why[700];
    int w = td_cluster_writable(why, sizeof(why));
    if (w < 0) {
        td_config_free(cfg);
        return td_admin_http_error(status_of(w), why);
    }
    td_admin_reply_t fail;
    pending_t *p = pending_new(target, config_reply ? KIND_CONFIG : KIND_STATE, &fail);
    if (!p) {
        td_config_free(cfg);
        return fail;
    }
    int r = td_cluster_propose(cfg, what, client, on_done, p);
    if (r < 0) {
        td_cluster_writable(why, sizeof(why));
        return start_failed(p, r, why);
    }
    return td_admin_http_later();
}

td_config_t *td_admin_config_body(td_str_t body, td_admin_reply_t *fail) {
    char *errs = NULL;
    size_t elen = 0;
    FILE *ef = open_memstream(&errs, &elen);
    td_config_t *cfg = td_config_parse(body.p, body.len, "request", ef);
    fclose(ef);
    if (!cfg) {
        while (elen && errs[elen - 1] == '\n')
            errs[--elen] = 0;
        *fail = td_admin_http_error(400, errs ? errs : "out of memory");
    }
    free(errs);
    return cfg;
}

td_admin_reply_t td_admin_cluster_init(td_str_t body, const char *client) {
    td_admin_reply_t bad;
    td_config_t *cfg = td_admin_config_body(body, &bad);
    if (!cfg)
        return bad;
    td_admin_reply_t fail;
    pending_t *p = pending_new((td_str_t){"", 0}, KIND_INIT, &fail);
    if (!p) {
        td_config_free(cfg);
        return fail;
    }
    int r = td_cluster_init_prefix(cfg, client, on_done, p);
    if (r < 0) {
        char why[700] = "";
        if (r == TD_EUNAVAIL)
            td_cluster_writable(why, sizeof(why));
        return start_failed(p, r, why);
    }
    return td_admin_http_later();
}

td_admin_reply_t td_admin_cluster_sticky_key(const char *client, td_str_t target) {
    char why[700];
    int w = td_cluster_writable(why, sizeof(why));
    if (w < 0)
        return td_admin_http_error(status_of(w), why);
    td_admin_reply_t fail;
    pending_t *p = pending_new(target, KIND_ROTATE, &fail);
    if (!p)
        return fail;
    int r = td_cluster_rotate_sticky_key(client, on_done, p);
    return r < 0 ? start_failed(p, r, "") : td_admin_http_later();
}

static void on_history(void *arg, json_t *entries, const char *error) {
    pending_t *p = arg;
    if (!entries) {
        finish_error(p, 503, error);
        return;
    }
    /* Oldest first, as the single-node audit log answers. */
    json_t *out = json_array();
    for (size_t i = json_array_size(entries); i-- > 0;) {
        json_t *e = json_array_get(entries, i);
        json_object_set(e, "version", json_object_get(e, "revision"));
        json_array_append(out, e);
    }
    json_decref(entries);
    td_admin_http_finish(p->d, td_admin_http_json(200, out), NULL);
    free(p);
}

td_admin_reply_t td_admin_cluster_history(void) {
    td_admin_reply_t fail;
    pending_t *p = pending_new((td_str_t){"", 0}, KIND_STATE, &fail);
    if (!p)
        return fail;
    int r = td_cluster_history(HISTORY_LIMIT, on_history, p);
    return r < 0 ? start_failed(p, r, "cluster store unreachable") : td_admin_http_later();
}

/* ---- the rollout, driven from a node that does not lead it ---- */

#define FORWARD_TIMEOUT_MS 10000

static void on_forwarded(void *arg, int status, const char *error, const char *body, size_t len) {
    td_admin_deferred_t *d = arg;
    if (!status) {
        char msg[700];
        snprintf(msg, sizeof(msg), "the rollout leader %s did not answer: %s",
                 td_cluster_leader() ? td_cluster_leader() : "?", error);
        td_admin_http_finish(d, td_admin_http_error(502, msg), NULL);
        return;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        td_admin_http_finish(d, td_admin_http_error(500, "out of memory"), NULL);
        return;
    }
    memcpy(copy, body, len);
    copy[len] = 0;
    td_admin_reply_t r = {status, "application/json", copy, len, NULL, NULL};
    td_admin_http_finish(d, r, NULL);
}

td_admin_reply_t td_admin_cluster_forward(const char *path, td_str_t body) {
    const char *leader = td_cluster_leader(), *url = td_cluster_leader_url();
    const td_config_t *cfg = td_control_config();
    char msg[700];
    if (!leader) {
        char why[600];
        if (td_cluster_writable(why, sizeof(why)) == 0)
            snprintf(why, sizeof(why), "no node holds %sleader yet (an election is under way)",
                     cfg->cluster.prefix);
        snprintf(msg, sizeof(msg), "no rollout leader: %s", why);
        return td_admin_http_error(503, msg);
    }
    if (!url) {
        snprintf(msg, sizeof(msg),
                 "no rollout leader: %sleader names %s, held by a previous run of this node (or "
                 "without an admin URL) until its lease expires",
                 cfg->cluster.prefix, leader);
        return td_admin_http_error(503, msg);
    }
    char target[700], auth[300] = "";
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    snprintf(target, sizeof(target), "%.*s%s", (int)n, url, path);
    if (cfg->admin_token[0])
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg->admin_token);
    char *text = malloc(body.len + 1);
    if (!text)
        return td_admin_http_error(500, "out of memory");
    memcpy(text, body.p, body.len);
    text[body.len] = 0;
    td_admin_deferred_t *d = td_admin_http_defer();
    if (!d) {
        free(text);
        return td_admin_http_error(500, "out of memory");
    }
    const char *headers[] = {auth};
    td_fetch_req_t rq = {.method = "POST",
                         .url = target,
                         .body = text,
                         .timeout_ms = FORWARD_TIMEOUT_MS,
                         .headers = headers,
                         .num_headers = auth[0] ? 1 : 0,
                         .max_body = 4 << 20};
    int r = td_fetch_start(&rq, on_forwarded, NULL, d, NULL);
    free(text);
    if (r < 0)
        td_admin_http_finish(d, td_admin_http_error(500, "cannot reach the rollout leader"), NULL);
    return td_admin_http_later();
}
