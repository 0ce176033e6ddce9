"""End-to-end tests of tdctl's rollout commands against a real td and real backends on 127.0.0.1:
`tdctl switch` (starts a rollout in td and follows it; Ctrl-C detaches), `tdctl rollout
status|pause|resume|promote|abort`, and `tdctl rollback` right after a rollout.

The rollout runs in td; these tests check what tdctl printed and its exit status, and what td did
through GET /api/v1/rollout and the weights. Backends that answer 500 are tiny Python HTTP servers
started as separate processes."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import (ASAN, TDCTL, TDCTL_ENV, LoadGen, Proc, backend_cfg, free_port, tdctl,
                      wait_for, wait_port, weights)

SLOW = 3 if ASAN else 1
FOLLOW_TIMEOUT = 120 * SLOW  # seconds a followed rollout may take before the test gives up
ACTIVE = ("checking", "running", "paused", "draining")




def rollout(t):
    status, ro = t.api("GET", "/api/v1/rollout")
    assert status == 200, ro
    return ro


def wait_rollout(t, pred, what, timeout=20):
    wait_for(lambda: pred(rollout(t)), timeout * SLOW, interval=0.1, what=what)
    return rollout(t)


def blue_green(backends, td, blue_w=100, green_w=0, green_ports=None, **extra):
    """Demo backends blue (and green unless green_ports is given) and a td over them."""
    b = backends(("blue", 1), ("green", 1)) if green_ports is None else backends(("blue", 1))
    gp = green_ports if green_ports is not None else b.ports["green"]
    return td(backend_cfg({"blue": (blue_w, b.ports["blue"]), "green": (green_w, gp)}, **extra))


def start_switch(t, *args):
    """Starts tdctl switch in the background; returns the Popen once td's rollout runs."""
    p = subprocess.Popen([TDCTL, "--admin", t.admin, "switch", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=TDCTL_ENV)
    try:
        wait_for(lambda: t.api("GET", "/api/v1/rollout")[0] == 200 and
                 rollout(t)["state"] == "running", 20 * SLOW, interval=0.1,
                 what="the rollout running")
    except AssertionError:
        p.kill()
        p.communicate()
        raise
    return p


# A backend that answers 500 to everything, as its own process (keep-alive HTTP/1.1 with
# Content-Length, like a real app).
FAILING_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, name = int(sys.argv[1]), sys.argv[2]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"fail %s\n" % name.encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-TD-Demo-Backend", name)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def failing_server():
    started = []

    def start(name="green"):
        port = free_port()
        p = Proc([sys.executable, "-c", FAILING_SERVER, str(port), name], "failing")
        started.append(p)
        wait_port(port)
        return port

    yield start
    for p in started:
        p.stop()


# td's passive detection would eject a server answering 500 three times in a row: here green
# must stay up and answer 500, so that td's analysis judges its error rate.
NO_PASSIVE_EJECTION = {"failures": 1000, "eject_ms": 5000, "max_eject_ms": 300000}


# ---------------------------------------------------------------------------------------------
# tdctl switch

def test_switch_follows_the_rollout_under_load_and_exits_0_when_it_succeeds(backends, td):
    t = blue_green(backends, td)
    # A paced load (each request takes 10 ms): fewer than the 1,000 answers a step needs before
    # td judges p99 against the baseline, whose 1 ms buckets a busy machine could tip over.
    load = LoadGen(t.port, path="/delay/10", threads=3, duration=90.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "10,50,100", "--step-time", "2s",
                  timeout=FOLLOW_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 0, r.stdout + r.stderr
    ro = rollout(t)
    assert ro["state"] == "succeeded" and ro["to"] == "green" and ro["steps"] == [10, 50, 100]
    assert ro["step_s"] == 2
    assert weights(t) == {"blue": 0, "green": 100}
    assert load.errors == [] and load.failed == 0, load.summary()
    assert load.count(backend="blue") > 0 and load.count(backend="green") > 0, load.summary()
    # Not a terminal: a plain line per step started and ended, and per state change.
    out = r.stdout
    assert f"rollout {ro['id']}: blue to green in 3 steps of 2s" in out, out
    for i, w in enumerate((10, 50, 100), 1):
        assert f"step {i}/3: green {w}% for 2s" in out, out
        assert f"step {i}/3 (green {w}%) passed: green " in out, out
    assert " vs blue " in out and " req " in out and "p99" in out, out
    assert f"switched to green: blue=0 green=100 (rollout {ro['id']} succeeded)" in out, out
    assert "\033" not in out


def test_switch_shows_a_progress_bar_per_step_on_a_terminal(backends, td):
    t = blue_green(backends, td)
    # script(1) gives tdctl a terminal; its output is the terminal's.
    cmd = f"{TDCTL} --admin {t.admin} switch green --steps 50,100 --step-time 2s"
    # Bytes: text mode would turn the bar's lone \r into a newline.
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                       timeout=FOLLOW_TIMEOUT, env=TDCTL_ENV)
    out = p.stdout.decode()
    print(repr(out), p.stderr)
    assert p.returncode == 0, out
    # Each step's bar is rewritten in place (\r, erase line), then ends with its own line.
    lines = out.replace("\r\n", "\n").split("\n")
    bars = [line.split("\r\033[K")[-1] for line in lines if "\r\033[K[" in line]
    assert len(bars) == 2, out
    assert "] step 1/2 green 50% " in bars[0] and "] step 2/2 green 100% " in bars[1], bars
    assert all(" left " in b and " vs blue " in b for b in bars), bars
    assert "switched to green" in out


def test_switch_exits_1_and_says_why_when_td_rolls_the_rollout_back(backends, td,
                                                                     failing_server):
    t = blue_green(backends, td, green_ports=[failing_server()], passive=NO_PASSIVE_EJECTION)
    load = LoadGen(t.port, threads=4, duration=90.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "50,100", "--step-time", "30s",
                  "--min-requests", "20", "--max-error-rate", "1%", timeout=FOLLOW_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 1, r.stdout + r.stderr
    ro = rollout(t)
    assert ro["state"] == "rolled_back", ro["state"]
    assert ro["analysis"]["min_requests"] == 20 and ro["analysis"]["max_error_rate"] == 0.01
    assert f"tdctl: rollout {ro['id']} rolled back: {ro['reason']}" in r.stderr, r.stderr
    assert "tdctl: weights back to blue=100 green=0" in r.stderr, r.stderr
    assert weights(t) == {"blue": 100, "green": 0}
    assert load.count(status=500, backend="green") > 0, load.summary()
    assert "switched" not in r.stdout


def test_switch_exits_1_when_the_rollout_is_aborted(backends, td):
    t = blue_green(backends, td)
    p = start_switch(t, "green", "--step-time", "120s")
    r = tdctl(t, "rollout", "abort")
    assert r.returncode == 0, r.stderr
    out, err = p.communicate(timeout=30 * SLOW)
    print(out, err)
    ro = rollout(t)
    assert p.returncode == 1
    assert ro["state"] == "aborted"
    assert f"tdctl: rollout {ro['id']} aborted: " in err, err
    assert "weights back to blue=100 green=0" in err, err
    assert weights(t) == {"blue": 100, "green": 0}


def test_switch_interrupted_detaches_and_the_rollout_keeps_running_in_td(backends, td):
    t = blue_green(backends, td)
    p = start_switch(t, "green", "--step-time", "120s")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15 * SLOW)
    print(out, err)
    ro = rollout(t)
    assert p.returncode == 130, (p.returncode, out, err)
    assert (f"detached: rollout {ro['id']} keeps running in td; tdctl rollout pause|abort to "
            "stop it") in out, out
    # td goes on with it, at its first step: the client leaving changed nothing.
    time.sleep(1.0)
    ro = rollout(t)
    assert ro["state"] == "running" and ro["step"] == 0, ro["state"]
    assert weights(t) == {"blue": 90, "green": 10}
    assert tdctl(t, "rollout", "abort").returncode == 0
    assert weights(t) == {"blue": 100, "green": 0}


def test_switch_detach_starts_the_rollout_and_exits_0_at_once(backends, td):
    t = blue_green(backends, td)
    r = tdctl(t, "switch", "green", "--step-time", "120s", "--on-failure", "pause",
              "--detach")
    assert r.returncode == 0, r.stderr
    ro = rollout(t)
    assert ro["state"] == "running" and ro["on_failure"] == "pause" and ro["step_s"] == 120
    assert ro["steps"] == [10, 50, 100]
    assert "tdctl rollout status" in r.stdout
    assert tdctl(t, "rollout", "abort").returncode == 0


def test_switch_refused_by_td_exits_1_and_changes_nothing(backends, td):
    t = blue_green(backends, td, blue_w=0, green_w=100)
    version = t.state()["version"]
    # green has all the traffic already: td says so, no rollout starts.
    r = tdctl(t, "switch", "green", "--step-time", "1s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("tdctl: td refused (HTTP 400): "), r.stderr
    assert t.api("GET", "/api/v1/rollout")[0] == 404
    assert weights(t) == {"blue": 0, "green": 100} and t.state()["version"] == version
    # While one is active, a second is refused with its id.
    assert tdctl(t, "switch", "blue", "--step-time", "120s", "--detach").returncode == 0
    active = rollout(t)
    r = tdctl(t, "switch", "green", "--step-time", "1s")
    assert r.returncode == 1 and "(HTTP 409)" in r.stderr and active["id"] in r.stderr, r.stderr
    assert rollout(t)["id"] == active["id"]
    assert tdctl(t, "rollout", "abort").returncode == 0


def test_switch_to_a_green_without_a_healthy_server_is_refused(backends, td):
    dead = free_port()  # nothing listens there
    hc = {"type": "http", "path": "/", "expect_status": "2xx", "interval_ms": 100,
          "timeout_ms": 500, "fall": 1, "rise": 1, "port": 0, "default_down": False}
    t = blue_green(backends, td, blue_w=70, green_w=30, green_ports=[dead], health_check=hc)
    wait_for(lambda: not [b for b in t.state()["backends"] if b["name"] == "green"][0]["up"], 5,
             what="green down")
    version = t.state()["version"]
    r = tdctl(t, "switch", "green", "--step-time", "1s")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "td refused (HTTP 400)" in r.stderr, r.stderr
    assert weights(t) == {"blue": 70, "green": 30} and t.state()["version"] == version
    assert t.api("GET", "/api/v1/rollout")[0] == 404


def test_switch_sets_a_green_in_maint_ready_first(backends, td):
    t = blue_green(backends, td)
    assert t.api("PUT", "/api/v1/backends/green", {"state": "maint"})[0] == 200
    r = tdctl(t, "switch", "green", "--step-time", "120s", "--detach")
    assert r.returncode == 0, r.stderr
    assert "green: state maint -> ready" in r.stdout, r.stdout
    green = [b for b in t.state()["backends"] if b["name"] == "green"][0]
    assert green["state"] == "ready"
    assert tdctl(t, "rollout", "abort").returncode == 0


SWITCH_USAGE_ERRORS = [
    ["switch", "green", "--step-time", "0.5s"],
    ["switch", "green", "--step-time", "2d"],
    ["switch", "green", "--step-time", "10s", "--interval", "10s"],
    ["switch", "green", "--step-time", "10s", "--ramp", "20s"],
    ["switch", "green", "--ramp", "soon"],
    ["switch", "green", "--min-requests", "-1"],
    ["switch", "green", "--min-requests", "many"],
    ["switch", "green", "--on-failure", "retry"],
    ["switch", "green", "--pre-check", "healthz"],
    ["switch", "green", "--full"],
    ["rollout", "frobnicate"],
    ["rollout", "pause", "now"],
    ["rollout", "pause", "--full"],
    ["rollout", "--detach"],
]


def test_switch_and_rollout_usage_errors_exit_2_and_change_nothing(backends, td):
    t = blue_green(backends, td)
    for args in SWITCH_USAGE_ERRORS:
        r = tdctl(t, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("tdctl: ") and "--help" in r.stderr, (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    assert t.api("GET", "/api/v1/rollout")[0] == 404
    assert weights(t) == {"blue": 100, "green": 0}


# ---------------------------------------------------------------------------------------------
# tdctl rollout

def test_rollout_status_pause_resume_promote_abort(backends, td):
    t = blue_green(backends, td)
    r = tdctl(t, "rollout")
    assert r.returncode == 0 and r.stdout == "no rollout yet\n", r.stdout + r.stderr
    assert tdctl(t, "switch", "green", "--step-time", "120s", "--detach").returncode == 0
    ro = rollout(t)

    r = tdctl(t, "rollout", "status")
    assert r.returncode == 0, r.stderr
    assert f"rollout {ro['id']}: running, blue -> green, step 1 of 3" in r.stdout, r.stdout
    assert "weights: blue=90 green=10 (before the rollout: blue=100 green=0)" in r.stdout
    assert "STEP" in r.stdout and "TARGET" in r.stdout and "BASELINE" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line[:1].isdigit()]
    assert [row[:3] for row in rows] == [["1", "10%", "running"], ["2", "50%", "pending"],
                                        ["3", "100%", "pending"]], rows
    r = tdctl(t, "--json", "rollout")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == ro["id"]

    r = tdctl(t, "rollout", "pause")
    assert r.returncode == 0 and f"rollout {ro['id']}: paused" in r.stdout, r.stdout + r.stderr
    assert rollout(t)["state"] == "paused"
    # An action that does not apply in the state: td's 409, nothing changed.
    r = tdctl(t, "rollout", "pause")
    assert r.returncode == 1 and "td refused (HTTP 409)" in r.stderr, r.stderr
    assert rollout(t)["state"] == "paused"

    r = tdctl(t, "rollout", "resume")
    assert r.returncode == 0 and rollout(t)["state"] == "running", r.stderr
    r = tdctl(t, "rollout", "resume")
    assert r.returncode == 1 and "(HTTP 409)" in r.stderr

    r = tdctl(t, "--json", "rollout", "promote")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == 1
    ro = rollout(t)
    assert ro["step"] == 1 and ro["steps_detail"][0]["state"] in ("passed", "skipped")
    assert weights(t) == {"blue": 50, "green": 50}

    r = tdctl(t, "rollout", "abort")
    assert r.returncode == 0 and "aborted" in r.stdout, r.stdout
    assert rollout(t)["state"] == "aborted"
    assert weights(t) == {"blue": 100, "green": 0}
    r = tdctl(t, "rollout", "abort")
    assert r.returncode == 1 and "(HTTP 409)" in r.stderr
    r = tdctl(t, "rollout")
    assert r.returncode == 0 and ": aborted, blue -> green" in r.stdout, r.stdout


def test_status_names_the_rollout(backends, td):
    t = blue_green(backends, td)
    assert "rollout " not in tdctl(t, "status").stdout
    assert tdctl(t, "switch", "green", "--step-time", "120s", "--detach").returncode == 0
    ro = rollout(t)
    r = tdctl(t, "status")
    assert r.returncode == 0
    assert f"rollout  {ro['id']} running: to green, step 1 of 3 (10%); see tdctl rollout" in \
        r.stdout, r.stdout
    assert tdctl(t, "rollout", "abort").returncode == 0


def test_rollout_promote_full_moves_all_traffic_at_once(backends, td):
    t = blue_green(backends, td)
    assert tdctl(t, "switch", "green", "--step-time", "120s", "--detach").returncode == 0
    r = tdctl(t, "rollout", "promote", "--full")
    assert r.returncode == 0, r.stderr
    # Straight to the last step (100 %), the steps between skipped; a promote then ends it.
    ro = rollout(t)
    assert ro["step"] == 2 and weights(t) == {"blue": 0, "green": 100}, ro["step"]
    assert [d["state"] for d in ro["steps_detail"][:2]] == ["skipped", "skipped"]
    assert tdctl(t, "rollout", "promote").returncode == 0
    ro = wait_rollout(t, lambda ro: ro["state"] not in ACTIVE, "the rollout ended")
    assert ro["state"] == "succeeded", ro["state"]
    assert weights(t) == {"blue": 0, "green": 100}


# ---------------------------------------------------------------------------------------------
# tdctl rollback after a rollout

def test_rollback_right_after_a_rollout_restores_the_weights_from_before_the_whole_rollout(
        backends, td):
    t = blue_green(backends, td, blue_w=70, green_w=30)
    r = tdctl(t, "switch", "green", "--steps", "50,100", "--step-time", "1s",
              timeout=FOLLOW_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    ro = rollout(t)
    assert ro["weights_before"] == {"blue": 70, "green": 30}
    assert weights(t) == {"blue": 0, "green": 100}
    r = tdctl(t, "rollback")
    assert r.returncode == 0, r.stderr
    assert f"undoing rollout {ro['id']}" in r.stdout, r.stdout
    # Not blue=50 green=50, the weights before the last step.
    assert weights(t) == {"blue": 70, "green": 30}
    # Again: the weights are those before the rollout already.
    r = tdctl(t, "rollback")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout
    assert weights(t) == {"blue": 70, "green": 30}


def test_a_second_rollback_in_a_later_second_than_the_rollout_has_nothing_to_do(backends, td):
    # The first rollback lands in a later second than the rollout's end: the second one must
    # see that change as the rollout's undo, not as a change of its own to undo.
    t = blue_green(backends, td, blue_w=70, green_w=30)
    r = tdctl(t, "switch", "green", "--steps", "100", "--step-time", "1s",
              timeout=FOLLOW_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(1.1)  # the rollback below comes in a later second than the rollout's end
    assert tdctl(t, "rollback").returncode == 0
    assert weights(t) == {"blue": 70, "green": 30}
    r = tdctl(t, "rollback")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout
    assert weights(t) == {"blue": 70, "green": 30}


def test_rollback_after_a_later_change_of_weights_undoes_that_change(backends, td):
    t = blue_green(backends, td, blue_w=70, green_w=30)
    r = tdctl(t, "switch", "green", "--steps", "100", "--step-time", "1s",
              timeout=FOLLOW_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(1.1)  # the change below comes in a later second than the rollout's end
    assert tdctl(t, "ratio", "blue=20", "green=80").returncode == 0
    assert tdctl(t, "rollback").returncode == 0
    assert weights(t) == {"blue": 0, "green": 100}


def test_rollback_during_a_rollout_is_refused_and_names_abort(backends, td):
    t = blue_green(backends, td)
    assert tdctl(t, "switch", "green", "--step-time", "120s", "--detach").returncode == 0
    r = tdctl(t, "rollback")
    assert r.returncode == 1 and "tdctl rollout abort" in r.stderr, r.stderr
    assert rollout(t)["state"] == "running" and weights(t) == {"blue": 90, "green": 10}
    assert tdctl(t, "rollout", "abort").returncode == 0


# ---------------------------------------------------------------------------------------------
# manual pages

@pytest.mark.parametrize("command", ["switch", "rollout"])
def test_rollout_commands_have_a_manual_page(command):
    r = subprocess.run([TDCTL, command, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stderr == ""
    page = r.stdout
    for section in ("NAME\n", "SYNOPSIS\n", "DESCRIPTION\n", "EXIT STATUS\n", "EXAMPLES\n"):
        assert section in page, (command, section)
    assert f"tdctl {command} - " in page
    assert max(len(line) for line in page.splitlines()) <= 80
    general = subprocess.run([TDCTL, "--help"], capture_output=True, text=True, timeout=10)
    assert f"    {command}" in general.stdout
    if command == "switch":
        for opt in ("--steps LIST", "--step-time DURATION", "--ramp DURATION",
                    "--max-error-rate RATE", "--max-p99-ms MS", "--min-requests N",
                    "--on-failure rollback|pause", "--pre-check PATH", "--drain", "--detach",
                    "130"):
            assert opt in page, opt
    else:
        for word in ("pause", "resume", "promote", "--full", "abort", "--json"):
            assert word in page, word
