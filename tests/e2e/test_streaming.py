"""Streaming through td: WebSocket tunnels, 50 MB uploads and downloads with td's memory bounded,
and backpressure towards a slow reader. Real td and demo-backend processes on 127.0.0.1."""
import hashlib
import http.client
import json
import os
import socket
import time

import pytest
import websocket

from conftest import RSS_SCALE, RawConn, RssSampler, backend_cfg, demo_body, rss_kb

MB = 1024 * 1024
BIG = 50 * MB  # 52428800
RSS_LIMIT_KB = 60 * 1024 * RSS_SCALE  # growth allowed while 50 MB stream through
SLOW_LIMIT_KB = 30 * 1024 * RSS_SCALE  # growth allowed while a client reads slowly


def start_td(backends, td):
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}))
    warm_up(t)
    return t


def warm_up(t):
    """A few requests on both workers so that start-up allocations are not counted as growth."""
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        conn.request("POST", "/echo", body=b"x" * 1000)
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        conn.close()


def assert_serves(t):
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    try:
        conn.request("GET", "/bytes/100")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, demo_body(100))
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# WebSocket


@pytest.mark.parametrize("size", [10, 100 * 1000])
def test_websocket_echo(backends, td, size):
    t = start_td(backends, td)
    ws = websocket.create_connection(f"ws://127.0.0.1:{t.port}/ws", timeout=10)
    try:
        text = "".join(chr(0x61 + i % 26) for i in range(size))
        binary = os.urandom(size)
        for _ in range(2):  # twice: frames keep flowing both ways on the tunnel
            ws.send(text)
            opcode, data = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_TEXT
            assert data == text.encode()
            ws.send_binary(binary)
            opcode, data = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_BINARY
            assert data == binary
        ws.ping(b"are you there")
        opcode, data = ws.recv_data(control_frame=True)
        assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    finally:
        ws.close(timeout=5)
    assert_serves(t)


def test_websocket_handshake_headers(backends, td):
    """The 101 answer keeps Upgrade/Connection (they are the switch itself) and the accept key."""
    t = start_td(backends, td)
    ws = websocket.create_connection(f"ws://127.0.0.1:{t.port}/ws", timeout=10)
    try:
        h = {k.lower(): v for k, v in ws.getheaders().items()}
        assert ws.getstatus() == 101
        assert h.get("upgrade", "").lower() == "websocket"
        assert "upgrade" in h.get("connection", "").lower()
        assert "sec-websocket-accept" in h
        ws.send("hi")
        assert ws.recv() == "hi"
    finally:
        ws.close(timeout=5)


# ---------------------------------------------------------------------------------------------
# 50 MB uploads


BLOCK = os.urandom(64 * 1024)
BLOCK_SUM = sum(BLOCK)


def blocks(total):
    assert total % len(BLOCK) == 0
    for _ in range(total // len(BLOCK)):
        yield BLOCK


def upload(t, headers, encode_chunked):
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=60)
    try:
        with RssSampler(t.proc.pid) as rss:
            try:
                conn.request("POST", "/echo", body=blocks(BIG), headers=headers,
                             encode_chunked=encode_chunked)
            except OSError as e:
                # td gave up on the request while it was being sent: show what it answered
                try:
                    r = conn.getresponse()
                    answer = f"{r.status} {r.read()[:200]!r}"
                except Exception as e2:
                    answer = f"nothing ({e2!r})"
                pytest.fail(f"upload failed: {e!r}; td answered {answer}")
            r = conn.getresponse()
            body = r.read()
        growth = rss.stop()
    finally:
        conn.close()
    assert r.status == 200, body[:300]
    assert json.loads(body) == {"received": BIG, "sum": (BLOCK_SUM * (BIG // len(BLOCK))) % 2**32}
    assert growth < RSS_LIMIT_KB, f"td RSS grew by {growth} kB during a 50 MB upload"


def test_upload_50mb_chunked(backends, td):
    t = start_td(backends, td)
    upload(t, {"Transfer-Encoding": "chunked"}, True)
    assert_serves(t)


def test_upload_50mb_content_length(backends, td):
    t = start_td(backends, td)
    upload(t, {"Content-Length": str(BIG)}, False)
    assert_serves(t)


# ---------------------------------------------------------------------------------------------
# 50 MB downloads


@pytest.mark.parametrize("route", ["bytes", "chunked"])
def test_download_50mb(backends, td, route):
    t = start_td(backends, td)
    expected = hashlib.sha256(demo_body(BIG)).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=60)
    try:
        with RssSampler(t.proc.pid) as rss:
            conn.request("GET", f"/{route}/{BIG}")
            r = conn.getresponse()
            assert r.status == 200
            if route == "bytes":
                assert r.getheader("Content-Length") == str(BIG)
            else:
                assert r.getheader("Transfer-Encoding") == "chunked"
            h = hashlib.sha256()
            n = 0
            while True:
                piece = r.read(256 * 1024)
                if not piece:
                    break
                n += len(piece)
                h.update(piece)
        growth = rss.stop()
        assert n == BIG
        assert h.hexdigest() == expected
        assert growth < RSS_LIMIT_KB, f"td RSS grew by {growth} kB during a 50 MB download"
        # the connection is still good for another request
        conn.request("GET", "/bytes/3")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"abc")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Backpressure


def test_slow_reader_backpressure(backends, td):
    """A client reading 64 KB per 100 ms from a 100 MB answer: td must stop reading from the
    backend instead of buffering the answer."""
    t = start_td(backends, td)
    start = rss_kb(t.proc.pid)
    peak = start
    got = 0
    with RawConn(t.port, timeout=10, rcvbuf=64 * 1024) as c:
        c.send(b"GET /bytes/104857600 HTTP/1.1\r\nHost: h\r\n\r\n")
        version, status, _ = c.read_head()
        assert status == 200
        got = len(c.buf)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            got += len(c.s.recv(64 * 1024))
            time.sleep(0.1)
            peak = max(peak, rss_kb(t.proc.pid))
        peak = max(peak, rss_kb(t.proc.pid))
    assert got > 64 * 1024  # the answer did flow
    assert got < 20 * MB  # and the client really was slow
    assert peak - start < SLOW_LIMIT_KB, f"td RSS grew by {peak - start} kB for a slow reader"
    # closing the slow client must free the exchange; td goes on serving
    assert_serves(t)
    time.sleep(0.5)
    assert rss_kb(t.proc.pid) - start < SLOW_LIMIT_KB


def test_client_abort_mid_download(backends, td):
    """A client that vanishes in the middle of a large answer leaves td healthy."""
    t = start_td(backends, td)
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
        s.sendall(b"GET /bytes/104857600 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
    assert_serves(t)
