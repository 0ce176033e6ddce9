/* The demo backend: a small HTTP/1.1 application server used by `td demo` (blue and green
 * pages), by `td backend`, and by the end-to-end tests as a real upstream. */
#ifndef TD_DEMO_H
#define TD_DEMO_H

#include <stddef.h>
#include <uv.h>

/* Starts serving HTTP on `address` ("IP:port") in `loop`, as the backend called `name`
 * (e.g. "blue"). Every response carries "X-TD-Demo-Backend: NAME" and "X-TD-Demo-Server: ADDRESS".
 * Routes (any method unless said):
 *   /               HTML page naming the colour and the server that answered
 *   /status/N       empty response with status N (200..599)
 *   /delay/MS       200 after MS milliseconds
 *   /bytes/N        N bytes of body with Content-Length, streamed with backpressure
 *   /chunked/N      N bytes of body in chunked coding, streamed
 *   /echo           reads the whole request body (Content-Length or chunked, streamed, not kept)
 *                   and answers JSON {"received": BYTES, "sum": SUM} (SUM = byte sum mod 2^32)
 *   /headers        answers the request head as received, as text/plain
 *   /close          answers 200 with "Connection: close" and closes
 *   /reset          closes the connection without answering
 *   /ws             WebSocket echo (RFC 6455): text and binary frames are echoed, close answered
 * Keep-alive and pipelining are supported. Returns 0, or a negative TD_E* code with a message for
 * people written to err[errlen]. The server lives as long as the loop runs. */
int td_demo_listen(uv_loop_t *loop, const char *name, const char *address, char *err, size_t errlen);

#endif
