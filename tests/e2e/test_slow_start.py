"""Slow start (slow_start_ms): a server that comes back up, or a backend whose weight goes from 0
to above 0, takes its share of new requests gradually over slow_start_ms instead of all at once.
Shares are counted per window of requests, and judged against td's own clock (the state's
slow_start_remaining_ms and share), with wide margins."""
import time

from conftest import backend_state, get, server_state, wait_for

SLOW_START_MS = 6000
WINDOW = 40  # requests per window


def health(interval_ms=200):
    return {"type": "http", "path": "/", "interval_ms": interval_ms, "timeout_ms": 500,
            "fall": 1, "rise": 1}


def pair_cfg(a_port, b_port, slow_start_ms=None):
    """One backend "app" with two servers, each its own demo backend process (a and b)."""
    be = {"name": "app", "weight": 100,
          "servers": [{"address": f"127.0.0.1:{a_port}"}, {"address": f"127.0.0.1:{b_port}"}]}
    if slow_start_ms is not None:
        be["slow_start_ms"] = slow_start_ms
    return {"backends": [be], "health_check": health(),
            "timeouts": {"connect_ms": 1000, "drain_ms": 2000}}


def window_share(port, name, n=WINDOW):
    """Share (0..1) of n requests, each on a fresh connection, answered by demo backend `name`."""
    hits = 0
    for _ in range(n):
        status, who = get(port)
        assert status == 200, status
        hits += who == name
    return hits / n


def restart_until_up(backends, t, b_proc, b_port):
    """Stops demo backend b until td's check says it is down, then starts it again on its port
    and waits until td's check says it is up."""
    b_proc.stop()
    wait_for(lambda: not server_state(t.state(), b_port)["up"], 10, what="b down")
    backends(("b", 1), ports={"b": [b_port]})
    wait_for(lambda: server_state(t.state(), b_port)["up"], 10, what="b up again")


def ramp_windows(t, b_port, deadline_s=40):
    """Windows of requests after b came back: (remaining before, remaining after, b's share),
    until three windows have run after its ramp ended (bounded by deadline_s)."""
    out, after, end = [], 0, time.monotonic() + deadline_s
    while after < 3 and time.monotonic() < end:
        r0 = server_state(t.state(), b_port)["slow_start_remaining_ms"]
        share = window_share(t.port, "b")
        r1 = server_state(t.state(), b_port)["slow_start_remaining_ms"]
        out.append((r0, r1, share))
        after += r0 is None
    return out


def test_slow_start_recovered_server_share_grows_from_small_to_full(backends, td):
    a, b = backends(("a", 1)), backends(("b", 1))
    b_port = b.ports["b"][0]
    t = td(pair_cfg(a.ports["a"][0], b_port, SLOW_START_MS))
    # At td's start the servers are warm: b serves its half at once.
    wait_for(lambda: server_state(t.state(), b_port)["up"], 10, what="b up at start")
    assert server_state(t.state(), b_port)["slow_start_remaining_ms"] is None
    assert window_share(t.port, "b") >= 0.35

    restart_until_up(backends, t, b, b_port)
    windows = ramp_windows(t, b_port)
    summary = [(r0, r1, round(s, 2)) for r0, r1, s in windows]
    # Early: every window wholly within the first 40 % of the ramp (by td's clock) gives b well
    # under its full half (at most ~29 % expected), and the earliest gives it a small share.
    early = [s for r0, r1, s in windows
             if r0 is not None and r1 is not None and r1 >= 0.6 * SLOW_START_MS]
    assert early, f"no window early in the ramp: {summary}"
    assert max(early) < 0.4, summary
    assert min(early) < 0.2, summary
    # Later: once the ramp is over, b has its full half.
    late = [s for r0, r1, s in windows if r0 is None]
    assert len(late) >= 3, summary
    assert min(late) >= 0.35, summary
    # A trend, not a jump: the late share is well above the early one.
    assert sum(late) / len(late) > sum(early) / len(early) + 0.15, summary
    # The remaining time only ever went down while it ramped.
    rem = [r for r0, r1, _ in windows for r in (r0, r1) if r is not None]
    assert rem == sorted(rem, reverse=True), summary


def test_without_slow_start_a_recovered_server_takes_its_full_share_at_once(backends, td):
    a, b = backends(("a", 1)), backends(("b", 1))
    b_port = b.ports["b"][0]
    t = td(pair_cfg(a.ports["a"][0], b_port))
    wait_for(lambda: server_state(t.state(), b_port)["up"], 10, what="b up at start")
    restart_until_up(backends, t, b, b_port)
    assert server_state(t.state(), b_port)["slow_start_remaining_ms"] is None
    assert window_share(t.port, "b") >= 0.35


def colours_cfg(blue_port, green_port, green_weight, slow_start_ms=None):
    cfg = {"backends": [
        {"name": "blue", "weight": 50, "servers": [{"address": f"127.0.0.1:{blue_port}"}]},
        {"name": "green", "weight": green_weight,
         "servers": [{"address": f"127.0.0.1:{green_port}"}]}],
        "timeouts": {"connect_ms": 1000, "drain_ms": 2000}}
    if slow_start_ms is not None:
        for be in cfg["backends"]:
            be["slow_start_ms"] = slow_start_ms
    return cfg


def test_slow_start_backend_weight_from_0_to_50_takes_its_share_gradually(backends, td):
    be = backends(("blue", 1), ("green", 1))
    t = td(colours_cfg(be.ports["blue"][0], be.ports["green"][0], 0, SLOW_START_MS))
    assert window_share(t.port, "green") == 0
    state = t.set_ratio(green=50)
    # Just after the change green gets a small share, not its half.
    first = backend_state(state, "green")["share"]
    assert 0 < first < 25, first
    windows, end = [], time.monotonic() + 40
    while time.monotonic() < end:
        s0 = backend_state(t.state(), "green")["share"]
        share = window_share(t.port, "green")
        s1 = backend_state(t.state(), "green")["share"]
        windows.append((s0, s1, share))
        if len([w for w in windows if w[0] == 50]) >= 3:
            break
    summary = [(s0, s1, round(s, 2)) for s0, s1, s in windows]
    # Shares reported by td only grow, up to the full half.
    reported = [s for s0, s1, _ in windows for s in (s0, s1)]
    assert reported == sorted(reported), summary
    early = [s for s0, s1, s in windows if s1 <= 25]
    assert early, f"no window early in the ramp: {summary}"
    assert max(early) < 0.4, summary
    assert min(early) < 0.2, summary
    late = [s for s0, s1, s in windows if s0 == 50]
    assert len(late) >= 3, summary
    assert min(late) >= 0.35, summary


def test_without_slow_start_backend_weight_from_0_takes_its_share_at_once(backends, td):
    be = backends(("blue", 1), ("green", 1))
    t = td(colours_cfg(be.ports["blue"][0], be.ports["green"][0], 0))
    state = t.set_ratio(green=50)
    assert backend_state(state, "green")["share"] == 50
    assert window_share(t.port, "green") >= 0.35
