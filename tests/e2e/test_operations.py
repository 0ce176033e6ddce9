"""End-to-end tests of td's operation outside the proxy data path, as a new user meets it: reloads
that remove sections (health checks, the admin section), the admin API's Host checks, the pid
file and the example configs."""
import http.client
import json
import os
import subprocess

from conftest import (ASAN, Proc, RawConn, TD, backend_cfg, free_port, get, get_once,
                      put_ratio_status, reload_config, server_state, start_td_file,
                      two_colours_apart, wait_for, wait_port)

SLACK = 2.0 if ASAN else 1.0
TIMEOUT = 10


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


def test_reload_removing_admin_keeps_showing_the_admin_in_force_without_address_warning(
        backends, td):
    t = td(two_colours_apart(backends), token="s3cret")
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
    t = td(two_colours_apart(backends))
    a = f"127.0.0.1:{t.admin_port}"
    for second in ("evil.com", a):
        status, _ = admin_raw(t, f"GET /api/v1/state HTTP/1.1\r\nHost: {a}\r\nHost: {second}\r\n")
        assert status == 400, second
    t2 = td(two_colours_apart(backends), token="s3cret")
    status, _ = admin_raw(t2, f"GET /api/v1/state HTTP/1.1\r\nHost: {a}\r\nHost: evil.com\r\n",
                          token="s3cret")
    assert status == 400


def test_admin_api_takes_an_absolute_form_authority_as_the_host(backends, td):
    t = td(two_colours_apart(backends))
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
    t2 = td(two_colours_apart(backends), token="s3cret")
    port2 = t2.admin_port
    status, body = admin_raw(
        t2, f"GET http://td.example:{port2}/api/v1/state HTTP/1.1\r\nHost: td.example\r\n",
        token="s3cret")
    assert status == 200 and "backends" in body, body
    status, body = admin_raw(
        t2, f"GET http://td.example:{port2}/api/v1/state HTTP/1.1\r\nHost: td.example\r\n")
    assert status == 401, body


# ---- pid file ----

def plain_cfg(b, port, admin_port, **extra):
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    cfg.update(listeners=[{"address": f"127.0.0.1:{port}"}], workers=1,
               admin={"address": f"127.0.0.1:{admin_port}"}, **extra)
    return cfg


def admin_get(admin_port, path):
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_pid_file_is_written_once_listening_and_removed_at_a_clean_stop(backends, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    pid_path = tmp_path / "run" / "td.pid"
    pid_path.parent.mkdir()
    config_path = tmp_path / "td.json"
    config_path.write_text(json.dumps(plain_cfg(b, port, admin_port, pid_file=str(pid_path))))
    p = start_td_file(str(config_path), port, admin_port)
    try:
        wait_for(pid_path.exists, 10, what="pid file")
        assert pid_path.read_text() == f"{p.pid}\n"
        assert [n for n in os.listdir(pid_path.parent)] == ["td.pid"]  # no temporary file left
        # The README's reload command works as written.
        v = admin_get(admin_port, "/api/v1/state")["version"]
        r = subprocess.run(f"kill -HUP $(cat {pid_path})", shell=True, timeout=10)
        assert r.returncode == 0
        wait_for(lambda: admin_get(admin_port, "/api/v1/state")["version"] > v, 10,
                 what="reload by kill -HUP $(cat PIDFILE)")
        # An API change writes the config back with its pid_file.
        status = put_ratio_status(admin_port, {"blue": 10, "green": 90})
        assert status == 200
        assert json.loads(config_path.read_text())["pid_file"] == str(pid_path)
        r = subprocess.run(f"kill -TERM $(cat {pid_path})", shell=True, timeout=10)
        assert r.returncode == 0
        assert p.p.wait(timeout=30) == 0
        assert not pid_path.exists(), "pid file left after a clean stop"
    finally:
        p.stop()


def test_pid_file_flag_overrides_the_config(backends, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    config_path = tmp_path / "td.json"
    config_path.write_text(json.dumps(plain_cfg(b, port, admin_port,
                                                pid_file=str(tmp_path / "cfg.pid"))))
    flag = tmp_path / "flag.pid"
    p = Proc([TD, "--pid-file", str(flag), "-c", str(config_path)], "td")
    try:
        wait_port(admin_port)
        wait_for(flag.exists, 10, what="pid file from --pid-file")
        assert flag.read_text().strip() == str(p.pid)
        assert not (tmp_path / "cfg.pid").exists()
    finally:
        assert p.stop() == 0
    assert not flag.exists()


def test_pid_file_in_a_missing_folder_is_refused_at_check_and_at_start(backends, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    config_path = tmp_path / "td.json"
    text = json.dumps(plain_cfg(b, port, admin_port, pid_file=str(tmp_path / "no" / "td.pid")),
                      indent=2)
    config_path.write_text(text)
    r = subprocess.run([TD, "-t", "-c", str(config_path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    line = next(i for i, l in enumerate(text.splitlines(), 1) if '"pid_file"' in l)
    assert f"{config_path}:{line}:" in r.stderr and "folder does not exist" in r.stderr, r.stderr
    # The flag is checked when td starts: a clear error, exit 1, nothing left listening.
    config_path.write_text(json.dumps(plain_cfg(b, port, admin_port)))
    r = subprocess.run([TD, "--pid-file", str(tmp_path / "no" / "td.pid"), "-c",
                        str(config_path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"{tmp_path}/no/td.pid: cannot write: No such file or directory" in r.stderr, r.stderr
    r = subprocess.run([TD, "--pid-file", "td.pid", "-c", str(config_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "absolute path" in r.stderr


# ---- the example config ----

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../examples")


def example_files():
    return sorted(os.path.join(EXAMPLES, n) for n in os.listdir(EXAMPLES) if n.endswith(".json"))


def test_every_example_config_passes_the_check():
    files = example_files()
    assert any(f.endswith("/td.json") for f in files), files
    for path in files:
        r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
        assert (r.returncode, r.stdout.strip()) == (0, "configuration OK"), (path, r.stderr)


def test_example_config_serves_the_demo_backends(tmp_path):
    """examples/td.json as README runs it, on free ports instead of 8080/9090/9001/9002 (which
    another td may hold): the backends from `td backend`, a 200 from each colour through td."""
    with open(os.path.join(EXAMPLES, "td.json")) as f:
        text = f.read()
    ports = {old: free_port() for old in (8080, 9090, 9001, 9002)}
    for old, new in ports.items():
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    text = text.replace('"/tmp/td.pid"', json.dumps(str(tmp_path / "td.pid")))
    config_path = tmp_path / "td.json"
    config_path.write_text(text)
    be = Proc([TD, "backend", f"blue=127.0.0.1:{ports[9001]}", f"green=127.0.0.1:{ports[9002]}"],
              "backends")
    try:
        wait_port(ports[9001])
        wait_port(ports[9002])
        p = start_td_file(str(config_path), ports[8080], ports[9090])
        try:
            seen = set()
            for _ in range(20):
                status, h, body = get_once(ports[8080])
                assert status == 200, body
                seen.add(h.get("X-TD-Demo-Backend"))
            assert seen == {"blue", "green"}, seen
            wait_for((tmp_path / "td.pid").exists, 10, what="pid file")
        finally:
            assert p.stop() == 0
    finally:
        be.stop()
