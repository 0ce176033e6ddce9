/* Types of the rollout engine (td/rollout.h): what a POST /api/v1/rollout asks for, checked, and
 * the states a rollout goes through. */
#ifndef TD_ROLLOUT_T_H
#define TD_ROLLOUT_T_H

#include <stddef.h>

#include "td/config-t.h" /* TD_NAME_MAX, TD_CONFIG_MAX_BACKENDS */

#define TD_ROLLOUT_MAX_STEPS 100
#define TD_ROLLOUT_URL_MAX 1024

typedef enum td_rollout_state_e {
    TD_RO_CHECKING = 0, /* the pre-check runs against `to` */
    TD_RO_RUNNING,      /* stepping: weights move, each step analysed */
    TD_RO_PAUSED,       /* held (by a person, or on_failure "pause"): weights stay */
    TD_RO_DRAINING,     /* after the last step with drain: the old side finishes its requests */
    TD_RO_SUCCEEDED,    /* terminal: `to` has every request */
    TD_RO_ROLLED_BACK,  /* terminal: a step failed, the weights from before are back */
    TD_RO_ABORTED,      /* terminal: by a person, or a failed pre-check */
    TD_RO_NSTATES
} td_rollout_state_t;

/* What a person can ask of an active rollout (POST /api/v1/rollout/ACTION). */
typedef enum td_rollout_action_e {
    TD_RO_PAUSE = 0,
    TD_RO_RESUME,
    TD_RO_PROMOTE,
    TD_RO_ABORT,
    TD_RO_NACTIONS
} td_rollout_action_t;

/* A rollout as asked for, every default filled in (see README, "Rollouts"). Durations in s. */
typedef struct td_rollout_spec_s {
    char to[TD_NAME_MAX];
    int steps[TD_ROLLOUT_MAX_STEPS]; /* strictly increasing 1..100, the last 100 */
    size_t num_steps;
    int step_s;           /* 1..86400; default 60 */
    int ramp_s;           /* 0..step_s; default 0 */
    int on_failure_pause; /* 0: "rollback" (default), 1: "pause" */
    int drain;            /* default 0 */
    int has_pre_check;
    char pc_path[512];                   /* required with pre_check; starts with '/' */
    char pc_expect[64];                  /* default "2xx" */
    int pc_requests;                     /* 1..1000; default 10 */
    char pc_webhook[TD_ROLLOUT_URL_MAX]; /* "" none */
    int pc_webhook_timeout_s;            /* 1..3600; default 30 */
    double max_error_rate;               /* 0..1; default 0.01 */
    int max_p99_ms;                      /* >= 0; default 0 (none) */
    int min_requests;                    /* >= 1; default 200 */
    int compare_baseline;                /* "baseline" (default) 1, "none" 0 */
    double max_ratio;                    /* >= 1; default 1.5 */
    char an_webhook[TD_ROLLOUT_URL_MAX]; /* "" none */
    double significance;                 /* (0, 0.5]; default 0.01 */
    int interval_s; /* 1..step_s; default 5, a fifth of a step under 25 s (at least 1) */
    int warmup_s;   /* 0..step_s - 1; default 5, a fifth of a step under 25 s */
} td_rollout_spec_t;

/* The backends as a rollout is judged against at its start: from the running config. */
typedef struct td_rollout_env_s {
    size_t num_backends;
    char names[TD_CONFIG_MAX_BACKENDS][TD_NAME_MAX];
    int weights[TD_CONFIG_MAX_BACKENDS];
    int up[TD_CONFIG_MAX_BACKENDS]; /* 1 when at least one of its servers is up */
    /* 1 in state ready: takes new requests by its weight (drain, maint: a share of 0 whatever
     * its weight) */
    int ready[TD_CONFIG_MAX_BACKENDS];
    td_backend_state_t state[TD_CONFIG_MAX_BACKENDS]; /* ready / drain / maint */
} td_rollout_env_t;

#endif
