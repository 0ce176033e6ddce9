/* gRPC statuses: content-type recognition, grpc-status parsing and the mappings between gRPC
 * codes and HTTP statuses (see grpc_status.h for the sources). */
#include "td/grpc_status.h"

#include <strings.h>

int td_grpc_is_content_type(td_str_t v) {
    static const char ct[] = "application/grpc";
    size_t n = sizeof(ct) - 1;
    if (v.len < n || strncasecmp(v.p, ct, n) != 0)
        return 0;
    return v.len == n || v.p[n] == '+' || v.p[n] == ';' || v.p[n] == ' ' || v.p[n] == '\t';
}

int td_grpc_status_parse(td_str_t v) {
    size_t i = 0, e = v.len;
    while (i < e && (v.p[i] == ' ' || v.p[i] == '\t'))
        i++;
    while (e > i && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'))
        e--;
    if (i == e || e - i > 3)
        return TD_GRPC_UNKNOWN;
    int code = 0;
    for (; i < e; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return TD_GRPC_UNKNOWN;
        code = code * 10 + (v.p[i] - '0');
    }
    return code;
}

int td_grpc_status_http(int code) {
    static const short map[17] = {200, 499, 500, 400, 504, 404, 409, 403, 429,
                                  400, 409, 400, 501, 500, 503, 500, 401};
    return code >= 0 && code <= 16 ? map[code] : 500;
}

int td_grpc_status_of_http(int status) {
    switch (status) {
    case 502:
    case 503:
    case 429:
        return TD_GRPC_UNAVAILABLE;
    case 504:
    case 408:
        return TD_GRPC_DEADLINE_EXCEEDED;
    case 413:
    case 414:
    case 431:
        return TD_GRPC_RESOURCE_EXHAUSTED;
    case 401:
        return 16;
    case 403:
        return 7;
    case 404:
        return 12;
    default:
        return status >= 500 ? TD_GRPC_UNKNOWN : TD_GRPC_INTERNAL;
    }
}
