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
