/* libFuzzer target for the gRPC health check (src/health_grpc.c): arbitrary bytes as a
 * HealthCheckResponse message (td_health_grpc_response), and as what a server sends on a Check
 * call's HTTP/2 session, in two feeds, each followed by what the session sends back. Whatever
 * comes in, the call ends with a verdict and a reason once the connection is said to be closed.
 *
 * Input: one control byte (where to split the rest into two feeds), then the server's bytes. The
 * seeds are real answers of a grpcio server (SERVING, NOT_SERVING, NOT_FOUND). */
#include "td/health_grpc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"

static void drain(td_health_grpc_t *g) {
    const char *out;
    for (int i = 0; i < 64 && td_health_grpc_send(g, &out) > 0; i++)
        ;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int st = -1;
    int r = td_health_grpc_response(data, size, &st);
    if (r != 0 && r != TD_EAGAIN && r != TD_EINVAL)
        abort();
    if (size < 1)
        return 0;
    size_t split = size > 1 ? (data[0] * (size - 1)) / 255 : 0;
    data++;
    size--;
    td_health_grpc_t *g = td_health_grpc_new("http", "127.0.0.1:50051", "shop.Cart", 1000);
    if (!g)
        return 0;
    drain(g);
    if (td_health_grpc_recv(g, (const char *)data, split) == 0) {
        drain(g);
        if (td_health_grpc_recv(g, (const char *)data + split, size - split) == 0)
            drain(g);
    }
    char why[160];
    int v = td_health_grpc_verdict(g, 1, why, sizeof(why));
    if ((v != 0 && v != 1) || !why[0] || !memchr(why, '\0', sizeof(why)))
        abort();
    td_health_grpc_free(g);
    return 0;
}
