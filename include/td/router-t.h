/* Types the router decides with: the registry's live counters and the routing snapshots. */
#ifndef TD_ROUTER_T_H
#define TD_ROUTER_T_H

#include "td/registry-t.h"
#include "td/snapshot-t.h"

#endif
