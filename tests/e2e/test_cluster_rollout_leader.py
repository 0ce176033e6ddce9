"""Rollouts in cluster mode: one node, the holder of PREFIX leader, runs the rollout; every node
drives it (its POST /api/v1/rollout* are forwarded to the leader) and shows it; every write the
leader makes is fenced in etcd by the leader key's create_revision; a step's clock starts only
once every live node applied its weights; the leader's death hands the rollout over. Three td
nodes on one etcd member (Debian's etcd), demo backends, all on 127.0.0.1."""
import base64
import json
import os
import signal
import socket
import time

import pytest

from cluster_nodes import (SLOW, TOKEN, init_cluster, node_cfg, start_nodes, wait_initialised,
                           wait_weights, weights_of)
from conftest import ETCD, Td, TcpRelay, wait_for

pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")

FAST = {"interval_s": 1, "warmup_s": 0, "min_requests": 5}
TERMINAL = {"succeeded", "rolled_back", "aborted"}


@pytest.fixture
def tdk():
    """As conftest's td, for nodes a test may kill: a node marked `killed` is not expected to
    exit 0 at the end."""
    started = []

    def start(cfg, token=None):
        t = Td(cfg, token)
        t.killed = False
        started.append(t)
        return t

    yield start
    for t in started:
        if t.killed:
            t.proc.stop(signal.SIGKILL)
            continue
        rc = t.stop()
        out = t.proc.output()
        assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def kill(t, sig=signal.SIGKILL):
    t.killed = True
    t.proc.p.send_signal(sig)


def view(t):
    status, v = t.api("GET", "/api/v1/cluster")
    assert status == 200, v
    return v


def leader_of(nodes, timeout=20, not_=None):
    """The node every node of `nodes` names as "leader" in GET /api/v1/cluster (they agree, on
    one of them, other than `not_`)."""
    names = {}

    def agreed():
        names.clear()
        for t in nodes:
            names[t] = view(t).get("leader")
        one = set(names.values())
        return (len(one) == 1 and None not in one and not_ not in one
                and one <= {view(t)["node"] for t in nodes})

    wait_for(agreed, timeout * SLOW, what="every node names the same leader")
    name = names[nodes[0]]
    return next(t for t in nodes if view(t)["node"] == name)


def rollout(t):
    status, r = t.api("GET", "/api/v1/rollout")
    return r if status == 200 else None


def wait_state(t, states, timeout=60):
    last = {}

    def reached():
        r = rollout(t)
        last["r"] = r
        return r is not None and r["state"] in states

    try:
        wait_for(reached, timeout * SLOW, interval=0.2, what=f"rollout state in {states}")
    except AssertionError:
        raise AssertionError(f"rollout never reached {states} on {t.admin}: "
                             f"{json.dumps(last.get('r'), indent=1)[-3000:]}")
    return last["r"]


def three(etcd_cluster, backends, td, endpoints=None, c=None):
    c = c or etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, endpoints or [c.endpoints] * 3)
    wait_initialised(nodes, init_cluster(nodes[0]))
    return c, nodes


def audit(c):
    """PREFIX audit/ entries in etcd (each with its mod_revision), oldest first."""
    out = c.etcdctl("get", "--prefix", "/td/e2e/audit/", "-w", "json")
    assert out.returncode == 0, out.stderr
    kvs = json.loads(out.stdout).get("kvs") or []
    return [dict(json.loads(base64.b64decode(kv["value"])), revision=int(kv["mod_revision"]))
            for kv in kvs]


def test_rollout_started_on_a_follower_runs_on_the_leader_and_ends_at_0_100_on_every_node(
        etcd_cluster, backends, td):
    c, nodes = three(etcd_cluster, backends, td)
    lead = leader_of(nodes)
    follower = next(t for t in nodes if t is not lead)
    status, r = follower.api("POST", "/api/v1/rollout",
                             {"to": "green", "steps": [50, 100], "step_s": 1, "analysis": FAST})
    assert status == 201, r
    assert r["leader"] == view(lead)["node"], r
    rid = r["id"]
    for t in nodes:
        done = wait_state(t, TERMINAL)
        assert done["state"] == "succeeded" and done["id"] == rid, done
        assert done["leader"] == view(lead)["node"]
        assert {n["node"] for n in done["nodes"]} == {view(x)["node"] for x in nodes}, done
    wait_weights(nodes, blue=0, green=100)
    # every step's clock started once all three nodes had applied it
    done = rollout(nodes[2])
    assert all(d.get("applied_at") for d in done["steps_detail"]), done["steps_detail"]
    # every node reports the rollout's last step as the one it applied
    wait_for(lambda: all(n["applied_step"] == 1 for n in rollout(follower)["nodes"]),
             10 * SLOW, what="applied_step 1 on every node")
    # the writes were the leader's
    mine = [e for e in audit(c) if rid in e["what"]]
    assert mine and {e["node"] for e in mine} == {view(lead)["node"]}, mine


def test_pause_promote_and_abort_from_any_node_and_409_on_ratio_everywhere_meanwhile(
        etcd_cluster, backends, td):
    c, nodes = three(etcd_cluster, backends, td)
    lead = leader_of(nodes)
    a, b = [t for t in nodes if t is not lead]
    status, r = a.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 50, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    wait_weights(nodes, blue=90, green=10)
    for t in nodes:
        wait_for(lambda t=t: (rollout(t) or {}).get("state") == "running", 10 * SLOW,
                 what=f"running on {t.admin}")
        status, e = t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 409 and r["id"] in e["error"], e
        status, e = t.api("PUT", "/api/v1/routing", {"method": "sticky"})
        assert status == 409 and r["id"] in e["error"], e
        # a second rollout is refused by the leader, whoever asks
        status, e = t.api("POST", "/api/v1/rollout", {"to": "green"})
        assert status == 409, e
    status, p = b.api("POST", "/api/v1/rollout/pause")
    assert status == 200 and p["state"] == "paused", p
    for t in nodes:
        wait_for(lambda t=t: rollout(t)["state"] == "paused", 10 * SLOW, what="paused everywhere")
    status, p = a.api("POST", "/api/v1/rollout/promote")
    assert status == 200 and p["state"] == "running" and p["step"] == 1, p
    wait_weights(nodes, blue=50, green=50)
    status, p = b.api("POST", "/api/v1/rollout/abort")
    assert status == 200 and p["state"] == "aborted", p
    wait_weights(nodes, blue=100, green=0)
    for t in nodes:
        wait_for(lambda t=t: rollout(t)["state"] == "aborted", 10 * SLOW, what="aborted")
    assert weights_of(a) == {"blue": 100, "green": 0}
    # no rollout active: the ratio is free again, on any node
    assert b.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})[0] == 200
    wait_weights(nodes, blue=50, green=50)


def test_leader_killed_mid_rollout_another_node_takes_over_and_finishes(
        etcd_cluster, backends, tdk):
    c, nodes = three(etcd_cluster, backends, tdk)
    lead = leader_of(nodes)
    old = view(lead)["node"]
    rest = [t for t in nodes if t is not lead]
    status, r = rest[0].api("POST", "/api/v1/rollout",
                            {"to": "green", "steps": [20, 50, 100], "step_s": 600,
                             "analysis": FAST})
    assert status == 201, r
    wait_weights(nodes, blue=80, green=20)
    kill(lead)
    # the survivors elect one of them once the dead leader's lease expired in etcd
    new = leader_of(rest, timeout=30, not_=old)
    assert view(new)["node"] != old
    r = rollout(rest[1])
    assert r["state"] == "running" and r["step"] == 0, r
    # the new leader continues the rollout: promoted from the other survivor, it finishes
    status, p = rest[1].api("POST", "/api/v1/rollout/promote", {"full": True})
    assert status == 200 and p["step"] == 2, p
    wait_weights(rest, blue=0, green=100)
    status, p = rest[0].api("POST", "/api/v1/rollout/promote")
    assert status == 200, p
    for t in rest:
        done = wait_state(t, TERMINAL)
        assert done["state"] == "succeeded" and done["leader"] == view(new)["node"], done
    wait_weights(rest, blue=0, green=100)
    events = [e for e in audit(c) if r["id"] in e["what"]]
    assert view(new)["node"] in {e["node"] for e in events}, events


class WatchHoldRelay(TcpRelay):
    """A TcpRelay that can hold a node's etcd watch: hold() stops forwarding what etcd sends on
    the relayed connections that carry a watch (POST /v3/watch) without closing them, so the node
    keeps its lease and stays a live member while it applies nothing new; release() forwards
    again what was held."""

    def __init__(self, *a):
        import threading
        self.watch_socks = set()
        self.holding = False
        self.released = threading.Event()
        super().__init__(*a)

    def _pump(self, src, dst):
        node_side = src.getsockname()[1] == self.port
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if node_side and b"/v3/watch" in data[:128]:
                    self.watch_socks.add(dst)
                while not node_side and self.holding and src in self.watch_socks \
                        and not self.stopping:
                    self.released.wait(0.1)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        self.released.clear()
        self.holding = True

    def release(self):
        self.holding = False
        self.released.set()


def test_step_waits_while_one_live_node_has_not_applied_it(etcd_cluster, backends, td):
    c = etcd_cluster(1)
    relay = WatchHoldRelay("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]))
    try:
        b = backends(("blue", 1), ("green", 1))
        first = start_nodes(td, b, [c.endpoints] * 2)
        lead = leader_of(first)
        # the third node, on the relay, comes after the election: a follower
        late = td(node_cfg(b, [f"http://127.0.0.1:{relay.port}"], "td-c"), token=TOKEN)
        nodes = first + [late]
        wait_initialised(nodes, init_cluster(first[0]))
        assert leader_of(nodes) is lead
        relay.hold()
        status, r = first[1].api("POST", "/api/v1/rollout",
                                 {"to": "green", "steps": [50, 100], "step_s": 1,
                                  "analysis": FAST})
        assert status == 201, r
        wait_weights(first, blue=50, green=50)
        # td-c is live (its lease is kept) but has not applied step 1: the step does not begin
        wait_for(lambda: "td-c" in (rollout(lead)["steps_detail"][0].get("waiting_for") or []),
                 15 * SLOW, what="step 1 waiting for td-c")
        assert weights_of(late) == {"blue": 100, "green": 0}
        assert "td-c" in {n["node"] for n in view(lead)["nodes"]}
        r = rollout(lead)
        assert r["state"] == "running" and r["step"] == 0, r
        assert not r["steps_detail"][0].get("applied_at"), r["steps_detail"][0]
        # far longer than step_s: still step 1, nothing judged
        time.sleep(3 * SLOW)
        r = rollout(lead)
        assert r["state"] == "running" and r["step"] == 0, r
        assert not r["steps_detail"][0]["looks"], r["steps_detail"][0]
        relay.release()
        done = wait_state(lead, TERMINAL)
        assert done["state"] == "succeeded", done
        wait_weights(nodes, blue=0, green=100)
        assert done["steps_detail"][0]["applied_at"] >= done["steps_detail"][0]["started_at"]
    finally:
        relay.release()
        relay.stop()


def test_stale_leader_stopped_past_its_lease_cannot_move_the_weights_and_steps_down(
        etcd_cluster, backends, td):
    c, nodes = three(etcd_cluster, backends, td)
    lead = leader_of(nodes)
    old = view(lead)["node"]
    rest = [t for t in nodes if t is not lead]
    status, r = rest[0].api("POST", "/api/v1/rollout",
                            {"to": "green", "steps": [10, 50, 100], "step_s": 2,
                             "analysis": FAST})
    assert status == 201, r
    wait_weights(nodes, blue=90, green=10)
    os.kill(lead.proc.pid, signal.SIGSTOP)
    try:
        new = leader_of(rest, timeout=30, not_=old)
        # the new leader's key: its create_revision is the fencing token now
        got = c.etcdctl("get", "/td/e2e/leader", "-w", "json")
        token = int(json.loads(got.stdout)["kvs"][0]["create_revision"])
        status, p = rest[1].api("POST", "/api/v1/rollout/pause")
        assert status == 200 and p["state"] == "paused", p
        held = weights_of(rest[0])
    finally:
        os.kill(lead.proc.pid, signal.SIGCONT)
    # the stale leader's timers fire at once: whatever it tries to write is refused by etcd
    wait_for(lambda: view(lead).get("leader") == view(new)["node"], 20 * SLOW,
             what="the stale leader names the new one")
    wait_for(lambda: "no longer the rollout leader" in lead.proc.output(), 10 * SLOW,
             what="the stale leader says it stepped down")
    late = [e for e in audit(c) if e["node"] == old and e["revision"] > token]
    assert not late, late
    # the weights are the paused rollout's, on every node, the stale one included
    wait_weights(nodes, **held)
    time.sleep(2 * SLOW)
    for t in nodes:
        assert weights_of(t) == held
        assert rollout(t)["state"] == "paused"
    assert rest[0].api("POST", "/api/v1/rollout/abort")[0] == 200
    wait_weights(nodes, blue=100, green=0)


def test_deposed_leader_that_has_not_heard_of_it_has_its_writes_refused_by_etcd(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    relay = WatchHoldRelay("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]))
    try:
        b = backends(("blue", 1), ("green", 1))
        a = td(node_cfg(b, [f"http://127.0.0.1:{relay.port}"], "td-a"), token=TOKEN)
        wait_for(lambda: view(a).get("leader") == "td-a", 15 * SLOW, what="td-a leads")
        others = [td(node_cfg(b, c.endpoints, n), token=TOKEN) for n in ("td-b", "td-c")]
        nodes = [a] + others
        wait_initialised(nodes, init_cluster(a))
        status, r = others[0].api("POST", "/api/v1/rollout",
                                  {"to": "green", "steps": [10, 50, 100], "step_s": 4 * SLOW,
                                   "analysis": FAST})
        assert status == 201, r
        wait_weights(nodes, blue=90, green=10)
        # td-a hears nothing more from etcd (its lease is kept), and loses the leader key
        relay.hold()
        assert c.etcdctl("del", "/td/e2e/leader").returncode == 0
        new = leader_of(others, not_="td-a")
        got = c.etcdctl("get", "/td/e2e/leader", "-w", "json")
        token = int(json.loads(got.stdout)["kvs"][0]["create_revision"])
        assert view(a)["leader"] == "td-a", "td-a still takes itself for the leader"
        # a pause asked of td-a: it runs it, and its write fails its leader compare in etcd
        status, e = a.api("POST", "/api/v1/rollout/pause")
        assert status == 409 and e["error"] == "not the leader", e
        wait_for(lambda: "no longer the rollout leader (a write failed its leader compare"
                 in a.proc.output(), 10 * SLOW, what="td-a steps down")
        assert rollout(others[0])["state"] == "running"
        late = [e for e in audit(c) if e["node"] == "td-a" and e["revision"] > token]
        assert not late, late
        for t in others:
            assert weights_of(t) == {"blue": 90, "green": 10}
        relay.release()
        # the new leader, which took the rollout over, finishes it on every node
        done = wait_state(others[1], TERMINAL, timeout=90)
        assert done["state"] == "succeeded" and done["leader"] == view(new)["node"], done
        wait_weights(nodes, blue=0, green=100)
    finally:
        relay.release()
        relay.stop()


def test_rollout_asked_of_a_node_that_knows_no_leader_is_503_naming_why(backends, td):
    from conftest import free_port
    b = backends(("blue", 1), ("green", 1))
    t = td(node_cfg(b, [f"http://127.0.0.1:{free_port()}"], "td-a"), token=TOKEN)
    for path, body in (("/api/v1/rollout", {"to": "green"}), ("/api/v1/rollout/abort", None)):
        status, e = t.api("POST", path, body)
        assert status == 503, e
        assert e["error"].startswith("no rollout leader: cluster store unreachable"), e
    assert t.api("GET", "/api/v1/rollout")[0] == 404
    assert weights_of(t) == {"blue": 100, "green": 0}


def test_config_put_during_a_cluster_rollout_keeps_the_rollouts_weights(
        etcd_cluster, backends, td):
    # A whole config PUT on a follower while the rollout runs: its other changes apply on every
    # node, its weights give way to the rollout's (as on a single node).
    c, nodes = three(etcd_cluster, backends, td)
    lead = leader_of(nodes)
    a = [t for t in nodes if t is not lead][0]
    status, r = a.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 50, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    wait_weights(nodes, blue=90, green=10)
    status, doc = a.api("GET", "/api/v1/config")
    assert status == 200, doc
    for b in doc["backends"]:
        b["weight"] = {"blue": 0, "green": 100}[b["name"]]
    doc.setdefault("timeouts", {})["connect_ms"] = 1234
    status, e = a.api("PUT", "/api/v1/config", doc)
    assert status == 200, e
    for t in nodes:
        wait_for(lambda t=t: t.api("GET", "/api/v1/config")[1]["timeouts"]["connect_ms"] == 1234,
                 10 * SLOW, what=f"the new timeout on {t.admin}")
        assert weights_of(t) == {"blue": 90, "green": 10}, t.admin
    assert rollout(a)["state"] == "running"
    assert a.api("POST", "/api/v1/rollout/abort")[0] == 200


def test_ratio_change_during_a_rollout_with_etcd_down_is_503_store_unreachable(
        etcd_cluster, backends, td):
    # Cut off from etcd, a node answers a change with the store's 503, rollout or not.
    c, nodes = three(etcd_cluster, backends, td)
    a = nodes[0]
    status, r = a.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [10, 50, 100], "step_s": 600, "analysis": FAST})
    assert status == 201, r
    wait_weights(nodes, blue=90, green=10)
    c.kill(0)
    for t in nodes:
        wait_for(lambda t=t: t.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})[0] == 503,
                 20 * SLOW, what=f"503 on {t.admin}")
        status, e = t.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
        assert "cluster store unreachable" in e["error"], e
