/* The web console page (console/index.html), embedded in the binary by console.c. */
#ifndef TD_CONSOLE_H
#define TD_CONSOLE_H

/* The page, NUL-terminated (static). */
extern const char td_console_html[];

/* The page's Content-Security-Policy: only its own inline scripts and styles (by their SHA-256,
 * computed from the embedded page on the first call, so an edited page needs no edited policy),
 * fetches to its own origin, no framing, plugins, forms or base changes. Static storage; not
 * thread-safe on the first call (the admin loop is its only caller). */
const char *td_console_csp(void);

#endif
