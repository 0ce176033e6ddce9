#!/usr/bin/env python3
"""Figures of a rollout run by td itself, on 127.0.0.1 (stdlib only; td's demo backends).

  python3 bench/rollout.py [--td build/td] [--seconds-per-step 5]

1. A good release: blue 100 / green 0, load from 8 keep-alive clients, POST /api/v1/rollout to
   green in steps 10, 50, 100: requests answered and failed (non-2xx or connection errors) from
   the start of the rollout until it succeeded.
2. A bad release: green answers 500 to one request in three (too few in a row for passive
   ejection); the same load and rollout: the time from the first 5xx a client saw to the moment
   GET /api/v1/rollout said rolled_back (and the weights were blue 100 / green 0 again), and the
   5xx the clients got in all.
Prints one JSON line per scenario."""
import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Failing(BaseHTTPRequestHandler):
    """green, broken: every third answer a 500."""
    protocol_version = "HTTP/1.1"
    n = 0
    lock = threading.Lock()

    def do_GET(self):
        with Failing.lock:
            Failing.n += 1
            bad = Failing.n % 3 == 0
        body = b"green\n"
        self.send_response(500 if bad else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Load:
    """`clients` threads sending GET / back to back on keep-alive connections."""

    def __init__(self, port, clients=8):
        self.port, self.stop_at = port, None
        self.ok = self.failed = 0
        self.first_5xx = None
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self):
        conn = None
        while self.running:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                good = 200 <= r.status < 300
                if r.status >= 500:
                    with self.lock:
                        if self.first_5xx is None:
                            self.first_5xx = time.monotonic()
            except (OSError, http.client.HTTPException):
                good = False
                conn = None
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(timeout=15)


def api(admin, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    c.request(method, path, body=json.dumps(body) if body is not None else None)
    r = c.getresponse()
    data = json.loads(r.read() or b"null")
    c.close()
    return r.status, data


def run_td(td, green_port, blue_port, tmp):
    port, admin = free_port(), free_port()
    cfg = {"listeners": [{"address": f"127.0.0.1:{port}"}], "workers": 1,
           "admin": {"address": f"127.0.0.1:{admin}"},
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": f"127.0.0.1:{blue_port}"}]},
                        {"name": "green", "weight": 0,
                         "servers": [{"address": f"127.0.0.1:{green_port}"}]}]}
    path = os.path.join(tmp, f"td-{port}.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = subprocess.Popen([td, "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    wait_port(admin)
    return p, port, admin


def rollout(admin, step_s):
    spec = {"to": "green", "steps": [10, 50, 100], "step_s": step_s,
            "analysis": {"interval_s": 1, "warmup_s": 1, "min_requests": 100}}
    status, r = api(admin, "POST", "/api/v1/rollout", spec)
    if status != 201:
        raise SystemExit(f"rollout refused: {status} {r}")


def wait_end(admin, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api(admin, "GET", "/api/v1/rollout")[1]
        if r["state"] in ("succeeded", "rolled_back", "aborted"):
            return r, time.monotonic()
        time.sleep(0.05)
    raise SystemExit("the rollout did not end in time")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--td", default="build/td")
    ap.add_argument("--seconds-per-step", type=int, default=5)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="td-rollout-bench-")
    blue, green = free_port(), free_port()
    demo = subprocess.Popen([a.td, "backend", f"blue=127.0.0.1:{blue}", f"green=127.0.0.1:{green}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bad = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=bad.serve_forever, daemon=True).start()
    procs = [demo]
    try:
        wait_port(blue)
        wait_port(green)
        # 1. good release
        p, port, admin = run_td(a.td, green, blue, tmp)
        procs.append(p)
        load = Load(port).start()
        time.sleep(1)
        before = load.ok + load.failed
        t0 = time.monotonic()
        rollout(admin, a.seconds_per_step)
        r, t1 = wait_end(admin, 20 * a.seconds_per_step)
        load.stop()
        print(json.dumps({"scenario": "good release", "state": r["state"],
                          "requests": load.ok + load.failed - before, "failed": load.failed,
                          "seconds": round(t1 - t0, 1),
                          "weights": r["weights"]}))
        p.terminate()
        p.wait(timeout=30)
        # 2. bad release
        p, port, admin = run_td(a.td, bad.server_address[1], blue, tmp)
        procs.append(p)
        load = Load(port).start()
        time.sleep(1)
        rollout(admin, a.seconds_per_step)
        r, t1 = wait_end(admin, 20 * a.seconds_per_step)
        load.stop()
        first = load.first_5xx
        print(json.dumps({"scenario": "bad release", "state": r["state"], "reason": r["reason"],
                          "first_5xx_to_rollback_s": round(t1 - first, 2) if first else None,
                          "failed": load.failed, "requests": load.ok + load.failed,
                          "weights": r["weights"]}))
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        bad.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
