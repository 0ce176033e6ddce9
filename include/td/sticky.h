/* Sticky-session cookies. The value names the backend (never a server address), carries its
 * expiry, and is signed so that a tampered or forged value is ignored:
 *     NAME "." EXPIRY_UNIX_S "." HEX(HMAC-SHA256(secret, NAME "." EXPIRY)[0..12])
 * An unknown, expired or tampered cookie is ignored and the client is assigned anew by weight. */
#ifndef TD_STICKY_H
#define TD_STICKY_H

#include <stddef.h>
#include <stdint.h>

#include "td/common-t.h"
#include "td/sticky-t.h"

/* Fills *key for the configured `secret` (a NUL-terminated string; its first TD_STICKY_KEY_MAX
 * bytes are used). An empty or NULL secret gives the process key: random, made once on first use
 * and the same for the life of the process, so cookies survive reloads (not restarts). Any
 * thread; the result is a plain value that the caller owns (it goes into a routing snapshot). */
void td_sticky_key_init(td_sticky_key_t *key, const char *secret);

/* The process key (the one an empty secret gives; made now when not yet) into *key: what an
 * upgrade hands to the next td process, so that the cookies it issued still pin. Any thread. */
void td_sticky_process_key(td_sticky_key_t *key);

/* Makes `key` (copied) the process key, before its first use (an upgrade's new process, before
 * the first routing snapshot). Returns 0, or TD_EINVAL when the process key was made already or
 * `key` is empty. Main thread, before the workers start. */
int td_sticky_adopt_process_key(const td_sticky_key_t *key);

/* Writes the cookie value for `backend` expiring at `expiry_s` (Unix seconds), signed with `key`,
 * into out[cap]. Returns its length, or 0 when cap is too small (at least TD_NAME_MAX + 48 bytes
 * is enough). */
size_t td_sticky_make(const td_sticky_key_t *key, char *out, size_t cap, const char *backend,
                      int64_t expiry_s);

/* Looks for the cookie `name` in a Cookie header value ("a=1; TDSTICKY=v; b=2"). When found,
 * signed with `key` and not expired at `now_s`, sets *backend to the backend name inside `header`
 * and returns 1; otherwise returns 0. */
int td_sticky_parse(const td_sticky_key_t *key, td_str_t header, const char *name, int64_t now_s,
                    td_str_t *backend);

/* td_sticky_parse with each of keys[0..n-1] accepted (a key ring: keys[0] signs new cookies,
 * the older ones still check); a key of len 0 is skipped. Returns 1 (and *backend) or 0. */
int td_sticky_parse_ring(const td_sticky_key_t *const *keys, size_t n, td_str_t header,
                         const char *name, int64_t now_s, td_str_t *backend);

#endif
