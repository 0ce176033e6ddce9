/* tdctl: td's state document read and printed: its members as table cells ("-" when td did not
 * send one), a backend looked up by name, and the status table. */

#include "tdctl.h"

#include <jansson.h>

#include <stdio.h>
#include <string.h>

/* The integer member key of obj, or "-" when td did not send one. */
cell_t num(const json_t *obj, const char *key) {
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

const char *str(const json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? s : "-";
}

/* A backend's share of new requests: td's own figure ("share", percent) when it sends one,
 * else its weight over the sum: "50%", "33.3%", or "-" when all weights are 0 or unknown. */
static cell_t ratio_cell(const json_t *backend, json_int_t weight_sum) {
    const json_t *w = json_object_get(backend, "weight");
    const json_t *share = json_object_get(backend, "share");
    json_int_t scaled;
    cell_t c = {"-"};

    if (json_is_number(share)) {
        double v = json_number_value(share);
        if (v == (double)(long long)v)
            snprintf(c.s, sizeof(c.s), "%lld%%", (long long)v);
        else
            snprintf(c.s, sizeof(c.s), "%.1f%%", v);
        return c;
    }
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

/* A backend's name for the table, with its state when not ready and the protocol td speaks to
 * its servers when not HTTP/1.1: "blue (maint)", "green h2", "green (maint) h2". */
static void backend_name(const json_t *b, char *out, size_t n) {
    const char *state = json_string_value(json_object_get(b, "state"));
    const char *protocol = json_string_value(json_object_get(b, "protocol"));
    int in_state = state && strcmp(state, "ready") != 0;
    int other_protocol = protocol && strcmp(protocol, "http/1.1") != 0;

    snprintf(out, n, "%s%s%s%s%s%s", str(b, "name"), in_state ? " (" : "", in_state ? state : "",
             in_state ? ")" : "", other_protocol ? " " : "", other_protocol ? protocol : "");
}

/* A server's cell: its address, with the host name it was resolved from after it; a name
 * without an address yet as "NAME (no address)". */
static void server_label(const json_t *s, char *out, size_t n) {
    const char *name = json_string_value(json_object_get(s, "name"));
    /* A name whose last lookup failed says so: "(dns: timeout..., last answer kept)". */
    const char *dns = json_string_value(json_object_get(s, "dns_error"));
    if (!name)
        snprintf(out, n, "  %s", str(s, "address"));
    else if (json_is_string(json_object_get(s, "address")) && dns)
        snprintf(out, n, "  %s (%s) (dns: %s, last answer kept)", str(s, "address"), name, dns);
    else if (json_is_string(json_object_get(s, "address")))
        snprintf(out, n, "  %s (%s)", str(s, "address"), name);
    else if (dns)
        snprintf(out, n, "  %s (no address) (dns: %s)", name, dns);
    else
        snprintf(out, n, "  %s (no address)", name);
}

/* Width of the name column: the longest backend name (with its state) or indented server
 * address. */
static int name_width(const json_t *backends) {
    size_t width = strlen("BACKEND/SERVER"), i, j;
    const json_t *b, *s;
    char name[128];

    json_array_foreach(backends, i, b) {
        backend_name(b, name, sizeof(name));
        if (strlen(name) > width)
            width = strlen(name);
        json_array_foreach(json_object_get(b, "servers"), j, s) {
            server_label(s, name, sizeof(name));
            if (strlen(name) > width)
                width = strlen(name);
        }
    }
    return width > 100 ? 100 : (int)width;
}

static void print_servers(const json_t *backend, int width) {
    const json_t *s;
    char name[128];
    size_t i;

    json_array_foreach(json_object_get(backend, "servers"), i, s) {
        server_label(s, name, sizeof(name));
        print_row(width, name, num(s, "weight").s, "", up_down(s), num(s, "in_flight").s,
                  num(s, "requests").s, "", num(s, "failures").s);
    }
}

/* Prints td's state (GET /api/v1/state) as a table. Members td did not send show as "-". */
void print_state(const json_t *state) {
    const json_t *backends = json_object_get(state, "backends");
    const json_t *b;
    json_int_t weight_sum = 0;
    int width = name_width(backends);
    size_t i;

    json_array_foreach(backends, i, b) {
        const json_t *w = json_object_get(b, "weight");
        weight_sum += json_is_integer(w) && json_integer_value(w) > 0 ? json_integer_value(w) : 0;
    }
    printf("method   %s", str(state, "method"));
    if (json_is_string(json_object_get(state, "primary"))) {
        const char *sep = "; backup ";
        printf(" (primary %s", str(state, "primary"));
        json_array_foreach(backends, i, b) {
            if (strcmp(str(b, "role"), "backup") == 0) {
                printf("%s%s", sep, str(b, "name"));
                sep = ", ";
            }
        }
        printf(")");
    }
    printf("\n");
    if (json_object_get(state, "serving_reason")) {
        const json_t *sv = json_object_get(state, "serving");
        const char *role = "";
        json_array_foreach(backends, i, b) {
            if (json_is_string(sv) && strcmp(str(b, "name"), json_string_value(sv)) == 0)
                role = strcmp(str(b, "role"), "backup") == 0 ? " (backup)" : " (primary)";
        }
        printf("serving  %s%s: %s\n", json_is_string(sv) ? json_string_value(sv) : "none", role,
               str(state, "serving_reason"));
    }
    printf("version  %s\n", num(state, "version").s);
    printf("uptime   %s\n", uptime_cell(state).s);
    if (json_is_object(json_object_get(state, "rollout"))) {
        /* td's summary of its current or last rollout; tdctl rollout shows the whole of it. */
        const json_t *ro = json_object_get(state, "rollout");
        const json_t *steps = json_object_get(ro, "steps");
        json_int_t step = int_of(ro, "step", 0);

        printf("rollout  %s %s: to %s, step %" JSON_INTEGER_FORMAT " of %zu (%" JSON_INTEGER_FORMAT
               "%%); see tdctl rollout\n",
               str(ro, "id"), str(ro, "state"), str(ro, "to"), step + 1, json_array_size(steps),
               json_integer_value(json_array_get(steps, (size_t)step)));
    }
    {
        const json_t *own = json_object_get(json_object_get(state, "td"), "local_responses");
        if (own)
            printf("td       %s 503 answered by td itself (no backend could take the request)\n",
                   num(own, "503").s);
    }
    printf("\n");
    print_row(width, "BACKEND/SERVER", "WEIGHT", "SHARE", "STATE", "IN-FLIGHT", "REQUESTS", "5XX",
              "FAILURES");
    json_array_foreach(backends, i, b) {
        char name[128];
        backend_name(b, name, sizeof(name));
        print_row(width, name, num(b, "weight").s, ratio_cell(b, weight_sum).s, up_down(b),
                  num(b, "in_flight").s, num(b, "requests").s,
                  num(json_object_get(b, "responses"), "5xx").s, "");
        print_servers(b, width);
    }
}

/* The integer member key of obj, or dflt when td did not send one. */
json_int_t int_of(const json_t *obj, const char *key, json_int_t dflt) {
    const json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Backend `name` of td's state (borrowed from it), or NULL. */
json_t *find_backend(const json_t *state, const char *name) {
    json_t *b;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        if (strcmp(str(b, "name"), name) == 0)
            return b;
    }
    return NULL;
}

/* Says that td has no backend `name`, listing those it has; returns the usage exit status. */
int unknown_backend(const json_t *state, const char *name) {
    char names[512] = "";
    size_t i, n = 0;
    json_t *b;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        if (n < sizeof(names))
            n += (size_t)snprintf(names + n, sizeof(names) - n, "%s%s", i ? ", " : "",
                                  str(b, "name"));
    }
    return usage_error("td has no backend '%s' (it has: %s)", name, n ? names : "none");
}

/* true when a server of the backend is up (or, when td sends no server list, the backend is). */
bool has_server_up(const json_t *backend) {
    const json_t *servers = json_object_get(backend, "servers"), *s;
    size_t i;

    if (!json_is_array(servers))
        return json_is_true(json_object_get(backend, "up"));
    json_array_foreach(servers, i, s) {
        if (json_is_true(json_object_get(s, "up")))
            return true;
    }
    return false;
}

void weights_text(const json_t *weights, char *out, size_t n) {
    const char *name;
    json_t *w;
    size_t len = 0;

    out[0] = '\0';
    json_object_foreach((json_t *)weights, name, w) {
        if (len < n)
            len += (size_t)snprintf(out + len, n - len, "%s%s=%" JSON_INTEGER_FORMAT,
                                    len ? " " : "", name, json_integer_value(w));
    }
    if (!len)
        snprintf(out, n, "-");
}
