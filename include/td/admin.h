/* The admin API, metrics and web console (JSON over HTTP/1.1 on admin.address), served on the
 * main thread's loop. Endpoints, auth and error shapes: docs/ARCHITECTURE.md and the README. */
#ifndef TD_ADMIN_H
#define TD_ADMIN_H

#include <stddef.h>
#include <uv.h>

#include "td/config-t.h"

/* Listens on `address` in `loop`, with `token` (copied; "" or NULL: no token) required as
 * "Authorization: Bearer TOKEN" on every call but the console page. The address is bound until
 * the process ends; the token changes only through td_admin_update_token. Without a token, a
 * request whose Host is not this admin address (as bound, the address the client reached, or
 * localhost / 127.0.0.1 / [::1] with the bound port) gets 421, and one with an Origin that is not
 * http(s)://<that same host:port> gets 403: a browser page elsewhere (DNS rebinding, a cross-origin
 * form) cannot drive td. The console page is sent with a Content-Security-Policy allowing only its
 * own inline script and style (by SHA-256) and same-origin fetches, and X-Frame-Options: DENY.
 * Returns 0, or a negative TD_E* code with a message in err[errlen]. */
int td_admin_start(uv_loop_t *loop, const td_addr_t *address, const char *token, char *err,
                   size_t errlen);

/* Takes the admin.token of a newly applied config: a non-empty `token` (copied) replaces the
 * one in force at once (rotation, or protection added); an empty one (admin or its token
 * removed) is ignored, so a reload never leaves the bound port without the token it had: that
 * applies at the next restart. Returns 1 when a token stays in force that the config no longer
 * has (the caller logs it), else 0. */
int td_admin_update_token(const char *token);

/* The same for admin.read_token, the token of GET and HEAD only (dashboards, monitoring): with
 * it every change (PUT, POST, DELETE) gets 403 and changes nothing. td_admin_start takes the
 * first one from the running config (td_control_config()). */
int td_admin_update_read_token(const char *token);

/* Takes the admin.tls of a newly applied config: new certificates apply to the connections that
 * come next (as a listener's do). Returns 0; 1 when TLS was turned on or off, which applies at the
 * next restart (the caller logs it); or TD_EINVAL with why in err[errlen] when the certificates
 * cannot be loaded (the ones in force stay). td_admin_start takes the first admin.tls from the
 * running config (td_control_config()) and fails with "admin.tls: ..." when it cannot load it. */
int td_admin_update_tls(const td_config_t *cfg, char *err, size_t errlen);

/* Stops listening and closes every admin connection. */
void td_admin_stop(void);

/* After an upgrade's handover: td_admin_http_hand_off. */
void td_admin_hand_off(void);

#endif
