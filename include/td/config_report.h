/* Config problems for people: "FILE:LINE:COL: path: message", collected while the document is
 * walked and printed in document order at the end. Internal to the config module. */
#ifndef TD_CONFIG_REPORT_H
#define TD_CONFIG_REPORT_H

#include <stdio.h>

#include "td/config_report-t.h"

/* The path of the walk: push a key (borrowed, NUL-terminated, kept until popped) or an index;
 * pop the last step. Paths deeper than TD_CONFIG_MAX_PATH are counted but not recorded. */
void td_config_report_push_key(td_config_report_t *r, const char *key);
void td_config_report_push_index(td_config_report_t *r, size_t index);
void td_config_report_pop(td_config_report_t *r);

/* Records a problem with the value (or, TD_CONFIG_AT_KEY, the key) at the current path: the
 * message is prefixed with the path ("backends[1].weight: "), and its line and column are found
 * in the raw text (td_config_locate). Arguments that come from the document must go through
 * td_config_show. Past TD_CONFIG_MAX_PROBLEMS problems only a count is kept. */
void td_config_report(td_config_report_t *r, int at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prints every problem to `errs` (may be NULL) as "NAME:LINE:COL: message", sorted by position
 * (stable), then "N more problems not shown" and "out of memory" lines when due; frees them. */
void td_config_report_flush(td_config_report_t *r, const char *name, FILE *errs);

/* Frees the problems without printing them. */
void td_config_report_free(td_config_report_t *r);

/* Writes `s` into out[size] (size >= 16) for a one-line message: control characters (and, when
 * `quoted`, quotes and backslashes) escaped, in quotes when `quoted`, cut on a UTF-8 boundary with
 * "..." when long. Returns out. */
char *td_config_show(char *out, size_t size, const char *s, int quoted);

/* The name of `names` (NULL-terminated) closest to `s` when close enough to be a likely typo
 * (optimal string alignment distance ignoring ASCII case: at most 1, or 2 for names of 5 or more
 * characters), else NULL. */
const char *td_config_suggest(const char *s, const char *const *names);

/* Writes `names` (NULL-terminated) as "a, b, c" into out[size]. */
void td_config_join(char *out, size_t size, const char *const *names);

#endif
