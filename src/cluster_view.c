/* GET /api/v1/cluster: td_cluster_json() with each node's figures read from its own admin API,
 * every node at once, each request bounded. */
#include "td/cluster_view.h"

#include <jansson.h>
#include <uv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/admin_http.h"
#include "td/cluster.h"
#include "td/common-t.h"
#include "td/config-t.h"
#include "td/control.h"
#include "td/fetch.h"

#define ASK_TIMEOUT_MS 1000 /* one node's answer: a node that takes longer is shown unreachable */

typedef struct view_s view_t;

/* One request to one node: its state or its readiness. */
typedef struct ask_s {
    view_t *v;     /* borrowed: the view it is part of */
    json_t *node;  /* borrowed from v->doc: the node's member of "nodes" */
    int readyz;    /* 1: GET /readyz; 0: GET /api/v1/state */
    td_fetch_t *f; /* borrowed: the request while in flight, else NULL */
} ask_t;

/* One GET /api/v1/cluster being answered. */
struct view_s {
    json_t *doc; /* owned: td_cluster_json() being completed */
    ask_t *asks; /* owned: 2 per node */
    size_t pending;
    td_cluster_view_fn *cb;
    void *arg;
    uv_timer_t soon;     /* the answer when no node could be asked: later, never inside the call */
    int soon_on;         /* soon is initialised: the view is freed in its close callback */
    int cancelled;       /* at shutdown: free, do not call cb */
    view_t *prev, *next; /* the views in progress */
};

static view_t *views;
static int fetch_on; /* td_fetch_init done (once, at the first view) */

static void view_release(view_t *v) {
    for (size_t i = 0; v->asks && i < 2 * json_array_size(json_object_get(v->doc, "nodes")); i++)
        if (v->asks[i].f)
            td_fetch_cancel(v->asks[i].f);
    json_decref(v->doc);
    free(v->asks);
    free(v);
}

static void on_soon_closed(uv_handle_t *h) {
    view_t *v = h->data;
    if (!v->cancelled) {
        json_t *doc = json_incref(v->doc);
        td_cluster_view_fn *cb = v->cb;
        void *arg = v->arg;
        view_release(v);
        cb(arg, doc);
        return;
    }
    view_release(v);
}

/* Takes v off the list; frees it now, or in its timer's close callback. */
static void view_free(view_t *v) {
    if (v->prev)
        v->prev->next = v->next;
    else
        views = v->next;
    if (v->next)
        v->next->prev = v->prev;
    if (v->soon_on) {
        v->cancelled = 1;
        if (!uv_is_closing((uv_handle_t *)&v->soon))
            uv_close((uv_handle_t *)&v->soon, on_soon_closed);
        return;
    }
    view_release(v);
}

/* No node was asked: the answer comes from the timer's close callback. */
static void on_soon(uv_timer_t *t) {
    view_t *v = t->data;
    if (v->prev)
        v->prev->next = v->next;
    else
        views = v->next;
    if (v->next)
        v->next->prev = v->prev;
    uv_close((uv_handle_t *)t, on_soon_closed);
}

static void view_done(view_t *v) {
    json_t *doc = json_incref(v->doc);
    td_cluster_view_fn *cb = v->cb;
    void *arg = v->arg;
    view_free(v);
    cb(arg, doc);
}

/* A node's state: its total, each backend's requests and share, its snapshot's version. */
static void take_state(json_t *node, const json_t *state) {
    json_t *backends = json_object(), *b;
    json_int_t total = 0;
    size_t i;
    json_array_foreach(json_object_get(state, "backends"), i, b) {
        const char *name = json_string_value(json_object_get(b, "name"));
        json_int_t n = json_integer_value(json_object_get(b, "requests"));
        total += n;
        if (name)
            json_object_set_new(
                backends, name,
                json_pack("{s:I,s:O}", "requests", n, "share",
                          json_object_get(b, "share") ? json_object_get(b, "share") : json_null()));
    }
    json_object_set_new(node, "requests", json_integer(total));
    json_object_set_new(node, "backends", backends);
    json_object_set_new(node, "state_version", json_incref(json_object_get(state, "version")));
}

static void on_answer(void *arg, int status, const char *error, const char *body, size_t len) {
    ask_t *a = arg;
    json_t *node = a->node;
    a->f = NULL;
    json_t *doc = status > 0 ? json_loadb(body ? body : "", len, 0, NULL) : NULL;
    char why[512] = "";
    if (a->readyz) {
        /* 503 is an answer too: the node says why it is not ready. */
        json_object_set_new(node, "ready", json_boolean(status == 200));
        if (status != 200)
            json_object_set_new(node, "ready_reason",
                                json_string(json_is_string(json_object_get(doc, "reason"))
                                                ? json_string_value(json_object_get(doc, "reason"))
                                            : status ? "its /readyz answered without a reason"
                                                     : error));
    } else if (status == 200 && json_is_object(doc)) {
        json_object_set_new(node, "reachable", json_true());
        take_state(node, doc);
    } else {
        if (status == 401)
            snprintf(why, sizeof(why),
                     "its admin token differs from this node's (HTTP 401; every node of a "
                     "cluster needs the same admin.token)");
        else if (status > 0)
            snprintf(why, sizeof(why), "HTTP %d from its admin API: %s", status,
                     json_is_string(json_object_get(doc, "error"))
                         ? json_string_value(json_object_get(doc, "error"))
                         : "not td's state");
        else
            snprintf(why, sizeof(why), "%s", error && error[0] ? error : "no answer");
        json_object_set_new(node, "reachable", json_false());
        json_object_set_new(node, "error", json_string(why));
    }
    json_decref(doc);
    if (--a->v->pending == 0)
        view_done(a->v);
}

/* GET admin_url + path; the token is this node's (the nodes of a cluster share it). Over https
 * the peer is verified (certificate and name) before the token is sent: against cluster.tls.ca
 * when set, else the system's CAs. */
static int ask(ask_t *a, const char *admin_url, const char *path) {
    const td_config_t *cfg = td_control_config();
    char url[600], auth[300] = "";
    size_t n = strlen(admin_url);
    while (n > 0 && admin_url[n - 1] == '/')
        n--;
    snprintf(url, sizeof(url), "%.*s%s", (int)n, admin_url, path);
    if (!a->readyz && cfg && cfg->admin_token[0])
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg->admin_token);
    const char *headers[] = {auth};
    td_fetch_req_t rq = {.method = "GET",
                         .url = url,
                         .timeout_ms = ASK_TIMEOUT_MS,
                         .verify = 1,
                         .ca_file = cfg && cfg->cluster.tls_ca[0] ? cfg->cluster.tls_ca : "",
                         .headers = headers,
                         .num_headers = auth[0] ? 1 : 0,
                         .max_body = 1 << 20};
    return td_fetch_start(&rq, on_answer, NULL, a, &a->f);
}

int td_cluster_view(td_cluster_view_fn *cb, void *arg) {
    if (!fetch_on) {
        if (td_fetch_init(uv_default_loop()) < 0)
            return TD_ENOMEM;
        fetch_on = 1;
    }
    view_t *v = calloc(1, sizeof(*v));
    if (!v)
        return TD_ENOMEM;
    v->cb = cb;
    v->arg = arg;
    v->doc = td_cluster_json();
    if (!v->doc) {
        free(v);
        return TD_ENOMEM;
    }
    v->next = views;
    if (views)
        views->prev = v;
    views = v;
    const char *self = json_string_value(json_object_get(v->doc, "node"));
    json_t *nodes = json_object_get(v->doc, "nodes"), *node;
    size_t n = json_array_size(nodes), i;
    v->asks = calloc(n ? 2 * n : 1, sizeof(ask_t));
    if (!v->asks) {
        view_free(v);
        return TD_ENOMEM;
    }
    /* Each request counts until its answer; the one extra count, dropped below, keeps the view
     * from completing inside this call when every request fails to start. */
    v->pending = 1;
    json_array_foreach(nodes, i, node) {
        const char *name = json_string_value(json_object_get(node, "node"));
        const char *url = json_string_value(json_object_get(node, "admin_url"));
        json_object_set_new(node, "self", json_boolean(self && name && strcmp(self, name) == 0));
        for (int r = 0; r < 2; r++) {
            ask_t *a = &v->asks[2 * i + (size_t)r];
            *a = (ask_t){v, node, r, NULL};
            if (url && ask(a, url, r ? "/readyz" : "/api/v1/state") == 0) {
                v->pending++;
                continue;
            }
            if (r) {
                json_object_set_new(node, "ready", json_false());
                json_object_set_new(node, "ready_reason", json_string("not asked"));
            } else {
                json_object_set_new(node, "reachable", json_false());
                json_object_set_new(node, "error",
                                    json_string(url ? "cannot start a request to it"
                                                    : "it publishes no admin_url"));
            }
        }
    }
    if (--v->pending == 0) {
        /* Nothing was asked (no node, or none could be): still answer later, as promised. */
        uv_timer_init(uv_default_loop(), &v->soon);
        v->soon.data = v;
        v->soon_on = 1;
        uv_timer_start(&v->soon, on_soon, 0, 0);
    }
    return 0;
}

static void on_view_for_reply(void *arg, json_t *view) {
    td_admin_deferred_t *d = arg;
    td_admin_http_finish(
        d, view ? td_admin_http_json(200, view) : td_admin_http_error(500, "out of memory"), NULL);
}

td_admin_reply_t td_cluster_view_reply(void) {
    if (!td_cluster_enabled())
        return td_admin_http_error(
            404, "not in cluster mode: this td runs alone (its config has no \"cluster\")");
    td_admin_deferred_t *d = td_admin_http_defer();
    if (!d)
        return td_admin_http_error(500, "out of memory");
    if (td_cluster_view(on_view_for_reply, d) < 0)
        td_admin_http_finish(d, td_admin_http_error(500, "out of memory"), NULL);
    return td_admin_http_later();
}

void td_cluster_view_shutdown(void) {
    while (views)
        view_free(views);
    if (fetch_on)
        td_fetch_shutdown();
    fetch_on = 0;
}
