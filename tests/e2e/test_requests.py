"""End-to-end tests of the request and response data path: retries of non-idempotent requests,
request buffering before a backend is chosen, the client send timeout, td's own resource errors
(not charged to backends), TLS close_notify, and the admin API's body limit.

Backends are td's demo backend or small Python servers started by the test on 127.0.0.1 (to count
connections and requests, or to close without answering). Every socket has a timeout, every loop
is bounded, and every process and thread is stopped by the test."""
import http.client
import json
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (ASAN, TD, Proc, RawConn, Td, backend_cfg, demo_body, free_port, wait_port)

SLACK = 3.0 if ASAN else 1.0


def wait_for(pred, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout * SLACK
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def server_of(state, name):
    for b in state["backends"]:
        if b["name"] == name:
            return b["servers"][0]
    raise KeyError(name)


class TinyServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 that counts the connections it accepts and the
    requests it reads. `mode` "close": reads a request (head and Content-Length body) and closes
    without answering; "echo": answers 200 with the request body, keep-alive."""

    def __init__(self, mode):
        self.mode = mode
        self.lock = threading.Lock()
        self.connections = 0
        self.open = 0
        self.requests = []  # (method, body)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        conn.settimeout(1.0)
        buf = b""
        try:
            while not self.stopping.is_set():
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except socket.timeout:
                        if self.stopping.is_set():
                            return
                        continue
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ")[0]
                length, chunked = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                    if name.strip().lower() == "transfer-encoding":
                        chunked = True

                def need(pred):
                    nonlocal buf
                    while not pred():
                        data = conn.recv(65536)
                        if not data:
                            raise EOFError
                        buf += data

                if chunked:  # no trailers, no extensions: what td sends
                    body = b""
                    while True:
                        need(lambda: b"\r\n" in buf)
                        size_line, buf = buf.split(b"\r\n", 1)
                        size = int(size_line, 16)
                        need(lambda: len(buf) >= size + 2)
                        body, buf = body + buf[:size], buf[size + 2:]
                        if size == 0:
                            break
                else:
                    need(lambda: len(buf) >= length)
                    body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.requests.append((method, body))
                if self.mode == "close":
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (OSError, EOFError):
            pass
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture
def tiny():
    started = []

    def start(mode):
        s = TinyServer(mode)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def td_cfg(backends, **extra):
    cfg = backend_cfg(backends, **extra)
    cfg["workers"] = 1
    return cfg


# ---------------------------------------------------------------------------------------------
# Retries: a non-idempotent request is never sent twice


@pytest.mark.parametrize("method,body", [("POST", b""), ("PATCH", b""), ("POST", b"x=1")])
def test_non_idempotent_request_is_not_retried_once_sent(tiny, td, method, body):
    """Two servers that read a request and close without answering: a POST or PATCH reaches one
    of them once (empty body or not), and the client gets a 502."""
    a, b = tiny("close"), tiny("close")
    t = td(td_cfg({"blue": (50, [a.port]), "green": (50, [b.port])}))
    for _ in range(4):  # both servers get to be the first choice
        with RawConn(t.port) as c:
            c.send(b"%s /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s"
                   % (method.encode(), len(body), body))
            status, _, _ = c.read_response()
            assert status == 502
    seen = [m for m, _ in a.requests + b.requests]
    assert seen == [method] * 4, (a.requests, b.requests)


def test_idempotent_request_is_still_retried(tiny, td):
    """A GET that a server closed on goes to the other server (and comes back 502 only when
    both close)."""
    a, b = tiny("close"), tiny("echo")
    t = td(td_cfg({"blue": (50, [a.port]), "green": (50, [b.port])}))
    for _ in range(4):
        with RawConn(t.port) as c:
            c.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            status, _, _ = c.read_response()
            assert status == 200


# ---------------------------------------------------------------------------------------------
# Admin API: bodies at and over the 1 MiB limit

ADMIN_MAX_BODY = 1024 * 1024


def admin_put_raw(t, path, body, pieces=1):
    """Sends the whole request (the body in `pieces` sends, a moment apart, as a client on a
    real network would), then reads the answer: (status, parsed JSON)."""
    with RawConn(t.admin_port, timeout=20) as c:
        c.send(b"PUT %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % (path.encode(), t.admin_port, len(body)))
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            c.send(body[i:i + step])
            if pieces > 1:
                time.sleep(0.02)
        status, _, resp = c.read_response()
        return status, json.loads(resp)


def test_admin_body_at_limit_is_answered(backends, td):
    """A PUT /api/v1/config of exactly 1 MiB (a valid document padded with whitespace) gets its
    normal answer, not a reset."""
    b = backends(("blue", 1))
    t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200
    doc = json.dumps(cfg).encode()
    body = doc + b" " * (ADMIN_MAX_BODY - len(doc))
    assert len(body) == ADMIN_MAX_BODY
    status, resp = admin_put_raw(t, "/api/v1/config", body)
    assert status == 200, resp


def test_admin_body_over_limit_gets_413(backends, td):
    """One byte over 1 MiB: the client, which sends its whole body before reading, reads a 413
    JSON error (no reset), and nothing changed."""
    b = backends(("blue", 1))
    t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    version = t.state()["version"]
    status, cfg = t.api("GET", "/api/v1/config")
    doc = json.dumps(cfg).encode()
    body = doc + b" " * (ADMIN_MAX_BODY + 1 - len(doc))
    for _ in range(2):
        status, resp = admin_put_raw(t, "/api/v1/config", body, pieces=16)
        assert status == 413, resp
        assert "error" in resp
    assert t.state()["version"] == version
    assert t.api("GET", "/api/v1/state")[0] == 200


# ---------------------------------------------------------------------------------------------
# TLS: td ends its connections with close_notify, on both sides


@pytest.fixture(scope="module")
def cert():
    d = tempfile.mkdtemp(prefix="td-e2e-tls-")
    c, k = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", k, "-out", c, "-days", "2",
                    "-subj", "/CN=a.test", "-addext", "subjectAltName=DNS:a.test"],
                   check=True, capture_output=True, timeout=30)
    return c, k


class ListenersTd(Td):
    """A td whose config brings its own "listeners"; waits for the first one and the admin
    port. Same interface as conftest.Td."""

    def __init__(self, cfg):  # pylint: disable=super-init-not-called
        cfg = json.loads(json.dumps(cfg))
        self.port = int(cfg["listeners"][0]["address"].rsplit(":", 1)[1])
        self.admin_port = free_port()
        cfg["admin"] = {"address": f"127.0.0.1:{self.admin_port}"}
        self.token = None
        self.dir = tempfile.mkdtemp(prefix="td-e2e-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        try:
            wait_port(self.port)
            wait_port(self.admin_port)
        except TimeoutError:
            self.proc.stop()
            raise


@pytest.fixture
def own_td():
    started = []

    def start(cfg):
        t = ListenersTd(cfg)
        started.append(t)
        return t

    yield start
    for t in started:
        rc = t.stop()
        out = t.proc.output()
        assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def test_tls_listener_sends_close_notify_before_closing(backends, own_td, cert):
    """After a "Connection: close" request, td's close is a clean TLS close: the client reads
    the close_notify (b"" from recv), not a bare TCP EOF (SSLEOFError)."""
    b = backends(("blue", 1))
    port = free_port()
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg["listeners"] = [{"address": f"127.0.0.1:{port}",
                         "tls": {"certificates": [{"cert": cert[0], "key": cert[1]}]}}]
    t = own_td(cfg)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # A bare TCP EOF must show as SSLEOFError (the default may have been relaxed in this process).
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx.minimum_version = ctx.maximum_version = version
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="a.test", suppress_ragged_eofs=False) as s:
            s.sendall(b"GET /bytes/100 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            data = b""
            for _ in range(1000):
                chunk = s.recv(65536)  # SSLEOFError here when td closed without close_notify
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ")
            assert data.endswith(demo_body(100))
    assert t.proc.p.poll() is None


class TlsBackend:
    """A TLS server on 127.0.0.1 answering every request with a small keep-alive 200, and
    recording how each connection ended: "close_notify" or "eof" (no close_notify)."""

    def __init__(self, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert[0], cert[1])
        self.ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.ends = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        conn.settimeout(30)
        try:
            s = self.ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        buf = b""
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    self.ends.append("close_notify")
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except ssl.SSLEOFError:
            self.ends.append("eof")
        except (OSError, ssl.SSLError) as e:
            self.ends.append(f"error: {e}")
        finally:
            s.close()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)


def test_tls_upstream_connection_closed_with_close_notify(backends, td, cert):
    """A pooled TLS connection to a backend that td closes (here: the backend drained to weight
    0) ends with td's close_notify."""
    tb = TlsBackend(cert)
    try:
        g = backends(("green", 1))
        cfg = td_cfg({"blue": (100, [tb.port]), "green": (0, g.ports["green"])})
        cfg["backends"][0]["tls"] = {"verify": False}
        t = td(cfg)
        with RawConn(t.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            status, _, body = c.read_response()
            assert (status, body) == (200, b"ok")
        t.set_ratio(blue=0, green=100)  # idle pooled connections to blue are closed
        assert wait_for(lambda: tb.ends, timeout=10), "td did not close the pooled connection"
        assert tb.ends == ["close_notify"]
    finally:
        tb.stop()


# ---------------------------------------------------------------------------------------------
# A slow client is the client's delay: the client send timeout, not the upstream's response one

MB = 1024 * 1024


def test_slow_reader_download_completes_past_upstream_response_timeout(backends, td):
    """A client that stops reading a 32 MB download for longer than upstream_response_ms (1 s)
    still gets all of it: waiting to write to the client is not the backend's delay."""
    b = backends(("blue", 1))
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["upstream_response_ms"] = 1000
    t = td(cfg)
    size = 32 * MB
    with RawConn(t.port, timeout=30, rcvbuf=16 * 1024) as c:
        c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\n\r\n" % size)
        _, status, _ = c.read_head()
        assert status == 200
        time.sleep(3.0)  # td's writes wait on the client for 3 upstream_response_ms
        got = len(c.buf)
        c.buf = b""
        tail = b""
        while got < size:
            data = c.s.recv(1 << 20)
            assert data, f"connection closed after {got} of {size} body bytes"
            got += len(data)
            tail = (tail + data)[-26:]
        assert got == size
        assert tail == demo_body(size)[-26:]
    assert "cut short" not in t.proc.output()
    assert server_of(t.state(), "blue")["failures"] == 0


def test_client_send_timeout_closes_a_client_that_reads_nothing(backends, td):
    """timeouts.client_send_ms: a client that takes no response bytes for that long is closed,
    logged as its own fault, and nothing is charged to the backend."""
    b = backends(("blue", 1))
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["client_send_ms"] = 1000
    t = td(cfg)
    with RawConn(t.port, timeout=30, rcvbuf=16 * 1024) as c:
        c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: h\r\n\r\n" % (64 * MB))
        assert wait_for(lambda: "client_send_ms" in t.proc.output(), timeout=20), \
            t.proc.output()[-2000:]
        got, closed = len(c.buf), False
        for _ in range(10000):  # what td had written before it closed, then the end
            try:
                data = c.s.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                closed = True
                break
            got += len(data)
        assert closed and got < 64 * MB
    s = t.state()
    assert server_of(s, "blue")["failures"] == 0
    assert server_of(s, "blue")["health"] == "up"
    with RawConn(t.port) as c:
        c.send(b"GET /bytes/10 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response()[2] == demo_body(10)


# ---------------------------------------------------------------------------------------------
# td's own file descriptor exhaustion is not a backend failure


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def exhaust_fds(backends, td, delay_ms, cfg_extra=None):
    """With td's RLIMIT_NOFILE lowered so that its open client connections leave (about) one
    descriptor free, concurrent requests on them run it out of descriptors for their upstream
    connections: those get td's own 503, no server records a failure or is ejected, and once
    the connections are gone every request succeeds again."""
    b = backends(("blue", 1), ("green", 1))
    t = td(td_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                  **(cfg_extra or {})))
    limit = open_fds(t.proc.pid) + 12
    subprocess.run(["prlimit", f"--pid={t.proc.pid}", f"--nofile={limit}:{limit}"], check=True,
                   timeout=10)
    # Keep-alive client connections, each holding one of td's descriptors (/close: the upstream
    # connection is not pooled, so it holds none).
    conns = []
    try:
        for _ in range(11):
            c = RawConn(t.port, timeout=30)
            conns.append(c)
            try:
                c.send(b"GET /close HTTP/1.1\r\nHost: h\r\n\r\n")
                if c.read_response()[0] != 200:
                    break
            except (OSError, EOFError):
                conns.pop().close()
                break
        assert len(conns) >= 4, "td ran out of descriptors before the test could start"
        results = []
        lock = threading.Lock()

        def one(c):
            try:
                c.send(b"GET /delay/%d HTTP/1.1\r\nHost: h\r\n\r\n" % delay_ms)
                status = c.read_response()[0]
            except (OSError, EOFError):
                status = "closed"
            with lock:
                results.append(status)

        threads = [threading.Thread(target=one, args=(c,)) for c in conns]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    finally:
        for c in conns:
            c.close()
    assert len(results) == len(conns)
    assert set(results) <= {200, 503}, results
    assert 503 in results, results  # the limit was reached
    assert "not the backend's" in t.proc.output()
    assert_recovered(t)


def assert_recovered(t):
    """Descriptors are free again: the admin API answers, nothing was charged to a server, every
    request succeeds."""
    state = wait_for(lambda: _state_or_none(t), timeout=10)
    for name in ("blue", "green"):
        srv = server_of(state, name)
        assert srv["failures"] == 0, srv
        assert srv["health"] == "up", srv
    for _ in range(10):
        with RawConn(t.port) as c:
            c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: h\r\n\r\n")
            status, _, body = c.read_response()
            assert (status, body) == (200, b"abc")


def test_fd_exhaustion_does_not_eject_healthy_backends(backends, td):
    """Requests that td cannot connect for want of descriptors get its 503; no server is charged
    or ejected (see exhaust_fds)."""
    exhaust_fds(backends, td, 500)


def test_fd_exhaustion_does_not_fail_health_checks(backends, td):
    """Active health checks that cannot open a socket while td is out of descriptors give no
    verdict: the servers stay up. Idle client connections, opened until td has accepted enough of
    them to hold every free descriptor, keep it out of descriptors between two probes."""
    hc = {"type": "http", "path": "/", "interval_ms": 100, "timeout_ms": 1000, "fall": 2,
          "rise": 2}
    b = backends(("blue", 1), ("green", 1))
    t = td(td_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                  health_check=hc))
    limit = open_fds(t.proc.pid) + 6
    subprocess.run(["prlimit", f"--pid={t.proc.pid}", f"--nofile={limit}:{limit}"], check=True,
                   timeout=10)
    conns = []
    try:
        deadline = time.monotonic() + 30
        while "health: cannot check server" not in t.proc.output():
            assert time.monotonic() < deadline, t.proc.output()[-3000:]
            if len(conns) < 60:
                conns.append(socket.create_connection(("127.0.0.1", t.port), timeout=10))
            time.sleep(0.05)
    finally:
        for c in conns:
            c.close()
    assert "is down" not in t.proc.output(), t.proc.output()[-3000:]
    assert_recovered(t)


def _state_or_none(t):
    try:
        return t.state()
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Request buffering: a slow upload holds no backend connection


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_trickled_bodies_hold_no_backend_connection_until_complete(tiny, td, framing):
    """20 clients each send a small body a byte every 0.3 s: while they trickle, the backend has
    not seen a single connection; then every request reaches it whole and is answered."""
    srv = tiny("echo")
    t = td(td_cfg({"blue": (100, [srv.port])}))
    n, body = 20, b"abcdefgh"
    conns = []
    try:
        for i in range(n):
            c = RawConn(t.port, timeout=30)
            conns.append(c)
            if framing == "length":
                c.send(b"POST /up/%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                       % (i, len(body)))
            else:
                c.send(b"POST /up/%d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       % i)
        pieces = ([body[k:k + 1] for k in range(len(body))] if framing == "length" else
                  [b"%x\r\n%s\r\n" % (1, body[k:k + 1]) for k in range(len(body))] + [b"0\r\n\r\n"])
        for k, piece in enumerate(pieces):
            for c in conns:
                c.send(piece)
            time.sleep(0.3)
            if k < len(pieces) - 1:
                assert srv.connections == 0, f"backend connected after piece {k}"
        for c in conns:
            status, _, resp = c.read_response()
            assert (status, resp) == (200, body)
    finally:
        for c in conns:
            c.close()
    assert [b for _, b in srv.requests] == [body] * n


def test_buffering_answers_100_continue_itself(backends, td):
    """A client that waits for 100 Continue gets it from td, which buffers the body; the backend
    gets the whole request without the Expect field."""
    b = backends(("blue", 1))
    t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    with RawConn(t.port) as c:
        c.send(b"POST /headers HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
               b"Expect: 100-continue\r\n\r\n")
        interim = c.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        c.send(b"hello")
        status, _, resp = c.read_response(skip_1xx=False)
        assert status == 200, resp  # no second interim response from the backend
        assert b"expect" not in resp.lower(), resp
        assert b"content-length: 5" in resp.lower(), resp


def test_buffered_body_that_stops_gets_408_and_no_backend_connection(tiny, td):
    """A body that stops coming while buffered: 408 after the client timeout, and the backend
    never saw a connection."""
    srv = tiny("echo")
    cfg = td_cfg({"blue": (100, [srv.port])})
    cfg["timeouts"]["client_header_ms"] = 500
    t = td(cfg)
    with RawConn(t.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        status, _, _ = c.read_response()
        assert status == 408
    assert srv.connections == 0
    s = t.state()
    assert s["backends"][0]["responses"]["5xx"] == 0


def test_request_buffering_off_streams_at_once(tiny, td):
    """request_buffering.max_bytes 0: the backend is connected as soon as the head is in."""
    srv = tiny("echo")
    t = td(td_cfg({"blue": (100, [srv.port])}, request_buffering={"max_bytes": 0}))
    with RawConn(t.port) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\na")
        assert wait_for(lambda: srv.connections == 1, timeout=10)
        c.send(b"bc")
        status, _, resp = c.read_response()
        assert (status, resp) == (200, b"abc")


@pytest.mark.parametrize("size", [65535, 65536, 65537, 300000])
def test_bodies_around_the_buffering_limit_arrive_whole(backends, td, size):
    """Bodies just under, at and over request_buffering.max_bytes (65536), sent in pieces,
    reach the backend whole; the connection goes on."""
    b = backends(("blue", 1))
    t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    body = bytes((i * 13 + 5) & 0xFF for i in range(size))
    with RawConn(t.port, timeout=20) as c:
        for _ in range(2):
            c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
            for i in range(0, size, 20000):
                c.send(body[i:i + 20000])
            status, _, resp = c.read_response()
            assert status == 200
            assert json.loads(resp) == {"received": size, "sum": sum(body) % 2**32}


def test_buffered_body_followed_by_a_pipelined_request(backends, td):
    """The end of a buffered body and a pipelined request in one send: both are answered, in
    order."""
    b = backends(("blue", 1))
    t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(0.2)
        c.send(b"def" + b"GET /bytes/5 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, resp = c.read_response()
        assert status == 200
        assert json.loads(resp) == {"received": 6, "sum": sum(b"abcdef")}
        status, _, resp = c.read_response()
        assert (status, resp) == (200, b"abcde")


def test_buffered_bodies_over_tls(backends, own_td, cert):
    """On a TLS listener, bodies under and over the buffering limit, sent in pieces, arrive
    whole."""
    b = backends(("blue", 1))
    port = free_port()
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg["listeners"] = [{"address": f"127.0.0.1:{port}",
                         "tls": {"certificates": [{"cert": cert[0], "key": cert[1]}]}}]
    own_td(cfg)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        for size in (1000, 100000):
            body = bytes((i * 7) & 0xFF for i in range(size))
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
            s.sendall(body[:size // 2])
            time.sleep(0.1)
            s.sendall(body[size // 2:])
            data = b""
            while b"}" not in data:
                chunk = s.recv(65536)
                assert chunk
                data += chunk
            head, _, resp = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert json.loads(resp) == {"received": size, "sum": sum(body) % 2**32}


def test_open_files_soft_limit_is_raised_to_the_hard_limit_at_start(backends, td):
    """Started with a soft limit of 256 open files (a hard limit above it), td raises the soft
    limit to the hard one, so it is not capped at a few hundred connections."""
    import resource
    b = backends(("blue", 1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open-files limit here is too low to test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        t = td(td_cfg({"blue": (100, b.ports["blue"])}))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with open(f"/proc/{t.proc.pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert line.split()[3] == want, line
    assert "open files limit raised from 256" in t.proc.output()


def one_get(port, path, timeout):
    """One GET on a fresh connection; its status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def flood(port, n, path=b"/delay/300"):
    """Opens n connections to td at once, each sending one request; returns the sockets (the
    caller closes them)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def test_full_descriptor_table_pauses_accepting_and_td_recovers(backends, td):
    """td's descriptor table filled up by client connections: accept fails with EMFILE. The
    listener pauses instead of retrying in a loop that would keep the worker from doing anything
    else; once the clients are gone td serves again, its admin API answers, and SIGTERM stops
    it cleanly (the fixture checks the exit status)."""
    b = backends(("blue", 1))
    # Two workers: they share the descriptor table, so one takes the descriptors the other frees.
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg["workers"] = 2
    t = td(cfg)
    limit = open_fds(t.proc.pid) + 20
    subprocess.run(["prlimit", f"--pid={t.proc.pid}", f"--nofile={limit}:{limit}"], check=True,
                   timeout=10)
    socks = []
    try:
        for _ in range(3):
            socks += flood(t.port, 100)
        assert wait_for(lambda: "too many open files" in t.proc.output(), 20), "no EMFILE on accept"
    finally:
        for s in socks:
            s.close()

    def serves():
        try:
            return one_get(t.port, "/", 3) == 200
        except OSError:
            return False

    assert wait_for(serves, 20), "td does not serve again after the clients left"
    # The admin API too, once td has closed the last of them (until then its accept may still
    # find the table full: libuv then accepts and closes the connection).
    state = wait_for(lambda: _state_or_none(t), timeout=20)
    assert state["backends"][0]["name"] == "blue"
    out = t.proc.output()
    assert "accepting paused" in out, out[-2000:]


def test_client_connections_beyond_the_open_files_limit_wait_instead_of_failing(backends,
                                                                                 tmp_path):
    """Started with an open-files limit of 256 that cannot be raised, td keeps as many client
    connections as leave a descriptor for each one's upstream connection; more clients wait in
    the backlog and are served as others close, instead of being accepted and answered 503."""
    b = backends(("blue", 1))
    port, admin_port = free_port(), free_port()
    cfg = td_cfg({"blue": (100, b.ports["blue"])})
    cfg.update(listeners=[{"address": f"127.0.0.1:{port}"}],
               admin={"address": f"127.0.0.1:{admin_port}"})
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg))
    p = Proc(["prlimit", "--nofile=256:256", TD, "-c", str(path)], "td")
    try:
        wait_port(port)
        wait_port(admin_port)
        statuses = []
        lock = threading.Lock()

        def client():
            # Each client: connect, one request, read the answer, close.
            try:
                st = one_get(port, "/delay/200", 60)
            except OSError as e:
                st = repr(e)
            with lock:
                statuses.append(st)

        threads = [threading.Thread(target=client) for _ in range(300)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert len(statuses) == 300
        assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(map(str, statuses))}
        assert "the most the open-files limit allows" in p.output()
    finally:
        assert p.stop() == 0, p.output()[-2000:]
