/* Locating keys and values in a JSON text by path, for config error messages.
 *
 * A forward scan that understands just enough JSON to step over values: strings (with escapes)
 * and the nesting of objects and arrays. Skipping is iterative, so no input depth can exhaust
 * the stack, and every read is bounds-checked, so malformed text only gives a poorer position. */
#include "td/config_pos.h"

#include <string.h>

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p is at an opening quote; returns the position after the closing quote (or end). */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') {
            if (++p == end)
                break;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return end;
}

static int is_delim(char ch) {
    return ch == ',' || ch == ']' || ch == '}' || ch == ':' || ch == ' ' || ch == '\t' ||
           ch == '\n' || ch == '\r';
}

static const char *skip_value(const char *p, const char *end) {
    size_t depth = 0;

    if (p < end && *p == '"')
        return skip_string(p, end);
    if (p < end && (*p == '{' || *p == '[')) {
        while (p < end) {
            if (*p == '"') {
                p = skip_string(p, end);
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0)
                return p + 1;
            p++;
        }
        return end;
    }
    while (p < end && !is_delim(*p)) /* number, true, false, null */
        p++;
    return p;
}

static int hex4(const char *p, const char *end) {
    int v = 0;

    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char ch = p[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t utf8_put(unsigned char *out, unsigned long cp) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | cp >> 6);
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes one escape after a backslash (p is just past it) into out; returns the byte count, or 0
 * when the escape is malformed. Advances *pp past the escape. */
static size_t unescape(const char **pp, const char *end, unsigned char *out) {
    const char *p = *pp;
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *hit;
    int cp, lo;

    if (p >= end)
        return 0;
    if (*p != 'u') {
        hit = *p ? strchr(from, *p) : NULL;
        if (!hit)
            return 0;
        *pp = p + 1;
        out[0] = (unsigned char)to[hit - from];
        return 1;
    }
    cp = hex4(p + 1, end);
    if (cp < 0)
        return 0;
    p += 5;
    /* A surrogate pair is two escapes for one character. */
    if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
        (lo = hex4(p + 2, end)) >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
    }
    *pp = p;
    return utf8_put(out, (unsigned long)cp);
}

/* Is the string token at p (an opening quote) equal to `key` once decoded? */
static int key_eq(const char *p, const char *end, const char *key) {
    size_t k = 0, klen = strlen(key), n;
    unsigned char buf[4];

    for (p++; p < end && *p != '"';) {
        if (*p == '\\') {
            p++;
            n = unescape(&p, end, buf);
            if (n == 0)
                return 0;
        } else {
            buf[0] = (unsigned char)*p++;
            n = 1;
        }
        if (n > klen - k || memcmp(key + k, buf, n) != 0)
            return 0;
        k += n;
    }
    return p < end && k == klen;
}

/* p is at '{': returns the value of `key` (and its key token in *keyat), or NULL. */
static const char *find_key(const char *p, const char *end, const char *key, const char **keyat) {
    for (p++;;) {
        const char *k;
        int eq;

        p = ws(p, end);
        if (p >= end || *p != '"')
            return NULL;
        k = p;
        eq = key_eq(p, end, key);
        p = ws(skip_string(p, end), end);
        if (p < end && *p == ':')
            p++;
        p = ws(p, end);
        if (eq) {
            *keyat = k;
            return p;
        }
        p = ws(skip_value(p, end), end);
        if (p >= end || *p != ',')
            return NULL;
        p++;
    }
}

/* p is at '[': returns element `index`, or NULL. */
static const char *find_index(const char *p, const char *end, size_t index) {
    for (size_t i = 0;; i++) {
        p = ws(p + 1, end); /* past '[' or ',' */
        if (p >= end || *p == ']')
            return NULL;
        if (i == index)
            return p;
        p = ws(skip_value(p, end), end);
        if (p >= end || *p != ',')
            return NULL;
    }
}

void td_config_locate(const char *text, size_t len, const td_config_seg_t *path, size_t n,
                      int want_key, int *line, int *col) {
    const char *end = text + len, *p = ws(text, end), *at = p;

    for (size_t i = 0; i < n; i++) {
        const char *keyat = NULL, *found = NULL;

        if (path[i].key && p < end && *p == '{')
            found = find_key(p, end, path[i].key, &keyat);
        else if (!path[i].key && p < end && *p == '[')
            found = find_index(p, end, path[i].index);
        if (!found)
            break;
        p = found;
        at = want_key && keyat && i + 1 == n ? keyat : found;
    }

    *line = 1;
    *col = 1;
    for (const char *q = text; q < at; q++) {
        if (*q == '\n') {
            ++*line;
            *col = 1;
        } else if (((unsigned char)*q & 0xC0) != 0x80) { /* first byte of a UTF-8 character */
            ++*col;
        }
    }
}
