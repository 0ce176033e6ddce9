/* Upgrades: the binary an upgrade starts, and the runtime state handed over (health verdicts,
 * rise/fall runs, passive ejections, the sticky key) written and read back. */
#include "td/upgrade.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "t.h"
#include "td/config.h"
#include "td/health.h"
#include "td/registry.h"
#include "td/snapshot.h"
#include "td/sticky.h"

/* An absolute argv[0] is kept as it is (not resolved through links: a package replaces the file
 * at that path); a relative one is made absolute; a bare name is the running file. */
static void the_binary_is_the_path_td_was_started_as(void) {
    td_upgrade_set_exe("/usr/sbin/td");
    T_EQ_STR(td_upgrade_exe(), "/usr/sbin/td");
    char cwd[2048], want[4200];
    T_CHECK(getcwd(cwd, sizeof(cwd)) != NULL);
    snprintf(want, sizeof(want), "%s/build/td", cwd);
    td_upgrade_set_exe("build/td");
    T_EQ_STR(td_upgrade_exe(), want);
    char self[4096] = "";
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[n > 0 ? n : 0] = 0;
    td_upgrade_set_exe("td");
    T_EQ_STR(td_upgrade_exe(), self);
}

static const json_t *server_of(const json_t *state, const char *address) {
    size_t i;
    const json_t *s;
    json_array_foreach(json_object_get(state, "servers"), i, s) {
        if (strcmp(json_string_value(json_object_get(s, "address")), address) == 0)
            return s;
    }
    return NULL;
}

/* A checked server's verdict and runs, and an ejection, go out and come back by backend name
 * and address; the sticky key goes out as the process key. */
static void the_state_goes_out_and_comes_back(void) {
    td_config_t *cfg = td_config_demo();
    T_CHECK(cfg != NULL);
    char err[256];
    td_snapshot_t *snap = td_snapshot_build(cfg, 1, err, sizeof(err)); /* owns cfg */
    T_CHECK(snap != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    T_EQ_INT(td_health_sync(&loop, snap), 0);
    td_server_stats_t *blue = td_registry_server("blue", "127.0.0.1:9001");
    td_server_stats_t *green = td_registry_server("green", "127.0.0.1:9002");
    int checked = td_health_set_runs(blue, 0, 3);
    atomic_store(&blue->health_up, 0);
    atomic_store(&green->down_until_ms, 123456789);
    atomic_store(&green->ejections, 2);
    atomic_store(&green->ejected, 1);

    json_t *state = td_upgrade_state_json(snap);
    T_CHECK(state != NULL);
    td_sticky_key_t key;
    td_sticky_process_key(&key);
    T_EQ_INT(strlen(json_string_value(json_object_get(state, "sticky_key"))), 2 * key.len);
    const json_t *b = server_of(state, "127.0.0.1:9001");
    T_CHECK(b != NULL);
    T_EQ_STR(json_string_value(json_object_get(b, "backend")), "blue");
    T_CHECK(json_is_false(json_object_get(b, "health_up")));
    if (checked) {
        T_CHECK(json_is_true(json_object_get(b, "checked")));
        T_EQ_INT(json_integer_value(json_object_get(b, "fail_run")), 3);
    }
    const json_t *g = server_of(state, "127.0.0.1:9002");
    T_EQ_INT(json_integer_value(json_object_get(g, "down_until_ms")), 123456789);
    T_EQ_INT(json_integer_value(json_object_get(g, "ejections")), 2);

    /* Changed meanwhile, then the state applied: as it was handed over. */
    atomic_store(&blue->health_up, 1);
    atomic_store(&green->down_until_ms, 0);
    atomic_store(&green->ejections, 0);
    atomic_store(&green->ejected, 0);
    T_EQ_INT(td_upgrade_state_apply(state), 0);
    T_EQ_INT(atomic_load(&blue->health_up), checked ? 0 : 1);
    T_EQ_INT(atomic_load(&green->down_until_ms), 123456789);
    T_EQ_INT(atomic_load(&green->ejections), 2);
    T_EQ_INT(atomic_load(&green->ejected), 1);
    /* The process key was made already here: a key handed over now is refused. */
    T_EQ_INT(td_sticky_adopt_process_key(&key), TD_EINVAL);

    json_t *bad = json_array();
    T_EQ_INT(td_upgrade_state_apply(bad), TD_EINVAL);
    json_decref(bad);
    json_decref(state);
    td_health_stop();
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    td_snapshot_release(snap);
}

int main(void) {
    the_binary_is_the_path_td_was_started_as();
    the_state_goes_out_and_comes_back();
    return t_done("test_upgrade");
}
