"""End-to-end tests of HTTP/2 to backends ("protocol": "h2") and of gRPC through td: grpcio
clients on an h2c listener (and a TLS listener with ALPN h2) in front of blue and green gRPC
backends (grpc_backend.py): unary calls split by the ratio, server-streaming calls, error statuses
with their details and trailing metadata (trailers-only responses as one HEADERS), blue-green
switches under load with no failed call, a server limited to one concurrent stream, a TLS backend
(ALPN h2), a backend stopped under load, an HTTP/1.1 client to an h2 backend (chunked, with the
trailers), and response trailers of an HTTP/1.1 backend reaching HTTP/2 clients."""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import (ASAN, TD, Proc, Td, backend_cfg, backend_state, free_port, stop_checked,
                      wait_for, wait_port)

grpc = pytest.importorskip("grpc")
from grpc_backend import GrpcBackend  # noqa: E402  (needs grpc)

TIMEOUT = 60 if ASAN else 20

pytestmark = pytest.mark.skipif(not shutil.which("nghttp"), reason="needs nghttp (nghttp2-client)")


class GrpcTd(Td):
    """A td with a plain listener taking h2c (port) and, given a certificate, a TLS listener
    (tls_port, ALPN h2), in front of the backends of `cfg`."""

    def __init__(self, cfg, cert=None):  # pylint: disable=super-init-not-called
        self.port, self.admin_port = free_port(), free_port()
        self.tls_port = free_port() if cert else None
        cfg = json.loads(json.dumps(cfg))
        cfg["listeners"] = [{"address": f"127.0.0.1:{self.port}", "h2c": True}]
        if cert:
            cfg["listeners"].append({"address": f"127.0.0.1:{self.tls_port}",
                                     "tls": {"certificates": [{"cert": cert[0],
                                                               "key": cert[1]}]}})
        cfg.setdefault("workers", 2)
        cfg["admin"] = {"address": f"127.0.0.1:{self.admin_port}"}
        self.token = None
        self.dir = tempfile.mkdtemp(prefix="td-e2e-grpc-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        for p in (self.port, self.tls_port, self.admin_port):
            if p:
                wait_port(p)


@pytest.fixture(scope="module")
def cert():
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    d = tempfile.mkdtemp(prefix="td-e2e-grpc-cert-")
    c, k = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", k, "-out", c, "-days", "2",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    yield c, k
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def grpc_backends():
    started = []

    def start(name, **kw):
        b = GrpcBackend(name, free_port(), **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def gtd():
    started = []

    def start(cfg, **kw):
        t = GrpcTd(cfg, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        stop_checked(t)


def h2_cfg(backends, **extra):
    """backend_cfg with "protocol": "h2" on every backend: {"blue": (weight, [GrpcBackend])}."""
    cfg = backend_cfg({n: (w, [b.port for b in bs]) for n, (w, bs) in backends.items()}, **extra)
    for b in cfg["backends"]:
        b["protocol"] = "h2"
    return cfg


def channel(t):
    return grpc.insecure_channel(f"127.0.0.1:{t.port}")


def unary(ch):
    return ch.unary_unary("/td.test.Echo/Unary")


def colour(reply):
    return reply.split(b":")[0].decode()


def grpc_frame(payload):
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def test_grpc_unary_calls_split_exactly_by_ratio_over_one_channel(grpc_backends, gtd):
    blue, green = grpc_backends("blue"), grpc_backends("green")
    t = gtd(h2_cfg({"blue": (30, [blue]), "green": (70, [green])}))
    with channel(t) as ch:
        call = unary(ch)
        replies = [call(b"n%d" % i, timeout=TIMEOUT) for i in range(100)]
    counts = {"blue": 0, "green": 0}
    for i, r in enumerate(replies):
        assert r.split(b":", 1)[1] == b"n%d" % i
        counts[colour(r)] += 1
    assert counts == {"blue": 30, "green": 70}
    s = t.state()
    assert backend_state(s, "blue")["protocol"] == "h2"
    assert backend_state(s, "blue")["responses"]["2xx"] == 30


def test_grpc_server_streaming_call_arrives_whole_and_in_order(grpc_backends, gtd):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    with channel(t) as ch:
        stream = ch.unary_stream("/td.test.Echo/Stream")
        msgs = list(stream(b"200", timeout=TIMEOUT))
        assert msgs == [b"blue:%d" % i for i in range(200)]
        reply, c = unary(ch).with_call(b"x", timeout=TIMEOUT)
        assert reply == b"blue:x"
        assert ("x-env", "blue") in [(m.key, m.value) for m in c.trailing_metadata()]
        assert c.code() == grpc.StatusCode.OK


def test_grpc_error_status_details_and_trailing_metadata_reach_the_client(grpc_backends, gtd):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    with channel(t) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/td.test.Echo/Fail")(b"", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "no such thing"
    # Exactly what the server sent: no content-length of td's framing among the metadata.
    assert [(m.key, m.value) for m in e.value.trailing_metadata()] == [("x-env", "blue")]


def test_grpc_trailers_only_response_reaches_h2_client_as_one_headers_with_end_stream(
        grpc_backends, gtd, tmp_path):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    body = tmp_path / "req"
    body.write_bytes(grpc_frame(b""))
    r = subprocess.run(["nghttp", "-v", "-d", str(body), "-H", "content-type: application/grpc",
                        "-H", "te: trailers", f"http://127.0.0.1:{t.port}/td.test.Echo/Fail"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    out = r.stdout
    # The response: one HEADERS frame (END_STREAM | END_HEADERS) with the status in it, no DATA.
    recv = re.findall(r"recv (\w+) frame <length=\d+, flags=(0x[0-9a-f]+), stream_id=13>", out)
    assert recv == [("HEADERS", "0x05")], out
    got = re.findall(r"recv \(stream_id=13\) ([^\n]*)", out)
    assert got == [":status: 200", "content-type: application/grpc", "grpc-status: 5",
                   "grpc-message: no such thing", "x-env: blue"], out


def test_grpc_blue_green_switches_under_load_fail_no_call(grpc_backends, gtd):
    blue, green = grpc_backends("blue"), grpc_backends("green")
    t = gtd(h2_cfg({"blue": (100, [blue]), "green": (0, [green])}))
    stop = threading.Event()
    seen, failed, lock = [], [], threading.Lock()

    def load():
        with channel(t) as ch:
            call = unary(ch)
            while not stop.is_set():
                try:
                    r = call(b"x", timeout=TIMEOUT)
                    with lock:
                        seen.append(colour(r))
                except grpc.RpcError as e:
                    with lock:
                        failed.append(f"{e.code()}: {e.details()}")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for i in range(6):
            target = "green" if i % 2 == 0 else "blue"
            t.set_ratio(**({"blue": 0, "green": 100} if target == "green"
                           else {"blue": 100, "green": 0}))
            with lock:
                mark = len(seen)
            # Calls land on the new colour only, 20 of them in a row.
            wait_for(lambda: seen[-20:] == [target] * 20 and len(seen) - mark >= 20,
                     TIMEOUT, what=f"calls served by {target}")
    finally:
        stop.set()
        for th in threads:
            th.join(TIMEOUT)
    assert not failed, failed[:5]
    assert "blue" in seen and "green" in seen


def established_to(port):
    """TCP connections established to 127.0.0.1:port (from /proc/net/tcp)."""
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and remote == f"0100007F:{port:04X}":
                n += 1
    return n


def test_grpc_server_with_one_concurrent_stream_gets_more_connections_and_no_failed_call(
        grpc_backends, gtd):
    blue = grpc_backends("blue", max_concurrent_streams=1)
    t = gtd(h2_cfg({"blue": (100, [blue])}, workers=1))
    most = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], established_to(blue.port))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with channel(t) as ch:
            slow = ch.unary_unary("/td.test.Echo/Slow")
            with futures.ThreadPoolExecutor(20) as pool:
                replies = list(pool.map(lambda _: slow(b"300", timeout=TIMEOUT), range(20)))
    finally:
        stop.set()
        watcher.join()
    assert replies == [b"blue:slow"] * 20
    assert most[0] > 1, "td should have opened more than one connection"


def test_grpc_tls_backend_speaks_h2_by_alpn_and_tls_listener_takes_grpc(grpc_backends, gtd, cert):
    blue = grpc_backends("blue", tls=cert)
    cfg = h2_cfg({"blue": (100, [blue])})
    cfg["backends"][0]["tls"] = {"ca": cert[0], "sni": "localhost"}
    t = gtd(cfg, cert=cert)
    with open(cert[0], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(f"localhost:{t.tls_port}", creds) as ch:
        assert unary(ch)(b"sealed", timeout=TIMEOUT) == b"blue:sealed"
        assert list(ch.unary_stream("/td.test.Echo/Stream")(b"3", timeout=TIMEOUT)) == [
            b"blue:0", b"blue:1", b"blue:2"]


def test_h2_backend_over_tls_that_does_not_select_alpn_h2_fails_the_try_clearly(gtd, cert):
    # A TLS server that speaks only HTTP/1.1 (ALPN http/1.1): td's try fails with a reason.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    ctx.set_alpn_protocols(["http/1.1"])
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
            try:
                with ctx.wrap_socket(conn, server_side=True) as c:
                    c.settimeout(2)
                    c.recv(100)
            except OSError:
                pass

    th = threading.Thread(target=serve)
    th.start()
    try:
        cfg = backend_cfg({"blue": (100, [port])})
        cfg["backends"][0]["protocol"] = "h2"
        cfg["backends"][0]["tls"] = {"ca": cert[0], "sni": "localhost"}
        t = gtd(cfg)
        with socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            resp = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                resp += chunk
        assert resp.startswith(b"HTTP/1.1 502 "), resp
        wait_for(lambda: "did not select ALPN h2" in t.proc.output(), TIMEOUT,
                 what="the ALPN error in the log")
    finally:
        stop.set()
        th.join()
        srv.close()


def test_grpc_server_stopped_under_load_its_calls_go_to_the_other_server(grpc_backends, gtd):
    one, two = grpc_backends("blue"), grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [one, two])}))
    stop = threading.Event()
    ok, failed, lock = [0], [], threading.Lock()

    def load():
        with channel(t) as ch:
            call = unary(ch)
            while not stop.is_set():
                try:
                    call(b"x", timeout=TIMEOUT)
                    with lock:
                        ok[0] += 1
                except grpc.RpcError as e:
                    with lock:
                        failed.append(f"{e.code()}: {e.details()} {e.debug_error_string()}")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        wait_for(lambda: ok[0] >= 50, TIMEOUT, what="calls before the stop")
        one.stop()  # server.stop(grace): GOAWAY, the calls in flight finish, then it closes
        mark = ok[0]
        wait_for(lambda: ok[0] >= mark + 200, TIMEOUT, what="calls after the stop")
    finally:
        stop.set()
        for th in threads:
            th.join(TIMEOUT)
    # What grpcio's server.stop(grace) does: GOAWAY first (streams td sends after it are refused
    # and retried on the other server, as are connects to the closed port), but a call it had
    # just taken may be answered with its own status CANCELLED (a gRPC answer td passes on, not
    # a failure of td's: it is never UNAVAILABLE or INTERNAL). At most the calls in flight then.
    assert all(f.startswith("StatusCode.CANCELLED: ") and 'grpc_message:"CANCELLED"' in f
               for f in failed), failed[:5]
    assert len(failed) <= len(threads), failed


def http11_exchange(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(request)
        resp = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return resp
            resp += chunk


def test_http11_client_to_h2_backend_gets_chunked_response_with_its_trailers(grpc_backends, gtd):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    body = grpc_frame(b"plain")
    resp = http11_exchange(t.port, (
        b"POST /td.test.Echo/Unary HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc\r\n"
        b"TE: trailers\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body)
    head, _, rest = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), resp
    assert b"\r\nTransfer-Encoding: chunked" in head, resp
    # One chunk: the gRPC message; then the last chunk with the trailer section.
    reply = grpc_frame(b"blue:plain")
    assert rest.startswith(b"%x\r\n" % len(reply) + reply + b"\r\n0\r\n"), resp
    trailers = rest.split(b"\r\n0\r\n", 1)[1]
    assert trailers.endswith(b"\r\n\r\n"), resp
    assert b"grpc-status: 0\r\n" in trailers and b"x-env: blue\r\n" in trailers, resp


class TrailerHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 backend whose responses are chunked with a trailer section."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Trailer", "x-checksum")
        self.end_headers()
        self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def trailer_backend():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), TrailerHandler)
    th = threading.Thread(target=srv.serve_forever)
    th.start()
    yield srv.server_address[1]
    srv.shutdown()
    th.join()
    srv.server_close()


def test_response_trailers_of_http11_backend_reach_h2_and_http11_clients(trailer_backend, gtd):
    t = gtd(backend_cfg({"blue": (100, [trailer_backend])}))
    r = subprocess.run(["nghttp", "-v", f"http://127.0.0.1:{t.port}/"], capture_output=True,
                       text=True, timeout=TIMEOUT)
    out = r.stdout
    assert "hello world" in out, out
    # DATA, then the trailers as a HEADERS frame that ends the stream.
    frames = re.findall(r"recv (\w+) frame <length=\d+, flags=(0x[0-9a-f]+), stream_id=13>", out)
    assert frames[-1] == ("HEADERS", "0x05") and ("DATA", "0x00") in frames, out
    assert out.index("x-checksum: abc123") > out.index("hello world"), out
    resp = http11_exchange(t.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.endswith(b"0\r\nx-checksum: abc123\r\n\r\n"), resp


class EarlyHintsHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 backend that sends 103 Early Hints before its response."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        self.wfile.flush()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args):
        pass


def test_103_early_hints_of_http11_backend_reach_h2_client_as_an_interim_headers(gtd):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), EarlyHintsHandler)
    th = threading.Thread(target=srv.serve_forever)
    th.start()
    try:
        t = gtd(backend_cfg({"blue": (100, [srv.server_address[1]])}))
        r = subprocess.run(["nghttp", "-v", f"http://127.0.0.1:{t.port}/"], capture_output=True,
                           text=True, timeout=TIMEOUT)
        out = r.stdout
        # A HEADERS of its own with :status 103 and the Link field, before the final 200.
        assert ":status: 103" in out and "link: </style.css>; rel=preload" in out, out
        assert out.index(":status: 103") < out.index(":status: 200") < out.index("hello"), out
    finally:
        srv.shutdown()
        th.join()
        srv.server_close()


def test_protocol_key_bad_value_is_rejected_with_its_position(tmp_path):
    cfg = backend_cfg({"blue": (100, [free_port()])})
    cfg["listeners"] = [{"address": f"127.0.0.1:{free_port()}"}]
    cfg["backends"][0]["protocol"] = "h3"
    text = json.dumps(cfg, indent=2)
    path = tmp_path / "td.json"
    path.write_text(text)
    p = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    i = text.index('"h3"')
    line = text.count("\n", 0, i) + 1
    col = i - text.rindex("\n", 0, i)
    assert p.returncode == 1, out
    assert f"{path}:{line}:{col}:" in out and "http/1.1" in out and "h2" in out, out
    cfg["backends"][0]["protocol"] = "h2"
    path.write_text(json.dumps(cfg, indent=2))
    p = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


class RawH2Server:
    """A minimal HTTP/2 server on 127.0.0.1 (raw frames, h2c with prior knowledge) that answers
    every request the same way, by `mode`:
      "refuse": RST_STREAM REFUSED_STREAM;
      "goaway": GOAWAY with last_stream_id 0 (the stream was not processed);
      "close":  closes the connection (the stream's fate is unknown);
      "reset":  RST_STREAM INTERNAL_ERROR (the server's own answer about the request);
      "big":    200 with a content-length and `size` body bytes, sent as the client's flow
                control windows allow (so the transfer stalls unless td gives them back).
      "count":  reads the request body, giving its window back frame by frame (its initial
                window is HTTP/2's 64 KiB), and answers 200 with the number of body bytes, and
                " trailers" after it when a trailing HEADERS ended the body.
    `requests` counts the HEADERS it got."""

    def __init__(self, mode, size=0):
        self.mode, self.size, self.requests = mode, size, 0
        self.body = bytes(i * 7 % 251 for i in range(size))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def close(self):
        self.stop_ev.set()
        for th in list(self.threads):
            th.join(TIMEOUT)
        self.sock.close()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            th = threading.Thread(target=self._serve, args=(c,))
            self.threads.append(th)
            th.start()

    @staticmethod
    def _frame(ftype, flags, sid, payload=b""):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") \
            + payload

    def _serve(self, c):
        c.settimeout(0.2)
        buf = b""
        conn_win, init_win, streams = 65535, 65535, {}  # sid -> [window, offset]
        got = {}  # "count": sid -> request body bytes

        def answer(sid, text):
            cl = str(len(text)).encode()
            c.sendall(self._frame(1, 4, sid, b"\x88\x0f\x0d" + bytes([len(cl)]) + cl)
                      + self._frame(0, 1, sid, text))

        def pump():
            nonlocal conn_win
            for sid, st in list(streams.items()):
                while st[1] < self.size and conn_win > 0 and st[0] > 0:
                    n = min(16384, conn_win, st[0], self.size - st[1])
                    end = st[1] + n == self.size
                    c.sendall(self._frame(0, 1 if end else 0, sid, self.body[st[1]:st[1] + n]))
                    st[0] -= n
                    st[1] += n
                    conn_win -= n
                if st[1] >= self.size:
                    del streams[sid]

        try:
            c.sendall(self._frame(4, 0, 0))
            while not self.stop_ev.is_set():
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                if buf.startswith(b"PRI * HTTP/2.0"):
                    if len(buf) < 24:
                        continue
                    buf = buf[24:]
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    ftype, flags = buf[3], buf[4]
                    sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9:9 + length], buf[9 + length:]
                    if ftype == 4 and not flags & 1:
                        for i in range(0, len(payload) - 5, 6):
                            if int.from_bytes(payload[i:i + 2], "big") == 4:
                                init_win = int.from_bytes(payload[i + 2:i + 6], "big")
                        c.sendall(self._frame(4, 1, 0))
                    elif ftype == 6 and not flags & 1:
                        c.sendall(self._frame(6, 1, 0, payload))
                    elif ftype == 8:
                        inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                        if sid == 0:
                            conn_win += inc
                        elif sid in streams:
                            streams[sid][0] += inc
                    elif ftype == 0 and self.mode == "count":
                        got[sid] = got.get(sid, 0) + length
                        if length:
                            inc = length.to_bytes(4, "big")
                            c.sendall(self._frame(8, 0, 0, inc) + self._frame(8, 0, sid, inc))
                        if flags & 1:
                            answer(sid, b"%d" % got[sid])
                    elif ftype == 1 and self.mode == "count" and sid in got:
                        answer(sid, b"%d trailers" % got[sid])  # trailing HEADERS, END_STREAM
                    elif ftype == 1:
                        self.requests += 1
                        if self.mode == "count":
                            got[sid] = 0
                            if flags & 1:
                                answer(sid, b"0")
                        elif self.mode == "refuse":
                            c.sendall(self._frame(3, 0, sid, (7).to_bytes(4, "big")))
                        elif self.mode == "goaway":
                            c.sendall(self._frame(7, 0, 0, bytes(8)))
                        elif self.mode == "close":
                            return
                        elif self.mode == "reset":
                            c.sendall(self._frame(3, 0, sid, (2).to_bytes(4, "big")))
                        else:
                            cl = str(self.size).encode()
                            # :status 200 (static index 8); content-length (index 28), literal.
                            block = b"\x88\x0f\x0d" + bytes([len(cl)]) + cl
                            c.sendall(self._frame(1, 4, sid, block))
                            streams[sid] = [init_win, 0]
                    pump()
        except OSError:
            pass
        finally:
            c.close()


@pytest.mark.parametrize("mode", ["refuse", "goaway"])
def test_h2_stream_the_server_did_not_process_is_retried_on_another_server_even_for_post(
        grpc_backends, gtd, mode):
    raw = RawH2Server(mode)
    good = grpc_backends("blue")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port, good.port])},
                          passive={"failures": 100, "eject_ms": 1000, "max_eject_ms": 1000})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        body = grpc_frame(b"once")
        for _ in range(6):
            resp = http11_exchange(t.port, (
                b"POST /td.test.Echo/Unary HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc"
                b"\r\nTE: trailers\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body)
            assert resp.startswith(b"HTTP/1.1 200 "), resp
            assert grpc_frame(b"blue:once") in resp and b"grpc-status: 0\r\n" in resp, resp
        assert raw.requests >= 1  # round robin put some on the server that did not process them
    finally:
        raw.close()


def test_h2_backend_response_larger_than_the_windows_arrives_whole(gtd):
    size = 3 * 1024 * 1024 + 123  # beyond the 1 MiB stream window td announces
    raw = RawH2Server("big", size)
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        resp = http11_exchange(t.port, b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"\r\ncontent-length: %d" % size in head.lower(), head
        assert len(body) == size and body == raw.body, len(body)
    finally:
        raw.close()


def test_h2_backend_takes_large_request_bodies_chunked_and_with_length_and_their_trailers(
        gtd, tmp_path):
    raw = RawH2Server("count")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        size = 2 * 1024 * 1024 + 7  # beyond the server's 64 KiB window: flow control paces it
        f = tmp_path / "up"
        f.write_bytes(os.urandom(size))
        url = f"http://127.0.0.1:{t.port}/up"
        with_length = subprocess.run(["curl", "-s", "--data-binary", f"@{f}", url],
                                     capture_output=True, timeout=TIMEOUT)
        assert with_length.stdout == b"%d" % size, with_length
        chunked = subprocess.run(["curl", "-s", "-H", "Transfer-Encoding: chunked",
                                  "--data-binary", f"@{f}", url],
                                 capture_output=True, timeout=TIMEOUT)
        assert chunked.stdout == b"%d" % size, chunked
        # A chunked body's trailer section goes on as a trailing HEADERS.
        resp = http11_exchange(t.port, b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\n0\r\nx-sum: 6\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"3 trailers"), resp
    finally:
        raw.close()


def test_grpc_call_past_its_deadline_resets_the_upstream_stream_and_others_go_on(
        grpc_backends, gtd):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    with channel(t) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/td.test.Echo/Slow")(b"3000", timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        call = unary(ch)
        assert [call(b"%d" % i, timeout=TIMEOUT) for i in range(10)] == [
            b"blue:%d" % i for i in range(10)]
    # The cancelled call no longer counts as in flight.
    wait_for(lambda: backend_state(t.state(), "blue")["in_flight"] == 0, TIMEOUT,
             what="no request in flight")


def test_grpc_call_in_flight_at_a_stop_finishes_and_td_exits_cleanly(grpc_backends, gtd):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}))
    result = {}

    def slow():
        with channel(t) as ch:
            try:
                result["reply"] = ch.unary_unary("/td.test.Echo/Slow")(b"1500", timeout=TIMEOUT)
            except grpc.RpcError as e:
                result["error"] = f"{e.code()}: {e.details()}"

    th = threading.Thread(target=slow)
    th.start()
    wait_for(lambda: backend_state(t.state(), "blue")["in_flight"] == 1, TIMEOUT,
             what="the call in flight")
    t.proc.p.send_signal(signal.SIGTERM)
    th.join(TIMEOUT)
    assert result == {"reply": b"blue:slow"}, result
    assert t.proc.p.wait(TIMEOUT) == 0, t.proc.output()[-3000:]


def test_http11_keep_alive_client_sends_requests_one_after_another_to_an_h2_backend(gtd):
    raw = RawH2Server("count")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        url = f"http://127.0.0.1:{t.port}/n"
        r = subprocess.run(["curl", "-sv", url, "--next", "-sv", "--data-binary", "abc", url,
                            "--next", "-sv", url],
                           capture_output=True, timeout=TIMEOUT)
        assert r.stdout == b"030", r
        assert r.stderr.count(b"Re-using existing connection") == 2, r.stderr
        assert raw.requests == 3
    finally:
        raw.close()


def test_h2_backend_connection_that_dies_under_a_post_gives_502_with_the_reason(gtd):
    raw = RawH2Server("close")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        resp = http11_exchange(t.port, b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Content-Length: 2\r\n\r\nhi")
        assert resp.startswith(b"HTTP/1.1 502 "), resp
        assert raw.requests == 1  # not sent again: the server may have acted on it
        wait_for(lambda: "connection closed by the server" in t.proc.output(), TIMEOUT,
                 what="the reason in the log")
    finally:
        raw.close()


def test_h2_stream_reset_by_the_server_is_not_retried_on_it_again_and_gets_502(gtd):
    raw = RawH2Server("reset")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        # The second request finds the connection up (a stream of it, as if pooled).
        for n in (1, 2):
            resp = http11_exchange(t.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close"
                                   b"\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 502 "), resp
            assert raw.requests == n, raw.requests  # one try each: the server reset it
        wait_for(lambda: "stream reset by the server (INTERNAL_ERROR)" in t.proc.output(),
                 TIMEOUT, what="the reason in the log")
    finally:
        raw.close()
