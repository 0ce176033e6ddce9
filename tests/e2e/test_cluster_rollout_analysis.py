"""A rollout's analysis across the nodes of a cluster, and a node cut off from etcd mid-rollout.

Three td nodes on one etcd member (Debian's etcd) on 127.0.0.1. The rollout leader reads every
node's GET /api/v1/counters at each look and judges the sums; a node that does not answer is
named in the look's "missing". A node that loses etcd during an active rollout serves the weights
from before it and is not ready until it can read the store again.

A `to` side failing on one node only: the backends are shared config, so every node reaches the
same green server. That server (FailingFor below) answers 500 to the requests that came through
one node's listener and 200 to the others: the test sends its requests to that node with the Host
header FAILING_HOST, which td passes on to the backend (and the other nodes' requests without
it). Seen from the backend, it is exactly a release that fails behind one node only."""
import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster_nodes import (SLOW, TOKEN, cluster_of, init_cluster, node_cfg, readyz,
                           wait_weights, weights_of)
from conftest import (CONSOLE_MISSING, ETCD, TcpRelay, backend_cfg, reload_config, run_console,
                      tdctl, wait_for)

pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")

FAILING_HOST = "failing.td-c.test"
NAMES = ("td-a", "td-b", "td-c")


class FailingFor:
    """A green server on 127.0.0.1: 500 to requests whose Host is FAILING_HOST, 200 to the
    others, with X-TD-Demo-Backend: green as the demo backends answer."""

    def __init__(self):
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                status = 500 if self.headers.get("Host", "").startswith(FAILING_HOST) else 200
                data = b"no\n" if status == 500 else b"ok\n"
                self.send_response(status)
                self.send_header("X-TD-Demo-Backend", "green")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def request(t, host=None):
    """One GET / through t's listener: (status, X-TD-Demo-Backend)."""
    c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
    try:
        c.request("GET", "/", headers={"Host": host} if host else {})
        r = c.getresponse()
        r.read()
        return r.status, r.headers.get("X-TD-Demo-Backend")
    finally:
        c.close()


def leader_of(t):
    status, r = t.api("GET", "/api/v1/cluster")
    return r.get("leader") if status == 200 else None


def start_three(td, cfg_of, etcd_of):
    """td-a first, the cluster initialised from it and td-a its leader, then td-b and td-c (so
    the leader is known: the node the tests cut off or stop is never the leader). cfg_of(name)
    gives a node's config without "cluster", etcd_of(name) its etcd endpoints."""
    nodes = []
    for i, name in enumerate(NAMES):
        cfg = cfg_of(name)
        cfg["cluster"] = {"etcd": etcd_of(name), "prefix": "/td/e2e/", "node": name,
                          "lease_s": 2}
        nodes.append(td(cfg, token=TOKEN))
        if i == 0:
            init_cluster(nodes[0])
            wait_for(lambda: leader_of(nodes[0]) == "td-a", 20 * SLOW, what="td-a leading")
    for t in nodes:
        wait_for(lambda t=t: cluster_of(t).get("reachable") and cluster_of(t).get("initialised"),
                 20 * SLOW, what=f"{t.admin} in the cluster")
        wait_for(lambda t=t: len((t.api("GET", "/api/v1/cluster")[1] or {}).get("nodes", [])) == 3,
                 20 * SLOW, what=f"three nodes seen by {t.admin}")
    return nodes


def rollout(t):
    status, r = t.api("GET", "/api/v1/rollout")
    assert status == 200, r
    return r


def wait_step_applied(t, k, timeout=20):
    """Polls the rollout until step k (0-based) is applied on every node ("applied_at") and its
    analysis window is open (a first look was taken: what is sent from now on is counted)."""
    def applied():
        r = rollout(t)
        d = (r.get("steps_detail") or [])
        return r if r.get("step") == k and len(d) > k and d[k].get("applied_at") \
            and d[k].get("looks") else None
    return wait_for(applied, timeout * SLOW, interval=0.1, what=f"step {k + 1} applied everywhere")


def wait_state(t, states, timeout=30):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        r = rollout(t)
        if r["state"] in states:
            return r
        if time.monotonic() >= deadline:
            raise AssertionError(f"rollout never in {states}: {json.dumps(r)[-3000:]}")
        time.sleep(0.1)


def counters(t):
    status, r = t.api("GET", "/api/v1/counters")
    assert status == 200, r
    return r


def green_requests(t):
    return counters(t)["backends"]["green"]["requests"]


def test_counters_endpoint_reports_each_backends_cumulative_counters_to_the_read_token(
        backends, td):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])})
    t = td(cfg, token=TOKEN)
    reload_config(t, lambda c: c["admin"].update(read_token="read-only-token-for-counters"))
    for path in ("/", "/status/500", "/status/503"):
        c = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
        c.request("GET", path)
        c.getresponse().read()
        c.close()

    def read():
        status, r = t.api("GET", "/api/v1/counters", token="read-only-token-for-counters")
        assert status == 200, r
        return r

    # an exchange's duration joins the histogram once its last byte is written, which the worker
    # learns an instant after the client has read it: the histogram catches up with the count
    wait_for(lambda: sum(read()["backends"]["blue"]["latency"]) == 3, 10, what="3 latencies")
    r = read()
    assert set(r) == {"node", "started", "backends"}, r
    blue = r["backends"]["blue"]
    assert blue["requests"] == 3 and blue["errors"] == 2, r
    assert sum(blue["latency"]) == 3 and len(blue["latency"]) == 14, r
    assert r["backends"]["green"]["requests"] == 0, r
    # the same process keeps its "started"; the counters only grow
    again = counters(t)
    assert again["started"] == r["started"] and again["backends"]["blue"]["requests"] == 3
    status, r = t.api("PUT", "/api/v1/counters", {}, token="read-only-token-for-counters")
    assert status == 403, r
    status, r = t.api("PUT", "/api/v1/counters", {})
    assert status == 405, r


def test_failing_target_on_one_node_only_is_rolled_back_on_every_node_by_the_summed_analysis(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    b = backends(("blue", 1))
    green = FailingFor()
    try:
        nodes = start_three(
            td, lambda name: backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, [green.port])},
                                         passive={"failures": 1000}),
            lambda name: c.endpoints)
        a, _, cnode = nodes
        before = {t: green_requests(t) for t in nodes}
        min_requests = 36
        status, r = a.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 600,
                           "analysis": {"interval_s": 1, "warmup_s": 0,
                                        "min_requests": min_requests, "max_error_rate": 0.05}})
        assert status == 201, r
        wait_step_applied(a, 0)
        # 30 requests through each node: about 15 reach green on each, fewer than min_requests
        # anywhere alone, about 45 together; only td-c's fail.
        for _ in range(30):
            for t in nodes:
                request(t, FAILING_HOST if t is cnode else None)
        r = wait_state(a, {"rolled_back", "paused", "succeeded", "aborted"})
        assert r["state"] == "rolled_back", r
        assert "error rate" in r["reason"], r["reason"]
        per_node = {t.admin: green_requests(t) - before[t] for t in nodes}
        assert all(n < min_requests for n in per_node.values()), per_node
        look = r["steps_detail"][0]["looks"][-1]
        assert look["verdict"] == "fail" and look["target_requests"] >= min_requests, look
        assert look["target_requests"] <= sum(per_node.values()), (look, per_node)
        # every node is back on blue, whichever node is asked
        wait_weights(nodes, blue=100, green=0)
        for t in nodes:
            assert rollout(t)["state"] == "rolled_back"
            assert request(t) == (200, "blue")
    finally:
        green.stop()


def test_target_ejected_on_one_node_only_fails_the_step_on_the_leader(etcd_cluster, backends, td):
    # green fails only behind td-c, whose passive detection ejects it after 3 failures; far too
    # few requests for the error rate to judge (min_requests 1000): the leader must see the
    # ejection in td-c's membership key and fail the step, as it would for its own.
    c = etcd_cluster(1)
    b = backends(("blue", 1))
    green = FailingFor()
    try:
        nodes = start_three(
            td, lambda name: backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, [green.port])},
                                         passive={"failures": 3, "eject_ms": 60000}),
            lambda name: c.endpoints)
        a, _, cnode = nodes
        status, r = a.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 600,
                           "analysis": {"interval_s": 1, "warmup_s": 0, "min_requests": 1000}})
        assert status == 201, r
        wait_step_applied(a, 0)
        for _ in range(20):
            request(cnode, FAILING_HOST)
        r = wait_state(a, {"rolled_back", "paused", "succeeded", "aborted"})
        assert r["state"] == "rolled_back", r
        assert "down on node td-c" in r["reason"], r["reason"]
        wait_weights(nodes, blue=100, green=0)
    finally:
        green.stop()


def test_node_not_answering_a_look_is_named_missing_and_the_look_goes_on_without_it(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    # A long lease: td-c, stopped, stays a live node whose admin API does not answer.
    nodes = []
    for i, name in enumerate(NAMES):
        nodes.append(td(node_cfg(b, c.endpoints, name, lease_s=30), token=TOKEN))
        if i == 0:
            init_cluster(nodes[0])
            wait_for(lambda: leader_of(nodes[0]) == "td-a", 20 * SLOW, what="td-a leading")
    for t in nodes:
        wait_for(lambda t=t: len((t.api("GET", "/api/v1/cluster")[1] or {}).get("nodes", [])) == 3,
                 20 * SLOW, what=f"three nodes seen by {t.admin}")
    a, bnode, cnode = nodes
    status, r = a.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 600,
                       "analysis": {"interval_s": 1, "warmup_s": 0, "min_requests": 20}})
    assert status == 201, r
    wait_step_applied(a, 0)
    os.kill(cnode.proc.p.pid, 19)  # SIGSTOP
    try:
        def judged_without_c():
            for t in (a, bnode):
                for _ in range(10):
                    request(t)
            for look in rollout(a)["steps_detail"][0].get("looks", []):
                if any(m.startswith("td-c:") for m in look.get("missing", [])) \
                        and look["verdict"] == "pass":
                    return look
            return None
        look = wait_for(judged_without_c, 30 * SLOW, interval=0.2,
                        what="a look passed without td-c, naming it missing")
        assert look["target_requests"] >= 20, look
        assert "timed out" in " ".join(look["missing"]), look
        # what a person sees: the leader, and td-c not at the step once the leader moved on
        r = tdctl(bnode, "--token", TOKEN, "rollout", "status")
        assert "leader: td-a; every node at the current step" in r.stdout, r.stdout
        status, r = bnode.api("POST", "/api/v1/rollout/promote")  # forwarded to td-a
        assert status == 200, r
        wait_for(lambda: rollout(a)["step"] == 1, 20 * SLOW, what="step 2 written")
        # td-a and td-b apply step 2 at once; td-c, stopped, cannot
        wait_for(lambda: "leader: td-a; not at the current step yet: td-c (step 1)\n" in
                 tdctl(bnode, "--token", TOKEN, "rollout", "status").stdout, 20 * SLOW,
                 interval=0.2, what="tdctl rollout status naming td-c as not at step 2")
        r = tdctl(a, "--token", TOKEN, "cluster")
        rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("td-")}
        assert "td-a * (leader)" in rows["td-a"] and "(leader)" not in rows["td-b"], r.stdout
        assert "leader: td-a" in r.stdout
        if not CONSOLE_MISSING:  # the console shows the same (Chromium, tests/console)
            seen = run_console("cluster_rollout.mjs", url=bnode.admin + "/", token=TOKEN,
                               leader="td-a", behind="td-c")
            assert "Led by td-a" in seen["rollout"], seen
            at = {n["node"]: n["at_step"] for n in seen["nodes"]}
            assert at == {"td-a": True, "td-b": True, "td-c": False}, seen
            assert seen["leader_rows"] == ["td-a"] and "td-a" in seen["leader"], seen
    finally:
        os.kill(cnode.proc.p.pid, 18)  # SIGCONT
    wait_for(lambda: not any(n["applied_step"] != 1 for n in rollout(a)["nodes"]), 20 * SLOW,
             what="td-c at step 2")
    status, r = a.api("POST", "/api/v1/rollout/abort")
    assert status == 200, r


def test_node_cut_off_mid_rollout_serves_the_weights_from_before_and_rejoins_at_the_current_step(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    port = int(c.endpoints[0].rsplit(":", 1)[1])
    relay = TcpRelay("127.0.0.1", port)
    try:
        b = backends(("blue", 1), ("green", 1))
        nodes = start_three(
            td, lambda name: backend_cfg({"blue": (100, b.ports["blue"]),
                                          "green": (0, b.ports["green"])}),
            lambda name: [f"http://127.0.0.1:{relay.port}"] if name == "td-c" else c.endpoints)
        a, bnode, cut = nodes
        status, r = a.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [50, 100], "step_s": 600,
                           "analysis": {"interval_s": 1, "warmup_s": 0, "min_requests": 20}})
        assert status == 201, r
        rid = r["id"]
        wait_step_applied(a, 0)
        wait_weights(nodes, blue=50, green=50)
        t0 = time.monotonic()
        relay.cut()
        wait_for(lambda: cluster_of(cut).get("fallback"), 30 * SLOW, interval=0.02,
                 what="td-c falling back")
        took = time.monotonic() - t0
        print(f"\nfigure: cut-off to fall-back on td-c: {took * 1000:.0f} ms")
        assert cluster_of(cut)["fallback"] == f"weights from before rollout {rid}"
        assert weights_of(cut) == {"blue": 100, "green": 0}
        assert all(request(cut) == (200, "blue") for _ in range(20))
        status, body = readyz(cut)
        assert status == 503 and "cluster store" in body.get("reason", ""), body
        # the others go on at the current step
        for t in (a, bnode):
            assert weights_of(t) == {"blue": 50, "green": 50}
        assert rollout(a)["state"] == "running"
        relay.restore()
        wait_for(lambda: readyz(cut)[0] == 200, 30 * SLOW, what="td-c ready again")
        wait_weights([cut], blue=50, green=50)
        assert "fallback" not in cluster_of(cut)
        assert {request(cut)[1] for _ in range(20)} == {"blue", "green"}
        status, r = a.api("POST", "/api/v1/rollout/abort")
        assert status == 200, r
        wait_weights(nodes, blue=100, green=0)
    finally:
        relay.stop()
