/* Types the router decides with: the registry's live counters and the routing snapshots. */
#ifndef TD_ROUTER_T_H
#define TD_ROUTER_T_H

#include "td/registry-t.h"
#include "td/snapshot-t.h"

/* Slow start: picks balance on weights scaled by TD_RAMP_SCALE, so a ramping weight-1 server
 * can stand at a fraction of its weight; a ramp is measured in per mille of the full weight,
 * from TD_RAMP_FLOOR (5 %: the share it starts with) to TD_RAMP_FULL. */
#define TD_RAMP_SCALE 100
#define TD_RAMP_FULL 1000
#define TD_RAMP_FLOOR 50

#endif
