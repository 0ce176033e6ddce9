"""End-to-end tests of backend states: `ready`, `drain` and `maint`, set through
PUT /api/v1/backends/NAME, the config's backend key "state" and `tdctl state`. A backend in maint
gets no user traffic of any kind (weight, failover, sticky pin) while the preview route and the
health checks still reach it; a draining one takes no new requests and keeps its pinned sticky
clients until drain_ms."""
import json
import os
import subprocess
import tempfile
import urllib.request

import pytest

from conftest import (ASAN, TD, TDCTL, backend_cfg, backend_state, get_once, needs_console,
                      run_console, server_state, sticky_cookie, tdctl, wait_for)

SLACK = 2.0 if ASAN else 1.0
PREVIEW_TOKEN = "preview-secret"


def hc(**kw):
    h = {"type": "http", "path": "/", "expect_status": "2xx,3xx", "interval_ms": 100,
         "timeout_ms": 1000, "fall": 2, "rise": 2}
    h.update(kw)
    return h


def colours(backends, wb=50, wg=50, method="round_robin", **extra):
    """blue and green, each in its own demo process (one can be stopped alone)."""
    blue, green = backends(("blue", 1)), backends(("green", 1))
    cfg = backend_cfg({"blue": (wb, blue.ports["blue"]), "green": (wg, green.ports["green"])},
                      method=method, **extra)
    cfg["routing"]["preview"] = {"token": PREVIEW_TOKEN}
    return blue, green, cfg


def set_state(t, name, state):
    status, body = t.api("PUT", f"/api/v1/backends/{name}", {"state": state})
    assert status == 200, body
    return body


def count(port, n, headers=None):
    seen = {}
    for _ in range(n):
        status, h, _ = get_once(port, headers=headers)
        k = (status, h.get("X-TD-Demo-Backend"))
        seen[k] = seen.get(k, 0) + 1
    return seen


def preview(port, name):
    status, h, _ = get_once(port, headers={"X-TD-Backend": name,
                                           "X-TD-Backend-Token": PREVIEW_TOKEN})
    return status, h.get("X-TD-Demo-Backend")


def metrics(t):
    with urllib.request.urlopen(t.admin + "/metrics", timeout=10) as r:
        return r.read().decode()


# ---- maint ----

def test_maint_backend_gets_no_requests_by_weight_at_50_50(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    s = set_state(t, "blue", "maint")
    b = backend_state(s, "blue")
    assert b["state"] == "maint" and b["share"] == 0 and b["serving"] is False, b
    assert backend_state(s, "green")["share"] == 100
    assert count(t.port, 20) == {(200, "green"): 20}
    assert backend_state(t.state(), "blue")["requests"] == 0


def test_maint_backend_gets_no_requests_when_the_other_colour_is_down(backends, td):
    """The colour being redeployed must not go live because the other one blinked: 503s, not
    the maint backend."""
    blue, green, cfg = colours(backends, health_check=hc())
    t = td(cfg)
    set_state(t, "blue", "maint")
    green.stop()
    wait_for(lambda: not backend_state(t.state(), "green")["up"], 5 + SLACK, what="green down")
    assert backend_state(t.state(), "blue")["up"] is True
    seen = count(t.port, 10)
    assert seen == {(503, None): 10}, seen
    assert backend_state(t.state(), "blue")["requests"] == 0
    # the preview route still reaches it
    assert preview(t.port, "blue") == (200, "blue")


def test_maint_backend_is_reached_by_the_preview_route(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    set_state(t, "blue", "maint")
    for _ in range(5):
        assert preview(t.port, "blue") == (200, "blue")
    assert count(t.port, 10) == {(200, "green"): 10}


def test_maint_backend_keeps_its_health_checks(backends, td):
    blue, green, cfg = colours(backends, health_check=hc())
    t = td(cfg)
    set_state(t, "blue", "maint")
    port = blue.ports["blue"][0]
    wait_for(lambda: server_state(t.state(), port)["health"] == "up", 5 + SLACK, what="blue up")
    blue.stop()
    wait_for(lambda: server_state(t.state(), port)["health"] == "down", 5 + SLACK,
             what="blue down while in maint")
    assert backend_state(t.state(), "blue")["state"] == "maint"


def test_failover_never_uses_a_backup_in_maint(backends, td):
    blue, green, cfg = colours(backends, wb=100, wg=0, method="failover", health_check=hc())
    t = td(cfg)
    set_state(t, "green", "maint")
    s = t.state()
    assert s["primary"] == "blue" and "role" not in backend_state(s, "green"), s
    blue.stop()
    wait_for(lambda: not backend_state(t.state(), "blue")["up"], 5 + SLACK, what="blue down")
    assert count(t.port, 10) == {(503, None): 10}
    s = t.state()
    assert s["serving"] is None and backend_state(s, "green")["requests"] == 0, s


def test_failover_primary_in_maint_hands_traffic_to_the_next_backend(backends, td):
    blue, green, cfg = colours(backends, wb=100, wg=0, method="failover")
    t = td(cfg)
    assert count(t.port, 5) == {(200, "blue"): 5}
    s = set_state(t, "blue", "maint")
    assert s["primary"] == "green" and s["serving"] == "green", s
    assert count(t.port, 10) == {(200, "green"): 10}
    assert preview(t.port, "blue") == (200, "blue")


def test_sticky_cookie_pinning_a_maint_backend_is_reassigned(backends, td):
    blue, green, cfg = colours(backends, method="sticky")
    t = td(cfg)
    cookie = None
    for _ in range(10):
        status, h, _ = get_once(t.port)
        if h.get("X-TD-Demo-Backend") == "blue":
            cookie = sticky_cookie(h)
            break
    assert cookie, "no client pinned to blue"
    pin = {"Cookie": f"TDSTICKY={cookie}"}
    assert count(t.port, 3, headers=pin) == {(200, "blue"): 3}
    set_state(t, "blue", "maint")
    status, h, _ = get_once(t.port, headers=pin)
    assert (status, h.get("X-TD-Demo-Backend")) == (200, "green")
    new = sticky_cookie(h)
    assert new and new != cookie
    assert count(t.port, 5, headers={"Cookie": f"TDSTICKY={new}"}) == {(200, "green"): 5}


def test_api_change_leaving_no_ready_backend_to_serve_is_refused_and_changes_nothing(backends,
                                                                                      td):
    """One command must not take the whole site down: a ratio whose only weighted backend is in
    maint, a state that leaves no ready backend with weight, or a method under which none is
    left, is refused (400 for the ratio like the all-0 ratio, 409 for a state or a method), with
    nothing changed."""
    blue, green, cfg = colours(backends)
    t = td(cfg)
    set_state(t, "blue", "maint")
    version = t.state()["version"]
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 100, "green": 0})
    assert status == 400 and "no backend in state ready" in body["error"], body
    status, body = t.api("PUT", "/api/v1/backends/green", {"state": "drain"})
    assert status == 409 and "no backend in state ready" in body["error"], body
    s = t.state()
    assert s["version"] == version
    assert backend_state(s, "green")["state"] == "ready" and backend_state(s, "green")["weight"] == 50
    assert count(t.port, 5) == {(200, "green"): 5}
    # Failover 100/0 with the primary in maint: the backup serves; round robin would leave none.
    set_state(t, "blue", "ready")
    t.set_ratio(blue=100, green=0)
    assert t.api("PUT", "/api/v1/routing", {"method": "failover"})[0] == 200
    set_state(t, "blue", "maint")
    assert count(t.port, 5) == {(200, "green"): 5}
    status, body = t.api("PUT", "/api/v1/routing", {"method": "round_robin"})
    assert status == 409 and "no backend in state ready" in body["error"], body
    assert t.state()["method"] == "failover"


# ---- drain ----

def test_drain_state_takes_no_new_requests(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    s = set_state(t, "blue", "drain")
    b = backend_state(s, "blue")
    assert b["state"] == "drain" and b["weight"] == 50 and b["draining"] is True, b
    assert b["share"] == 0
    assert count(t.port, 20) == {(200, "green"): 20}


def test_drain_state_keeps_a_pinned_sticky_client_until_drain_ms_then_moves_it(backends, td):
    blue, green, cfg = colours(backends, method="sticky")
    cfg["timeouts"]["drain_ms"] = 2000
    t = td(cfg)
    cookie = None
    for _ in range(10):
        status, h, _ = get_once(t.port)
        if h.get("X-TD-Demo-Backend") == "blue":
            cookie = sticky_cookie(h)
            break
    assert cookie, "no client pinned to blue"
    pin = {"Cookie": f"TDSTICKY={cookie}"}
    set_state(t, "blue", "drain")
    # New clients avoid it; the pinned one stays while the drain lasts.
    assert count(t.port, 10) == {(200, "green"): 10}
    status, h, _ = get_once(t.port, headers=pin)
    assert (status, h.get("X-TD-Demo-Backend")) == (200, "blue")
    wait_for(lambda: (backend_state(t.state(), "blue")["drain_elapsed_ms"] or 0) >= 2000,
             10 + SLACK, interval=0.1, what="drain_ms over")
    status, h, _ = get_once(t.port, headers=pin)
    assert (status, h.get("X-TD-Demo-Backend")) == (200, "green")
    assert sticky_cookie(h)


def test_failover_drain_on_the_primary_moves_traffic_to_the_backup(backends, td):
    """In failover, weight 0 would make the primary a backup, never drained: the drain state
    takes it out of the failover order, and drained turns true once nothing is in flight."""
    blue, green, cfg = colours(backends, wb=100, wg=0, method="failover")
    t = td(cfg)
    assert count(t.port, 5) == {(200, "blue"): 5}
    s = set_state(t, "blue", "drain")
    assert s["serving"] == "green", s
    assert count(t.port, 10) == {(200, "green"): 10}
    wait_for(lambda: backend_state(t.state(), "blue")["drained"], 5 + SLACK, what="blue drained")
    b = backend_state(t.state(), "blue")
    assert b["draining"] is True and b["in_flight"] == 0, b
    s = set_state(t, "blue", "ready")
    assert s["serving"] == "blue" and backend_state(s, "blue")["draining"] is False, s


def test_ready_state_puts_a_backend_back_in_rotation(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    set_state(t, "blue", "maint")
    assert count(t.port, 6) == {(200, "green"): 6}
    s = set_state(t, "blue", "ready")
    assert backend_state(s, "blue")["state"] == "ready" and backend_state(s, "blue")["share"] == 50
    seen = count(t.port, 20)  # two workers, each with its own round robin
    assert set(seen) == {(200, "blue"), (200, "green")}, seen


# ---- API ----

def test_backend_state_api_errors_change_nothing(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    v = t.state()["version"]
    status, body = t.api("PUT", "/api/v1/backends/purple", {"state": "maint"})
    assert status == 404 and "purple" in body["error"], body
    status, body = t.api("PUT", "/api/v1/backends/blue", {"state": "down"})
    assert status == 400 and "ready, drain, maint" in body["error"], body
    status, body = t.api("PUT", "/api/v1/backends/blue", {"weight": 0})
    assert status == 400 and "weight" in body["error"], body
    status, body = t.api("PUT", "/api/v1/backends/blue", {"state": 3})
    assert status == 400, body
    status, body = t.api("PUT", "/api/v1/backends/blue", {})
    assert status == 400, body
    status, body = t.api("PUT", "/api/v1/backends/blue", raw=b"{not json")
    assert status == 400 and "error" in body, body
    s = t.state()
    assert s["version"] == v
    assert [b["state"] for b in s["backends"]] == ["ready", "ready"]


def test_backend_get_answers_its_state_object(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    set_state(t, "green", "drain")
    status, b = t.api("GET", "/api/v1/backends/green")
    assert status == 200 and b["name"] == "green" and b["state"] == "drain", b
    assert set(b) == set(backend_state(t.state(), "green")), b
    status, body = t.api("GET", "/api/v1/backends/purple")
    assert status == 404 and "purple" in body["error"], body


def test_backend_state_change_is_audited_and_exported_as_a_metric(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    set_state(t, "blue", "maint")
    status, h = t.api("GET", "/api/v1/history")
    assert status == 200
    assert "backend blue state maint" in json.dumps(h), h
    m = metrics(t)
    assert 'td_backend_state{backend="blue",state="maint"} 1' in m, m
    assert 'td_backend_state{backend="blue",state="ready"} 0' in m
    assert 'td_backend_state{backend="green",state="ready"} 1' in m


# ---- config ----

def test_config_state_maint_loads_and_bogus_is_rejected_with_its_position(backends, td):
    blue, green, cfg = colours(backends)
    cfg["backends"][0]["state"] = "maint"
    t = td(cfg)
    s = t.state()
    assert backend_state(s, "blue")["state"] == "maint"
    assert count(t.port, 6) == {(200, "green"): 6}
    status, c = t.api("GET", "/api/v1/config")
    assert status == 200
    assert c["backends"][0]["state"] == "maint" and "state" not in c["backends"][1], c

    cfg["backends"][0]["state"] = "bogus"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        text = json.dumps(cfg, indent=2)
        with open(path, "w") as f:
            f.write(text)
        p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    i = text.index('"bogus"')
    line = text.count("\n", 0, i) + 1
    assert p.returncode == 1, out
    assert f"{path}:{line}:" in out and "bogus" in out, out
    assert "ready" in out and "maint" in out, out


# ---- tdctl ----



def test_tdctl_state_sets_and_shows_the_state(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    r = tdctl(t, "state", "blue", "maint")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "maint" in r.stdout
    assert backend_state(t.state(), "blue")["state"] == "maint"
    r = tdctl(t, "status")
    assert r.returncode == 0 and "blue (maint)" in r.stdout, r.stdout
    r = tdctl(t, "state", "blue", "bogus")
    assert r.returncode != 0 and "ready" in r.stderr, r.stdout + r.stderr
    r = tdctl(t, "state", "purple", "ready")
    assert r.returncode != 0 and "purple" in r.stderr, r.stdout + r.stderr
    r = tdctl(t, "state", "blue", "ready")
    assert r.returncode == 0, r.stdout + r.stderr
    assert backend_state(t.state(), "blue")["state"] == "ready"


def test_tdctl_drain_in_failover_drains_the_primary(backends, td):
    blue, green, cfg = colours(backends, wb=100, wg=0, method="failover")
    t = td(cfg)
    r = tdctl(t, "drain", "blue", "--wait", "--timeout", "20s")
    assert r.returncode == 0, r.stdout + r.stderr
    s = t.state()
    b = backend_state(s, "blue")
    assert b["state"] == "drain" and b["drained"] is True and b["weight"] == 100, b
    assert s["serving"] == "green"
    assert count(t.port, 5) == {(200, "green"): 5}


def test_tdctl_state_has_a_manual_page():
    r = subprocess.run([TDCTL, "state", "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "tdctl state" in r.stdout and "maint" in r.stdout, r.stdout


def test_tdctl_switch_puts_a_drained_side_back_to_ready(backends, td):
    """The deploy workflow: drain blue, deploy it, switch to blue: blue leaves drain first, or
    it would take nothing at any step."""
    blue, green, cfg = colours(backends, wb=50, wg=50)
    t = td(cfg)
    set_state(t, "blue", "drain")
    r = tdctl(t, "switch", "blue", "--steps", "100", "--interval", "1s")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "blue: state drain -> ready" in r.stdout, r.stdout
    s = t.state()
    assert backend_state(s, "blue")["state"] == "ready" and backend_state(s, "blue")["share"] == 100
    assert count(t.port, 5) == {(200, "blue"): 5}


# ---- console ----

@needs_console
def test_console_state_menu_puts_a_backend_in_maint(backends, td):
    blue, green, cfg = colours(backends)
    t = td(cfg)
    v = t.state()["version"]
    seen = run_console("states.test.mjs", url=t.admin + "/", backend="blue")
    print(seen)
    assert len(seen["dialogs"]) == 2 and "maint" in seen["dialogs"][0], seen
    assert seen["badge"] == "maint" and seen["menu"] == "maint", seen
    assert "blue is now maint" in seen["message"], seen
    assert "maint: no traffic" in seen["slider"], seen
    s = t.state()
    assert backend_state(s, "blue")["state"] == "maint"
    assert s["version"] == v + 1  # the dismissed confirmation sent nothing
    assert count(t.port, 6) == {(200, "green"): 6}


def test_maint_closes_the_backends_websockets_without_waiting_for_drain_ms(backends, td):
    websocket = pytest.importorskip("websocket")
    blue, green, cfg = colours(backends, wb=100, wg=0)
    cfg["timeouts"]["drain_ms"] = 600000
    t = td(cfg)
    wss = [websocket.create_connection(f"ws://127.0.0.1:{t.port}/ws", timeout=10)
           for _ in range(3)]
    try:
        for i, ws in enumerate(wss):
            ws.send(f"m{i}")
            assert ws.recv() == f"m{i}"
        assert backend_state(t.state(), "blue")["tunnels"] == 3
        set_state(t, "green", "drain")
        assert backend_state(t.state(), "blue")["tunnels"] == 3  # another backend's state
        set_state(t, "green", "ready")
        # Weight 0 drains: its tunnels stay until drain_ms (10 min here) ...
        t.set_ratio(blue=0, green=100)
        assert backend_state(t.state(), "blue")["tunnels"] == 3
        # ... maint closes them at once (green takes the traffic: maint may not leave nobody).
        set_state(t, "blue", "maint")
        # td looks once a second
        wait_for(lambda: backend_state(t.state(), "blue")["tunnels"] == 0, 5 + SLACK,
                 interval=0.1, what="blue's tunnels closed")
        assert backend_state(t.state(), "blue")["drained"] is True
        assert "drain: closing a tunnel of blue" in t.proc.output()
    finally:
        for ws in wss:
            try:
                ws.close(timeout=1)
            except Exception:
                pass
