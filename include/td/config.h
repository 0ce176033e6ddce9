/* Loading, checking and writing the JSON configuration (jansson for JSON itself). */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H

#include <stdio.h>

#include "td/common-t.h"
#include "td/config-t.h"

/* Parses and validates a config document held in memory. `name` is the file name used in
 * messages. On success returns a new config (owned by the caller; free with td_config_free) and
 * writes nothing to `errs`. On failure returns NULL and writes every problem found to `errs`, one
 * per line, as "NAME:LINE:COL: message" (LINE and COL 1-based, pointing at the offending key or
 * value): JSON syntax errors, unknown keys, wrong types, out-of-range numbers, bad addresses,
 * duplicate backend names, missing required keys. `errs` may be NULL.
 *
 * A message starts with the path of the thing it is about, then says what would be valid, e.g.
 *   td.json:12:19: backends[1].weight: 150 is out of range (0..100)
 *   td.json:3:5: routing.methd: unknown key, did you mean "method"?
 * Lines come in document order. Positions: an unknown key at its opening quote; a bad value at its
 * first character; a missing key or too-short array at the enclosing object or array; a JSON
 * syntax error where jansson stopped (only the first syntax error can be found). Duplicate keys
 * are syntax errors. At most 100 problems are listed, then a line saying more were left out. */
td_config_t *td_config_parse(const char *text, size_t len, const char *name, FILE *errs);

/* Reads the file at `path` and parses it as td_config_parse does. A file that cannot be read is
 * reported as "PATH: cannot read: <reason>" (no position: there is no text to point into). */
td_config_t *td_config_load(const char *path, FILE *errs);

/* The embedded default used by `td demo`: blue 127.0.0.1:9001 and green 127.0.0.1:9002 at 50/50,
 * round robin, listener 127.0.0.1:8080, admin 127.0.0.1:9090 without token, workers "auto", HTTP
 * health checks with the defaults (GET / every 3000 ms, 2xx/3xx healthy), default timeouts.
 * Owned by the caller; NULL when out of memory. */
td_config_t *td_config_demo(void);

/* Returns a deep copy (owned by the caller), or NULL when out of memory. */
td_config_t *td_config_dup(const td_config_t *c);

void td_config_free(td_config_t *c);

/* Serialises the config as a pretty-printed JSON document in the contract's shape (every key
 * written, "workers" as "auto" when it was). Returns a malloc'd NUL-terminated string owned by the
 * caller, or NULL. */
char *td_config_to_json(const td_config_t *c);

/* Writes the config to `path` atomically: a temporary file in the same directory, fsync, rename
 * over `path`, fsync of the directory. An existing file's permission bits are kept; a new file is
 * 0600 (it may hold the admin token). Returns 0, TD_ENOMEM, or TD_EIO (errno set). */
int td_config_write(const td_config_t *c, const char *path);

/* Writes the document `json` (NUL-terminated, e.g. from td_config_to_json) to `path` the same way
 * as td_config_write: the temporary file is PATH.tmp-XXXXXX next to the file (next to a symlink's
 * target), renamed over it once written and synced. Returns 0, TD_ENOMEM, or TD_EIO (errno set);
 * on failure the file is unchanged and the temporary file removed. */
int td_config_write_text(const char *json, const char *path);

/* Removes the temporary files td_config_write_text leaves when the process dies while writing
 * (PATH.tmp- followed by exactly six letters or digits, in the directory of `path`'s target; no
 * other file). Called at start, before anything writes. Returns how many were removed, or
 * TD_ENOMEM / TD_EIO (the directory cannot be read). */
int td_config_remove_temps(const char *path);

/* SHA-256 of p[0..len) as 64 lowercase hex digits and a NUL in out[65]. */
void td_sha256_hex(const char *p, size_t len, char out[65]);

/* SHA-256 (hex, as td_sha256_hex) of the file at `path` as it is now: what the audit log compares
 * to tell whether a change reached the file. Returns 0, or TD_EIO / TD_ENOMEM with out "". */
int td_config_file_sha256(const char *path, char out[65]);

/* Parses "IP:port" or "[IPv6]:port" (numeric addresses only, port 1..65535, at most 63
 * characters) into `out`. Returns 0, or TD_EINVAL with `out` untouched. */
int td_addr_parse(const char *text, td_addr_t *out);

/* Parses "HOST:port" with a DNS host name (RFC 1123 labels of letters, digits, '-' and '_',
 * dot-separated, a trailing dot allowed, not all digits; port 1..65535; at most 63 characters)
 * into `out`: its text, with
 * salen 0 (no address yet). Returns 0, or TD_EINVAL with `out` untouched (an IP literal is not a
 * name: use td_addr_parse first). */
int td_addr_parse_name(const char *text, td_addr_t *out);

/* 1 when `a` holds a host name (td_addr_parse_name) rather than an address. */
static inline int td_addr_is_name(const td_addr_t *a) {
    return a->salen == 0 && a->text[0] != '\0';
}

/* Method name <-> enum. td_method_parse returns 0 or TD_EINVAL. */
const char *td_method_name(td_method_t m);
int td_method_parse(const char *s, td_method_t *out);

/* Backend state name ("ready", "drain", "maint") <-> enum. td_backend_state_parse returns 0 or
 * TD_EINVAL. */
const char *td_backend_state_name(td_backend_state_t st);
int td_backend_state_parse(const char *s, td_backend_state_t *out);

/* Does HTTP status `status` match a health check's expect_status list ("2xx,3xx", "200,204",
 * "2xx,404": comma-separated classes Nxx and codes 100..599)? Returns 1 or 0. The list is
 * assumed valid (td_config_parse checks it). */
int td_config_status_expected(const char *expect_status, int status);

#endif
