"""The Debian package as a sysadmin gets it: `make deb` (Debian's own tools), lintian, `dpkg -i`,
the files in place, the shipped /etc/td/td.json checked and run as user td from the installed
files, a reload by SIGHUP, a stop by PID, then `dpkg -P`. It installs into this machine, so it
needs root and Debian's packaging tools, and always purges the package again (and removes the
td user when it created it), leaving the machine as it found it.

The shipped config has td on 127.0.0.1:8080, its admin API on 127.0.0.1:9090 and the backends on
127.0.0.1:9001 and 9002 (as `td demo`): ports below the kernel's ephemeral range, which the other
tests' free ports come from, and which no other test binds."""
import glob
import gzip
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import urllib.request

import pytest

from conftest import ASAN, TD, Proc, get_once, wait_for, wait_port

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PORTS = {"td": 8080, "admin": 9090, "blue": 9001, "green": 9002}

needs_debian_tools = [
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a Debian package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None,
                       reason="dpkg-buildpackage missing (scripts/deps.sh deb installs it)"),
    # The package is built from source without sanitizers: the ASan pass would test it again.
    pytest.mark.skipif(ASAN, reason="the package is built without sanitizers (tested once)"),
]


def debian_tools(f):
    for mark in needs_debian_tools:
        f = mark(f)
    return f

INSTALLED = ["/usr/sbin/td", "/usr/bin/tdctl", "/etc/td/td.json", "/etc/logrotate.d/td",
             "/lib/systemd/system/td.service", "/usr/share/bash-completion/completions/tdctl",
             "/usr/share/man/man8/td.8.gz", "/usr/share/man/man1/tdctl.1.gz",
             "/usr/share/man/man5/td.json.5.gz", "/usr/share/doc/td/copyright"]


def run(*args, timeout=120, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    print(f"$ {' '.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def installed():
    r = run("dpkg-query", "-W", "-f=${Status}", "td")
    return r.returncode == 0 and "installed" in r.stdout


def has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def deb():
    """build/deb/td_VERSION_ARCH.deb, built by `make deb`."""
    r = run("make", "--no-print-directory", "deb", cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    debs = glob.glob(os.path.join(REPO, "build/deb/td_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture
def machine():
    """Refuses to run over a td package or ports already there; afterwards purges the package
    and removes the td user and group if the test created them."""
    if installed():
        pytest.skip("a td package is installed on this machine: the test would replace it")
    for name, port in PORTS.items():
        with socket.socket() as s:
            # SO_REUSEADDR, as td binds: connections of an earlier run in TIME_WAIT on the port
            # are no clash, a listener is.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                s.listen()
            except OSError:
                pytest.fail(f"port {port} ({name} in the shipped config) is in use")
    user_before = has_user("td")
    procs = []
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        if installed() or os.path.exists("/var/lib/dpkg/info/td.list"):
            run("dpkg", "-P", "td")
        if not user_before and has_user("td"):
            run("deluser", "--system", "--quiet", "td")
        if not user_before:
            run("sh", "-c", "getent group td >/dev/null && delgroup --system --quiet td || true")


def version_of(binary):
    r = run(binary, "--version")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


def test_make_install_puts_everything_under_prefix_in_destdir_and_uninstall_removes_it(tmp_path):
    dest = str(tmp_path)
    r = run("make", "--no-print-directory", "install", f"DESTDIR={dest}", "PREFIX=/opt/td",
            cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(os.path.relpath(os.path.join(d, f), dest)
                   for d, _, fs in os.walk(dest) for f in fs)
    assert files == sorted([
        "opt/td/sbin/td", "opt/td/bin/tdctl", "opt/td/etc/td/td.json",
        "opt/td/etc/logrotate.d/td", "opt/td/lib/systemd/system/td.service",
        "opt/td/share/bash-completion/completions/tdctl", "opt/td/share/man/man1/tdctl.1",
        "opt/td/share/man/man5/td.json.5", "opt/td/share/man/man8/td.8",
        "opt/td/share/doc/td/README.md", "opt/td/share/doc/td/ARCHITECTURE.md",
        "opt/td/share/doc/td/examples/README.md", "opt/td/share/doc/td/examples/td.json"]), files
    with open(os.path.join(dest, "opt/td/lib/systemd/system/td.service")) as f:
        unit = f.read()
    assert "ExecStart=/opt/td/sbin/td -c /opt/td/etc/td/td.json\n" in unit, unit
    assert version_of(os.path.join(dest, "opt/td/sbin/td")) == version_of(TD)
    assert version_of(os.path.join(dest, "opt/td/bin/tdctl")) == version_of(TD)

    # A config already there is never replaced.
    with open(os.path.join(dest, "opt/td/etc/td/td.json"), "w") as f:
        f.write("{}\n")
    r = run("make", "--no-print-directory", "install", f"DESTDIR={dest}", "PREFIX=/opt/td",
            cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(dest, "opt/td/etc/td/td.json")) as f:
        assert f.read() == "{}\n"

    r = run("make", "--no-print-directory", "uninstall", f"DESTDIR={dest}", "PREFIX=/opt/td",
            cwd=REPO)
    assert r.returncode == 0, r.stderr
    left = [os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs]
    assert left == ["opt/td/etc/td/td.json"], left


@debian_tools
def test_make_deb_builds_with_debian_tools_lintian_without_errors(deb):
    r = run("lintian", "--fail-on", "error", deb, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " E: " not in r.stdout and not r.stdout.startswith("E: "), r.stdout
    info = run("dpkg-deb", "-f", deb, "Package", "Version")
    assert info.stdout.split() == ["Package:", "td", "Version:", version_of(TD)], info.stdout
    listing = run("dpkg-deb", "-c", deb).stdout
    for path in INSTALLED:
        assert "." + path + "\n" in listing, path
    conffiles = run("dpkg-deb", "-I", deb, "conffiles").stdout.split()
    assert conffiles == ["/etc/logrotate.d/td", "/etc/td/td.json"], conffiles


def child_of(pid, timeout=10.0):
    """The pid of the process whose parent is pid (runuser's td)."""
    def find():
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    return int(d)
        return None
    return wait_for(find, timeout, what=f"a child of {pid}")


def api(method, path, token, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


@debian_tools
def test_deb_installs_runs_as_user_td_reloads_stops_and_purges_cleanly(deb, machine):
    r = run("dpkg", "-i", deb, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    # Files in place, the config a conffile readable by td only (it holds the admin token).
    for path in INSTALLED:
        assert os.path.exists(path), path
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "td").stdout
    assert "/etc/td/td.json" in conffiles and "/etc/logrotate.d/td" in conffiles, conffiles
    td_user = pwd.getpwnam("td")
    st = os.stat("/etc/td/td.json")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, td_user.pw_gid, 0o640)
    for d in ("/var/lib/td", "/var/log/td"):
        assert os.stat(d).st_uid == td_user.pw_uid, d
    with gzip.open("/usr/share/man/man5/td.json.5.gz", "rt") as f:
        page = f.read()
    for key in ("state_file", "access_log", "drain_ms", "slow_start_ms", "max_conns"):
        assert key in page, key
    assert version_of("/usr/bin/tdctl") == version_of("/usr/sbin/td") == version_of(TD)

    # The shipped config passes td -t, as root and as td (the unit's ExecStartPre), and the unit
    # verifies clean.
    for cmd in (["/usr/sbin/td"], ["runuser", "-u", "td", "--", "/usr/sbin/td"]):
        r = run(*cmd, "-t", "-c", "/etc/td/td.json")
        assert r.returncode == 0 and r.stdout == "configuration OK\n", r.stdout + r.stderr
    r = run("systemd-analyze", "verify", "/lib/systemd/system/td.service")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
    with open("/lib/systemd/system/td.service") as f:
        unit = f.read()
    for line in ("Type=notify", "ExecStartPre=/usr/sbin/td -t -c /etc/td/td.json",
                 "ExecStart=/usr/sbin/td -c /etc/td/td.json", "User=td",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line + "\n" in unit, line
    with open("/etc/td/td.json") as f:
        cfg = json.load(f)
    timeout_stop_s = int(unit.split("TimeoutStopSec=")[1].split()[0])
    assert timeout_stop_s * 1000 > cfg["timeouts"]["drain_ms"]
    # logrotate (not installed here: it brings a cron daemon) rotates what td writes, then asks
    # td to reopen it.
    with open("/etc/logrotate.d/td") as f:
        rotate = f.read()
    assert "/var/log/td/*.log {" in rotate and "--signal=USR1 td.service" in rotate, rotate
    assert cfg["access_log"].startswith("/var/log/td/") and cfg["access_log"].endswith(".log")
    assert cfg["state_file"].startswith("/var/lib/td/")

    # td as user td from the installed files, in front of the example's backends.
    machine.append(Proc([TD, "backend", f"blue=127.0.0.1:{PORTS['blue']}",
                         f"green=127.0.0.1:{PORTS['green']}"], "package-backends"))
    wait_port(PORTS["blue"])
    wait_port(PORTS["green"])
    runner = Proc(["runuser", "-u", "td", "--", "/usr/sbin/td", "-c", "/etc/td/td.json"],
                  "package-td")
    machine.append(runner)
    wait_port(PORTS["td"], timeout=30)
    wait_port(PORTS["admin"], timeout=30)
    pid = child_of(runner.pid)
    with open(f"/proc/{pid}/status") as f:
        uid = next(ln for ln in f if ln.startswith("Uid:")).split()[1]
    assert int(uid) == td_user.pw_uid
    r = run("ps", "-o", "user=", "-p", str(pid))
    assert r.stdout.strip() == "td", r.stdout
    seen = {dict(get_once(PORTS["td"])[1]).get("X-TD-Demo-Backend") for _ in range(4)}
    assert seen == {"blue", "green"}, seen

    # The admin token of the shipped config works; a change lands in the state file in
    # /var/lib/td, written by td.
    token = cfg["admin"]["token"]
    api("PUT", "/api/v1/ratio", token, {"blue": 100, "green": 0})
    for path in ("/var/lib/td/state.json", "/var/lib/td/state.audit.jsonl"):
        wait_for(lambda: os.path.exists(path), 10, what=path)
        assert os.stat(path).st_uid == td_user.pw_uid, path
    with open("/var/lib/td/state.json") as f:
        assert "backends.blue.weight" in f.read()
    wait_for(lambda: os.path.exists("/var/log/td/access.log")
             and os.path.getsize("/var/log/td/access.log") > 0, 10, what="an access log line")

    # Bash completion: the commands, and the backend names read from this td.
    script = ("source /usr/share/bash-completion/completions/tdctl; COMP_WORDS=(tdctl --token "
              f"{token} state ''); COMP_CWORD=4; _tdctl; echo ${{COMPREPLY[*]}}")
    r = run("bash", "-c", script)
    assert r.stdout.split() == ["blue", "green"], r.stdout + r.stderr

    # SIGHUP without systemctl: the file is read again (a new config version).
    version = api("GET", "/api/v1/state", token)["version"]
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: api("GET", "/api/v1/state", token)["version"] > version,
             10 * (3 if ASAN else 1), what="the reload")

    # Stopped by its PID: a clean exit.
    os.kill(pid, signal.SIGTERM)
    assert runner.p.wait(timeout=60) == 0, runner.output()[-3000:]
    assert "stopped" in runner.output()

    # Purged: the files, the state and the logs gone; the td user stays (Debian's policy for
    # system users: files owned by its uid may remain); the fixture removes it afterwards.
    r = run("dpkg", "-P", "td", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in INSTALLED + ["/etc/td", "/var/lib/td", "/var/log/td", "/usr/share/doc/td",
                             "/etc/systemd/system/multi-user.target.wants/td.service"]:
        assert not os.path.exists(path), path
    assert not installed()
    assert "/etc/td/td.json" not in run("dpkg-statoverride", "--list").stdout
    assert has_user("td")


def run_postinst(tmp_path, *args, upgrade_status=0):
    """debian/td.postinst run with fakes on PATH for systemctl, deb-systemd-invoke, runuser, the
    account and file tools, and td (at its /usr/sbin path, rewritten); each records its
    arguments. The running td's MainPID is 4242. Returns the recorded calls."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (tmp_path / "systemd").mkdir()
    record = f'echo "$(basename "$0") $*" >> {calls}\n'
    scripts = {
        "systemctl": record + 'case "$*" in *MainPID*) echo 4242;; esac\nexit 0\n',
        "deb-systemd-invoke": record + "exit 0\n",
        "runuser": record + 'shift 3\nexec "$@"\n',
        "td": record + f'case "$1" in upgrade) exit {upgrade_status};; esac\nexit 0\n',
    }
    for name in ("getent", "adduser", "install", "dpkg-statoverride"):
        scripts[name] = "exit 0\n"
    for name, body in scripts.items():
        (fake / name).write_text("#!/bin/sh\n" + body)
        (fake / name).chmod(0o755)
    with open(os.path.join(REPO, "debian", "td.postinst")) as f:
        text = f.read()
    text = text.replace("/usr/sbin/td ", f"{fake}/td ").replace(
        "/run/systemd/system", str(tmp_path / "systemd")).replace(
        "/usr/sbin/policy-rc.d", str(tmp_path / "no-policy-rc.d"))
    (tmp_path / "postinst").write_text(text)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    env.pop("DPKG_ROOT", None)
    subprocess.run(["sh", str(tmp_path / "postinst"), *args], env=env, check=True,
                   capture_output=True, timeout=60)
    return calls.read_text().splitlines() if calls.exists() else []


def test_postinst_restarts_a_td_before_0_4_0_instead_of_sending_it_sigusr2(tmp_path):
    calls = run_postinst(tmp_path, "configure", "0.3.0")
    assert "deb-systemd-invoke restart td.service" in calls, calls
    assert not any(c.startswith("td upgrade") or "kill" in c for c in calls), calls


def test_postinst_upgrades_a_td_from_0_4_0_on_by_td_upgrade_and_waits_for_its_outcome(tmp_path):
    calls = run_postinst(tmp_path, "configure", "0.4.0")
    assert "td upgrade --pid 4242" in calls, calls
    assert not any(c.startswith("deb-systemd-invoke") or "kill" in c for c in calls), calls


def test_postinst_restarts_after_a_failed_upgrade_only_with_a_config_td_accepts_as_its_user(
        tmp_path):
    calls = run_postinst(tmp_path, "configure", "0.4.0", upgrade_status=1)
    assert "td upgrade --pid 4242" in calls, calls
    assert "runuser -u td -- " + str(tmp_path / "bin" / "td") + " -t -c /etc/td/td.json" in calls
    assert "deb-systemd-invoke restart td.service" in calls, calls
