#include "td/balancer.h"

int td_balancer_pick(const int *weight, int *current, const uint8_t *eligible, size_t n) {
    int best = -1, total = 0;
    for (size_t i = 0; i < n; i++) {
        if (weight[i] <= 0 || (eligible && !eligible[i]))
            continue;
        current[i] += weight[i];
        total += weight[i];
        if (best < 0 || current[i] > current[best])
            best = (int)i;
    }
    if (best >= 0)
        current[best] -= total;
    return best;
}
