"""Regression tests for bugs found by trying td as a new user would: each holds the right
behaviour so the bug cannot come back. Real td, real demo backends, 127.0.0.1 only."""
import http.client
import json
import os
import subprocess
import tempfile

from conftest import TD, backend_cfg, backend_state

TIMEOUT = 10


def get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status, r.headers.get("X-TD-Demo-Backend")
    finally:
        conn.close()


def raw(t, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode()
    finally:
        conn.close()


def test_passive_ejection_alone_never_makes_503_after_a_ratio_change(backends, td):
    """blue is ejected by passive detection (a 500) while green serves (green, the last server
    up, is never ejected); then the ratio moves everything to blue: requests must reach blue,
    not get 503."""
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    cfg = backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])},
                      passive={"failures": 1, "eject_ms": 60000, "max_eject_ms": 60000})
    t = td(cfg)
    for _ in range(4):
        get(t.port, "/status/500")
    s = t.state()
    assert backend_state(s, "blue")["servers"][0]["health"] == "ejected", s
    assert backend_state(s, "green")["servers"][0]["health"] == "up", s
    t.set_ratio(blue=100, green=0)
    answers = [get(t.port) for _ in range(10)]
    assert answers == [(200, "blue")] * 10, answers


def test_backend_counters_follow_the_backend_that_answered(backends, td):
    """green's server is dead: requests first routed to green are retried on blue, and count as
    blue's, not green's."""
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    cfg = backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])})
    t = td(cfg)
    green.stop()
    answers = [get(t.port) for _ in range(10)]
    assert answers == [(200, "blue")] * 10, answers
    s = t.state()
    g, b = backend_state(s, "green"), backend_state(s, "blue")
    assert g["requests"] == 0 and g["responses"]["2xx"] == 0, g
    assert b["requests"] == 10 and b["responses"]["2xx"] == 10, b


def test_ratio_with_a_duplicate_key_is_refused(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    before = t.state()
    status, _, text = raw(t, "PUT", "/api/v1/ratio", body='{"blue": 0, "blue": 10}')
    assert status == 400 and "duplicate" in json.loads(text)["error"], text
    after = t.state()
    assert after["version"] == before["version"]
    assert [x["weight"] for x in after["backends"]] == [50, 50]


def test_405_names_the_allowed_methods(backends, td):
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}))
    status, headers, _ = raw(t, "POST", "/api/v1/ratio", body="{}")
    assert status == 405 and headers.get("Allow") == "PUT"
    status, headers, _ = raw(t, "DELETE", "/api/v1/state")
    assert status == 405 and headers.get("Allow") == "GET, HEAD"


def check(cfg):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
        p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
        return p.returncode, (p.stdout + p.stderr).replace(path, "FILE")


def minimal(**extra):
    cfg = {"listeners": [{"address": "127.0.0.1:18080"}],
           "backends": [{"name": "blue", "weight": 1,
                         "servers": [{"address": "127.0.0.1:19001"}]}]}
    cfg.update(extra)
    return cfg


def test_check_refuses_an_access_log_that_cannot_be_written():
    rc, out = check(minimal(access_log="/nonexistent/dir/access.log"))
    assert rc == 1, out
    assert "access_log" in out and "cannot be written" in out, out
    rc, out = check(minimal(access_log="/tmp/td-access-check.log"))
    assert rc == 0, out


def test_check_refuses_a_preview_header_td_needs():
    rc, out = check(minimal(routing={"preview": {"header": "Host", "token": "t"}}))
    assert rc == 1 and "routing.preview.header" in out, out
    rc, out = check(minimal(routing={"preview": {"header": "X TD", "token": "t"}}))
    assert rc == 1 and "not a valid header name" in out, out


# ---- request smuggling and framing, found by a trial with hand-made requests ----

def one_backend(backends, td, **extra):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])}, **extra)
    return td(cfg)


def test_connection_cannot_strip_content_length(backends, td):
    """"Connection: Content-Length" must not remove the length while the body is forwarded: the
    backend would read the body as a request of its own and answer another client with it."""
    from conftest import RawConn
    t = one_backend(backends, td)
    smuggled = b"GET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n"
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\n"
               b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
        status, _, body = c.read_response()
        assert status == 200 and json.loads(body)["received"] == len(smuggled), body
    # Victims on fresh connections get their own answers, never the smuggled 418.
    for _ in range(10):
        assert get(t.port, "/status/204")[0] == 204


def test_transfer_codings_other_than_chunked_are_refused_with_501(backends, td):
    from conftest import RawConn
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
               b"0\r\n\r\n")
        status, _, _ = c.read_response()
        assert status == 501
    assert get(t.port)[0] == 200


def test_connect_is_refused(backends, td):
    from conftest import RawConn
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n")
        status, h, _ = c.read_response()
        assert status == 405 and "GET" in h.get("Allow"), (status, h)


def test_h2c_upgrade_is_not_passed_on(backends, td):
    from conftest import RawConn
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        status, _, body = c.read_response()
        assert status == 200
        seen = body.decode().lower()
        assert "upgrade" not in seen and "http2-settings" not in seen, seen


def test_pipelined_requests_before_a_half_close_are_all_answered(backends, td):
    from conftest import RawConn
    import socket
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"".join(b"GET /status/%d HTTP/1.1\r\nHost: a\r\n\r\n" % s
                        for s in (201, 202, 203)))
        c.s.shutdown(socket.SHUT_WR)
        statuses = [c.read_response()[0] for _ in range(3)]
        assert statuses == [201, 202, 203]
        assert c.closed_by_peer()


def test_a_client_stalling_its_body_gets_408_and_the_backend_no_5xx(backends, td):
    from conftest import RawConn
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"].update({"client_header_ms": 800, "upstream_response_ms": 500})
    t = td(cfg)
    with RawConn(t.port) as c:
        c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
        status, _, _ = c.read_response()
        assert status == 408
    assert backend_state(t.state(), "blue")["responses"]["5xx"] == 0


def test_a_second_td_cannot_take_a_listening_address(backends, td):
    """SO_REUSEPORT would let another process share td's port silently: td refuses instead."""
    from conftest import Proc
    import time
    t = one_backend(backends, td)
    cfg = minimal()
    cfg["listeners"] = [{"address": f"127.0.0.1:{t.port}"}]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = subprocess.run([TD, "-c", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "address already in use" in p.stderr, p.stderr
    assert get(t.port)[0] == 200


def test_an_api_change_does_not_overwrite_edits_made_on_disk(backends, td):
    import time
    t = one_backend(backends, td)
    with open(t.config_path) as f:
        cfg = json.load(f)
    cfg["timeouts"]["drain_ms"] = 4321
    time.sleep(0.01)
    with open(t.config_path, "w") as f:
        json.dump(cfg, f)
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 40})
    assert status == 409 and "changed on disk" in body["error"], body
    with open(t.config_path) as f:
        assert json.load(f)["timeouts"]["drain_ms"] == 4321  # the edit survives
    t.proc.p.send_signal(__import__("signal").SIGHUP)
    for _ in range(100):
        if t.state()["version"] > 1:
            break
        time.sleep(0.05)
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 40})
    assert status == 200, body


def test_a_client_that_leaves_before_its_answer_is_logged_as_499(backends, td, tmp_path):
    import socket
    import time
    log = tmp_path / "access.log"
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=str(log)))
    s = socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT)
    s.sendall(b"GET /delay/800 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.2)
    # An abort (RST), not a half-close: a half-closed client still gets its answer.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert get(t.port, "/status/204")[0] == 204
    deadline = time.time() + 5
    lines = []
    while time.time() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    statuses = sorted((x["path"], x["status"]) for x in lines)
    assert statuses == [("/delay/800", 499), ("/status/204", 204)], lines


def test_a_400_is_logged_with_the_rule_it_broke(backends, td):
    from conftest import RawConn
    import time
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        assert c.read_response()[0] == 400
    for _ in range(50):
        if "Content-Length together with Transfer-Encoding" in t.proc.output():
            break
        time.sleep(0.05)
    assert "400 127.0.0.1 POST: Content-Length together with Transfer-Encoding" \
        in t.proc.output(), t.proc.output()[-2000:]


def test_absolute_form_target_sets_host_and_goes_upstream_in_origin_form(backends, td):
    """RFC 9112 §3.2.2: the target's authority replaces a disagreeing Host, so the backend can
    never see two different hosts for one request."""
    from conftest import RawConn
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"GET http://example.com/headers?x=1 HTTP/1.1\r\nHost: attacker.test\r\n\r\n")
        status, _, body = c.read_response()
    assert status == 200
    seen = body.decode()
    assert seen.startswith("GET /headers?x=1 HTTP/1.1\r\n"), seen
    hosts = [line for line in seen.split("\r\n") if line.lower().startswith("host:")]
    assert hosts == ["Host: example.com"], seen
    assert "attacker.test" not in seen, seen
