/* tdctl: the command-line client of td's admin API (the "Admin API" of docs/ARCHITECTURE.md).
 *
 * One run is one command: check every argument first (a usage error never reaches td), then make
 * HTTP calls through call(), the only function that touches libcurl, and print the reply as a
 * table, a one-line summary, or (--json) td's JSON as it came. The deploy commands (drain, switch)
 * make a call, then watch td's state by polling it until the traffic has moved.
 *
 * Exit status: 0 done, 1 refused by td, rolled back or td unreachable, 2 usage error. */

#include <curl/curl.h>
#include <jansson.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TDCTL_VERSION "0.2.0"
#define DEFAULT_ADMIN "http://127.0.0.1:9090"
#define WEIGHT_MAX 100
#define BODY_MAX (16u << 20)   /* bytes: a reply or a config file; real ones are a few KiB */
#define CONNECT_TIMEOUT_S 5L   /* td's admin API is local or near: fail fast when it is not there */
#define TRANSFER_TIMEOUT_S 30L /* a config PUT is validated and persisted before td answers */

#define DRAIN_POLL_S 0.2         /* drain --wait: how often td's state is read */
#define DRAIN_TIMEOUT_S 60.0     /* drain --wait: default --timeout */
#define DRAIN_MS_DEFAULT 30000   /* td's timeouts.drain_ms when its config does not say */
#define SWITCH_POLL_S 0.5        /* switch: how often td's state is read during a step */
#define SWITCH_STEPS "10,50,100" /* switch: default --steps */
#define SWITCH_INTERVAL_S 30.0   /* switch: default --interval */
#define SWITCH_ERROR_RATE 0.01   /* switch: default --max-error-rate (1%) */
#define MIN_ANSWERS 20           /* switch: answers needed in a step before judging it */
#define DURATION_MAX_S 86400.0   /* --interval and --timeout: at most a day */
#define P99_MAX_MS 3600000L      /* --max-p99-ms: at most an hour */
#define MAX_BUCKETS 32           /* latency histogram buckets tdctl reads (td sends 14) */

enum { RC_DONE = 0, RC_REFUSED = 1, RC_USAGE = 2 };

/* The options of one command (the others are global); a bit each in ctl_t.given. */
enum { O_WAIT, O_TIMEOUT, O_STEPS, O_INTERVAL, O_MAX_ERROR_RATE, O_MAX_P99_MS, NOPT };
#define OPT(o) (1u << (o))

static const char *const option_names[NOPT] = {"wait",     "timeout",        "steps",
                                               "interval", "max-error-rate", "max-p99-ms"};

typedef struct ctl_s {
    const char *admin;     /* borrowed (argv or environment): base URL of td's admin API */
    const char *token;     /* borrowed; NULL for no Authorization header */
    bool json;             /* print td's replies as they came */
    bool help;             /* --help: the page of the command given, else the general one */
    unsigned given;        /* OPT() bits of the command options on the line */
    const char *opt[NOPT]; /* borrowed (argv): their values, checked by the command */
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

/* Set by SIGINT and SIGTERM while a switch runs: roll back and stop. */
static volatile sig_atomic_t interrupted;

/* ---------------------------------------------------------------------------------------------
 * Manual pages: the general one (tdctl --help) and one per command (tdctl COMMAND --help)
 */

#define SYNOPSIS_GLOBAL "tdctl [--admin URL] [--token TOKEN] [--json] "
#define SYNOPSIS_TARGET "tdctl [--admin URL] [--token TOKEN] " /* for commands without --json */

static const char help_text[] =
    "NAME\n"
    "    tdctl - show and steer a running td traffic distributor\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "COMMAND [ARG...]\n"
    "    tdctl COMMAND --help\n"
    "    tdctl --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    tdctl talks to td's admin API: it shows how td splits traffic between its\n"
    "    backends and changes that split, or the routing method, while td runs. td\n"
    "    applies a change to the very next request, drops no connection, and writes\n"
    "    it back to its config file so that a restart keeps it. tdctl checks its\n"
    "    arguments before it contacts td. Its deploy commands move traffic from one\n"
    "    backend to another and watch it go: drain waits for a backend's requests to\n"
    "    finish, switch moves the traffic in steps and rolls back by itself when the\n"
    "    new side answers worse than the old one.\n"
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
    "        for scripts (status, ratio, method, config, rollback, history).\n"
    "    -h, --help\n"
    "        Show this help, or with a COMMAND that command's page, and exit.\n"
    "    -V, --version\n"
    "        Print \"tdctl " TDCTL_VERSION "\" and exit.\n"
    "    Options may come before or after COMMAND; \"--\" ends them.\n"
    "\n"
    "COMMANDS\n"
    "    Each command has its own page: tdctl COMMAND --help, or tdctl help COMMAND.\n"
    "\n"
    "    status\n"
    "        The routing method, the config version, and every backend's weight,\n"
    "        share of traffic, health, requests in flight and counters.\n"
    "    ratio NAME=WEIGHT... | ratio A:B\n"
    "        Set backend weights (0 to 100).\n"
    "    method round_robin|sticky|failover\n"
    "        Set the routing method.\n"
    "    config get | config put FILE\n"
    "        Print td's running configuration, or replace all of it.\n"
    "    drain NAME [--wait] [--timeout DURATION]\n"
    "        Set NAME's weight to 0; with --wait, wait until its requests in flight\n"
    "        and its tunnels are gone.\n"
    "    switch NAME [--steps LIST] [--interval DURATION] [--max-error-rate RATE]\n"
    "           [--max-p99-ms MS]\n"
    "        Move all traffic to NAME in steps while watching its 5xx rate and\n"
    "        latency; roll back by itself if they get worse; drain the old side.\n"
    "    rollback\n"
    "        Undo the most recent change of weights.\n"
    "    history\n"
    "        The changes made to td: when, from which client, what.\n"
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
    "        (\"cannot reach td at URL: reason\"), a switch was refused or rolled back,\n"
    "        or a wait ended before the traffic was gone. See each command's page.\n"
    "    2   Usage error: an unknown option or command, or an invalid argument. td is\n"
    "        left unchanged.\n"
    "\n"
    "EXAMPLES\n"
    "    Blue-green deploy, blue first:\n"
    "        tdctl drain blue --wait    # no new requests to blue; wait for the rest\n"
    "        (deploy and test blue)\n"
    "        tdctl switch blue          # 10%, 50%, 100% of the traffic to blue\n"
    "        (deploy and test green)\n"
    "        tdctl ratio 50:50          # both again\n"
    "    A/B test:\n"
    "        tdctl method sticky && tdctl ratio 50:50\n"
    "    Edit the running configuration:\n"
    "        tdctl config get > td.json && vi td.json && tdctl config put td.json\n"
    "    A remote td, for a script:\n"
    "        TD_TOKEN=secret tdctl --admin http://10.0.0.5:9090 --json status\n";

static const char help_status[] =
    "NAME\n"
    "    tdctl status - show how td splits traffic, and its counters\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "status\n"
    "\n"
    "DESCRIPTION\n"
    "    Shows the routing method, the config version and td's uptime, then one row\n"
    "    per backend: WEIGHT, SHARE (the share of new requests it gets now, as td\n"
    "    computes it: its weight among the backends that are up, 0% when it has no\n"
    "    server up), STATE (up or down, from health checks), IN-FLIGHT requests,\n"
    "    REQUESTS served and 5XX responses (td's own 502/503/504 included). Each\n"
    "    backend's servers follow, indented, with their own weight, state, counters\n"
    "    and FAILURES. With method failover the method line names the primary (the\n"
    "    highest weight) and the backups, a \"serving\" line says which backend takes\n"
    "    all new requests and why, and SHARE is 100% for it and 0% for the others.\n"
    "    A \"td\" line counts td's own 503s for requests no backend could take.\n"
    "    Values td did not send show as \"-\". With --json, td's state as it came\n"
    "    (GET /api/v1/state), with latency histograms, tunnels and sticky counts.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown; 1 td unreachable or refused; 2 usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl status\n"
    "    tdctl --json status | jq '.backends[] | {name, in_flight}'\n";

static const char help_ratio[] =
    "NAME\n"
    "    tdctl ratio - set backend weights\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "ratio NAME=WEIGHT...\n"
    "    " SYNOPSIS_GLOBAL "ratio A:B\n"
    "\n"
    "DESCRIPTION\n"
    "    Sets backend weights, integers 0 to 100; each backend gets its weight over\n"
    "    the sum of all weights of the requests. The first form names any subset of\n"
    "    the backends (\"ratio blue=0 green=100\"); the others keep their weight. The\n"
    "    second sets the first two backends in the order \"tdctl status\" lists them\n"
    "    (\"ratio 30:70\"), and is refused unless td has exactly two. A backend of\n"
    "    weight 0 gets no new requests while its in-flight requests finish (sticky\n"
    "    clients already pinned to it stay until td's timeouts.drain_ms). td applies\n"
    "    the change to the very next request. Prints the new state (--json: as it\n"
    "    came).\n"
    "\n"
    "EXIT STATUS\n"
    "    0 applied; 1 td refused (an unknown backend name, or every weight at 0,\n"
    "    which could only answer 503) or unreachable;\n"
    "    2 usage error: a weight outside 0..100, an empty or invalid name, a name\n"
    "    given twice, \"A:B\" with td not having exactly two backends.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl ratio blue=0 green=100\n"
    "    tdctl ratio 90:10\n";

static const char help_method[] =
    "NAME\n"
    "    tdctl method - set the routing method\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "\n"
    "          method round_robin|sticky|failover\n"
    "\n"
    "DESCRIPTION\n"
    "    round_robin spreads requests by weight (smooth weighted round robin).\n"
    "    sticky assigns a client's first request by weight, then keeps the client on\n"
    "    that backend with a signed cookie. failover sends all traffic to the healthy\n"
    "    backend with the highest weight (ties: first listed); the others are\n"
    "    backups. Prints the new state (--json: as it came).\n"
    "\n"
    "EXIT STATUS\n"
    "    0 applied; 1 td refused or unreachable; 2 an unknown method.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl method sticky\n";

static const char help_config[] =
    "NAME\n"
    "    tdctl config - print or replace td's whole configuration\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "config get\n"
    "    " SYNOPSIS_GLOBAL "config put FILE\n"
    "\n"
    "DESCRIPTION\n"
    "    config get prints td's running configuration: a JSON document that config\n"
    "    put takes back.\n"
    "\n"
    "    config put replaces td's whole configuration with FILE (\"-\" reads standard\n"
    "    input). td checks all of it and applies it at once, or changes nothing and\n"
    "    answers with every problem found, at its LINE:COL in FILE, which tdctl\n"
    "    prints. A FILE that is not JSON at all is not sent: tdctl prints\n"
    "    FILE:LINE:COL and the problem. Prints the new config version.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 done; 1 td refused the config or is unreachable, or FILE is not JSON;\n"
    "    2 usage error or an unreadable FILE.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl config get > td.json && vi td.json && tdctl config put td.json\n";

static const char help_drain[] =
    "NAME\n"
    "    tdctl drain - stop sending new requests to a backend, and wait for the rest\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_TARGET "drain NAME [--wait] [--timeout DURATION]\n"
    "\n"
    "DESCRIPTION\n"
    "    Sets backend NAME's weight to 0; every other backend keeps its weight. td\n"
    "    sends NAME no new request from the very next one; requests already in\n"
    "    flight there finish, WebSocket and other tunnels stay open, and sticky\n"
    "    clients pinned to NAME stay with it, until td's timeouts.drain_ms has\n"
    "    passed: then td closes NAME's tunnels and re-assigns its sticky clients.\n"
    "    Refused when no other backend would be left with a weight above 0 (every\n"
    "    request would get 503). Prints NAME's weight before and after, and what is\n"
    "    still in flight. When NAME is already at weight 0, nothing is changed.\n"
    "\n"
    "OPTIONS\n"
    "    --wait\n"
    "        Then read td's state every 0.2 s, showing one line of progress\n"
    "        (\"blue: 3 in flight, 1 tunnel, 12 sticky req/10s\": sticky requests\n"
    "        served in the last 10 s), until NAME has no request in flight and no\n"
    "        tunnel. If td's timeouts.drain_ms passes first, tdctl says so and what\n"
    "        is left, and stops waiting: td has closed the tunnels by then, and\n"
    "        requests still in flight run until they end or time out.\n"
    "    --timeout DURATION\n"
    "        With --wait, wait at most DURATION (default 60s), even if drain_ms is\n"
    "        longer. DURATION is a number with a unit: 500ms, 30s, 2m, 1h (a bare\n"
    "        number is seconds).\n"
    "\n"
    "EXIT STATUS\n"
    "    0   NAME is at weight 0 and, with --wait, drained or past drain_ms.\n"
    "    1   td refused or is unreachable, draining would leave no backend with a\n"
    "        weight above 0, or --timeout passed with requests still in flight.\n"
    "    2   Usage error: no NAME, an unknown NAME, a bad DURATION.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl drain blue --wait && deploy-blue.sh\n"
    "    tdctl drain green --wait --timeout 5m\n";

static const char help_switch[] =
    "NAME\n"
    "    tdctl switch - move all traffic to a backend in steps; roll back on errors\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_TARGET "switch NAME [--steps LIST]\n"
    "          [--interval DURATION] [--max-error-rate RATE] [--max-p99-ms MS]\n"
    "\n"
    "DESCRIPTION\n"
    "    For td with two backends: NAME is the new side, the other one the old side.\n"
    "    The switch is refused, with nothing changed, when NAME has no server up.\n"
    "    Otherwise, for each step S of LIST, tdctl sets NAME's weight to S and the\n"
    "    old side's to 100-S, prints a progress bar, and watches for DURATION: every\n"
    "    0.5 s it reads td's state and computes, from the counters' growth since the\n"
    "    step began, NAME's 5xx rate (5xx answers over all answers) and its p99\n"
    "    latency (from td's latency histogram: the upper bound of the bucket the 99th\n"
    "    percentile falls in). It rolls back - sets both weights back to what they\n"
    "    were before the switch, says why, and exits 1 - as soon as:\n"
    "      - NAME has answered at least 20 requests in the step and its 5xx rate is\n"
    "        above RATE;\n"
    "      - NAME has answered at least 20 requests in the step and its p99 is above\n"
    "        MS and above the old side's p99 (over the switch so far, else over its\n"
    "        lifetime): a latency both sides share is not NAME's fault;\n"
    "      - NAME has no server up any more;\n"
    "      - tdctl is interrupted (SIGINT, SIGTERM) or loses td.\n"
    "    If the weights are changed by someone else during the switch, tdctl stops\n"
    "    and leaves them as they are (exit 1). Steps below NAME's share of the\n"
    "    traffic when the switch starts are skipped. After the last step (100: the\n"
    "    old side at weight 0), tdctl waits for the old side's requests in flight\n"
    "    and tunnels to finish, as drain --wait does, and exits 0.\n"
    "\n"
    "OPTIONS\n"
    "    --steps LIST\n"
    "        NAME's weights, comma-separated integers from 1 to 100, strictly\n"
    "        increasing, ending at 100. Default: " SWITCH_STEPS ".\n"
    "    --interval DURATION\n"
    "        How long each step is watched: a number above 0 with a unit, 500ms,\n"
    "        30s, 2m (a bare number is seconds). Default: 30s.\n"
    "    --max-error-rate RATE\n"
    "        The highest tolerated 5xx rate: a percentage (1%, 0.5%) or a fraction\n"
    "        from 0 to 1 (0.01). Default: 1%.\n"
    "    --max-p99-ms MS\n"
    "        The highest tolerated p99 latency in milliseconds (1 to 3600000).\n"
    "        Default: latency is not judged.\n"
    "\n"
    "EXIT STATUS\n"
    "    0   All traffic goes to NAME; the old side is drained (or past drain_ms).\n"
    "    1   Refused (NAME has no server up; nothing changed), rolled back (the\n"
    "        reason is printed), stopped (weights changed by someone else), or td\n"
    "        refused or is unreachable.\n"
    "    2   Usage error, nothing changed: no NAME or an unknown one, td not having\n"
    "        exactly two backends, a bad LIST, DURATION, RATE or MS.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl switch green\n"
    "    tdctl switch green --steps 1,5,25,50,100 --interval 2m --max-p99-ms 250\n";

static const char help_rollback[] =
    "NAME\n"
    "    tdctl rollback - undo the most recent change of weights\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "rollback\n"
    "\n"
    "DESCRIPTION\n"
    "    Finds, in td's history of changes (see tdctl history), the most recent one\n"
    "    that changed a backend's weight - a ratio, a drain or a switch step, a\n"
    "    config put or a reload - and sets the weights back to what they were before\n"
    "    it (a change marked [not applied] is passed over). Only weights are\n"
    "    restored (not the routing method nor the rest of a config). The rollback\n"
    "    is a change itself: a second rollback undoes the first. Prints the change\n"
    "    undone and the new state (--json: the state as it\n"
    "    came). When the weights already are those, nothing is changed.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 weights restored (or already so); 1 no change of weights in the history,\n"
    "    td refused (a backend of then no longer exists) or is unreachable;\n"
    "    2 usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl ratio blue=0 green=100 && tdctl rollback\n";

static const char help_history[] =
    "NAME\n"
    "    tdctl history - list the changes made to td\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "history\n"
    "\n"
    "DESCRIPTION\n"
    "    Prints td's audit log of changes, oldest first, one per line: TIME (UTC),\n"
    "    CLIENT (the address the change came from, or \"signal\" for a SIGHUP\n"
    "    reload) and WHAT changed. td keeps the last 256 changes, also across\n"
    "    restarts. A change td recorded but never ran (it was stopped before it\n"
    "    wrote the config file) ends in [not applied], and td's note follows it.\n"
    "    With --json, td's log as it came: each entry also has the routing method\n"
    "    and every weight before and after the change (\"applied\": false on one\n"
    "    that never ran).\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown; 1 td unreachable or refused; 2 usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl history | tail -n 5\n";

static const char help_help[] =
    "NAME\n"
    "    tdctl help - show the manual page of tdctl, or of one of its commands\n"
    "\n"
    "SYNOPSIS\n"
    "    tdctl help [COMMAND]\n"
    "\n"
    "DESCRIPTION\n"
    "    The same as tdctl --help, or tdctl COMMAND --help.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown; 2 an unknown COMMAND.\n";

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
 * Helpers of the deploy commands: td's documents, time, progress lines, option values
 */

/* GETs path and parses td's JSON reply. Returns the document (the caller owns it), or NULL after
 * saying why not. */
static json_t *get_json(const ctl_t *ctl, const char *path) {
    json_t *doc = NULL;
    reply_t r;

    if (call(ctl, "GET", path, NULL, 0, &r) == RC_DONE)
        doc = parse_reply(&r);
    free(r.body.p);
    return doc;
}

/* PUTs doc (consumed) and parses td's JSON reply (for the ratio: the new state). Returns it (the
 * caller owns it), or NULL after saying why not. */
static json_t *put_json(const ctl_t *ctl, const char *path, json_t *doc) {
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

/* The integer member key of obj, or dflt when td did not send one. */
static json_int_t int_of(const json_t *obj, const char *key, json_int_t dflt) {
    const json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* Backend `name` of td's state (borrowed from it), or NULL. */
static json_t *find_backend(const json_t *state, const char *name) {
    json_t *b;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        if (strcmp(str(b, "name"), name) == 0)
            return b;
    }
    return NULL;
}

/* Says that td has no backend `name`, listing those it has; returns the usage exit status. */
static int unknown_backend(const json_t *state, const char *name) {
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
static bool has_server_up(const json_t *backend) {
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

/* The smaller of a and b (min_s() without libm, which tdctl does not link). */
static double min_s(double a, double b) {
    return a < b ? a : b;
}

static double now_s(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleeps s seconds, or less when a signal comes (the caller looks at `interrupted`). */
static void pause_s(double s) {
    struct timespec ts;

    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

/* From now on SIGINT and SIGTERM set `interrupted` instead of ending tdctl. */
static void catch_signals(void) {
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* One line of progress, rewritten in place on a terminal, else printed each time it changes. */
typedef struct progress_s {
    bool tty;       /* stdout is a terminal */
    bool open;      /* a line is on the terminal without its newline yet */
    char last[256]; /* the line shown last */
} progress_t;

static void progress_init(progress_t *p) {
    memset(p, 0, sizeof(*p));
    p->tty = isatty(STDOUT_FILENO);
}

static void progress_show(progress_t *p, const char *line) {
    if (strcmp(line, p->last) == 0)
        return;
    snprintf(p->last, sizeof(p->last), "%s", line);
    if (p->tty)
        printf("\r\033[K%s", line);
    else
        printf("%s\n", line);
    p->open = p->tty;
    fflush(stdout);
}

/* Ends the progress: what follows starts on a line of its own. */
static void progress_end(progress_t *p) {
    if (p->open)
        putchar('\n');
    p->open = false;
    p->last[0] = '\0';
    fflush(stdout);
}

/* A decimal number: digits, optionally a point and more digits (no sign, exponent or blank).
 * Advances *s past it. */
static bool parse_decimal(const char **s, double *v) {
    const char *p = *s;
    double x = 0, scale = 1;

    if (*p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++)
        x = x * 10 + (*p - '0');
    if (*p == '.') {
        if (*++p < '0' || *p > '9')
            return false;
        for (; *p >= '0' && *p <= '9'; p++)
            x += (*p - '0') * (scale /= 10);
    }
    *s = p;
    *v = x;
    return true;
}

/* A DURATION: "500ms", "30s", "2m", "1h", or a bare number of seconds; at most a day. */
static bool parse_duration(const char *s, double *seconds) {
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1}, {"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}};
    double v;
    size_t i;

    if (!parse_decimal(&s, &v))
        return false;
    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s, units[i].unit) == 0) {
            *seconds = v * units[i].scale;
            return *seconds <= DURATION_MAX_S;
        }
    }
    return false;
}

/* A RATE: "1%", "0.5%" (0 to 100%), or a fraction from 0 to 1 ("0.01"). */
static bool parse_rate(const char *s, double *rate) {
    double v;

    if (!parse_decimal(&s, &v))
        return false;
    if (strcmp(s, "%") == 0) {
        *rate = v / 100;
        return v <= 100;
    }
    *rate = v;
    return *s == '\0' && v <= 1;
}

/* --max-p99-ms: an integer from 1 to P99_MAX_MS. */
static bool parse_p99(const char *s, long *ms) {
    long v = 0;

    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || (v = v * 10 + (*s - '0')) > P99_MAX_MS)
            return false;
    }
    *ms = v;
    return v >= 1;
}

/* --steps: integers 1..100, comma-separated, strictly increasing, ending at 100 (so at most 100
 * of them). Returns NULL, or what is wrong. */
static const char *parse_steps(const char *s, int steps[WEIGHT_MAX], int *n) {
    int w;

    for (*n = 0;; s += strcspn(s, ",") + 1) {
        if (!parse_weight(s, strcspn(s, ","), &w) || w < 1)
            return "each step is an integer from 1 to 100";
        if (*n > 0 && w <= steps[*n - 1])
            return "the steps must be strictly increasing";
        steps[(*n)++] = w;
        if (s[strcspn(s, ",")] == '\0')
            break;
    }
    return steps[*n - 1] == WEIGHT_MAX ? NULL : "the last step must be 100 (all the traffic)";
}

/* The value of an option the command takes, parsed by parse(); false after saying it is bad. */
#define CHECK_OPTION(ctl, o, parse, out, what)                                                     \
    (!((ctl)->given & OPT(o)) || parse((ctl)->opt[o], out) ||                                      \
     (usage_error("--%s '%s': %s", option_names[o], (ctl)->opt[o], what), false))

/* ---------------------------------------------------------------------------------------------
 * drain NAME [--wait] [--timeout DURATION]
 */

enum wait_end { W_GOING, W_DRAINED, W_DRAIN_MS, W_TIMEOUT, W_INTERRUPTED };

/* "3 in flight, 1 tunnel, 12 sticky req/10s" */
static void drain_counts(const json_t *backend, char *out, size_t n) {
    json_int_t tunnels = int_of(backend, "tunnels", 0);

    snprintf(out, n,
             "%" JSON_INTEGER_FORMAT " in flight, %" JSON_INTEGER_FORMAT
             " tunnel%s, %" JSON_INTEGER_FORMAT " sticky req/10s",
             int_of(backend, "in_flight", 0), tunnels, tunnels == 1 ? "" : "s",
             int_of(backend, "sticky_requests_10s", 0));
}

/* The clocks of a wait for a backend to drain, in seconds of now_s(). */
typedef struct wait_s {
    double zero_at;   /* when tdctl saw the weight go to 0: td's drain clock if td sends none */
    double began;     /* when the wait began: the clock of timeout_s */
    double drain_s;   /* td's timeouts.drain_ms */
    double timeout_s; /* the longest wait */
} wait_t;

/* Seconds the backend has been at weight 0: td's own clock (drain_elapsed_ms) when it sends it,
 * else since zero_at. */
static double drained_for(const json_t *backend, const wait_t *w, double now) {
    const json_t *v = json_object_get(backend, "drain_elapsed_ms");

    return json_is_integer(v) ? (double)json_integer_value(v) / 1000.0 : now - w->zero_at;
}

static enum wait_end wait_verdict(const json_t *backend, const wait_t *w, double now) {
    if (int_of(backend, "in_flight", 0) == 0 && int_of(backend, "tunnels", 0) == 0)
        return W_DRAINED;
    if (interrupted)
        return W_INTERRUPTED;
    if (drained_for(backend, w, now) >= w->drain_s)
        return W_DRAIN_MS;
    return now - w->began >= w->timeout_s ? W_TIMEOUT : W_GOING;
}

/* Says how the wait ended; returns the exit status. */
static int wait_report(enum wait_end end, const char *name, const wait_t *w, double now) {
    switch (end) {
    case W_DRAINED:
        printf("%s: drained after a wait of %.1fs: no request in flight, no tunnel\n", name,
               now - w->began);
        return RC_DONE;
    case W_DRAIN_MS:
        printf("%s: td's drain time (timeouts.drain_ms, %.1fs) has passed: td closes its "
               "tunnels and re-assigns its sticky clients; requests in flight run until they "
               "end\n",
               name, w->drain_s);
        return RC_DONE;
    case W_TIMEOUT:
        fprintf(stderr, "tdctl: %s: not drained after --timeout %.1fs\n", name, w->timeout_s);
        return RC_REFUSED;
    default:
        fprintf(stderr, "tdctl: %s: interrupted before it was drained\n", name);
        return RC_REFUSED;
    }
}

/* td's timeouts.drain_ms in seconds; NAN after saying why td could not tell. */
static double drain_seconds(const ctl_t *ctl) {
    json_t *config = get_json(ctl, "/api/v1/config");
    double s = NAN;

    if (config)
        s = (double)int_of(json_object_get(config, "timeouts"), "drain_ms", DRAIN_MS_DEFAULT) /
            1000.0;
    json_decref(config);
    return s;
}

/* Reads td's state every DRAIN_POLL_S, showing backend `name`'s progress, until it has no request
 * in flight and no tunnel, td's drain_ms has passed since its weight went to 0 (by td's clock, or
 * since zero_at), or timeout_s since now. Returns the exit status after saying which. */
static int wait_drained(const ctl_t *ctl, const char *name, double zero_at, double timeout_s) {
    wait_t w = {zero_at, now_s(), drain_seconds(ctl), timeout_s};
    enum wait_end end = W_GOING;
    progress_t prog;
    char line[256];
    double now = w.began;

    if (isnan(w.drain_s))
        return RC_REFUSED;
    progress_init(&prog);
    while (end == W_GOING) {
        json_t *state = get_json(ctl, "/api/v1/state");
        const json_t *b = find_backend(state, name);

        if (!b) {
            if (state)
                fprintf(stderr, "tdctl: td no longer has backend '%s'\n", name);
            json_decref(state);
            progress_end(&prog);
            return RC_REFUSED;
        }
        now = now_s();
        snprintf(line, sizeof(line), "%s: ", name);
        drain_counts(b, line + strlen(line), sizeof(line) - strlen(line));
        progress_show(&prog, line);
        end = wait_verdict(b, &w, now);
        json_decref(state);
        if (end == W_GOING)
            pause_s(DRAIN_POLL_S);
    }
    progress_end(&prog);
    return wait_report(end, name, &w, now);
}

/* true when a backend other than `name` keeps a weight above 0. */
static bool others_weighted(const json_t *state, const char *name) {
    json_t *b;
    size_t i;

    json_array_foreach(json_object_get(state, "backends"), i, b) {
        if (strcmp(str(b, "name"), name) != 0 && int_of(b, "weight", 0) > 0)
            return true;
    }
    return false;
}

/* Sets backend `name` of td's `state` to weight 0 and says what is left there. */
static int drain_start(const ctl_t *ctl, const json_t *state, const char *name) {
    const json_t *b = find_backend(state, name);
    json_int_t was = int_of(b, "weight", -1);
    json_t *after;
    char line[256];

    if (!b)
        return unknown_backend(state, name);
    if (was == 0) {
        drain_counts(b, line, sizeof(line));
        printf("%s: already at weight 0; %s\n", name, line);
        return RC_DONE;
    }
    if (!others_weighted(state, name)) {
        fprintf(stderr,
                "tdctl: refused: draining %s would leave no backend with a weight above 0 "
                "(every request would get 503); give another backend a weight first\n",
                name);
        return RC_REFUSED;
    }
    if (!(after = put_json(ctl, "/api/v1/ratio", json_pack("{s:i}", name, 0))))
        return RC_REFUSED;
    drain_counts(find_backend(after, name), line, sizeof(line));
    printf("%s: weight %" JSON_INTEGER_FORMAT " -> 0; %s\n", name, was, line);
    json_decref(after);
    return RC_DONE;
}

static int cmd_drain(const ctl_t *ctl, int argc, char **argv) {
    double timeout_s = DRAIN_TIMEOUT_S, since;
    json_t *state;
    int rc;

    if (argc != 1)
        return usage_error("drain needs one backend NAME (e.g. drain blue)");
    if (!valid_name(argv[0], strlen(argv[0])))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", argv[0]);
    if (!CHECK_OPTION(ctl, O_TIMEOUT, parse_duration, &timeout_s,
                      "a duration up to 24h such as 500ms, 30s, 2m"))
        return RC_USAGE;
    if (timeout_s <= 0)
        return usage_error("--timeout must be above 0");
    if ((ctl->given & OPT(O_TIMEOUT)) && !(ctl->given & OPT(O_WAIT)))
        return usage_error("--timeout goes with --wait");
    if (!(state = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    rc = drain_start(ctl, state, argv[0]);
    json_decref(state);
    since = now_s();
    if (rc != RC_DONE || !(ctl->given & OPT(O_WAIT)))
        return rc;
    return wait_drained(ctl, argv[0], since, timeout_s);
}

/* ---------------------------------------------------------------------------------------------
 * switch NAME [--steps LIST] [--interval DURATION] [--max-error-rate RATE] [--max-p99-ms MS]
 */

/* td's latency histogram bounds (latency_bounds_ms): bucket i counts requests that took at most
 * ms[i] (and more than ms[i-1]); the bucket after the last bound is +Inf. */
typedef struct bounds_s {
    double ms[MAX_BUCKETS];
    size_t n;
} bounds_t;

/* A backend's counters at one moment (or their growth between two). */
typedef struct counters_s {
    long long answered;             /* responses of every class */
    long long errors;               /* 5xx responses */
    long long buckets[MAX_BUCKETS]; /* latency histogram, not cumulative; the last is +Inf */
    size_t nbuckets;
} counters_t;

typedef struct plan_s {
    const char *green;             /* borrowed (argv): the new side */
    char old[128];                 /* the old side: td's other backend */
    int steps[WEIGHT_MAX];         /* green's weight at each step; the old side gets 100 - it */
    int nsteps, first;             /* steps[first] is the first step taken */
    double interval_s;             /* how long each step is watched */
    double max_error_rate;         /* a fraction, 0..1 */
    long max_p99_ms;               /* 0: latency is not judged */
    json_int_t green_was, old_was; /* the weights before the switch: a rollback's target */
    double share;                  /* green's share of the traffic before it, in % */
    bounds_t bounds;
    counters_t old_start; /* the old side when the switch began */
    double last_put;      /* now_s() when the last step was set */
} plan_t;

/* What one reading of td's state says about the current step. */
typedef struct reading_s {
    counters_t green;          /* green's growth since the step began */
    double green_p99, old_p99; /* ms; -1 without a sample, INFINITY above the last bound */
} reading_t;

enum step_end { STEP_OK, STEP_ROLL_BACK, STEP_STOP };

static counters_t counters_of(const json_t *backend) {
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    const json_t *resp = json_object_get(backend, "responses");
    const json_t *buckets = json_object_get(json_object_get(backend, "latency_ms"), "buckets");
    counters_t c;
    size_t i;

    memset(&c, 0, sizeof(c));
    for (i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
        c.answered += int_of(resp, classes[i], 0);
    c.errors = int_of(resp, "5xx", 0);
    c.nbuckets = json_array_size(buckets) < MAX_BUCKETS ? json_array_size(buckets) : MAX_BUCKETS;
    for (i = 0; i < c.nbuckets; i++)
        c.buckets[i] = json_integer_value(json_array_get(buckets, i));
    return c;
}

/* What was counted from `from` to `to`. */
static counters_t counters_since(const counters_t *to, const counters_t *from) {
    counters_t d = *to;
    size_t i;

    d.answered -= from->answered;
    d.errors -= from->errors;
    for (i = 0; i < d.nbuckets && i < from->nbuckets; i++)
        d.buckets[i] -= from->buckets[i];
    return d;
}

static long long samples(const counters_t *c) {
    long long n = 0;
    size_t i;

    for (i = 0; i < c->nbuckets; i++)
        n += c->buckets[i];
    return n;
}

/* p99 in ms as td computes it: the upper bound of the bucket where the 99th percentile falls;
 * INFINITY in the +Inf bucket, -1 without a sample. */
static double p99_ms(const counters_t *c, const bounds_t *b) {
    long long total = samples(c), seen = 0;
    size_t i;

    if (total <= 0)
        return -1;
    for (i = 0; i < c->nbuckets && i < b->n; i++) {
        seen += c->buckets[i];
        if ((double)seen >= 0.99 * (double)total)
            return b->ms[i];
    }
    return INFINITY;
}

/* "12 ms", "> 10000 ms" or "-". */
static cell_t ms_cell(double ms, const bounds_t *b) {
    cell_t c = {"-"};

    if (isinf(ms))
        snprintf(c.s, sizeof(c.s), "> %.0f ms", b->n ? b->ms[b->n - 1] : 0);
    else if (ms >= 0)
        snprintf(c.s, sizeof(c.s), "%.0f ms", ms);
    return c;
}

/* Checks every argument of switch into p, before td is asked anything. */
static int parse_plan(const ctl_t *ctl, int argc, char **argv, plan_t *p) {
    const char *steps = ctl->given & OPT(O_STEPS) ? ctl->opt[O_STEPS] : SWITCH_STEPS;
    const char *problem;

    memset(p, 0, sizeof(*p));
    p->interval_s = SWITCH_INTERVAL_S;
    p->max_error_rate = SWITCH_ERROR_RATE;
    if (argc != 1)
        return usage_error("switch needs one backend NAME, the new side (e.g. switch green)");
    if (!valid_name(argv[0], strlen(argv[0])))
        return usage_error("'%s': a backend name is one or more of A-Z a-z 0-9 _ -", argv[0]);
    p->green = argv[0];
    if ((problem = parse_steps(steps, p->steps, &p->nsteps)))
        return usage_error("--steps '%s': %s (e.g. 10,50,100)", steps, problem);
    if (!CHECK_OPTION(ctl, O_INTERVAL, parse_duration, &p->interval_s,
                      "a duration up to 24h such as 500ms, 30s, 2m") ||
        !CHECK_OPTION(ctl, O_MAX_ERROR_RATE, parse_rate, &p->max_error_rate,
                      "a percentage such as 1% or 0.5%, or a fraction from 0 to 1") ||
        !CHECK_OPTION(ctl, O_MAX_P99_MS, parse_p99, &p->max_p99_ms,
                      "milliseconds, an integer from 1 to 3600000"))
        return RC_USAGE;
    if (p->interval_s <= 0)
        return usage_error("--interval must be above 0");
    return RC_DONE;
}

/* Fills the plan from td's state: the old side, the weights to roll back to, where to start. */
static int prepare_plan(plan_t *p, const json_t *state) {
    const json_t *backends = json_object_get(state, "backends"), *green, *old, *v;
    size_t i;

    if (json_array_size(backends) != 2)
        return usage_error("switch needs td to have exactly two backends; it has %zu",
                           json_array_size(backends));
    if (!(green = find_backend(state, p->green)))
        return unknown_backend(state, p->green);
    old = json_array_get(backends, json_array_get(backends, 0) == green ? 1 : 0);
    if ((size_t)snprintf(p->old, sizeof(p->old), "%s", str(old, "name")) >= sizeof(p->old) ||
        strcmp(p->old, p->green) == 0) {
        fprintf(stderr, "tdctl: td's state names its backends oddly\n");
        return RC_REFUSED;
    }
    if (!has_server_up(green)) {
        fprintf(stderr, "tdctl: refused: %s has no server up; nothing changed\n", p->green);
        return RC_REFUSED;
    }
    p->green_was = int_of(green, "weight", 0);
    p->old_was = int_of(old, "weight", 0);
    p->old_start = counters_of(old);
    json_array_foreach(json_object_get(state, "latency_bounds_ms"), i, v) {
        if (p->bounds.n < MAX_BUCKETS - 1 && json_is_number(v))
            p->bounds.ms[p->bounds.n++] = json_number_value(v);
    }
    p->share = p->green_was + p->old_was > 0
                   ? 100.0 * (double)p->green_was / (double)(p->green_was + p->old_was)
                   : 0;
    while (p->steps[p->first] < p->share)
        p->first++; /* the last step is 100: never past it */
    return RC_DONE;
}

/* The old side's p99 to compare green's with: over the switch so far when it served enough,
 * else over its lifetime. */
static double old_p99(const plan_t *p, const json_t *old) {
    counters_t now = counters_of(old), during = counters_since(&now, &p->old_start);

    return p99_ms(samples(&during) >= MIN_ANSWERS ? &during : &now, &p->bounds);
}

/* Reads green's growth since the step began (green0) and both p99s from one state. */
static void take_reading(const plan_t *p, const json_t *green, const json_t *old,
                         const counters_t *green0, reading_t *r) {
    counters_t now = counters_of(green);

    r->green = counters_since(&now, green0);
    r->green_p99 = p99_ms(&r->green, &p->bounds);
    r->old_p99 = old_p99(p, old);
}

/* Judges one reading of td's state during the step where green has weight `step`: STEP_OK to
 * go on, else why not in why[n]. */
static enum step_end judge(const plan_t *p, int step, const json_t *state, const reading_t *r,
                           char *why, size_t n) {
    const json_t *green = find_backend(state, p->green), *old = find_backend(state, p->old);
    const counters_t *g = &r->green;

    if (int_of(green, "weight", -1) != step || int_of(old, "weight", -1) != WEIGHT_MAX - step) {
        snprintf(why, n,
                 "someone else changed the weights during the switch (%s=%s %s=%s); tdctl "
                 "stops here and leaves them as they are",
                 p->green, num(green, "weight").s, p->old, num(old, "weight").s);
        return STEP_STOP;
    }
    if (!has_server_up(green)) {
        snprintf(why, n, "%s has no server up any more", p->green);
        return STEP_ROLL_BACK;
    }
    if (g->answered >= MIN_ANSWERS && (double)g->errors > p->max_error_rate * (double)g->answered) {
        snprintf(why, n,
                 "%s: 5xx rate %.1f%% (%lld of %lld answers in this step) is above "
                 "--max-error-rate %g%%",
                 p->green, 100.0 * (double)g->errors / (double)g->answered, g->errors, g->answered,
                 100.0 * p->max_error_rate);
        return STEP_ROLL_BACK;
    }
    if (p->max_p99_ms && samples(g) >= MIN_ANSWERS && r->green_p99 > (double)p->max_p99_ms &&
        r->green_p99 > r->old_p99) {
        snprintf(why, n,
                 "%s: p99 latency %s (%lld answers in this step) is above --max-p99-ms %ld "
                 "and above %s's %s",
                 p->green, ms_cell(r->green_p99, &p->bounds).s, samples(g), p->max_p99_ms, p->old,
                 ms_cell(r->old_p99, &p->bounds).s);
        return STEP_ROLL_BACK;
    }
    return STEP_OK;
}

/* "  1.5s of 30.0s: green 34 answers, 0 5xx (0.0%), p99 2 ms; blue p99 5 ms" */
static void step_line(const plan_t *p, double elapsed, const reading_t *r, char *out, size_t n) {
    const counters_t *g = &r->green;

    snprintf(out, n, "  %.1fs of %.1fs: %s %lld answers, %lld 5xx (%.1f%%), p99 %s; %s p99 %s",
             elapsed, p->interval_s, p->green, g->answered, g->errors,
             g->answered > 0 ? 100.0 * (double)g->errors / (double)g->answered : 0.0,
             ms_cell(r->green_p99, &p->bounds).s, p->old, ms_cell(r->old_p99, &p->bounds).s);
}

/* One reading during a step: takes it, shows it, judges it. */
static enum step_end watch_once(const ctl_t *ctl, const plan_t *p, int step,
                                const counters_t *green0, double elapsed, progress_t *prog,
                                char *why, size_t n) {
    json_t *state = get_json(ctl, "/api/v1/state");
    const json_t *green = find_backend(state, p->green), *old = find_backend(state, p->old);
    enum step_end end = STEP_ROLL_BACK;
    reading_t r;
    char line[256];

    if (green && old) {
        take_reading(p, green, old, green0, &r);
        end = judge(p, step, state, &r, why, n);
        step_line(p, elapsed, &r, line, sizeof(line));
        /* Off a terminal, only how the step ended: not a line every SWITCH_POLL_S. */
        if (prog->tty || elapsed >= p->interval_s || end != STEP_OK)
            progress_show(prog, line);
    } else {
        snprintf(why, n, state ? "td no longer has backends %s and %s" : "lost td (%s, %s)",
                 p->green, p->old);
    }
    json_decref(state);
    return end;
}

/* Watches the step for the interval, reading td's state every SWITCH_POLL_S. */
static enum step_end watch_step(const ctl_t *ctl, const plan_t *p, int step,
                                const counters_t *green0, char *why, size_t n) {
    double start = now_s(), elapsed = 0;
    enum step_end end = STEP_OK;
    progress_t prog;

    progress_init(&prog);
    while (end == STEP_OK && elapsed < p->interval_s) {
        pause_s(min_s(SWITCH_POLL_S, p->interval_s - elapsed));
        if (interrupted) {
            snprintf(why, n, "interrupted");
            end = STEP_ROLL_BACK;
            break;
        }
        elapsed = min_s(now_s() - start, p->interval_s);
        end = watch_once(ctl, p, step, green0, elapsed, &prog, why, n);
    }
    progress_end(&prog);
    return end;
}

/* "[##########..........]  50%  green=50 blue=50  (step 2 of 3)" */
static void print_bar(const plan_t *p, int i) {
    int step = p->steps[i], filled = step / 5;
    char bar[21];

    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(20 - filled));
    bar[20] = '\0';
    printf("[%s] %3d%%  %s=%d %s=%d  (step %d of %d)\n", bar, step, p->green, step, p->old,
           WEIGHT_MAX - step, i - p->first + 1, p->nsteps - p->first);
    fflush(stdout);
}

/* Step i: green at steps[i], the old side at the rest, watched for the interval. */
static enum step_end run_step(const ctl_t *ctl, plan_t *p, int i, char *why, size_t n) {
    int step = p->steps[i];
    json_t *state = put_json(ctl, "/api/v1/ratio",
                             json_pack("{s:i,s:i}", p->green, step, p->old, WEIGHT_MAX - step));
    const json_t *green = find_backend(state, p->green);
    counters_t green0;

    if (!green) {
        snprintf(why, n, "td did not take the step to %s=%d", p->green, step);
        json_decref(state);
        return i == p->first ? STEP_STOP : STEP_ROLL_BACK;
    }
    p->last_put = now_s();
    green0 = counters_of(green);
    json_decref(state);
    print_bar(p, i);
    return watch_step(ctl, p, step, &green0, why, n);
}

/* Sets the weights back to those before the switch, after saying why; returns the exit status. */
static int roll_back(const ctl_t *ctl, const plan_t *p, const char *why) {
    json_t *state;

    fprintf(stderr, "tdctl: %s\n", why);
    state = put_json(ctl, "/api/v1/ratio",
                     json_pack("{s:I,s:I}", p->green, p->green_was, p->old, p->old_was));
    if (!state) {
        fprintf(stderr,
                "tdctl: THE ROLLBACK FAILED: set the weights back by hand: tdctl ratio "
                "%s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT "\n",
                p->green, p->green_was, p->old, p->old_was);
        return RC_REFUSED;
    }
    json_decref(state);
    fprintf(stderr,
            "tdctl: rolled back to %s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT "\n",
            p->green, p->green_was, p->old, p->old_was);
    return RC_REFUSED;
}

static void print_plan(const plan_t *p) {
    printf("switch to %s from %s (now %s=%" JSON_INTEGER_FORMAT " %s=%" JSON_INTEGER_FORMAT
           "): %d step%s of %.1fs; rolls back if %s's 5xx rate is above %g%%",
           p->green, p->old, p->green, p->green_was, p->old, p->old_was, p->nsteps - p->first,
           p->nsteps - p->first == 1 ? "" : "s", p->interval_s, p->green,
           100.0 * p->max_error_rate);
    if (p->max_p99_ms)
        printf(" or its p99 above %ld ms and %s's", p->max_p99_ms, p->old);
    printf("\n");
    if (p->first > 0)
        printf("%s already has %.0f%% of the traffic: the %d step%s below it skipped\n", p->green,
               p->share, p->first, p->first == 1 ? " is" : "s are");
}

static int run_switch(const ctl_t *ctl, plan_t *p) {
    double start = now_s();
    char why[512];
    int i;

    print_plan(p);
    for (i = p->first; i < p->nsteps; i++) {
        enum step_end end = run_step(ctl, p, i, why, sizeof(why));

        if (end == STEP_ROLL_BACK)
            return roll_back(ctl, p, why);
        if (end == STEP_STOP) {
            fprintf(stderr, "tdctl: %s\n", why);
            return RC_REFUSED;
        }
    }
    printf("all traffic goes to %s after %.1fs; waiting for %s's requests in flight\n", p->green,
           now_s() - start, p->old);
    wait_drained(ctl, p->old, p->last_put, DRAIN_TIMEOUT_S);
    printf("switched to %s: %s=100 %s=0\n", p->green, p->green, p->old);
    return RC_DONE;
}

static int cmd_switch(const ctl_t *ctl, int argc, char **argv) {
    json_t *state;
    plan_t p;
    int rc = parse_plan(ctl, argc, argv, &p);

    if (rc != RC_DONE)
        return rc;
    if (!(state = get_json(ctl, "/api/v1/state")))
        return RC_REFUSED;
    rc = prepare_plan(&p, state);
    json_decref(state);
    if (rc != RC_DONE)
        return rc;
    catch_signals();
    return run_switch(ctl, &p);
}

/* ---------------------------------------------------------------------------------------------
 * rollback, history
 */

/* The most recent entry of td's history that changed a weight (borrowed from it), or NULL. */
static json_t *last_weight_change(const json_t *history) {
    size_t i = json_array_size(history);

    while (i-- > 0) {
        json_t *e = json_array_get(history, i);
        json_t *before = json_object_get(json_object_get(e, "before"), "weights");
        json_t *after = json_object_get(json_object_get(e, "after"), "weights");

        /* A change td audited but never ran (it stopped before writing it) undoes nothing. */
        if (json_is_false(json_object_get(e, "applied")))
            continue;
        if (json_is_object(before) && json_is_object(after) && !json_equal(before, after))
            return e;
    }
    return NULL;
}

/* true when every backend named in weights has that weight in td's state. */
static bool weights_are(const json_t *state, const json_t *weights) {
    const char *name;
    json_t *w;

    json_object_foreach((json_t *)weights, name, w) {
        if (!json_is_integer(w) ||
            int_of(find_backend(state, name), "weight", -1) != json_integer_value(w))
            return false;
    }
    return true;
}

/* "blue=50 green=50" */
static void weights_text(const json_t *weights, char *out, size_t n) {
    const char *name;
    json_t *w;
    size_t len = 0;

    out[0] = '\0';
    json_object_foreach((json_t *)weights, name, w) {
        if (len < n)
            len += (size_t)snprintf(out + len, n - len, "%s%s=%" JSON_INTEGER_FORMAT,
                                    len ? " " : "", name, json_integer_value(w));
    }
}

/* Sets the weights back to the `before` of a history entry. */
static int undo_change(const ctl_t *ctl, const json_t *change) {
    const json_t *weights = json_object_get(json_object_get(change, "before"), "weights");
    json_t *state = get_json(ctl, "/api/v1/state");
    char text[512];
    bool already;

    if (!state)
        return RC_REFUSED;
    already = weights_are(state, weights);
    json_decref(state);
    weights_text(weights, text, sizeof(text));
    if (already) {
        printf("the weights already are those before \"%s\" (%s): nothing to do\n",
               str(change, "what"), text);
        return RC_DONE;
    }
    if (!ctl->json)
        printf("undoing \"%s\" of %s from %s: %s\n\n", str(change, "what"), str(change, "time"),
               str(change, "client"), text);
    return put_for_state(ctl, "/api/v1/ratio", json_deep_copy(weights));
}

static int cmd_rollback(const ctl_t *ctl, int argc, char **argv) {
    json_t *history, *change;
    int rc = RC_REFUSED;

    if (argc > 0)
        return usage_error("rollback takes no argument, got '%s'", argv[0]);
    if (!(history = get_json(ctl, "/api/v1/history")))
        return RC_REFUSED;
    if (!json_is_array(history))
        fprintf(stderr, "tdctl: td's history is not a list\n");
    else if (!(change = last_weight_change(history)))
        fprintf(stderr, "tdctl: td's history has no change of weights to roll back\n");
    else
        rc = undo_change(ctl, change);
    json_decref(history);
    return rc;
}

static void print_history(const json_t *history) {
    size_t i, width = strlen("CLIENT");
    const json_t *e;

    if (json_array_size(history) == 0) {
        printf("no change recorded\n");
        return;
    }
    json_array_foreach(history, i, e) {
        size_t len = strlen(str(e, "client"));
        if (len > width)
            width = len > 64 ? 64 : len;
    }
    printf("%-24s  %-*s  %s\n", "TIME", (int)width, "CLIENT", "WHAT");
    json_array_foreach(history, i, e) {
        const char *client = str(e, "client");
        printf("%-24s  %-*s  %s%s\n", str(e, "time"), (int)width, *client ? client : "-",
               str(e, "what"),
               json_is_false(json_object_get(e, "applied")) ? " [not applied]" : "");
    }
}

static int cmd_history(const ctl_t *ctl, int argc, char **argv) {
    json_t *history;
    reply_t r;
    int rc;

    if (argc > 0)
        return usage_error("history takes no argument, got '%s'", argv[0]);
    rc = call(ctl, "GET", "/api/v1/history", NULL, 0, &r);
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (history = parse_reply(&r))) {
        print_history(history);
        json_decref(history);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Options and dispatch
 */

static int cmd_help(const ctl_t *ctl, int argc, char **argv);

static const struct command {
    const char *name;
    int (*run)(const ctl_t *ctl, int argc, char **argv);
    unsigned options; /* OPT() bits of the command options it takes */
    const char *help; /* its manual page */
} commands[] = {
    {"status", cmd_status, 0, help_status},
    {"ratio", cmd_ratio, 0, help_ratio},
    {"method", cmd_method, 0, help_method},
    {"config", cmd_config, 0, help_config},
    {"drain", cmd_drain, OPT(O_WAIT) | OPT(O_TIMEOUT), help_drain},
    {"switch", cmd_switch,
     OPT(O_STEPS) | OPT(O_INTERVAL) | OPT(O_MAX_ERROR_RATE) | OPT(O_MAX_P99_MS), help_switch},
    {"rollback", cmd_rollback, 0, help_rollback},
    {"history", cmd_history, 0, help_history},
    {"help", cmd_help, 0, help_help},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))
#define COMMAND_LIST "status, ratio, method, config, drain, switch, rollback, history or help"

static const struct command *find_command(const char *name) {
    size_t i;

    for (i = 0; name && i < NCOMMANDS; i++) {
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    }
    return NULL;
}

/* Prints the page of the command `name`, or the general one when name is NULL or unknown. */
static int print_help(const char *name) {
    const struct command *cmd = find_command(name);

    fputs(cmd ? cmd->help : help_text, stdout);
    return RC_DONE;
}

static int cmd_help(const ctl_t *ctl, int argc, char **argv) {
    (void)ctl;
    if (argc > 1)
        return usage_error("help takes at most one COMMAND");
    if (argc == 1 && !find_command(argv[0]))
        return usage_error("no command '%s': use %s", argv[0], COMMAND_LIST);
    return print_help(argc ? argv[0] : NULL);
}

enum { LONG_ONLY = 256 }; /* + O_*: the command options, which have no short form */

static const struct option longopts[] = {
    {"admin", required_argument, NULL, 'a'},
    {"token", required_argument, NULL, 't'},
    {"json", no_argument, NULL, 'j'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"wait", no_argument, NULL, LONG_ONLY + O_WAIT},
    {"timeout", required_argument, NULL, LONG_ONLY + O_TIMEOUT},
    {"steps", required_argument, NULL, LONG_ONLY + O_STEPS},
    {"interval", required_argument, NULL, LONG_ONLY + O_INTERVAL},
    {"max-error-rate", required_argument, NULL, LONG_ONLY + O_MAX_ERROR_RATE},
    {"max-p99-ms", required_argument, NULL, LONG_ONLY + O_MAX_P99_MS},
    {NULL, 0, NULL, 0},
};

/* Parses the options (anywhere on the line: getopt_long moves the operands behind them). Returns
 * -1 to go on with the operands at argv[optind], or an exit status for --version and errors. */
static int parse_options(ctl_t *ctl, int argc, char **argv) {
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
            ctl->help = true;
            break;
        case 'V':
            puts("tdctl " TDCTL_VERSION);
            return RC_DONE;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            if (c >= LONG_ONLY && c < LONG_ONLY + NOPT) {
                ctl->given |= OPT(c - LONG_ONLY);
                ctl->opt[c - LONG_ONLY] = optarg;
                break;
            }
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

/* A command option given to a command that does not take it is a usage error, not ignored. */
static int check_command_options(const ctl_t *ctl, const struct command *cmd) {
    int o;

    for (o = 0; o < NOPT; o++) {
        if ((ctl->given & OPT(o)) && !(cmd->options & OPT(o)))
            return usage_error("--%s is not an option of %s (see tdctl %s --help)", option_names[o],
                               cmd->name, cmd->name);
    }
    return -1;
}

int main(int argc, char **argv) {
    ctl_t ctl = {.admin = getenv("TD_ADMIN"), .token = getenv("TD_TOKEN")};
    const struct command *cmd;
    int rc;

    if (!ctl.admin || !*ctl.admin)
        ctl.admin = DEFAULT_ADMIN;
    if ((rc = parse_options(&ctl, argc, argv)) >= 0)
        return rc;
    if (ctl.help)
        return print_help(optind < argc ? argv[optind] : NULL);
    if ((rc = check_target(&ctl)) >= 0)
        return rc;
    if (optind >= argc)
        return usage_error("missing COMMAND: " COMMAND_LIST);
    if (!(cmd = find_command(argv[optind])))
        return usage_error("unknown command '%s': use " COMMAND_LIST, argv[optind]);
    if ((rc = check_command_options(&ctl, cmd)) >= 0)
        return rc;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "tdctl: cannot start libcurl\n");
        return RC_REFUSED;
    }
    rc = cmd->run(&ctl, argc - optind - 1, argv + optind + 1);
    curl_global_cleanup();
    return rc;
}
