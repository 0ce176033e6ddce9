"""Servers by host name: a server's "address" HOST:port is resolved (c-ares on td's main loop)
against a real DNS server, dnsmasq on 127.0.0.1, whose hosts file the tests rewrite (SIGHUP makes
it read the file again and clears its cache). Demo backends listen on 127.0.0.2, 127.0.0.3, ...
(all of 127/8 is local on Linux), so one name with several addresses is real."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import (TD, LoadGen, Proc, backend_state, free_port, get, get_once, needs_console,
                      reload_config, run_console, sticky_cookie, wait_for)

DNSMASQ = "/usr/sbin/dnsmasq"

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq-base not installed")


class Dns:
    """dnsmasq answering for *.td.test from a hosts file (NXDOMAIN for other td.test names)."""

    def __init__(self, records, ttl=1, log_queries=False):
        self.dir = tempfile.mkdtemp(prefix="td-dns-")
        self.hosts = os.path.join(self.dir, "hosts")
        self.log = os.path.join(self.dir, "queries.log")
        self.port = free_port()
        self.write(records)
        logging = ["--log-queries", f"--log-facility={self.log}"] if log_queries else []
        self.proc = Proc([DNSMASQ, *logging, "--no-daemon", "--keep-in-foreground", "--no-resolv",
                          "--no-hosts", "--conf-file=/dev/null", f"--port={self.port}",
                          "--listen-address=127.0.0.1", "--bind-interfaces",
                          f"--addn-hosts={self.hosts}", f"--local-ttl={ttl}", "--local=/td.test/",
                          f"--pid-file={os.path.join(self.dir, 'pid')}"], "dnsmasq")
        wait_for(lambda: self._listening(), 10, what="dnsmasq listening")

    def _listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def write(self, records):
        """records: {name: [ip, ...]}"""
        with open(self.hosts + ".tmp", "w") as f:
            for name, ips in records.items():
                for ip in ips:
                    f.write(f"{ip} {name}\n")
        os.replace(self.hosts + ".tmp", self.hosts)

    def change(self, records):
        self.write(records)
        self.proc.p.send_signal(signal.SIGHUP)

    @property
    def nameserver(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()


@pytest.fixture
def dns():
    started = []

    def start(records, ttl=1, log_queries=False):
        d = Dns(records, ttl, log_queries)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def demo():
    """Demo backends at given addresses: demo("a2=127.0.0.2:PORT", ...); the demo name comes
    back in X-TD-Demo-Backend, so a test knows which address served."""
    started = []

    def start(*specs):
        p = Proc([TD, "backend", *specs], "backends")
        started.append(p)
        for spec in specs:
            host, port = spec.split("=", 1)[1].rsplit(":", 1)
            host = host.strip("[]")

            def up(h=host, pt=int(port)):
                try:
                    with socket.create_connection((h, pt), timeout=0.5):
                        return True
                except OSError:
                    return False
            wait_for(up, 10, what=f"demo backend {spec}")
        return p

    yield start
    for p in started:
        p.stop()


def dns_cfg(d, backends, **extra):
    """A config whose resolvers point at dnsmasq `d`; backends: [(name, weight, [server])]."""
    cfg = {
        "resolvers": {"nameservers": [d.nameserver], "timeout_ms": 500, "attempts": 1},
        "backends": [{"name": n, "weight": w, "servers": s} for n, w, s in backends],
        "timeouts": {"connect_ms": 2000, "drain_ms": 5000},
    }
    cfg.update(extra)
    return cfg


def served_by(port, n=20, headers=None):
    """The demo names that answered n requests, each on a fresh connection; every one a 200."""
    seen = []
    for _ in range(n):
        status, h, _ = get_once(port, headers=headers)
        assert status == 200, status
        seen.append(h.get("X-TD-Demo-Backend"))
    return seen


def servers_of(state, backend):
    return backend_state(state, backend)["servers"]


def test_name_with_two_addresses_gives_two_servers_both_serving(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}", "weight": 1}])]))
    assert set(served_by(t.port, 20)) == {"a2", "a3"}
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
    for s in servers:
        assert s["name"] == f"app.td.test:{port}"
        assert s["up"] is True and s["dns_error"] is None and s["requests"] > 0
        assert s["resolved_ago_ms"] is not None
    metrics = urllib_get(t.admin + "/metrics")
    assert (f'td_server_requests_total{{backend="blue",server="127.0.0.2:{port}",'
            f'name="app.td.test:{port}"}}') in metrics


def urllib_get(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def test_changed_record_moves_traffic_within_resolve_ms(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}", "resolve_ms": 200}])]))
    assert set(served_by(t.port, 5)) == {"a2"}
    before = servers_of(t.state(), "blue")[0]
    load = LoadGen(t.port, threads=2, duration=30)
    load.start()
    try:
        d.change({"app.td.test": ["127.0.0.3"]})
        wait_for(lambda: set(served_by(t.port, 10)) == {"a3"}, 15,
                 what="traffic on the new address")
    finally:
        load.stop()
    assert load.failed == 0 and not load.errors, load.summary()
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.3:{port}"]
    assert before["address"] == f"127.0.0.2:{port}"


def test_dns_down_keeps_last_addresses_and_shows_the_error(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}", "resolve_ms": 200}])]))
    assert set(served_by(t.port, 10)) == {"a2", "a3"}
    d.stop()
    wait_for(lambda: all(s["dns_error"] for s in servers_of(t.state(), "blue")), 15,
             what="the DNS error in the state")
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
    assert set(served_by(t.port, 20)) == {"a2", "a3"}
    # One warning for the change of condition, not one per attempt.
    time.sleep(1.5)  # several attempts at resolve_ms 200 (a failure repeats once a second)
    out = t.proc.output()
    assert out.count(f"resolver: app.td.test:{port}: ") == 1, out[-3000:]


def test_name_never_resolved_is_down_and_the_other_servers_serve(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"},
                                      {"address": f"nowhere.td.test:{port}"}]),
                       ("green", 0, [{"address": f"nowhere.td.test:{port}"}])]))
    load = LoadGen(t.port, threads=2, count=60)
    load.start()
    load.join(30)
    assert load.ok == 60 and load.failed == 0 and not load.errors, load.summary()
    assert load.count(backend="a2") == 60
    st = t.state()
    missing = [s for s in servers_of(st, "blue") if s["name"] == f"nowhere.td.test:{port}"]
    assert len(missing) == 1
    assert missing[0]["address"] is None and missing[0]["up"] is False
    assert missing[0]["dns_error"]
    green = backend_state(st, "green")
    assert green["up"] is False and len(green["servers"]) == 1
    # A backend whose only server has no address has no server up: td's 503 for it.
    t.set_ratio(blue=0, green=100)
    wait_for(lambda: get(t.port)[0] == 503, 10, what="503 from a backend with no address")


def test_all_addresses_failing_triggers_an_immediate_re_resolution(dns, demo, td):
    port = free_port()
    # TTL and resolve_ms both far beyond the test: only the failure can make td ask again.
    d = dns({"app.td.test": ["127.0.0.2"]}, ttl=600)
    old = demo(f"a2=127.0.0.2:{port}")
    demo(f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}",
                                       "resolve_ms": 600000}])],
                   health_check={"type": "http", "path": "/", "interval_ms": 100,
                                 "timeout_ms": 500, "fall": 1, "rise": 1}))
    assert set(served_by(t.port, 5)) == {"a2"}
    d.change({"app.td.test": ["127.0.0.3"]})
    time.sleep(0.3)  # dnsmasq reads its hosts file again; td is not due to ask for 10 minutes
    assert set(served_by(t.port, 5)) == {"a2"}
    old.stop()
    wait_for(lambda: get(t.port) == (200, "a3"), 15, what="traffic on the new address")
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.3:{port}"]
    assert servers[0]["last_check"]


def test_sticky_pin_survives_an_address_change_of_the_pinned_backend(dns, demo, td):
    port = free_port()
    d = dns({"b.td.test": ["127.0.0.2"], "g.td.test": ["127.0.0.3"]})
    demo(f"b2=127.0.0.2:{port}", f"g3=127.0.0.3:{port}", f"b4=127.0.0.4:{port}",
         f"g5=127.0.0.5:{port}")
    t = td(dns_cfg(d, [("blue", 50, [{"address": f"b.td.test:{port}", "resolve_ms": 200}]),
                       ("green", 50, [{"address": f"g.td.test:{port}", "resolve_ms": 200}])],
                   routing={"method": "sticky", "cookie": {"name": "TDSTICKY"}}))
    status, h, _ = get_once(t.port)
    assert status == 200
    cookie = sticky_cookie(h)
    first = h.get("X-TD-Demo-Backend")
    pinned = {"b2": "b4", "g3": "g5"}[first]
    headers = {"Cookie": f"TDSTICKY={cookie}"}
    assert set(served_by(t.port, 10, headers)) == {first}
    d.change({"b.td.test": ["127.0.0.4"], "g.td.test": ["127.0.0.5"]})
    wait_for(lambda: set(served_by(t.port, 5, headers)) == {pinned}, 15,
             what="the pin on the backend's new address")
    assert set(served_by(t.port, 20, headers)) == {pinned}


def write_cfg(text):
    d = tempfile.mkdtemp(prefix="td-dns-t-")
    path = os.path.join(d, "td.json")
    with open(path, "w") as f:
        f.write(text)
    return path


def pos_of(text, needle):
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def test_td_t_warns_of_an_unresolvable_name_with_its_position(dns):
    d = dns({"app.td.test": ["127.0.0.2"]})
    cfg = {"listeners": [{"address": "127.0.0.1:18999"}],
           "resolvers": {"nameservers": [d.nameserver], "timeout_ms": 500},
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "app.td.test:8080"},
                                     {"address": "nowhere.td.test:8080"}]}]}
    text = json.dumps(cfg, indent=2)
    path = write_cfg(text)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout
    line, col = pos_of(text, '"nowhere.td.test:8080"')
    assert f"{path}:{line}:{col}: warning: " in r.stderr, r.stderr
    assert "nowhere.td.test:8080" in r.stderr and "app.td.test" not in r.stderr


@pytest.mark.parametrize("where,value,needle,message", [
    ("nameservers", ["dns.example:53"], '"dns.example:53"', "not a valid name server address"),
    ("nameservers", "127.0.0.1:53", '"127.0.0.1:53"', "expected"),
    ("timeout_ms", "fast", '"fast"', "timeout_ms"),
    ("attempts", 0, '"attempts": 0', "attempts"),
])
def test_bad_resolvers_values_are_errors_with_positions(where, value, needle, message):
    cfg = {"listeners": [{"address": "127.0.0.1:18999"}],
           "resolvers": {where: value},
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "127.0.0.1:8080"}]}]}
    text = json.dumps(cfg, indent=2)
    path = write_cfg(text)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    line, col = pos_of(text, needle)
    if needle.startswith('"attempts"'):
        col += len('"attempts": ')
    assert f"{path}:{line}:{col}: " in r.stderr, r.stderr
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize("address,needle", [
    ("app.td.test", "not a valid address"),     # a name without its port
    ("app..td.test:80", "not a valid address"),
    ("-app.td.test:80", "not a valid address"),
    ("app.td.test:0", "not a valid address"),
])
def test_bad_host_name_addresses_are_errors_with_positions(address, needle):
    cfg = {"listeners": [{"address": "127.0.0.1:18999"}],
           "backends": [{"name": "blue", "weight": 100, "servers": [{"address": address}]}]}
    text = json.dumps(cfg, indent=2)
    path = write_cfg(text)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    line, col = pos_of(text, f'"{address}"')
    assert f"{path}:{line}:{col}: " in r.stderr and needle in r.stderr, r.stderr


def test_resolve_ms_below_its_bound_is_refused():
    cfg = {"listeners": [{"address": "127.0.0.1:18999"}],
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "app.td.test:80", "resolve_ms": 10}]}]}
    text = json.dumps(cfg, indent=2)
    path = write_cfg(text)
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "resolve_ms" in r.stderr, r.stderr


def test_reload_that_keeps_the_name_serves_without_a_failed_request(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"}])]))
    assert set(served_by(t.port, 10)) == {"a2", "a3"}
    before = {s["address"]: s["requests"] for s in servers_of(t.state(), "blue")}
    load = LoadGen(t.port, threads=4, duration=30)
    load.start()
    try:
        def edit(cfg):
            cfg["timeouts"]["connect_ms"] = 3000
        reload_config(t, edit)
        # PUT /api/v1/config with the same name: the same servers, kept counters.
        status, body = t.api("GET", "/api/v1/config")
        assert status == 200
        body["backends"][0]["servers"][0]["weight"] = 2
        status, res = t.api("PUT", "/api/v1/config", body)
        assert status == 200, res
        wait_for(lambda: load.answered() > 200, 30, what="requests after the changes")
    finally:
        load.stop()
    assert load.failed == 0 and not load.errors, load.summary()
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
    for s in servers:
        assert s["weight"] == 2 and s["requests"] >= before[s["address"]]


def test_state_file_override_of_a_named_server_applies_after_a_restart(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"}])]))
    status, body = t.api("GET", "/api/v1/config")
    body["backends"][0]["servers"][0]["weight"] = 3
    status, res = t.api("PUT", "/api/v1/config", body)
    assert status == 200, res
    assert t.stop() == 0
    t.proc = Proc([TD, "-c", t.config_path], "td")
    wait_for(lambda: urllib_ok(t.admin + "/api/v1/state"), 10, what="td back")
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
    assert all(s["weight"] == 3 and s["name"] == f"app.td.test:{port}" for s in servers)
    assert set(served_by(t.port, 10)) == {"a2", "a3"}


def urllib_ok(url):
    try:
        urllib_get(url)
        return True
    except OSError:
        return False


def test_tdctl_status_shows_the_name_next_to_its_addresses(dns, demo, td):
    from conftest import tdctl
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"},
                                      {"address": f"nowhere.td.test:{port}"}])]))
    r = tdctl(t, "status")
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.2:{port} (app.td.test:{port})" in r.stdout
    assert f"127.0.0.3:{port} (app.td.test:{port})" in r.stdout
    assert f"nowhere.td.test:{port} (no address)" in r.stdout


def test_cluster_shares_the_name_and_each_node_resolves_it_with_its_own_resolvers(
        etcd_cluster, dns, demo, td):
    from cluster_nodes import PREFIX, SLOW, TOKEN, init_cluster, wait_initialised
    from conftest import ETCD
    if not os.access(ETCD, os.X_OK):
        pytest.skip("needs etcd (scripts/deps.sh test)")
    etcd = etcd_cluster(1)
    port = free_port()
    # The same name, another answer on each node's DNS server.
    dns_a = dns({"app.td.test": ["127.0.0.2"]}, ttl=600)
    dns_b = dns({"app.td.test": ["127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    nodes = []
    for name, d in (("td-a", dns_a), ("td-b", dns_b)):
        cfg = dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"}])])
        cfg["cluster"] = {"etcd": list(etcd.endpoints), "prefix": PREFIX, "node": name,
                          "lease_s": 2}
        nodes.append(td(cfg, token=TOKEN))
    a, b = nodes
    wait_initialised(nodes, init_cluster(a))
    assert set(served_by(a.port, 10)) == {"a2"}
    assert set(served_by(b.port, 10)) == {"a3"}
    status, shared = a.api("GET", "/api/v1/config")
    assert status == 200
    assert shared["backends"][0]["servers"][0]["address"] == f"app.td.test:{port}"
    # Each node's membership health view lists the addresses it resolved.
    def views():
        st, c = a.api("GET", "/api/v1/cluster")
        health = {n["node"]: n.get("health", {}).get("blue", {}) for n in c.get("nodes", [])}
        return (health.get("td-a") == {f"127.0.0.2:{port}": "up"}
                and health.get("td-b") == {f"127.0.0.3:{port}": "up"})
    wait_for(views, 15 * SLOW, what="each node's own addresses in its health view")


def test_a_and_aaaa_records_give_a_server_each_ipv4_first(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "::1"]})
    demo(f"a2=127.0.0.2:{port}", f"v6=[::1]:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"}])]))
    servers = servers_of(t.state(), "blue")
    assert [s["address"] for s in servers] == [f"127.0.0.2:{port}", f"[::1]:{port}"]
    assert set(served_by(t.port, 20)) == {"a2", "v6"}


@needs_console
def test_console_lists_the_name_with_its_addresses_and_a_name_without_one(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"},
                                      {"address": f"nowhere.td.test:{port}"}])]))
    seen = run_console("dns.test.mjs", url=t.admin + "/", backend="blue", rows=3)
    texts = [r["text"] for r in seen]
    assert texts == [f"127.0.0.2:{port} (app.td.test:{port})",
                     f"127.0.0.3:{port} (app.td.test:{port})",
                     f"nowhere.td.test:{port} (no address)"], seen
    assert seen[2]["title"].startswith("DNS: ") and seen[2]["health"] == "down", seen


def test_new_nameservers_in_a_config_change_answer_at_once(dns, demo, td):
    port = free_port()
    old = dns({"app.td.test": ["127.0.0.2"]}, ttl=600)
    new = dns({"app.td.test": ["127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(old, [("blue", 100, [{"address": f"app.td.test:{port}",
                                         "resolve_ms": 600000}])]))
    assert set(served_by(t.port, 5)) == {"a2"}
    status, body = t.api("GET", "/api/v1/config")
    body["resolvers"]["nameservers"] = [new.nameserver]
    status, res = t.api("PUT", "/api/v1/config", body)
    assert status == 200, res
    wait_for(lambda: set(served_by(t.port, 5)) == {"a3"}, 15, what="the new name servers' answer")
    status, res = t.api("PUT", "/api/v1/config", dict(body, resolvers={"nameservers": ["x:53"]}))
    assert status == 400 and "nameservers[0]" in res["error"], res
    assert set(served_by(t.port, 5)) == {"a3"}


def test_reload_to_a_new_host_name_serves_without_a_failed_request(dns, demo, td):
    port = free_port()
    d = dns({"multi.td.test": ["127.0.0.2", "127.0.0.3"], "hc.td.test": ["127.0.0.4"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}", f"a4=127.0.0.4:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"multi.td.test:{port}"}])]))
    assert set(served_by(t.port, 10)) == {"a2", "a3"}
    load = LoadGen(t.port, threads=4, duration=60)
    load.start()
    try:
        # Name -> other name -> IP -> name, by SIGHUP and by PUT /api/v1/config.
        for address in [f"hc.td.test:{port}", f"multi.td.test:{port}", f"127.0.0.4:{port}",
                        f"hc.td.test:{port}", f"multi.td.test:{port}"]:
            def edit(cfg, a=address):
                cfg["backends"][0]["servers"] = [{"address": a}]
            reload_config(t, edit)
            status, body = t.api("GET", "/api/v1/config")
            body["backends"][0]["servers"] = [{"address": address, "weight": 2}]
            old = t.state()["version"]
            status, res = t.api("PUT", "/api/v1/config", body)
            assert status == 200, res
            wait_for(lambda: t.state()["version"] > old, 10, what="the PUT's snapshot")
            served = {s["address"] for s in servers_of(t.state(), "blue")}
            assert served, address
        wait_for(lambda: load.answered() > 200, 30, what="requests after the changes")
    finally:
        load.stop()
    assert load.failed == 0 and not load.errors, load.summary()


def test_static_server_sharing_an_address_with_a_name_keeps_its_own_weight(dns, demo, td):
    port = free_port()
    d = dns({"multi.td.test": ["127.0.0.2", "127.0.0.3"]}, ttl=600)
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    cfg = dns_cfg(d, [("blue", 100, [{"address": f"multi.td.test:{port}", "weight": 5},
                                     {"address": f"127.0.0.2:{port}", "weight": 1}])])
    path = write_cfg(json.dumps(dict(cfg, listeners=[{"address": "127.0.0.1:18999"}]), indent=2))
    r = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (f"warning: backend blue: server multi.td.test:{port} resolves now to "
            f"127.0.0.2:{port}, which is already the server 127.0.0.2:{port}") in r.stderr, r.stderr
    t = td(cfg)
    servers = {s["address"]: s for s in servers_of(t.state(), "blue")}
    assert set(servers) == {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}
    assert servers[f"127.0.0.2:{port}"]["weight"] == 1 and "name" not in servers[f"127.0.0.2:{port}"]
    assert servers[f"127.0.0.3:{port}"]["weight"] == 5
    assert "which is already the server" in t.proc.output()


def test_name_without_an_address_is_a_server_up_0_in_the_metrics(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"},
                                      {"address": f"nowhere.td.test:{port}"}])]))
    metrics = urllib_get(t.admin + "/metrics")
    assert (f'td_server_up{{backend="blue",server="",name="nowhere.td.test:{port}"}} 0'
            in metrics), metrics
    assert (f'td_server_up{{backend="blue",server="127.0.0.2:{port}",'
            f'name="app.td.test:{port}"}} 1') in metrics


def test_nxdomain_drops_the_last_addresses_after_hold_nx_ms(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"], "other.td.test": ["127.0.0.3"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    cfg = dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}", "resolve_ms": 200},
                                     {"address": f"other.td.test:{port}"}])])
    cfg["resolvers"]["hold_nx_ms"] = 300
    t = td(cfg)
    assert set(served_by(t.port, 10)) == {"a2", "a3"}
    d.change({"other.td.test": ["127.0.0.3"]})  # app.td.test: NXDOMAIN from now on
    wait_for(lambda: [s["address"] for s in servers_of(t.state(), "blue")
                      if s.get("name") == f"app.td.test:{port}"] == [None], 15,
             what="the NXDOMAIN name without addresses")
    assert set(served_by(t.port, 10)) == {"a3"}
    assert "NXDOMAIN" in t.proc.output()
    status, body = t.api("GET", "/api/v1/config")
    assert body["resolvers"]["hold_nx_ms"] == 300


def test_configured_nameservers_are_the_only_source_not_etc_hosts(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}")
    # localhost is in /etc/hosts; dnsmasq (no upstream, no hosts file of the system's) refuses it.
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}"},
                                      {"address": f"localhost:{port}"}])]))
    local = [s for s in servers_of(t.state(), "blue") if s.get("name") == f"localhost:{port}"]
    assert [s["address"] for s in local] == [None], local
    assert "refused" in (local[0]["dns_error"] or ""), local


def test_address_change_is_an_event_and_tdctl_status_marks_a_failed_lookup(dns, demo, td):
    from conftest import tdctl
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}", f"a3=127.0.0.3:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test:{port}", "resolve_ms": 200}])]))
    assert f"resolver: app.td.test:{port} is 127.0.0.2:{port}" in t.proc.output()
    d.change({"app.td.test": ["127.0.0.3"]})
    want = f"blue: app.td.test:{port} now 127.0.0.3:{port} (was 127.0.0.2:{port})"

    def event():
        status, ev = t.api("GET", "/api/v1/events")
        return any(want in json.dumps(e) for e in ev)
    wait_for(event, 15, what="the address change in the events")
    d.stop()
    wait_for(lambda: "last answer kept" in tdctl(t, "status").stdout, 15,
             what="tdctl status marking the failed lookup")
    out = tdctl(t, "status").stdout
    assert f"127.0.0.3:{port} (app.td.test:{port}) (dns: " in out, out


def test_fully_qualified_name_with_a_trailing_dot_is_accepted_and_resolves(dns, demo, td):
    port = free_port()
    d = dns({"app.td.test": ["127.0.0.2"]})
    demo(f"a2=127.0.0.2:{port}")
    t = td(dns_cfg(d, [("blue", 100, [{"address": f"app.td.test.:{port}"}])]))
    assert set(served_by(t.port, 5)) == {"a2"}
    servers = servers_of(t.state(), "blue")
    assert [(s["address"], s["name"]) for s in servers] == [(f"127.0.0.2:{port}",
                                                             f"app.td.test.:{port}")]
