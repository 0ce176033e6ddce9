/* The demo backend: a small HTTP/1.1 application server used by `td demo` (blue and green
 * pages), by `td backend`, and by the end-to-end tests as a real upstream. */
#ifndef TD_DEMO_H
#define TD_DEMO_H

#include <stddef.h>
#include <uv.h>

/* Starts serving HTTP on `address` ("IP:port", or "[IPv6]:port") in `loop`, as the backend
 * called `name` (e.g. "blue"; 1 to 255 visible ASCII characters). Every response carries
 * "X-TD-Demo-Backend: NAME" and "X-TD-Demo-Server: ADDRESS".
 * Routes (any method unless said; the query string is ignored):
 *   /               HTML page naming the colour and the server that answered, e.g. "blue -
 *                   served by 127.0.0.1:9001" (blue, green, or else grey background)
 *   /status/N       empty response with status N (200..599); no Content-Length on 204 and 304
 *   /delay/MS       200 after MS milliseconds (at most 3600000), body {"delay_ms": MS}
 *   /bytes/N        N bytes of body with Content-Length, streamed with backpressure
 *   /chunked/N      N bytes of body in chunked coding, streamed (close-delimited for HTTP/1.0)
 *                   Both bodies are "abcdefghijklmnopqrstuvwxyz" repeated and cut at N bytes;
 *                   N is at most 2^40.
 *   /echo           reads the whole request body (Content-Length or chunked, streamed, not kept)
 *                   and answers JSON {"received": BYTES, "sum": SUM} (SUM = byte sum mod 2^32)
 *   /headers        answers the request head as received, as text/plain
 *   /close          answers 200 with "Connection: close" and closes
 *   /reset          closes the connection without answering (a TCP reset, once earlier
 *                   pipelined answers are written)
 *   /ws             WebSocket echo (RFC 6455): text and binary frames are echoed frame by frame
 *                   (so fragmentation is kept), ping gets pong, close is answered with the same
 *                   status code and the connection shut down. Frames over 16 MiB get close 1009,
 *                   protocol errors close 1002. Text is not checked for valid UTF-8.
 * Other paths get 404, a bad number in a path 400. The request body is always read (counted and
 * dropped) before the answer; "Expect: 100-continue" gets a 100 response first. Keep-alive and
 * pipelining are supported (answers in request order). A malformed request gets 400 (414, 431 or
 * 505 where the parser says so) with "Connection: close" and the connection is closed.
 * Memory per connection is bounded (a 64 KiB read buffer plus at most ~320 KiB of queued writes)
 * whatever the body sizes.
 * Returns 0, TD_EINVAL (bad name or address), TD_EIO (cannot listen: "cannot listen on ADDRESS:
 * reason") or TD_ENOMEM, with a message for people written to err[errlen]. The server lives as
 * long as the process; SO_REUSEADDR is set on the listening socket. */
int td_demo_listen(uv_loop_t *loop, const char *name, const char *address, char *err,
                   size_t errlen);

#endif
