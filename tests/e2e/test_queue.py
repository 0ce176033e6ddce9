"""max_conns per server and the queue: requests beyond a server's limit wait in td, in order, up
to timeouts.queue_ms, then get td's 503. The servers here record their own peak of concurrent
requests, so the limit is judged by what the server saw, not by td's counters."""
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import TD, RawConn, free_port, needs_console, reload_config, run_console


class CountingServer:
    """A threaded HTTP/1.1 server on 127.0.0.1: GET /slow/MS answers after MS ms; it counts
    requests in progress and keeps their peak, and the order in which requests arrived."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.arrivals = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.active += 1
                    outer.peak = max(outer.peak, outer.active)
                    outer.arrivals.append(self.headers.get("X-Seq"))
                done = False
                try:
                    ms = 0
                    if self.path.startswith("/slow/"):
                        ms = int(self.path[len("/slow/"):])
                    time.sleep(ms / 1000.0)
                    body = b"ok\n"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    # Over before the last byte goes: once td has it, td may send the next
                    # request, which must not find this one still counted.
                    with outer.lock:
                        outer.active -= 1
                    done = True
                    self.wfile.write(body)
                finally:
                    if not done:
                        with outer.lock:
                            outer.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset_peak(self):
        with self.lock:
            self.peak = self.active

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def counting_server():
    started = []

    def start():
        s = CountingServer()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def queue_cfg(port, max_conns, queue_ms, workers=2):
    return {
        "workers": workers,
        "backends": [{"name": "blue", "weight": 100,
                      "servers": [{"address": f"127.0.0.1:{port}", "weight": 1,
                                   "max_conns": max_conns}]}],
        "timeouts": {"connect_ms": 2000, "upstream_response_ms": 30000, "queue_ms": queue_ms},
    }


def blue(t):
    return next(b for b in t.state()["backends"] if b["name"] == "blue")


def wait_state(t, pred, timeout=20.0):
    """Polls the state of backend blue until pred(blue) holds; returns it."""
    deadline = time.monotonic() + timeout
    b = blue(t)
    while time.monotonic() < deadline:
        if pred(b):
            return b
        time.sleep(0.02)
        b = blue(t)
    raise AssertionError(f"state never reached: {b}")


def concurrent_gets(port, n, path, timeout=60.0):
    """n GETs at once, each on its own connection; returns (statuses, bodies, threads)."""
    statuses = [None] * n
    bodies = [None] * n

    def one(i):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            c.request("GET", path)
            r = c.getresponse()
            bodies[i] = r.read()
            statuses[i] = r.status
            c.close()
        except OSError as e:
            statuses[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    return statuses, bodies, threads


def join_all(threads, timeout=90.0):
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), "requests did not finish"


def test_max_conns_2_holds_20_concurrent_requests_to_2_at_the_server_and_answers_all(
        counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 2, 30000, workers=2))
    statuses, _, threads = concurrent_gets(t.port, 20, "/slow/300")
    # While they wait, the state shows the queue (summed over both workers).
    seen = wait_state(t, lambda b: b["queued"] > 0)
    assert seen["queued"] <= 18
    join_all(threads)
    assert statuses == [200] * 20, statuses
    assert srv.peak == 2, f"the server saw {srv.peak} requests at once"
    b = wait_state(t, lambda b: b["queued"] == 0 and b["in_flight"] == 0)
    s = b["servers"][0]
    assert s["max_conns"] == 2 and s["slots"] == 0
    assert s["requests"] == 20 and s["failures"] == 0 and s["health"] == "up"
    assert b["queue_timeouts"] == 0


def test_queued_requests_get_503_after_queue_ms_and_count_as_queue_timeouts(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 2, 300, workers=2))
    statuses, bodies, threads = concurrent_gets(t.port, 20, "/slow/3000")
    join_all(threads)
    assert statuses.count(200) == 2 and statuses.count(503) == 18, statuses
    assert srv.peak == 2
    b = wait_state(t, lambda b: b["queued"] == 0 and b["in_flight"] == 0)
    assert b["queue_timeouts"] == 18
    assert b["local_responses"]["503"] == 18
    s = b["servers"][0]
    # Waiting in td is not the server's fault: no failure, no ejection, only 2 requests there.
    assert s["failures"] == 0 and s["health"] == "up" and s["requests"] == 2
    assert "queue timeout after" in t.proc.output() and "every server of blue at max_conns" \
        in t.proc.output()
    status, text = t.api("GET", "/metrics")
    assert 'td_backend_queue_timeouts_total{backend="blue"} 18' in text
    assert 'td_backend_queue_length{backend="blue"} 0' in text


def test_queue_dispatches_in_arrival_order(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 1, 30000, workers=1))
    conns = []
    try:
        first = RawConn(t.port)
        first.send(b"GET /slow/1000 HTTP/1.1\r\nHost: x\r\nX-Seq: 0\r\n\r\n")
        wait_state(t, lambda b: b["servers"][0]["slots"] == 1)
        for i in range(1, 6):
            c = RawConn(t.port)
            c.send(f"GET /slow/10 HTTP/1.1\r\nHost: x\r\nX-Seq: {i}\r\n\r\n".encode())
            conns.append(c)
            wait_state(t, lambda b, i=i: b["queued"] == i)
        for c in [first] + conns:
            status, _, _ = c.read_response()
            assert status == 200
    finally:
        first.close()
        for c in conns:
            c.close()
    assert srv.arrivals == [str(i) for i in range(6)]
    assert srv.peak == 1


def reset_close(c):
    """Closes a RawConn with a reset (SO_LINGER 0): td sees the client go away at once."""
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.s.close()


def test_client_closing_while_queued_leaves_the_queue_and_leaks_no_slot(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 2, 30000, workers=2))
    statuses, _, threads = concurrent_gets(t.port, 2, "/slow/1500")
    wait_state(t, lambda b: b["servers"][0]["slots"] == 2)
    waiting = []
    for i in range(3):
        c = RawConn(t.port)
        c.send(b"GET /slow/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.append(c)
    wait_state(t, lambda b: b["queued"] == 3)
    for c in waiting:
        reset_close(c)
    wait_state(t, lambda b: b["queued"] == 0)
    join_all(threads)
    assert statuses == [200, 200]
    wait_state(t, lambda b: b["servers"][0]["slots"] == 0 and b["in_flight"] == 0)
    # Both slots are free again: max_conns requests still run at once.
    srv.reset_peak()
    statuses, _, threads = concurrent_gets(t.port, 2, "/slow/500")
    join_all(threads)
    assert statuses == [200, 200]
    assert srv.peak == 2
    b = blue(t)
    assert b["queue_timeouts"] == 0 and b["servers"][0]["requests"] == 4


def test_websocket_tunnel_holds_a_max_conns_slot_until_it_closes(backends, td):
    b = backends(("blue", 1))
    cfg = queue_cfg(b.ports["blue"][0], 1, 30000, workers=1)
    t = td(cfg)
    ws = RawConn(t.port)
    ws.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    status, _, _ = ws.read_response()
    assert status == 101
    wait_state(t, lambda s: s["tunnels"] == 1 and s["servers"][0]["slots"] == 1)
    statuses, _, threads = concurrent_gets(t.port, 1, "/")
    wait_state(t, lambda s: s["queued"] == 1)
    ws.close()
    join_all(threads)
    assert statuses == [200]
    s = wait_state(t, lambda s: s["tunnels"] == 0 and s["servers"][0]["slots"] == 0)
    assert s["queued"] == 0 and s["queue_timeouts"] == 0


def test_max_conns_and_queue_ms_out_of_range_are_config_errors_with_their_place(tmp_path):
    port = free_port()
    bad = {"listeners": [{"address": f"127.0.0.1:{port}"}],
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "127.0.0.1:1", "max_conns": -1}]}],
           "timeouts": {"queue_ms": 0}}
    p = tmp_path / "td.json"
    p.write_text(json.dumps(bad, indent=2))
    r = subprocess.run([TD, "-t", "-c", str(p)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1
    out = r.stderr + r.stdout
    assert re.search(r"td\.json:\d+:\d+: backends\[0\]\.servers\[0\]\.max_conns: -1 is out of "
                     r"range \(0\.\.1000000\)", out), out
    assert re.search(r"td\.json:\d+:\d+: timeouts\.queue_ms: 0 is out of range "
                     r"\(1\.\.86400000\)", out), out


def test_reload_raising_max_conns_dispatches_the_queued_requests_at_once(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 1, 30000, workers=1))
    statuses, _, threads = concurrent_gets(t.port, 4, "/slow/3000")
    wait_state(t, lambda b: b["queued"] == 3)

    def raise_limit(cfg):
        cfg["backends"][0]["servers"][0]["max_conns"] = 4
    b = reload_config(t, raise_limit)
    assert b["backends"][0]["servers"][0]["max_conns"] == 4
    # The queued requests hold the old snapshot, but the running limit is the new one: all four
    # are at the server together, long before the first one's 3 s are over.
    wait_state(t, lambda b: b["queued"] == 0 and b["servers"][0]["slots"] == 4)
    join_all(threads)
    assert statuses == [200] * 4
    assert srv.peak == 4


def test_stop_answers_queued_requests_while_it_drains(counting_server, td):
    srv = counting_server()
    cfg = queue_cfg(srv.port, 1, 30000, workers=2)
    cfg["timeouts"]["drain_ms"] = 20000
    t = td(cfg)
    statuses, _, threads = concurrent_gets(t.port, 3, "/slow/500")
    wait_state(t, lambda b: b["queued"] == 2)
    t.proc.p.send_signal(signal.SIGTERM)
    join_all(threads)
    assert statuses == [200] * 3
    assert srv.peak == 1
    assert t.proc.p.wait(timeout=30) == 0


@needs_console
def test_console_card_shows_queued_requests_and_the_server_limit(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 2, 60000, workers=1))
    conns = []
    try:
        for _ in range(5):
            c = RawConn(t.port)
            c.send(b"GET /slow/20000 HTTP/1.1\r\nHost: x\r\n\r\n")
            conns.append(c)
        wait_state(t, lambda b: b["queued"] == 3 and b["servers"][0]["in_flight"] == 2)
        seen = run_console("queue.test.mjs", url=t.admin + "/", backend="blue")
        assert seen == {"queued": "queued 3", "in_flight": "2 / 2"}, seen
    finally:
        for c in conns:
            reset_close(c)
    wait_state(t, lambda b: b["queued"] == 0 and b["servers"][0]["slots"] == 0)


def test_sticky_pinned_request_queues_on_its_backend_while_another_has_room(counting_server, td):
    slow, other = counting_server(), counting_server()
    cfg = {
        "workers": 1,
        "routing": {"method": "sticky", "cookie": {"name": "TDSTICKY", "max_age_s": 3600}},
        "backends": [
            {"name": "blue", "weight": 50,
             "servers": [{"address": f"127.0.0.1:{slow.port}", "max_conns": 1}]},
            {"name": "green", "weight": 50, "servers": [{"address": f"127.0.0.1:{other.port}"}]},
        ],
        "timeouts": {"upstream_response_ms": 30000, "queue_ms": 30000},
    }
    t = td(cfg)
    cookie = None
    for _ in range(10):
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        c.request("GET", "/slow/0")
        r = c.getresponse()
        r.read()
        c.close()
        for v in r.headers.get_all("Set-Cookie") or []:
            if v.startswith("TDSTICKY=blue."):
                cookie = v.split(";", 1)[0]
        if cookie:
            break
    assert cookie, "no sticky cookie for blue"
    pinned = f"GET /slow/1500 HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode()
    first, second = RawConn(t.port), RawConn(t.port)
    try:
        first.send(pinned)
        wait_state(t, lambda b: b["servers"][0]["slots"] == 1)
        seen_green = len(other.arrivals)
        second.send(pinned)
        wait_state(t, lambda b: b["queued"] == 1)
        for c in (first, second):
            status, _, _ = c.read_response()
            assert status == 200
    finally:
        first.close()
        second.close()
    # Both went to blue, one after the other; green, with room, got neither.
    assert len(other.arrivals) == seen_green
    assert slow.peak == 1


def test_max_conns_and_queue_ms_are_written_back_only_when_set(counting_server, td):
    srv = counting_server()
    t = td(queue_cfg(srv.port, 0, 10000))
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200
    assert "max_conns" not in cfg["backends"][0]["servers"][0]
    assert "queue_ms" not in cfg["timeouts"]
    t2 = td(queue_cfg(srv.port, 3, 500))
    status, cfg = t2.api("GET", "/api/v1/config")
    assert status == 200
    assert cfg["backends"][0]["servers"][0]["max_conns"] == 3
    assert cfg["timeouts"]["queue_ms"] == 500
    assert blue(t2)["servers"][0]["max_conns"] == 3 and blue(t)["servers"][0]["max_conns"] == 0
