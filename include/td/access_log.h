/* The access log: one JSON line per exchange, written by the worker that served it with one
 * write(2) in O_APPEND mode, so lines of several workers never interleave. SIGUSR1 reopens it
 * (td_access_log_reopen), for logrotate: the main thread opens the file anew and publishes it,
 * each worker moves to it before its next line (or at its next tick) and closes its old one. */
#ifndef TD_ACCESS_LOG_H
#define TD_ACCESS_LOG_H

#include <stdint.h>

/* One worker's access log file. */
typedef struct td_access_log_s {
    int fd;         /* owned (unless it is stderr), or -1 when off */
    char path[256]; /* what fd was opened from ("" off, "stderr") */
    unsigned gen;   /* the reopen (td_access_log_reopen) this worker last adopted */
} td_access_log_t;

/* What one line says. Strings borrowed, NUL-terminated. */
typedef struct td_access_entry_s {
    const char *client;   /* the client's address */
    const char *method;   /* the request method, "" when unknown */
    const char *path;     /* the request-target (at most 512 bytes were kept), "" when unknown */
    const char *protocol; /* "HTTP/1.1", "HTTP/1.0", "HTTP/2" (nginx's $server_protocol), ""
                           * when no request head was read */
    int status;           /* the status sent (499 when the client went away first) */
    int grpc_status;      /* the grpc-status the client got, or -1 (not a gRPC answer) */
    uint64_t bytes;       /* response bytes written to the client */
    int64_t duration_ms;  /* from the request head to the end of the exchange */
    const char *backend;  /* "" when none was chosen */
    const char *server;   /* "" when none was chosen */
} td_access_entry_t;

/* Starts with the log off. */
void td_access_log_init(td_access_log_t *l);

/* Makes the log follow `path` (access_log of the config: "" off, "stderr", or a file opened
 * O_APPEND|O_CREAT, mode 0640): reopens only when the path changed. A file that cannot be
 * opened is reported with td_error and leaves the log off. */
void td_access_log_open(td_access_log_t *l, const char *path);

/* 1 when lines are written. */
static inline int td_access_log_on(const td_access_log_t *l) {
    return l->fd >= 0;
}

/* Opens `path` (the running config's access_log) anew, as after logrotate renamed the file, and
 * publishes it: every worker's log writing to `path` moves to it before its next line (lines
 * written before that stay whole in the old file, none is lost) and closes its old descriptor.
 * Main thread only. Logs "access log reopened" at info level and returns 0 (also when there is
 * nothing to reopen: the log off or on stderr); a file that cannot be opened (its directory
 * gone, no permission) is logged as an error, every worker goes on writing to the old file, and
 * TD_EIO is returned. */
int td_access_log_reopen(const char *path);

/* Moves `l` to the file of the latest td_access_log_reopen if it has not yet (a worker calls it
 * at its tick, so that an idle worker lets go of the renamed file too; td_access_log_write calls
 * it itself). */
void td_access_log_adopt(td_access_log_t *l);

/* Writes {"time","client","method","path","protocol","status","bytes","duration_ms","backend",
 * "server"} and, for a gRPC answer, "grpc_status" (a number)
 * (time: UTC with milliseconds; method and path JSON-escaped, cut to fit 1 KB). */
void td_access_log_write(td_access_log_t *l, const td_access_entry_t *e);

#endif
