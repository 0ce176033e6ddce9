#!/usr/bin/python3
"""Cluster mode: how long from a change on one td node to its effect on every other node.

Starts one etcd member (Debian's etcd, a temporary data dir), the demo backends blue and green
(`td backend`), and --nodes td nodes in cluster mode on that etcd, all on free ports of
127.0.0.1; seeds the cluster (POST /api/v1/cluster/init). Then --changes times: PUT
/api/v1/ratio on the first node, flipping between blue=100/green=0 and blue=0/green=100, while on
every other node a probe sends real requests back to back through its listener (one keep-alive
connection each, a thread per node). A change's time to effect is from just before the PUT until
the slowest of the other nodes' probes first got the newly weighted backend. Prints one JSON
line: {"nodes", "changes", "effect_ms_p50", "effect_ms_max", "timeouts"}. Stdlib only.
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOKEN = "bench-cluster-token"
TIMEOUT_S = 5.0  # a change not seen everywhere within this counts as a timeout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def api(admin_port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


class Probe(threading.Thread):
    """Requests back to back through one node's listener; `last` is the backend of the newest
    answer and `seen[colour]` the monotonic time it was first seen since reset()."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop = port, False
        self.lock = threading.Lock()
        self.seen = {}

    def reset(self):
        with self.lock:
            self.seen = {}

    def run(self):
        conn = None
        while not self.stop:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                colour = r.headers.get("X-TD-Demo-Backend")
                now = time.monotonic()
                with self.lock:
                    self.seen.setdefault(colour, now)
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)

    def first(self, colour):
        with self.lock:
            return self.seen.get(colour)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--td", default=os.environ.get("TD_BIN", os.path.join(ROOT, "build/td")))
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    a = ap.parse_args()

    run = tempfile.mkdtemp(prefix="td-bench-cluster-")
    procs = []
    probes = []
    try:
        cport, pport = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{cport}"
        procs.append(subprocess.Popen(
            [a.etcd, "--name", "m0", "--data-dir", os.path.join(run, "etcd"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", f"m0=http://127.0.0.1:{pport}", "--log-level", "error",
             "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        blue, green = free_port(), free_port()
        procs.append(subprocess.Popen([a.td, "backend", f"blue=127.0.0.1:{blue}",
                                       f"green=127.0.0.1:{green}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in (cport, blue, green):
            wait_port(p)
        nodes = []
        for i in range(a.nodes):
            port, admin = free_port(), free_port()
            cfg = {
                "listeners": [{"address": f"127.0.0.1:{port}"}], "workers": 1,
                "admin": {"address": f"127.0.0.1:{admin}", "token": TOKEN},
                "routing": {"method": "round_robin"},
                "backends": [
                    {"name": "blue", "weight": 100,
                     "servers": [{"address": f"127.0.0.1:{blue}"}]},
                    {"name": "green", "weight": 0,
                     "servers": [{"address": f"127.0.0.1:{green}"}]}],
                "cluster": {"etcd": [etcd_url], "prefix": "/td/bench/", "node": f"n{i}",
                            "lease_s": 5},
            }
            path = os.path.join(run, f"n{i}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            procs.append(subprocess.Popen([a.td, "-c", path], stdout=subprocess.DEVNULL,
                                          stderr=open(os.path.join(run, f"n{i}.log"), "w")))
            nodes.append((port, admin, cfg))
        for port, admin, _ in nodes:
            wait_port(port)
            wait_port(admin)
        doc = {k: v for k, v in nodes[0][2].items() if k not in ("listeners", "admin", "cluster")}
        status, r = api(nodes[0][1], "POST", "/api/v1/cluster/init", doc)
        if status != 200:
            raise RuntimeError(f"cluster init: {status} {r}")
        # every node applied the seed and has its nodes/ key up
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, c = api(nodes[0][1], "GET", "/api/v1/cluster")
            if status == 200 and len(c.get("nodes", [])) == a.nodes and \
                    all(n.get("lag", 1) == 0 for n in c["nodes"]):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the nodes did not all join: {c}")
        probes = [Probe(port) for port, _, _ in nodes[1:]]
        for p in probes:
            p.start()
        effects, timeouts = [], 0
        for i in range(a.changes):
            to = "green" if i % 2 == 0 else "blue"
            weights = {"blue": 100 if to == "blue" else 0, "green": 100 if to == "green" else 0}
            for p in probes:
                p.reset()
            t0 = time.monotonic()
            status, r = api(nodes[0][1], "PUT", "/api/v1/ratio", weights)
            if status != 200:
                raise RuntimeError(f"PUT /api/v1/ratio: {status} {r}")
            while time.monotonic() - t0 < TIMEOUT_S:
                seen = [p.first(to) for p in probes]
                if all(seen):
                    effects.append((max(seen) - t0) * 1000)
                    break
                time.sleep(0.001)
            else:
                timeouts += 1
            time.sleep(0.05)  # the old colour's last in-flight answers are over
        print(json.dumps({
            "nodes": a.nodes, "changes": a.changes,
            "effect_ms_p50": round(statistics.median(effects), 2) if effects else None,
            "effect_ms_max": round(max(effects), 2) if effects else None,
            "timeouts": timeouts}))
        return 0
    finally:
        for p in probes:
            p.stop = True
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
