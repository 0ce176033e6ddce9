/* Logging: one line per event on stderr, "TIME LEVEL message", safe from any thread. */
#ifndef TD_LOG_H
#define TD_LOG_H

#include <stdint.h>

typedef enum td_log_level_e { TD_LOG_DEBUG, TD_LOG_INFO, TD_LOG_WARN, TD_LOG_ERROR } td_log_level_t;

/* Messages below this level are dropped (default TD_LOG_INFO). */
void td_log_set_level(td_log_level_t level);

/* Writes "2026-11-29T23:50:01.123Z warn  <message>\n" to stderr in one write. */
void td_log(td_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define td_debug(...) td_log(TD_LOG_DEBUG, __VA_ARGS__)
#define td_info(...) td_log(TD_LOG_INFO, __VA_ARGS__)
#define td_warn(...) td_log(TD_LOG_WARN, __VA_ARGS__)
#define td_error(...) td_log(TD_LOG_ERROR, __VA_ARGS__)

/* Milliseconds of CLOCK_MONOTONIC (for deadlines), and of the wall clock (for cookies, logs). */
int64_t td_now_ms(void);
int64_t td_wall_ms(void);

#endif
