"""End-to-end tests of HTTP/2 connection management and limits: floods answered GOAWAY
ENHANCE_YOUR_CALM, requests whose :authority and host disagree or whose :scheme is not http(s)
refused, max_connection_age_ms (GOAWAY for h2, Connection: close for HTTP/1.1), h2 connections
let go when the backend their streams went to is drained, memory that stays bounded over rounds of
h2 load, and the protocol in the access log. Raw frames from Python sockets, curl, h2load."""
import http.client
import json
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from conftest import ASAN, RSS_SCALE, TD, backend_cfg, rss_kb, wait_for
from test_h2 import (PREFACE, TIMEOUT, H2Load, cert, curl, curl_h2, frame, h2td,  # noqa: F401
                     literal, read_frames, request_block, requests_of)

pytestmark = pytest.mark.skipif(not shutil.which("nghttp") or not shutil.which("curl"),
                                reason="needs nghttp (nghttp2-client) and curl")

GOAWAY, RST_STREAM = 7, 3
ENHANCE_YOUR_CALM, PROTOCOL_ERROR = 11, 1


def goaway_code(f):
    return int.from_bytes(f[3][4:8], "big")


def one(backends, h2td, **kw):
    b = backends(("blue", 1))
    return b, h2td(backend_cfg({"blue": (100, b.ports["blue"])}), **kw)


def h2_conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(PREFACE + frame(4, 0, 0))
    return s


def answered(s, sid, path="/"):
    """Sends GET path on stream sid of s; returns the first HEADERS frame of its answer."""
    s.sendall(frame(1, 5, sid, request_block(path)))
    while True:
        f = read_frames(s, 1)
        if f is None or f[2] == sid:
            return f


# ---- floods ---------------------------------------------------------------------------------

def test_h2_rapid_reset_flood_gets_goaway_enhance_your_calm_and_another_client_is_served(
        backends, h2td):
    _, t = one(backends, h2td)
    other = h2_conn(t.h2c_port)
    try:
        assert answered(other, 1) is not None
        with h2_conn(t.h2c_port) as s:
            burst = b"".join(frame(1, 5, sid, request_block("/delay/1000")) +
                             frame(3, 0, sid, struct.pack(">I", 8))  # RST_STREAM CANCEL
                             for sid in range(1, 2 * 3000, 2))
            try:
                s.sendall(burst)
            except (BrokenPipeError, ConnectionResetError):
                pass
            f = read_frames(s, GOAWAY)
            assert f is not None, "no GOAWAY after 3000 streams reset in a burst"
            assert goaway_code(f) == ENHANCE_YOUR_CALM, f
        # The other connection goes on being served.
        assert answered(other, 3) is not None
    finally:
        other.close()
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/")
    assert (version, status) == ("2", 200)
    assert "h2: GOAWAY after a rapid reset flood" in t.proc.output()


def test_h2_settings_flood_gets_goaway_enhance_your_calm(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        entries = b"".join(struct.pack(">HI", 4, 65535) for _ in range(100))
        s.sendall(frame(4, 0, 0, entries))
        f = read_frames(s, GOAWAY)
        assert f is not None and goaway_code(f) == ENHANCE_YOUR_CALM, f


def test_h2_continuation_flood_gets_goaway_enhance_your_calm(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        s.sendall(frame(1, 0, 1, request_block("/")))
        try:
            s.sendall(b"".join(frame(9, 0, 1, literal(b"x-a", b"b" * 10)) for _ in range(50)))
        except (BrokenPipeError, ConnectionResetError):
            pass
        f = read_frames(s, GOAWAY)
        assert f is not None and goaway_code(f) == ENHANCE_YOUR_CALM, f


# ---- request validation -------------------------------------------------------------------------

def rst_code(s, sid):
    f = read_frames(s, RST_STREAM)
    assert f is not None and f[2] == sid, f
    return int.from_bytes(f[3], "big")


def test_h2_authority_and_host_that_differ_reset_the_stream_with_protocol_error(backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        # request_block's :authority is "a".
        s.sendall(frame(1, 5, 1, request_block("/", literal(b"host", b"b"))))
        assert rst_code(s, 1) == PROTOCOL_ERROR
        # The same name in another case is the same authority; the connection goes on.
        s.sendall(frame(1, 5, 3, request_block("/headers", literal(b"host", b"A"))))
        f = read_frames(s, 1)
        assert f is not None and f[2] == 3, f
    assert requests_of(t)["blue"] == 1


def test_h2_scheme_other_than_http_or_https_resets_the_stream_with_protocol_error(
        backends, h2td):
    _, t = one(backends, h2td)
    with h2_conn(t.h2c_port) as s:
        block = b"\x82" + literal(b":scheme", b"ftp") + literal(b":path", b"/") + \
            literal(b":authority", b"a")
        s.sendall(frame(1, 5, 1, block))
        assert rst_code(s, 1) == PROTOCOL_ERROR
        # https on the plain listener is still an HTTP request (a TLS-terminating hop before td).
        block = b"\x82\x87" + literal(b":path", b"/") + literal(b":authority", b"a")
        s.sendall(frame(1, 5, 3, block))
        f = read_frames(s, 1)
        assert f is not None and f[2] == 3, f
    assert requests_of(t)["blue"] == 1


# ---- access log ---------------------------------------------------------------------------------

def test_access_log_names_the_protocol_of_each_request(backends, h2td, tmp_path):
    b = backends(("blue", 1))
    log = tmp_path / "access.log"
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=str(log)))
    version, status, _ = curl_h2(f"http://127.0.0.1:{t.h2c_port}/bytes/1?p2")
    assert (version, status) == ("2", 200)
    curl("--http2", "-o", "/dev/null", f"https://127.0.0.1:{t.port}/bytes/1?p2tls")
    curl("--http1.1", "-o", "/dev/null", f"http://127.0.0.1:{t.h2c_port}/bytes/1?p11")
    curl("--http1.0", "-o", "/dev/null", f"http://127.0.0.1:{t.h2c_port}/bytes/1?p10")

    def lines():
        try:
            got = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        except (OSError, ValueError):
            return None
        return got if len(got) == 4 else None
    got = {e["path"]: e for e in wait_for(lines, 10, what="4 access log lines")}
    assert {p: e["protocol"] for p, e in got.items()} == {
        "/bytes/1?p2": "HTTP/2", "/bytes/1?p2tls": "HTTP/2", "/bytes/1?p11": "HTTP/1.1", "/bytes/1?p10": "HTTP/1.0"}, got
    # The field sits after the path, as in nginx's "$request" line.
    text = log.read_text()
    assert '"path":"/bytes/1?p11","protocol":"HTTP/1.1","status":200' in text, text


# ---- max_connection_age_ms ------------------------------------------------------------------------

def sequential_h2(port, deadline_s):
    """One h2 connection kept busy with one GET / after another (PINGs answered, the window given
    back) until td ends it or deadline_s passes. Returns (answers: {stream: status byte},
    goaways: [(last stream id, code)], the streams sent, closed: td closed the connection)."""
    s = h2_conn(port)
    sid, sent, answers, goaways, buf, closed = 1, [], {}, [], b"", False
    end = time.time() + deadline_s
    waiting = None
    try:
        while time.time() < end:
            final = goaways and goaways[-1][0] != 2 ** 31 - 1
            if waiting is None and not final:
                s.sendall(frame(1, 5, sid, request_block("/")))
                sent.append(sid)
                waiting, sid = sid, sid + 2
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                closed = True
                break
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n = int.from_bytes(buf[:3], "big")
                ft, fl, st, pl = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, \
                    buf[9:9 + n]
                buf = buf[9 + n:]
                if ft == 6 and not fl & 1:
                    s.sendall(frame(6, 1, 0, pl))
                elif ft == 0 and n:
                    s.sendall(frame(8, 0, 0, struct.pack(">I", n)))
                elif ft == GOAWAY:
                    goaways.append((int.from_bytes(pl[:4], "big") & 0x7fffffff,
                                    int.from_bytes(pl[4:8], "big")))
                if ft == 1 and st not in answers:
                    answers[st] = pl[:1]
                if ft in (0, 1) and fl & 1 and st == waiting:
                    waiting = None
    finally:
        s.close()
    return answers, goaways, sent, closed


def test_h2_connection_past_max_connection_age_gets_goaway_and_no_request_fails(backends, h2td):
    _, t = one(backends, h2td, extra={"max_connection_age_ms": 500})
    answers, goaways, sent, closed = sequential_h2(t.h2c_port, TIMEOUT)
    assert goaways, f"no GOAWAY after {len(sent)} requests"
    # The two steps of a stop: the notice (last stream id 2^31-1), then the last stream taken.
    assert goaways[0] == (2 ** 31 - 1, 0), goaways
    last, code = goaways[-1]
    assert code == 0 and last != 2 ** 31 - 1, goaways
    assert closed, "the connection did not close after the final GOAWAY"
    # Every request td took was answered 200 (HPACK static index 8). A request the client sent
    # after it answered the PING, before the final GOAWAY reached it, is above its last stream id:
    # not processed (RFC 9113 §6.8), so a client sends it again, and td answered nothing on it.
    taken = [k for k in sent if k <= last]
    assert taken and all(answers.get(k) == b"\x88" for k in taken), (sent, answers)
    assert all(k not in answers for k in sent if k > last), (sent, last, answers)
    assert len(sent) > 1


def test_http11_keepalive_connection_past_max_connection_age_gets_connection_close(backends,
                                                                                   h2td):
    # HTTP/1.1 on the plain listener (which also takes h2c).
    _, t = one(backends, h2td, extra={"max_connection_age_ms": 500})
    port = t.h2c_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    statuses, closes = [], []
    try:
        end = time.time() + TIMEOUT
        while time.time() < end:
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            statuses.append(r.status)
            closes.append((r.headers.get("Connection") or "").lower())
            if closes[-1] == "close":
                break
            time.sleep(0.05)
    finally:
        conn.close()
    assert closes and closes[-1] == "close", f"no Connection: close in {len(closes)} responses"
    assert len(closes) > 1 and "close" not in closes[:-1], closes
    assert set(statuses) == {200}, statuses


def test_max_connection_age_ms_out_of_range_is_a_config_error_with_its_place(tmp_path):
    cfg = {"listeners": [{"address": "127.0.0.1:1", "max_connection_age_ms": -5}],
           "backends": [{"name": "blue", "weight": 100,
                         "servers": [{"address": "127.0.0.1:3"}]}]}
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg, indent=2))
    r = subprocess.run([TD, "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert re.search(r"td\.json:5:\d+: listeners\[0\]\.max_connection_age_ms: -5 is out of range "
                     r"\(0\.\.604800000\)", out), out


# ---- drain -------------------------------------------------------------------------------------

def test_h2_connection_kept_open_does_not_hold_a_drained_backend(backends, h2td):
    b = backends(("blue", 1), ("green", 1))
    t = h2td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])}))
    with h2_conn(t.h2c_port) as s:
        for sid in (1, 3, 5):
            assert answered(s, sid) is not None
        assert requests_of(t)["blue"] == 3
        # blue drains (green takes the traffic) while the connection stays open and idle.
        t.set_ratio(blue=0, green=100)
        blue = wait_for(lambda: (lambda x: x if x["drained"] else None)(
            [x for x in t.state()["backends"] if x["name"] == "blue"][0]), TIMEOUT,
            interval=0.1, what="blue drained with an h2 connection open")
        assert blue["draining"] is True, blue
        # The connection goes on: its next stream goes to green.
        assert answered(s, 7) is not None
    assert requests_of(t) == {"blue": 3, "green": 1}


# ---- memory under repeated load ---------------------------------------------------------------

@pytest.mark.skipif(ASAN, reason="ASan's quarantine holds freed memory: RSS is not td's own")
@pytest.mark.skipif(not shutil.which("h2load"), reason="needs h2load (nghttp2-client)")
def test_h2_rounds_of_1000_streams_in_flight_keep_rss_bounded(backends, h2td):
    """Four rounds of h2load (20 connections x 50 streams in flight, 20000 requests each). A
    stream without a request body used to hold a 16 KB client buffer while it waited for its
    backend: the heap grew by that much per stream in flight, and round after round the freed
    memory was reused in new places, so td's RSS crept up (over 40 MB above its start here). Its
    buffer is now the size of its head, and its request bytes are let go once read."""
    _, t = one(backends, h2td)
    before = rss_kb(t.proc.pid)
    after = []
    for _ in range(4):
        r = subprocess.run(["h2load", "-c20", "-m50", "-n20000",
                            f"http://127.0.0.1:{t.h2c_port}/"],
                           capture_output=True, text=True, timeout=120)
        assert "20000 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout + r.stderr
        after.append(rss_kb(t.proc.pid))
    grown_mb = (after[-1] - before) / 1024
    assert grown_mb <= 36, (before, after)
