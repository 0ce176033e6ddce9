/* Character classes of HTTP/1.x (RFC 9110 §5.5, §5.6; RFC 3986), shared by the parts of the
 * parser: one 256-entry table (defined in http1.c), tested with IS(). Private to src/http1*.c. */
#ifndef TD_HTTP1_CHARS_H
#define TD_HTTP1_CHARS_H

enum {
    C_TCHAR = 0x01,  /* tchar (RFC 9110 §5.6.2) */
    C_VALUE = 0x02,  /* field-vchar, SP, HTAB: VCHAR and obs-text (RFC 9110 §5.5) */
    C_TARGET = 0x04, /* visible ASCII 0x21-0x7e: the bytes a request-target may hold */
    C_HOST = 0x08,   /* uri-host and port (RFC 3986 reg-name, IP-literal, IPv4, ":" port) */
    C_DIGIT = 0x10,  /* DIGIT */
    C_HEX = 0x20,    /* HEXDIG, either case */
    C_SCHEME = 0x40, /* ALPHA / DIGIT / "+" / "-" / "." (RFC 3986 §3.1) */
    C_QDTEXT = 0x80, /* qdtext of a quoted-string (RFC 9110 §5.6.4) */
};

extern const unsigned char td_http1_cls[256];

#define IS(c, k) (td_http1_cls[(unsigned char)(c)] & (k))
#define IS_WS(c) ((c) == ' ' || (c) == '\t')

static inline unsigned hexval(unsigned char c) {
    /* '0'-'9' are 0x30-0x39, 'A'-'F' 0x41-0x46, 'a'-'f' 0x61-0x66: the low nibble, plus 9 for
     * letters (bit 6 set). Only called on bytes of class C_HEX. */
    return (c & 0xfu) + (c >> 6) * 9u;
}

#endif
