#!/usr/bin/python3
"""Ratio changes: how long from a change to its effect, for td, nginx and HAProxy.

Flips the ratio --flips times between blue=100/green=0 and blue=0/green=100, each the way that
proxy is operated:
  td       PUT /api/v1/ratio on its admin API
  nginx    rewrite the weights of the two `server` lines in its config (`down` for 0), nginx -s reload
  haproxy  `set server be/NAME weight N` on its runtime API (stats socket)
A probe thread sends requests back to back all along (one keep-alive connection, reconnecting when
the proxy closes it); the time to effect is from just before the change command until the first
response from the backend that now has all the weight, whether or not the command has returned
(td's API also persists the config before it answers). For --settle-ms after that it counts
"stragglers": responses from the old backend once the new one has answered. Meanwhile
bench/run.sh keeps the proxy under load with wrk and counts the failed requests.
Prints one JSON line. Stdlib only.
"""
import argparse
import http.client
import collections
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

OTHER = {"blue": "green", "green": "blue"}


class Probe:
    def __init__(self, port):
        self.port = port
        self.conn = None
        self.errors = 0

    def get(self):
        """One GET /; returns "blue", "green", or None on an error (then reconnects)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            self.conn.request("GET", "/", headers={"User-Agent": "td-bench-probe"})
            r = self.conn.getresponse()
            body = r.read().strip().decode(errors="replace")
            if r.will_close:
                self.conn.close()
                self.conn = None
            if r.status != 200:
                self.errors += 1
                return None
            return body
        except (OSError, http.client.HTTPException):
            self.errors += 1
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None


def set_td(args, w):
    conn = http.client.HTTPConnection(*args.admin.split(":"), timeout=5)
    conn.request("PUT", "/api/v1/ratio", body=json.dumps(w),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"td admin API: {r.status} {body!r}")


def set_haproxy(args, w):
    # The backend gaining weight first, so there is never a moment with both at 0.
    order = sorted(w, key=lambda name: -w[name])
    cmd = "; ".join(f"set server be/{name} weight {w[name]}" for name in order) + "\n"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(args.socket)
    s.sendall(cmd.encode())
    out = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        out += chunk
    s.close()
    if out.strip():
        raise RuntimeError(f"haproxy runtime API: {out.decode(errors='replace').strip()}")


NGINX_SERVER = {"blue": "127.0.0.1:9001", "green": "127.0.0.1:9002"}


def set_nginx(args, w):
    with open(args.conf) as f:
        text = f.read()
    for name, addr in NGINX_SERVER.items():
        new = f"server {addr} weight={w[name]};" if w[name] else f"server {addr} down;"
        text, n = re.subn(rf"server {re.escape(addr)}[^;]*;", new, text)
        if n != 1:
            raise RuntimeError(f"nginx config: no single `server {addr}` line")
    tmp = args.conf + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, args.conf)
    subprocess.run(["nginx", "-c", args.conf, "-e", args.errlog, "-s", "reload"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


SETTERS = {"td": set_td, "nginx": set_nginx, "haproxy": set_haproxy}


class ProbeThread(threading.Thread):
    """Runs the probe back to back; wait_for() returns when a given backend answered."""

    def __init__(self, probe):
        super().__init__(daemon=True)
        self.probe = probe
        self.cond = threading.Condition()
        self.last = (0.0, None)  # (monotonic time the response arrived, backend)
        self.count = collections.Counter()
        self.stop = False

    def run(self):
        while not self.stop:
            b = self.probe.get()
            with self.cond:
                self.last = (time.monotonic(), b)
                self.count[b] += 1
                self.cond.notify_all()

    def wait_for(self, target, since, timeout):
        """Seconds from `since` to the first response from target that arrived after it."""
        deadline = since + timeout
        with self.cond:
            while True:
                t, b = self.last
                if b == target and t > since:
                    return t - since
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def responses_from(self, backend):
        with self.cond:
            return self.count[backend]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=sorted(SETTERS), required=True)
    ap.add_argument("--port", type=int, required=True, help="the proxy's port (probe)")
    ap.add_argument("--flips", type=int, default=100)
    ap.add_argument("--settle-ms", type=float, default=20)
    ap.add_argument("--timeout", type=float, default=5.0, help="give up on one flip after this")
    ap.add_argument("--admin", default="127.0.0.1:9090", help="td: admin address")
    ap.add_argument("--conf", help="nginx: the proxy's config file")
    ap.add_argument("--errlog", default="/dev/null", help="nginx: -e for nginx -s reload")
    ap.add_argument("--socket", help="haproxy: the stats socket")
    a = ap.parse_args()
    setter = SETTERS[a.kind]
    probe = Probe(a.port)
    pt = ProbeThread(probe)
    pt.start()

    def flip_to(target):
        setter(a, {target: 100, OTHER[target]: 0})

    t0 = time.monotonic()
    flip_to("blue")
    if pt.wait_for("blue", t0, a.timeout) is None:
        print(json.dumps({"error": "the first change never took effect"}))
        return 1

    effects, set_times, timeouts, stragglers = [], [], 0, 0
    target = "green"
    for _ in range(a.flips):
        time.sleep(a.settle_ms / 1000)
        t0 = time.monotonic()
        flip_to(target)
        set_times.append(time.monotonic() - t0)
        effect = pt.wait_for(target, t0, a.timeout)
        if effect is None:
            timeouts += 1
        else:
            effects.append(effect)
            # Once the new backend has answered, the old one should not any more.
            before = pt.responses_from(OTHER[target])
            time.sleep(a.settle_ms / 1000)
            stragglers += pt.responses_from(OTHER[target]) - before
        target = OTHER[target]
    pt.stop = True
    pt.join(timeout=5)
    setter(a, {"blue": 50, "green": 50})

    ms = lambda xs, f: round(f(xs) * 1000, 3) if xs else None
    p90 = lambda xs: sorted(xs)[int(0.9 * (len(xs) - 1))]
    print(json.dumps({
        "flips": a.flips, "timeouts": timeouts, "stragglers": stragglers,
        "probe_errors": probe.errors,
        "effect_ms_p50": ms(effects, statistics.median), "effect_ms_p90": ms(effects, p90),
        "effect_ms_max": ms(effects, max), "change_cmd_ms_p50": ms(set_times, statistics.median),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
