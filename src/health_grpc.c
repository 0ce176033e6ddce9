/* The gRPC health protocol over an in-memory HTTP/2 client session: see td/health_grpc.h. */
#include "td/health_grpc.h"

#include <nghttp2/nghttp2.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"

#define CHECK_PATH "/grpc.health.v1.Health/Check"
/* A HealthCheckResponse is a few bytes: more than this is not an answer to Check. */
#define MSG_CAP 4096
#define PREFIX_LEN 5

/* ---- the messages ---- */

static size_t put_varint(unsigned char *out, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (unsigned char)v;
    return n;
}

size_t td_health_grpc_request(const char *service, unsigned char *out, size_t cap) {
    size_t slen = strlen(service);
    unsigned char vlen[10];
    size_t nv = put_varint(vlen, slen);
    size_t body = slen ? 1 + nv + slen : 0;
    if (body > UINT32_MAX || cap < PREFIX_LEN + body)
        return 0;
    out[0] = 0; /* not compressed */
    out[1] = (unsigned char)(body >> 24);
    out[2] = (unsigned char)(body >> 16);
    out[3] = (unsigned char)(body >> 8);
    out[4] = (unsigned char)body;
    if (slen) {
        out[PREFIX_LEN] = 0x0a; /* field 1, wire type 2 (length-delimited) */
        memcpy(out + PREFIX_LEN + 1, vlen, nv);
        memcpy(out + PREFIX_LEN + 1 + nv, service, slen);
    }
    return PREFIX_LEN + body;
}

/* A varint at *p (before end): its value in *v, *p moved past it. At most 10 bytes (64 bits).
 * Returns 0 or TD_EINVAL. */
static int get_varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end)
            return TD_EINVAL;
        unsigned char b = *(*p)++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return TD_EINVAL;
}

int td_health_grpc_response(const unsigned char *buf, size_t len, int *status) {
    if (len < PREFIX_LEN)
        return TD_EAGAIN;
    if (buf[0] != 0)
        return TD_EINVAL; /* compressed (1), or not a flag at all */
    size_t mlen = (size_t)buf[1] << 24 | (size_t)buf[2] << 16 | (size_t)buf[3] << 8 | buf[4];
    if (len - PREFIX_LEN < mlen)
        return TD_EAGAIN;
    if (len - PREFIX_LEN > mlen)
        return TD_EINVAL; /* a unary answer is one message */
    const unsigned char *p = buf + PREFIX_LEN, *end = p + mlen;
    int st = TD_GRPC_HEALTH_UNKNOWN;
    while (p < end) {
        uint64_t key, v;
        if (get_varint(&p, end, &key) < 0 || key >> 3 == 0)
            return TD_EINVAL;
        switch (key & 7) {
        case 0: /* varint */
            if (get_varint(&p, end, &v) < 0)
                return TD_EINVAL;
            if (key >> 3 == 1) /* status: the last one wins, as protobuf merges */
                st = v > 0x7fffffff ? 0x7fffffff : (int)v;
            break;
        case 1: /* 64-bit */
            if (key >> 3 == 1 || end - p < 8)
                return TD_EINVAL;
            p += 8;
            break;
        case 2: /* length-delimited */
            if (key >> 3 == 1 || get_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return TD_EINVAL;
            p += v;
            break;
        case 5: /* 32-bit */
            if (key >> 3 == 1 || end - p < 4)
                return TD_EINVAL;
            p += 4;
            break;
        default: /* groups (3, 4) have no place in this message; 6 and 7 do not exist */
            return TD_EINVAL;
        }
    }
    *status = st;
    return 0;
}

const char *td_health_grpc_code_name(int code) {
    static const char *const names[] = {"OK",
                                        "CANCELLED",
                                        "UNKNOWN",
                                        "INVALID_ARGUMENT",
                                        "DEADLINE_EXCEEDED",
                                        "NOT_FOUND",
                                        "ALREADY_EXISTS",
                                        "PERMISSION_DENIED",
                                        "RESOURCE_EXHAUSTED",
                                        "FAILED_PRECONDITION",
                                        "ABORTED",
                                        "OUT_OF_RANGE",
                                        "UNIMPLEMENTED",
                                        "INTERNAL",
                                        "UNAVAILABLE",
                                        "DATA_LOSS",
                                        "UNAUTHENTICATED"};
    return code >= 0 && code < (int)(sizeof(names) / sizeof(names[0])) ? names[code] : "";
}

const char *td_health_grpc_status_name(int status) {
    static const char *const names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    return status >= 0 && status < 4 ? names[status] : "";
}

/* ---- the call ---- */

struct td_health_grpc_s {
    nghttp2_session *ng; /* owned */
    int32_t id;          /* the Check stream */
    unsigned char req[PREFIX_LEN + 1 + 10 + TD_GRPC_SERVICE_MAX];
    size_t req_len, req_off;
    size_t received;       /* bytes the server sent so far */
    int not_h2;            /* the server answered in HTTP/1.x */
    int http_status;       /* the final :status; 0 before the response */
    int grpc_ct;           /* content-type is application/grpc[+...]; */
    int grpc_status;       /* -1 absent, -2 not a number */
    char grpc_message[96]; /* percent-decoded, printable ASCII only */
    unsigned char msg[MSG_CAP];
    size_t msg_len;
    int msg_over;        /* more than MSG_CAP bytes of DATA */
    int closed;          /* the stream closed */
    uint32_t close_code; /* its RST_STREAM code, or NO_ERROR */
    int goaway;          /* a GOAWAY came; goaway_code its code */
    uint32_t goaway_code;
    char error[96]; /* a session failure; "" when none */
};

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *ud) {
    (void)ng, (void)id, (void)src;
    td_health_grpc_t *g = ud;
    size_t n = g->req_len - g->req_off;
    if (n > length)
        n = length;
    memcpy(buf, g->req + g->req_off, n);
    g->req_off += n;
    if (g->req_off == g->req_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int is_name(const uint8_t *name, size_t len, const char *want) {
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

static int hex(int c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* grpc-message is percent-encoded (gRPC's PROTOCOL-HTTP2.md): decoded for the log, keeping
 * printable ASCII only, at most what fits. */
static void set_message(td_health_grpc_t *g, const uint8_t *v, size_t len) {
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < sizeof(g->grpc_message); i++) {
        int c = v[i];
        if (c == '%' && i + 2 < len && hex(v[i + 1]) >= 0 && hex(v[i + 2]) >= 0) {
            c = hex(v[i + 1]) * 16 + hex(v[i + 2]);
            i += 2;
        }
        g->grpc_message[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    g->grpc_message[o] = '\0';
}

static int header_cb(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    (void)ng, (void)flags;
    td_health_grpc_t *g = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->hd.stream_id != g->id)
        return 0;
    if (is_name(name, namelen, ":status")) {
        int s = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            s = s * 10 + (value[i] - '0'); /* nghttp2 checked it: three digits */
        g->http_status = s;
    } else if (is_name(name, namelen, "content-type")) {
        g->grpc_ct = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                     (valuelen == 16 || value[16] == '+' || value[16] == ';');
    } else if (is_name(name, namelen, "grpc-status")) {
        int s = valuelen && valuelen <= 4 ? 0 : -2;
        for (size_t i = 0; i < valuelen && s >= 0; i++)
            s = value[i] >= '0' && value[i] <= '9' ? s * 10 + (value[i] - '0') : -2;
        g->grpc_status = s;
    } else if (is_name(name, namelen, "grpc-message")) {
        set_message(g, value, valuelen);
    }
    return 0;
}

static int data_chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
    (void)ng, (void)flags;
    td_health_grpc_t *g = ud;
    if (id != g->id)
        return 0;
    if (len > MSG_CAP - g->msg_len) {
        g->msg_over = 1;
        return 0;
    }
    memcpy(g->msg + g->msg_len, data, len);
    g->msg_len += len;
    return 0;
}

static int frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *f, void *ud) {
    (void)ng;
    td_health_grpc_t *g = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        g->goaway = 1;
        g->goaway_code = f->goaway.error_code;
    }
    return 0;
}

static int stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
    (void)ng;
    td_health_grpc_t *g = ud;
    if (id == g->id) {
        g->closed = 1;
        g->close_code = code;
    }
    return 0;
}

td_health_grpc_t *td_health_grpc_new(const char *scheme, const char *authority, const char *service,
                                     int timeout_ms) {
    td_health_grpc_t *g = calloc(1, sizeof(*g));
    nghttp2_session_callbacks *cbs = NULL;
    if (!g)
        return NULL;
    g->grpc_status = -1;
    g->req_len = td_health_grpc_request(service, g->req, sizeof(g->req));
    if (!g->req_len || nghttp2_session_callbacks_new(&cbs) != 0)
        goto err;
    nghttp2_session_callbacks_set_on_header_callback(cbs, header_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, data_chunk_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, frame_recv_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, stream_close_cb);
    int r = nghttp2_session_client_new(&g->ng, cbs, g);
    nghttp2_session_callbacks_del(cbs);
    if (r != 0)
        goto err;
    /* No server push; nothing else to ask. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (nghttp2_submit_settings(g->ng, NGHTTP2_FLAG_NONE, iv, 1) != 0)
        goto err;
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%dm", timeout_ms); /* at most 8 digits: MAX_MS */
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nv[] = {
        NV(":method", "POST"),
        NV(":scheme", scheme),
        NV(":path", CHECK_PATH),
        NV(":authority", authority),
        NV("content-type", "application/grpc"),
        NV("te", "trailers"),
        NV("grpc-timeout", timeout),
        NV("user-agent", "td-health-check"),
    };
#undef NV
    nghttp2_data_provider dp = {.source.ptr = g, .read_callback = data_read_cb};
    g->id = nghttp2_submit_request(g->ng, NULL, nv, sizeof(nv) / sizeof(nv[0]), &dp, g);
    if (g->id < 0)
        goto err;
    return g;
err:
    td_health_grpc_free(g);
    return NULL;
}

int td_health_grpc_recv(td_health_grpc_t *g, const char *buf, size_t len) {
    if (g->error[0] || g->not_h2)
        return TD_EBADMSG;
    /* A server without HTTP/2 answers the preface in HTTP/1.x ("HTTP/1.1 400 ..."), where an
     * HTTP/2 server's first bytes are a SETTINGS frame's length (0x00 ...). */
    if (!g->received && len && buf[0] == 'H') {
        size_t n = len < 5 ? len : 5;
        if (memcmp(buf, "HTTP/", n) == 0) {
            g->not_h2 = 1;
            return TD_EBADMSG;
        }
    }
    g->received += len;
    ssize_t r = nghttp2_session_mem_recv(g->ng, (const uint8_t *)buf, len);
    if (r < 0) {
        snprintf(g->error, sizeof(g->error), "HTTP/2: %s", nghttp2_strerror((int)r));
        return TD_EBADMSG;
    }
    if (g->closed) /* the answer is in: say goodbye (GOAWAY) with the next send */
        nghttp2_session_terminate_session(g->ng, NGHTTP2_NO_ERROR);
    else if (!nghttp2_session_want_read(g->ng))
        snprintf(g->error, sizeof(g->error), "HTTP/2 session ended (%s)",
                 g->goaway ? nghttp2_http2_strerror(g->goaway_code) : "protocol error");
    return 0;
}

long td_health_grpc_send(td_health_grpc_t *g, const char **out) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(g->ng, &data);
    if (n < 0)
        return TD_ENOMEM; /* the only error mem_send reports on a healthy session */
    *out = (const char *)data;
    return (long)n;
}

int td_health_grpc_verdict(const td_health_grpc_t *g, int eof, char *why, size_t n) {
    if (g->not_h2) {
        snprintf(why, n, "no HTTP/2: the server answered in HTTP/1.x");
        return 0;
    }
    if (g->error[0]) {
        snprintf(why, n, "%s", g->error);
        return 0;
    }
    if (!g->closed) {
        if (!eof)
            return TD_EAGAIN;
        snprintf(why, n, "%s",
                 g->received ? "connection closed before the answer"
                             : "connection closed before any HTTP/2 frame (no HTTP/2?)");
        return 0;
    }
    if (g->http_status == 0) {
        snprintf(why, n, "stream closed without a response (%s)",
                 nghttp2_http2_strerror(g->close_code));
        return 0;
    }
    if (g->http_status != 200) {
        snprintf(why, n, "HTTP status %d", g->http_status);
        return 0;
    }
    if (g->grpc_status == -1) {
        snprintf(why, n, "no grpc-status in the answer%s",
                 g->close_code ? " (stream reset)"
                 : g->grpc_ct  ? ""
                               : " (not a gRPC server?)");
        return 0;
    }
    if (g->grpc_status == -2) {
        snprintf(why, n, "grpc-status is not a number");
        return 0;
    }
    if (g->grpc_status != 0) {
        const char *name = td_health_grpc_code_name(g->grpc_status);
        snprintf(why, n, "grpc-status %d (%s)%s%s", g->grpc_status, name[0] ? name : "?",
                 g->grpc_message[0] ? ": " : "", g->grpc_message);
        return 0;
    }
    if (g->msg_over) {
        snprintf(why, n, "answer larger than %d bytes: not a HealthCheckResponse", MSG_CAP);
        return 0;
    }
    int st = 0;
    int r = td_health_grpc_response(g->msg, g->msg_len, &st);
    if (r == TD_EAGAIN) {
        snprintf(why, n, "%s",
                 g->msg_len ? "incomplete HealthCheckResponse"
                            : "no message in "
                              "the answer");
        return 0;
    }
    if (r < 0) {
        snprintf(why, n, "malformed HealthCheckResponse");
        return 0;
    }
    const char *name = td_health_grpc_status_name(st);
    if (name[0])
        snprintf(why, n, "grpc status %s", name);
    else
        snprintf(why, n, "grpc status %d", st);
    return st == TD_GRPC_HEALTH_SERVING;
}

void td_health_grpc_free(td_health_grpc_t *g) {
    if (!g)
        return;
    nghttp2_session_del(g->ng);
    free(g);
}
