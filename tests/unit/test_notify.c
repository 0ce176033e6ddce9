/* The status line td sends to systemd (STATUS=): exact text, states, and cut to its buffer. */
#include "td/notify.h"

#include "td/config.h"

#include "t.h"

static const char two[] =
    "{\"listeners\": [{\"address\": \"127.0.0.1:8080\"}], \"backends\": ["
    "{\"name\": \"blue\", \"weight\": 90, \"servers\": [{\"address\": \"127.0.0.1:9001\"}]},"
    "{\"name\": \"green\", \"weight\": 10, \"state\": \"maint\","
    " \"servers\": [{\"address\": \"127.0.0.1:9002\"}]}]}";

static void test_describe_names_version_weights_and_states(void) {
    td_config_t *cfg = td_config_parse(two, strlen(two), "t.json", stderr);
    char out[128];
    T_CHECK(cfg != NULL);
    if (!cfg)
        return;
    td_notify_describe(cfg, 7, out, sizeof(out));
    T_EQ_STR(out, "serving; config version 7; blue 90 / green 10 (maint)");
    cfg->backends[1].state = TD_BACKEND_READY;
    td_notify_describe(cfg, 8, out, sizeof(out));
    T_EQ_STR(out, "serving; config version 8; blue 90 / green 10");
    td_config_free(cfg);
}

static void test_describe_is_cut_to_its_buffer(void) {
    td_config_t *cfg = td_config_parse(two, strlen(two), "t.json", stderr);
    char out[32];
    T_CHECK(cfg != NULL);
    if (!cfg)
        return;
    memset(out, 'x', sizeof(out));
    td_notify_describe(cfg, 7, out, sizeof(out));
    T_EQ_STR(out, "serving; config version 7; blue"); /* 31 bytes and the NUL */
    td_notify_describe(cfg, 7, out, 1);
    T_EQ_STR(out, "");
    td_config_free(cfg);
}

int main(void) {
    test_describe_names_version_weights_and_states();
    test_describe_is_cut_to_its_buffer();
    return t_done("test_notify");
}
