/* Upgrades without a dropped request (nginx's SIGUSR2, HAProxy's -x): the running ("old") td
 * starts the binary now at the path it was started as, with the same arguments and environment
 * plus TD_UPGRADE_FD, the descriptor of its end of a Unix socket pair (SOCK_SEQPACKET). Over it:
 *
 *   new -> old  'H' {"pid": N}          config loaded: send me the sockets
 *   old -> new  'L' {"address", "index"} + the listener's sockets, one per worker (SCM_RIGHTS;
 *                                        several messages when there are many)
 *               'A' {"address"} + the admin listener's socket
 *               'S' text ...            the runtime state (td_upgrade_state_json), in pieces
 *               'E'                     end of the handover
 *   new -> old  'R' {"pid": N}          accepting on the adopted sockets
 *   old -> new  'K'                     systemd told MAINPID=N; the old one stops accepting
 *   new -> old  'X' text                the new one cannot start, and why (then it exits)
 *
 * The new process adopts the very listening sockets (the same kernel sockets, with their accept
 * queues), binds none of them itself, and the old one closes its copies only once the new one
 * accepts on them: no queued connection is lost. Until 'R' the old process changes nothing; a
 * new one that exits, says 'X' or does not report ready within 30 s leaves it serving as before.
 * Main thread only. The sequence: docs/ARCHITECTURE.md, "Upgrades". */
#ifndef TD_UPGRADE_H
#define TD_UPGRADE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "td/config-t.h"
#include "td/events.h" /* json_t */
#include "td/proxy.h"
#include "td/snapshot-t.h"

/* The environment variable naming the new process's end of the socket pair. */
#define TD_UPGRADE_ENV "TD_UPGRADE_FD"

/* How long the old process waits for the new one's 'R' before it gives up (and kills it). */
#define TD_UPGRADE_TIMEOUT_MS 30000

/* ---- the running (old) process */

/* Records the binary an upgrade starts: `argv0` made absolute against the working directory
 * (not resolved through links, so a package that replaced the file at that path starts the new
 * file), or when it holds no '/' (found through PATH) /proc/self/exe without a " (deleted)"
 * suffix. Call at start, before any chdir. */
void td_upgrade_set_exe(const char *argv0);

/* The path td_upgrade_set_exe recorded (borrowed; "" before). */
const char *td_upgrade_exe(void);

/* The end of an upgrade started by td_upgrade_begin: new_pid > 0 when the new process took over
 * (it accepts on the sockets; the caller now stops accepting and drains), else 0 with `why`
 * (borrowed for the call: "the new td exited with status 3 before it was ready"). */
typedef void td_upgrade_done_fn(long new_pid, const char *why);

/* Starts the new binary (td_upgrade_exe) with `argv` (borrowed, NULL-terminated; kept until
 * done) on `loop`, handing it the listening sockets of `proxy` (borrowed; every worker's, by
 * listener of td_control_config()) and of the admin API, and the runtime state. `done` is called
 * once, later, from the loop. Returns 0, or TD_EIO / TD_ECONFLICT (one is under way) with why in
 * err[n] (done is not called then). */
int td_upgrade_begin(uv_loop_t *loop, char *const *argv, const td_proxy_t *proxy,
                     td_upgrade_done_fn *done, char *err, size_t n);

/* Ends an upgrade under way as failed with `why` (borrowed; td is stopping): the new process is
 * killed, `done` told. Nothing when none is. */
void td_upgrade_cancel(const char *why);

/* 1 while an upgrade started by td_upgrade_begin has not ended. */
int td_upgrade_in_progress(void);

/* Where the old process writes an upgrade's outcome for `td upgrade`: PID_FILE.upgrade. */
void td_upgrade_outcome_path(const char *pid_file, char *out, size_t n);

/* Writes "OLD_PID ok NEW_PID\n" (new_pid > 0) or "OLD_PID failed WHY\n" to `path` atomically
 * (a temporary file in the same folder, renamed). Returns 0 or TD_EIO. */
int td_upgrade_outcome_write(const char *path, long old_pid, long new_pid, const char *why);

/* What `td upgrade` learns of the process it is to signal, from /proc/PID. */
typedef struct td_upgrade_target_s {
    int demo;                       /* 1: `td demo` (it cannot be upgraded) */
    char config[TD_PATH_MAX + 1];   /* its -c FILE, absolute ("" when none) */
    char pid_file[TD_PATH_MAX + 1]; /* its --pid-file FILE ("" when none) */
} td_upgrade_target_t;

/* Checks that `pid` is a td before `td upgrade` signals it: the basename of its /proc/PID/exe
 * (" (deleted)" stripped), of its argv[0], or its comm is this binary's or "td". Fills `t` from
 * its command line. Returns 0, or TD_EINVAL with the reason in err[n] (pid 1, no such process,
 * not td). */
int td_upgrade_target(long pid, td_upgrade_target_t *t, char *err, size_t n);

/* `td upgrade`: sends SIGUSR2 to `pid` and, with `outcome` (a path from td_upgrade_outcome_path;
 * "" when there is no pid file), waits up to `timeout_ms` for the outcome it writes. Prints one
 * line (stdout on success, stderr otherwise) and returns the exit status: 0 taken over, 1
 * failed or no outcome, 3 signalled without an outcome file to wait for. */
int td_upgrade_command(long pid, const char *outcome, int timeout_ms);

/* ---- the new process */

/* 1 when this process was started by an upgrade (TD_UPGRADE_ENV names an open descriptor; the
 * variable is removed so that nothing it starts inherits it), else 0. Call first thing. */
int td_upgrade_child_init(void);

/* 1 after td_upgrade_child_init found an upgrade, until td_upgrade_ready or td_upgrade_fail. */
int td_upgrade_child(void);

/* Asks the old process for its sockets and state ('H') and reads them, blocking (at most
 * TD_UPGRADE_TIMEOUT_MS). Returns 0, or TD_EIO with why in err[n]. */
int td_upgrade_receive(char *err, size_t n);

/* A td_proxy_adopt_fn for td_proxy_start_adopt, `arg` the config being started (listeners by
 * address text): the socket handed over for that listener and worker (owned by the caller from
 * then on), or -1. */
int td_upgrade_adopt_listener(size_t listener, size_t worker, void *arg);

/* The most sockets handed over for one listener of `cfg`: the new process runs at least that many
 * workers, as closing one would reset the connections queued on it. */
size_t td_upgrade_workers_needed(const td_config_t *cfg);

/* The admin listener's socket if it was handed over for `address` (owned by the caller), or -1. */
int td_upgrade_take_admin(const td_addr_t *address);

/* Closes the handed-over sockets nothing adopted (listeners the new config no longer has). */
void td_upgrade_close_rest(void);

/* The state received, applied to the registry and the sticky key: before td_control_init (its
 * first snapshot and health sync see them). Returns 0 or TD_ENOMEM. */
int td_upgrade_apply_state(void);

/* The state's health check counters (rise/fall runs), after td_control_init set up the checks. */
void td_upgrade_apply_health(void);

/* Reports ready ('R') and waits (at most 10 s) for the old process's 'K', once it has named this
 * process to systemd and stopped accepting; then closes the socket. Returns 0, or TD_EIO when the
 * old process did not answer (this one serves anyway). */
int td_upgrade_ready(void);

/* Tells the old process why this one cannot start ('X' `why`), then closes the socket. */
void td_upgrade_fail(const char *why);

/* ---- the runtime state handed over */

/* {"sticky_key": HEX (the process key, used when no secret is configured),
 *  "servers": [{"backend", "address", "checked", "health_up", "ok_run", "fail_run",
 *               "up_since_ms", "down_until_ms", "ejected", "ejections",
 *               "consecutive_failures", "recheck"}]}
 * for every server of the snapshot `snap` (borrowed; a host name's servers are its resolved
 * addresses; NULL: no servers), keyed by backend name and address text; the *_ms are
 * td_now_ms() values (CLOCK_MONOTONIC: the same clock in both processes). Weights, backend states
 * and an active rollout are in the state file, which the new process reads as any start does.
 * Returns a new object (owned by the caller), or NULL when out of memory. */
json_t *td_upgrade_state_json(const td_snapshot_t *snap);

/* Applies such an object (borrowed) to the registry and the process sticky key. Returns 0, or
 * TD_EINVAL when it is not one (nothing applied then). */
int td_upgrade_state_apply(const json_t *state);

#endif
