/* Smooth weighted round robin (nginx's ngx_http_upstream_get_peer): each eligible candidate adds
 * its weight to a running score; the highest score wins and gives back the total. Picks are
 * interleaved (weights 5,1,1 give a a b a c a a), exact over every cycle of sum(weights) picks,
 * O(n) per pick, and a weight change applies on the next pick with nothing to rebuild. */
#ifndef TD_BALANCER_H
#define TD_BALANCER_H

#include <stddef.h>
#include <stdint.h>

/* Picks one of n candidates. weight[i] >= 0 (0 = never picked); current[i] is the caller's
 * running score array (zero-initialised, kept between picks); eligible, when not NULL, marks with
 * 0 the candidates to skip (down, already tried). Ties go to the lowest index.
 * Returns the picked index, or -1 when no eligible candidate has a weight above 0. */
int td_balancer_pick(const int *weight, int *current, const uint8_t *eligible, size_t n);

#endif
