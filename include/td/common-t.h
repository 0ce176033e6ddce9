/* Types shared by every td module: length-carrying strings and error codes. */
#ifndef TD_COMMON_T_H
#define TD_COMMON_T_H

#include <stddef.h>
#include <stdint.h>

/* A length-carrying string. Usually borrowed: it points into a buffer owned by someone else (a
 * connection's read buffer, a config document) and is never assumed to be NUL-terminated. */
typedef struct td_str_s {
    const char *p; /* borrowed */
    size_t len;
} td_str_t;

#define TD_STR(lit) ((td_str_t){(lit), sizeof(lit) - 1})

/* Error codes: functions return 0 (or a count) on success, or one of these negative values. */
enum {
    TD_OK = 0,
    TD_EAGAIN = -1,       /* incomplete input: feed more bytes and call again */
    TD_EBADMSG = -2,      /* malformed HTTP message (400) */
    TD_EURITOOLONG = -3,  /* request line longer than the limit (414) */
    TD_EHDRTOOLARGE = -4, /* header block larger than the limit, or too many headers (431) */
    TD_EVERSION = -5,     /* HTTP version other than 1.0 or 1.1 (505) */
    TD_ENOMEM = -6,
    TD_EINVAL = -7, /* invalid argument or value */
    TD_EIO = -8,    /* system call failed; errno has the detail */
    TD_ENOTFOUND = -9,
    TD_EUNAVAIL = -10,  /* no backend available (503) */
    TD_ECONFLICT = -11, /* the state changed underneath (409): e.g. a config file edited on disk */
    TD_EFULL = -12,     /* every server up that could take it is at its max_conns: wait (queue) */
};

#endif
