/* A growable byte buffer for the HTTP/2 glue (h2_server.c, h2_client.c): the bytes [off, len) of
 * p are waiting to be taken; taking moves off, adding appends (and moves the waiting bytes to
 * the front, or grows the buffer, when it must). */
#ifndef TD_BYTES_H
#define TD_BYTES_H

#include <stdlib.h>
#include <string.h>

#include "td/common-t.h"

typedef struct td_bytes_s {
    char *p; /* owned; NULL while empty */
    size_t len, off, cap;
} td_bytes_t;

/* Appends n bytes of p (p may be NULL when n is 0). Returns 0, or TD_ENOMEM with b unchanged. */
static inline int td_bytes_add(td_bytes_t *b, const void *p, size_t n) {
    if (!n)
        return 0;
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n > b->cap) {
        if (b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 1024;
            while (cap < b->len + n)
                cap *= 2;
            char *np = realloc(b->p, cap);
            if (!np)
                return TD_ENOMEM;
            b->p = np;
            b->cap = cap;
        }
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

/* The bytes waiting. */
static inline size_t td_bytes_left(const td_bytes_t *b) {
    return b->len - b->off;
}

/* Frees the storage; b is empty again. */
static inline void td_bytes_free(td_bytes_t *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

#endif
