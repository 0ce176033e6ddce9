/* Types of the admin HTTP server (admin_http.c): the request it hands to its handler and the
 * reply the handler gives back. */
#ifndef TD_ADMIN_HTTP_T_H
#define TD_ADMIN_HTTP_T_H

#include <stddef.h>

#include "td/common-t.h"
#include "td/http1-t.h"

/* One whole request (head and body), valid during the handler call only. */
typedef struct td_admin_request_s {
    const td_http1_request_t *head; /* borrowed: parsed in place in the connection's buffer */
    td_str_t body;                  /* borrowed: Content-Length bytes (0..1 MiB), in that buffer */
    const char *client;             /* borrowed: the peer's IP address, for the audit log */
    int authorized;                 /* the bearer token matched, or no token is configured */
    int read_only; /* it was admin.read_token: GET and HEAD only (authorized is set too) */
} td_admin_request_t;

/* An answer; the server adds Content-Length, Connection, Cache-Control: no-store and
 * X-Content-Type-Options: nosniff, and WWW-Authenticate: Bearer on a 401. */
typedef struct td_admin_reply_s {
    int status;        /* 100..599 */
    const char *type;  /* borrowed (static): Content-Type */
    char *body;        /* owned (malloc'd): the body; the server frees it */
    size_t len;        /* bytes of body */
    const char *allow; /* borrowed (static): the Allow header of a 405, or NULL */
    const char *csp;   /* borrowed: a page's Content-Security-Policy, or NULL; when set the reply
                          also gets X-Frame-Options: DENY and Referrer-Policy: no-referrer */
} td_admin_reply_t;

/* Answers a request. Runs on the admin loop; must not keep `req` or anything it points into. */
typedef td_admin_reply_t td_admin_handler_fn(const td_admin_request_t *req);

#endif
