/* The admin API, metrics and web console (JSON over HTTP/1.1 on admin.address), served on the
 * main thread's loop. Endpoints, auth and error shapes: docs/ARCHITECTURE.md and the README. */
#ifndef TD_ADMIN_H
#define TD_ADMIN_H

#include <stddef.h>
#include <uv.h>

#include "td/config-t.h"

/* Listens on `address` in `loop`. Requests are checked against the running config's admin token
 * (read per request, so a changed token applies at once). Returns 0, or a negative TD_E* code
 * with a message in err[errlen]. */
int td_admin_start(uv_loop_t *loop, const td_addr_t *address, char *err, size_t errlen);

/* Stops listening and closes every admin connection. */
void td_admin_stop(void);

#endif
