/* tdctl: the command-line client of td's admin API (the "Admin API" of docs/ARCHITECTURE.md).
 *
 * One run is one command: check every argument first (a usage error never reaches td), then make
 * one or two HTTP calls through call(), the only function that touches libcurl, and print the
 * reply as a table, a one-line summary, or (--json) td's JSON as it came.
 *
 * Exit status: 0 done, 1 refused by td or td unreachable, 2 usage error. */

#include <curl/curl.h>
#include <jansson.h>

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TDCTL_VERSION "0.1.0"
#define DEFAULT_ADMIN "http://127.0.0.1:9090"
#define WEIGHT_MAX 100
#define BODY_MAX (16u << 20)   /* bytes: a reply or a config file; real ones are a few KiB */
#define CONNECT_TIMEOUT_S 5L   /* td's admin API is local or near: fail fast when it is not there */
#define TRANSFER_TIMEOUT_S 30L /* a config PUT is validated and persisted before td answers */

enum { RC_DONE = 0, RC_REFUSED = 1, RC_USAGE = 2 };

typedef struct ctl_s {
    const char *admin; /* borrowed (argv or environment): base URL of td's admin API */
    const char *token; /* borrowed; NULL for no Authorization header */
    bool json;         /* print td's replies as they came */
} ctl_t;

/* A growable byte buffer: an HTTP reply, or a file being read. */
typedef struct buf_s {
    char *p; /* owned; NUL-terminated once anything is in it */
    size_t len;
    bool too_big; /* more than BODY_MAX bytes came: the rest was refused */
} buf_t;

typedef struct reply_s {
    long status;
    buf_t body;
} reply_t;

static const char *const methods[] = {"round_robin", "sticky", "failover"};

/* ---------------------------------------------------------------------------------------------
 * Messages
 */

static const char help_text[] =
    "NAME\n"
    "    tdctl - show and steer a running td traffic distributor\n"
    "\n"
    "SYNOPSIS\n"
    "    tdctl [--admin URL] [--token TOKEN] [--json] COMMAND [ARG...]\n"
    "    tdctl --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    tdctl talks to td's admin API: it shows how td splits traffic between its\n"
    "    backends and changes that split, or the routing method, while td runs. td\n"
    "    applies a change to the very next request, drops no connection, and writes\n"
    "    it back to its config file so that a restart keeps it. tdctl checks its\n"
    "    arguments before it contacts td.\n"
    "\n"
    "OPTIONS\n"
    "    -a, --admin URL\n"
    "        td's admin API, as set by admin.address in td's config.\n"
    "        Default: $TD_ADMIN, else " DEFAULT_ADMIN ".\n"
    "    -t, --token TOKEN\n"
    "        Send \"Authorization: Bearer TOKEN\" with every call (admin.token in td's\n"
    "        config). Default: $TD_TOKEN. An empty token sends none.\n"
    "    -j, --json\n"
    "        Print td's JSON reply as it came instead of a table or a summary;\n"
    "        for scripts.\n"
    "    -h, --help\n"
    "        Show this help and exit.\n"
    "    -V, --version\n"
    "        Print \"tdctl " TDCTL_VERSION "\" and exit.\n"
    "    Options may come before or after COMMAND; \"--\" ends them.\n"
    "\n"
    "COMMANDS\n"
    "    status\n"
    "        Show the routing method, the config version and td's uptime, then one\n"
    "        row per backend: WEIGHT, RATIO (its weight over the sum of all\n"
    "        weights), STATE (up or down, from health checks), IN-FLIGHT requests,\n"
    "        REQUESTS served and 5XX responses. Each backend's servers follow,\n"
    "        indented, with their own weight, state, counters and FAILURES. With\n"
    "        method failover all traffic goes to the healthy backend with the\n"
    "        highest weight, whatever RATIO says.\n"
    "\n"
    "    ratio NAME=WEIGHT...\n"
    "    ratio A:B\n"
    "        Set backend weights, integers 0 to 100. The first form names any\n"
    "        subset of the backends (\"ratio blue=0 green=100\"); the others keep\n"
    "        their weight. The second sets the first two backends in the order\n"
    "        \"tdctl status\" lists them (\"ratio 30:70\"), and is refused unless td\n"
    "        has exactly two. A backend of weight 0 gets no new requests while its\n"
    "        in-flight requests finish. Prints the new state.\n"
    "\n"
    "    method round_robin|sticky|failover\n"
    "        Set the routing method. round_robin spreads requests by weight.\n"
    "        sticky assigns a client's first request by weight, then keeps the\n"
    "        client on that backend with a cookie. failover sends all traffic to\n"
    "        the healthy backend with the highest weight (ties: first listed); the\n"
    "        others are backups. Prints the new state.\n"
    "\n"
    "    config get\n"
    "        Print td's running configuration: a JSON document that \"config put\"\n"
    "        takes back.\n"
    "\n"
    "    config put FILE\n"
    "        Replace td's whole configuration with FILE (\"-\" reads standard\n"
    "        input). td checks all of it and applies it at once, or changes\n"
    "        nothing and answers with every problem found, at its LINE:COL in\n"
    "        FILE, which tdctl prints. A FILE that is not JSON at all is not sent:\n"
    "        tdctl prints FILE:LINE:COL and the problem. Prints the new config\n"
    "        version.\n"
    "\n"
    "ENVIRONMENT\n"
    "    TD_ADMIN    Admin API URL when --admin is not given.\n"
    "    TD_TOKEN    Token when --token is not given.\n"
    "    http_proxy, no_proxy and the like are honoured as libcurl does; set\n"
    "    no_proxy=127.0.0.1,localhost if a proxy is set and td is local.\n"
    "\n"
    "EXIT STATUS\n"
    "    0   Done.\n"
    "    1   td refused the request (its message is printed), td could not be reached\n"
    "        (\"cannot reach td at URL: reason\"), or the FILE of \"config put\" is not\n"
    "        JSON.\n"
    "    2   Usage error: an unknown option or command, or an invalid argument (a\n"
    "        weight outside 0..100, an empty name, an unknown method, an unreadable\n"
    "        FILE, \"ratio A:B\" with td not having exactly two backends). td is left\n"
    "        unchanged.\n"
    "\n"
    "EXAMPLES\n"
    "    Blue-green deploy, blue first:\n"
    "        tdctl ratio blue=0 green=100   # blue gets no new requests\n"
    "        tdctl status                   # wait for blue's IN-FLIGHT to reach 0\n"
    "        (deploy and test blue)\n"
    "        tdctl ratio blue=100 green=0   # then deploy green the same way\n"
    "        tdctl ratio 50:50\n"
    "    A/B test:\n"
    "        tdctl method sticky && tdctl ratio 50:50\n"
    "    Edit the running configuration:\n"
    "        tdctl config get > td.json && vi td.json && tdctl config put td.json\n"
    "    A remote td, for a script:\n"
    "        TD_TOKEN=secret tdctl --admin http://10.0.0.5:9090 --json status\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "tdctl: <message>" and the hint to --help; returns the usage exit status. */
static int usage_error(const char *fmt, ...) {
    va_list ap;

    fputs("tdctl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'tdctl --help' for more information.\n", stderr);
    return RC_USAGE;
}

/* ---------------------------------------------------------------------------------------------
 * Buffers and files
 */

/* Appends n bytes; past BODY_MAX it refuses them and sets too_big. Returns false when it did not
 * append. */
static bool buf_append(buf_t *b, const char *data, size_t n) {
    char *p;

    if (n > BODY_MAX - b->len) {
        b->too_big = true;
        return false;
    }
    p = realloc(b->p, b->len + n + 1);
    if (!p)
        return false;
    memcpy(p + b->len, data, n);
    b->p = p;
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

/* Reads a whole file, or standard input for "-". Returns false with errno set (EFBIG when larger
 * than BODY_MAX). */
static bool read_file(const char *path, buf_t *b) {
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    char chunk[8192];
    size_t n;
    bool ok = true;

    if (!f)
        return false;
    while (ok && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        ok = buf_append(b, chunk, n);
    if (ok && ferror(f)) {
        ok = false;
        errno = EIO;
    } else if (!ok) {
        errno = b->too_big ? EFBIG : ENOMEM;
    }
    if (!is_stdin)
        fclose(f);
    return ok;
}

/* Prints bytes as they came, ending with a newline. */
static void print_raw(const buf_t *b) {
    if (b->len > 0)
        fwrite(b->p, 1, b->len, stdout);
    if (b->len == 0 || b->p[b->len - 1] != '\n')
        putchar('\n');
}

/* ---------------------------------------------------------------------------------------------
 * The HTTP call
 */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg) {
    buf_t *body = arg;

    /* Returning less than given makes libcurl stop the transfer with CURLE_WRITE_ERROR. */
    return buf_append(body, data, size * nmemb) ? size * nmemb : 0;
}

/* Prints why td refused: the "error" of its JSON reply (a string, several lines when a config has
 * several problems; an array of strings is taken too), or the bare status when the body is not
 * td's JSON (say, a proxy's error page). */
static void print_refusal(const reply_t *r) {
    json_t *doc = r->body.len ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
    json_t *msg = json_object_get(doc, "error");
    json_t *line;
    size_t i;

    if (json_is_string(msg) && !strchr(json_string_value(msg), '\n')) {
        fprintf(stderr, "tdctl: td refused (HTTP %ld): %s\n", r->status, json_string_value(msg));
    } else if (json_is_string(msg)) {
        fprintf(stderr, "tdctl: td refused (HTTP %ld):\n%s", r->status, json_string_value(msg));
        if (json_string_length(msg) > 0 &&
            json_string_value(msg)[json_string_length(msg) - 1] != '\n')
            fputc('\n', stderr);
    } else if (json_is_array(msg)) {
        fprintf(stderr, "tdctl: td refused (HTTP %ld):\n", r->status);
        json_array_foreach(msg, i, line) {
            fprintf(stderr, "%s\n", json_is_string(line) ? json_string_value(line) : "?");
        }
    } else {
        fprintf(stderr, "tdctl: td refused (HTTP %ld) without saying why\n", r->status);
    }
    json_decref(doc);
}

/* Returns a malloc'd "Authorization: Bearer TOKEN" header, or NULL when out of memory. */
static char *auth_header(const char *token) {
    char *h;

    return asprintf(&h, "Authorization: Bearer %s", token) < 0 ? NULL : h;
}

/* Makes one call to td's admin API: method "GET", or "PUT" with a JSON body of body_len bytes.
 * Returns RC_DONE with a 2xx reply in *r (the caller frees r->body.p), or prints why not (td
 * unreachable, or td's error message) and returns RC_REFUSED. */
static int call(const ctl_t *ctl, const char *method, const char *path, const char *body,
                size_t body_len, reply_t *r) {
    size_t base_len = strlen(ctl->admin);
    char *url = NULL, *auth = NULL;
    char err[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    CURL *h = curl_easy_init();
    CURLcode cc;
    int rc = RC_REFUSED;

    *r = (reply_t){0};
    while (base_len > 0 && ctl->admin[base_len - 1] == '/')
        base_len--;
    if (!h || asprintf(&url, "%.*s%s", (int)base_len, ctl->admin, path) < 0) {
        url = NULL;
        fprintf(stderr, "tdctl: out of memory\n");
        goto out;
    }
    if (ctl->token && !(auth = auth_header(ctl->token))) {
        fprintf(stderr, "tdctl: out of memory\n");
        goto out;
    }
    if (auth)
        headers = curl_slist_append(headers, auth);
    if (body) {
        headers = curl_slist_append(headers, "Content-Type: application/json");
        /* td answers at once; do not wait for a 100 Continue before sending the body. */
        headers = curl_slist_append(headers, "Expect:");
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "tdctl/" TDCTL_VERSION);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, TRANSFER_TIMEOUT_S);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &r->body);

    cc = curl_easy_perform(h);
    if (cc != CURLE_OK) {
        fprintf(stderr, "tdctl: cannot reach td at %s: %s\n", ctl->admin,
                r->body.too_big ? "reply larger than 16 MiB"
                : err[0]        ? err
                                : curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->status < 200 || r->status > 299) {
        print_refusal(r);
        goto out;
    }
    rc = RC_DONE;
out:
    if (rc != RC_DONE) {
        free(r->body.p);
        r->body = (buf_t){0};
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    free(auth);
    free(url);
    return rc;
}

/* Parses a 2xx reply as JSON. Returns the document (the caller owns it), or NULL after saying
 * that td's answer made no sense. */
static json_t *parse_reply(const reply_t *r) {
    json_error_t e;
    json_t *doc = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, &e);

    if (!doc)
        fprintf(stderr, "tdctl: td's reply is not JSON (%d:%d: %s)\n", e.line, e.column, e.text);
    return doc;
}

/* ---------------------------------------------------------------------------------------------
 * The state table
 */

/* One printed value; returned by value so it can be used inside a printf() argument list. */
typedef struct cell_s {
    char s[32];
} cell_t;

/* The integer member key of obj, or "-" when td did not send one. */
static cell_t num(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    cell_t c = {"-"};

    if (json_is_integer(v))
        snprintf(c.s, sizeof(c.s), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return c;
}

static const char *up_down(const json_t *obj) {
    const json_t *v = json_object_get(obj, "up");

    return json_is_boolean(v) ? (json_is_true(v) ? "up" : "down") : "-";
}

static const char *str(const json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? s : "-";
}

/* A backend's share of traffic: "50%", "33.3%", or "-" when all weights are 0 or unknown. */
static cell_t ratio_cell(const json_t *backend, json_int_t weight_sum) {
    const json_t *w = json_object_get(backend, "weight");
    json_int_t scaled;
    cell_t c = {"-"};

    if (!json_is_integer(w) || json_integer_value(w) < 0 || weight_sum <= 0)
        return c;
    scaled = 100 * json_integer_value(w);
    if (scaled % weight_sum == 0)
        snprintf(c.s, sizeof(c.s), "%" JSON_INTEGER_FORMAT "%%", scaled / weight_sum);
    else
        snprintf(c.s, sizeof(c.s), "%.1f%%", (double)scaled / (double)weight_sum);
    return c;
}

/* Seconds as "45s", "3m05s", "2h03m05s" or "4d02h03m". */
static cell_t uptime_cell(const json_t *state) {
    const json_t *v = json_object_get(state, "uptime_s");
    long long s = json_is_integer(v) ? json_integer_value(v) : -1;
    cell_t c = {"-"};

    if (s >= 86400)
        snprintf(c.s, sizeof(c.s), "%lldd%02lldh%02lldm", s / 86400, s / 3600 % 24, s / 60 % 60);
    else if (s >= 3600)
        snprintf(c.s, sizeof(c.s), "%lldh%02lldm%02llds", s / 3600, s / 60 % 60, s % 60);
    else if (s >= 60)
        snprintf(c.s, sizeof(c.s), "%lldm%02llds", s / 60, s % 60);
    else if (s >= 0)
        snprintf(c.s, sizeof(c.s), "%llds", s);
    return c;
}

/* Prints one table row with the name column width wide, without trailing blanks. */
static void print_row(int width, const char *name, const char *weight, const char *ratio,
                      const char *state, const char *in_flight, const char *requests,
                      const char *resp_5xx, const char *failures) {
    char line[512];
    int n = snprintf(line, sizeof(line), "%-*s  %6s  %6s  %-5s  %9s  %10s  %6s  %8s", width, name,
                     weight, ratio, state, in_flight, requests, resp_5xx, failures);

    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    while (n > 0 && line[n - 1] == ' ')
        n--;
    printf("%.*s\n", n, line);
}

/* Width of the name column: the longest backend name or indented server address. */
static int name_width(const json_t *backends) {
    size_t width = strlen("BACKEND/SERVER"), i, j;
    const json_t *b, *s;

    json_array_foreach(backends, i, b) {
        if (strlen(str(b, "name")) > width)
            width = strlen(str(b, "name"));
        json_array_foreach(json_object_get(b, "servers"), j, s) {
            if (2 + strlen(str(s, "address")) > width)
                width = 2 + strlen(str(s, "address"));
        }
    }
    return width > 100 ? 100 : (int)width;
}

static void print_servers(const json_t *backend, int width) {
    const json_t *s;
    char name[128];
    size_t i;

    json_array_foreach(json_object_get(backend, "servers"), i, s) {
        snprintf(name, sizeof(name), "  %s", str(s, "address"));
        print_row(width, name, num(s, "weight").s, "", up_down(s), num(s, "in_flight").s,
                  num(s, "requests").s, "", num(s, "failures").s);
    }
}

/* Prints td's state (GET /api/v1/state) as a table. Members td did not send show as "-". */
static void print_state(const json_t *state) {
    const json_t *backends = json_object_get(state, "backends");
    const json_t *b;
    json_int_t weight_sum = 0;
    int width = name_width(backends);
    size_t i;

    json_array_foreach(backends, i, b) {
        const json_t *w = json_object_get(b, "weight");
        weight_sum += json_is_integer(w) && json_integer_value(w) > 0 ? json_integer_value(w) : 0;
    }
    printf("method   %s\n", str(state, "method"));
    printf("version  %s\n", num(state, "version").s);
    printf("uptime   %s\n\n", uptime_cell(state).s);
    print_row(width, "BACKEND/SERVER", "WEIGHT", "RATIO", "STATE", "IN-FLIGHT", "REQUESTS", "5XX",
              "FAILURES");
    json_array_foreach(backends, i, b) {
        print_row(width, str(b, "name"), num(b, "weight").s, ratio_cell(b, weight_sum).s,
                  up_down(b), num(b, "in_flight").s, num(b, "requests").s,
                  num(json_object_get(b, "responses"), "5xx").s, "");
        print_servers(b, width);
    }
}

/* Prints a reply that carries td's state: as it came with --json, else as the table. */
static int show_state(const ctl_t *ctl, const reply_t *r) {
    json_t *state;

    if (ctl->json) {
        print_raw(&r->body);
        return RC_DONE;
    }
    if (!(state = parse_reply(r)))
        return RC_REFUSED;
    print_state(state);
    json_decref(state);
    return RC_DONE;
}

/* ---------------------------------------------------------------------------------------------
 * Argument checks
 */

/* A weight: decimal digits only (no sign, no blanks), 0..100. */
static bool parse_weight(const char *s, size_t len, int *weight) {
    int w = 0;
    size_t i;

    if (len == 0)
        return false;
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        w = w * 10 + (s[i] - '0');
        if (w > WEIGHT_MAX)
            return false;
    }
    *weight = w;
    return true;
}

/* A backend name as td's config allows it: [A-Za-z0-9_-]+. */
static bool valid_name(const char *s, size_t len) {
    return len > 0 && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                "0123456789_-") >= len;
}

/* ---------------------------------------------------------------------------------------------
 * Commands. Each takes the arguments after its name, checks them all, then calls td.
 */

/* PUTs a JSON document (consumed) and prints the state td answers with. */
static int put_for_state(const ctl_t *ctl, const char *path, json_t *doc) {
    char *body = json_dumps(doc, JSON_COMPACT);
    reply_t r;
    int rc;

    json_decref(doc);
    if (!body) {
        fprintf(stderr, "tdctl: out of memory\n");
        return RC_REFUSED;
    }
    rc = call(ctl, "PUT", path, body, strlen(body), &r);
    free(body);
    if (rc == RC_DONE)
        rc = show_state(ctl, &r);
    free(r.body.p);
    return rc;
}

static int cmd_status(const ctl_t *ctl, int argc, char **argv) {
    reply_t r;
    int rc;

    if (argc > 0)
        return usage_error("status takes no argument, got '%s'", argv[0]);
    rc = call(ctl, "GET", "/api/v1/state", NULL, 0, &r);
    if (rc == RC_DONE)
        rc = show_state(ctl, &r);
    free(r.body.p);
    return rc;
}

/* "A:B" into two weights; false when it is not that shape. */
static bool parse_pair(const char *arg, int *a, int *b) {
    const char *colon = strchr(arg, ':');

    return colon && parse_weight(arg, (size_t)(colon - arg), a) &&
           parse_weight(colon + 1, strlen(colon + 1), b);
}

/* td's backends, in state order: the "backends" array of its state (the caller owns the
 * reference), or NULL after printing why not. */
static json_t *state_backends(const ctl_t *ctl) {
    json_t *state, *backends;
    reply_t r;

    if (call(ctl, "GET", "/api/v1/state", NULL, 0, &r) != RC_DONE)
        return NULL;
    state = parse_reply(&r);
    free(r.body.p);
    backends = json_incref(json_object_get(state, "backends"));
    json_decref(state);
    if (state && !json_is_array(backends))
        fprintf(stderr, "tdctl: td's state has no backends array\n");
    if (!json_is_array(backends)) {
        json_decref(backends);
        return NULL;
    }
    return backends;
}

/* "ratio A:B": the first two backends in state order, which td must have exactly two of. */
static int ratio_pair(const ctl_t *ctl, const char *arg) {
    json_t *backends, *doc;
    const char *first, *second;
    int a, b;

    if (!parse_pair(arg, &a, &b))
        return usage_error("'%s': the short form of ratio is A:B, two weights 0..100 (e.g. 30:70)",
                           arg);
    if (!(backends = state_backends(ctl)))
        return RC_REFUSED;
    if (json_array_size(backends) != 2) {
        size_t n = json_array_size(backends);

        json_decref(backends);
        return usage_error("'ratio %s' needs td to have exactly two backends; it has %zu: "
                           "name them instead (ratio NAME=WEIGHT...)",
                           arg, n);
    }
    first = json_string_value(json_object_get(json_array_get(backends, 0), "name"));
    second = json_string_value(json_object_get(json_array_get(backends, 1), "name"));
    doc = json_object();
    if (first && second) {
        json_object_set_new(doc, first, json_integer(a));
        json_object_set_new(doc, second, json_integer(b));
    }
    json_decref(backends);
    if (json_object_size(doc) != 2) {
        json_decref(doc);
        fprintf(stderr, "tdctl: td's state lacks the names of its two backends\n");
        return RC_REFUSED;
    }
    return put_for_state(ctl, "/api/v1/ratio", doc);
}

/* Adds one "NAME=WEIGHT" to doc; returns RC_DONE, or RC_USAGE after saying what is wrong. */
static int add_weight(json_t *doc, const char *arg) {
    const char *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : 0;
    int weight;

    if (!eq)
        return usage_error("'%s': ratio takes NAME=WEIGHT... or A:B", arg);
    if (name_len == 0)
        return usage_error("'%s': the backend name is empty", arg);
    if (!valid_name(arg, name_len))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", arg);
    if (!parse_weight(eq + 1, strlen(eq + 1), &weight))
        return usage_error("'%s': a weight is an integer from 0 to %d", arg, WEIGHT_MAX);
    if (json_object_getn(doc, arg, name_len))
        return usage_error("'%s': backend '%.*s' is given twice", arg, (int)name_len, arg);
    json_object_setn_new(doc, arg, name_len, json_integer(weight));
    return RC_DONE;
}

static int cmd_ratio(const ctl_t *ctl, int argc, char **argv) {
    json_t *doc;
    int i, rc = RC_DONE;

    if (argc == 0)
        return usage_error(
            "ratio needs NAME=WEIGHT... (e.g. blue=0 green=100) or A:B (e.g. 30:70)");
    if (argc == 1 && strchr(argv[0], ':') && !strchr(argv[0], '='))
        return ratio_pair(ctl, argv[0]);
    doc = json_object();
    for (i = 0; i < argc && rc == RC_DONE; i++)
        rc = add_weight(doc, argv[i]);
    if (rc != RC_DONE) {
        json_decref(doc);
        return rc;
    }
    return put_for_state(ctl, "/api/v1/ratio", doc);
}

static int cmd_method(const ctl_t *ctl, int argc, char **argv) {
    size_t i;

    if (argc != 1)
        return usage_error("method needs exactly one of round_robin, sticky, failover");
    for (i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strcmp(argv[0], methods[i]) == 0)
            return put_for_state(ctl, "/api/v1/routing", json_pack("{s:s}", "method", methods[i]));
    }
    return usage_error("unknown method '%s': use round_robin, sticky or failover", argv[0]);
}

static int config_get(const ctl_t *ctl) {
    json_t *config;
    reply_t r;
    int rc = call(ctl, "GET", "/api/v1/config", NULL, 0, &r);

    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (config = parse_reply(&r))) {
        json_dumpf(config, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(config);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

/* Sends FILE as it is, so that the LINE:COL of td's problems are those of the user's file; it is
 * parsed here only to catch a file that is not JSON at all. */
static int config_put(const ctl_t *ctl, const char *path) {
    buf_t file = {0};
    json_error_t e;
    json_t *doc;
    reply_t r;
    int rc;

    if (!read_file(path, &file)) {
        free(file.p);
        return usage_error("cannot read %s: %s", path, strerror(errno));
    }
    if (!(doc = json_loadb(file.p ? file.p : "", file.len, 0, &e))) {
        fprintf(stderr, "%s:%d:%d: %s (not sent to td)\n", strcmp(path, "-") ? path : "<stdin>",
                e.line, e.column, e.text);
        free(file.p);
        return RC_REFUSED;
    }
    json_decref(doc);
    rc = call(ctl, "PUT", "/api/v1/config", file.p, file.len, &r);
    free(file.p);
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (doc = parse_reply(&r))) {
        printf("configuration applied: version %s\n", num(doc, "version").s);
        json_decref(doc);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

static int cmd_config(const ctl_t *ctl, int argc, char **argv) {
    if (argc == 1 && strcmp(argv[0], "get") == 0)
        return config_get(ctl);
    if (argc == 2 && strcmp(argv[0], "put") == 0)
        return config_put(ctl, argv[1]);
    if (argc >= 1 && strcmp(argv[0], "get") == 0)
        return usage_error("config get takes no argument");
    if (argc >= 1 && strcmp(argv[0], "put") == 0)
        return usage_error("config put takes one FILE (or - for standard input)");
    return usage_error("config needs 'get' or 'put FILE'");
}

/* ---------------------------------------------------------------------------------------------
 * Options and dispatch
 */

static const struct command {
    const char *name;
    int (*run)(const ctl_t *ctl, int argc, char **argv);
} commands[] = {
    {"status", cmd_status},
    {"ratio", cmd_ratio},
    {"method", cmd_method},
    {"config", cmd_config},
};

/* Parses the options (anywhere on the line: getopt_long moves the operands behind them). Returns
 * -1 to go on with the operands at argv[optind], or an exit status for --help, --version and
 * errors. */
static int parse_options(ctl_t *ctl, int argc, char **argv) {
    static const struct option longopts[] = {
        {"admin", required_argument, NULL, 'a'}, {"token", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},     {NULL, 0, NULL, 0},
    };
    int c;

    opterr = 0; /* our messages, not getopt's, so that every one ends with the hint */
    while ((c = getopt_long(argc, argv, ":a:t:jhV", longopts, NULL)) != -1) {
        switch (c) {
        case 'a':
            ctl->admin = optarg;
            break;
        case 't':
            ctl->token = optarg;
            break;
        case 'j':
            ctl->json = true;
            break;
        case 'h':
            fputs(help_text, stdout);
            return RC_DONE;
        case 'V':
            puts("tdctl " TDCTL_VERSION);
            return RC_DONE;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            /* A bad long option is whole in argv[optind - 1]; a bad short one may sit inside a
             * cluster such as -jx, so name it by its letter. */
            if (optopt && strncmp(argv[optind - 1], "--", 2) != 0)
                return usage_error("invalid option '-%c'", optopt);
            return usage_error("invalid option '%s'", argv[optind - 1]);
        }
    }
    return -1;
}

/* The admin URL and token come from the command line or the environment: check them once. */
static int check_target(ctl_t *ctl) {
    const char *p;

    if (!ctl->admin || !*ctl->admin)
        return usage_error("the admin URL is empty (--admin URL or TD_ADMIN)");
    if (ctl->token && !*ctl->token)
        ctl->token = NULL;
    for (p = ctl->token; p && *p; p++) {
        /* A control character would end the header line early and smuggle in another. */
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return usage_error("the token holds a control character (--token or TD_TOKEN)");
    }
    return -1;
}

int main(int argc, char **argv) {
    ctl_t ctl = {.admin = getenv("TD_ADMIN"), .token = getenv("TD_TOKEN")};
    size_t i;
    int rc;

    if (!ctl.admin || !*ctl.admin)
        ctl.admin = DEFAULT_ADMIN;
    if ((rc = parse_options(&ctl, argc, argv)) >= 0 || (rc = check_target(&ctl)) >= 0)
        return rc;
    if (optind >= argc)
        return usage_error("missing COMMAND: status, ratio, method or config");
    for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[optind], commands[i].name) == 0)
            break;
    }
    if (i == sizeof(commands) / sizeof(commands[0]))
        return usage_error("unknown command '%s': use status, ratio, method or config",
                           argv[optind]);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "tdctl: cannot start libcurl\n");
        return RC_REFUSED;
    }
    rc = commands[i].run(&ctl, argc - optind - 1, argv + optind + 1);
    curl_global_cleanup();
    return rc;
}
