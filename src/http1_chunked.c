/* The chunked transfer coding (RFC 9112 §7.1): an incremental decoder that checks the framing
 * byte by byte and reports where the chunk data lies, without copying it. */
#include "td/http1.h"

#include "http1_chars.h"

#define CHUNK_LINE_MAX 4096 /* bytes of a chunk-size line, extensions included, CRLF excluded */
#define TRAILER_MAX 16384   /* bytes of the trailer section, final CRLF included */
#define CHUNK_SIZE_MAX_SHIFT                                                                       \
    58 /* a size that has bits at or above this cannot take another digit */

/* Chunked decoder states (RFC 9112 §7.1). The chunk-size line, extensions included, is checked
 * against the grammar
 *   chunk = chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
 * byte by byte, so whitespace after the size is accepted only when an extension follows. */
enum {
    CH_SIZE0 = 0,   /* first hex digit of a chunk-size */
    CH_SIZE,        /* more hex digits, BWS, ';' or CR */
    CH_SIZE_WS,     /* BWS after the size: BWS or ';' */
    CH_EXT,         /* after ';': BWS or the first byte of an extension name */
    CH_EXT_NAME,    /* in a name: tchar, BWS, '=', ';' or CR */
    CH_EXT_NAME_WS, /* BWS after a name: BWS, '=' or ';' */
    CH_EXT_EQ,      /* after '=': BWS, DQUOTE or the first byte of a token value */
    CH_EXT_TOKEN,   /* in a token value: tchar, BWS, ';' or CR */
    CH_EXT_QUOTED,  /* in a quoted-string value */
    CH_EXT_QPAIR,   /* after a backslash in a quoted-string */
    CH_EXT_VAL_END, /* right after a quoted-string: BWS, ';' or CR */
    CH_EXT_VAL_WS,  /* BWS after a value: BWS or ';' */
    CH_SIZE_LF,     /* after the CR of the size line */
    CH_DATA,        /* chunk-data: `remaining` bytes */
    CH_DATA_CR,     /* CRLF after the data */
    CH_DATA_LF,
    CH_TR_START, /* start of a trailer field line, or the CR of the final empty line */
    CH_TR_NAME,  /* in a trailer field name */
    CH_TR_VALUE, /* in a trailer field value, up to its CR */
    CH_TR_LF,    /* after the CR of a trailer field line */
    CH_END_LF,   /* after the CR of the final empty line */
    CH_DONE,
    CH_ERROR,
};

/* The grpc-status trailer field of a gRPC response, noted as the trailer section goes by: the
 * name is matched byte by byte (case-insensitive), the value's digits summed, nothing copied.
 * Only trailer bytes pay, and only when the caller asked (want_grpc). */
#define GRPC_STATUS "grpc-status"

static void grpc_name_step(td_http1_chunked_t *c, unsigned char ch) {
    if (c->tr_match == 0xff)
        return;
    if (c->tr_match < sizeof(GRPC_STATUS) - 1 &&
        (ch | 0x20) == (unsigned char)GRPC_STATUS[c->tr_match])
        c->tr_match++;
    else
        c->tr_match = 0xff;
}

/* tr_grpc: 1 before the digits, 3 in them, 4 after them (whitespace), 2 not a number. */
static void grpc_value_step(td_http1_chunked_t *c, unsigned char ch) {
    if (ch >= '0' && ch <= '9' && c->tr_grpc != 4) {
        if (c->grpc_status < 100)
            c->grpc_status = (uint16_t)(c->grpc_status * 10 + (ch - '0'));
        c->tr_grpc = 3;
    } else if ((ch == ' ' || ch == '\t') && c->tr_grpc != 3) {
        return;
    } else if (ch == ' ' || ch == '\t') {
        c->tr_grpc = 4;
    } else {
        c->grpc_status = 2; /* not a number: the client reports UNKNOWN */
        c->tr_grpc = 2;
    }
}

long td_http1_chunked_feed(td_http1_chunked_t *c, const char *buf, size_t len, int *done,
                           td_str_t *spans, size_t max_spans, size_t *nspans) {
    const char *p = buf, *end = buf + len;
    size_t ns = 0;

    *done = 0;
    if (nspans)
        *nspans = 0;
    if (c->state == CH_ERROR)
        return TD_EBADMSG;
    while (p < end) {
        int s = c->state;
        if (s == CH_DATA) {
            if (spans && ns == max_spans)
                break;
            size_t n = (size_t)(end - p);
            if (n > c->remaining)
                n = (size_t)c->remaining;
            if (spans)
                spans[ns++] = (td_str_t){p, n};
            p += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        if (s == CH_DONE)
            break;
        unsigned char ch = (unsigned char)*p++;
        if (s < CH_SIZE_LF) {
            if (ch != '\r' && ++c->line_len > CHUNK_LINE_MAX)
                goto bad;
        } else if (s >= CH_TR_START) {
            if (++c->trailer_bytes > TRAILER_MAX)
                goto bad;
        }
        switch (s) {
        case CH_SIZE0:
            if (!IS(ch, C_HEX))
                goto bad;
            c->remaining = hexval(ch);
            c->state = CH_SIZE;
            break;
        case CH_SIZE:
            if (IS(ch, C_HEX)) {
                if (c->remaining >> CHUNK_SIZE_MAX_SHIFT)
                    goto bad;
                c->remaining = c->remaining << 4 | hexval(ch);
            } else if (ch == '\r') {
                c->state = CH_SIZE_LF;
            } else if (ch == ';') {
                c->state = CH_EXT;
            } else if (IS_WS(ch)) {
                c->state = CH_SIZE_WS;
            } else {
                goto bad;
            }
            break;
        case CH_SIZE_WS:
        case CH_EXT_VAL_WS:
            if (ch == ';')
                c->state = CH_EXT;
            else if (!IS_WS(ch))
                goto bad;
            break;
        case CH_EXT:
            if (IS(ch, C_TCHAR))
                c->state = CH_EXT_NAME;
            else if (!IS_WS(ch))
                goto bad;
            break;
        case CH_EXT_NAME:
        case CH_EXT_NAME_WS:
            if (s == CH_EXT_NAME && IS(ch, C_TCHAR))
                break;
            if (ch == '=')
                c->state = CH_EXT_EQ;
            else if (ch == ';')
                c->state = CH_EXT;
            else if (ch == '\r' && s == CH_EXT_NAME)
                c->state = CH_SIZE_LF;
            else if (IS_WS(ch))
                c->state = CH_EXT_NAME_WS;
            else
                goto bad;
            break;
        case CH_EXT_EQ:
            if (ch == '"')
                c->state = CH_EXT_QUOTED;
            else if (IS(ch, C_TCHAR))
                c->state = CH_EXT_TOKEN;
            else if (!IS_WS(ch))
                goto bad;
            break;
        case CH_EXT_TOKEN:
        case CH_EXT_VAL_END:
            if (s == CH_EXT_TOKEN && IS(ch, C_TCHAR))
                break;
            if (ch == ';')
                c->state = CH_EXT;
            else if (ch == '\r')
                c->state = CH_SIZE_LF;
            else if (IS_WS(ch))
                c->state = CH_EXT_VAL_WS;
            else
                goto bad;
            break;
        case CH_EXT_QUOTED:
            if (ch == '"')
                c->state = CH_EXT_VAL_END;
            else if (ch == '\\')
                c->state = CH_EXT_QPAIR;
            else if (!IS(ch, C_QDTEXT))
                goto bad;
            break;
        case CH_EXT_QPAIR:
            if (!IS(ch, C_VALUE))
                goto bad;
            c->state = CH_EXT_QUOTED;
            break;
        case CH_SIZE_LF:
            if (ch != '\n')
                goto bad;
            c->state = c->remaining ? CH_DATA : CH_TR_START;
            break;
        case CH_DATA_CR:
            if (ch != '\r')
                goto bad;
            c->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (ch != '\n')
                goto bad;
            c->state = CH_SIZE0;
            c->line_len = 0;
            break;
        case CH_TR_START:
            if (ch == '\r') {
                c->state = CH_END_LF;
            } else if (IS(ch, C_TCHAR)) {
                c->state = CH_TR_NAME;
                c->tr_match = c->want_grpc ? 0 : 0xff;
                grpc_name_step(c, ch);
            } else {
                goto bad; /* obs-fold, bare LF, empty name */
            }
            break;
        case CH_TR_NAME:
            if (ch == ':') {
                c->state = CH_TR_VALUE;
                if (c->tr_match == sizeof(GRPC_STATUS) - 1) {
                    c->tr_grpc = 1;
                    c->grpc_seen = 1;
                    c->grpc_status = 0;
                }
            } else if (!IS(ch, C_TCHAR)) {
                goto bad;
            } else {
                grpc_name_step(c, ch);
            }
            break;
        case CH_TR_VALUE:
            if (ch == '\r') {
                c->state = CH_TR_LF;
                if (c->tr_grpc == 1)
                    c->grpc_status = 2; /* empty: UNKNOWN */
                c->tr_grpc = 0;
            } else if (!IS(ch, C_VALUE)) {
                goto bad;
            } else if (c->tr_grpc && c->tr_grpc != 2) {
                grpc_value_step(c, ch);
            }
            break;
        case CH_TR_LF:
            if (ch != '\n')
                goto bad;
            c->state = CH_TR_START;
            break;
        case CH_END_LF:
            if (ch != '\n')
                goto bad;
            c->state = CH_DONE;
            break;
        default:
            goto bad;
        }
    }
    if (c->state == CH_DONE)
        *done = 1;
    if (nspans)
        *nspans = ns;
    return (long)(p - buf);
bad:
    c->state = CH_ERROR;
    return TD_EBADMSG;
}
