/* The control plane: the running configuration, its version, and every change to it (admin API,
 * SIGHUP). Runs on the main thread only; workers see changes through the router's snapshots. */
#ifndef TD_CONTROL_H
#define TD_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"
#include "td/events.h" /* json_t */

/* Takes ownership of `cfg` (the config file's config) and publishes it as version 1, with the
 * overrides of the state file on top (td_state_merge: those the file has since replaced are
 * dropped, with an event; when the merge is not a valid config the file alone runs, logged at
 * error level). Before that it removes the state file's temporary files and marks an audited
 * change whose state never landed (td_audit_recover). `path` is the file it came from ("" for
 * the embedded demo config: changes are then not persisted). What starts (listeners, workers,
 * admin) is td_control_config() afterwards: `cfg` may have been freed. In cluster mode
 * ("cluster") there is no state file: what starts is td_cluster_boot's config (the cache file's
 * shared document with the file's own keys, or the file). */
int td_control_init(td_config_t *cfg, const char *path);

/* Refuses a state file that is the config file `config_file` itself (its state_file, or the
 * default next to it, resolving links): td would overwrite the operator's config with its state.
 * Returns 0, or TD_EINVAL with the message in err[n]. Used by td_control_init and `td -t`. */
int td_control_state_path_check(const td_config_t *cfg, const char *config_file, char *err,
                                size_t n);

/* The running config (borrowed; valid until the next change) and its version. */
const td_config_t *td_control_config(void);
uint64_t td_control_version(void);

/* Before td_control_init, in an upgrade's new process: the version the td before reached; the
 * first snapshot is v + 1, so versions never go backwards across an upgrade. */
void td_control_set_version(uint64_t v);
int64_t td_control_started_ms(void);

/* Applies a new config (ownership passes to the control plane, also on failure): checks what
 * cannot change while running (listeners, workers, admin address:
 * kept, with a warning logged; a removed admin.token stays in force until a restart),
 * publishes a new routing snapshot, logs "config version N applied (WHAT)" and records the
 * change in the audit log with `client` (the address it came from). With `persist` set and a
 * config file, the overrides become the difference between the config file (as last read) and
 * `cfg`, written to the state file (audit entry first, then an atomic replace); the config file
 * itself is never written. A state file that cannot be written does not refuse the change:
 * td_control_persisted then says why. Returns 0, or a negative TD_E* code with a message in
 * err[errlen] (nothing changed then). */
int td_control_apply(td_config_t *cfg, const char *what, int persist, const char *client, char *err,
                     size_t errlen);

/* Writes the state file again with the overrides as they are (and the rollout object of
 * td_rollout_persist_json), audited as `what` from `client`: for a change that moves no weight
 * (a rollout paused, finished). Returns 0; a failed write is said by td_control_persisted. */
int td_control_save(const char *what, const char *client);

/* Publishes a new routing snapshot of the running config, as version + 1, logged with `what`:
 * for a change made outside the config (the cluster's sticky key ring,
 * td_snapshot_set_sticky_secrets). Returns 0 or TD_E* (logged; the old snapshot stays). */
int td_control_refresh(const char *what);

/* While a rollout is active it owns the weights: every backend weight of `cfg` that differs from
 * the running config's is set back to the running one, with a warning and an event naming the
 * rollout (`what` names the change). Returns 1 when one was kept, else 0. Used by the control
 * plane itself and, in cluster mode, by the admin API before it proposes a whole config. */
int td_control_keep_rollout_weights(td_config_t *cfg, const char *what);

/* Drops every override: the config file as last read runs again, audited as a change from
 * `client`. Returns 0 or a negative TD_E* code with a message in err[errlen]. */
int td_control_reset(const char *client, char *err, size_t errlen);

/* 1 when the last change reached the state file, else 0 with *why (borrowed, may be NULL) saying
 * why ("cannot write the state file PATH: Permission denied"; the demo config has none). */
int td_control_persisted(const char **why);

/* The state file's path ("" with the demo config). Borrowed. */
const char *td_control_state_path(void);

/* New JSON values (owned by the caller; jansson's json_t, see td/events.h):
 * td_control_file_json: the config file's canonical config as td last read it (the running
 *   config with the demo config);
 * td_control_bound_json: {"listeners": [...], "workers": N | "auto"} as bound at start;
 * td_control_overrides_json: {"state_file", "persisted", "persist_error" (when not persisted),
 *   "overrides": [{"path", "keys", "value", "file_value", "since", "by"}]} (see td/state_file.h);
 * td_control_pending_restart: [{"key": "listeners" | "workers" | "admin.address", "file": asked,
 *   "running": bound}] for every setting the running config asks for that applies only at the
 *   next restart (empty when none). */
json_t *td_control_file_json(void);
json_t *td_control_bound_json(void);
json_t *td_control_overrides_json(void);
json_t *td_control_pending_restart(void);

/* Re-reads the config file (SIGHUP). A bad file is rejected: every problem is logged as
 * FILE:LINE:COL: message and the running config stays. Returns 0 or a negative TD_E* code. */
int td_control_reload(void);

void td_control_shutdown(void);

#endif
