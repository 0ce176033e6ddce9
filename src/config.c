/* Loading and checking the JSON configuration: schema, defaults, messages for people.
 *
 * jansson parses; this file walks the document once, filling a td_config_t and collecting every
 * problem instead of stopping at the first. A problem is reported against the path of the thing
 * it is about (a stack of keys and indices kept while walking); only then, on the error path, is
 * the path turned into line:col by scanning the raw text (config_pos.c). Problems are printed in
 * document order once the walk is over. */
#include "td/config.h"

#include <openssl/ssl.h>

#include "td/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "td/common-t.h"
#include "td/config_pos.h"

#define MAX_PROBLEMS 100
#define MAX_PATH 8               /* deepest path in the schema: backends[i].servers[j].address */
#define MAX_FILE (16u << 20)     /* a config file larger than this is surely a mistake */
#define MAX_MS 86400000          /* one day */
#define MAX_COOKIE_AGE 315360000 /* ten years */

enum { AT_VALUE = 0, AT_KEY = 1 };

typedef struct problem_s {
    int line, col;
    size_t seq; /* order found, to keep the sort stable */
    char *msg;  /* owned */
} problem_t;

typedef struct ctx_s {
    const char *text; /* borrowed: the raw document, for positions */
    size_t len;
    td_config_seg_t path[MAX_PATH]; /* where the walk is; keys borrowed from the jansson tree */
    size_t depth;
    problem_t *problems; /* owned */
    size_t num_problems, cap_problems;
    size_t dropped; /* problems beyond MAX_PROBLEMS */
    int oom;
} ctx_t;

/* ---- text for messages ---- */

/* Writes `s` into out[size] for a one-line message: control characters, quotes and backslashes
 * escaped, cut (on a UTF-8 boundary) with "..." when long. Returns out. */
static char *show(char *out, size_t size, const char *s, int quoted) {
    size_t o = 0, lim = size - 8; /* room for an escape, "...", the quote and the NUL */

    if (quoted)
        out[o++] = '"';
    for (; *s && o < lim; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7F || (quoted && (ch == '"' || ch == '\\'))) {
            if (ch == '"' || ch == '\\')
                o += (size_t)snprintf(out + o, size - o, "\\%c", ch);
            else
                o += (size_t)snprintf(out + o, size - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    if (*s) {
        while (o > 1 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
            o--; /* don't leave half a character */
        if (o > 1 && ((unsigned char)out[o - 1] & 0xC0) == 0xC0)
            o--;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    if (quoted)
        out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* "a string \"x\"", "an array", "1.5", "true": what a value was, for "expected ..., got ...". */
static const char *describe(const json_t *v, char *out, size_t size) {
    char q[96];

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        snprintf(out, size, "a string %s", show(q, sizeof q, json_string_value(v), 1));
        return out;
    case JSON_INTEGER:
        snprintf(out, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return out;
    case JSON_REAL:
        snprintf(out, size, "%.17g", json_real_value(v));
        return out;
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    default:
        return "null";
    }
}

/* ---- the path and problems ---- */

static void push_key(ctx_t *x, const char *key) {
    if (x->depth < MAX_PATH)
        x->path[x->depth] = (td_config_seg_t){key, 0};
    x->depth++;
}

static void push_index(ctx_t *x, size_t index) {
    if (x->depth < MAX_PATH)
        x->path[x->depth] = (td_config_seg_t){NULL, index};
    x->depth++;
}

static void pop(ctx_t *x) {
    x->depth--;
}

/* Reports a problem with the value (or, AT_KEY, the key) at the current path. The message is
 * prefixed with the path; arguments that come from the document must go through show(). */
static void report(ctx_t *x, int at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void report(ctx_t *x, int at, const char *fmt, ...) {
    char msg[640], key[80];
    size_t n = 0, depth = x->depth < MAX_PATH ? x->depth : MAX_PATH;
    va_list ap;
    problem_t *p;

    if (x->num_problems == MAX_PROBLEMS) {
        x->dropped++;
        return;
    }
    for (size_t i = 0; i < depth && n < 256; i++) {
        if (x->path[i].key)
            n += (size_t)snprintf(msg + n, sizeof msg - n, "%s%s", i ? "." : "",
                                  show(key, sizeof key, x->path[i].key, 0));
        else
            n += (size_t)snprintf(msg + n, sizeof msg - n, "[%zu]", x->path[i].index);
    }
    if (n)
        n += (size_t)snprintf(msg + n, sizeof msg - n, ": ");
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - n, fmt, ap);
    va_end(ap);

    if (x->num_problems == x->cap_problems) {
        size_t cap = x->cap_problems ? 2 * x->cap_problems : 8;
        problem_t *np = realloc(x->problems, cap * sizeof *np);
        if (!np) {
            x->oom = 1;
            return;
        }
        x->problems = np;
        x->cap_problems = cap;
    }
    p = &x->problems[x->num_problems];
    p->msg = strdup(msg);
    if (!p->msg) {
        x->oom = 1;
        return;
    }
    p->seq = x->num_problems++;
    td_config_locate(x->text, x->len, x->path, depth, at == AT_KEY, &p->line, &p->col);
}

static int by_position(const void *a, const void *b) {
    const problem_t *p = a, *q = b;

    if (p->line != q->line)
        return p->line < q->line ? -1 : 1;
    if (p->col != q->col)
        return p->col < q->col ? -1 : 1;
    return p->seq < q->seq ? -1 : p->seq > q->seq;
}

/* Prints the problems in document order and frees them. */
static void flush(ctx_t *x, const char *name, FILE *errs) {
    size_t n = x->num_problems;

    qsort(x->problems, n, sizeof *x->problems, by_position);
    for (size_t i = 0; i < n; i++) {
        if (errs)
            fprintf(errs, "%s:%d:%d: %s\n", name, x->problems[i].line, x->problems[i].col,
                    x->problems[i].msg);
        free(x->problems[i].msg);
    }
    if (errs && x->dropped)
        fprintf(errs, "%s:%d:%d: %zu more problems not shown\n", name, x->problems[n - 1].line,
                x->problems[n - 1].col, x->dropped);
    if (errs && x->oom)
        fprintf(errs, "%s:0:0: out of memory\n", name);
    free(x->problems);
    x->problems = NULL;
}

/* ---- suggestions ---- */

static int lower(int ch) {
    return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions), ignoring ASCII
 * case; strings longer than 63 bytes are "far". */
static size_t distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), d[64][64];

    if (la > 63 || lb > 63)
        return (size_t)-1;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = lower(a[i - 1]) != lower(b[j - 1]), best = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
                lower(a[i - 2]) == lower(b[j - 1]) && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

/* The candidate closest to `s`, when close enough to be a likely typo; else NULL. */
static const char *suggest(const char *s, const char *const *names) {
    const char *best = NULL;
    size_t best_d = (size_t)-1;

    for (; *names; names++) {
        size_t d = distance(s, *names), allowed = strlen(*names) >= 5 ? 2 : 1;
        if (d <= allowed && d < best_d) {
            best = *names;
            best_d = d;
        }
    }
    return best;
}

static void join(char *out, size_t size, const char *const *names) {
    size_t n = 0;

    out[0] = '\0';
    for (size_t i = 0; names[i] && n < size; i++)
        n += (size_t)snprintf(out + n, size - n, "%s%s", i ? ", " : "", names[i]);
}

/* ---- schema helpers: one per kind of member ---- */

/* Every key of `obj` must be one of `valid` (NULL-terminated). */
static void check_keys(ctx_t *x, json_t *obj, const char *const *valid) {
    for (void *it = json_object_iter(obj); it; it = json_object_iter_next(obj, it)) {
        const char *key = json_object_iter_key(it), *hint;
        const char *const *v;
        char list[256];

        for (v = valid; *v && strcmp(*v, key) != 0; v++)
            ;
        if (*v)
            continue;
        push_key(x, key);
        hint = suggest(key, valid);
        if (hint) {
            report(x, AT_KEY, "unknown key, did you mean \"%s\"?", hint);
        } else {
            join(list, sizeof list, valid);
            report(x, AT_KEY, "unknown key (valid keys: %s)", list);
        }
        pop(x);
    }
}

/* The member `key` of `obj`, or NULL (reported when required). */
static json_t *member(ctx_t *x, json_t *obj, const char *key, int required) {
    json_t *v = json_object_get(obj, key);

    if (!v && required)
        report(x, AT_VALUE, "missing required key \"%s\"", key);
    return v;
}

/* The value at the current path must be an object. */
static int is_object(ctx_t *x, json_t *v) {
    char d[128];

    if (json_is_object(v))
        return 1;
    report(x, AT_VALUE, "expected an object, got %s", describe(v, d, sizeof d));
    return 0;
}

static json_t *get_object(ctx_t *x, json_t *obj, const char *key, int required) {
    json_t *v = member(x, obj, key, required);
    int ok;

    if (!v)
        return NULL;
    push_key(x, key);
    ok = is_object(x, v);
    pop(x);
    return ok ? v : NULL;
}

/* A required array of 1..max `what`s. */
static json_t *get_array(ctx_t *x, json_t *obj, const char *key, const char *what, size_t max) {
    json_t *v = member(x, obj, key, 1);
    char d[128];
    int ok = 0;

    if (!v)
        return NULL;
    push_key(x, key);
    if (!json_is_array(v))
        report(x, AT_VALUE, "expected an array of %ss, got %s", what, describe(v, d, sizeof d));
    else if (json_array_size(v) == 0)
        report(x, AT_VALUE, "at least one %s is required", what);
    else if (json_array_size(v) > max)
        report(x, AT_VALUE, "%zu %ss, at most %zu are allowed", json_array_size(v), what, max);
    else
        ok = 1;
    pop(x);
    return ok ? v : NULL;
}

/* The value at the current path must be an integer in lo..hi. */
static int int_value(ctx_t *x, json_t *v, int lo, int hi, int *out) {
    char d[128];
    json_int_t i;

    if (!json_is_integer(v)) {
        report(x, AT_VALUE, "expected an integer %d..%d, got %s", lo, hi, describe(v, d, sizeof d));
        return 0;
    }
    i = json_integer_value(v);
    if (i < lo || i > hi) {
        report(x, AT_VALUE, "%" JSON_INTEGER_FORMAT " is out of range (%d..%d)", i, lo, hi);
        return 0;
    }
    *out = (int)i;
    return 1;
}

static int get_int(ctx_t *x, json_t *obj, const char *key, int required, int lo, int hi, int *out) {
    json_t *v = member(x, obj, key, required);
    int ok;

    if (!v)
        return 0;
    push_key(x, key);
    ok = int_value(x, v, lo, hi, out);
    pop(x);
    return ok;
}

/* Optional integer members described by a table: the key, where the field is, its range. */
typedef struct int_field_s {
    const char *key;
    size_t offset;
    int lo, hi;
} int_field_t;

static void get_ints(ctx_t *x, json_t *obj, void *base, const int_field_t *f, size_t n) {
    for (size_t i = 0; i < n; i++)
        get_int(x, obj, f[i].key, 0, f[i].lo, f[i].hi, (int *)((char *)base + f[i].offset));
}

static void get_bool(ctx_t *x, json_t *obj, const char *key, int *out) {
    json_t *v = member(x, obj, key, 0);
    char d[128];

    if (!v)
        return;
    push_key(x, key);
    if (json_is_boolean(v))
        *out = json_is_true(v);
    else
        report(x, AT_VALUE, "expected true or false, got %s", describe(v, d, sizeof d));
    pop(x);
}

/* A string checker returns NULL when `s` is valid, else the rest of the sentence
 * "VALUE <is not a valid ... (what would be)>". */
typedef const char *check_fn(const char *s);

/* A string member that fits in out[cap] and passes `check` (may be NULL). With `hide` the value
 * is kept out of messages (a token). Returns 1 when stored. */
static int get_str(ctx_t *x, json_t *obj, const char *key, int required, char *out, size_t cap,
                   check_fn *check, int hide) {
    json_t *v = member(x, obj, key, required);
    const char *s, *bad = NULL;
    char d[128], q[96];

    if (!v)
        return 0;
    push_key(x, key);
    if (!json_is_string(v)) {
        report(x, AT_VALUE, "expected a string, got %s", describe(v, d, sizeof d));
        goto fail;
    }
    s = json_string_value(v);
    if (json_string_length(v) >= cap) {
        report(x, AT_VALUE, "%s is too long (at most %zu bytes)",
               hide ? "the value" : show(q, sizeof q, s, 1), cap - 1);
        goto fail;
    }
    if (check && (bad = check(s)) != NULL) {
        report(x, AT_VALUE, "%s %s", hide ? "the value" : show(q, sizeof q, s, 1), bad);
        goto fail;
    }
    memcpy(out, s, json_string_length(v) + 1);
    pop(x);
    return 1;
fail:
    pop(x);
    return 0;
}

/* A string member that must be one of `names` (NULL-terminated); stores its index. */
static int get_enum(ctx_t *x, json_t *obj, const char *key, const char *const *names, int *out) {
    json_t *v = member(x, obj, key, 0);
    const char *s, *hint;
    char d[128], q[96], list[128];
    int ok = 0;

    if (!v)
        return 0;
    push_key(x, key);
    join(list, sizeof list, names);
    if (!json_is_string(v)) {
        report(x, AT_VALUE, "expected one of %s, got %s", list, describe(v, d, sizeof d));
        goto out;
    }
    s = json_string_value(v);
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], s) == 0) {
            *out = i;
            ok = 1;
            goto out;
        }
    }
    hint = suggest(s, names);
    if (hint)
        report(x, AT_VALUE, "%s is not one of %s; did you mean \"%s\"?", show(q, sizeof q, s, 1),
               list, hint);
    else
        report(x, AT_VALUE, "%s is not one of %s", show(q, sizeof q, s, 1), list);
out:
    pop(x);
    return ok;
}

static int get_addr(ctx_t *x, json_t *obj, const char *key, td_addr_t *out) {
    char s[256], q[96];

    if (!get_str(x, obj, key, 1, s, sizeof s, NULL, 0))
        return 0;
    if (td_addr_parse(s, out) == 0)
        return 1;
    push_key(x, key);
    report(x, AT_VALUE, "%s is not a valid address (IP:port or [IPv6]:port, port 1..65535)",
           show(q, sizeof q, s, 1));
    pop(x);
    return 0;
}

static int addr_eq(const td_addr_t *a, const td_addr_t *b) {
    return a->salen && a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/* ---- string checkers ---- */

static int is_alnum(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
}

static int is_visible(const char *s) {
    for (; *s; s++)
        if (*s < 0x21 || *s > 0x7E)
            return 0;
    return 1;
}

static const char *check_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || *p == '_' || *p == '-')
        p++;
    return *s && !*p ? NULL : "is not a valid name (1 to 63 of A-Z a-z 0-9 _ -)";
}

/* RFC 6265 §4.1.1: a cookie name is an RFC 9110 token. */
static const char *check_cookie_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || (*p && strchr("!#$%&'*+-.^_`|~", *p)))
        p++;
    return *s && !*p ? NULL : "is not a valid cookie name (an RFC 6265 token, e.g. TDSTICKY)";
}

static const char *check_header_name(const char *s) {
    const char *p = s;

    while (is_alnum(*p) || (*p && strchr("!#$%&'*+-.^_`|~", *p)))
        p++;
    if (!*s || *p)
        return "is not a valid header name (an RFC 9110 token, e.g. X-TD-Backend)";
    static const char *const reserved[] = {
        "host",    "content-length", "transfer-encoding", "connection",        "upgrade",
        "te",      "trailer",        "expect",            "cookie",            "authorization",
        "keep-alive", "proxy-connection", "x-forwarded-for", "x-forwarded-proto",
        "x-forwarded-host", NULL};
    for (size_t i = 0; reserved[i]; i++)
        if (strcasecmp(s, reserved[i]) == 0)
            return "is a header td or the backend needs (choose e.g. X-TD-Backend)";
    return NULL;
}

/* An access log must be "stderr" or a file td can append to (its folder exists and is
 * writable), so a typo shows at check time rather than at the first request. */
static const char *check_log_path(const char *s) {
    if (strcmp(s, "stderr") == 0)
        return NULL;
    if (s[0] != '/')
        return "must be \"stderr\" or an absolute file path";
    char dir[TD_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", s);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    if (access(s, W_OK) == 0 || (errno == ENOENT && access(dir, W_OK | X_OK) == 0))
        return NULL;
    return "cannot be written (missing folder or no permission)";
}

/* A pid file is written at start (temp file + rename in its folder): the folder must exist and
 * be writable, so `td -t` catches a path that start-up would refuse. */
static const char *check_pid_path(const char *s) {
    if (s[0] != '/')
        return "must be an absolute file path, e.g. \"/run/td.pid\"";
    char dir[TD_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", s);
    char *slash = strrchr(dir, '/');
    if (!slash[1])
        return "must name a file, not a folder";
    if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    if (access(dir, W_OK | X_OK) == 0)
        return NULL;
    return errno == ENOENT ? "cannot be written: its folder does not exist"
                           : "cannot be written: no permission in its folder";
}

static const char *check_token(const char *s) {
    return is_visible(s) ? NULL : "is not a valid token (printable ASCII without spaces)";
}

static const char *check_path(const char *s) {
    return s[0] == '/' && is_visible(s)
               ? NULL
               : "is not a valid path (starts with \"/\", printable ASCII without spaces)";
}

static int is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

/* One item of an expect_status list at p: its length (3), or 0. */
static int status_item(const char *p) {
    if (p[0] >= '1' && p[0] <= '5' && lower(p[1]) == 'x' && lower(p[2]) == 'x')
        return 3;
    if (p[0] >= '1' && p[0] <= '5' && is_digit(p[1]) && is_digit(p[2]))
        return 3;
    return 0;
}

static const char *check_status(const char *s) {
    static const char *const bad =
        "is not a valid status list (classes like 2xx and codes 100..599, comma-separated)";

    for (;;) {
        if (!status_item(s))
            return bad;
        s += 3;
        if (*s == '\0')
            return NULL;
        if (*s++ != ',')
            return bad;
    }
}

int td_config_status_expected(const char *expect_status, int status) {
    for (const char *p = expect_status; status_item(p); p += 4) {
        int cls = p[0] - '0';
        if (lower(p[1]) == 'x' ? status / 100 == cls
                               : status == cls * 100 + (p[1] - '0') * 10 + (p[2] - '0'))
            return 1;
        if (p[3] != ',')
            break;
    }
    return 0;
}

/* ---- the schema ---- */

static const char *const root_keys[] = {"listeners", "workers",      "admin",    "routing",
                                        "backends",  "health_check", "timeouts", "passive",
                                        "access_log", "pid_file",
                                        "request_buffering", NULL};
static const char *const passive_keys[] = {"failures", "eject_ms", "max_eject_ms", NULL};
static const char *const buffering_keys[] = {"max_bytes", NULL};
static const char *const listener_keys[] = {"address", "tls", "redirect_https", "https_port",
                                            NULL};
static const char *const listener_tls_keys[] = {"certificates", "min_version", NULL};
static const char *const cert_keys[] = {"cert", "key", NULL};
static const char *const tls_versions[] = {"1.2", "1.3", NULL};
static const char *const backend_tls_keys[] = {"verify", "ca", "sni", NULL};
static const char *const admin_keys[] = {"address", "token", NULL};
static const char *const routing_keys[] = {"method", "cookie", "preview", "failback_ms", NULL};
static const char *const preview_keys[] = {"header", "token", NULL};
static const char *const cookie_keys[] = {"name",      "max_age_s", "secret", "http_only",
                                          "same_site", "secure",    NULL};
static const char *const same_site_names[] = {"Lax", "Strict", "None", NULL};
static const char *const backend_keys[] = {"name",         "weight", "servers",
                                           "health_check", "tls",    NULL};
static const char *const server_keys[] = {"address", "weight", NULL};
static const char *const health_keys[] = {"type",         "path", "expect_status", "interval_ms",
                                          "timeout_ms",   "fall", "rise",          "port",
                                          "default_down", "expect_body", NULL};
static const char *const timeout_keys[] = {
    "connect_ms",        "client_header_ms", "upstream_response_ms",
    "keepalive_idle_ms", "drain_ms",         "client_send_ms", NULL};
static const char *const method_names[] = {"round_robin", "sticky", "failover", NULL};
static const char *const health_types[] = {"tcp", "http", "ssl_hello", NULL};

#define HF(f) offsetof(td_config_health_t, f)
static const int_field_t health_ints[] = {
    {"interval_ms", HF(interval_ms), 1, MAX_MS},
    {"timeout_ms", HF(timeout_ms), 1, MAX_MS},
    {"fall", HF(fall), 1, 100},
    {"rise", HF(rise), 1, 100},
    {"port", HF(port), 0, 65535},
};
#undef HF

#define PF(f) offsetof(td_config_passive_t, f)
static const int_field_t passive_ints[] = {
    {"failures", PF(failures), 1, 1000},
    {"eject_ms", PF(eject_ms), 1, MAX_MS},
    {"max_eject_ms", PF(max_eject_ms), 1, MAX_MS},
};
#undef PF

#define RBF(f) offsetof(td_config_buffering_t, f)
static const int_field_t buffering_ints[] = {
    {"max_bytes", RBF(max_bytes), 0, 1024 * 1024},
};
#undef RBF

#define TF(f) offsetof(td_config_timeouts_t, f)
static const int_field_t timeout_ints[] = {
    {"connect_ms", TF(connect_ms), 1, MAX_MS},
    {"client_header_ms", TF(client_header_ms), 1, MAX_MS},
    {"upstream_response_ms", TF(upstream_response_ms), 1, MAX_MS},
    {"keepalive_idle_ms", TF(keepalive_idle_ms), 1, MAX_MS},
    {"drain_ms", TF(drain_ms), 0, MAX_MS},
    {"client_send_ms", TF(client_send_ms), 1, MAX_MS},
};
#undef TF

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

static void set_defaults(td_config_t *c) {
    c->workers_auto = 1;
    c->method = TD_METHOD_ROUND_ROBIN;
    c->failback_ms = -1;
    strcpy(c->cookie_name, "TDSTICKY");
    strcpy(c->preview_header, "X-TD-Backend");
    c->cookie_max_age_s = 3600;
    c->cookie_http_only = 1;
    c->health = (td_config_health_t){.type = "http",
                                     .path = "/",
                                     .expect_status = "2xx,3xx",
                                     .interval_ms = 3000,
                                     .timeout_ms = 1000,
                                     .fall = 3,
                                     .rise = 3};
    c->timeouts = (td_config_timeouts_t){5000, 10000, 60000, 75000, 30000, 60000};
    c->passive = (td_config_passive_t){3, 5000, 300000};
    c->request_buffering.max_bytes = 65536;
}

/* Reports, at the current path, an address already used by one of the first `n` of `others`
 * (whose path is `what`). */
static void check_unique_addr(ctx_t *x, const td_addr_t *a, const td_addr_t *others, size_t n,
                              size_t stride, const char *what) {
    for (size_t j = 0; j < n; j++) {
        const td_addr_t *o = (const td_addr_t *)((const char *)others + j * stride);
        if (addr_eq(a, o)) {
            report(x, AT_VALUE, "\"%s\" is already used by %s[%zu]", a->text, what, j);
            return;
        }
    }
}

/* A certificate/key pair: both files must load, match and be in date; the message names the
 * file and stands at the "cert" value. */
static void parse_cert(ctx_t *x, json_t *o, td_config_cert_t *cert) {
    if (!is_object(x, o))
        return;
    check_keys(x, o, cert_keys);
    int ok = get_str(x, o, "cert", 1, cert->cert, sizeof cert->cert, NULL, 0);
    ok &= get_str(x, o, "key", 1, cert->key, sizeof cert->key, NULL, 0);
    char err[512];
    if (ok && td_tls_check_pair(cert->cert, cert->key, err, sizeof err) < 0) {
        push_key(x, strstr(err, cert->key) == err ? "key" : "cert");
        report(x, AT_VALUE, "%s", err);
        pop(x);
    }
}

static void parse_listener_tls(ctx_t *x, json_t *l, td_config_listener_t *li) {
    int v;
    li->min_version = TLS1_2_VERSION;
    get_bool(x, l, "redirect_https", &li->redirect_https);
    get_int(x, l, "https_port", 0, 0, 65535, &li->https_port);
    json_t *t = get_object(x, l, "tls", 0);
    if (!t)
        return;
    li->tls = 1;
    push_key(x, "tls");
    check_keys(x, t, listener_tls_keys);
    if (get_enum(x, t, "min_version", tls_versions, &v))
        li->min_version = v == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    json_t *arr = get_array(x, t, "certificates", "certificate", TD_CONFIG_MAX_CERTS);
    size_t n = arr ? json_array_size(arr) : 0;
    push_key(x, "certificates");
    for (size_t i = 0; i < n; i++) {
        push_index(x, i);
        parse_cert(x, json_array_get(arr, i), &li->certs[i]);
        pop(x);
    }
    li->num_certs = n;
    pop(x);
    pop(x);
    if (li->redirect_https) {
        push_key(x, "redirect_https");
        report(x, AT_KEY, "a TLS listener cannot redirect to https (it is https)");
        pop(x);
    }
}

static void parse_backend_tls(ctx_t *x, json_t *b, td_config_backend_t *be) {
    json_t *t = get_object(x, b, "tls", 0);
    if (!t)
        return;
    be->tls = 1;
    be->tls_verify = 1;
    push_key(x, "tls");
    check_keys(x, t, backend_tls_keys);
    get_bool(x, t, "verify", &be->tls_verify);
    if (get_str(x, t, "ca", 0, be->tls_ca, sizeof be->tls_ca, NULL, 0)) {
        char err[512];
        if (td_tls_check_ca(be->tls_ca, err, sizeof err) < 0) {
            push_key(x, "ca");
            report(x, AT_VALUE, "%s", err);
            pop(x);
        }
    }
    get_str(x, t, "sni", 0, be->tls_sni, sizeof be->tls_sni, check_token, 0);
    pop(x);
}

static void parse_listeners(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *arr = get_array(x, root, "listeners", "listener", TD_CONFIG_MAX_LISTENERS);
    size_t n = arr ? json_array_size(arr) : 0;

    if (!n)
        return;
    c->listeners = calloc(n, sizeof *c->listeners);
    if (!c->listeners) {
        x->oom = 1;
        return;
    }
    c->num_listeners = n;
    push_key(x, "listeners");
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(arr, i);
        push_index(x, i);
        if (is_object(x, l)) {
            check_keys(x, l, listener_keys);
            if (get_addr(x, l, "address", &c->listeners[i].address)) {
                push_key(x, "address");
                check_unique_addr(x, &c->listeners[i].address, &c->listeners[0].address, i,
                                  sizeof(td_config_listener_t), "listeners");
                pop(x);
            }
            parse_listener_tls(x, l, &c->listeners[i]);
        }
        pop(x);
    }
    pop(x);
}

static void parse_workers(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *v = member(x, root, "workers", 0);
    char d[128];

    if (v) {
        push_key(x, "workers");
        if (json_is_integer(v)) {
            if (int_value(x, v, 1, 64, &c->workers))
                c->workers_auto = 0;
        } else if (!json_is_string(v) || strcmp(json_string_value(v), "auto") != 0) {
            report(x, AT_VALUE, "expected \"auto\" or an integer 1..64, got %s",
                   describe(v, d, sizeof d));
        }
        pop(x);
    }
    if (c->workers_auto)
        c->workers = online_cpus();
}

static void parse_admin(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *a = get_object(x, root, "admin", 0);

    if (!a)
        return;
    c->has_admin = 1;
    push_key(x, "admin");
    check_keys(x, a, admin_keys);
    if (get_addr(x, a, "address", &c->admin_address)) {
        push_key(x, "address");
        check_unique_addr(x, &c->admin_address, &c->listeners[0].address, c->num_listeners,
                          sizeof(td_config_listener_t), "listeners");
        pop(x);
    }
    get_str(x, a, "token", 0, c->admin_token, sizeof c->admin_token, check_token, 1);
    pop(x);
}

/* routing.cookie's http_only, same_site and secure (at the current path, "routing.cookie").
 * SameSite=None without Secure is refused by browsers, so a config that would send it is an
 * error at same_site; listeners must have been parsed. */
static void parse_cookie_attributes(ctx_t *x, json_t *k, td_config_t *c) {
    char d[128];
    int same_site;
    get_bool(x, k, "http_only", &c->cookie_http_only);
    int have_same_site = get_enum(x, k, "same_site", same_site_names, &same_site);
    if (have_same_site)
        c->cookie_same_site = (td_same_site_t)same_site;
    json_t *v = member(x, k, "secure", 0);
    if (v) {
        push_key(x, "secure");
        if (json_is_boolean(v))
            c->cookie_secure = json_is_true(v) ? TD_COOKIE_SECURE_ALWAYS : TD_COOKIE_SECURE_NEVER;
        else if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0)
            c->cookie_secure = TD_COOKIE_SECURE_AUTO;
        else
            report(x, AT_VALUE, "expected \"auto\", true or false, got %s",
                   describe(v, d, sizeof d));
        pop(x);
    }
    if (!have_same_site || c->cookie_same_site != TD_SAME_SITE_NONE)
        return;
    push_key(x, "same_site");
    if (c->cookie_secure == TD_COOKIE_SECURE_NEVER) {
        report(x, AT_VALUE, "\"None\" needs the Secure attribute (browsers refuse SameSite=None "
                            "without it), but secure is false");
    } else if (c->cookie_secure == TD_COOKIE_SECURE_AUTO) {
        for (size_t i = 0; i < c->num_listeners; i++)
            if (!c->listeners[i].tls && !c->listeners[i].redirect_https) {
                report(x, AT_VALUE,
                       "\"None\" needs the Secure attribute, which secure \"auto\" sets only "
                       "on TLS listeners, and listeners[%zu] is plain HTTP: set secure to true, "
                       "or use \"Lax\"",
                       i);
                break;
            }
    }
    pop(x);
}

static void parse_routing(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *r = get_object(x, root, "routing", 0), *k;
    int method;

    if (!r)
        return;
    push_key(x, "routing");
    check_keys(x, r, routing_keys);
    if (get_enum(x, r, "method", method_names, &method))
        c->method = (td_method_t)method;
    get_int(x, r, "failback_ms", 0, 0, 86400000, &c->failback_ms);
    k = get_object(x, r, "cookie", 0);
    if (k) {
        push_key(x, "cookie");
        check_keys(x, k, cookie_keys);
        get_str(x, k, "name", 0, c->cookie_name, sizeof c->cookie_name, check_cookie_name, 0);
        get_int(x, k, "max_age_s", 0, 1, MAX_COOKIE_AGE, &c->cookie_max_age_s);
        get_str(x, k, "secret", 0, c->cookie_secret, sizeof c->cookie_secret, NULL, 1);
        parse_cookie_attributes(x, k, c);
        pop(x);
    }
    k = get_object(x, r, "preview", 0);
    if (k) {
        push_key(x, "preview");
        check_keys(x, k, preview_keys);
        get_str(x, k, "header", 0, c->preview_header, sizeof c->preview_header,
                check_header_name, 0);
        get_str(x, k, "token", 1, c->preview_token, sizeof c->preview_token, check_token, 1);
        pop(x);
    }
    pop(x);
}

/* Reads the keys of a health_check object at `h` (the current path) over the values in `hc`. */
static void parse_health_fields(ctx_t *x, json_t *h, td_config_health_t *hc) {
    int type;

    check_keys(x, h, health_keys);
    if (get_enum(x, h, "type", health_types, &type))
        strcpy(hc->type, health_types[type]);
    get_str(x, h, "path", 0, hc->path, sizeof hc->path, check_path, 0);
    get_str(x, h, "expect_status", 0, hc->expect_status, sizeof hc->expect_status, check_status,
            0);
    get_str(x, h, "expect_body", 0, hc->expect_body, sizeof hc->expect_body, NULL, 0);
    get_ints(x, h, hc, health_ints, COUNT(health_ints));
    get_bool(x, h, "default_down", &hc->default_down);
}

static void parse_servers(ctx_t *x, json_t *b, td_config_backend_t *be) {
    json_t *arr = get_array(x, b, "servers", "server", TD_CONFIG_MAX_SERVERS);
    size_t n = arr ? json_array_size(arr) : 0;

    if (!n)
        return;
    be->servers = calloc(n, sizeof *be->servers);
    if (!be->servers) {
        x->oom = 1;
        return;
    }
    be->num_servers = n;
    push_key(x, "servers");
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(arr, i);
        td_config_server_t *sv = &be->servers[i];
        push_index(x, i);
        sv->weight = 1;
        if (is_object(x, s)) {
            check_keys(x, s, server_keys);
            if (get_addr(x, s, "address", &sv->address)) {
                push_key(x, "address");
                check_unique_addr(x, &sv->address, &be->servers[0].address, i,
                                  sizeof(td_config_server_t), "servers");
                pop(x);
            }
            get_int(x, s, "weight", 0, 0, 100, &sv->weight);
        }
        pop(x);
    }
    pop(x);
}

static void parse_backends(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *arr = get_array(x, root, "backends", "backend", TD_CONFIG_MAX_BACKENDS);
    size_t n = arr ? json_array_size(arr) : 0;

    if (!n)
        return;
    c->backends = calloc(n, sizeof *c->backends);
    if (!c->backends) {
        x->oom = 1;
        return;
    }
    c->num_backends = n;
    push_key(x, "backends");
    for (size_t i = 0; i < n; i++) {
        json_t *b = json_array_get(arr, i);
        td_config_backend_t *be = &c->backends[i];
        push_index(x, i);
        if (is_object(x, b)) {
            check_keys(x, b, backend_keys);
            if (get_str(x, b, "name", 1, be->name, sizeof be->name, check_name, 0)) {
                for (size_t j = 0; j < i; j++) {
                    if (strcmp(c->backends[j].name, be->name) == 0) {
                        push_key(x, "name");
                        report(x, AT_VALUE, "\"%s\" is already the name of backends[%zu]", be->name,
                               j);
                        pop(x);
                        break;
                    }
                }
            }
            get_int(x, b, "weight", 1, 0, 100, &be->weight);
            parse_servers(x, b, be);
            parse_backend_tls(x, b, be);
            be->health = c->health;
            json_t *h = get_object(x, b, "health_check", 0);
            if (h) {
                be->health_override = 1;
                push_key(x, "health_check");
                parse_health_fields(x, h, &be->health);
                pop(x);
            }
        }
        pop(x);
    }
    /* Every weight at 0 would answer 503 to every request (in failover too: there would be no
     * primary), so it is refused like the API's ratio; reported once the weights themselves are
     * fine. */
    size_t weighted = 0;
    for (size_t i = 0; i < n; i++)
        weighted += c->backends[i].weight > 0;
    if (!weighted && !x->num_problems)
        report(x, AT_KEY,
               "every backend has weight 0, so every request would get 503; give at least one "
               "backend a weight above 0");
    pop(x);
}

static void parse_health(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *h = get_object(x, root, "health_check", 0);

    if (!h)
        return;
    c->has_health = 1;
    push_key(x, "health_check");
    parse_health_fields(x, h, &c->health);
    pop(x);
}

static void parse_passive(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *p = get_object(x, root, "passive", 0);

    if (!p)
        return;
    push_key(x, "passive");
    check_keys(x, p, passive_keys);
    get_ints(x, p, &c->passive, passive_ints, COUNT(passive_ints));
    pop(x);
}

static void parse_request_buffering(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *b = get_object(x, root, "request_buffering", 0);

    if (!b)
        return;
    push_key(x, "request_buffering");
    check_keys(x, b, buffering_keys);
    get_ints(x, b, &c->request_buffering, buffering_ints, COUNT(buffering_ints));
    pop(x);
}

static void parse_timeouts(ctx_t *x, json_t *root, td_config_t *c) {
    json_t *t = get_object(x, root, "timeouts", 0);

    if (!t)
        return;
    push_key(x, "timeouts");
    check_keys(x, t, timeout_keys);
    get_ints(x, t, &c->timeouts, timeout_ints, COUNT(timeout_ints));
    pop(x);
}

/* Collapses a jansson message to one line. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            *s = '?';
}

td_config_t *td_config_parse(const char *text, size_t len, const char *name, FILE *errs) {
    ctx_t x = {.text = text, .len = len};
    json_error_t jerr;
    json_t *root;
    td_config_t *c;

    if (!name)
        name = "config";
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        one_line(jerr.text);
        if (errs)
            fprintf(errs, "%s:%d:%d: %s\n", name, jerr.line < 1 ? 1 : jerr.line,
                    jerr.column < 1 ? 1 : jerr.column, jerr.text);
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        x.oom = 1;
    } else {
        set_defaults(c);
        if (is_object(&x, root)) {
            check_keys(&x, root, root_keys);
            parse_listeners(&x, root, c);
            parse_workers(&x, root, c);
            parse_admin(&x, root, c);
            parse_routing(&x, root, c);
            parse_health(&x, root, c); /* before backends: their overrides start from it */
            parse_backends(&x, root, c);
            parse_timeouts(&x, root, c);
            parse_passive(&x, root, c);
            parse_request_buffering(&x, root, c);
            get_str(&x, root, "access_log", 0, c->access_log, sizeof c->access_log,
                    check_log_path, 0);
            get_str(&x, root, "pid_file", 0, c->pid_file, sizeof c->pid_file, check_pid_path, 0);
        }
    }
    json_decref(root);
    if (x.num_problems || x.oom) {
        flush(&x, name, errs);
        td_config_free(c);
        return NULL;
    }
    free(x.problems);
    return c;
}

td_config_t *td_config_load(const char *path, FILE *errs) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    td_config_t *c = NULL;
    const char *why = NULL;

    if (!f) {
        why = strerror(errno);
        goto out;
    }
    for (;;) {
        size_t got;
        if (len == cap) {
            char *nb;
            if (cap >= MAX_FILE) {
                why = "larger than 16 MiB";
                goto out;
            }
            cap = cap ? 2 * cap : 16384;
            nb = realloc(buf, cap);
            if (!nb) {
                why = strerror(ENOMEM);
                goto out;
            }
            buf = nb;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                why = strerror(errno ? errno : EIO);
            break;
        }
    }
    if (!why)
        c = td_config_parse(buf, len, path, errs);
out:
    if (why && errs)
        fprintf(errs, "%s:0:0: cannot read: %s\n", path, why);
    if (f)
        fclose(f);
    free(buf);
    return c;
}

static const char demo_json[] =
    "{\n"
    "  \"listeners\": [{\"address\": \"127.0.0.1:8080\"}],\n"
    "  \"workers\": \"auto\",\n"
    "  \"admin\": {\"address\": \"127.0.0.1:9090\"},\n"
    "  \"routing\": {\"method\": \"round_robin\"},\n"
    "  \"backends\": [\n"
    "    {\"name\": \"blue\", \"weight\": 50, \"servers\": [{\"address\": \"127.0.0.1:9001\"}]},\n"
    "    {\"name\": \"green\", \"weight\": 50, \"servers\": [{\"address\": \"127.0.0.1:9002\"}]}\n"
    "  ],\n"
    "  \"health_check\": {}\n"
    "}\n";

td_config_t *td_config_demo(void) {
    return td_config_parse(demo_json, sizeof demo_json - 1, "(demo)", NULL);
}

/* malloc'd copy of p[0..n) (never malloc(0), so NULL always means out of memory). */
static void *copy(const void *p, size_t n) {
    void *q = malloc(n ? n : 1);

    if (q && n)
        memcpy(q, p, n);
    return q;
}

td_config_t *td_config_dup(const td_config_t *c) {
    td_config_t *d = malloc(sizeof *d);

    if (!d)
        return NULL;
    *d = *c;
    d->listeners = copy(c->listeners, c->num_listeners * sizeof *c->listeners);
    d->backends = copy(c->backends, c->num_backends * sizeof *c->backends);
    if (!d->listeners || !d->backends) {
        d->num_backends = 0;
        goto fail;
    }
    for (size_t i = 0; i < c->num_backends; i++) {
        td_config_backend_t *b = &d->backends[i];
        b->servers = copy(b->servers, b->num_servers * sizeof *b->servers);
        if (!b->servers) {
            d->num_backends = i; /* free only the copies made so far */
            goto fail;
        }
    }
    return d;
fail:
    td_config_free(d);
    return NULL;
}

void td_config_free(td_config_t *c) {
    if (!c)
        return;
    for (size_t i = 0; i < c->num_backends; i++)
        free(c->backends[i].servers);
    free(c->backends);
    free(c->listeners);
    free(c);
}

int td_addr_parse(const char *text, td_addr_t *out) {
    td_addr_t a;
    char host[64];
    const char *colon, *port;
    size_t len = strlen(text), hlen;
    long p = 0;

    if (len == 0 || len >= sizeof a.text)
        return TD_EINVAL;
    memset(&a, 0, sizeof a);
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return TD_EINVAL;
        hlen = (size_t)(close - text - 1);
        memcpy(host, text + 1, hlen);
        port = close + 2;
    } else {
        colon = strrchr(text, ':');
        if (!colon)
            return TD_EINVAL;
        hlen = (size_t)(colon - text);
        memcpy(host, text, hlen);
        port = colon + 1;
    }
    host[hlen] = '\0';
    if (!*port || strlen(port) > 5)
        return TD_EINVAL;
    for (const char *q = port; *q; q++) {
        if (!is_digit(*q))
            return TD_EINVAL;
        p = p * 10 + (*q - '0');
    }
    if (p < 1 || p > 65535)
        return TD_EINVAL;
    if (text[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.sa;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return TD_EINVAL;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)p);
        a.salen = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a.sa;
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return TD_EINVAL;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)p);
        a.salen = sizeof *s4;
    }
    memcpy(a.text, text, len + 1);
    *out = a;
    return 0;
}

const char *td_method_name(td_method_t m) {
    return (unsigned)m < COUNT(method_names) - 1 ? method_names[m] : "unknown";
}

int td_method_parse(const char *s, td_method_t *out) {
    for (size_t i = 0; method_names[i]; i++) {
        if (strcmp(s, method_names[i]) == 0) {
            *out = (td_method_t)i;
            return 0;
        }
    }
    return TD_EINVAL;
}
