/* tdctl: argument checks: the usage error message, and the values of operands and options
 * (weights, backend names, durations, rates, --max-p99-ms, --steps). Nothing here calls td. */

#include "tdctl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DURATION_MAX_S 86400.0 /* --step-time, --ramp and --timeout: at most a day */
#define P99_MAX_MS 3600000L    /* --max-p99-ms: at most an hour */

const char *const option_names[NOPT] = {"wait",           "timeout",    "steps",     "interval",
                                        "max-error-rate", "max-p99-ms", "step-time", "ramp",
                                        "min-requests",   "on-failure", "pre-check", "drain",
                                        "detach",         "full",       "wait-all"};

/* Prints "tdctl: <message>" and the hint to --help; returns the usage exit status. */
int usage_error(const char *fmt, ...) {
    va_list ap;

    fputs("tdctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'tdctl --help' for more information.\n", stderr);
    return RC_USAGE;
}

/* A weight: decimal digits only (no sign, no blanks), 0..100. */
bool parse_weight(const char *s, size_t len, int *weight) {
    int w = 0;
    size_t i;

    if (len == 0)
        return false;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        w = w * 10 + (s[i] - '0');
        if (w > WEIGHT_MAX)
            return false;
    }
    *weight = w;
    return true;
}

/* A backend name as td's config allows it: [A-Za-z0-9_-]+. */
bool valid_name(const char *s, size_t len) {
    return len > 0 && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                "0123456789_-") >= len;
}

/* A decimal number: digits, optionally a point and more digits (no sign, exponent or blank).
 * Advances *s past it. */
static bool parse_decimal(const char **s, double *v) {
    const char *p = *s;
    double x = 0, scale = 1;

    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++)
        x = x * 10 + (*p - '0');
    if (*p == '.') {
        if (*++p < '0' || *p > '9')
            return false;
        for (; *p >= '0' && *p <= '9'; p++)
            x += (*p - '0') * (scale /= 10);
    }
    *s = p;
    *v = x;
    return true;
}

/* A DURATION: "500ms", "30s", "2m", "1h", or a bare number of seconds; at most a day. */
bool parse_duration(const char *s, double *seconds) {
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1}, {"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}};
    double v;
    size_t i;

    if (!parse_decimal(&s, &v))
        return false;
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s, units[i].unit) == 0) {
            *seconds = v * units[i].scale;
            return *seconds <= DURATION_MAX_S;
        }
    }
    return false;
}

/* A RATE: "1%", "0.5%" (0 to 100%), or a fraction from 0 to 1 ("0.01"). */
bool parse_rate(const char *s, double *rate) {
    double v;

    if (!parse_decimal(&s, &v))
        return false;
    if (strcmp(s, "%") == 0) {
        *rate = v / 100;
        return v <= 100;
    }
    *rate = v;
    return *s == '\0' && v <= 1;
}

/* --max-p99-ms: an integer from 1 to P99_MAX_MS. */
bool parse_p99(const char *s, long *ms) {
    long v = 0;

    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > P99_MAX_MS)
            return false;
    }
    *ms = v;
    return v >= 1;
}

/* --steps: integers 1..100, comma-separated, strictly increasing, ending at 100 (so at most 100
 * of them). Returns NULL, or what is wrong. */
const char *parse_steps(const char *s, int steps[WEIGHT_MAX], int *n) {
    int w;

    for (*n = 0;; s += strcspn(s, ",") + 1) {
        if (!parse_weight(s, strcspn(s, ","), &w) || w < 1)
            return "each step is an integer from 1 to 100";
        if (*n > 0 && w <= steps[*n - 1])
            return "the steps must be strictly increasing";
        steps[(*n)++] = w;
        if (s[strcspn(s, ",")] == '\0')
            break;
    }
    return steps[*n - 1] == WEIGHT_MAX ? NULL : "the last step must be 100 (all the traffic)";
}
