/* Rollout analysis: whether a step's target side is worse than allowed, judged on td's own
 * counters (requests answered, 5xx, latency histogram) — pure functions, no I/O, no clock.
 *
 * A step fails on either of two checks, each needing at least `min_requests` target answers and
 * at least TD_ANALYSIS_MIN_ERRORS target errors before it may fail:
 *  (1) the target's error rate is above the absolute `max_error_rate` (always; the only check at
 *      the 100 % step, where there is no baseline traffic) — and significantly so: a one-sided
 *      exact binomial test, P(X >= e_t) for X ~ Binomial(n_t, max_error_rate), at the per-look
 *      level below. The limit bounds the side's true rate; a side exactly at it shows an observed
 *      rate above it at about half the looks, so "observed above" alone would fail good releases.
 *      A clearly bad side still fails at once (30 errors in 200 against 1 %: p = 8e-26);
 *  (2) with `compare_baseline`, the target's error rate is significantly above `max_ratio` times
 *      the baseline's: an exact conditional binomial test — given the k errors of both sides, the
 *      target's share of them against Binomial(k, r·n_t / (r·n_t + n_b)), r = max_ratio — at the
 *      per-look level `significance / looks` (the level split across the looks of a step, so that
 *      repeated looks do not inflate false alarms).
 * Conditioning on k makes (2) independent of the unknown common rate and exact on the small
 * counts of a canary (1 error in 50 against 0 in 450 is p = 0.14 at r = 1.5, no evidence), where
 * a z-test's normal approximation is not. Bonferroni's split is conservative, more so as the
 * looks are correlated (cumulative counts): simulated good steps (tests/unit/test_analysis.c,
 * 30 looks, equal rates, even at r = 1) fail in about 0.1 % of steps at significance 0.01.
 * p99 is judged only on >= TD_ANALYSIS_MIN_P99_REQUESTS target answers (counted in the latency
 * histogram): against `max_p99_ms` (when > 0) and, with a baseline of as many answers, against
 * max_ratio times its p99 — failing only when the target's p99 bucket is above the baseline's,
 * since both are bucket bounds. The checks are tried in that order; the first that fails gives
 * the reason. */
#ifndef TD_ANALYSIS_H
#define TD_ANALYSIS_H

#include <stddef.h>
#include <stdint.h>

#include "td/registry-t.h" /* TD_LAT_BUCKETS, td_lat_bounds_ms */

#define TD_ANALYSIS_MIN_ERRORS 5
#define TD_ANALYSIS_MIN_P99_REQUESTS 1000

/* What one side (target or baseline) answered during the step's analysis window so far: deltas
 * of the backend's counters since the window opened. errors = its 5xx, td's own 502/503/504 for
 * it included. latency[] as the registry's histogram (td_lat_bounds_ms; the last is +Inf). */
typedef struct td_analysis_side_s {
    uint64_t requests;
    uint64_t errors;
    uint64_t latency[TD_LAT_BUCKETS];
} td_analysis_side_t;

typedef struct td_analysis_config_s {
    double max_error_rate; /* 0..1: absolute limit on the target's error rate */
    int max_p99_ms;        /* 0: no absolute p99 limit */
    uint64_t min_requests; /* target answers needed before any fail verdict */
    int compare_baseline;  /* 1: check (2) against the baseline side */
    double max_ratio;      /* r >= 1: how much worse than the baseline is tolerated (below 1,
                              or NaN, is taken as 1) */
    double significance;   /* overall level per step, e.g. 0.01 */
    int looks;             /* looks planned in the step (>= 1; below, 1): the per-look level
                              is significance / looks */
} td_analysis_config_t;

typedef enum {
    TD_ANALYSIS_WAIT = 0, /* fewer than min_requests target answers yet: no verdict */
    TD_ANALYSIS_PASS = 1, /* enough answers and no check failed (fewer than
                             TD_ANALYSIS_MIN_ERRORS errors cannot fail the error checks) */
    TD_ANALYSIS_FAIL = 2, /* a check failed: reason says which */
} td_analysis_verdict_t;

typedef struct td_analysis_result_s {
    td_analysis_verdict_t verdict;
    double target_error_rate, baseline_error_rate; /* errors / requests; 0 when no requests */
    double p_value;   /* of the baseline test (2); 1 when not computed */
    double threshold; /* the per-look level it was compared with; 0 when not computed */
    int target_p99_ms, baseline_p99_ms; /* -1 when not judged (too few answers) */
    char reason[256]; /* for people: which check and the figures ("error rate 6.0 % of 500 ...") */
} td_analysis_result_t;

/* One look at a step. `baseline` is NULL at the 100 % step (only check (1) and max_p99_ms); it
 * is ignored without compare_baseline, and check (2) is skipped while it has no requests. Errors
 * above a side's requests are counted as its requests. Fills *out (all fields, the figures also
 * on WAIT) and returns its verdict. Pure: no I/O, no clock, no allocation; both sides borrowed. */
td_analysis_verdict_t td_analysis_look(const td_analysis_config_t *cfg,
                                       const td_analysis_side_t *target,
                                       const td_analysis_side_t *baseline,
                                       td_analysis_result_t *out);

/* P(X >= k) for X ~ Binomial(n, p), exact: the first term from lgamma in log space, the rest by
 * the ratio of successive terms, summed from k up when k is past the mean, else as 1 minus the
 * lower tail summed from k - 1 down — both away from the mode, stopping once the terms no longer
 * count. No overflow for n up to 2^32; the relative error, lgamma's rounding, grows as about
 * 1e-15 n ln n: 1e-11 at n = 10^4, 1e-4 near 2^32. 1 when k = 0; 0 when k > n or p <= 0 (or NaN);
 * 1 when p >= 1. */
double td_analysis_binom_sf(uint64_t k, uint64_t n, double p);

/* The p99 (ms) of a histogram as the upper bound of the bucket holding it (the last, +Inf,
 * bucket reports the largest finite bound); -1 when empty. */
int td_analysis_p99_ms(const uint64_t latency[TD_LAT_BUCKETS]);

#endif
