"""End-to-end tests of td's security rules: the admin API keeps its token until a restart, refuses
foreign Host and cross-origin requests when it has no token, and sends the console with a strict
Content-Security-Policy; sticky cookies carry HttpOnly, SameSite and Secure; header names that
spell a framing field with "_" are refused; repeated Content-Length values are merged; the
absolute-form authority is checked like a Host; exactly one Host reaches the backend. Real td and
demo-backend processes, real sockets on 127.0.0.1."""
import base64
import hashlib
import json
import os
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (TD, TDCTL, Headers, Proc, RawConn, Td, backend_cfg, free_port, one_backend,
                      reload_config, wait_port, weights)


def request_fields(body):
    """The request head echoed by the demo backend's /headers: (request line, Headers)."""
    lines = body.decode("latin-1").split("\r\n")
    fields = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    return lines[0], Headers(fields)


def raw_exchange(port, data):
    with RawConn(port) as c:
        c.send(data)
        return c.read_response()


def admin_raw(t, data):
    """Sends raw bytes to td's admin port; returns (status, Headers, parsed JSON or bytes)."""
    with RawConn(t.admin_port) as c:
        c.send(data)
        status, h, body = c.read_response()
    try:
        return status, h, json.loads(body)
    except ValueError:
        return status, h, body


def two_colours(backends):
    b = backends(("blue", 1), ("green", 1))
    return backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})


# ---------------------------------------------------------------------------------------------
# The admin token is bound at start


def test_reload_removing_admin_keeps_the_token_until_restart(backends, td):
    t = td(two_colours(backends), token="s3cret")
    reload_config(t, lambda cfg: cfg.pop("admin"))
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100}, token="")
    assert status == 401, body
    assert weights(t) == {"blue": 50, "green": 50}
    assert t.api("GET", "/api/v1/state", token="")[0] == 401
    assert t.api("GET", "/api/v1/state")[0] == 200  # the bound token still works
    assert "admin.token removed; it applies at the next restart" in t.proc.output()


def test_reload_removing_the_token_keeps_it_until_restart(backends, td):
    t = td(two_colours(backends), token="s3cret")
    reload_config(t, lambda cfg: cfg["admin"].pop("token"))
    assert t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100}, token="")[0] == 401
    assert weights(t) == {"blue": 50, "green": 50}


def test_put_config_without_admin_keeps_the_token_until_restart(backends, td):
    t = td(two_colours(backends), token="s3cret")
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200
    cfg.pop("admin")
    status, body = t.api("PUT", "/api/v1/config", cfg)
    assert status == 200, body
    assert t.api("GET", "/api/v1/state", token="")[0] == 401
    assert t.api("PUT", "/api/v1/ratio", {"blue": 0}, token="")[0] == 401
    assert t.api("GET", "/api/v1/state")[0] == 200


def reload_new_token(t, token, edit):
    """reload_config for a reload that changes the token: the version is read with the old one
    and polled for with `token`, which becomes t.token."""
    old = t.state()["version"]
    with open(t.config_path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(t.config_path + ".tmp", "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(t.config_path + ".tmp", t.config_path)
    t.proc.p.send_signal(signal.SIGHUP)
    t.token = token
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, s = t.api("GET", "/api/v1/state")
        if status == 200 and s["version"] > old:
            return
        time.sleep(0.02)
    raise AssertionError("reload not applied:\n" + t.proc.output()[-2000:])


def test_reload_changing_the_token_applies_at_once(backends, td):
    """Rotating a token (it leaked) must not wait for a restart; only removing one does."""
    t = td(two_colours(backends), token="old-token")
    reload_new_token(t, "new-token", lambda cfg: cfg["admin"].update(token="new-token"))
    assert t.api("GET", "/api/v1/state", token="old-token")[0] == 401
    assert t.api("GET", "/api/v1/state", token="new-token")[0] == 200
    # removed after a rotation: the token in force (the new one) stays
    reload_config(t, lambda cfg: cfg["admin"].pop("token"))
    assert t.api("GET", "/api/v1/state", token="")[0] == 401
    assert t.api("GET", "/api/v1/state", token="old-token")[0] == 401
    assert t.api("GET", "/api/v1/state", token="new-token")[0] == 200


def test_reload_adding_a_token_protects_the_api_at_once(backends, td):
    t = td(two_colours(backends))
    reload_new_token(t, "s3cret", lambda cfg: cfg["admin"].update(token="s3cret"))
    assert t.api("PUT", "/api/v1/ratio", {"blue": 0}, token="")[0] == 401
    assert weights(t) == {"blue": 50, "green": 50}


# ---------------------------------------------------------------------------------------------
# Admin without a token: Host and Origin must be this admin address


def test_admin_without_token_refuses_a_foreign_host(backends, td):
    """DNS rebinding: a page on attacker.example, whose name now resolves to 127.0.0.1, sends a
    "simple" cross-origin PUT (text/plain, no preflight) with its own name as Host."""
    t = td(two_colours(backends))
    body = b'{"blue": 0, "green": 100}'
    status, _, answer = admin_raw(
        t, b"PUT /api/v1/ratio HTTP/1.1\r\nHost: attacker.example:%d\r\n"
           b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
           % (t.admin_port, len(body), body))
    assert status == 421, answer
    assert "Host" in answer["error"]
    status, _, answer = admin_raw(
        t, b"GET /api/v1/state HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert status == 421, answer
    status, _, answer = admin_raw(t, b"GET / HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert status == 421
    # the right name with another port is foreign too
    status, _, _ = admin_raw(t, b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    assert status == 421
    assert weights(t) == {"blue": 50, "green": 50}


def test_admin_without_token_refuses_a_cross_origin_request(backends, td):
    t = td(two_colours(backends))
    body = b'{"blue": 0, "green": 100}'
    for origin in (b"http://attacker.example", b"null", b"http://127.0.0.1:%d.evil" % t.admin_port,
                   b"https://127.0.0.1:%d" % (t.admin_port + 1)):
        status, _, answer = admin_raw(
            t, b"PUT /api/v1/ratio HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: %s\r\n"
               b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
               % (t.admin_port, origin, len(body), body))
        assert status == 403, (origin, answer)
        assert "cross-origin" in answer["error"]
    assert weights(t) == {"blue": 50, "green": 50}


def test_admin_without_token_serves_its_own_names_and_origin(backends, td):
    t = td(two_colours(backends))
    p = t.admin_port
    for host in (b"127.0.0.1:%d" % p, b"localhost:%d" % p, b"LOCALHOST:%d" % p, b"[::1]:%d" % p):
        status, _, answer = admin_raw(t, b"GET /api/v1/state HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert status == 200, (host, answer)
    body = b'{"blue": 0, "green": 100}'
    status, _, answer = admin_raw(
        t, b"PUT /api/v1/ratio HTTP/1.1\r\nHost: localhost:%d\r\nOrigin: http://localhost:%d\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (p, p, len(body), body))
    assert status == 200, answer
    assert weights(t) == {"blue": 0, "green": 100}
    # tdctl (libcurl: Host 127.0.0.1:PORT, no Origin) still drives td
    r = subprocess.run([TDCTL, "--admin", t.admin, "ratio", "blue=50", "green=50"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert weights(t) == {"blue": 50, "green": 50}


def test_admin_with_token_accepts_any_host(backends, td):
    """With a token the token is the protection: other names (a DNS name of the machine) work."""
    t = td(two_colours(backends), token="s3cret")
    status, _, answer = admin_raw(
        t, b"GET /api/v1/state HTTP/1.1\r\nHost: td.internal:9090\r\n"
           b"Authorization: Bearer s3cret\r\n\r\n")
    assert status == 200, answer


def test_console_is_sent_with_csp_and_frame_options(backends, td):
    t = td(two_colours(backends))
    status, h, page = admin_raw(t, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % t.admin_port)
    assert status == 200
    assert h.get("X-Frame-Options") == "DENY"
    csp = h.get("Content-Security-Policy")
    assert csp, h.items
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["connect-src"] == ["'self'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    # the page's inline script and style are allowed by their hashes, nothing else
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        bodies = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S)
        assert bodies
        want = ["'sha256-%s'" % base64.b64encode(hashlib.sha256(b).digest()).decode()
                for b in bodies]
        assert directives[directive] == want


def write_config(cfg):
    d = tempfile.mkdtemp(prefix="td-sec-")
    path = os.path.join(d, "td.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def minimal(**extra):
    cfg = {"listeners": [{"address": f"127.0.0.1:{free_port()}"}],
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "127.0.0.1:9"}]}]}
    cfg.update(extra)
    return cfg


def check(cfg):
    path = write_config(cfg)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr, path


def test_check_warns_when_admin_is_open_beyond_loopback():
    rc, out, _ = check(minimal(admin={"address": f"0.0.0.0:{free_port()}"}))
    assert rc == 0, out
    assert "configuration OK" in out
    assert "warning" in out and "reachable beyond loopback" in out and "admin.token" in out
    for admin in ({"address": f"0.0.0.0:{free_port()}", "token": "t"},
                  {"address": f"127.0.0.1:{free_port()}"}, {"address": f"[::1]:{free_port()}"}):
        rc, out, _ = check(minimal(admin=admin))
        assert rc == 0 and "beyond loopback" not in out, (admin, out)


# ---------------------------------------------------------------------------------------------
# Sticky cookie attributes


def sticky_set_cookie(h):
    for v in h.get_all("Set-Cookie"):
        if v.startswith("TDSTICKY="):
            return [a.strip() for a in v.split(";")]
    raise AssertionError(f"no TDSTICKY Set-Cookie in {h.items}")


def test_sticky_cookie_is_httponly_samesite_lax_and_not_secure_on_plain_http(backends, td):
    t = one_backend(backends, td)
    t.api("PUT", "/api/v1/routing", {"method": "sticky"})
    status, h, _ = raw_exchange(t.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 200
    attrs = sticky_set_cookie(h)
    assert "HttpOnly" in attrs and "SameSite=Lax" in attrs and "Path=/" in attrs
    assert "Secure" not in attrs


def test_sticky_cookie_attributes_follow_the_config(backends, td):
    t = one_backend(backends, td)
    status, cfg = t.api("GET", "/api/v1/config")
    cfg["routing"]["method"] = "sticky"
    cfg["routing"]["cookie"].update(http_only=False, same_site="None", secure=True)
    status, body = t.api("PUT", "/api/v1/config", cfg)
    assert status == 200, body
    status, h, _ = raw_exchange(t.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    attrs = sticky_set_cookie(h)
    assert "HttpOnly" not in attrs and "SameSite=None" in attrs and "Secure" in attrs
    # written back as set
    status, back = t.api("GET", "/api/v1/config")
    c = back["routing"]["cookie"]
    assert (c["http_only"], c["same_site"], c["secure"]) == (False, "None", True)


def make_cert(d):
    cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], check=True, capture_output=True, timeout=60)
    return cert, key


def test_sticky_cookie_is_secure_on_a_tls_listener(backends, td):
    d = tempfile.mkdtemp(prefix="td-sec-tls-")
    cert, key = make_cert(d)
    b = backends(("blue", 1))
    tls_port = free_port()
    cfg = backend_cfg({"blue": (100, b.ports["blue"])}, method="sticky")
    t = TwoListenerTd(dict(cfg, listeners=[{"address": f"127.0.0.1:{free_port()}"},
                                           {"address": f"127.0.0.1:{tls_port}",
                                            "tls": {"certificates": [{"cert": cert,
                                                                      "key": key}]}}]))
    try:
        check_secure_cookie_on_tls(t, tls_port)
    finally:
        rc = t.stop()
    assert rc == 0, t.proc.output()[-3000:]


class TwoListenerTd(Td):
    """A td whose config brings its own listeners; waits for all of them and the admin port."""

    def __init__(self, cfg):  # pylint: disable=super-init-not-called
        ports = [int(l["address"].rsplit(":", 1)[1]) for l in cfg["listeners"]]
        self.port, self.admin_port, self.token = ports[0], free_port(), None
        cfg = dict(cfg, workers=2, admin={"address": f"127.0.0.1:{self.admin_port}"})
        self.dir = tempfile.mkdtemp(prefix="td-sec-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        for p in ports + [self.admin_port]:
            wait_port(p)


def check_secure_cookie_on_tls(t, tls_port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    h = Headers([tuple(x.strip() for x in line.split(":", 1)) for line in head[1:]])
    attrs = sticky_set_cookie(h)
    assert "Secure" in attrs and "HttpOnly" in attrs and "SameSite=Lax" in attrs
    # ... and not on the plain listener of the same td
    status, h, _ = raw_exchange(t.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert "Secure" not in sticky_set_cookie(h)


def position(path, needle):
    """1-based line:col of the first `needle` in the file."""
    text = open(path).read()
    i = text.index(needle)
    line = text.count("\n", 0, i) + 1
    col = i - (text.rfind("\n", 0, i) + 1) + 1
    return f"{line}:{col}"


def test_cookie_same_site_none_without_secure_is_a_config_error():
    rc, out, path = check(minimal(routing={"cookie": {"same_site": "None", "secure": False}}))
    assert rc == 1
    assert f"{path}:{position(path, chr(34) + 'None')}: routing.cookie.same_site" in out, out
    assert "Secure" in out
    # secure "auto" on a plain listener cannot set Secure either
    rc, out, path = check(minimal(routing={"cookie": {"same_site": "None"}}))
    assert rc == 1 and "listeners[0] is plain HTTP" in out, out
    rc, out, path = check(minimal(routing={"cookie": {"same_site": "lax"}}))
    assert rc == 1 and "routing.cookie.same_site" in out and "Lax" in out, out
    rc, out, path = check(minimal(routing={"cookie": {"secure": "yes"}}))
    assert rc == 1 and f"{path}:{position(path, chr(34) + 'yes')}" in out, out
    rc, out, path = check(minimal(routing={"cookie": {"http_only": 1}}))
    assert rc == 1 and "routing.cookie.http_only" in out, out
    rc, out, _ = check(minimal(routing={"cookie": {"same_site": "None", "secure": True,
                                                   "http_only": False}}))
    assert rc == 0, out


# ---------------------------------------------------------------------------------------------
# Request and response heads


@pytest.mark.parametrize("name", [b"Content_Length", b"content_length", b"CONTENT_LENGTH",
                                  b"Transfer_Encoding", b"Transfer_encoding"])
def test_framing_field_spelled_with_underscore_is_refused_with_400(backends, td, name):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n%s: 12\r\n\r\nhello"
               % name)
        status, h, _ = c.read_response()
    assert status == 400
    assert h.get("X-TD-Demo-Backend") is None
    assert "with \"_\"" in t.proc.output()


def test_other_underscore_names_pass(backends, td):
    t = one_backend(backends, td)
    status, _, body = raw_exchange(t.port, b"GET /headers HTTP/1.1\r\nHost: h\r\nX_Trace: 1\r\n\r\n")
    assert status == 200
    assert request_fields(body)[1].get_all("X_Trace") == ["1"]


@pytest.mark.parametrize("fields", [b"Content-Length: 5\r\nContent-Length: 5\r\n",
                                    b"Content-Length: 5, 5\r\n",
                                    b"Content-Length: 5,5\r\ncontent-length: 5\r\n"])
def test_repeated_content_length_reaches_the_backend_as_one_field(backends, td, fields):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /headers HTTP/1.1\r\nHost: h\r\n%s\r\nhello" % fields)
        status, _, body = c.read_response()
        assert status == 200
        _, h = request_fields(body)
        assert h.get_all("Content-Length") == ["5"], h.items
        # the connection is still in step: the body was framed by that one length
        c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response()[2] == b"abc"


class _DupLengthBackend(socketserver.BaseRequestHandler):
    """Answers every request with the same Content-Length twice (identical values)."""

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
                head, buf = buf.split(b"\r\n\r\n", 1)
                if head.startswith(b"HEAD"):
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                         b"Content-Length: 2\r\n\r\n")
                else:
                    self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n"
                                         b"X-End: kept\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def dup_length_backend():
    srv = _Server(("127.0.0.1", 0), _DupLengthBackend)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_repeated_content_length_reaches_the_client_as_one_field(dup_length_backend, td):
    t = td(backend_cfg({"blue": (100, [dup_length_backend])}))
    with RawConn(t.port) as c:
        for _ in range(2):
            c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            status, h, body = c.read_response()
            assert (status, body) == (200, b"ok")
            assert h.get_all("Content-Length") == ["2"], h.items
            assert h.get_all("X-End") == ["kept"]
        c.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, h, _ = c.read_response(head_request=True)
        assert status == 200 and h.get_all("Content-Length") == ["2"], h.items


def test_absolute_form_authority_with_userinfo_or_quote_is_refused(backends, td):
    t = one_backend(backends, td)
    for target in (b'http://a"b,c@evil/headers', b"http://user@evil/headers",
                   b"http:///headers", b"http://h:80x/headers"):
        status, h, _ = raw_exchange(t.port, b"GET %s HTTP/1.1\r\nHost: good\r\n\r\n" % target)
        assert status == 400, target
        assert h.get("X-TD-Demo-Backend") is None
    assert "invalid authority" in t.proc.output()
    # a valid one still becomes the Host
    status, _, body = raw_exchange(t.port, b"GET http://shop.example:81/headers HTTP/1.1\r\n"
                                           b"Host: good\r\n\r\n")
    assert status == 200
    line, h = request_fields(body)
    assert line.startswith("GET /headers ")
    assert h.get_all("Host") == ["shop.example:81"]


def test_empty_host_is_refused_and_never_forwarded_twice(backends, td):
    """nginx answers an empty Host with 400 ("client sent invalid host header"): td does too,
    rather than forward a request with no host (or add a second Host field to it)."""
    t = one_backend(backends, td)
    for req in (b"GET /headers HTTP/1.1\r\nHost:\r\n\r\n",
                b"GET /headers HTTP/1.0\r\nHost: \r\n\r\n"):
        status, h, _ = raw_exchange(t.port, req)
        assert status == 400, req
        assert h.get("X-TD-Demo-Backend") is None
    # an empty Host with an absolute-form target: the authority is the one Host
    status, _, body = raw_exchange(t.port, b"GET http://a.example/headers HTTP/1.1\r\nHost:\r\n\r\n")
    assert status == 200
    assert request_fields(body)[1].get_all("Host") == ["a.example"]
    # HTTP/1.0 without Host gets exactly one
    status, _, body = raw_exchange(t.port, b"GET /headers HTTP/1.0\r\n\r\n")
    assert status == 200
    assert len(request_fields(body)[1].get_all("Host")) == 1
    status, _, body = raw_exchange(t.port, b"GET /headers HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request_fields(body)[1].get_all("Host") == ["h"]
