"""End-to-end tests of the sticky-cookie key across reloads, crash safety of API changes (config
file and audit log), the pid file, the example config and `tdctl config put -`.

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py); every loop is
bounded and every socket has a timeout."""
import http.client
import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from conftest import TD, TDCTL, Proc, backend_cfg, free_port, reload_config, set_weights, \
    wait_for, wait_port

TIMEOUT = 10  # seconds, for every client socket


def get_once(port, path="/", headers=None):
    """One GET on a fresh connection: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.headers, r.read()
    finally:
        conn.close()


def sticky_cookie(headers, name="TDSTICKY"):
    for v in headers.get_all("Set-Cookie") or []:
        k, _, rest = v.partition("=")
        if k.strip() == name:
            return rest.split(";", 1)[0].strip()
    return None


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


# ---- the sticky-cookie key lives in the routing snapshot ----

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
