/* Types of td's own readiness (GET /readyz): the phases of the process's life it answers for. */
#ifndef TD_READY_T_H
#define TD_READY_T_H

typedef enum td_ready_phase_e {
    TD_READY_STARTING = 0, /* before the listeners are bound and serving */
    TD_READY_SERVING = 1,  /* serving with a current state */
    TD_READY_GRACE = 2,    /* stopping: still serving for timeouts.stop_grace_ms */
    TD_READY_DRAINING = 3, /* stopping: listeners closed, in-flight requests finishing */
} td_ready_phase_t;

#endif
