"""Cluster mode when etcd fails: td nodes on a 3-member etcd cluster lose one member, then all of
them, then get them back; a node cut off from etcd by a TCP relay serves its last state and
catches up once the relay is restored. Real etcd members (Debian's etcd) on 127.0.0.1, real td
nodes, demo backends."""
import os

import pytest

from cluster_nodes import (SLOW, cluster_of, init_cluster, readyz, routes_to, start_nodes,
                           wait_initialised, wait_weights, weights_of)
from conftest import ETCD, TcpRelay, wait_for

pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")


def test_one_etcd_member_killed_a_change_still_applies_on_every_node(etcd_cluster, backends, td):
    c = etcd_cluster(3)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, [c.endpoints] * 3)
    wait_initialised(nodes, init_cluster(nodes[0]))
    c.kill(0)  # the first endpoint: the one every node starts with
    status, r = nodes[0].api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
    assert status == 200, r
    wait_weights(nodes, blue=0, green=100)
    for t in nodes:
        assert routes_to(t, "green")
        assert readyz(t)[0] == 200
    # and from another node, which must fail over to a live member too
    status, r = nodes[2].api("PUT", "/api/v1/ratio", {"blue": 100, "green": 0})
    assert status == 200, r
    wait_weights(nodes, blue=100, green=0)


def test_all_etcd_members_killed_nodes_serve_refuse_changes_then_converge_when_back(
        etcd_cluster, backends, td):
    c = etcd_cluster(3)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, [c.endpoints] * 3)
    wait_initialised(nodes, init_cluster(nodes[0]))
    for i in range(3):
        c.kill(i)
    for t in nodes:
        wait_for(lambda t=t: readyz(t)[0] == 503, 20 * SLOW, what=f"/readyz 503 on {t.admin}")
        assert "cluster store" in readyz(t)[1].get("reason", ""), readyz(t)
        assert cluster_of(t).get("reachable") is False
        assert routes_to(t, "blue"), "a node cut off from etcd keeps serving its last state"
        status, r = t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 503, r
        assert "cluster store unreachable" in r["error"], r
        assert weights_of(t) == {"blue": 100, "green": 0}
    # every member back: they find their quorum again, the nodes reconnect and take changes
    for i in range(3):
        c._spawn(i)
    for i in range(3):
        c.wait_healthy(i)
    for t in nodes:
        wait_for(lambda t=t: readyz(t)[0] == 200, 30 * SLOW, what=f"/readyz 200 on {t.admin}")
    status, r = nodes[1].api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
    assert status == 200, r
    wait_weights(nodes, blue=0, green=100)
    for t in nodes:
        assert routes_to(t, "green")


def test_node_cut_off_from_etcd_serves_its_last_state_and_catches_up_when_restored(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    port = int(c.endpoints[0].rsplit(":", 1)[1])
    relay = TcpRelay("127.0.0.1", port)
    try:
        b = backends(("blue", 1), ("green", 1))
        nodes = start_nodes(td, b, [c.endpoints, c.endpoints,
                                    [f"http://127.0.0.1:{relay.port}"]])
        a, cut = nodes[0], nodes[2]
        wait_initialised(nodes, init_cluster(a))
        relay.cut()
        wait_for(lambda: readyz(cut)[0] == 503, 20 * SLOW, what="/readyz 503 on the cut-off node")
        assert cluster_of(cut).get("reachable") is False
        status, r = cut.api("GET", "/api/v1/cluster")
        assert status == 200, r
        assert r["store"]["reachable"] is False and r["store"].get("error"), r
        # a change made elsewhere meanwhile: the others route by it, the cut-off node by its last
        status, r = a.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 100})
        assert status == 200, r
        wait_weights(nodes[:2], blue=0, green=100)
        assert routes_to(cut, "blue")
        assert weights_of(cut) == {"blue": 100, "green": 0}
        status, r = cut.api("PUT", "/api/v1/ratio", {"blue": 50, "green": 50})
        assert status == 503, r
        relay.restore()
        wait_weights([cut], 20, blue=0, green=100)
        wait_for(lambda: readyz(cut)[0] == 200, 20 * SLOW, what="/readyz 200 once caught up")
        assert routes_to(cut, "green")
        assert cluster_of(cut).get("reachable") is True
        assert cluster_of(cut)["applied_revision"] == cluster_of(a)["applied_revision"]
    finally:
        relay.stop()
