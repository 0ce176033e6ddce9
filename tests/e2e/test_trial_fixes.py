"""A colour coming out of maint or drain is cold (a rollout to it starts from 0, its slow start
ramps), queued requests whose clients gave up are never sent to the backend, and tdctl says when
td applied a change it could not save."""
import http.server
import json
import socket
import threading
import time

import pytest

from conftest import backend_cfg, backend_state, get, tdctl, wait_for

WARNING = "tdctl: warning: td applied the change but could not save it ("




def unsaved_td(backends, td, tmp_path):
    """blue and green at 50:50, with a state file under a regular file: never writable."""
    b = backends(("blue", 1), ("green", 1))
    (tmp_path / "not-a-folder").write_text("")
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      state_file=str(tmp_path / "not-a-folder" / "state.json"))
    return td(cfg)


def test_tdctl_warns_when_td_applied_a_change_it_could_not_save(backends, td, tmp_path):
    t = unsaved_td(backends, td, tmp_path)
    conf = tmp_path / "running.json"
    conf.write_text(tdctl(t, "config", "get").stdout)
    for args in (["ratio", "10:90"], ["method", "sticky"], ["state", "blue", "drain"],
                 ["state", "blue", "ready"], ["config", "put", str(conf)], ["config", "reset"],
                 ["ratio", "10:90"], ["switch", "blue", "--detach"], ["rollout", "abort"]):
        r = tdctl(t, *args)
        assert r.returncode == 0, r.stderr
        assert WARNING in r.stderr and "not-a-folder" in r.stderr, (args, r.stderr)
        assert "it is lost at td's next restart" in r.stderr, r.stderr
    weights = {b["name"]: b["weight"] for b in t.state()["backends"]}
    assert weights == {"blue": 10, "green": 90}  # applied all the same


def test_tdctl_status_warns_when_td_could_not_save_its_last_change(backends, td, tmp_path):
    t = unsaved_td(backends, td, tmp_path)
    r = tdctl(t, "status")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 20, "green": 80})
    assert status == 200 and body["persisted"] is False, body
    r = tdctl(t, "status")
    assert r.returncode == 0, r.stderr
    assert "tdctl: warning:" in r.stderr and "not-a-folder" in r.stderr, r.stderr
    assert "blue" in r.stdout  # the table as before


def test_tdctl_says_nothing_of_saving_when_td_saved_the_change(backends, td, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      state_file=str(tmp_path / "state.json"))
    t = td(cfg)
    r = tdctl(t, "ratio", "10:90")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = tdctl(t, "status")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# A colour coming out of maint or drain is cold: its slow start ramps.

SLOW_START_MS = 6000
WINDOW = 40


def window_share(port, name, n=WINDOW):
    hits = 0
    for _ in range(n):
        status, who = get(port)
        assert status == 200, status
        hits += who == name
    return hits / n


@pytest.mark.parametrize("out_state", ["maint", "drain"])
def test_slow_start_backend_back_to_ready_from_maint_or_drain_takes_its_share_gradually(
        backends, td, out_state):
    be = backends(("blue", 1), ("green", 1))
    cfg = {"backends": [
        {"name": n, "weight": 50, "slow_start_ms": SLOW_START_MS,
         "servers": [{"address": f"127.0.0.1:{be.ports[n][0]}"}]} for n in ("blue", "green")],
        "timeouts": {"connect_ms": 1000, "drain_ms": 2000}}
    t = td(cfg)
    status, s = t.api("PUT", "/api/v1/backends/green", {"state": out_state})
    assert status == 200, s
    assert backend_state(s, "green")["share"] == 0
    assert window_share(t.port, "green") == 0
    status, s = t.api("PUT", "/api/v1/backends/green", {"state": "ready"})
    assert status == 200, s
    first = backend_state(s, "green")
    # Just after it is ready again green gets a small share, not its half, and says it ramps.
    assert 0 < first["share"] < 25, first
    assert first["slow_start_remaining_ms"] is not None, first
    assert 0 < first["slow_start_remaining_ms"] <= SLOW_START_MS, first
    assert backend_state(s, "blue")["slow_start_remaining_ms"] is None
    windows, end = [], time.monotonic() + 40
    while time.monotonic() < end:
        s0 = backend_state(t.state(), "green")
        share = window_share(t.port, "green")
        s1 = backend_state(t.state(), "green")
        windows.append((s0["share"], s1["share"], share, s0["slow_start_remaining_ms"]))
        if len([w for w in windows if w[0] == 50]) >= 3:
            break
    summary = [(s0, s1, round(s, 2), r) for s0, s1, s, r in windows]
    reported = [s for s0, s1, _, _ in windows for s in (s0, s1)]
    assert reported == sorted(reported), summary
    early = [s for s0, s1, s, _ in windows if s1 <= 25]
    assert early, f"no window early in the ramp: {summary}"
    assert max(early) < 0.4, summary
    assert min(early) < 0.2, summary
    late = [w for w in windows if w[0] == 50]
    assert len(late) >= 3, summary
    assert min(w[2] for w in late) >= 0.35, summary
    assert late[-1][3] is None, summary  # the ramp is over


# ---------------------------------------------------------------------------------------------
# A rollout to a colour in maint or drain starts from 0: every step runs, 10 % first.

def colours(backends, td, **extra):
    b = backends(("blue", 1), ("green", 1))
    return td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                          **extra))


def rollout_of(t):
    status, ro = t.api("GET", "/api/v1/rollout")
    assert status == 200, ro
    return ro


@pytest.mark.parametrize("out_state", ["maint", "drain"])
def test_switch_at_50_50_to_a_colour_in_maint_or_drain_starts_from_0_and_runs_every_step(
        backends, td, out_state):
    t = colours(backends, td)
    assert t.api("PUT", "/api/v1/backends/blue", {"state": out_state})[0] == 200
    assert backend_state(t.state(), "blue")["share"] == 0
    r = tdctl(t, "switch", "blue", "--step-time", "120s", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already has" not in r.stdout + r.stderr, r.stdout
    assert f"blue: state {out_state} -> ready" in r.stdout, r.stdout
    ro = rollout_of(t)
    # blue took nothing: the rollout starts from 0, its first step (10 %) runs first.
    assert ro["weights_before"] == {"blue": 0, "green": 50}, ro
    assert ro["step"] == 0 and ro["steps"] == [10, 50, 100], ro
    assert ro["steps_detail"][0]["state"] == "running", ro["steps_detail"]
    assert ro["weights"]["blue"] == 10, ro
    state = t.state()
    assert backend_state(state, "blue")["state"] == "ready"
    assert backend_state(state, "blue")["share"] == 10, state
    assert tdctl(t, "rollout", "abort").returncode == 0
    # Aborted: back to what blue took before, nothing.
    wait_for(lambda: backend_state(t.state(), "blue")["share"] == 0, 10, what="blue at 0")


def test_rollout_api_to_a_colour_in_maint_is_refused_for_its_state_not_as_having_all_traffic(
        backends, td):
    """blue holds all the weight but is in maint (its share is 0): the refusal names its state
    (put it back to ready first), not "already has 100 %"."""
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (10, b.ports["green"])}))
    assert t.api("PUT", "/api/v1/ratio", {"blue": 100, "green": 10})[0] == 200
    assert t.api("PUT", "/api/v1/backends/blue", {"state": "maint"})[0] == 200
    status, body = t.api("POST", "/api/v1/rollout", {"to": "blue", "step_s": 120})
    assert status == 400 and "is in state maint" in body["error"], body
    assert "already has" not in body["error"], body


def test_switch_refused_leaves_the_colour_in_its_state_and_weight(backends, td):
    b = backends(("blue", 1), ("green", 1), ("red", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (30, b.ports["green"]),
                        "red": (20, b.ports["red"])}))
    assert t.api("PUT", "/api/v1/backends/red", {"state": "maint"})[0] == 200
    status, body = t.api("POST", "/api/v1/rollout", {"to": "green", "step_s": 120})
    assert status == 201, body
    before = backend_state(t.state(), "red")["weight"]
    r = tdctl(t, "switch", "red", "--step-time", "120s", "--detach")  # one is active
    assert r.returncode == 1, r.stdout + r.stderr
    red = backend_state(t.state(), "red")
    assert red["state"] == "maint" and red["weight"] == before, (red, r.stdout)
    assert "-> maint" not in r.stdout, r.stdout  # nothing was changed, nothing to put back
    assert rollout_of(t)["to"] == "green"
    assert t.api("POST", "/api/v1/rollout/abort", {})[0] == 200


# ---------------------------------------------------------------------------------------------
# max_conns queue: a request whose client closed while it waited is never sent to the backend.

class SlowServer:
    """A threaded HTTP/1.1 server on 127.0.0.1: GET /slow/MS answers after MS ms; it counts the
    requests it received."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.received += 1
                if self.path.startswith("/slow/"):
                    time.sleep(int(self.path[len("/slow/"):]) / 1000.0)
                body = b"ok\n"
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def slow_server():
    s = SlowServer()
    yield s
    s.stop()


def blue_of(t):
    return backend_state(t.state(), "blue")


def send_get(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


@pytest.mark.parametrize("workers", [1, 2])
def test_max_conns_queued_requests_whose_clients_gave_up_are_never_sent_to_the_backend(
        slow_server, td, workers, tmp_path):
    log = tmp_path / "access.log"
    t = td({"workers": workers,
            "backends": [{"name": "blue", "weight": 100,
                          "servers": [{"address": f"127.0.0.1:{slow_server.port}",
                                       "max_conns": 3}]}],
            "access_log": str(log),
            "timeouts": {"connect_ms": 2000, "upstream_response_ms": 30000,
                         "queue_ms": 30000}})
    busy = [send_get(t.port, "/slow/3000") for _ in range(3)]
    wait_for(lambda: blue_of(t)["servers"][0]["slots"] == 3, 10, what="3 slots taken")
    # 12 clients that give up after a while (curl -m 1): a plain close, FIN.
    quitters = [send_get(t.port, "/slow/10") for _ in range(12)]
    wait_for(lambda: blue_of(t)["queued"] == 12, 10, what="12 queued")
    for s in quitters:
        s.close()
    wait_for(lambda: blue_of(t)["queued"] == 0, 10, what="the queue empty")
    for s in busy:
        s.settimeout(20)
        assert s.recv(4096).startswith(b"HTTP/1.1 200"), "a request in flight is answered"
        s.close()
    wait_for(lambda: blue_of(t)["in_flight"] == 0 and
             blue_of(t)["servers"][0]["slots"] == 0, 20, what="nothing in flight")
    # Sent on to the backend: the three in flight only, none of those that gave up.
    with slow_server.lock:
        assert slow_server.received == 3, slow_server.received
    b = blue_of(t)
    assert b["queue_timeouts"] == 0, b
    wait_for(lambda: statuses(log).count(499) == 12, 10, what="12 lines of 499 in the access log")


def statuses(log):
    if not log.exists():
        return []
    return [json.loads(line)["status"] for line in log.read_text().splitlines() if line.strip()]
