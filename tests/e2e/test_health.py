"""End-to-end tests of td's health checks (http and tcp, fall/rise, default_down, port override,
timeouts, expect_body, per-backend overrides), of what happens under load when servers die or
are marked down, and of failover to a backup and back.

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py); every socket has
a timeout, and every wait is bounded, so a misbehaving td fails a test instead of hanging it.
Figures (requests sent, failed, times) are printed: run pytest with -s to see them."""
import http.client
import re
import threading
import time

import pytest

from conftest import (ASAN, LoadGen, backend_cfg, backend_state, reload_config,
                      server_state, set_weights, wait_for)

TIMEOUT = 10  # seconds, for every client socket
SLACK = 2.0 if ASAN else 1.0  # extra seconds allowed for timing bounds under ASan


def hc(**kw):
    """A global health_check section: http on /, quick, with the given overrides."""
    h = {"type": "http", "path": "/", "expect_status": "2xx,3xx", "interval_ms": 200,
         "timeout_ms": 1000, "fall": 2, "rise": 2, "port": 0, "default_down": False}
    h.update(kw)
    return h


def get(port, path="/", conn=None, headers=None):
    """One GET on `conn` (keep-alive) or on a fresh connection: (status, headers, body)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.headers, r.read()
    finally:
        if conn is None:
            c.close()


def serve_n(port, n, path="/"):
    """n GETs, alternately on one keep-alive connection and on fresh ones; returns
    {(status, backend): count}."""
    counts = {}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        for i in range(n):
            status, h, _ = get(port, path, conn=c if i % 2 else None)
            key = (status, h.get("X-TD-Demo-Backend"))
            counts[key] = counts.get(key, 0) + 1
    finally:
        c.close()
    return counts


def health_of(t, port):
    return server_state(t.state(), port)["health"]


class HealthWatch:
    """Polls td's state for one server every 20 ms in a thread and keeps the (time, health)
    transitions, so a test can tell when a server went down or up."""

    def __init__(self, t, port):
        self.t, self.port = t, port
        self.changes = []  # (monotonic time, health)
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                h = health_of(self.t, self.port)
            except Exception:  # td stopping: the test reports what it saw
                return
            if not self.changes or self.changes[-1][1] != h:
                self.changes.append((time.monotonic(), h))
            self.stop_ev.wait(0.02)

    def first(self, health, after=0.0):
        for t, h in list(self.changes):
            if h == health and t >= after:
                return t
        return None

    def wait(self, health, timeout):
        """Waits until the watch saw `health`; returns the time it was first seen."""
        return wait_for(lambda: self.first(health), timeout, what=f"server {self.port} {health}")

    def stop(self):
        self.stop_ev.set()
        self.th.join(timeout=5)


# ---- active checks ----

def test_http_check_500_marks_server_down_after_fall_checks(backends, td):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])},
                      health_check=hc(interval_ms=300, fall=3, rise=2))
    cfg["backends"][0]["health_check"] = {"path": "/status/500"}  # blue only; green checks "/"
    t0 = time.monotonic()
    t = td(cfg)
    w = HealthWatch(t, bp)
    try:
        down_at = w.wait("down", 5) - t0
    finally:
        w.stop()
    print(f"blue (check answers 500, interval 300 ms, fall 3) down {down_at:.3f} s after td "
          f"started; transitions {[(round(x - t0, 3), h) for x, h in w.changes]}")
    # Not before the third failed check (checks at 0, 300, 600 ms), and not much later.
    assert w.changes[0][1] == "up", "blue was down before any failed check"
    assert down_at >= 0.55, f"blue went down after {down_at:.3f} s: before 3 checks at 300 ms"
    assert down_at <= 0.6 + 1.0 + SLACK
    log = t.proc.output()
    assert re.search(rf"health: server 127\.0\.0\.1:{bp} \(blue\) is down after 3 failed checks "
                     r"\(status 500", log), log[-2000:]
    s = t.state()
    assert "500" in server_state(s, bp).get("last_check", ""), server_state(s, bp)
    assert server_state(s, gp)["health"] == "up"
    assert backend_state(s, "blue")["up"] is False
    counts = serve_n(t.port, 300)
    print(f"300 requests with blue down: {counts}")
    assert counts == {(200, "green"): 300}, counts
    s = t.state()
    assert server_state(s, bp)["requests"] == 0, server_state(s, bp)
    assert server_state(s, gp)["requests"] == 300, server_state(s, gp)


def test_default_down_keeps_new_server_out_until_rise_checks(backends, td):
    b = backends(("blue", 2), ("green", 1))
    b1, b2 = b.ports["blue"]
    gp = b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [b1]), "green": (50, [gp])},
                      health_check=hc(interval_ms=500, rise=3, default_down=True))
    t0 = time.monotonic()
    t = td(cfg)
    first = t.state()
    first_at = time.monotonic() - t0
    print(f"state {first_at:.3f} s after start: "
          f"{[(s['address'], s['health']) for x in first['backends'] for s in x['servers']]}")
    # Checks at 0, 500, 1000 ms: up only after the third; the first look is well before.
    if first_at < 0.9:
        assert server_state(first, b1)["health"] == "down", first
        assert server_state(first, gp)["health"] == "down", first
        status, h, _ = get(t.port)
        assert status == 503, f"{status} from {h.get('X-TD-Demo-Backend')}: nothing is up yet"
    wait_for(lambda: health_of(t, b1) == "up" and health_of(t, gp) == "up", 5, what="all up")
    up_at = time.monotonic() - t0
    print(f"both servers up {up_at:.3f} s after start")
    assert up_at >= 0.95, f"up after {up_at:.3f} s: before 3 checks at 500 ms"
    log = t.proc.output()
    assert f"127.0.0.1:{b1} (blue) is up after 3 successful checks" in log, log[-2000:]

    # A new server added by a reload starts down and gets nothing until it passed rise checks.
    def add(cfg):
        cfg["backends"][0]["servers"].append({"address": f"127.0.0.1:{b2}", "weight": 1})
    t_reload = time.monotonic()
    s = reload_config(t, add)
    assert server_state(s, b2)["health"] == "down", s
    assert server_state(s, b1)["health"] == "up", s  # the old one keeps its verdict
    w = HealthWatch(t, b2)
    servers = {}
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=TIMEOUT)
    try:
        while time.monotonic() - t_reload < 0.8:  # before its third check
            status, h, _ = get(t.port, conn=c)
            assert status == 200
            key = h.get("X-TD-Demo-Server")
            servers[key] = servers.get(key, 0) + 1
        assert server_state(t.state(), b2)["requests"] == 0
        up_after = w.wait("up", 5) - t_reload
    finally:
        w.stop()
        c.close()
    print(f"requests while the new server was down: {servers}; new server up "
          f"{up_after:.3f} s after the reload")
    assert f"127.0.0.1:{b2}" not in servers, servers
    assert up_after >= 0.95
    counts = {}
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=TIMEOUT)
    try:
        for _ in range(200):
            status, h, _ = get(t.port, conn=c)
            assert status == 200
            key = h.get("X-TD-Demo-Server")
            counts[key] = counts.get(key, 0) + 1
    finally:
        c.close()
    print(f"200 requests after the new server rose: {counts}")
    # blue's ~100 split over its two servers
    assert 30 <= counts.get(f"127.0.0.1:{b2}", 0) <= 70, counts


@pytest.mark.parametrize("kind,path,expect", [
    ("tcp", "/status/500", "up"),     # a tcp check only connects: the path does not matter
    ("http", "/status/500", "down"),
    ("http", "/status/302", "up"),    # 3xx is expected by default
    ("http", "/status/404", "down"),
])
def test_check_types(backends, td, kind, path, expect):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"type": kind, "path": path}
    t = td(cfg)
    w = HealthWatch(t, bp)
    try:
        time.sleep(1.2)  # six checks at 200 ms: fall 2 reached long ago
        s = t.state()
    finally:
        w.stop()
    srv = server_state(s, bp)
    print(f"{kind} check on {path}: {srv['health']} (last check: {srv.get('last_check')}); "
          f"transitions {[h for _, h in w.changes]}")
    assert srv["health"] == expect, srv
    if expect == "up":
        assert [h for _, h in w.changes] == ["up"], w.changes
        assert srv.get("last_check") == ("connected" if kind == "tcp" else "status 302"), srv
        counts = serve_n(t.port, 100)
        assert set(counts) == {(200, "blue"), (200, "green")}, counts
        assert abs(counts[(200, "blue")] - 50) <= 10, counts
    else:
        assert "status" in srv.get("last_check", ""), srv
        counts = serve_n(t.port, 100)
        assert counts == {(200, "green"): 100}, counts
        assert server_state(t.state(), bp)["requests"] == 0


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_port_override_checks_another_port(backends, td, kind):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    other = backends(("grey", 1))
    op = other.ports["grey"][0]
    other.stop()  # the check port is now closed; blue's own port still answers
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"type": kind, "port": op}
    t = td(cfg)
    wait_for(lambda: health_of(t, bp) == "down", 3 + SLACK, what="blue down by its check port")
    srv = server_state(t.state(), bp)
    print(f"{kind} check on port {op} (closed) for blue on {bp}: {srv}")
    assert "connect" in srv.get("last_check", ""), srv
    assert re.search(rf"127\.0\.0\.1:{bp} \(blue\) is down after 2 failed checks \(connect",
                     t.proc.output())
    # blue's own port works: the check really went to the override port.
    status, h, _ = get(bp)
    assert (status, h.get("X-TD-Demo-Backend")) == (200, "blue")
    before = server_state(t.state(), bp)["requests"]
    counts = serve_n(t.port, 100)
    assert counts == {(200, "green"): 100}, counts
    assert server_state(t.state(), bp)["requests"] == before
    assert server_state(t.state(), gp)["health"] == "up"


def test_port_override_to_a_live_port_keeps_server_up(backends, td):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    other = backends(("grey", 1))
    op = other.ports["grey"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"port": op, "expect_body": "grey"}
    t = td(cfg)
    time.sleep(1.0)
    srv = server_state(t.state(), bp)
    print(f"http check of blue on grey's port {op}: {srv}")
    assert srv["health"] == "up", srv
    assert srv.get("last_check", "").startswith("status 200, body has"), srv


def test_hanging_check_is_marked_down_by_timeout(backends, td):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"path": "/delay/5000", "timeout_ms": 300}
    t0 = time.monotonic()
    t = td(cfg)
    wait_for(lambda: health_of(t, bp) == "down", 3 + SLACK, what="blue down by timeout")
    down_at = time.monotonic() - t0
    srv = server_state(t.state(), bp)
    print(f"blue (check hangs 5 s, timeout 300 ms, fall 2) down after {down_at:.3f} s: {srv}")
    # Two timed-out checks: 0-300 ms, then 500-800 ms; long before /delay/5000 would answer.
    assert down_at >= 0.75, down_at
    assert srv.get("last_check") == "no answer within 300 ms", srv
    assert f"127.0.0.1:{bp} (blue) is down after 2 failed checks (no answer within 300 ms)" \
        in t.proc.output()
    counts = serve_n(t.port, 50)
    assert counts == {(200, "green"): 50}, counts
    # It stays down: later checks time out too (and td does not pile up probes).
    time.sleep(1.0)
    assert health_of(t, bp) == "down"


@pytest.mark.parametrize("expect_body,expect", [
    ("served by", "up"),
    ("green", "down"),  # blue's page names blue
    ("served by 10.", "down"),
])
def test_expect_body(backends, td, expect_body, expect):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"expect_body": expect_body}
    t = td(cfg)
    time.sleep(1.0)
    s = t.state()
    srv = server_state(s, bp)
    print(f"expect_body {expect_body!r}: {srv['health']} ({srv.get('last_check')})")
    assert srv["health"] == expect, srv
    assert server_state(s, gp)["health"] == "up"
    if expect == "down":
        assert srv.get("last_check") == f'status 200, body lacks "{expect_body}"', srv
        assert serve_n(t.port, 40) == {(200, "green"): 40}
    else:
        assert srv.get("last_check") == f'status 200, body has "{expect_body}"', srv


def test_down_server_comes_back_after_rise_checks(backends, td):
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    bp, gp = blue.ports["blue"][0], green.ports["green"][0]
    t = td(backend_cfg({"blue": (50, [bp]), "green": (50, [gp])},
                       health_check=hc(interval_ms=200, fall=2, rise=3)))
    assert set(serve_n(t.port, 20)) == {(200, "blue"), (200, "green")}
    blue.stop()
    wait_for(lambda: health_of(t, bp) == "down", 2 + SLACK, what="blue down")
    t_back = time.monotonic()
    backends(("blue", 1), ports={"blue": [bp]})
    w = HealthWatch(t, bp)
    try:
        up_after = w.wait("up", 3 + SLACK) - t_back
    finally:
        w.stop()
    print(f"blue back up {up_after:.3f} s after its restart (rise 3, interval 200 ms)")
    assert up_after >= 0.35, "blue up before 3 successful checks"
    assert up_after <= 0.6 + 0.2 + SLACK
    assert "is up after 3 successful checks" in t.proc.output()
    assert set(serve_n(t.port, 20)) == {(200, "blue"), (200, "green")}


# ---- under load ----

def test_killed_server_under_load_is_hidden_by_retries(backends, td):
    blue = backends(("blue", 1))
    g1 = backends(("green", 1))
    g2 = backends(("green", 1))
    p1, p2 = g1.ports["green"][0], g2.ports["green"][0]
    cfg = backend_cfg({"blue": (0, blue.ports["blue"]), "green": (100, [p1, p2])},
                      passive={"failures": 1, "eject_ms": 500, "max_eject_ms": 1000})
    t = td(cfg)
    load = LoadGen(t.port, threads=8, duration=60.0, record=True).start()
    try:
        time.sleep(2.0)
        q0 = time.monotonic()
        before = server_state(t.state(), p1)["requests"]
        state_s = time.monotonic() - q0
        g1.proc.p.kill()  # SIGKILL: in-flight and pooled connections die, the port refuses
        g1.proc.p.wait()
        t_kill = time.monotonic()
        time.sleep(4.0)
    finally:
        load.stop()
    s = t.state()
    after_kill = sum(1 for ts, st, _ in load.events if ts > t_kill + 0.1 and st == 200)
    print(f"GET flood, one of two green servers SIGKILLed 2 s in: {load.summary()}; "
          f"{after_kill} answers after the kill; killed server: {before} requests before the "
          f"kill, {server_state(s, p1)}; other: {server_state(s, p2)['requests']} requests; "
          f"GET /api/v1/state under load took {state_s:.3f} s")
    assert load.errors == [], load.errors[:5]
    assert load.failed == 0, load.bad[:5]
    assert load.sent == load.ok and load.ok > 500
    assert load.by_backend == {"green": load.ok}
    assert backend_state(s, "green")["responses"]["5xx"] == 0
    assert server_state(s, p1)["failures"] >= 1, "the killed server was never tried again"
    assert server_state(s, p2)["requests"] > 0
    assert after_kill > 100, "the flood did not go on after the kill"


def test_blue_down_by_check_gets_nothing_through_reloads(backends, td):
    b = backends(("blue", 1), ("green", 1))
    bp, gp = b.ports["blue"][0], b.ports["green"][0]
    cfg = backend_cfg({"blue": (50, [bp]), "green": (50, [gp])}, health_check=hc())
    cfg["backends"][0]["health_check"] = {"path": "/status/500"}
    t = td(cfg)
    wait_for(lambda: health_of(t, bp) == "down", 2 + SLACK, what="blue down")
    blue_before = server_state(t.state(), bp)["requests"]
    load = LoadGen(t.port, threads=6, duration=8.0).start()
    reloads = 0
    for i in range(10):
        time.sleep(0.3)
        w = (60, 40) if i % 2 else (40, 60)
        s = reload_config(t, lambda c: set_weights(c, blue=w[0], green=w[1]))
        reloads += 1
        assert server_state(s, bp)["health"] == "down", f"reload {i + 1} brought blue back: {s}"
    load.stop()
    s = t.state()
    print(f"blue down by its check, {reloads} reloads under load: {load.summary()}; "
          f"blue server requests {blue_before} -> {server_state(s, bp)['requests']}")
    assert load.errors == [] and load.failed == 0, load.summary()
    assert load.by_backend == {"green": load.ok}, load.by_backend
    assert load.ok > 200
    assert server_state(s, bp)["requests"] == blue_before == 0
    assert backend_state(s, "blue")["requests"] == 0


# ---- failover ----

def test_failover_to_backup_and_back(backends, td):
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    bp, gp = blue.ports["blue"][0], green.ports["green"][0]
    interval, fall, rise = 200, 2, 2
    t = td(backend_cfg({"blue": (100, [bp]), "green": (50, [gp])}, method="failover",
                       health_check=hc(interval_ms=interval, fall=fall, rise=rise)))
    load = LoadGen(t.port, threads=6, duration=14.0, record=True).start()
    try:
        # Primary up: the backup gets nothing, also across a reload.
        time.sleep(1.0)
        reload_config(t, lambda c: None)
        time.sleep(1.0)
        s = t.state()
        assert server_state(s, gp)["requests"] == 0, s
        assert load.by_backend.get("green", 0) == 0, load.by_backend
        assert load.by_backend.get("blue", 0) > 0, load.summary()

        # Primary dies: the backup serves within fall * interval + 1 s.
        blue.proc.p.kill()
        blue.proc.p.wait()
        t_kill = time.monotonic()
        wait_for(lambda: any(be == "green" and ts >= t_kill for ts, _, be in list(load.events)),
                 fall * interval / 1000 + 1.0 + SLACK, what="first green response")
        first_green = min(ts for ts, _, be in list(load.events) if be == "green" and ts >= t_kill)
        # ... and td's checks (or passive detection) take blue out.
        wait_for(lambda: health_of(t, bp) != "up", fall * interval / 1000 + SLACK,
                 what="blue out after its kill")
        blue_out_s = time.monotonic() - t_kill
        failover_s = first_green - t_kill
        lost = [(round(ts - t_kill, 3), st) for ts, st, be in list(load.events)
                if t_kill <= ts <= first_green and (st is None or st >= 300)]
        time.sleep(1.0)

        # Primary back on the same port: traffic returns after rise checks.
        t_back = time.monotonic()
        backends(("blue", 1), ports={"blue": [bp]})
        wait_for(lambda: any(be == "blue" and ts >= t_back for ts, _, be in list(load.events)),
                 rise * interval / 1000 + 1.0 + SLACK, what="first blue response after return")
        first_blue = min(ts for ts, _, be in list(load.events) if be == "blue" and ts >= t_back)
        back_s = first_blue - t_back
        time.sleep(0.5)  # requests routed to green before the switch have finished

        # Primary up again: the backup gets nothing, also across a reload.
        green_before = server_state(t.state(), gp)["requests"]
        t_mark = time.monotonic()
        time.sleep(0.8)
        reload_config(t, lambda c: None)
        time.sleep(0.8)
        green_after = server_state(t.state(), gp)["requests"]
        late_green = [ts for ts, _, be in list(load.events) if be == "green" and ts > t_mark]
    finally:
        load.stop()
    s = t.state()
    print(f"failover under load: {load.summary()}")
    print(f"backup first served {failover_s:.3f} s after the kill (bound "
          f"{fall * interval / 1000 + 1.0:.1f} s); {len(lost)} requests failed in between: "
          f"{lost[:10]}; blue out of service by {blue_out_s:.3f} s; primary served again {back_s:.3f} s after its restart; "
          f"backup requests {green_before} -> {green_after} while the primary was back")
    assert failover_s <= fall * interval / 1000 + 1.0 + (SLACK - 1.0)
    assert back_s >= (rise - 1) * interval / 1000 * 0.9, "primary back before rise checks"
    assert back_s <= rise * interval / 1000 + 1.0 + (SLACK - 1.0)
    assert load.errors == [] and load.failed == 0, load.summary()  # GETs are retried
    assert green_after == green_before, "the backup got requests while the primary was up"
    assert late_green == []
    assert backend_state(s, "blue")["responses"]["5xx"] == 0
    assert backend_state(s, "green")["responses"]["5xx"] == 0
