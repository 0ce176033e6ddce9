/* The state file's overrides: the key-level diff of two config documents and the merge of
 * overrides on top of a config file (td_state_diff, td_state_merge). */
#include "td/state_file.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "t.h"

static json_t *doc(const char *text) {
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fprintf(stderr, "bad test JSON: %s\n", e.text);
    return j;
}

#define FILE_DOC                                                                                   \
    "{\"listeners\": [{\"address\": \"127.0.0.1:8080\"}], \"workers\": 1,"                         \
    " \"routing\": {\"method\": \"round_robin\"},"                                                 \
    " \"backends\": [{\"name\": \"blue\", \"weight\": 50, \"servers\": [{\"address\":"             \
    " \"127.0.0.1:9001\", \"weight\": 1}, {\"address\": \"127.0.0.1:9003\", \"weight\": 1}]},"     \
    " {\"name\": \"green\", \"weight\": 50, \"servers\": [{\"address\": \"127.0.0.1:9002\","       \
    " \"weight\": 1}]}], \"timeouts\": {\"connect_ms\": 5000}}"

static const char *path_of(const json_t *ov, size_t i) {
    return json_string_value(json_object_get(json_array_get(ov, i), "path"));
}

static json_int_t int_at(const json_t *d, const char *backend, const char *key) {
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(d, "backends"), i, b) {
        if (strcmp(json_string_value(json_object_get(b, "name")), backend) == 0)
            return json_integer_value(json_object_get(b, key));
    }
    return -1;
}

/* A changed weight is one override, with the file's value it replaced. */
static void test_diff_of_one_weight(void) {
    json_t *f = doc(FILE_DOC), *r = doc(FILE_DOC);
    json_object_set_new(json_array_get(json_object_get(r, "backends"), 0), "weight",
                        json_integer(0));
    json_t *ov = td_state_diff(f, r, NULL, "2026-12-01T12:00:00.000Z", "127.0.0.1");
    T_EQ_INT(json_array_size(ov), 1);
    T_EQ_STR(path_of(ov, 0), "backends.blue.weight");
    json_t *o = json_array_get(ov, 0);
    T_EQ_INT(json_integer_value(json_object_get(o, "value")), 0);
    T_EQ_INT(json_integer_value(json_object_get(o, "file_value")), 50);
    T_EQ_STR(json_string_value(json_object_get(o, "by")), "127.0.0.1");
    /* Same value again, later, from another client: the override keeps its time and client. */
    json_t *again = td_state_diff(f, r, ov, "2026-12-02T00:00:00.000Z", "10.0.0.1");
    T_EQ_STR(json_string_value(json_object_get(json_array_get(again, 0), "since")),
             "2026-12-01T12:00:00.000Z");
    T_EQ_STR(json_string_value(json_object_get(json_array_get(again, 0), "by")), "127.0.0.1");
    /* Back to the file's value: no override. */
    json_t *none = td_state_diff(f, f, ov, "t", "c");
    T_EQ_INT(json_array_size(none), 0);
    json_decref(f);
    json_decref(r);
    json_decref(ov);
    json_decref(again);
    json_decref(none);
}

/* Backends are keyed by name and servers by address, whatever their place in the array; other
 * arrays (listeners) are one value. */
static void test_diff_keys_backends_by_name_and_servers_by_address(void) {
    json_t *f = doc(FILE_DOC), *r = doc(FILE_DOC);
    json_t *bs = json_object_get(r, "backends");
    json_t *blue = json_incref(json_array_get(bs, 0));
    json_array_remove(bs, 0);
    json_array_append_new(bs, blue); /* green first now: same config, key by key */
    json_object_set_new(json_array_get(json_object_get(blue, "servers"), 1), "weight",
                        json_integer(5));
    json_object_set_new(r, "listeners", json_pack("[{s:s}]", "address", "127.0.0.1:8081"));
    json_t *ov = td_state_diff(f, r, NULL, "t", "c");
    T_EQ_INT(json_array_size(ov), 2);
    T_EQ_STR(path_of(ov, 0), "listeners");
    T_EQ_STR(path_of(ov, 1), "backends.blue.servers.127.0.0.1:9003.weight");
    json_t *keys = json_object_get(json_array_get(ov, 1), "keys");
    T_EQ_INT(json_array_size(keys), 5);
    T_EQ_STR(json_string_value(json_array_get(keys, 3)), "127.0.0.1:9003");
    json_decref(f);
    json_decref(r);
    json_decref(ov);
}

/* An unrelated edit of the file keeps the override; an edit of its own key replaces it. */
static void test_merge_keeps_or_replaces_by_the_file_value(void) {
    json_t *f = doc(FILE_DOC), *r = doc(FILE_DOC);
    json_object_set_new(json_array_get(json_object_get(r, "backends"), 0), "weight",
                        json_integer(0));
    json_object_set_new(json_array_get(json_object_get(r, "backends"), 1), "weight",
                        json_integer(100));
    json_t *ov = td_state_diff(f, r, NULL, "T", "127.0.0.1");
    T_EQ_INT(json_array_size(ov), 2);

    json_t *edited = doc(FILE_DOC), *kept, *replaced;
    json_object_set_new(json_object_get(edited, "timeouts"), "connect_ms", json_integer(1500));
    json_t *m = td_state_merge(edited, ov, &kept, &replaced);
    T_EQ_INT(json_array_size(kept), 2);
    T_EQ_INT(json_array_size(replaced), 0);
    T_EQ_INT(int_at(m, "blue", "weight"), 0);
    T_EQ_INT(int_at(m, "green", "weight"), 100);
    T_EQ_INT(json_integer_value(json_object_get(json_object_get(m, "timeouts"), "connect_ms")),
             1500);
    /* Order of the file: blue, green. */
    T_EQ_STR(json_string_value(
                 json_object_get(json_array_get(json_object_get(m, "backends"), 0), "name")),
             "blue");
    json_decref(m);
    json_decref(kept);
    json_decref(replaced);

    json_object_set_new(json_array_get(json_object_get(edited, "backends"), 0), "weight",
                        json_integer(30));
    m = td_state_merge(edited, ov, &kept, &replaced);
    T_EQ_INT(json_array_size(kept), 1);
    T_EQ_INT(json_array_size(replaced), 1);
    T_EQ_INT(int_at(m, "blue", "weight"), 30);
    T_EQ_INT(int_at(m, "green", "weight"), 100);
    char msg[512];
    td_state_replaced_message(json_array_get(replaced, 0), msg, sizeof(msg));
    T_EQ_STR(msg, "config file changed backends.blue.weight from 50 to 30: the override 0 set "
                  "through the API at T by 127.0.0.1 is replaced");
    json_decref(m);
    json_decref(kept);
    json_decref(replaced);
    json_decref(edited);
    json_decref(f);
    json_decref(r);
    json_decref(ov);
}

/* A backend added through the API comes after the file's; one removed stays removed. */
static void test_merge_adds_and_removes_backends(void) {
    json_t *f = doc(FILE_DOC), *r = doc(FILE_DOC);
    json_t *bs = json_object_get(r, "backends");
    json_array_remove(bs, 1); /* green gone */
    json_array_insert_new(bs, 0,
                          json_pack("{s:s,s:i,s:[{s:s,s:i}]}", "name", "red", "weight", 10,
                                    "servers", "address", "127.0.0.1:9009", "weight", 1));
    json_t *ov = td_state_diff(f, r, NULL, "t", "c");
    json_t *kept, *replaced;
    json_t *m = td_state_merge(f, ov, &kept, &replaced);
    json_t *mb = json_object_get(m, "backends");
    T_EQ_INT(json_array_size(mb), 2);
    T_EQ_STR(json_string_value(json_object_get(json_array_get(mb, 0), "name")), "blue");
    T_EQ_STR(json_string_value(json_object_get(json_array_get(mb, 1), "name")), "red");
    T_CHECK(json_equal(json_array_get(mb, 1), json_array_get(bs, 0)));
    T_EQ_INT(json_array_size(replaced), 0);
    /* The merge of the diff gives back the running document, but for the backends' order. */
    json_decref(m);
    json_decref(kept);
    json_decref(replaced);
    json_decref(f);
    json_decref(r);
    json_decref(ov);
}

/* An empty object in the file ({} = present with defaults) filled through the API, and back. */
static void test_empty_objects_are_values(void) {
    json_t *f = doc("{\"a\": {}, \"b\": 1}"), *r = doc("{\"a\": {\"x\": 2}, \"b\": 1}");
    json_t *ov = td_state_diff(f, r, NULL, "t", "c"), *kept, *replaced;
    T_EQ_INT(json_array_size(ov), 2);
    json_t *m = td_state_merge(f, ov, &kept, &replaced);
    T_CHECK(json_equal(m, r));
    json_decref(m);
    json_decref(kept);
    json_decref(replaced);
    json_decref(ov);
    ov = td_state_diff(r, f, NULL, "t", "c");
    m = td_state_merge(r, ov, &kept, &replaced);
    T_CHECK(json_equal(m, f));
    json_decref(m);
    json_decref(kept);
    json_decref(replaced);
    json_decref(ov);
    json_decref(f);
    json_decref(r);
}

/* state_file itself is never an override. */
static void test_state_file_key_is_not_an_override(void) {
    json_t *f = doc("{\"b\": 1}"), *r = doc("{\"b\": 1, \"state_file\": \"/x\"}");
    json_t *ov = td_state_diff(f, r, NULL, "t", "c");
    T_EQ_INT(json_array_size(ov), 0);
    json_decref(ov);
    json_decref(f);
    json_decref(r);
}

static void test_paths(void) {
    char out[256];
    td_state_audit_path("/etc/td/td.json.state.json", out, sizeof(out));
    T_EQ_STR(out, "/etc/td/td.json.audit.jsonl");
    td_state_audit_path("/var/lib/td/state.json", out, sizeof(out));
    T_EQ_STR(out, "/var/lib/td/state.audit.jsonl");
    td_state_audit_path("/var/lib/td/state", out, sizeof(out));
    T_EQ_STR(out, "/var/lib/td/state.audit.jsonl");
    td_state_default_path("/etc/td/td.json", out, sizeof(out));
    T_EQ_STR(out, "/etc/td/td.json.state.json");
}

/* The text written is read back as the same overrides. */
static void test_text_round_trip(void) {
    json_t *f = doc(FILE_DOC), *r = doc(FILE_DOC);
    json_object_set_new(json_object_get(r, "routing"), "method", json_string("sticky"));
    json_object_del(r, "timeouts");
    json_t *ov = td_state_diff(f, r, NULL, "t", "c");
    T_EQ_INT(json_array_size(ov), 2);
    T_CHECK(json_is_null(json_object_get(json_array_get(ov, 1), "value")));
    char *text = td_state_text(ov, "/etc/td.json");
    char path[] = "/tmp/td-test-state-XXXXXX";
    int fd = mkstemp(path);
    T_CHECK(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    fputs(text, fp);
    fclose(fp);
    char err[256] = "";
    json_t *back = td_state_load(path, err, sizeof(err));
    T_CHECK(back && json_equal(back, ov));
    remove(path);
    json_t *missing = td_state_load(path, err, sizeof(err));
    T_CHECK(missing && json_array_size(missing) == 0);
    free(text);
    json_decref(back);
    json_decref(missing);
    json_decref(ov);
    json_decref(f);
    json_decref(r);
}

int main(void) {
    test_diff_of_one_weight();
    test_diff_keys_backends_by_name_and_servers_by_address();
    test_merge_keeps_or_replaces_by_the_file_value();
    test_merge_adds_and_removes_backends();
    test_empty_objects_are_values();
    test_state_file_key_is_not_an_override();
    test_paths();
    test_text_round_trip();
    return t_done("test_state_file");
}
