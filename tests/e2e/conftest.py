"""Shared fixtures for td's end-to-end tests: real td processes, real demo backends, real sockets
on 127.0.0.1. Every process is started by a fixture and stopped when the test ends."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

TD = os.environ.get("TD_BIN", os.path.join(os.path.dirname(__file__), "../../build/td"))
TDCTL = os.environ.get("TDCTL_BIN", os.path.join(os.path.dirname(__file__), "../../build/tdctl"))
ASAN = os.environ.get("TD_ASAN") == "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Proc:
    """A child process whose stderr goes to a file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, args, name):
        self.log = tempfile.NamedTemporaryFile(prefix=f"td-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.name = name

    @property
    def pid(self):
        return self.p.pid

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


class Backends:
    """Demo backends (td backend NAME=ADDR ...) in one process."""

    def __init__(self, specs):
        self.ports = {}
        args = [TD, "backend"]
        for name, n in specs:
            for i in range(n):
                port = free_port()
                self.ports.setdefault(name, []).append(port)
                args.append(f"{name}=127.0.0.1:{port}")
        self.proc = Proc(args, "backends")
        for ports in self.ports.values():
            for p in ports:
                wait_port(p)

    def stop(self):
        self.proc.stop()


class Td:
    """A td process started from a config dict; knows its ports and speaks its admin API."""

    def __init__(self, cfg, token=None):
        self.port = free_port()
        self.admin_port = free_port()
        cfg = json.loads(json.dumps(cfg))
        cfg.setdefault("listeners", [{"address": f"127.0.0.1:{self.port}"}])
        cfg.setdefault("workers", 2)
        cfg.setdefault("admin", {"address": f"127.0.0.1:{self.admin_port}"})
        if token:
            cfg["admin"]["token"] = token
        self.token = token
        self.dir = tempfile.mkdtemp(prefix="td-e2e-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        wait_port(self.port)
        wait_port(self.admin_port)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def api(self, method, path, body=None, token=None, raw=None):
        """Returns (status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        tok = token if token is not None else self.token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            status = e.code
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def state(self):
        status, s = self.api("GET", "/api/v1/state")
        assert status == 200, s
        return s

    def set_ratio(self, **weights):
        status, s = self.api("PUT", "/api/v1/ratio", weights)
        assert status == 200, s
        return s

    def stop(self, sig=signal.SIGTERM):
        return self.proc.stop(sig)


def backend_cfg(backends, method="round_robin", **extra):
    """Config for Backends: {"blue": (weight, [ports])...}."""
    cfg = {
        "routing": {"method": method, "cookie": {"name": "TDSTICKY", "max_age_s": 3600}},
        "backends": [
            {"name": name, "weight": w,
             "servers": [{"address": f"127.0.0.1:{p}", "weight": 1} for p in ports]}
            for name, (w, ports) in backends.items()
        ],
        "timeouts": {"connect_ms": 2000, "client_header_ms": 5000,
                     "upstream_response_ms": 10000, "keepalive_idle_ms": 30000, "drain_ms": 5000},
    }
    cfg.update(extra)
    return cfg


def which_backend(resp_headers):
    return resp_headers.get("X-TD-Demo-Backend")


@pytest.fixture
def backends():
    started = []

    def start(*specs):
        b = Backends(specs)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def td():
    started = []

    def start(cfg, token=None):
        t = Td(cfg, token)
        started.append(t)
        return t

    yield start
    for t in started:
        rc = t.stop()
        out = t.proc.output()
        # A clean stop exits 0; under ASan a memory error makes it fail here.
        assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]
