/* The control plane: the running configuration, its version, and every change to it (admin API,
 * SIGHUP). Runs on the main thread only; workers see changes through the router's snapshots. */
#ifndef TD_CONTROL_H
#define TD_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"

/* Takes ownership of `cfg` (the running config) and publishes it as version 1. `path` is the file
 * it came from ("" for the embedded demo config: changes are then not persisted). */
int td_control_init(td_config_t *cfg, const char *path);

/* The running config (borrowed; valid until the next change) and its version. */
const td_config_t *td_control_config(void);
uint64_t td_control_version(void);
int64_t td_control_started_ms(void);

/* Applies a new config (ownership passes to the control plane, also on failure): checks what
 * cannot change while running (listeners, workers, admin address:
 * kept, with a warning logged; a removed admin.token stays in force until a restart),
 * publishes a new routing snapshot, writes the file back atomically when `persist` is set and
 * there is a file, logs "config version N applied (WHAT)" and records the change in the audit
 * log with `client` (the address it came from). Returns 0, or a negative TD_E*
 * code with a message in err[errlen] (nothing changed then). */
int td_control_apply(td_config_t *cfg, const char *what, int persist, const char *client, char *err,
                     size_t errlen);

/* Re-reads the config file (SIGHUP). A bad file is rejected: every problem is logged as
 * FILE:LINE:COL: message and the running config stays. Returns 0 or a negative TD_E* code. */
int td_control_reload(void);

void td_control_shutdown(void);

#endif
