/* HTTP message rewriting that needs no connection: pure functions over heads and status codes.
 * Shared by the proxy, the admin API and the demo backend. */
#ifndef TD_REWRITE_H
#define TD_REWRITE_H

/* The reason phrase for a status code (RFC 9110 §15), e.g. 503 → "Service Unavailable"; a code
 * with no registered phrase that td uses gets "Status". The string is static: never freed. */
const char *td_http_reason(int status);

#endif
