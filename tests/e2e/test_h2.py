"""End-to-end tests of HTTP/2 from clients: TLS listeners offering ALPN h2, plain listeners with
"h2c" (prior knowledge), each stream routed like an HTTP/1.1 request (ratio, sticky cookie, preview
header, counters, access log), request and response bodies streamed with bounded memory, a slow
stream beside a quick one on one connection, GOAWAY on a stop, and the floods nghttp2 guards
against. Clients: curl (--http2, --http2-prior-knowledge), nghttp (nghttp2-client) and raw
sockets speaking HTTP/2 frames."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading

import pytest

from conftest import (ASAN, RSS_SCALE, TD, Proc, RssSampler, Td, backend_cfg, demo_body,
                      free_port, stop_checked, wait_for, wait_port)
from test_upgrade import alive, read_pid

TIMEOUT = 60 if ASAN else 20

pytestmark = pytest.mark.skipif(not shutil.which("nghttp") or not shutil.which("curl"),
                                reason="needs nghttp (nghttp2-client) and curl")


class H2Td(Td):
    """A td with a TLS listener (ALPN h2 unless http2 is false) and a plain listener with h2c, in
    front of the given backends; `port` is the TLS one, `h2c_port` the plain one."""

    def __init__(self, cfg, cert, key, http2=True, h2c=True, extra=None):  # pylint: disable=super-init-not-called
        self.port, self.h2c_port, self.admin_port = free_port(), free_port(), free_port()
        tls = {"address": f"127.0.0.1:{self.port}",
               "tls": {"certificates": [{"cert": cert, "key": key}]}}
        if not http2:
            tls["http2"] = False
        plain = {"address": f"127.0.0.1:{self.h2c_port}", "h2c": h2c}
        plain.update(extra or {})
        cfg = json.loads(json.dumps(cfg))
        cfg["listeners"] = [tls, plain]
        cfg.setdefault("workers", 2)
        cfg["admin"] = {"address": f"127.0.0.1:{self.admin_port}"}
        self.token = None
        self.dir = tempfile.mkdtemp(prefix="td-e2e-h2-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        for p in (self.port, self.h2c_port, self.admin_port):
            wait_port(p)


@pytest.fixture(scope="module")
def cert():
    d = tempfile.mkdtemp(prefix="td-e2e-h2-cert-")
    c, k = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", k, "-out", c, "-days", "2",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    yield c, k
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def h2td(cert):
    started = []

    def start(cfg, **kw):
        t = H2Td(cfg, *cert, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        stop_checked(t)


def curl(*args, timeout=TIMEOUT):
    r = subprocess.run(["curl", "-sS", "-k", "--max-time", str(timeout), *args],
                       capture_output=True, timeout=timeout + 10)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def curl_h2(url, *args):
    """(http_version, status, body) of one request over h2 (TLS ALPN or prior knowledge)."""
    flag = "--http2" if url.startswith("https") else "--http2-prior-knowledge"
    out = curl(flag, "-o", "-", "-w", "\n%{http_version} %{http_code}", url, *args)
    body, _, tail = out.rpartition(b"\n")
    version, code = tail.decode().split()
    return version, int(code), body


def nghttp(*args, timeout=TIMEOUT):
    r = subprocess.run(["nghttp", "--no-dep", *args], capture_output=True,
                       timeout=timeout + 10)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def two_colours(backends, blue_w, green_w, **extra):
    b = backends(("blue", 1), ("green", 1))
    return b, backend_cfg({"blue": (blue_w, b.ports["blue"]),
                           "green": (green_w, b.ports["green"])}, **extra)


def requests_of(t):
    return {x["name"]: x["requests"] for x in t.state()["backends"]}


# ---- the basics -------------------------------------------------------------------------------

def test_h2_over_tls_alpn_answers_200(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    version, status, body = curl_h2(f"https://127.0.0.1:{t.port}/bytes/1000")
    assert (version, status) == ("2", 200)
    assert body == demo_body(1000)


def test_h2c_prior_knowledge_answers_200_and_forwards_authority_as_host(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    version, status, body = curl_h2(f"http://127.0.0.1:{t.h2c_port}/headers", "-H", "x-a: 1")
    assert (version, status) == ("2", 200)
    head = body.decode()
    assert head.startswith("GET /headers HTTP/1.1\r\n"), head
    assert f"Host: 127.0.0.1:{t.h2c_port}\r\n" in head
    assert "x-a: 1\r\n" in head
    assert "X-Forwarded-Proto: http\r\n" in head
    # The plain listener still speaks HTTP/1.1 to HTTP/1.1 clients.
    out = curl("--http1.1", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
               f"http://127.0.0.1:{t.h2c_port}/")
    assert out.decode() == "1.1 200"


def test_http2_false_offers_only_http11_on_tls(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}), http2=False, h2c=False)
    version, status, _ = curl_h2(f"https://127.0.0.1:{t.port}/")
    assert (version, status) == ("1.1", 200)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT) as s:
        with ctx.wrap_socket(s) as ts:
            assert ts.selected_alpn_protocol() == "http/1.1"
    # Without h2c the plain listener takes the preface as a bad HTTP/1.1 request.
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        assert re.match(rb"HTTP/1\.1 [45]\d\d ", s.recv(100))  # refused, not served as h2
    version, status, _ = curl_h2(f"https://127.0.0.1:{t.port}/")
    assert status == 200


# ---- routing ----------------------------------------------------------------------------------

def test_h2_ratio_exact_over_100_streams_on_one_connection(backends, h2td):
    _, cfg = two_colours(backends, 30, 70)
    t = h2td(cfg)
    rc, out, err = nghttp("-n", "-s", "-m", "100", f"http://127.0.0.1:{t.h2c_port}/")
    assert rc == 0, err
    assert out.count(" 200 ") == 100, out
    counts = wait_for(lambda: (lambda r: r if sum(r.values()) == 100 else None)(requests_of(t)),
                      10, what="100 requests counted")
    assert counts == {"blue": 30, "green": 70}, counts


def sticky_from(verbose):
    m = re.search(r"set-cookie: TDSTICKY=([^;\s]+)", verbose)
    return m.group(1) if m else None


def test_h2_sticky_cookie_is_set_and_honoured_also_split_in_two_cookie_fields(backends, h2td):
    _, cfg = two_colours(backends, 50, 50, method="sticky")
    t = h2td(cfg)
    url = f"http://127.0.0.1:{t.h2c_port}/headers"
    cookie = None
    for _ in range(50):
        rc, out, err = nghttp("-v", url)
        assert rc == 0, err
        assert "x-td-demo-backend" in out
        if "x-td-demo-backend: blue" in out:
            cookie = sticky_from(out)
            break
    assert cookie, "no sticky cookie naming blue"
    t.set_ratio(blue=0, green=100)
    # Cookie crumbs (RFC 9113 §8.2.3): the sticky one in a field of its own still pins.
    for _ in range(5):
        rc, out, err = nghttp("-v", "-H", "cookie: a=1", "-H", f"cookie: TDSTICKY={cookie}",
                              "-H", "cookie: b=2", url)
        assert rc == 0, err
        assert "x-td-demo-backend: blue" in out, out
        # Forwarded as one HTTP/1.1 Cookie field, the crumbs joined with "; ".
        assert f"Cookie: a=1; TDSTICKY={cookie}; b=2\r" in out or \
            f"Cookie: a=1; TDSTICKY={cookie}; b=2\n" in out, out
    _, status, body = curl_h2(url)
    assert status == 200


def test_h2_preview_header_reaches_backend_at_weight_0(backends, h2td):
    _, cfg = two_colours(backends, 0, 100)
    cfg["routing"]["preview"] = {"header": "X-TD-Backend", "token": "sesame"}
    t = h2td(cfg)
    for _ in range(3):
        rc, out, err = nghttp("-v", "-H", "x-td-backend: blue", "-H", "x-td-backend-token: sesame",
                              f"https://127.0.0.1:{t.port}/headers")
        assert rc == 0, err
        assert "x-td-demo-backend: blue" in out, out
        assert "x-td-backend" not in out.split("GET /headers HTTP/1.1", 1)[1].lower()
    rc, out, _ = nghttp("-v", f"https://127.0.0.1:{t.port}/")
    assert "x-td-demo-backend: green" in out


def test_h2_requests_are_counted_and_access_logged(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    log = tmp_path / "access.log"
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=str(log)))
    rc, out, err = nghttp("-n", "-m", "7", f"https://127.0.0.1:{t.port}/bytes/10")
    assert rc == 0, err
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/status/404")
    assert status == 404
    wait_for(lambda: requests_of(t)["blue"] == 8, 10, what="8 requests counted")
    st = [x for x in t.state()["backends"] if x["name"] == "blue"][0]
    assert st["responses"]["2xx"] == 7 and st["responses"]["4xx"] == 1, st

    def lines():
        try:
            return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            return None
    got = wait_for(lambda: (lambda v: v if v and len(v) == 8 else None)(lines()), 10,
                   what="8 access log lines")
    e = [x for x in got if x["status"] == 404][0]
    assert e["method"] == "GET" and e["path"] == "/status/404" and e["backend"] == "blue", e
    assert e["client"] == "127.0.0.1"
    assert sum(1 for x in got if x["path"] == "/bytes/10" and x["status"] == 200) == 7


# ---- bodies and flow control ------------------------------------------------------------------

def test_h2_large_upload_and_download_stream_with_bounded_memory(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    size = 20 * 1000 * 1000
    data = os.urandom(size)
    f = tmp_path / "up.bin"
    f.write_bytes(data)
    plain = f"http://127.0.0.1:{t.h2c_port}"
    with RssSampler(t.proc.pid) as rss:
        _, status, body = curl_h2(f"{plain}/echo", "--data-binary", f"@{f}")
        assert status == 200
        assert json.loads(body) == {"received": size, "sum": sum(data) % 2 ** 32}
        # Without a content-length the body goes upstream chunked.
        _, status, body = curl_h2(f"{plain}/echo", "-T", str(f), "-H", "Transfer-Encoding:")
        assert status == 200 and json.loads(body)["received"] == size
        for path in (f"/bytes/{size}", f"/chunked/{size}"):
            _, status, body = curl_h2(f"{plain}{path}")
            assert status == 200 and len(body) == size and body[:1000] == demo_body(1000)
    grown = rss.stop()
    assert grown < 12 * 1024 * RSS_SCALE, f"td's RSS grew by {grown} KB"
    # The same over TLS (its RSS is not sampled: under ASan the TLS buffers' turnover fills the
    # allocator's quarantine, for HTTP/1.1 as much).
    _, status, body = curl_h2(f"https://127.0.0.1:{t.port}/echo", "--data-binary", f"@{f}")
    assert status == 200 and json.loads(body) == {"received": size, "sum": sum(data) % 2 ** 32}
    _, status, body = curl_h2(f"https://127.0.0.1:{t.port}/chunked/{size}")
    assert status == 200 and len(body) == size


def test_h2_expect_100_continue_upload(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    f = tmp_path / "up.bin"
    f.write_bytes(b"x" * 100000)
    _, status, body = curl_h2(f"https://127.0.0.1:{t.port}/echo", "--data-binary", f"@{f}",
                              "-H", "Expect: 100-continue")
    assert status == 200 and json.loads(body)["received"] == 100000


def test_h2_slow_stream_does_not_block_another_on_the_same_connection(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    # Stream 1 waits for a slow answer; stream 3 (a quick one) must be answered before it.
    rc, out, err = nghttp("-v", f"http://127.0.0.1:{t.h2c_port}/delay/3000",
                          f"http://127.0.0.1:{t.h2c_port}/bytes/100000")
    assert rc == 0, err
    ends = re.findall(r"recv (?:DATA|HEADERS) frame <[^>]*stream_id=(\d+)>\s*\n\s*; END_STREAM",
                      out)
    assert ends == ["3", "1"], out[-3000:]


def test_h2_client_that_stops_reading_holds_bounded_memory_and_others_are_served(backends, h2td):
    """A client that opens a stream for a large body and never opens its window: td stops
    reading that upstream (bounded memory) while another connection is served."""
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with RssSampler(t.proc.pid) as rss:
        s = socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT)
        try:
            s.sendall(PREFACE + frame(4, 0, 0))
            s.sendall(frame(1, 5, 1, request_block("/bytes/500000000")))
            for _ in range(5):
                _, status, body = curl_h2(f"http://127.0.0.1:{t.h2c_port}/bytes/1000")
                assert status == 200
        finally:
            s.close()
    assert rss.stop() < 12 * 1024 * RSS_SCALE


# ---- drain, WebSocket, refusals ---------------------------------------------------------------

def test_h2_sigterm_sends_goaway_and_in_flight_stream_finishes(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    p = subprocess.Popen(["nghttp", "-v", f"http://127.0.0.1:{t.h2c_port}/delay/1500"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sum(x["in_flight"] for x in t.state()["backends"]) >= 1, 10,
                 what="the request in flight")
        t.proc.p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=TIMEOUT)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "GOAWAY" in out, out
    assert re.search(r":status: 200", out), out
    assert '{"delay_ms": 1500}' in out, out
    assert t.proc.p.wait(timeout=TIMEOUT) == 0


def test_wss_client_negotiating_http11_on_a_listener_offering_h2(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw) as s:
            assert s.selected_alpn_protocol() == "http/1.1"
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            rest = head.split(b"\r\n\r\n", 1)[1]
            mask = b"\x01\x02\x03\x04"
            msg = b"hello over h1"
            s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask +
                      bytes(c ^ mask[i % 4] for i, c in enumerate(msg)))
            while len(rest) < 2 + len(msg):
                chunk = s.recv(4096)
                assert chunk
                rest += chunk
            assert rest[:2] == bytes([0x81, len(msg)]) and rest[2:2 + len(msg)] == msg


# ---- raw frames ---------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def literal(name, value):
    """A header field as an HPACK literal without indexing, new name (RFC 7541 §6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def request_block(path, extra=b""):
    # :method GET (static 2), :scheme http (6), :path and :authority as literals.
    return b"\x82\x86" + literal(b":path", path.encode()) + literal(b":authority", b"a") + extra


_unread = {}


def read_frames(s, want, limit=10 ** 6):
    """Reads frames until one of type `want` comes (returns it as (type, flags, stream,
    payload)) or the connection ends (returns None). Bytes read past that frame are kept for the
    next call on the same socket."""
    buf = _unread.pop(s, b"")
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n])
            buf = buf[9 + n:]
            if f[0] == want:
                _unread[s] = buf
                return f
            limit -= 1
            if limit <= 0:
                return None
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        if not chunk:
            return None
        buf += chunk


def test_h2_connection_specific_request_field_resets_the_stream(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        refused = [(b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"),
                   (b"upgrade", b"websocket"), (b"te", b"gzip")]
        for i, (name, value) in enumerate(refused):
            sid = 1 + 2 * i
            s.sendall(frame(1, 5, sid, request_block("/", literal(name, value))))
            f = read_frames(s, 3)  # RST_STREAM
            assert f and f[2] == sid and int.from_bytes(f[3], "big") == 1, (name, f)  # PROTOCOL_ERROR
        # The connection goes on: the next stream is answered ("te: trailers" is allowed).
        s.sendall(frame(1, 5, 101, request_block("/bytes/3", literal(b"te", b"trailers"))))
        f = read_frames(s, 1)
        assert f and f[2] == 101
    assert requests_of(t)["blue"] == 1


def test_h2_rapid_reset_flood_gets_goaway_and_others_are_served(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        burst = b"".join(frame(1, 5, sid, request_block("/delay/1000")) +
                         frame(3, 0, sid, struct.pack(">I", 8))  # RST_STREAM CANCEL
                         for sid in range(1, 2 * 3000, 2))
        try:
            s.sendall(burst)
        except (BrokenPipeError, ConnectionResetError):
            pass
        f = read_frames(s, 7)  # GOAWAY
        assert f is not None, "no GOAWAY after 3000 streams reset in a burst"
        # nghttp2 ends such a session with an error (INTERNAL_ERROR), well before the last one.
        assert int.from_bytes(f[3][4:8], "big") != 0, f
        assert int.from_bytes(f[3][:4], "big") < 2 * 3000 - 1, f
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/")
    assert (version, status) == ("2", 200)


def test_h2_settings_flood_gets_goaway(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        # One SETTINGS frame with more entries than td takes.
        entries = b"".join(struct.pack(">HI", 4, 65535) for _ in range(100))
        s.sendall(frame(4, 0, 0, entries))
        f = read_frames(s, 7)
        assert f is not None, "no GOAWAY"
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/")
    assert status == 200


def test_h2_max_concurrent_streams_is_advertised(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}),
             extra={"h2_max_concurrent_streams": 7})
    rc, out, err = nghttp("-v", f"http://127.0.0.1:{t.h2c_port}/")
    assert rc == 0, err
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7]" in out, out
    rc, out, err = nghttp("-v", f"https://127.0.0.1:{t.port}/")
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100]" in out.split("recv SETTINGS", 1)[1], out


def test_h2_head_request_ends_its_stream_without_a_body(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    out = curl("--http2-prior-knowledge", "-I", "-o", "-", "-w", "%{http_code}",
               f"http://127.0.0.1:{t.h2c_port}/bytes/5000")
    assert out.endswith(b"200") and b"content-length: 5000" in out, out


def hpack_len(n):
    """An HPACK string length, 7-bit prefix, no Huffman (RFC 7541 §5.1)."""
    if n < 127:
        return bytes([n])
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def test_h2_header_list_too_large_gets_431_and_the_connection_goes_on(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    big = b"\x00\x05x-big" + hpack_len(20000) + b"a" * 20000
    block = request_block("/", big)
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        # The block in a HEADERS and a CONTINUATION frame (16384 bytes is the frame size limit).
        s.sendall(frame(1, 1, 1, block[:16000]) + frame(9, 4, 1, block[16000:]))
        f = read_frames(s, 1)
        assert f and f[2] == 1 and f[3][:1] != b"\x88", f  # not a 200: td's own 431
        s.sendall(frame(1, 5, 3, request_block("/bytes/3")))
        f = read_frames(s, 1)
        assert f and f[2] == 3 and f[3][:1] == b"\x88", f  # :status 200 (static index 8)
    assert requests_of(t)["blue"] == 1
    rc, out, err = nghttp("-v", "-H", "x-big: " + "a" * 20000, f"http://127.0.0.1:{t.h2c_port}/")
    assert "recv (stream_id=1) :status: 431" in out, out[-3000:]


def test_h2_backend_down_gets_502_over_h2(backends, h2td):
    port = free_port()  # nothing listens there
    t = h2td(backend_cfg({"blue": (100, [port])}))
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/")
    assert (version, status) == ("2", 502)


def test_h2_idle_connection_gets_goaway_after_the_keepalive_timeout(backends, h2td):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["keepalive_idle_ms"] = 300
    t = h2td(cfg)
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        f = read_frames(s, 7)
        assert f is not None and int.from_bytes(f[3][4:8], "big") == 0, f  # NO_ERROR
        assert s.recv(100) == b""  # then closed


def test_h2_streams_in_flight_count_as_one_client_connection(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    p = subprocess.Popen(["nghttp", "-n", "-m", "20", f"http://127.0.0.1:{t.h2c_port}/delay/1500"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sum(x["in_flight"] for x in t.state()["backends"]) == 20, 10,
                 what="20 streams in flight")
        assert t.state()["client_connections"] == 1
        assert p.wait(timeout=TIMEOUT) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    wait_for(lambda: t.state()["client_connections"] == 0, 10, what="no client connection left")


def test_h2_empty_field_values_are_forwarded(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        s.sendall(frame(1, 5, 1, request_block("/headers", literal(b"cookie", b"") +
                                               literal(b"x-empty", b""))))
        f = read_frames(s, 1)
        assert f and f[2] == 1 and f[3][:1] == b"\x88", f  # :status 200
        f = read_frames(s, 0)
        assert f and f[2] == 1 and b"x-empty: \r\n" in f[3], f


def test_h2_streams_are_retried_on_another_server_when_one_refuses(backends, h2td):
    b = backends(("blue", 1))
    dead = free_port()  # nothing listens there: each connect to it is refused
    t = h2td(backend_cfg({"blue": (100, [dead, b.ports["blue"][0]])}))
    rc, out, err = nghttp("-n", "-s", "-m", "10", f"http://127.0.0.1:{t.h2c_port}/")
    assert rc == 0, err
    assert out.count(" 200 ") == 10, out


def test_h2_keys_on_the_wrong_kind_of_listener_are_config_errors(cert, tmp_path):
    cfg = {"listeners": [{"address": "127.0.0.1:1", "h2c": True,
                          "tls": {"certificates": [{"cert": cert[0], "key": cert[1]}]}},
                         {"address": "127.0.0.1:2", "http2": False}],
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "127.0.0.1:3"}]}]}
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg, indent=2))
    r = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert re.search(r"td\.json:\d+:\d+: listeners\[0\]\.h2c: h2c is for plain listeners", out), out
    assert re.search(r"td\.json:\d+:\d+: listeners\[1\]\.http2: http2 is for TLS listeners", out), out


# ---- timeouts and stream ends ---------------------------------------------------------------------

def test_h2_unfinished_header_block_gets_goaway_after_client_header_ms(backends, h2td):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["client_header_ms"] = 300
    cfg["timeouts"]["keepalive_idle_ms"] = 120000
    t = h2td(cfg)
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        # HEADERS without END_HEADERS, and no CONTINUATION after it.
        s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0, 1, request_block("/")[:4]))
        f = read_frames(s, 7)
        assert f is not None, "no GOAWAY: the connection was held"
        s.settimeout(TIMEOUT)
        while s.recv(65536):  # then closed
            pass


def test_h2_stream_answered_408_ends_and_the_idle_connection_gets_goaway(backends, h2td):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["client_header_ms"] = 300
    cfg["timeouts"]["keepalive_idle_ms"] = 300
    t = h2td(cfg)
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        # POST with a body announced and never sent.
        block = b"\x83\x86" + literal(b":path", b"/echo") + literal(b":authority", b"a") + \
            literal(b"content-length", b"10")
        s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 4, 1, block))
        h = read_frames(s, 1)
        assert h is not None and h[2] == 1, h
        r = read_frames(s, 3)  # RST_STREAM: the client's half is closed for it
        assert r is not None and r[2] == 1 and int.from_bytes(r[3], "big") == 0, r
        g = read_frames(s, 7)
        assert g is not None, "no GOAWAY: the answered stream pinned the connection"
        assert int.from_bytes(g[3][4:8], "big") == 0, g


class H2Load:
    """Keeps `streams` GET / in flight over h2c, on one connection at a time, until stop();
    answers PING and gives the connection window back. Counts answers (200), streams above a
    GOAWAY's last stream id or refused (REFUSED_STREAM): retried on a new connection, as RFC 9113
    §6.8 lets a client, and failures: a stream that got no answer while td had not told the
    client that it was not taken, or an answer other than 200."""

    def __init__(self, port, streams=10):
        self.port, self.streams = port, streams
        self.ok, self.retried, self.failed = 0, 0, []
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _conn(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        s.sendall(PREFACE + frame(4, 0, 0))
        sid, open_, last, buf = 1, {}, None, b""
        while True:
            while (last is None or last == 2 ** 31 - 1) and not self.stop_ev.is_set() and \
                    len(open_) < self.streams:
                try:
                    s.sendall(frame(1, 5, sid, request_block("/")))
                except (BrokenPipeError, ConnectionResetError):
                    break  # closed: judged with the next read
                open_[sid] = None
                sid += 2
            if not open_:
                break
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                break
            buf += chunk
            try:
                buf = self._frames(s, buf, open_)
            except (BrokenPipeError, ConnectionResetError):
                break  # td closed: the streams still open are judged below
            last = open_.pop("last", last)
        s.close()
        for k in open_:
            if last is None or k <= last:
                self.failed.append(f"stream {k} not answered (last stream id {last})")
            else:
                self.retried += 1

    def _frames(self, s, buf, open_):
        """Handles the whole frames at the start of buf; returns the rest."""
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            ft, fl, st, pl = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, \
                buf[9:9 + n]
            buf = buf[9 + n:]
            if ft == 6 and not fl & 1:
                s.sendall(frame(6, 1, 0, pl))
            elif ft == 0 and n:
                s.sendall(frame(8, 0, 0, struct.pack(">I", n)))
            elif ft == 7:
                last = open_["last"] = int.from_bytes(pl[:4], "big") & 0x7fffffff
                for k in [k for k in open_ if k != "last" and k > last]:
                    del open_[k]
                    self.retried += 1
            elif ft == 3 and st in open_:
                del open_[st]
                if int.from_bytes(pl, "big") == 7:  # REFUSED_STREAM
                    self.retried += 1
                else:
                    self.failed.append(f"stream {st} reset {pl.hex()}")
            if ft == 1 and st in open_:
                open_[st] = pl[:1]
            if ft in (0, 1) and fl & 1 and st in open_:
                status = open_.pop(st)
                if status == b"\x88":  # :status 200 (HPACK static index 8)
                    self.ok += 1
                else:
                    self.failed.append(f"stream {st} status {status}")
        return buf

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                self._conn()
            except OSError as e:
                if not self.stop_ev.is_set():
                    self.failed.append(repr(e))

    def stop(self):
        self.stop_ev.set()
        self.th.join(timeout=60)


def test_h2_td_upgrade_under_continuous_streams_fails_no_stream(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    pid_file = str(tmp_path / "td.pid")
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, TIMEOUT, what="the pid file")
    load = H2Load(t.h2c_port)
    pid = t.proc.pid
    try:
        for _ in range(3):
            seen = load.ok
            wait_for(lambda: load.ok >= seen + 200, TIMEOUT, what="answers on this process")
            r = subprocess.run([TD, "upgrade", "-c", t.config_path], capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            old = pid
            wait_for(lambda: read_pid(pid_file) not in (0, old), TIMEOUT, what="the takeover")
            pid = read_pid(pid_file)
        seen = load.ok
        wait_for(lambda: load.ok >= seen + 200, TIMEOUT, what="answers on the last process")
    finally:
        load.stop()
        if pid != t.proc.pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not alive(pid), TIMEOUT, what="the last td to stop")
    assert load.ok > 0 and not load.failed, (load.ok, load.retried, load.failed[:10])

def _send_quietly(s, data):
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_h2_continuation_flood_gets_goaway_before_the_close_and_a_log_line(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0) + frame(1, 0, 1, request_block("/")))
        _send_quietly(s, b"".join(frame(9, 0, 1, literal(b"x-a", b"b" * 10))
                                  for _ in range(10000)))
        f = read_frames(s, 7)
        assert f is not None, "no GOAWAY (the connection was reset)"
        assert int.from_bytes(f[3][4:8], "big") != 0, f
    wait_for(lambda: "h2: GOAWAY after" in t.proc.output(), TIMEOUT, what="the log line")


def test_h2_one_megabyte_header_list_gets_goaway_or_431_before_the_close(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    block = request_block("/") + b"".join(literal(b"x-big%d" % i, b"v" * 100)
                                          for i in range(10000))
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    data = frame(1, 1, 1, chunks[0]) + b"".join(
        frame(9, 4 if i == len(chunks) - 1 else 0, 1, c) for i, c in enumerate(chunks[1:], 1))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(PREFACE + frame(4, 0, 0))
        _send_quietly(s, data)
        got = set()
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = None
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                got.add(buf[3])
                buf = buf[9 + int.from_bytes(buf[:3], "big"):]
            if 7 in got:
                break
        assert 7 in got or 1 in got, f"neither GOAWAY nor a response, frames {got}"


def test_h2c_bad_preface_is_logged_as_not_an_http2_preface(backends, h2td):
    b = backends(("blue", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}))
    with socket.create_connection(("127.0.0.1", t.h2c_port), timeout=TIMEOUT) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + frame(4, 0, 0))
        assert s.recv(100).startswith(b"HTTP/1.1 400"), "no 400"
    wait_for(lambda: "not an HTTP/2 preface" in t.proc.output(), TIMEOUT, what="the log line")
    assert "missing Host" not in t.proc.output()
