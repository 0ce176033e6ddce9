/* The cluster's shared document (PREFIX config): what of a config all nodes share, and a node's
 * config made from it and the node's own keys. Main thread; no I/O but the cache file. */
#ifndef TD_CLUSTER_DOC_H
#define TD_CLUSTER_DOC_H

#include <stddef.h>
#include <stdint.h>

#include "td/config-t.h"
#include "td/events.h" /* json_t */

/* The schema version of the documents this td writes and fully knows. */
#define TD_CLUSTER_SCHEMA 1

/* The shared document of `c`: its canonical JSON (td_config_to_json) without the node's own keys
 * (listeners, workers, admin, cluster, state_file, pid_file, access_log), plus "schema":
 * TD_CLUSTER_SCHEMA. A new object owned by the caller, or NULL when out of memory. */
json_t *td_cluster_doc_shared(const td_config_t *c);

/* The node's own keys of `c` (those td_cluster_doc_shared leaves out), as a new object. */
json_t *td_cluster_doc_local(const td_config_t *c);

/* The config of the shared document `shared` with the node's own keys `local` (both borrowed):
 * parsed and checked as a config file is (td_config_parse, `name` in its messages). A document of
 * a newer schema than TD_CLUSTER_SCHEMA loses the keys td does not know first (rolling upgrades);
 * their paths ("routing.new_key", "backends[0].x") go to *ignored (a new array, owned by the
 * caller; empty for the schema td knows, where an unknown key is a problem like any other).
 * Returns a new config (owned by the caller), or NULL with the first problem in err[n] (then
 * *ignored is NULL). */
td_config_t *td_cluster_doc_config(const json_t *shared, const json_t *local, const char *name,
                                   json_t **ignored, char *err, size_t n);

/* Whether the shared parts of `file` (the node's config file) and `cluster` (the cluster's config
 * as it runs here) differ, both borrowed, leaving out what moves at run time through the API
 * (backends' weights and states). 1 with a phrase for people in msg[n] naming the top-level keys
 * that differ and, when the backends are not the same ones, both lists of names ("the config
 * file's backends (api-v1, api-v2) differ from the cluster's (blue, green)"); 0 when they agree
 * (msg ""); TD_ENOMEM. */
int td_cluster_doc_differs(const td_config_t *file, const td_config_t *cluster, char *msg,
                           size_t n);

#endif
