"""End-to-end tests of td's traffic routing: ratios, weight 0, live ratio changes, sticky
sessions, failover, 502/503, zero-loss ratio flips under load, graceful SIGTERM, and the
sticky-cookie key across reloads.

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py) and every socket
has a timeout, so a hung td fails a test instead of hanging the run."""
import http.client
import json
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import (backend_cfg, backend_state, free_port, get, get_once, reload_config,
                      set_weights, sticky_cookie)

TIMEOUT = 10  # seconds, for every client socket


class Client:
    """One keep-alive HTTP/1.1 connection to td (http.client), with a timeout."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)

    def get(self, path="/", headers=None):
        """Returns (status, response headers (http.client.HTTPMessage), body bytes)."""
        self.conn.request("GET", path, headers=headers or {})
        r = self.conn.getresponse()
        body = r.read()
        return r.status, r.headers, body

    def close(self):
        self.conn.close()


def backend_of(headers):
    return headers.get("X-TD-Demo-Backend")


def two_colours(backends, blue_w, green_w, method="round_robin", **extra):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (blue_w, b.ports["blue"]), "green": (green_w, b.ports["green"])},
                      method=method, **extra)
    return b, cfg


# ---- ratios ----

def test_ratio_30_70_over_1000_requests(backends, td):
    _, cfg = two_colours(backends, 30, 70)
    t = td(cfg)
    c = Client(t.port)
    counts = {"blue": 0, "green": 0}
    try:
        for _ in range(1000):
            status, h, _ = c.get("/")
            assert status == 200
            counts[backend_of(h)] += 1
    finally:
        c.close()
    print(f"30/70 over 1000 requests: {counts}")
    assert counts["blue"] + counts["green"] == 1000
    assert abs(counts["blue"] - 300) <= 10, counts
    assert abs(counts["green"] - 700) <= 10, counts


def test_weight_zero_gets_no_requests(backends, td):
    _, cfg = two_colours(backends, 0, 100)
    t = td(cfg)
    total, nthreads = 10_000, 8
    per_thread = total // nthreads
    results = [None] * nthreads

    def worker(i):
        counts = {}
        c = Client(t.port)
        try:
            for _ in range(per_thread):
                status, h, _ = c.get("/")
                key = (status, backend_of(h))
                counts[key] = counts.get(key, 0) + 1
        except Exception as e:  # reported by the main thread
            counts[("exception", repr(e))] = 1
        finally:
            c.close()
        results[i] = counts

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=240)
    elapsed = time.monotonic() - start
    assert not any(th.is_alive() for th in threads), "requests did not finish in 240 s"
    merged = {}
    for r in results:
        for k, v in r.items():
            merged[k] = merged.get(k, 0) + v
    print(f"weight 0: {per_thread * nthreads} requests in {elapsed:.1f} s: {merged}")
    assert merged == {(200, "green"): per_thread * nthreads}, merged


def test_ratio_change_applies_to_next_request(backends, td):
    _, cfg = two_colours(backends, 100, 0)
    t = td(cfg)
    c = Client(t.port)  # a keep-alive connection opened before the change
    try:
        status, h, _ = c.get("/")
        assert (status, backend_of(h)) == (200, "blue")
        for new, old, ratio in (("green", "blue", {"blue": 0, "green": 100}),
                                ("blue", "green", {"blue": 100, "green": 0})):
            t.set_ratio(**ratio)
            seen = []
            for i in range(10):
                if i % 2 == 0:
                    status, h, _ = c.get("/")  # the old keep-alive connection
                else:
                    status, h, _ = get_once(t.port)  # a new connection
                seen.append((status, backend_of(h)))
            assert seen == [(200, new)] * 10, f"after switching to {new}: {seen}"
    finally:
        c.close()


# ---- sticky sessions ----

def get_sticky(port, want, cookie_name="TDSTICKY", tries=50):
    """Visits without a cookie until assigned to `want`; returns that cookie value."""
    for _ in range(tries):
        status, h, _ = get_once(port)
        assert status == 200
        v = sticky_cookie(h, cookie_name)
        assert v, f"no Set-Cookie {cookie_name} on a first visit: {h.items()}"
        if backend_of(h) == want:
            return v
    raise AssertionError(f"never assigned to {want} in {tries} first visits")


def assert_no_address(value, b):
    assert "127.0.0.1" not in value, value
    for ports in b.ports.values():
        for p in ports:
            assert str(p) not in value, f"cookie {value!r} contains server port {p}"


def test_sticky_client_stays_while_new_clients_follow_ratio(backends, td):
    b, cfg = two_colours(backends, 50, 50, method="sticky")
    t = td(cfg)
    cookie = get_sticky(t.port, "blue")
    assert_no_address(cookie, b)
    assert "blue" in cookie  # the value names the backend
    hdr = {"Cookie": f"other=1; TDSTICKY={cookie}; x=y"}

    c = Client(t.port)
    try:
        for _ in range(10):
            status, h, _ = c.get("/", hdr)
            assert (status, backend_of(h)) == (200, "blue")
        t.set_ratio(blue=0, green=100)
        # The pinned client stays on blue, on its old connection and on new ones.
        for i in range(20):
            status, h, _ = c.get("/", hdr) if i % 2 else get_once(t.port, "/", hdr)
            assert (status, backend_of(h)) == (200, "blue"), f"pinned client moved on request {i}"
    finally:
        c.close()
    # New clients (no cookie) all go green and are pinned there.
    for _ in range(20):
        status, h, _ = get_once(t.port)
        assert (status, backend_of(h)) == (200, "green")
        v = sticky_cookie(h)
        assert v, "a new client got no sticky cookie"
        assert_no_address(v, b)
        status, h, _ = get_once(t.port, "/", {"Cookie": f"TDSTICKY={v}"})
        assert (status, backend_of(h)) == (200, "green")


def tamperings(cookie):
    """Forged variants of a valid 'blue.EXPIRY.SIG' cookie, none of which td may honour."""
    parts = cookie.split(".")
    out = [
        "garbage",
        "",
        "blue",  # no expiry, no signature
        cookie[:-1] + ("0" if cookie[-1] != "0" else "1"),  # signature changed
        cookie + "00",  # signature lengthened
    ]
    if len(parts) == 3:
        name, exp, sig = parts
        out += [
            f"{name}.{int(exp) + 1000}.{sig}",  # expiry extended, same signature
            f"green.{exp}.{sig}",  # another backend, blue's signature
            f"purple.{exp}.{sig}",  # unknown backend
            f"{name}.{exp}.",  # no signature
        ]
    return out


def test_sticky_tampered_cookie_is_ignored_and_reassigned(backends, td):
    b, cfg = two_colours(backends, 50, 50, method="sticky")
    t = td(cfg)
    cookie = get_sticky(t.port, "blue")
    # From now on a fresh assignment can only be green: a forged cookie honoured shows as blue.
    t.set_ratio(blue=0, green=100)
    status, h, _ = get_once(t.port, "/", {"Cookie": f"TDSTICKY={cookie}"})
    assert (status, backend_of(h)) == (200, "blue"), "the genuine cookie must still pin blue"
    for forged in tamperings(cookie):
        status, h, _ = get_once(t.port, "/", {"Cookie": f"TDSTICKY={forged}"})
        assert status == 200
        assert backend_of(h) == "green", f"forged cookie {forged!r} was honoured"
        v = sticky_cookie(h)
        assert v and v != forged, f"forged cookie {forged!r}: no new Set-Cookie ({v!r})"
        assert_no_address(v, b)
        status, h, _ = get_once(t.port, "/", {"Cookie": f"TDSTICKY={v}"})
        assert (status, backend_of(h)) == (200, "green")


def test_sticky_cookie_for_removed_backend_is_reassigned(backends, td):
    """A correctly signed cookie naming a backend that no longer exists is treated as unknown."""
    b = backends(("blue", 1), ("green", 1), ("red", 1))
    cfg = backend_cfg({"blue": (0, b.ports["blue"]), "green": (0, b.ports["green"]),
                       "red": (100, b.ports["red"])}, method="sticky")
    t = td(cfg)
    cookie = get_sticky(t.port, "red")
    assert_no_address(cookie, b)
    status, cur = t.api("GET", "/api/v1/config")
    assert status == 200, cur
    cur["backends"] = [x for x in cur["backends"] if x["name"] != "red"]
    for x in cur["backends"]:
        x["weight"] = 100 if x["name"] == "green" else 0
    status, r = t.api("PUT", "/api/v1/config", cur)
    assert status == 200, r
    for _ in range(3):
        status, h, _ = get_once(t.port, "/", {"Cookie": f"TDSTICKY={cookie}"})
        assert (status, backend_of(h)) == (200, "green")
        v = sticky_cookie(h)
        assert v and v != cookie, f"no new Set-Cookie for a removed backend's cookie: {v!r}"
        assert "red" not in v


# ---- failover ----

def test_failover_moves_to_backup_when_primary_dies(backends, td):
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    cfg = backend_cfg({"blue": (100, blue.ports["blue"]), "green": (50, green.ports["green"])},
                      method="failover")
    t = td(cfg)
    c = Client(t.port)  # keep-alive; td holds pooled connections to blue
    try:
        for i in range(20):
            status, h, _ = c.get("/") if i % 2 else get_once(t.port)
            assert (status, backend_of(h)) == (200, "blue")
        blue.stop()
        seen = []
        for i in range(20):
            status, h, _ = c.get("/") if i % 2 else get_once(t.port)
            seen.append((status, backend_of(h)))
        assert seen == [(200, "green")] * 20, seen
    finally:
        c.close()


# ---- errors ----

def test_502_when_only_server_is_down(backends, td):
    dead = free_port()  # nothing listens there
    t = td(backend_cfg({"blue": (100, [dead])}))
    statuses = []
    c = Client(t.port)
    try:
        for i in range(5):
            status, _, _ = c.get("/") if i % 2 else get_once(t.port)
            statuses.append(status)
    finally:
        c.close()
    assert statuses == [502] * 5, statuses


def test_all_weights_zero_is_refused_and_traffic_keeps_flowing(backends, td):
    _, cfg = two_colours(backends, 50, 50)
    t = td(cfg)
    status, h, _ = get_once(t.port)
    assert status == 200
    status, r = t.api("PUT", "/api/v1/ratio", {"blue": 0, "green": 0})
    assert status == 400 and "503" in r["error"], r
    c = Client(t.port)
    try:
        for i in range(5):
            status, h, _ = c.get("/") if i % 2 else get_once(t.port)
            assert status == 200, f"request {i}: {status} from {backend_of(h)}"
    finally:
        c.close()
    t.set_ratio(blue=0, green=100)
    status, h, _ = get_once(t.port)
    assert (status, backend_of(h)) == (200, "green")


# ---- zero loss under load ----

def test_ratio_flips_under_load_lose_nothing(backends, td):
    _, cfg = two_colours(backends, 0, 100)
    t = td(cfg)
    stop = threading.Event()
    flips, flip_errors = [0], []

    def flipper():
        side = 0
        while not stop.is_set():
            side ^= 1
            try:
                status, body = t.api("PUT", "/api/v1/ratio",
                                     {"blue": 100 * side, "green": 100 * (1 - side)})
                if status != 200:
                    flip_errors.append((status, body))
            except Exception as e:
                flip_errors.append(repr(e))
            flips[0] += 1
            stop.wait(0.1)

    th = threading.Thread(target=flipper, daemon=True)
    th.start()
    try:
        p = subprocess.run(["wrk", "-t2", "-c50", "-d10s", "--timeout", "5s", t.url + "/"],
                           capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        th.join(timeout=15)
    out = p.stdout + p.stderr
    m = re.search(r"(\d+) requests in", out)
    requests = int(m.group(1)) if m else 0
    print(out)
    print(f"wrk: {requests} requests with {flips[0]} ratio flips")
    diag = f"{out}\nflips={flips[0]} flip_errors={flip_errors[:5]}\ntd log:\n{t.proc.output()[-3000:]}"
    assert p.returncode == 0, diag
    assert m, diag
    assert "Non-2xx or 3xx responses" not in out, diag
    assert "Socket errors" not in out, diag
    assert requests > 0, diag
    assert flip_errors == [], diag
    assert flips[0] >= 10, diag  # the ratio really flipped during the run
    s = t.state()
    fives = sum(b["responses"]["5xx"] for b in s["backends"])
    assert fives == 0, s


# ---- graceful stop ----

def test_sigterm_lets_in_flight_request_finish(backends, td):
    _, cfg = two_colours(backends, 100, 0)
    t = td(cfg)
    result = {}

    def slow():
        try:
            t0 = time.monotonic()
            result["resp"] = get_once(t.port, "/delay/1500")
            result["elapsed"] = time.monotonic() - t0
        except Exception as e:
            result["error"] = repr(e)

    th = threading.Thread(target=slow, daemon=True)
    th.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until td has the request in flight
        if sum(b["in_flight"] for b in t.state()["backends"]) >= 1:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the /delay request never showed as in flight")
    t.proc.p.send_signal(signal.SIGTERM)
    th.join(timeout=15)
    assert not th.is_alive(), "the in-flight request did not finish"
    assert "error" not in result, (result, t.proc.output()[-3000:])
    status, h, body = result["resp"]
    assert status == 200
    assert json.loads(body) == {"delay_ms": 1500}
    assert backend_of(h) == "blue"
    assert result["elapsed"] >= 1.4
    rc = t.proc.p.wait(timeout=15)
    assert rc == 0, t.proc.output()[-4000:]


# ---- passive ejection and a ratio change ----

def test_passive_ejection_alone_never_makes_503_after_a_ratio_change(backends, td):
    """blue is ejected by passive detection (a 500) while green serves (green, the last server
    up, is never ejected); then the ratio moves everything to blue: requests must reach blue,
    not get 503."""
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    cfg = backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])},
                      passive={"failures": 1, "eject_ms": 60000, "max_eject_ms": 60000})
    t = td(cfg)
    for _ in range(4):
        get(t.port, "/status/500")
    s = t.state()
    assert backend_state(s, "blue")["servers"][0]["health"] == "ejected", s
    assert backend_state(s, "green")["servers"][0]["health"] == "up", s
    t.set_ratio(blue=100, green=0)
    answers = [get(t.port) for _ in range(10)]
    assert answers == [(200, "blue")] * 10, answers


# ---- sticky key across reloads ----

def sticky_cfg(backends, secret=None):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      method="sticky")
    # Pinned clients must stay on blue at weight 0 for the whole test.
    cfg["timeouts"]["drain_ms"] = 600000
    if secret is not None:
        cfg["routing"]["cookie"]["secret"] = secret
    return b, cfg


def cookie_for(port, want, tries=60):
    """Visits without a cookie until assigned to `want`; returns that cookie value."""
    for _ in range(tries):
        status, h, _ = get_once(port)
        assert status == 200
        if h.get("X-TD-Demo-Backend") == want:
            v = sticky_cookie(h)
            assert v, f"no Set-Cookie on a first visit: {h.items()}"
            return v
    raise AssertionError(f"never assigned to {want} in {tries} first visits")


def with_cookie(port, cookie):
    """(backend that answered, Set-Cookie value or None) for a request carrying `cookie`."""
    status, h, _ = get_once(port, "/", {"Cookie": f"TDSTICKY={cookie}"})
    assert status == 200
    return h.get("X-TD-Demo-Backend"), sticky_cookie(h)


def set_secret(secret, **weights):
    def edit(cfg):
        set_weights(cfg, **weights)
        if secret is None:
            cfg["routing"]["cookie"].pop("secret", None)
        else:
            cfg["routing"]["cookie"]["secret"] = secret
    return edit


@pytest.mark.parametrize("secret", [None, "kept-secret"])
def test_sticky_cookie_issued_before_reload_is_honoured_after_it(backends, td, secret):
    _, cfg = sticky_cfg(backends, secret)
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    # Same secret (or none), new weights: a fresh assignment can only be green now.
    reload_config(t, set_secret(secret, blue=0, green=100))
    for _ in range(5):
        assert with_cookie(t.port, cookie)[0] == "blue", "cookie from before the reload ignored"
    assert get_once(t.port)[1].get("X-TD-Demo-Backend") == "green"


def test_sticky_cookie_not_honoured_after_configured_secret_changes(backends, td):
    _, cfg = sticky_cfg(backends, "first-secret")
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    reload_config(t, set_secret("second-secret", blue=0, green=100))
    be, new = with_cookie(t.port, cookie)
    assert be == "green", "a cookie signed with the old secret was honoured"
    assert new and new != cookie, "re-assigned without a new cookie"
    assert with_cookie(t.port, new)[0] == "green"


def test_sticky_random_key_comes_back_when_configured_secret_is_removed(backends, td):
    """Without a secret the key is the process's own random key, made once: setting a secret and
    removing it again brings back the cookies issued under the random key."""
    _, cfg = sticky_cfg(backends)
    t = td(cfg)
    cookie = cookie_for(t.port, "blue")
    reload_config(t, set_secret("a-secret", blue=0, green=100))
    assert with_cookie(t.port, cookie)[0] == "green"
    reload_config(t, set_secret(None))
    assert with_cookie(t.port, cookie)[0] == "blue", \
        "the random key changed on reload: cookies issued before were dropped"
