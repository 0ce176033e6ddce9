"""What tdctl prints about a cluster: a second init refused in one sentence, the history's NODE
column, and the revision line of tdctl cluster in agreement with its table."""
import re

from cluster_nodes import TOKEN, start_nodes, wait_initialised, wait_weights
from conftest import tdctl


def initialised_pair(etcd_cluster, backends, td):
    """Two nodes on one etcd, the cluster seeded through the first."""
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, [c.endpoints] * 2)
    r = tdctl(nodes[0], "--token", TOKEN, "cluster", "init", nodes[0].config_path)
    assert r.returncode == 0, r.stderr
    wait_initialised(nodes, int(r.stdout.split("revision ")[1].split()[0]))
    return nodes


def test_tdctl_cluster_init_on_an_initialised_cluster_says_so_once(etcd_cluster, backends, td):
    a, _ = initialised_pair(etcd_cluster, backends, td)
    r = tdctl(a, "--token", TOKEN, "cluster", "init", a.config_path)
    assert r.returncode == 1
    assert r.stderr.count("already initialised") == 1, r.stderr
    assert r.stderr.count("change it") == 1, r.stderr
    assert "tdctl config put or tdctl ratio" in r.stderr, r.stderr


def test_tdctl_history_in_cluster_mode_names_the_node_of_each_change(etcd_cluster, backends,
                                                                     td):
    nodes = initialised_pair(etcd_cluster, backends, td)
    r = tdctl(nodes[1], "--token", TOKEN, "ratio", "blue=0", "green=100")
    assert r.returncode == 0, r.stderr
    wait_weights(nodes, blue=0, green=100)
    r = tdctl(nodes[0], "--token", TOKEN, "history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "NODE", "CLIENT"], lines
    assert any(line.split()[1] == "td-b" and "blue" in line for line in lines[1:]), lines


def test_tdctl_cluster_revision_line_agrees_with_the_applied_column(etcd_cluster, backends, td):
    a, _ = initialised_pair(etcd_cluster, backends, td)
    r = tdctl(a, "--token", TOKEN, "cluster")
    assert r.returncode == 0, r.stderr
    m = re.search(r"^revision (\d+) applied here", r.stdout, re.M)
    assert m, r.stdout
    own = next(line for line in r.stdout.splitlines() if line.startswith("td-a *"))
    # NODE (with its "*" and "(leader)" marks), then ADMIN, then APPLIED
    cols = own.split()
    assert cols[[i for i, c in enumerate(cols) if c.startswith("http")][0] + 1] == m.group(1), \
        r.stdout
