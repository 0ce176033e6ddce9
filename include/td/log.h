/* Logging: one line per event on stderr, "TIME LEVEL message", safe from any thread. */
#ifndef TD_LOG_H
#define TD_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum td_log_level_e { TD_LOG_DEBUG, TD_LOG_INFO, TD_LOG_WARN, TD_LOG_ERROR } td_log_level_t;

/* Messages below this level are dropped (default TD_LOG_INFO). */
void td_log_set_level(td_log_level_t level);
/* Text (copied, up to 63 bytes) put before every later line's message, after its level: an old
 * td draining after an upgrade names itself so, beside the new one on the same stderr. */
void td_log_set_prefix(const char *text);

/* Writes "2026-11-29T23:50:01.123Z warn  <message>\n" to stderr in one write. */
void td_log(td_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define td_debug(...) td_log(TD_LOG_DEBUG, __VA_ARGS__)
#define td_info(...) td_log(TD_LOG_INFO, __VA_ARGS__)
#define td_warn(...) td_log(TD_LOG_WARN, __VA_ARGS__)
#define td_error(...) td_log(TD_LOG_ERROR, __VA_ARGS__)

/* A rate limit for one kind of log line (e.g. "408 from a client"), so that a flood of one
 * event (a thousand slow clients, descriptors running out) writes a few lines and a count
 * instead of a line each. Windows of TD_LOG_LIMIT_MS: in each, the first `burst` events are
 * logged, the rest only counted; once the window is over, td_log_limit_flush hands back that
 * count for one summary line ("N more 408 in the last second"), and never a summary of 0.
 * Zero-initialised; one per thread (no locking: each worker keeps its own). */
#define TD_LOG_LIMIT_MS 1000

typedef struct td_log_limit_s {
    int64_t start_ms; /* td_now_ms() at which the current window began; 0: none yet */
    uint32_t logged;  /* events logged in the current window */
    uint32_t dropped; /* events counted, not logged, in the current window */
} td_log_limit_t;

/* One event at `now_ms` (td_now_ms()). Returns 1 when its line is to be logged, 0 when it is
 * only counted. A window that is over is flushed first: call td_log_limit_flush before this (its
 * summary comes before the new line) or its count is lost. */
int td_log_limit_take(td_log_limit_t *l, unsigned burst, int64_t now_ms);

/* When the window of `l` is over at `now_ms`: returns how many events of it were not logged
 * (0 when none were: no summary) and closes the window. Returns 0 while the window runs. Call it
 * before each td_log_limit_take and from a periodic timer (a worker's tick), so that the summary
 * of the last burst comes even when no later event does. */
uint32_t td_log_limit_flush(td_log_limit_t *l, int64_t now_ms);

/* Logs at error level "<what>: a limit of td's own (open files, memory, local ports), not the
 * backend's" for a resource td itself ran out of, at most `burst` times a second through `l`
 * (one per worker); td_log_local_error_flush writes "N more errors of td's own limits in the last
 * second" once that second is over (call it from a periodic timer). */
void td_log_local_error(td_log_limit_t *l, unsigned burst, const char *what);
void td_log_local_error_flush(td_log_limit_t *l, int64_t now_ms);

/* A rate limit by reason, for the per-request error lines (td's own 4xx and 5xx, upstream
 * failures): one line a second for each reason (a status and what happened, with the backend and
 * server: "502 backend green server 127.0.0.1:8102: connection refused"), then one summary
 * "N more like this in the last second: REASON". A bounded table: a reason never seen before
 * takes a free entry, or one whose second is over, or else the oldest (whose count is written
 * at once), so the first line of a new reason is never lost and no count is. Zero-initialised;
 * one per worker (no locking). */
#define TD_LOG_REASONS 32
#define TD_LOG_REASON_LEN 200

typedef struct td_log_reason_s {
    uint64_t key; /* hash of text; 0: a free entry */
    td_log_limit_t limit;
    char text[TD_LOG_REASON_LEN]; /* the reason (cut to fit), as the summary names it */
} td_log_reason_t;

typedef struct td_log_reasons_s {
    td_log_reason_t r[TD_LOG_REASONS];
} td_log_reasons_t;

/* One event of `reason` (NUL-terminated, cut at TD_LOG_REASON_LEN - 1 bytes) at `now_ms`
 * (td_now_ms()): returns 1 when its line is to be logged, 0 when it is only counted. The summary
 * of this reason's previous second, when it dropped some, is logged (warn) first. */
int td_log_reasons_take(td_log_reasons_t *t, const char *reason, int64_t now_ms);

/* Logs the summary of every reason whose second is over at `now_ms` and that dropped lines, and
 * frees those entries. Call it from a periodic timer (a worker's tick), so that the count of the
 * last burst comes even when no later event does. */
void td_log_reasons_flush(td_log_reasons_t *t, int64_t now_ms);

/* Copies s[0..n) into out[cap] for a log line, so that nobody can start a new line or send a
 * terminal escape through it: control characters (CR, LF, ESC, ... DEL) and bytes from 0x80 on
 * become \xHH, a backslash becomes \\. At most `max` bytes of s are taken; a cut is marked
 * "...". out is always NUL-terminated (cap > 0). Returns the length written. */
size_t td_log_escape(char *out, size_t cap, const char *s, size_t n, size_t max);

/* Milliseconds of CLOCK_MONOTONIC (for deadlines), and of the wall clock (for cookies, logs). */
int64_t td_now_ms(void);
int64_t td_wall_ms(void);

/* The wall clock now as ISO 8601 UTC with milliseconds ("2026-12-01T12:00:00.000Z", 24 bytes and
 * its NUL) into out[cap], as log lines, events and the audit log write it. Returns its length. */
int td_wall_iso(char *out, size_t cap);

#endif
