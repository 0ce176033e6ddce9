/* Types of the transport: one byte stream (plain TCP, or TLS over it) as client connections,
 * upstream connections and health checks see it. Only stream.c looks inside these structs: the
 * layers above embed them and go through the functions of td/stream.h. */
#ifndef TD_STREAM_T_H
#define TD_STREAM_T_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "td/tls.h"

/* Size of the per-loop buffer TLS records are read into before they are decrypted. */
#define TD_STREAM_CIPHER_SIZE (64 * 1024)

/* Codes of the stream's callbacks and functions besides 0: a negative errno value (-ECONNRESET,
 * -EMFILE, ...) for a system error, or one of these. */
enum {
    TD_STREAM_EOF = -4095,          /* the peer closed its side (TCP FIN) */
    TD_STREAM_CLOSE_NOTIFY = -4201, /* the peer closed the TLS session (close_notify alert) */
    TD_STREAM_ETLS = -4202,         /* TLS failed; td_stream_tls_error says why */
};

/* One piece of bytes to write; borrowed. */
typedef struct td_iov_s {
    char *base; /* borrowed */
    size_t len;
} td_iov_t;

typedef struct td_stream_s td_stream_t;
typedef struct td_stream_loop_s td_stream_loop_t;

/* The owner lends the buffer the next bytes are read into: *buf (borrowed by the stream until
 * the read callback returns) and *cap bytes of room; *cap 0 when it has none (the read callback
 * then gets -ENOBUFS). */
typedef void (*td_stream_alloc_cb)(td_stream_t *s, char **buf, size_t *cap);
/* nread > 0: that many bytes are at the start of the lent buffer; < 0: a code above. */
typedef void (*td_stream_read_cb)(td_stream_t *s, long nread);
/* A write that td_stream_write could not finish at once completed (0) or failed. */
typedef void (*td_stream_write_cb)(td_stream_t *s, int status);
/* A connect (and TLS handshake) completed (0) or failed. */
typedef void (*td_stream_connect_cb)(td_stream_t *s, int status);
/* The stream is closed: its owner may free the memory holding it now. */
typedef void (*td_stream_close_cb)(td_stream_t *s);

/* What all streams of one event loop share: the TLS ciphertext buffer and the queue of TLS
 * streams holding decrypted bytes that no socket event will announce. One per loop thread. */
struct td_stream_loop_s {
    uv_loop_t *loop;     /* borrowed */
    uv_idle_t idle;      /* runs the queued streams' reads */
    td_stream_t *queued; /* borrowed: streams waiting for that (queue_next list) */
    char cipher[TD_STREAM_CIPHER_SIZE];
};

/* A stream carried inside another connection (an HTTP/2 stream: td/h2_server.h) instead of a
 * socket: td_stream_read_start/_stop, _write, _write_queued and _close go to these functions of
 * the carrier, with the same contracts. `close` must call s->close_cb later, from the loop, not
 * from within the call. */
typedef struct td_stream_virt_s {
    void (*read_start)(td_stream_t *s); /* the owner wants bytes: alloc_cb/read_cb may follow */
    void (*read_stop)(td_stream_t *s);
    int (*write)(td_stream_t *s, td_iov_t *iov, unsigned n, td_stream_write_cb cb);
    size_t (*write_queued)(const td_stream_t *s);
    void (*close)(td_stream_t *s);
} td_stream_virt_t;

struct td_stream_s {
    uv_tcp_t tcp;                 /* unused by a carried stream */
    const td_stream_virt_t *virt; /* borrowed (static): the carrier's functions, or NULL */
    void *virt_data;              /* borrowed: the carrier's state for this stream */
    td_stream_loop_t *sl;         /* borrowed */
    void *data;                   /* borrowed: the owner, for its callbacks */
    td_tls_conn_t *tls;           /* owned; NULL for plain TCP */
    td_stream_alloc_cb alloc_cb;  /* of the owner, while reading */
    td_stream_read_cb read_cb;
    td_stream_write_cb write_cb;     /* of the pending write */
    td_stream_connect_cb connect_cb; /* while connecting or in the client handshake */
    td_stream_close_cb close_cb;
    td_stream_t *queue_next; /* in sl->queued */
    uint8_t reading;         /* the owner reads */
    uint8_t polling;         /* uv_read_start is on */
    uint8_t queued;
    uint8_t closing;
    uint8_t handshaking; /* client-side TLS handshake in progress */
    uint8_t virt_tls;    /* a carried stream whose carrier speaks TLS */
};

#endif
