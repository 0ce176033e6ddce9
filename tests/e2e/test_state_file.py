"""The state file: API changes are kept apart from the operator's config file, as overrides
merged key by key on top of it at start and on SIGHUP; the config file is never written."""
import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time

from conftest import (TD, TDCTL, backend_cfg, free_port, get_once, needs_console, put_ratio_status,
                      run_console, start_td_file)

TIMEOUT = 10


def api(admin_port, method, path, body=None):
    """(status, parsed JSON or text, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        r = conn.getresponse()
        text = r.read().decode()
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return r.status, data, r.headers
    finally:
        conn.close()


def weights(admin_port):
    status, s, _ = api(admin_port, "GET", "/api/v1/state")
    assert status == 200, s
    return {b["name"]: b["weight"] for b in s["backends"]}


def wait_version(admin_port, above):
    for _ in range(200):
        status, s, _ = api(admin_port, "GET", "/api/v1/state")
        if status == 200 and s["version"] > above:
            return s
        time.sleep(0.05)
    raise AssertionError(f"config version never went above {above}")


class Setup:
    """blue and green demo backends, a config file for them in `directory` (50/50), and td
    started on it (start/stop/restart)."""

    def __init__(self, backends, directory, **extra):
        b = backends(("blue", 1), ("green", 1))
        self.port, self.admin_port = free_port(), free_port()
        self.cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
        self.cfg.update(listeners=[{"address": f"127.0.0.1:{self.port}"}], workers=1,
                        admin={"address": f"127.0.0.1:{self.admin_port}"}, **extra)
        self.dir = str(directory)
        self.config_path = os.path.join(self.dir, "td.json")
        self.write(self.cfg)
        self.p = None

    def write(self, cfg):
        # Hand-written layout (indent 4, keys in our order): td must never re-lay it out.
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=4)
            f.write("\n")

    def bytes(self):
        with open(self.config_path, "rb") as f:
            return f.read()

    def start(self):
        self.p = start_td_file(self.config_path, self.port, self.admin_port)
        return self.p

    def stop(self, sig=signal.SIGTERM):
        rc = self.p.stop(sig)
        out = self.p.output()
        if sig == signal.SIGTERM:
            assert rc == 0, out[-3000:]
            assert "AddressSanitizer" not in out and "runtime error" not in out, out[-3000:]
        return out

    def hup(self):
        v = api(self.admin_port, "GET", "/api/v1/state")[1]["version"]
        self.p.p.send_signal(signal.SIGHUP)
        return wait_version(self.admin_port, v)

    def events(self):
        status, ev, _ = api(self.admin_port, "GET", "/api/v1/events")
        assert status == 200
        return [e["message"] for e in ev]

    def tdctl(self, *args):
        return subprocess.run([TDCTL, "--admin", f"http://127.0.0.1:{self.admin_port}", *args],
                              capture_output=True, text=True, timeout=30)


def test_api_changes_leave_the_config_file_bytes_unchanged_and_survive_a_restart(backends,
                                                                                 tmp_path):
    s = Setup(backends, tmp_path)
    before = s.bytes()
    s.start()
    try:
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200 and body["persisted"] is True, body
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/routing", {"method": "sticky"})
        assert status == 200 and body["persisted"] is True, body
        cfg = api(s.admin_port, "GET", "/api/v1/config")[1]
        cfg["timeouts"]["drain_ms"] = 4321
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/config", cfg)
        assert status == 200 and body["persisted"] is True, body
        assert s.bytes() == before, "td rewrote the config file"
        assert os.path.exists(s.config_path + ".state.json")
        assert os.path.exists(os.path.join(s.dir, "td.json.audit.jsonl"))
    finally:
        s.stop()
    assert s.bytes() == before
    s.start()
    try:
        assert weights(s.admin_port) == {"blue": 0, "green": 100}
        state = api(s.admin_port, "GET", "/api/v1/state")[1]
        assert state["method"] == "sticky"
        assert api(s.admin_port, "GET", "/api/v1/config")[1]["timeouts"]["drain_ms"] == 4321
        # The file as td read it is still the operator's.
        assert api(s.admin_port, "GET", "/api/v1/config?source=file")[1]["timeouts"][
            "drain_ms"] == 5000
        paths = {o["path"] for o in api(s.admin_port, "GET", "/api/v1/overrides")[1]["overrides"]}
        assert paths == {"backends.blue.weight", "backends.green.weight", "routing.method",
                         "timeouts.drain_ms"}, paths
    finally:
        s.stop()
    assert s.bytes() == before


def test_unrelated_file_edit_and_sighup_keep_an_api_ratio_override(backends, tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200, body
        s.cfg["timeouts"]["connect_ms"] = 1500  # an unrelated key
        s.write(s.cfg)
        s.hup()
        assert weights(s.admin_port) == {"blue": 0, "green": 100}
        assert api(s.admin_port, "GET", "/api/v1/config")[1]["timeouts"]["connect_ms"] == 1500
    finally:
        s.stop()


def test_file_change_of_the_overridden_weight_wins_and_the_event_names_the_override(backends,
                                                                                   tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200, body
        s.cfg["backends"][0]["weight"] = 30  # blue: the very key the override holds
        s.write(s.cfg)
        s.hup()
        # blue's file value wins; green's override (its file value did not change) stays.
        assert weights(s.admin_port) == {"blue": 30, "green": 100}
        msgs = [m for m in s.events() if "backends.blue.weight" in m]
        assert msgs, s.events()
        assert "from 50 to 30" in msgs[-1] and "the override 0" in msgs[-1] and \
            "127.0.0.1" in msgs[-1] and "replaced" in msgs[-1], msgs
        paths = [o["path"] for o in api(s.admin_port, "GET", "/api/v1/overrides")[1]["overrides"]]
        assert paths == ["backends.green.weight"], paths
    finally:
        s.stop()


def test_read_only_config_file_in_a_read_only_folder_still_accepts_changes(backends, tmp_path):
    conf_dir, state_dir = tmp_path / "etc", tmp_path / "var"
    conf_dir.mkdir()
    state_dir.mkdir()
    s = Setup(backends, conf_dir, state_file=str(state_dir / "state.json"))
    before = s.bytes()
    mtime = os.stat(s.config_path).st_mtime_ns
    os.chmod(s.config_path, 0o444)
    os.chmod(conf_dir, 0o555)
    try:
        s.start()
        try:
            status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
            assert status == 200 and body["persisted"] is True, body
            assert weights(s.admin_port) == {"blue": 0, "green": 100}
        finally:
            s.stop()
        assert s.bytes() == before and os.stat(s.config_path).st_mtime_ns == mtime
        assert sorted(os.listdir(conf_dir)) == ["td.json"]
        assert sorted(os.listdir(state_dir)) == ["state.audit.jsonl", "state.json"]
        s.start()
        try:
            assert weights(s.admin_port) == {"blue": 0, "green": 100}
        finally:
            s.stop()
    finally:
        os.chmod(conf_dir, 0o755)
        os.chmod(s.config_path, 0o644)


def test_unwritable_state_file_answers_persisted_false_and_the_state_says_so(backends, tmp_path):
    # A folder that is a regular file: not writable whoever td runs as.
    (tmp_path / "not-a-folder").write_text("")
    s = Setup(backends, tmp_path, state_file=str(tmp_path / "not-a-folder" / "state.json"))
    s.start()
    try:
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 10, "green": 90})
        assert status == 200, body
        assert body["persisted"] is False, body
        assert weights(s.admin_port) == {"blue": 10, "green": 90}  # applied all the same
        state = api(s.admin_port, "GET", "/api/v1/state")[1]
        assert state["persisted"] is False and "not-a-folder" in state["persist_error"], state
        assert any("changes are not being saved" in m for m in s.events()), s.events()
        assert "changes are not being saved" in s.p.output()
        ov = api(s.admin_port, "GET", "/api/v1/overrides")[1]
        assert ov["persisted"] is False, ov
    finally:
        s.stop()


def test_temp_files_left_next_to_the_state_file_are_removed_at_start(backends, tmp_path):
    state_dir = tmp_path / "var"
    state_dir.mkdir()
    s = Setup(backends, tmp_path, state_file=str(state_dir / "state.json"))
    ours = ["state.json.tmp-a1B2c3", "state.json.tmp-ZZZZZZ"]
    theirs = ["state.json.tmp-abc", "other.json.tmp-a1B2c3"]
    for n in ours + theirs:
        (state_dir / n).write_text("{}")
    s.start()
    try:
        assert sorted(os.listdir(state_dir)) == sorted(theirs), os.listdir(state_dir)
        assert "removed 2 temporary files" in s.p.output()
    finally:
        s.stop()


def audit_entries(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                out.append(json.loads(line))
    return out


def test_kill_9_during_200_ratio_changes_never_leaves_state_and_audit_disagreeing(backends,
                                                                                 tmp_path):
    """A client makes 200 ratio changes, each a weight pair used once, while td is killed with
    SIGKILL at a varied moment; after each restart td runs the weights of the last audited change
    whose state landed (a change recorded as not applied does not count), and no temporary file
    is left next to the state file."""
    s = Setup(backends, tmp_path)
    audit_path = os.path.join(s.dir, "td.json.audit.jsonl")
    rng = random.Random(20261201)
    pairs = [(x, y) for x in range(1, 101) for y in range(1, 101) if (x, y) != (50, 50)]
    rng.shuffle(pairs)
    pairs = iter(pairs[:200])
    acknowledged = []
    s.start()
    try:
        for rnd in range(5):
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    pair = next(pairs, None)
                    if pair is None:
                        return
                    w = {"blue": pair[0], "green": pair[1]}
                    status = put_ratio_status(s.admin_port, w)
                    if status is None:
                        return
                    assert status == 200
                    acknowledged.append(w)

            th = threading.Thread(target=client, daemon=True)
            th.start()
            target = len(acknowledged) + rng.randint(5, 30)
            deadline = time.monotonic() + 30
            while len(acknowledged) < target and time.monotonic() < deadline and th.is_alive():
                time.sleep(0.001)
            time.sleep(rng.random() * 0.01)
            s.p.p.send_signal(signal.SIGKILL)
            s.p.p.wait(timeout=10)
            stop.set()
            th.join(timeout=TIMEOUT + 5)
            assert not th.is_alive()
            s.start()
            assert [n for n in os.listdir(s.dir) if ".tmp-" in n] == [], f"round {rnd}"
            entries = audit_entries(audit_path)
            dropped = {e["not_applied"] for e in entries if "not_applied" in e}
            landed = [e for e in entries if "not_applied" not in e and e["id"] not in dropped
                      and "after" in e and e["what"].startswith("ratio")]
            running = weights(s.admin_port)
            if landed:
                assert running == landed[-1]["after"]["weights"], (rnd, running, landed[-1])
            else:
                assert running == {"blue": 50, "green": 50}
            for w in acknowledged:  # every acknowledged change is in the audit log
                assert any(e.get("after", {}).get("weights") == w for e in entries), w
        assert len(acknowledged) >= 5
    finally:
        s.stop()


def test_tdctl_config_diff_shows_overrides_and_exits_1_then_0_after_reset(backends, tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        r = s.tdctl("config", "diff")
        assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200
        r = s.tdctl("config", "diff")
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        assert any(ln.startswith("backends.blue.weight: file 50, running 0 (override since ")
                   and ln.endswith(" by 127.0.0.1)") for ln in lines), r.stdout
        assert any(ln.startswith("backends.green.weight: file 50, running 100") for ln in lines)
        r = s.tdctl("config", "reset")
        assert r.returncode == 0, r.stdout + r.stderr
        assert weights(s.admin_port) == {"blue": 50, "green": 50}
        r = s.tdctl("config", "diff")
        assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    finally:
        s.stop()


def test_delete_overrides_runs_the_file_alone_and_is_audited(backends, tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        api(s.admin_port, "PUT", "/api/v1/routing", {"method": "failover"})
        status, body, _ = api(s.admin_port, "DELETE", "/api/v1/overrides")
        assert status == 200 and body["overrides"] == [], body
        assert weights(s.admin_port) == {"blue": 50, "green": 50}
        assert api(s.admin_port, "GET", "/api/v1/state")[1]["method"] == "round_robin"
        history = api(s.admin_port, "GET", "/api/v1/history")[1]
        assert "overrides dropped" in history[-1]["what"], history[-1]
    finally:
        s.stop()
    s.start()
    try:
        assert weights(s.admin_port) == {"blue": 50, "green": 50}
    finally:
        s.stop()


def test_ratio_set_back_to_the_file_values_leaves_no_override(backends, tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert len(api(s.admin_port, "GET", "/api/v1/overrides")[1]["overrides"]) == 2
        api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
        assert api(s.admin_port, "GET", "/api/v1/overrides")[1]["overrides"] == []
    finally:
        s.stop()


def test_get_config_reports_a_listener_changed_in_the_file_as_pending_a_restart(backends,
                                                                                tmp_path):
    s = Setup(backends, tmp_path)
    s.start()
    try:
        status, cfg, headers = api(s.admin_port, "GET", "/api/v1/config")
        assert headers.get("TD-Pending-Restart") is None
        assert api(s.admin_port, "GET", "/api/v1/state")[1]["pending_restart"] == []
        other = free_port()
        s.cfg["listeners"] = [{"address": f"127.0.0.1:{other}"}]
        s.cfg["workers"] = 2
        s.write(s.cfg)
        s.hup()
        status, cfg, headers = api(s.admin_port, "GET", "/api/v1/config")
        assert status == 200
        assert cfg["listeners"] == [{"address": f"127.0.0.1:{s.port}"}], cfg["listeners"]
        assert cfg["workers"] == 1
        assert headers.get("TD-Pending-Restart") == "listeners, workers", dict(headers)
        pending = api(s.admin_port, "GET", "/api/v1/state")[1]["pending_restart"]
        assert [p["key"] for p in pending] == ["listeners", "workers"], pending
        assert pending[0]["asked"] == [{"address": f"127.0.0.1:{other}"}]
        assert pending[0]["running"] == [{"address": f"127.0.0.1:{s.port}"}]
        r = s.tdctl("config", "diff")
        assert r.returncode == 1 and "listeners" in r.stdout and "restart" in r.stdout, r.stdout
    finally:
        s.stop()


@needs_console
def test_console_shows_a_red_banner_while_changes_are_not_being_saved(backends, tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    s = Setup(backends, tmp_path, state_file=str(tmp_path / "not-a-folder" / "state.json"))
    s.start()
    try:
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 10, "green": 90})
        assert status == 200 and body["persisted"] is False, body
        banner = run_console("state_file.test.mjs", url=f"http://127.0.0.1:{s.admin_port}/")["banner"]
        assert banner.startswith("changes are not being saved: ") and "not-a-folder" in banner, \
            banner
    finally:
        s.stop()


def test_backend_added_through_put_config_survives_a_restart_after_the_files_backends(backends,
                                                                                      tmp_path):
    s = Setup(backends, tmp_path)
    red = backends(("red", 1))
    before = s.bytes()
    s.start()
    try:
        cfg = api(s.admin_port, "GET", "/api/v1/config")[1]
        cfg["backends"].insert(0, {"name": "red", "weight": 10, "servers": [
            {"address": f"127.0.0.1:{red.ports['red'][0]}", "weight": 1}]})
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/config", cfg)
        assert status == 200 and body["persisted"] is True, body
    finally:
        s.stop()
    s.start()
    try:
        state = api(s.admin_port, "GET", "/api/v1/state")[1]
        # The file's order, then the added backend.
        assert [b["name"] for b in state["backends"]] == ["blue", "green", "red"], state
        assert weights(s.admin_port) == {"blue": 50, "green": 50, "red": 10}
    finally:
        s.stop()
    assert s.bytes() == before


def test_overrides_that_no_longer_fit_the_file_give_way_to_the_file(backends, tmp_path):
    """green removed through the API, then the file changes green's weight: that one override
    gives way, and each of the rest that would leave an invalid config (a green without
    servers) gives way too, said in the log at error level and in the events."""
    s = Setup(backends, tmp_path)
    s.start()
    try:
        cfg = api(s.admin_port, "GET", "/api/v1/config")[1]
        cfg["backends"] = [b for b in cfg["backends"] if b["name"] == "blue"]
        status, body, _ = api(s.admin_port, "PUT", "/api/v1/config", cfg)
        assert status == 200, body
        assert weights(s.admin_port) == {"blue": 50}
        s.cfg["backends"][1]["weight"] = 70
        s.write(s.cfg)
        s.hup()
        assert weights(s.admin_port) == {"blue": 50, "green": 70}
        left = api(s.admin_port, "GET", "/api/v1/overrides")[1]["overrides"]
        assert not [o for o in left if o["path"] in ("backends.green", "backends.green.weight")
                    or o["path"].startswith("backends.green.servers.127.0.0.1:")
                    and o["path"].endswith(".address")], left
        assert "no longer fits the config file" in s.p.output()
        assert any("no longer fits the config file" in m for m in s.events()), s.events()
    finally:
        s.stop()


def test_file_edit_that_no_longer_fits_an_override_drops_only_that_override_and_keeps_maint(
        backends, tmp_path):
    """blue at 0 and in maint through the API, green 100; the file then sets green's weight to 0
    (blue's stays 50 in the file): with blue's weight-0 override every weight would be 0. Only
    that override gives way (an error and an event name it); blue stays in maint, so the colour
    being redeployed never goes live, and the state file keeps the maint override."""
    s = Setup(backends, tmp_path)
    s.start()
    try:
        assert api(s.admin_port, "PUT", "/api/v1/ratio", {"blue": 0, "green": 100})[0] == 200
        assert api(s.admin_port, "PUT", "/api/v1/backends/blue", {"state": "maint"})[0] == 200
        cfg = json.loads(s.bytes())
        cfg["backends"][1]["weight"] = 0
        s.write(cfg)
        state = s.hup()
        blue = next(b for b in state["backends"] if b["name"] == "blue")
        assert blue["state"] == "maint" and blue["share"] == 0, blue
        assert any("backends.blue.weight" in e and "no longer fits" in e for e in s.events()), \
            s.events()
        status, ov, _ = api(s.admin_port, "GET", "/api/v1/overrides")
        assert [o["path"] for o in ov["overrides"]] == ["backends.blue.state"], ov
        for _ in range(5):
            assert get_once(s.port)[0] == 503  # nothing may reach blue while it is in maint
    finally:
        s.stop()
    # And a restart keeps it so.
    s.start()
    try:
        status, st, _ = api(s.admin_port, "GET", "/api/v1/state")
        assert next(b for b in st["backends"] if b["name"] == "blue")["state"] == "maint"
    finally:
        s.stop()


def test_state_file_that_is_the_config_file_itself_is_refused_by_td_t_and_at_start(backends,
                                                                                   tmp_path):
    s = Setup(backends, tmp_path)
    s.cfg["state_file"] = s.config_path
    s.write(s.cfg)
    before = s.bytes()
    r = subprocess.run([TD, "-t", "-c", s.config_path], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "is the config file itself" in r.stderr, (r.stdout, r.stderr)
    r = subprocess.run([TD, "-c", s.config_path], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "is the config file itself" in r.stderr, r.stderr
    assert s.bytes() == before
