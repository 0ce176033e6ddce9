/* The cluster's shared document (cluster_doc.c) and the "cluster" config key: what the nodes
 * share, what stays each node's own, a newer schema's unknown keys dropped and reported, and the
 * key's checks with their file:line:col messages. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "t.h"
#include "td/cluster_doc.h"
#include "td/config.h"

static const char node_json[] =
    "{\"listeners\": [{\"address\": \"127.0.0.1:18080\"}], \"workers\": 2,\n"
    " \"admin\": {\"address\": \"127.0.0.1:19090\", \"token\": \"t\"},\n"
    " \"backends\": [{\"name\": \"blue\", \"weight\": 30, \"servers\": [{\"address\": "
    "\"127.0.0.1:9001\"}]},\n"
    "              {\"name\": \"green\", \"weight\": 70, \"servers\": [{\"address\": "
    "\"127.0.0.1:9002\"}]}],\n"
    " \"cluster\": {\"etcd\": [\"http://127.0.0.1:2379\", \"https://[::1]:2379\"], \"prefix\": "
    "\"/td/shop/\", \"node\": \"td-a\"}}\n";

static td_config_t *parse(const char *text, char *errs, size_t n) {
    FILE *f = fmemopen(errs, n, "w");
    td_config_t *c = td_config_parse(text, strlen(text), "t.json", f);
    fclose(f);
    return c;
}

static void test_cluster_key_is_read_and_written_back(void) {
    char errs[2048] = "";
    td_config_t *c = parse(node_json, errs, sizeof(errs));
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_EQ_INT(c->has_cluster, 1);
    T_EQ_INT(c->cluster.num_etcd, 2);
    T_EQ_STR(c->cluster.etcd[1], "https://[::1]:2379");
    T_EQ_STR(c->cluster.prefix, "/td/shop/");
    T_EQ_INT(c->cluster.lease_s, 5);
    char *text = td_config_to_json(c);
    json_t *doc = json_loads(text, 0, NULL);
    json_t *cl = json_object_get(doc, "cluster");
    T_EQ_INT(json_array_size(json_object_get(cl, "etcd")), 2);
    T_EQ_STR(json_string_value(json_object_get(cl, "node")), "td-a");
    T_CHECK(json_object_get(cl, "password") == NULL); /* not set: not written */
    json_decref(doc);
    free(text);
    td_config_free(c);
}

static void test_cluster_key_problems_are_reported_with_their_place(void) {
    char errs[4096] = "";
    const char *bad =
        "{\"listeners\": [{\"address\": \"127.0.0.1:18080\"}],\n"
        " \"backends\": [{\"name\": \"blue\", \"weight\": 1, \"servers\": [{\"address\": "
        "\"127.0.0.1:9001\"}]}],\n"
        " \"cluster\": {\"etcd\": [\"127.0.0.1:2379\"], \"prefix\": \"td\", \"lease_s\": 90}}\n";
    T_CHECK(parse(bad, errs, sizeof(errs)) == NULL);
    T_CHECK(strstr(errs, "t.json:3:23: cluster.etcd[0]: \"127.0.0.1:2379\" is not a valid etcd "
                         "endpoint") != NULL);
    T_CHECK(strstr(errs, "t.json:3:52: cluster.prefix: \"td\" is not a valid prefix") != NULL);
    T_CHECK(strstr(errs, "t.json:3:69: cluster.lease_s: 90 is out of range (2..60)") != NULL);
    T_CHECK(strstr(errs, "t.json:3:2: cluster: cluster mode needs \"admin\"") != NULL);
}

static void test_shared_document_leaves_the_nodes_own_keys_out(void) {
    char errs[2048] = "";
    td_config_t *c = parse(node_json, errs, sizeof(errs));
    json_t *shared = td_cluster_doc_shared(c), *local = td_cluster_doc_local(c);
    T_EQ_INT(json_integer_value(json_object_get(shared, "schema")), TD_CLUSTER_SCHEMA);
    static const char *const own[] = {"listeners", "workers", "admin", "cluster", "state_file"};
    for (size_t i = 0; i < 5; i++)
        T_CHECK(json_object_get(shared, own[i]) == NULL);
    T_CHECK(json_object_get(shared, "backends") != NULL);
    T_CHECK(json_object_get(local, "listeners") != NULL);
    T_CHECK(json_object_get(local, "cluster") != NULL);
    T_CHECK(json_object_get(local, "backends") == NULL);
    /* Put back together, it is the same config. */
    json_t *ignored = NULL;
    char err[512];
    td_config_t *back = td_cluster_doc_config(shared, local, "doc", &ignored, err, sizeof(err));
    T_CHECK(back != NULL);
    if (back) {
        char *a = td_config_to_json(c), *b = td_config_to_json(back);
        T_EQ_STR(a, b);
        free(a);
        free(b);
        T_EQ_INT(json_array_size(ignored), 0);
    }
    json_decref(ignored);
    td_config_free(back);
    json_decref(shared);
    json_decref(local);
    td_config_free(c);
}

static void test_newer_schema_drops_unknown_keys_and_names_them(void) {
    char errs[2048] = "";
    td_config_t *c = parse(node_json, errs, sizeof(errs));
    json_t *local = td_cluster_doc_local(c);
    json_t *doc = json_loads("{\"schema\": 2, \"later\": 1, \"routing\": {\"method\": \"sticky\", "
                             "\"knob\": true}, \"backends\": [{\"name\": \"blue\", \"weight\": 5, "
                             "\"hint\": \"x\", \"servers\": [{\"address\": \"127.0.0.1:9001\", "
                             "\"zone\": \"a\"}]}], \"listeners\": []}",
                             0, NULL);
    json_t *ignored = NULL;
    char err[512] = "";
    td_config_t *cfg = td_cluster_doc_config(doc, local, "doc", &ignored, err, sizeof(err));
    T_CHECK(cfg != NULL);
    if (cfg) {
        T_EQ_INT(cfg->method, TD_METHOD_STICKY);
        T_EQ_INT(cfg->backends[0].weight, 5);
        T_EQ_STR(cfg->listeners[0].address.text, "127.0.0.1:18080"); /* the node's own */
        char *list = json_dumps(ignored, JSON_COMPACT);
        T_EQ_STR(list, "[\"later\",\"routing.knob\",\"backends[0].hint\","
                       "\"backends[0].servers[0].zone\"]");
        free(list);
    }
    td_config_free(cfg);
    json_decref(ignored);
    /* The same keys in a document of td's own schema are problems: it is refused. */
    json_object_set_new(doc, "schema", json_integer(1));
    cfg = td_cluster_doc_config(doc, local, "doc", &ignored, err, sizeof(err));
    T_CHECK(cfg == NULL);
    T_CHECK(ignored == NULL);
    T_CHECK(strstr(err, "later: unknown key") != NULL);
    json_decref(doc);
    json_decref(local);
    td_config_free(c);
}

/* A node's file against the cluster's config: what moves at run time (weights) is no difference,
 * other backends are named on both sides, other top-level keys by name. */
static void test_file_that_differs_from_the_clusters_config_is_named(void) {
    char errs[2048] = "", msg[800];
    td_config_t *file = parse(node_json, errs, sizeof(errs));
    T_CHECK(file != NULL);
    if (!file)
        return;
    /* The same backends at another ratio, and another pid_file and access log (node-local). */
    static const char same[] =
        "{\"listeners\": [{\"address\": \"127.0.0.1:18081\"}], \"pid_file\": \"/tmp/b.pid\",\n"
        " \"access_log\": \"stderr\", \"admin\": {\"address\": \"127.0.0.1:19091\"},\n"
        " \"backends\": [{\"name\": \"blue\", \"weight\": 90, \"servers\": [{\"address\": "
        "\"127.0.0.1:9001\"}]},\n"
        "              {\"name\": \"green\", \"weight\": 10, \"servers\": [{\"address\": "
        "\"127.0.0.1:9002\"}]}]}\n";
    td_config_t *c = parse(same, errs, sizeof(errs));
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(td_cluster_doc_differs(file, c, msg, sizeof(msg)), 0);
        T_EQ_STR(msg, "");
    }
    td_config_free(c);
    static const char other[] =
        "{\"listeners\": [{\"address\": \"127.0.0.1:18081\"}],\n"
        " \"routing\": {\"method\": \"sticky\"}, \"timeouts\": {\"connect_ms\": 100},\n"
        " \"backends\": [{\"name\": \"api-v1\", \"weight\": 90, \"servers\": [{\"address\": "
        "\"127.0.0.1:9001\"}]},\n"
        "              {\"name\": \"api-v2\", \"weight\": 10, \"servers\": [{\"address\": "
        "\"127.0.0.1:9002\"}]}]}\n";
    c = parse(other, errs, sizeof(errs));
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(td_cluster_doc_differs(file, c, msg, sizeof(msg)), 1);
        T_EQ_STR(msg, "the config file's backends (blue, green), routing and timeouts differ from "
                      "the cluster's (api-v1, api-v2)");
    }
    td_config_free(c);
    td_config_free(file);
}

int main(void) {
    test_cluster_key_is_read_and_written_back();
    test_cluster_key_problems_are_reported_with_their_place();
    test_shared_document_leaves_the_nodes_own_keys_out();
    test_newer_schema_drops_unknown_keys_and_names_them();
    test_file_that_differs_from_the_clusters_config_is_named();
    return t_done("test_cluster_doc");
}
