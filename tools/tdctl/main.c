/* tdctl: the command-line client of td's admin API (the "Admin API" of docs/ARCHITECTURE.md).
 *
 * One run is one command: check every argument first (a usage error never reaches td), then make
 * HTTP calls through call() (http.c), the only function that touches libcurl, and print the reply
 * as a table, a one-line summary, or (--json) td's JSON as it came. The deploy commands (drain,
 * switch) make a call, then watch td by polling it until the traffic has moved (switch: until
 * td's rollout has ended).
 *
 * Exit status: 0 done, 1 refused by td, rolled back or td unreachable, 2 usage error, 130 a
 * switch detached from its rollout.
 *
 * This file: the options, the dispatch to a command, --help and the manual pages; each command
 * group has a file of its own (tdctl.h lists them). */

#include "tdctl.h"

#include <curl/curl.h>

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_ADMIN "http://127.0.0.1:9090"

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
    "    applies a change to the very next request, drops no connection, and keeps\n"
    "    it in its state file (never in its config file) so that a restart keeps it.\n"
    "    tdctl checks its arguments before it contacts td. Its deploy commands move\n"
    "    traffic from one backend to another and watch it go: drain waits for a\n"
    "    backend's requests to finish, switch starts a rollout that td runs: the\n"
    "    traffic moves in steps and goes back by itself when the new side answers\n"
    "    worse than the old one.\n"
    "\n"
    "OPTIONS\n"
    "    -a, --admin URL\n"
    "        td's admin API, as set by admin.address in td's config.\n"
    "        Default: $TD_ADMIN, else " DEFAULT_ADMIN ".\n"
    "    -t, --token TOKEN\n"
    "        Send \"Authorization: Bearer TOKEN\" with every call (admin.token in td's\n"
    "        config). Default: $TD_TOKEN. An empty token sends none.\n"
    "    --cacert FILE\n"
    "        With an https:// admin URL (admin.tls in td's config): verify td's\n"
    "        certificate with the CA certificates in FILE (PEM) instead of the\n"
    "        system's. Default: $TD_CACERT.\n"
    "    --insecure\n"
    "        With an https:// admin URL: do not verify td's certificate (tests only).\n"
    "    -j, --json\n"
    "        Print td's JSON reply as it came instead of a table or a summary;\n"
    "        for scripts (status, ratio, method, config, rollout, rollback, history).\n"
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
    "    config get | config put FILE | config diff | config reset\n"
    "        Print td's running configuration, or replace all of it; show what runs\n"
    "        differently from td's config file, or drop those changes.\n"
    "    drain NAME [--wait] [--timeout DURATION]\n"
    "        Put NAME in state drain (no new requests); with --wait, wait until its\n"
    "        requests in flight and its tunnels are gone.\n"
    "    state NAME ready|drain|maint\n"
    "        Set NAME's state: ready (by its weight), drain (no new requests) or\n"
    "        maint (no user traffic at all, for the colour being redeployed).\n"
    "    switch NAME [--steps LIST] [--step-time DURATION] [--max-error-rate RATE]\n"
    "           [--on-failure rollback|pause] [--detach] ...\n"
    "        Start a rollout to NAME in td, which moves the traffic in steps, judges\n"
    "        each by NAME's 5xx rate and latency against the old side's, and rolls\n"
    "        back by itself; follow it with a progress bar (Ctrl-C detaches).\n"
    "    rollout [status] | pause | resume | promote [--full] | abort\n"
    "        Show td's current or last rollout, or drive it.\n"
    "    rollback\n"
    "        Undo the most recent change of weights.\n"
    "    history\n"
    "        The changes made to td: when, from which client, what.\n"
    "    cluster | cluster init FILE | cluster rotate-key\n"
    "        The nodes of a td cluster (cluster mode: the shared state in etcd),\n"
    "        seed an empty cluster with FILE, or rotate the sticky-cookie key.\n"
    "\n"
    "ENVIRONMENT\n"
    "    TD_ADMIN    Admin API URL when --admin is not given.\n"
    "    TD_TOKEN    Token when --token is not given.\n"
    "    TD_CACERT   CA file when --cacert is not given.\n"
    "    http_proxy, no_proxy and the like are honoured as libcurl does; set\n"
    "    no_proxy=127.0.0.1,localhost if a proxy is set and td is local.\n"
    "\n"
    "EXIT STATUS\n"
    "    0   Done.\n"
    "    1   td refused the request (its message is printed), td could not be reached\n"
    "        (\"cannot reach td at URL: reason\"), a switch was refused, rolled back or\n"
    "        aborted, or a wait ended before the traffic was gone. See each page.\n"
    "    2   Usage error: an unknown option or command, or an invalid argument. td is\n"
    "        left unchanged.\n"
    "    130 switch was interrupted: it detached, the rollout keeps running in td.\n"
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
    "    computes it: its weight among the ready backends that are up, 0% when it\n"
    "    has no server up or is in drain or maint), STATE (up or down, from health\n"
    "    checks), IN-FLIGHT requests, REQUESTS served and 5XX responses (td's own\n"
    "    502/503/504 included). A backend in state drain or maint (tdctl state)\n"
    "    shows it next to its name: \"blue (maint)\". Each backend's servers follow,\n"
    "    indented, with their own weight, state, counters and FAILURES. With method\n"
    "    failover the method line names the primary (the highest weight among the\n"
    "    ready backends) and the backups, a \"serving\" line says which backend takes\n"
    "    all new requests and why, and SHARE is 100% for it and 0% for the others.\n"
    "    A \"td\" line counts td's own 503s for requests no backend could take.\n"
    "    A \"rollout\" line names td's current or last rollout, its state and step\n"
    "    (tdctl rollout shows all of it).\n"
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
    "          [--wait-all]\n"
    "    " SYNOPSIS_GLOBAL "ratio A:B [--wait-all]\n"
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
    "    In cluster mode the change is made for every node; --wait-all answers\n"
    "    only once every live node has applied it (td waits up to 5 s, then names\n"
    "    the nodes that have not: exit status 1, the change itself is made).\n"
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
    "    tdctl config - print or replace td's configuration, compare it with its file\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "config get\n"
    "    " SYNOPSIS_GLOBAL "config put FILE\n"
    "    " SYNOPSIS_GLOBAL "config diff\n"
    "    " SYNOPSIS_GLOBAL "config reset\n"
    "\n"
    "DESCRIPTION\n"
    "    td never writes its config file. Every change made through its API (ratio,\n"
    "    method, config put, ...) is kept as an override in td's state file (the\n"
    "    config's state_file, by default FILE.state.json next to the config file):\n"
    "    the key, the value that runs, and the file's value it replaced. At start and\n"
    "    on SIGHUP the overrides apply on top of the file, key by key; where the\n"
    "    file's value of a key has changed since, the file wins for that key.\n"
    "\n"
    "    config get prints td's running configuration: a JSON document that config\n"
    "    put takes back. Listeners, workers and the admin address are those that\n"
    "    run; a change to them applies at the next restart.\n"
    "\n"
    "    config put replaces td's whole configuration with FILE (\"-\" reads standard\n"
    "    input). td checks all of it and applies it at once, or changes nothing and\n"
    "    answers with every problem found, at its LINE:COL in FILE, which tdctl\n"
    "    prints. A FILE that is not JSON at all is not sent: tdctl prints\n"
    "    FILE:LINE:COL and the problem. Prints the new config version.\n"
    "\n"
    "    config diff prints one line per key where what runs differs from the config\n"
    "    file as td last read it, with the override that makes it so:\n"
    "        backends.blue.weight: file 50, running 0 (override since\n"
    "        2026-12-01T12:00:00.000Z by 127.0.0.1)\n"
    "    then one line per setting the config asks for that applies only at the\n"
    "    next restart (listeners, workers, admin.address). It warns on standard\n"
    "    error when td cannot save its changes.\n"
    "\n"
    "    config reset drops every override, at once and without asking: td runs its\n"
    "    config file alone again (as it last read it; send SIGHUP first to read an\n"
    "    edited file). The reset is recorded in the history like any change.\n"
    "\n"
    "EXIT STATUS\n"
    "    get, put, reset: 0 done; 1 td refused or is unreachable, or FILE is not\n"
    "    JSON; 2 usage error or an unreadable FILE.\n"
    "    diff, as diff(1): 0 no difference; 1 differences printed; 2 td could not be\n"
    "    reached or a usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl config get > td.json && vi td.json && tdctl config put td.json\n"
    "    tdctl config diff || echo \"td runs changes its config file does not have\"\n"
    "    tdctl config reset\n";

static const char help_drain[] =
    "NAME\n"
    "    tdctl drain - stop sending new requests to a backend, and wait for the rest\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_TARGET "drain NAME [--wait] [--timeout DURATION]\n"
    "\n"
    "DESCRIPTION\n"
    "    Puts backend NAME in state drain (as tdctl state NAME drain); every weight\n"
    "    stays, so tdctl state NAME ready undoes it. td sends NAME no new request\n"
    "    from the very next one - in failover too, where NAME is then neither\n"
    "    primary nor backup; requests already in flight there finish, WebSocket and\n"
    "    other tunnels stay open, and sticky clients pinned to NAME stay with it,\n"
    "    until td's timeouts.drain_ms has passed: then td closes NAME's tunnels and\n"
    "    re-assigns its sticky clients. Refused when no other ready backend could\n"
    "    take the traffic (one with a weight above 0; in failover any): every\n"
    "    request would get 503. Prints NAME's state before and after, and what is\n"
    "    still in flight. When NAME is already draining (state drain, or weight 0\n"
    "    outside failover) or in maint, nothing is changed.\n"
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
    "    0   NAME is draining and, with --wait, drained or past drain_ms.\n"
    "    1   td refused or is unreachable, draining would leave no other backend to\n"
    "        take the traffic, or --timeout passed with requests still in flight.\n"
    "    2   Usage error: no NAME, an unknown NAME, a bad DURATION.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl drain blue --wait && deploy-blue.sh\n"
    "    tdctl drain green --wait --timeout 5m\n";

static const char help_state[] =
    "NAME\n"
    "    tdctl state - set a backend's state: ready, drain or maint\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "state NAME ready|drain|maint\n"
    "\n"
    "DESCRIPTION\n"
    "    Sets backend NAME's state (PUT /api/v1/backends/NAME); its weight stays.\n"
    "    ready: NAME takes traffic by its weight (the default). drain: no new\n"
    "    requests (in failover it is neither primary nor backup); requests in\n"
    "    flight finish and sticky clients pinned to NAME stay until td's\n"
    "    timeouts.drain_ms. maint: no user traffic of any kind - not by weight, not\n"
    "    as a failover backup, not by a sticky pin (such clients are re-assigned at\n"
    "    once) - even when every other backend is down; only the preview route and\n"
    "    health checks reach it. That is the state of the colour being redeployed.\n"
    "    Prints the state before and after (--json: td's new state as it came).\n"
    "\n"
    "EXIT STATUS\n"
    "    0 applied; 1 td refused or is unreachable; 2 usage error: no NAME or an\n"
    "    unknown one, an unknown state.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl state blue maint && deploy-blue.sh && tdctl state blue ready\n";

static const char help_switch[] =
    "NAME\n"
    "    tdctl switch - start a rollout of a backend in td and follow it\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_TARGET "switch NAME [--steps LIST]\n"
    "          [--step-time DURATION] [--ramp DURATION] [--max-error-rate RATE]\n"
    "          [--max-p99-ms MS] [--min-requests N] [--on-failure rollback|pause]\n"
    "          [--pre-check PATH] [--drain] [--detach]\n"
    "\n"
    "DESCRIPTION\n"
    "    Asks td to run a rollout to NAME (POST /api/v1/rollout): td moves the\n"
    "    traffic to NAME step by step, judges every step by NAME's answers against\n"
    "    those of the side it replaces (the baseline), and rolls back or pauses by\n"
    "    itself when a step fails. The rollout runs in td, not in tdctl: it goes on\n"
    "    when tdctl ends, and tdctl rollout pause|resume|promote|abort drive it.\n"
    "    A NAME in state drain or maint (the side just redeployed) took no traffic:\n"
    "    it is first set to weight 0 (while the others carry the traffic) and\n"
    "    ready, and back when td refuses the rollout, so the rollout starts from 0\n"
    "    and runs every step, the first one first. td refuses it, with nothing\n"
    "    changed, when another rollout is active, NAME has all the traffic already,\n"
    "    has no server up, or an option is out of its range.\n"
    "\n"
    "    Then tdctl follows the rollout, reading it every 0.5 s. On a terminal it\n"
    "    shows a progress bar per step, rewritten in place:\n"
    "        [##########----------] step 2/3 green 50% 15s left  green 512 req\n"
    "        0.20% p99 25ms vs blue 4601 req 0.19% p99 24ms\n"
    "    (the step's time gone, NAME's weight, the time left in the step, and the\n"
    "    answers counted in the step, 5xx rate and p99 latency of NAME, the target,\n"
    "    and of the baseline). Otherwise it prints a line when a step starts, one\n"
    "    with each step's final figures, and one per change of the rollout's state\n"
    "    (checking, running, paused, draining, ...) with td's reason.\n"
    "\n"
    "    Ctrl-C (SIGINT, or SIGTERM) does not stop the rollout: tdctl stops\n"
    "    following it, prints \"detached: rollout ID keeps running in td; tdctl\n"
    "    rollout pause|abort to stop it\" and exits 130.\n"
    "\n"
    "OPTIONS\n"
    "    Options not given take td's defaults (shown by tdctl rollout status).\n"
    "    --steps LIST\n"
    "        NAME's weights, comma-separated integers from 1 to 100, strictly\n"
    "        increasing, ending at 100. Default: " SWITCH_STEPS ".\n"
    "    --step-time DURATION, --interval DURATION\n"
    "        How long each step lasts and is judged: whole seconds from 1s to 24h,\n"
    "        as 30s, 2m (a bare number is seconds); a step shorter than 5s is\n"
    "        judged every second after its first fifth. Default: td's, 60s.\n"
    "    --ramp DURATION\n"
    "        Move the weight of a step gradually over DURATION (at most the step\n"
    "        time). Default: 0s, at once.\n"
    "    --max-error-rate RATE\n"
    "        The highest tolerated 5xx rate of NAME: a percentage (1%, 0.5%) or a\n"
    "        fraction from 0 to 1 (0.01). Default: 1%.\n"
    "    --max-p99-ms MS\n"
    "        The highest tolerated p99 latency of NAME in milliseconds (1 to\n"
    "        3600000). Default: latency is judged against the baseline only.\n"
    "    --min-requests N\n"
    "        Answers of NAME a step needs before td may fail it. Default: 200.\n"
    "    --on-failure rollback|pause\n"
    "        When a step fails: put the weights back to those before the rollout\n"
    "        (rollback, the default), or hold them and wait for a person (pause).\n"
    "    --pre-check PATH\n"
    "        Before the first step, td sends requests for PATH straight to NAME's\n"
    "        servers (as the preview route reaches them, no token needed); the\n"
    "        rollout starts only if they answer 2xx.\n"
    "    --drain\n"
    "        After the last step, wait until the old side has drained.\n"
    "    --detach\n"
    "        Start the rollout and exit 0 at once, without following it.\n"
    "\n"
    "EXIT STATUS\n"
    "    0   The rollout succeeded: all traffic goes to NAME (or, with --detach, it\n"
    "        was started).\n"
    "    1   It was rolled back or aborted (td's reason is printed), td refused it\n"
    "        (nothing changed), or td could not be reached for 10 s while tdctl\n"
    "        followed it (the rollout may still run there).\n"
    "    2   Usage error, nothing changed: no NAME or an unknown one, a bad LIST,\n"
    "        DURATION, RATE, MS or N.\n"
    "    130 Interrupted: tdctl detached, the rollout keeps running in td.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl switch green\n"
    "    tdctl switch green --steps 1,5,25,50,100 --step-time 2m --max-p99-ms 250\n"
    "    tdctl switch blue --pre-check /healthz --on-failure pause --drain\n";

static const char help_rollout[] =
    "NAME\n"
    "    tdctl rollout - show td's rollout, pause, resume, promote or abort it\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "rollout [status]\n"
    "    " SYNOPSIS_GLOBAL "rollout pause | resume | abort\n"
    "    " SYNOPSIS_GLOBAL "rollout promote [--full]\n"
    "\n"
    "DESCRIPTION\n"
    "    A rollout (started by tdctl switch, the web console or the API) runs in\n"
    "    td. status (the default) prints the current or last one: its id, state\n"
    "    (checking, running, paused, draining; then succeeded, rolled_back or\n"
    "    aborted), the two sides, the step it is at and the time left in it, the\n"
    "    weights now and before the rollout, and one row per step: its weight,\n"
    "    its state (pending, running, passed, failed, ...) and the figures td\n"
    "    judged it by, for the target (the new side) and the baseline (the old\n"
    "    side): answers counted, 5xx rate, p99 latency; then the reason it ended\n"
    "    or paused. With --json, td's rollout object as it came.\n"
    "\n"
    "    pause holds the current weights: no further step, no failure judged.\n"
    "    resume goes on from the step paused. promote moves to the next step now,\n"
    "    skipping the rest of this step's time and judgement; with --full, straight\n"
    "    to 100%. abort puts the weights back to those before the rollout, at once.\n"
    "    Each prints the rollout as td answers (--json: as it came).\n"
    "\n"
    "OPTIONS\n"
    "    --full\n"
    "        promote: all traffic to the new side now, the last step.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown or done (status: also when td has had no rollout, \"no rollout\n"
    "    yet\"); 1 td refused (no active rollout, or the action does not apply in\n"
    "    its state, such as resume when not paused) or is unreachable; 2 usage\n"
    "    error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl rollout\n"
    "    tdctl rollout pause && tdctl rollout resume\n"
    "    tdctl rollout promote --full\n"
    "    tdctl --json rollout | jq .steps_detail\n";

static const char help_rollback[] =
    "NAME\n"
    "    tdctl rollback - undo the most recent change of weights\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "rollback\n"
    "\n"
    "DESCRIPTION\n"
    "    Right after a rollout (tdctl switch), one that has ended with no change\n"
    "    of weights since, rollback restores the weights from before the whole\n"
    "    rollout (its weights_before), not those before its last step. While a\n"
    "    rollout is active it is refused: tdctl rollout abort does that.\n"
    "    Otherwise it finds, in td's history of changes (see tdctl history), the\n"
    "    most recent one that changed a backend's weight - a ratio, a\n"
    "    config put or a reload - and sets the weights back to what they were before\n"
    "    it (a change marked [not applied] is passed over). Only weights are\n"
    "    restored (not the routing method nor the rest of a config). The rollback\n"
    "    is a change itself: a second rollback undoes the first. Prints the change\n"
    "    undone and the new state (--json: the state as it\n"
    "    came). When the weights already are those, nothing is changed.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 weights restored (or already so); 1 no change of weights in the history,\n"
    "    a rollout is active, td refused (a backend of then no longer exists) or is\n"
    "    unreachable;\n"
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
    "    in cluster mode NODE (the node whose API took it), CLIENT (the address the\n"
    "    change came from, or \"signal\" for a SIGHUP reload) and WHAT changed.\n"
    "    td keeps the last 256 changes, also across restarts. A change td recorded\n"
    "    but never ran (it was stopped before it wrote its state file) ends in\n"
    "    [not applied], and td's note follows it.\n"
    "    With --json, td's log as it came: each entry also has the routing method\n"
    "    and every weight before and after the change (\"applied\": false on one\n"
    "    that never ran).\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown; 1 td unreachable or refused; 2 usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl history | tail -n 5\n";

static const char help_cluster[] =
    "NAME\n"
    "    tdctl cluster - the nodes of a td cluster, its seeding and its sticky key\n"
    "\n"
    "SYNOPSIS\n"
    "    " SYNOPSIS_GLOBAL "cluster\n"
    "    " SYNOPSIS_GLOBAL "cluster init FILE\n"
    "    " SYNOPSIS_GLOBAL "cluster rotate-key\n"
    "\n"
    "DESCRIPTION\n"
    "    In cluster mode (the \"cluster\" key of td's config) several td nodes share\n"
    "    one desired state in etcd. \"tdctl cluster\" lists the nodes as the node\n"
    "    asked sees them (GET /api/v1/cluster), one row each: NODE (the one asked\n"
    "    marked \"*\"), ADMIN (its admin URL), APPLIED (the etcd revision it runs),\n"
    "    LAG (revisions behind the shared state's latest change), READY (its\n"
    "    /readyz) and REQUESTS (its total, read from its admin API). Above it, the\n"
    "    revision the node asked applied, and etcd's own when it is later (node\n"
    "    records and audit entries count as etcd revisions too). Below the table:\n"
    "    the nodes that did not answer, the disagreements between nodes (\"green\n"
    "    127.0.0.1:8102 down on td-b only\"), and whether the node asked reaches the\n"
    "    store.\n"
    "    \"cluster init FILE\" seeds an empty cluster with the config FILE (or - for\n"
    "    standard input): its shared part (all but listeners, workers, admin,\n"
    "    cluster, state_file, pid_file and access_log) becomes the state of every\n"
    "    node. Refused when the cluster is already initialised. Prints the etcd\n"
    "    revision.\n"
    "    \"cluster rotate-key\" makes a new sticky-cookie key: it signs from now on,\n"
    "    and cookies signed with the previous key are still honoured.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 shown or done; 1 td unreachable or refused (not in cluster mode, already\n"
    "    initialised, the store unreachable); 2 usage error.\n"
    "\n"
    "EXAMPLES\n"
    "    tdctl --admin http://10.0.0.5:9090 cluster\n"
    "    tdctl cluster init td.json\n";

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
    {"ratio", cmd_ratio, OPT(O_WAIT_ALL), help_ratio},
    {"method", cmd_method, 0, help_method},
    {"config", cmd_config, 0, help_config},
    {"drain", cmd_drain, OPT(O_WAIT) | OPT(O_TIMEOUT), help_drain},
    {"state", cmd_state, 0, help_state},
    {"switch", cmd_switch,
     OPT(O_STEPS) | OPT(O_INTERVAL) | OPT(O_STEP_TIME) | OPT(O_RAMP) | OPT(O_MAX_ERROR_RATE) |
         OPT(O_MAX_P99_MS) | OPT(O_MIN_REQUESTS) | OPT(O_ON_FAILURE) | OPT(O_PRE_CHECK) |
         OPT(O_DRAIN) | OPT(O_DETACH),
     help_switch},
    {"rollout", cmd_rollout, OPT(O_FULL), help_rollout},
    {"rollback", cmd_rollback, 0, help_rollback},
    {"history", cmd_history, 0, help_history},
    {"cluster", cmd_cluster, 0, help_cluster},
    {"help", cmd_help, 0, help_help},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))
#define COMMAND_LIST                                                                               \
    "status, ratio, method, config, drain, state, switch, rollout, rollback, history, cluster or " \
    "help"

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
    {"cacert", required_argument, NULL, 'C'},
    {"insecure", no_argument, NULL, 'k'},
    {"json", no_argument, NULL, 'j'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"wait", no_argument, NULL, LONG_ONLY + O_WAIT},
    {"timeout", required_argument, NULL, LONG_ONLY + O_TIMEOUT},
    {"steps", required_argument, NULL, LONG_ONLY + O_STEPS},
    {"interval", required_argument, NULL, LONG_ONLY + O_INTERVAL},
    {"max-error-rate", required_argument, NULL, LONG_ONLY + O_MAX_ERROR_RATE},
    {"max-p99-ms", required_argument, NULL, LONG_ONLY + O_MAX_P99_MS},
    {"step-time", required_argument, NULL, LONG_ONLY + O_STEP_TIME},
    {"ramp", required_argument, NULL, LONG_ONLY + O_RAMP},
    {"min-requests", required_argument, NULL, LONG_ONLY + O_MIN_REQUESTS},
    {"on-failure", required_argument, NULL, LONG_ONLY + O_ON_FAILURE},
    {"pre-check", required_argument, NULL, LONG_ONLY + O_PRE_CHECK},
    {"drain", no_argument, NULL, LONG_ONLY + O_DRAIN},
    {"detach", no_argument, NULL, LONG_ONLY + O_DETACH},
    {"full", no_argument, NULL, LONG_ONLY + O_FULL},
    {"wait-all", no_argument, NULL, LONG_ONLY + O_WAIT_ALL},
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
        case 'C':
            ctl->cacert = optarg;
            break;
        case 'k':
            ctl->insecure = true;
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
    if (ctl->cacert && !*ctl->cacert)
        ctl->cacert = NULL;
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
    ctl_t ctl = {
        .admin = getenv("TD_ADMIN"), .token = getenv("TD_TOKEN"), .cacert = getenv("TD_CACERT")};
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
