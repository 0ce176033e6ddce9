#!/usr/bin/python3
"""Memory per idle keep-alive client connection of a proxy.

Reads the proxy's RSS at rest, opens N keep-alive connections to it (at most --parallel
connecting at once), sends one GET on each and reads the whole response, then leaves them all
idle, waits --settle seconds, reads the RSS again and prints one JSON line:
  {"conns": N_ok, "failed": k, "rss_rest_kb": a, "rss_idle_kb": b, "bytes_per_conn": (b-a)*1024/N_ok}
Stdlib only. Usage: idle.py --port 8080 --pid PID [--conns 10000]
"""
import argparse
import json
import resource
import selectors
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: td-bench-idle\r\n\r\n"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def response_complete(buf):
    """True when buf holds a whole response head and its Content-Length body."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = 0
    for line in buf[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return len(buf) >= end + 4 + length


def open_idle(port, n, parallel, timeout):
    """Returns (open sockets that got a full response, number of failures)."""
    sel = selectors.DefaultSelector()
    done, failed, started = [], 0, 0
    bufs = {}
    deadline = time.monotonic() + timeout

    def start_one():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        bufs[s] = b""
        sel.register(s, selectors.EVENT_WRITE)

    def fail(s):
        nonlocal failed
        failed += 1
        sel.unregister(s)
        del bufs[s]
        s.close()

    while len(done) + failed < n:
        while started < n and len(bufs) < parallel:
            start_one()
            started += 1
        if time.monotonic() > deadline:
            for s in list(bufs):
                fail(s)
            break
        for key, ev in sel.select(timeout=1.0):
            s = key.fileobj
            if ev & selectors.EVENT_WRITE:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    fail(s)
                    continue
                try:
                    s.send(REQUEST)  # tiny: one send is enough on a fresh socket
                except OSError:
                    fail(s)
                    continue
                sel.modify(s, selectors.EVENT_READ)
            else:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    fail(s)
                    continue
                bufs[s] += data
                if response_complete(bufs[s]):
                    sel.unregister(s)
                    del bufs[s]
                    done.append(s)
    sel.close()
    return done, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the proxy process whose RSS counts")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=256)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    rest = rss_kb(a.pid)
    socks, failed = open_idle(a.port, a.conns, a.parallel, a.timeout)
    time.sleep(a.settle)
    idle = rss_kb(a.pid)
    ok = len(socks)
    print(json.dumps({
        "conns": ok, "failed": failed, "rss_rest_kb": rest, "rss_idle_kb": idle,
        "bytes_per_conn": round((idle - rest) * 1024 / ok) if ok else None,
    }))
    for s in socks:
        s.close()
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
