"""One rollout across three td nodes in cluster mode, under load on every node's listener: it ends
at 0/100 with no failed request, its steps wait for every node, it survives its leader's death
(SIGKILL) and a stale leader (SIGSTOP past its lease, then SIGCONT) cannot move the weights, and
a node cut off from etcd mid-rollout falls back to the weights from before it and rejoins.

What the nodes did is read back from etcd itself: the history of the prefix (a watch from
revision 1) has every version of PREFIX config, PREFIX rollout, PREFIX leader, PREFIX nodes/NODE
and the audit entries, each with the revision it was written at, so the order of events is
judged on etcd's revisions, not on clocks. Real etcd (Debian's), real td nodes, demo backends."""
import base64
import http.client
import json
import os
import signal
import socket
import threading
import time

import pytest

from cluster_nodes import (PREFIX, SLOW, TOKEN, cluster_of, node_cfg, readyz, wait_initialised,
                           weights_of)
from conftest import ETCD, LoadGen, TcpRelay, Td, wait_for

pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")

FAST = {"interval_s": 1, "warmup_s": 0, "min_requests": 20}
DONE = {"succeeded", "rolled_back", "aborted", "paused"}


# ---- etcd read back ---------------------------------------------------------------------------

def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    return base64.b64decode(s or "").decode(errors="replace")


def prefix_end(p):
    return p[:-1] + chr(ord(p[-1]) + 1)


def etcd_post(c, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]),
                                      timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body))
        r = conn.getresponse()
        return json.loads(r.read())
    finally:
        conn.close()


def etcd_get(c, key):
    """(value parsed as JSON, create_revision, mod_revision) of key, or None when absent."""
    r = etcd_post(c, "/v3/kv/range", {"key": b64(key)})
    kvs = r.get("kvs") or []
    if not kvs:
        return None
    kv = kvs[0]
    return json.loads(unb64(kv["value"])), int(kv["create_revision"]), int(kv["mod_revision"])


def etcd_history(c, prefix=PREFIX):
    """Every event under prefix from revision 1 to now, oldest first: dicts with "type" ("PUT" or
    "DELETE"), "key" (without the prefix), "value" (parsed JSON, None for a delete or non-JSON),
    "rev" (mod_revision) and "create_rev"."""
    head = etcd_post(c, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                         "count_only": True})
    now = int(head["header"]["revision"])
    conn = http.client.HTTPConnection("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]),
                                      timeout=3)
    out = []
    try:
        conn.request("POST", "/v3/watch", body=json.dumps({"create_request": {
            "key": b64(prefix), "range_end": b64(prefix_end(prefix)), "start_revision": 1}}))
        r = conn.getresponse()
        last, buf, dec = 0, "", json.JSONDecoder()
        for _ in range(100000):  # the gateway streams JSON messages back to back
            if last >= now:
                break
            buf = buf.lstrip()
            try:
                msg, end = dec.raw_decode(buf)
            except ValueError:
                try:
                    data = r.read1(65536)
                except TimeoutError:  # the store's revision was not under the prefix
                    break
                if not data:
                    break
                buf += data.decode()
                continue
            buf = buf[end:]
            for ev in (msg.get("result") or {}).get("events") or []:
                kv = ev["kv"]
                text = unb64(kv.get("value"))
                try:
                    value = json.loads(text) if text else None
                except ValueError:
                    value = None
                last = int(kv["mod_revision"])
                out.append({"type": ev.get("type", "PUT"), "key": unb64(kv["key"])[len(prefix):],
                            "value": value, "rev": last,
                            "create_rev": int(kv.get("create_revision", 0))})
    finally:
        conn.close()
    return out


def doc_weights(doc):
    return {b["name"]: b["weight"] for b in (doc or {}).get("backends", [])}


def audit_by_rev(history):
    """revision -> the audit entry written at it."""
    return {e["rev"]: e["value"] for e in history
            if e["key"].startswith("audit/") and e["type"] == "PUT" and e["value"]}


def leader_terms(history):
    """[(node, create_rev, delete_rev or None)] of PREFIX leader, oldest first."""
    terms = []
    for e in history:
        if e["key"] != "leader":
            continue
        if e["type"] == "DELETE":
            if terms and terms[-1][2] is None:
                terms[-1] = (terms[-1][0], terms[-1][1], e["rev"])
        elif e["value"] and e["create_rev"] == e["rev"]:
            terms.append((e["value"].get("node"), e["rev"], None))
    return terms


# ---- nodes ------------------------------------------------------------------------------------

@pytest.fixture
def nodes():
    """A factory start(b, etcd_endpoints, name, lease_s) -> Td in cluster mode; every node still
    running at teardown is stopped with SIGTERM and must exit 0 without a sanitizer report (a
    node the test killed is left out: test.killed)."""
    started = []

    def start(b, endpoints, name, lease_s=2, **extra):
        cfg = node_cfg(b, endpoints, name, lease_s=lease_s)
        cfg.update(extra)
        t = Td(cfg, token=TOKEN)
        t.name = name
        t.killed = False
        started.append(t)
        return t

    yield start
    for t in started:
        if t.killed:
            continue
        os.kill(t.proc.pid, signal.SIGCONT)  # a node a failed test left stopped
        rc = t.stop()
        out = t.proc.output()
        assert rc == 0, f"td {t.name} exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def init(t, c):
    with open(t.config_path) as f:
        doc = json.load(f)
    wait_for(lambda: cluster_of(t).get("reachable"), 15 * SLOW, what=f"etcd reached by {t.name}")
    status, r = t.api("POST", "/api/v1/cluster/init", doc)
    assert status == 200, r
    return r["revision"]


def leader_of(t):
    status, r = t.api("GET", "/api/v1/cluster")
    assert status == 200, r
    return r.get("leader")


def wait_leader(ts, timeout=30, not_=None):
    """Polls until every node in ts names the same leader (and not `not_`); returns its name."""
    def agreed():
        names = {leader_of(t) for t in ts}
        if len(names) == 1:
            name = names.pop()
            if name and name != not_:
                return name
        return None
    return wait_for(agreed, timeout * SLOW, interval=0.1, what=f"one leader (not {not_}) on "
                    + ", ".join(t.name for t in ts))


def rollout_of(t):
    status, r = t.api("GET", "/api/v1/rollout")
    assert status == 200, r
    return r


def wait_rollout(t, states, timeout=60):
    return wait_for(lambda: (lambda r: r if r.get("state") in states else None)(rollout_of(t)),
                    timeout * SLOW, interval=0.2, what=f"rollout in {states} on {t.name}")


def start_rollout(t, steps, step_s=5, **extra):
    body = {"to": "green", "steps": steps, "step_s": step_s, "analysis": FAST}
    body.update(extra)
    status, r = t.api("POST", "/api/v1/rollout", body)
    assert status == 201, r
    return r


def loads(ts, duration=90):
    """A LoadGen (2 threads, keep-alive) on every node's listener, started."""
    return {t.name: LoadGen(t.port, threads=2, duration=duration).start() for t in ts}


def stop_loads(ls):
    for lg in ls.values():
        lg.stop()


def assert_no_failure(ls, names):
    for name in names:
        lg = ls[name]
        assert lg.ok > 0, (name, lg.summary())
        assert lg.failed == 0 and not lg.errors, (name, lg.summary())


def wait_step_applied(c, step, timeout=30):
    """Polls PREFIX rollout in etcd until step `step` has its applied_at; returns the document."""
    def seen():
        got = etcd_get(c, PREFIX + "rollout")
        if not got:
            return None
        d = (got[0].get("steps_detail") or [None] * (step + 1))[step] or {}
        return got[0] if d.get("applied_at") else None
    return wait_for(seen, timeout * SLOW, interval=0.1, what=f"step {step} applied_at in etcd")


class HoldRelay(TcpRelay):
    """A TcpRelay that can hold what it relays: hold() keeps every byte (both directions) back
    until release(), without closing anything, as a slow network does."""

    def __init__(self, host, port):
        self.flowing = threading.Event()
        self.flowing.set()
        super().__init__(host, port)

    def hold(self):
        self.flowing.clear()

    def release(self):
        self.flowing.set()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait(30)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def three_nodes(nodes, b, c, lease_s=2, last_endpoints=None, **extra):
    """td-a and td-b on etcd, the cluster initialised and a leader among them, then td-c (on
    last_endpoints, e.g. a relay, when given); returns ([a, b, c], leader's name). extra: more
    config keys for every node."""
    a = nodes(b, c.endpoints, "td-a", lease_s, **extra)
    bb = nodes(b, c.endpoints, "td-b", lease_s, **extra)
    rev = init(a, c)
    wait_initialised([a, bb], rev)
    wait_leader([a, bb])
    cc = nodes(b, last_endpoints or c.endpoints, "td-c", lease_s, **extra)
    wait_initialised([cc], rev)
    return [a, bb, cc], wait_leader([a, bb, cc])


# ---- the scenarios ----------------------------------------------------------------------------

def test_rollout_under_load_on_three_nodes_ends_at_0_100_and_each_step_waits_for_every_node(
        etcd_cluster, backends, nodes):
    c = etcd_cluster(1)
    relay = HoldRelay("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]))
    try:
        b = backends(("blue", 1), ("green", 1))
        # lease 5 s: td-c's etcd traffic is held back for a while and it must stay a live node
        ts, lead = three_nodes(nodes, b, c, lease_s=5,
                               last_endpoints=[f"http://127.0.0.1:{relay.port}"])
        by = {t.name: t for t in ts}
        follower = next(t for t in ts if t.name != lead)
        ls = loads(ts)
        try:
            relay.hold()  # td-c sees step 1's weights only once released
            r = start_rollout(follower, [50, 100])  # started on a follower: forwarded
            rid = r["id"]
            # the others apply step 1 while td-c cannot: the step's window stays closed
            wait_for(lambda: all(weights_of(by[n]) == {"blue": 50, "green": 50}
                                 for n in ("td-a", "td-b")), 20 * SLOW, what="step 1 on a, b")
            doc = etcd_get(c, PREFIX + "rollout")[0]
            assert doc["id"] == rid and not doc["steps_detail"][0].get("applied_at"), doc
            assert weights_of(by["td-c"]) == {"blue": 100, "green": 0}
            relay.release()
            r = wait_rollout(follower, DONE, timeout=90)
        finally:
            relay.release()
            stop_loads(ls)
        assert r["state"] == "succeeded", r
        for t in ts:
            assert weights_of(t) == {"blue": 0, "green": 100}, t.name
            assert rollout_of(t)["id"] == rid
        assert_no_failure(ls, by)
        r = rollout_of(by["td-c"])
        assert r.get("leader") == lead, r
        assert {n["node"] for n in r.get("nodes", [])} == set(by), r
        # every step's applied_at was written after every node had reported the step applied
        h = etcd_history(c)
        configs = [e for e in h if e["key"] == "config" and e["type"] == "PUT"]
        marks = {}
        for e in h:
            if e["key"] == "rollout" and e["value"] and e["value"].get("id") == rid:
                for k, d in enumerate(e["value"].get("steps_detail") or []):
                    if d.get("applied_at") and k not in marks:
                        marks[k] = e["rev"]
        assert sorted(marks) == [0, 1], marks
        for k, m in marks.items():
            written = max(e["rev"] for e in configs if e["rev"] < m)
            step_w = doc_weights([e for e in configs if e["rev"] == written][0]["value"])
            assert step_w["green"] == [50, 100][k], (k, step_w)
            for name in by:
                applied = [e["rev"] for e in h if e["key"] == "nodes/" + name
                           and e["type"] == "PUT" and e["value"]
                           and e["value"].get("applied_revision", 0) >= written]
                assert applied and applied[0] < m, (
                    f"step {k}: weights at revision {written}, applied_at at {m}, {name} "
                    f"reported it applied at {applied[:1]}")
    finally:
        relay.stop()


def test_leader_killed_mid_rollout_another_node_takes_over_and_finishes(etcd_cluster, backends,
                                                                        nodes):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    ts, lead = three_nodes(nodes, b, c)
    by = {t.name: t for t in ts}
    rest = [t for t in ts if t.name != lead]
    # The killed node's own load generator is not counted: its process is gone, so are the
    # requests in flight to it. Failed requests are counted on the two survivors.
    ls = loads(ts)
    try:
        rid = start_rollout(rest[0], [20, 50, 100])["id"]
        wait_step_applied(c, 0)
        os.kill(by[lead].proc.pid, signal.SIGKILL)
        by[lead].proc.p.wait(10)
        by[lead].killed = True
        ls[lead].stop()
        new = wait_leader(rest, timeout=30, not_=lead)
        r = wait_rollout(rest[0], DONE, timeout=90)
    finally:
        stop_loads(ls)
    assert r["state"] == "succeeded" and r["id"] == rid, r
    assert r.get("leader") == new, r
    for t in rest:
        assert weights_of(t) == {"blue": 0, "green": 100}, t.name
    assert_no_failure(ls, [t.name for t in rest])
    # the steps after the takeover were written by the new leader
    h = etcd_history(c)
    terms = leader_terms(h)
    assert [x[0] for x in terms][-2:] == [lead, new], terms
    audits = audit_by_rev(h)
    later = [e for e in h if e["key"] == "config" and e["type"] == "PUT" and e["rev"] > terms[-1][1]]
    assert later, "no step written after the takeover"
    assert all(audits.get(e["rev"], {}).get("node") == new for e in later), [
        (e["rev"], audits.get(e["rev"])) for e in later]


def test_stale_leader_stopped_past_its_lease_cannot_move_the_weights_and_steps_down(
        etcd_cluster, backends, nodes):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    ts, lead = three_nodes(nodes, b, c)
    by = {t.name: t for t in ts}
    rest = [t for t in ts if t.name != lead]
    old = by[lead]
    ls = loads(rest)  # the stopped node answers nothing while stopped: not loaded
    step_s = 5
    try:
        rid = start_rollout(rest[0], [20, 50, 100], step_s=step_s)["id"]
        wait_step_applied(c, 0)
        os.kill(old.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            new = wait_leader(rest, timeout=30, not_=lead)
            # stopped past its step's end too, so its own step timer is due when it wakes
            wait_for(lambda: time.monotonic() - stopped > step_s + 1, 30, interval=0.2,
                     what="the stale leader's step due")
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)
        wait_for(lambda: leader_of(old) == new, 20 * SLOW, interval=0.1,
                 what=f"{lead} naming {new} the leader")
        r = wait_rollout(rest[0], DONE, timeout=90)
    finally:
        stop_loads(ls)
    assert r["state"] == "succeeded" and r["id"] == rid, r
    for t in ts:
        wait_for(lambda t=t: weights_of(t) == {"blue": 0, "green": 100}, 20 * SLOW,
                 what=f"0/100 on {t.name}")
    assert leader_of(old) == new
    status, st = old.api("GET", "/api/v1/cluster")
    assert st.get("leader") == new, st
    assert_no_failure(ls, [t.name for t in rest])
    h = etcd_history(c)
    terms = leader_terms(h)
    old_term = [x for x in terms if x[0] == lead][-1]
    lost = old_term[2]
    assert lost is not None, terms  # its key went with its lease
    new_term = [x for x in terms if x[0] == new][-1]
    assert new_term[1] > lost, terms
    audits = audit_by_rev(h)
    # nothing the stale leader wrote after it lost its key: no audit entry by it; no version of
    # the weights or the rollout while no one held the key; every version of the weights since,
    # the new leader's
    late = [(rev, a) for rev, a in audits.items() if rev > lost and a.get("node") == lead]
    assert not late, late
    between = [(e["key"], e["rev"]) for e in h if e["key"] in ("config", "rollout")
               and e["type"] == "PUT" and lost < e["rev"] < new_term[1]]
    assert not between, between
    since = [(e["rev"], audits.get(e["rev"])) for e in h if e["key"] == "config"
             and e["type"] == "PUT" and e["rev"] > new_term[1]]
    assert since and all(a and a.get("node") == new for _, a in since), since


def test_node_cut_off_mid_rollout_falls_back_then_follows_and_no_request_fails(
        etcd_cluster, backends, nodes):
    c = etcd_cluster(1)
    relay = TcpRelay("127.0.0.1", int(c.endpoints[0].rsplit(":", 1)[1]))
    try:
        b = backends(("blue", 1), ("green", 1))
        ts, lead = three_nodes(nodes, b, c, last_endpoints=[f"http://127.0.0.1:{relay.port}"])
        by = {t.name: t for t in ts}
        cut = by["td-c"]
        ls = loads(ts)
        try:
            rid = start_rollout(by[lead], [50, 100], step_s=8)["id"]
            wait_step_applied(c, 0)
            assert weights_of(cut) == {"blue": 50, "green": 50}
            relay.cut()
            wait_for(lambda: weights_of(cut) == {"blue": 100, "green": 0}, 20 * SLOW,
                     interval=0.05, what="the cut-off node back at the weights before")
            wait_for(lambda: readyz(cut)[0] == 503, 20 * SLOW, what="/readyz 503 when cut off")
            fb = cluster_of(cut).get("fallback") or ""
            assert f"weights from before rollout {rid}" in fb, cut.state().get("cluster")
            relay.restore()
            r = wait_rollout(by[lead], DONE, timeout=90)
            wait_for(lambda: weights_of(cut) == {"blue": 0, "green": 100}, 30 * SLOW,
                     what="the restored node at the rollout's weights")
            wait_for(lambda: readyz(cut)[0] == 200, 30 * SLOW, what="/readyz 200 once back")
        finally:
            stop_loads(ls)
        assert r["state"] == "succeeded" and r["id"] == rid, r
        assert not cluster_of(cut).get("fallback"), cut.state().get("cluster")
        assert_no_failure(ls, by)
    finally:
        relay.stop()
