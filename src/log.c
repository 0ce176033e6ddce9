#include "td/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static td_log_level_t min_level = TD_LOG_INFO;
static char prefix[64];
static _Atomic int has_prefix; /* set once prefix is written: other threads log meanwhile */

void td_log_set_prefix(const char *text) {
    snprintf(prefix, sizeof(prefix), "%s", text);
    atomic_store(&has_prefix, 1);
}

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
    n += snprintf(line + n, sizeof(line) - (size_t)n, " %s %s", names[level],
                  atomic_load(&has_prefix) ? prefix : "");
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

/* FNV-1a; never 0 (0 marks a free entry). */
static uint64_t reason_key(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ? h : 1;
}

static void reason_summary(td_log_reason_t *r, uint32_t n) {
    if (n)
        td_warn("%u more like this in the last second: %s", n, r->text);
}

int td_log_reasons_take(td_log_reasons_t *t, const char *reason, int64_t now_ms) {
    size_t n = strnlen(reason, TD_LOG_REASON_LEN - 1);
    uint64_t key = reason_key(reason, n);
    td_log_reason_t *e = NULL, *spare = NULL;
    for (size_t i = 0; i < TD_LOG_REASONS; i++) {
        td_log_reason_t *r = &t->r[i];
        if (r->key == key && strncmp(r->text, reason, n) == 0 && !r->text[n]) {
            e = r;
            break;
        }
        /* The best entry to take for a new reason: a free one, else one whose second is over,
         * else the oldest. */
        if (!spare || (spare->key && (!r->key || r->limit.start_ms < spare->limit.start_ms)))
            spare = r;
    }
    if (e) {
        reason_summary(e, td_log_limit_flush(&e->limit, now_ms));
    } else {
        e = spare;
        if (e->key)
            reason_summary(e, e->limit.dropped); /* its count now rather than never */
        memset(&e->limit, 0, sizeof(e->limit));
        e->key = key;
        memcpy(e->text, reason, n);
        e->text[n] = 0;
    }
    return td_log_limit_take(&e->limit, 1, now_ms);
}

void td_log_reasons_flush(td_log_reasons_t *t, int64_t now_ms) {
    for (size_t i = 0; i < TD_LOG_REASONS; i++) {
        td_log_reason_t *r = &t->r[i];
        if (!r->key || now_ms - r->limit.start_ms < TD_LOG_LIMIT_MS)
            continue;
        reason_summary(r, td_log_limit_flush(&r->limit, now_ms));
        r->key = 0;
    }
}

size_t td_log_escape(char *out, size_t cap, const char *s, size_t n, size_t max) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    if (!cap)
        return 0;
    for (; i < n && i < max; i++) {
        unsigned char ch = (unsigned char)s[i];
        size_t need = ch < 0x20 || ch >= 0x7f ? 4 : ch == '\\' ? 2 : 1;
        if (o + need + 4 > cap) /* room for "..." and the NUL */
            break;
        if (need == 4) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            if (need == 2)
                out[o++] = '\\';
            out[o++] = (char)ch;
        }
    }
    if (i < n && o + 4 <= cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = 0;
    return o;
}
