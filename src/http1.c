/* HTTP/1.x message parsing (RFC 9112): strict, zero-copy, allocation-free.
 *
 * The head parsers make one left-to-right pass over buf[0 .. min(len, max_head)). Every decision
 * taken at a byte depends only on the bytes before it (and at most the next one, for CRLF), so
 * parsing a prefix of a buffer gives either TD_EAGAIN or exactly the result of parsing the whole
 * buffer. That is what lets a caller re-parse its growing read buffer picohttpparser-style with no
 * state kept between calls, and get the same answer however the bytes were split by the network.
 *
 * Character classes come from one 256-entry table; the long runs (request-target, field values)
 * are scanned 16 bytes at a time with SSE2 where the compiler targets it. */
#include "td/http1.h"

#include <limits.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "http1_chars.h"

const unsigned char td_http1_cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x82, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x82, 0x8f, 0x06, 0x87, 0x8f, 0x8f, 0x8f, 0x8f, 0x8e, 0x8e, 0x8f, 0xcf, 0x8e, 0xcf, 0xcf, 0x86,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x8e, 0x8e, 0x86, 0x8e, 0x86, 0x86,
    0x86, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf,
    0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0x8e, 0x06, 0x8e, 0x87, 0x8f,
    0x87, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf,
    0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0xcf, 0x86, 0x87, 0x86, 0x8f, 0x00,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
    0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82, 0x82,
};

static inline unsigned lower(unsigned char c) {
    return (unsigned)(c - 'A') < 26u ? (unsigned)c | 0x20u : c;
}

/* Compares n bytes of s with the lower-case literal lit, ignoring the case of s. */
/* Case-insensitive equality of s[0..n) with the lower-case literal `lit`, 8 bytes at a time.
 * OR-ing 0x20 lower-cases A-Z and leaves digits and '-' alone; no other byte that can stand in a
 * field name or value (controls are refused before) becomes a letter, a digit or '-' that way,
 * so the test is exact for literals made of those. */
static inline int ieq(const char *s, const char *lit, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        memcpy(&a, s + i, 8);
        memcpy(&b, lit + i, 8);
        if ((a | 0x2020202020202020ull) != b)
            return 0;
    }
    for (; i < n; i++)
        if (((unsigned char)s[i] | 0x20u) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* Returns the first byte in [p, end) that is not allowed in a field value (C_VALUE), or end. */
static inline const char *scan_value(const char *p, const char *end) {
#if defined(__SSE2__)
    const __m128i x1f = _mm_set1_epi8(0x1f), del = _mm_set1_epi8(0x7f), tab = _mm_set1_epi8('\t');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        /* bytes <= 0x1f (unsigned) other than HTAB, and DEL, end the value */
        __m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(x, x1f), x);
        ctl = _mm_andnot_si128(_mm_cmpeq_epi8(x, tab), ctl);
        ctl = _mm_or_si128(ctl, _mm_cmpeq_epi8(x, del));
        unsigned m = (unsigned)_mm_movemask_epi8(ctl);
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < end && IS(*p, C_VALUE))
        p++;
    return p;
}

/* Returns the first byte in [p, end) that is not allowed in a request-target (C_TARGET), or end. */
static inline const char *scan_target(const char *p, const char *end) {
#if defined(__SSE2__)
    const __m128i x20 = _mm_set1_epi8(0x20), x7f = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(x, x20), x),
                                   _mm_cmpeq_epi8(_mm_max_epu8(x, x7f), x));
        unsigned m = (unsigned)_mm_movemask_epi8(bad);
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    while (p < end && IS(*p, C_TARGET))
        p++;
    return p;
}

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && IS_WS(*p))
        p++;
    return p;
}

/* Skips a quoted-string starting at p (which holds the opening DQUOTE). Returns the byte after the
 * closing DQUOTE, or NULL when it is not a valid quoted-string within [p, end). */
static const char *skip_quoted(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if (*p == '\\') {
            if (++p == end || !IS(*p, C_VALUE))
                return NULL;
        } else if (!IS(*p, C_QDTEXT)) {
            return NULL;
        }
    }
    return NULL;
}

/* What the framing and connection headers said, gathered while the fields are parsed. */
typedef struct facts_s {
    uint64_t content_length;
    td_str_t host;
    unsigned conn_flags;
    unsigned hosts;               /* Host field lines seen */
    unsigned cl : 1;              /* Content-Length seen */
    unsigned cl_repeated : 1;     /* ... as more than one value (a list or several field lines) */
    unsigned te : 1;              /* Transfer-Encoding seen */
    unsigned chunked : 1;         /* chunked seen: it must stay the final coding */
    unsigned upgrade : 1;         /* Upgrade seen */
    unsigned expect_continue : 1; /* Expect: 100-continue seen */
} facts_t;

/* Content-Length = 1*DIGIT, also as a list of identical values ("5, 5", RFC 9110 §8.6). Every
 * value, in this and earlier field lines, must be equal. Empty elements are not accepted: a
 * Content-Length is not a place to be lenient. Values above INT64_MAX are invalid. */
static int content_length(td_str_t v, facts_t *f) {
    const char *p = v.p, *end = v.p + v.len;
    for (;;) {
        const char *s = p;
        uint64_t n = 0;
        while (p < end && IS(*p, C_DIGIT)) {
            unsigned d = (unsigned)(*p - '0');
            if (n > ((uint64_t)INT64_MAX - d) / 10)
                return -1;
            n = n * 10 + d;
            p++;
        }
        if (p == s || (f->cl && n != f->content_length))
            return -1;
        f->cl_repeated |= f->cl;
        f->cl = 1;
        f->content_length = n;
        p = skip_ws(p, end);
        if (p == end)
            return 0;
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1, end);
    }
}

/* Transfer-Encoding = #transfer-coding; transfer-coding = token *( OWS ";" OWS token BWS "=" BWS
 * ( token / quoted-string ) ) (RFC 9110 §10.1.4). chunked must be the final coding, appear once
 * and carry no parameters (RFC 9112 §6.1, §7); codings are checked across all field lines. */
static int transfer_encoding(td_str_t v, facts_t *f) {
    const char *p = v.p, *end = v.p + v.len;
    f->te = 1;
    for (;;) {
        const char *s = p;
        while (p < end && IS(*p, C_TCHAR))
            p++;
        /* an empty element, or anything after chunked, is refused */
        if (p == s || f->chunked)
            return -1;
        int chunked = p - s == 7 && ieq(s, "chunked", 7);
        p = skip_ws(p, end);
        while (p < end && *p == ';') {
            if (chunked)
                return -1;
            p = skip_ws(p + 1, end);
            s = p;
            while (p < end && IS(*p, C_TCHAR))
                p++;
            if (p == s)
                return -1;
            p = skip_ws(p, end);
            if (p == end || *p != '=')
                return -1;
            p = skip_ws(p + 1, end);
            if (p < end && *p == '"') {
                if (!(p = skip_quoted(p, end)))
                    return -1;
            } else {
                s = p;
                while (p < end && IS(*p, C_TCHAR))
                    p++;
                if (p == s)
                    return -1;
            }
            p = skip_ws(p, end);
        }
        f->chunked = (unsigned)chunked;
        if (p == end)
            return 0;
        if (*p != ',')
            return -1;
        p = skip_ws(p + 1, end);
    }
}

/* Connection = #connection-option (RFC 9110 §7.6.1). Empty elements are ignored. */
static unsigned connection(td_str_t v) {
    const char *p = v.p, *end = v.p + v.len;
    unsigned flags = 0;
    while (p < end) {
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && IS_WS(e[-1]))
            e--;
        size_t n = (size_t)(e - s);
        if (n == 5 && ieq(s, "close", 5))
            flags |= TD_CONN_CLOSE;
        else if (n == 10 && ieq(s, "keep-alive", 10))
            flags |= TD_CONN_KEEPALIVE;
        else if (n == 7 && ieq(s, "upgrade", 7))
            flags |= TD_CONN_UPGRADE;
        else if (n)
            flags |= TD_CONN_OTHER;
        if (p < end)
            p = skip_ws(p + 1, end);
    }
    return flags;
}

/* Host = uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2): an IP-literal ("[" ... "]") or
 * a reg-name / IPv4 address (unreserved, pct-encoded and sub-delims bytes), then optionally ":"
 * and digits. No userinfo ("@"), no path. May be empty. */
static int valid_host(td_str_t v) {
    const char *p = v.p, *end = v.p + v.len;
    if (p < end && *p == '[') {
        const char *s = ++p;
        while (p < end && *p != ']' && *p != '[' && IS(*p, C_HOST))
            p++;
        if (p == end || *p != ']' || p == s)
            return 0;
        p++;
    } else {
        while (p < end && *p != ':' && *p != '[' && *p != ']' && IS(*p, C_HOST))
            p++;
    }
    if (p < end && *p == ':')
        while (++p < end && IS(*p, C_DIGIT))
            ;
    return p == end;
}

/* The authority of an absolute-form target ("http://AUTHORITY/path?query"): what stands between
 * "://" and the first "/" or "?" (td forwards it as the Host). RFC 9112 §3.2.2 makes it the Host
 * of the request, so it gets a Host's validation, and it may not be empty (RFC 9110 §4.2.1). The
 * target must hold "://". */
static td_str_t target_authority(td_str_t t) {
    const char *a = (const char *)memmem(t.p, t.len, "://", 3) + 3, *end = t.p + t.len, *e = a;
    while (e < end && *e != '/' && *e != '?')
        e++;
    return (td_str_t){a, (size_t)(e - a)};
}

/* authority-form = uri-host ":" port (RFC 9112 §3.2.3), for CONNECT. */
static int valid_authority(td_str_t t) {
    size_t colon = t.len;
    while (colon > 0 && t.p[colon - 1] != ':')
        colon--;
    if (colon < 2 || colon == t.len)
        return 0;
    for (size_t i = colon; i < t.len; i++)
        if (!IS(t.p[i], C_DIGIT))
            return 0;
    return valid_host((td_str_t){t.p, colon - 1});
}

/* The request-target forms of RFC 9112 §3.2: origin-form, absolute-form (scheme "://" ...),
 * authority-form only for CONNECT, asterisk-form only for OPTIONS. */
static int valid_target(td_str_t m, td_str_t t) {
    int connect = m.len == 7 && memcmp(m.p, "CONNECT", 7) == 0;
    if (connect)
        return valid_authority(t);
    if (t.p[0] == '/')
        return 1;
    if (t.len == 1 && t.p[0] == '*')
        return m.len == 7 && memcmp(m.p, "OPTIONS", 7) == 0;
    if ((unsigned)(lower((unsigned char)t.p[0]) - 'a') >= 26u)
        return 0;
    size_t i = 1;
    while (i < t.len && IS(t.p[i], C_SCHEME))
        i++;
    if (t.len - i <= 3 || memcmp(t.p + i, "://", 3) != 0)
        return 0;
    td_str_t a = target_authority(t);
    return a.len && valid_host(a);
}

/* A field name that is a framing field's name with "_" for "-" (Content_Length,
 * transfer_Encoding, ...): a CGI-style backend maps both spellings to the same variable
 * (CONTENT_LENGTH), so it would read a length td never used to frame the request. `lit` is the
 * lower-case framing name, n its length. */
static int framing_lookalike(const char *s, const char *lit, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] == '_' ? lit[i] != '-' : lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

/* Records what one field line says about framing and the connection. Returns -1 on a value that
 * makes the message invalid. */
static int field(const td_http1_header_t *h, int request, facts_t *f) {
    const char *n = h->name.p;
    td_str_t v = h->value;
    switch (h->name.len) {
    case 4:
        if (request && ieq(n, "host", 4)) {
            /* RFC 9112 §3.2: more than one Host, or an invalid one, is a 400 */
            if (++f->hosts > 1 || !valid_host(v))
                return -1;
            f->host = v;
        }
        break;
    case 6:
        if (request && ieq(n, "expect", 6) && v.len == 12 && ieq(v.p, "100-continue", 12))
            f->expect_continue = 1;
        break;
    case 7:
        if (ieq(n, "upgrade", 7))
            f->upgrade = 1;
        break;
    case 10:
        if (ieq(n, "connection", 10))
            f->conn_flags |= connection(v);
        break;
    case 14:
        if (ieq(n, "content-length", 14))
            return content_length(v, f);
        if (request && framing_lookalike(n, "content-length", 14))
            return -1;
        break;
    case 17:
        if (ieq(n, "transfer-encoding", 17))
            return transfer_encoding(v, f);
        if (request && framing_lookalike(n, "transfer-encoding", 17))
            return -1;
        break;
    }
    return 0;
}

/* Parses field lines from p through the empty line that ends the head (RFC 9112 §5). Returns the
 * byte after the empty line, or NULL with *err set (TD_EAGAIN when more bytes are needed). */
static const char *parse_fields(const char *p, const char *end, int request,
                                td_http1_header_t *hdrs, size_t maxh, size_t *nh, facts_t *f,
                                int *err) {
    size_t n = 0;
    for (;;) {
        if (p == end)
            goto more;
        if (*p == '\r') {
            if (end - p < 2)
                goto more;
            if (p[1] != '\n')
                goto bad;
            *nh = n;
            return p + 2;
        }
        /* Not a token byte: a bare LF, ':' (empty name), or SP / HTAB, which is obs-fold (§5.2) or
         * whitespace between the start line and the first field line (§2.2). */
        if (!IS(*p, C_TCHAR))
            goto bad;
        if (n == maxh) {
            *err = TD_EHDRTOOLARGE;
            return NULL;
        }
        const char *name = p;
        do
            p++;
        while (p < end && IS(*p, C_TCHAR));
        if (p == end)
            goto more;
        /* whitespace (or any non-token byte) between field name and colon: §5.1 */
        if (*p != ':')
            goto bad;
        hdrs[n].name = (td_str_t){name, (size_t)(p - name)};
        p = skip_ws(p + 1, end);
        const char *v = p;
        p = scan_value(p, end);
        if (p == end)
            goto more;
        /* a control byte (NUL, DEL, bare LF, ...) inside the value, or a bare CR */
        if (*p != '\r')
            goto bad;
        if (end - p < 2)
            goto more;
        if (p[1] != '\n')
            goto bad;
        const char *ve = p;
        while (ve > v && IS_WS(ve[-1]))
            ve--;
        hdrs[n].value = (td_str_t){v, (size_t)(ve - v)};
        p += 2;
        if (field(&hdrs[n], request, f))
            goto bad;
        n++;
    }
more:
    *err = TD_EAGAIN;
    return NULL;
bad:
    *err = TD_EBADMSG;
    return NULL;
}

/* Checks the first n (<= 8) bytes at p against HTTP-version = "HTTP/" DIGIT "." DIGIT, so that a
 * wrong start line is refused as soon as it arrives rather than when its line ends. */
static int version_ok(const char *p, size_t n) {
    static const char lit[] = "HTTP/0.0";
    for (size_t i = 0; i < n; i++) {
        if (i == 5 || i == 7) {
            if (!IS(p[i], C_DIGIT))
                return 0;
        } else if (p[i] != lit[i]) {
            return 0;
        }
    }
    return 1;
}

/* request-line = method SP request-target SP HTTP-version CRLF (RFC 9112 §3), single SPs.
 * Bytes of the line must lie before p + max_line; only its CR may sit there. */
static const char *parse_request_line(const char *p, const char *end, size_t max_line,
                                      td_http1_request_t *req, int *err) {
    const char *lim = (size_t)(end - p) > max_line ? p + max_line : end;
    const char *s = p;
    while (p < lim && IS(*p, C_TCHAR))
        p++;
    if (p == lim)
        goto more;
    if (*p != ' ' || p == s)
        goto bad;
    req->method = (td_str_t){s, (size_t)(p - s)};
    s = ++p;
    p = scan_target(p, lim);
    if (p == lim)
        goto more;
    if (*p != ' ' || p == s)
        goto bad;
    req->target = (td_str_t){s, (size_t)(p - s)};
    if (!valid_target(req->method, req->target))
        goto bad;
    p++;
    size_t avail = (size_t)(lim - p);
    if (!version_ok(p, avail < 8 ? avail : 8))
        goto bad;
    if (avail < 8)
        goto more;
    int major = p[5] - '0', minor = p[7] - '0';
    p += 8;
    if (p == end || (*p == '\r' && end - p < 2)) {
        *err = TD_EAGAIN;
        return NULL;
    }
    if (p[0] != '\r' || p[1] != '\n')
        goto bad;
    if (major != 1) {
        *err = TD_EVERSION;
        return NULL;
    }
    /* RFC 9110 §2.5, RFC 9112 §2.3: a higher minor version of HTTP/1 is processed as the
     * highest one implemented, 1.1 */
    req->minor_version = minor > 1 ? 1 : minor;
    return p + 2;
more:
    /* Out of bytes: either the buffer ended, or the line has grown past its limit. */
    *err = lim == end ? TD_EAGAIN : TD_EURITOOLONG;
    return NULL;
bad:
    *err = TD_EBADMSG;
    return NULL;
}

/* The framing checks shared by requests and responses (RFC 9112 §6.1, §6.3). */
static int framing_ok(const facts_t *f, int minor) {
    if (!f->te)
        return 1;
    /* §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing; with Content-Length, a request
     * smuggling attempt; §6.3: a final coding other than chunked cannot be delimited. */
    return minor == 1 && f->chunked && !f->cl;
}

static inline size_t head_limit(const td_http1_limits_t *limits) {
    return limits->max_head < (size_t)INT_MAX ? limits->max_head : (size_t)INT_MAX;
}

td_http1_limits_t td_http1_default_limits(void) {
    return (td_http1_limits_t){.max_request_line = 8192, .max_head = 16384, .max_headers = 100};
}

int td_http1_parse_request(const char *buf, size_t len, const td_http1_limits_t *limits,
                           td_http1_request_t *req, td_http1_header_t *headers, size_t max) {
    td_http1_limits_t defaults;
    if (!limits) {
        defaults = td_http1_default_limits();
        limits = &defaults;
    }
    size_t max_head = head_limit(limits);
    const char *p = buf, *end = buf + (len > max_head ? max_head : len);
    size_t maxh = max < limits->max_headers ? max : limits->max_headers;
    facts_t f = {0};
    int err;

    memset(req, 0, sizeof *req);
    /* §2.2: a server SHOULD ignore empty lines received before the request-line */
    while (p < end && *p == '\r') {
        if (end - p < 2) {
            err = TD_EAGAIN;
            goto fail;
        }
        if (p[1] != '\n')
            return TD_EBADMSG;
        p += 2;
    }
    if (!(p = parse_request_line(p, end, limits->max_request_line, req, &err)))
        goto fail;
    if (!(p = parse_fields(p, end, 1, headers, maxh, &req->num_headers, &f, &err)))
        goto fail;

    if (!framing_ok(&f, req->minor_version))
        return TD_EBADMSG;
    if (req->minor_version == 1 && f.hosts == 0)
        return TD_EBADMSG;
    req->headers = headers;
    req->host = f.host;
    if (f.te) {
        req->body = TD_BODY_CHUNKED;
    } else if (f.cl) {
        req->body = TD_BODY_LENGTH;
        req->content_length = f.content_length;
        req->content_length_repeated = f.cl_repeated;
    }
    req->conn_flags = f.conn_flags;
    if (req->minor_version == 1) {
        req->keep_alive = !(f.conn_flags & TD_CONN_CLOSE);
        /* RFC 9110 §7.8 and §10.1.1: Upgrade and 100-continue are ignored in HTTP/1.0 */
        req->upgrade = f.upgrade && (f.conn_flags & TD_CONN_UPGRADE);
        req->expect_continue = f.expect_continue;
    } else {
        req->keep_alive = (f.conn_flags & (TD_CONN_KEEPALIVE | TD_CONN_CLOSE)) == TD_CONN_KEEPALIVE;
    }
    req->head = req->method.len == 4 && memcmp(req->method.p, "HEAD", 4) == 0;
    return (int)(p - buf);

fail:
    if (err == TD_EAGAIN && len > max_head)
        err = TD_EHDRTOOLARGE;
    return err;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF (RFC 9112 §4). A status line
 * without the second SP ("HTTP/1.1 200\r\n") is accepted: servers send it, and it is not
 * ambiguous. */
static const char *parse_status_line(const char *p, const char *end, td_http1_response_t *resp,
                                     int *err) {
    /* "HTTP/1.x ddd", checked on whatever part of it has arrived; a minor version above 1 is
     * taken as 1.1 (RFC 9110 §2.5) */
    size_t avail = (size_t)(end - p), n = avail < 12 ? avail : 12;
    if (!version_ok(p, n < 8 ? n : 8) || (n > 5 && p[5] != '1') || (n > 8 && p[8] != ' ') ||
        (n > 9 && (p[9] < '1' || p[9] > '9')) || (n > 10 && !IS(p[10], C_DIGIT)) ||
        (n > 11 && !IS(p[11], C_DIGIT)))
        goto bad;
    if (n < 12)
        goto more;
    resp->minor_version = p[7] > '1' ? 1 : p[7] - '0';
    resp->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    p += 12;
    if (p == end)
        goto more;
    const char *s = p;
    if (*p == ' ') {
        s = ++p;
        p = scan_value(p, end);
        if (p == end)
            goto more;
    }
    if (*p != '\r')
        goto bad;
    if (end - p < 2)
        goto more;
    if (p[1] != '\n')
        goto bad;
    resp->reason = (td_str_t){s, (size_t)(p - s)};
    return p + 2;
more:
    *err = TD_EAGAIN;
    return NULL;
bad:
    *err = TD_EBADMSG;
    return NULL;
}

int td_http1_parse_response(const char *buf, size_t len, int request_was_head,
                            const td_http1_limits_t *limits, td_http1_response_t *resp,
                            td_http1_header_t *headers, size_t max) {
    td_http1_limits_t defaults;
    if (!limits) {
        defaults = td_http1_default_limits();
        limits = &defaults;
    }
    size_t max_head = head_limit(limits);
    const char *p = buf, *end = buf + (len > max_head ? max_head : len);
    size_t maxh = max < limits->max_headers ? max : limits->max_headers;
    facts_t f = {0};
    int err;

    memset(resp, 0, sizeof *resp);
    if (!(p = parse_status_line(p, end, resp, &err)))
        goto fail;
    if (!(p = parse_fields(p, end, 0, headers, maxh, &resp->num_headers, &f, &err)))
        goto fail;

    if (!framing_ok(&f, resp->minor_version))
        return TD_EBADMSG;
    resp->headers = headers;
    resp->conn_flags = f.conn_flags;
    resp->content_length = f.cl ? f.content_length : 0;
    resp->content_length_repeated = f.cl_repeated;
    if (resp->minor_version == 1)
        resp->keep_alive = !(f.conn_flags & TD_CONN_CLOSE);
    else
        resp->keep_alive =
            (f.conn_flags & (TD_CONN_KEEPALIVE | TD_CONN_CLOSE)) == TD_CONN_KEEPALIVE;
    int s = resp->status;
    if (request_was_head || s < 200 || s == 204 || s == 304) {
        resp->body = TD_BODY_NONE;
    } else if (f.te) {
        resp->body = TD_BODY_CHUNKED;
    } else if (f.cl) {
        resp->body = TD_BODY_LENGTH;
    } else {
        resp->body = TD_BODY_UNTIL_CLOSE;
        resp->keep_alive = 0;
    }
    return (int)(p - buf);

fail:
    if (err == TD_EAGAIN && len > max_head)
        err = TD_EHDRTOOLARGE;
    return err;
}

int td_http1_name_is(td_str_t name, const char *lit) {
    return strlen(lit) == name.len && ieq(name.p, lit, name.len);
}

int td_http1_list_has(td_str_t list, const char *token) {
    const char *p = list.p, *end = list.p + list.len;
    while (p < end) {
        p = skip_ws(p, end);
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && IS_WS(e[-1]))
            e--;
        if (e > s && td_http1_name_is((td_str_t){s, (size_t)(e - s)}, token))
            return 1;
        if (p < end)
            p++;
    }
    return 0;
}

/* Says which rule a rejected request head broke, for the log line. Walks the head again line by
 * line; runs only after td_http1_parse_request refused it, never on the hot path. */
const char *td_http1_request_problem(const char *buf, size_t len) {
    const char *p = buf, *end = buf + len;
    int hosts = 0, ncl = 0, te = 0, te_chunked_last = 0, cl_bad = 0, cl_conflict = 0, minor = 1;
    uint64_t cl_value = 0;
    for (int line = 0; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        const char *cr = memchr(p, '\r', (size_t)(e - p));
        if (cr && cr + 1 != e)
            return "bare CR in the head";
        if (nl && (e == p || e[-1] != '\r'))
            return "bare LF line ending (CRLF required)";
        if (!nl)
            break;              /* an unfinished line: nothing more to say about it */
        const char *le = e - 1; /* the CR */
        if (line == 0) {
            const char *sp1 = memchr(p, ' ', (size_t)(le - p));
            const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(le - sp1 - 1)) : NULL;
            if (!sp1 || !sp2 || sp1 == p || sp2 == sp1 + 1)
                return "malformed request line (METHOD SP TARGET SP HTTP/1.x)";
            for (const char *q = p; q < sp1; q++)
                if (!IS(*q, C_TCHAR))
                    return "invalid character in the method";
            if (memchr(sp2 + 1, ' ', (size_t)(le - sp2 - 1)))
                return "space in the request-target";
            if (le - sp2 - 1 == 8 && memcmp(sp2 + 1, "HTTP/1.0", 8) == 0)
                minor = 0;
            for (const char *q = sp1 + 1; q < sp2; q++)
                if (!IS(*q, C_TARGET))
                    return "invalid character in the request-target";
            td_str_t t = {sp1 + 1, (size_t)(sp2 - sp1 - 1)};
            if (t.p[0] != '/' && memmem(t.p, t.len, "://", 3)) {
                td_str_t a = target_authority(t);
                if (!a.len || !valid_host(a))
                    return "invalid authority in the absolute-form target (host[:port], no "
                           "userinfo)";
            }
        } else if (le == p) {
            break; /* the empty line ending the head */
        } else {
            if (*p == ' ' || *p == '\t')
                return "obs-fold (a header line continued on the next line)";
            const char *colon = memchr(p, ':', (size_t)(le - p));
            if (!colon)
                return "header line without a colon";
            if (colon == p)
                return "empty header name";
            for (const char *q = p; q < colon; q++)
                if (!IS(*q, C_TCHAR))
                    return IS_WS(*q) ? "whitespace between a header name and its colon"
                                     : "invalid character in a header name";
            td_str_t name = {p, (size_t)(colon - p)};
            const char *v = skip_ws(colon + 1, le), *ve = le;
            while (ve > v && IS_WS(ve[-1]))
                ve--;
            for (const char *q = v; q < ve; q++)
                if ((unsigned char)*q < 0x20 ? *q != '\t' : *q == 0x7f)
                    return "control character in a header value";
            td_str_t val = {v, (size_t)(ve - v)};
            if ((name.len == 14 && framing_lookalike(name.p, "content-length", 14) &&
                 memchr(name.p, '_', name.len)) ||
                (name.len == 17 && framing_lookalike(name.p, "transfer-encoding", 17) &&
                 memchr(name.p, '_', name.len)))
                return "header name that spells Content-Length or Transfer-Encoding with \"_\" "
                       "(a CGI backend would read it as the framing field)";
            if (td_http1_name_is(name, "host")) {
                hosts++;
                if (!valid_host(val))
                    return "invalid Host";
            } else if (td_http1_name_is(name, "content-length")) {
                facts_t f;
                memset(&f, 0, sizeof(f));
                if (content_length(val, &f) < 0)
                    cl_bad = 1;
                else if (ncl++ && f.content_length != cl_value)
                    cl_conflict = 1;
                cl_value = f.content_length;
            } else if (td_http1_name_is(name, "transfer-encoding")) {
                te = 1;
                facts_t f;
                memset(&f, 0, sizeof(f));
                te_chunked_last = transfer_encoding(val, &f) == 0 && f.chunked;
            }
        }
        p = nl + 1;
    }
    if (ncl && te)
        return "Content-Length together with Transfer-Encoding";
    if (cl_bad)
        return "invalid Content-Length";
    if (cl_conflict)
        return "conflicting Content-Length values";
    if (te && minor == 0)
        return "Transfer-Encoding in an HTTP/1.0 request";
    if (te && !te_chunked_last)
        return "Transfer-Encoding whose final coding is not chunked";
    if (hosts > 1)
        return "more than one Host";
    if (hosts == 0 && minor == 1)
        return "missing Host (required in HTTP/1.1)";
    return "malformed request";
}
