"""td's etcd client (src/etcd.c) against a real etcd: tests/etcd/etcd_client_test.c runs each
call and prints "ok NAME" or "FAIL NAME: why"; these tests start etcd and read that."""
import os
import subprocess
import tempfile

from conftest import ASAN, TD, TcpRelay, free_port

CLIENT_TEST = os.path.join(os.path.dirname(os.path.abspath(TD)), "tests", "etcd_client_test")


def run_client(*args):
    assert os.access(CLIENT_TEST, os.X_OK), f"{CLIENT_TEST} missing: make etcd-test"
    r = subprocess.run([CLIENT_TEST, *args], capture_output=True, text=True,
                       timeout=120 * (3 if ASAN else 1))
    print(r.stdout, r.stderr)
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    return r


def passed(r):
    return [line[3:] for line in r.stdout.splitlines() if line.startswith("ok ")]


def test_etcd_client_kv_leases_and_watches_against_etcd(etcd_cluster):
    c = etcd_cluster(1)
    r = run_client(c.endpoints[0])
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    for name in ["put via txn", "range single key", "range prefix", "range limit",
                 "range descending", "cas that holds", "cas that fails returns the fail range",
                 "create if absent", "lease grant", "lease keepalive",
                 "a key under a revoked lease is gone",
                 "keepalive of a revoked lease says it is gone",
                 "watch sees PUT and DELETE in order", "watch from a past revision",
                 "watch from a compacted revision reports compact_revision",
                 "a watch cancelled in its callback calls nothing after",
                 "the client shut down from inside a watch callback calls nothing after"]:
        assert name in passed(r), name


def test_etcd_client_fails_over_to_the_next_endpoint_when_the_first_is_dead(etcd_cluster):
    c = etcd_cluster(1)
    dead = f"http://127.0.0.1:{free_port()}"
    r = run_client(dead, c.endpoints[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fail-over: the first endpoint dead, calls succeed on the next" in passed(r)
    assert "fail-over of a watch" in passed(r)


def test_etcd_client_fails_over_between_members_of_a_cluster(etcd_cluster):
    c = etcd_cluster(3)
    c.kill(0)
    c.wait_healthy(1)  # a leader again, if m0 was it
    r = run_client(c.endpoints[0], c.endpoints[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fail-over: the first endpoint dead, calls succeed on the next" in passed(r)
    # m0 back with its data dir, m1 gone: the calls go to m0.
    c.start(0)
    c.kill(1)
    c.wait_healthy(0)
    r = run_client(c.endpoints[1], c.endpoints[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fail-over: the first endpoint dead, calls succeed on the next" in passed(r)


def test_etcd_client_names_every_endpoint_when_none_answers():
    r = run_client("--all-dead", f"http://127.0.0.1:{free_port()}",
                   f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 0, r.stdout + r.stderr


def test_etcd_client_authenticates_and_renews_an_expired_token(etcd_cluster):
    c = etcd_cluster(1, args=("--auth-token-ttl", "1"))
    for cmd in (["user", "add", "root:s3cret"], ["user", "grant-role", "root", "root"],
                ["auth", "enable"]):
        p = c.etcdctl(*cmd)
        assert p.returncode == 0, p.stderr
    r = run_client("--auth-only", "--ttl-wait-ms", "2500", "--user", "root", "--password",
                   "s3cret", c.endpoints[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert passed(r) == ["with auth: put and range", "with auth: watch",
                         "with auth: an expired token is renewed"]
    bad = run_client("--auth-only", "--user", "root", "--password", "wrong", c.endpoints[0])
    assert bad.returncode == 1
    assert "authentication failed" in bad.stdout, bad.stdout


def test_etcd_client_watch_ends_with_an_error_when_its_stream_is_cut(etcd_cluster):
    c = etcd_cluster(1)
    relay = TcpRelay("127.0.0.1", c.client_ports[0])
    endpoint = f"http://127.0.0.1:{relay.port}"
    p = subprocess.Popen([CLIENT_TEST, "--watch-until-end", endpoint], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # the program bounds its own waits
        assert first.strip() == "ok watch live", first
        relay.cut()
        out, err = p.communicate(timeout=120 * (3 if ASAN else 1))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        relay.stop()
    print(first, out, err)
    assert p.returncode == 0, first + out + err
    assert "ok a broken watch stream ends the watch with an error" in out
    assert "AddressSanitizer" not in err


def make_pki(d):
    """A CA, a certificate for 127.0.0.1 (etcd's) and a client certificate, all signed by it."""
    def openssl(*args):
        p = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=td etcd test CA")
    # etcd's JSON gateway dials etcd itself with the server's certificate: it must be a client
    # certificate too.
    server = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"
    for name, ext in (("server", server), ("client", "extendedKeyUsage=clientAuth")):
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {"ca": os.path.join(d, "ca.pem"), "cert": os.path.join(d, "server.pem"),
            "key": os.path.join(d, "server.key"), "client_cert": os.path.join(d, "client.pem"),
            "client_key": os.path.join(d, "client.key")}


def test_etcd_client_speaks_https_with_a_client_certificate(etcd_cluster):
    tls = make_pki(tempfile.mkdtemp(prefix="td-e2e-etcd-pki-"))
    c = etcd_cluster(1, tls=tls)
    r = run_client("--tls", tls["ca"], tls["client_cert"], tls["client_key"], c.endpoints[0])
    assert r.returncode == 0, r.stdout + r.stderr
    assert passed(r) == ["over TLS: put and range", "over TLS: watch"]
    # Without the client certificate etcd refuses the handshake: no endpoint answers.
    bad = run_client("--tls", tls["ca"], "", "", c.endpoints[0])
    assert bad.returncode == 1 and "FAIL over TLS: put and range" in bad.stdout, bad.stdout


def test_fetch_sends_headers_bounds_bodies_streams_and_cancels(backends):
    b = backends(("blue", 1))
    r = run_client("--fetch", f"http://127.0.0.1:{b.ports['blue'][0]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert passed(r) == ["fetch: extra headers sent, body captured",
                         "fetch: a body over max_body is an error",
                         "fetch: a streamed body comes whole through the data callback",
                         "fetch: a cancelled request calls nothing"]


def test_etcd_client_calls_in_flight_succeed_on_another_member_when_theirs_stops(etcd_cluster):
    """A member stopped (SIGTERM, as systemd stops it) while calls are in flight answers what it
    still holds with "the client connection is closing" (408) and the like: no answer from etcd,
    so the calls go on to the next member instead of failing."""
    c = etcd_cluster(3)
    p = subprocess.Popen([CLIENT_TEST, "--calls-while-killed", *c.endpoints],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # the program bounds its own waits
        assert first.strip() == "ok calls started", first
        c.procs[0].terminate()
        c.procs[0].wait(timeout=60)
        out, err = p.communicate(timeout=120 * (3 if ASAN else 1))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    print(first, out, err)
    assert "AddressSanitizer" not in err and "runtime error" not in err, err
    assert "ok calls in flight when their member stops succeed on another" in out, out
    assert p.returncode == 0, first + out + err
