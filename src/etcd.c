/* The etcd v3 client over the JSON gateway (see td/etcd.h). Every call is one POST of a JSON
 * request through fetch.c, tried on the endpoint in use, then on the others in turn; a watch is
 * one long POST whose answer is a stream of newline-delimited JSON responses. The gateway writes
 * int64 fields as strings, leaves out every field at its zero value (a PUT event has no "type",
 * a missing "value" is ""), and answers errors as {"error", "code", "message"} with an HTTP
 * status from the gRPC code (grpc-gateway's HTTPStatusFromCode). */
#include "td/etcd.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/base64.h"
#include "td/common-t.h"
#include "td/fetch.h"

#define MAX_ENDPOINTS 16
/* A watch response line longer than this ends the watch: it bounds what one stream can hold. */
#define MAX_LINE TD_FETCH_MAX_BODY

enum kind { K_RANGE, K_TXN, K_GRANT, K_KEEPALIVE, K_REVOKE, K_WATCH };

/* One call (or watch) until its callback: what to send, where it is, what went wrong so far. */
struct td_etcd_watch_s {
    enum kind kind;
    const char *path; /* "/v3/kv/range" */
    char *body;       /* owned: the request's JSON */
    td_etcd_cb *cb;
    td_etcd_watch_fn *on_events;
    td_etcd_watch_end_fn *on_end;
    void *arg;
    size_t ep;      /* the endpoint of this attempt */
    size_t tried;   /* endpoints tried and given up */
    int authing;    /* this attempt is the authentication before the call */
    int reauthed;   /* authenticated again once after "invalid auth token" */
    td_fetch_t *f;  /* the request in flight (owned by fetch.c), or NULL */
    char err[1200]; /* "EP: why; EP: why" */
    /* a watch's stream */
    char *line; /* owned: the bytes after the last complete line */
    size_t len, cap;
    int created; /* etcd said "created": the stream is live, no fail-over any more */
    int in_cb;   /* inside one of its callbacks: cancel marks it dead instead of freeing */
    int dead;
    struct td_etcd_watch_s *prev, *next; /* every call in flight */
};
typedef struct td_etcd_watch_s call_t;

static struct {
    int ready;
    char *eps[MAX_ENDPOINTS];            /* owned */
    size_t n, cur;                       /* cur: the endpoint in use */
    char *ca, *cert, *key, *user, *pass; /* owned; NULL: none */
    long timeout_ms;
    char *token; /* owned: the auth token, NULL until authenticated */
    call_t *calls;
} E;

static char *dup_or_null(const char *s) {
    return s && s[0] ? strdup(s) : NULL;
}

/* ---- JSON helpers */

/* An int64 field of the gateway: a string of digits (or, leniently, a number); 0 when absent. */
static int64_t jint(const json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return json_integer_value(v);
    return 0;
}

static json_t *jstr_int(int64_t v) {
    char b[32];
    snprintf(b, sizeof(b), "%" PRId64, v);
    return json_string(b);
}

/* The base64 of p[n] as a JSON string (NULL for ENOMEM). */
static json_t *jb64(const char *p, size_t n) {
    char *out = malloc(TD_BASE64_ENCODED_SIZE(n));
    if (!out)
        return NULL;
    td_base64_encode(p, n, out);
    json_t *s = json_string(out);
    free(out);
    return s;
}

/* etcd's range end for "every key starting with prefix": the prefix with its last byte below
 * 0xff incremented and what follows cut; "\0" (every key) when there is none. */
static json_t *prefix_end(const char *prefix) {
    size_t n = strlen(prefix);
    char *end = malloc(n + 1);
    if (!end)
        return NULL;
    memcpy(end, prefix, n + 1);
    while (n > 0 && (unsigned char)end[n - 1] == 0xff)
        n--;
    json_t *j;
    if (n == 0) {
        j = jb64("", 1);
    } else {
        end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
        j = jb64(end, n);
    }
    free(end);
    return j;
}

/* The message of an etcd error answer ({"error": "...", "message": "..."}, or in a stream
 * {"error": {"message": ...}}), or the body itself cut short. */
static void error_text(const char *body, char *out, size_t cap) {
    json_t *doc = json_loads(body, 0, NULL);
    json_t *e = json_object_get(doc, "error");
    const char *m = json_string_value(json_object_get(doc, "message"));
    if (!m)
        m = json_string_value(json_object_get(e, "message"));
    if (!m)
        m = json_string_value(e);
    snprintf(out, cap, "%.300s", m ? m : body);
    json_decref(doc);
}

/* Whether etcd refused the token (expired, invalid, or of an older auth revision): then the
 * client authenticates again once. */
static int token_refused(int status, const char *msg) {
    return status == 401 || strstr(msg, "invalid auth token") || strstr(msg, "auth token") ||
           strstr(msg, "revision of auth store is old");
}

/* Whether an answer is no answer from etcd, to be tried on the next endpoint rather than taken
 * as etcd's refusal: none at all (status 0), a 5xx, and what a member answers while it shuts
 * down or has lost its leader, which another member answers as usual: 408 and "the client
 * connection is closing" (its gateway's connection to the member going away), 429 (too many
 * requests), "etcdserver: leader changed", "etcdserver: no leader". */
static int no_answer(int status, const char *msg) {
    return status == 0 || status >= 500 || status == 408 || status == 429 ||
           strstr(msg, "connection is closing") || strstr(msg, "etcdserver: leader changed") ||
           strstr(msg, "etcdserver: no leader");
}

/* ---- decoded key-values: one allocation per result, freed after the callback */

typedef struct decoded_s {
    td_etcd_kv_t *kvs;
    size_t n;
    td_etcd_event_t *evs;
    char **bufs; /* owned: the decoded keys and values */
    size_t nbufs;
} decoded_t;

static void decoded_free(decoded_t *d) {
    for (size_t i = 0; i < d->nbufs; i++)
        free(d->bufs[i]);
    free(d->bufs);
    free(d->kvs);
    free(d->evs);
}

/* Decodes the base64 string field `k` of `o` into a new buffer kept by d. Returns 0 or -1. */
static int decode_field(decoded_t *d, const json_t *o, const char *k, const char **p, size_t *len) {
    const char *s = json_string_value(json_object_get(o, k));
    size_t n = s ? strlen(s) : 0;
    char *b = malloc(n / 4 * 3 + 1);
    if (!b)
        return -1;
    d->bufs[d->nbufs++] = b;
    long r = td_base64_decode(s ? s : "", n, (unsigned char *)b);
    if (r < 0)
        return -1;
    *p = b;
    *len = (size_t)r;
    return 0;
}

static int decode_kv(decoded_t *d, const json_t *o, td_etcd_kv_t *kv) {
    if (decode_field(d, o, "key", &kv->key, &kv->key_len) < 0 ||
        decode_field(d, o, "value", &kv->value, &kv->value_len) < 0)
        return -1;
    kv->create_revision = jint(o, "create_revision");
    kv->mod_revision = jint(o, "mod_revision");
    kv->version = jint(o, "version");
    kv->lease = jint(o, "lease");
    return 0;
}

/* The kvs array of a range answer, or the events array of a watch response (events = 1). */
static int decode_list(decoded_t *d, const json_t *arr, int events) {
    size_t n = json_array_size(arr);
    memset(d, 0, sizeof(*d));
    if (n == 0)
        return 0;
    d->bufs = calloc(2 * n, sizeof(char *));
    if (events)
        d->evs = calloc(n, sizeof(*d->evs));
    else
        d->kvs = calloc(n, sizeof(*d->kvs));
    if (!d->bufs || !(events ? (void *)d->evs : (void *)d->kvs))
        return -1;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        if (events) {
            const char *type = json_string_value(json_object_get(o, "type"));
            d->evs[i].deleted = type && strcmp(type, "DELETE") == 0;
            if (decode_kv(d, json_object_get(o, "kv"), &d->evs[i].kv) < 0)
                return -1;
        } else if (decode_kv(d, o, &d->kvs[i]) < 0) {
            return -1;
        }
    }
    d->n = n;
    return 0;
}

/* ---- calls */

static void unlink_call(call_t *c) {
    if (c->prev)
        c->prev->next = c->next;
    else if (E.calls == c)
        E.calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void call_free(call_t *c) {
    free(c->body);
    free(c->line);
    free(c);
}

static void on_done(void *arg, int status, const char *error, const char *body, size_t len);
static void on_data(void *arg, int status, const char *data, size_t len);

/* Sends the call's next request to endpoint c->ep: the authentication first when the client has
 * a username and no token. Returns 0 or TD_E*. */
static int send_attempt(call_t *c) {
    char url[600], auth[1200];
    const char *hdrs[1];
    td_fetch_req_t rq = {.method = "POST",
                         .url = url,
                         .ca_file = E.ca,
                         .cert = E.cert,
                         .key = E.key,
                         .verify = 1,
                         .timeout_ms = E.timeout_ms,
                         .max_body = TD_FETCH_MAX_BODY};
    char *authbody = NULL;
    c->authing = E.user && !E.token;
    if (c->authing) {
        json_t *a = json_pack("{s:s,s:s}", "name", E.user, "password", E.pass ? E.pass : "");
        authbody = a ? json_dumps(a, JSON_COMPACT) : NULL;
        json_decref(a);
        if (!authbody)
            return TD_ENOMEM;
        snprintf(url, sizeof(url), "%s/v3/auth/authenticate", E.eps[c->ep]);
        rq.body = authbody;
    } else {
        snprintf(url, sizeof(url), "%s%s", E.eps[c->ep], c->path);
        rq.body = c->body;
        if (E.token) {
            snprintf(auth, sizeof(auth), "Authorization: %s", E.token);
            hdrs[0] = auth;
            rq.headers = hdrs;
            rq.num_headers = 1;
        }
    }
    int watch = c->kind == K_WATCH && !c->authing;
    c->len = 0;
    int r = td_fetch_start(&rq, on_done, watch ? on_data : NULL, c, &c->f);
    free(authbody);
    return r;
}

static void add_error(call_t *c, const char *fmt, ...) {
    size_t used = strlen(c->err);
    if (used + 3 >= sizeof(c->err))
        return;
    if (used) {
        memcpy(c->err + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + used, sizeof(c->err) - used, fmt, ap);
    va_end(ap);
}

/* Ends a unary call: unlinked and freed before its callback, which may call anything. */
static void finish(call_t *c, const json_t *doc) {
    td_etcd_result_t r = {.ok = doc != NULL, .error = ""};
    decoded_t d = {0};
    char err[sizeof(c->err)];
    snprintf(err, sizeof(err), "%s", c->err);
    if (doc) {
        const json_t *res = c->kind == K_KEEPALIVE ? json_object_get(doc, "result") : doc;
        r.revision = jint(json_object_get(res, "header"), "revision");
        const json_t *kvs = json_object_get(res, "kvs");
        if (c->kind == K_TXN) {
            r.succeeded = json_is_true(json_object_get(res, "succeeded"));
            json_t *resps = json_object_get(res, "responses");
            for (size_t i = 0; i < json_array_size(resps); i++) {
                json_t *rr = json_object_get(json_array_get(resps, i), "response_range");
                if (rr) {
                    kvs = json_object_get(rr, "kvs");
                    break;
                }
            }
        }
        r.lease_id = jint(res, "ID");
        r.ttl = jint(res, "TTL");
        if (decode_list(&d, kvs, 0) < 0) {
            r.ok = 0;
            snprintf(err, sizeof(err), "%s: an answer that is not base64", E.eps[c->ep]);
        } else {
            r.kvs = d.kvs;
            r.num_kvs = d.n;
        }
    }
    if (!r.ok)
        r.error = err[0] ? err : "no etcd endpoint answered";
    td_etcd_cb *cb = c->cb;
    void *arg = c->arg;
    unlink_call(c);
    call_free(c);
    cb(arg, &r);
    decoded_free(&d);
}

static void watch_end(call_t *c, int64_t compact, const char *error);

/* This attempt got no answer: the next endpoint, until each was tried once. */
static void fail_over(call_t *c) {
    while (++c->tried < E.n) {
        c->ep = (c->ep + 1) % E.n;
        c->reauthed = 0;
        if (send_attempt(c) == 0)
            return;
        add_error(c, "%s: could not start the request", E.eps[c->ep]);
    }
    if (c->kind == K_WATCH)
        watch_end(c, 0, c->err);
    else
        finish(c, NULL);
}

/* A request of call c ended (fetch.c's callback): an answer, an error answer, or none. */
static void on_done(void *arg, int status, const char *error, const char *body, size_t len) {
    call_t *c = arg;
    const char *ep = E.eps[c->ep];
    c->f = NULL;
    if (c->kind == K_WATCH && !c->authing) {
        /* The stream ended: the held bytes are an error answer's body, or a last line. */
        if (c->len && status == 200) {
            c->in_cb++;
            on_data(c, 200, "\n", 1);
            c->in_cb--;
            if (c->dead) {
                call_free(c);
                return;
            }
        }
        char msg[400];
        error_text(c->line ? c->line : "", msg, sizeof(msg));
        if (status == 0)
            add_error(c, "%s: %s", ep, error);
        else if (status != 200)
            add_error(c, "%s: %d %s", ep, status, msg);
        if (!c->created && status != 200 && E.user && !c->reauthed && token_refused(status, msg)) {
            free(E.token);
            E.token = NULL;
            c->reauthed = 1;
            c->err[0] = 0;
            if (send_attempt(c) == 0)
                return;
        }
        if (!c->created && status != 200 && no_answer(status, msg)) {
            fail_over(c);
            return;
        }
        if (status == 200)
            add_error(c, "%s: the watch stream ended", ep);
        watch_end(c, 0, c->err);
        return;
    }
    (void)len;
    if (status == 0) {
        add_error(c, "%s: %s", ep, error);
        fail_over(c);
        return;
    }
    char msg[400];
    if (status != 200) {
        error_text(body, msg, sizeof(msg));
        add_error(c, "%s: %d %s", ep, status, msg);
        if (no_answer(status, msg)) {
            fail_over(c);
            return;
        }
        E.cur = c->ep;
        if (!c->authing && E.user && !c->reauthed && token_refused(status, msg)) {
            free(E.token);
            E.token = NULL;
            c->reauthed = 1;
            if (send_attempt(c) == 0)
                return;
        }
        if (c->kind == K_WATCH)
            watch_end(c, 0, c->err);
        else
            finish(c, NULL);
        return;
    }
    json_t *doc = json_loads(body, 0, NULL);
    if (!json_is_object(doc) ||
        (c->kind == K_KEEPALIVE && !c->authing && !json_object_get(doc, "result"))) {
        if (json_is_object(doc) && json_object_get(doc, "error")) {
            /* A stream's error ({"error": {...}}) after a 200. */
            error_text(body, msg, sizeof(msg));
            add_error(c, "%s: %s", ep, msg);
            json_decref(doc);
            if (no_answer(200, msg)) {
                fail_over(c);
                return;
            }
            E.cur = c->ep;
            finish(c, NULL);
            return;
        }
        json_decref(doc);
        add_error(c, "%s: an answer that is not etcd's JSON", ep);
        fail_over(c);
        return;
    }
    E.cur = c->ep;
    if (c->authing) {
        const char *tok = json_string_value(json_object_get(doc, "token"));
        free(E.token);
        E.token = tok ? strdup(tok) : NULL;
        json_decref(doc);
        if (!E.token) {
            add_error(c, "%s: authentication gave no token", ep);
            if (c->kind == K_WATCH)
                watch_end(c, 0, c->err);
            else
                finish(c, NULL);
            return;
        }
        if (send_attempt(c) != 0) {
            add_error(c, "%s: could not start the request", ep);
            if (c->kind == K_WATCH)
                watch_end(c, 0, c->err);
            else
                finish(c, NULL);
        }
        return;
    }
    finish(c, doc);
    json_decref(doc);
}

/* Starts call c (its body owned by it) on the endpoint in use. Returns 0 or TD_E* (c freed). */
static int call_start(call_t *c) {
    c->ep = E.cur;
    int r = send_attempt(c);
    if (r < 0) {
        call_free(c);
        return r;
    }
    c->next = E.calls;
    if (E.calls)
        E.calls->prev = c;
    E.calls = c;
    return 0;
}

static int unary(enum kind kind, const char *path, json_t *body, td_etcd_cb *cb, void *arg) {
    if (!E.ready || !cb) {
        json_decref(body);
        return TD_EINVAL;
    }
    call_t *c = calloc(1, sizeof(*c));
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!c || !text) {
        free(c);
        free(text);
        return TD_ENOMEM;
    }
    c->kind = kind;
    c->path = path;
    c->body = text;
    c->cb = cb;
    c->arg = arg;
    return call_start(c);
}

/* ---- the API */

int td_etcd_init(uv_loop_t *loop, const td_etcd_opts_t *o) {
    if (E.ready)
        td_etcd_shutdown();
    if (!o || o->num_endpoints == 0 || o->num_endpoints > MAX_ENDPOINTS || o->timeout_ms <= 0)
        return TD_EINVAL;
    for (size_t i = 0; i < o->num_endpoints; i++)
        if (!o->endpoints[i] || !o->endpoints[i][0] || strlen(o->endpoints[i]) > 500)
            return TD_EINVAL;
    int r = td_fetch_init(loop);
    if (r < 0)
        return r;
    memset(&E, 0, sizeof(E));
    int fail = 0;
    for (size_t i = 0; i < o->num_endpoints; i++) {
        /* "http://h:2379/" and "http://h:2379" are the same endpoint: paths are added to it. */
        size_t n = strlen(o->endpoints[i]);
        while (n > 0 && o->endpoints[i][n - 1] == '/')
            n--;
        fail |= !(E.eps[i] = strndup(o->endpoints[i], n));
    }
    E.n = o->num_endpoints;
    E.ca = o->ca ? strdup(o->ca) : NULL; /* "" kept: the system's CAs */
    E.cert = dup_or_null(o->cert);
    E.key = dup_or_null(o->key);
    E.user = dup_or_null(o->username);
    E.pass = dup_or_null(o->password);
    fail |= (o->ca && !E.ca) || (o->cert && o->cert[0] && !E.cert) ||
            (o->key && o->key[0] && !E.key) || (o->username && o->username[0] && !E.user) ||
            (o->password && o->password[0] && !E.pass);
    E.timeout_ms = o->timeout_ms;
    E.ready = 1;
    if (fail) {
        td_etcd_shutdown();
        return TD_ENOMEM;
    }
    return 0;
}

void td_etcd_shutdown(void) {
    if (!E.ready)
        return;
    while (E.calls) {
        call_t *c = E.calls;
        unlink_call(c);
        td_fetch_cancel(c->f);
        c->f = NULL;
        if (c->in_cb)
            c->dead = 1; /* freed when its callback returns */
        else
            call_free(c);
    }
    for (size_t i = 0; i < E.n; i++)
        free(E.eps[i]);
    free(E.ca);
    free(E.cert);
    free(E.key);
    free(E.user);
    free(E.pass);
    free(E.token);
    memset(&E, 0, sizeof(E));
    td_fetch_shutdown();
}

const char *td_etcd_endpoint(void) {
    return E.ready ? E.eps[E.cur] : "";
}

int td_etcd_range(const char *key, int prefix, long limit, int descending, td_etcd_cb *cb,
                  void *arg) {
    if (!key)
        return TD_EINVAL;
    json_t *b = json_object();
    if (!b)
        return TD_ENOMEM;
    json_object_set_new(b, "key", jb64(key, strlen(key)));
    if (prefix)
        json_object_set_new(b, "range_end", prefix_end(key));
    if (limit > 0)
        json_object_set_new(b, "limit", jstr_int(limit));
    if (descending) {
        json_object_set_new(b, "sort_order", json_string("DESCEND"));
        json_object_set_new(b, "sort_target", json_string("KEY"));
    }
    return unary(K_RANGE, "/v3/kv/range", b, cb, arg);
}

int td_etcd_txn(const td_etcd_cmp_t *cmp, size_t ncmp, const td_etcd_op_t *ops, size_t nops,
                const char *fail_range, td_etcd_cb *cb, void *arg) {
    static const char *targets[] = {"MOD", "CREATE", "VERSION"};
    static const char *fields[] = {"mod_revision", "create_revision", "version"};
    json_t *b = json_object(), *compare = json_array(), *success = json_array(),
           *failure = json_array();
    if (!b || !compare || !success || !failure) {
        json_decref(b), json_decref(compare), json_decref(success), json_decref(failure);
        return TD_ENOMEM;
    }
    json_object_set_new(b, "compare", compare);
    json_object_set_new(b, "success", success);
    json_object_set_new(b, "failure", failure);
    for (size_t i = 0; i < ncmp; i++) {
        if (!cmp[i].key || (unsigned)cmp[i].target > TD_ETCD_VERSION) {
            json_decref(b);
            return TD_EINVAL;
        }
        json_t *c = json_object();
        json_object_set_new(c, "key", jb64(cmp[i].key, strlen(cmp[i].key)));
        json_object_set_new(c, "target", json_string(targets[cmp[i].target]));
        json_object_set_new(c, "result", json_string("EQUAL"));
        json_object_set_new(c, fields[cmp[i].target], jstr_int(cmp[i].value));
        json_array_append_new(compare, c);
    }
    for (size_t i = 0; i < nops; i++) {
        if (!ops[i].key) {
            json_decref(b);
            return TD_EINVAL;
        }
        json_t *op = json_object(), *req = json_object();
        json_object_set_new(req, "key", jb64(ops[i].key, strlen(ops[i].key)));
        if (!ops[i].del) {
            json_object_set_new(
                req, "value",
                jb64(ops[i].value ? ops[i].value : "", ops[i].value ? ops[i].value_len : 0));
            if (ops[i].lease)
                json_object_set_new(req, "lease", jstr_int(ops[i].lease));
        }
        json_object_set_new(op, ops[i].del ? "request_delete_range" : "request_put", req);
        json_array_append_new(success, op);
    }
    if (fail_range) {
        json_t *op = json_object(), *req = json_object();
        json_object_set_new(req, "key", jb64(fail_range, strlen(fail_range)));
        json_object_set_new(op, "request_range", req);
        json_array_append_new(failure, op);
    }
    return unary(K_TXN, "/v3/kv/txn", b, cb, arg);
}

int td_etcd_lease_grant(int64_t ttl_s, td_etcd_cb *cb, void *arg) {
    if (ttl_s <= 0)
        return TD_EINVAL;
    return unary(K_GRANT, "/v3/lease/grant", json_pack("{s:o}", "TTL", jstr_int(ttl_s)), cb, arg);
}

int td_etcd_lease_keepalive(int64_t id, td_etcd_cb *cb, void *arg) {
    return unary(K_KEEPALIVE, "/v3/lease/keepalive", json_pack("{s:o}", "ID", jstr_int(id)), cb,
                 arg);
}

int td_etcd_lease_revoke(int64_t id, td_etcd_cb *cb, void *arg) {
    return unary(K_REVOKE, "/v3/lease/revoke", json_pack("{s:o}", "ID", jstr_int(id)), cb, arg);
}

/* ---- watches */

/* Ends watch c by itself: on_end once, then freed (the fetch request is cancelled first). */
static void watch_end(call_t *c, int64_t compact, const char *error) {
    td_fetch_cancel(c->f);
    c->f = NULL;
    unlink_call(c);
    char err[sizeof(c->err)];
    snprintf(err, sizeof(err), "%s", error ? error : "");
    c->in_cb++;
    if (!c->dead)
        c->on_end(c->arg, compact, err);
    c->in_cb--;
    if (!c->in_cb)
        call_free(c);
    else
        c->dead = 1;
}

/* One response of the watch stream. Returns 0 to go on, -1 when the watch ended. */
static int watch_line(call_t *c, const char *line, size_t n) {
    const char *ep = E.eps[c->ep];
    json_t *doc = json_loadb(line, n, 0, NULL);
    json_t *res = json_object_get(doc, "result");
    if (!res) {
        char msg[400];
        char *z = strndup(line, n < 1000 ? n : 1000);
        error_text(z ? z : "", msg, sizeof(msg));
        free(z);
        add_error(c, "%s: watch: %s", ep, msg);
        json_decref(doc);
        watch_end(c, 0, c->err);
        return -1;
    }
    int64_t rev = jint(json_object_get(res, "header"), "revision");
    int64_t compact = jint(res, "compact_revision");
    if (compact > 0 || json_is_true(json_object_get(res, "canceled"))) {
        const char *why = json_string_value(json_object_get(res, "cancel_reason"));
        if (compact <= 0)
            add_error(c, "%s: watch canceled by etcd: %s", ep, why ? why : "no reason given");
        json_decref(doc);
        watch_end(c, compact, compact > 0 ? "" : c->err);
        return -1;
    }
    if (!c->created) {
        c->created = 1;
        E.cur = c->ep;
    }
    decoded_t d;
    int r = decode_list(&d, json_object_get(res, "events"), 1);
    json_decref(doc);
    if (r < 0) {
        decoded_free(&d);
        add_error(c, "%s: watch: an event that is not base64", ep);
        watch_end(c, 0, c->err);
        return -1;
    }
    c->in_cb++;
    c->on_events(c->arg, rev, d.evs, d.n);
    c->in_cb--;
    decoded_free(&d);
    if (c->dead) {
        if (!c->in_cb)
            call_free(c);
        return -1;
    }
    return 0;
}

/* A chunk of the watch stream (fetch.c's data callback, outside libcurl). */
static void on_data(void *arg, int status, const char *data, size_t len) {
    call_t *c = arg;
    if (c->len + len + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + len + 1)
            cap *= 2;
        char *b = cap <= MAX_LINE + 1 ? realloc(c->line, cap) : NULL;
        if (!b) {
            add_error(c, "%s: watch: a response larger than %zu bytes", E.eps[c->ep],
                      (size_t)MAX_LINE);
            watch_end(c, 0, c->err);
            return;
        }
        c->line = b;
        c->cap = cap;
    }
    memcpy(c->line + c->len, data, len);
    c->len += len;
    c->line[c->len] = 0;
    if (status != 200)
        return; /* an error answer: read whole at the end */
    size_t start = 0;
    for (;;) {
        char *nl = memchr(c->line + start, '\n', c->len - start);
        if (!nl)
            break;
        size_t n = (size_t)(nl - (c->line + start));
        size_t next = start + n + 1;
        if (n > 0) {
            /* The line stays where it is while its callbacks run: they cannot add to it. */
            if (watch_line(c, c->line + start, n) < 0)
                return;
        }
        start = next;
    }
    memmove(c->line, c->line + start, c->len - start);
    c->len -= start;
    c->line[c->len] = 0;
}

td_etcd_watch_t *td_etcd_watch(const char *prefix, int64_t start_revision,
                               td_etcd_watch_fn *on_events, td_etcd_watch_end_fn *on_end,
                               void *arg) {
    if (!E.ready || !prefix || !on_events || !on_end)
        return NULL;
    call_t *c = calloc(1, sizeof(*c));
    json_t *req = json_object();
    if (!c || !req) {
        free(c);
        json_decref(req);
        return NULL;
    }
    json_object_set_new(req, "key", jb64(prefix, strlen(prefix)));
    json_object_set_new(req, "range_end", prefix_end(prefix));
    if (start_revision > 0)
        json_object_set_new(req, "start_revision", jstr_int(start_revision));
    json_t *b = json_pack("{s:o}", "create_request", req);
    c->body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    if (!c->body) {
        free(c);
        return NULL;
    }
    c->kind = K_WATCH;
    c->path = "/v3/watch";
    c->on_events = on_events;
    c->on_end = on_end;
    c->arg = arg;
    return call_start(c) == 0 ? c : NULL;
}

void td_etcd_watch_cancel(td_etcd_watch_t *w) {
    if (!w || w->dead)
        return;
    td_fetch_cancel(w->f);
    w->f = NULL;
    unlink_call(w);
    if (w->in_cb)
        w->dead = 1;
    else
        call_free(w);
}
