/* The /metrics page: td's counters and gauges in the Prometheus text format 0.0.4. */
#ifndef TD_METRICS_H
#define TD_METRICS_H

#include <stddef.h>

/* Writes the page from the routing snapshot in force (per backend: weight, up, requests, in
 * flight, tunnels, responses by class, td's own 502/503/504, traffic share, request durations;
 * per server: weight, up, requests, failures, connections, in flight; client connections and
 * uptime). Returns a malloc'd text (owned by the caller) with its length in *len, or NULL when
 * out of memory. Runs on the main thread. */
char *td_metrics_text(size_t *len);

#endif
