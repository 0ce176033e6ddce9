/* The event log (changes, health transitions, reloads: the console's "Events") and the audit
 * log of changes (what, before, after, from which client), persisted as JSON lines. */
#ifndef TD_EVENTS_H
#define TD_EVENTS_H

#include <stdint.h>

#include "td/common-t.h"

/* jansson's value type, declared as jansson.h does, so this header does not pull in jansson;
 * the .c files that build or read the values include <jansson.h>. */
typedef struct json_t json_t;

/* Sets the audit file (`path` "" = keep the audit in memory only) and loads the last entries
 * already in it, so `tdctl history` survives restarts. Main thread, once, before any event. */
void td_events_init(const char *path);

/* Records an event of `kind` ("change", "health" (checks and passive ejections), "reload",
 * "start", "state" (the state file could not be written, or can be again)) with a message
 * for people. Thread-safe; keeps the last 256. */
void td_event(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records a change in the audit log: `what` for people, `before` and `after` (ownership of both
 * passes here), `client` the address it came from ("signal" for SIGHUP). Appended to the audit
 * file when there is one (fsynced), and recorded as a "change" event. For changes that are not
 * written to the state file; those use td_audit_begin. */
void td_audit(const char *what, json_t *before, json_t *after, const char *client);

/* The write-ahead half of a change to the state file, which makes the pair crash-safe (see
 * docs/ARCHITECTURE.md, "Events and audit"): appends the entry {id, time, what, before, after,
 * client, version, config_sha256, before_sha256} to the audit file and fsyncs it *before* the
 * caller replaces the state file. `version` is the config version the change will have,
 * `config_sha256` the SHA-256 of the state text about to be written, `before_sha256` that of the
 * state file as it is now; either may be NULL or "" (not recorded: the state does not change).
 * Ownership of `before` and `after` passes here. *entry receives the new entry (owned by the
 * caller until it is passed to td_audit_commit or td_audit_abandon; NULL when out of memory).
 * Returns 0, TD_ENOMEM, or TD_EIO (errno set: the entry is not durable, so the change must not
 * be applied; pass the entry to td_audit_abandon). Main thread. */
int td_audit_begin(const char *what, json_t *before, json_t *after, const char *client,
                   uint64_t version, const char *config_sha256, const char *before_sha256,
                   json_t **entry);

/* The change of `entry` was applied: it joins the history and a "change" event is recorded.
 * Takes ownership of entry (NULL is ignored). */
void td_audit_commit(json_t *entry);

/* The change of `entry` was not applied (`why`, for people): the entry is marked "applied":
 * false and a record {id, time, what: "not applied: WHAT (WHY)", client: "td", not_applied: ID}
 * is appended, so the history says so after a restart too. Takes ownership of entry. */
void td_audit_abandon(json_t *entry, const char *why);

/* At start, after td_events_init: when the last entry's config_sha256 differs from the state
 * file's (`state_sha256`, hex) while its before_sha256 matches, td stopped between the audit
 * append and the state file replace: the change never ran, and it is recorded as not applied. */
void td_audit_recover(const char *state_sha256, const char *state_path);

/* New JSON arrays (owned by the caller), oldest first: events [{time, kind, message}], audit
 * [{id, time, what, before, after, client, version, config_sha256, before_sha256}, with
 * "applied": false on a change that never ran, and its {id, time, what, client, not_applied}]. */
json_t *td_events_json(void);
json_t *td_audit_json(void);

#endif
