"""End-to-end tests of three small fixes: a port whose only socket is an outgoing connection in
TIME-WAIT can be listened on, the protocol of an h2 backend in `tdctl status` and the console, and
the order of `tdctl switch`'s last lines."""
import json
import os
import socket
import subprocess
import tempfile

from conftest import (TD, backend_cfg, free_port, get, needs_console, run_console, start_td_file,
                      tdctl, wait_for)


def time_wait_on_own_port():
    """A port P whose only socket is the client side of a closed connection in TIME-WAIT: a socket
    bound to P (with SO_REUSEPORT, as an outgoing connection of a process sharing its ports makes
    it) connects to a listener of ours and closes first."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    c.bind(("127.0.0.1", 0))
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    port = c.getsockname()[1]
    c.close()
    a.settimeout(10)
    assert a.recv(1) == b""  # the client's FIN arrived: the client side goes to TIME-WAIT
    a.close()
    srv.close()
    return port


def time_wait_entries(port):
    """Lines of /proc/net/tcp with local port `port` in TIME-WAIT (state 06)."""
    with open("/proc/net/tcp") as f:
        return [ln for ln in f.read().splitlines()[1:]
                if ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "06"]


def test_a_port_held_only_by_an_outgoing_connection_in_time_wait_can_be_listened_on(backends, td):
    port = time_wait_on_own_port()
    wait_for(lambda: time_wait_entries(port), 10, interval=0.05, what="the TIME-WAIT on the port")
    b = backends(("blue", 1))
    admin_port = free_port()
    cfg = backend_cfg({"blue": (100, b.ports["blue"])},
                      listeners=[{"address": f"127.0.0.1:{port}"}],
                      admin={"address": f"127.0.0.1:{admin_port}"})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "td.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        p = start_td_file(path, port, admin_port)
        try:
            assert get(port) == (200, "blue")
        finally:
            assert p.stop() == 0, p.output()


def h2_green(backends, td):
    """td over demo backends blue (HTTP/1.1) and green with "protocol": "h2"."""
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])})
    cfg["backends"][1]["protocol"] = "h2"
    return td(cfg)


def test_tdctl_status_names_the_h2_protocol_of_a_backend(backends, td):
    t = h2_green(backends, td)
    r = tdctl(t, "status")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()
            if ln.split()[:1] in (["blue"], ["green"])}
    assert rows["green"].startswith("green h2 "), r.stdout
    assert "h2" not in rows["blue"].split() and "http/1.1" not in rows["blue"], r.stdout


@needs_console
def test_console_tags_the_card_of_an_h2_backend_with_its_protocol(backends, td):
    t = h2_green(backends, td)
    seen = run_console("protocol.test.mjs", url=t.admin + "/", backends=["blue", "green"])
    assert seen == {"blue": {"hidden": True, "text": ""}, "green": {"hidden": False, "text": "h2"}}


def test_switch_prints_the_last_step_passed_before_the_rollout_succeeded(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])}))
    r = tdctl(t, "switch", "green", "--steps", "50,100", "--step-time", "1s", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    ids = [i for i, ln in enumerate(lines) if ln.startswith("step 2/2 (green 100%) passed: ")]
    ends = [i for i, ln in enumerate(lines) if ln.startswith("rollout ") and ": succeeded" in ln]
    done = [i for i, ln in enumerate(lines) if ln.startswith("switched to green: ")]
    assert len(ids) == 1 and len(ends) == 1 and len(done) == 1, r.stdout
    assert ids[0] < ends[0] < done[0], r.stdout


def test_a_dual_stack_listener_on_the_port_still_makes_an_ipv4_address_taken(backends):
    """Only listeners count now, found in the kernel's tables: one on [::] (which takes IPv4
    connections too) with SO_REUSEPORT would otherwise share the port with td silently."""
    other = socket.socket(socket.AF_INET6)
    try:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("::", 0))
        other.listen()
        port = other.getsockname()[1]
        b = backends(("blue", 1))
        cfg = backend_cfg({"blue": (100, b.ports["blue"])},
                          listeners=[{"address": f"127.0.0.1:{port}"}],
                          admin={"address": f"127.0.0.1:{free_port()}"})
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "td.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            p = subprocess.run([TD, "-c", path], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, p.stdout + p.stderr
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in p.stderr, p.stderr
    finally:
        other.close()
