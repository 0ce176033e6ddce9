"""td's error lines about a request name it (method, path, client address and port), escape what
the client sent, and come at most once a second per reason with a count of the rest."""
import json
import re
import time

from conftest import TD, Proc, RawConn, backend_cfg, free_port, wait_port
from test_failover import dead_ports

SLACK = 10


def wait_log(t, pattern, timeout=SLACK):
    deadline = time.monotonic() + timeout
    while True:
        out = t.proc.output()
        m = re.search(pattern, out)
        if m or time.monotonic() >= deadline:
            return m, out
        time.sleep(0.05)


def test_a_502_line_names_the_method_path_client_backend_and_server(td):
    dead = dead_ports(1)[0]
    t = td(backend_cfg({"green": (100, [dead])}, workers=1))
    with RawConn(t.port) as c:
        cport = c.s.getsockname()[1]
        c.send(b"GET /api/cart?id=7 HTTP/1.1\r\nHost: shop\r\n\r\n")
        assert c.read_response()[0] == 502
    line = (f"warn  502 GET /api/cart?id=7 from 127.0.0.1:{cport}: backend green server "
            f"127.0.0.1:{dead}: connection refused")
    m, out = wait_log(t, re.escape(line))
    assert m, out[-2000:]


def test_control_characters_of_a_request_are_escaped_in_the_log(td):
    """A refused request line with ESC, DEL and a byte above 0x7f in its target: the 400's line
    shows them as \\xHH, and a CR or LF ends the target, so the client can neither send a terminal
    escape to whoever reads the log nor start a line of its own in it."""
    t = td(backend_cfg({"blue": (100, dead_ports(1))}, workers=1))
    with RawConn(t.port) as c:
        cport = c.s.getsockname()[1]
        c.send(b"GET /a\x1b[2J\x7f\xff\\b\r2026-01-01T00:00:00.000Z error forged\n"
               b"HTTP/1.1\r\nHost: h\r\n\r\n")
        assert c.read_response()[0] == 400
    m, out = wait_log(t, r"warn  400 GET .* from 127\.0\.0\.1:%d: " % cport)
    assert m, out[-2000:]
    assert "400 GET /a\\x1b[2J\\x7f\\xff\\\\b from 127.0.0.1:%d: " % cport in out, out[-2000:]
    assert "\x1b" not in out and "\x7f" not in out
    assert "forged" not in out
    for line in out.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT", line), line


def test_a_long_path_is_cut_in_the_error_line(td):
    t = td(backend_cfg({"blue": (100, dead_ports(1))}, workers=1))
    path = "/" + "p" * 3000
    with RawConn(t.port) as c:
        c.send(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert c.read_response()[0] == 502
    m, out = wait_log(t, r"warn  502 GET /p+\.\.\. from ")
    assert m, out[-2000:]
    shown = re.search(r"GET (/p+)\.\.\. from", out).group(1)
    assert 100 <= len(shown) <= 200, len(shown)


def test_200_failing_requests_give_one_line_per_reason_and_a_count_of_the_rest(td):
    """A burst of 200 requests to a backend whose one server refuses connections: one line per
    reason and second (the server's 502, then the 503 once passive checks took it out), and "N
    more like this in the last second" lines whose counts add up to the rest."""
    dead = dead_ports(1)[0]
    t = td(backend_cfg({"blue": (100, [dead])}, workers=1))
    n = 200
    with RawConn(t.port, timeout=10) as c:
        for i in range(n):
            c.send(f"GET /burst/{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
            assert c.read_response()[0] in (502, 503)

    def counted():
        out = t.proc.output()
        lines = re.findall(r"warn  50[23] GET /burst/\d+ from 127\.0\.0\.1:\d+: ", out)
        more = re.findall(r"warn  (\d+) more like this in the last second: (50[23] .*)", out)
        return lines, more, out

    deadline = time.monotonic() + SLACK
    while True:
        lines, more, out = counted()
        if len(lines) + sum(int(k) for k, _ in more) >= n or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert len(lines) + sum(int(k) for k, _ in more) == n, out[-3000:]
    assert 1 <= len(lines) <= 10, out[-3000:]
    assert more, out[-3000:]
    reasons = {r for _, r in more}
    assert any(f"502 backend blue server 127.0.0.1:{dead}: connection refused" == r
               for r in reasons) or any(r.startswith("503 ") for r in reasons), reasons
    assert " 0 more" not in out


def test_failed_tls_handshakes_are_rate_limited_by_error(tmp_path):
    """30 clients speaking plain HTTP to a TLS listener each fail the handshake the same way: one
    line for the first, then a count of the others."""
    from test_admin_hardening import self_signed
    cert, key = self_signed(str(tmp_path))
    port = free_port()
    cfg = backend_cfg({"blue": (100, dead_ports(1))}, workers=1)
    cfg["listeners"] = [{"address": f"127.0.0.1:{port}",
                         "tls": {"certificates": [{"cert": cert, "key": key}]}}]
    path = tmp_path / "td.json"
    path.write_text(json.dumps(cfg))
    proc = Proc([TD, "-c", str(path)], "td")
    try:
        wait_port(port)
        n = 30
        for _ in range(n):
            with RawConn(port) as c:
                c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                c.read_to_eof()
        deadline = time.monotonic() + SLACK
        while True:
            out = proc.output()
            lines = re.findall(r"info  TLS from 127\.0\.0\.1:\d+: ", out)
            more = [int(k) for k in re.findall(
                r"warn  (\d+) more like this in the last second: TLS handshake from a client: ",
                out)]
            if len(lines) + sum(more) >= n or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert len(lines) + sum(more) == n, out[-3000:]
        assert len(lines) <= 5 and more, out[-3000:]
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]
    out = proc.output()
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]
