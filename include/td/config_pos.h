/* Positions in a JSON text, for config error messages. Internal to the config module (used by
 * config_report.c); a single header because the one type and the one function belong together.
 *
 * jansson gives line:col for syntax errors but not for the values of a document it parsed, so on
 * error paths config_report.c walks the raw text along the path of the offending key or value. */
#ifndef TD_CONFIG_POS_H
#define TD_CONFIG_POS_H

#include <stddef.h>

/* One step of a path into a JSON document: an object key, or an array index when key is NULL. */
typedef struct td_config_seg_s {
    const char *key; /* borrowed, NUL-terminated UTF-8 (as jansson decoded it); NULL for an index */
    size_t index;
} td_config_seg_t;

/* Finds the 1-based line and column (columns count UTF-8 characters, as jansson's do) of the value
 * at `path[0..n)` in the JSON text `text[0..len)`, or of its key when `want_key` is set and the
 * last step is a key. Keys are compared after decoding JSON escapes. When the path cannot be
 * followed to its end, gives the position of the deepest step found (the root value's position
 * for n == 0). The text should be one that jansson accepted (then keys are unique); on any other
 * text the result is some position inside it, never a read out of bounds. O(len). */
void td_config_locate(const char *text, size_t len, const td_config_seg_t *path, size_t n,
                      int want_key, int *line, int *col);

#endif
