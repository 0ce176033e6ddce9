"""HTTP/1.1 semantics through td: keep-alive, pipelining, bodiless responses, forwarding headers,
hop-by-hop fields, Expect: 100-continue, HTTP/1.0 clients, HTTP/1.2 and higher minor versions,
and error statuses. Everything talks to real td and demo-backend processes on 127.0.0.1."""
import http.client
import json
import re
import socket
import socketserver
import threading
import time

import pytest

from conftest import (Headers, RawConn, backend_cfg, backend_state, demo_body, free_port, get,
                      one_backend, two_colours_apart)


def start_td(backends, td, **timeouts):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"].update(timeouts)
    return td(cfg)


def assert_serves(t):
    """td still answers a normal request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    try:
        conn.request("GET", "/bytes/100")
        r = conn.getresponse()
        assert r.status == 200
        assert r.read() == demo_body(100)
        assert r.getheader("X-TD-Demo-Backend") == "blue"
    finally:
        conn.close()


def request_lines(raw_head):
    """The request head echoed by /headers, as [(name, value)] plus the request line."""
    lines = raw_head.split("\r\n")
    fields = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        fields.append((name.strip(), value.strip()))
    return lines[0], Headers(fields)


# ---------------------------------------------------------------------------------------------
# Connections


def test_keepalive_100_requests_one_connection(backends, td):
    t = start_td(backends, td)
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    try:
        for i in range(100):
            conn.request("GET", f"/bytes/{i}")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, i
            assert body == demo_body(i), i
            assert (r.getheader("Connection") or "").lower() != "close", i
            # http.client reconnects silently when a connection was closed: make sure it did not.
            assert conn.sock is sock, f"reconnected before request {i + 1}"
            assert conn.sock.getsockname() == local
    finally:
        conn.close()


def test_pipelining_three_requests_in_one_send(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"GET /status/203 HTTP/1.1\r\nHost: a\r\n\r\n")
        statuses = [c.read_response()[0] for _ in range(3)]
        assert statuses == [201, 202, 203]
        # and the connection is still usable afterwards
        c.send(b"GET /bytes/5 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = c.read_response()
        assert (status, body) == (200, b"abcde")


def test_pipelining_with_bodies(backends, td):
    """Pipelined POSTs with bodies: each body goes to its own request."""
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
               b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nxy\r\n0\r\n\r\n"
               b"GET /status/203 HTTP/1.1\r\nHost: a\r\n\r\n")
        s1, _, b1 = c.read_response()
        s2, _, b2 = c.read_response()
        s3, _, _ = c.read_response()
        assert (s1, json.loads(b1)) == (200, {"received": 3, "sum": sum(b"abc")})
        assert (s2, json.loads(b2)) == (200, {"received": 2, "sum": sum(b"xy")})
        assert s3 == 203


def test_head_204_304_have_no_body_and_connection_continues(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, h, _ = c.read_response(head_request=True)
        assert status == 200
        assert h.get("Content-Length") == "1000"

        c.send(b"HEAD /chunked/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, h, _ = c.read_response(head_request=True)
        assert status == 200

        c.send(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, h, _ = c.read_response()
        assert status == 204
        assert "Transfer-Encoding" not in h

        c.send(b"GET /status/304 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, h, _ = c.read_response()
        assert status == 304
        assert "Transfer-Encoding" not in h

        # Any stray body bytes from the answers above would be read here as the next response.
        c.send(b"GET /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, h, body = c.read_response()
        assert status == 200
        assert body == b"abcdefghij"
        # ... or would be left over after it.
        c.s.settimeout(0.3)
        try:
            extra = c.s.recv(100)
        except socket.timeout:
            extra = b""
        assert c.buf + extra == b""


def test_head_via_http_client(backends, td):
    t = start_td(backends, td)
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    try:
        conn.request("HEAD", "/bytes/5000")
        r = conn.getresponse()
        assert r.status == 200
        assert r.getheader("Content-Length") == "5000"
        assert r.read() == b""
        conn.request("GET", "/bytes/7")
        r = conn.getresponse()
        assert (r.status, r.read()) == (200, b"abcdefg")
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Header rewriting


def test_forwarded_headers(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: shop.example:8443\r\n"
               b"X-Forwarded-For: 1.2.3.4\r\n"
               b"X-Forwarded-Proto: https\r\n"   # spoofed: td speaks plain HTTP to the client
               b"X-Forwarded-Host: evil.example\r\n"
               b"X-Custom: kept\r\n\r\n")
        status, _, body = c.read_response()
    assert status == 200
    line, h = request_lines(body.decode("latin-1"))
    assert line.startswith("GET /headers HTTP/1.1"), line
    assert h.get_all("X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
    assert h.get_all("X-Forwarded-Proto") == ["http"]
    assert h.get_all("X-Forwarded-Host") == ["shop.example:8443"]
    assert h.get_all("Host") == ["shop.example:8443"]
    assert h.get_all("X-Custom") == ["kept"]


def test_forwarded_for_without_incoming_value(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = c.read_response()
    assert status == 200
    _, h = request_lines(body.decode("latin-1"))
    assert h.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert h.get_all("X-Forwarded-Host") == ["h"]


def test_request_hop_by_hop_headers_removed(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: h\r\n"
               b"Connection: close, foo\r\n"
               b"Foo: secret\r\n"
               b"Keep-Alive: timeout=5, max=100\r\n"
               b"TE: trailers\r\n"
               b"Proxy-Connection: keep-alive\r\n"
               b"X-End-To-End: yes\r\n\r\n")
        status, resp_h, body = c.read_response()
        assert status == 200
        # The client asked to close: td answers "Connection: close" and closes.
        assert "close" in (resp_h.get("Connection") or "").lower()
        assert c.closed_by_peer()
    _, h = request_lines(body.decode("latin-1"))
    for name in ("Foo", "Keep-Alive", "TE", "Proxy-Connection"):
        assert name not in h, f"{name} reached the backend: {h.items}"
    for v in h.get_all("Connection"):
        assert "foo" not in v.lower(), v
    assert h.get_all("X-End-To-End") == ["yes"]


def test_backend_connection_close_is_hop_by_hop(backends, td):
    """/close answers with "Connection: close" to td; that is about td's upstream connection and
    must not close (or be forwarded to) the client's keep-alive connection."""
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        for _ in range(3):
            c.send(b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
            status, h, _ = c.read_response()
            assert status == 200
            assert h.get("X-TD-Demo-Backend") == "blue"
            assert "close" not in (h.get("Connection") or "").lower(), h.items
        c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response()[2] == b"abc"


class _HopBackend(socketserver.BaseRequestHandler):
    """A one-route backend whose answers carry hop-by-hop fields."""

    def handle(self):
        self.request.settimeout(10)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = self.request.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[buf.index(b"\r\n\r\n") + 4:]
                self.request.sendall(
                    b"HTTP/1.1 200 OK\r\n"
                    b"Connection: keep-alive, X-Hop\r\n"
                    b"X-Hop: secret\r\n"
                    b"Keep-Alive: timeout=5, max=100\r\n"
                    b"Proxy-Connection: keep-alive\r\n"
                    b"Trailer: X-Sum\r\n"
                    b"X-End: kept\r\n"
                    b"Content-Length: 2\r\n\r\nok")
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def hop_backend():
    srv = _Server(("127.0.0.1", 0), _HopBackend)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_response_hop_by_hop_headers_removed(hop_backend, td):
    t = td(backend_cfg({"blue": (100, [hop_backend])}))
    with RawConn(t.port) as c:
        for _ in range(2):
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            status, h, body = c.read_response()
            assert (status, body) == (200, b"ok")
            for name in ("X-Hop", "Keep-Alive", "Proxy-Connection", "Trailer"):
                assert name not in h, f"{name} reached the client: {h.items}"
            for v in h.get_all("Connection"):
                assert "x-hop" not in v.lower()
            assert h.get_all("X-End") == ["kept"]


# ---------------------------------------------------------------------------------------------
# Expect: 100-continue and HTTP/1.0


def test_expect_100_continue(backends, td):
    t = start_td(backends, td)
    body = bytes(range(256)) * 400  # 102400 bytes
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\n"
               b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        # Nothing of the body is sent until the interim response arrives.
        interim = c.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        c.send(body)
        status, _, resp = c.read_response()
        assert status == 200
        assert json.loads(resp) == {"received": len(body), "sum": sum(body) % 2**32}
        # the connection goes on
        c.send(b"GET /bytes/4 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response()[2] == b"abcd"


def test_expect_100_continue_chunked(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        c.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, resp = c.read_response()
        assert status == 200
        assert json.loads(resp) == {"received": 11, "sum": sum(b"hello world")}


@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 100000, 1000000])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_post_bodies(backends, td, size, framing):
    """Request bodies of every size reach the backend whole; head and body in separate sends."""
    t = start_td(backends, td)
    body = bytes((i * 7 + 3) & 0xFF for i in range(size))
    with RawConn(t.port, timeout=20) as c:
        for _ in range(2):  # twice on one connection
            if framing == "length":
                c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
                c.send(body)
            else:
                c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, size, 10000):
                    piece = body[i:i + 10000]
                    c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                c.send(b"0\r\n\r\n")
            try:
                status, h, resp = c.read_response()
            except (ConnectionResetError, EOFError) as e:
                pytest.fail(f"no response to a {size}-byte body: {e!r}")
            assert status == 200, resp
            assert h.get("X-TD-Demo-Backend") == "blue"
            assert json.loads(resp) == {"received": size, "sum": sum(body) % 2**32}


def test_http10_client_gets_dechunked_body_and_close(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port, timeout=15) as c:
        c.send(b"GET /chunked/100000 HTTP/1.0\r\nHost: h\r\n\r\n")
        version, status, headers = c.read_head()
        h = Headers(headers)
        assert status == 200
        assert "Transfer-Encoding" not in h, headers  # HTTP/1.0 knows no chunked coding
        body = c.read_to_eof()  # and the connection closes at the end
    assert len(body) == 100000
    assert body == demo_body(100000)
    if "Content-Length" in h:
        assert h.get("Content-Length") == "100000"


def test_http10_client_bytes(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /bytes/5000 HTTP/1.0\r\n\r\n")
        status, h, body = c.read_response()
        assert status == 200
        assert body == demo_body(5000)
        assert c.closed_by_peer()


# ---------------------------------------------------------------------------------------------
# Errors


def _big_headers(total):
    out = b""
    i = 0
    while len(out) < total:
        out += b"X-Pad-%03d: %s\r\n" % (i, b"a" * 180)
        i += 1
    return out


BAD_REQUESTS = {
    "bad_request_line": (b"GARBAGE\r\n\r\n", 400),
    "bad_request_line_spaces": (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    "cl_and_te": (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "differing_content_length": (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                                 b"Content-Length: 6\r\n\r\nhello!", 400),
    "obs_fold": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n", 400),
    "bare_cr": (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\rtwo\r\n\r\n", 400),
    "uri_too_long": (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    "header_too_large": (b"GET / HTTP/1.1\r\nHost: h\r\n" + _big_headers(20000) + b"\r\n", 431),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_malformed_request_status(backends, td, name):
    raw, expected = BAD_REQUESTS[name]
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(raw)
        try:
            status, h, _ = c.read_response()
        except (ConnectionResetError, EOFError) as e:
            pytest.fail(f"no {expected} response, connection ended: {e!r} (got {c.buf!r})")
        assert status == expected
        # td answers itself: the request must not have reached the backend
        assert "X-TD-Demo-Backend" not in h, h.items
        # A request with broken framing leaves the connection unusable: td closes it.
        assert c.closed_by_peer()
    assert_serves(t)


def test_408_on_stalled_head(backends, td):
    t = start_td(backends, td, client_header_ms=1000)
    with RawConn(t.port, timeout=10) as c:
        c.send(b"GET /bytes/10 HTTP/1.1\r\nHost: h\r\nX-Half")
        t0 = time.monotonic()
        status, _, _ = c.read_response()
        elapsed = time.monotonic() - t0
        assert status == 408
        assert 0.8 <= elapsed < 5, elapsed
        assert c.closed_by_peer()
    assert_serves(t)


def test_502_when_backend_closes_without_answer(backends, td):
    t = start_td(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 502
    assert_serves(t)


def test_504_when_backend_too_slow(backends, td):
    t = start_td(backends, td, upstream_response_ms=1000)
    with RawConn(t.port, timeout=10) as c:
        t0 = time.monotonic()
        c.send(b"GET /delay/3000 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, _ = c.read_response()
        elapsed = time.monotonic() - t0
        assert status == 504
        assert 0.8 <= elapsed < 2.9, elapsed  # before the backend would have answered
    assert_serves(t)


def test_503_when_no_backend_is_up(backends, td):
    # Every weight at 0 is refused now, so "nowhere to go" is a backend its check keeps down.
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                       health_check={"expect_status": "599", "default_down": True}))
    with RawConn(t.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 503
    # the same td serves again once a backend is up
    status, cfg = t.api("GET", "/api/v1/config")
    del cfg["health_check"]
    status, r = t.api("PUT", "/api/v1/config", cfg)
    assert status == 200, r
    assert_serves(t)


# ---------------------------------------------------------------------------------------------
# Framing and request smuggling: requests made by hand

def test_connection_cannot_strip_content_length(backends, td):
    """"Connection: Content-Length" must not remove the length while the body is forwarded: the
    backend would read the body as a request of its own and answer another client with it."""
    t = one_backend(backends, td)
    smuggled = b"GET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n"
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\n"
               b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        status, _, body = c.read_response()
        assert status == 200 and json.loads(body)["received"] == len(smuggled), body
    # Victims on fresh connections get their own answers, never the smuggled 418.
    for _ in range(10):
        assert get(t.port, "/status/204")[0] == 204


def test_transfer_codings_other_than_chunked_are_refused_with_501(backends, td):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
               b"0\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 501
    assert get(t.port)[0] == 200


def test_connect_is_refused(backends, td):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        status, h, _ = c.read_response()
        assert status == 405 and "GET" in h.get("Allow"), (status, h)


def test_h2c_upgrade_is_not_passed_on(backends, td):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        status, _, body = c.read_response()
        assert status == 200
        seen = body.decode().lower()
        assert "upgrade" not in seen and "http2-settings" not in seen, seen


def test_pipelined_requests_before_a_half_close_are_all_answered(backends, td):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"".join(b"GET /status/%d HTTP/1.1\r\nHost: a\r\n\r\n" % s
                        for s in (201, 202, 203)))
        c.s.shutdown(socket.SHUT_WR)
        statuses = [c.read_response()[0] for _ in range(3)]
        assert statuses == [201, 202, 203]
        assert c.closed_by_peer()


def test_a_client_stalling_its_body_gets_408_and_the_backend_no_5xx(backends, td):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"].update({"client_header_ms": 800, "upstream_response_ms": 500})
    t = td(cfg)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        status, _, _ = c.read_response()
        assert status == 408
    assert backend_state(t.state(), "blue")["responses"]["5xx"] == 0


def test_absolute_form_target_sets_host_and_goes_upstream_in_origin_form(backends, td):
    """RFC 9112 §3.2.2: the target's authority replaces a disagreeing Host, so the backend can
    never see two different hosts for one request."""
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET http://example.com/headers?x=1 HTTP/1.1\r\nHost: attacker.test\r\n\r\n")
        status, _, body = c.read_response()
    assert status == 200
    seen = body.decode()
    assert seen.startswith("GET /headers?x=1 HTTP/1.1\r\n"), seen
    hosts = [line for line in seen.split("\r\n") if line.lower().startswith("host:")]
    assert hosts == ["Host: example.com"], seen
    assert "attacker.test" not in seen, seen


# ---- HTTP/1.2 and higher minor versions, taken as HTTP/1.1 (RFC 9110 §2.5, RFC 9112 §2.3) ----


def test_http_1_2_request_is_answered_as_http_1_1(backends, td):
    t = td(two_colours_apart(backends))
    with RawConn(t.port) as c:
        c.send(b"GET / HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n")
        version, status, _ = c.read_head()
    assert (version, status) == ("HTTP/1.1", 200)
    with RawConn(t.port) as c:
        c.send(b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n")
        version, status, _ = c.read_head()
    assert status == 505


def test_http_1_2_response_from_a_backend_is_taken_as_http_1_1(td):
    """A backend answering HTTP/1.2 is read as HTTP/1.1 (keep-alive, Content-Length)."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                buf = b""
                try:
                    while not stop.is_set():
                        while b"\r\n\r\n" not in buf:
                            d = conn.recv(65536)
                            if not d:
                                raise EOFError
                            buf += d
                        buf = buf[buf.index(b"\r\n\r\n") + 4:]
                        conn.sendall(b"HTTP/1.2 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                except (OSError, EOFError):
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        t = td(backend_cfg({"blue": (100, [port])}))
        with RawConn(t.port) as c:
            for _ in range(2):
                c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                status, _, body = c.read_response()
                assert (status, body) == (200, b"hello")
    finally:
        stop.set()
        th.join(timeout=10)
        srv.close()


def logged_and_summarised(t, n, line, status):
    """Polls td's log (up to 10 s) until `n` answers are accounted for: (lines matching `line`,
    the sum of the "N more like this in the last second: STATUS ..." summaries, the log).
    `status` is a regex."""
    def counted():
        out = t.proc.output()
        summarised = sum(int(x) for x in re.findall(
            r"(\d+) more like this in the last second: %s " % status, out))
        return len(re.findall(line, out)), summarised, out

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(counted()[:2]) < n:
        time.sleep(0.05)
    return counted()


def test_408_lines_of_many_slow_clients_are_rate_limited(backends, td):
    """60 clients that stall in their request heads all get 408, but the log does not get a line
    each: one line a second for one reason (status and why), then one summary line counting the
    rest."""
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])}, workers=1)
    cfg["timeouts"]["client_header_ms"] = 300
    t = td(cfg)
    n = 60
    conns = [RawConn(t.port, timeout=10) for _ in range(n)]
    try:
        for c in conns:
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Half")
        assert [c.read_response()[0] for c in conns] == [408] * n
    finally:
        for c in conns:
            c.close()

    lines, summarised, out = logged_and_summarised(
        t, n, r"warn  408 GET / from 127\.0\.0\.1:\d+: client too slow", "408")
    assert lines + summarised == n, (lines, summarised, out[-3000:])
    assert lines <= 20 and summarised > 0, (lines, summarised)
    assert "(0 more" not in out and " 0 more" not in out, out[-3000:]
    assert_serves(t)


def test_502_lines_of_a_site_with_no_server_left_are_rate_limited(backends, td):
    """Every request of a site whose only server is gone gets td's 502: the log does not get a
    line each (a busy site would write tens of thousands a second), but one line a second for one
    reason (status and why), then one summary line counting the rest."""
    t = td(backend_cfg({"blue": (100, [free_port()])}, workers=1))
    n = 200
    with RawConn(t.port, timeout=10) as c:
        for _ in range(n):
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert c.read_response()[0] in (502, 503)

    lines, summarised, out = logged_and_summarised(
        t, n, r"warn  50[23] GET / from 127\.0\.0\.1:\d+: ", "50[23]")
    assert lines + summarised == n, (lines, summarised, out[-3000:])
    assert lines <= 40, (lines, out[-3000:])
