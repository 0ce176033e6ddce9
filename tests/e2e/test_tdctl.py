"""End-to-end tests of tdctl's deploy commands (switch, drain, rollback, history), of `tdctl
config put -`, of its usage errors and of its manual pages, against a real td and real backends
on 127.0.0.1.

The load is a small load generator of this file: a few threads, each with one keep-alive
http.client connection, bounded in time. Backends that answer badly (500 for everything, or
slowly) are tiny Python HTTP servers started as separate processes. Figures (requests sent,
failed, times) are printed: run pytest with -s to see them."""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import (TDCTL, LoadGen, Proc, backend_cfg, backend_state, free_port, set_weights,
                      wait_for, wait_port, weights)

TIMEOUT = 10  # seconds, for every client socket
SWITCH_TIMEOUT = 90  # seconds a whole tdctl switch may take before the test gives up on it


# ---------------------------------------------------------------------------------------------
# Helpers

def tdctl(t, *args, timeout=60):
    """Runs tdctl against td `t`; returns the CompletedProcess (returncode, stdout, stderr)."""
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    env.pop("TD_TOKEN", None)
    r = subprocess.run([TDCTL, "--admin", t.admin, *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    print(f"$ tdctl {' '.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def history(t):
    status, h = t.api("GET", "/api/v1/history")
    assert status == 200, h
    return h


def green_weights_in_history(t):
    """The green weight after each change of td's history, oldest first."""
    return [e["after"]["weights"]["green"] for e in history(t)]


# A backend that answers badly, as its own process: "fail" answers 500 to everything, "slow"
# answers 200 after DELAY seconds. Keep-alive HTTP/1.1 with Content-Length, like a real app.
BAD_SERVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
mode, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        if mode == "slow":
            time.sleep(float(sys.argv[4]))
        self.send_response(500 if mode == "fail" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-TD-Demo-Backend", name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
    def do_GET(self):
        self.answer(b"%s %s\n" % (mode.encode(), name.encode()))
    do_HEAD = do_GET
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128  # the default 5 drops SYNs under load: 1 s stalls
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


@pytest.fixture
def bad_server():
    started = []

    def start(mode, name="green", delay=0.0):
        port = free_port()
        p = Proc([sys.executable, "-c", BAD_SERVER, mode, str(port), name, str(delay)],
                 f"bad-{mode}")
        started.append(p)
        wait_port(port)
        return port

    yield start
    for p in started:
        p.stop()


def blue_green(backends, td, blue_w=100, green_w=0, green_ports=None, **extra):
    """Demo backends blue (and green unless green_ports is given) and a td over them."""
    b = backends(("blue", 1), ("green", 1)) if green_ports is None else backends(("blue", 1))
    gp = green_ports if green_ports is not None else b.ports["green"]
    return td(backend_cfg({"blue": (blue_w, b.ports["blue"]), "green": (green_w, gp)}, **extra))


class Delayed:
    """One GET /delay/MS through td in a thread; .status, .backend and .done_at (monotonic)."""

    def __init__(self, port, ms):
        self.status = self.backend = self.done_at = None
        self.th = threading.Thread(target=self._run, args=(port, ms), daemon=True)
        self.th.start()

    def _run(self, port, ms):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT + ms / 1000)
        try:
            c.request("GET", f"/delay/{ms}")
            r = c.getresponse()
            r.read()
            self.status, self.backend = r.status, r.headers.get("X-TD-Demo-Backend")
        finally:
            self.done_at = time.monotonic()
            c.close()

    def join(self):
        self.th.join(timeout=TIMEOUT + 10)
        assert not self.th.is_alive()


def start_delayed_on_blue(t, ms):
    """Sends GET /delay/MS while blue has all the traffic, and waits until td has it in flight."""
    d = Delayed(t.port, ms)
    wait_for(lambda: backend_state(t.state(), "blue")["in_flight"] == 1, 5,
             what="blue: 1 in flight")
    return d


# ---------------------------------------------------------------------------------------------
# switch

def test_switch_under_load_moves_all_traffic_without_a_failed_request(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    load = LoadGen(t.port, threads=4, duration=60.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "10,50,100", "--interval", "2s",
                  timeout=SWITCH_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 0, r.stderr
    assert load.errors == [] and load.failed == 0, load.summary()
    assert weights(t) == {"blue": 0, "green": 100}
    assert green_weights_in_history(t) == [10, 50, 100]
    assert load.count(backend="blue") > 0 and load.count(backend="green") > 0, load.summary()
    # One progress bar line per step, then the old side drained.
    bars = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert len(bars) == 3 and "100%" in bars[-1], r.stdout
    assert "blue: drained" in r.stdout and "switched to green" in r.stdout, r.stdout
    assert backend_state(t.state(), "blue")["in_flight"] == 0


# td's passive detection ejects a server after 3 answers 5xx in a row (passive.failures): then
# green is down and a switch rolls back for that. To see tdctl judge the 5xx rate itself, the
# first test lets green's server answer 500 as long as it likes.
NO_PASSIVE_EJECTION = {"failures": 1000, "eject_ms": 5000, "max_eject_ms": 300000}


def test_switch_to_a_green_answering_500_rolls_back_by_itself(backends, td, bad_server):
    green_port = bad_server("fail")
    t = blue_green(backends, td, blue_w=100, green_w=0, green_ports=[green_port],
                   passive=NO_PASSIVE_EJECTION)
    load = LoadGen(t.port, threads=4, duration=60.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "10,50,100", "--interval", "2s",
                  timeout=SWITCH_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "5xx rate" in r.stderr and "rolled back to green=0 blue=100" in r.stderr, r.stderr
    assert weights(t) == {"blue": 100, "green": 0}
    # Green really answered 500 (and blue 2xx to the same path), and it was caught before it had
    # all the traffic (in the first step, unless that step saw fewer than 20 of its answers).
    assert load.count(status=500, backend="green") > 0, load.summary()
    assert load.count(backend="blue") == load.count(status=200, backend="blue") > 0
    steps = green_weights_in_history(t)
    assert steps in ([10, 0], [10, 50, 0]), steps
    assert "100%" not in r.stdout
    assert load.errors == [], load.summary()


def test_switch_rolls_back_when_td_ejects_a_green_answering_500(backends, td, bad_server):
    green_port = bad_server("fail")
    t = blue_green(backends, td, blue_w=100, green_w=0, green_ports=[green_port])
    load = LoadGen(t.port, threads=4, duration=60.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "10,50,100", "--interval", "2s",
                  timeout=SWITCH_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "green has no server up any more" in r.stderr, r.stderr
    assert "rolled back to green=0 blue=100" in r.stderr, r.stderr
    assert weights(t) == {"blue": 100, "green": 0}
    assert green_weights_in_history(t) in ([10, 0], [10, 50, 0])
    assert load.count(status=500, backend="green") > 0, load.summary()


def test_switch_to_a_slow_green_rolls_back_on_p99(backends, td, bad_server):
    green_port = bad_server("slow", delay=0.3)
    t = blue_green(backends, td, blue_w=100, green_w=0, green_ports=[green_port])
    load = LoadGen(t.port, threads=16, duration=60.0).start()
    try:
        time.sleep(0.3)
        r = tdctl(t, "switch", "green", "--steps", "50,100", "--interval", "3s",
                  "--max-p99-ms", "100", timeout=SWITCH_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 1, r.stdout + r.stderr
    # 300 ms falls in td's bucket of at most 500 ms.
    assert "p99 latency 500 ms" in r.stderr and "above --max-p99-ms 100" in r.stderr, r.stderr
    blue_p99 = int(re.search(r"above blue's (\d+) ms", r.stderr).group(1))
    assert blue_p99 < 100, r.stderr
    assert weights(t) == {"blue": 100, "green": 0}
    assert green_weights_in_history(t) in ([50, 0], [50, 100, 0])
    assert load.failed == 0 and load.errors == [], load.summary()


def test_switch_does_not_blame_green_for_a_latency_both_sides_have(backends, td):
    # Every request takes 600 ms on both sides: green's p99 is above --max-p99-ms but no worse
    # than blue's, so the switch goes through. (600 ms is in td's bucket of 500 to 1000 ms, far
    # from its edges: a request slowed by a busy machine stays in it.)
    t = blue_green(backends, td, blue_w=100, green_w=0)
    load = LoadGen(t.port, path="/delay/600", threads=24, duration=60.0).start()
    try:
        time.sleep(0.5)
        r = tdctl(t, "switch", "green", "--steps", "50,100", "--interval", "3s",
                  "--max-p99-ms", "100", timeout=SWITCH_TIMEOUT)
    finally:
        load.stop()
    print(load.summary())
    assert r.returncode == 0, r.stdout + r.stderr
    assert weights(t) == {"blue": 0, "green": 100}
    # Green was judged: enough answers in the last step, with its p99 above the limit.
    last = [line for line in r.stdout.splitlines() if line.startswith("  3.0s of 3.0s")][-1]
    answers = int(last.split("green ")[1].split(" answers")[0])
    assert answers >= 20 and "p99 1000 ms" in last, last
    assert load.failed == 0 and load.errors == [], load.summary()


def start_switch(t, *args):
    """Starts tdctl switch in the background; returns the Popen once the first step is set."""
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    p = subprocess.Popen([TDCTL, "--admin", t.admin, "switch", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: weights(t)["green"] != 0, 10, what="the first step")
    except AssertionError:
        p.kill()
        raise
    return p


def test_switch_interrupted_rolls_back(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    p = start_switch(t, "green", "--interval", "30s")
    assert weights(t) == {"blue": 90, "green": 10}
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=15)
    print(out, err)
    assert p.returncode == 1
    assert "interrupted" in err and "rolled back to green=0 blue=100" in err, err
    assert weights(t) == {"blue": 100, "green": 0}


def test_switch_stops_when_someone_else_changes_the_weights(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    p = start_switch(t, "green", "--interval", "30s")
    t.set_ratio(blue=30, green=70)
    out, err = p.communicate(timeout=15)
    print(out, err)
    assert p.returncode == 1
    assert "someone else changed the weights during the switch (green=70 blue=30)" in err, err
    assert "rolled back" not in err
    assert weights(t) == {"blue": 30, "green": 70}


def test_switch_to_a_green_without_a_healthy_server_is_refused(backends, td):
    dead = free_port()  # nothing listens there
    hc = {"type": "http", "path": "/", "expect_status": "2xx", "interval_ms": 100,
          "timeout_ms": 500, "fall": 1, "rise": 1, "port": 0, "default_down": False}
    t = blue_green(backends, td, blue_w=70, green_w=30, green_ports=[dead], health_check=hc)
    wait_for(lambda: not backend_state(t.state(), "green")["up"], 5, what="green down")
    before = t.state()
    r = tdctl(t, "switch", "green", "--interval", "1s")
    assert r.returncode == 1
    assert "green has no server up" in r.stderr and "nothing changed" in r.stderr, r.stderr
    after = t.state()
    assert weights(t) == {"blue": 70, "green": 30}
    assert after["version"] == before["version"]
    assert history(t) == []


# ---------------------------------------------------------------------------------------------
# drain

def test_drain_wait_returns_once_the_request_in_flight_is_done(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    d = start_delayed_on_blue(t, 1500)
    t.set_ratio(green=100)  # someone must take the traffic: drain refuses to leave none
    started = time.monotonic()
    r = tdctl(t, "drain", "blue", "--wait")
    ended = time.monotonic()
    d.join()
    print(f"drain waited {ended - started:.2f} s; the request ended "
          f"{d.done_at - started:.2f} s after the drain began")
    assert r.returncode == 0, r.stderr
    assert d.status == 200 and d.backend == "blue"
    assert ended >= d.done_at, "tdctl drain --wait returned before the request in flight ended"
    assert "blue: state ready -> drain (weight 100 kept); 1 in flight, 0 tunnels" in r.stdout, \
        r.stdout
    assert "blue: 1 in flight, 0 tunnels, 0 sticky req/10s" in r.stdout, r.stdout
    assert "blue: drained" in r.stdout, r.stdout
    assert weights(t) == {"blue": 100, "green": 100}
    assert backend_state(t.state(), "blue")["state"] == "drain"
    assert backend_state(t.state(), "blue")["in_flight"] == 0


def test_drain_wait_stops_at_drain_ms_and_says_so(backends, td):
    cfg_timeouts = {"connect_ms": 2000, "client_header_ms": 5000, "upstream_response_ms": 10000,
                    "keepalive_idle_ms": 30000, "drain_ms": 1000}
    t = blue_green(backends, td, blue_w=100, green_w=0, timeouts=cfg_timeouts)
    d = start_delayed_on_blue(t, 4000)
    t.set_ratio(green=100)
    r = tdctl(t, "drain", "blue", "--wait")
    ended = time.monotonic()
    d.join()
    assert r.returncode == 0, r.stderr
    assert "drain time (timeouts.drain_ms, 1.0s) has passed" in r.stdout, r.stdout
    assert ended < d.done_at, "tdctl waited past drain_ms"
    assert d.status == 200  # td let the request finish


def test_drain_wait_on_a_backend_already_draining_goes_by_tds_clock(backends, td):
    cfg_timeouts = {"connect_ms": 2000, "client_header_ms": 5000, "upstream_response_ms": 10000,
                    "keepalive_idle_ms": 30000, "drain_ms": 2000}
    t = blue_green(backends, td, blue_w=100, green_w=0, timeouts=cfg_timeouts)
    d = start_delayed_on_blue(t, 4000)
    t.set_ratio(blue=0, green=100)
    zero_at = time.monotonic()
    time.sleep(1.8)
    r = tdctl(t, "drain", "blue", "--wait")
    ended = time.monotonic()
    d.join()
    assert r.returncode == 0, r.stderr
    assert "blue: already at weight 0; 1 in flight" in r.stdout, r.stdout
    assert "drain time (timeouts.drain_ms, 2.0s) has passed" in r.stdout, r.stdout
    # td's drain clock started 1.8 s before tdctl did: tdctl stops near zero_at + 2 s, well
    # before the 2 s of its own clock would have ended (zero_at + 3.8 s).
    print(f"tdctl ended {ended - zero_at:.2f} s after blue went to weight 0")
    assert ended - zero_at < 3.3
    assert d.status == 200


def test_drain_wait_timeout_ends_the_wait_with_status_1(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    d = start_delayed_on_blue(t, 2500)
    t.set_ratio(green=100)
    r = tdctl(t, "drain", "blue", "--wait", "--timeout", "500ms")
    ended = time.monotonic()
    d.join()
    assert r.returncode == 1
    assert "not drained after --timeout 0.5s" in r.stderr, r.stderr
    assert ended < d.done_at
    assert weights(t) == {"blue": 100, "green": 100}
    assert backend_state(t.state(), "blue")["state"] == "drain"


def test_drain_keeps_the_other_weights_and_refuses_to_leave_none(backends, td):
    t = blue_green(backends, td, blue_w=50, green_w=30)
    r = tdctl(t, "drain", "blue")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("blue: state ready -> drain (weight 50 kept);"), r.stdout
    assert weights(t) == {"blue": 50, "green": 30}
    # Again: nothing to do.
    r = tdctl(t, "drain", "blue")
    assert r.returncode == 0 and "already in state drain" in r.stdout
    # Green is the only one left taking traffic: draining it would leave every request a 503.
    version = t.state()["version"]
    r = tdctl(t, "drain", "green", "--wait")
    assert r.returncode == 1 and "would leave no backend with a weight above 0" in r.stderr
    assert weights(t) == {"blue": 50, "green": 30} and t.state()["version"] == version
    assert backend_state(t.state(), "green")["state"] == "ready"


# ---------------------------------------------------------------------------------------------
# rollback, history

def test_rollback_restores_the_previous_ratio(backends, td):
    t = blue_green(backends, td, blue_w=50, green_w=50)
    r = tdctl(t, "rollback")
    assert r.returncode == 1 and "no change of weights" in r.stderr, r.stderr
    assert tdctl(t, "ratio", "blue=20", "green=80").returncode == 0
    assert tdctl(t, "method", "sticky").returncode == 0  # not a change of weights
    r = tdctl(t, "rollback")
    assert r.returncode == 0, r.stderr
    assert 'undoing "ratio blue=20 green=80"' in r.stdout, r.stdout
    assert weights(t) == {"blue": 50, "green": 50}
    assert t.state()["method"] == "sticky"
    # A rollback is a change itself: the next one undoes it.
    assert tdctl(t, "rollback").returncode == 0
    assert weights(t) == {"blue": 20, "green": 80}
    # --json prints td's state as it came.
    r = tdctl(t, "--json", "rollback")
    assert r.returncode == 0 and json.loads(r.stdout)["backends"][0]["weight"] == 50


def test_history_lists_the_changes(backends, td):
    t = blue_green(backends, td, blue_w=50, green_w=50)
    r = tdctl(t, "history")
    assert r.returncode == 0 and r.stdout == "no change recorded\n"
    tdctl(t, "ratio", "blue=0", "green=100")
    t.set_ratio(blue=30, green=70)
    tdctl(t, "method", "failover")
    r = tdctl(t, "history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TIME", "CLIENT", "WHAT"]
    entries = history(t)
    assert len(lines) == 1 + len(entries) == 4
    for line, e in zip(lines[1:], entries):
        assert line.split(None, 2) == [e["time"], "127.0.0.1", e["what"]]
    assert [line.split(None, 2)[2] for line in lines[1:]] == [
        "ratio blue=0 green=100", "ratio blue=30 green=70", "routing method failover"]
    r = tdctl(t, "--json", "history")
    assert r.returncode == 0 and json.loads(r.stdout) == entries


# ---------------------------------------------------------------------------------------------
# usage errors and manual pages

USAGE_ERRORS = [
    ["switch", "green", "--steps", "10,5,100"],
    ["switch", "green", "--steps", "10,50"],
    ["switch", "green", "--steps", "0,100"],
    ["switch", "green", "--steps", "10,,100"],
    ["switch", "green", "--steps", "10,101"],
    ["switch", "green", "--steps", "10, 100"],
    ["switch", "green", "--steps", ""],
    ["switch", "green", "--interval", "0s"],
    ["switch", "green", "--interval", "-1s"],
    ["switch", "green", "--interval", "soon"],
    ["switch", "green", "--interval", "2d"],
    ["switch", "green", "--max-error-rate", "150%"],
    ["switch", "green", "--max-error-rate", "2"],
    ["switch", "green", "--max-error-rate", "x%"],
    ["switch", "green", "--max-p99-ms", "0"],
    ["switch", "green", "--max-p99-ms", "1.5"],
    ["switch", "green", "--wait"],
    ["switch"],
    ["switch", "green", "blue"],
    ["switch", "purple"],
    ["drain"],
    ["drain", "purple"],
    ["drain", "blue", "--timeout", "5s"],
    ["drain", "blue", "--wait", "--timeout", "0"],
    ["drain", "blue", "--steps", "10,100"],
    ["status", "--wait"],
    ["rollback", "now"],
    ["history", "all"],
    ["help", "frobnicate"],
    ["frobnicate"],
]


def test_usage_errors_exit_2_and_change_nothing(backends, td):
    t = blue_green(backends, td, blue_w=100, green_w=0)
    before = t.state()["version"]
    for args in USAGE_ERRORS:
        r = tdctl(t, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("tdctl: ") and "--help" in r.stderr, (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    assert t.state()["version"] == before and history(t) == []
    assert weights(t) == {"blue": 100, "green": 0}


def test_switch_needs_exactly_two_backends(backends, td):
    b = backends(("blue", 1), ("green", 1), ("grey", 1))
    t = td(backend_cfg({n: (50, b.ports[n]) for n in ("blue", "green", "grey")}))
    r = tdctl(t, "switch", "green", "--interval", "1s")
    assert r.returncode == 2 and "exactly two backends; it has 3" in r.stderr, r.stderr
    assert history(t) == []


COMMANDS = ["status", "ratio", "method", "config", "drain", "switch", "rollback", "history"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_manual_page(command):
    r = subprocess.run([TDCTL, command, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stderr == ""
    page = r.stdout
    for section in ("NAME\n", "SYNOPSIS\n", "DESCRIPTION\n", "EXIT STATUS\n", "EXAMPLES\n"):
        assert section in page, (command, section)
    assert f"tdctl {command} - " in page
    assert max(len(line) for line in page.splitlines()) <= 80
    same = subprocess.run([TDCTL, "help", command], capture_output=True, text=True, timeout=10)
    assert same.returncode == 0 and same.stdout == page
    general = subprocess.run([TDCTL, "--help"], capture_output=True, text=True, timeout=10)
    assert general.returncode == 0 and f"    {command}" in general.stdout


def test_option_pages_name_every_option():
    r = subprocess.run([TDCTL, "switch", "--help"], capture_output=True, text=True, timeout=10)
    for opt in ("--steps LIST", "--interval DURATION", "--max-error-rate RATE",
                "--max-p99-ms MS"):
        assert opt in r.stdout
    r = subprocess.run([TDCTL, "drain", "--help"], capture_output=True, text=True, timeout=10)
    for opt in ("--wait", "--timeout DURATION"):
        assert opt in r.stdout


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
