/* td's life as the service manager sees it: systemd's Type=notify protocol (sd_notify(3), from
 * libsystemd), so that `systemctl start` returns once td serves, `systemctl reload` once the new
 * config runs, and `systemctl status` shows a status line. Every message is a datagram of
 * KEY=VALUE lines to the AF_UNIX socket named by $NOTIFY_SOCKET; without that variable (td run
 * from a shell or a test) every call does nothing. Main thread only. */
#ifndef TD_NOTIFY_H
#define TD_NOTIFY_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"

/* The status line for `cfg` at config version `version` into out[n] (always NUL-terminated,
 * cut at n - 1 bytes): "serving; config version 3; blue 90 / green 10", a backend not in state
 * ready followed by it ("blue 0 (maint)"). Pure: no I/O. */
void td_notify_describe(const td_config_t *cfg, uint64_t version, char *out, size_t n);

/* READY=1 with the running config's status line (td_control_config, td_control_version): once
 * the listeners are bound, and after each reload, taken or rejected (the running config serves
 * either way). Returns 0 (sent, or no $NOTIFY_SOCKET), or TD_EIO (logged once at warn). */
int td_notify_ready(void);

/* RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC in µs, as systemd's notify-reload wants it)
 * and "STATUS=reloading the config file": before a SIGHUP reload, td_notify_ready after it.
 * Returns as td_notify_ready. */
int td_notify_reloading(void);

/* MAINPID=`pid`: the process systemd watches as the service's main one from now on. On an
 * upgrade the old td names the new one (with NotifyAccess=main only the main process is heard,
 * so this is what lets the new one's READY=1 count), and the new one names itself before its
 * READY=1. Returns as td_notify_ready. */
int td_notify_mainpid(long pid);

/* STOPPING=1 with "STATUS=`status`" (e.g. "stopping: draining in-flight requests (up to 30000
 * ms)"; borrowed): when a stop begins, and again when its phase changes. Returns as
 * td_notify_ready. */
int td_notify_stopping(const char *status);

/* STATUS= alone, the running config's line: after a change that did not go through a reload (the
 * admin API, a rollout step). Sends nothing unless td is serving (td_ready_phase): not before
 * READY, and not over a stop's STOPPING line (the API still answers in the grace period).
 * Returns as td_notify_ready. */
int td_notify_status(void);

#endif
