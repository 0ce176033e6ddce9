"""tdctl's cluster commands (tdctl cluster, cluster init FILE, cluster rotate-key), the cluster line
of tdctl status and ratio --wait-all, against real td nodes on a real etcd, and against a td that
runs alone."""
import json
import os
import signal
import subprocess

import pytest

from cluster_nodes import (TOKEN, cluster_of, init_cluster, start_nodes, wait_initialised,
                           wait_weights)
from conftest import ETCD, TDCTL, TDCTL_ENV, backend_cfg, tdctl

needs_etcd = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")


def test_cluster_manual_page_and_usage_errors_exit_2():
    r = subprocess.run([TDCTL, "cluster", "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "tdctl cluster - " in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    for args in (["cluster", "frobnicate"], ["cluster", "init"], ["cluster", "init", "a", "b"],
                 ["cluster", "rotate-key", "now"], ["cluster", "--wait-all"]):
        r = subprocess.run([TDCTL, "--admin", "http://127.0.0.1:9", *args], capture_output=True,
                           text=True, timeout=10, env=TDCTL_ENV)
        assert r.returncode == 2 and r.stderr.startswith("tdctl: "), (args, r.stderr)


def test_cluster_on_a_td_that_runs_alone_is_refused_and_status_has_no_cluster_line(
        backends, td):
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}))
    r = tdctl(t, "cluster")
    assert r.returncode == 1 and "not in cluster mode" in r.stderr, r.stderr
    r = tdctl(t, "status")
    assert r.returncode == 0 and "cluster:" not in r.stdout and r.stderr == ""


@needs_etcd
def test_cluster_init_lists_nodes_and_refuses_a_second_init(etcd_cluster, backends, td):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, [c.endpoints] * 3)
    a = nodes[0]
    # before init: the status line says so
    r = tdctl(a, "--token", TOKEN, "status")
    assert r.returncode == 0 and "cluster: td-a" in r.stdout and "not initialised" in r.stdout
    r = tdctl(a, "--token", TOKEN, "cluster", "init", a.config_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cluster initialised: revision ")
    revision = int(r.stdout.split("revision ")[1].split()[0])
    wait_initialised(nodes, revision)
    r = tdctl(a, "--token", TOKEN, "cluster", "init", a.config_path)
    assert r.returncode == 1 and "already initialised" in r.stderr, r.stderr
    r = tdctl(a, "--token", TOKEN, "cluster")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    for col in ("ADMIN", "APPLIED", "LAG", "READY", "REQUESTS"):
        assert col in lines[head]
    rows = {line.split()[0]: line for line in lines[head + 1:head + 4]}
    assert set(rows) == {"td-a", "td-b", "td-c"}, lines
    assert rows["td-a"].split()[1] == "*" and "*" not in rows["td-b"]
    assert all("yes" in row for row in rows.values())
    assert "store: reachable at " + c.endpoints[0] in r.stdout
    r = tdctl(a, "--token", TOKEN, "--json", "cluster")
    view = json.loads(r.stdout)
    assert {n["node"]: n["self"] for n in view["nodes"]} == {"td-a": True, "td-b": False,
                                                              "td-c": False}
    assert all(n["reachable"] and n["ready"] for n in view["nodes"]), view
    assert all(set(n["backends"]) == {"blue", "green"} for n in view["nodes"]), view
    r = tdctl(a, "--token", TOKEN, "status")
    assert "cluster: td-a of 3 nodes, revision " in r.stdout and "store reachable" in r.stdout
    # ratio --wait-all answers once every node applied it
    r = tdctl(nodes[1], "--token", TOKEN, "ratio", "blue=0", "green=100", "--wait-all")
    assert r.returncode == 0, r.stderr
    wait_weights(nodes, 1, blue=0, green=100)
    r = tdctl(a, "--token", TOKEN, "cluster", "rotate-key")
    assert r.returncode == 0 and r.stdout.startswith("sticky key rotated: revision "), r.stderr
    assert cluster_of(a)["initialised"] is True


@needs_etcd
def test_cluster_view_lists_a_node_whose_admin_api_does_not_answer_as_unreachable(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    # a long lease: td-b stays listed in etcd while it is stopped
    nodes = start_nodes(td, b, [c.endpoints] * 2, lease_s=30)
    wait_initialised(nodes, init_cluster(nodes[0]))
    nodes[1].proc.p.send_signal(signal.SIGSTOP)  # alive in etcd, deaf on its admin port
    try:
        status, view = nodes[0].api("GET", "/api/v1/cluster")
        assert status == 200, view
        byname = {n["node"]: n for n in view["nodes"]}
        assert byname["td-a"]["reachable"] is True and byname["td-a"]["self"] is True
        assert byname["td-b"]["reachable"] is False and byname["td-b"]["error"], byname["td-b"]
        r = tdctl(nodes[0], "--token", TOKEN, "cluster")
        assert r.returncode == 0 and "unreachable: td-b at " + nodes[1].admin in r.stdout
    finally:
        nodes[1].proc.p.send_signal(signal.SIGCONT)


def test_cluster_view_of_a_node_that_never_reached_etcd_lists_no_node_and_the_store_error(
        backends, td):
    b = backends(("blue", 1), ("green", 1))
    # port 9 (discard): nothing listens there on 127.0.0.1
    t = start_nodes(td, b, [["http://127.0.0.1:9"]])[0]
    status, view = t.api("GET", "/api/v1/cluster")
    assert status == 200, view
    assert view["nodes"] == [] and view["store"]["reachable"] is False, view
    r = tdctl(t, "--token", TOKEN, "cluster")
    assert r.returncode == 0 and "store: UNREACHABLE since " in r.stdout, r.stdout
    r = tdctl(t, "--token", TOKEN, "status")
    assert r.returncode == 0 and "cluster: td-a, revision " in r.stdout
    assert "store UNREACHABLE" in r.stdout and "cannot reach the cluster store" in r.stderr
