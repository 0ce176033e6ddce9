"""End-to-end tests of the sticky-cookie key across reloads, crash safety of API changes (config
file and audit log), the pid file, the example config and `tdctl config put -`.

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py); every loop is
bounded and every socket has a timeout."""
import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import (TD, TDCTL, Proc, backend_cfg, free_port, get_once, reload_config, set_weights,
                      sticky_cookie, wait_for, wait_port)

TIMEOUT = 10  # seconds, for every client socket


def sticky_cfg(backends, secret=None):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      method="sticky")
    # Pinned clients must stay on blue at weight 0 for the whole test.
    cfg["timeouts"]["drain_ms"] = 600000
    if secret is not None:
        cfg["routing"]["cookie"]["secret"] = secret
    return b, cfg


def cookie_for(port, want, tries=60):
    """Visits without a cookie until assigned to `want`; returns that cookie value."""
    for _ in range(tries):
        status, h, _ = get_once(port)
        assert status == 200
        if h.get("X-TD-Demo-Backend") == want:
            v = sticky_cookie(h)
            assert v, f"no Set-Cookie on a first visit: {h.items()}"
            return v
    raise AssertionError(f"never assigned to {want} in {tries} first visits")


def with_cookie(port, cookie):
    """(backend that answered, Set-Cookie value or None) for a request carrying `cookie`."""
    status, h, _ = get_once(port, "/", {"Cookie": f"TDSTICKY={cookie}"})
    assert status == 200
    return h.get("X-TD-Demo-Backend"), sticky_cookie(h)


def set_secret(secret, **weights):
    def edit(cfg):
        set_weights(cfg, **weights)
        if secret is None:
            cfg["routing"]["cookie"].pop("secret", None)
        else:
            cfg["routing"]["cookie"]["secret"] = secret
    return edit


# ---- the sticky-cookie key lives in the routing snapshot ----

@pytest.mark.parametrize("secret", [None, "kept-secret"])
def test_sticky_cookie_issued_before_reload_is_honoured_after_it(backends, td, secret):
    _, cfg = sticky_cfg(backends, secret)
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    # Same secret (or none), new weights: a fresh assignment can only be green now.
    reload_config(t, set_secret(secret, blue=0, green=100))
    for _ in range(5):
        assert with_cookie(t.port, cookie)[0] == "blue", "cookie from before the reload ignored"
    assert get_once(t.port)[1].get("X-TD-Demo-Backend") == "green"


def test_sticky_cookie_not_honoured_after_configured_secret_changes(backends, td):
    _, cfg = sticky_cfg(backends, "first-secret")
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    reload_config(t, set_secret("second-secret", blue=0, green=100))
    be, new = with_cookie(t.port, cookie)
    assert be == "green", "a cookie signed with the old secret was honoured"
    assert new and new != cookie, "re-assigned without a new cookie"
    assert with_cookie(t.port, new)[0] == "green"


def test_sticky_random_key_comes_back_when_configured_secret_is_removed(backends, td):
    """Without a secret the key is the process's own random key, made once: setting a secret and
    removing it again brings back the cookies issued under the random key."""
    _, cfg = sticky_cfg(backends)
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    reload_config(t, set_secret("a-secret", blue=0, green=100))
    assert with_cookie(t.port, cookie)[0] == "green"
    reload_config(t, set_secret(None))
    assert with_cookie(t.port, cookie)[0] == "blue", \
        "the random key changed on reload: cookies issued before were dropped"


# ---- API changes survive kill -9: config file and audit log stay a pair ----

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
    with open(path) as f:
        return {b["name"]: b["weight"] for b in json.load(f)["backends"]}


def start_td(config_path, port, admin_port):
    p = Proc([TD, "-c", config_path], "td")
    wait_port(port)
    wait_port(admin_port)
    return p


def put_ratio(admin_port, weights):
    """PUT /api/v1/ratio; the status, or None when td went away."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT)
        conn.request("PUT", "/api/v1/ratio", body=json.dumps(weights))
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status
    except OSError:
        return None
    except http.client.HTTPException:
        return None


def test_api_changes_killed_at_any_moment_are_always_audited(backends, tmp_path):
    """Rounds of API changes from 3 clients while td is killed with SIGKILL at a varied moment:
    after each restart every change the config file holds has its audit entry (and every change
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
    p = start_td(config_path, port, admin_port)
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
                    status = put_ratio(admin_port, w)
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

            p = start_td(config_path, port, admin_port)
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
    ours = ["td.json.tmp-a1B2c3", "td.json.tmp-ZZZZZZ"]
    theirs = ["td.json.tmp-abc", "td.json.tmp-abcdefg", "other.json.tmp-a1B2c3", "td.json.tmp",
              "td.json.tmp-ab.de"]
    for n in ours + theirs:
        (tmp_path / n).write_text("{}")
    p = start_td(str(config_path), port, admin_port)
    try:
        left = sorted(n for n in os.listdir(tmp_path) if n not in ("td.json",))
        assert left == sorted(theirs + ["td.json.audit.jsonl"]) or left == sorted(theirs), left
        assert "removed 2 temporary files" in p.output()
    finally:
        assert p.stop() == 0


def test_change_audited_but_not_in_the_config_file_is_recorded_as_not_applied(backends, td,
                                                                             tmp_path):
    """As a stop between the audit append and the file replace leaves it: the last entry names
    a new file text, and the file is still the one from before. td says the change did not run,
    its history shows it, and tdctl rollback does not undo it."""
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    t = td(cfg)
    t.set_ratio(blue=30, green=70)  # a real change: rollback's target
    assert t.stop() == 0
    before_sha = sha256_of(t.config_path)
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
    p = start_td(str(config_path), port, admin_port)
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
        status = put_ratio(admin_port, {"blue": 10, "green": 90})
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
        p = start_td(str(config_path), ports[8080], ports[9090])
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


# ---- tdctl config put - ----

def test_tdctl_config_put_dash_reads_the_config_from_stdin(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    env = dict(os.environ, TD_ADMIN=t.admin)
    r = subprocess.run([TDCTL, "config", "get"], capture_output=True, text=True, timeout=30,
                       env=env)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    set_weights(cfg, blue=20, green=80)
    r = subprocess.run([TDCTL, "config", "put", "-"], input=json.dumps(cfg, indent=2),
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert "configuration applied" in r.stdout
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 20, "green": 80}
    # Not JSON on stdin: named <stdin>:LINE:COL, nothing sent, nothing changed.
    r = subprocess.run([TDCTL, "config", "put", "-"], input='{\n  "backends": [,\n',
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert r.stderr.startswith("<stdin>:2:"), r.stderr
    # A config td refuses: td's own line:col, exit 1, nothing changed.
    set_weights(cfg, blue=200)
    r = subprocess.run([TDCTL, "config", "put", "-"], input=json.dumps(cfg, indent=2),
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1 and "out of range" in r.stderr, r.stderr
    assert {x["name"]: x["weight"] for x in t.state()["backends"]} == {"blue": 20, "green": 80}


def test_hand_edit_after_an_api_change_is_not_taken_for_a_lost_change(backends, td):
    """The file edited by hand after the last API change (td stopped, or reloaded), even back to
    exactly what it was before that change: the change did run, and the history keeps it so."""
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    with open(t.config_path) as f:
        original = f.read()
    t.set_ratio(blue=30, green=70)
    # Back to the exact text from before the change, then a reload.
    with open(t.config_path, "w") as f:
        f.write(original)
    t.proc.p.send_signal(signal.SIGHUP)
    wait_for(lambda: {x["name"]: x["weight"] for x in t.state()["backends"]} ==
             {"blue": 50, "green": 50}, 10, what="reload")
    assert t.stop() == 0
    # And an edit td never saw.
    cfg = json.loads(original)
    set_weights(cfg, blue=10, green=90)
    with open(t.config_path, "w") as f:
        json.dump(cfg, f)
    t.proc = Proc([TD, "-c", t.config_path], "td")
    wait_port(t.admin_port)
    entries = read_audit(t.config_path + ".audit.jsonl")
    assert not [e for e in entries if "not_applied" in e], entries
    status, hist = t.api("GET", "/api/v1/history")
    assert status == 200 and all(e.get("applied", True) for e in hist), hist
