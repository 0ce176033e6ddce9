"""End-to-end tests of td's HTTPS features: TLS listeners (certificates chosen by SNI, ALPN,
minimum protocol version, session resumption), the plain-HTTP redirect to https,
X-Forwarded-Proto, TLS to backends (verification, pooled connections, ssl_hello and http health
checks over TLS), certificates swapped by SIGHUP or PUT /api/v1/config under load, and expired or
mismatched certificates refused by `td -t`, SIGHUP and the API.

The certificates are made at test time with the `openssl` command (a private CA, server
certificates, an expired one, a key that does not match). Clients are `curl`, `openssl s_client`
and Python's ssl module. Every process is started by a fixture, every socket and subprocess has a
timeout, and all traffic stays on 127.0.0.1."""
import copy
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import (ASAN, RSS_SCALE, TD, Proc, RawConn, Td, backend_cfg, demo_body, free_port,
                      pos, reload_config, rss_kb, server_state, wait_for, wait_port)

TIMEOUT = 10  # seconds, for every client socket and request
SLACK = 3.0 if ASAN else 1.0  # extra seconds allowed for waits under ASan


# ---------------------------------------------------------------------------------------------
# Certificates

CA_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = {cn}
[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ ca ]
default_ca = testca
[ testca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
default_md = sha256
policy = anything
copy_extensions = none
unique_subject = no
[ anything ]
commonName = supplied
"""

LEAF_EXT = """\
[ leaf ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""


class Cert:
    def __init__(self, cert, key, serial, cn):
        self.cert, self.key, self.serial, self.cn = cert, key, serial, cn

    def pair(self):
        """The listener config entry."""
        return {"cert": self.cert, "key": self.key}


class Pki:
    """A private CA (and a second, unrelated one) and the server certificates the tests use,
    made with the openssl command in a temporary directory."""

    def __init__(self, d):
        self.dir = d
        self.ca, self.ca_key = self._ca("ca", "td test CA")
        self.other_ca, _ = self._ca("other", "some other CA")
        self._serial = 0x1000
        # Server certificates, each with its own serial number (compared after a swap).
        self.default = self.leaf("default", "default.test", ["default.test"])
        self.a1 = self.leaf("a1", "a.test", ["a.test"])
        self.a2 = self.leaf("a2", "a.test", ["a.test"])  # same name, same CA, another serial
        self.a3 = self.leaf("a3", "a.test", ["a.test"])
        self.b = self.leaf("b", "*.b.test", ["*.b.test"], rsa=True)
        self.xb = self.leaf("xb", "x.b.test", ["x.b.test"])
        self.expired = self.leaf("expired", "a.test", ["a.test"],
                                 dates=("20200101000000Z", "20200102000000Z"))
        # A key that belongs to no certificate: with a1's certificate it makes a mismatched pair.
        self.stray_key = self._key("stray")
        self.mismatched = Cert(self.a1.cert, self.stray_key, self.a1.serial, "a.test")
        self.not_pem = os.path.join(d, "not-a-cert.pem")
        with open(self.not_pem, "w") as f:
            f.write("this is not a certificate\n")

    def openssl(self, *args):
        p = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, f"openssl {' '.join(args)}:\n{p.stdout}{p.stderr}"
        return p.stdout

    def _key(self, name, rsa=False):
        path = os.path.join(self.dir, f"{name}.key")
        if rsa:
            self.openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                         "-out", path)
        else:
            self.openssl("genpkey", "-algorithm", "EC", "-pkeyopt",
                         "ec_paramgen_curve:prime256v1", "-out", path)
        return path

    def _ca(self, name, cn):
        cadir = os.path.join(self.dir, name)
        os.makedirs(os.path.join(cadir, "issued"))
        with open(os.path.join(cadir, "ca.cnf"), "w") as f:
            f.write(CA_CNF.format(cn=cn, dir=cadir))
        open(os.path.join(cadir, "index.txt"), "w").close()
        key = self._key(f"{name}-ca")
        cert = os.path.join(self.dir, f"{name}-ca.pem")
        self.openssl("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "30",
                     "-config", os.path.join(cadir, "ca.cnf"), "-extensions", "v3_ca")
        return cert, key

    def leaf(self, name, cn, sans, rsa=False, dates=None):
        """A server certificate signed by the test CA with `openssl ca`; dates=(start, end) for
        one outside its validity period."""
        self._serial += 1
        cadir = os.path.join(self.dir, "ca")
        with open(os.path.join(cadir, "serial"), "w") as f:
            f.write(f"{self._serial:04X}\n")
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write(LEAF_EXT.format(san=", ".join(f"DNS:{s}" for s in sans)))
        key = self._key(name, rsa)
        csr = os.path.join(self.dir, f"{name}.csr")
        cert = os.path.join(self.dir, f"{name}.pem")
        self.openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        when = ["-startdate", dates[0], "-enddate", dates[1]] if dates else ["-days", "30"]
        self.openssl("ca", "-batch", "-config", os.path.join(cadir, "ca.cnf"), "-cert", self.ca,
                     "-keyfile", self.ca_key, "-in", csr, "-out", cert, "-notext",
                     "-extfile", ext, "-extensions", "leaf", *when)
        return Cert(cert, key, self._serial, cn)


@pytest.fixture(scope="module")
def pki():
    d = tempfile.mkdtemp(prefix="td-e2e-pki-")
    return Pki(d)


# ---------------------------------------------------------------------------------------------
# td with listeners of our own

class TlsTd(Td):
    """A td whose config brings its own "listeners" (ports chosen by the test); waits until all
    of them and the admin port accept connections. Same interface as conftest.Td."""

    def __init__(self, cfg):  # pylint: disable=super-init-not-called
        cfg = copy.deepcopy(cfg)
        self.ports = [int(l["address"].rsplit(":", 1)[1]) for l in cfg["listeners"]]
        self.port = self.ports[0]
        self.admin_port = free_port()
        cfg.setdefault("workers", 2)
        cfg.setdefault("admin", {"address": f"127.0.0.1:{self.admin_port}"})
        self.token = None
        self.dir = tempfile.mkdtemp(prefix="td-e2e-tls-")
        self.config_path = os.path.join(self.dir, "td.json")
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.proc = Proc([TD, "-c", self.config_path], "td")
        for p in self.ports + [self.admin_port]:
            try:
                wait_port(p)
            except TimeoutError:
                self.proc.stop()
                raise AssertionError(f"td did not open 127.0.0.1:{p}:\n"
                                     + self.proc.output()[-3000:])


@pytest.fixture
def tls_td():
    started = []

    def start(cfg):
        t = TlsTd(cfg)
        started.append(t)
        return t

    yield start
    for t in started:
        rc = t.stop()
        out = t.proc.output()
        assert rc == 0, f"td exited {rc}:\n{out[-4000:]}"
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


def tls_listener(port, *certs, min_version=None):
    tls = {"certificates": [c.pair() for c in certs]}
    if min_version:
        tls["min_version"] = min_version
    return {"address": f"127.0.0.1:{port}", "tls": tls}


def https_td(tls_td, backends, *certs, min_version=None, extra_listeners=(), **cfg_extra):
    """A demo backend "blue" and a td with one TLS listener (certs) in front of it."""
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])}, **cfg_extra)
    cfg["listeners"] = [tls_listener(free_port(), *certs, min_version=min_version)]
    cfg["listeners"] += list(extra_listeners)
    return tls_td(cfg), b


# ---------------------------------------------------------------------------------------------
# Clients

def curl(*args, timeout=30):
    """curl with a time limit and no proxy from the environment; returns CompletedProcess."""
    return subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", str(TIMEOUT), *args],
                          capture_output=True, text=True, timeout=timeout)


def curl_https(pki, port, name="a.test", path="/", *args):
    return curl("--cacert", pki.ca, "--resolve", f"{name}:{port}:127.0.0.1",
                "-o", "/dev/null", "-w", "%{http_code}", *args, f"https://{name}:{port}{path}")


def s_client(pki, port, servername=None, args=(), data=b"", timeout=30):
    """openssl s_client to 127.0.0.1:port (SNI servername, or none); returns (rc, output)."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    cmd += list(args)
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def peer_cert(output):
    """(subject, serial) of the server certificate printed by s_client, via openssl x509."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S)
    assert m, f"no certificate in the s_client output:\n{output[-3000:]}"
    p = subprocess.run(["openssl", "x509", "-noout", "-subject", "-serial"], input=m.group(0),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    subject = re.search(r"^subject=\s*(.*)$", p.stdout, re.M).group(1)
    serial = int(re.search(r"^serial=(\w+)$", p.stdout, re.M).group(1), 16)
    return subject, serial


def cn_of(subject):
    m = re.search(r"CN\s*=\s*([^,/]+)", subject)
    return m.group(1).strip() if m else None


def protocol_of(output):
    """The protocol s_client negotiated, e.g. "TLSv1.3", or None when the handshake failed."""
    m = re.search(r"^(?:New|Reused), (TLSv[\d.]+), Cipher is (\S+)", output, re.M)
    return m.group(1) if m and m.group(2) != "(NONE)" else None


def client_ctx(pki, ca=None):
    ctx = ssl.create_default_context(cafile=ca or pki.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class SniConn(http.client.HTTPConnection):
    """A keep-alive HTTPS connection to 127.0.0.1:port that sends `sni` (verified against the
    certificate by ssl's check_hostname) and a Host of that name."""

    def __init__(self, port, sni, ctx, timeout=TIMEOUT):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.sni, self.ctx = sni, ctx

    def connect(self):
        s = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self.ctx.wrap_socket(s, server_hostname=self.sni)
        except BaseException:
            s.close()
            raise

    def serial(self):
        return int(self.sock.getpeercert()["serialNumber"], 16)

    def get(self, path="/", headers=None):
        h = {"Host": self.sni}
        h.update(headers or {})
        self.request("GET", path, headers=h)
        r = self.getresponse()
        return r.status, r.headers, r.read()


def https_get(pki, port, path="/", sni="a.test"):
    c = SniConn(port, sni, client_ctx(pki))
    try:
        status, h, body = c.get(path)
        return status, h, body, c.serial()
    finally:
        c.close()


def wait_log(t, needle, start=0, timeout=5.0):
    """Waits until td's log (from offset start) contains needle; returns that part of the log."""
    deadline = time.monotonic() + timeout + SLACK
    while True:
        out = t.proc.output()[start:]
        if needle in out or time.monotonic() >= deadline:
            return out
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# TLS listeners: SNI, ALPN, versions, resumption

def test_sni_picks_the_certificate_and_alpn_is_http11(pki, backends, tls_td):
    # The default (first) certificate, then exact names, a wildcard, and an exact name listed
    # after the wildcard that covers it: exact names win whatever the order.
    t, _ = https_td(tls_td, backends, pki.default, pki.a1, pki.b, pki.xb)
    cases = [
        ("a.test", "a.test"),
        ("A.Test", "a.test"),             # names compare case-insensitively
        ("foo.b.test", "*.b.test"),
        ("x.b.test", "x.b.test"),         # exact beats wildcard
        ("y.x.b.test", "default.test"),   # a wildcard covers one label only
        ("b.test", "default.test"),       # ... and not the bare parent
        ("unknown.test", "default.test"),
        (None, "default.test"),           # no SNI: the default
    ]
    for name, want in cases:
        rc, out = s_client(pki, t.port, name, ["-alpn", "http/1.1"])
        assert protocol_of(out), (name, out[-2000:])
        subject, _ = peer_cert(out)
        assert cn_of(subject) == want, (name, subject)
        assert "ALPN protocol: http/1.1" in out, (name, out[-2000:])
        assert "Verify return code: 0 (ok)" in out, (name, out[-2000:])

    # A client offering h2 first gets h2 (the listener's "http2" is on by default); one that
    # offers only protocols td lacks is refused (no_application_protocol), and td goes on
    # serving.
    rc, out = s_client(pki, t.port, "a.test", ["-alpn", "h2,http/1.1"])
    assert "ALPN protocol: h2" in out, out[-2000:]
    rc, out = s_client(pki, t.port, "a.test", ["-alpn", "spdy/3.1"])
    assert protocol_of(out) is None, out[-2000:]
    assert re.search(r"no application protocol|alert number 120", out), out[-2000:]

    # End to end with curl (which checks the name against the certificate): each name reaches
    # the backend through its own certificate.
    for name in ("a.test", "foo.b.test", "x.b.test", "default.test"):
        p = curl_https(pki, t.port, name, "/")
        assert p.returncode == 0 and p.stdout == "200", (name, p.stdout, p.stderr)
    # The same with Python's ssl (also verifies the name).
    for name, cert in (("a.test", pki.a1), ("bar.b.test", pki.b), ("x.b.test", pki.xb)):
        status, h, _, serial = https_get(pki, t.port, "/", name)
        assert status == 200 and h.get("X-TD-Demo-Backend") == "blue"
        assert serial == cert.serial, (name, hex(serial))


def test_min_version_12_refuses_tls_10_and_11(pki, backends, tls_td):
    t, _ = https_td(tls_td, backends, pki.a1)  # min_version defaults to 1.2
    # TLS 1.2 and 1.3 are served.
    p = curl_https(pki, t.port, "a.test", "/", "--tlsv1.2", "--tls-max", "1.2")
    assert p.returncode == 0 and p.stdout == "200", (p.stdout, p.stderr)
    p = curl_https(pki, t.port, "a.test", "/", "--tlsv1.3")
    assert p.returncode == 0 and p.stdout == "200", (p.stdout, p.stderr)
    rc, out = s_client(pki, t.port, "a.test", ["-tls1_2"])
    assert protocol_of(out) == "TLSv1.2", out[-2000:]
    rc, out = s_client(pki, t.port, "a.test")
    assert protocol_of(out) == "TLSv1.3", out[-2000:]
    # TLS 1.0 and 1.1 are refused: with curl, and with s_client at security level 0 (so that it
    # is td, not the client, that refuses).
    p = curl_https(pki, t.port, "a.test", "/", "--tlsv1.0", "--tls-max", "1.1")
    assert p.returncode != 0 and p.stdout in ("", "000"), (p.stdout, p.stderr)
    for flag in ("-tls1", "-tls1_1"):
        rc, out = s_client(pki, t.port, "a.test", [flag, "-cipher", "DEFAULT:@SECLEVEL=0"])
        assert rc != 0 and protocol_of(out) is None, (flag, out[-2000:])
    # td still serves after the refused handshakes.
    p = curl_https(pki, t.port, "a.test", "/")
    assert p.returncode == 0 and p.stdout == "200", (p.stdout, p.stderr)


def test_min_version_13_refuses_tls_12(pki, backends, tls_td):
    p12 = free_port()
    # Two TLS listeners on one td: 1.3 only, and the default 1.2.
    t, _ = https_td(tls_td, backends, pki.a1, min_version="1.3",
                    extra_listeners=[tls_listener(p12, pki.a1)])
    p = curl_https(pki, t.port, "a.test", "/", "--tlsv1.2", "--tls-max", "1.2")
    assert p.returncode != 0 and p.stdout in ("", "000"), (p.stdout, p.stderr)
    rc, out = s_client(pki, t.port, "a.test", ["-tls1_2"])
    assert rc != 0 and protocol_of(out) is None, out[-2000:]
    p = curl_https(pki, t.port, "a.test", "/", "--tlsv1.3")
    assert p.returncode == 0 and p.stdout == "200", (p.stdout, p.stderr)
    rc, out = s_client(pki, t.port, "a.test")
    assert protocol_of(out) == "TLSv1.3", out[-2000:]
    # The other listener keeps its own minimum.
    p = curl_https(pki, p12, "a.test", "/", "--tlsv1.2", "--tls-max", "1.2")
    assert p.returncode == 0 and p.stdout == "200", (p.stdout, p.stderr)


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_resumption(pki, backends, tls_td, version, tmp_path):
    t, _ = https_td(tls_td, backends, pki.a1)
    sess = str(tmp_path / "sess.pem")
    # A whole request with Connection: close and -ign_eof: s_client stays until td closes, so
    # the session ticket (sent after the handshake in TLS 1.3) is received and saved.
    req = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    rc, out = s_client(pki, t.port, "a.test", [version, "-ign_eof", "-sess_out", sess], req)
    assert re.search(r"^New, TLSv1\.[23]", out, re.M), out[-2000:]
    assert "HTTP/1.1 200" in out, out[-2000:]
    assert os.path.getsize(sess) > 0
    # Several resumptions (connections land on either worker: the ticket keys are shared).
    for _ in range(4):
        rc, out = s_client(pki, t.port, "a.test",
                           [version, "-ign_eof", "-sess_in", sess], req)
        assert re.search(r"^Reused, TLSv1\.[23]", out, re.M), out[-3000:]
        assert "HTTP/1.1 200" in out, out[-2000:]


# ---------------------------------------------------------------------------------------------
# Redirect to https, X-Forwarded-Proto

def test_redirect_http_to_https(pki, backends, tls_td):
    p_plain, p_default, p_443, tls_port = free_port(), free_port(), free_port(), free_port()
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["listeners"] = [
        tls_listener(tls_port, pki.a1),
        {"address": f"127.0.0.1:{p_plain}", "redirect_https": True, "https_port": tls_port},
        {"address": f"127.0.0.1:{p_default}", "redirect_https": True},
        {"address": f"127.0.0.1:{p_443}", "redirect_https": True, "https_port": 443},
    ]
    t = tls_td(cfg)

    def ask(port, method, target, host, body=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            c.putrequest(method, target, skip_host=True)
            c.putheader("Host", host)
            if body is not None:
                c.putheader("Content-Length", str(len(body)))
            c.endheaders(body)
            r = c.getresponse()
            r.read()
            return r.status, r.headers.get("Location")
        finally:
            c.close()

    path = "/some/path?x=1&y=two%20words"
    # GET and HEAD: 301; the host loses the plain port; https_port is written unless 443 or 0.
    assert ask(p_plain, "GET", path, f"a.test:{p_plain}") == (
        301, f"https://a.test:{tls_port}{path}")
    assert ask(p_plain, "HEAD", path, "a.test") == (301, f"https://a.test:{tls_port}{path}")
    assert ask(p_default, "GET", path, f"a.test:{p_default}") == (301, f"https://a.test{path}")
    assert ask(p_443, "GET", "/", f"a.test:{p_443}") == (301, "https://a.test/")
    assert ask(p_plain, "GET", "/x", f"[::1]:{p_plain}") == (301, f"https://[::1]:{tls_port}/x")
    # Other methods: 308, which keeps the method and the body.
    for m in ("POST", "PUT", "DELETE", "PATCH"):
        assert ask(p_plain, m, path, f"a.test:{p_plain}", b"data") == (
            308, f"https://a.test:{tls_port}{path}"), m
    # With curl: the status and Location, then following the redirect to the TLS listener.
    p = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
             f"http://127.0.0.1:{p_plain}/headers?q=1", "-H", f"Host: a.test:{p_plain}")
    assert p.stdout == f"301 https://a.test:{tls_port}/headers?q=1", (p.stdout, p.stderr)
    p = curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "x",
             f"http://127.0.0.1:{p_plain}/echo", "-H", f"Host: a.test:{p_plain}")
    assert p.stdout == "308", (p.stdout, p.stderr)
    p = curl("-L", "--cacert", pki.ca, "--resolve", f"a.test:{p_plain}:127.0.0.1",
             "--resolve", f"a.test:{tls_port}:127.0.0.1", f"http://a.test:{p_plain}/headers?q=1")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^X-Forwarded-Proto: https\r?$", p.stdout, re.M | re.I), p.stdout
    assert re.search(r"^GET /headers\?q=1 HTTP/1.1", p.stdout, re.M), p.stdout
    # Only that last request reached the backend: redirects are td's own answers.
    s = t.state()
    assert s["backends"][0]["requests"] == 1, s["backends"][0]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_redirect_after_a_request_body(pki, backends, tls_td, framing):
    """A 308 for a request with a body: the body is not taken for the next request on the
    connection (td reads past it, or closes the connection)."""
    plain, tls_port = free_port(), free_port()
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["listeners"] = [
        tls_listener(tls_port, pki.a1),
        {"address": f"127.0.0.1:{plain}", "redirect_https": True, "https_port": tls_port},
    ]
    t = tls_td(cfg)
    body = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"  # a request as the body
    if framing == "chunked":
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(body) + body \
                 + b"\r\n0\r\n\r\n"
    else:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    with RawConn(plain, timeout=TIMEOUT) as c:
        c.send(b"POST /a?x=1 HTTP/1.1\r\nHost: a.test\r\n" + framed
               + b"GET /b HTTP/1.1\r\nHost: a.test\r\n\r\n")
        status, h, _ = c.read_response()
        assert (status, h.get("Location")) == (308, f"https://a.test:{tls_port}/a?x=1")
        if "close" in (h.get("Connection") or "").lower():
            assert c.closed_by_peer(), "Connection: close but the connection stayed open"
        else:
            status, h, _ = c.read_response()
            assert (status, h.get("Location")) == (301, f"https://a.test:{tls_port}/b"), \
                (status, h.items)
    assert t.state()["backends"][0]["requests"] == 0  # nothing was forwarded
    # A request without a Host cannot be redirected: 400.
    with RawConn(plain, timeout=TIMEOUT) as c:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
        assert c.read_response()[0] == 400


def test_x_forwarded_proto(pki, backends, tls_td):
    plain = free_port()
    t, _ = https_td(tls_td, backends, pki.a1,
                    extra_listeners=[{"address": f"127.0.0.1:{plain}"}])
    # A client's own X-Forwarded-Proto is replaced, not passed on.
    c = SniConn(t.port, "a.test", client_ctx(pki))
    status, _, body = c.get("/headers", {"X-Forwarded-Proto": "http"})
    c.close()
    assert status == 200
    values = re.findall(r"^X-Forwarded-Proto:\s*(.*?)\r?$", body.decode(), re.M | re.I)
    assert values == ["https"], body.decode()
    p = curl("--cacert", pki.ca, "--resolve", f"a.test:{t.port}:127.0.0.1",
             f"https://a.test:{t.port}/headers")
    assert re.findall(r"^X-Forwarded-Proto:\s*(.*?)\r?$", p.stdout, re.M | re.I) == ["https"], \
        p.stdout
    # The plain listener of the same td says http.
    p = curl(f"http://127.0.0.1:{plain}/headers", "-H", "X-Forwarded-Proto: https")
    assert re.findall(r"^X-Forwarded-Proto:\s*(.*?)\r?$", p.stdout, re.M | re.I) == ["http"], \
        p.stdout


# ---------------------------------------------------------------------------------------------
# Traffic over TLS: bodies, pipelining, WebSocket, backpressure, silent clients

MB = 1024 * 1024


def tls_raw(pki, port, sni="a.test", rcvbuf=None):
    """A RawConn (conftest) whose socket speaks TLS to td."""
    c = RawConn(port, timeout=TIMEOUT, rcvbuf=rcvbuf)
    c.s = client_ctx(pki).wrap_socket(c.s, server_hostname=sni)
    return c


def check_bodies(port, conn_factory):
    """Downloads (Content-Length and chunked) and uploads (both framings) of 8 MB on one
    keep-alive connection, compared byte for byte."""
    n = 8 * MB
    c = conn_factory()
    try:
        for route in ("bytes", "chunked"):
            c.request("GET", f"/{route}/{n}", headers={"Host": "a.test"})
            r = c.getresponse()
            assert r.status == 200
            assert r.read() == demo_body(n), route
        body = os.urandom(n)
        want = {"received": n, "sum": sum(body) % 2 ** 32}
        c.request("POST", "/echo", body=body, headers={"Host": "a.test"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read()) == want
        c.request("POST", "/echo", body=iter([body[i:i + MB] for i in range(0, n, MB)]),
                  headers={"Host": "a.test"}, encode_chunked=True)
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read()) == want
    finally:
        c.close()


def test_large_bodies_over_tls_listener(pki, backends, tls_td):
    t, _ = https_td(tls_td, backends, pki.a1)
    check_bodies(t.port, lambda: SniConn(t.port, "a.test", client_ctx(pki)))


def test_large_bodies_through_tls_backend(pki, backends, tls_td, td):
    inner = tls_backend(tls_td, backends, pki)
    front = td(front_cfg(inner.port, {"verify": True, "ca": pki.ca, "sni": "a.test"}))
    check_bodies(front.port,
                 lambda: http.client.HTTPConnection("127.0.0.1", front.port, timeout=TIMEOUT))


def test_pipelined_requests_over_tls(pki, backends, tls_td):
    """Twenty requests in one TLS write: td answers all of them, in order, although the records
    holding them arrive together (no socket read wakes td up for the later ones)."""
    t, _ = https_td(tls_td, backends, pki.a1)
    with tls_raw(pki, t.port) as c:
        sizes = [1 + 37 * i for i in range(20)]
        c.send(b"".join(f"GET /bytes/{n} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
                        for n in sizes))
        for n in sizes:
            status, h, body = c.read_response()
            assert status == 200 and body == demo_body(n), n
        # And the connection stays usable.
        c.send(b"GET /bytes/5 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert c.read_response()[2] == demo_body(5)


def test_websocket_over_tls(pki, backends, tls_td):
    websocket = pytest.importorskip("websocket")
    t, _ = https_td(tls_td, backends, pki.a1)
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{t.port}/ws", timeout=TIMEOUT, host="a.test",
        sslopt={"ca_certs": pki.ca, "server_hostname": "a.test"})
    try:
        for size in (10, 300 * 1000):
            data = os.urandom(size)
            ws.send_binary(data)
            opcode, got = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_BINARY and got == data
        ws.send("hello")
        assert ws.recv() == "hello"
    finally:
        ws.close(timeout=5)
    assert https_get(pki, t.port)[0] == 200


def test_slow_reader_over_tls(pki, backends, tls_td):
    """A TLS client reading 64 KB per 100 ms from a 100 MB answer: td must stop reading from the
    backend (and stop encrypting) instead of buffering the answer."""
    t, _ = https_td(tls_td, backends, pki.a1)
    start = rss_kb(t.proc.pid)
    peak = start
    with tls_raw(pki, t.port, rcvbuf=64 * 1024) as c:
        c.send(b"GET /bytes/104857600 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        _, status, _ = c.read_head()
        assert status == 200
        got = len(c.buf)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            got += len(c.s.recv(64 * 1024))
            time.sleep(0.1)
            peak = max(peak, rss_kb(t.proc.pid))
    assert 64 * 1024 < got < 20 * MB, got
    limit = 30 * 1024 * RSS_SCALE
    assert peak - start < limit, f"td RSS grew by {peak - start} kB for a slow TLS reader"
    assert https_get(pki, t.port)[0] == 200


def test_silent_or_plain_clients_on_a_tls_port(pki, backends, tls_td):
    """A client that never finishes its handshake is closed after client_header_ms; plain HTTP
    sent to a TLS port gets no HTTP answer; td goes on serving."""
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["client_header_ms"] = 1000
    cfg["listeners"] = [tls_listener(free_port(), pki.a1)]
    t = tls_td(cfg)
    silent = RawConn(t.port, timeout=TIMEOUT)
    partial = RawConn(t.port, timeout=TIMEOUT)
    partial.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    t0 = time.monotonic()
    for c in (silent, partial):
        assert c.closed_by_peer(timeout=3 + SLACK), "td kept a silent TLS client"
        c.close()
    assert time.monotonic() - t0 < 3 + SLACK
    with RawConn(t.port, timeout=TIMEOUT) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        data = c.read_to_eof()
        assert not data.startswith(b"HTTP/"), data[:200]
    assert https_get(pki, t.port)[0] == 200


# ---------------------------------------------------------------------------------------------
# TLS to backends

def tls_backend(tls_td, backends, pki, cert=None):
    """The "TLS backend": a second td with a TLS listener (a.test) in front of a demo backend."""
    return https_td(tls_td, backends, cert or pki.a1)[0]


def front_cfg(inner_port, tls, **extra):
    cfg = backend_cfg({"blue": (100, [inner_port])}, **extra)
    cfg["backends"][0]["tls"] = tls
    return cfg


def tcp_conns_to(port):
    """Sockets (any state but LISTEN) whose remote end is 127.0.0.1:port, from /proc/net/tcp:
    the client side of connections to that port, including those in TIME_WAIT."""
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            rport = int(parts[2].split(":")[1], 16)
            if rport == port and parts[3] != "0A":
                n += 1
    return n


def test_tls_backend_verified_and_pooled(pki, backends, tls_td, td):
    inner = tls_backend(tls_td, backends, pki)
    front = td(front_cfg(inner.port, {"verify": True, "ca": pki.ca, "sni": "a.test"}))
    threads, per_thread = 4, 100
    results, errors = [], []
    max_active = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            s = server_state(front.state(), inner.port)
            max_active[0] = max(max_active[0], s["active_connections"])
            time.sleep(0.01)

    def run():
        c = http.client.HTTPConnection("127.0.0.1", front.port, timeout=TIMEOUT)
        try:
            for _ in range(per_thread):
                c.request("GET", "/headers")
                r = c.getresponse()
                body = r.read()
                results.append((r.status, r.headers.get("X-TD-Demo-Backend"),
                                b"X-Forwarded-Proto: https" in body))
        except Exception as e:  # reported below
            errors.append(repr(e))
        finally:
            c.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ths = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(60 + 10 * SLACK)
    stop.set()
    sampler.join(10)
    assert not errors, errors[:3]
    assert len(results) == threads * per_thread
    # Every answer came from the demo backend behind the inner td, which saw a TLS client.
    assert set(results) == {(200, "blue", True)}, set(results)
    s = server_state(front.state(), inner.port)
    assert s["requests"] == threads * per_thread and s["failures"] == 0, s
    # Pooled connections reused: never more open than concurrent requests, and only a handful
    # of TCP connections were ever made to the inner td (a connection per request would leave
    # hundreds in TIME_WAIT).
    # Each of td's 2 workers keeps its own pool, so up to threads connections per worker.
    assert 1 <= max_active[0] <= 2 * threads, max_active[0]
    made = tcp_conns_to(inner.port)
    assert made <= 2 * threads + 2, f"{made} connections to the TLS backend for " \
                                    f"{threads * per_thread} requests"
    assert "certificate verify failed" not in front.proc.output()


@pytest.mark.parametrize("case", ["wrong_ca", "wrong_name"])
def test_tls_backend_failing_verification_is_502(pki, backends, tls_td, td, case):
    inner = tls_backend(tls_td, backends, pki)
    tls = {"verify": True, "ca": pki.ca, "sni": "a.test"}
    if case == "wrong_ca":
        tls["ca"] = pki.other_ca
    else:
        tls["sni"] = "other.test"  # the certificate is for a.test: the name check fails
    front = td(front_cfg(inner.port, tls))
    for _ in range(3):
        p = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{front.port}/")
        assert p.stdout == "502", (p.stdout, p.stderr)
    addr = f"127.0.0.1:{inner.port}"
    log = wait_log(front, "certificate verify failed")
    assert re.search(rf"502 GET / from 127\.0\.0\.1:\d+: backend blue server {re.escape(addr)}: "
                     rf"TLS handshake: certificate verify failed: \S", log), log[-3000:]
    # Without verification the same backend answers.
    tls["verify"] = False
    front2 = td(front_cfg(inner.port, tls))
    p = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{front2.port}/")
    assert p.stdout == "200", (p.stdout, p.stderr)


def test_pooled_tls_connection_closed_by_backend_is_not_an_error(pki, backends, tls_td, td):
    """The TLS backend closes idle connections after 200 ms (close_notify, then FIN); requests
    sent around that moment on the pooled connection are retried or go on a new one: always
    200, also with a single server (a stale pooled connection says nothing about the server)."""
    b = backends(("blue", 1))
    cfg = backend_cfg({"blue": (100, b.ports["blue"])})
    cfg["timeouts"]["keepalive_idle_ms"] = 200
    cfg["listeners"] = [tls_listener(free_port(), pki.a1)]
    cfg["workers"] = 1
    inner = tls_td(cfg)
    front_c = front_cfg(inner.port, {"verify": True, "ca": pki.ca, "sni": "a.test"})
    front_c["workers"] = 1
    front = td(front_c)
    statuses, errors = [], []

    def run(k):
        c = http.client.HTTPConnection("127.0.0.1", front.port, timeout=TIMEOUT)
        try:
            for i in range(24):  # pauses swept across the backend's idle timeout
                time.sleep(0.185 + 0.0025 * ((i * 7 + k * 3) % 13))
                c.request("GET", "/")
                r = c.getresponse()
                r.read()
                statuses.append(r.status)
        except Exception as e:  # reported below
            errors.append(repr(e))
        finally:
            c.close()

    ths = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(30 + 10 * SLACK)
    assert not errors, errors[:3]
    bad = [st for st in statuses if st != 200]
    assert len(statuses) == 4 * 24 and not bad, f"{len(bad)} of {len(statuses)} not 200: {bad}"
    # The closed pooled connections are gone from the count.
    wait_for(lambda: server_state(front.state(), inner.port)["active_connections"] == 0,
             3 + SLACK, what="pooled TLS connections closed by the backend being dropped")


def hc(**kw):
    h = {"type": "ssl_hello", "interval_ms": 200, "timeout_ms": 1000, "fall": 2, "rise": 2}
    h.update(kw)
    return h


@pytest.mark.parametrize("check", ["ssl_hello", "http"])
def test_health_check_over_tls_marks_up(pki, backends, tls_td, td, check):
    inner = tls_backend(tls_td, backends, pki)
    front = td(front_cfg(inner.port, {"verify": True, "ca": pki.ca, "sni": "a.test"},
                         health_check=hc(type=check, default_down=True)))
    wait_for(lambda: server_state(front.state(), inner.port)["health"] == "up", 5 + SLACK,
             what=f"{check} check marking the TLS backend up")
    s = server_state(front.state(), inner.port)
    if check == "ssl_hello":
        assert "TLS handshake completed" in s.get("last_check", ""), s
    p = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{front.port}/")
    assert p.stdout == "200", (p.stdout, p.stderr)


@pytest.mark.parametrize("check", ["ssl_hello", "http"])
def test_health_check_over_tls_down_with_wrong_ca(pki, backends, tls_td, td, check):
    inner = tls_backend(tls_td, backends, pki)
    front = td(front_cfg(inner.port, {"verify": True, "ca": pki.other_ca, "sni": "a.test"},
                         health_check=hc(type=check, default_down=False)))
    wait_for(lambda: server_state(front.state(), inner.port)["health"] == "down", 5 + SLACK,
             what=f"{check} check marking the TLS backend down")
    s = server_state(front.state(), inner.port)
    assert "certificate verify failed" in s.get("last_check", ""), s
    # It stays down (the handshake keeps failing).
    time.sleep(1.0)
    assert server_state(front.state(), inner.port)["health"] == "down"


def test_ssl_hello_to_a_plain_server_is_down(pki, backends, td):
    b = backends(("blue", 1))
    port = b.ports["blue"][0]  # the demo backend speaks plain HTTP
    front = td(front_cfg(port, {"verify": True, "ca": pki.ca, "sni": "a.test"},
                         health_check=hc(default_down=False)))
    wait_for(lambda: server_state(front.state(), port)["health"] == "down", 5 + SLACK,
             what="ssl_hello check against a plain server marking it down")


# ---------------------------------------------------------------------------------------------
# Certificates changed while running

class TlsLoad:
    """`threads` threads of keep-alive HTTPS GETs (Python ssl, SNI a.test, verified with the
    test CA) until stop(); each connection is replaced after `per_conn` requests, so new
    handshakes keep happening. Records the serial of every handshake with its time."""

    def __init__(self, pki, port, threads=4, per_conn=10, path="/"):
        self.pki, self.port, self.per_conn, self.path = pki, port, per_conn, path
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failed = []       # (status, body[:200])
        self.errors = []       # repr of exceptions
        self.handshakes = []   # (monotonic time when the handshake started, serial)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        ctx = client_ctx(self.pki)
        while not self.stop_ev.is_set():
            c = SniConn(self.port, "a.test", ctx)
            try:
                t0 = time.monotonic()
                c.connect()
                with self.lock:
                    self.handshakes.append((t0, c.serial()))
                for _ in range(self.per_conn):
                    if self.stop_ev.is_set():
                        break
                    status, _, body = c.get(self.path)
                    with self.lock:
                        if status == 200:
                            self.ok += 1
                        else:
                            self.failed.append((status, body[:200]))
            except Exception as e:
                with self.lock:
                    self.errors.append(repr(e))
            finally:
                c.close()

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join(TIMEOUT + 10)
        assert not any(th.is_alive() for th in self.threads), "load threads did not finish"
        return self

    def summary(self):
        return (f"{self.ok} ok, {len(self.failed)} failed, {len(self.errors)} errors, "
                f"{len(self.handshakes)} handshakes; first errors {self.errors[:3]}, "
                f"first failures {self.failed[:3]}")


def set_cert(cfg, cert):
    cfg["listeners"][0]["tls"]["certificates"] = [cert.pair()]


def test_certificate_swap_by_sighup_under_load(pki, backends, tls_td):
    t, _ = https_td(tls_td, backends, pki.a1)
    ctx = client_ctx(pki)
    old = SniConn(t.port, "a.test", ctx)
    assert old.get("/")[0] == 200 and old.serial() == pki.a1.serial
    load = TlsLoad(pki, t.port).start()
    try:
        time.sleep(1.5)
        reload_config(t, lambda cfg: set_cert(cfg, pki.a2))
        t_reload = time.monotonic()
        # New handshakes get the new certificate (same name, same CA, another serial).
        for _ in range(6):  # fresh connections land on either worker
            status, _, _, serial = https_get(pki, t.port)
            assert status == 200 and serial == pki.a2.serial, hex(serial)
        rc, out = s_client(pki, t.port, "a.test")
        assert peer_cert(out)[1] == pki.a2.serial
        time.sleep(3.0)
    finally:
        load.stop()
    print("swap under load:", load.summary())
    assert not load.errors and not load.failed, load.summary()
    assert load.ok > 50, load.summary()
    before = {s for t0, s in load.handshakes if t0 < t_reload - 0.5}
    after = {s for t0, s in load.handshakes if t0 > t_reload}
    assert before == {pki.a1.serial}, before
    assert after == {pki.a2.serial}, after
    # The connection opened before the reload still works, with its certificate.
    for _ in range(3):
        assert old.get("/")[0] == 200
    assert old.serial() == pki.a1.serial
    old.close()


def test_handshakes_pending_across_a_reload(pki, backends, tls_td):
    """Connections accepted before a certificate swap whose ClientHello comes after it (and
    after the workers moved to the new config) complete their handshake and are served."""
    t, _ = https_td(tls_td, backends, pki.a1, pki.b)
    raw = [socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT) for _ in range(8)]
    try:
        time.sleep(0.2)  # td has accepted them
        reload_config(t, lambda cfg: cfg["listeners"][0]["tls"].update(
            certificates=[pki.a2.pair(), pki.b.pair()]))
        # Fresh connections on every worker: each takes the new config, dropping the old one.
        for _ in range(12):
            assert https_get(pki, t.port)[3] == pki.a2.serial
        ctx = client_ctx(pki)
        for i, s in enumerate(raw):
            name = "a.test" if i % 2 else "z.b.test"  # SNI: an exact name, a wildcard
            c = SniConn(t.port, name, ctx)
            c.sock = ctx.wrap_socket(s, server_hostname=name)
            status, h, _ = c.get("/")
            assert status == 200 and h.get("X-TD-Demo-Backend") == "blue"
            assert c.serial() in ((pki.a1.serial, pki.a2.serial) if i % 2 else (pki.b.serial,))
            c.close()
    finally:
        for s in raw:
            s.close()


def test_put_config_loads_new_certificates(pki, backends, tls_td):
    t, _ = https_td(tls_td, backends, pki.a1)
    ctx = client_ctx(pki)
    old = SniConn(t.port, "a.test", ctx)
    assert old.get("/")[0] == 200 and old.serial() == pki.a1.serial
    status, cfg = t.api("GET", "/api/v1/config")
    assert status == 200, cfg
    v0 = t.state()["version"]

    # A mismatched pair is refused, naming the key file; nothing changes.
    bad = copy.deepcopy(cfg)
    bad["listeners"][0]["tls"]["certificates"] = [pki.mismatched.pair()]
    text = json.dumps(bad, indent=2)
    status, resp = t.api("PUT", "/api/v1/config", raw=text.encode())
    assert status == 400, (status, resp)
    line, col = pos(text, json.dumps(pki.stray_key))
    assert (f"request:{line}:{col}: listeners[0].tls.certificates[0].key: {pki.stray_key}: "
            f"private key does not match the certificate {pki.a1.cert}") in resp["error"], resp
    # An expired one too, naming the certificate.
    bad["listeners"][0]["tls"]["certificates"] = [pki.expired.pair()]
    text = json.dumps(bad, indent=2)
    status, resp = t.api("PUT", "/api/v1/config", raw=text.encode())
    assert status == 400, (status, resp)
    line, col = pos(text, json.dumps(pki.expired.cert))
    assert (f"request:{line}:{col}: listeners[0].tls.certificates[0].cert: {pki.expired.cert}: "
            f"certificate expired on ") in resp["error"], resp
    assert t.state()["version"] == v0
    assert https_get(pki, t.port)[3] == pki.a1.serial

    # A good one applies to new handshakes; the open connection keeps its certificate.
    good = copy.deepcopy(cfg)
    good["listeners"][0]["tls"]["certificates"] = [pki.a3.pair()]
    status, resp = t.api("PUT", "/api/v1/config", good)
    assert status == 200, resp
    assert t.state()["version"] > v0
    for _ in range(6):
        status, _, _, serial = https_get(pki, t.port)
        assert status == 200 and serial == pki.a3.serial, hex(serial)
    assert old.get("/")[0] == 200 and old.serial() == pki.a1.serial
    old.close()
    # The new file names run and are kept in the state file; the config file is not written.
    status, now = t.api("GET", "/api/v1/config")
    assert now["listeners"][0]["tls"]["certificates"] == [pki.a3.pair()]
    with open(t.config_path) as f:
        on_disk = json.load(f)
    assert on_disk["listeners"][0]["tls"]["certificates"] == [pki.a1.pair()]
    with open(t.config_path + ".state.json") as f:
        kept = {o["path"]: o["value"] for o in json.load(f)["overrides"]}
    assert kept["listeners"][0]["tls"]["certificates"] == [pki.a3.pair()], kept


# ---------------------------------------------------------------------------------------------
# Bad certificates refused at load

def check_config(cfg):
    d = tempfile.mkdtemp(prefix="td-e2e-tlscheck-")
    path = os.path.join(d, "td.json")
    text = json.dumps(cfg, indent=2)
    with open(path, "w") as f:
        f.write(text)
    p = subprocess.run([TD, "-t", "-c", path], capture_output=True, text=True, timeout=30)
    return path, text, p


def base_cfg(pki, cert):
    return {
        "listeners": [{"address": "127.0.0.1:18443",
                       "tls": {"certificates": [pki.default.pair(), cert.pair()]}}],
        "admin": {"address": "127.0.0.1:19443"},
        "backends": [{"name": "blue", "weight": 100,
                      "servers": [{"address": "127.0.0.1:19001"}]}],
    }


def test_check_accepts_good_certificates(pki):
    cfg = base_cfg(pki, pki.a1)
    cfg["backends"][0]["tls"] = {"verify": True, "ca": pki.ca, "sni": "a.test"}
    path, _, p = check_config(cfg)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration OK" in p.stdout + p.stderr


@pytest.mark.parametrize("case", ["expired", "mismatched", "bad_ca", "missing"])
def test_check_refuses_bad_certificates(pki, case):
    if case == "expired":
        cfg = base_cfg(pki, pki.expired)
        needle = json.dumps(pki.expired.cert)
        msg = (f"listeners[0].tls.certificates[1].cert: {pki.expired.cert}: "
               "certificate expired on Jan  2 00:00:00 2020 GMT")
    elif case == "mismatched":
        cfg = base_cfg(pki, pki.mismatched)
        needle = json.dumps(pki.stray_key)
        msg = (f"listeners[0].tls.certificates[1].key: {pki.stray_key}: "
               f"private key does not match the certificate {pki.a1.cert}")
    elif case == "missing":
        gone = Cert(os.path.join(pki.dir, "gone.pem"), pki.a1.key, 0, "a.test")
        cfg = base_cfg(pki, gone)
        needle = json.dumps(gone.cert)
        msg = f"listeners[0].tls.certificates[1].cert: {gone.cert}: cannot read: "
    else:
        cfg = base_cfg(pki, pki.a1)
        cfg["backends"][0]["tls"] = {"verify": True, "ca": pki.not_pem}
        needle = json.dumps(pki.not_pem)
        msg = f"backends[0].tls.ca: {pki.not_pem}: "
    path, text, p = check_config(cfg)
    line, col = pos(text, needle)
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    assert p.returncode == 1, (p.returncode, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{line}:{col}: {msg}"), (lines, (line, col), msg)


def test_check_refuses_redirect_on_a_tls_listener(pki):
    cfg = base_cfg(pki, pki.a1)
    cfg["listeners"][0]["redirect_https"] = True
    path, text, p = check_config(cfg)
    line, col = pos(text, '"redirect_https"')
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    assert p.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{line}:{col}: listeners[0].redirect_https: "), lines


@pytest.mark.parametrize("case", ["expired", "mismatched"])
def test_sighup_refuses_bad_certificates(pki, backends, tls_td, case):
    t, _ = https_td(tls_td, backends, pki.a1)
    v0 = t.state()["version"]
    with open(t.config_path) as f:
        cfg = json.load(f)
    bad = pki.expired if case == "expired" else pki.mismatched
    set_cert(cfg, bad)
    text = json.dumps(cfg, indent=2)
    named = bad.cert if case == "expired" else bad.key
    line, col = pos(text, json.dumps(named))
    with open(t.config_path, "w") as f:
        f.write(text)
    mark = len(t.proc.output())
    t.proc.p.send_signal(signal.SIGHUP)
    log = wait_log(t, "reload rejected", mark)
    assert "reload rejected" in log, log[-3000:]
    assert f"{t.config_path}:{line}:{col}: " in log, log[-3000:]
    assert named in log, log[-3000:]
    # The old config and certificate stay.
    assert t.state()["version"] == v0
    for _ in range(4):
        status, _, _, serial = https_get(pki, t.port)
        assert status == 200 and serial == pki.a1.serial
    # Once the file is fixed, SIGHUP applies it.
    reload_config(t, lambda c: set_cert(c, pki.a2))
    assert https_get(pki, t.port)[3] == pki.a2.serial
