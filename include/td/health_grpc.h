/* The gRPC health protocol for the "grpc" health check type: one grpc.health.v1.Health/Check call
 * (gRPC's doc/health-checking.md, health.proto) over an HTTP/2 client session of libnghttp2 that
 * lives in memory. The caller moves the bytes: what the server sent goes in with
 * td_health_grpc_recv, what to send comes out of td_health_grpc_send, and
 * td_health_grpc_verdict tells when the answer is known. No socket, no timer: health.c owns the
 * connection (plain h2c with prior knowledge, or TLS with ALPN h2) and the timeout.
 *
 * Also the pure halves, for tests: the request message's encoding and the response message's
 * decoding (the 5-byte gRPC message prefix and the protobuf fields the protocol defines). */
#ifndef TD_HEALTH_GRPC_H
#define TD_HEALTH_GRPC_H

#include <stddef.h>

/* HealthCheckResponse.ServingStatus (grpc/health/v1/health.proto). */
enum {
    TD_GRPC_HEALTH_UNKNOWN = 0,
    TD_GRPC_HEALTH_SERVING = 1,
    TD_GRPC_HEALTH_NOT_SERVING = 2,
    TD_GRPC_HEALTH_SERVICE_UNKNOWN = 3,
};

/* The longest service name td sends (the config key grpc_service holds at most this). */
#define TD_GRPC_SERVICE_MAX 255

/* Writes the length-prefixed gRPC message of a HealthCheckRequest into out[cap]: the prefix (0 =
 * not compressed, then the message's length as 4 bytes big-endian) and, when `service` (NUL-
 * terminated, borrowed) is not "", field 1 (tag 0x0a, the varint length, the bytes); an empty
 * service is the empty message, which asks about the server as a whole. Returns the bytes
 * written, or 0 when they do not fit in cap. */
size_t td_health_grpc_request(const char *service, unsigned char *out, size_t cap);

/* Reads one length-prefixed gRPC message holding a HealthCheckResponse from buf[len] (the
 * response's DATA bytes, borrowed): *status gets field 1 (0, UNKNOWN, when absent, as proto3
 * says); unknown fields are skipped. Returns 0; TD_EAGAIN when buf holds less than the whole
 * message; TD_EINVAL when it is malformed (a compressed message, which td never asked for; a bad
 * varint or wire type; a field running past the message; bytes after the message). */
int td_health_grpc_response(const unsigned char *buf, size_t len, int *status);

/* The name of a gRPC status code ("OK", "UNIMPLEMENTED", ...; gRPC's doc/statuscodes.md), or
 * "" for a code it does not define. Static. */
const char *td_health_grpc_code_name(int code);

/* The name of a ServingStatus ("SERVING", ...), or "" for another value. Static. */
const char *td_health_grpc_status_name(int status);

/* One Check call. */
typedef struct td_health_grpc_s td_health_grpc_t;

/* Starts a call: an HTTP/2 client session whose first output is the connection preface, its
 * SETTINGS and the request (HEADERS :method POST, :scheme `scheme`, :path
 * /grpc.health.v1.Health/Check, :authority `authority`, content-type application/grpc,
 * te: trailers, grpc-timeout of `timeout_ms`; DATA the request message for `service`, then
 * END_STREAM). The strings are borrowed for the call only. Returns the call (owned by the
 * caller, freed with td_health_grpc_free) or NULL when out of memory. */
td_health_grpc_t *td_health_grpc_new(const char *scheme, const char *authority, const char *service,
                                     int timeout_ms);

/* Takes bytes the server sent (borrowed for the call). Returns 0, or TD_EBADMSG when the
 * session cannot go on (not HTTP/2, a protocol error): the verdict then says why. */
int td_health_grpc_recv(td_health_grpc_t *g, const char *buf, size_t len);

/* The next bytes to send: *out points at them (borrowed from the session, valid until the next
 * call on `g`). Returns their count, 0 when there is nothing to send, or TD_ENOMEM. Call it until
 * it returns 0, after td_health_grpc_new and after each td_health_grpc_recv. */
long td_health_grpc_send(td_health_grpc_t *g, const char **out);

/* The call's outcome: TD_EAGAIN while it is under way; 1 when the server answered :status 200,
 * grpc-status 0 (in the trailers, or in the headers of a trailers-only answer) and a
 * HealthCheckResponse saying SERVING; 0 for anything else. Once it is not TD_EAGAIN, why[n] says
 * what was seen ("grpc status SERVING", "grpc status NOT_SERVING", "grpc-status 12
 * (UNIMPLEMENTED): ...", "no HTTP/2: ...", "HTTP status 404", ...). `eof` says that the
 * connection ended: an answer still missing is then a failure ("connection closed before the
 * answer"). */
int td_health_grpc_verdict(const td_health_grpc_t *g, int eof, char *why, size_t n);

void td_health_grpc_free(td_health_grpc_t *g);

#endif
