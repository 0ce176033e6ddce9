"""End-to-end tests of HTTP/2 connection management and limits: floods answered GOAWAY
ENHANCE_YOUR_CALM, requests whose :authority and host disagree or whose :scheme is not http(s)
refused, max_connection_age_ms (GOAWAY for h2, Connection: close for HTTP/1.1), h2 connections
let go when the backend their streams went to is drained, memory that stays bounded over rounds of
h2 load, and the protocol in the access log. Raw frames from Python sockets, curl, h2load."""
import http.client
import json
import shutil
import socket
import struct
import subprocess
import time

import pytest

from conftest import ASAN, RSS_SCALE, backend_cfg, rss_kb, wait_for
from test_h2 import (PREFACE, TIMEOUT, H2Load, cert, curl, curl_h2, frame, h2td,  # noqa: F401
                     literal, read_frames, request_block, requests_of)

pytestmark = pytest.mark.skipif(not shutil.which("nghttp") or not shutil.which("curl"),
                                reason="needs nghttp (nghttp2-client) and curl")

GOAWAY, RST_STREAM = 7, 3
ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 11, 1


def goaway_code(f):
    return int.from_bytes(f[3][4:8], "big")


def one(backends, h2td, **kw):
    b = backends(("blue", 1))
    return b, h2td(backend_cfg({"blue": (100, b.ports["blue"])}), **kw)


def h2_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(PREFACE + frame(4, 0, 0))
    return s


def answered(s, sid, path="/"):
    """Sends GET path on stream sid of s; returns the first HEADERS frame of its answer."""
    s.sendall(frame(1, 5, sid, request_block(path)))
    while True:
        f = read_frames(s, 1)
        if f is None or f[2] == sid:
            return f


# ---- floods ---------------------------------------------------------------------------------

def test_h2_rapid_reset_flood_gets_goaway_enhance_your_calm_and_another_client_is_served(
        backends, h2td):
    _, t = one(backends, h2td)
    other = h2_conn(t.h2c_port)
    try:
        assert answered(other, 1) is not None
        with h2_conn(t.h2c_port) as s:
            burst = b"".join(frame(1, 5, sid, request_block("/delay/1000")) +
                             frame(3, 0, sid, struct.pack(">I", 8))  # RST_STREAM CANCEL
                             for sid in range(1, 2 * 3000, 2))
            try:
                s.sendall(burst)
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = read_frames(s, GOAWAY)
            assert f is not None, "no GOAWAY after 3000 streams reset in a burst"
            assert goaway_code(f) == ENHANCE_YOUR_CALM, f
        # The other connection goes on being served.
        assert answered(other, 3) is not None
    finally:
        other.close()
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/")
    assert (version, status) == ("2", 200)
    assert "h2: GOAWAY after a rapid reset flood" in t.proc.output()


def test_h2_settings_flood_gets_goaway_enhance_your_calm(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        entries = b"".join(struct.pack(">HI", 4, 65535) for _ in range(100))
        s.sendall(frame(4, 0, 0, entries))
        f = read_frames(s, GOAWAY)
        assert f is not None and goaway_code(f) == ENHANCE_YOUR_CALM, f


def test_h2_continuation_flood_gets_goaway_enhance_your_calm(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        s.sendall(frame(1, 0, 1, request_block("/")))
        try:
            s.sendall(b"".join(frame(9, 0, 1, literal(b"x-a", b"b" * 10)) for _ in range(50)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        f = read_frames(s, GOAWAY)
        assert f is not None and goaway_code(f) == ENHANCE_YOUR_CALM, f


# ---- request validation -------------------------------------------------------------------------

def rst_code(s, sid):
    f = read_frames(s, RST_STREAM)
    assert f is not None and f[2] == sid, f
    return int.from_bytes(f[3], "big")


def test_h2_authority_and_host_that_differ_reset_the_stream_with_protocol_error(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        # request_block's :authority is "a".
        s.sendall(frame(1, 5, 1, request_block("/", literal(b"host", b"b"))))
        assert rst_code(s, 1) == PROTOCOL_ERROR
        # The same name in another case is the same authority; the connection goes on.
        s.sendall(frame(1, 5, 3, request_block("/headers", literal(b"host", b"A"))))
        f = read_frames(s, 1)
        assert f is not None and f[2] == 3, f
    assert requests_of(t)["blue"] == 1


def test_h2_scheme_other_than_http_or_https_resets_the_stream_with_protocol_error(
        backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        block = b"\x82" + literal(b":scheme", b"ftp") + literal(b":path", b"/") + \
            literal(b":authority", b"a")
        s.sendall(frame(1, 5, 1, block))
        assert rst_code(s, 1) == PROTOCOL_ERROR
        # https on the plain listener is still an HTTP request (a TLS-terminating hop before td).
        block = b"\x82\x87" + literal(b":path", b"/") + literal(b":authority", b"a")
        s.sendall(frame(1, 5, 3, block))
        f = read_frames(s, 1)
        assert f is not None and f[2] == 3, f
    assert requests_of(t)["blue"] == 1


# ---- access log ---------------------------------------------------------------------------------

def test_access_log_names_the_protocol_of_each_request(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    log = tmp_path / "access.log"
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=str(log)))
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/bytes/1?p2")
    assert (version, status) == ("2", 200)
    curl("--http2", "-o", "/dev/null", f"https://127.0.0.1:{t.port}/bytes/1?p2tls")
    curl("--http1.1", "-o", "/dev/null", f"http://127.0.0.1:{t.h2c_port}/bytes/1?p11")
    curl("--http1.0", "-o", "/dev/null", f"http://127.0.0.1:{t.h2c_port}/bytes/1?p10")

    def lines():
        try:
            got = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            return None
        return got if len(got) == 4 else None
    got = {e["path"]: e for e in wait_for(lines, 10, what="4 access log lines")}
    assert {p: e["protocol"] for p, e in got.items()} == {
        "/bytes/1?p2": "HTTP/2", "/bytes/1?p2tls": "HTTP/2", "/bytes/1?p11": "HTTP/1.1", "/bytes/1?p10": "HTTP/1.0"}, got
    # The field sits after the path, as in nginx's "$request" line.
    text = log.read_text()
    assert '"path":"/bytes/1?p11","protocol":"HTTP/1.1","status":200' in text, text
