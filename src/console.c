/* The web console page (console/index.html), embedded in the binary so td serves it with no
 * files to install and no network: the assembler includes the file's bytes at build time. Its
 * Content-Security-Policy is computed from those bytes. */
#include "td/console.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

__asm__(".section .rodata\n"
        ".global td_console_html\n"
        ".type td_console_html, @object\n"
        "td_console_html:\n"
        ".incbin \"console/index.html\"\n"
        ".byte 0\n"
        ".previous\n");

/* Adds the base64 SHA-256 of every element <tag>...</tag> in the page to the CSP source list in
 * out[cap], whose first n bytes are written; returns the new length. */
static size_t add_hashes(char *out, size_t cap, size_t n, const char *tag) {
    char open[16], close[16];
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    for (const char *p = td_console_html; (p = strstr(p, open)) != NULL;) {
        p += strlen(open);
        const char *e = strstr(p, close);
        if (!e)
            break;
        unsigned char md[32];
        unsigned char b64[48];
        if (!EVP_Digest(p, (size_t)(e - p), md, NULL, EVP_sha256(), NULL))
            break;
        EVP_EncodeBlock(b64, md, sizeof(md));
        if (n < cap)
            n += (size_t)snprintf(out + n, cap - n, " 'sha256-%s'", b64);
        p = e;
    }
    return n;
}

const char *td_console_csp(void) {
    static char csp[1024];
    if (csp[0])
        return csp;
    size_t n = (size_t)snprintf(csp, sizeof(csp), "default-src 'none'; script-src");
    n = add_hashes(csp, sizeof(csp), n, "script");
    n += (size_t)snprintf(csp + n, sizeof(csp) - n, "; style-src");
    n = add_hashes(csp, sizeof(csp), n, "style");
    snprintf(csp + n, sizeof(csp) - n,
             "; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'");
    return csp;
}
