"""Cluster mode: several td nodes share one desired state through a real etcd (Debian's, started
by the etcd_cluster fixture on 127.0.0.1). Each node has its own config file, listener and admin
port, and the same admin token."""
import json
import os
import signal
import tempfile

import pytest

from conftest import (ASAN, TcpRelay, free_port, get, get_once, start_td_file, sticky_cookie,
                      wait_for)

TOKEN = "cluster-secret-token"
PREFIX = "/td/e2e/"
SLOW = 3 if ASAN else 1


class Node:
    """One td node in cluster mode: its config file (kept across restarts, so its cache file is
    too), ports, process, and admin API."""

    def __init__(self, name, endpoints, blue, green, weights=(50, 50), start=True, **cluster):
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"td-cluster-{name}-")
        self.config_path = os.path.join(self.dir, "td.json")
        self.cfg = {
            "listeners": [{"address": f"127.0.0.1:{self.port}"}],
            "workers": 1,
            "admin": {"address": f"127.0.0.1:{self.admin_port}", "token": TOKEN},
            "routing": {"method": "round_robin",
                        "cookie": {"name": "TDSTICKY", "max_age_s": 3600}},
            "backends": [
                {"name": "blue", "weight": weights[0],
                 "servers": [{"address": f"127.0.0.1:{blue}"}]},
                {"name": "green", "weight": weights[1],
                 "servers": [{"address": f"127.0.0.1:{green}"}]},
            ],
            "cluster": dict({"etcd": list(endpoints), "prefix": PREFIX, "node": name,
                             "lease_s": 3}, **cluster),
        }
        self.write()
        self.proc = None
        if start:
            self.start()

    def write(self):
        with open(self.config_path, "w") as f:
            json.dump(self.cfg, f, indent=2)

    def start(self):
        self.proc = start_td_file(self.config_path, self.port, self.admin_port)

    def stop(self, sig=signal.SIGTERM):
        rc = self.proc.stop(sig) if self.proc else 0
        out = self.proc.output() if self.proc else ""
        self.proc = None
        return rc, out

    def api(self, method, path, body=None, raw=None, timeout=15):
        import urllib.error
        import urllib.request
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data,
                                     method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=timeout * SLOW) as r:
                text, status = r.read().decode(), r.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(), e.code
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def state(self):
        status, s = self.api("GET", "/api/v1/state")
        assert status == 200, s
        return s

    def cluster(self):
        status, c = self.api("GET", "/api/v1/cluster")
        assert status == 200, c
        return c

    def weights(self):
        return {b["name"]: b["weight"] for b in self.state()["backends"]}

    def readyz(self):
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz",
                                        timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def nodes():
    """A factory Node(...); every node still running is stopped at teardown and must exit 0
    without sanitizer reports."""
    started = []

    def make(*args, **kw):
        n = Node(*args, **kw)
        started.append(n)
        return n

    yield make
    for n in started:
        if n.proc:
            rc, out = n.stop()
            assert rc == 0, f"td {n.name} exited {rc}:\n{out[-4000:]}"
            assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def reachable(node):
    c = node.state().get("cluster") or {}
    return c.get("reachable")


def init(node, weights=None):
    """POST /api/v1/cluster/init with the node's own config (weights changed if given)."""
    doc = json.loads(json.dumps(node.cfg))
    for b in doc["backends"]:
        if weights and b["name"] in weights:
            b["weight"] = weights[b["name"]]
    wait_for(lambda: reachable(node), 20 * SLOW, what=f"{node.name} reaching etcd")
    status, r = node.api("POST", "/api/v1/cluster/init", doc)
    assert status == 200, r
    return r["revision"]


def colours(port, n=20):
    seen = set()
    for _ in range(n):
        status, colour = get(port)
        assert status == 200
        seen.add(colour)
    return seen


@pytest.fixture
def three(backends, etcd_cluster, nodes):
    """One etcd member, blue and green demo backends, and nodes a, b, c on it, initialised from
    a's file (50/50)."""
    b = backends(("blue", 1), ("green", 1))
    etcd = etcd_cluster(1)
    blue, green = b.ports["blue"][0], b.ports["green"][0]
    a, bb, c = (nodes(name, etcd.endpoints, blue, green) for name in ("td-a", "td-b", "td-c"))
    init(a)
    for n in (a, bb, c):
        wait_for(lambda n=n: n.state()["cluster"]["initialised"] and reachable(n), 20 * SLOW,
                 what=f"{n.name} initialised")
    return etcd, (a, bb, c), (blue, green)


def test_cluster_ratio_put_on_one_node_routes_on_every_node(three):
    etcd, (a, b, c), _ = three
    status, r = a.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
    assert status == 200, r
    assert r["revision"] > 0
    for n in (a, b, c):
        wait_for(lambda n=n: n.weights() == {"blue": 0, "green": 100}, 10 * SLOW,
                 what=f"ratio on {n.name}")
        assert colours(n.port) == {"green"}
    # Every node names the same revision as applied.
    for n in (b, c):
        wait_for(lambda n=n: n.state()["cluster"]["applied_revision"] >= r["revision"], 10 * SLOW)


def test_cluster_node_started_later_takes_the_clusters_state(three, nodes):
    etcd, (a, b, c), (blue, green) = three
    status, r = a.api("PUT", "/api/v1/ratio", {"blue": 100, "green": 0})
    assert status == 200, r
    # Its own file says 50/50 and "sticky" is nowhere: what runs is the cluster's.
    d = nodes("td-d", etcd.endpoints, blue, green, weights=(50, 50))
    wait_for(lambda: d.weights() == {"blue": 100, "green": 0} and reachable(d), 20 * SLOW,
             what="d caught up")
    assert colours(d.port) == {"blue"}
    s = d.state()["cluster"]
    assert s["initialised"] and s["reachable"] and not s["from_cache"]
    # And the others see it as a live node.
    wait_for(lambda: "td-d" in {n["node"] for n in a.cluster()["nodes"]}, 10 * SLOW)


def test_cluster_lost_compare_and_swap_is_409_and_changes_nothing(three):
    """b proposes against the revision it applied while a's change to that same revision is
    already in etcd: b's request is in its socket before a's change is made (b is stopped), so
    when b runs again it reads the request before the watch event (epoll reports in arrival
    order)."""
    import http.client
    etcd, (a, b, c), _ = three
    conn = http.client.HTTPConnection("127.0.0.1", b.admin_port, timeout=30 * SLOW)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conn.request("GET", "/api/v1/state", headers=auth)
    base = json.loads(conn.getresponse().read())["cluster"]["applied_revision"]
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        conn.request("PUT", "/api/v1/ratio", body=json.dumps({"blue": 100, "green": 0}),
                     headers=auth)
        status, r = a.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200, r
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 409, body
    assert "changed meanwhile" in body["error"]
    assert f"this node had applied {base}" in body["error"]
    # Nothing of b's change was made: every node runs a's.
    for n in (a, b, c):
        wait_for(lambda n=n: n.weights() == {"blue": 0, "green": 100}, 10 * SLOW,
                 what=f"a's ratio on {n.name}")
    # b caught up: the same change asked again now succeeds.
    status, r2 = b.api("PUT", "/api/v1/ratio", {"blue": 100, "green": 0})
    assert status == 200, r2
    assert r2["revision"] > r["revision"]


def test_cluster_wait_all_answers_once_every_live_node_applied(three):
    etcd, (a, b, c), _ = three
    status, r = b.api("PUT", "/api/v1/ratio?wait=all&timeout_ms=10000", {"blue": 30, "green": 70})
    assert status == 200, r
    rev = r["revision"]
    # When it answered, every node had applied it already: no polling here.
    for n in (a, b, c):
        s = n.state()
        assert s["cluster"]["applied_revision"] >= rev, (n.name, s["cluster"])
        assert {x["name"]: x["weight"] for x in s["backends"]} == {"blue": 30, "green": 70}


def test_cluster_history_shows_every_nodes_changes(three):
    etcd, (a, b, c), _ = three
    assert a.api("PUT", "/api/v1/ratio", {"blue": 10, "green": 90})[0] == 200
    assert c.api("PUT", "/api/v1/backends/blue", {"state": "drain"})[0] == 200
    status, h = b.api("GET", "/api/v1/history")
    assert status == 200, h
    by = [(e["node"], e["what"]) for e in h]
    assert ("td-a", "cluster initialised") in by
    assert ("td-a", "ratio blue=10 green=90") in by
    assert ("td-c", "backend blue state drain") in by
    assert [e["revision"] for e in h] == sorted(e["revision"] for e in h)


def test_cluster_newer_schema_applies_known_keys_and_reports_the_rest(three):
    etcd, (a, b, c), (blue, green) = three
    doc = {
        "schema": 2,
        "routing": {"method": "round_robin", "new_routing_knob": True},
        "backends": [
            {"name": "blue", "weight": 80, "servers": [{"address": f"127.0.0.1:{blue}"}],
             "colour_hint": "blue"},
            {"name": "green", "weight": 20, "servers": [{"address": f"127.0.0.1:{green}"}]},
        ],
        "future_section": {"x": 1},
    }
    p = etcd.etcdctl("put", PREFIX + "config", json.dumps(doc))
    assert p.returncode == 0, p.stderr
    for n in (a, b, c):
        wait_for(lambda n=n: n.weights() == {"blue": 80, "green": 20}, 10 * SLOW,
                 what=f"schema 2 document on {n.name}")
        v = n.cluster()
        assert v["schema"] == 2
        assert sorted(v["ignored"]) == ["backends[0].colour_hint", "future_section",
                                        "routing.new_routing_knob"]


def test_cluster_document_that_does_not_load_is_refused_and_the_running_config_stays(three):
    etcd, (a, b, c), (blue, green) = three
    status, r = a.api("PUT", "/api/v1/ratio", {"blue": 60, "green": 40})
    assert status == 200, r
    bad = {"schema": 1, "routing": {"method": "round_robin", "metod": "x"},
           "backends": [{"name": "blue", "weight": 0,
                         "servers": [{"address": f"127.0.0.1:{blue}"}]}]}
    p = etcd.etcdctl("put", PREFIX + "config", json.dumps(bad))
    assert p.returncode == 0, p.stderr

    def said_so(n):
        status, ev = n.api("GET", "/api/v1/events")
        return any("refused" in e["message"] and "metod" in e["message"] for e in ev)

    for n in (a, b, c):
        wait_for(lambda n=n: said_so(n), 10 * SLOW, what=f"{n.name} refusing the document")
        assert n.weights() == {"blue": 60, "green": 40}
        assert colours(n.port, 10) <= {"blue", "green"}
    # A change through the API is refused too until the document is fixed: nothing to build on.
    status, e = b.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
    assert status == 409 and "does not load on this node" in e["error"], e


def test_cluster_etcd_down_nodes_serve_refuse_changes_restart_from_cache_then_converge(three):
    etcd, (a, b, c), _ = three
    status, r = a.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
    assert status == 200, r
    for n in (a, b, c):
        wait_for(lambda n=n: n.weights() == {"blue": 0, "green": 100}, 10 * SLOW)
    etcd.kill(0)
    for n in (a, b, c):
        wait_for(lambda n=n: n.readyz()[0] == 503, 15 * SLOW, what=f"{n.name} not ready")
        status, why = n.readyz()
        assert why["reason"].startswith("cut off from the cluster store: "), why
        assert colours(n.port, 10) == {"green"}  # serving what it applied
    status, e = a.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
    assert status == 503, e
    assert e["error"].startswith("cluster store unreachable: "), e
    assert b.state()["cluster"]["reachable"] is False
    # c restarts while etcd is down: it runs its cache (the cluster's 0/100, not its file's
    # 50/50) and says so.
    rc, out = c.stop()
    assert rc == 0, out[-3000:]
    c.start()
    s = c.state()
    assert s["cluster"]["from_cache"] is True
    assert {x["name"]: x["weight"] for x in s["backends"]} == {"blue": 0, "green": 100}
    assert colours(c.port, 10) == {"green"}
    assert c.readyz()[0] == 503
    # etcd back: every node catches up, is ready, and takes changes again.
    etcd.start(0)
    for n in (a, b, c):
        wait_for(lambda n=n: reachable(n) and n.readyz()[0] == 200, 30 * SLOW,
                 what=f"{n.name} reconnected")
    status, r = b.api("PUT", "/api/v1/ratio?wait=all", {"blue": 100, "green": 0})
    assert status == 200, r
    for n in (a, b, c):
        assert n.weights() == {"blue": 100, "green": 0}
        assert colours(n.port, 10) == {"blue"}
    assert c.state()["cluster"]["from_cache"] is False


def test_cluster_uninitialised_prefix_serves_the_file_and_takes_an_init_from_another_node(
        backends, etcd_cluster, nodes):
    bk = backends(("blue", 1), ("green", 1))
    etcd = etcd_cluster(1)
    blue, green = bk.ports["blue"][0], bk.ports["green"][0]
    a = nodes("td-a", etcd.endpoints, blue, green, weights=(100, 0))
    b = nodes("td-b", etcd.endpoints, blue, green, weights=(0, 100))
    wait_for(lambda: reachable(a) and reachable(b), 20 * SLOW)
    for n, only in ((a, "blue"), (b, "green")):
        s = n.state()["cluster"]
        assert s["initialised"] is False
        assert n.readyz()[0] == 200  # by design: it serves its own file
        assert colours(n.port, 10) == {only}
    status, e = a.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
    assert status == 409 and "cluster not initialised" in e["error"], e
    init(b)
    wait_for(lambda: a.weights() == {"blue": 0, "green": 100}, 10 * SLOW, what="a took b's init")
    status, e = a.api("POST", "/api/v1/cluster/init", a.cfg)
    assert status == 409 and "already initialised" in e["error"], e
    status, e = a.api("DELETE", "/api/v1/overrides")
    assert status == 409 and "no overrides in cluster mode" in e["error"], e
    status, e = a.api("POST", "/api/v1/rollout", {"target": "blue"})
    assert status == 400 and "target" in e["error"], e


def pinned(port, cookie, n=10):
    """The colours of n requests carrying the sticky cookie, and whether td replaced it."""
    seen, replaced = set(), False
    for _ in range(n):
        status, headers, _ = get_once(port, headers={"Cookie": f"TDSTICKY={cookie}"})
        assert status == 200
        seen.add(headers.get("X-TD-Demo-Backend"))
        replaced |= sticky_cookie(headers) not in (None, cookie)
    return seen, replaced


def cookie_for(port, colour, tries=200):
    """A sticky cookie issued by the td on `port` that pins `colour`."""
    for _ in range(tries):
        status, headers, _ = get_once(port)
        if headers.get("X-TD-Demo-Backend") == colour and sticky_cookie(headers):
            return sticky_cookie(headers)
    raise AssertionError(f"no cookie for {colour} from :{port}")


def test_cluster_sticky_cookie_from_one_node_pins_on_every_node_across_a_rotation(three):
    etcd, (a, b, c), _ = three
    status, r = a.api("PUT", "/api/v1/routing?wait=all", {"method": "sticky"})
    assert status == 200, r
    old = {colour: cookie_for(a.port, colour) for colour in ("blue", "green")}
    for n in (a, b, c):
        for colour, cookie in old.items():
            assert pinned(n.port, cookie) == ({colour}, False), (n.name, colour)
    status, r = c.api("POST", "/api/v1/cluster/sticky-key?wait=all")
    assert status == 200, r
    assert r["rotated"] is True
    # A cookie signed with the previous key still pins everywhere; new ones are signed with the
    # new key, and also pin everywhere.
    new = cookie_for(b.port, "green")
    assert new.split(".")[-1] != old["green"].split(".")[-1]
    for n in (a, b, c):
        for colour, cookie in old.items():
            assert pinned(n.port, cookie) == ({colour}, False), (n.name, colour, "old key")
        assert pinned(n.port, new) == ({"green"}, False), (n.name, "new key")
    # After a second rotation the first key is gone: its cookies are replaced.
    status, r = a.api("POST", "/api/v1/cluster/sticky-key?wait=all")
    assert status == 200, r
    for n in (a, b, c):
        assert pinned(n.port, new) == ({"green"}, False), (n.name, "previous key")
        assert pinned(n.port, old["blue"], 20)[1] is True, (n.name, "key rotated out")


def test_cluster_node_cut_off_by_a_relay_serves_its_state_and_catches_up_when_restored(
        backends, etcd_cluster, nodes):
    bk = backends(("blue", 1), ("green", 1))
    etcd = etcd_cluster(1)
    blue, green = bk.ports["blue"][0], bk.ports["green"][0]
    relay = TcpRelay("127.0.0.1", etcd.client_ports[0])
    try:
        a = nodes("td-a", etcd.endpoints, blue, green)
        c = nodes("td-c", [f"http://127.0.0.1:{relay.port}"], blue, green)
        init(a, {"blue": 100, "green": 0})
        wait_for(lambda: c.weights() == {"blue": 100, "green": 0} and reachable(c), 20 * SLOW)
        relay.cut()
        wait_for(lambda: c.readyz()[0] == 503, 15 * SLOW, what="c cut off")
        assert c.state()["cluster"]["reachable"] is False
        status, e = c.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 503 and e["error"].startswith("cluster store unreachable: "), e
        # a goes on; c serves what it had.
        status, r = a.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200, r
        assert colours(c.port, 10) == {"blue"}
        relay.restore()
        wait_for(lambda: reachable(c) and c.readyz()[0] == 200, 30 * SLOW, what="c back")
        # Caught up before it was reachable again.
        assert c.weights() == {"blue": 0, "green": 100}
        assert c.state()["cluster"]["applied_revision"] >= r["revision"]
        assert colours(c.port, 10) == {"green"}
        status, r = c.api("PUT", "/api/v1/ratio?wait=all", {"blue": 50, "green": 50})
        assert status == 200, r
    finally:
        relay.stop()


def test_cluster_node_whose_lease_expired_takes_a_new_one_and_rejoins(three):
    etcd, (a, b, c), _ = three

    def listed(name):
        return name in {n["node"] for n in a.cluster()["nodes"]}

    wait_for(lambda: listed("td-c"), 10 * SLOW)
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        # lease_s is 3: etcd drops c's key once it has not been renewed for that long.
        wait_for(lambda: not listed("td-c"), 20 * SLOW, interval=0.2, what="c's key expiring")
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    wait_for(lambda: listed("td-c") and reachable(c), 20 * SLOW, what="c back in the list")
    status, r = a.api("PUT", "/api/v1/ratio?wait=all", {"blue": 20, "green": 80})
    assert status == 200, r
    assert c.weights() == {"blue": 20, "green": 80}


def test_cluster_wait_all_is_504_naming_a_node_that_did_not_apply_in_time(three):
    import socket
    etcd, (a, b, c), _ = three
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        # A client that gives up while its answer waits: the reply is dropped, td goes on.
        s = socket.create_connection(("127.0.0.1", a.admin_port))
        body = json.dumps({"blue": 40, "green": 60}).encode()
        s.sendall(b"PUT /api/v1/ratio?wait=all&timeout_ms=800 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        s.close()
        wait_for(lambda: a.weights() == {"blue": 40, "green": 60}, 10 * SLOW)
        status, r = a.api("PUT", "/api/v1/ratio?wait=all&timeout_ms=1000",
                          {"blue": 10, "green": 90})
        assert status == 504, r
        assert r["laggards"] == ["td-c"], r
        assert r["error"].startswith("not applied on td-c within 1000 ms"), r
        # The change itself is made.
        assert a.weights() == {"blue": 10, "green": 90}
        wait_for(lambda: b.weights() == {"blue": 10, "green": 90}, 10 * SLOW)
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    wait_for(lambda: c.weights() == {"blue": 10, "green": 90}, 20 * SLOW, what="c catching up")


def test_cluster_config_is_checked_by_td_t_without_etcd():
    import subprocess
    from conftest import TD
    d = tempfile.mkdtemp(prefix="td-cluster-t-")
    path = os.path.join(d, "td.json")
    cfg = {"listeners": [{"address": "127.0.0.1:18080"}],
           "admin": {"address": "127.0.0.1:19090", "token": TOKEN},
           "backends": [{"name": "blue", "weight": 1,
                         "servers": [{"address": "127.0.0.1:9001"}]}],
           # Nothing listens there: td -t does not ask.
           "cluster": {"etcd": ["http://127.0.0.1:1"], "prefix": "/td/x/", "node": "td-a"}}
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stderr
    cfg["cluster"]["prefix"] = "td/x"
    del cfg["admin"]
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert f"{path}:22:15: cluster.prefix: \"td/x\" is not a valid prefix" in p.stderr, p.stderr
    assert f"{path}:18:3: cluster: cluster mode needs \"admin\"" in p.stderr, p.stderr


def test_cluster_node_whose_cache_is_newer_than_a_recreated_store_takes_the_stores_state(
        three, etcd_cluster, nodes):
    etcd, (a, b, c), (blue, green) = three
    for w in (10, 20, 30, 40):
        assert a.api("PUT", "/api/v1/ratio", {"blue": w, "green": 100 - w})[0] == 200
    wait_for(lambda: c.weights() == {"blue": 40, "green": 60}, 10 * SLOW)
    old_rev = c.state()["cluster"]["applied_revision"]
    rc, out = c.stop()
    assert rc == 0, out[-3000:]
    # A new, empty store (etcd restored from an old backup, or created anew) with few revisions.
    fresh = etcd_cluster(1)
    d = nodes("td-d", fresh.endpoints, blue, green, weights=(100, 0))
    rev = init(d)
    assert rev < old_rev
    c.cfg["cluster"]["etcd"] = fresh.endpoints
    c.write()
    c.start()
    wait_for(lambda: c.weights() == {"blue": 100, "green": 0} and reachable(c), 20 * SLOW,
             what="c taking the new store's config")
    assert c.state()["cluster"]["from_cache"] is False
    status, r = c.api("PUT", "/api/v1/ratio?wait=all", {"blue": 70, "green": 30})
    assert status == 200, r
    assert d.weights() == {"blue": 70, "green": 30}
