"""Cluster mode's config handling: what stays each node's own (pid_file, access_log), one live
node per name, a config file that differs from the cluster's, `td -t` on the cluster settings,
and the messages of ?wait=all, the other nodes' log lines and a second init. Real td nodes on a
real etcd (conftest's etcd_cluster), nodes from cluster_nodes.py."""
import json
import os
import subprocess
import tempfile

import pytest

from cluster_nodes import (SLOW, TOKEN, cluster_of, init_cluster, node_cfg, readyz,
                           wait_initialised, wait_weights)
from conftest import ETCD, TD, get, pos, start_td_file, tdctl, wait_for

needs_etcd = pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                reason="needs etcd (scripts/deps.sh test)")


def lines_with(t, text):
    return [line for line in t.proc.output().splitlines() if text in line]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


@needs_etcd
def test_cluster_pid_file_and_access_log_stay_each_nodes_own(etcd_cluster, backends, td):
    etcd = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    dirs = {name: tempfile.mkdtemp(prefix=f"td-own-{name}-") for name in ("td-a", "td-b")}
    nodes = []
    for name in ("td-a", "td-b"):
        cfg = node_cfg(b, etcd.endpoints, name)
        cfg["pid_file"] = os.path.join(dirs[name], "td.pid")
        cfg["access_log"] = os.path.join(dirs[name], "access.log")
        nodes.append(td(cfg, token=TOKEN))
    a, bb = nodes
    wait_initialised(nodes, init_cluster(a))
    for _ in range(5):
        assert get(bb.port)[0] == 200
    b_log = os.path.join(dirs["td-b"], "access.log")
    wait_for(lambda: read(b_log).count("\n") >= 5, 10 * SLOW, what="td-b's requests in its log")
    assert read(os.path.join(dirs["td-a"], "access.log")) == ""
    assert lines_with(bb, "pid_file changed") == [], bb.proc.output()[-3000:]
    # Restarted from its cache, td-b writes its own pid file, not td-a's.
    assert bb.proc.stop() == 0  # which removes its pid file
    bb.proc = start_td_file(bb.config_path, bb.port, bb.admin_port)
    wait_for(lambda: cluster_of(bb).get("reachable"), 15 * SLOW, what="td-b back")
    assert read(os.path.join(dirs["td-b"], "td.pid")).strip() == str(bb.proc.pid)
    assert read(os.path.join(dirs["td-a"], "td.pid")).strip() == str(a.proc.pid)


@needs_etcd
def test_cluster_node_whose_name_is_taken_is_not_a_member_until_the_other_goes(
        etcd_cluster, backends, td):
    etcd = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    a = td(node_cfg(b, etcd.endpoints, "td-a"), token=TOKEN)
    wait_initialised([a], init_cluster(a))
    wait_for(lambda: readyz(a)[0] == 200, 15 * SLOW, what="td-a ready")
    twin = td(node_cfg(b, etcd.endpoints, "td-a"), token=TOKEN)
    said = f"node name td-a is taken by {a.admin}: give this node a name of its own (cluster.node)"
    wait_for(lambda: cluster_of(twin).get("error") == said, 15 * SLOW, what="the twin's error")
    status, body = readyz(twin)
    assert status == 503 and said in json.dumps(body), body
    # The first keeps its key: it is the one listed, and ?wait=all waits for it.
    status, view = a.api("GET", "/api/v1/cluster")
    assert status == 200, view
    assert [(n["node"], n["admin_url"]) for n in view["nodes"]] == [("td-a", a.admin)], view
    status, r = a.api("PUT", "/api/v1/ratio?wait=all", {"blue": 30, "green": 70})
    assert status == 200, r
    wait_weights([twin], blue=30, green=70)  # the twin serves the cluster's state
    status, r = twin.api("PUT", "/api/v1/ratio", {"blue": 40, "green": 60})
    assert status == 409 and said in r["error"], r
    p = tdctl(twin, "--token", TOKEN, "cluster")
    assert p.returncode == 0 and f"NOT A MEMBER: {said}\n" in p.stdout, p.stdout
    # Said once, though it tries again each lease period.
    wait_for(lambda: len(lines_with(twin, "cluster: node name td-a is taken")) == 1
             and "cluster.node" in twin.proc.output(), 5 * SLOW)
    # When the first goes, the twin joins.
    assert a.stop() == 0
    wait_for(lambda: readyz(twin)[0] == 200, 20 * SLOW, what="the twin joining")
    assert "error" not in cluster_of(twin)
    status, view = twin.api("GET", "/api/v1/cluster")
    assert [(n["node"], n["admin_url"]) for n in view["nodes"]] == [("td-a", twin.admin)], view
    assert len(lines_with(twin, "cluster: node name td-a is taken")) == 1, twin.proc.output()


@needs_etcd
def test_cluster_node_whose_file_differs_from_the_clusters_says_so_once(
        etcd_cluster, backends, td):
    etcd = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    a = td(node_cfg(b, etcd.endpoints, "td-a"), token=TOKEN)
    wait_initialised([a], init_cluster(a))
    cfg = node_cfg(b, etcd.endpoints, "td-b")
    cfg["backends"][0]["name"], cfg["backends"][1]["name"] = "api-v1", "api-v2"
    other = td(cfg, token=TOKEN)
    said = ("cluster: the config file's backends (api-v1, api-v2) differ from the cluster's "
            "(blue, green): the cluster's run; the file's shared settings are not used in "
            "cluster mode")
    wait_for(lambda: lines_with(other, said), 15 * SLOW, what="td-b's warning")
    for w in (10, 20):
        assert a.api("PUT", "/api/v1/ratio", {"blue": w, "green": 100 - w})[0] == 200
    wait_weights([other], blue=20, green=80)
    assert len(lines_with(other, "differ from the cluster's")) == 1, other.proc.output()[-3000:]
    status, ev = other.api("GET", "/api/v1/events")
    assert status == 200 and "differ from the cluster's" in json.dumps(ev), ev
    # A node whose file agrees with the cluster's (but for the ratio) says nothing.
    assert lines_with(a, "differ from the cluster's") == []


@needs_etcd
def test_cluster_other_nodes_log_what_a_change_was_and_a_second_init_says_it_once(
        etcd_cluster, backends, td):
    etcd = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    a = td(node_cfg(b, etcd.endpoints, "td-a"), token=TOKEN)
    other = td(node_cfg(b, etcd.endpoints, "td-b"), token=TOKEN)
    wait_initialised([a, other], init_cluster(a))
    status, r = a.api("PUT", "/api/v1/ratio", {"blue": 60, "green": 40})
    assert status == 200, r
    wait_for(lambda: lines_with(other, f"(cluster revision {r['revision']} from td-a: ratio "),
             10 * SLOW, what="td-b's line")
    line = lines_with(other, f"(cluster revision {r['revision']} from td-a: ")[0]
    assert line.endswith(f"config version {other.state()['version']} applied (cluster revision "
                         f"{r['revision']} from td-a: ratio blue=60 green=40)"), line
    status, e = a.api("POST", "/api/v1/cluster/init", json.load(open(a.config_path)))
    assert status == 409, e
    assert e["error"].startswith("the cluster is already initialised (/td/e2e/config is at "
                                 "revision "), e
    assert e["error"].endswith("): change it through the API instead"), e
    p = tdctl(a, "--token", TOKEN, "cluster", "init", a.config_path)
    assert p.returncode == 1
    assert p.stderr.count("already initialised") == 1, p.stderr
    assert p.stderr.startswith("tdctl: the cluster is already initialised (/td/e2e/config is at "
                               "revision "), p.stderr
    assert p.stderr.endswith("): change it with tdctl config put or tdctl ratio instead\n")


def td_t(cluster):
    """td -t on a config with `cluster`: (returncode, stderr, path, text)."""
    d = tempfile.mkdtemp(prefix="td-cluster-t-")
    path = os.path.join(d, "td.json")
    cfg = {"listeners": [{"address": "127.0.0.1:18080"}],
           "admin": {"address": "127.0.0.1:19090", "token": TOKEN},
           "backends": [{"name": "blue", "weight": 1,
                         "servers": [{"address": "127.0.0.1:9001"}]}],
           "cluster": dict({"etcd": ["http://127.0.0.1:1"], "prefix": "/td/x/", "node": "td-a"},
                           **cluster)}
    text = json.dumps(cfg, indent=2)
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr, path, text


def at(path, text, needle):
    line, col = pos(text, needle)
    return f"{path}:{line}:{col}: "


def test_td_t_refuses_a_cluster_password_without_a_username_and_the_reverse():
    rc, err, path, text = td_t({"password": "secret"})
    assert rc == 1
    assert (at(path, text, '"password"') + "cluster.password: cluster.password without "
            "cluster.username") in err, err
    rc, err, path, text = td_t({"username": "td"})
    assert rc == 1
    assert (at(path, text, '"username"') + "cluster.username: cluster.username without "
            "cluster.password") in err, err
    rc, err, _, _ = td_t({"username": "td", "password": "secret"})
    assert rc == 0, err


def test_td_t_refuses_cluster_tls_files_that_do_not_load():
    rc, err, path, text = td_t({"tls": {"ca": "/nonexistent.pem"}})
    assert rc == 1
    assert (at(path, text, '"/nonexistent.pem"') + "cluster.tls.ca: /nonexistent.pem: cannot "
            "read: No such file or directory") in err, err
    rc, err, path, text = td_t({"tls": {"cert": "/nonexistent-cert.pem"}})
    assert rc == 1
    assert (at(path, text, '"cert"') + "cluster.tls.cert: a client certificate needs both cert "
            "and key: set key too") in err, err
    rc, err, path, text = td_t({"tls": {"cert": "/nonexistent-cert.pem", "key": "/nokey.pem"}})
    assert rc == 1
    assert (at(path, text, '"/nonexistent-cert.pem"') + "cluster.tls.cert: "
            "/nonexistent-cert.pem: cannot read") in err, err


def test_td_t_refuses_the_whole_etcd_keyspace_as_prefix():
    rc, err, path, text = td_t({"prefix": "/"})
    assert rc == 1
    assert (at(path, text, '"/",') + 'cluster.prefix: "/" would be the whole etcd keyspace: give '
            'td a prefix of its own, e.g. "/td/shop/"') in err, err
