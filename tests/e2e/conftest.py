"""Shared fixtures for td's end-to-end tests: real td processes, real demo backends, real sockets
on 127.0.0.1. Every process is started by a fixture and stopped when the test ends."""
import collections
import http.client
import json
import os
import shutil
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


_recent_ports = collections.deque(maxlen=256)


def free_port():
    """A port free now, and not one this process handed out lately: the kernel may give the same
    ephemeral port to two binds in a row, and a td whose listener and admin address came out equal
    would refuse to start."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _recent_ports:
            _recent_ports.append(port)
            return port


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

    def __init__(self, specs, ports=None):
        """specs: (name, count) pairs; ports (optional): {name: [port, ...]} to listen on given
        ports (e.g. to bring a stopped backend back on its old port) instead of free ones."""
        self.ports = {}
        args = [TD, "backend"]
        for name, n in specs:
            for i in range(n):
                port = ports[name][i] if ports and name in ports else free_port()
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


def one_backend(backends, td, **extra):
    """td in front of one demo backend "blue" (weight 100); extra goes into backend_cfg()."""
    b = backends(("blue", 1))
    return td(backend_cfg({"blue": (100, b.ports["blue"])}, **extra))


# tdctl's environment in the tests: no proxy for 127.0.0.1, and no TD_TOKEN / TD_ADMIN of the
# shell running them (each call names its td with --admin).
TDCTL_ENV = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
TDCTL_ENV.pop("TD_TOKEN", None)
TDCTL_ENV.pop("TD_ADMIN", None)


def tdctl(t, *args, timeout=60):
    """Runs tdctl against td `t` (its admin URL); returns the CompletedProcess (returncode,
    stdout, stderr), printed for the test's output. `timeout` (s) is tripled under ASan."""
    r = subprocess.run([TDCTL, "--admin", t.admin, *args], capture_output=True, text=True,
                       timeout=timeout * (3 if ASAN else 1), env=TDCTL_ENV)
    print(f"$ tdctl {' '.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def get_once(port, path="/", headers=None):
    """One GET on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def sticky_cookie(headers, name="TDSTICKY"):
    """The value of the Set-Cookie for `name` in response headers, or None."""
    for v in headers.get_all("Set-Cookie") or []:
        k, _, rest = v.partition("=")
        if k.strip() == name:
            return rest.split(";", 1)[0].strip()
    return None


def get(port, path="/"):
    """One GET on a fresh connection: (status, X-TD-Demo-Backend)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status, r.headers.get("X-TD-Demo-Backend")
    finally:
        c.close()


@pytest.fixture
def backends():
    started = []

    def start(*specs, ports=None):
        b = Backends(specs, ports)
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
        stop_checked(t)


def stop_checked(t):
    """Stops td `t`: a clean stop exits 0; under ASan a memory error makes it fail here."""
    rc = t.stop()
    out = t.proc.output()
    assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


# ---------------------------------------------------------------------------------------------
# Helpers for raw-socket HTTP tests (test_http.py, test_streaming.py).

RSS_SCALE = 3 if ASAN else 1  # ASan's shadow memory and quarantine inflate RSS


class RawConn:
    """A client socket to 127.0.0.1:port that sends bytes as given and parses responses itself,
    so framing mistakes of the proxy (a stray body, a missing byte) show up."""

    def __init__(self, port, timeout=10.0, rcvbuf=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        if self.eof:
            raise EOFError("connection closed by peer")
        data = self.s.recv(65536)
        if not data:
            self.eof = True
            raise EOFError("connection closed by peer")
        self.buf += data

    def read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self):
        try:
            while True:
                self._fill()
        except EOFError:
            pass
        out, self.buf = self.buf, b""
        return out

    def read_head(self):
        """Returns (version, status, [(name, value)...])."""
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")[:-2]
        version, status = lines[0].split(" ", 2)[:2]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return version, int(status), headers

    def read_response(self, head_request=False, skip_1xx=True):
        """Returns (status, headers, body) with the body framed per RFC 9112 §6.3."""
        while True:
            version, status, headers = self.read_head()
            if not (skip_1xx and 100 <= status < 200 and status != 101):
                break
        h = Headers(headers)
        if head_request or 100 <= status < 200 or status in (204, 304):
            return status, h, b""
        te = h.get("Transfer-Encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            body = b""
            while True:
                line = self.read_until(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return status, h, body
                body += self.read_exact(size)
                assert self.read_exact(2) == b"\r\n"
        cl = h.get("Content-Length")
        if cl is not None:
            return status, h, self.read_exact(int(cl))
        return status, h, self.read_to_eof()

    def closed_by_peer(self, timeout=5.0):
        """True when the peer closes (EOF or reset) with no further bytes within timeout."""
        if self.buf:
            return False
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class Headers:
    """Response header list with case-insensitive lookup."""

    def __init__(self, items):
        self.items = items

    def get(self, name, default=None):
        vals = self.get_all(name)
        return vals[0] if vals else default

    def get_all(self, name):
        return [v for n, v in self.items if n.lower() == name.lower()]

    def __contains__(self, name):
        return bool(self.get_all(name))


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; .max_kb, .start_kb."""

    def __init__(self, pid, interval=0.01):
        import threading
        self.pid = pid
        self.interval = interval
        self.start_kb = rss_kb(pid)
        self.max_kb = self.start_kb
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.max_kb = max(self.max_kb, rss_kb(self.pid))
            except OSError:
                return
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join()
        self.max_kb = max(self.max_kb, rss_kb(self.pid))
        return self.max_kb - self.start_kb

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()


def demo_body(n, offset=0):
    """The demo backend's /bytes and /chunked body: the alphabet repeated, cut at n bytes."""
    alpha = b"abcdefghijklmnopqrstuvwxyz"
    start = offset % 26
    reps = (start + n) // 26 + 1
    return (alpha * reps)[start:start + n]


# ---------------------------------------------------------------------------------------------
# Helpers for tests under load and live changes (test_health.py, test_drain.py, test_failover.py,
# test_tdctl.py).

class LoadGen:
    """A small load generator: `threads` threads, each with one keep-alive http.client connection
    to 127.0.0.1:port, sending `method path` (with `body`) until stop(), `count` requests in all,
    or `duration` seconds, whichever comes first. Counts what came back: a non-2xx status is a
    failure, an exception (reset, timeout, close) an error, after which the thread reconnects.
    With record=True every answer is kept as (monotonic time, status, X-TD-Demo-Backend).
    count(status, backend) counts the answers of a status and/or backend so far."""

    def __init__(self, port, threads=8, method="GET", path="/", body=None, count=None,
                 duration=10.0, timeout=10.0, record=False, headers=None):
        import threading
        self.port, self.method, self.path, self.body = port, method, path, body
        self.limit, self.duration, self.timeout, self.record = count, duration, timeout, record
        self.headers = dict(headers or {})
        if body is not None:
            self.headers.setdefault("Content-Type", "application/octet-stream")
        self.nthreads = threads
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.sent = self.ok = self.failed = 0
        self.errors = []        # repr of each exception
        self.bad = []           # (status, backend, body[:200]) of each non-2xx answer
        self.by_backend = {}    # X-TD-Demo-Backend -> answers
        self.answers = {}       # (status, X-TD-Demo-Backend) -> answers
        self.events = []        # (t, status, backend) with record=True
        self.check = None       # optional fn(status, headers, body) -> problem string or None
        self.problems = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.t0 = None

    def _take(self):
        with self.lock:
            if self.stop_ev.is_set() or (self.limit is not None and self.sent >= self.limit):
                return False
            if time.monotonic() - self.t0 >= self.duration:
                return False
            self.sent += 1
            return True

    def _run(self):
        import http.client
        conn = None
        while self._take():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request(self.method, self.path, body=self.body, headers=self.headers)
                r = conn.getresponse()
                data = r.read()
                be = r.headers.get("X-TD-Demo-Backend")
                t = time.monotonic()
                problem = self.check(r.status, r.headers, data) if self.check else None
                with self.lock:
                    self.by_backend[be] = self.by_backend.get(be, 0) + 1
                    self.answers[(r.status, be)] = self.answers.get((r.status, be), 0) + 1
                    if 200 <= r.status < 300:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.bad.append((r.status, be, data[:200]))
                    if problem:
                        self.problems.append(problem)
                    if self.record:
                        self.events.append((t, r.status, be))
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:
                with self.lock:
                    self.errors.append(repr(e))
                    if self.record:
                        self.events.append((time.monotonic(), None, None))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def start(self):
        self.t0 = time.monotonic()
        for th in self.threads:
            th.start()
        return self

    def join(self, timeout=None):
        """Waits for the threads (count/duration reached); returns self."""
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else self.duration + self.timeout + 10)
        for th in self.threads:
            th.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(th.is_alive() for th in self.threads), "load threads did not finish"
        self.elapsed = time.monotonic() - self.t0
        return self

    def stop(self):
        self.stop_ev.set()
        return self.join()

    def answered(self):
        with self.lock:
            return self.ok + self.failed

    def count(self, status=None, backend=None):
        """Answers so far with that status (any when None) from that backend (any when None)."""
        with self.lock:
            return sum(n for (s, b), n in self.answers.items()
                       if (status is None or s == status) and (backend is None or b == backend))

    def summary(self):
        return (f"{self.sent} requests sent, {self.ok} 2xx, {self.failed} failed (non-2xx), "
                f"{len(self.errors)} errors, by backend {self.by_backend}"
                + (f", first errors {self.errors[:3]}" if self.errors else "")
                + (f", first failures {self.bad[:3]}" if self.bad else ""))


def reload_config(t, edit, timeout=10.0):
    """Rewrites td's config file with edit(cfg) (cfg is the parsed file; edit changes it in place),
    atomically (temp file + rename), sends SIGHUP and waits until the new version shows in the
    state. Returns the new state."""
    with open(t.config_path) as f:
        cfg = json.load(f)
    edit(cfg)
    old = t.state()["version"]
    tmp = t.config_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, t.config_path)
    t.proc.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = t.state()
        if s["version"] > old:
            return s
        time.sleep(0.01)
    raise AssertionError(f"SIGHUP reload not applied within {timeout} s:\n"
                         + t.proc.output()[-2000:])


def set_weights(cfg, **weights):
    """For reload_config: sets the named backends' weights in a config dict."""
    for b in cfg["backends"]:
        if b["name"] in weights:
            b["weight"] = weights[b["name"]]


def weights(t_or_state):
    """{backend name: weight} of a Td (its state now) or of a state document."""
    state = t_or_state.state() if isinstance(t_or_state, Td) else t_or_state
    return {b["name"]: b["weight"] for b in state["backends"]}


def pos(text, needle, start=0):
    """1-based (line, column in characters) of the first `needle` in `text` at or after start."""
    i = text.index(needle, start)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def backend_state(state, name):
    for b in state["backends"]:
        if b["name"] == name:
            return b
    raise KeyError(name)


def server_state(state, port):
    """The state entry of the server 127.0.0.1:port."""
    for b in state["backends"]:
        for s in b["servers"]:
            if s["address"] == f"127.0.0.1:{port}":
                return s
    raise KeyError(port)


def wait_for(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value (returned) or timeout seconds pass (fails)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


def start_td_file(config_path, port, admin_port):
    """td started on the config file at config_path (which names these ports); a Proc once both
    its listener and its admin port accept connections."""
    p = Proc([TD, "-c", config_path], "td")
    wait_port(port)
    wait_port(admin_port)
    return p


def put_ratio_status(admin_port, weights):
    """PUT /api/v1/ratio; the status, or None when td went away."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
        conn.request("PUT", "/api/v1/ratio", body=json.dumps(weights))
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status
    except OSError:
        return None
    except http.client.HTTPException:
        return None


def two_colours_apart(backends):
    """Config for blue and green at 50/50, each backend in its own demo process (one can be
    stopped without the other)."""
    blue, green = backends(("blue", 1)), backends(("green", 1))
    return backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])})


# ---------------------------------------------------------------------------------------------
# The web console in headless Chromium: the scripts in tests/console/ (playwright-core)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
CHROMIUM = os.environ.get("TD_CHROMIUM", "/usr/bin/chromium")
CONSOLE_MISSING = [what for what, ok in [
    (CHROMIUM, os.access(CHROMIUM, os.X_OK)),
    ("node", shutil.which("node") is not None),
    ("node_modules/playwright-core (npm ci)",
     os.path.isdir(os.path.join(ROOT, "node_modules/playwright-core"))),
] if not ok]
# Marks a test that drives the console: skipped (saying why) where the browser is missing.
needs_console = pytest.mark.skipif(bool(CONSOLE_MISSING), reason="needs " + ", ".join(
    CONSOLE_MISSING) + " (run scripts/deps.sh test)")


def run_console(script, **opts):
    """Runs tests/console/SCRIPT with `opts` as its JSON argument (timeout_ms scaled under ASan);
    returns what it observed (its last line, JSON), failing the test with its output otherwise."""
    opts.setdefault("timeout_ms", 20000 * (3 if ASAN else 1))
    p = subprocess.run(["node", os.path.join(ROOT, "tests/console", script), json.dumps(opts)],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"console script {script} {opts} failed:\n{p.stderr}{p.stdout}"
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# etcd members (cluster mode) and a TCP relay that can cut a node off from them.

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


class EtcdCluster:
    """n etcd members on 127.0.0.1 (free ports, a temporary data dir each, logs to a file per
    member), started together as one cluster. `.endpoints` are their client URLs; `args` more
    flags for every member (e.g. "--auth-token-ttl", "1"); `tls` a dict of PEM files ("ca",
    "cert", "key": the members' certificate; "client_cert", "client_key": one they accept)
    serves the clients over https with client certificates required."""

    def __init__(self, n=1, args=(), tls=None):
        self.n = n
        self.args = list(args)
        self.tls = tls
        if tls:
            self.args += ["--cert-file", tls["cert"], "--key-file", tls["key"],
                          "--trusted-ca-file", tls["ca"], "--client-cert-auth"]
        self.dir = tempfile.mkdtemp(prefix="td-etcd-")
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        scheme = "https" if tls else "http"
        self.endpoints = [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]
        self.initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        self.procs = [None] * n
        for i in range(n):
            self._spawn(i)
        for i in range(n):
            self.wait_healthy(i)

    def _spawn(self, i):
        log = open(os.path.join(self.dir, f"m{i}.log"), "ab")
        args = [ETCD, "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}.etcd"),
                "--listen-client-urls", self.endpoints[i],
                "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", os.path.basename(self.dir),
                "--log-level", "error", "--logger", "zap", *self.args]
        self.procs[i] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_healthy(self, i, timeout=30.0):
        """Waits until member i answers a range (it has a leader and serves reads)."""
        deadline = time.monotonic() + timeout * (3 if ASAN else 1)
        last = None
        ctx = None
        if self.tls:
            import ssl
            ctx = ssl.create_default_context(cafile=self.tls["ca"])
            ctx.load_cert_chain(self.tls["client_cert"], self.tls["client_key"])
        while time.monotonic() < deadline:
            if self.procs[i].poll() is not None:
                raise AssertionError(f"etcd m{i} exited {self.procs[i].returncode}:\n{self.log(i)}")
            try:
                req = urllib.request.Request(self.endpoints[i] + "/v3/kv/range",
                                             data=b'{"key": "AA=="}', method="POST")
                with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"etcd m{i} not healthy: {last}\n{self.log(i)}")

    def log(self, i):
        with open(os.path.join(self.dir, f"m{i}.log"), errors="replace") as f:
            return f.read()[-4000:]

    def kill(self, i):
        """SIGKILLs member i (its data dir stays, for start(i))."""
        p = self.procs[i]
        if p and p.poll() is None:
            p.kill()
            p.wait()

    def start(self, i):
        """Starts member i again on its ports and data dir; returns once it serves reads."""
        self.kill(i)
        self._spawn(i)
        self.wait_healthy(i)

    def etcdctl(self, *args, env=None):
        """Runs etcdctl (API v3) against every member; returns the CompletedProcess."""
        e = dict(TDCTL_ENV, ETCDCTL_API="3")
        if self.tls:
            e.update(ETCDCTL_CACERT=self.tls["ca"], ETCDCTL_CERT=self.tls["client_cert"],
                     ETCDCTL_KEY=self.tls["client_key"])
        e.update(env or {})
        return subprocess.run([ETCDCTL, "--endpoints", ",".join(self.endpoints), *args],
                              capture_output=True, text=True, timeout=30, env=e)

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def etcd_cluster():
    """A factory start(n=1, args=(), tls=None) -> EtcdCluster; every member it started is
    stopped at teardown."""
    started = []

    def start(n=1, args=(), tls=None):
        c = EtcdCluster(n, args, tls)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


class TcpRelay:
    """Relays connections from 127.0.0.1:.port to target_host:target_port, one thread per
    direction. cut() closes every relayed connection and drops new ones (accepted, then closed at
    once) until restore(); stop() ends it all."""

    def __init__(self, target_host, target_port):
        import threading
        self.target = (target_host, target_port)
        self.lock = threading.Lock()
        self.conns = []
        self.cut_off = False
        self.stopping = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        import threading
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                if self.cut_off or self.stopping:
                    c.close()
                    continue
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            c.settimeout(None)
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_all(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self):
        with self.lock:
            self.cut_off = True
        self._close_all()

    def restore(self):
        with self.lock:
            self.cut_off = False

    def stop(self):
        self.stopping = True
        self._close_all()
        self.ls.close()
        for t in self.threads:
            t.join(timeout=5)
