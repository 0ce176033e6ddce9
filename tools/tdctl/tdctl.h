/* tdctl: what the files of tools/tdctl/ share. One file per command group (git's builtin/
 * layout), below them the HTTP client and the state table:
 *
 *   main.c     options, dispatch to a command, --help and the manual pages
 *   status.c   status; replies that carry td's state        ratio.c    ratio, method
 *   config.c   config get, config put                        drain.c    drain [--wait]
 *   rollout.c  switch, rollout: td's rollouts started,       history.c  rollback, history
 *              followed and driven                           state.c    state NAME ready|...
 *   cluster.c  cluster, cluster init FILE, cluster rotate-key; status's cluster line
 *   http.c     the only libcurl caller: one admin API call, td's refusals, JSON replies
 *   table.c    td's state document: member lookups, table cells, the status table
 *   args.c     usage errors and the checks of operand and option values
 *   watch.c    clock, pauses, signals and the progress line of drain and switch
 *
 * A command file calls down into http.c, table.c, args.c and watch.c; those four call none of
 * the command files. Between commands: ratio.c, history.c and the others reply with status.c's
 * put_for_state(), and history.c's rollback asks rollout.c for the last rollout. */

#ifndef TDCTL_H
#define TDCTL_H

#include <jansson.h>

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "td/version.h"

#define TDCTL_VERSION TD_VERSION /* tdctl ships with td: one version */
#define WEIGHT_MAX 100
#define BODY_MAX (16u << 20)     /* bytes: a reply or a config file; real ones are a few KiB */
#define DRAIN_TIMEOUT_S 60.0     /* drain --wait: default --timeout */
#define SWITCH_STEPS "10,50,100" /* switch: default --steps (its manual page says it too) */
#define SWITCH_STEP_S 60.0       /* td's default step_s: a --ramp is checked against it */

/* Exit status: 0 done, 1 refused by td, rolled back or td unreachable, 2 usage error; 130 (as a
 * shell reports SIGINT) when switch was interrupted and left the rollout running in td. */
enum { RC_DONE = 0, RC_REFUSED = 1, RC_USAGE = 2, RC_DETACHED = 130 };

/* The options of one command (the others are global); a bit each in ctl_t.given. */
enum {
    O_WAIT,
    O_TIMEOUT,
    O_STEPS,
    O_INTERVAL,
    O_MAX_ERROR_RATE,
    O_MAX_P99_MS,
    O_STEP_TIME,
    O_RAMP,
    O_MIN_REQUESTS,
    O_ON_FAILURE,
    O_PRE_CHECK,
    O_DRAIN,
    O_DETACH,
    O_FULL,
    O_WAIT_ALL,
    NOPT
};
#define OPT(o) (1u << (o))

/* Their names without the leading "--", indexed by O_* (args.c). */
extern const char *const option_names[NOPT];

typedef struct ctl_s {
    const char *admin;     /* borrowed (argv or environment): base URL of td's admin API */
    const char *token;     /* borrowed; NULL for no Authorization header */
    const char *cacert;    /* borrowed: CA file to verify an https admin URL with; NULL: system */
    bool insecure;         /* --insecure: do not verify the admin API's certificate */
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

/* One printed value; returned by value so it can be used inside a printf() argument list. */
typedef struct cell_s {
    char s[32];
} cell_t;

/* One line of progress, rewritten in place on a terminal, else printed each time it changes. */
typedef struct progress_s {
    bool tty;       /* stdout is a terminal */
    bool open;      /* a line is on the terminal without its newline yet */
    char last[256]; /* the line shown last */
} progress_t;

/* ---------------------------------------------------------------------------------------------
 * Commands: each takes the arguments after its name, checks them all, then calls td; returns the
 * exit status. */

int cmd_status(const ctl_t *ctl, int argc, char **argv);   /* status.c */
int cmd_ratio(const ctl_t *ctl, int argc, char **argv);    /* ratio.c */
int cmd_method(const ctl_t *ctl, int argc, char **argv);   /* ratio.c */
int cmd_config(const ctl_t *ctl, int argc, char **argv);   /* config.c */
int cmd_drain(const ctl_t *ctl, int argc, char **argv);    /* drain.c */
int cmd_state(const ctl_t *ctl, int argc, char **argv);    /* state.c */
int cmd_switch(const ctl_t *ctl, int argc, char **argv);   /* rollout.c */
int cmd_rollout(const ctl_t *ctl, int argc, char **argv);  /* rollout.c */
int cmd_rollback(const ctl_t *ctl, int argc, char **argv); /* history.c */
int cmd_history(const ctl_t *ctl, int argc, char **argv);  /* history.c */
int cmd_cluster(const ctl_t *ctl, int argc, char **argv);  /* cluster.c */

/* ---------------------------------------------------------------------------------------------
 * cluster.c: what status shows of a cluster */

/* Prints "cluster: td-a of 3 nodes, revision N, store reachable" when td's state (borrowed)
 * carries "cluster" (cluster mode), with a warning on stderr when the store is unreachable or the
 * cluster not initialised; nothing otherwise. Asks td for the cluster view to count the nodes. */
void print_cluster_line(const ctl_t *ctl, const json_t *state);

/* ---------------------------------------------------------------------------------------------
 * config.c: files given on the command line */

/* Reads a whole file into b, or standard input for "-". Returns false with errno set (EFBIG when
 * larger than BODY_MAX); the caller frees b->p either way. */
bool read_file(const char *path, buf_t *b);

/* Reads FILE (or standard input for "-") into *file and checks that it is JSON, to be sent to td
 * as it is (td reports its problems with the file's LINE:COL). Returns RC_DONE (the caller frees
 * file->p), or the exit status after saying why: a usage error when it cannot be read, RC_REFUSED
 * with FILE:LINE:COL when it is not JSON (nothing to free then). */
int read_json_file(const char *path, buf_t *file);

/* ---------------------------------------------------------------------------------------------
 * rollout.c: what rollback needs of td's rollouts */

/* GETs td's current or last rollout (GET /api/v1/rollout). Returns RC_DONE with the rollout
 * object in *rollout (the caller owns it), or with *rollout NULL when td has had none (404);
 * RC_REFUSED after saying why not. */
int get_rollout(const ctl_t *ctl, json_t **rollout);

/* true when the rollout's state is one it ends in: succeeded, rolled_back, aborted. */
bool rollout_ended(const json_t *rollout);

/* ---------------------------------------------------------------------------------------------
 * drain.c: the wait of drain --wait */

/* Reads td's state every DRAIN_POLL_S, showing backend `name`'s progress, until it has no request
 * in flight and no tunnel, td's drain_ms has passed since its weight went to 0 (by td's clock, or
 * since zero_at, in seconds of now_s()), or timeout_s seconds since now. Returns the exit status
 * after saying which. */
int wait_drained(const ctl_t *ctl, const char *name, double zero_at, double timeout_s);

/* ---------------------------------------------------------------------------------------------
 * status.c: replies that carry td's state */

/* Prints a reply that carries td's state: as it came with --json, else as the table. Returns the
 * exit status (RC_REFUSED when the reply is not JSON). */
int show_state(const ctl_t *ctl, const reply_t *r);

/* PUTs a JSON document (consumed) to path and prints the state td answers with. Returns the exit
 * status. */
int put_for_state(const ctl_t *ctl, const char *path, json_t *doc);

/* ---------------------------------------------------------------------------------------------
 * http.c: td's admin API over libcurl */

/* Appends n bytes to b; past BODY_MAX it refuses them and sets too_big. Returns false when it did
 * not append. */
bool buf_append(buf_t *b, const char *data, size_t n);

/* Prints bytes as they came, ending with a newline. */
void print_raw(const buf_t *b);

/* Makes one call to td's admin API at ctl->admin (trailing '/' ignored) + path, with ctl->token
 * as a bearer token: method "GET", or "PUT" with a JSON body of body_len bytes. Returns RC_DONE
 * with a 2xx reply in *r (the caller frees r->body.p), or prints why not (td unreachable, or td's
 * error message) and returns RC_REFUSED. */
int call(const ctl_t *ctl, const char *method, const char *path, const char *body, size_t body_len,
         reply_t *r);

/* As call(), but a refusal (non-2xx) is not printed: it returns RC_REFUSED with td's status and
 * body in *r for the caller to judge (the caller frees r->body.p); r->status is 0 when td could
 * not be reached, which is printed. */
int call_quiet(const ctl_t *ctl, const char *method, const char *path, const char *body,
               size_t body_len, reply_t *r);

/* Parses a 2xx reply as JSON. Returns the document (the caller owns it), or NULL after saying
 * that td's answer made no sense. */
json_t *parse_reply(const reply_t *r);

/* GETs path and parses td's JSON reply. Returns the document (the caller owns it), or NULL after
 * saying why not. */
json_t *get_json(const ctl_t *ctl, const char *path);

/* PUTs doc (consumed) and parses td's JSON reply (for the ratio: the new state). Returns it (the
 * caller owns it), or NULL after saying why not. */
json_t *put_json(const ctl_t *ctl, const char *path, json_t *doc);

/* ---------------------------------------------------------------------------------------------
 * table.c: td's state document */

/* The integer member key of obj, or "-" when td did not send one. */
cell_t num(const json_t *obj, const char *key);

/* The string member key of obj (borrowed from it), or "-" when td did not send one. */
const char *str(const json_t *obj, const char *key);

/* The integer member key of obj, or dflt when td did not send one. */
json_int_t int_of(const json_t *obj, const char *key, json_int_t dflt);

/* "blue=50 green=50" from a {name: weight} object (borrowed) into out[n]; "-" when empty. */
void weights_text(const json_t *weights, char *out, size_t n);

/* Backend `name` of td's state (borrowed from it), or NULL. */
json_t *find_backend(const json_t *state, const char *name);

/* Says that td has no backend `name`, listing those it has; returns the usage exit status. */
int unknown_backend(const json_t *state, const char *name);

/* true when a server of the backend is up (or, when td sends no server list, the backend is). */
bool has_server_up(const json_t *backend);

/* Prints td's state (GET /api/v1/state) as a table. Members td did not send show as "-". */
void print_state(const json_t *state);

/* ---------------------------------------------------------------------------------------------
 * args.c: argument checks */

/* Prints "tdctl: <message>" and the hint to --help; returns the usage exit status. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A weight: decimal digits only (no sign, no blanks), 0..WEIGHT_MAX, in the len bytes at s. */
bool parse_weight(const char *s, size_t len, int *weight);

/* A backend name as td's config allows it: [A-Za-z0-9_-]+. */
bool valid_name(const char *s, size_t len);

/* A DURATION: "500ms", "30s", "2m", "1h", or a bare number of seconds; at most a day. */
bool parse_duration(const char *s, double *seconds);

/* A RATE: "1%", "0.5%" (0 to 100%), or a fraction from 0 to 1 ("0.01"). */
bool parse_rate(const char *s, double *rate);

/* --max-p99-ms: an integer from 1 to an hour's worth. */
bool parse_p99(const char *s, long *ms);

/* --steps: integers 1..100, comma-separated, strictly increasing, ending at 100 (so at most 100
 * of them). Returns NULL, or what is wrong. */
const char *parse_steps(const char *s, int steps[WEIGHT_MAX], int *n);

/* The value of an option the command takes, parsed by parse(); false after saying it is bad. */
#define CHECK_OPTION(ctl, o, parse, out, what)                                                     \
    (!((ctl)->given & OPT(o)) || parse((ctl)->opt[o], out) ||                                      \
     (usage_error("--%s '%s': %s", option_names[o], (ctl)->opt[o], what), false))

/* ---------------------------------------------------------------------------------------------
 * watch.c: clock, pauses, signals, progress */

/* Set by SIGINT and SIGTERM once catch_signals() ran: stop watching (switch: and detach). */
extern volatile sig_atomic_t interrupted;

/* The smaller of a and b (without libm, which tdctl does not link). */
double min_s(double a, double b);

/* Seconds of the monotonic clock. */
double now_s(void);

/* Sleeps s seconds, or less when a signal comes (the caller looks at `interrupted`). */
void pause_s(double s);

/* From now on SIGINT and SIGTERM set `interrupted` instead of ending tdctl. */
void catch_signals(void);

void progress_init(progress_t *p);

/* Shows line unless it is the one shown last. */
void progress_show(progress_t *p, const char *line);

/* Ends the progress: what follows starts on a line of its own. */
void progress_end(progress_t *p);

#endif
