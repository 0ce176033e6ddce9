/* tdctl: the HTTP client of td's admin API: the admin URL and token, one call through libcurl,
 * td's refusals printed, its JSON replies parsed, and the byte buffer replies are read into.
 * The only file that touches libcurl (besides curl_global_init() in main.c). */

#include "tdctl.h"

#include <curl/curl.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONNECT_TIMEOUT_S 5L   /* td's admin API is local or near: fail fast when it is not there */
#define TRANSFER_TIMEOUT_S 30L /* a config PUT is validated and persisted before td answers */

/* Appends n bytes; past BODY_MAX it refuses them and sets too_big. Returns false when it did not
 * append. */
bool buf_append(buf_t *b, const char *data, size_t n) {
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

/* Prints bytes as they came, ending with a newline. */
void print_raw(const buf_t *b) {
    if (b->len > 0)
        fwrite(b->p, 1, b->len, stdout);
    if (b->len == 0 || b->p[b->len - 1] != '\n')
        putchar('\n');
}

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

static int perform(const ctl_t *ctl, const char *method, const char *path, const char *body,
                   size_t body_len, reply_t *r, bool quiet);

/* Why td could not save its changes: the "persist_error" of doc, else of its state (GET
 * /api/v1/state, asked quietly), else "reason unknown". Returns a malloc'd string, or NULL when out
 * of memory. */
static char *persist_reason(const ctl_t *ctl, const json_t *doc) {
    const char *why = json_string_value(json_object_get(doc, "persist_error"));
    json_t *state = NULL;
    char *out;
    reply_t r = {0};

    if (!why && perform(ctl, "GET", "/api/v1/state", NULL, 0, &r, true) == RC_DONE) {
        state = r.body.len ? json_loadb(r.body.p, r.body.len, 0, NULL) : NULL;
        why = json_string_value(json_object_get(state, "persist_error"));
    }
    free(r.body.p);
    out = strdup(why && *why ? why : "reason unknown");
    json_decref(state);
    return out;
}

/* After a change td accepted (a 2xx to a method other than GET): warns on stderr when its reply
 * says "persisted": false, since the change then lives only until td's next restart. A reply
 * without "persisted" (a rollout's object) is judged by td's state, which tells whether the last
 * change reached the state file. */
static void warn_unsaved(const ctl_t *ctl, const reply_t *r) {
    json_t *doc = r->body.len ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
    char *why;
    reply_t s = {0};

    if (json_is_object(doc) && !json_object_get(doc, "persisted") &&
        perform(ctl, "GET", "/api/v1/state", NULL, 0, &s, true) == RC_DONE) {
        json_decref(doc);
        doc = s.body.len ? json_loadb(s.body.p, s.body.len, 0, NULL) : NULL;
    }
    free(s.body.p);
    if (json_is_false(json_object_get(doc, "persisted"))) {
        why = persist_reason(ctl, doc);
        fprintf(stderr,
                "tdctl: warning: td applied the change but could not save it (%s): it is lost "
                "at td's next restart\n",
                why ? why : "out of memory");
        free(why);
    }
    json_decref(doc);
}

/* One call, as call() below; a refusal (a non-2xx reply) is printed unless `quiet`, and then kept
 * in *r (status and body) for the caller. */
static int perform(const ctl_t *ctl, const char *method, const char *path, const char *body,
                   size_t body_len, reply_t *r, bool quiet) {
    size_t base_len = strlen(ctl->admin);
    char *url = NULL, *auth = NULL;
    char err[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    CURL *h = curl_easy_init();
    CURLcode cc;
    int rc = RC_REFUSED;
    bool kept = false; /* a refusal kept in *r for the caller */

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
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method); /* DELETE */
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
    /* An https admin URL (admin.tls): verified against --cacert, else the system's store. */
    if (ctl->cacert)
        curl_easy_setopt(h, CURLOPT_CAINFO, ctl->cacert);
    if (ctl->insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }

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
        if (!quiet)
            print_refusal(r);
        else
            kept = true;
        goto out;
    }
    rc = RC_DONE;
    if (strcmp(method, "GET") != 0)
        warn_unsaved(ctl, r);
out:
    if (rc != RC_DONE && !kept) {
        free(r->body.p);
        r->body = (buf_t){0};
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(h);
    free(auth);
    free(url);
    return rc;
}

/* Makes one call to td's admin API: method "GET", or "PUT"/"POST" with a JSON body of body_len
 * bytes. Returns RC_DONE with a 2xx reply in *r (the caller frees r->body.p), or prints why not
 * (td unreachable, or td's error message) and returns RC_REFUSED. */
int call(const ctl_t *ctl, const char *method, const char *path, const char *body, size_t body_len,
         reply_t *r) {
    return perform(ctl, method, path, body, body_len, r, false);
}

/* As call(), but a refusal is not printed: it returns RC_REFUSED with td's status and body in *r
 * (the caller frees r->body.p); r->status is 0 when td was not reached (that is printed). */
int call_quiet(const ctl_t *ctl, const char *method, const char *path, const char *body,
               size_t body_len, reply_t *r) {
    return perform(ctl, method, path, body, body_len, r, true);
}

/* Parses a 2xx reply as JSON. Returns the document (the caller owns it), or NULL after saying
 * that td's answer made no sense. */
json_t *parse_reply(const reply_t *r) {
    json_error_t e;
    json_t *doc = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, &e);

    if (!doc)
        fprintf(stderr, "tdctl: td's reply is not JSON (%d:%d: %s)\n", e.line, e.column, e.text);
    return doc;
}

/* GETs path and parses td's JSON reply. Returns the document (the caller owns it), or NULL after
 * saying why not. */
json_t *get_json(const ctl_t *ctl, const char *path) {
    json_t *doc = NULL;
    reply_t r;

    if (call(ctl, "GET", path, NULL, 0, &r) == RC_DONE)
        doc = parse_reply(&r);
    free(r.body.p);
    return doc;
}

/* PUTs doc (consumed) and parses td's JSON reply (for the ratio: the new state). Returns it (the
 * caller owns it), or NULL after saying why not. */
json_t *put_json(const ctl_t *ctl, const char *path, json_t *doc) {
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_t *answer = NULL;
    reply_t r = {0};

    json_decref(doc);
    if (!body) {
        fprintf(stderr, "tdctl: out of memory\n");
        return NULL;
    }
    if (call(ctl, "PUT", path, body, strlen(body), &r) == RC_DONE)
        answer = parse_reply(&r);
    free(body);
    free(r.body.p);
    return answer;
}
