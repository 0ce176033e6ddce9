"""End-to-end tests of td's operation outside the proxy data path, as a new user meets it: reloads
that remove sections (health checks, the admin section), the admin API's Host checks, the wording
of config errors, HTTP/1.x minor versions and the web console's figures."""
import http.client
import json
import os
import signal
import socket
import subprocess
import time

from conftest import (ASAN, TD, Backends, RawConn, backend_cfg, reload_config, server_state,
                      wait_for)

SLACK = 2.0 if ASAN else 1.0
TIMEOUT = 10


def get(port, path="/"):
    """One GET on a fresh connection: (status, X-TD-Demo-Backend)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status, r.headers.get("X-TD-Demo-Backend")
    finally:
        c.close()


def hc(**kw):
    h = {"type": "http", "path": "/", "expect_status": "2xx,3xx", "interval_ms": 100,
         "timeout_ms": 1000, "fall": 2, "rise": 2}
    h.update(kw)
    return h


# ---------------------------------------------------------------------------------------------
# A passive ejection after a reload removed the health checks.

def test_passive_ejection_ends_after_reload_removed_health_check(backends, td):
    """With health_check removed by SIGHUP, nothing checks blue's server any more: a passive
    ejection must end after eject_ms by itself, and blue serve again once it answers."""
    blue, green = backends(("blue", 1)), backends(("green", 1))
    bport = blue.ports["blue"][0]
    t = td(backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])},
                       health_check=hc(),
                       passive={"failures": 1, "eject_ms": 1000, "max_eject_ms": 1000}))
    wait_for(lambda: server_state(t.state(), bport)["health"] == "up", 10, what="blue up")
    reload_config(t, lambda cfg: cfg.pop("health_check"))
    assert "last_check" not in server_state(t.state(), bport)
    blue.stop()
    # Blue's failed connects are retried on green; one of them ejects blue.
    wait_for(lambda: get(t.port)[0] == 200 and
             server_state(t.state(), bport)["health"] != "up", 10, what="blue ejected")
    assert "ejected for 1000 ms after 1 failure in a row" in t.proc.output()
    backends(("blue", 1), ports={"blue": [bport]})
    wait_for(lambda: server_state(t.state(), bport)["health"] == "up", 10 + SLACK,
             interval=0.1, what="blue up again after its ejection")
    wait_for(lambda: any(get(t.port)[1] == "blue" for _ in range(10)), 10, what="blue serves")
    wait_for(lambda: "is back after its ejection" in t.proc.output(), 5 + SLACK, interval=0.1,
             what="the ejection's end logged")


# ---------------------------------------------------------------------------------------------
# Removing "admin" by a reload: the admin API keeps its address and token until a restart.

def two_colours(backends):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    return backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])})


def test_reload_removing_admin_keeps_showing_the_admin_in_force_without_address_warning(
        backends, td):
    t = td(two_colours(backends), token="s3cret")
    address = f"127.0.0.1:{t.admin_port}"
    reload_config(t, lambda cfg: cfg.pop("admin"))
    out = t.proc.output()
    assert "admin address changed" not in out, out
    assert "admin.token removed; it applies at the next restart" in out, out
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200, cfg
    assert cfg["admin"] == {"address": address, "token": "s3cret"}, cfg
    # The same address back, with an empty token: nothing that runs changes, nothing to warn of.
    reload_config(t, lambda c: c.update(admin={"address": address, "token": ""}))
    out = t.proc.output()
    assert "admin address changed" not in out, out
    assert out.count("admin.token removed") == 1, out
    status, cfg = t.api("GET", "/api/v1/config")
    assert cfg["admin"] == {"address": address, "token": "s3cret"}, cfg
    assert t.api("GET", "/api/v1/state", token="")[0] == 401
    # Another address is a change that waits for a restart.
    other = f"127.0.0.1:{t.admin_port + 1 if t.admin_port < 65535 else t.admin_port - 1}"
    reload_config(t, lambda c: c.update(admin={"address": other, "token": ""}))
    assert "admin address changed; it applies at the next restart" in t.proc.output()
    assert t.api("GET", "/api/v1/config")[1]["admin"]["address"] == address


# ---------------------------------------------------------------------------------------------
# The admin API's Host: exactly one, and an absolute-form target's authority counts as it.

def admin_raw(t, head, token=None):
    """Sends `head` (request line and fields, without the final CRLF) to the admin port:
    (status, parsed JSON body or None)."""
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    with RawConn(t.admin_port) as c:
        c.send((head + "Connection: close\r\n\r\n").encode())
        status, _, body = c.read_response()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def test_admin_api_answers_400_to_two_host_fields(backends, td):
    t = td(two_colours(backends))
    a = f"127.0.0.1:{t.admin_port}"
    for second in ("evil.com", a):
        status, _ = admin_raw(t, f"GET /api/v1/state HTTP/1.1\r\nHost: {a}\r\nHost: {second}\r\n")
        assert status == 400, second
    t2 = td(two_colours(backends), token="s3cret")
    status, _ = admin_raw(t2, f"GET /api/v1/state HTTP/1.1\r\nHost: {a}\r\nHost: evil.com\r\n",
                          token="s3cret")
    assert status == 400


def test_admin_api_takes_an_absolute_form_authority_as_the_host(backends, td):
    t = td(two_colours(backends))
    port = t.admin_port
    # A foreign authority is refused like a foreign Host, whatever the Host field says.
    status, body = admin_raw(
        t, f"GET http://evil.com:{port}/api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
    assert status == 421 and "Host" in body["error"], body
    status, body = admin_raw(
        t, f"GET http://127.0.0.1/api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n")
    assert status == 421, body  # no port in the authority: 80, not this admin port
    # This admin address in the authority: routed by the target's path.
    status, body = admin_raw(
        t, f"GET http://127.0.0.1:{port}/api/v1/state HTTP/1.1\r\nHost: evil.com\r\n")
    assert status == 200 and "backends" in body, body
    status, body = admin_raw(
        t, f"GET http://localhost:{port}/api/v1/config?x=1 HTTP/1.1\r\nHost: localhost:{port}\r\n")
    assert status == 200 and "backends" in body, body
    assert t.state()["version"] == 1
    # With a token any name may be used: the token decides, the path routes.
    t2 = td(two_colours(backends), token="s3cret")
    port2 = t2.admin_port
    status, body = admin_raw(
        t2, f"GET http://td.example:{port2}/api/v1/state HTTP/1.1\r\nHost: td.example\r\n",
        token="s3cret")
    assert status == 200 and "backends" in body, body
    status, body = admin_raw(
        t2, f"GET http://td.example:{port2}/api/v1/state HTTP/1.1\r\nHost: td.example\r\n")
    assert status == 401, body


# ---------------------------------------------------------------------------------------------
# HTTP/1.2 and higher minor versions are taken as HTTP/1.1 (RFC 9110 §2.5, RFC 9112 §2.3).

def test_http_1_2_request_is_answered_as_http_1_1(backends, td):
    t = td(two_colours(backends))
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


# ---------------------------------------------------------------------------------------------
# Config errors in plain words, with one position prefix.

def test_unreadable_config_file_is_reported_without_a_position(tmp_path):
    missing = str(tmp_path / "nonexistent.json")
    p = subprocess.run([TD, "-t", "-c", missing], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    out = p.stdout + p.stderr
    assert f"{missing}: cannot read: No such file or directory" in out, out
    assert ":0:0:" not in out, out


def test_config_syntax_errors_are_in_plain_words(tmp_path, backends, td):
    path = tmp_path / "td.json"
    path.write_bytes(b'{"workers": 1, "pid_file": "x\\u0000"}')
    p = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    assert p.returncode == 1
    assert "a string may not contain \\u0000 (NUL)" in out, out
    assert "JSON_ALLOW_NUL" not in out, out
    t = td(two_colours(backends))
    status, r = t.api("PUT", "/api/v1/config", raw=b'{"workers": tru}')
    assert status == 400 and r["error"].startswith("request:1:"), r
    assert "invalid value" in r["error"], r
    assert t.state()["version"] == 1


def test_api_body_errors_use_the_request_position_prefix(backends, td):
    t = td(two_colours(backends))
    for path in ("/api/v1/ratio", "/api/v1/routing", "/api/v1/config"):
        status, r = t.api("PUT", path, raw=b'{"blue": 0,,}')
        assert status == 400, (path, r)
        assert r["error"].startswith("request:1:"), (path, r)
    assert t.state()["version"] == 1
