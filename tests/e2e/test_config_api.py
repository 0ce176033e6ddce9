"""End-to-end tests of td's configuration surface: the admin API (auth, ratio, routing, config),
persistence into the state file, `td -t -c FILE`, SIGHUP reloads, crash safety of API changes
(state file and audit log, temporary files, changes not applied) and the wording of config
errors.

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py) and every socket
and child process has a timeout."""
import http.client
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

from conftest import (Proc, TD, TDCTL, backend_cfg, free_port, get, get_once, one_backend, pos,
                      put_ratio_status, set_weights, start_td_file, two_colours_apart, wait_for,
                      wait_port, weights)

TIMEOUT = 10  # seconds, for every client socket


def colours(port, n):
    """Backends that answered n sequential requests on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    seen = []
    try:
        for _ in range(n):
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            seen.append(r.headers.get("X-TD-Demo-Backend"))
    finally:
        conn.close()
    return seen


def raw_api(t, method, path, headers=None, body=None):
    """An admin request with exactly these headers: (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        text = r.read().decode()
    finally:
        conn.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


def two_colours(backends, td, blue_w=50, green_w=50, method="round_robin", token=None):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (blue_w, b.ports["blue"]), "green": (green_w, b.ports["green"])},
                      method=method)
    return td(cfg, token=token) if token else td(cfg)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def assert_error_json(status, body, code=400):
    assert status == code, (status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


# ---- authentication ----

BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Bearer s3cre"},  # a prefix of the token
    {"Authorization": "Bearer s3cretX"},  # the token plus more
    {"Authorization": "Bearer S3CRET"},  # tokens are case sensitive
    {"Authorization": "Basic s3cret"},
    {"Authorization": "s3cret"},
    {"Authorization": "Bearer "},
]


def test_api_requires_token(backends, td):
    t = two_colours(backends, td, 50, 50, token="s3cret")
    before = t.state()
    file_before = read_file(t.config_path)
    put_body = json.dumps({"blue": 0, "green": 100})
    for hdrs in BAD_AUTH:
        for method, path, body in (("GET", "/api/v1/state", None),
                                   ("GET", "/api/v1/config", None),
                                   ("PUT", "/api/v1/ratio", put_body),
                                   ("PUT", "/api/v1/routing", json.dumps({"method": "sticky"})),
                                   ("PUT", "/api/v1/config", json.dumps({"backends": []})),
                                   ("GET", "/metrics", None)):
            status, resp = raw_api(t, method, path, hdrs, body)
            assert status == 401, (hdrs, method, path, status, resp)
            if path.startswith("/api/"):
                assert_error_json(status, resp, 401)
    after = t.state()
    assert after["version"] == before["version"]
    assert weights(after) == {"blue": 50, "green": 50}
    assert after["method"] == before["method"] == "round_robin"
    assert read_file(t.config_path) == file_before
    # The right token works.
    status, resp = raw_api(t, "PUT", "/api/v1/ratio", {"Authorization": "Bearer s3cret"}, put_body)
    assert status == 200, resp
    assert weights(t.state()) == {"blue": 0, "green": 100}


# ---- PUT /api/v1/ratio ----

BAD_RATIOS = [
    (b'{"purple": 10}', "unknown backend"),
    (b'{"blue": 101}', "over 100"),
    (b'{"blue": -1}', "negative"),
    (b'{"blue": "x"}', "a string"),
    (b'{"blue": "50"}', "a numeric string"),
    (b'{"blue": 10.5}', "a fraction"),
    (b'{"blue": null}', "null"),
    (b'{"blue": true}', "a boolean"),
    (b"not json", "not JSON"),
    (b'{"blue": 0, ', "truncated JSON"),
    (b"{}", "empty object"),
    (b"[]", "an array"),
    (b'[{"blue": 0}]', "an array of an object"),
    (b"", "empty body"),
    (b'{"blue": 0, "purple": 5}', "one good key and one unknown: nothing may change"),
    (b'{"blue": 0, "green": 101}', "one good weight and one bad: nothing may change"),
]


def test_bad_ratio_bodies_are_rejected_and_change_nothing(backends, td):
    t = two_colours(backends, td, 50, 50)
    before = t.state()
    file_before = read_file(t.config_path)
    for raw, why in BAD_RATIOS:
        status, resp = t.api("PUT", "/api/v1/ratio", raw=raw)
        assert status == 400, (why, raw, status, resp)
        assert_error_json(status, resp)
        s = t.state()
        assert s["version"] == before["version"], (why, raw, s["version"])
        assert weights(s) == {"blue": 50, "green": 50}, (why, raw, weights(s))
    assert read_file(t.config_path) == file_before
    # Traffic still follows 50/50.
    seen = colours(t.port, 20)
    assert seen.count("blue") == 10 and seen.count("green") == 10, seen


def test_good_ratio_applies_and_bumps_version(backends, td):
    t = two_colours(backends, td, 50, 50)
    v0 = t.state()["version"]
    s = t.set_ratio(blue=0, green=100)
    assert weights(s) == {"blue": 0, "green": 100}
    assert s["version"] > v0
    assert t.state()["version"] == s["version"]
    # A partial body changes only the backends named.
    s = t.set_ratio(blue=25)
    assert weights(s) == {"blue": 25, "green": 100}


# ---- PUT /api/v1/routing ----

def test_put_routing(backends, td):
    t = two_colours(backends, td, 50, 50)
    s0 = t.state()
    assert s0["method"] == "round_robin"
    status, _, _ = get_once(t.port)
    assert status == 200
    status, resp = t.api("PUT", "/api/v1/routing", {"method": "sticky"})
    assert status == 200, resp
    s1 = t.state()
    assert s1["method"] == "sticky" and s1["version"] > s0["version"]
    status, h, _ = get_once(t.port)
    assert status == 200 and any(v.startswith("TDSTICKY=") for v in h.get_all("Set-Cookie") or []), \
        h.items()
    for bad in (b'{"method": "random"}', b'{"method": 1}', b'{"mode": "sticky"}', b"{}",
                b'{"method": "failover", "x": 1}', b"sticky", b""):
        status, resp = t.api("PUT", "/api/v1/routing", raw=bad)
        assert_error_json(status, resp)
        s = t.state()
        assert s["method"] == "sticky" and s["version"] == s1["version"], (bad, s)
    status, resp = t.api("PUT", "/api/v1/routing", {"method": "failover"})
    assert status == 200, resp
    s2 = t.state()
    assert s2["method"] == "failover" and s2["version"] > s1["version"]
    # Failover at 50/50: ties go to the first listed backend.
    assert colours(t.port, 10) == ["blue"] * 10


# ---- GET/PUT /api/v1/config ----

def test_get_and_put_config(backends, td):
    t = two_colours(backends, td, 100, 0)
    s0 = t.state()
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200, cfg
    assert isinstance(cfg, dict)
    assert {b["name"]: b["weight"] for b in cfg["backends"]} == {"blue": 100, "green": 0}
    assert cfg["routing"]["method"] == "round_robin"
    file_before = read_file(t.config_path)

    # A bad document: an unknown key and a wrong type, each reported at its line:col.
    bad = json.loads(json.dumps(cfg))
    bad["backends"][0]["colour"] = "blue"
    bad["backends"][1]["weight"] = "lots"
    text = json.dumps(bad, indent=2)
    unk_line, unk_col = pos(text, '"colour"')
    typ_line, typ_col = pos(text, '"lots"')
    status, resp = t.api("PUT", "/api/v1/config", raw=text.encode())
    assert_error_json(status, resp)
    err = resp["error"]
    assert f"request:{unk_line}:{unk_col}: " in err, err
    assert f"request:{typ_line}:{typ_col}: " in err, err
    assert err.index(f"request:{unk_line}:{unk_col}:") < err.index(f"request:{typ_line}:{typ_col}:")

    # A syntax error.
    good_text = json.dumps(cfg, indent=2)
    i = good_text.index('"routing"')
    syn = good_text[:i] + "," + good_text[i:]  # a second comma before "routing"
    line, col = pos(syn, ',"routing"')
    status, resp = t.api("PUT", "/api/v1/config", raw=syn.encode())
    assert_error_json(status, resp)
    assert f"request:{line}:{col}: " in resp["error"], (line, col, resp)

    # Not an object, and nothing at all.
    for raw in (b"[]", b"", b"42"):
        status, resp = t.api("PUT", "/api/v1/config", raw=raw)
        assert_error_json(status, resp)

    # Nothing changed.
    s = t.state()
    assert s["version"] == s0["version"] and weights(s) == {"blue": 100, "green": 0}
    status, cfg_again = t.api("GET", "/api/v1/config")
    assert status == 200 and cfg_again == cfg
    assert read_file(t.config_path) == file_before
    assert colours(t.port, 10) == ["blue"] * 10

    # A good document applies at once, bumps the version and is persisted.
    new = json.loads(json.dumps(cfg))
    for b in new["backends"]:
        b["weight"] = {"blue": 0, "green": 100}[b["name"]]
    new["routing"]["method"] = "sticky"
    status, resp = t.api("PUT", "/api/v1/config", new)
    assert status == 200, resp
    s = t.state()
    assert s["version"] > s0["version"]
    if isinstance(resp, dict) and "version" in resp:
        assert resp["version"] == s["version"]
    assert weights(s) == {"blue": 0, "green": 100} and s["method"] == "sticky"
    status, cfg_now = t.api("GET", "/api/v1/config")
    assert status == 200
    assert {b["name"]: b["weight"] for b in cfg_now["backends"]} == {"blue": 0, "green": 100}
    assert colours(t.port, 10) == ["green"] * 10
    # Kept in the state file; the operator's config file is never written.
    assert read_file(t.config_path) == file_before
    with open(t.config_path + ".state.json") as f:
        kept = {o["path"]: o["value"] for o in json.load(f)["overrides"]}
    assert kept["backends.blue.weight"] == 0 and kept["backends.green.weight"] == 100, kept
    assert kept["routing.method"] == "sticky", kept


# ---- persistence ----

def test_api_changes_are_persisted_and_survive_restart(backends, td):
    t = two_colours(backends, td, 50, 50)
    file_before = read_file(t.config_path)
    t.set_ratio(blue=20, green=80)
    status, resp = t.api("PUT", "/api/v1/routing", {"method": "failover"})
    assert status == 200, resp
    # The changes are in the state file; the config file is not written.
    assert read_file(t.config_path) == file_before
    with open(t.config_path + ".state.json") as f:
        kept = {o["path"]: o["value"] for o in json.load(f)["overrides"]}
    assert kept == {"backends.blue.weight": 20, "backends.green.weight": 80,
                    "routing.method": "failover"}, kept
    # No temp file left next to it (written as a temp file, then renamed over it).
    left = [n for n in os.listdir(os.path.dirname(t.config_path)) if "tmp" in n.lower()]
    assert left == [], left
    # A restart keeps the changes.
    assert t.stop() == 0
    p2 = Proc([TD, "-c", t.config_path], "td-restart")
    try:
        wait_port(t.port)
        wait_port(t.admin_port)
        s = t.state()
        assert weights(s) == {"blue": 20, "green": 80} and s["method"] == "failover"
        assert colours(t.port, 5) == ["green"] * 5  # failover: the highest weight wins
    finally:
        assert p2.stop() == 0, p2.output()[-4000:]


# ---- td -t -c FILE ----

def config_text(port_a=18080, port_b=19090, blue="blue", extra_blue="", green_weight="50",
                extra_root=""):
    """A config file's text, one item per line so positions are easy to compute."""
    return (
        "{\n"
        f'  "listeners": [{{"address": "127.0.0.1:{port_a}"}}],\n'
        f'  "admin": {{"address": "127.0.0.1:{port_b}"}},\n'
        '  "routing": {"method": "round_robin"},\n'
        "  \"backends\": [\n"
        f'    {{"name": "{blue}", "weight": 50, {extra_blue}"servers": [{{"address": "127.0.0.1:19001"}}]}},\n'
        f'    {{"name": "green", "weight": {green_weight}, "servers": [{{"address": "127.0.0.1:19002"}}]}}\n'
        "  ]" + extra_root + "\n"
        "}\n"
    )


def check(text):
    d = tempfile.mkdtemp(prefix="td-e2e-check-")
    path = os.path.join(d, "td.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return path, p


def error_lines(p):
    return [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]


def test_check_ok_file():
    path, p = check(config_text())
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.strip() == "configuration OK", p.stdout
    assert p.stderr.strip() == "", p.stderr


def test_check_unknown_key():
    text = config_text(extra_blue='"colour": "blue", ')
    path, p = check(text)
    line, col = pos(text, '"colour"')
    assert (line, col) == (6, 36)  # sanity of the helper
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:{col}: "), lines
    assert "colour" in lines[0]


def test_check_unknown_root_key():
    text = config_text(extra_root=',\n  "timeout": {"connect_ms": 100}')
    path, p = check(text)
    line, col = pos(text, '"timeout"')
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:{col}: "), lines


def test_check_wrong_type():
    text = config_text(green_weight='"50"')
    path, p = check(text)
    line, col = pos(text, '"50"')
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:{col}: "), lines


def test_check_columns_count_utf8_characters():
    text = config_text(extra_blue='"färbe": "grün", "x": 1, ')
    path, p = check(text)
    l1, c1 = pos(text, '"färbe"')
    l2, c2 = pos(text, '"x"')  # a character column: ä and ü count as one each
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}:{l1}:{c1}: "), lines
    assert lines[1].startswith(f"{path}:{l2}:{c2}: "), lines


def test_check_syntax_error():
    text = config_text().replace('"weight": 50, "servers"', '"weight": 50,, "servers"', 1)
    path, p = check(text)
    line, col = pos(text, ",,")
    col += 1  # the second comma is the unexpected token
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}:{col}: "), lines


def test_check_reports_every_problem_in_order():
    text = config_text(extra_blue='"colour": "blue", ', green_weight="101")
    path, p = check(text)
    l1, c1 = pos(text, '"colour"')
    l2, c2 = pos(text, "101")
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = error_lines(p)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}:{l1}:{c1}: "), lines
    assert lines[1].startswith(f"{path}:{l2}:{c2}: "), lines


# ---- SIGHUP ----

def wait_version(t, above, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = t.state()
        if s["version"] > above:
            return s
        time.sleep(0.02)
    return t.state()


def wait_log(t, needle, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in t.proc.output():
            return True
        time.sleep(0.02)
    return False


def test_sighup_applies_edited_file(backends, td):
    t = two_colours(backends, td, 100, 0)
    assert colours(t.port, 5) == ["blue"] * 5
    v0 = t.state()["version"]
    with open(t.config_path) as f:
        cfg = json.load(f)
    for b in cfg["backends"]:
        b["weight"] = {"blue": 0, "green": 100}[b["name"]]
    with open(t.config_path, "w") as f:
        json.dump(cfg, f, indent=2)
    t.proc.p.send_signal(signal.SIGHUP)
    s = wait_version(t, v0)
    assert s["version"] > v0, "SIGHUP did not apply the edited file"
    assert weights(s) == {"blue": 0, "green": 100}
    assert colours(t.port, 10) == ["green"] * 10


def test_sighup_with_bad_file_keeps_running_config(backends, td):
    t = two_colours(backends, td, 100, 0)
    v0 = t.state()["version"]
    with open(t.config_path) as f:
        good = json.load(f)
    bad = json.loads(json.dumps(good))
    for b in bad["backends"]:
        b["weight"] = {"blue": 0, "green": 100}[b["name"]]  # a ratio change that must not apply
    bad["backends"][0]["colour"] = "blue"
    bad["backends"][1]["weight"] = "lots"
    text = json.dumps(bad, indent=2)
    l1, c1 = pos(text, '"colour"')
    l2, c2 = pos(text, '"lots"')
    with open(t.config_path, "w") as f:
        f.write(text)
    t.proc.p.send_signal(signal.SIGHUP)
    assert wait_log(t, f"{t.config_path}:{l2}:{c2}:"), t.proc.output()[-3000:]
    log = t.proc.output()
    assert f"{t.config_path}:{l1}:{c1}:" in log, log[-3000:]
    s = t.state()
    assert s["version"] == v0 and weights(s) == {"blue": 100, "green": 0}
    assert colours(t.port, 10) == ["blue"] * 10

    # A syntax error is rejected the same way.
    syn = text.replace('"lots"', "50,", 1)  # "weight": 50,, -- a doubled comma
    i = syn.index("50,,") + 3  # the second comma is the unexpected token
    line, col = syn.count("\n", 0, i) + 1, i - syn.rfind("\n", 0, i)
    with open(t.config_path, "w") as f:
        f.write(syn)
    mark = len(t.proc.output())
    t.proc.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "reload rejected" not in t.proc.output()[mark:]:
        time.sleep(0.02)
    new_log = t.proc.output()[mark:]
    assert f"{t.config_path}:{line}:{col}:" in new_log, new_log
    s = t.state()
    assert s["version"] == v0 and weights(s) == {"blue": 100, "green": 0}
    assert colours(t.port, 10) == ["blue"] * 10

    # Once the file is fixed, SIGHUP applies it.
    fixed = json.loads(json.dumps(good))
    for b in fixed["backends"]:
        b["weight"] = {"blue": 0, "green": 100}[b["name"]]
    with open(t.config_path, "w") as f:
        json.dump(fixed, f, indent=2)
    t.proc.p.send_signal(signal.SIGHUP)
    s = wait_version(t, v0)
    assert s["version"] > v0 and weights(s) == {"blue": 0, "green": 100}
    assert colours(t.port, 10) == ["green"] * 10


# ---- admin API: duplicate keys, 405 ----

def raw(t, method, path, body=None):
    """An admin request: (status, response headers, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode()
    finally:
        conn.close()


def test_ratio_with_a_duplicate_key_is_refused(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    before = t.state()
    status, _, text = raw(t, "PUT", "/api/v1/ratio", body='{"blue": 0, "blue": 10}')
    assert status == 400 and "duplicate" in json.loads(text)["error"], text
    after = t.state()
    assert after["version"] == before["version"]
    assert [x["weight"] for x in after["backends"]] == [50, 50]


def test_405_names_the_allowed_methods(backends, td):
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}))
    status, headers, _ = raw(t, "POST", "/api/v1/ratio", body="{}")
    assert status == 405 and headers.get("Allow") == "PUT"
    status, headers, _ = raw(t, "DELETE", "/api/v1/state")
    assert status == 405 and headers.get("Allow") == "GET, HEAD"


# ---- td -t -c FILE: the access log, the preview header ----

def check_cfg(cfg):
    """`td -t -c FILE` of the config dict cfg: (exit status, output with the path as FILE)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
        return p.returncode, (p.stdout + p.stderr).replace(path, "FILE")


def minimal(**extra):
    cfg = {"listeners": [{"address": "127.0.0.1:18080"}],
           "backends": [{"name": "blue", "weight": 1,
                         "servers": [{"address": "127.0.0.1:19001"}]}]}
    cfg.update(extra)
    return cfg


def test_check_refuses_an_access_log_that_cannot_be_written():
    rc, out = check_cfg(minimal(access_log="/nonexistent/dir/access.log"))
    assert rc == 1, out
    assert "access_log" in out and "cannot be written" in out, out
    rc, out = check_cfg(minimal(access_log="/tmp/td-access-check.log"))
    assert rc == 0, out


def test_check_refuses_a_preview_header_td_needs():
    rc, out = check_cfg(minimal(routing={"preview": {"header": "Host", "token": "t"}}))
    assert rc == 1 and "routing.preview.header" in out, out
    rc, out = check_cfg(minimal(routing={"preview": {"header": "X TD", "token": "t"}}))
    assert rc == 1 and "not a valid header name" in out, out


# ---- startup and persistence ----

def test_a_second_td_cannot_take_a_listening_address(backends, td):
    """SO_REUSEPORT would let another process share td's port silently: td refuses instead."""
    t = one_backend(backends, td)
    cfg = minimal()
    cfg["listeners"] = [{"address": f"127.0.0.1:{t.port}"}]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.run([TD, "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "address already in use" in p.stderr, p.stderr
    assert get(t.port)[0] == 200


def test_an_api_change_does_not_overwrite_edits_made_on_disk(backends, td):
    t = one_backend(backends, td)
    with open(t.config_path) as f:
        cfg = json.load(f)
    cfg["timeouts"]["drain_ms"] = 4321
    time.sleep(0.01)
    with open(t.config_path, "w") as f:
        json.dump(cfg, f)
    edited = read_file(t.config_path)
    # td never writes the config file, so a change cannot conflict with an edit on disk.
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 40})
    assert status == 200, body
    assert read_file(t.config_path) == edited  # the edit survives, byte for byte
    v = t.state()["version"]
    t.proc.p.send_signal(__import__("signal").SIGHUP)
    for _ in range(100):
        if t.state()["version"] > v:
            break
        time.sleep(0.05)
    # Both run: the edit from the file, the weight from the state file.
    status, cfg_now = t.api("GET", "/api/v1/config")
    assert cfg_now["timeouts"]["drain_ms"] == 4321
    assert [b["weight"] for b in cfg_now["backends"]] == [40]


# ---- API changes survive kill -9: state file and audit log stay a pair ----

def read_audit(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                out.append(json.loads(line))
    return out


def applied_changes(entries):
    """Audit entries of changes that ran: not named by a later {"not_applied": ID} record (nor
    such a record themselves)."""
    dropped = {e["not_applied"] for e in entries if "not_applied" in e}
    return [e for e in entries if "not_applied" not in e and
            (e.get("id") is None or e["id"] not in dropped)]


def temp_files(directory):
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n)


def file_weights(path):
    """The weights the config file at path and its state file (PATH.state.json) hold together."""
    with open(path) as f:
        w = {b["name"]: b["weight"] for b in json.load(f)["backends"]}
    if os.path.exists(path + ".state.json"):
        with open(path + ".state.json") as f:
            for o in json.load(f)["overrides"]:
                keys = o["keys"]
                if len(keys) == 3 and keys[0] == "backends" and keys[2] == "weight":
                    w[keys[1]] = o["value"]
    return w


def test_api_changes_killed_at_any_moment_are_always_audited(backends, tmp_path):
    """Rounds of API changes from 3 clients while td is killed with SIGKILL at a varied moment:
    after each restart every change the state file holds has its audit entry (and every change
    td acknowledged is there), and no temporary file of an interrupted write is left."""
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    cfg.update(listeners=[{"address": f"127.0.0.1:{port}"}], workers=1,
               admin={"address": f"127.0.0.1:{admin_port}"})
    config_path = str(tmp_path / "td.json")
    audit_path = config_path + ".audit.jsonl"
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2)
    rng = random.Random(20261201)
    # Every change sets a weight pair used once, so the file's weights name the change.
    pairs = [(x, y) for x in range(1, 101) for y in range(1, 101) if (x, y) != (50, 50)]
    rng.shuffle(pairs)
    pairs = iter(pairs[:200])
    lock = threading.Lock()
    acknowledged, refused = [], []
    rounds, per_round = 6, 30
    p = start_td_file(config_path, port, admin_port)
    try:
        for rnd in range(rounds):
            sent = [0]
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    with lock:
                        if sent[0] >= per_round:
                            return
                        pair = next(pairs, None)
                        sent[0] += 1
                    if pair is None:
                        return
                    w = {"blue": pair[0], "green": pair[1]}
                    status = put_ratio_status(admin_port, w)
                    if status is None:
                        return
                    with lock:
                        if status == 200:
                            acknowledged.append(w)
                        else:
                            refused.append((status, w))

            threads = [threading.Thread(target=client, daemon=True) for _ in range(3)]
            for th in threads:
                th.start()
            # Kill after a varied number of acknowledged changes (a change takes a few fsyncs).
            target = len(acknowledged) + rng.randint(1, per_round - 5)
            deadline = time.monotonic() + 20
            while len(acknowledged) < target and time.monotonic() < deadline \
                    and any(th.is_alive() for th in threads):
                time.sleep(0.001)
            time.sleep(rng.random() * 0.01)
            p.p.send_signal(signal.SIGKILL)
            p.p.wait(timeout=10)
            stop.set()
            for th in threads:
                th.join(timeout=TIMEOUT + 5)
            assert not any(th.is_alive() for th in threads)
            assert not refused, f"round {rnd}: changes refused: {refused}"

            p = start_td_file(config_path, port, admin_port)
            assert temp_files(str(tmp_path)) == [], f"round {rnd}: temporary files left"
            entries = read_audit(audit_path)
            changes = applied_changes(entries)
            in_file = file_weights(config_path)
            if changes:
                last = changes[-1]["after"]["weights"]
                assert last == in_file, (
                    f"round {rnd}: the config file holds {in_file}, the last audited change "
                    f"is {last}: a change was applied without its audit entry")
            else:
                assert in_file == {"blue": 50, "green": 50}, in_file
            audited = [e["after"]["weights"] for e in changes]
            missing = [w for w in acknowledged if w not in audited]
            assert not missing, f"round {rnd}: acknowledged but not audited: {missing}"
            # td itself agrees: it runs what the file holds, and its history ends with it.
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT)
            conn.request("GET", "/api/v1/state")
            state = json.loads(conn.getresponse().read())
            conn.close()
            assert {x["name"]: x["weight"] for x in state["backends"]} == in_file
        assert len(acknowledged) >= rounds, "too few changes went through to test anything"
    finally:
        rc = p.stop()
    assert rc == 0, p.output()[-3000:]
    assert temp_files(str(tmp_path)) == []


def sha256_of(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_start_removes_only_tds_own_temporary_files_next_to_the_config(backends, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    cfg.update(listeners=[{"address": f"127.0.0.1:{port}"}], workers=1,
               admin={"address": f"127.0.0.1:{admin_port}"})
    config_path = tmp_path / "td.json"
    config_path.write_text(json.dumps(cfg))
    # td writes only its state file (td.json.state.json), so only its temporary files are td's.
    ours = ["td.json.state.json.tmp-a1B2c3", "td.json.state.json.tmp-ZZZZZZ"]
    theirs = ["td.json.state.json.tmp-abc", "td.json.state.json.tmp-abcdefg",
              "other.json.tmp-a1B2c3", "td.json.state.json.tmp", "td.json.state.json.tmp-ab.de",
              "td.json.tmp-a1B2c3"]
    for n in ours + theirs:
        (tmp_path / n).write_text("{}")
    p = start_td_file(str(config_path), port, admin_port)
    try:
        left = sorted(n for n in os.listdir(tmp_path) if n not in ("td.json",))
        assert left == sorted(theirs + ["td.json.audit.jsonl"]) or left == sorted(theirs), left
        assert "removed 2 temporary files" in p.output()
    finally:
        assert p.stop() == 0


def test_change_audited_but_not_in_the_state_file_is_recorded_as_not_applied(backends, td,
                                                                            tmp_path):
    """As a stop between the audit append and the state file replace leaves it: the last entry
    names a new state text, and the state file is still the one from before. td says the change did not run,
    its history shows it, and tdctl rollback does not undo it."""
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    t = td(cfg)
    t.set_ratio(blue=30, green=70)  # a real change: rollback's target
    assert t.stop() == 0
    before_sha = sha256_of(t.config_path + ".state.json")
    audit_path = t.config_path + ".audit.jsonl"
    entries = read_audit(audit_path)
    last_id = entries[-1]["id"]
    pending = {"id": last_id + 1, "time": "2026-01-01T00:00:00.000Z", "what": "ratio blue=1 green=99",
               "before": {"method": "round_robin", "weights": {"blue": 30, "green": 70}},
               "after": {"method": "round_robin", "weights": {"blue": 1, "green": 99}},
               "client": "127.0.0.1", "version": 3, "config_sha256": "0" * 64,
               "before_sha256": before_sha}
    with open(audit_path, "a") as f:
        f.write(json.dumps(pending) + "\n")
        f.write('{"id": 99, "time": "cut off by a cra')  # a partial last line
    t.proc = Proc([TD, "-c", t.config_path], "td")
    wait_port(t.port)
    wait_port(t.admin_port)
    status, hist = t.api("GET", "/api/v1/history")
    assert status == 200
    assert hist[-2]["id"] == last_id + 1 and hist[-2]["applied"] is False, hist[-2:]
    assert hist[-1]["not_applied"] == last_id + 1
    assert hist[-1]["what"].startswith("not applied: ratio blue=1 green=99"), hist[-1]
    on_disk = read_audit(audit_path)  # every line whole again
    assert on_disk[-1]["not_applied"] == last_id + 1
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 30, "green": 70}
    r = subprocess.run([TDCTL, "--admin", t.admin, "history"], capture_output=True, text=True,
                       timeout=30)
    assert "ratio blue=1 green=99 [not applied]" in r.stdout, r.stdout
    r = subprocess.run([TDCTL, "--admin", t.admin, "rollback"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 50, "green": 50}
    # A second start finds the record and leaves the history as it is.
    assert t.stop() == 0
    n = len(read_audit(audit_path))
    t.proc = Proc([TD, "-c", t.config_path], "td")
    wait_port(t.admin_port)
    assert len(read_audit(audit_path)) == n


def test_hand_edit_after_an_api_change_is_not_taken_for_a_lost_change(backends, td):
    """The file edited by hand after the last API change (td stopped, or reloaded), even back to
    exactly what it was before that change: the change did run, and the history keeps it so.
    The file rewritten with the text td read is no edit: the override stays; an edit of the
    overridden weights wins at the next start."""
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    with open(t.config_path) as f:
        original = f.read()
    t.set_ratio(blue=30, green=70)
    # Back to the exact text from before the change, then a reload.
    with open(t.config_path, "w") as f:
        f.write(original)
    v = t.state()["version"]
    t.proc.p.send_signal(signal.SIGHUP)
    wait_for(lambda: t.state()["version"] > v, 10, what="reload")
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 30, "green": 70}
    assert t.stop() == 0
    # And an edit td never saw.
    cfg = json.loads(original)
    set_weights(cfg, blue=10, green=90)
    with open(t.config_path, "w") as f:
        json.dump(cfg, f)
    t.proc = Proc([TD, "-c", t.config_path], "td")
    wait_port(t.admin_port)
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 10, "green": 90}
    entries = read_audit(t.config_path + ".audit.jsonl")
    assert not [e for e in entries if "not_applied" in e], entries
    status, hist = t.api("GET", "/api/v1/history")
    assert status == 200 and all(e.get("applied", True) for e in hist), hist


# ---- config errors in plain words, with one position prefix ----


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
    t = td(two_colours_apart(backends))
    status, r = t.api("PUT", "/api/v1/config", raw=b'{"workers": tru}')
    assert status == 400 and r["error"].startswith("request:1:"), r
    assert "invalid value" in r["error"], r
    assert t.state()["version"] == 1


def test_api_body_errors_use_the_request_position_prefix(backends, td):
    t = td(two_colours_apart(backends))
    for path in ("/api/v1/ratio", "/api/v1/routing", "/api/v1/config"):
        status, r = t.api("PUT", path, raw=b'{"blue": 0,,}')
        assert status == 400, (path, r)
        assert r["error"].startswith("request:1:"), (path, r)
    assert t.state()["version"] == 1
