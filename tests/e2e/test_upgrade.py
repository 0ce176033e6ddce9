"""td upgrade and SIGUSR2: a new td binary takes over the listening sockets of the running one,
with its runtime state, under load, without a failed request; a new binary or config that cannot
start leaves the running td serving and says why."""
import http.client
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import conftest
from conftest import ASAN, TD, LoadGen, backend_cfg, free_port, sticky_cookie, wait_for

SLOW = 3 if ASAN else 1
TIMEOUT = 10 * SLOW


def alive(pid):
    """1 while `pid` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture
def pid_dir():
    """A folder for the pid file; every td still running from it is stopped at the end (the
    processes an upgrade started are not the test's children)."""
    d = tempfile.mkdtemp(prefix="td-upgrade-")
    yield d
    pid = read_pid(os.path.join(d, "td.pid"))
    if pid and alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 20 * SLOW, what=f"td {pid} to stop")
    shutil.rmtree(d, ignore_errors=True)


def upgrade(args, timeout=60):
    return subprocess.run([TD, "upgrade", *args], capture_output=True, text=True, timeout=timeout)


def ready(admin_port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=TIMEOUT)
        c.request("GET", "/readyz")
        return c.getresponse().status == 200
    except OSError:
        return False
    finally:
        c.close()


def self_signed(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


class Clients:
    """Load beside LoadGen's keep-alive HTTP threads: one keep-alive HTTPS thread and one thread
    opening a new connection for every request; each counts answers and failures."""

    def __init__(self, port, tls_port):
        self.ok = 0
        self.failures = []
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.threads = [
            threading.Thread(target=self._run, args=(lambda: http.client.HTTPSConnection(
                "127.0.0.1", tls_port, timeout=TIMEOUT, context=ctx), True), daemon=True),
            threading.Thread(target=self._run, args=(lambda: http.client.HTTPConnection(
                "127.0.0.1", port, timeout=TIMEOUT), False), daemon=True)]
        for th in self.threads:
            th.start()

    def _run(self, connect, keep):
        conn = None
        while not self.stop_ev.is_set():
            try:
                conn = conn or connect()
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                with self.lock:
                    if r.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(r.status)
                if r.will_close or not keep:
                    conn.close()
                    conn = None
            except Exception as e:
                with self.lock:
                    self.failures.append(repr(e))
                if conn:
                    conn.close()
                conn = None
        if conn:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=30)


class WebSockets:
    """`n` WebSockets through td, each echoing a message every 50 ms on its own thread until
    stop(); counts echoes and failures."""

    def __init__(self, port, n=3):
        websocket = pytest.importorskip("websocket")
        self.echoes, self.failures = 0, []
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.wss = [websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=TIMEOUT)
                    for _ in range(n)]
        self.threads = [threading.Thread(target=self._run, args=(ws, i), daemon=True)
                        for i, ws in enumerate(self.wss)]
        for th in self.threads:
            th.start()

    def _run(self, ws, i):
        k = 0
        while not self.stop_ev.wait(0.05):
            msg = f"ws{i}-{k}"
            k += 1
            try:
                ws.send(msg)
                got = ws.recv()
                with self.lock:
                    if got == msg:
                        self.echoes += 1
                    else:
                        self.failures.append(f"{msg} came back as {got!r}")
            except Exception as e:
                with self.lock:
                    self.failures.append(repr(e))
                return

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=30)
        for ws in self.wss:
            ws.close()


def state_of(t):
    status, s = t.api("GET", "/api/v1/state")
    assert status == 200, s
    return s


def weights_of(s):
    return {b["name"]: b["weight"] for b in s["backends"]}


def server_health(s, port):
    for b in s["backends"]:
        for srv in b["servers"]:
            if srv["address"] == f"127.0.0.1:{port}":
                return srv
    raise AssertionError(f"no server on port {port} in {s}")


def wait_takeover(pid_file, old, admin_port):
    """The new pid in the pid file, once it is not `old` and the admin API says ready."""
    wait_for(lambda: read_pid(pid_file) not in (0, old) and ready(admin_port), 30 * SLOW,
             what="the new td to take over")
    return read_pid(pid_file)


def test_td_upgrade_ten_times_under_load_fails_no_request_and_carries_the_runtime_state(
        backends, td, pid_dir):
    b = backends(("blue", 1), ("green", 1))
    dead = free_port()  # nothing listens there: its health checks fail
    tls_port = free_port()
    cert, key = self_signed(pid_dir)
    pid_file = os.path.join(pid_dir, "td.pid")
    cfg = backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                      method="sticky", pid_file=pid_file,
                      health_check={"type": "http", "path": "/", "interval_ms": 1000,
                                    "timeout_ms": 500, "fall": 2, "rise": 3})
    # red takes no traffic (weight 0, then maint): its dead server is down by health checks
    # alone, never by passive detection.
    cfg["backends"].append({"name": "red", "weight": 0,
                            "servers": [{"address": f"127.0.0.1:{b.ports['blue'][0]}"},
                                        {"address": f"127.0.0.1:{dead}"}]})
    cfg["timeouts"]["drain_ms"] = 6000 * SLOW
    port = free_port()
    cfg["listeners"] = [{"address": f"127.0.0.1:{port}"},
                        {"address": f"127.0.0.1:{tls_port}",
                         "tls": {"certificates": [{"cert": cert, "key": key}]}}]
    # td's fixture picks its listener's and admin's ports: these, with the TLS listener beside.
    chosen = iter([port, free_port()])
    real_free_port = conftest.free_port
    conftest.free_port = lambda: next(chosen)
    try:
        t = td(cfg)
    finally:
        conftest.free_port = real_free_port
    first = t.proc.pid
    wait_for(lambda: server_health(state_of(t), dead)["health"] == "down", 10 * SLOW,
             what="the dead server to be down by its health check")

    # Runtime state set through the API: weights, a backend state, an active rollout.
    t.set_ratio(blue=80, green=20)
    assert t.api("PUT", "/api/v1/backends/red", {"state": "maint"})[0] == 200
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 600,
                       "analysis": {"interval_s": 1, "warmup_s": 0, "min_requests": 20}})
    assert status == 201, r
    rollout_id = r["id"]
    wait_for(lambda: t.api("GET", "/api/v1/rollout")[1]["state"] == "running", 10 * SLOW,
             what="the rollout to run")
    before = state_of(t)
    assert weights_of(before) == {"blue": 50, "green": 50, "red": 0}

    # A sticky cookie issued before the upgrades (for green, the side the key must keep).
    cookie = None
    for _ in range(200):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        c.request("GET", "/")
        resp = c.getresponse()
        resp.read()
        c.close()
        if resp.headers.get("X-TD-Demo-Backend") == "green":
            cookie = sticky_cookie(resp.headers)
            break
    assert cookie, "no sticky cookie for green"

    load = LoadGen(port, threads=2, duration=120).start()
    clients = Clients(port, tls_port)
    wss = WebSockets(port)
    pids = [first]
    try:
        for i in range(10):
            p = upgrade(["-c", t.config_path])
            assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
            assert "handed over" in p.stdout, p.stdout
            new = wait_takeover(pid_file, pids[-1], t.admin_port)
            pids.append(new)
            if i == 0:
                # Right after the first upgrade: the verdict came with it, no rise/fall wait.
                s = state_of(t)
                assert server_health(s, dead)["health"] == "down", server_health(s, dead)
            if i == 2:
                wss.stop()  # they echoed through three upgrades, within the first td's drain_ms
            time.sleep(1.0)
    finally:
        load.stop()
        clients.stop()
        wss.stop()
    assert load.failed == 0 and not load.errors, load.summary()
    assert load.ok > 0, load.summary()
    assert not clients.failures and clients.ok > 0, (clients.ok, clients.failures[:5])
    assert not wss.failures and wss.echoes > 0, (wss.echoes, wss.failures[:5])

    # One td at the end: every old one has drained and exited (the first with status 0).
    final = pids[-1]
    assert t.proc.p.wait(timeout=30 * SLOW) == 0
    wait_for(lambda: not any(alive(p) for p in pids[:-1]), 30 * SLOW,
             what="the old td processes to exit")
    assert alive(final)

    s = state_of(t)
    assert weights_of(s) == {"blue": 50, "green": 50, "red": 0}, s["backends"]
    assert {b["name"]: b["state"] for b in s["backends"]}["red"] == "maint"
    assert server_health(s, dead)["health"] == "down"
    status, r = t.api("GET", "/api/v1/rollout")
    assert r["id"] == rollout_id and r["state"] == "running" and r["step"] == before["rollout"][
        "step"], r

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    c.request("GET", "/", headers={"Cookie": f"TDSTICKY={cookie}"})
    resp = c.getresponse()
    resp.read()
    c.close()
    assert resp.headers.get("X-TD-Demo-Backend") == "green"
    assert resp.headers.get("Set-Cookie") is None, "the cookie was not honoured: a new one came"
    out = t.proc.output()
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def test_sigusr2_upgrades_as_td_upgrade_does(backends, td, pid_dir):
    b = backends(("blue", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    t.set_ratio(blue=100)
    os.kill(t.proc.pid, signal.SIGUSR2)
    new = wait_takeover(pid_file, t.proc.pid, t.admin_port)
    assert t.proc.p.wait(timeout=30 * SLOW) == 0
    assert alive(new)
    status, body = conftest.get_once(t.port)[:2]
    assert status == 200
    assert "upgrade: the new td (pid %d) accepts on the listening sockets" % new in t.proc.output()


def td_to_be_replaced_by(backends, td, pid_dir, monkeypatch, script):
    """td started from a copy of the binary in pid_dir, whose file is then replaced by `script`,
    as a package does (a new file at the same path): (the Td, its pid file)."""
    b = backends(("blue", 1))
    binary = os.path.join(pid_dir, "td")
    shutil.copy(TD, binary)
    monkeypatch.setattr(conftest, "TD", binary)
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    monkeypatch.setattr(conftest, "TD", TD)
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    new = binary + ".new"
    with open(new, "w") as f:
        f.write(script)
    os.chmod(new, stat.S_IRWXU)
    os.replace(new, binary)
    return t, pid_file


def test_a_new_binary_that_exits_at_once_leaves_the_old_td_serving_and_td_upgrade_says_why(
        backends, td, pid_dir, monkeypatch):
    t, pid_file = td_to_be_replaced_by(backends, td, pid_dir, monkeypatch, "#!/bin/sh\nexit 3\n")
    binary = os.path.join(pid_dir, "td")

    p = upgrade(["--pid-file", pid_file])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "exited with status 3 before it was ready" in p.stderr, p.stderr
    assert "keeps serving" in p.stderr, p.stderr
    assert read_pid(pid_file) == t.proc.pid and t.proc.p.poll() is None
    assert conftest.get_once(t.port)[0] == 200
    assert "upgrade failed: the new td (%s" % binary in t.proc.output()

    # The right binary back at the path: the same td upgrades.
    shutil.copy(TD, binary + ".new")
    os.replace(binary + ".new", binary)
    p = upgrade(["--pid-file", pid_file])
    assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
    wait_takeover(pid_file, t.proc.pid, t.admin_port)
    assert t.proc.p.wait(timeout=30 * SLOW) == 0


def test_a_bad_config_at_upgrade_leaves_the_old_td_serving_and_says_why(backends, td, pid_dir):
    b = backends(("blue", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    with open(t.config_path) as f:
        good = f.read()
    with open(t.config_path, "w") as f:
        f.write(good.replace('"weight": 100', '"weight": "lots"', 1))

    # td upgrade -c reads the file itself first: nothing is done.
    p = upgrade(["-c", t.config_path])
    assert p.returncode == 1 and "has errors: nothing done" in p.stderr, p.stderr
    assert f"{t.config_path}:" in p.stderr, p.stderr

    # Asked by pid file, the running td tries, and the new process's message comes back.
    p = upgrade(["--pid-file", pid_file])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "exited with status 1 before it was ready" in p.stderr, p.stderr
    assert f"{t.config_path}:" in p.stderr and "weight" in p.stderr, p.stderr
    assert read_pid(pid_file) == t.proc.pid and t.proc.p.poll() is None
    assert conftest.get_once(t.port)[0] == 200
    out = t.proc.output()
    assert "upgrade failed:" in out and f"{t.config_path}:" in out, out[-3000:]


def test_sd_notify_hears_the_new_process_mainpid_then_ready(backends, td, pid_dir, monkeypatch):
    d = tempfile.mkdtemp(prefix="td-notify-")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    try:
        b = backends(("blue", 1))
        pid_file = os.path.join(pid_dir, "td.pid")
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
        monkeypatch.delenv("NOTIFY_SOCKET")
        wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
        msgs = []
        s.settimeout(TIMEOUT)
        while not any("READY=1" in m for m in msgs):
            msgs.append(s.recv(4096).decode().split("\n"))
        p = upgrade(["--pid-file", pid_file])
        assert p.returncode == 0, p.stdout + p.stderr
        new = read_pid(pid_file)
        after = []
        deadline = time.monotonic() + TIMEOUT
        while not any("READY=1" in m for m in after) and time.monotonic() < deadline:
            after.append(s.recv(4096).decode().split("\n"))
        mainpid = [i for i, m in enumerate(after) if f"MAINPID={new}" in m]
        ready_at = [i for i, m in enumerate(after) if "READY=1" in m]
        assert mainpid and ready_at and mainpid[0] < ready_at[0], after
        assert not any("STOPPING=1" in m for m in after), after
        assert t.proc.p.wait(timeout=30 * SLOW) == 0
        # Nothing from the old process after the takeover says the service stops.
        s.settimeout(0.2)
        try:
            while True:
                assert "STOPPING=1" not in s.recv(4096).decode().split("\n")
        except socket.timeout:
            pass
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


def test_upgrade_carries_the_health_verdict_of_a_host_names_address(td, pid_dir):
    """A server given by host name is its resolved addresses: each address's verdict goes to the
    new process as a configured address's does."""
    from test_dns import DNSMASQ, Dns
    if not os.path.exists(DNSMASQ):
        pytest.skip("dnsmasq-base not installed")
    port = free_port()
    d = Dns({"app.td.test": ["127.0.0.2", "127.0.0.3"]})
    demo = conftest.Proc([TD, "backend", f"a2=127.0.0.2:{port}"], "backends")
    try:

        def listening():
            try:
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, 10, what="the demo backend")
        pid_file = os.path.join(pid_dir, "td.pid")
        # One check every 5 s and 2 failures to fall: a verdict that did not come with the
        # upgrade would read "up" (not checked yet) for seconds in the new process.
        t = td({"resolvers": {"nameservers": [d.nameserver], "timeout_ms": 500},
                "pid_file": pid_file,
                "health_check": {"type": "http", "path": "/", "interval_ms": 5000,
                                 "timeout_ms": 500, "fall": 2, "rise": 3},
                "backends": [{"name": "blue", "weight": 100,
                              "servers": [{"address": f"app.td.test:{port}"}]}]})
        dead = f"127.0.0.3:{port}"  # nothing listens there

        def health_of(s):
            return {srv["address"]: srv["health"] for b in s["backends"] for srv in b["servers"]}

        wait_for(lambda: health_of(state_of(t)).get(dead) == "down", 20 * SLOW,
                 what="the name's second address to be down by its health check")
        wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
        r = upgrade(["-c", t.config_path])
        assert r.returncode == 0, r.stderr
        new = wait_takeover(pid_file, t.proc.pid, t.admin_port)
        assert alive(new)
        assert health_of(state_of(t)) == {f"127.0.0.2:{port}": "up", dead: "down"}
    finally:
        demo.stop()
        d.stop()


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_five_upgrades_leave_the_new_td_with_as_many_descriptors_as_the_first(
        backends, td, pid_dir):
    b = backends(("blue", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    pids = [t.proc.pid]
    counts = []
    for _ in range(5):
        p = upgrade(["--pid-file", pid_file])
        assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
        pids.append(wait_takeover(pid_file, pids[-1], t.admin_port))
        wait_for(lambda: not alive(pids[-2]), 30 * SLOW, what="the old td to exit")
        counts.append(fd_count(pids[-1]))
    assert max(counts) - counts[0] <= 1, counts


def test_td_upgrade_refuses_a_pid_that_is_not_td_and_leaves_it_running():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        p = upgrade(["--pid", str(sleeper.pid)])
        assert p.returncode == 2, p.stdout + p.stderr
        assert f"process {sleeper.pid} is not td" in p.stderr, p.stderr
        time.sleep(0.2)  # a SIGUSR2 sent would have ended it by now
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_td_upgrade_refuses_td_demo_whose_backends_run_in_its_process():
    # A process named as `td demo` is (argv[0] td, argument demo), without its fixed ports.
    fake = subprocess.Popen(["/usr/bin/python3", "-c", "import os; os.execv('/usr/bin/python3', "
                             "['td', '-c', 'import time; time.sleep(60)', 'demo'])"])
    try:
        wait_for(lambda: open(f"/proc/{fake.pid}/cmdline").read().startswith("td\0"), 10,
                 what="the exec")
        p = upgrade(["--pid", str(fake.pid)])
        assert p.returncode == 2, p.stdout + p.stderr
        assert "td demo cannot be upgraded: its demo backends run in this process" in p.stderr
        assert fake.poll() is None
    finally:
        fake.kill()
        fake.wait()


def test_td_upgrade_says_why_for_pid_1_both_pid_options_and_an_unreadable_config(pid_dir):
    p = upgrade(["--pid", "1"])
    assert p.returncode == 2 and "pid 1 is init, not td" in p.stderr, p.stderr
    p = upgrade(["--pid", "1234", "--pid-file", os.path.join(pid_dir, "x.pid")])
    assert p.returncode == 2 and "give one of --pid and --pid-file" in p.stderr, p.stderr
    p = upgrade(["-c", "/nonexistent.json"])
    assert p.returncode == 2, p.stderr
    assert "cannot read /nonexistent.json: No such file or directory" in p.stderr, p.stderr


def test_td_upgrade_pid_waits_for_the_outcome_and_a_clean_stop_removes_the_outcome_file(
        backends, td, pid_dir):
    b = backends(("blue", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    p = upgrade(["--pid", str(t.proc.pid)])
    assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
    assert "handed over to the new td" in p.stdout, p.stdout
    new = wait_takeover(pid_file, t.proc.pid, t.admin_port)
    assert t.proc.p.wait(timeout=30 * SLOW) == 0
    assert os.path.exists(pid_file + ".upgrade")
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: not alive(new), 20 * SLOW, what="the new td to stop")
    assert not os.path.exists(pid_file + ".upgrade") and not os.path.exists(pid_file)


def test_sigusr2_to_an_old_td_draining_after_an_upgrade_is_ignored_and_its_lines_name_it(
        backends, td, pid_dir):
    b = backends(("blue", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    old = t.proc.pid
    # An exchange in flight keeps the old td draining.
    slow = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30 * SLOW)
    slow.request("GET", "/delay/4000")
    p = upgrade(["--pid-file", pid_file])
    assert p.returncode == 0, p.stdout + p.stderr
    new = wait_takeover(pid_file, old, t.admin_port)
    os.kill(old, signal.SIGUSR2)
    line = f"(old td, pid {old}) SIGUSR2 ignored: this td handed over to pid {new} and is draining"
    wait_for(lambda: line in t.proc.output(), 10 * SLOW,
             what="the ignored SIGUSR2's line in " + t.proc.output()[-2000:])
    assert slow.getresponse().status == 200
    slow.close()
    assert t.proc.p.wait(timeout=30 * SLOW) == 0


def zombie_children(ppid):
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == ppid:
                found.append(int(d))
    return found


def test_a_new_binary_that_hangs_is_killed_after_the_timeout_and_reaped(
        backends, td, pid_dir, monkeypatch):
    t, pid_file = td_to_be_replaced_by(backends, td, pid_dir, monkeypatch,
                                       "#!/bin/sh\nexec sleep 300\n")
    p = upgrade(["--pid-file", pid_file], timeout=120)
    assert p.returncode == 1 and "did not report ready" in p.stderr, p.stdout + p.stderr
    wait_for(lambda: not zombie_children(t.proc.pid), 10 * SLOW, what="no zombie child of td")
    assert t.proc.p.poll() is None and conftest.get_once(t.port)[0] == 200


def test_upgrade_continues_the_config_version_and_the_rollout_steps_clock(backends, td, pid_dir):
    b = backends(("blue", 1), ("green", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                       pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    for w in (90, 80, 70):
        t.set_ratio(blue=w, green=100 - w)
    status, r = t.api("POST", "/api/v1/rollout",
                      {"to": "green", "steps": [50, 100], "step_s": 600,
                       "analysis": {"interval_s": 1, "warmup_s": 0, "min_requests": 1000000}})
    assert status == 201, r
    wait_for(lambda: t.api("GET", "/api/v1/rollout")[1]["state"] == "running", 10 * SLOW,
             what="the rollout to run")
    started = t.api("GET", "/api/v1/rollout")[1]["step_started_at"]
    time.sleep(3)  # the step has run at least this long before the upgrade
    version = state_of(t)["version"]
    p = upgrade(["--pid-file", pid_file])
    assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
    wait_takeover(pid_file, t.proc.pid, t.admin_port)
    after = state_of(t)["version"]
    assert after > version, (version, after)
    r = t.api("GET", "/api/v1/rollout")[1]
    assert r["state"] == "running" and r["step"] == 0, r
    assert r["step_started_at"] == started, r
    assert r["step_remaining_s"] <= 600 - 3 + 0.5, r


def read_reply(sock):
    """One HTTP/1.1 reply from `sock`: (status, headers dict in lower case, body)."""
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().decode().strip()
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", 0)))
    return status, headers, body


def closed_by_server(sock):
    """1 once the server closed `sock` (readable, nothing to read): a client then reconnects
    before sending, as browsers do."""
    import select
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class AdminClients:
    """Keep-alive admin clients, each sending a GET or a PUT every `interval` s; a request is
    sent on a connection the server is not seen to have closed, and every one sent must get an
    answer: 200, or 503 with Retry-After for a change during a handover."""

    def __init__(self, admin_port, intervals):
        self.port = admin_port
        self.answers = 0
        self.failures = []
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(iv, i), daemon=True)
                        for i, iv in enumerate(intervals)]
        for th in self.threads:
            th.start()

    def _run(self, interval, k):
        sock = None
        n = 0
        while not self.stop_ev.is_set():
            if sock is None or closed_by_server(sock):
                if sock:
                    sock.close()
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
            n += 1
            if (n + k) % 2:
                req = b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % self.port
            else:
                body = b'{"blue": 100, "green": 0}'
                req = (b"PUT /api/v1/ratio HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                       b"application/json\r\nContent-Length: %d\r\n\r\n" % (self.port, len(body))
                       + body)
            try:
                sock.sendall(req)
                status, headers, _ = read_reply(sock)
                if status == 200 or (status == 503 and headers.get("retry-after") == "1"):
                    self.answers += 1
                else:
                    self.failures.append((status, headers))
                if headers.get("connection") == "close":
                    sock.close()
                    sock = None
            except Exception as e:
                self.failures.append(repr(e))
                sock.close()
                sock = None
            self.stop_ev.wait(interval)
        if sock:
            sock.close()

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(timeout=30)


def test_admin_keep_alive_connections_get_every_answer_across_upgrades(backends, td, pid_dir):
    b = backends(("blue", 1), ("green", 1))
    pid_file = os.path.join(pid_dir, "td.pid")
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])},
                       pid_file=pid_file))
    wait_for(lambda: read_pid(pid_file) == t.proc.pid, 10 * SLOW, what="the pid file")
    # An exchange under way at the handover: a PUT and a GET whose bodies or heads are half sent.
    put = socket.create_connection(("127.0.0.1", t.admin_port), timeout=TIMEOUT)
    get = socket.create_connection(("127.0.0.1", t.admin_port), timeout=TIMEOUT)
    idle = socket.create_connection(("127.0.0.1", t.admin_port), timeout=TIMEOUT)
    idle.sendall(b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % t.admin_port)
    assert read_reply(idle)[0] == 200
    body = b'{"blue": 50, "green": 50}'
    put.sendall(b"PUT /api/v1/ratio HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n" % (t.admin_port, len(body)))
    get.sendall(b"GET /api/v1/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % t.admin_port)
    clients = AdminClients(t.admin_port, [0.05, 0.4, 1.6])
    pids = [t.proc.pid]
    try:
        for i in range(3):
            p = upgrade(["--pid-file", pid_file])
            assert p.returncode == 0, p.stdout + p.stderr + t.proc.output()[-3000:]
            pids.append(wait_takeover(pid_file, pids[-1], t.admin_port))
            if i == 0:
                put.sendall(body)
                status, headers, text = read_reply(put)
                assert status == 503 and headers.get("retry-after") == "1", (status, text)
                assert b"handing over to a new process" in text and headers["connection"] == \
                    "close"
                get.sendall(b"\r\n")
                status, headers, _ = read_reply(get)
                assert status == 200 and headers["connection"] == "close"
                wait_for(lambda: closed_by_server(idle), 10 * SLOW,
                         what="the idle admin connection to be closed")
            time.sleep(2)
    finally:
        clients.stop()
        for s in (put, get, idle):
            s.close()
    assert not clients.failures, clients.failures[:5]
    assert clients.answers > 0
    assert weights_of(state_of(t)) == {"blue": 100, "green": 0}
