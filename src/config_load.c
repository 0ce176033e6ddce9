/* Loading the JSON configuration: the file read whole, parsed by jansson, then walked once along
 * the schema (config_schema.c), filling a td_config_t and collecting every problem instead of
 * stopping at the first (config_report.c); the cross-field checks (config_check.c) run where the
 * schema names them. */
#include "td/config.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "td/common-t.h"
#include "td/config_check.h"
#include "td/config_report.h"
#include "td/config_schema.h"

#define MAX_FILE (16u << 20) /* a config file larger than this is surely a mistake */

/* ---- one member of each kind ---- */

/* "a string \"x\"", "an array", "1.5", "true": what a value was, for "expected ..., got ...". */
static const char *describe(const json_t *v, char *out, size_t size) {
    char q[96];

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        snprintf(out, size, "a string %s", td_config_show(q, sizeof q, json_string_value(v), 1));
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

/* The member `key` of `obj`, or NULL (reported when required). */
static json_t *member(td_config_report_t *x, json_t *obj, const char *key, int required) {
    json_t *v = json_object_get(obj, key);

    if (!v && required)
        td_config_report(x, TD_CONFIG_AT_VALUE, "missing required key \"%s\"", key);
    return v;
}

/* The value at the current path must be an object. */
static int is_object(td_config_report_t *x, json_t *v) {
    char d[128];

    if (json_is_object(v))
        return 1;
    td_config_report(x, TD_CONFIG_AT_VALUE, "expected an object, got %s", describe(v, d, sizeof d));
    return 0;
}

static json_t *get_object(td_config_report_t *x, json_t *obj, const char *key, int required) {
    json_t *v = member(x, obj, key, required);
    int ok;

    if (!v)
        return NULL;
    td_config_report_push_key(x, key);
    ok = is_object(x, v);
    td_config_report_pop(x);
    return ok ? v : NULL;
}

/* A required array of 1..max `what`s. */
static json_t *get_array(td_config_report_t *x, json_t *obj, const char *key, const char *what,
                         size_t max) {
    json_t *v = member(x, obj, key, 1);
    char d[128];
    int ok = 0;

    if (!v)
        return NULL;
    td_config_report_push_key(x, key);
    if (!json_is_array(v))
        td_config_report(x, TD_CONFIG_AT_VALUE, "expected an array of %ss, got %s", what,
                         describe(v, d, sizeof d));
    else if (json_array_size(v) == 0)
        td_config_report(x, TD_CONFIG_AT_VALUE, "at least one %s is required", what);
    else if (json_array_size(v) > max)
        td_config_report(x, TD_CONFIG_AT_VALUE, "%zu %ss, at most %zu are allowed",
                         json_array_size(v), what, max);
    else
        ok = 1;
    td_config_report_pop(x);
    return ok ? v : NULL;
}

/* The value at the current path must be an integer in lo..hi. */
static int int_value(td_config_report_t *x, json_t *v, int lo, int hi, int *out) {
    char d[128];
    json_int_t i;

    if (!json_is_integer(v)) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "expected an integer %d..%d, got %s", lo, hi,
                         describe(v, d, sizeof d));
        return 0;
    }
    i = json_integer_value(v);
    if (i < lo || i > hi) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "%" JSON_INTEGER_FORMAT " is out of range (%d..%d)",
                         i, lo, hi);
        return 0;
    }
    *out = (int)i;
    return 1;
}

static int get_int(td_config_report_t *x, json_t *obj, const char *key, int required, int lo,
                   int hi, int *out) {
    json_t *v = member(x, obj, key, required);
    int ok;

    if (!v)
        return 0;
    td_config_report_push_key(x, key);
    ok = int_value(x, v, lo, hi, out);
    td_config_report_pop(x);
    return ok;
}

static int get_bool(td_config_report_t *x, json_t *obj, const char *key, int *out) {
    json_t *v = member(x, obj, key, 0);
    char d[128];
    int ok = 0;

    if (!v)
        return 0;
    td_config_report_push_key(x, key);
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        ok = 1;
    } else {
        td_config_report(x, TD_CONFIG_AT_VALUE, "expected true or false, got %s",
                         describe(v, d, sizeof d));
    }
    td_config_report_pop(x);
    return ok;
}

/* A string member that fits in out[cap] and passes `check` (may be NULL). With `hide` the value
 * is kept out of messages (a token). Returns 1 when stored. */
static int get_str(td_config_report_t *x, json_t *obj, const char *key, int required, char *out,
                   size_t cap, td_config_check_fn *check, int hide) {
    json_t *v = member(x, obj, key, required);
    const char *s, *bad = NULL;
    char d[128], q[96];

    if (!v)
        return 0;
    td_config_report_push_key(x, key);
    if (!json_is_string(v)) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "expected a string, got %s",
                         describe(v, d, sizeof d));
        goto fail;
    }
    s = json_string_value(v);
    if (json_string_length(v) >= cap) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "%s is too long (at most %zu bytes)",
                         hide ? "the value" : td_config_show(q, sizeof q, s, 1), cap - 1);
        goto fail;
    }
    if (check && (bad = check(s)) != NULL) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "%s %s",
                         hide ? "the value" : td_config_show(q, sizeof q, s, 1), bad);
        goto fail;
    }
    memcpy(out, s, json_string_length(v) + 1);
    td_config_report_pop(x);
    return 1;
fail:
    td_config_report_pop(x);
    return 0;
}

/* A string member that must be one of `names` (NULL-terminated); stores its index. */
static int get_enum(td_config_report_t *x, json_t *obj, const char *key, const char *const *names,
                    int *out) {
    json_t *v = member(x, obj, key, 0);
    const char *s, *hint;
    char d[128], q[96], list[128];
    int ok = 0;

    if (!v)
        return 0;
    td_config_report_push_key(x, key);
    td_config_join(list, sizeof list, names);
    if (!json_is_string(v)) {
        td_config_report(x, TD_CONFIG_AT_VALUE, "expected one of %s, got %s", list,
                         describe(v, d, sizeof d));
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
    hint = td_config_suggest(s, names);
    if (hint)
        td_config_report(x, TD_CONFIG_AT_VALUE, "%s is not one of %s; did you mean \"%s\"?",
                         td_config_show(q, sizeof q, s, 1), list, hint);
    else
        td_config_report(x, TD_CONFIG_AT_VALUE, "%s is not one of %s",
                         td_config_show(q, sizeof q, s, 1), list);
out:
    td_config_report_pop(x);
    return ok;
}

static int get_addr(td_config_report_t *x, json_t *obj, const char *key, td_addr_t *out,
                    int name_ok) {
    char s[256], q[96];

    if (!get_str(x, obj, key, 1, s, sizeof s, NULL, 0))
        return 0;
    if (td_addr_parse(s, out) == 0 || (name_ok && td_addr_parse_name(s, out) == 0))
        return 1;
    td_config_report_push_key(x, key);
    if (name_ok)
        td_config_report(x, TD_CONFIG_AT_VALUE,
                         "%s is not a valid address (IP:port, [IPv6]:port or HOST:port with a "
                         "host name, port 1..65535, at most 63 characters)",
                         td_config_show(q, sizeof q, s, 1));
    else
        td_config_report(x, TD_CONFIG_AT_VALUE,
                         "%s is not a valid address (IP:port or [IPv6]:port, port 1..65535)",
                         td_config_show(q, sizeof q, s, 1));
    td_config_report_pop(x);
    return 0;
}

/* ---- walking the schema ---- */

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/* Every key of `obj` must be one of o's. */
static void check_keys(td_config_report_t *x, json_t *obj, const td_config_object_t *o) {
    for (void *it = json_object_iter(obj); it; it = json_object_iter_next(obj, it)) {
        const char *key = json_object_iter_key(it), *hint, *valid[17];
        char list[256];

        if (td_config_schema_find(o, key) >= 0)
            continue;
        for (size_t i = 0; i < o->num_fields && i < 16; i++)
            valid[i] = o->fields[i].key;
        valid[o->num_fields < 16 ? o->num_fields : 16] = NULL;
        td_config_report_push_key(x, key);
        hint = td_config_suggest(key, valid);
        if (hint) {
            td_config_report(x, TD_CONFIG_AT_KEY, "unknown key, did you mean \"%s\"?", hint);
        } else {
            td_config_join(list, sizeof list, valid);
            td_config_report(x, TD_CONFIG_AT_KEY, "unknown key (valid keys: %s)", list);
        }
        td_config_report_pop(x);
    }
}

static void read_object(td_config_report_t *x, td_config_t *c, json_t *obj,
                        const td_config_object_t *o, void *base, const void *first, size_t index);

/* "workers": "auto" (the number of online CPUs, at most 64) or an integer 1..64. */
static void read_workers(td_config_report_t *x, td_config_t *c, json_t *obj) {
    json_t *v = member(x, obj, "workers", 0);
    char d[128];

    if (v) {
        td_config_report_push_key(x, "workers");
        if (json_is_integer(v)) {
            if (int_value(x, v, 1, 64, &c->workers))
                c->workers_auto = 0;
        } else if (!json_is_string(v) || strcmp(json_string_value(v), "auto") != 0) {
            td_config_report(x, TD_CONFIG_AT_VALUE, "expected \"auto\" or an integer 1..64, got %s",
                             describe(v, d, sizeof d));
        }
        td_config_report_pop(x);
    }
    if (c->workers_auto)
        c->workers = online_cpus();
}

/* routing.cookie.secure: "auto", true or false. */
static int read_secure(td_config_report_t *x, json_t *obj, td_cookie_secure_t *out) {
    json_t *v = member(x, obj, "secure", 0);
    char d[128];
    int ok = 1;

    if (!v)
        return 0;
    td_config_report_push_key(x, "secure");
    if (json_is_boolean(v))
        *out = json_is_true(v) ? TD_COOKIE_SECURE_ALWAYS : TD_COOKIE_SECURE_NEVER;
    else if (json_is_string(v) && strcmp(json_string_value(v), "auto") == 0)
        *out = TD_COOKIE_SECURE_AUTO;
    else
        ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE, "expected \"auto\", true or false, got %s",
                                 describe(v, d, sizeof d));
    td_config_report_pop(x);
    return ok;
}

/* cluster.etcd: an array of 1..16 endpoint URLs (td_config_check_etcd_url). */
static int read_endpoints(td_config_report_t *x, json_t *obj, td_config_cluster_t *cl) {
    json_t *arr = get_array(x, obj, "etcd", "endpoint URL", TD_CLUSTER_MAX_ENDPOINTS), *v;
    size_t i;
    char d[128], q[96];
    int ok = arr != NULL;

    if (!arr)
        return 0;
    td_config_report_push_key(x, "etcd");
    json_array_foreach(arr, i, v) {
        const char *bad = NULL;
        td_config_report_push_index(x, i);
        if (!json_is_string(v))
            ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE,
                                     "expected a string (a URL like \"http://127.0.0.1:2379\"), "
                                     "got %s",
                                     describe(v, d, sizeof d));
        else if (json_string_length(v) >= sizeof cl->etcd[0])
            ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE, "too long (at most %zu bytes)",
                                     sizeof cl->etcd[0] - 1);
        else if ((bad = td_config_check_etcd_url(json_string_value(v))) != NULL)
            ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE, "%s %s",
                                     td_config_show(q, sizeof q, json_string_value(v), 1), bad);
        else
            snprintf(cl->etcd[i], sizeof cl->etcd[i], "%s", json_string_value(v));
        td_config_report_pop(x);
    }
    td_config_report_pop(x);
    if (ok)
        cl->num_etcd = (int)json_array_size(arr);
    return ok;
}

/* resolvers.nameservers: ["IP:PORT", ...], numeric addresses only (td asks them for names, so
 * they cannot be names themselves). */
static int read_nameservers(td_config_report_t *x, json_t *obj, td_config_resolvers_t *rs) {
    json_t *arr = json_object_get(obj, "nameservers"), *v;
    size_t i;
    char d[128], q[96];
    int ok;

    if (!arr)
        return 1;
    arr = get_array(x, obj, "nameservers", "name server", TD_CONFIG_MAX_NAMESERVERS);
    if (!arr)
        return 0;
    ok = 1;
    td_config_report_push_key(x, "nameservers");
    json_array_foreach(arr, i, v) {
        td_config_report_push_index(x, i);
        if (!json_is_string(v))
            ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE,
                                     "expected a string (an address like \"127.0.0.1:53\"), got %s",
                                     describe(v, d, sizeof d));
        else if (td_addr_parse(json_string_value(v), &rs->nameservers[i]) < 0)
            ok = 0, td_config_report(x, TD_CONFIG_AT_VALUE,
                                     "%s is not a valid name server address (IP:port or "
                                     "[IPv6]:port, port 1..65535)",
                                     td_config_show(q, sizeof q, json_string_value(v), 1));
        td_config_report_pop(x);
    }
    td_config_report_pop(x);
    if (ok)
        rs->num_nameservers = (int)json_array_size(arr);
    return ok;
}

/* An array of objects of f->sub, each starting from its defaults. */
static int read_array(td_config_report_t *x, td_config_t *c, json_t *obj,
                      const td_config_field_t *f, char *base) {
    json_t *arr = get_array(x, obj, f->key, f->what, (size_t)f->hi);
    size_t n = arr ? json_array_size(arr) : 0;
    char *elems;

    if (!n)
        return 0;
    if (f->flags & TD_CF_EMBEDDED) {
        elems = base + f->offset;
    } else {
        elems = calloc(n, f->size);
        if (!elems) {
            x->oom = 1;
            return 0;
        }
        *(void **)(base + f->offset) = elems;
    }
    *(size_t *)(base + f->count_offset) = n;
    td_config_report_push_key(x, f->key);
    for (size_t i = 0; i < n; i++) {
        char *e = elems + i * f->size;
        json_t *v = json_array_get(arr, i);
        td_config_report_push_index(x, i);
        td_config_schema_defaults(f->sub, e);
        if (f->sub->init)
            f->sub->init(x, c, e, elems, i, 0);
        if (is_object(x, v))
            read_object(x, c, v, f->sub, e, elems, i);
        td_config_report_pop(x);
    }
    td_config_report_pop(x);
    return 1;
}

/* Reads the member f->key of `obj` into the struct at `base` (an element `index` of the array
 * starting at `first`, or NULL). Returns 1 when it was given and valid, then runs f->after. */
static int read_field(td_config_report_t *x, td_config_t *c, json_t *obj,
                      const td_config_field_t *f, char *base, const void *first, size_t index) {
    char *at = base + f->offset;
    int required = (f->flags & TD_CF_REQUIRED) != 0, ok = 0, i;
    json_t *v;

    switch (f->kind) {
    case TD_CF_INT:
        ok = get_int(x, obj, f->key, required, (int)f->lo, (int)f->hi, (int *)at);
        break;
    case TD_CF_BOOL:
        ok = get_bool(x, obj, f->key, (int *)at);
        break;
    case TD_CF_STR:
        ok = get_str(x, obj, f->key, required, at, f->size, f->check, (f->flags & TD_CF_HIDE) != 0);
        break;
    case TD_CF_ENUM:
        if ((ok = get_enum(x, obj, f->key, f->names, &i)))
            *(int *)at = f->values ? f->values[i] : i;
        break;
    case TD_CF_ENUM_STR:
        if ((ok = get_enum(x, obj, f->key, f->names, &i)))
            snprintf(at, f->size, "%s", f->names[i]);
        break;
    case TD_CF_ADDR:
        ok = get_addr(x, obj, f->key, (td_addr_t *)at, (f->flags & TD_CF_NAME_OK) != 0);
        break;
    case TD_CF_OBJECT:
        v = get_object(x, obj, f->key, required);
        if (!v)
            break;
        if (f->present >= 0)
            *(int *)(base + f->present) = 1;
        td_config_report_push_key(x, f->key);
        read_object(x, c, v, f->sub, at, NULL, 0);
        td_config_report_pop(x);
        ok = 1;
        break;
    case TD_CF_ARRAY:
        ok = read_array(x, c, obj, f, base);
        break;
    case TD_CF_CUSTOM:
        if (f->id == TD_CF_ID_WORKERS)
            read_workers(x, c, obj);
        else if (f->id == TD_CF_ID_COOKIE_SECURE)
            ok = read_secure(x, obj, (td_cookie_secure_t *)at);
        else if (f->id == TD_CF_ID_ENDPOINTS)
            ok = read_endpoints(x, obj, (td_config_cluster_t *)base);
        else if (f->id == TD_CF_ID_NAMESERVERS)
            ok = read_nameservers(x, obj, (td_config_resolvers_t *)base);
        break;
    }
    if (ok && f->after) {
        td_config_report_push_key(x, f->key);
        f->after(x, c, base, first, index, 0);
        td_config_report_pop(x);
    }
    return ok;
}

/* The object `obj` (at the report's path) into the struct at `base`: its keys checked, its
 * fields read (TD_CF_EARLY ones first), then o->after. */
static void read_object(td_config_report_t *x, td_config_t *c, json_t *obj,
                        const td_config_object_t *o, void *base, const void *first, size_t index) {
    unsigned read = 0;

    check_keys(x, obj, o);
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < o->num_fields; i++)
            if (((o->fields[i].flags & TD_CF_EARLY) != 0) == (pass == 0) &&
                read_field(x, c, obj, &o->fields[i], base, first, index))
                read |= 1u << i;
    if (o->after)
        o->after(x, c, base, first, index, read);
}

/* ---- the document ---- */

/* Collapses a jansson message to one line. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            *s = '?';
}

/* jansson's wording where it names its own flags or is terse, in plain words; what follows the
 * matched start (" near 'TOKEN'", a byte's value) is kept. Other messages pass unchanged. */
static void plain_words(char *s, size_t size) {
    static const struct {
        const char *jansson, *plain;
    } words[] = {
        {"\\u0000 is not allowed without JSON_ALLOW_NUL", "a string may not contain \\u0000 (NUL)"},
        {"NUL byte in object key not supported", "a key may not contain \\u0000 (NUL)"},
        {"'[' or '{' expected", "expected a JSON object ('{')"},
        {"string or '}' expected", "expected a key in double quotes or '}'"},
        {"end of file expected", "unexpected text after the end of the document"},
        {"unexpected token near end of file", "the document ends too early"},
        {"invalid token", "invalid value (strings take double quotes; true, false, null are lower "
                          "case)"},
        {"unable to decode byte", "invalid UTF-8: byte"},
        {"too big negative integer", "number out of range"},
        {"too big integer", "number out of range"},
        {"real number overflow", "number out of range"},
        {"maximum parsing depth reached", "nested too deeply"},
    };
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t n = strlen(words[i].jansson);
        if (strncmp(s, words[i].jansson, n) != 0)
            continue;
        char rest[JSON_ERROR_TEXT_LENGTH];
        snprintf(rest, sizeof(rest), "%s", s + n);
        snprintf(s, size, "%s%s", words[i].plain, rest);
        return;
    }
}

td_config_t *td_config_parse(const char *text, size_t len, const char *name, FILE *errs) {
    td_config_report_t x = {.text = text, .len = len};
    json_error_t jerr;
    json_t *root;
    td_config_t *c;

    if (!name)
        name = "config";
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        char msg[2 * JSON_ERROR_TEXT_LENGTH];
        snprintf(msg, sizeof(msg), "%s", jerr.text);
        plain_words(msg, sizeof(msg));
        one_line(msg);
        if (errs)
            fprintf(errs, "%s:%d:%d: %s\n", name, jerr.line < 1 ? 1 : jerr.line,
                    jerr.column < 1 ? 1 : jerr.column, msg);
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        x.oom = 1;
    } else {
        td_config_schema_defaults(&td_config_schema, c);
        if (is_object(&x, root))
            read_object(&x, c, root, &td_config_schema, c, NULL, 0);
    }
    json_decref(root);
    if (x.num_problems || x.oom) {
        td_config_report_flush(&x, name, errs);
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
        fprintf(errs, "%s: cannot read: %s\n", path, why); /* no position: no text was read */
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
