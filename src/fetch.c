/* td's own HTTP requests on the main loop: libcurl's multi interface with libuv doing the
 * waiting (one uv_poll_t per socket libcurl opens, one uv_timer_t for libcurl's timeouts). */
#include "td/fetch.h"

#include <curl/curl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"

/* One request in flight: its easy handle and what it needs to live as long (owned). */
struct td_fetch_s {
    CURL *easy;
    struct curl_slist *connect_to, *headers;
    char *body;
    td_fetch_cb *cb;        /* td_fetch's callback, or NULL */
    td_fetch_done_fn *done; /* td_fetch_start's */
    td_fetch_data_fn *data; /* streamed: the body's chunks go there */
    void *arg;
    int capture; /* keep the answer's body (up to max_body) */
    char *buf;   /* owned: the body captured, or a streamed chunk not yet delivered */
    size_t len, cap, max_body;
    int too_big; /* the body went over max_body: the request fails */
    char error[CURL_ERROR_SIZE];
    struct td_fetch_s *prev, *next; /* the list of jobs in flight */
};
typedef struct td_fetch_s job_t;

/* A socket libcurl watches; freed after its poll handle closed. */
typedef struct sock_s {
    uv_poll_t poll;
    curl_socket_t fd;
} sock_t;

static uv_loop_t *loop;
static CURLM *multi;
static uv_timer_t timer;
static int ready;   /* td_fetch_init calls not yet given back */
static job_t *jobs; /* in flight */

/* libcurl's write callback: the body kept (captured, or held until delivered outside libcurl, for
 * a streamed request: libcurl refuses to add or remove handles from inside its callbacks). */
static size_t on_write(char *p, size_t size, size_t n, void *userp) {
    job_t *j = userp;
    size_t add = size * n;
    if (!j->capture && !j->data)
        return add;
    if (j->len + add > j->max_body) {
        j->too_big = 1;
        return 0;
    }
    if (j->len + add + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 4096;
        while (cap < j->len + add + 1)
            cap *= 2;
        char *b = realloc(j->buf, cap);
        if (!b)
            return 0;
        j->buf = b;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, p, add);
    j->len += add;
    j->buf[j->len] = 0;
    return add;
}

static void job_free(job_t *j) {
    if (j->prev)
        j->prev->next = j->next;
    else
        jobs = j->next;
    if (j->next)
        j->next->prev = j->prev;
    curl_multi_remove_handle(multi, j->easy);
    curl_easy_cleanup(j->easy);
    curl_slist_free_all(j->connect_to);
    curl_slist_free_all(j->headers);
    free(j->body);
    free(j->buf);
    free(j);
}

static int status_of(job_t *j) {
    long status = 0;
    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    return (int)status;
}

/* Hands each streamed request's data held so far to its callback, one at a time and from the
 * list's head again after each: a callback may cancel any request, or start new ones. */
static void deliver(void) {
    for (;;) {
        job_t *j = jobs;
        while (j && !(j->data && j->len))
            j = j->next;
        if (!j)
            return;
        char *b = j->buf;
        size_t len = j->len;
        j->buf = NULL;
        j->len = j->cap = 0;
        j->data(j->arg, status_of(j), b, len);
        free(b);
    }
}

/* Hands every finished request to its callback. */
static void check_done(void) {
    CURLMsg *m;
    int left;
    deliver();
    while (ready && (m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        job_t *j = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        CURLcode rc = m->data.result;
        int status = rc == CURLE_OK ? status_of(j) : 0;
        char error[CURL_ERROR_SIZE + 64];
        if (j->too_big)
            snprintf(error, sizeof(error), "response body larger than %zu bytes", j->max_body);
        else
            snprintf(error, sizeof(error), "%s",
                     rc == CURLE_OK ? ""
                     : j->error[0]  ? j->error
                                    : curl_easy_strerror(rc));
        td_fetch_cb *cb = j->cb;
        td_fetch_done_fn *done = j->done;
        void *arg = j->arg;
        char *body = j->data ? NULL : j->buf;
        size_t len = j->data ? 0 : j->len;
        if (body)
            j->buf = NULL;
        job_free(j);
        if (cb)
            cb(arg, status, error);
        else
            done(arg, status, error, body ? body : "", len);
        free(body);
    }
}

static void on_poll(uv_poll_t *p, int status, int events) {
    sock_t *s = p->data;
    int flags = status < 0 ? CURL_CSELECT_ERR : 0;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(multi, s->fd, flags, &running);
    check_done();
}

static void on_timer(uv_timer_t *t) {
    (void)t;
    int running;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done();
}

static void on_sock_closed(uv_handle_t *h) {
    free(h->data);
}

/* libcurl says which events it waits for on socket `fd` (CURL_POLL_REMOVE: none any more). */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
    (void)easy;
    (void)userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
            curl_multi_assign(multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || uv_poll_init_socket(loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        /* A request in flight never holds td's stop: shutdown cancels it. */
        uv_unref((uv_handle_t *)&s->poll);
        s->fd = fd;
        s->poll.data = s;
        curl_multi_assign(multi, fd, s);
    }
    int events = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

/* libcurl's next timeout: -1 none, 0 at once (from the next loop iteration: never re-entered
 * from inside curl_multi_add_handle). */
static int on_timeout(CURLM *m, long ms, void *userp) {
    (void)m;
    (void)userp;
    if (ms < 0)
        uv_timer_stop(&timer);
    else
        uv_timer_start(&timer, on_timer, (uint64_t)ms, 0);
    return 0;
}

int td_fetch_init(uv_loop_t *l) {
    if (ready) {
        ready++;
        return 0;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(multi = curl_multi_init()))
        return TD_ENOMEM;
    loop = l;
    uv_timer_init(loop, &timer);
    uv_unref((uv_handle_t *)&timer);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timeout);
    ready = 1;
    return 0;
}

static job_t *job_new(const td_fetch_req_t *rq) {
    job_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->easy = curl_easy_init())) {
        free(j);
        return NULL;
    }
    CURL *e = j->easy;
    int fail = 0;
    curl_easy_setopt(e, CURLOPT_URL, rq->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms > 0 ? rq->timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "td");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    if (rq->connect_to && rq->connect_to[0]) {
        char line[300];
        snprintf(line, sizeof(line), "::%s", rq->connect_to);
        fail |= !(j->connect_to = curl_slist_append(NULL, line));
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, j->connect_to);
    }
    if (rq->ca_file && rq->ca_file[0])
        curl_easy_setopt(e, CURLOPT_CAINFO, rq->ca_file);
    if (rq->cert && rq->cert[0])
        curl_easy_setopt(e, CURLOPT_SSLCERT, rq->cert);
    if (rq->key && rq->key[0])
        curl_easy_setopt(e, CURLOPT_SSLKEY, rq->key);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, rq->verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, rq->verify ? 2L : 0L);
    const char *method = rq->method && rq->method[0] ? rq->method : "GET";
    if (strcmp(method, "GET") != 0) {
        fail |= !(j->body = strdup(rq->body ? rq->body : ""));
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        fail |= !h;
        j->headers = h;
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    for (size_t i = 0; i < rq->num_headers && !fail; i++) {
        struct curl_slist *h = curl_slist_append(j->headers, rq->headers[i]);
        fail |= !h;
        j->headers = h ? h : j->headers;
    }
    if (j->headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->headers);
    j->max_body = rq->max_body ? rq->max_body : TD_FETCH_MAX_BODY;
    if (fail) {
        curl_easy_cleanup(e);
        curl_slist_free_all(j->connect_to);
        curl_slist_free_all(j->headers);
        free(j->body);
        free(j);
        return NULL;
    }
    return j;
}

/* A streamed request's socket gives up after 3 unanswered keep-alive probes (Linux's default is
 * 9: over a minute to notice a peer that vanished); libcurl has no option for it before 8.9. */
static int few_probes(void *userp, curl_socket_t fd, curlsocktype purpose) {
    (void)userp;
    int probes = 3;
    if (purpose == CURLSOCKTYPE_IPCXN)
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
    return CURL_SOCKOPT_OK;
}

static int job_add(job_t *j) {
    if (curl_multi_add_handle(multi, j->easy) != CURLM_OK) {
        curl_easy_cleanup(j->easy);
        curl_slist_free_all(j->connect_to);
        curl_slist_free_all(j->headers);
        free(j->body);
        free(j);
        return TD_ENOMEM;
    }
    j->next = jobs;
    if (jobs)
        jobs->prev = j;
    jobs = j;
    return 0;
}

int td_fetch(const td_fetch_req_t *rq, td_fetch_cb *cb, void *arg) {
    if (!ready || !rq->url || !rq->url[0])
        return TD_EINVAL;
    job_t *j = job_new(rq);
    if (!j)
        return TD_ENOMEM;
    j->cb = cb;
    j->arg = arg;
    return job_add(j);
}

int td_fetch_start(const td_fetch_req_t *rq, td_fetch_done_fn *done, td_fetch_data_fn *data,
                   void *arg, td_fetch_t **out) {
    if (!ready || !rq->url || !rq->url[0] || !done)
        return TD_EINVAL;
    job_t *j = job_new(rq);
    if (!j)
        return TD_ENOMEM;
    j->done = done;
    j->data = data;
    j->arg = arg;
    j->capture = !data;
    if (data) {
        /* A stream lasts as long as the peer sends: only the connect is bounded, and TCP
         * keep-alive finds a peer that went away without a word. */
        long ms = rq->timeout_ms > 0 ? rq->timeout_ms : 10000L;
        curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(j->easy, CURLOPT_CONNECTTIMEOUT_MS, ms);
        curl_easy_setopt(j->easy, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(j->easy, CURLOPT_TCP_KEEPIDLE, 10L);
        curl_easy_setopt(j->easy, CURLOPT_TCP_KEEPINTVL, 5L);
        curl_easy_setopt(j->easy, CURLOPT_SOCKOPTFUNCTION, few_probes);
    }
    int r = job_add(j);
    if (r == 0 && out)
        *out = j;
    return r;
}

void td_fetch_cancel(td_fetch_t *f) {
    if (ready && f)
        job_free(f);
}

void td_fetch_shutdown(void) {
    if (!ready || --ready > 0)
        return;
    while (jobs)
        job_free(jobs);
    uv_timer_stop(&timer);
    uv_close((uv_handle_t *)&timer, NULL);
    curl_multi_cleanup(multi);
    ready = 0;
}
