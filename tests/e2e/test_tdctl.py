"""End-to-end tests of tdctl's deploy commands (drain, rollback, history; switch and rollout are
in test_rollout_cli.py), of `tdctl config put -`, of its usage errors and of its manual pages,
against a real td and real backends on 127.0.0.1. Figures are printed: run pytest with -s to see
them."""
import http.client
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import (TDCTL, backend_cfg, backend_state, set_weights, tdctl, wait_for, weights)

TIMEOUT = 10  # seconds, for every client socket


# ---------------------------------------------------------------------------------------------
# Helpers

def history(t):
    status, h = t.api("GET", "/api/v1/history")
    assert status == 200, h
    return h


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
# switch: a rollout run by td itself, tested in test_rollout_cli.py

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
