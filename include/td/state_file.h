/* The state file: changes made through the admin API, kept apart from the operator's config file
 * as overrides on top of it. An override is one key of the config document whose running value
 * differs from the file's, with the file's value it replaced, so that a later edit of the file can
 * be told from the override (see docs/ARCHITECTURE.md, "State file").
 *
 * Everything here works on the canonical JSON of configs (td_config_to_json, loaded with
 * jansson), so every config key is covered without this module knowing any: the document is
 * flattened to paths of keys; objects by key; the root "backends" array keyed by each backend's
 * "name", a backend's "servers" array by each server's "address"; every other array (listeners,
 * certificates, ...) and every empty object is one value.
 *
 * An override is the JSON object
 *   {"path": "backends.blue.weight", "keys": ["backends", "blue", "weight"],
 *    "value": 0, "file_value": 50, "since": "2026-12-01T12:00:00.000Z", "by": "127.0.0.1"}
 * where "value" is the running value (null: the key was removed) and "file_value" the config
 * file's value it replaced (null: the key is not in the file). "path" is for people ("keys" is
 * what counts: a server address holds dots). Control plane, main thread; nothing here touches a
 * file but td_state_load. */
#ifndef TD_STATE_FILE_H
#define TD_STATE_FILE_H

#include <stddef.h>

#include "td/events.h" /* json_t */

/* The overrides that turn document `file` into document `running` (both canonical config JSON,
 * borrowed): one per path whose value differs, in running's order then file-only paths. The
 * top-level "state_file" key is never an override (it says where overrides live). An override of
 * `old` (an array of overrides, borrowed, may be NULL) with the same keys and the same value is
 * kept as it was (its file_value, since and by); a new one gets `since` (ISO 8601 UTC) and `by`
 * (the client). Returns a new array (owned by the caller), or NULL when out of memory. */
json_t *td_state_diff(const json_t *file, const json_t *running, const json_t *old,
                      const char *since, const char *by);

/* Applies `overrides` (borrowed) on top of document `file` (borrowed): an override whose
 * file_value still equals (by content) the file's value at its path applies; any other is
 * replaced by the file. Backends and servers keep the file's order; those the overrides add come
 * after, in the overrides' order. Returns the merged document (owned by the caller; NULL when out
 * of memory), *kept the overrides that applied and *replaced the others, each with "file_now"
 * (the file's value now, null when absent): new arrays owned by the caller. */
json_t *td_state_merge(const json_t *file, const json_t *overrides, json_t **kept,
                       json_t **replaced);

/* For people, of an element of td_state_merge's *replaced: "config file changed
 * backends.blue.weight from 50 to 30: the override 0 set through the API at TIME by CLIENT is
 * replaced". Writes at most n bytes (NUL included) to out. */
void td_state_replaced_message(const json_t *replaced, char *out, size_t n);

/* The state file's text (pretty JSON ending in a newline): {"config_file": CONFIG_PATH,
 * "overrides": [...]}. Returns a malloc'd string owned by the caller, or NULL (out of memory). */
char *td_state_text(const json_t *overrides, const char *config_path);

/* td_state_text with the rollout object `rollout` (borrowed, NULL: none) as its "rollout" key:
 * the active (or last) rollout is written in the same replace as the weights it set. */
char *td_state_text_rollout(const json_t *overrides, const char *config_path,
                            const json_t *rollout);

/* The "rollout" object of the state file at `path` (a new reference), or NULL when the file,
 * or the key, is not there. */
json_t *td_state_load_rollout(const char *path);

/* Reads the overrides of the state file at `path`: a new array (owned by the caller); empty when
 * the file does not exist. NULL when it cannot be read or is not a state file, with the reason in
 * err[errlen] ("PATH:LINE:COL: ..." for bad JSON). Entries that are not overrides are skipped. */
json_t *td_state_load(const char *path, char *err, size_t errlen);

/* Default state file of the config file at `config_path`: CONFIG_PATH.state.json. */
void td_state_default_path(const char *config_path, char *out, size_t n);

/* The audit log next to the state file at `state_path`: the path with a trailing ".state.json",
 * else ".json", replaced by ".audit.jsonl" (else ".audit.jsonl" appended): td.json.state.json ->
 * td.json.audit.jsonl, /var/lib/td/state.json -> /var/lib/td/state.audit.jsonl. */
void td_state_audit_path(const char *state_path, char *out, size_t n);

#endif
