/* The rollout engine: a blue-green switch run by td itself, in steps of weight, each step's
 * target side judged on td's own counters (td/analysis.h), rolled back or paused when a step
 * fails. Runs on the main thread's loop (a 1 s timer); it changes weights only through the
 * control plane (td_control_apply), so the snapshot swap, events, audit and state file work as
 * for any change; the active rollout is kept in the state file with the weights it set. In
 * cluster mode only the rollout leader runs it (td/cluster.h): its writes are fenced etcd
 * transactions of the weights and the rollout object together, a step's clock starts once
 * every live node applied it, and a node that becomes leader continues an active rollout.
 * API shape: README, "Rollouts". */
#ifndef TD_ROLLOUT_H
#define TD_ROLLOUT_H

#include <stddef.h>

#include <uv.h>

#include "td/events.h" /* json_t */
#include "td/rollout-t.h"

/* ---- pure parts (src/rollout_json.c): no clock, no I/O */

/* "checking", "running", ... / "pause", "resume", "promote", "abort"; "" when out of range. */
const char *td_rollout_state_name(td_rollout_state_t s);
const char *td_rollout_action_name(td_rollout_action_t a);
/* The state from its name; -1 when unknown. */
int td_rollout_state_parse(const char *name);

/* 1 for checking, running, paused, draining; 0 for the terminal states. */
int td_rollout_state_active(td_rollout_state_t s);

/* The state action `a` leads to from state `s` (promote: running, whatever step it goes to), or
 * -1 when it does not apply there (resume when not paused; anything once terminal). */
int td_rollout_next_state(td_rollout_state_t s, td_rollout_action_t a);

/* Checks a POST /api/v1/rollout body `body` (borrowed JSON object) against `env` and fills *out,
 * every default in place. With `env` NULL (a rollout read back from the state file) the checks
 * against the backends are skipped. Returns 0, or TD_EINVAL with "FIELD: what is wrong"
 * ("steps: must be strictly increasing integers from 1 to 100 ending at 100") in err[n]. */
int td_rollout_parse(const json_t *body, const td_rollout_env_t *env, td_rollout_spec_t *out,
                     char *err, size_t n);

/* The weights at a step of weight `w` (0..100): `to` (index `to` of before[0..num)) gets w, the
 * others share 100 - w in the proportions of before[] (largest remainders; those at 0 stay at 0;
 * when none had weight they share it equally). Writes out[0..num). */
void td_rollout_weights(const int *before, size_t num, size_t to, int w, int *out);

/* A valid expect_status list ("2xx", "2xx,3xx", "200,204"): 1, else 0. */
int td_rollout_expect_valid(const char *list);

/* The rollout object of GET /api/v1/rollout for `spec` before it starts (state "checking",
 * steps_detail pending, pre_check/analysis with their defaults): a new object owned by the
 * caller; the engine fills in the rest. */
json_t *td_rollout_spec_json(const td_rollout_spec_t *spec);

/* ---- the engine (src/rollout.c), main thread */

/* Sets the engine up on `loop` after td_control_init: an active rollout found in the state file
 * continues at the step it reached, its analysis window started afresh (an event says so); a
 * finished one is kept for GET /api/v1/rollout. Returns 0 or a negative TD_E* code. */
int td_rollout_init(uv_loop_t *loop);

/* In an upgrade's new process, before td_rollout_init: rollout `rollout_id` (copied) ran step
 * `step` since `start_ms` (td_now_ms(), CLOCK_MONOTONIC: the same clock in both processes).
 * When the state file's rollout is that one at that step, the step keeps that start (it ends
 * when it would have); its analysis window still starts afresh. */
void td_rollout_resume_step(const char *rollout_id, size_t step, int64_t start_ms);

/* The running rollout's id, step and the step's start (td_now_ms()) for an upgrade; returns 0
 * when no rollout step is running. `id` points into the engine's object (valid until it
 * changes). */
int td_rollout_step_clock(const char **id, size_t *step, int64_t *start_ms);

/* POST /api/v1/rollout with body `body` (borrowed) from `client`: *status gets 201 (the rollout
 * object returned), 400 (bad input; nothing changed), 409 (one is active) or 500, and the reply
 * is the object or {"error": ...} (owned by the caller). */
json_t *td_rollout_start(const json_t *body, const char *client, int *status);

/* POST /api/v1/rollout/ACTION; `body` (borrowed, may be NULL) holds {"full": true} for promote.
 * *status 200 with the object, 409 when no rollout is active or the action does not apply. */
json_t *td_rollout_act(td_rollout_action_t a, const json_t *body, const char *client, int *status);

/* The current or last rollout object (new reference), or NULL when there was none. */
json_t *td_rollout_json(void);

/* GET /api/v1/state's "rollout": {"id", "state", "to", "step", "steps"} or null (new). */
json_t *td_rollout_summary_json(void);

/* The rollout object as the state file keeps it (new reference), or NULL when none. */
json_t *td_rollout_persist_json(void);

/* 1 when a rollout is active; then msg[n] gets "rollout r-... is active (running)". */
int td_rollout_active(char *msg, size_t n);

/* 1 while a rollout is active and the change being applied is not its own: the rollout owns
 * the weights then (a config file or API change to them is reported and does not apply). */
int td_rollout_owns_weights(void);

/* Cluster mode, on the leader: cb(arg, 0, "") once what the engine changed so far (a start, an
 * action) is written to etcd; cb(arg, TD_ECONFLICT, "not the leader") when the write was fenced
 * out (this node no longer drives the rollout); cb(arg, TD_EUNAVAIL, why) when it could not be
 * made (the engine keeps trying). Called at once (from inside the call) when nothing waits to
 * be written. `error` borrowed for the call. Returns 0 or TD_ENOMEM (cb not called). */
typedef void td_rollout_written_fn(void *arg, int result, const char *error);
int td_rollout_when_written(td_rollout_written_fn *cb, void *arg);

/* Stops the timer and any request in flight (the rollout stays in the state file). */
void td_rollout_shutdown(void);

#endif
