/* The demo backend's WebSocket echo (RFC 6455): the handshake, then text and binary frames echoed
 * frame by frame, ping answered with pong, close answered with the same status code. */
#include "conn.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

static void ws_accept_key(td_str_t key, char out[32]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char digest[SHA_DIGEST_LENGTH];
    char tmp[128 + sizeof(guid)];
    size_t klen = key.len < 128 ? key.len : 128;
    memcpy(tmp, key.p, klen);
    memcpy(tmp + klen, guid, sizeof(guid) - 1);
    SHA1((const unsigned char *)tmp, klen + sizeof(guid) - 1, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}

/* Queues one unmasked frame header for a payload of len bytes. */
static int ws_send_header(conn_t *c, uint8_t b0, uint64_t len) {
    uint8_t h[10];
    size_t hl;
    h[0] = b0;
    if (len < 126) {
        h[1] = (uint8_t)len;
        hl = 2;
    } else if (len <= 0xffff) {
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    return td_demo_send_copy(c, h, hl);
}

static void ws_send_close(conn_t *c, const uint8_t *payload, size_t len) {
    uint8_t f[2 + 125];
    f[0] = 0x88;
    f[1] = (uint8_t)len;
    memcpy(f + 2, payload, len);
    if (td_demo_send_copy(c, f, 2 + len) == 0)
        td_demo_close_after_drain(c, 0);
}

static void ws_fail(conn_t *c, unsigned code) {
    uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    ws_send_close(c, p, 2);
}

static void ws_control(conn_t *c) {
    if (c->ws_op == 0x9) { /* ping: pong with the same payload */
        uint8_t f[2 + 125];
        f[0] = 0x8a;
        f[1] = (uint8_t)c->ctrl_len;
        memcpy(f + 2, c->ctrl, c->ctrl_len);
        td_demo_send_copy(c, f, 2 + c->ctrl_len);
    } else if (c->ws_op == 0x8) { /* close: answer with the same status code, then shut down */
        if (c->ctrl_len == 1)
            ws_fail(c, 1002);
        else
            ws_send_close(c, c->ctrl, c->ctrl_len < 2 ? 0 : 2);
    } /* pong: nothing to do */
}

/* Consumes WebSocket bytes from the read buffer. Returns 1 to go on, 0 when more input is needed
 * (or the write budget is spent). */
int td_demo_ws_step(conn_t *c) {
    const uint8_t *p = (const uint8_t *)c->buf + c->rpos;
    size_t avail = c->rlen - c->rpos;

    if (c->ws_state == WS_HDR) {
        if (avail < 2)
            return 0;
        unsigned fin = p[0] & 0x80, rsv = p[0] & 0x70, op = p[0] & 0x0f;
        unsigned masked = p[1] & 0x80, len7 = p[1] & 0x7f;
        size_t hl = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
        if (avail < hl)
            return 0;
        uint64_t len = len7;
        if (len7 == 126) {
            len = (uint64_t)p[2] << 8 | p[3];
        } else if (len7 == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
        }
        int control = op >= 0x8;
        if (rsv || !masked || (op > 0x2 && op < 0x8) || op > 0xa || (len7 == 127 && len >> 63)) {
            ws_fail(c, 1002);
            return 1;
        }
        if (control && (!fin || len > 125)) {
            ws_fail(c, 1002);
            return 1;
        }
        if (!control && ((op == 0) != c->ws_in_message)) {
            ws_fail(c, 1002); /* continuation without a start, or a new message inside one */
            return 1;
        }
        if (len > WS_MAX_FRAME) {
            ws_fail(c, 1009);
            return 1;
        }
        memcpy(c->ws_mask, p + hl - 4, 4);
        c->rpos += hl;
        c->ws_op = (uint8_t)op;
        c->ws_left = len;
        c->ws_off = 0;
        if (control) {
            c->ctrl_len = 0;
            c->ws_state = WS_CTRL;
        } else {
            c->ws_in_message = !fin;
            /* Echo frame by frame, keeping FIN and opcode: fragmented messages come back
             * fragmented the same way, and memory stays bounded whatever the frame size. */
            if (ws_send_header(c, (uint8_t)(fin | op), len) != 0)
                return 0;
            c->ws_state = WS_PAYLOAD;
        }
    }

    if (c->ws_state == WS_PAYLOAD && c->ws_left > 0) {
        avail = c->rlen - c->rpos;
        if (avail == 0)
            return 0;
        size_t n = avail < c->ws_left ? avail : (size_t)c->ws_left;
        wreq_t *w = td_demo_wreq_new(n);
        if (w == NULL) {
            td_demo_close(c, 0);
            return 0;
        }
        const uint8_t *src = (const uint8_t *)c->buf + c->rpos;
        for (size_t i = 0; i < n; i++)
            w->data[i] = (char)(src[i] ^ c->ws_mask[(c->ws_off + i) & 3]);
        uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
        if (td_demo_send_bufs(c, w, &b, 1) != 0)
            return 0;
        c->rpos += n;
        c->ws_off += n;
        c->ws_left -= n;
    }
    if (c->ws_state == WS_PAYLOAD && c->ws_left == 0)
        c->ws_state = WS_HDR;

    if (c->ws_state == WS_CTRL) {
        avail = c->rlen - c->rpos;
        size_t n = avail < c->ws_left ? avail : (size_t)c->ws_left;
        const uint8_t *src = (const uint8_t *)c->buf + c->rpos;
        for (size_t i = 0; i < n; i++)
            c->ctrl[c->ctrl_len + i] = src[i] ^ c->ws_mask[(c->ctrl_len + i) & 3];
        c->ctrl_len += n;
        c->rpos += n;
        c->ws_left -= n;
        if (c->ws_left > 0)
            return 0;
        c->ws_state = WS_HDR;
        ws_control(c);
    }
    return 1;
}

void td_demo_ws_check(conn_t *c, const td_http1_request_t *req) {
    td_str_t key = {NULL, 0};
    int upgrade_ws = 0, version13 = 0, version_seen = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const td_http1_header_t *h = &req->headers[i];
        if (td_http1_name_is(h->name, "upgrade"))
            upgrade_ws = td_http1_list_has(h->value, "websocket");
        else if (td_http1_name_is(h->name, "sec-websocket-key"))
            key = h->value;
        else if (td_http1_name_is(h->name, "sec-websocket-version")) {
            version_seen = 1;
            version13 = h->value.len == 2 && memcmp(h->value.p, "13", 2) == 0;
        }
    }
    int get = req->method.len == 3 && memcmp(req->method.p, "GET", 3) == 0;
    /* the key is 16 random bytes in base64: 24 characters */
    c->ws_ok =
        get && req->minor_version == 1 && req->upgrade && upgrade_ws && key.len == 24 && version13;
    c->ws_bad_version = version_seen && !version13;
    if (c->ws_ok)
        ws_accept_key(key, c->ws_accept);
}

void td_demo_ws_respond(conn_t *c) {
    if (!c->ws_ok) {
        if (c->ws_bad_version)
            td_demo_respond(c, 426, "text/plain", "WebSocket version 13 required\n", 30,
                            "Sec-WebSocket-Version: 13\r\n", 1);
        else
            td_demo_respond(c, 400, "text/plain", "WebSocket handshake expected\n", 29, NULL, 1);
        return;
    }
    char extra[128];
    snprintf(extra, sizeof(extra),
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n",
             c->ws_accept);
    char head[HEAD_CAP];
    size_t len = td_demo_build_head(c, head, sizeof(head), 101, NULL, F_NONE, 0, extra, 1);
    if (td_demo_send_copy(c, head, len) != 0)
        return;
    c->state = ST_WS;
    c->ws_state = WS_HDR;
    c->ws_in_message = 0;
}
