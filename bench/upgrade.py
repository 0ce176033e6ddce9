#!/usr/bin/python3
"""td upgrade under load: how many requests fail while td replaces itself, and how long it takes.

Starts the demo backends blue and green (`td backend`) and td (HTTP listener, admin, a pid file)
on free ports of 127.0.0.1, then two wrk runs at once for the whole test: --conns keep-alive
connections, and 10 connections that send `Connection: close` (a new connection per request).
Meanwhile --upgrades times `td upgrade -c FILE`, each once the previous new process is ready,
--every seconds apart. Prints one JSON line: {"upgrades", "requests", "failed" (non-2xx and
socket errors of both wrk runs), "takeover_ms_p50", "takeover_ms_max" (from `td upgrade` to its
exit with the new process accepting), "old_exit_ms_max" (from the takeover until the old process
is gone: its drain), "processes_at_end"}. Stdlib only (and wrk).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from cluster import free_port, wait_port  # bench/cluster.py, beside this file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def runs_config(pid, cfg_path):
    """1 when process `pid` is a td running on the config file cfg_path."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            argv = f.read().split("\0")
    except OSError:
        return False
    return "-c" in argv and cfg_path in argv and "upgrade" not in argv


def wrk_summary(out):
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("wrk printed no summary: " + out[-500:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--td", default=os.environ.get("TD_BIN", os.path.join(ROOT, "build", "td")))
    ap.add_argument("--upgrades", type=int, default=10)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between upgrades")
    ap.add_argument("--conns", type=int, default=50)
    args = ap.parse_args()

    run = tempfile.mkdtemp(prefix="td-bench-upgrade-")
    td_bin = os.path.join(run, "td")  # a copy: td upgrade starts the file at td's path
    shutil.copy2(args.td, td_bin)
    blue, green, port, admin = free_port(), free_port(), free_port(), free_port()
    pid_file = os.path.join(run, "td.pid")
    cfg = {
        "listeners": [{"address": f"127.0.0.1:{port}"}],
        "workers": 1,
        "admin": {"address": f"127.0.0.1:{admin}"},
        "pid_file": pid_file,
        "state_file": os.path.join(run, "state.json"),
        "backends": [
            {"name": "blue", "weight": 50, "servers": [{"address": f"127.0.0.1:{blue}"}]},
            {"name": "green", "weight": 50, "servers": [{"address": f"127.0.0.1:{green}"}]},
        ],
        "timeouts": {"drain_ms": 3000},
    }
    cfg_path = os.path.join(run, "td.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    log = open(os.path.join(run, "td.log"), "w")
    procs = []
    try:
        procs.append(subprocess.Popen([td_bin, "backend", f"blue=127.0.0.1:{blue}",
                                       f"green=127.0.0.1:{green}"], stderr=log))
        wait_port(blue)
        wait_port(green)
        first = subprocess.Popen([td_bin, "-c", cfg_path], stderr=log)
        wait_port(port)
        wait_port(admin)
        deadline = time.monotonic() + 10
        while read_pid(pid_file) != first.pid and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds = int(args.upgrades * args.every + 4)
        lua = os.path.join(ROOT, "bench", "wrk_json.lua")
        url = f"http://127.0.0.1:{port}/"
        wrks = [subprocess.Popen(["wrk", "-s", lua, "-t1", f"-c{args.conns}", f"-d{seconds}s",
                                  url], stdout=subprocess.PIPE, text=True),
                subprocess.Popen(["wrk", "-s", lua, "-t1", "-c10", f"-d{seconds}s", "-H",
                                  "Connection: close", url], stdout=subprocess.PIPE, text=True)]
        time.sleep(1)
        takeover, old_exit = [], []
        for _ in range(args.upgrades):
            old = read_pid(pid_file)
            t0 = time.monotonic()
            r = subprocess.run([td_bin, "upgrade", "-c", cfg_path], capture_output=True,
                               text=True, timeout=60)
            t1 = time.monotonic()
            if r.returncode != 0:
                raise RuntimeError("td upgrade failed: " + r.stderr)
            takeover.append((t1 - t0) * 1000)
            while alive(old) and time.monotonic() - t1 < 30:
                time.sleep(0.01)
            old_exit.append((time.monotonic() - t1) * 1000)
            if old == first.pid:
                first.wait(timeout=10)
            time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
        results = [wrk_summary(w.communicate(timeout=seconds + 30)[0]) for w in wrks]
        requests = sum(r["requests"] for r in results)
        failed = sum(r[k] for r in results for k in ("status", "connect", "read", "write",
                                                      "timeout"))
        last = read_pid(pid_file)
        at_end = sum(1 for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
                     and runs_config(int(p), cfg_path))
        print(json.dumps({"upgrades": args.upgrades, "requests": requests, "failed": failed,
                          "takeover_ms_p50": round(statistics.median(takeover), 1),
                          "takeover_ms_max": round(max(takeover), 1),
                          "old_exit_ms_max": round(max(old_exit), 1),
                          "processes_at_end": at_end}))
        if last and alive(last):
            os.kill(last, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while alive(last) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        log.close()
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
