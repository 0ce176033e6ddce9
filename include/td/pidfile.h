/* The pid file: td's process id written where service managers and `kill -HUP $(cat FILE)`
 * look for it. */
#ifndef TD_PIDFILE_H
#define TD_PIDFILE_H

#include <stddef.h>

/* Writes "PID\n" to `path` atomically: a temporary file PATH.tmp-XXXXXX in the same folder
 * (mode 0644), then rename over `path`, so a reader never sees a partial file. Call once the
 * listeners are bound. Returns 0, or TD_EIO with "PATH: cannot write: REASON" in err[errlen]. */
int td_pidfile_write(const char *path, char *err, size_t errlen);

/* Removes `path` if it still holds this process's id (another td may have taken it over).
 * For a clean exit; errors are ignored. */
void td_pidfile_remove(const char *path);

#endif
