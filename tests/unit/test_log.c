/* td_log_escape and the rate limit by reason (td/log.h). */
#include "td/log.h"

#include <stdio.h>
#include <string.h>

#include "t.h"

static void test_escape(void) {
    char out[64];
    const char in[] = "/a\x1b[2J\r\n\x7f\xff\\b";
    size_t n = td_log_escape(out, sizeof(out), in, sizeof(in) - 1, 100);
    T_EQ_STR(out, "/a\\x1b[2J\\x0d\\x0a\\x7f\\xff\\\\b");
    T_EQ_INT(n, strlen(out));
    /* Cut at `max` input bytes, marked. */
    td_log_escape(out, sizeof(out), "/abcdef", 7, 4);
    T_EQ_STR(out, "/abc...");
    /* Cut by the room in out: never half an escape, always NUL-terminated. */
    td_log_escape(out, 10, "\x01\x02\x03", 3, 100);
    T_EQ_STR(out, "\\x01...");
    td_log_escape(out, 3, "abcdef", 6, 100);
    T_EQ_INT(strlen(out), 0);
}

static void test_reasons(void) {
    static td_log_reasons_t t; /* zero-initialised */
    int64_t now = 1000;
    /* The first of each reason is logged; the rest of its second only counted. */
    T_EQ_INT(td_log_reasons_take(&t, "502 backend blue: refused", now), 1);
    T_EQ_INT(td_log_reasons_take(&t, "502 backend blue: refused", now + 10), 0);
    T_EQ_INT(td_log_reasons_take(&t, "502 backend green: refused", now + 10), 1);
    T_EQ_INT(td_log_reasons_take(&t, "502 backend blue: refused", now + 20), 0);
    /* A new second: logged again. */
    T_EQ_INT(td_log_reasons_take(&t, "502 backend blue: refused", now + 1000), 1);
    /* More reasons than entries: every first line still logged. */
    char r[32];
    for (int i = 0; i < TD_LOG_REASONS * 2; i++) {
        snprintf(r, sizeof(r), "400 reason %d", i);
        T_EQ_INT(td_log_reasons_take(&t, r, now + 1100), 1);
    }
    td_log_reasons_flush(&t, now + 5000);
    for (int i = 0; i < TD_LOG_REASONS; i++)
        T_EQ_INT(t.r[i].key, 0);
}

int main(void) {
    test_escape();
    test_reasons();
    return t_done("test_log");
}
