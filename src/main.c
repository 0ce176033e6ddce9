/* td — the traffic distributor's command line: run with a config file, check one, or run the
 * embedded demo (two demo backends, td in front, the admin API and console). */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "td/access_log.h"
#include "td/admin.h"
#include "td/admin_http.h"
#include "td/cluster.h"
#include "td/cluster_view.h"
#include "td/config.h"
#include "td/config_pos.h"
#include "td/control.h"
#include "td/demo.h"
#include "td/log.h"
#include "td/notify.h"
#include "td/pidfile.h"
#include "td/proxy.h"
#include "td/ready.h"
#include "td/resolver.h"
#include "td/rollout.h"
#include "td/upgrade.h"
#include "td/version.h"

static const char usage[] =
    "Usage:\n"
    "  td -c FILE          run with the config file FILE (foreground, logs to stderr)\n"
    "  td -t -c FILE       check FILE and exit: 0 and \"configuration OK\", or 1 and one\n"
    "                      FILE:LINE:COL: message line per problem\n"
    "  td demo             run the embedded default: demo backends blue (127.0.0.1:9001) and\n"
    "                      green (127.0.0.1:9002), td on 127.0.0.1:8080, admin API and web\n"
    "                      console on 127.0.0.1:9090\n"
    "  td backend NAME=ADDRESS ...\n"
    "                      run demo backends only, e.g. td backend blue=127.0.0.1:9001;\n"
    "                      they answer / (a page naming them), /status/N, /delay/MS,\n"
    "                      /bytes/N, /chunked/N, /echo (counts the body), /headers, /close,\n"
    "                      /reset and /ws (WebSocket echo)\n"
    "  td upgrade [-c FILE] [--pid-file FILE | --pid PID]\n"
    "                      upgrade the running td (found by the config's pid_file, the given\n"
    "                      pid file or pid) to the binary now at its path, without dropping\n"
    "                      a request: it sends SIGUSR2 and waits for the outcome; exit 0\n"
    "                      when the new td took over, 1 (and why) when the old one keeps\n"
    "                      serving, 2 when PID is not a td's (or is td demo), 3 when there is\n"
    "                      no pid file to wait on (it only signalled)\n"
    "  td --version | --help\n"
    "\n"
    "td splits HTTP traffic between backends (blue and green) by a ratio, with round robin,\n"
    "sticky sessions or failover; every change applies live without failing a request.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   the JSON config file (see README.md for every key)\n"
    "  -t, --test          check the config and exit\n"
    "  -l, --log-level L   debug, info (default), warn or error\n"
    "      --pid-file FILE write td's process id to FILE once it listens (instead of the\n"
    "                      config's pid_file), removed at a clean stop; then signal it with\n"
    "                      kill -HUP $(cat FILE)\n"
    "  -h, --help          this text\n"
    "  -v, --version       print the version\n"
    "\n"
    "Config keys for starts and stops (README.md has them all):\n"
    "  slow_start_ms       on a backend or a server: a server that comes up (health check,\n"
    "                      end of a passive ejection, weight from 0) starts at 5 % of its\n"
    "                      weight and grows to all of it over this long; 0 (default) = off\n"
    "  timeouts.stop_grace_ms\n"
    "                      on SIGTERM/SIGINT, answer 503 on /readyz but keep serving this\n"
    "                      long before draining; 0 (default) = drain at once\n"
    "\n"
    "Signals:\n"
    "  SIGHUP              re-read the config file; a bad file is rejected with the same\n"
    "                      messages as -t and the running config stays\n"
    "  SIGTERM, SIGINT     stop accepting, let in-flight requests finish (up to\n"
    "                      timeouts.drain_ms), exit 0; with timeouts.stop_grace_ms, first\n"
    "                      answer 503 on /readyz while still serving for that long (a\n"
    "                      second signal cuts it short)\n"
    "  SIGUSR2             upgrade (nginx's convention): start the binary at the path td\n"
    "                      was started as, with the same arguments; it loads the config,\n"
    "                      takes over the listening sockets (their queued connections\n"
    "                      too), health verdicts, passive ejections and the sticky key,\n"
    "                      and once it accepts, this one stops accepting, drains (up to\n"
    "                      timeouts.drain_ms) and exits 0; a new binary or config that\n"
    "                      fails leaves this one serving, with why in its log\n"
    "  SIGUSR1             reopen the access log file (after logrotate renamed it): new\n"
    "                      lines go to a new file of the same name; td's own log goes to\n"
    "                      stderr and has nothing to reopen\n"
    "\n"
    "Cluster mode: with a \"cluster\" key (etcd endpoints, a prefix, this node's name)\n"
    "several td nodes share one desired state in etcd: every change through any node's\n"
    "API applies on all of them, sticky cookies and the audit log are shared. Seed an\n"
    "empty cluster once with tdctl cluster init FILE; tdctl cluster lists the nodes.\n"
    "See td.json(5), CLUSTER.\n"
    "\n"
    "Per-server limit: a server's \"max_conns\": N (0: none) caps its requests in flight and\n"
    "tunnels; further requests wait in td (in arrival order within each worker; across\n"
    "workers a freed slot goes to the worker that takes it first) up to timeouts.queue_ms\n"
    "(default 10000), then get 503. GET /api/v1/state shows each backend's \"queued\".\n"
    "\n"
    "Admin API (on admin.address; Authorization: Bearer TOKEN when admin.token is set):\n"
    "  GET /api/v1/state           routing method, weights, health, live counters, version\n"
    "  PUT /api/v1/ratio           {\"blue\": 0, \"green\": 100}\n"
    "  PUT /api/v1/routing         {\"method\": \"round_robin\" | \"sticky\" | \"failover\"}\n"
    "  GET|PUT /api/v1/backends/NAME  one backend's state; PUT {\"state\": \"ready\" |\n"
    "                              \"drain\" | \"maint\"}\n"
    "  GET|PUT /api/v1/config      the whole config document (?source=file: the file's)\n"
    "  GET|DELETE /api/v1/overrides  the changes kept in the state file; DELETE drops them\n"
    "  GET /api/v1/events          recent changes, health transitions and reloads\n"
    "  GET /api/v1/history         the audit log of changes\n"
    "  POST|GET /api/v1/rollout    start a rollout (409 while one is active) / the current or\n"
    "                              last one: state, step, weights, each step's analysis\n"
    "  POST /api/v1/rollout/pause|resume|promote|abort  drive the active rollout\n"
    "  GET /metrics                Prometheus text format\n"
    "  GET /readyz                 no token: 200 {\"ready\": true} while td serves, 503 while\n"
    "                              it starts or stops (for DNS, keepalived, load balancers)\n"
    "  GET /                       the web console\n"
    "admin.read_token: a second token, for GET and HEAD only (a change gets 403).\n"
    "admin.tls: the admin API over HTTPS, with the keys of a listener's tls.\n"
    "Changes made through the API never touch the config file: they are kept as overrides\n"
    "in the state file (the config's state_file; default FILE.state.json), with an audit\n"
    "log next to it (FILE.audit.jsonl), so a restart keeps them. At start and on SIGHUP\n"
    "they apply on top of the file, key by key; where the file changed a key since, the\n"
    "file wins for that key. tdctl config diff shows them, tdctl config reset drops them.\n"
    "\n"
    "Exit status: 0 on success or a clean stop, 1 on a bad config or start-up error,\n"
    "2 on a usage error.\n";

/* 1 when the admin API is bound beyond loopback with no token: anyone who reaches the port
 * controls td (ratios, the whole config). */
/* td -t: a server's host name that does not resolve now is a warning at its place in the file
 * (it may resolve once td runs: DNS changes), not an error. */
typedef struct unresolved_s {
    const td_config_t *cfg;
    const char *path;
    char *text; /* owned: the file, for positions; NULL when it cannot be read again */
    size_t len;
} unresolved_t;

/* Where backends[b].servers[sv].address stands in the file (1:1 when it cannot be read again). */
static void server_address_at(const unresolved_t *u, int b, int sv, int *line, int *col) {
    td_config_seg_t at[5] = {
        {"backends", 0}, {NULL, (size_t)b}, {"servers", 0}, {NULL, (size_t)sv}, {"address", 0}};
    *line = *col = 1;
    if (u->text)
        td_config_locate(u->text, u->len, at, 5, 0, line, col);
}

static void warn_unresolved(void *arg, int b, int sv, const char *error) {
    unresolved_t *u = arg;
    if (b < 0) {
        fprintf(stderr, "%s: warning: host names not checked: %s\n", u->path, error);
        return;
    }
    int line, col;
    server_address_at(u, b, sv, &line, &col);
    fprintf(stderr,
            "%s:%d:%d: warning: backend %s: server %s does not resolve now (%s); it counts as down "
            "until it does\n",
            u->path, line, col, u->cfg->backends[b].name,
            u->cfg->backends[b].servers[sv].address.text, error);
}

static void warn_overlap(void *arg, int b, int sv, const char *address, const char *other) {
    unresolved_t *u = arg;
    int line, col;
    server_address_at(u, b, sv, &line, &col);
    fprintf(stderr,
            "%s:%d:%d: warning: backend %s: server %s resolves now to %s, which is already the "
            "server %s: that one is kept, with its own weight\n",
            u->path, line, col, u->cfg->backends[b].name,
            u->cfg->backends[b].servers[sv].address.text, address, other);
}

static void check_names(const td_config_t *cfg, const char *path) {
    unresolved_t u = {cfg, path, NULL, 0};
    FILE *f = fopen(path, "rb");
    if (f) {
        FILE *m = open_memstream(&u.text, &u.len);
        char buf[8192];
        size_t n;
        while (m && (n = fread(buf, 1, sizeof(buf), f)) > 0)
            fwrite(buf, 1, n, m);
        if (m)
            fclose(m);
        fclose(f);
    }
    td_resolver_resolve_all(cfg, 0, warn_unresolved, warn_overlap, &u);
    free(u.text);
}

static int admin_open_beyond_loopback(const td_config_t *cfg) {
    if (!cfg->has_admin || cfg->admin_token[0])
        return 0;
    const struct sockaddr *sa = (const struct sockaddr *)&cfg->admin_address.sa;
    if (sa->sa_family == AF_INET) {
        const unsigned char *a =
            (const unsigned char *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
        return a[0] != 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
        return !IN6_IS_ADDR_LOOPBACK(a) && !(IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static const char open_admin_warning[] =
    "admin.address %s is reachable beyond loopback and admin.token is not set: anyone who can "
    "reach it can change the traffic and the config; set admin.token or bind it to 127.0.0.1";

static const char backend_usage[] =
    "Usage: td backend NAME=ADDRESS ...\n"
    "\n"
    "Runs demo backends in the foreground, one per NAME=ADDRESS (IP:port), e.g.\n"
    "  td backend blue=127.0.0.1:9001 green=127.0.0.1:9002\n"
    "Each answers / with a page naming it (header X-TD-Demo-Backend: NAME), and /status/N,\n"
    "/delay/MS, /bytes/N, /chunked/N, /echo (counts the body), /headers, /close, /reset and\n"
    "/ws (WebSocket echo). SIGHUP is ignored; SIGTERM or Ctrl-C stops them.\n";

static td_proxy_t *proxy;
static uv_signal_t sig_hup, sig_term, sig_int, sig_usr1, sig_usr2;
static char **saved_argv; /* main's argv: what an upgrade starts the new binary with */
static int handed_over;   /* an upgrade's new process took over: it is systemd's main pid */
static long handed_to;    /* that process's pid */
static int demo_mode;     /* td demo: its demo backends hold their ports in this process */
static char pid_file[TD_PATH_MAX + 1]; /* "" when td writes none */
static int drain_ms = 30000;
static int stop_grace_ms;
static uv_timer_t grace_timer; /* runs during the stop's grace period */
static int grace_on;

/* The data plane's drain runs on a thread of its own (td_proxy_stop joins the workers) so that
 * the main loop keeps handling signals meanwhile; it ends the loop's last handle when done. */
static uv_thread_t drain_thread;
static uv_async_t drain_done;
static int drain_threaded; /* 0: the drain ran on the main thread (no thread could start) */
static int stopping;       /* stop_now ran: the drain is under way or done */

static void drain_main(void *arg) {
    td_proxy_stop(arg, drain_ms);
    uv_async_send(&drain_done);
}

static void on_drain_done(uv_async_t *a) {
    if (drain_threaded)
        uv_thread_join(&drain_thread);
    uv_close((uv_handle_t *)a, NULL);
    td_info("stopped");
}

/* The stop itself: listeners closed, in-flight requests drained (on their own thread, the loop
 * running beside), then the loop ends. A further SIGTERM/SIGINT/SIGUSR2 during the drain is
 * logged and changes nothing: the drain is bounded by drain_ms. */
static void stop_now(const char *why) {
    char status[96];
    stopping = 1;
    td_ready_set(TD_READY_DRAINING, 0);
    td_info("%s: stopping; letting in-flight requests finish (up to %d ms)", why, drain_ms);
    snprintf(status, sizeof(status), "stopping: draining in-flight requests (up to %d ms)",
             drain_ms);
    if (!handed_over) /* systemd watches the new process now: it is not stopping */
        td_notify_stopping(status);
    td_upgrade_cancel("td is stopping");
    if (grace_on) {
        uv_close((uv_handle_t *)&grace_timer, NULL);
        grace_on = 0;
    }
    td_cluster_view_shutdown();
    if (handed_over) /* its open connections get their answers; the new one accepts */
        td_admin_hand_off();
    else
        td_admin_stop();
    td_cluster_stop();
    td_rollout_shutdown();
    td_control_shutdown();
    td_proxy_t *draining = proxy;
    proxy = NULL;
    uv_async_init(uv_default_loop(), &drain_done, on_drain_done);
    drain_threaded = uv_thread_create(&drain_thread, drain_main, draining) == 0;
    if (!drain_threaded)
        drain_main(draining);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_close((uv_handle_t *)&sig_usr1, NULL);
    /* SIGTERM, SIGINT and SIGUSR2 stay handled during the drain (it runs beside the loop now),
     * without keeping the loop alive: their handlers see the stop under way. */
    uv_unref((uv_handle_t *)&sig_term);
    uv_unref((uv_handle_t *)&sig_int);
    uv_unref((uv_handle_t *)&sig_usr2);
}

static void on_grace_end(uv_timer_t *t) {
    (void)t;
    stop_now("grace period over");
}

/* SIGTERM/SIGINT. With timeouts.stop_grace_ms, /readyz first answers 503 while td keeps
 * accepting and serving for that long (HAProxy's grace), so whatever sends it traffic stops
 * first; a second signal in that time cuts the grace short. */
static void on_stop(uv_signal_t *s, int signum) {
    (void)s;
    const char *sig = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (stopping) {
        td_info("%s: td is already stopping", sig);
        return;
    }
    if (grace_on || stop_grace_ms <= 0) {
        stop_now(sig);
        return;
    }
    td_ready_set(TD_READY_GRACE, td_now_ms() + stop_grace_ms);
    td_notify_stopping("stopping: /readyz answers 503, still serving for stop_grace_ms");
    td_info("%s: stopping: /readyz answers 503; still serving for stop_grace_ms (%d ms), then "
            "draining (send it again to drain now)",
            sig, stop_grace_ms);
    uv_timer_init(uv_default_loop(), &grace_timer);
    uv_timer_start(&grace_timer, on_grace_end, (uint64_t)stop_grace_ms, 0);
    grace_on = 1;
}

static void on_hup(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    td_info("SIGHUP: re-reading the config file");
    td_notify_reloading();
    td_control_reload();
    td_notify_ready(); /* a rejected file leaves the running config serving */
    drain_ms = td_control_config()->timeouts.drain_ms;
    stop_grace_ms = td_control_config()->timeouts.stop_grace_ms;
}

/* SIGUSR1 (nginx's convention, for logrotate): the access log file is opened anew under its
 * name; the old one is closed once every worker has moved to the new one. */
static void on_usr1(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    td_access_log_reopen(td_control_config()->access_log);
}

/* The end of an upgrade (td/upgrade.h). Taken over: this process stops accepting (the new one
 * drains the shared accept queues), answers 503 on /readyz, closes its keep-alive connections
 * after their exchange and exits once in-flight requests, WebSockets and tunnels are done (up to
 * drain_ms). Failed: nothing changed; the reason is logged and written for `td upgrade`. */
static void on_upgrade_done(long new_pid, const char *why) {
    char outcome[TD_PATH_MAX + 16];
    td_upgrade_outcome_path(pid_file, outcome, sizeof(outcome));
    if (new_pid <= 0) {
        td_error("upgrade failed: %s; this process keeps serving", why);
        if (pid_file[0])
            td_upgrade_outcome_write(outcome, (long)getpid(), 0, why);
        return;
    }
    handed_over = 1;
    handed_to = new_pid;
    td_info("upgrade: the new td (pid %ld) accepts on the listening sockets", new_pid);
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "(old td, pid %ld) ", (long)getpid());
    td_log_set_prefix(prefix);
    if (pid_file[0])
        td_upgrade_outcome_write(outcome, (long)getpid(), new_pid, NULL);
    stop_now("upgrade");
}

/* SIGUSR2 (nginx's convention): an upgrade to the binary at the path td was started as. */
static void on_usr2(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    char err[300];
    if (handed_over) {
        td_warn("SIGUSR2 ignored: this td handed over to pid %ld and is draining", handed_to);
        return;
    }
    if (demo_mode) {
        td_warn("SIGUSR2 ignored: td demo cannot be upgraded: its demo backends run in this "
                "process");
        return;
    }
    if (grace_on || !proxy) {
        td_warn("SIGUSR2: td is stopping: no upgrade");
        return;
    }
    if (td_upgrade_in_progress()) { /* its outcome is the one `td upgrade` waits for */
        td_warn("SIGUSR2: an upgrade is already under way");
        return;
    }
    td_info("SIGUSR2: upgrading to %s", td_upgrade_exe());
    if (td_upgrade_begin(uv_default_loop(), saved_argv, proxy, on_upgrade_done, err, sizeof(err)) <
        0)
        on_upgrade_done(0, err);
}

/* A start-up error: said on stderr, and to the td before when this is an upgrade's new process
 * (it keeps serving then). */
static int start_failed(const char *msg) {
    fprintf(stderr, "td: %s\n", msg);
    td_upgrade_fail(msg);
    return 1;
}

/* Serves demo backends on their own thread so `td demo` is one process. */
static uv_loop_t demo_loop;
static void demo_main(void *arg) {
    (void)arg;
    uv_run(&demo_loop, UV_RUN_DEFAULT);
}

static int start_demo_backends(int n, char **specs, int own_thread) {
    uv_loop_t *loop = own_thread ? &demo_loop : uv_default_loop();
    if (own_thread)
        uv_loop_init(&demo_loop);
    for (int i = 0; i < n; i++) {
        char name[64], err[256];
        const char *eq = strchr(specs[i], '=');
        if (!eq || eq == specs[i] || (size_t)(eq - specs[i]) >= sizeof(name)) {
            fprintf(stderr, "td: backend: expected NAME=ADDRESS, got \"%s\"\n", specs[i]);
            return 2;
        }
        memcpy(name, specs[i], (size_t)(eq - specs[i]));
        name[eq - specs[i]] = 0;
        if (td_demo_listen(loop, name, eq + 1, err, sizeof(err)) < 0) {
            fprintf(stderr, "td: %s\n", err);
            return 1;
        }
        td_info("demo backend %s on http://%s/", name, eq + 1);
    }
    if (own_thread) {
        static uv_thread_t t;
        uv_thread_create(&t, demo_main, NULL);
    }
    return 0;
}

/* --pid-file FILE, or "" for the config's pid_file. */
static const char *pid_flag = "";

/* Every client connection and every upstream connection is a file descriptor; the usual soft
 * limit of 1024 would cap td at a few hundred proxied connections. The soft limit is raised to the
 * hard one (as HAProxy does from its maxconn; systemd's LimitNOFILE sets the hard one). */
static void raise_open_files_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        td_info("open files limit raised from %llu to %llu", (unsigned long long)was,
                (unsigned long long)rl.rlim_max);
}

static int run(td_config_t *file_cfg, const char *path) {
    char err[512];
    raise_open_files_limit();
    int upgrading = td_upgrade_child();
    /* An upgrade's new process: the old one's sockets and runtime state, before the first
     * snapshot (health verdicts, ejections and the sticky key apply to it). */
    if (upgrading) {
        int r = td_upgrade_receive(err, sizeof(err));
        if (r == 0 && (r = td_upgrade_apply_state()) < 0)
            snprintf(err, sizeof(err), "upgrade: cannot apply the state of the td before");
        if (r < 0) {
            td_config_free(file_cfg);
            return start_failed(err);
        }
    }
    /* The config file with the state file's overrides on top is what starts. */
    if (td_control_init(file_cfg, path) < 0) { /* it said why */
        td_upgrade_fail("the new td cannot set up its config and state file (its log says why)");
        return 1;
    }
    if (upgrading)
        td_upgrade_apply_health();
    const td_config_t *cfg = td_control_config();
    snprintf(pid_file, sizeof(pid_file), "%s", pid_flag[0] ? pid_flag : cfg->pid_file);
    drain_ms = cfg->timeouts.drain_ms;
    stop_grace_ms = cfg->timeouts.stop_grace_ms;
    td_addr_t admin = cfg->admin_address;
    int has_admin = cfg->has_admin;
    char admin_token[sizeof(cfg->admin_token)];
    memcpy(admin_token, cfg->admin_token, sizeof(admin_token));
    td_config_t *start_cfg = td_config_dup(cfg);
    if (!start_cfg) {
        fprintf(stderr, "td: out of memory\n");
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    /* Signals first: a SIGTERM that comes as soon as the ports are open must stop td cleanly. */
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_hup, on_hup, SIGHUP);
    uv_signal_start(&sig_term, on_stop, SIGTERM);
    uv_signal_start(&sig_int, on_stop, SIGINT);
    uv_signal_init(loop, &sig_usr1);
    uv_signal_start(&sig_usr1, on_usr1, SIGUSR1);
    uv_signal_init(loop, &sig_usr2);
    uv_signal_start(&sig_usr2, on_usr2, SIGUSR2);
    if (td_rollout_init(loop) < 0) {
        td_config_free(start_cfg);
        return start_failed("cannot set up the rollout engine (libcurl)");
    }
    if (upgrading && has_admin) {
        int fd = td_upgrade_take_admin(&admin);
        if (fd >= 0)
            td_admin_http_adopt(fd);
    }
    if (has_admin && td_admin_start(loop, &admin, admin_token, err, sizeof(err)) < 0) {
        td_config_free(start_cfg);
        return start_failed(err);
    }
    if (upgrading) {
        /* Every socket handed over gets a worker: closing one would reset its queue. */
        size_t need = td_upgrade_workers_needed(start_cfg);
        if (need > (size_t)start_cfg->workers) {
            td_warn("upgrade: %zu sockets per listener were handed over, more than workers %d: "
                    "running %zu workers until the next restart",
                    need, start_cfg->workers, need);
            start_cfg->workers = (int)need;
        }
        proxy =
            td_proxy_start_adopt(start_cfg, td_upgrade_adopt_listener, start_cfg, err, sizeof(err));
        td_upgrade_close_rest();
    } else {
        proxy = td_proxy_start(start_cfg, err, sizeof(err));
    }
    if (!proxy) {
        td_config_free(start_cfg);
        return start_failed(err);
    }
    for (size_t i = 0; i < start_cfg->num_listeners; i++)
        td_info("listening on %s://%s/ with %d worker%s",
                start_cfg->listeners[i].tls ? "https" : "http",
                start_cfg->listeners[i].address.text, start_cfg->workers,
                start_cfg->workers == 1 ? "" : "s");
    if (has_admin)
        td_info("admin API and web console on %s://%s/",
                start_cfg->admin_tls.tls ? "https" : "http", admin.text);
    if (admin_open_beyond_loopback(start_cfg))
        td_warn(open_admin_warning, admin.text);
    td_config_free(start_cfg);
    if (upgrading) {
        /* Accepting (the workers drain the shared accept queues as they start): the old one
         * names this process to systemd, then stops accepting. */
        long old_pid = (long)getppid();
        if (td_upgrade_ready() < 0)
            td_warn("upgrade: the td before (pid %ld) did not confirm the takeover", old_pid);
        else
            td_info("upgrade: took over from the td before (pid %ld)", old_pid);
        if (pid_file[0] && td_pidfile_write(pid_file, err, sizeof(err)) < 0)
            td_error("pid file %s", err); /* serving already: the sockets are this one's */
    } else if (pid_file[0] && td_pidfile_write(pid_file, err, sizeof(err)) < 0) {
        /* Written once the ports are bound: whoever reads it may signal td at once. */
        fprintf(stderr, "td: pid file %s\n", err);
        return 1;
    }
    /* Listeners bound, snapshot published: ready. (Signals are handled only once the loop
     * runs, so no stop can have begun yet.) */
    td_ready_set(TD_READY_SERVING, 0);
    /* Cluster mode: what runs now is the cache's or the file's; etcd's comes when it answers. */
    if (td_cluster_start(loop) < 0) {
        fprintf(stderr, "td: cannot set up the etcd client\n");
        return 1;
    }
    if (upgrading)
        td_notify_mainpid((long)getpid());
    td_notify_ready();
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_usr2, NULL);
    td_admin_stop(); /* after a handover: what is left of its connections */
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    if (pid_file[0] && !handed_over) { /* the new process's now */
        char outcome[TD_PATH_MAX + 16];
        td_upgrade_outcome_path(pid_file, outcome, sizeof(outcome));
        td_pidfile_remove(pid_file);
        unlink(outcome);
    }
    return 0;
}

/* td upgrade [-c FILE] [--pid-file FILE | --pid PID]: `path` and the pid file from options
 * given before the word. */
static int upgrade_main(int argc, char **argv, const char *path) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"pid-file", required_argument, 0, 'P'},
                                         {"pid", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    char file[TD_PATH_MAX + 1];
    long pid = 0;
    int c;
    snprintf(file, sizeof(file), "%s", pid_flag);
    optind = 0;
    while ((c = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'P':
            snprintf(file, sizeof(file), "%s", optarg);
            break;
        case 'p': {
            char *end;
            pid = strtol(optarg, &end, 10);
            if (*end || pid <= 0) {
                fprintf(stderr, "td upgrade: --pid: give a process id, got \"%s\"\n", optarg);
                return 2;
            }
            break;
        }
        case 'h':
            printf("Usage: td upgrade [-c FILE] [--pid-file FILE | --pid PID]\n");
            return 0;
        default:
            fprintf(stderr, "Try 'td --help'.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "td upgrade: unexpected argument \"%s\". Try 'td --help'.\n", argv[optind]);
        return 2;
    }
    if (pid && file[0]) {
        fprintf(stderr, "td upgrade: give one of --pid and --pid-file\n");
        return 2;
    }
    if (!file[0] && path && access(path, R_OK) < 0) {
        fprintf(stderr, "td upgrade: cannot read %s: %s\n", path, strerror(errno));
        return 2;
    }
    if (!file[0] && path && !pid) {
        td_config_t *cfg = td_config_load(path, stderr);
        if (!cfg) {
            fprintf(stderr,
                    "td upgrade: %s has errors: nothing done (the running td would "
                    "refuse it too)\n",
                    path);
            return 1;
        }
        snprintf(file, sizeof(file), "%s", cfg->pid_file);
        td_config_free(cfg);
    }
    if (!pid && file[0]) {
        FILE *f = fopen(file, "r");
        char text[32] = "";
        if (!f || !fgets(text, sizeof(text), f) || (pid = strtol(text, NULL, 10)) <= 1) {
            fprintf(stderr, "td upgrade: cannot read a process id from the pid file %s: %s\n", file,
                    f ? "no number in it" : strerror(errno));
            if (f)
                fclose(f);
            return 1;
        }
        fclose(f);
    }
    if (!pid) {
        fprintf(stderr, "td upgrade: which td? Give -c FILE (with a pid_file), --pid-file FILE "
                        "or --pid PID\n");
        return 2;
    }
    /* Only a td gets the signal: SIGUSR2's default action ends any other process. */
    td_upgrade_target_t target;
    char err[300];
    if (td_upgrade_target(pid, &target, err, sizeof(err)) < 0) {
        fprintf(stderr, "td upgrade: %s\n", err);
        return 2;
    }
    if (target.demo) {
        fprintf(stderr, "td upgrade: td demo cannot be upgraded: its demo backends run in this "
                        "process\n");
        return 2;
    }
    /* --pid: the outcome file is the one of the pid file the target writes (its --pid-file, or
     * its config's pid_file; -c FILE given here names the config). */
    if (!file[0] && target.pid_file[0])
        snprintf(file, sizeof(file), "%s", target.pid_file);
    if (!file[0] && (path || target.config[0])) {
        FILE *quiet = fopen("/dev/null", "w");
        td_config_t *cfg = td_config_load(path ? path : target.config, quiet ? quiet : stderr);
        if (quiet)
            fclose(quiet);
        if (cfg)
            snprintf(file, sizeof(file), "%s", cfg->pid_file);
        td_config_free(cfg);
    }
    char outcome[TD_PATH_MAX + 16] = "";
    if (file[0])
        td_upgrade_outcome_path(file, outcome, sizeof(outcome));
    return td_upgrade_command(pid, outcome, TD_UPGRADE_TIMEOUT_MS + 10000);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    saved_argv = argv;
    td_upgrade_set_exe(argv[0]);
    td_upgrade_child_init();
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"test", no_argument, 0, 't'},
                                         {"log-level", required_argument, 0, 'l'},
                                         {"help", no_argument, 0, 'h'},
                                         {"version", no_argument, 0, 'v'},
                                         {"pid-file", required_argument, 0, 'P'},
                                         {0, 0, 0, 0}};
    const char *path = NULL;
    int test = 0, c;
    while ((c = getopt_long(argc, argv, "+c:tl:hv", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test = 1;
            break;
        case 'l':
            if (strcmp(optarg, "debug") == 0)
                td_log_set_level(TD_LOG_DEBUG);
            else if (strcmp(optarg, "info") == 0)
                td_log_set_level(TD_LOG_INFO);
            else if (strcmp(optarg, "warn") == 0)
                td_log_set_level(TD_LOG_WARN);
            else if (strcmp(optarg, "error") == 0)
                td_log_set_level(TD_LOG_ERROR);
            else {
                fprintf(stderr, "td: unknown log level \"%s\" (debug, info, warn, error)\n",
                        optarg);
                return 2;
            }
            break;
        case 'P':
            if (optarg[0] != '/' || strlen(optarg) >= TD_PATH_MAX) {
                fprintf(stderr,
                        "td: --pid-file: give an absolute path (shorter than %d bytes), "
                        "got \"%s\"\n",
                        TD_PATH_MAX, optarg);
                return 2;
            }
            pid_flag = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        case 'v':
            printf("td %s\n", TD_VERSION);
            return 0;
        default:
            fprintf(stderr, "Try 'td --help'.\n");
            return 2;
        }
    }
    if (optind < argc && strcmp(argv[optind], "upgrade") == 0)
        return upgrade_main(argc - optind, argv + optind, path);
    if (optind < argc && strcmp(argv[optind], "backend") == 0) {
        if (optind + 1 >= argc) {
            fprintf(stderr, "td backend: give at least one NAME=ADDRESS\n");
            return 2;
        }
        if (strcmp(argv[optind + 1], "--help") == 0 || strcmp(argv[optind + 1], "-h") == 0) {
            fputs(backend_usage, stdout);
            return 0;
        }
        signal(SIGHUP, SIG_IGN); /* a reload meant for td -c must not stop the backends */
        int r = start_demo_backends(argc - optind - 1, argv + optind + 1, 0);
        if (r)
            return r;
        uv_run(uv_default_loop(), UV_RUN_DEFAULT);
        return 0;
    }
    if (optind < argc && strcmp(argv[optind], "demo") == 0) {
        if (optind + 1 != argc || path || test) {
            fprintf(stderr, "td demo takes no arguments. Try 'td --help'.\n");
            return 2;
        }
        char *specs[] = {"blue=127.0.0.1:9001", "green=127.0.0.1:9002"};
        demo_mode = 1;
        int r = start_demo_backends(2, specs, 1);
        if (r)
            return r;
        td_config_t *cfg = td_config_demo();
        printf("td demo\n  traffic:  http://127.0.0.1:8080/  (blue and green, 50/50)\n"
               "  console:  http://127.0.0.1:9090/\n  API:      curl "
               "http://127.0.0.1:9090/api/v1/state\n"
               "  change:   curl -X PUT -d '{\"blue\":0,\"green\":100}' "
               "http://127.0.0.1:9090/api/v1/ratio\n"
               "Stop with Ctrl-C.\n");
        return run(cfg, "");
    }
    if (optind < argc) {
        fprintf(stderr, "td: unexpected argument \"%s\". Try 'td --help'.\n", argv[optind]);
        return 2;
    }
    if (!path) {
        fprintf(stderr,
                "td: give a config file with -c FILE, or run 'td demo'. Try 'td --help'.\n");
        return 2;
    }
    td_config_t *cfg;
    if (td_upgrade_child()) {
        /* The old process says why the new one did not start: the config's messages too. */
        char *msgs = NULL;
        size_t len = 0;
        FILE *errs = open_memstream(&msgs, &len);
        cfg = td_config_load(path, errs ? errs : stderr);
        if (errs)
            fclose(errs);
        if (msgs && len) {
            fputs(msgs, stderr);
            msgs[strcspn(msgs, "\n")] = 0;
        }
        if (!cfg)
            td_upgrade_fail(msgs && msgs[0] ? msgs : "the config cannot be loaded");
        free(msgs);
    } else {
        cfg = td_config_load(path, stderr);
    }
    if (!cfg)
        return 1;
    if (test) {
        char why[4400];
        if (td_control_state_path_check(cfg, path, why, sizeof(why)) < 0) {
            fprintf(stderr, "%s\n", why);
            td_config_free(cfg);
            return 1;
        }
        if (admin_open_beyond_loopback(cfg)) {
            fprintf(stderr, "td: warning: ");
            fprintf(stderr, open_admin_warning, cfg->admin_address.text);
            fputc('\n', stderr);
        }
        check_names(cfg, path);
        printf("configuration OK\n");
        td_config_free(cfg);
        return 0;
    }
    return run(cfg, path);
}
