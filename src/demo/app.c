/* The demo backend's application: its routes (include/td/demo.h lists them), the "/" page naming
 * the colour, and the listening servers (td_demo_listen). */
#include "td/demo.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "conn.h"
#include "td/common-t.h"

static uv_once_t init_once = UV_ONCE_INIT;

/* Servers live as long as the process. They, and through their lists every open connection,
 * stay reachable from here: a program that ends by closing all of a loop's handles with its own
 * close callback (uv_walk) never runs ours, and what it leaves is not reported as leaked. */
static server_t *servers;
static uv_mutex_t servers_lock;

static void init(void) {
    td_demo_conn_init();
    if (uv_mutex_init(&servers_lock) != 0)
        abort();
}

/* ---- requests --------------------------------------------------------------------------- */

/* Parses a decimal number of 1 to 19 digits filling all of s, at most max. */
int td_demo_parse_num(const char *s, size_t len, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    if (len == 0 || len > 19)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static int path_is(const char *p, size_t len, const char *lit) {
    return strlen(lit) == len && memcmp(p, lit, len) == 0;
}

/* Matches "PREFIX<number>" and stores the number; 1 when the prefix matches (then *ok says
 * whether the number was valid), 0 otherwise. */
static int path_num(const char *p, size_t len, const char *prefix, uint64_t min, uint64_t max,
                    uint64_t *v, int *ok) {
    size_t pl = strlen(prefix);
    if (len < pl || memcmp(p, prefix, pl) != 0)
        return 0;
    *ok = td_demo_parse_num(p + pl, len - pl, max, v) == 0 && *v >= min;
    return 1;
}

enum route td_demo_route_of(td_str_t target, uint64_t *param) {
    const char *p = target.p;
    size_t len = target.len;
    /* absolute-form: skip "scheme://authority" */
    if (len > 0 && p[0] != '/') {
        const char *s = memchr(p, ':', len);
        if (s == NULL || (size_t)(p + len - s) < 3 || memcmp(s, "://", 3) != 0)
            return R_NOTFOUND;
        const char *slash = memchr(s + 3, '/', (size_t)(p + len - s - 3));
        if (slash == NULL)
            return R_PAGE;
        len -= (size_t)(slash - p);
        p = slash;
    }
    const char *q = memchr(p, '?', len);
    if (q != NULL)
        len = (size_t)(q - p);
    int ok = 0;
    if (path_is(p, len, "/") || path_is(p, len, "/index.html"))
        return R_PAGE;
    if (path_num(p, len, "/status/", 200, 599, param, &ok))
        return ok ? R_STATUS : R_BADPARAM;
    if (path_num(p, len, "/delay/", 0, MAX_DELAY_MS, param, &ok))
        return ok ? R_DELAY : R_BADPARAM;
    if (path_num(p, len, "/bytes/", 0, MAX_BYTES, param, &ok))
        return ok ? R_BYTES : R_BADPARAM;
    if (path_num(p, len, "/chunked/", 0, MAX_BYTES, param, &ok))
        return ok ? R_CHUNKED : R_BADPARAM;
    if (path_is(p, len, "/echo"))
        return R_ECHO;
    if (path_is(p, len, "/headers"))
        return R_HEADERS;
    if (path_is(p, len, "/close"))
        return R_CLOSE;
    if (path_is(p, len, "/reset"))
        return R_RESET;
    if (path_is(p, len, "/ws"))
        return R_WS;
    return R_NOTFOUND;
}

static void on_delay(uv_timer_t *t) {
    conn_t *c = t->data;
    char body[64];
    int n = snprintf(body, sizeof(body), "{\"delay_ms\": %" PRIu64 "}\n", c->param);
    td_demo_respond(c, 200, "application/json", body, (size_t)n, NULL, 1);
    td_demo_process(c);
}

void td_demo_dispatch(conn_t *c) {
    server_t *s = c->srv;
    char body[128];
    int n;
    switch (c->route) {
    case R_PAGE:
        td_demo_respond(c, 200, "text/html; charset=utf-8", s->page, s->page_len, NULL, 1);
        break;
    case R_STATUS:
        td_demo_respond(c, (int)c->param, NULL, "", 0, NULL, 1);
        break;
    case R_DELAY:
        c->state = ST_RESPOND;
        uv_timer_start(&c->timer, on_delay, c->param, 0);
        break;
    case R_BYTES:
    case R_CHUNKED:
        td_demo_respond_stream(c, c->param, c->route == R_CHUNKED);
        break;
    case R_ECHO:
        n = snprintf(body, sizeof(body), "{\"received\": %" PRIu64 ", \"sum\": %" PRIu32 "}\n",
                     c->received, c->sum);
        td_demo_respond(c, 200, "application/json", body, (size_t)n, NULL, 1);
        break;
    case R_HEADERS:
        td_demo_respond(c, 200, "text/plain", c->head_copy, c->head_len, NULL, 1);
        free(c->head_copy);
        c->head_copy = NULL;
        break;
    case R_CLOSE:
        td_demo_respond(c, 200, "text/plain", "closing\n", 8, NULL, 0);
        break;
    case R_RESET:
        td_demo_close_after_drain(c, 1);
        break;
    case R_WS:
        td_demo_ws_respond(c);
        break;
    case R_BADPARAM:
        td_demo_respond(c, 400, "text/plain", "bad number in path\n", 19, NULL, 1);
        break;
    case R_NOTFOUND:
        td_demo_respond(c, 404, "text/plain", "not found\n", 10, NULL, 1);
        break;
    }
}

/* ---- setup ------------------------------------------------------------------------------ */

static const char *colour_of(const char *name) {
    if (strcasecmp(name, "blue") == 0)
        return "#2563eb";
    if (strcasecmp(name, "green") == 0)
        return "#16a34a";
    return "#6b7280";
}

/* Appends s to out with HTML escaping; returns the new length. */
static size_t html_escape(char *out, size_t len, const char *s) {
    for (; *s; s++) {
        const char *e = NULL;
        switch (*s) {
        case '<':
            e = "&lt;";
            break;
        case '>':
            e = "&gt;";
            break;
        case '&':
            e = "&amp;";
            break;
        case '"':
            e = "&quot;";
            break;
        case '\'':
            e = "&#39;";
            break;
        }
        if (e != NULL) {
            memcpy(out + len, e, strlen(e));
            len += strlen(e);
        } else {
            out[len++] = *s;
        }
    }
    return len;
}

static char *build_page(const char *name, const char *address, size_t *page_len) {
    /* each escaped character takes at most 6 bytes; the name and address are bounded */
    char label[6 * 256 * 2 + 32];
    size_t l = html_escape(label, 0, name);
    static const char sep[] = " \xe2\x80\x94 served by "; /* U+2014 EM DASH in UTF-8 */
    memcpy(label + l, sep, sizeof(sep) - 1);
    l += sizeof(sep) - 1;
    l = html_escape(label, l, address);
    label[l] = '\0';
    size_t cap = 2 * l + 1024;
    char *page = malloc(cap);
    if (page == NULL)
        return NULL;
    int n = snprintf(page, cap,
                     "<!DOCTYPE html>\n"
                     "<html><head><meta charset=\"utf-8\"><title>%s</title>\n"
                     "<style>body{margin:0;height:100vh;display:flex;align-items:center;"
                     "justify-content:center;background:%s;color:#fff;"
                     "font-family:system-ui,sans-serif}h1{font-size:3em}</style></head>\n"
                     "<body><h1>%s</h1></body></html>\n",
                     label, colour_of(name), label);
    *page_len = (size_t)n;
    return page;
}

static void on_listener_closed(uv_handle_t *h) {
    server_t *s = h->data;
    free(s->name);
    free(s->address);
    free(s->page);
    free(s);
}

/* Accepts "IPv4:port" and "[IPv6]:port". */
static int parse_address(const char *address, struct sockaddr_storage *ss) {
    char host[64];
    const char *colon = strrchr(address, ':');
    if (colon == NULL)
        return -1;
    const char *h = address;
    size_t hl = (size_t)(colon - address);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host))
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    uint64_t port;
    if (td_demo_parse_num(colon + 1, strlen(colon + 1), 65535, &port) != 0)
        return -1;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -1;
}

static int valid_name(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= 0x20 || (unsigned char)name[i] >= 0x7f)
            return 0;
    return 1;
}

int td_demo_listen(uv_loop_t *loop, const char *name, const char *address, char *err,
                   size_t errlen) {
    struct sockaddr_storage ss;
    int r;

    uv_once(&init_once, init);
    if (!valid_name(name)) {
        snprintf(err, errlen,
                 "invalid backend name \"%s\": expected 1 to 255 visible ASCII "
                 "characters",
                 name);
        return TD_EINVAL;
    }
    if (strlen(address) > 255 || parse_address(address, &ss) != 0) {
        snprintf(err, errlen, "invalid address \"%s\": expected IP:port, e.g. 127.0.0.1:9001",
                 address);
        return TD_EINVAL;
    }
    server_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    s->name = strdup(name);
    s->address = strdup(address);
    if (s->name == NULL || s->address == NULL)
        goto nomem;
    s->page = build_page(name, address, &s->page_len);
    if (s->page == NULL)
        goto nomem;

    r = uv_tcp_init_ex(loop, &s->listener, ss.ss_family);
    if (r != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(r));
        free(s->page);
        free(s->name);
        free(s->address);
        free(s);
        return TD_EIO;
    }
    s->listener.data = s;
    /* libuv sets SO_REUSEADDR in uv_tcp_bind on Unix too; saying it here keeps it explicit. */
    uv_os_fd_t fd;
    int on = 1;
    if (uv_fileno((uv_handle_t *)&s->listener, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    r = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&s->listener, 511, td_demo_accept);
    if (r != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", address, uv_strerror(r));
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return TD_EIO;
    }
    uv_mutex_lock(&servers_lock);
    s->next = servers;
    servers = s;
    uv_mutex_unlock(&servers_lock);
    return 0;

nomem:
    snprintf(err, errlen, "cannot start demo backend %s on %s: out of memory", name, address);
    if (s != NULL) {
        free(s->name);
        free(s->address);
        free(s);
    }
    return TD_ENOMEM;
}
