/* Config checks beyond one value's syntax: files that must exist or be writable, and rules across
 * fields (unique addresses and names, certificates matching their keys, SameSite=None needing
 * Secure, not every weight 0). Each reports through td_config_report at the report's path; the
 * schema (config_schema.c) names where each runs. Internal to the config module. */
#ifndef TD_CONFIG_CHECK_H
#define TD_CONFIG_CHECK_H

#include "td/config_schema-t.h"

/* String checkers (td_config_check_fn): access_log ("stderr" or an absolute path td can append
 * to) and pid_file (an absolute file path in a writable folder). */
const char *td_config_check_log_path(const char *s);
const char *td_config_check_pid_path(const char *s);
/* state_file: an absolute file path (not checked for writing: td runs, unsaved, without it). */
const char *td_config_check_state_path(const char *s);
/* An etcd endpoint of cluster.etcd: "http://HOST:PORT" or "https://HOST:PORT". */
const char *td_config_check_etcd_url(const char *s);

/* Field hooks (td_config_hook_fn), run at the field once it was read and valid. */
td_config_hook_fn td_config_check_listener_address; /* not already used by an earlier listener */
td_config_hook_fn td_config_check_server_address;   /* nor by an earlier server of the backend */
td_config_hook_fn td_config_check_admin_tokens;     /* read_token needs token, and differs */
td_config_hook_fn td_config_check_admin_address;    /* nor by a listener */
td_config_hook_fn td_config_check_backend_name;     /* not the name of an earlier backend */
td_config_hook_fn td_config_check_backend_weights;  /* backends: not every weight 0 */
td_config_hook_fn td_config_check_ca;               /* backends[i].tls.ca loads */

/* Object hooks, run at the object once its fields were read. */
td_config_hook_fn td_config_check_cert;         /* the pair loads, matches and is in date */
td_config_hook_fn td_config_check_listener_tls; /* a TLS listener does not redirect to https; h2c /
                                                   http2 on the right kind */
td_config_hook_fn td_config_check_cookie;       /* SameSite=None only with Secure */
td_config_hook_fn td_config_check_health;       /* grpc_service only on a "grpc" check */
td_config_hook_fn td_config_check_cluster;      /* cluster mode needs "admin"; user and password */
td_config_hook_fn td_config_check_cluster_tls;  /* cluster.tls: ca loads, cert and key pair */

#endif
