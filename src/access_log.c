#include "td/access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "td/common-t.h"
#include "td/log.h"

/* The file of the latest reopen: written by the main thread, read (dup'ed) by each worker once
 * per reopen, under reopen_mu. reopen_gen counts reopens; a worker compares it with its own
 * before each line (one atomic load on the hot path), so only a reopen takes the lock. */
static pthread_mutex_t reopen_mu = PTHREAD_MUTEX_INITIALIZER;
static int reopen_fd = -1;    /* owned; guarded by reopen_mu */
static char reopen_path[256]; /* guarded by reopen_mu: the path reopen_fd was opened from */
static atomic_uint reopen_gen;

void td_access_log_init(td_access_log_t *l) {
    l->fd = -1;
    l->path[0] = 0;
    l->gen = atomic_load(&reopen_gen);
}

int td_access_log_reopen(const char *path) {
    if (!path[0] || strcmp(path, "stderr") == 0) {
        td_info("SIGUSR1: no access log file to reopen (access_log is %s)",
                path[0] ? "stderr" : "off");
        return 0;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        td_error("access log: cannot reopen %s: %s; still writing to the old file", path,
                 strerror(errno));
        return TD_EIO;
    }
    pthread_mutex_lock(&reopen_mu);
    int old = reopen_fd;
    reopen_fd = fd;
    snprintf(reopen_path, sizeof(reopen_path), "%s", path);
    atomic_fetch_add_explicit(&reopen_gen, 1, memory_order_release);
    pthread_mutex_unlock(&reopen_mu);
    if (old >= 0)
        close(old); /* every worker holds its own duplicate: this one is no longer needed */
    td_info("access log reopened: %s", path);
    return 0;
}

void td_access_log_adopt(td_access_log_t *l) {
    unsigned gen = atomic_load_explicit(&reopen_gen, memory_order_acquire);
    if (gen == l->gen)
        return;
    pthread_mutex_lock(&reopen_mu);
    l->gen = atomic_load_explicit(&reopen_gen, memory_order_relaxed);
    /* A worker whose config names another file (a reload is on its way to it) keeps its own. */
    if (l->fd > 2 && reopen_fd >= 0 && strcmp(reopen_path, l->path) == 0) {
        int fd = fcntl(reopen_fd, F_DUPFD_CLOEXEC, 3);
        if (fd >= 0) {
            close(l->fd);
            l->fd = fd;
        } else {
            td_error("access log: cannot take the reopened %s: %s; still writing to the old file",
                     l->path, strerror(errno));
        }
    }
    pthread_mutex_unlock(&reopen_mu);
}

void td_access_log_open(td_access_log_t *l, const char *path) {
    if (strcmp(path, l->path) == 0)
        return;
    if (l->fd > 2)
        close(l->fd);
    l->fd = -1;
    snprintf(l->path, sizeof(l->path), "%s", path);
    if (!path[0])
        return;
    if (strcmp(path, "stderr") == 0) {
        l->fd = STDERR_FILENO;
        return;
    }
    l->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (l->fd < 0)
        td_error("access log: cannot open %s: %s", path, strerror(errno));
}

/* Writes one JSON string value (quotes and escapes included) into p, at most `cap` bytes. */
static size_t json_str(char *p, size_t cap, const char *s, size_t n) {
    size_t o = 0;
    if (cap < 8)
        return 0;
    p[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            p[o++] = '\\';
            p[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(p + o, cap - o, "\\u%04x", ch);
        } else {
            p[o++] = (char)ch;
        }
    }
    p[o++] = '"';
    return o;
}

void td_access_log_write(td_access_log_t *l, const td_access_entry_t *e) {
    if (l->fd < 0)
        return;
    td_access_log_adopt(l);
    char line[1024], tbuf[40];
    int64_t wall = td_wall_ms();
    time_t secs = (time_t)(wall / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
    size_t n = (size_t)snprintf(line, sizeof(line),
                                "{\"time\":\"%s.%03dZ\",\"client\":\"%s\",\"method\":", tbuf,
                                (int)(wall % 1000), e->client);
    n += json_str(line + n, sizeof(line) - n - 200, e->method, strlen(e->method));
    n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"path\":");
    n += json_str(line + n, sizeof(line) - n - 200, e->path, strlen(e->path));
    n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"protocol\":\"%s\"", e->protocol);
    n += (size_t)snprintf(line + n, sizeof(line) - n,
                          ",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%lld,\"backend\":\"%s\","
                          "\"server\":\"%s\"",
                          e->status, (unsigned long long)e->bytes, (long long)e->duration_ms,
                          e->backend, e->server);
    if (e->grpc_status >= 0 && n < sizeof(line))
        n += (size_t)snprintf(line + n, sizeof(line) - n, ",\"grpc_status\":%d", e->grpc_status);
    if (n < sizeof(line))
        n += (size_t)snprintf(line + n, sizeof(line) - n, "}\n");
    if (n >= sizeof(line))
        n = sizeof(line) - 1;
    ssize_t wr = write(l->fd, line, n);
    (void)wr;
}
