/* The resolver: servers' host names to addresses with c-ares on a libuv loop (td/resolver.h). */
#include "td/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "td/common-t.h"
#include "td/config.h"
#include "td/control.h"
#include "td/events.h"
#include "td/log.h"
#include "td/router.h"

#define TICK_MS 200       /* how often names whose addresses are all down are looked for */
#define MIN_AGAIN_MS 1000 /* the shortest TTL-driven, failure or all-down repeat */

typedef struct resolver_s resolver_t;

/* One name followed. Freed only when no query of it is in flight (`asking`): a name dropped
 * meanwhile is marked `dead` and freed by the query's callback. */
typedef struct entry_s {
    resolver_t *r; /* borrowed: its resolver */
    char name[64]; /* HOST:port as configured */
    char host[64];
    unsigned short port;
    int resolve_ms; /* the smallest of the servers naming it */
    td_addr_t addrs[TD_RESOLVER_MAX_ADDRS];
    size_t n;
    int64_t resolved_at_ms; /* wall */
    int64_t checked_at_ms;  /* wall */
    int64_t due_ms;         /* td_now_ms() of the next attempt */
    int64_t asked_ms;       /* td_now_ms() of the last attempt's start */
    int64_t nx_since_ms;    /* td_now_ms() of the first NXDOMAIN/NODATA since the last answer */
    char error[160];
    int asking, dead, seen, done;
    struct entry_s *next;
} entry_t;

/* A socket c-ares asked to be watched. */
typedef struct watch_s {
    uv_poll_t poll;
    ares_socket_t fd;
    resolver_t *r;
    struct watch_s *next;
} watch_t;

struct resolver_s {
    uv_loop_t *loop;
    ares_channel ch;
    int have_ch;
    uv_timer_t ares_timer; /* c-ares' own timeouts */
    uv_timer_t tick;       /* TICK_MS: names all down */
    uv_timer_t due;        /* at the earliest due_ms of the names not being asked */
    uv_timer_t notify;     /* on_change on the loop's next turn, never inside a caller's call */
    int timers_on;
    watch_t *watches;
    entry_t *entries;
    td_config_resolvers_t conf; /* as the channel was made */
    int has_conf;
    int hold_nx_ms; /* resolvers.hold_nx_ms of the config followed */
    td_resolver_change_fn *on_change;
    td_resolver_change_fn *on_first; /* td_resolver_on_first_answer */
    int changed;                     /* an answer changed during this turn */
    int first;                       /* a name had its first answer (or failure) this turn */
};

static resolver_t running;
static int running_on;
static int lib_on;

static void arm_ares_timer(resolver_t *r);
static void arm_due(resolver_t *r);
static struct entry_s *find(resolver_t *r, const char *name);
/* Calls fn for each address of a name of cfg (only `only`, when not NULL) that another server of
 * its backend has (td_resolver_overlap_fn), with the answers r has. */
static void overlaps(resolver_t *r, const td_config_t *cfg, const char *only,
                     td_resolver_overlap_fn *fn, void *arg);
static td_resolver_overlap_fn overlap_log;

static void watch_close_cb(uv_handle_t *h) {
    free(h->data);
}

static void poll_cb(uv_poll_t *p, int status, int events) {
    watch_t *w = p->data;
    resolver_t *r = w->r;
    ares_socket_t rd = ARES_SOCKET_BAD, wr = ARES_SOCKET_BAD;
    /* An error on the socket: let c-ares read and write it to find out. */
    if (status < 0 || (events & UV_READABLE))
        rd = w->fd;
    if (status < 0 || (events & UV_WRITABLE))
        wr = w->fd;
    ares_process_fd(r->ch, rd, wr);
    arm_ares_timer(r);
}

/* c-ares' ARES_OPT_SOCK_STATE_CB: watch `fd` for what it asks, or stop watching it. */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable) {
    resolver_t *r = data;
    watch_t **pp = &r->watches, *w;
    while (*pp && (*pp)->fd != fd)
        pp = &(*pp)->next;
    w = *pp;
    if (!readable && !writable) {
        if (w) {
            *pp = w->next;
            uv_close((uv_handle_t *)&w->poll, watch_close_cb);
        }
        return;
    }
    if (!w) {
        w = calloc(1, sizeof(*w));
        if (!w || uv_poll_init_socket(r->loop, &w->poll, fd) != 0) {
            free(w);
            td_warn("resolver: cannot watch a DNS socket");
            return;
        }
        w->fd = fd;
        w->r = r;
        w->poll.data = w;
        w->next = r->watches;
        r->watches = w;
    }
    uv_poll_start(&w->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), poll_cb);
}

static void ares_timer_cb(uv_timer_t *t) {
    resolver_t *r = t->data;
    ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_ares_timer(r);
}

static void arm_ares_timer(resolver_t *r) {
    struct timeval tv, *tvp;
    if (!r->have_ch || !(tvp = ares_timeout(r->ch, NULL, &tv))) {
        uv_timer_stop(&r->ares_timer);
        return;
    }
    uint64_t ms = (uint64_t)tvp->tv_sec * 1000 + (uint64_t)tvp->tv_usec / 1000;
    uv_timer_start(&r->ares_timer, ares_timer_cb, ms ? ms : 1, 0);
}

static int conf_same(const td_config_resolvers_t *a, int has_a, const td_config_resolvers_t *b,
                     int has_b) {
    if (!has_a || !has_b)
        return has_a == has_b;
    if (a->num_nameservers != b->num_nameservers || a->timeout_ms != b->timeout_ms ||
        a->attempts != b->attempts)
        return 0;
    for (int i = 0; i < a->num_nameservers; i++)
        if (strcmp(a->nameservers[i].text, b->nameservers[i].text) != 0)
            return 0;
    return 1;
}

/* Makes r's channel for `rs` (NULL: c-ares' defaults, /etc/resolv.conf). */
static int channel_open(resolver_t *r, const td_config_resolvers_t *rs, char *err, size_t errlen) {
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS;
    /* With name servers configured only they are asked; without, the system's way: /etc/hosts
     * first, then DNS. */
    o.lookups = rs && rs->num_nameservers ? "b" : "fb";
    o.sock_state_cb = sock_state_cb;
    o.sock_state_cb_data = r;
    o.timeout = rs ? rs->timeout_ms : 2000;
    o.tries = rs ? rs->attempts : 2;
    int rc = ares_init_options(&r->ch, &o, mask);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "cannot start c-ares: %s", ares_strerror(rc));
        return TD_EIO;
    }
    if (rs && rs->num_nameservers) {
        char csv[TD_CONFIG_MAX_NAMESERVERS * 66] = "";
        size_t len = 0;
        for (int i = 0; i < rs->num_nameservers; i++)
            len += (size_t)snprintf(csv + len, sizeof(csv) - len, "%s%s", i ? "," : "",
                                    rs->nameservers[i].text);
        rc = ares_set_servers_ports_csv(r->ch, csv);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "name servers %s: %s", csv, ares_strerror(rc));
            ares_destroy(r->ch);
            return TD_EIO;
        }
    }
    r->have_ch = 1;
    return 0;
}

static void channel_close(resolver_t *r) {
    if (!r->have_ch)
        return;
    ares_destroy(r->ch); /* calls the pending queries' callbacks with ARES_EDESTRUCTION */
    r->have_ch = 0;
    arm_ares_timer(r);
}

static void entry_free(resolver_t *r, entry_t *e) {
    for (entry_t **pp = &r->entries; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    free(e);
}

static int addr_cmp(const void *a, const void *b) {
    const td_addr_t *x = a, *y = b;
    if (x->sa.ss_family != y->sa.ss_family) /* IPv4 first */
        return x->sa.ss_family == AF_INET ? -1 : 1;
    if (x->sa.ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)&x->sa)->sin_addr,
                      &((const struct sockaddr_in *)&y->sa)->sin_addr, 4);
    return memcmp(&((const struct sockaddr_in6 *)&x->sa)->sin6_addr,
                  &((const struct sockaddr_in6 *)&y->sa)->sin6_addr, 16);
}

/* The answer's addresses, sorted and without duplicates, into out[]; the shortest TTL (s) in
 * *ttl (-1: none given). */
static size_t answer_addrs(const struct ares_addrinfo *ai, unsigned short port, td_addr_t *out,
                           int *ttl) {
    size_t n = 0;
    *ttl = -1;
    for (const struct ares_addrinfo_node *nd = ai ? ai->nodes : NULL;
         nd && n < TD_RESOLVER_MAX_ADDRS; nd = nd->ai_next) {
        td_addr_t a;
        char ip[INET6_ADDRSTRLEN];
        memset(&a, 0, sizeof(a));
        if (nd->ai_family == AF_INET && nd->ai_addrlen >= sizeof(struct sockaddr_in)) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&a.sa;
            *s4 = *(const struct sockaddr_in *)nd->ai_addr;
            s4->sin_port = htons(port);
            a.salen = sizeof(*s4);
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
            snprintf(a.text, sizeof(a.text), "%s:%u", ip, port);
        } else if (nd->ai_family == AF_INET6 && nd->ai_addrlen >= sizeof(struct sockaddr_in6)) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.sa;
            *s6 = *(const struct sockaddr_in6 *)nd->ai_addr;
            s6->sin6_port = htons(port);
            a.salen = sizeof(*s6);
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
            snprintf(a.text, sizeof(a.text), "[%s]:%u", ip, port);
        } else {
            continue;
        }
        int dup = 0;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(out[i].text, a.text) == 0;
        if (dup)
            continue;
        out[n++] = a;
        if (nd->ai_ttl >= 0 && (*ttl < 0 || nd->ai_ttl < *ttl))
            *ttl = nd->ai_ttl;
    }
    qsort(out, n, sizeof(out[0]), addr_cmp);
    return n;
}

/* addrs[0..n) as "A, B, C", cut after 8 with "and N more"; "none" for n = 0. */
static void addr_list(const td_addr_t *addrs, size_t n, char *out, size_t len) {
    size_t at = 0;
    out[0] = '\0';
    if (!n)
        snprintf(out, len, "none");
    for (size_t i = 0; i < n && i < 8 && at < len; i++)
        at += (size_t)snprintf(out + at, len - at, "%s%s", i ? ", " : "", addrs[i].text);
    if (n > 8 && at < len)
        snprintf(out + at, len - at, " and %zu more", n - 8);
}

/* The backends of the running config that have a server named `name`, "a, b" (for the events). */
static void backends_of(const char *name, char *out, size_t len) {
    const td_config_t *cfg = td_control_config();
    size_t at = 0;
    out[0] = '\0';
    for (size_t i = 0; cfg && i < cfg->num_backends && at < len; i++)
        for (size_t j = 0; j < cfg->backends[i].num_servers; j++)
            if (strcasecmp(cfg->backends[i].servers[j].address.text, name) == 0) {
                at += (size_t)snprintf(out + at, len - at, "%s%s", at ? ", " : "",
                                       cfg->backends[i].name);
                break;
            }
}

/* Clear words for c-ares' status codes (its own strings say "Misformatted domain name" for a
 * REFUSED answer, among others). */
static const char *status_words(int status) {
    switch (status) {
    case ARES_ENOTFOUND:
        return "no such name (NXDOMAIN)";
    case ARES_ENODATA:
        return "no address for the name (NODATA)";
    case ARES_EREFUSED:
        return "refused by the name server";
    case ARES_ESERVFAIL:
        return "name server failure (SERVFAIL)";
    case ARES_ETIMEOUT:
        return "timeout: no name server answered";
    case ARES_ECONNREFUSED:
        return "connection refused by the name server";
    case ARES_EFORMERR:
    case ARES_EBADRESP:
        return "malformed answer from the name server";
    default:
        return ares_strerror(status);
    }
}

static void notify_cb(uv_timer_t *t) {
    resolver_t *r = t->data;
    int changed = r->changed, first = r->first;
    r->changed = r->first = 0;
    /* The change first: the snapshot it publishes may already be the one a config change waits
     * for. */
    if (changed && r->on_change)
        r->on_change();
    if (first && r->on_first)
        r->on_first();
}

static void answer_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
    (void)timeouts;
    entry_t *e = arg;
    resolver_t *r = e->r;
    e->asking = 0;
    e->done = 1;
    if (status == ARES_EDESTRUCTION || e->dead) {
        /* The channel went (a new one asks again) or the name was dropped. */
        if (ai)
            ares_freeaddrinfo(ai);
        if (e->dead)
            entry_free(r, e);
        else
            e->due_ms = 0;
        return;
    }
    int64_t now = td_now_ms();
    if (!e->checked_at_ms)
        r->first = 1;
    e->checked_at_ms = td_wall_ms();
    td_addr_t got[TD_RESOLVER_MAX_ADDRS];
    int ttl = -1;
    size_t n = status == ARES_SUCCESS ? answer_addrs(ai, e->port, got, &ttl) : 0;
    if (ai)
        ares_freeaddrinfo(ai);
    int again = e->resolve_ms;
    /* An authoritative "no" (NXDOMAIN, or NODATA: no address) drops the last addresses after
     * hold_nx_ms; any other failure (timeout, refused, unreachable) keeps them. */
    int nx =
        status == ARES_ENOTFOUND || status == ARES_ENODATA || (status == ARES_SUCCESS && n == 0);
    if (n == 0 && nx && e->n) {
        if (!e->nx_since_ms)
            e->nx_since_ms = now;
        int64_t left = e->nx_since_ms + r->hold_nx_ms - now;
        if (left <= 0) {
            if (r == &running)
                td_warn("resolver: %s: %s for %d ms (resolvers.hold_nx_ms): its %zu address%s "
                        "dropped",
                        e->name, status_words(status == ARES_SUCCESS ? ARES_ENODATA : status),
                        r->hold_nx_ms, e->n, e->n == 1 ? " is" : "es are");
            if (r == &running) {
                char was[512], where[256];
                addr_list(e->addrs, e->n, was, sizeof(was));
                backends_of(e->name, where, sizeof(where));
                td_event("dns", "%s: %s now none (was %s)", where[0] ? where : "?", e->name, was);
            }
            e->n = 0;
            r->changed = 1;
        } else if (left < again) {
            again = (int)left;
        }
    }
    if (n == 0) {
        char why[160];
        snprintf(why, sizeof(why), "%s",
                 status_words(status == ARES_SUCCESS ? ARES_ENODATA : status));
        if (strcmp(why, e->error) != 0 && r == &running) {
            if (e->n && nx)
                td_warn("resolver: %s: %s; keeping its last %zu address%s for %d ms "
                        "(resolvers.hold_nx_ms)",
                        e->name, why, e->n, e->n == 1 ? "" : "es", r->hold_nx_ms);
            else if (e->n)
                td_warn("resolver: %s: %s; keeping its last %zu address%s", e->name, why, e->n,
                        e->n == 1 ? "" : "es");
            else
                td_warn("resolver: %s: %s; it has no address", e->name, why);
        }
        snprintf(e->error, sizeof(e->error), "%s", why);
        if (again > MIN_AGAIN_MS)
            again = MIN_AGAIN_MS;
    } else {
        if (e->error[0] && r == &running)
            td_info("resolver: %s resolves again (%zu address%s)", e->name, n, n == 1 ? "" : "es");
        e->error[0] = '\0';
        e->nx_since_ms = 0;
        e->resolved_at_ms = e->checked_at_ms;
        int same = n == e->n;
        for (size_t i = 0; same && i < n; i++)
            same = strcmp(got[i].text, e->addrs[i].text) == 0;
        if (!same) {
            char list[512], was[512], where[256];
            addr_list(got, n, list, sizeof(list));
            addr_list(e->addrs, e->n, was, sizeof(was));
            if (r == &running) {
                td_info("resolver: %s is %s (was %s)", e->name, list, was);
                backends_of(e->name, where, sizeof(where));
                td_event("dns", "%s: %s now %s (was %s)", where[0] ? where : "?", e->name, list,
                         was);
            }
            memcpy(e->addrs, got, n * sizeof(got[0]));
            e->n = n;
            r->changed = 1;
            const td_config_t *cfg = r == &running ? td_control_config() : NULL;
            if (cfg)
                overlaps(r, cfg, e->name, overlap_log, (void *)cfg);
        }
        /* A record's TTL shorter than resolve_ms wins, but no more often than once a second. */
        if (ttl >= 0 && (int64_t)ttl * 1000 < again)
            again = ttl * 1000 < MIN_AGAIN_MS ? MIN_AGAIN_MS : ttl * 1000;
    }
    e->due_ms = now + again;
    if (r == &running)
        arm_due(r);
    if (((r->changed && r->on_change) || (r->first && r->on_first)) && r == &running)
        uv_timer_start(&r->notify, notify_cb, 0, 0);
}

/* The address text of server j of backend b as it expands (an IP's own, or the name's answer in
 * r) into out[]; returns how many. */
static size_t expand(resolver_t *r, const td_config_server_t *cs, td_addr_t *out) {
    if (!td_addr_is_name(&cs->address)) {
        out[0] = cs->address;
        return 1;
    }
    entry_t *e = find(r, cs->address.text);
    if (!e)
        return 0;
    memcpy(out, e->addrs, e->n * sizeof(out[0]));
    return e->n;
}

static void overlaps(resolver_t *r, const td_config_t *cfg, const char *only,
                     td_resolver_overlap_fn *fn, void *arg) {
    static td_addr_t mine[TD_RESOLVER_MAX_ADDRS], theirs[TD_RESOLVER_MAX_ADDRS];
    for (size_t i = 0; i < cfg->num_backends; i++) {
        const td_config_backend_t *cb = &cfg->backends[i];
        for (size_t j = 0; j < cb->num_servers; j++) {
            const td_config_server_t *cs = &cb->servers[j];
            if (!td_addr_is_name(&cs->address) || (only && strcasecmp(only, cs->address.text) != 0))
                continue;
            size_t n = expand(r, cs, mine);
            for (size_t k = 0; k < n; k++) {
                /* Who has it: a server by that address anywhere, else a name before this one. */
                size_t who = cb->num_servers;
                for (size_t m = 0; m < cb->num_servers && who == cb->num_servers; m++) {
                    const td_config_server_t *o = &cb->servers[m];
                    if (m == j || (td_addr_is_name(&o->address) && m > j))
                        continue;
                    size_t on = expand(r, o, theirs);
                    for (size_t q = 0; q < on && who == cb->num_servers; q++)
                        if (strcmp(theirs[q].text, mine[k].text) == 0)
                            who = m;
                }
                if (who < cb->num_servers)
                    fn(arg, (int)i, (int)j, mine[k].text, cb->servers[who].address.text);
            }
        }
    }
}

static void overlap_log(void *arg, int b, int s, const char *address, const char *other) {
    const td_config_t *cfg = arg;
    td_warn("resolver: backend %s: %s answers %s, which is already the server %s: that one is "
            "kept, with its own weight",
            cfg->backends[b].name, cfg->backends[b].servers[s].address.text, address, other);
}

static void ask(resolver_t *r, entry_t *e) {
    if (!r->have_ch || e->asking)
        return;
    struct ares_addrinfo_hints h;
    memset(&h, 0, sizeof(h));
    h.ai_family = AF_UNSPEC;
    h.ai_flags = ARES_AI_NOSORT;
    e->asking = 1;
    e->asked_ms = td_now_ms();
    e->due_ms = e->asked_ms + e->resolve_ms; /* replaced by the answer */
    ares_getaddrinfo(r->ch, e->host, NULL, &h, answer_cb, e);
    arm_ares_timer(r);
}

/* 1 when the current snapshot has servers of `name` and none of them is up. */
static int all_down(const char *name) {
    td_snapshot_t *s = td_router_acquire();
    int seen = 0, up = 0;
    int64_t now = td_now_ms();
    for (size_t i = 0; s && i < s->num_backends && !up; i++)
        for (size_t j = 0; j < s->backends[i].num_servers && !up; j++) {
            const td_snap_server_t *sv = &s->backends[i].servers[j];
            if (!sv->name || strcasecmp(sv->name, name) != 0)
                continue;
            seen = 1;
            up = td_server_is_up(sv->st, now);
        }
    td_snapshot_release(s);
    return seen && !up;
}

static void tick_cb(uv_timer_t *t) {
    resolver_t *r = t->data;
    int64_t now = td_now_ms();
    for (entry_t *e = r->entries; e; e = e->next) {
        if (e->asking || e->dead)
            continue;
        if (e->n && now - e->asked_ms >= MIN_AGAIN_MS && all_down(e->name))
            ask(r, e);
    }
}

static void due_cb(uv_timer_t *t) {
    resolver_t *r = t->data;
    int64_t now = td_now_ms();
    for (entry_t *e = r->entries; e; e = e->next)
        if (!e->asking && !e->dead && now >= e->due_ms)
            ask(r, e);
    arm_due(r);
}

/* Arms the running resolver's due timer at the earliest next attempt of a name not being asked
 * (an answer re-arms it), so that resolve_ms and TTLs are kept to the ms. */
static void arm_due(resolver_t *r) {
    int64_t first = -1;
    if (r != &running || !running_on)
        return;
    for (entry_t *e = r->entries; e; e = e->next)
        if (!e->asking && !e->dead && (first < 0 || e->due_ms < first))
            first = e->due_ms;
    if (first < 0) {
        uv_timer_stop(&r->due);
        return;
    }
    int64_t wait = first - td_now_ms();
    uv_timer_start(&r->due, due_cb, wait > 0 ? (uint64_t)wait : 0, 0);
}

static entry_t *find(resolver_t *r, const char *name) {
    for (entry_t *e = r->entries; e; e = e->next)
        if (!e->dead && strcasecmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* Marks every name of cfg's servers in r (adding the new ones); returns TD_ENOMEM or 0. */
static int follow(resolver_t *r, const td_config_t *cfg) {
    for (entry_t *e = r->entries; e; e = e->next)
        e->seen = 0;
    for (size_t i = 0; i < cfg->num_backends; i++)
        for (size_t j = 0; j < cfg->backends[i].num_servers; j++) {
            const td_config_server_t *sv = &cfg->backends[i].servers[j];
            if (!td_addr_is_name(&sv->address))
                continue;
            entry_t *e = find(r, sv->address.text);
            if (e) {
                if (!e->seen || sv->resolve_ms < e->resolve_ms) {
                    /* A shorter resolve_ms applies from now on. */
                    if (e->due_ms > td_now_ms() + sv->resolve_ms)
                        e->due_ms = td_now_ms() + sv->resolve_ms;
                    e->resolve_ms = sv->resolve_ms;
                }
                e->seen = 1;
                continue;
            }
            e = calloc(1, sizeof(*e));
            if (!e)
                return TD_ENOMEM;
            e->r = r;
            snprintf(e->name, sizeof(e->name), "%s", sv->address.text);
            const char *colon = strrchr(e->name, ':');
            memcpy(e->host, e->name, (size_t)(colon - e->name));
            e->host[colon - e->name] = '\0';
            e->port = (unsigned short)atoi(colon + 1);
            e->resolve_ms = sv->resolve_ms;
            e->seen = 1;
            e->next = r->entries;
            r->entries = e;
        }
    for (entry_t *e = r->entries, *next; e; e = next) {
        next = e->next;
        if (e->seen || e->dead)
            continue;
        if (e->asking)
            e->dead = 1;
        else
            entry_free(r, e);
    }
    return 0;
}

static int lib_init(char *err, size_t errlen) {
    if (lib_on)
        return 0;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "cannot start c-ares: %s", ares_strerror(rc));
        return TD_EIO;
    }
    lib_on = 1;
    return 0;
}

int td_resolver_sync(uv_loop_t *loop, const td_config_t *cfg, td_resolver_change_fn *on_change) {
    resolver_t *r = &running;
    char err[256];
    int has_names = 0;
    for (size_t i = 0; i < cfg->num_backends && !has_names; i++)
        for (size_t j = 0; j < cfg->backends[i].num_servers && !has_names; j++)
            has_names = td_addr_is_name(&cfg->backends[i].servers[j].address);
    if (!running_on && !has_names)
        return 0; /* nothing to resolve: no channel, no timers */
    if (!running_on) {
        r->loop = loop;
        uv_timer_init(loop, &r->ares_timer);
        uv_timer_init(loop, &r->tick);
        uv_timer_init(loop, &r->notify);
        uv_timer_init(loop, &r->due);
        r->ares_timer.data = r->tick.data = r->notify.data = r->due.data = r;
        uv_unref((uv_handle_t *)&r->tick); /* never what keeps the loop running */
        uv_unref((uv_handle_t *)&r->due);
        uv_timer_start(&r->tick, tick_cb, TICK_MS, TICK_MS);
        r->timers_on = 1;
        running_on = 1;
    }
    r->on_change = on_change;
    r->hold_nx_ms = cfg->has_resolvers ? cfg->resolvers.hold_nx_ms : TD_RESOLVER_HOLD_NX_MS;
    int rc = follow(r, cfg);
    if (rc < 0)
        return rc;
    if (r->have_ch && !conf_same(&r->conf, r->has_conf, &cfg->resolvers, cfg->has_resolvers)) {
        channel_close(r);
        for (entry_t *e = r->entries; e; e = e->next)
            e->due_ms = 0;
    }
    if (!r->have_ch) {
        if ((rc = lib_init(err, sizeof(err))) < 0 ||
            (rc = channel_open(r, cfg->has_resolvers ? &cfg->resolvers : NULL, err, sizeof(err))) <
                0) {
            td_error("resolver: %s", err);
            return rc;
        }
        r->conf = cfg->resolvers;
        r->has_conf = cfg->has_resolvers;
    }
    /* New names (and all of them on a new channel) are asked now. */
    for (entry_t *e = r->entries; e; e = e->next)
        if (!e->dead && !e->asking && !e->done)
            ask(r, e);
    for (entry_t *e = r->entries; e; e = e->next)
        if (!e->dead && !e->asking && e->due_ms == 0)
            ask(r, e);
    arm_due(r);
    return 0;
}

uint64_t td_resolver_bound_ms(const td_config_t *cfg) {
    const td_config_resolvers_t *rs = cfg->has_resolvers ? &cfg->resolvers : NULL;
    return (uint64_t)(rs ? rs->timeout_ms : 2000) * (uint64_t)(rs ? rs->attempts : 2) *
               (uint64_t)(rs && rs->num_nameservers ? rs->num_nameservers : 3) +
           1000;
}

void td_resolver_on_first_answer(td_resolver_change_fn *fn) {
    running.on_first = fn;
}

size_t td_resolver_unanswered(const td_config_t *cfg) {
    size_t n = 0;
    if (!running_on)
        return 0;
    for (size_t i = 0; i < cfg->num_backends; i++)
        for (size_t j = 0; j < cfg->backends[i].num_servers; j++) {
            const td_addr_t *a = &cfg->backends[i].servers[j].address;
            entry_t *e = td_addr_is_name(a) ? find(&running, a->text) : NULL;
            n += e && !e->checked_at_ms;
        }
    return n;
}

static void stop_cb(uv_timer_t *t) {
    uv_stop(t->loop);
}

int td_resolver_resolve_all(const td_config_t *cfg, int keep,
                            void (*report)(void *arg, int b, int s, const char *error),
                            td_resolver_overlap_fn *overlap, void *arg) {
    resolver_t tmp;
    uv_loop_t loop;
    uv_timer_t limit;
    char err[256];
    int rc;
    memset(&tmp, 0, sizeof(tmp));
    tmp.hold_nx_ms = cfg->has_resolvers ? cfg->resolvers.hold_nx_ms : TD_RESOLVER_HOLD_NX_MS;
    if ((rc = follow(&tmp, cfg)) < 0)
        goto out_entries;
    if (!tmp.entries)
        return 0;
    if ((rc = lib_init(err, sizeof(err))) < 0) {
        report(arg, -1, -1, err);
        goto out_entries;
    }
    if (uv_loop_init(&loop) != 0) {
        rc = TD_EIO;
        goto out_entries;
    }
    tmp.loop = &loop;
    uv_timer_init(&loop, &tmp.ares_timer);
    tmp.ares_timer.data = &tmp;
    if ((rc = channel_open(&tmp, cfg->has_resolvers ? &cfg->resolvers : NULL, err, sizeof(err))) <
        0) {
        report(arg, -1, -1, err);
    } else {
        for (entry_t *e = tmp.entries; e; e = e->next)
            ask(&tmp, e);
        /* c-ares ends every query within its timeouts; the limit is a guard over them. */
        uint64_t bound = td_resolver_bound_ms(cfg);
        uv_timer_init(&loop, &limit);
        uv_timer_start(&limit, stop_cb, bound, 0);
        for (;;) {
            int pending = 0;
            for (entry_t *e = tmp.entries; e; e = e->next)
                pending |= e->asking;
            if (!pending || uv_run(&loop, UV_RUN_ONCE) == 0 || !uv_loop_alive(&loop))
                break;
            if (!uv_is_active((uv_handle_t *)&limit))
                break;
        }
        uv_close((uv_handle_t *)&limit, NULL);
        channel_close(&tmp);
    }
    while (tmp.watches) {
        watch_t *w = tmp.watches;
        tmp.watches = w->next;
        uv_close((uv_handle_t *)&w->poll, watch_close_cb);
    }
    uv_close((uv_handle_t *)&tmp.ares_timer, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* the close callbacks */
    uv_loop_close(&loop);
    if (rc == 0) {
        for (size_t i = 0; i < cfg->num_backends; i++)
            for (size_t j = 0; j < cfg->backends[i].num_servers; j++) {
                const td_addr_t *a = &cfg->backends[i].servers[j].address;
                entry_t *e = td_addr_is_name(a) ? find(&tmp, a->text) : NULL;
                if (e && !e->n && report)
                    report(arg, (int)i, (int)j,
                           e->error[0] ? e->error : "no answer within the resolvers' timeout");
            }
        for (entry_t *e = keep ? tmp.entries : NULL; e; e = e->next)
            if (e->n) {
                char list[512];
                addr_list(e->addrs, e->n, list, sizeof(list));
                td_info("resolver: %s is %s", e->name, list);
            }
        if (overlap)
            overlaps(&tmp, cfg, NULL, overlap, arg);
        else if (keep)
            overlaps(&tmp, cfg, NULL, overlap_log, (void *)cfg);
        if (keep && !running_on) {
            /* The running resolver starts from these answers. */
            running.entries = tmp.entries;
            for (entry_t *e = running.entries; e; e = e->next) {
                e->r = &running;
                e->asking = 0;
                if (!e->n)
                    e->done = 0; /* asked again at the first sync */
            }
            tmp.entries = NULL;
        }
    }
out_entries:
    while (tmp.entries)
        entry_free(&tmp, tmp.entries);
    return rc;
}

size_t td_resolver_addrs(const char *name, td_addr_t *out, size_t max) {
    entry_t *e = running.entries ? find(&running, name) : NULL;
    size_t n = e ? (e->n < max ? e->n : max) : 0;
    if (n)
        memcpy(out, e->addrs, n * sizeof(out[0]));
    return n;
}

int td_resolver_info(const char *name, td_resolver_info_t *out) {
    entry_t *e = find(&running, name);
    if (!e)
        return TD_ENOTFOUND;
    out->num_addrs = e->n;
    out->resolved_at_ms = e->resolved_at_ms;
    out->checked_at_ms = e->checked_at_ms;
    snprintf(out->error, sizeof(out->error), "%s", e->error);
    return 0;
}

static void timer_close_cb(uv_handle_t *h) {
    (void)h;
}

void td_resolver_stop(void) {
    resolver_t *r = &running;
    if (!running_on)
        return;
    channel_close(r);
    while (r->watches) { /* c-ares closed its sockets in ares_destroy; handles still open */
        watch_t *w = r->watches;
        r->watches = w->next;
        uv_close((uv_handle_t *)&w->poll, watch_close_cb);
    }
    uv_close((uv_handle_t *)&r->ares_timer, timer_close_cb);
    uv_close((uv_handle_t *)&r->tick, timer_close_cb);
    uv_close((uv_handle_t *)&r->notify, timer_close_cb);
    uv_close((uv_handle_t *)&r->due, timer_close_cb);
    while (r->entries)
        entry_free(r, r->entries);
    running_on = 0;
}
