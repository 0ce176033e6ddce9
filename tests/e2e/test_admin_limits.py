"""The admin server under abuse: idle sockets held open cannot lock out /readyz and the API, and
floods of refused requests or failed TLS handshakes write a few lines and a count."""
import http.client
import re
import socket
import time

from conftest import backend_cfg
from test_admin_hardening import TOKEN, tls_admin  # noqa: F401 (a fixture)


def start(backends, td):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                      workers=1)
    return td(cfg, token=TOKEN)


def hold_idle(port, n):
    """n connections to the admin port that send nothing."""
    socks = []
    for _ in range(n):
        socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    return socks


def close_all(socks):
    for s in socks:
        s.close()


def plain_get(port, path, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def test_idle_connections_at_the_limit_do_not_lock_out_readyz_and_the_api(backends, td):
    t = start(backends, td)
    socks = hold_idle(t.admin_port, 300)
    try:
        assert plain_get(t.admin_port, "/readyz")[0] == 200
        assert plain_get(t.admin_port, "/api/v1/state", TOKEN)[0] == 200
        # Evictions are logged, at most one line a second plus a count.
        out = wait_for(lambda: "more like this in the last second: admin: 256 connections"
                       in t.proc.output() and t.proc.output())
        lines = re.findall(r"admin: 256 connections: closed the oldest idle one from "
                           r"127\.0\.0\.1:\d+", out)
        assert 1 <= len(lines) <= 10, out[-3000:]
    finally:
        close_all(socks)


def test_idle_connections_at_the_limit_do_not_lock_out_the_tls_admin_api(tls_admin):  # noqa: F811
    t = tls_admin(token=TOKEN)
    socks = hold_idle(t.admin_port, 300)
    try:
        assert t.request("GET", "/readyz")[0] == 200
        assert t.request("GET", "/api/v1/state")[0] == 200
    finally:
        close_all(socks)


def summaries(out, reason):
    return sum(int(n) for n in re.findall(
        r"(\d+) more like this in the last second: " + re.escape(reason), out))


def test_a_burst_of_401_logs_a_few_lines_and_the_count_of_the_rest(backends, td):
    t = start(backends, td)
    n = 300
    c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=10)
    for _ in range(n):
        c.request("GET", "/api/v1/state")
        r = c.getresponse()
        r.read()
        assert r.status == 401
    c.close()
    pat = r"admin: 127\.0\.0\.1:\d+ GET /api/v1/state: 401"
    total = wait_for(lambda: len(re.findall(pat, t.proc.output()))
                     + summaries(t.proc.output(), "admin: 401 Unauthorized") == n
                     and n)
    out = t.proc.output()
    lines = len(re.findall(pat, out))
    assert total == n, out[-3000:]
    assert 1 <= lines <= 30, out[-3000:]


def test_a_hostile_path_refused_with_400_is_logged_escaped(backends, td):
    t = start(backends, td)
    with socket.create_connection(("127.0.0.1", t.admin_port), timeout=10) as s:
        s.sendall(b"GET /a\x1b[31mred\x7f HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data
    out = wait_for(lambda: "/a\\x1b[31mred\\x7f: 400" in t.proc.output() and t.proc.output())
    assert out, t.proc.output()[-3000:]
    assert "\x1b" not in t.proc.output()


def test_plain_http_to_the_tls_admin_port_logs_a_few_lines_and_a_count(tls_admin):  # noqa: F811
    t = tls_admin(token=TOKEN)
    n = 20
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", t.admin_port), timeout=10) as s:
            s.sendall(b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            while s.recv(4096):
                pass

    def counted():
        out = t.proc.output()
        lines = re.findall(r"admin: TLS from 127\.0\.0\.1:\d+: ", out)
        return len(lines) + summaries(out, "admin: TLS handshake from a client: ")

    assert wait_for(lambda: counted() == n), t.proc.output()[-3000:]
    out = t.proc.output()
    assert len(re.findall(r"admin: TLS from 127\.0\.0\.1:\d+: ", out)) < n
    assert t.request("GET", "/api/v1/state")[0] == 200
