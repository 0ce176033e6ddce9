/* The resolver: servers' host names ("address": "HOST:port") turned into addresses with c-ares,
 * asynchronously, on the main thread's libuv loop (c-ares' sockets watched by uv_poll_t handles,
 * its timeouts by one uv_timer_t; nothing blocks the loop, nothing runs on a worker's loop).
 *
 * Each name of the running config is an entry: its last good answer (A and AAAA, IPv4 first, each
 * "IP:port" with the configured port), when it came, and the error of the last attempt. A name
 * is resolved again every resolve_ms (the smallest of the servers naming it), sooner when a
 * record's TTL is shorter (at least every second, though), and at once (at most once a second)
 * when every address of it is down in the current routing snapshot; one timer is armed at the
 * earliest name due. A failed attempt (timeout, refused, unreachable) keeps the last good answer
 * (HAProxy's `hold valid`); an NXDOMAIN or NODATA answer keeps it for resolvers.hold_nx_ms, then
 * the name has none. The warning is logged once per change of condition; an address change is an
 * event (td_event "dns").
 * When an answer differs from the last one the on_change callback runs; the control plane then
 * publishes a new routing snapshot, which td_snapshot_build fills from td_resolver_addrs.
 *
 * Without "resolvers.nameservers" the name servers are /etc/resolv.conf's and /etc/hosts is read
 * first (c-ares lookups "fb"); with them only they are asked ("b"). Main thread only, all of it.
 */
#ifndef TD_RESOLVER_H
#define TD_RESOLVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "td/config-t.h"

/* The most addresses kept for one name (more in an answer are dropped, IPv4 first). */
#define TD_RESOLVER_MAX_ADDRS 64

/* What the resolver knows of one name (td_resolver_info). */
typedef struct td_resolver_info_s {
    size_t num_addrs;       /* addresses of the last good answer (0: never resolved) */
    int64_t resolved_at_ms; /* td_wall_ms() of that answer; 0: never */
    int64_t checked_at_ms;  /* td_wall_ms() of the last attempt's end; 0: none yet */
    char error[160];        /* the last attempt's failure ("" when it succeeded) */
} td_resolver_info_t;

/* Called (with no arguments) when some name's answer changed; the callee publishes a new
 * snapshot. */
typedef void td_resolver_change_fn(void);

/* Makes the resolver follow `cfg` (borrowed; read during the call only): its "resolvers"
 * settings (a change re-creates the c-ares channel and asks every name again) and the host names
 * of its servers (a new name is asked at once, a name no longer in it is forgotten, a name kept
 * keeps its answer). `on_change` may be NULL. The first call starts the resolver on `loop`.
 * Returns 0, TD_ENOMEM, or TD_EIO when c-ares cannot start (the message is logged); names then
 * have no addresses. */
int td_resolver_sync(uv_loop_t *loop, const td_config_t *cfg, td_resolver_change_fn *on_change);

/* Called for an address of server `s` (a host name) of backend `b` that is already another
 * server of that backend: `other` is the kept one's configured address (a server configured by
 * that address always wins; among names, the first in the list). Registry identity is (backend,
 * address): the address is one server only. */
typedef void td_resolver_overlap_fn(void *arg, int b, int s, const char *address,
                                    const char *other);

/* Resolves every host name of `cfg` once, blocking, on a loop of its own, bounded by the
 * resolvers' timeout and attempts (td -t, and td's start so that the first snapshot has the
 * addresses; never the running loop's resolver). With `keep` set, the answers become the running
 * resolver's (call before its first td_resolver_sync). For each name that does not resolve,
 * `report(arg, backend_index, server_index, error)` is called, once per server naming it; for
 * each answer's address that another server of its backend already has, `overlap` (NULL: with
 * `keep`, logged as a warning).
 * Returns 0, TD_ENOMEM or TD_EIO (c-ares cannot start: the message in report with indexes -1). */
int td_resolver_resolve_all(const td_config_t *cfg, int keep,
                            void (*report)(void *arg, int b, int s, const char *error),
                            td_resolver_overlap_fn *overlap, void *arg);

/* Copies the addresses of `name` (a server's HOST:port text) from its last good answer into
 * out[0..max), each with its text "IP:port" ("[IPv6]:port") and sockaddr. Returns how many (0:
 * unknown name, or never resolved). */
size_t td_resolver_addrs(const char *name, td_addr_t *out, size_t max);

/* Fills `out` for `name`. Returns 0, or TD_ENOTFOUND when the resolver does not follow that name.
 */
int td_resolver_info(const char *name, td_resolver_info_t *out);

/* Sets the function called (on the loop's turn after the answer) when a name followed by the
 * running resolver has its first answer or first failure: what a config change waiting for its
 * new names (td_resolver_unanswered) listens to. NULL: none. */
void td_resolver_on_first_answer(td_resolver_change_fn *fn);

/* How many servers of `cfg` name a host that the running resolver follows and has neither had
 * an answer for nor a failure of yet (0 when the resolver is not running). */
size_t td_resolver_unanswered(const td_config_t *cfg);

/* The longest a lookup with cfg's resolvers can take (ms): timeout x attempts x name servers
 * (3 for /etc/resolv.conf's), plus a second. */
uint64_t td_resolver_bound_ms(const td_config_t *cfg);

/* Stops the resolver (its handles close on the loop's next turn) and forgets every name. */
void td_resolver_stop(void);

#endif
