/* Rollout analysis: one look at a step's target (and baseline) counters gives a verdict. */
#include "td/analysis.h"

#include <math.h>
#include <stdio.h>

/* Terms of a binomial tail, relative to its first, below which the sum stops: far below double
 * precision of the sum, and past the mode every further term is smaller still. */
#define TAIL_EPS 1e-18

/* log P(X = k) for X ~ Binomial(n, p), 0 < p < 1, k <= n. lgamma_r, not lgamma: lgamma writes
 * the global signgam, a data race if two threads ever judge at once. */
static double log_pmf(uint64_t k, uint64_t n, double p) {
    int sign;
    double dn = (double)n, dk = (double)k;
    double lchoose =
        lgamma_r(dn + 1.0, &sign) - lgamma_r(dk + 1.0, &sign) - lgamma_r(dn - dk + 1.0, &sign);
    return lchoose + dk * log(p) + (dn - dk) * log1p(-p);
}

double td_analysis_binom_sf(uint64_t k, uint64_t n, double p) {
    if (k == 0)
        return 1.0;
    if (k > n || !(p > 0.0)) /* !(p > 0) also takes a NaN as "no chance of an error" */
        return 0.0;
    if (p >= 1.0)
        return 1.0;
    double q = p / (1.0 - p), s = 1.0, t = 1.0;
    if ((double)k > (double)n * p) {
        /* Upper tail from k up: k is past the mean, so the terms only fall and the sum is short. */
        for (uint64_t i = k; i < n; i++) {
            t *= (double)(n - i) / (double)(i + 1) * q;
            s += t;
            if (t < s * TAIL_EPS)
                break;
        }
        return fmin(1.0, exp(log_pmf(k, n, p) + log(s)));
    }
    /* k at or below the mean: the tail is at least about one half, so 1 - P(X <= k - 1) loses
     * nothing, and that lower tail, summed from k - 1 down, falls from its first term. */
    for (uint64_t j = k - 1; j > 0; j--) {
        t *= (double)j / ((double)(n - j + 1) * q);
        s += t;
        if (t < s * TAIL_EPS)
            break;
    }
    return fmax(0.0, 1.0 - exp(log_pmf(k - 1, n, p) + log(s)));
}

/* The bucket holding the 99th percentile, -1 when the histogram is empty. */
static int p99_bucket(const uint64_t latency[TD_LAT_BUCKETS]) {
    uint64_t total = 0, seen = 0;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        total += latency[i];
    if (!total)
        return -1;
    for (int i = 0; i < TD_LAT_BUCKETS; i++) {
        seen += latency[i];
        if ((double)seen >= 0.99 * (double)total)
            return i;
    }
    return TD_LAT_BUCKETS - 1;
}

/* The bound a bucket reports: its upper bound, the largest finite one for +Inf. */
static int bucket_ms(int b) {
    return b < 0 ? -1 : td_lat_bounds_ms[b < TD_LAT_BUCKETS - 1 ? b : TD_LAT_BUCKETS - 2];
}

int td_analysis_p99_ms(const uint64_t latency[TD_LAT_BUCKETS]) {
    return bucket_ms(p99_bucket(latency));
}

static uint64_t hist_total(const uint64_t latency[TD_LAT_BUCKETS]) {
    uint64_t total = 0;
    for (int i = 0; i < TD_LAT_BUCKETS; i++)
        total += latency[i];
    return total;
}

static double rate(uint64_t errors, uint64_t requests) {
    return requests ? (double)errors / (double)requests : 0.0;
}

td_analysis_verdict_t td_analysis_look(const td_analysis_config_t *cfg,
                                       const td_analysis_side_t *target,
                                       const td_analysis_side_t *baseline,
                                       td_analysis_result_t *out) {
    uint64_t n_t = target->requests, e_t = target->errors;
    /* More errors than answers can only be a caller's mix-up of counters; cap them so the
     * figures stay rates. */
    if (e_t > n_t)
        e_t = n_t;
    int looks = cfg->looks >= 1 ? cfg->looks : 1;
    double r = cfg->max_ratio >= 1.0 ? cfg->max_ratio : 1.0; /* below 1 (or NaN): 1 */
    double level = cfg->significance / looks;
    const td_analysis_side_t *base = cfg->compare_baseline ? baseline : NULL;
    uint64_t n_b = base ? base->requests : 0, e_b = base ? base->errors : 0;
    if (e_b > n_b)
        e_b = n_b;

    out->verdict = TD_ANALYSIS_WAIT;
    out->target_error_rate = rate(e_t, n_t);
    out->baseline_error_rate = rate(e_b, n_b);
    out->p_value = 1.0;
    out->threshold = 0.0;
    int tb = -1, bb = -1; /* p99 buckets, when judged */
    if (hist_total(target->latency) >= TD_ANALYSIS_MIN_P99_REQUESTS)
        tb = p99_bucket(target->latency);
    if (base && hist_total(base->latency) >= TD_ANALYSIS_MIN_P99_REQUESTS)
        bb = p99_bucket(base->latency);
    out->target_p99_ms = bucket_ms(tb);
    out->baseline_p99_ms = bucket_ms(bb);
    double pct_t = 100.0 * out->target_error_rate, pct_b = 100.0 * out->baseline_error_rate;

    if (n_t < cfg->min_requests) {
        snprintf(out->reason, sizeof(out->reason),
                 "waiting: %llu of min_requests %llu target answers", (unsigned long long)n_t,
                 (unsigned long long)cfg->min_requests);
        return out->verdict;
    }
    out->verdict = TD_ANALYSIS_FAIL;

    /* (1) Absolute limit. The limit bounds the true rate; a side exactly at it shows an observed
     * rate above it at about half the looks, so the rate must be above it significantly too. */
    if (e_t >= TD_ANALYSIS_MIN_ERRORS && out->target_error_rate > cfg->max_error_rate) {
        double p1 = td_analysis_binom_sf(e_t, n_t, cfg->max_error_rate);
        if (p1 < level) {
            snprintf(out->reason, sizeof(out->reason),
                     "error rate %.1f %% (%llu of %llu) above max_error_rate %.1f %%: "
                     "p = %.2g < %.2g",
                     pct_t, (unsigned long long)e_t, (unsigned long long)n_t,
                     100.0 * cfg->max_error_rate, p1, level);
            return out->verdict;
        }
    }

    /* (2) Against the baseline: given k errors in all, under H0 (target rate = r x baseline
     * rate) the target's share of them is Binomial(k, r n_t / (r n_t + n_b)) whatever the common
     * rate is — the test needs no estimate of it, and is exact on small counts. */
    if (base && n_b > 0) {
        uint64_t k = e_t + e_b;
        double p0 = r * (double)n_t / (r * (double)n_t + (double)n_b);
        out->p_value = td_analysis_binom_sf(e_t, k, p0);
        out->threshold = level;
        if (e_t >= TD_ANALYSIS_MIN_ERRORS && out->p_value < level) {
            snprintf(out->reason, sizeof(out->reason),
                     "error rate %.1f %% (%llu of %llu) significantly above %g x the baseline's "
                     "%.1f %% (%llu of %llu): p = %.2g < %.2g",
                     pct_t, (unsigned long long)e_t, (unsigned long long)n_t, r, pct_b,
                     (unsigned long long)e_b, (unsigned long long)n_b, out->p_value, level);
            return out->verdict;
        }
    }

    /* (3) p99, on enough answers only: a p99 of a few hundred is its two or three slowest. */
    if (tb >= 0 && cfg->max_p99_ms > 0 && out->target_p99_ms > cfg->max_p99_ms) {
        snprintf(out->reason, sizeof(out->reason),
                 "p99 %d ms (of %llu answers) above max_p99_ms %d", out->target_p99_ms,
                 (unsigned long long)hist_total(target->latency), cfg->max_p99_ms);
        return out->verdict;
    }
    /* Both p99s are bucket bounds: equal buckets are no evidence of a difference. */
    if (tb >= 0 && bb >= 0 && tb > bb && out->target_p99_ms > r * out->baseline_p99_ms) {
        snprintf(out->reason, sizeof(out->reason),
                 "p99 %d ms (of %llu answers) above %g x the baseline's %d ms (of %llu answers)",
                 out->target_p99_ms, (unsigned long long)hist_total(target->latency), r,
                 out->baseline_p99_ms, (unsigned long long)hist_total(base->latency));
        return out->verdict;
    }

    out->verdict = TD_ANALYSIS_PASS;
    snprintf(out->reason, sizeof(out->reason), "error rate %.1f %% (%llu of %llu) within limits",
             pct_t, (unsigned long long)e_t, (unsigned long long)n_t);
    return out->verdict;
}
