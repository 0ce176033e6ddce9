#include "td/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static td_log_level_t min_level = TD_LOG_INFO;

void td_log_set_level(td_log_level_t level) {
    min_level = level;
}

int64_t td_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t td_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int td_wall_iso(char *out, size_t cap) {
    int64_t ms = td_wall_ms();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = n ? snprintf(out + n, cap - n, ".%03dZ", (int)(ms % 1000)) : 0;
    return (int)n + (m > 0 ? m : 0);
}

void td_log(td_log_level_t level, const char *fmt, ...) {
    static const char *names[] = {"debug", "info ", "warn ", "error"};
    if (level < min_level)
        return;
    char line[2048];
    int n = td_wall_iso(line, sizeof(line));
    n += snprintf(line + n, sizeof(line) - (size_t)n, " %s ", names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    /* One write(2) per line keeps lines from different threads whole. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

int td_log_limit_take(td_log_limit_t *l, unsigned burst, int64_t now_ms) {
    if (!l->start_ms || now_ms - l->start_ms >= TD_LOG_LIMIT_MS) {
        l->start_ms = now_ms ? now_ms : 1; /* 0 means "no window" */
        l->logged = 0;
        l->dropped = 0;
    }
    if (l->logged < burst) {
        l->logged++;
        return 1;
    }
    l->dropped++;
    return 0;
}

uint32_t td_log_limit_flush(td_log_limit_t *l, int64_t now_ms) {
    if (!l->start_ms || now_ms - l->start_ms < TD_LOG_LIMIT_MS)
        return 0;
    uint32_t n = l->dropped;
    l->start_ms = 0;
    l->logged = 0;
    l->dropped = 0;
    return n;
}

void td_log_local_error_flush(td_log_limit_t *l, int64_t now_ms) {
    uint32_t n = td_log_limit_flush(l, now_ms);
    if (n)
        td_error("%u more errors of td's own limits in the last second", n);
}

void td_log_local_error(td_log_limit_t *l, unsigned burst, const char *what) {
    int64_t now = td_now_ms();
    td_log_local_error_flush(l, now);
    if (!td_log_limit_take(l, burst, now))
        return;
    td_error("%s: a limit of td's own (open files: see `ulimit -n`; memory; local ports), not "
             "the backend's",
             what);
}
