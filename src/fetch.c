/* td's own HTTP requests on the main loop: libcurl's multi interface with libuv doing the
 * waiting (one uv_poll_t per socket libcurl opens, one uv_timer_t for libcurl's timeouts). */
#include "td/fetch.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"

/* One request in flight: its easy handle and what it needs to live as long (owned). */
typedef struct job_s {
    CURL *easy;
    struct curl_slist *connect_to, *headers;
    char *body;
    td_fetch_cb *cb;
    void *arg;
    char error[CURL_ERROR_SIZE];
    struct job_s *prev, *next; /* the list of jobs in flight */
} job_t;

/* A socket libcurl watches; freed after its poll handle closed. */
typedef struct sock_s {
    uv_poll_t poll;
    curl_socket_t fd;
} sock_t;

static uv_loop_t *loop;
static CURLM *multi;
static uv_timer_t timer;
static int ready;
static job_t *jobs; /* in flight */

/* The answer's body is not kept: only the status counts. */
static size_t discard(char *p, size_t size, size_t n, void *userp) {
    (void)p;
    (void)userp;
    return size * n;
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
    free(j);
}

/* Hands every finished request to its callback. */
static void check_done(void) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        job_t *j = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        CURLcode rc = m->data.result;
        long status = 0;
        if (rc == CURLE_OK)
            curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
        char error[CURL_ERROR_SIZE + 64];
        snprintf(error, sizeof(error), "%s",
                 rc == CURLE_OK ? ""
                 : j->error[0]  ? j->error
                                : curl_easy_strerror(rc));
        td_fetch_cb *cb = j->cb;
        void *arg = j->arg;
        job_free(j);
        cb(arg, (int)status, error);
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
    if (ready)
        return 0;
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

int td_fetch(const td_fetch_req_t *rq, td_fetch_cb *cb, void *arg) {
    if (!ready || !rq->url || !rq->url[0])
        return TD_EINVAL;
    job_t *j = calloc(1, sizeof(*j));
    if (!j || !(j->easy = curl_easy_init())) {
        free(j);
        return TD_ENOMEM;
    }
    j->cb = cb;
    j->arg = arg;
    CURL *e = j->easy;
    curl_easy_setopt(e, CURLOPT_URL, rq->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, j->error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, rq->timeout_ms > 0 ? rq->timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "td");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    if (rq->connect_to && rq->connect_to[0]) {
        char line[300];
        snprintf(line, sizeof(line), "::%s", rq->connect_to);
        j->connect_to = curl_slist_append(NULL, line);
        curl_easy_setopt(e, CURLOPT_CONNECT_TO, j->connect_to);
    }
    if (rq->ca_file && rq->ca_file[0])
        curl_easy_setopt(e, CURLOPT_CAINFO, rq->ca_file);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, rq->verify ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, rq->verify ? 2L : 0L);
    if (rq->method && strcmp(rq->method, "POST") == 0) {
        j->body = strdup(rq->body ? rq->body : "");
        j->headers = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->headers);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->body);
    }
    if (curl_multi_add_handle(multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
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

void td_fetch_shutdown(void) {
    if (!ready)
        return;
    while (jobs)
        job_free(jobs);
    uv_timer_stop(&timer);
    uv_close((uv_handle_t *)&timer, NULL);
    curl_multi_cleanup(multi);
    ready = 0;
}
