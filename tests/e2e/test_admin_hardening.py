"""The admin API's read-only token (admin.read_token) and the admin API over TLS (admin.tls)."""
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import (ASAN, TD, TDCTL, TDCTL_ENV, Proc, backend_cfg, free_port, needs_console,
                      reload_config, run_console, wait_port)

TOKEN = "full-s3cret"
READ = "dashboard-r3ad"


def start(backends, td, **admin):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])})
    t = td(cfg, token=TOKEN)
    if admin:
        reload_config(t, lambda c: c["admin"].update(admin))
    return t


def comparable(state):
    """What a change would alter in GET /api/v1/state (not the live counters)."""
    return (state["method"], state["version"],
            {b["name"]: (b["weight"], b.get("state")) for b in state["backends"]})


def test_the_read_token_reads_everything_and_changes_nothing(backends, td):
    t = start(backends, td, read_token=READ)
    for path in ("/api/v1/state", "/api/v1/config", "/api/v1/overrides", "/api/v1/events",
                 "/api/v1/history", "/api/v1/backends/blue", "/metrics"):
        status, body = t.api("GET", path, token=READ)
        assert status == 200, (path, body)
    status, body = t.api("HEAD", "/api/v1/state", token=READ)
    assert status == 200
    before = comparable(t.state())
    with open(t.config_path) as f:
        doc = json.load(f)
    refused = "the read-only token cannot change anything (admin.read_token)"
    for method, path, body in (
            ("PUT", "/api/v1/ratio", {"blue": 0, "green": 100}),
            ("PUT", "/api/v1/routing", {"method": "sticky"}),
            ("PUT", "/api/v1/config", doc),
            ("PUT", "/api/v1/backends/blue", {"state": "drain"}),
            ("POST", "/api/v1/rollout", {"to": "green", "steps": [100], "step_s": 1}),
            ("POST", "/api/v1/rollout/abort", {}),
            ("DELETE", "/api/v1/overrides", None)):
        status, answer = t.api(method, path, body, token=READ)
        assert (status, answer) == (403, {"error": refused}), (method, path, status, answer)
    assert comparable(t.state()) == before
    # The full token still changes things; a wrong one is refused.
    assert t.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})[0] == 200
    assert t.api("GET", "/api/v1/state", token="wrong")[0] == 401
    assert t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100}, token="wrong")[0] == 401


def test_get_config_with_the_read_token_shows_neither_token(backends, td):
    t = start(backends, td, read_token=READ)
    for q in ("", "?source=file"):
        status, text = t.api("GET", "/api/v1/config" + q, token=READ)
        assert status == 200
        raw = json.dumps(text)
        assert READ not in raw and TOKEN not in raw, raw
    # With the full token: the admin section that runs, as before (both tokens in force).
    status, doc = t.api("GET", "/api/v1/config")
    assert doc["admin"]["token"] == TOKEN and doc["admin"]["read_token"] == READ, doc["admin"]


def test_tdctl_with_the_read_token_reads_and_shows_the_403_on_a_change(backends, td):
    t = start(backends, td, read_token=READ)
    env = dict(TDCTL_ENV, TD_TOKEN=READ)
    r = subprocess.run([TDCTL, "--admin", t.admin, "status"], capture_output=True, text=True,
                       timeout=60 * (3 if ASAN else 1), env=env)
    assert r.returncode == 0, r.stderr
    assert "blue" in r.stdout
    r = subprocess.run([TDCTL, "--admin", t.admin, "--token", READ, "ratio", "blue=0",
                        "green=100"], capture_output=True, text=True,
                       timeout=60 * (3 if ASAN else 1), env=TDCTL_ENV)
    assert r.returncode != 0
    assert "the read-only token cannot change anything (admin.read_token)" in r.stderr, r.stderr
    assert comparable(t.state())[2]["blue"][0] == 100


def test_a_removed_read_token_stays_in_force_until_restart(backends, td):
    t = start(backends, td, read_token=READ)
    reload_config(t, lambda c: c["admin"].pop("read_token"))
    assert "admin.read_token removed; it applies at the next restart" in t.proc.output()
    assert t.api("GET", "/api/v1/state", token=READ)[0] == 200
    # A new one replaces it at once.
    reload_config(t, lambda c: c["admin"].update(read_token="another-one"))
    assert t.api("GET", "/api/v1/state", token="another-one")[0] == 200
    assert t.api("GET", "/api/v1/state", token=READ)[0] == 401


def write_config(cfg):
    d = tempfile.mkdtemp(prefix="td-e2e-")
    path = os.path.join(d, "td.json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def check(cfg):
    path = write_config(cfg)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout + r.stderr, path


def position(path, needle):
    """1-based line:col of the first `needle` in the file."""
    text = open(path).read()
    i = text.index(needle)
    return f"{text.count(chr(10), 0, i) + 1}:{i - (text.rfind(chr(10), 0, i) + 1) + 1}"


def minimal(admin):
    return {"listeners": [{"address": "127.0.0.1:18080"}],
            "admin": admin,
            "backends": [{"name": "blue", "weight": 100,
                          "servers": [{"address": "127.0.0.1:19001"}]}]}


def test_a_read_token_without_a_token_is_a_config_error():
    rc, out, path = check(minimal({"address": "127.0.0.1:19090", "read_token": READ}))
    assert rc == 1, out
    assert f"{path}:{position(path, chr(34) + 'read_token')}: " in out, out
    assert "admin.read_token without admin.token means nothing" in out, out
    assert READ not in out
    rc, out, path = check(minimal({"address": "127.0.0.1:19090", "token": TOKEN,
                                   "read_token": TOKEN}))
    assert rc == 1 and "the same as admin.token" in out and TOKEN not in out, out
    rc, out, path = check(minimal({"address": "127.0.0.1:19090", "token": TOKEN,
                                   "read_token": READ}))
    assert rc == 0, out


# ---------------------------------------------------------------------------------------------
# admin.tls: the admin API and console over https.


def self_signed(d):
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command:
    (cert, key) paths in directory d."""
    cert, key = os.path.join(d, "admin.pem"), os.path.join(d, "admin.key")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "30", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return cert, key


class TlsAdminTd:
    def __init__(self, backends, token=None):
        b = backends(("blue", 1), ("green", 1))
        self.dir = tempfile.mkdtemp(prefix="td-e2e-")
        self.cert, self.key = self_signed(self.dir)
        self.port, self.admin_port = free_port(), free_port()
        cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                          listeners=[{"address": f"127.0.0.1:{self.port}"}], workers=1)
        cfg["admin"] = {"address": f"127.0.0.1:{self.admin_port}",
                        "tls": {"certificates": [{"cert": self.cert, "key": self.key}]}}
        if token:
            cfg["admin"]["token"] = token
        self.token = token
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        wait_port(self.port)
        wait_port(self.admin_port)
        self.admin = f"https://127.0.0.1:{self.admin_port}"

    def request(self, method, path, body=None, headers=None, cafile=None):
        ctx = ssl.create_default_context(cafile=cafile or self.cert)
        c = http.client.HTTPSConnection("127.0.0.1", self.admin_port, timeout=10, context=ctx)
        h = dict(headers or {})
        if self.token:
            h.setdefault("Authorization", f"Bearer {self.token}")
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers=h)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()


@pytest.fixture
def tls_admin(backends):
    started = []

    def start(token=None):
        t = TlsAdminTd(backends, token)
        started.append(t)
        return t

    yield start
    for t in started:
        rc = t.proc.stop()
        out = t.proc.output()
        assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def test_the_admin_api_and_console_over_https(tls_admin):
    t = tls_admin(token=TOKEN)
    status, body = t.request("GET", "/api/v1/state")
    assert status == 200 and json.loads(body)["backends"][0]["name"] == "blue", body
    status, page = t.request("GET", "/")
    assert status == 200 and "<html" in page.lower()
    status, body = t.request("PUT", "/api/v1/ratio", {"blue": 20, "green": 80})
    assert status == 200, body
    status, body = t.request("GET", "/metrics")
    assert status == 200 and "td_" in body
    # A keep-alive connection carries several requests, and a large body arrives whole.
    ctx = ssl.create_default_context(cafile=t.cert)
    c = http.client.HTTPSConnection("127.0.0.1", t.admin_port, timeout=10, context=ctx)
    with open(t.config_path) as f:
        doc = json.load(f)
    doc["backends"][0]["servers"][0]["weight"] = 1
    pad = json.dumps(doc)
    for _ in range(3):
        c.request("GET", "/api/v1/config", headers={"Authorization": f"Bearer {TOKEN}"})
        r = c.getresponse()
        assert r.status == 200 and len(r.read()) > 100
    c.request("PUT", "/api/v1/config", body=pad + " " * 200000,
              headers={"Authorization": f"Bearer {TOKEN}"})
    r = c.getresponse()
    assert r.status == 200, r.read()
    r.read()
    c.close()


def test_plain_http_to_the_tls_admin_port_fails_cleanly(tls_admin):
    t = tls_admin(token=TOKEN)
    with socket.create_connection(("127.0.0.1", t.admin_port), timeout=10) as s:
        s.sendall(b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"HTTP/1.1" not in data and b"backends" not in data
    # td goes on serving over https.
    assert t.request("GET", "/api/v1/state")[0] == 200
    # A client that does not trust the certificate is refused by its own check, td is fine.
    ctx = ssl.create_default_context()  # the system's CAs: the self-signed one is not among them
    c = http.client.HTTPSConnection("127.0.0.1", t.admin_port, timeout=10, context=ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        c.request("GET", "/api/v1/state")
    c.close()
    assert t.request("GET", "/api/v1/state")[0] == 200
    assert "admin: TLS from 127.0.0.1:" in t.proc.output()


def test_over_tls_the_origin_must_be_https_of_this_address(tls_admin):
    """Without a token the Origin check guards the admin API: over TLS the console's own page is
    https://127.0.0.1:PORT, which is taken; http:// of the same address is not."""
    t = tls_admin()
    ok = t.request("PUT", "/api/v1/ratio", {"blue": 30, "green": 70},
                   headers={"Origin": f"https://127.0.0.1:{t.admin_port}"})
    assert ok[0] == 200, ok
    bad = t.request("PUT", "/api/v1/ratio", {"blue": 0, "green": 100},
                    headers={"Origin": f"http://127.0.0.1:{t.admin_port}"})
    assert bad[0] == 403 and "cross-origin" in bad[1], bad
    state = json.loads(t.request("GET", "/api/v1/state")[1])
    assert {b["name"]: b["weight"] for b in state["backends"]} == {"blue": 30, "green": 70}


def run_tdctl(*args, env=None):
    return subprocess.run([TDCTL, *args], capture_output=True, text=True,
                          timeout=60 * (3 if ASAN else 1), env=env or TDCTL_ENV)


def test_tdctl_over_https_verifies_the_admin_certificate(tls_admin):
    t = tls_admin(token=TOKEN)
    r = run_tdctl("--admin", t.admin, "--token", TOKEN, "--cacert", t.cert, "status")
    assert r.returncode == 0, r.stderr
    assert "blue" in r.stdout and "green" in r.stdout
    r = run_tdctl("--admin", t.admin, "--token", TOKEN, "status")
    assert r.returncode != 0
    assert f"cannot reach td at {t.admin}" in r.stderr and "certificate" in r.stderr, r.stderr
    r = run_tdctl("--admin", t.admin, "--token", TOKEN, "status",
                  env=dict(TDCTL_ENV, TD_CACERT=t.cert))
    assert r.returncode == 0, r.stderr
    r = run_tdctl("--admin", t.admin, "--token", TOKEN, "--insecure", "ratio", "blue=10",
                  "green=90")
    assert r.returncode == 0, r.stderr
    state = json.loads(t.request("GET", "/api/v1/state")[1])
    assert {b["name"]: b["weight"] for b in state["backends"]} == {"blue": 10, "green": 90}


def test_td_t_reports_a_bad_admin_certificate_path_at_its_place():
    missing = "/nonexistent/admin.pem"
    rc, out, path = check(minimal({"address": "127.0.0.1:19090", "token": TOKEN,
                                   "tls": {"certificates": [{"cert": missing,
                                                             "key": "/nonexistent/admin.key"}]}}))
    assert rc == 1, out
    at = position(path, chr(34) + missing)
    assert f"{path}:{at}: admin.tls.certificates[0].cert: {missing}: cannot read" in out, out
    rc, out, path = check(minimal({"address": "127.0.0.1:19090", "tls": {"bogus": 1}}))
    assert rc == 1 and f"{path}:{position(path, chr(34) + 'bogus')}:" in out, out


@needs_console
def test_the_console_works_over_https(tls_admin):
    """The same page over admin.tls: it loads, reads the state and applies a change (its own
    origin is https://, which the Origin check takes)."""
    t = tls_admin()
    seen = run_console("console.test.mjs", scenario="swap", url=t.admin + "/",
                       ignore_https_errors=True)
    assert seen["before"] == 100 and seen["message"].startswith("Applied: blue 0 % · green 100 %")
    state = json.loads(t.request("GET", "/api/v1/state")[1])
    assert {b["name"]: b["weight"] for b in state["backends"]} == {"blue": 0, "green": 100}


def tls_reload(t, edit):
    """Rewrites t's config with edit(cfg), sends SIGHUP, waits until td logs the new version (the
    admin API itself may have a new certificate by then)."""
    old = t.proc.output().count(" applied (reload of the config file)")
    with open(t.config_path) as f:
        cfg = json.load(f)
    edit(cfg)
    tmp = t.config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, t.config_path)
    t.proc.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while t.proc.output().count(" applied (reload of the config file)") == old:
        assert time.monotonic() < deadline, t.proc.output()[-2000:]
        time.sleep(0.02)


def test_admin_certificates_apply_on_reload_and_tls_off_waits_for_restart(tls_admin):
    t = tls_admin(token=TOKEN)
    new_dir = tempfile.mkdtemp(prefix="td-e2e-")
    cert2, key2 = self_signed(new_dir)
    tls_reload(t, lambda c: c["admin"]["tls"]["certificates"][0].update(cert=cert2, key=key2))
    # New connections get the new certificate: the old one no longer verifies it.
    assert t.request("GET", "/api/v1/state", cafile=cert2)[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        t.request("GET", "/api/v1/state", cafile=t.cert)
    t.cert = cert2
    tls_reload(t, lambda c: c["admin"].pop("tls"))
    assert "config: admin.tls turned off; it applies at the next restart" in t.proc.output()
    status, body = t.request("GET", "/api/v1/config")
    assert status == 200 and json.loads(body)["admin"]["tls"]["certificates"][0]["cert"] == cert2
