"""td and systemd's notify protocol (Type=notify): the test is the service manager. It binds the
AF_UNIX datagram socket that $NOTIFY_SOCKET names, starts td with it and reads what td says:
READY=1 once it listens, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 when a stop
begins, and STATUS= lines naming the config version and the weights."""
import os
import shutil
import signal
import socket
import tempfile
import time

import pytest

from conftest import ASAN, backend_cfg, reload_config


@pytest.fixture
def notify_socket():
    """A bound AF_UNIX SOCK_DGRAM socket (as systemd's) in a short temporary folder (a socket
    path has at most 107 bytes); yields (socket, path)."""
    d = tempfile.mkdtemp(prefix="td-notify-")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        yield s, path
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


def messages_until(s, key, timeout=10.0 * (3 if ASAN else 1)):
    """Reads datagrams until one has the line `key` (e.g. "READY=1"); returns every message read,
    each as its list of KEY=VALUE lines. Fails when none comes within timeout seconds."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {key} from td within {timeout} s; got {got}")
        s.settimeout(left)
        try:
            msg = s.recv(4096).decode().split("\n")
        except socket.timeout:
            continue
        got.append(msg)
        if key in msg:
            return got


def status_of(msgs):
    """The last STATUS= value among msgs."""
    lines = [ln for m in msgs for ln in m if ln.startswith("STATUS=")]
    assert lines, msgs
    return lines[-1][len("STATUS="):]


def start_with_notify(td, monkeypatch, path, cfg):
    """td started with NOTIFY_SOCKET=path in its environment only (not in the test's after)."""
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        return td(cfg)
    finally:
        monkeypatch.delenv("NOTIFY_SOCKET")


def test_sd_notify_ready_then_reloading_ready_around_sighup_then_stopping(
        backends, td, monkeypatch, notify_socket):
    s, path = notify_socket
    b = backends(("blue", 1), ("green", 1))
    t = start_with_notify(td, monkeypatch, path, backend_cfg(
        {"blue": (90, b.ports["blue"]), "green": (10, b.ports["green"])}))

    first = messages_until(s, "READY=1")
    assert not any("RELOADING=1" in m or "STOPPING=1" in m for m in first), first
    assert status_of(first) == "serving; config version 1; blue 90 / green 10"

    def edit(cfg):
        cfg["backends"][0]["weight"] = 50
        cfg["backends"][1]["weight"] = 50
    version = reload_config(t, edit)["version"]
    around = messages_until(s, "READY=1")
    keys = [ln for m in around for ln in m if ln in ("RELOADING=1", "READY=1")]
    assert keys == ["RELOADING=1", "READY=1"], around
    reloading = next(m for m in around if "RELOADING=1" in m)
    assert any(ln.startswith("MONOTONIC_USEC=") for ln in reloading), reloading
    assert status_of(around) == f"serving; config version {version}; blue 50 / green 50"

    assert t.stop() == 0
    last = messages_until(s, "STOPPING=1")
    assert not any("READY=1" in m for m in last), last
    assert status_of(last).startswith("stopping: draining in-flight requests")


def test_sd_notify_ready_again_after_a_rejected_reload_keeping_the_running_version(
        backends, td, monkeypatch, notify_socket):
    s, path = notify_socket
    b = backends(("blue", 1))
    t = start_with_notify(td, monkeypatch, path, backend_cfg({"blue": (100, b.ports["blue"])}))
    assert status_of(messages_until(s, "READY=1")) == "serving; config version 1; blue 100"

    with open(t.config_path, "w") as f:
        f.write('{"backends": [}\n')
    t.proc.p.send_signal(signal.SIGHUP)
    around = messages_until(s, "READY=1")
    assert ["RELOADING=1" in m for m in around][0], around
    assert status_of(around) == "serving; config version 1; blue 100"
    assert t.state()["version"] == 1


def test_sd_notify_status_follows_a_ratio_changed_through_the_api(
        backends, td, monkeypatch, notify_socket):
    s, path = notify_socket
    b = backends(("blue", 1), ("green", 1))
    t = start_with_notify(td, monkeypatch, path, backend_cfg(
        {"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    messages_until(s, "READY=1")
    version = t.set_ratio(blue=0, green=100)["version"]
    want = f"STATUS=serving; config version {version}; blue 0 / green 100"
    assert status_of(messages_until(s, want)) == want[len("STATUS="):]


def test_sd_notify_stopping_first_for_the_grace_period_then_for_the_drain(
        backends, td, monkeypatch, notify_socket):
    s, path = notify_socket
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["stop_grace_ms"] = 300
    t = start_with_notify(td, monkeypatch, path, cfg)
    messages_until(s, "READY=1")
    t.proc.p.send_signal(signal.SIGTERM)
    grace = messages_until(s, "STOPPING=1")
    assert status_of(grace).startswith("stopping: /readyz answers 503"), grace
    # A change through the API in the grace period says nothing over the stop's line.
    t.set_ratio(blue=50)
    drain = messages_until(s, "STOPPING=1")
    assert [status_of([m]) for m in drain] == [
        "stopping: draining in-flight requests (up to 5000 ms)"], drain
    assert t.stop() == 0
