"""td nodes in cluster mode for the e2e tests: configs naming etcd endpoints, the seeding of the
prefix, and polls of what each node applied and routes. Used by test_cluster_failures.py and
test_cluster_console.py; the etcd members and the TCP relay are conftest's."""
import json
import urllib.request

from conftest import ASAN, Td, backend_cfg, get, wait_for

SLOW = 3 if ASAN else 1
TOKEN = "cluster-shared-token"  # every node of a cluster has the same admin token
PREFIX = "/td/e2e/"


def node_cfg(b, etcd, node, blue=100, green=0, lease_s=2):
    """td in front of demo backends `b` (blue and green) in cluster mode on etcd endpoints `etcd`
    (a list of URLs), as node `node`."""
    cfg = backend_cfg({"blue": (blue, b.ports["blue"]), "green": (green, b.ports["green"])})
    cfg["cluster"] = {"etcd": list(etcd), "prefix": PREFIX, "node": node, "lease_s": lease_s}
    return cfg


def start_nodes(td, b, endpoints_per_node, lease_s=2):
    """One td per entry of endpoints_per_node (each a list of etcd URLs), named td-a, td-b, ...;
    returns them once each answers its admin API."""
    nodes = []
    for i, eps in enumerate(endpoints_per_node):
        nodes.append(td(node_cfg(b, eps, "td-" + "abcdefghij"[i], lease_s=lease_s), token=TOKEN))
    return nodes


def init_cluster(t):
    """POST /api/v1/cluster/init on node t with its own config file: the shared state becomes
    blue=100 green=0. Returns the revision."""
    with open(t.config_path) as f:
        doc = json.load(f)
    # a node just started may still be connecting to etcd
    wait_for(lambda: cluster_of(t).get("reachable"), 15 * SLOW, what=f"etcd reached by {t.admin}")
    status, r = t.api("POST", "/api/v1/cluster/init", doc)
    assert status == 200, r
    return r["revision"]


def cluster_of(t):
    """The "cluster" summary in t's state."""
    return t.state().get("cluster") or {}


def weights_of(t):
    return {b["name"]: b["weight"] for b in t.state()["backends"]}


def wait_weights(nodes, timeout=15, **weights):
    """Polls every node until its state has these weights."""
    for t in nodes:
        wait_for(lambda t=t: all(weights_of(t).get(k) == v for k, v in weights.items()),
                 timeout * SLOW, what=f"{weights} on {t.admin}")


def wait_initialised(nodes, revision, timeout=15):
    """Polls every node until it applied the cluster's document at `revision` or later."""
    for t in nodes:
        wait_for(lambda t=t: cluster_of(t).get("initialised")
                 and cluster_of(t).get("applied_revision", 0) >= revision,
                 timeout * SLOW, what=f"revision {revision} applied on {t.admin}")


def readyz(t):
    """(status, body) of GET /readyz on t's admin port (no token)."""
    try:
        with urllib.request.urlopen(t.admin + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def routes_to(t, colour, n=6):
    """n requests through t's listener all answered 200 by `colour`."""
    return all(get(t.port) == (200, colour) for _ in range(n))


__all__ = ["SLOW", "TOKEN", "PREFIX", "Td", "node_cfg", "start_nodes", "init_cluster",
           "cluster_of", "weights_of", "wait_weights", "wait_initialised", "readyz", "routes_to"]
