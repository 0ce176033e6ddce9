"""The rollout engine: a blue-green switch run by td itself (POST /api/v1/rollout), in steps of
weight, each step's target side judged on td's own counters, rolled back or paused on failure,
kept in the state file across a restart."""
import json
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import (LoadGen, Td, backend_cfg, free_port, get_once, reload_config,
                      start_td_file, sticky_cookie)

FAST = {"interval_s": 1, "warmup_s": 0, "min_requests": 20}


class Server:
    """A tiny HTTP server on 127.0.0.1 answering with `status` (and the header
    X-TD-Demo-Backend: name, as the demo backends do) every request, or with `every` one request
    in `every` (200 for the others); keeps the POST bodies it got."""

    def __init__(self, status, name="green", every=1):
        self.status, self.name, self.every, self.posts = status, name, every, []
        self.n = 0
        lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if self.command == "POST":
                    outer.posts.append(body)
                with lock:
                    outer.n += 1
                    status = outer.status if outer.n % outer.every == 0 else 200
                data = b"no\n" if status >= 500 else b"ok\n"
                self.send_response(status)
                self.send_header("X-TD-Demo-Backend", outer.name)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/check"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    started = []

    def start(status, name="green", every=1):
        s = Server(status, name, every)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def weights(t):
    return {b["name"]: b["weight"] for b in t.state()["backends"]}


def wait_rollout(t, states, timeout=30.0):
    """Polls GET /api/v1/rollout until its state is one of `states`; returns the object."""
    deadline = time.monotonic() + timeout
    r = None
    while time.monotonic() < deadline:
        status, r = t.api("GET", "/api/v1/rollout")
        assert status == 200, r
        if r["state"] in states:
            return r
        time.sleep(0.2)
    raise AssertionError(f"rollout never reached {states}: {json.dumps(r, indent=1)[-3000:]}")


def blue_green(backends, td, green_ports=None):
    b = backends(("blue", 1), ("green", 1))
    gp = green_ports or b.ports["green"]
    return td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, gp)}))


def test_rollout_good_release_under_load_ends_at_0_100_with_no_failed_request(backends, td):
    t = blue_green(backends, td)
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        time.sleep(0.5)
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 2, "analysis": FAST})
        assert status == 201, r
        assert r["id"].startswith("r-") and r["from"] == "blue"
        assert r["weights_before"] == {"blue": 100, "green": 0}
        s = t.state()
        assert s["rollout"]["id"] == r["id"] and s["rollout"]["steps"] == [50, 100]
        r = wait_rollout(t, {"succeeded", "rolled_back", "aborted", "paused"})
        time.sleep(1.0)
    finally:
        load.stop()
    assert r["state"] == "succeeded", r
    assert r["weights"] == {"blue": 0, "green": 100}
    assert weights(t) == {"blue": 0, "green": 100}
    assert load.failed == 0 and not load.errors, (load.bad[:5], load.errors[:5])
    assert [d["state"] for d in r["steps_detail"]] == ["passed", "passed"], r["steps_detail"]
    first = r["steps_detail"][0]
    assert first["looks"] and first["target"]["requests"] > 0, first
    assert first["share_configured"] == 50.0 and first["share_actual"] is not None, first
    assert [x["state"] for x in r["transitions"]] == ["checking", "running", "succeeded"]
    s = t.state()
    green = [b for b in s["backends"] if b["name"] == "green"][0]
    assert green["share_actual_10s"] is not None and green["share_actual_10s"] > 0, green
    assert s["rollout"]["state"] == "succeeded"
    _, events = t.api("GET", "/api/v1/events")
    assert any(e["kind"] == "rollout" and "succeeded" in e["message"] for e in events), events
    _, history = t.api("GET", "/api/v1/history")
    assert any(r["id"] in h["what"] and "step 1 of 2" in h["what"] for h in history), history
    assert any(r["id"] in h["what"] and "succeeded" in h["what"] for h in history), history


def failing_green(backends, td, servers):
    b = backends(("blue", 1))
    # One answer in 3 a 500, and passive detection that needs 1000 in a row: the rollout is
    # judged on green's error rate alone (concurrent answers can come three 500s in a row).
    green = servers(500, every=3)
    return td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, [green.port])},
                          passive={"failures": 1000}))


def test_failing_target_is_rolled_back_within_one_analysis_period(backends, td, servers):
    t = failing_green(backends, td, servers)
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [20, 100], "step_s": 20, "analysis": FAST})
        assert status == 201, r
        r = wait_rollout(t, {"rolled_back", "succeeded", "paused", "aborted"}, timeout=15)
    finally:
        load.stop()
    assert r["state"] == "rolled_back", r
    assert weights(t) == {"blue": 100, "green": 0}
    assert r["weights"] == {"blue": 100, "green": 0}
    assert "error rate" in r["reason"] and r["reason"].startswith("step 1 (20 %)"), r["reason"]
    looks = r["steps_detail"][0]["looks"]
    assert looks[-1]["verdict"] == "fail" and looks[-1]["target_requests"] >= 20, looks
    assert r["steps_detail"][0]["state"] == "failed"
    # Within one analysis period after min_requests: a look every interval_s, well before the
    # step's 20 s were over.
    assert len(looks) <= 3, looks


def test_target_ejected_by_passive_detection_fails_the_step(backends, td, servers):
    """A target answering every request with 500 is ejected by passive detection after a few of
    them, so its counters alone would look clean (almost no answers): the ejection itself fails
    the step and the rollout is rolled back long before min_requests could be reached."""
    b = backends(("blue", 1))
    green = servers(500)
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, [green.port])}))
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [20, 100], "step_s": 20,
                           "analysis": dict(FAST, min_requests=100000)})
        assert status == 201, r
        r = wait_rollout(t, {"rolled_back", "succeeded", "paused", "aborted"}, timeout=15)
    finally:
        load.stop()
    assert r["state"] == "rolled_back", r
    assert "ejected by passive detection" in r["reason"], r["reason"]
    assert weights(t) == {"blue": 100, "green": 0}


def test_on_failure_pause_holds_the_weights_until_aborted(backends, td, servers):
    t = failing_green(backends, td, servers)
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [20, 100], "step_s": 20, "analysis": FAST,
                           "on_failure": "pause"})
        assert status == 201, r
        r = wait_rollout(t, {"paused", "rolled_back", "succeeded"}, timeout=15)
        assert r["state"] == "paused", r
        assert "error rate" in r["reason"], r
        time.sleep(2.0)
        assert weights(t) == {"blue": 80, "green": 20}
        assert t.api("GET", "/api/v1/rollout")[1]["state"] == "paused"
        assert t.api("POST", "/api/v1/rollout/resume", {})[0] == 200
        status, r = t.api("POST", "/api/v1/rollout/abort")
        assert status == 200 and r["state"] == "aborted", r
    finally:
        load.stop()
    assert weights(t) == {"blue": 100, "green": 0}


def test_pre_check_failure_aborts_before_any_weight_moves(backends, td):
    t = blue_green(backends, td)
    version = t.state()["version"]
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 2, "analysis": FAST,
                       "pre_check": {"path": "/status/500", "requests": 5}})
    assert status == 201, r
    assert r["state"] == "checking"
    r = wait_rollout(t, {"aborted", "running", "succeeded"}, timeout=15)
    assert r["state"] == "aborted", r
    assert r["reason"] == "pre-check: 5 of 5 answers outside 2xx: 500 ×5", r["reason"]
    assert r["pre_check"]["result"]["statuses"] == {"500": 5}, r["pre_check"]
    assert r["pre_check"]["result"]["failed"] == 5
    s = t.state()
    assert s["version"] == version, "no weight moved"
    assert weights(t) == {"blue": 100, "green": 0}
    # A passing pre-check goes on to the steps.
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [100], "step_s": 1, "analysis": FAST,
                       "pre_check": {"path": "/status/204", "requests": 3}})
    assert status == 201, r
    r = wait_rollout(t, {"aborted", "succeeded", "rolled_back"}, timeout=15)
    assert r["state"] == "succeeded", r
    assert r["pre_check"]["result"]["ok"] == 3


def test_put_ratio_and_routing_answer_409_while_a_rollout_is_active(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    rid = r["id"]
    for path, body in (("/api/v1/ratio", {"blue": 0, "green": 100}),
                       ("/api/v1/routing", {"method": "sticky"})):
        status, e = t.api("PUT", path, body)
        assert status == 409, e
        assert e["error"] == f"rollout {rid} is active (running): pause, promote or abort it first"
    status, e = t.api("POST", "/api/v1/rollout", {"to": "green"})
    assert status == 409 and e["error"] == f"rollout {rid} is active (running)", e
    assert t.api("POST", "/api/v1/rollout/resume")[0] == 409
    assert weights(t) == {"blue": 90, "green": 10}
    assert t.api("POST", "/api/v1/rollout/pause")[1]["state"] == "paused"
    status, r = t.api("POST", "/api/v1/rollout/promote")
    assert status == 200 and r["state"] == "running" and r["step"] == 1, r
    assert weights(t) == {"blue": 0, "green": 100}
    assert t.api("POST", "/api/v1/rollout/abort")[1]["state"] == "aborted"
    assert weights(t) == {"blue": 100, "green": 0}
    assert t.api("POST", "/api/v1/rollout/abort")[0] == 409
    status, s = t.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
    assert status == 200, s


def test_restart_mid_rollout_continues_at_its_step_and_abort_restores_the_weights(backends):
    b = backends(("blue", 1), ("green", 1))
    port, admin_port = free_port(), free_port()
    d = tempfile.mkdtemp(prefix="td-e2e-rollout-")
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])})
    cfg.update({"listeners": [{"address": f"127.0.0.1:{port}"}], "workers": 1,
                "admin": {"address": f"127.0.0.1:{admin_port}"}})
    path = os.path.join(d, "td.json")
    with open(path, "w") as f:
        json.dump(cfg, f)

    class T:
        def __init__(self):
            self.proc = start_td_file(path, port, admin_port)
            self.token = None
            self.admin = f"http://127.0.0.1:{admin_port}"

    T.api, T.state = Td.api, Td.state
    t = T()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [30, 60, 100], "step_s": 600,
                           "analysis": FAST})
        assert status == 201, r
        rid = r["id"]
        assert t.api("POST", "/api/v1/rollout/promote")[1]["step"] == 1
        assert weights(t) == {"blue": 40, "green": 60}
        assert t.proc.stop() == 0
        t = T()
        assert weights(t) == {"blue": 40, "green": 60}
        status, r = t.api("GET", "/api/v1/rollout")
        assert status == 200 and r["id"] == rid, r
        assert r["state"] == "running" and r["step"] == 1, r
        assert r["steps_detail"][1]["looks"] == [] or r["steps_detail"][1]["state"] == "running"
        _, events = t.api("GET", "/api/v1/events")
        want = (f"rollout {rid} continues at step 2 (60 %) after a restart; its analysis "
                "window starts afresh")
        assert any(e["message"] == want for e in events), [e["message"] for e in events]
        assert t.api("PUT", "/api/v1/ratio", {"blue": 1})[0] == 409
        status, r = t.api("POST", "/api/v1/rollout/abort")
        assert status == 200 and r["state"] == "aborted", r
        assert weights(t) == {"blue": 100, "green": 0}
        assert t.proc.stop() == 0
        t = T()
        assert weights(t) == {"blue": 100, "green": 0}
        status, r = t.api("GET", "/api/v1/rollout")
        assert status == 200 and r["id"] == rid and r["state"] == "aborted", r
    finally:
        t.proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_analysis_webhook_answering_500_fails_the_step(backends, td, servers):
    t = blue_green(backends, td)
    hook = servers(500, "ci")
    load = LoadGen(t.port, threads=2, duration=60).start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 10,
                           "analysis": dict(FAST, webhook=hook.url)})
        assert status == 201, r
        r = wait_rollout(t, {"rolled_back", "succeeded", "paused"}, timeout=15)
    finally:
        load.stop()
    assert r["state"] == "rolled_back", r
    assert f"analysis webhook {hook.url} answered 500" in r["reason"], r["reason"]
    assert weights(t) == {"blue": 100, "green": 0}
    assert hook.posts and json.loads(hook.posts[0])["id"] == r["id"]
    assert load.failed == 0, load.bad[:5]


def test_pre_check_webhook_answering_500_aborts(backends, td, servers):
    t = blue_green(backends, td)
    hook = servers(500, "ci")
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "step_s": 5,
                       "pre_check": {"path": "/", "requests": 2, "webhook": hook.url}})
    assert status == 201, r
    r = wait_rollout(t, {"aborted", "running"}, timeout=15)
    assert r["state"] == "aborted", r
    assert r["reason"] == f"pre-check: webhook {hook.url} answered 500", r["reason"]
    assert weights(t) == {"blue": 100, "green": 0}


BAD = [
    ({"steps": [50, 10, 100]}, "steps: "),
    ({"steps": [10, 50]}, "steps: "),
    ({"steps": [0, 100]}, "steps: "),
    ({"steps": [10.5, 100]}, "steps: "),
    ({"to": "purple"}, 'to: unknown backend "purple"'),
    ({"to": "blue"}, 'to: "blue" already has 100 %'),
    ({"step_s": 0}, "step_s: "),
    ({"step_s": 86401}, "step_s: "),
    ({"step_s": 10, "ramp_s": 11}, "ramp_s: "),
    ({"step_s": 10, "analysis": {"interval_s": 11}}, "analysis.interval_s: "),
    ({"step_s": 10, "analysis": {"warmup_s": 11}}, "analysis.warmup_s: "),
    ({"analysis": {"max_error_rate": 1.5}}, "analysis.max_error_rate: "),
    ({"analysis": {"max_ratio": 0.5}}, "analysis.max_ratio: "),
    ({"analysis": {"significance": 0}}, "analysis.significance: "),
    ({"analysis": {"significance": 0.6}}, "analysis.significance: "),
    ({"analysis": {"compare": "median"}}, "analysis.compare: "),
    ({"analysis": {"colour": 1}}, "analysis.colour: unknown key"),
    ({"colour": "green"}, "colour: unknown key"),
    ({"on_failure": "panic"}, "on_failure: "),
    ({"pre_check": {"requests": 3}}, "pre_check.path: required"),
    ({"pre_check": {"path": "/", "expect_status": "ok"}}, "pre_check.expect_status: "),
]


def test_bad_rollout_input_is_400_naming_the_field_with_nothing_changed(backends, td):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"]),
                       "grey": (0, [free_port()])},
                      health_check={"type": "http", "path": "/", "interval_ms": 200,
                                    "timeout_ms": 500, "fall": 1, "rise": 1})
    t = td(cfg)
    deadline = time.monotonic() + 10
    while [x["up"] for x in t.state()["backends"] if x["name"] == "grey"] != [False]:
        assert time.monotonic() < deadline, "grey never went down"
        time.sleep(0.1)
    version = t.state()["version"]
    cases = BAD + [({"to": "grey"}, 'to: "grey" has no server up')]
    for extra, want in cases:
        body = dict({"to": "green"}, **extra)
        status, e = t.api("POST", "/api/v1/rollout", body)
        assert status == 400, (body, e)
        assert e["error"].startswith(want), (body, e)
        assert t.api("GET", "/api/v1/rollout")[0] == 404
    status, e = t.api("POST", "/api/v1/rollout", raw=b"{nope")
    assert status == 400 and e["error"].startswith("request:1:"), e
    assert t.api("POST", "/api/v1/rollout/pause")[0] == 409
    s = t.state()
    assert s["version"] == version and s["rollout"] is None
    assert weights(t) == {"blue": 100, "green": 0, "grey": 0}


def test_ramp_moves_the_weights_gradually_to_the_step(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [60, 100], "step_s": 600, "ramp_s": 4,
                       "analysis": FAST})
    assert status == 201, r
    seen = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        g = weights(t)["green"]
        if not seen or seen[-1] != g:
            seen.append(g)
        if g == 60:
            break
        time.sleep(0.1)
    assert seen[-1] == 60, seen
    between = [g for g in seen if 0 < g < 60]
    assert len(between) >= 2, f"the weight jumped: {seen}"
    assert seen == sorted(seen), seen
    assert t.api("POST", "/api/v1/rollout/abort")[1]["state"] == "aborted"
    assert weights(t) == {"blue": 100, "green": 0}


def test_config_change_during_a_rollout_keeps_the_rollout_weights(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [30, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    assert weights(t) == {"blue": 70, "green": 30}
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200, cfg
    for b in cfg["backends"]:
        b["weight"] = 50
    status, s = t.api("PUT", "/api/v1/config", cfg)
    assert status == 200, s
    assert weights(t) == {"blue": 70, "green": 30}
    _, events = t.api("GET", "/api/v1/events")
    assert any(e["kind"] == "rollout" and "weight of blue stays 70 (not 50)" in e["message"]
               for e in events), [e["message"] for e in events]
    assert t.api("POST", "/api/v1/rollout/abort")[1]["state"] == "aborted"
    assert weights(t) == {"blue": 100, "green": 0}


def test_drain_waits_for_the_old_side_then_succeeds(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [100], "step_s": 1, "drain": True,
                       "analysis": FAST})
    assert status == 201, r
    r = wait_rollout(t, {"succeeded", "rolled_back", "aborted"}, timeout=15)
    assert r["state"] == "succeeded", r
    assert "draining" in [x["state"] for x in r["transitions"]], r["transitions"]
    assert r["reason"] == "every step passed; the old side is drained", r["reason"]


def test_promote_full_goes_straight_to_100_skipping_the_steps_between(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 50, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    status, r = t.api("POST", "/api/v1/rollout/promote", {"full": True})
    assert status == 200 and r["step"] == 2 and r["state"] == "running", r
    assert [d["state"] for d in r["steps_detail"]] == ["skipped", "skipped", "running"]
    assert weights(t) == {"blue": 0, "green": 100}
    assert t.api("POST", "/api/v1/rollout/promote")[1]["state"] == "succeeded"


def test_sticky_clients_make_the_actual_share_lag_the_configured_one(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                       method="sticky"))
    _, h, _ = get_once(t.port)
    cookie = sticky_cookie(h)
    assert cookie, dict(h)
    load = LoadGen(t.port, threads=2, duration=60, headers={"Cookie": f"TDSTICKY={cookie}"})
    load.start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 600, "analysis": FAST})
        assert status == 201, r
        time.sleep(2.0)
        s = t.state()
        status, r = t.api("GET", "/api/v1/rollout")
    finally:
        load.stop()
    green = [x for x in s["backends"] if x["name"] == "green"][0]
    blue = [x for x in s["backends"] if x["name"] == "blue"][0]
    assert green["share"] == 50.0 and green["share_actual_10s"] == 0.0, green
    assert blue["share_actual_10s"] == 100.0, blue
    step = r["steps_detail"][0]
    assert step["share_configured"] == 50.0 and step["share_actual"] == 0.0, step
    assert load.by_backend == {"blue": load.ok}, load.by_backend
    assert t.api("POST", "/api/v1/rollout/abort")[0] == 200


def test_rollout_to_a_backend_in_maint_is_refused_with_nothing_changed(backends, td):
    t = blue_green(backends, td)
    assert t.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})[0] == 200
    assert t.api("PUT", "/api/v1/backends/green", {"state": "maint"})[0] == 200
    version = t.state()["version"]
    status, e = t.api("POST", "/api/v1/rollout", {"to": "green"})
    assert status == 400 and e["error"].startswith('to: "green" is in state maint'), e
    assert t.state()["version"] == version and t.state()["rollout"] is None


def test_target_put_in_maint_during_a_rollout_fails_the_step(backends, td):
    """A target that takes no traffic answers nothing: its clean counters must not pass the
    step (the rollout would "succeed" with every request at 100 % answered 503)."""
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 20, "analysis": FAST})
    assert status == 201, r
    wait_rollout(t, {"running"})
    assert t.api("PUT", "/api/v1/backends/green", {"state": "maint"})[0] == 200
    r = wait_rollout(t, {"rolled_back", "succeeded", "paused", "aborted"}, timeout=10)
    assert r["state"] == "rolled_back" and "green was put in state maint" in r["reason"], r
    assert weights(t) == {"blue": 100, "green": 0}


def test_short_steps_are_judged_with_the_default_analysis(backends, td, servers):
    """step_s 5 with no analysis keys: the warm-up and the interval default to a fifth of the
    step, so a failing release is rolled back instead of reaching 100 % unjudged; a warm-up as
    long as the step is refused."""
    t = failing_green(backends, td, servers)
    status, e = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "step_s": 5, "analysis": {"warmup_s": 5}})
    assert status == 400 and e["error"].startswith("analysis.warmup_s: "), e
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [20, 100], "step_s": 5,
                           "analysis": {"min_requests": 20}})
        assert status == 201, r
        assert r["analysis"]["warmup_s"] == 1 and r["analysis"]["interval_s"] == 1, r["analysis"]
        r = wait_rollout(t, {"rolled_back", "succeeded", "paused", "aborted"}, timeout=20)
    finally:
        load.stop()
    assert r["state"] == "rolled_back", r


def test_rollout_aborts_when_its_target_leaves_the_config(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 30, "analysis": FAST})
    assert status == 201, r
    wait_rollout(t, {"running"})

    def drop_green(cfg):
        cfg["backends"] = [b for b in cfg["backends"] if b["name"] != "green"]
        cfg["backends"][0]["weight"] = 100

    reload_config(t, drop_green)
    r = wait_rollout(t, {"aborted", "rolled_back", "succeeded"}, timeout=10)
    assert r["state"] == "aborted" and "green is no longer in the config" in r["reason"], r
    assert weights(t) == {"blue": 100}


def test_promote_body_is_validated_with_nothing_changed(backends, td):
    t = blue_green(backends, td)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 50, 100], "step_s": 30, "analysis": FAST})
    assert status == 201, r
    wait_rollout(t, {"running"})
    for body, want in (({"full": "yes"}, "full: must be true or false"),
                       ({"full": True, "x": 1}, 'unknown key "x"')):
        status, e = t.api("POST", "/api/v1/rollout/promote", body)
        assert status == 400 and e["error"].startswith(want), e
    status, e = t.api("POST", "/api/v1/rollout/pause", {"x": 1})
    assert status == 400, e
    r = t.api("GET", "/api/v1/rollout")[1]
    assert r["state"] == "running" and r["step"] == 0, r
    assert t.api("POST", "/api/v1/rollout/abort")[0] == 200
