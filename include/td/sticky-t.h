/* Types of the sticky-session cookies: the key that signs them. */
#ifndef TD_STICKY_T_H
#define TD_STICKY_T_H

#include <stddef.h>

/* Longest key used: a longer configured secret is cut to this many bytes. */
#define TD_STICKY_KEY_MAX 64

/* Keys a routing snapshot accepts at once (cluster mode's ring: the newest signs, the previous
 * one still checks, so a rotation does not log anyone out). */
#define TD_STICKY_RING 2

/* The HMAC key of the cookies. Each routing snapshot carries its own copy, so workers read a key
 * that never changes under them while a reload builds the next one. */
typedef struct td_sticky_key_s {
    unsigned char bytes[TD_STICKY_KEY_MAX];
    size_t len; /* bytes used, 1..TD_STICKY_KEY_MAX once set */
} td_sticky_key_t;

#endif
