"""End-to-end tests of the "grpc" health check type: td asks grpc.health.v1.Health/Check over
HTTP/2 (h2c on plain servers, TLS with ALPN h2) and counts only a SERVING answer as a pass.

The servers are real gRPC servers (grpc_backend.py, Debian's python3-grpcio) whose Check answer a
health file picks, the demo backend (HTTP/1.1 only), a TLS server without HTTP/2, and a socket
that never answers, all on 127.0.0.1. The tests assert what td reports (GET /api/v1/state,
/metrics, its log), polled with generous bounds; every wait is bounded."""
import json
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading

import pytest

from conftest import ASAN, TD, backend_cfg, free_port, pos, server_state, wait_for
from grpc_backend import GrpcBackend

SLACK = 3.0 if ASAN else 1.0
WAIT = 10 * SLACK  # seconds: bound of every poll for a health state


def hc(**kw):
    """A global grpc health_check: quick, fall 2, rise 2, with the given overrides."""
    h = {"type": "grpc", "interval_ms": 200, "timeout_ms": 2000, "fall": 2, "rise": 2}
    h.update(kw)
    return h


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
def health_file():
    """A path for a grpc backend's health file (not created): write() sets its content."""
    d = tempfile.mkdtemp(prefix="td-e2e-grpc-")
    path = os.path.join(d, "health")

    def write(text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # the backend never reads half a file

    write.path = path
    return write


def one(server_port, **health):
    """Config: backend blue with the one server 127.0.0.1:server_port, checked with
    hc(**health)."""
    return backend_cfg({"blue": (100, [server_port])}, health_check=hc(**health))


def wait_health(t, port, health, what):
    """Waits until td reports server 127.0.0.1:port `health`; returns its state entry."""
    return wait_for(lambda: (lambda s: s if s["health"] == health else None)(
        server_state(t.state(), port)), WAIT, what=what)


def metric_up(t, port):
    status, text = t.api("GET", "/metrics")
    assert status == 200, text
    m = re.search(rf'^td_server_up{{backend="blue",server="127\.0\.0\.1:{port}"}} (\d+)$', text,
                  re.M)
    assert m, text[-2000:]
    return int(m.group(1))


# ---- verdicts ----

def test_grpc_check_marks_a_serving_server_up(grpc_backends, td):
    b = grpc_backends("blue")
    t = td(one(b.port, default_down=True))
    s = wait_health(t, b.port, "up", "a SERVING gRPC server up by its grpc check")
    assert s["last_check"] == "grpc status SERVING", s
    assert metric_up(t, b.port) == 1


def test_grpc_check_not_serving_is_down_after_fall_checks_and_up_after_rise(grpc_backends, td,
                                                                            health_file):
    health_file("SERVING\n")
    b = grpc_backends("blue", health_file=health_file.path)
    t = td(one(b.port, fall=3, rise=2))
    wait_health(t, b.port, "up", "the server up while it is SERVING")
    wait_for(lambda: server_state(t.state(), b.port).get("last_check") == "grpc status SERVING",
             WAIT, what="a first passing grpc check")
    health_file("NOT_SERVING\n")
    s = wait_health(t, b.port, "down", "the server down once it answers NOT_SERVING")
    assert s["last_check"] == "grpc status NOT_SERVING", s
    assert metric_up(t, b.port) == 0
    log = t.proc.output()
    assert re.search(rf"health: server 127\.0\.0\.1:{b.port} \(blue\) is down after 3 failed "
                     r"checks \(grpc status NOT_SERVING\)", log), log[-2000:]
    health_file("SERVING\n")
    wait_health(t, b.port, "up", "the server up again once it answers SERVING")
    assert metric_up(t, b.port) == 1
    log = t.proc.output()
    assert re.search(rf"health: server 127\.0\.0\.1:{b.port} \(blue\) is up after 2 successful "
                     r"checks \(grpc status SERVING\)", log), log[-2000:]


def test_grpc_check_unknown_status_is_down(grpc_backends, td, health_file):
    health_file("UNKNOWN\n")
    b = grpc_backends("blue", health_file=health_file.path)
    t = td(one(b.port))
    s = wait_health(t, b.port, "down", "a server answering UNKNOWN down")
    assert s["last_check"] == "grpc status UNKNOWN", s


def test_grpc_check_unimplemented_is_down_with_a_reason_naming_it(grpc_backends, td,
                                                                 health_file):
    health_file("UNIMPLEMENTED\n")
    b = grpc_backends("blue", health_file=health_file.path)
    t = td(one(b.port))
    s = wait_health(t, b.port, "down", "a server without the health service down")
    assert s["last_check"].startswith("grpc-status 12 (UNIMPLEMENTED)"), s
    assert "health checks are off" in s["last_check"], s  # the server's grpc-message
    assert "grpc-status 12 (UNIMPLEMENTED)" in t.proc.output()


def test_grpc_check_stopped_backend_is_down(grpc_backends, td):
    b = grpc_backends("blue")
    t = td(one(b.port))
    wait_health(t, b.port, "up", "the server up while it runs")
    b.stop()
    s = wait_health(t, b.port, "down", "the server down once its process stopped")
    assert s["last_check"].startswith("connect:"), s
    assert metric_up(t, b.port) == 0


def test_grpc_check_of_an_http1_only_server_is_down_with_a_clear_reason(backends, td):
    demo = backends(("blue", 1))
    port = demo.ports["blue"][0]
    t = td(one(port))
    s = wait_health(t, port, "down", "an HTTP/1.1-only server down under a grpc check")
    assert "no HTTP/2" in s["last_check"], s
    assert t.proc.p.poll() is None  # td goes on (and the fixture's stop checks its exit)


def test_grpc_check_that_gets_no_answer_fails_by_timeout(td):
    # A socket that listens (the kernel completes the handshake) and never reads nor answers.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        port = s.getsockname()[1]
        t = td(one(port, timeout_ms=300, interval_ms=100))
        st = wait_health(t, port, "down", "a server that never answers down by timeout")
        assert st["last_check"] == "no answer within 300 ms", st


def test_grpc_check_goes_to_the_health_check_port(grpc_backends, td):
    # The server's own port has nothing behind it; the check's port has the gRPC server.
    b = grpc_backends("blue")
    dead = free_port()
    t = td(one(dead, port=b.port, default_down=True))
    s = wait_health(t, dead, "up", "the server up by a grpc check on health_check.port")
    assert s["last_check"] == "grpc status SERVING", s


# ---- the service asked about ----

def test_grpc_check_sends_grpc_service(grpc_backends, td, health_file):
    # The server as a whole is NOT_SERVING; only the named service is SERVING, so blue, asking
    # about shop.Orders, is up only if the name reached the server. green asks about shop.Cart
    # (NOT_SERVING) and red about a service the server does not know (NOT_FOUND).
    health_file("NOT_SERVING\nshop.Orders SERVING\nshop.Cart NOT_SERVING\nshop.Gone NOT_FOUND\n")
    b = grpc_backends("blue", health_file=health_file.path)
    cfg = backend_cfg({"blue": (50, [b.port]), "green": (50, [b.port]), "red": (0, [b.port])},
                      health_check=hc())
    cfg["backends"][0]["health_check"] = {"grpc_service": "shop.Orders"}
    cfg["backends"][1]["health_check"] = {"grpc_service": "shop.Cart"}
    cfg["backends"][2]["health_check"] = {"grpc_service": "shop.Gone"}
    t = td(cfg)

    def by_backend():
        return {bk["name"]: (sv["health"], sv.get("last_check", ""))
                for bk in t.state()["backends"] for sv in bk["servers"]}

    want = {"blue": ("up", "grpc status SERVING"),
            "green": ("down", "grpc status NOT_SERVING"),
            "red": ("down", "grpc-status 5 (NOT_FOUND): unknown service shop.Gone")}
    wait_for(lambda: by_backend() == want, WAIT, what=f"per-service verdicts {want}")


# ---- TLS ----

@pytest.fixture(scope="module")
def cert():
    """A self-signed certificate for grpc.test (its own CA): (cert path, key path)."""
    d = tempfile.mkdtemp(prefix="td-e2e-grpc-tls-")
    c, k = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", k, "-out", c,
                        "-days", "30", "-subj", "/CN=grpc.test",
                        "-addext", "subjectAltName=DNS:grpc.test"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return c, k


def tls_cfg(port, ca):
    cfg = one(port)
    cfg["backends"][0]["tls"] = {"verify": True, "ca": ca, "sni": "grpc.test"}
    return cfg


def test_grpc_check_over_tls_with_alpn_h2_marks_up(grpc_backends, td, cert, health_file):
    health_file("SERVING\n")
    b = grpc_backends("blue", tls=cert, health_file=health_file.path)
    cfg = tls_cfg(b.port, cert[0])
    cfg["health_check"]["default_down"] = True
    t = td(cfg)
    s = wait_health(t, b.port, "up", "a TLS gRPC server up (ALPN h2)")
    assert s["last_check"] == "grpc status SERVING", s
    health_file("NOT_SERVING\n")
    s = wait_health(t, b.port, "down", "the TLS gRPC server down once NOT_SERVING")
    assert s["last_check"] == "grpc status NOT_SERVING", s


class Http1TlsServer:
    """A TLS server on 127.0.0.1 whose ALPN offers only http/1.1: it completes handshakes and
    closes. Runs in a thread until stop()."""

    def __init__(self, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.alpn = []  # what each handshake chose
        self.done = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.done.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            try:
                c.settimeout(2)
                with self.ctx.wrap_socket(c, server_side=True) as tc:
                    self.alpn.append(tc.selected_alpn_protocol())
            except OSError:
                c.close()

    def stop(self):
        self.done.set()
        self.th.join(5)
        self.sock.close()


def test_grpc_check_of_a_tls_server_without_h2_is_down_naming_alpn(td, cert):
    srv = Http1TlsServer(cert)
    try:
        t = td(tls_cfg(srv.port, cert[0]))
        s = wait_health(t, srv.port, "down", "a TLS server without h2 down under a grpc check")
        assert s["last_check"].startswith("no HTTP/2 (ALPN)"), s
        assert "http/1.1" in srv.alpn  # td offered it too, so the handshake itself succeeded
    finally:
        srv.stop()


# ---- config errors ----

def check_config(cfg):
    d = tempfile.mkdtemp(prefix="td-e2e-grpc-cfg-")
    path = os.path.join(d, "td.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout + p.stderr, path, open(path).read()


def base_cfg(**health):
    cfg = backend_cfg({"blue": (100, [19001])}, health_check=hc(**health))
    cfg["listeners"] = [{"address": "127.0.0.1:18080"}]
    return cfg


def test_grpc_config_is_valid_for_td_t():
    rc, out, _, _ = check_config(base_cfg(grpc_service="shop.Cart"))
    assert rc == 0, out


def test_grpc_service_on_a_non_grpc_check_is_a_config_error_with_its_position():
    rc, out, path, text = check_config(base_cfg(type="http", grpc_service="shop.Cart"))
    assert rc == 1, out
    line, col = pos(text, '"grpc_service"')
    assert f"{path}:{line}:{col}: " in out, out
    assert 'grpc_service is for "type": "grpc" checks' in out and '"http"' in out, out


def test_grpc_service_on_a_backend_whose_check_is_tcp_is_a_config_error():
    cfg = base_cfg()
    cfg["backends"][0]["health_check"] = {"type": "tcp", "grpc_service": "shop.Cart"}
    rc, out, path, text = check_config(cfg)
    assert rc == 1, out
    line, col = pos(text, '"grpc_service"')
    assert f"{path}:{line}:{col}: " in out and '"tcp"' in out, out


def test_grpc_service_with_a_space_is_a_config_error_with_its_position():
    rc, out, path, text = check_config(base_cfg(grpc_service="shop Cart"))
    assert rc == 1, out
    line, col = pos(text, '"shop Cart"')
    assert f"{path}:{line}:{col}: " in out, out
    assert "is not a valid gRPC service name" in out, out


def test_a_misspelt_health_type_lists_grpc_among_the_valid_ones():
    rc, out, path, text = check_config(base_cfg(type="grcp"))
    assert rc == 1, out
    line, col = pos(text, '"grcp"')
    assert f"{path}:{line}:{col}: " in out and '"grpc"' in out, out


def test_a_backend_that_changes_the_check_type_drops_the_inherited_grpc_service(td):
    # The global check asks about shop.Orders; blue's own check is tcp. The config td writes back
    # (GET /api/v1/config, the state file) must read again: no grpc_service on blue's tcp check.
    cfg = one(free_port(), grpc_service="shop.Orders")
    cfg["backends"][0]["health_check"] = {"type": "tcp"}
    t = td(cfg)
    status, doc = t.api("GET", "/api/v1/config")
    assert status == 200, doc
    assert doc["health_check"]["grpc_service"] == "shop.Orders", doc
    assert "grpc_service" not in doc["backends"][0]["health_check"], doc
    status, resp = t.api("PUT", "/api/v1/config", doc)
    assert status == 200, resp
