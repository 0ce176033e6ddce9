"""End-to-end tests of the web console in cluster mode (console/index.html): Debian's headless
Chromium, driven by tests/console/cluster.mjs, reads the nodes panel of a node of a two-node
cluster on one etcd, then sees the banner once etcd is killed; a td without "cluster" shows no
panel at all.

Needs /usr/bin/chromium, node and `npm ci` at the repo root, and etcd (scripts/deps.sh test)."""
import json
import os

import pytest

from cluster_nodes import TOKEN, init_cluster, start_nodes, wait_initialised
from conftest import ETCD, backend_cfg, needs_console, run_console

pytestmark = [needs_console, pytest.mark.skipif(not os.access(ETCD, os.X_OK),
                                                reason="needs etcd (scripts/deps.sh test)")]


def test_console_lists_the_nodes_and_shows_the_banner_when_the_store_is_unreachable(
        etcd_cluster, backends, td):
    c = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    nodes = start_nodes(td, b, [c.endpoints, c.endpoints])
    wait_initialised(nodes, init_cluster(nodes[0]))
    seen = run_console("cluster.mjs", url=nodes[0].admin + "/", token=TOKEN,
                       nodes=["td-a", "td-b"], etcd_pid=c.procs[0].pid)
    print(json.dumps(seen, indent=1))
    rows = {r["node"]: r for r in seen["panel"]}
    assert set(rows) == {"td-a", "td-b"}
    assert rows["td-a"]["self"] and not rows["td-b"]["self"]
    assert rows["td-a"]["cells"][1] == nodes[0].admin
    assert rows["td-b"]["cells"][4] == "ready"
    assert seen["leader"] in ("Leader: td-a", "Leader: td-b"), seen["leader"]
    assert seen["banner"].startswith("cluster store unreachable since ")
    assert "this node serves its last state; changes are refused" in seen["banner"]


def test_console_shows_no_cluster_panel_on_a_single_node(backends, td):
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}))
    seen = run_console("cluster.mjs", url=t.admin + "/", single=True)
    assert seen == {"panel": False, "store_banner": False, "init_banner": False}
