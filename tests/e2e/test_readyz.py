"""td's own readiness: GET /readyz on the admin port (no token) answers 200 while td serves, and
with timeouts.stop_grace_ms a SIGTERM first turns it to 503 while td still accepts and serves,
then td drains and exits 0 by itself."""
import http.client
import json
import signal
import subprocess

from conftest import backend_cfg, get, wait_for


def readyz(admin_port, method="GET", headers=None):
    """(status, parsed body or None) of /readyz, or (None, None) when nothing answers."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        c.request(method, "/readyz", headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, json.loads(body) if body else None
    except (OSError, http.client.HTTPException):
        return None, None


def one_colour(backends, **timeouts):
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"].update(timeouts)
    return cfg


def metric(t, name):
    status, text = t.api("GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    return None


def test_readyz_answers_200_without_token_while_serving(backends, td):
    t = td(one_colour(backends), token="s3cret")
    # A plain probe with no token (as curl, keepalived or a load balancer sends it).
    status, body = readyz(t.admin_port)
    assert (status, body) == (200, {"ready": True})
    status, _ = readyz(t.admin_port, "HEAD")
    assert status == 200
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{t.admin_port}/readyz"],
                         capture_output=True, text=True, timeout=10)
    assert out.stdout == "200"
    # The rest of the API still wants the token.
    assert t.api("GET", "/api/v1/state", token="")[0] == 401
    status, body = t.api("POST", "/readyz", body={}, token="")
    assert status == 405 and "error" in body
    assert metric(t, "td_ready") == "1"


def test_stop_grace_readyz_503_after_sigterm_while_requests_still_answered(backends, td):
    t = td(one_colour(backends, stop_grace_ms=3000))
    assert readyz(t.admin_port)[0] == 200
    assert get(t.port)[0] == 200
    t.proc.p.send_signal(signal.SIGTERM)
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(readyz(t.admin_port)),
                            10, what="/readyz 503 after SIGTERM")
    assert body["ready"] is False
    assert body["reason"].startswith("stopping: grace period"), body
    # Still serving: new connections and requests on the listener are answered.
    for _ in range(10):
        assert get(t.port) == (200, "blue")
    assert metric(t, "td_ready") == "0"
    # Then it drains and exits 0 by itself.
    assert t.proc.p.wait(timeout=30) == 0
    out = t.proc.output()
    assert "/readyz answers 503; still serving for stop_grace_ms (3000 ms)" in out, out[-2000:]
    assert "grace period over: stopping" in out, out[-2000:]


def test_second_sigterm_during_stop_grace_drains_at_once(backends, td):
    t = td(one_colour(backends, stop_grace_ms=600000))
    t.proc.p.send_signal(signal.SIGTERM)
    wait_for(lambda: readyz(t.admin_port)[0] == 503, 10, what="/readyz 503 after SIGTERM")
    assert get(t.port)[0] == 200
    t.proc.p.send_signal(signal.SIGTERM)
    # Far sooner than the ten-minute grace: the second signal went straight to draining.
    assert t.proc.p.wait(timeout=30) == 0
    assert "SIGTERM: stopping; letting in-flight requests finish" in t.proc.output()


def test_sigterm_without_stop_grace_stops_as_before(backends, td):
    t = td(one_colour(backends))
    assert readyz(t.admin_port)[0] == 200
    t.proc.p.send_signal(signal.SIGTERM)
    assert t.proc.p.wait(timeout=30) == 0
    out = t.proc.output()
    assert "SIGTERM: stopping; letting in-flight requests finish" in out
    assert "stop_grace_ms" not in out


def test_readyz_answers_a_probe_that_sends_its_own_host_name(backends, td):
    """Without a token the admin API refuses a foreign Host (DNS rebinding); /readyz tells
    nothing and changes nothing, so a load balancer's probe with its own Host gets its answer,
    and its 503s are not logged at info once per probe."""
    t = td(one_colour(backends))
    for host in ("node1.internal:9090", "127.0.0.1", "td.example.com"):
        assert readyz(t.admin_port, headers={"Host": host}) == (200, {"ready": True}), host
    # The rest of the API still refuses it.
    c = http.client.HTTPConnection("127.0.0.1", t.admin_port, timeout=5)
    c.request("GET", "/api/v1/state", headers={"Host": "node1.internal:9090"})
    assert c.getresponse().status == 421
    c.close()
