/* libFuzzer target for td's HTTP/2 server glue (src/h2_server.c): a nghttp2 server session with
 * td's callbacks and no socket (td_h2_fuzz_new). Each request stream that completes is answered
 * by a canned HTTP/1.1 response put through td's response framing, so the header callbacks, the
 * request building (pseudo-headers, cookie crumbs, limits), the response translation and the
 * data source all run.
 *
 * Input: one control byte, then frames. The client preface is put in front of them (the fuzzer
 * need not find it); the control byte says where to split the frames into two feeds. The target
 * aborts on a crash or sanitizer report only: a session that fails (a protocol error) just ends
 * the input. */
#include "td/h2_server.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    size_t split = size > 1 ? (data[0] * (size - 1)) / 255 : 0;
    data++;
    size--;
    td_h2_conn_t *h = td_h2_fuzz_new();
    if (!h)
        return 0;
    if (td_h2_fuzz_feed(h, (const uint8_t *)TD_H2_PREFACE, TD_H2_PREFACE_LEN) == 0 &&
        td_h2_fuzz_feed(h, data, split) == 0)
        (void)td_h2_fuzz_feed(h, data + split, size - split);
    td_h2_fuzz_free(h);
    return 0;
}
