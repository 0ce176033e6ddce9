/* The access log: one JSON line per exchange, written by the worker that served it with one
 * write(2) in O_APPEND mode, so lines of several workers never interleave. */
#ifndef TD_ACCESS_LOG_H
#define TD_ACCESS_LOG_H

#include <stdint.h>

/* One worker's access log file. */
typedef struct td_access_log_s {
    int fd;         /* owned (unless it is stderr), or -1 when off */
    char path[256]; /* what fd was opened from ("" off, "stderr") */
} td_access_log_t;

/* What one line says. Strings borrowed, NUL-terminated. */
typedef struct td_access_entry_s {
    const char *client;  /* the client's address */
    const char *method;  /* the request method, "" when unknown */
    const char *path;    /* the request-target (at most 512 bytes were kept), "" when unknown */
    int status;          /* the status sent (499 when the client went away first) */
    uint64_t bytes;      /* response bytes written to the client */
    int64_t duration_ms; /* from the request head to the end of the exchange */
    const char *backend; /* "" when none was chosen */
    const char *server;  /* "" when none was chosen */
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

/* Writes {"time","client","method","path","status","bytes","duration_ms","backend","server"}
 * (time: UTC with milliseconds; method and path JSON-escaped, cut to fit 1 KB). */
void td_access_log_write(td_access_log_t *l, const td_access_entry_t *e);

#endif
