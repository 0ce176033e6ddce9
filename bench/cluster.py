#!/usr/bin/python3
"""Cluster mode: how long from a change on one td node to its effect on every other node.

Starts one etcd member (Debian's etcd, a temporary data dir), the demo backends blue and green
(`td backend`), and --nodes td nodes in cluster mode on that etcd, all on free ports of
127.0.0.1; seeds the cluster (POST /api/v1/cluster/init). Then --changes times: PUT
/api/v1/ratio on the first node, flipping between blue=100/green=0 and blue=0/green=100, while on
every other node a probe sends real requests back to back through its listener (one keep-alive
connection each, all driven by one thread). A change's time to effect is from just before the
PUT until the slowest of the other nodes' probes first got the newly weighted backend. Prints
one JSON line: {"nodes", "changes", "effect_ms_p50", "effect_ms_max", "put_ms_p50",
"put_ms_max", "timeouts"}. Stdlib only.
"""
import argparse
import json
import os
import selectors
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


class Probes(threading.Thread):
    """Requests back to back through every other node's listener, one keep-alive connection per
    node, all driven by one thread with non-blocking sockets (selectors), so that the probing of
    ten nodes is not a contest of ten Python threads for the interpreter. `first(i, colour)` is
    the monotonic time node i's answers first came from `colour` since reset()."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: td-bench-cluster\r\n\r\n"

    def __init__(self, ports):
        super().__init__(daemon=True)
        self.ports, self.stop = ports, False
        self.lock = threading.Lock()
        self.seen = [{} for _ in ports]

    def reset(self):
        with self.lock:
            self.seen = [{} for _ in self.ports]

    def first(self, i, colour):
        with self.lock:
            return self.seen[i].get(colour)

    def connect(self, sel, i):
        s = socket.create_connection(("127.0.0.1", self.ports[i]), timeout=2)
        s.setblocking(False)
        s.sendall(self.REQUEST)
        sel.register(s, selectors.EVENT_READ, [i, b""])

    def run(self):
        sel = selectors.DefaultSelector()
        for i in range(len(self.ports)):
            self.connect(sel, i)
        while not self.stop:
            for key, _ in sel.select(timeout=0.1):
                s, (i, buf) = key.fileobj, key.data
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:  # closed: open another connection
                    sel.unregister(s)
                    s.close()
                    self.connect(sel, i)
                    continue
                buf += data
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    key.data[1] = buf
                    continue
                head = buf[:head_end].decode("latin-1").lower()
                length = int(head.split("content-length:")[1].split("\r\n")[0]) \
                    if "content-length:" in head else 0
                if len(buf) < head_end + 4 + length:
                    key.data[1] = buf
                    continue
                colour = head.split("x-td-demo-backend:")[1].split("\r\n")[0].strip() \
                    if "x-td-demo-backend:" in head else None
                now = time.monotonic()
                with self.lock:
                    self.seen[i].setdefault(colour, now)
                key.data[1] = buf[head_end + 4 + length:]
                s.sendall(self.REQUEST)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--td", default=os.environ.get("TD_BIN", os.path.join(ROOT, "build/td")))
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    a = ap.parse_args()

    run = tempfile.mkdtemp(prefix="td-bench-cluster-")
    procs = []
    probes = None
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
        deadline = time.monotonic() + 30  # every node reached etcd (it may still be starting)
        for _, admin, _ in nodes:
            while time.monotonic() < deadline:
                status, st = api(admin, "GET", "/api/v1/state")
                if status == 200 and st.get("cluster", {}).get("reachable"):
                    break
                time.sleep(0.1)
        status, r = api(nodes[0][1], "POST", "/api/v1/cluster/init", nodes[0][2])
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
        probes = Probes([port for port, _, _ in nodes[1:]])
        probes.start()
        effects, puts, timeouts = [], [], 0
        for i in range(a.changes):
            to = "green" if i % 2 == 0 else "blue"
            weights = {"blue": 100 if to == "blue" else 0, "green": 100 if to == "green" else 0}
            probes.reset()
            t0 = time.monotonic()
            status, r = api(nodes[0][1], "PUT", "/api/v1/ratio", weights)
            if status != 200:
                raise RuntimeError(f"PUT /api/v1/ratio: {status} {r}")
            puts.append((time.monotonic() - t0) * 1000)
            while time.monotonic() - t0 < TIMEOUT_S:
                seen = [probes.first(k, to) for k in range(a.nodes - 1)]
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
            # the PUT's own answer: etcd's commit (a disk sync) and the proposing node's apply
            "put_ms_p50": round(statistics.median(puts), 2), "put_ms_max": round(max(puts), 2),
            "timeouts": timeouts}))
        return 0
    finally:
        if probes:
            probes.stop = True
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
