"""The admin API's read-only token (admin.read_token) and the admin API over TLS (admin.tls)."""
import json
import os
import subprocess
import tempfile

from conftest import TD, backend_cfg, reload_config, tdctl, TDCTL_ENV, TDCTL, ASAN

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
