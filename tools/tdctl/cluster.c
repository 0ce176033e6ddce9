/* tdctl cluster, cluster init FILE, cluster rotate-key: the nodes of a td cluster as td sees them
 * (GET /api/v1/cluster), the seeding of an empty etcd prefix, the rotation of the sticky key; and
 * the "cluster" line of tdctl status. */

#include "tdctl.h"

#include <jansson.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints one row of the nodes table without trailing blanks. */
static void print_node_row(int width, const char *node, const char *admin, const char *applied,
                           const char *lag, const char *ready, const char *requests) {
    char line[512];
    int n = snprintf(line, sizeof(line), "%-*s  %-24s  %8s  %5s  %-5s  %10s", width, node, admin,
                     applied, lag, ready, requests);

    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    while (n > 0 && line[n - 1] == ' ')
        n--;
    printf("%.*s\n", n, line);
}

/* A node's name for the table: "td-a *" for the node tdctl asked, "(leader)" after the rollout
 * leader's (`leader` the view's "leader", or NULL). */
static void node_name(const json_t *node, const char *leader, char *out, size_t n) {
    snprintf(out, n, "%s%s%s", str(node, "node"),
             json_is_true(json_object_get(node, "self")) ? " *" : "",
             leader && strcmp(leader, str(node, "node")) == 0 ? " (leader)" : "");
}

/* "yes", "no", or "-" when the node did not answer. */
static const char *ready_cell(const json_t *node) {
    const json_t *v = json_object_get(node, "ready");

    if (!json_is_true(json_object_get(node, "reachable")) || !json_is_boolean(v))
        return "-";
    return json_is_true(v) ? "yes" : "no";
}

/* The cluster view (GET /api/v1/cluster) as a table, then what is wrong in it. */
static void print_cluster(const json_t *c) {
    const json_t *nodes = json_object_get(c, "nodes"), *node, *d;
    const json_t *store = json_object_get(c, "store");
    size_t width = strlen("NODE"), i;
    char name[128];
    const char *leader = json_string_value(json_object_get(c, "leader"));

    json_array_foreach(nodes, i, node) {
        node_name(node, leader, name, sizeof(name));
        if (strlen(name) > width)
            width = strlen(name);
    }
    if (width > 60)
        width = 60;
    printf("prefix   %s%s\n", str(c, "prefix"),
           json_is_false(json_object_get(c, "initialised"))
               ? " (not initialised: every node serves its own file; see tdctl cluster init)"
               : "");
    /* Two figures that differ as a rule: etcd's revision counts every write under the prefix
     * (node records, audit entries), LAG only changes of the shared state. */
    if (json_integer_value(json_object_get(c, "revision")) ==
        json_integer_value(json_object_get(c, "applied_revision")))
        printf("revision %s applied here (etcd's latest)\n", num(c, "applied_revision").s);
    else
        printf("revision %s applied here; etcd is at %s (its node records and audit entries "
               "count as revisions too, LAG only the shared state's changes)\n",
               num(c, "applied_revision").s, num(c, "revision").s);
    printf("\n");
    print_node_row((int)width, "NODE", "ADMIN", "APPLIED", "LAG", "READY", "REQUESTS");
    json_array_foreach(nodes, i, node) {
        node_name(node, leader, name, sizeof(name));
        print_node_row((int)width, name, str(node, "admin_url"), num(node, "applied_revision").s,
                       num(node, "lag").s, ready_cell(node), num(node, "requests").s);
    }
    printf("\n");
    json_array_foreach(nodes, i, node) {
        if (json_is_false(json_object_get(node, "reachable")))
            printf("unreachable: %s at %s: %s\n", str(node, "node"), str(node, "admin_url"),
                   str(node, "error"));
    }
    json_array_foreach(json_object_get(c, "disagreements"), i, d) {
        printf("disagreement: %s\n", json_is_string(d) ? json_string_value(d) : "?");
    }
    json_array_foreach(json_object_get(c, "ignored"), i, d) {
        printf("ignored (newer schema): %s\n", json_is_string(d) ? json_string_value(d) : "?");
    }
    if (json_is_true(json_object_get(store, "reachable")))
        printf("store: reachable at %s\n", str(store, "endpoint"));
    else
        printf("store: UNREACHABLE since %s: %s; this node serves its last state and refuses "
               "changes\n",
               str(store, "since"), str(store, "error"));
    if (json_is_string(json_object_get(c, "error")))
        printf("NOT A MEMBER: %s\n", str(c, "error"));
    printf("leader: %s\n",
           leader ? leader : "none (no node holds the leader key: every node campaigns)");
}

static int cluster_show(const ctl_t *ctl) {
    json_t *c;
    reply_t r;
    int rc = call(ctl, "GET", "/api/v1/cluster", NULL, 0, &r);

    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE && (c = parse_reply(&r))) {
        print_cluster(c);
        json_decref(c);
    } else if (rc == RC_DONE) {
        rc = RC_REFUSED;
    }
    free(r.body.p);
    return rc;
}

/* The "error" of a refusal's JSON, or "" (borrowed from doc). */
static const char *error_of(const json_t *doc) {
    const char *e = json_string_value(json_object_get(doc, "error"));

    return e ? e : "";
}

/* Sends FILE as it is (td reports its problems with the file's LINE:COL), as cluster init. */
static int cluster_init(const ctl_t *ctl, const char *path) {
    buf_t file = {0};
    json_t *doc;
    reply_t r;
    int rc;

    if ((rc = read_json_file(path, &file)) != RC_DONE)
        return rc;
    rc = call_quiet(ctl, "POST", "/api/v1/cluster/init", file.p, file.len, &r);
    free(file.p);
    doc = r.body.len ? json_loadb(r.body.p, r.body.len, 0, NULL) : NULL;
    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE) {
        printf("cluster initialised: revision %s\n", num(doc, "revision").s);
    } else if (r.status == 409) {
        /* td's own words ("the cluster is already initialised (KEY at revision N): change it
         * through the API instead"), with tdctl's commands for "the API". */
        const char *why = error_of(doc), *advice = strstr(why, ": change it");
        int n = advice ? (int)(advice - why) : (int)strlen(why);
        if (!n || strncmp(why, "the cluster is already initialised", 34) != 0)
            fprintf(stderr, "tdctl: the cluster is already initialised%s%.*s%s", n ? " (" : "", n,
                    why, n ? ")" : "");
        else
            fprintf(stderr, "tdctl: %.*s", n, why);
        fprintf(stderr, ": change it with tdctl config put or tdctl ratio instead\n");
    } else if (r.status) {
        fprintf(stderr, "tdctl: td refused (HTTP %ld): %s\n", r.status,
                doc ? error_of(doc) : "without saying why");
    }
    json_decref(doc);
    free(r.body.p);
    return rc;
}

static int cluster_rotate_key(const ctl_t *ctl) {
    json_t *doc;
    reply_t r;
    int rc = call(ctl, "POST", "/api/v1/cluster/sticky-key", "{}", 2, &r);

    if (rc == RC_DONE && ctl->json) {
        print_raw(&r.body);
    } else if (rc == RC_DONE) {
        doc = parse_reply(&r);
        printf("sticky key rotated: revision %s (cookies signed with the previous key are still "
               "honoured)\n",
               num(doc, "revision").s);
        json_decref(doc);
    }
    free(r.body.p);
    return rc;
}

int cmd_cluster(const ctl_t *ctl, int argc, char **argv) {
    if (argc == 0)
        return cluster_show(ctl);
    if (strcmp(argv[0], "init") == 0)
        return argc == 2 ? cluster_init(ctl, argv[1])
                         : usage_error("cluster init takes one FILE (or - for standard input)");
    if (strcmp(argv[0], "rotate-key") == 0)
        return argc == 1 ? cluster_rotate_key(ctl)
                         : usage_error("cluster rotate-key takes no argument");
    return usage_error("unknown cluster command '%s': use cluster, cluster init FILE or cluster "
                       "rotate-key",
                       argv[0]);
}

/* GETs path quietly: the parsed 2xx reply (the caller owns it), or NULL without a word. */
static json_t *quiet_json(const ctl_t *ctl, const char *path) {
    json_t *doc = NULL;
    reply_t r;

    if (call_quiet(ctl, "GET", path, NULL, 0, &r) == RC_DONE)
        doc = json_loadb(r.body.p ? r.body.p : "", r.body.len, 0, NULL);
    free(r.body.p);
    return doc;
}

/* The "cluster" summary that td's state carries in cluster mode: one line, and a warning on
 * stderr when the store is unreachable or the prefix not initialised. Prints nothing without it. */
void print_cluster_line(const ctl_t *ctl, const json_t *state) {
    const json_t *c = json_object_get(state, "cluster");
    json_t *view;
    char nodes[32] = "";

    if (!json_is_object(c))
        return;
    /* How many nodes: the state does not say, the cluster view does (best effort; none listed
     * while the store is out of reach). */
    view = quiet_json(ctl, "/api/v1/cluster");
    if (json_array_size(json_object_get(view, "nodes")) > 0)
        snprintf(nodes, sizeof(nodes), " of %zu node%s",
                 json_array_size(json_object_get(view, "nodes")),
                 json_array_size(json_object_get(view, "nodes")) == 1 ? "" : "s");
    json_decref(view);
    printf("cluster: %s%s, revision %s, store %s%s\n", str(c, "node"), nodes,
           num(c, "applied_revision").s,
           json_is_true(json_object_get(c, "reachable")) ? "reachable" : "UNREACHABLE",
           json_is_false(json_object_get(c, "initialised")) ? ", not initialised" : "");
    if (!json_is_true(json_object_get(c, "reachable")))
        fprintf(stderr, "tdctl: warning: this node cannot reach the cluster store: it serves its "
                        "last state and refuses changes\n");
    else if (json_is_string(json_object_get(c, "error")))
        fprintf(stderr, "tdctl: warning: this node is not a member of the cluster: %s\n",
                str(c, "error"));
    else if (json_is_false(json_object_get(c, "initialised")))
        fprintf(stderr, "tdctl: warning: the cluster is not initialised: this node serves its own "
                        "config file (tdctl cluster init FILE)\n");
}
