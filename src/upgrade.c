/* Upgrades: the old process's side (start the new binary, hand over the sockets and the state,
 * wait for ready), the new process's side (ask, adopt, report), the state handed over, and the
 * `td upgrade` command. Implements td/upgrade.h. */
#include "td/upgrade.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "td/admin_http.h"
#include "td/common-t.h"
#include "td/control.h"
#include "td/health.h"
#include "td/log.h"
#include "td/notify.h"
#include "td/registry.h"
#include "td/rollout.h"
#include "td/snapshot.h"
#include "td/sticky.h"

extern char **environ;

/* Descriptors per message: the kernel takes at most 253 (SCM_MAX_FD). */
#define FDS_PER_MSG 200
/* Bytes of state per 'S' message: well within a socket's send buffer. */
#define STATE_PIECE 32768
/* The longest message (a type byte and a piece); a reader's buffer has one byte more for a NUL. */
#define MSG_MAX (STATE_PIECE + 1)

static char exe_path[4096];

void td_upgrade_set_exe(const char *argv0) {
    exe_path[0] = 0;
    if (argv0 && argv0[0] == '/') {
        snprintf(exe_path, sizeof(exe_path), "%s", argv0);
    } else if (argv0 && strchr(argv0, '/')) {
        char cwd[2048];
        if (getcwd(cwd, sizeof(cwd)))
            snprintf(exe_path, sizeof(exe_path), "%s/%s", cwd, argv0);
    }
    if (exe_path[0])
        return;
    /* Found through PATH: the file this process runs. After a package replaced it the link
     * reads "PATH (deleted)"; the path is what counts, the new file is there now. */
    ssize_t len = readlink("/proc/self/exe", exe_path, sizeof(exe_path) - 1);
    exe_path[len > 0 ? len : 0] = 0;
    static const char deleted[] = " (deleted)";
    size_t n = strlen(exe_path), d = sizeof(deleted) - 1;
    if (n > d && strcmp(exe_path + n - d, deleted) == 0)
        exe_path[n - d] = 0;
}

const char *td_upgrade_exe(void) {
    return exe_path;
}

/* ---- messages */

/* Sends one message: type byte `type`, then `len` bytes of `body`, with fds[0..nfds). */
static int send_msg(int sock, char type, const char *body, size_t len, const int *fds,
                    size_t nfds) {
    char buf[MSG_MAX];
    if (len + 1 > sizeof(buf))
        return TD_EINVAL;
    buf[0] = type;
    if (len)
        memcpy(buf + 1, body, len);
    struct iovec iov = {.iov_base = buf, .iov_len = len + 1};
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)];
    } ctl;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        memset(&ctl, 0, sizeof(ctl));
        m.msg_control = ctl.b;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t r;
    do
        r = sendmsg(sock, &m, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    return r == (ssize_t)(len + 1) ? 0 : TD_EIO;
}

static int send_json(int sock, char type, json_t *j, const int *fds, size_t nfds) {
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text)
        return TD_ENOMEM;
    int r = send_msg(sock, type, text, strlen(text), fds, nfds);
    free(text);
    return r;
}

/* Receives one message into buf[cap] (NUL-terminated; its length returned, 0 at the end of the
 * stream, negative on an error), its descriptors into fds[0..*nfds) (close-on-exec). */
static ssize_t recv_msg(int sock, char *buf, size_t cap, int *fds, size_t *nfds, int flags) {
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)];
    } ctl;
    struct iovec iov = {.iov_base = buf, .iov_len = cap - 1};
    struct msghdr m = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b)};
    ssize_t r;
    do
        r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | flags);
    while (r < 0 && errno == EINTR);
    *nfds = 0;
    if (r < 0)
        return -errno;
    if (m.msg_flags & MSG_TRUNC)
        r = -EMSGSIZE; /* never sent by td: its descriptors are closed below */
    else
        buf[r] = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds + *nfds, CMSG_DATA(c), n * sizeof(int));
            *nfds += n;
        }
    if (r < 0) {
        for (size_t i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
    }
    return r;
}

/* ---- the state */

static void hex(const unsigned char *b, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

json_t *td_upgrade_state_json(const td_snapshot_t *snap) {
    json_t *o = json_object(), *servers = json_array();
    if (!o || !servers) {
        json_decref(o);
        json_decref(servers);
        return NULL;
    }
    td_sticky_key_t key;
    char keyhex[2 * TD_STICKY_KEY_MAX + 1];
    td_sticky_process_key(&key);
    hex(key.bytes, key.len, keyhex);
    json_object_set_new(o, "sticky_key", json_string(keyhex));
    for (size_t i = 0; snap && i < snap->num_backends; i++) {
        const td_snap_backend_t *b = &snap->backends[i];
        for (size_t j = 0; j < b->num_servers; j++) {
            td_server_stats_t *st = b->servers[j].st;
            if (!st)
                continue;
            int ok_run = 0, fail_run = 0, checked = td_health_runs(st, &ok_run, &fail_run);
            json_t *s = json_pack(
                "{s:s, s:s, s:b, s:b, s:i, s:i, s:I, s:I, s:b, s:i, s:i, s:b}", "backend", b->name,
                "address", st->address, "checked", checked, "health_up",
                atomic_load(&st->health_up), "ok_run", ok_run, "fail_run", fail_run, "up_since_ms",
                (json_int_t)atomic_load(&st->up_since_ms), "down_until_ms",
                (json_int_t)atomic_load(&st->down_until_ms), "ejected", atomic_load(&st->ejected),
                "ejections", atomic_load(&st->ejections), "consecutive_failures",
                atomic_load(&st->consecutive_failures), "recheck", atomic_load(&st->recheck));
            if (s)
                json_array_append_new(servers, s);
        }
    }
    json_object_set_new(o, "servers", servers);
    json_object_set_new(o, "config_version", json_integer((json_int_t)td_control_version()));
    const char *rid;
    size_t step;
    int64_t start_ms;
    if (td_rollout_step_clock(&rid, &step, &start_ms))
        json_object_set_new(o, "rollout_step",
                            json_pack("{s:s, s:I, s:I}", "id", rid, "step", (json_int_t)step,
                                      "start_ms", (json_int_t)start_ms));
    return o;
}

static int unhex(const char *s, td_sticky_key_t *key) {
    size_t n = strlen(s);
    if (n % 2 || n / 2 > sizeof(key->bytes) || !n)
        return TD_EINVAL;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return TD_EINVAL;
        key->bytes[i] = (unsigned char)v;
    }
    key->len = n / 2;
    return 0;
}

int td_upgrade_state_apply(const json_t *state) {
    const json_t *servers = json_object_get(state, "servers");
    if (!json_is_object(state) || (servers && !json_is_array(servers)))
        return TD_EINVAL;
    const char *keyhex = json_string_value(json_object_get(state, "sticky_key"));
    td_sticky_key_t key;
    if (keyhex && unhex(keyhex, &key) == 0)
        td_sticky_adopt_process_key(&key);
    const json_t *v = json_object_get(state, "config_version");
    if (json_is_integer(v) && json_integer_value(v) > 0)
        td_control_set_version((uint64_t)json_integer_value(v));
    const json_t *ro = json_object_get(state, "rollout_step");
    const char *rid = json_string_value(json_object_get(ro, "id"));
    if (rid)
        td_rollout_resume_step(rid, (size_t)json_integer_value(json_object_get(ro, "step")),
                               (int64_t)json_integer_value(json_object_get(ro, "start_ms")));
    size_t i;
    const json_t *s;
    json_array_foreach(servers, i, s) {
        const char *backend = json_string_value(json_object_get(s, "backend"));
        const char *address = json_string_value(json_object_get(s, "address"));
        if (!backend || !address)
            continue;
        td_server_stats_t *st = td_registry_server(backend, address);
        if (!st)
            return TD_ENOMEM;
        /* A server checked before keeps its verdict through td_health_sync: down stays down
         * without waiting for its rise checks, as on a reload. */
        if (json_is_true(json_object_get(s, "checked"))) {
            atomic_store(&st->health_up, json_is_true(json_object_get(s, "health_up")));
            atomic_store(&st->checked, 1);
        }
        atomic_store(&st->up_since_ms, json_integer_value(json_object_get(s, "up_since_ms")));
        atomic_store(&st->down_until_ms, json_integer_value(json_object_get(s, "down_until_ms")));
        atomic_store(&st->ejected, json_is_true(json_object_get(s, "ejected")));
        atomic_store(&st->ejections, (int)json_integer_value(json_object_get(s, "ejections")));
        atomic_store(&st->consecutive_failures,
                     (int)json_integer_value(json_object_get(s, "consecutive_failures")));
        atomic_store(&st->recheck, json_is_true(json_object_get(s, "recheck")));
    }
    return 0;
}

/* ---- the old process */

typedef struct upgrade_s {
    uv_process_t proc;
    uv_poll_t poll;
    uv_timer_t timer;
    int sock;         /* owned: this end of the pair */
    int open_handles; /* handles not yet closed: freed at 0 */
    int exited, reported;
    long pid;
    char why[512]; /* the new process's 'X', if it said one */
    const td_proxy_t *proxy;
    td_upgrade_done_fn *done;
} upgrade_t;

static upgrade_t *current;

int td_upgrade_in_progress(void) {
    return current != NULL;
}

static void handle_closed(uv_handle_t *h) {
    upgrade_t *u = h->data;
    if (--u->open_handles == 0)
        free(u);
}

/* The upgrade is over for the old process (the new one may live on): handles closed, `done`
 * told once. */
static void finish(upgrade_t *u, long new_pid, const char *why) {
    if (u->reported)
        return;
    u->reported = 1;
    if (current == u)
        current = NULL;
    if (u->sock >= 0) {
        uv_close((uv_handle_t *)&u->poll, handle_closed);
        close(u->sock);
        u->sock = -1;
    }
    uv_close((uv_handle_t *)&u->timer, handle_closed);
    if (!new_pid && !u->exited) {
        /* It is not taking over: it must not run on. The handle closes in on_exit_cb, once
         * libuv has reaped it (a handle closed before leaves a zombie). */
        uv_process_kill(&u->proc, SIGKILL);
    } else {
        /* Closed at once, exited or not: a new td that took over must not keep this process's
         * loop (and so this process) alive. */
        uv_close((uv_handle_t *)&u->proc, handle_closed);
    }
    u->done(new_pid, why);
}

static void fail(upgrade_t *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(upgrade_t *u, const char *fmt, ...) {
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    finish(u, 0, why);
}

/* 'H': every listener's sockets, the admin socket, the state, 'E'. */
static int hand_over(upgrade_t *u) {
    const td_config_t *cfg = td_control_config();
    int fds[FDS_PER_MSG * 4];
    for (size_t j = 0; j < cfg->num_listeners; j++) {
        size_t n = td_proxy_listen_fds(u->proxy, j, fds, sizeof(fds) / sizeof(fds[0]));
        for (size_t at = 0; at < n; at += FDS_PER_MSG) {
            size_t k = n - at < FDS_PER_MSG ? n - at : FDS_PER_MSG;
            json_t *m =
                json_pack("{s:s, s:i}", "address", cfg->listeners[j].address.text, "index", (int)j);
            if (!m || send_json(u->sock, 'L', m, fds + at, k) < 0)
                return TD_EIO;
        }
    }
    int afd = td_admin_http_fd();
    if (afd >= 0) {
        json_t *m = json_pack("{s:s}", "address", cfg->admin_address.text);
        if (!m || send_json(u->sock, 'A', m, &afd, 1) < 0)
            return TD_EIO;
    }
    td_snapshot_t *snap = td_router_acquire();
    json_t *state = td_upgrade_state_json(snap);
    td_snapshot_release(snap);
    char *text = state ? json_dumps(state, JSON_COMPACT) : NULL;
    json_decref(state);
    if (!text)
        return TD_ENOMEM;
    size_t len = strlen(text);
    int r = 0;
    for (size_t at = 0; at < len && r == 0; at += STATE_PIECE)
        r = send_msg(u->sock, 'S', text + at, len - at < STATE_PIECE ? len - at : STATE_PIECE, NULL,
                     0);
    free(text);
    return r == 0 ? send_msg(u->sock, 'E', NULL, 0, NULL, 0) : r;
}

static void on_message(uv_poll_t *p, int status, int events) {
    upgrade_t *u = p->data;
    (void)events;
    char buf[MSG_MAX + 1];
    int fds[FDS_PER_MSG];
    size_t nfds;
    if (status < 0) {
        fail(u, "the upgrade socket failed: %s", uv_strerror(status));
        return;
    }
    ssize_t n = recv_msg(u->sock, buf, sizeof(buf), fds, &nfds, MSG_DONTWAIT);
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]); /* the new process sends none */
    if (n == -EAGAIN)
        return;
    if (n <= 0) {
        /* The new process closed its end (it exited, or is exiting): its exit status says
         * more, so the verdict waits for it. */
        uv_poll_stop(p);
        return;
    }
    if (buf[0] == 'H') {
        td_info("upgrade: the new td (pid %ld) loaded its config; handing over the listening "
                "sockets and the runtime state",
                u->pid);
        if (hand_over(u) < 0)
            fail(u, "cannot hand the sockets over to the new td (pid %ld): %s", u->pid,
                 strerror(errno));
    } else if (buf[0] == 'R') {
        /* systemd hears the new main process before its READY=1 (NotifyAccess=main). */
        td_notify_mainpid(u->pid);
        send_msg(u->sock, 'K', NULL, 0, NULL, 0);
        finish(u, u->pid, NULL);
    } else if (buf[0] == 'X') {
        snprintf(u->why, sizeof(u->why), "%.*s", (int)sizeof(u->why) - 1, buf + 1);
    }
}

void td_upgrade_cancel(const char *why) {
    if (current)
        fail(current, "%s", why);
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal) {
    upgrade_t *u = proc->data;
    u->exited = 1;
    if (u->reported) { /* killed by finish: reaped now */
        uv_close((uv_handle_t *)proc, handle_closed);
        return;
    }
    if (term_signal)
        fail(u, "the new td (%s, pid %ld) was killed by signal %d before it was ready%s%s",
             exe_path, u->pid, term_signal, u->why[0] ? ": " : "", u->why);
    else
        fail(u, "the new td (%s, pid %ld) exited with status %lld before it was ready%s%s",
             exe_path, u->pid, (long long)exit_status, u->why[0] ? ": " : "",
             /* its stderr is this process's: what it said before exiting is in the log */
             u->why[0] ? u->why : " (see the lines above for its own error)");
}

static void on_timeout(uv_timer_t *t) {
    upgrade_t *u = t->data;
    fail(u, "the new td (pid %ld) did not report ready within %d ms%s%s", u->pid,
         TD_UPGRADE_TIMEOUT_MS, u->why[0] ? ": " : "", u->why);
}

/* The environment of this process with TD_UPGRADE_ENV=3 (the descriptor the pair's end gets in
 * the new process); malloc'd array of borrowed strings but the last. */
static char **child_env(char *var) {
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof(char *));
    if (!env)
        return NULL;
    size_t k = 0, plen = strlen(TD_UPGRADE_ENV "=");
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], TD_UPGRADE_ENV "=", plen) != 0)
            env[k++] = environ[i];
    env[k++] = var;
    return env;
}

/* Every descriptor of this process above stderr close-on-exec: the new process inherits only
 * the pair's end it is given as TD_UPGRADE_ENV. Libraries open some without the flag (libcurl's
 * wake-up socket pair): each upgrade would pass them on, and the new td keep them for good. */
static void cloexec_all(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || end == e->d_name || fd <= 2 || fd == dirfd(d))
            continue;
        int flags = fcntl((int)fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC))
            fcntl((int)fd, F_SETFD, flags | FD_CLOEXEC);
    }
    closedir(d);
}

int td_upgrade_begin(uv_loop_t *loop, char *const *argv, const td_proxy_t *proxy,
                     td_upgrade_done_fn *done, char *err, size_t n) {
    if (current) {
        snprintf(err, n, "an upgrade is already under way (new td pid %ld)", current->pid);
        return TD_ECONFLICT;
    }
    if (!exe_path[0]) {
        snprintf(err, n, "cannot tell which binary to start (the path td was started as)");
        return TD_EIO;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(err, n, "socketpair: %s", strerror(errno));
        return TD_EIO;
    }
    upgrade_t *u = calloc(1, sizeof(*u));
    static char var[] = TD_UPGRADE_ENV "=3";
    char **env = child_env(var);
    if (!u || !env) {
        free(u);
        free(env);
        close(sv[0]);
        close(sv[1]);
        snprintf(err, n, "out of memory");
        return TD_ENOMEM;
    }
    uv_stdio_container_t stdio[4] = {
        {.flags = UV_INHERIT_FD, .data.fd = 0},
        {.flags = UV_INHERIT_FD, .data.fd = 1},
        {.flags = UV_INHERIT_FD, .data.fd = 2},
        {.flags = UV_INHERIT_FD, .data.fd = sv[1]},
    };
    uv_process_options_t opt = {.exit_cb = on_exit_cb,
                                .file = exe_path,
                                .args = (char **)argv,
                                .env = env,
                                .stdio_count = 4,
                                .stdio = stdio};
    u->proc.data = u;
    cloexec_all();
    int r = uv_spawn(loop, &u->proc, &opt);
    free(env);
    close(sv[1]);
    if (r < 0) {
        close(sv[0]);
        snprintf(err, n, "cannot start %s: %s", exe_path, uv_strerror(r));
        /* A failed spawn still leaves the handle to close (libuv). */
        u->open_handles = 1;
        u->reported = 1;
        uv_close((uv_handle_t *)&u->proc, handle_closed);
        return TD_EIO;
    }
    u->sock = sv[0];
    u->pid = u->proc.pid;
    u->proxy = proxy;
    u->done = done;
    u->open_handles = 3;
    uv_poll_init(loop, &u->poll, u->sock);
    u->poll.data = u;
    /* Reads never wait (MSG_DONTWAIT); the handover's writes may, for as long as the new process
     * takes to read them (it reads nothing else then), bounded by SO_SNDTIMEO. */
    fcntl(u->sock, F_SETFL, fcntl(u->sock, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(u->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    uv_poll_start(&u->poll, UV_READABLE, on_message);
    uv_timer_init(loop, &u->timer);
    u->timer.data = u;
    uv_timer_start(&u->timer, on_timeout, TD_UPGRADE_TIMEOUT_MS, 0);
    current = u;
    td_info("upgrade: started %s (pid %ld); this process serves until it is ready", exe_path,
            u->pid);
    return 0;
}

void td_upgrade_outcome_path(const char *pid_file, char *out, size_t n) {
    snprintf(out, n, "%s.upgrade", pid_file);
}

int td_upgrade_outcome_write(const char *path, long old_pid, long new_pid, const char *why) {
    char tmp[TD_PATH_MAX + 32], text[800];
    int len = new_pid > 0 ? snprintf(text, sizeof(text), "%ld ok %ld\n", old_pid, new_pid)
                          : snprintf(text, sizeof(text), "%ld failed %s\n", old_pid, why);
    if (len < 0 || (size_t)len >= sizeof(text))
        len = (int)strlen(text);
    snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return TD_EIO;
    int ok = fchmod(fd, 0644) == 0 && write(fd, text, (size_t)len) == len;
    if (close(fd) != 0)
        ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return TD_EIO;
    }
    return 0;
}

/* The last part of `path` with " (deleted)" stripped, into out[n]. */
static void base_name(const char *path, char *out, size_t n) {
    const char *slash = strrchr(path, '/');
    snprintf(out, n, "%s", slash ? slash + 1 : path);
    static const char deleted[] = " (deleted)";
    size_t len = strlen(out), d = sizeof(deleted) - 1;
    if (len > d && strcmp(out + len - d, deleted) == 0)
        out[len - d] = 0;
}

/* `arg` made absolute against /proc/PID/cwd, into out[n]. */
static void proc_path(long pid, const char *arg, char *out, size_t n) {
    if (arg[0] == '/') {
        snprintf(out, n, "%s", arg);
        return;
    }
    char link[64], cwd[TD_PATH_MAX + 1];
    snprintf(link, sizeof(link), "/proc/%ld/cwd", pid);
    ssize_t len = readlink(link, cwd, sizeof(cwd) - 1);
    cwd[len > 0 ? len : 0] = 0;
    if (snprintf(out, n, "%s/%s", cwd, arg) >= (int)n)
        out[0] = 0; /* too long to be a config path td accepts */
}

int td_upgrade_target(long pid, td_upgrade_target_t *t, char *err, size_t n) {
    memset(t, 0, sizeof(*t));
    if (pid == 1) {
        snprintf(err, n, "pid 1 is init, not td");
        return TD_EINVAL;
    }
    char path[64], buf[8192], mine[256], name[256];
    base_name(exe_path[0] ? exe_path : "td", mine, sizeof(mine));
    snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, n, "no process %ld: %s", pid, strerror(errno));
        return TD_EINVAL;
    }
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    int is_td = 0;
    base_name(buf, name, sizeof(name));
    if (len && (strcmp(name, mine) == 0 || strcmp(name, "td") == 0))
        is_td = 1;
    snprintf(path, sizeof(path), "/proc/%ld/exe", pid);
    char exe[TD_PATH_MAX + 1];
    ssize_t el = readlink(path, exe, sizeof(exe) - 1);
    if (el > 0) {
        exe[el] = 0;
        base_name(exe, name, sizeof(name));
        if (strcmp(name, mine) == 0 || strcmp(name, "td") == 0)
            is_td = 1;
    }
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    char comm[64] = "";
    if ((f = fopen(path, "r"))) {
        if (!fgets(comm, sizeof(comm), f))
            comm[0] = 0;
        fclose(f);
        comm[strcspn(comm, "\n")] = 0;
        if (strcmp(comm, "td") == 0)
            is_td = 1;
    }
    if (!is_td) {
        snprintf(err, n, "process %ld is not td (it runs %s): nothing signalled", pid,
                 comm[0] ? comm : "something else");
        return TD_EINVAL;
    }
    /* Its options (argv[1] on): the config and pid file its outcome is found by. */
    for (size_t at = strlen(buf) + 1; at < len; at += strlen(buf + at) + 1) {
        const char *a = buf + at, *next = at + strlen(a) + 1 < len ? buf + at + strlen(a) + 1 : "";
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)
            proc_path(pid, next, t->config, sizeof(t->config));
        else if (strncmp(a, "--config=", 9) == 0)
            proc_path(pid, a + 9, t->config, sizeof(t->config));
        else if (strcmp(a, "--pid-file") == 0)
            snprintf(t->pid_file, sizeof(t->pid_file), "%s", next);
        else if (strncmp(a, "--pid-file=", 11) == 0)
            snprintf(t->pid_file, sizeof(t->pid_file), "%s", a + 11);
        else if (strcmp(a, "demo") == 0)
            t->demo = 1;
    }
    return 0;
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int td_upgrade_command(long pid, const char *outcome, int timeout_ms) {
    if (outcome[0])
        unlink(outcome); /* an earlier upgrade's; the one awaited names this pid anyway */
    if (kill((pid_t)pid, SIGUSR2) < 0) {
        fprintf(stderr, "td upgrade: cannot signal td (pid %ld): %s\n", pid, strerror(errno));
        return 1;
    }
    if (!outcome[0]) {
        printf("td upgrade: sent SIGUSR2 to td (pid %ld); without a pid file its outcome is in "
               "td's log only\n",
               pid);
        return 3;
    }
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        char line[800] = "";
        FILE *f = fopen(outcome, "r");
        if (f) {
            if (!fgets(line, sizeof(line), f))
                line[0] = 0;
            fclose(f);
        }
        char *end;
        long who = strtol(line, &end, 10);
        if (who == pid && *end == ' ') {
            line[strcspn(line, "\n")] = 0;
            if (strncmp(end + 1, "ok ", 3) == 0) {
                printf("td upgrade: td (pid %ld) handed over to the new td (pid %s); the old one "
                       "lets its in-flight requests finish and exits\n",
                       pid, end + 4);
                return 0;
            }
            const char *why = strncmp(end + 1, "failed ", 7) == 0 ? end + 8 : end + 1;
            fprintf(stderr, "td upgrade: failed: %s; td (pid %ld) keeps serving\n", why, pid);
            return 1;
        }
        if (kill((pid_t)pid, 0) < 0 && errno == ESRCH) {
            fprintf(stderr,
                    "td upgrade: td (pid %ld) ended without saying how the upgrade went "
                    "(see its log)\n",
                    pid);
            return 1;
        }
        sleep_ms(50);
    }
    fprintf(stderr, "td upgrade: no outcome from td (pid %ld) within %d ms (see its log)\n", pid,
            timeout_ms);
    return 1;
}

/* ---- the new process */

typedef struct handed_s {
    char address[sizeof(((td_addr_t *)0)->text)];
    int *fds; /* owned; -1 once adopted */
    size_t num_fds;
} handed_t;

static int child_sock = -1;
static handed_t *handed;
static size_t num_handed;
static char admin_address[sizeof(((td_addr_t *)0)->text)];
static int admin_fd = -1;
static json_t *state;

int td_upgrade_child_init(void) {
    const char *v = getenv(TD_UPGRADE_ENV);
    if (!v)
        return 0;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv(TD_UPGRADE_ENV);
    if (*end || fd < 3 || fcntl((int)fd, F_GETFD) < 0)
        return 0;
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    struct timeval tv = {.tv_sec = TD_UPGRADE_TIMEOUT_MS / 1000};
    setsockopt((int)fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt((int)fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    child_sock = (int)fd;
    return 1;
}

int td_upgrade_child(void) {
    return child_sock >= 0;
}

static handed_t *find_handed(const char *address) {
    for (size_t i = 0; i < num_handed; i++)
        if (strcmp(handed[i].address, address) == 0)
            return &handed[i];
    return NULL;
}

/* One 'L': appends its descriptors to the listener's (taking them), or closes them. */
static int add_listener(const char *body, const int *fds, size_t nfds) {
    json_t *m = json_loads(body, 0, NULL);
    const char *address = json_string_value(json_object_get(m, "address"));
    handed_t *h = address ? find_handed(address) : NULL;
    int r = 0;
    if (address && !h) {
        handed_t *grown = realloc(handed, (num_handed + 1) * sizeof(*handed));
        if (grown) {
            handed = grown;
            h = &handed[num_handed++];
            memset(h, 0, sizeof(*h));
            snprintf(h->address, sizeof(h->address), "%s", address);
        }
    }
    int *all = h ? realloc(h->fds, (h->num_fds + nfds) * sizeof(int)) : NULL;
    if (all) {
        h->fds = all;
        memcpy(h->fds + h->num_fds, fds, nfds * sizeof(int));
        h->num_fds += nfds;
    } else {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        r = TD_EINVAL;
    }
    json_decref(m);
    return r;
}

int td_upgrade_receive(char *err, size_t n) {
    char buf[MSG_MAX + 1];
    int fds[FDS_PER_MSG];
    size_t nfds;
    char *text = NULL;
    size_t len = 0;
    json_t *hello = json_pack("{s:I}", "pid", (json_int_t)getpid());
    if (!hello || send_json(child_sock, 'H', hello, NULL, 0) < 0) {
        snprintf(err, n, "upgrade: cannot reach the td before: %s", strerror(errno));
        return TD_EIO;
    }
    for (;;) {
        ssize_t r = recv_msg(child_sock, buf, sizeof(buf), fds, &nfds, 0);
        if (r <= 0) {
            snprintf(err, n, "upgrade: the td before ended the handover early: %s",
                     r == 0 ? "end of stream" : strerror((int)-r));
            free(text);
            return TD_EIO;
        }
        if (buf[0] == 'L') {
            if (add_listener(buf + 1, fds, nfds) < 0) {
                snprintf(err, n, "upgrade: a bad listener message from the td before");
                free(text);
                return TD_EIO;
            }
            continue;
        }
        if (buf[0] == 'A' && nfds == 1) {
            json_t *m = json_loads(buf + 1, 0, NULL);
            snprintf(admin_address, sizeof(admin_address), "%s",
                     json_string_value(json_object_get(m, "address"))
                         ? json_string_value(json_object_get(m, "address"))
                         : "");
            json_decref(m);
            admin_fd = fds[0];
            continue;
        }
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        if (buf[0] == 'S') {
            char *grown = realloc(text, len + (size_t)r);
            if (!grown) {
                free(text);
                snprintf(err, n, "out of memory");
                return TD_ENOMEM;
            }
            text = grown;
            memcpy(text + len, buf + 1, (size_t)r - 1);
            len += (size_t)r - 1;
            text[len] = 0;
        } else if (buf[0] == 'E') {
            break;
        }
    }
    json_error_t jerr;
    state = text ? json_loads(text, 0, &jerr) : json_object();
    free(text);
    if (!state) {
        snprintf(err, n, "upgrade: the state from the td before is not JSON: %s", jerr.text);
        return TD_EIO;
    }
    return 0;
}

int td_upgrade_adopt_listener(size_t listener, size_t worker, void *arg) {
    const td_config_t *cfg = arg;
    if (listener >= cfg->num_listeners)
        return -1;
    handed_t *h = find_handed(cfg->listeners[listener].address.text);
    if (!h)
        return -1;
    if (worker == SIZE_MAX)
        return h->num_fds ? 0 : -1;
    if (worker >= h->num_fds)
        return -1;
    int fd = h->fds[worker];
    h->fds[worker] = -1;
    return fd;
}

size_t td_upgrade_workers_needed(const td_config_t *cfg) {
    size_t most = 0;
    for (size_t j = 0; j < cfg->num_listeners; j++) {
        handed_t *h = find_handed(cfg->listeners[j].address.text);
        if (h && h->num_fds > most)
            most = h->num_fds;
    }
    return most;
}

int td_upgrade_take_admin(const td_addr_t *address) {
    if (admin_fd < 0 || strcmp(admin_address, address->text) != 0)
        return -1;
    int fd = admin_fd;
    admin_fd = -1;
    return fd;
}

void td_upgrade_close_rest(void) {
    for (size_t i = 0; i < num_handed; i++) {
        for (size_t k = 0; k < handed[i].num_fds; k++)
            if (handed[i].fds[k] >= 0) {
                td_warn("upgrade: listener %s is not in the config any more: its socket closes",
                        handed[i].address);
                close(handed[i].fds[k]);
            }
        free(handed[i].fds);
    }
    free(handed);
    handed = NULL;
    num_handed = 0;
    if (admin_fd >= 0) {
        td_warn("upgrade: admin address %s changed: its socket closes", admin_address);
        close(admin_fd);
        admin_fd = -1;
    }
}

int td_upgrade_apply_state(void) {
    return state ? td_upgrade_state_apply(state) : 0;
}

void td_upgrade_apply_health(void) {
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(state, "servers"), i, s) {
        const char *backend = json_string_value(json_object_get(s, "backend"));
        const char *address = json_string_value(json_object_get(s, "address"));
        if (!backend || !address || !json_is_true(json_object_get(s, "checked")))
            continue;
        td_server_stats_t *st = td_registry_server(backend, address);
        if (st)
            td_health_set_runs(st, (int)json_integer_value(json_object_get(s, "ok_run")),
                               (int)json_integer_value(json_object_get(s, "fail_run")));
    }
    json_decref(state);
    state = NULL;
}

static void child_close(void) {
    if (child_sock >= 0)
        close(child_sock);
    child_sock = -1;
}

int td_upgrade_ready(void) {
    char buf[MSG_MAX + 1];
    int fds[FDS_PER_MSG];
    size_t nfds;
    json_t *m = json_pack("{s:I}", "pid", (json_int_t)getpid());
    int r = m ? send_json(child_sock, 'R', m, NULL, 0) : TD_ENOMEM;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(child_sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ssize_t got = r == 0 ? recv_msg(child_sock, buf, sizeof(buf), fds, &nfds, 0) : -1;
    if (got > 0)
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
    child_close();
    return got > 0 && buf[0] == 'K' ? 0 : TD_EIO;
}

void td_upgrade_fail(const char *why) {
    if (child_sock < 0)
        return;
    size_t len = strlen(why);
    send_msg(child_sock, 'X', why, len < STATE_PIECE ? len : STATE_PIECE, NULL, 0);
    child_close();
}
