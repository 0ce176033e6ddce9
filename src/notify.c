/* systemd's notify protocol for td (see td/notify.h): READY, RELOADING, STOPPING and STATUS
 * through libsystemd's sd_notify. */
#include "td/notify.h"

#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "td/common-t.h"
#include "td/config.h"
#include "td/control.h"
#include "td/log.h"
#include "td/ready.h"

void td_notify_describe(const td_config_t *cfg, uint64_t version, char *out, size_t n) {
    size_t at = 0;
    int w;

    if (!n)
        return;
    out[0] = 0;
    w = snprintf(out, n, "serving; config version %llu", (unsigned long long)version);
    if (w < 0 || (size_t)w >= n)
        return;
    at = (size_t)w;
    for (size_t i = 0; i < cfg->num_backends && at < n; i++) {
        const td_config_backend_t *b = &cfg->backends[i];
        int other = b->state != TD_BACKEND_READY;
        w = snprintf(out + at, n - at, "%s%s %d%s%s%s", i ? " / " : "; ", b->name, b->weight,
                     other ? " (" : "", other ? td_backend_state_name(b->state) : "",
                     other ? ")" : "");
        if (w < 0)
            return;
        at += (size_t)w; /* past n when cut: the loop ends */
    }
}

/* One message; a failure is logged once (a service manager that went away would otherwise
 * fill the log), and never stops td. */
static int notify(const char *msg) {
    static int warned;
    int r = sd_notify(0, msg);
    if (r >= 0)
        return 0;
    if (!warned) {
        warned = 1;
        td_warn("sd_notify to $NOTIFY_SOCKET failed: %s", strerror(-r));
    }
    return TD_EIO;
}

static int send_status(const char *first) {
    char status[512], msg[600];
    td_notify_describe(td_control_config(), td_control_version(), status, sizeof(status));
    snprintf(msg, sizeof(msg), "%sSTATUS=%s", first, status);
    return notify(msg);
}

int td_notify_ready(void) {
    return send_status("READY=1\n");
}

int td_notify_reloading(void) {
    struct timespec ts;
    char msg[128];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading the config file",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    return notify(msg);
}

int td_notify_mainpid(long pid) {
    char msg[64];
    snprintf(msg, sizeof(msg), "MAINPID=%ld", pid);
    return notify(msg);
}

int td_notify_stopping(const char *status) {
    char msg[512];
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", status);
    return notify(msg);
}

int td_notify_status(void) {
    if (td_ready_phase() != TD_READY_SERVING)
        return 0; /* "serving" would be untrue: a stop's STOPPING line stays */
    return send_status("");
}
