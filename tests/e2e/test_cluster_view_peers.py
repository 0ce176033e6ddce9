"""GET /api/v1/cluster reads the other nodes' admin APIs: over https it verifies the peer (against
cluster.tls.ca when set, else the system's CAs) before it sends the shared token, and a node
whose token differs is named as such."""
import json
import os
import tempfile

from cluster_nodes import PREFIX, SLOW, TOKEN, init_cluster
from conftest import Td, backend_cfg, free_port, start_td_file, wait_for
from test_admin_hardening import self_signed


class Node(Td):
    """A cluster node whose admin section is given (admin.tls, advertise): Td's helpers, with
    this node's own config."""

    def __init__(self, b, etcd, name, admin, cluster_extra=None, token=TOKEN):
        self.port = free_port()
        self.admin_port = int(admin["address"].rsplit(":", 1)[1])
        cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                          listeners=[{"address": f"127.0.0.1:{self.port}"}], workers=1)
        cfg["admin"] = dict(admin, token=token)
        cfg["cluster"] = dict({"etcd": list(etcd), "prefix": PREFIX, "node": name,
                               "lease_s": 2}, **(cluster_extra or {}))
        self.token = token
        self.dir = tempfile.mkdtemp(prefix="td-e2e-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = start_td_file(self.config_path, self.port, self.admin_port)


def nodes_seen(a):
    status, c = a.api("GET", "/api/v1/cluster")
    assert status == 200, c
    return {n["node"]: n for n in c["nodes"]}


def test_the_cluster_view_verifies_https_peers_and_names_a_differing_token(backends, etcd_cluster,
                                                                          tmp_path):
    e = etcd_cluster(1)
    b = backends(("blue", 1), ("green", 1))
    cert, key = self_signed(str(tmp_path))
    started = []
    try:
        a_port = free_port()
        a = Node(b, e.endpoints, "td-a", {"address": f"127.0.0.1:{a_port}"})
        started.append(a)
        init_cluster(a)
        # td-b over https with a certificate no system CA signed (its admin URL is https:// by
        # default then); td-c with another token.
        b_port = free_port()
        nb = Node(b, e.endpoints, "td-b",
                  {"address": f"127.0.0.1:{b_port}",
                   "tls": {"certificates": [{"cert": cert, "key": key}]}})
        started.append(nb)
        nc = Node(b, e.endpoints, "td-c", {"address": f"127.0.0.1:{free_port()}"},
                  token="another-token")
        started.append(nc)
        seen = wait_for(lambda: (lambda s: "td-b" in s and "td-c" in s
                                 and "reachable" in s["td-b"] and s)(nodes_seen(a)),
                        20 * SLOW, what="td-b and td-c listed by td-a")
        assert seen["td-b"]["admin_url"] == f"https://127.0.0.1:{b_port}", seen["td-b"]
        assert seen["td-b"]["reachable"] is False, seen["td-b"]
        assert "certificate" in seen["td-b"]["error"].lower(), seen["td-b"]
        assert seen["td-c"]["reachable"] is False, seen["td-c"]
        assert seen["td-c"]["error"].startswith("its admin token differs from this node's"), \
            seen["td-c"]
        # td-d trusts that certificate (cluster.tls.ca): td-b is read over https.
        d = Node(b, e.endpoints, "td-d", {"address": f"127.0.0.1:{free_port()}"},
                 {"tls": {"ca": cert}})
        started.append(d)
        wait_for(lambda: nodes_seen(d).get("td-b", {}).get("reachable") is True, 20 * SLOW,
                 what="td-b read by td-d over https")
    finally:
        for t in reversed(started):
            rc = t.stop()
            out = t.proc.output()
            assert rc == 0, out[-3000:]
            assert "AddressSanitizer" not in out and "runtime error" not in out, out[-3000:]
