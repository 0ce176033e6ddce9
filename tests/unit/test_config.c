/* Config loading, checking and writing: exact values, exact messages (with line:col), round
 * trip, atomic write. */
#include "td/config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t.h"

/* The example of the contract (docs: DESIGN.md, "Config file"). */
static const char example[] =
    "{\n"
    "  \"listeners\": [{ \"address\": \"0.0.0.0:8080\" }],\n"
    "  \"workers\": \"auto\",\n"
    "  \"admin\": { \"address\": \"127.0.0.1:9090\", \"token\": \"change-me\" },\n"
    "  \"routing\": {\n"
    "    \"method\": \"round_robin\",\n"
    "    \"cookie\": { \"name\": \"TDSTICKY\", \"max_age_s\": 3600 }\n"
    "  },\n"
    "  \"backends\": [\n"
    "    { \"name\": \"blue\",  \"weight\": 50, \"servers\": [{ \"address\": \"10.0.0.11:8080\", "
    "\"weight\": 1 }] },\n"
    "    { \"name\": \"green\", \"weight\": 50, \"servers\": [{ \"address\": \"10.0.0.12:8080\", "
    "\"weight\": 1 }] }\n"
    "  ],\n"
    "  \"health_check\": {\n"
    "    \"type\": \"http\", \"path\": \"/\", \"expect_status\": \"2xx,3xx\",\n"
    "    \"interval_ms\": 3000, \"timeout_ms\": 1000, \"fall\": 3, \"rise\": 3,\n"
    "    \"port\": 0, \"default_down\": false\n"
    "  },\n"
    "  \"timeouts\": { \"connect_ms\": 5000, \"client_header_ms\": 10000, "
    "\"upstream_response_ms\": 60000,\n"
    "                \"keepalive_idle_ms\": 75000, \"drain_ms\": 30000 }\n"
    "}\n";

/* The smallest valid document, to which tests add one mistake at a time. */
#define MIN_LISTENERS "\"listeners\": [{\"address\": \"127.0.0.1:8080\"}]"
#define MIN_BACKENDS                                                                               \
    "\"backends\": [{\"name\": \"a\", \"weight\": 1, \"servers\": [{\"address\": "                 \
    "\"127.0.0.1:1\"}]}]"

/* Parses `json` as "t.json" and returns what was written to errs (malloc'd), NULL when it parsed
 * cleanly; *ok tells whether a config came back. */
static char *errors_of(const char *json) {
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    td_config_t *c = td_config_parse(json, strlen(json), "t.json", f);

    fclose(f);
    T_CHECK((c == NULL) == (len != 0)); /* a config, or messages: never both, never neither */
    td_config_free(c);
    if (len == 0) {
        free(out);
        return NULL;
    }
    return out;
}

#define T_ERRORS(json, expected)                                                                   \
    do {                                                                                           \
        char *e_ = errors_of(json);                                                                \
        T_EQ_STR(e_, expected);                                                                    \
        free(e_);                                                                                  \
    } while (0)

static int addr_is(const td_addr_t *a, int family, const char *ip, int port) {
    char buf[INET6_ADDRSTRLEN];

    if (a->sa.ss_family != family)
        return 0;
    if (family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a->sa;
        inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
        return ntohs(s->sin_port) == port && strcmp(buf, ip) == 0 && a->salen == sizeof *s;
    }
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->sa;
    inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof buf);
    return ntohs(s6->sin6_port) == port && strcmp(buf, ip) == 0 && a->salen == sizeof *s6;
}

/* Field-by-field equality, addresses included. */
static int config_equal(const td_config_t *a, const td_config_t *b) {
    if (a->num_listeners != b->num_listeners || a->num_backends != b->num_backends ||
        a->workers != b->workers || a->workers_auto != b->workers_auto ||
        a->has_admin != b->has_admin || a->method != b->method ||
        a->cookie_max_age_s != b->cookie_max_age_s || a->has_health != b->has_health ||
        strcmp(a->admin_token, b->admin_token) || strcmp(a->cookie_name, b->cookie_name) ||
        strcmp(a->cookie_secret, b->cookie_secret) ||
        memcmp(&a->timeouts, &b->timeouts, sizeof a->timeouts))
        return 0;
    if (a->has_admin && memcmp(&a->admin_address, &b->admin_address, sizeof a->admin_address))
        return 0;
    if (strcmp(a->health.type, b->health.type) || strcmp(a->health.path, b->health.path) ||
        strcmp(a->health.expect_status, b->health.expect_status) ||
        a->health.interval_ms != b->health.interval_ms ||
        a->health.timeout_ms != b->health.timeout_ms || a->health.fall != b->health.fall ||
        a->health.rise != b->health.rise || a->health.port != b->health.port ||
        a->health.default_down != b->health.default_down)
        return 0;
    for (size_t i = 0; i < a->num_listeners; i++)
        if (memcmp(&a->listeners[i], &b->listeners[i], sizeof a->listeners[i]))
            return 0;
    for (size_t i = 0; i < a->num_backends; i++) {
        const td_config_backend_t *x = &a->backends[i], *y = &b->backends[i];
        if (strcmp(x->name, y->name) || x->weight != y->weight || x->num_servers != y->num_servers)
            return 0;
        for (size_t j = 0; j < x->num_servers; j++)
            if (x->servers[j].weight != y->servers[j].weight ||
                memcmp(&x->servers[j].address, &y->servers[j].address, sizeof(td_addr_t)))
                return 0;
    }
    return 1;
}

static void test_example(void) {
    td_config_t *c = td_config_parse(example, strlen(example), "ex.json", stderr);

    T_CHECK(c != NULL);
    if (!c)
        return;
    T_EQ_INT(c->num_listeners, 1);
    T_CHECK(addr_is(&c->listeners[0].address, AF_INET, "0.0.0.0", 8080));
    T_EQ_STR(c->listeners[0].address.text, "0.0.0.0:8080");
    T_EQ_INT(c->workers_auto, 1);
    T_CHECK(c->workers >= 1 && c->workers <= 64);
    T_EQ_INT(c->has_admin, 1);
    T_CHECK(addr_is(&c->admin_address, AF_INET, "127.0.0.1", 9090));
    T_EQ_STR(c->admin_token, "change-me");
    T_EQ_INT(c->method, TD_METHOD_ROUND_ROBIN);
    T_EQ_STR(c->cookie_name, "TDSTICKY");
    T_EQ_INT(c->cookie_max_age_s, 3600);
    T_EQ_STR(c->cookie_secret, "");
    T_EQ_INT(c->num_backends, 2);
    T_EQ_STR(c->backends[0].name, "blue");
    T_EQ_INT(c->backends[0].weight, 50);
    T_EQ_INT(c->backends[0].num_servers, 1);
    T_CHECK(addr_is(&c->backends[0].servers[0].address, AF_INET, "10.0.0.11", 8080));
    T_EQ_INT(c->backends[0].servers[0].weight, 1);
    T_EQ_STR(c->backends[1].name, "green");
    T_EQ_INT(c->backends[1].weight, 50);
    T_CHECK(addr_is(&c->backends[1].servers[0].address, AF_INET, "10.0.0.12", 8080));
    T_EQ_INT(c->has_health, 1);
    T_EQ_STR(c->health.type, "http");
    T_EQ_STR(c->health.path, "/");
    T_EQ_STR(c->health.expect_status, "2xx,3xx");
    T_EQ_INT(c->health.interval_ms, 3000);
    T_EQ_INT(c->health.timeout_ms, 1000);
    T_EQ_INT(c->health.fall, 3);
    T_EQ_INT(c->health.rise, 3);
    T_EQ_INT(c->health.port, 0);
    T_EQ_INT(c->health.default_down, 0);
    T_EQ_INT(c->timeouts.connect_ms, 5000);
    T_EQ_INT(c->timeouts.client_header_ms, 10000);
    T_EQ_INT(c->timeouts.upstream_response_ms, 60000);
    T_EQ_INT(c->timeouts.keepalive_idle_ms, 75000);
    T_EQ_INT(c->timeouts.drain_ms, 30000);
    td_config_free(c);
}

static void test_defaults_and_values(void) {
    static const char doc[] = "{" MIN_LISTENERS ", " MIN_BACKENDS "}";
    static const char full[] =
        "{\"listeners\": [{\"address\": \"[::1]:8443\"}, {\"address\": \"127.0.0.1:80\"}],"
        " \"workers\": 4,"
        " \"routing\": {\"method\": \"sticky\","
        "  \"cookie\": {\"name\": \"ab_test\", \"max_age_s\": 60, \"secret\": \"k3y\"}},"
        " \"backends\": [{\"name\": \"blue-1_x\", \"weight\": 0, \"servers\": ["
        "   {\"address\": \"10.0.0.1:80\", \"weight\": 0}, {\"address\": \"10.0.0.2:80\"}]},"
        "  {\"name\": \"B\", \"weight\": 100, \"servers\": [{\"address\": \"[2001:db8::1]:80\"}]}],"
        " \"health_check\": {\"type\": \"tcp\", \"expect_status\": \"200,204,3XX\", \"port\": "
        "65535,"
        "  \"default_down\": true},"
        " \"timeouts\": {\"drain_ms\": 0, \"connect_ms\": 1}}";
    td_config_t *c = td_config_parse(doc, strlen(doc), "t.json", stderr);

    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(c->has_admin, 0);
        T_EQ_STR(c->admin_token, "");
        T_EQ_INT(c->has_health, 0);
        T_EQ_INT(c->workers_auto, 1);
        T_EQ_INT(c->method, TD_METHOD_ROUND_ROBIN);
        T_EQ_STR(c->cookie_name, "TDSTICKY");
        T_EQ_INT(c->cookie_max_age_s, 3600);
        T_EQ_INT(c->backends[0].servers[0].weight, 1);
        /* Health defaults are filled in even without checks, so readers see sane values. */
        T_EQ_STR(c->health.type, "http");
        T_EQ_STR(c->health.expect_status, "2xx,3xx");
        T_EQ_INT(c->health.interval_ms, 3000);
        T_EQ_INT(c->timeouts.keepalive_idle_ms, 75000);
        T_EQ_INT(c->timeouts.drain_ms, 30000);
    }
    td_config_free(c);

    c = td_config_parse(full, strlen(full), "t.json", stderr);
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_EQ_INT(c->num_listeners, 2);
    T_CHECK(addr_is(&c->listeners[0].address, AF_INET6, "::1", 8443));
    T_EQ_INT(c->workers, 4);
    T_EQ_INT(c->workers_auto, 0);
    T_EQ_INT(c->method, TD_METHOD_STICKY);
    T_EQ_STR(c->cookie_name, "ab_test");
    T_EQ_INT(c->cookie_max_age_s, 60);
    T_EQ_STR(c->cookie_secret, "k3y");
    T_EQ_STR(c->backends[0].name, "blue-1_x");
    T_EQ_INT(c->backends[0].weight, 0);
    T_EQ_INT(c->backends[0].num_servers, 2);
    T_EQ_INT(c->backends[0].servers[0].weight, 0);
    T_EQ_INT(c->backends[0].servers[1].weight, 1);
    T_EQ_INT(c->backends[1].weight, 100);
    T_CHECK(addr_is(&c->backends[1].servers[0].address, AF_INET6, "2001:db8::1", 80));
    T_EQ_INT(c->has_health, 1);
    T_EQ_STR(c->health.type, "tcp");
    T_EQ_STR(c->health.path, "/");
    T_EQ_STR(c->health.expect_status, "200,204,3XX");
    T_EQ_INT(c->health.port, 65535);
    T_EQ_INT(c->health.default_down, 1);
    T_EQ_INT(c->health.rise, 3);
    T_EQ_INT(c->timeouts.drain_ms, 0);
    T_EQ_INT(c->timeouts.connect_ms, 1);
    T_EQ_INT(c->timeouts.upstream_response_ms, 60000);
    td_config_free(c);
}

static void test_syntax_errors(void) {
    /* jansson's positions: where it stopped reading. */
    T_ERRORS("{\n"
             "  \"listeners\": [],\n"
             "}\n",
             "t.json:3:1: expected a key in double quotes or '}' near '}'\n");
    T_ERRORS("{\n"
             "  \"workers\": 1,\n"
             "  \"workers\": 2\n"
             "}\n",
             "t.json:3:11: duplicate object key near '\"workers\"'\n");
    T_ERRORS("", "t.json:1:1: expected a JSON object ('{') near end of file\n");
    /* A raw newline inside a string: the message stays on one line. */
    T_ERRORS("{\"a\": \"x\ny\"}", "t.json:1:8: unexpected newline near '\"x'\n");
    T_ERRORS("[1, 2]", "t.json:1:1: expected an object, got an array\n");
    /* jansson's own wording (its flags, its terse forms) is put in plain words. */
    T_ERRORS("{\"a\": \"x\\u0000\"}",
             "t.json:1:15: a string may not contain \\u0000 (NUL) near '\"x\\u0000\"'\n");
    T_ERRORS("{\"a\": tru}", "t.json:1:9: invalid value (strings take double quotes; true, false, "
                             "null are lower case) near 'tru'\n");
    T_ERRORS("{} x", "t.json:1:4: unexpected text after the end of the document near 'x'\n");
    T_ERRORS("{\"a\":", "t.json:1:5: the document ends too early\n");
}

static void test_key_errors(void) {
    /* An unknown key close to a valid one: a suggestion, at the key's opening quote. */
    T_ERRORS("{\n"
             "  " MIN_LISTENERS ",\n"
             "  " MIN_BACKENDS ",\n"
             "  \"routing\": {\n"
             "      \"methd\": \"sticky\"\n"
             "  }\n"
             "}\n",
             "t.json:5:7: routing.methd: unknown key, did you mean \"method\"?\n");
    /* Far from every valid key: the list of them. */
    T_ERRORS("{\n"
             "  " MIN_LISTENERS ",\n"
             "  " MIN_BACKENDS ",\n"
             "  \"timeouts\": {\"drain_ms\": 10,\n"
             "               \"grace\": 5}\n"
             "}\n",
             "t.json:5:16: timeouts.grace: unknown key (valid keys: connect_ms, client_header_ms, "
             "upstream_response_ms, keepalive_idle_ms, drain_ms, client_send_ms, queue_ms, "
             "stop_grace_ms)\n");
    /* Case and transposition count as close. */
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"Timeouts\": {}}",
             "t.json:1:131: Timeouts: unknown key, did you mean \"timeouts\"?\n");
    /* A key written with escapes is found in the text all the same. */
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ",\n"
             "\"health_check\": {\"p\\u006frt\": 70000}}",
             "t.json:2:31: health_check.port: 70000 is out of range (0..65535)\n");
    /* Missing required keys: at the enclosing object. */
    T_ERRORS("\n\n  {" MIN_LISTENERS "}", "t.json:3:3: missing required key \"backends\"\n");
    T_ERRORS("{" MIN_LISTENERS ",\n"
             " \"backends\": [{\"name\": \"a\", \"weight\": 1, \"servers\": [{}]}]}",
             "t.json:2:54: backends[0].servers[0]: missing required key \"address\"\n");
    /* A key with a control character is escaped in the message. */
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"a\\nb\": 1}",
             "t.json:1:131: a\\x0ab: unknown key (valid keys: listeners, workers, admin, routing, "
             "backends, health_check, timeouts, passive, access_log, pid_file, "
             "request_buffering, state_file, cluster, resolvers)\n");
}

static void test_value_errors(void) {
    /* Columns count characters, not bytes (as jansson's do): "é" is one column. */
    T_ERRORS("{" MIN_LISTENERS ",\n"
             " \"backends\": [{\"name\": \"bl\xc3\xa9\", \"weight\": 1,\n"
             "               \"servers\": [{\"address\": \"127.0.0.1:1\"}]}],\n"
             " \"workers\": 0}",
             "t.json:2:24: backends[0].name: \"bl\xc3\xa9\" is not a valid name "
             "(1 to 63 of A-Z a-z 0-9 _ -)\n"
             "t.json:4:13: workers: 0 is out of range (1..64)\n");
    T_ERRORS(
        "{" MIN_LISTENERS ", " MIN_BACKENDS ", \"workers\": \"all\"}",
        "t.json:1:142: workers: expected \"auto\" or an integer 1..64, got a string \"all\"\n");
    T_ERRORS("{\"listeners\": [{\"address\": \"localhost:8080\"}], " MIN_BACKENDS "}",
             "t.json:1:28: listeners[0].address: \"localhost:8080\" is not a valid address "
             "(IP:port or [IPv6]:port, port 1..65535)\n");
    T_ERRORS("{\"listeners\": \"0.0.0.0:80\", " MIN_BACKENDS "}",
             "t.json:1:15: listeners: expected an array of listeners, got a string "
             "\"0.0.0.0:80\"\n");
    T_ERRORS("{\"listeners\": [], " MIN_BACKENDS "}",
             "t.json:1:15: listeners: at least one listener is required\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"routing\": {\"method\": \"fail_over\"}}",
             "t.json:1:153: routing.method: \"fail_over\" is not one of round_robin, sticky, "
             "failover; did you mean \"failover\"?\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS
             ", \"health_check\": {\"expect_status\": \"2xx;3xx\"}}",
             "t.json:1:165: health_check.expect_status: \"2xx;3xx\" is not a valid status list "
             "(classes like 2xx and codes 100..599, comma-separated)\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"health_check\": {\"default_down\": 1}}",
             "t.json:1:164: health_check.default_down: expected true or false, got 1\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"admin\": []}",
             "t.json:1:140: admin: expected an object, got an array\n");
    /* A rejected token is not echoed into logs. */
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS
             ", \"admin\": {\"address\": \"127.0.0.1:9\", \"token\": \"s3cr3t pass\"}}",
             "t.json:1:176: admin.token: the value is not a valid token (printable ASCII without "
             "spaces)\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ", \"admin\": {\"address\": \"127.0.0.1:8080\"}}",
             "t.json:1:152: admin.address: \"127.0.0.1:8080\" is already used by listeners[0]\n");
}

/* Several mistakes in one multi-line document: all reported, in document order. */
static void test_many_errors(void) {
    static const char doc[] =
        "{\n"                                                     /* 1 */
        "  \"listeners\": [{ \"address\": \"0.0.0.0:8080\" }],\n" /* 2 */
        "  \"backends\": [\n"                                     /* 3 */
        "    { \"name\": \"blue\", \"weight\": 150,\n"            /* 4 */
        "      \"servers\": [{ \"address\": \"10.0.0.11:8080\" }] },\n"
        "    { \"name\": \"blue\", \"weight\": 50,\n" /* 6 */
        "      \"servers\": [{ \"address\": \"10.0.0.12:8080\", \"wieght\": 1 "
        "}] }\n"
        "  ]\n"
        "}\n";

    T_ERRORS(doc, "t.json:4:33: backends[0].weight: 150 is out of range (0..100)\n"
                  "t.json:6:15: backends[1].name: \"blue\" is already the name of backends[0]\n"
                  "t.json:7:50: backends[1].servers[0].wieght: unknown key, did you mean "
                  "\"weight\"?\n");

    /* Problems found in a different order than they appear are still listed in document
     * order: the missing key (at the root object) first. */
    T_ERRORS("{\n"
             "  \"workers\": -2,\n"
             "  \"listeners\": [{\"address\": \"1.2.3.4:0\"}]\n"
             "}",
             "t.json:1:1: missing required key \"backends\"\n"
             "t.json:2:14: workers: -2 is out of range (1..64)\n"
             "t.json:3:29: listeners[0].address: \"1.2.3.4:0\" is not a valid address "
             "(IP:port or [IPv6]:port, port 1..65535)\n");
}

/* A pathological document stops at 100 problems and says so. */
static void test_error_cap(void) {
    size_t n = 60, len = 0, outlen = 0;
    char *doc = malloc(4096), *out = NULL;
    FILE *f;
    int lines = 0;

    /* 60 listeners with two problems each, one listener a line. */
    f = open_memstream(&out, &outlen);
    len = (size_t)sprintf(doc, "{\"listeners\": [");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(doc + len, "%s\n{\"x\": 1}", i ? "," : "");
    len += (size_t)sprintf(doc + len, "], " MIN_BACKENDS "}");
    T_CHECK(td_config_parse(doc, len, "t.json", f) == NULL);
    fclose(f);
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    T_EQ_INT(lines, 101);
    T_CHECK(strstr(out, "t.json:2:1: listeners[0]: missing required key \"address\"\n"
                        "t.json:2:2: listeners[0].x: unknown key (valid keys: address, tls, "
                        "redirect_https, https_port, http2, h2c, h2_max_concurrent_streams, "
                        "max_connection_age_ms)\n") == out);
    T_CHECK(strstr(out, "t.json:51:2: listeners[49].x: unknown key") != NULL);
    T_CHECK(strstr(out, "t.json:51:2: 20 more problems not shown\n") != NULL);
    free(out);

    /* More listeners than allowed: one problem, at the array. */
    len = (size_t)sprintf(doc, "{\"listeners\": [");
    for (size_t i = 0; i < 65; i++)
        len += (size_t)sprintf(doc + len, "%s{}", i ? "," : "");
    len += (size_t)sprintf(doc + len, "], " MIN_BACKENDS "}");
    out = errors_of(doc);
    T_EQ_STR(out, "t.json:1:15: listeners: 65 listeners, at most 64 are allowed\n");
    free(out);
    free(doc);
}

static void test_round_trip(void) {
    static const char other[] =
        "{\"listeners\": [{\"address\": \"[::]:80\"}], \"workers\": 7,"
        " \"routing\": {\"method\": \"failover\", \"cookie\": {\"secret\": \"\\\"q\\u00e9\"}},"
        " \"backends\": [{\"name\": \"x\", \"weight\": 3, \"servers\": [{\"address\": "
        "\"10.1.1.1:1\", \"weight\": 100}]}], \"timeouts\": {\"drain_ms\": 0}}";
    const char *docs[] = {example, other};

    for (size_t i = 0; i < 2; i++) {
        td_config_t *a = td_config_parse(docs[i], strlen(docs[i]), "a.json", stderr), *b, *d;
        char *ja, *jb;

        T_CHECK(a != NULL);
        if (!a)
            continue;
        ja = td_config_to_json(a);
        T_CHECK(ja != NULL);
        b = td_config_parse(ja, strlen(ja), "b.json", stderr);
        T_CHECK(b != NULL && config_equal(a, b));
        jb = td_config_to_json(b);
        T_EQ_STR(jb, ja);
        d = td_config_dup(a);
        T_CHECK(d != NULL && d->listeners != a->listeners && config_equal(a, d));
        if (i == 1) {
            T_EQ_INT(b->workers, 7);
            T_EQ_INT(b->workers_auto, 0);
            T_EQ_INT(b->method, TD_METHOD_FAILOVER);
            T_EQ_STR(b->cookie_secret, "\"q\xc3\xa9");
            T_EQ_INT(b->has_admin, 0);
            T_EQ_INT(b->has_health, 0);
            T_CHECK(strstr(ja, "\"workers\": 7,") != NULL);
            T_CHECK(strstr(ja, "health_check") == NULL && strstr(ja, "admin") == NULL);
        } else {
            T_CHECK(strstr(ja, "\"workers\": \"auto\",") != NULL);
            T_CHECK(ja[strlen(ja) - 1] == '\n');
        }
        td_config_free(a);
        td_config_free(b);
        td_config_free(d);
        free(ja);
        free(jb);
    }
}

static void test_demo(void) {
    td_config_t *c = td_config_demo();
    char *j;
    td_config_t *b;

    T_CHECK(c != NULL);
    if (!c)
        return;
    T_CHECK(addr_is(&c->listeners[0].address, AF_INET, "127.0.0.1", 8080));
    T_CHECK(c->has_admin && addr_is(&c->admin_address, AF_INET, "127.0.0.1", 9090));
    T_EQ_STR(c->admin_token, "");
    T_EQ_INT(c->method, TD_METHOD_ROUND_ROBIN);
    T_EQ_INT(c->num_backends, 2);
    T_EQ_STR(c->backends[0].name, "blue");
    T_EQ_STR(c->backends[1].name, "green");
    T_EQ_INT(c->backends[0].weight, 50);
    T_EQ_INT(c->backends[1].weight, 50);
    T_CHECK(addr_is(&c->backends[0].servers[0].address, AF_INET, "127.0.0.1", 9001));
    T_CHECK(addr_is(&c->backends[1].servers[0].address, AF_INET, "127.0.0.1", 9002));
    T_EQ_INT(c->has_health, 1);
    j = td_config_to_json(c);
    b = td_config_parse(j, strlen(j), "demo", stderr);
    T_CHECK(b && config_equal(c, b));
    td_config_free(b);
    free(j);
    td_config_free(c);
}

static void test_write_and_load(void) {
    char dir[] = "/tmp/td_test_config.XXXXXX", path[128], *out = NULL;
    td_config_t *a, *b;
    struct stat st;
    DIR *d;
    struct dirent *e;
    int files = 0;
    size_t len = 0;
    FILE *f;

    T_CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/td.json", dir);
    a = td_config_parse(example, strlen(example), "ex.json", stderr);
    T_CHECK(a != NULL);
    if (!a)
        return;
    T_EQ_INT(td_config_write(a, path), 0);
    T_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600); /* new file: 0600 */
    b = td_config_load(path, stderr);
    T_CHECK(b != NULL && config_equal(a, b));
    td_config_free(b);

    /* Overwrite an existing file: its mode is kept, the new content replaces the old. */
    T_CHECK(chmod(path, 0640) == 0);
    a->backends[0].weight = 0;
    a->backends[1].weight = 100;
    T_EQ_INT(td_config_write(a, path), 0);
    T_CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640);
    b = td_config_load(path, stderr);
    T_CHECK(b != NULL && config_equal(a, b));
    T_CHECK(b && b->backends[0].weight == 0 && b->backends[1].weight == 100);
    td_config_free(b);

    /* No temporary file left behind. */
    d = opendir(dir);
    while (d && (e = readdir(d)) != NULL)
        files += e->d_name[0] != '.';
    if (d)
        closedir(d);
    T_EQ_INT(files, 1);

    /* Unwritable place: TD_EIO. */
    T_EQ_INT(td_config_write(a, "/nonexistent-dir/td.json"), TD_EIO);

    unlink(path);
    f = open_memstream(&out, &len);
    T_CHECK(td_config_load(path, f) == NULL);
    fclose(f);
    {
        char want[256];
        snprintf(want, sizeof want, "%s: cannot read: No such file or directory\n", path);
        T_EQ_STR(out, want);
    }
    free(out);
    rmdir(dir);
    td_config_free(a);
}

static void test_helpers(void) {
    td_addr_t a;
    td_method_t m;

    memset(&a, 0, sizeof a);
    T_EQ_INT(td_addr_parse("127.0.0.1:65535", &a), 0);
    T_CHECK(addr_is(&a, AF_INET, "127.0.0.1", 65535));
    T_EQ_INT(td_addr_parse("[fe80::1]:1", &a), 0);
    T_CHECK(addr_is(&a, AF_INET6, "fe80::1", 1));
    T_EQ_STR(a.text, "[fe80::1]:1");
    T_EQ_INT(td_addr_parse("127.0.0.1:65536", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("127.0.0.1:0", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("127.0.0.1:", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("127.0.0.1", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("::1:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("[::1]80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("[127.0.0.1]:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("1.2.3.4:8o", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse("", &a), TD_EINVAL);
    T_EQ_STR(a.text, "[fe80::1]:1"); /* untouched by failures */

    T_EQ_STR(td_method_name(TD_METHOD_STICKY), "sticky");
    T_EQ_INT(td_method_parse("failover", &m), 0);
    T_EQ_INT(m, TD_METHOD_FAILOVER);
    T_EQ_INT(td_method_parse("random", &m), TD_EINVAL);

    T_EQ_INT(td_config_status_expected("2xx,3xx", 200), 1);
    T_EQ_INT(td_config_status_expected("2xx,3xx", 399), 1);
    T_EQ_INT(td_config_status_expected("2xx,3xx", 404), 0);
    T_EQ_INT(td_config_status_expected("200,204", 204), 1);
    T_EQ_INT(td_config_status_expected("200,204", 201), 0);
    T_EQ_INT(td_config_status_expected("2xx,404", 404), 1);
}

/* Per-backend health_check overrides start from the global one; passive detection settings. */
static void test_health_overrides_and_passive(void) {
    const char *doc =
        "{" MIN_LISTENERS ",\n"
        " \"health_check\": {\"type\": \"http\", \"path\": \"/hz\", \"fall\": 2},\n"
        " \"passive\": {\"failures\": 4, \"eject_ms\": 100},\n"
        " \"backends\": [{\"name\": \"a\", \"weight\": 1,\n"
        "   \"servers\": [{\"address\": \"127.0.0.1:1\"}],\n"
        "   \"health_check\": {\"type\": \"tcp\", \"port\": 81, \"expect_body\": \"ok\"}},\n"
        "  {\"name\": \"b\", \"weight\": 1, \"servers\": [{\"address\": \"127.0.0.1:2\"}]}]}";
    td_config_t *c = td_config_parse(doc, strlen(doc), "t.json", stderr);
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_EQ_INT(c->backends[0].health_override, 1);
    T_EQ_STR(c->backends[0].health.type, "tcp");
    T_EQ_STR(c->backends[0].health.path, "/hz"); /* inherited */
    T_EQ_INT(c->backends[0].health.fall, 2);     /* inherited */
    T_EQ_INT(c->backends[0].health.port, 81);
    T_EQ_STR(c->backends[0].health.expect_body, "ok");
    T_EQ_INT(c->backends[1].health_override, 0);
    T_EQ_STR(c->backends[1].health.type, "http");
    T_EQ_INT(c->passive.failures, 4);
    T_EQ_INT(c->passive.eject_ms, 100);
    T_EQ_INT(c->passive.max_eject_ms, 300000); /* default */
    /* Round trip keeps the override on its backend only. */
    char *text = td_config_to_json(c);
    td_config_t *d = td_config_parse(text, strlen(text), "rt", stderr);
    T_CHECK(d && d->backends[0].health_override && !d->backends[1].health_override);
    T_CHECK(d && d->backends[0].health.port == 81 && d->passive.failures == 4);
    free(text);
    td_config_free(d);
    td_config_free(c);
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ",\n \"passive\": {\"failures\": 0}}",
             "t.json:2:26: passive.failures: 0 is out of range (1..1000)\n");
}

/* request_buffering.max_bytes and timeouts.client_send_ms: defaults, values, round trip and
 * errors at their place. */
static void test_request_buffering_and_client_send(void) {
    static const char plain[] = "{" MIN_LISTENERS ", " MIN_BACKENDS "}";
    td_config_t *c = td_config_parse(plain, strlen(plain), "t.json", stderr);
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(c->request_buffering.max_bytes, 65536);
        T_EQ_INT(c->timeouts.client_send_ms, 60000);
        td_config_free(c);
    }
    static const char set[] = "{" MIN_LISTENERS ", " MIN_BACKENDS ", \"request_buffering\": "
                              "{\"max_bytes\": 0}, \"timeouts\": {\"client_send_ms\": 250}}";
    c = td_config_parse(set, strlen(set), "t.json", stderr);
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(c->request_buffering.max_bytes, 0);
        T_EQ_INT(c->timeouts.client_send_ms, 250);
        char *text = td_config_to_json(c);
        td_config_t *d = text ? td_config_parse(text, strlen(text), "rt", stderr) : NULL;
        T_CHECK(d && d->request_buffering.max_bytes == 0 && d->timeouts.client_send_ms == 250);
        td_config_free(d);
        free(text);
        td_config_free(c);
    }
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS
             ",\n \"request_buffering\": {\"max_bytes\": 2000000}}",
             "t.json:2:37: request_buffering.max_bytes: 2000000 is out of range (0..1048576)\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ",\n \"request_buffering\": {\"max_byte\": 1}}",
             "t.json:2:24: request_buffering.max_byte: unknown key, did you mean \"max_bytes\"?\n");
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ",\n \"timeouts\": {\"client_send_ms\": 0}}",
             "t.json:2:33: timeouts.client_send_ms: 0 is out of range (1..86400000)\n");
}

/* slow_start_ms (backend and server) and timeouts.stop_grace_ms: defaults, values, left out
 * when writing at their defaults, round trip and errors at their place. */
static void test_slow_start_and_stop_grace(void) {
    static const char plain[] = "{" MIN_LISTENERS ", " MIN_BACKENDS "}";
    td_config_t *c = td_config_parse(plain, strlen(plain), "t.json", stderr);
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(c->backends[0].slow_start_ms, 0);
        T_EQ_INT(c->backends[0].servers[0].slow_start_ms, -1); /* the backend's */
        T_EQ_INT(c->timeouts.stop_grace_ms, 0);
        char *text = td_config_to_json(c);
        T_CHECK(text && !strstr(text, "slow_start_ms") && !strstr(text, "stop_grace_ms"));
        free(text);
        td_config_free(c);
    }
    static const char set[] =
        "{" MIN_LISTENERS ", \"timeouts\": {\"stop_grace_ms\": 3000}, \"backends\": [{\"name\": "
        "\"a\", \"weight\": 1, \"slow_start_ms\": 5000, \"servers\": [{\"address\": "
        "\"127.0.0.1:1\", \"slow_start_ms\": 0}, {\"address\": \"127.0.0.1:2\"}]}]}";
    c = td_config_parse(set, strlen(set), "t.json", stderr);
    T_CHECK(c != NULL);
    if (c) {
        T_EQ_INT(c->backends[0].slow_start_ms, 5000);
        T_EQ_INT(c->backends[0].servers[0].slow_start_ms, 0);
        T_EQ_INT(c->backends[0].servers[1].slow_start_ms, -1);
        T_EQ_INT(c->timeouts.stop_grace_ms, 3000);
        char *text = td_config_to_json(c);
        td_config_t *d = text ? td_config_parse(text, strlen(text), "rt", stderr) : NULL;
        T_CHECK(d && d->backends[0].slow_start_ms == 5000 &&
                d->backends[0].servers[0].slow_start_ms == 0 &&
                d->backends[0].servers[1].slow_start_ms == -1 && d->timeouts.stop_grace_ms == 3000);
        td_config_free(d);
        free(text);
        td_config_free(c);
    }
    T_ERRORS("{" MIN_LISTENERS ", " MIN_BACKENDS ",\n \"timeouts\": {\"stop_grace_ms\": -1}}",
             "t.json:2:32: timeouts.stop_grace_ms: -1 is out of range (0..86400000)\n");
    T_ERRORS("{" MIN_LISTENERS ",\n \"backends\": [{\"name\": \"a\", \"weight\": 1, "
             "\"servers\": [{\"address\": \"127.0.0.1:1\", \"slow_start_ms\": -5}]}]}",
             "t.json:2:98: backends[0].servers[0].slow_start_ms: -5 is out of range "
             "(0..86400000)\n");
    T_ERRORS(
        "{" MIN_LISTENERS ",\n \"backends\": [{\"name\": \"a\", \"weight\": 1, "
        "\"slow_start_ms\": \"5s\", \"servers\": [{\"address\": \"127.0.0.1:1\"}]}]}",
        "t.json:2:59: backends[0].slow_start_ms: expected an integer 0..86400000, got a string "
        "\"5s\"\n");
}

int main(void) {
    test_request_buffering_and_client_send();
    test_slow_start_and_stop_grace();
    test_health_overrides_and_passive();
    test_example();
    test_defaults_and_values();
    test_syntax_errors();
    test_key_errors();
    test_value_errors();
    test_many_errors();
    test_error_cap();
    test_round_trip();
    test_demo();
    test_write_and_load();
    test_helpers();
    return t_done("test_config");
}
