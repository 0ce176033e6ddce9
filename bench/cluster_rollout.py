#!/usr/bin/python3
"""Cluster mode: a rollout across three td nodes, measured.

Starts one etcd member (Debian's etcd, a temporary data dir), the demo backends blue and green
(`td backend`) and three td nodes in cluster mode on that etcd (the third through a TCP relay
that can cut it off), all on free ports of 127.0.0.1, and seeds the cluster. Then, on a fresh
cluster each time:

- rollout: blue -> green in steps 10, 50, 100 (step_s 5, analysis every 1 s on 20 requests)
  while a load generator sends requests back to back through every node's listener (2 keep-alive
  connections per node); counts the requests and the failed ones (non-2xx or a broken
  connection) across the three nodes.
- takeover (lease_s 5, then 2): the same rollout; once step 1's window opened, the leader is
  SIGKILLed. A watch on the prefix (started before the kill) times the events as etcd sends them:
  from the kill to the new leader's PREFIX leader key, to its first write (the persisted step's
  weights applied again, PREFIX config and PREFIX rollout in one txn) and to the next step's
  weights, written after that step's fresh window (step_s 5). Requests through the killed node
  are not counted; failed requests are the survivors'.
- cut-off (lease_s 2): a rollout held at its first step (step_s 600); the relay cuts the third
  node off from etcd, either closing every connection and refusing new ones, or silently (every
  byte held back, nothing closed: a dead network); from the cut to that node's state showing the
  weights from before the rollout (its fall-back), polled every 5 ms.

Prints a table (one row per figure, the median and the range over --rounds) and one JSON line
with every measurement. Stdlib only.
"""
import argparse
import base64
import http.client
import json
import os
import shutil
import signal
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
PREFIX = "/td/bench/"
ANALYSIS = {"interval_s": 1, "warmup_s": 0, "min_requests": 20}


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


def wait(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise RuntimeError(f"{what}: not within {timeout} s")


def api(admin_port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Watch(threading.Thread):
    """Every event under PREFIX from now on, as etcd's JSON gateway streams them:
    .events is [(monotonic time received, "PUT"/"DELETE", key without the prefix, value)]."""

    def __init__(self, etcd_port):
        super().__init__(daemon=True)
        self.events, self.lock, self.stop = [], threading.Lock(), False
        self.conn = http.client.HTTPConnection("127.0.0.1", etcd_port, timeout=10)
        end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
        self.conn.request("POST", "/v3/watch", body=json.dumps(
            {"create_request": {"key": b64(PREFIX), "range_end": b64(end)}}))
        self.r = self.conn.getresponse()
        self.conn.sock.settimeout(None)  # blocking reads; close() shuts the socket down
        self.start()

    def run(self):
        buf, dec = "", json.JSONDecoder()
        while not self.stop:
            buf = buf.lstrip()
            try:
                msg, n = dec.raw_decode(buf)
            except ValueError:
                try:
                    data = self.r.read1(65536)
                except (OSError, http.client.HTTPException, ValueError):
                    return
                if not data:
                    return
                buf += data.decode()
                continue
            buf = buf[n:]
            now = time.monotonic()
            for ev in (msg.get("result") or {}).get("events") or []:
                kv = ev["kv"]
                text = base64.b64decode(kv.get("value") or "").decode(errors="replace")
                try:
                    value = json.loads(text) if text else None
                except ValueError:
                    value = None
                key = base64.b64decode(kv["key"]).decode()[len(PREFIX):]
                with self.lock:
                    self.events.append((now, ev.get("type", "PUT"), key, value))

    def first(self, pred, after):
        with self.lock:
            for e in self.events:
                if e[0] >= after and pred(e):
                    return e
        return None

    def close(self):
        self.stop = True
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(5)
        self.conn.close()


class Relay(threading.Thread):
    """127.0.0.1:.port relayed to a target port; cut() closes every relayed connection and
    refuses new ones (accepted, then closed) until restore()."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.target, self.cut_off, self.conns, self.lock = target, False, [], threading.Lock()
        self.flowing = threading.Event()  # cleared by hold(): bytes kept back, nothing closed
        self.flowing.set()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.port, self.stopping = self.ls.getsockname()[1], False
        self.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.cut_off:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            c.settimeout(None)
            u.settimeout(None)
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.flowing.wait(0.2):
                    if self.stopping:
                        return
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.cut_off = True
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def hold(self):
        self.flowing.clear()

    def close(self):
        self.stopping = True
        self.cut()
        self.ls.close()


class Load:
    """Requests back to back through one node's listener on `conns` keep-alive connections (a
    thread each) until stop(): .ok, .failed (non-2xx), .errors (a broken connection)."""

    def __init__(self, port, conns=2):
        self.port, self.ok, self.failed, self.errors = port, 0, 0, 0
        self.lock, self.stopping = threading.Lock(), False
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(conns)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stopping:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                with self.lock:
                    if 200 <= r.status < 300:
                        self.ok += 1
                    else:
                        self.failed += 1
            except (OSError, http.client.HTTPException):
                with self.lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopping = True
        for t in self.threads:
            t.join(15)


class Cluster:
    """etcd, the demo backends and three td nodes n0, n1, n2 (n2 through a Relay), seeded."""

    def __init__(self, td, etcd, lease_s):
        self.run = tempfile.mkdtemp(prefix="td-bench-crollout-")
        self.procs, self.nodes, self.relay = [], [], None
        cport, pport = free_port(), free_port()
        self.etcd_port = cport
        url = f"http://127.0.0.1:{cport}"
        self.procs.append(subprocess.Popen(
            [etcd, "--name", "m0", "--data-dir", os.path.join(self.run, "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", f"m0=http://127.0.0.1:{pport}", "--log-level", "error",
             "--logger", "zap"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        blue, green = free_port(), free_port()
        self.procs.append(subprocess.Popen([td, "backend", f"blue=127.0.0.1:{blue}",
                                            f"green=127.0.0.1:{green}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for p in (cport, blue, green):
            wait_port(p)
        self.relay = Relay(cport)
        for i in range(3):
            port, admin = free_port(), free_port()
            eps = [f"http://127.0.0.1:{self.relay.port if i == 2 else cport}"]
            cfg = {
                "listeners": [{"address": f"127.0.0.1:{port}"}], "workers": 1,
                "admin": {"address": f"127.0.0.1:{admin}", "token": TOKEN},
                "routing": {"method": "round_robin"},
                "backends": [
                    {"name": "blue", "weight": 100,
                     "servers": [{"address": f"127.0.0.1:{blue}"}]},
                    {"name": "green", "weight": 0,
                     "servers": [{"address": f"127.0.0.1:{green}"}]}],
                "cluster": {"etcd": eps, "prefix": PREFIX, "node": f"n{i}", "lease_s": lease_s},
            }
            path = os.path.join(self.run, f"n{i}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            p = subprocess.Popen([td, "-c", path], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(self.run, f"n{i}.log"), "w"))
            self.procs.append(p)
            self.nodes.append({"name": f"n{i}", "port": port, "admin": admin, "cfg": cfg,
                               "proc": p})
        for n in self.nodes:
            wait_port(n["port"])
            wait_port(n["admin"])
            wait(lambda: (api(n["admin"], "GET", "/api/v1/state")[1] or {}).get("cluster", {})
                 .get("reachable"), 30, f"{n['name']} reaching etcd")
        status, r = api(self.nodes[0]["admin"], "POST", "/api/v1/cluster/init",
                        self.nodes[0]["cfg"])
        if status != 200:
            raise RuntimeError(f"cluster init: {status} {r}")

        def joined():
            status, c = api(self.nodes[0]["admin"], "GET", "/api/v1/cluster")
            return status == 200 and len(c.get("nodes", [])) == 3 and c.get("leader") and \
                all(n.get("lag", 1) == 0 for n in c["nodes"]) and c
        self.leader = wait(joined, 30, "every node joined and a leader elected")["leader"]

    def node(self, name):
        return next(n for n in self.nodes if n["name"] == name)

    def rollout(self, on, step_s=5):
        status, r = api(on["admin"], "POST", "/api/v1/rollout",
                        {"to": "green", "steps": [10, 50, 100], "step_s": step_s,
                         "analysis": ANALYSIS})
        if status != 201:
            raise RuntimeError(f"POST /api/v1/rollout: {status} {r}")
        return r["id"]

    def rollout_state(self, on):
        status, r = api(on["admin"], "GET", "/api/v1/rollout")
        return r if status == 200 else {}

    def weights(self, n):
        status, st = api(n["admin"], "GET", "/api/v1/state")
        return {b["name"]: b["weight"] for b in st["backends"]} if status == 200 else None

    def close(self):
        if self.relay:
            self.relay.close()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.run, ignore_errors=True)


def doc_green(doc):
    """green's weight in a PREFIX config document."""
    for b in (doc or {}).get("backends", []):
        if b.get("name") == "green":
            return b.get("weight")
    return None


def step_applied(c, on, k):
    r = c.rollout_state(on)
    d = (r.get("steps_detail") or [{}] * (k + 1))[k] or {}
    return r if d.get("applied_at") else None


def measure_rollout(a):
    c = Cluster(a.td, a.etcd, 5)
    try:
        loads = [Load(n["port"]) for n in c.nodes]
        follower = next(n for n in c.nodes if n["name"] != c.leader)
        c.rollout(follower)
        r = wait(lambda: (lambda r: r if r.get("state") in
                          ("succeeded", "rolled_back", "aborted", "paused") else None)(
            c.rollout_state(follower)), 120, "the rollout's end", 0.2)
        for ld in loads:
            ld.stop()
        return {"state": r["state"], "requests": sum(ld.ok + ld.failed + ld.errors for ld in loads),
                "failed": sum(ld.failed + ld.errors for ld in loads)}
    finally:
        c.close()


def measure_takeover(a, lease_s):
    c = Cluster(a.td, a.etcd, lease_s)
    try:
        old = c.node(c.leader)
        rest = [n for n in c.nodes if n is not old]
        loads = [Load(n["port"]) for n in rest]
        c.rollout(rest[0])
        wait(lambda: step_applied(c, rest[0], 0), 30, "step 1 applied")
        w = Watch(c.etcd_port)
        t0 = time.monotonic()
        old["proc"].send_signal(signal.SIGKILL)
        old["proc"].wait()
        key = wait(lambda: w.first(lambda e: e[2] == "leader" and e[1] == "PUT"
                                   and (e[3] or {}).get("node") != old["name"], t0),
                   120, "a new leader's key", 0.01)
        new = key[3]["node"]
        doc = wait(lambda: w.first(lambda e: e[2] == "rollout" and e[1] == "PUT", key[0]), 60,
                   "the new leader's first write of the rollout", 0.01)
        step = wait(lambda: w.first(lambda e: e[2] == "config" and e[1] == "PUT"
                                    and doc_green(e[3]) not in (None, 10), key[0]), 60,
                    "the next step written by the new leader", 0.01)
        r = wait(lambda: (lambda r: r if r.get("state") in
                          ("succeeded", "rolled_back", "aborted", "paused") else None)(
            c.rollout_state(rest[0])), 120, "the rollout's end", 0.2)
        w.close()
        for ld in loads:
            ld.stop()
        return {"lease_s": lease_s, "new_leader": new, "state": r["state"],
                "key_ms": round((key[0] - t0) * 1000, 1),
                "first_write_ms": round((doc[0] - t0) * 1000, 1),
                "next_step_ms": round((step[0] - t0) * 1000, 1),
                "requests": sum(ld.ok + ld.failed + ld.errors for ld in loads),
                "failed": sum(ld.failed + ld.errors for ld in loads)}
    finally:
        c.close()


def measure_cutoff(a, silent):
    c = Cluster(a.td, a.etcd, 2)
    try:
        cut = c.node("n2")
        c.rollout(c.node(c.leader), step_s=600)
        wait(lambda: c.weights(cut) == {"blue": 90, "green": 10}, 30, "step 1 on the cut node")
        t0 = time.monotonic()
        c.relay.hold() if silent else c.relay.cut()
        wait(lambda: c.weights(cut) == {"blue": 100, "green": 0}, 60, "the fall-back", 0.005)
        return {"fallback_ms": round((time.monotonic() - t0) * 1000, 1)}
    finally:
        c.close()


def row(name, values, unit):
    if not values:
        return f"| {name} | — | — |"
    med = statistics.median(values)
    return f"| {name} ({unit}) | {med:,.0f} | {min(values):,.0f} – {max(values):,.0f} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--td", default=os.environ.get("TD_BIN", os.path.join(ROOT, "build/td")))
    ap.add_argument("--etcd", default=shutil.which("etcd") or "/usr/bin/etcd")
    a = ap.parse_args()
    out = {"rollout": [], "takeover": [], "cutoff": [], "silent": []}
    for _ in range(a.rounds):
        out["rollout"].append(measure_rollout(a))
        for lease_s in (5, 2):
            out["takeover"].append(measure_takeover(a, lease_s))
        out["cutoff"].append(measure_cutoff(a, False))
        out["silent"].append(measure_cutoff(a, True))
    ro, tk = out["rollout"], out["takeover"]
    print(f"| {a.rounds} rounds, 3 nodes | median | range |")
    print("|---|---:|---:|")
    print(row("Requests during a rollout under load, 3 nodes", [x["requests"] for x in ro],
              "requests"))
    print(row("Failed requests during that rollout", [x["failed"] for x in ro], "requests"))
    for lease_s in (5, 2):
        t = [x for x in tk if x["lease_s"] == lease_s]
        print(row(f"Leader SIGKILLed, lease_s {lease_s}: to the new leader's key",
                  [x["key_ms"] for x in t], "ms"))
        print(row(f"Leader SIGKILLed, lease_s {lease_s}: to its first write (the step re-applied)",
                  [x["first_write_ms"] for x in t], "ms"))
        print(row(f"Leader SIGKILLed, lease_s {lease_s}: to the next step's weights (step_s 5)",
                  [x["next_step_ms"] for x in t], "ms"))
        print(row(f"Failed requests on the survivors, lease_s {lease_s}",
                  [x["failed"] for x in t], "requests"))
    print(row("Cut off from etcd mid-rollout (connections closed) to the node's fall-back",
              [x["fallback_ms"] for x in out["cutoff"]], "ms"))
    print(row("Cut off from etcd mid-rollout (silent: bytes held) to the node's fall-back",
              [x["fallback_ms"] for x in out["silent"]], "ms"))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
