/* td's own readiness: the phase of the process (starting, serving, stopping) behind GET /readyz
 * and the td_ready gauge. */
#include "td/ready.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

/* Why td is out of service while it serves (cut off from the cluster store), "" when it is not:
 * set by the main thread, read by any. */
static pthread_mutex_t cut_lock = PTHREAD_MUTEX_INITIALIZER;
static char cut_reason[512];

static _Atomic int phase = TD_READY_STARTING;
static _Atomic int64_t grace_until_ms;

void td_ready_set(td_ready_phase_t p, int64_t until_ms) {
    if (p == TD_READY_GRACE)
        atomic_store(&grace_until_ms, until_ms);
    atomic_store(&phase, (int)p);
}

td_ready_phase_t td_ready_phase(void) {
    return (td_ready_phase_t)atomic_load(&phase);
}

int td_ready_check(int64_t now_ms, char *reason, size_t n) {
    int64_t left;
    switch (td_ready_phase()) {
    case TD_READY_SERVING:
        pthread_mutex_lock(&cut_lock);
        int cut = cut_reason[0] != 0;
        if (n)
            snprintf(reason, n, "%s", cut_reason);
        pthread_mutex_unlock(&cut_lock);
        return !cut;
    case TD_READY_STARTING:
        snprintf(reason, n, "starting");
        return 0;
    case TD_READY_GRACE:
        left = atomic_load(&grace_until_ms) - now_ms;
        snprintf(reason, n, "stopping: grace period, %lld ms left",
                 (long long)(left > 0 ? left : 0));
        return 0;
    case TD_READY_DRAINING:
        break;
    }
    snprintf(reason, n, "stopping: draining");
    return 0;
}

void td_ready_cut_off(const char *reason) {
    pthread_mutex_lock(&cut_lock);
    snprintf(cut_reason, sizeof(cut_reason), "%s", reason ? reason : "");
    pthread_mutex_unlock(&cut_lock);
}
