/* The event log (changes, health transitions, reloads: the console's "Events") and the audit
 * log of changes (what, before, after, from which client), persisted as JSON lines. */
#ifndef TD_EVENTS_H
#define TD_EVENTS_H

#include <jansson.h>

/* Sets the audit file (`path` "" = keep the audit in memory only) and loads the last entries
 * already in it, so `tdctl history` survives restarts. Main thread, once, before any event. */
void td_events_init(const char *path);

/* Records an event of `kind` ("change", "health" (checks and passive ejections), "reload",
 * "start") with a message
 * for people. Thread-safe; keeps the last 256. */
void td_event(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records a change in the audit log: `what` for people, `before` and `after` (ownership of both
 * passes here), `client` the address it came from ("signal" for SIGHUP). Appended to the audit
 * file when there is one, and recorded as a "change" event. */
void td_audit(const char *what, json_t *before, json_t *after, const char *client);

/* New JSON arrays (owned by the caller), oldest first: events [{time, kind, message}], audit
 * [{time, what, before, after, client}]. */
json_t *td_events_json(void);
json_t *td_audit_json(void);

#endif
