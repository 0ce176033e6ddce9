"""End-to-end tests of failover as the Traffic Distributor sets it up (100/0: a primary and a
weight-0 backup), failback, routing over many servers, and truthful counters and events: td's own
502/503/504 counted, every passive "down" with its "up", effective shares in the state, and
all-zero weights refused."""
import json
import os
import socket
import subprocess
import time
import urllib.request

from conftest import (ASAN, TDCTL, LoadGen, backend_cfg, backend_state, free_port, get,
                      server_state, wait_for)

SLACK = 2.0 if ASAN else 1.0
TIMEOUT = 10


def hc(**kw):
    """A global health_check section: http on /, quick, with the given overrides."""
    h = {"type": "http", "path": "/", "expect_status": "2xx,3xx", "interval_ms": 100,
         "timeout_ms": 1000, "fall": 2, "rise": 2}
    h.update(kw)
    return h


def serve_n(port, n):
    counts = {}
    for _ in range(n):
        k = get(port)
        counts[k] = counts.get(k, 0) + 1
    return counts


def dead_ports(n, taken=()):
    """n distinct ports nothing listens on (not among `taken`), below the kernel's ephemeral
    range: the ports td and the test's servers are given later (free_port) come from that range,
    so none of them can turn out to be one of these (td's own listener as a "dead" server)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    ports = []
    p = low - 1
    while len(ports) < n and p > 1024:
        if p not in taken:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
                ports.append(p)
            except OSError:
                pass
            finally:
                s.close()
        p -= 1
    assert len(ports) == n, "not enough free ports below the ephemeral range"
    return sorted(ports)


def failover_cfg(blue, green, wb=100, wg=0, **extra):
    return backend_cfg({"blue": (wb, blue.ports["blue"]), "green": (wg, green.ports["green"])},
                       method="failover", **extra)


def metrics(t):
    with urllib.request.urlopen(t.admin + "/metrics", timeout=TIMEOUT) as r:
        return r.read().decode()


def metric(text, line_start):
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise KeyError(line_start)


def events(t):
    status, ev = t.api("GET", "/api/v1/events")
    assert status == 200, ev
    return ev


# ---- A. failover with a 100/0 ratio ----

def test_failover_100_0_moves_traffic_to_backup_when_primary_down(backends, td):
    """blue 100, green 0, active checks: stopping blue's server moves every request to green
    (retries cover the moments before the checks see it), and nothing fails."""
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(failover_cfg(blue, green, health_check=hc()))
    assert serve_n(t.port, 10) == {(200, "blue"): 10}
    load = LoadGen(t.port, threads=4, duration=60.0).start()
    try:
        wait_for(lambda: load.answered() > 20, 10, what="first answers")
        blue.stop()
        wait_for(lambda: server_state(t.state(), blue.ports["blue"][0])["health"] == "down",
                 5 + SLACK, what="blue down")
        before = load.answered()
        wait_for(lambda: load.answered() > before + 100, 10 + SLACK, what="answers after")
    finally:
        load.stop()
    print(load.summary())
    assert load.failed == 0 and load.errors == [], load.summary()
    assert load.by_backend.get("green", 0) > 100, load.summary()
    s = t.state()
    assert s["serving"] == "green" and s["primary"] == "blue", s
    assert backend_state(s, "green")["requests"] > 50
    assert "primary blue has no server up" in s["serving_reason"], s


def test_failover_100_0_without_active_checks_ejects_primary_on_passive_signals(backends, td):
    """No health checks: blue's dead server is ejected on passive signals alone, because green
    (weight 0) is a backup, and every request is answered by green."""
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(failover_cfg(blue, green, passive={"failures": 2, "eject_ms": 30000,
                                              "max_eject_ms": 30000}))
    assert get(t.port) == (200, "blue")
    blue.stop()
    seen = serve_n(t.port, 20)
    assert seen == {(200, "green"): 20}, seen
    s = t.state()
    assert server_state(s, blue.ports["blue"][0])["health"] == "ejected", s
    assert s["serving"] == "green", s
    addr = f"127.0.0.1:{blue.ports['blue'][0]}"
    downs = [e for e in events(t) if e["kind"] == "health" and addr in e["message"]
             and "is down" in e["message"]]
    assert downs, events(t)


def test_failover_retry_goes_to_weight_0_backup_on_connect_failure(backends, td):
    """blue's server is dead and never ejected (passive failures 1000): each request's retry
    after the failed connect goes to green, the weight-0 backup, not a 502."""
    green = backends(("green", 1))
    dead = free_port()
    cfg = backend_cfg({"blue": (100, [dead]), "green": (0, green.ports["green"])},
                      method="failover", passive={"failures": 1000})
    t = td(cfg)
    seen = serve_n(t.port, 10)
    assert seen == {(200, "green"): 10}, seen


def test_failback_waits_failback_ms_after_primary_is_up_again(backends, td):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    bp = blue.ports["blue"][0]
    failback = 4000
    cfg = failover_cfg(blue, green, health_check=hc(), routing={"method": "failover",
                                                               "failback_ms": failback})
    t = td(cfg)
    assert get(t.port) == (200, "blue")
    blue.stop()
    wait_for(lambda: server_state(t.state(), bp)["health"] == "down", 5 + SLACK,
             what="blue down")
    assert serve_n(t.port, 5) == {(200, "green"): 5}
    backends(("blue", 1), ports={"blue": [bp]})
    wait_for(lambda: server_state(t.state(), bp)["health"] == "up", 5 + SLACK, what="blue up")
    t_up = time.monotonic()
    # Up again, but not yet for failback_ms: green keeps the traffic and the state says why.
    s = t.state()
    seen = serve_n(t.port, 5)
    if time.monotonic() - t_up < failback / 1000 - 0.5:
        assert seen == {(200, "green"): 5}, seen
        assert s["serving"] == "green" and "up again" in s["serving_reason"], s
    wait_for(lambda: get(t.port) == (200, "blue"), failback / 1000 + 5 + SLACK,
             what="blue serving again")
    assert t.state()["serving"] == "blue"


def test_failover_backup_at_weight_0_is_not_draining(backends, td):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(failover_cfg(blue, green))
    s = t.state()
    g, b = backend_state(s, "green"), backend_state(s, "blue")
    assert g["draining"] is False and g["drained"] is False and g["drain_elapsed_ms"] is None
    assert (b["role"], g["role"]) == ("primary", "backup"), s
    assert (b["share"], g["share"]) == (100, 0), s
    assert (b["serving"], g["serving"]) == (True, False), s
    # 100/50 is the same failover: blue gets everything, not two thirds.
    t.set_ratio(blue=100, green=50)
    s = t.state()
    assert backend_state(s, "blue")["share"] == 100 and backend_state(s, "green")["share"] == 0
    assert serve_n(t.port, 6) == {(200, "blue"): 6}


def test_state_share_of_a_down_backend_is_0(backends, td):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    bp = blue.ports["blue"][0]
    t = td(backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])},
                       health_check=hc()))
    s = t.state()
    assert backend_state(s, "blue")["share"] == 50 and "role" not in backend_state(s, "blue")
    blue.stop()
    wait_for(lambda: server_state(t.state(), bp)["health"] == "down", 5 + SLACK,
             what="blue down")
    s = t.state()
    assert backend_state(s, "blue")["share"] == 0 and backend_state(s, "green")["share"] == 100
    assert backend_state(s, "blue")["serving"] is False


# ---- B. routing masks ----

def test_backend_with_300_servers_answers_when_only_the_last_ones_are_up(backends, td):
    """Active tcp checks take the 298 dead servers out; the last two (indices 298, 299) answer."""
    blue = backends(("blue", 2))
    dead = dead_ports(298, blue.ports["blue"])
    cfg = backend_cfg({"blue": (100, dead + blue.ports["blue"])},
                      health_check=hc(type="tcp", interval_ms=300, fall=1, rise=1,
                                      timeout_ms=500))
    t = td(cfg)
    wait_for(lambda: sum(s["health"] == "down" for s in t.state()["backends"][0]["servers"])
             == 298, 10 + SLACK, what="dead servers down")
    seen = serve_n(t.port, 10)
    assert seen == {(200, "blue"): 10}, seen


def test_retry_skips_a_failed_server_past_the_64th(backends, td):
    """Servers 0..63 have weight 0; server 64 (dead, weight 100) is always picked first. Its
    connect failure must mark it tried, so the retry goes to server 65 (weight 1), not back to
    64 until the tries run out (502)."""
    blue = backends(("blue", 1))
    *idle, dead = dead_ports(65, blue.ports["blue"])
    servers = ([{"address": f"127.0.0.1:{p}", "weight": 0} for p in idle]
               + [{"address": f"127.0.0.1:{dead}", "weight": 100},
                  {"address": f"127.0.0.1:{blue.ports['blue'][0]}", "weight": 1}])
    cfg = backend_cfg({"blue": (100, [])}, passive={"failures": 1000})
    cfg["backends"][0]["servers"] = servers
    t = td(cfg)
    seen = serve_n(t.port, 5)
    assert seen == {(200, "blue"): 5}, seen


# ---- C. truthful counters, events and refusals ----

def test_td_own_502_and_503_are_counted_in_state_and_metrics(backends, td):
    dead = free_port()
    t = td(backend_cfg({"blue": (100, [dead])}))
    for _ in range(3):
        assert get(t.port)[0] == 502
    s = t.state()
    b = backend_state(s, "blue")
    assert b["local_responses"]["502"] == 3, b
    assert b["responses"]["5xx"] == 3 and b["requests"] == 3, b
    assert s["last_5xx_ago_ms"] is not None and b["last_5xx_ago_ms"] is not None
    m = metrics(t)
    assert metric(m, 'td_local_responses_total{backend="blue",code="502"}') == 3
    assert metric(m, 'td_backend_responses_total{backend="blue",class="5xx"}') == 3


def test_td_own_503_with_no_backend_up_is_counted_under_td(backends, td):
    blue = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, blue.ports["blue"])}, health_check=hc(fall=1)))
    assert get(t.port) == (200, "blue")
    assert t.state().get("last_5xx_ago_ms") is None
    blue.stop()
    wait_for(lambda: not t.state()["backends"][0]["up"], 5 + SLACK, what="blue down")
    for _ in range(4):
        assert get(t.port)[0] == 503
    s = t.state()
    assert s.get("td", {}).get("local_responses", {}).get("503") == 4, s
    assert s["td"]["last_5xx_ago_ms"] is not None and s["last_5xx_ago_ms"] is not None
    assert metric(metrics(t), 'td_local_responses_total{backend="",code="503"}') == 4


def test_passive_ejection_makes_a_down_event_and_its_end_an_up_event(backends, td):
    green = backends(("green", 1))
    dead = free_port()
    addr = f"127.0.0.1:{dead}"
    t = td(backend_cfg({"blue": (50, [dead]), "green": (50, green.ports["green"])},
                       passive={"failures": 1, "eject_ms": 1000, "max_eject_ms": 1000}))
    for _ in range(4):
        assert get(t.port)[0] == 200  # blue's failed connects are retried on green
    wait_for(lambda: server_state(t.state(), dead)["health"] == "ejected" or any(
        addr in e["message"] and "is down" in e["message"] for e in events(t)), 5,
        what="blue ejected")

    def mine():
        return [e["message"] for e in events(t) if e["kind"] == "health" and addr in e["message"]]
    assert any("is down" in m for m in mine()), mine()
    wait_for(lambda: any("is up" in m for m in mine()), 5 + SLACK, what="up event")
    msgs = mine()
    first_down = next(i for i, m in enumerate(msgs) if "is down" in m)
    assert any("is up" in m for m in msgs[first_down + 1:]), msgs


def test_all_zero_weights_are_refused(backends, td):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])}))
    before = t.state()["version"]
    status, r = t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 0})
    assert status == 400 and "weight 0" in r["error"], r
    status, r = t.api("PUT", "/api/v1/ratio", {"blue": 0})
    assert status == 200
    status, r = t.api("PUT", "/api/v1/ratio", {"green": 0})
    assert status == 400 and "503" in r["error"], r
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    p = subprocess.run([TDCTL, "--admin", t.admin, "ratio", "0:0"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert p.returncode == 1 and "weight 0" in p.stderr, (p.stdout, p.stderr)
    status, cfg = t.api("GET", "/api/v1/config")
    for b in cfg["backends"]:
        b["weight"] = 0
    status, r = t.api("PUT", "/api/v1/config", cfg)
    assert status == 400 and "every backend has weight 0" in r["error"], r
    s = t.state()
    assert s["version"] == before + 1
    assert {b["name"]: b["weight"] for b in s["backends"]} == {"blue": 0, "green": 50}
    assert serve_n(t.port, 4) == {(200, "green"): 4}
    # Failover's 100/0 stays allowed.
    status, _ = t.api("PUT", "/api/v1/routing", {"method": "failover"})
    assert status == 200
    assert t.set_ratio(blue=100, green=0)["serving"] == "blue"


def test_config_file_with_all_weights_0_is_refused_with_position(tmp_path):
    from conftest import TD
    cfg = backend_cfg({"blue": (0, [free_port()]), "green": (0, [free_port()])})
    cfg["listeners"] = [{"address": f"127.0.0.1:{free_port()}"}]
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg, indent=2))
    p = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert f"{path}:" in p.stderr and "every backend has weight 0" in p.stderr, p.stderr


def test_failback_ms_is_validated_with_position(tmp_path):
    from conftest import TD
    cfg = backend_cfg({"blue": (100, [free_port()])}, routing={"method": "failover",
                                                               "failback_ms": -5})
    cfg["listeners"] = [{"address": f"127.0.0.1:{free_port()}"}]
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg, indent=2))
    p = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "routing.failback_ms" in p.stderr and f"{path}:" in p.stderr, p.stderr


# ---- the console and tdctl show failover as it is ----

def test_console_shows_backup_serving_error_banner_and_one_req_rate(backends, td):
    import pytest
    import test_console
    if test_console.missing:
        pytest.skip("needs " + ", ".join(test_console.missing))
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(failover_cfg(blue, green, passive={"failures": 2, "eject_ms": 60000,
                                              "max_eject_ms": 60000}))
    blue.stop()
    assert serve_n(t.port, 4) == {(200, "green"): 4}
    for _ in range(3):
        assert get(t.port, "/status/500") == (500, "green")
    traffic = test_console.Traffic(t.port)
    try:
        seen = test_console.run_page(scenario="failover", url=t.admin + "/")
    finally:
        traffic.stop()
    print(seen)
    assert "serving: green (backup)" in seen["failover"], seen
    assert "primary blue has no server up" in seen["failover"], seen
    assert "answering errors" in seen["banner"], seen
    assert seen["greenWeight"] == "weight 0 · 100 % of traffic", seen
    assert seen["blueWeight"] == "weight 100 · 0 % of traffic", seen
    assert seen["blueRole"] == "primary" and seen["greenRole"] == "backup · serving", seen
    assert seen["greenLegend"] == "green " + seen["greenRps"] + " req/s", seen
    assert seen["blueRps"] in ("0.0", "0"), seen


def test_tdctl_status_names_the_serving_backup_and_why(backends, td):
    blue, green = backends(("blue", 1)), backends(("green", 1))
    t = td(failover_cfg(blue, green, wb=100, wg=50, health_check=hc()))
    blue.stop()
    wait_for(lambda: t.state()["serving"] == "green", 5 + SLACK, what="green serving")
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    p = subprocess.run([TDCTL, "--admin", t.admin, "status"], capture_output=True, text=True,
                       timeout=30, env=env)
    print(p.stdout)
    assert p.returncode == 0, p.stderr
    assert "method   failover (primary blue; backup green)" in p.stdout
    assert "serving  green (backup): primary blue has no server up" in p.stdout
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines() if line.strip()}
    assert rows["blue"][2] == "0%" and rows["green"][2] == "100%", p.stdout
