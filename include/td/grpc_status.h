/* gRPC statuses as td sees them (grpc_status.c): gRPC answers travel as HTTP 200 with a
 * grpc-status field in the trailers (or, for a trailers-only answer, in the head). td maps them
 * to the HTTP class its counters, passive checks and rollout analysis understand, and answers a
 * gRPC client with a gRPC status of its own. Sources: gRPC's doc/statuscodes.md and
 * doc/http-grpc-status-mapping.md, Google's google/rpc/code.proto (gRPC code → HTTP status). */
#ifndef TD_GRPC_STATUS_H
#define TD_GRPC_STATUS_H

#include "td/common-t.h"

#define TD_GRPC_UNKNOWN 2
#define TD_GRPC_DEADLINE_EXCEEDED 4
#define TD_GRPC_RESOURCE_EXHAUSTED 8
#define TD_GRPC_INTERNAL 13
#define TD_GRPC_UNAVAILABLE 14

/* 1 when a Content-Type value `v` is application/grpc, alone or with a "+format" or
 * parameters (case-insensitive), else 0. */
int td_grpc_is_content_type(td_str_t v);

/* The grpc-status value `v` (decimal digits, optional surrounding whitespace): the code 0..999,
 * or TD_GRPC_UNKNOWN when it is not a number (a gRPC client reports such a call as UNKNOWN). */
int td_grpc_status_parse(td_str_t v);

/* The HTTP status a gRPC status `code` counts as (code.proto's mapping): 0 OK → 200; the
 * server-side failures UNKNOWN 2, INTERNAL 13, DATA_LOSS 15 → 500, DEADLINE_EXCEEDED 4 → 504,
 * UNIMPLEMENTED 12 → 501, UNAVAILABLE 14 → 503 (5xx class); the caller's problems CANCELLED 1
 * → 499, INVALID_ARGUMENT 3, FAILED_PRECONDITION 9, OUT_OF_RANGE 11 → 400, NOT_FOUND 5 → 404,
 * ALREADY_EXISTS 6, ABORTED 10 → 409, PERMISSION_DENIED 7 → 403, RESOURCE_EXHAUSTED 8 → 429,
 * UNAUTHENTICATED 16 → 401 (4xx class); any other code → 500. */
int td_grpc_status_http(int code);

/* The gRPC status td sends a gRPC client in place of its own HTTP answer `status`: 502, 503 →
 * UNAVAILABLE 14, 504, 408 → DEADLINE_EXCEEDED 4, 413, 414, 431 → RESOURCE_EXHAUSTED 8, 429 →
 * UNAVAILABLE 14, 401 → UNAUTHENTICATED 16, 403 → PERMISSION_DENIED 7, 404 → UNIMPLEMENTED 12,
 * 400 and other 4xx → INTERNAL 13, other 5xx → UNKNOWN 2 (gRPC's HTTP → gRPC mapping, with 504
 * as a deadline). */
int td_grpc_status_of_http(int status);

#endif
