"""End-to-end tests of the web console (console/index.html, served at the admin address's "/"):
Debian's headless Chromium, driven by tests/console/console.test.mjs (playwright-core from the
repo's node_modules), works the page; these tests start td and the demo backends and check what
the page did through the admin API and real requests through td.

Needs /usr/bin/chromium, node and `npm ci` at the repo root (scripts/deps.sh test does all three)."""
import http.client
import os
import shutil
import threading

from conftest import ASAN, CONSOLE_MISSING, backend_cfg, needs_console, run_console, weights

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
SCREENSHOT = os.path.join(ROOT, "build/artifacts/console.png")
DOCS_SCREENSHOT = os.path.join(ROOT, "docs/console.png")
SLOW = 3 if ASAN else 1

missing = CONSOLE_MISSING
pytestmark = needs_console


def run_page(**opts):
    """Runs one scenario of the Node script; returns what it observed (its JSON line)."""
    opts.setdefault("timeout_ms", 20000 * SLOW)
    return run_console("console.test.mjs", **opts)


class Traffic:
    """A gentle steady stream of requests through td (about `rate` per second on one keep-alive
    connection) so the page's requests/s chart has something to draw."""

    def __init__(self, port, rate=25):
        self.port, self.pause = port, 1.0 / rate
        self.stop_ev = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/")
                conn.getresponse().read()
                self.count += 1
            except (OSError, http.client.HTTPException):
                conn = None
            self.stop_ev.wait(self.pause)
        if conn:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(timeout=15)


def served_by(port, n):
    """Sends n requests through td on one connection; returns {backend: count}."""
    seen = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            name = r.headers.get("X-TD-Demo-Backend")
            seen[name] = seen.get(name, 0) + 1
    finally:
        conn.close()
    return seen


def test_slider_apply_moves_all_traffic_to_green(backends, td):
    b = backends(("blue", 2), ("green", 2))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    traffic = Traffic(t.port)
    try:
        seen = run_page(scenario="ratio", url=t.admin + "/", before_ms=8000, settle_ms=6000,
                        screenshot=SCREENSHOT)
    finally:
        traffic.stop()
    assert seen["message"].startswith("Applied: blue 0 % · green 100 %"), seen
    assert "blue=0 green=100" in seen["firstEvent"], seen
    assert weights(t) == {"blue": 0, "green": 100}
    assert served_by(t.port, 50) == {"green": 50}
    assert traffic.count > 0
    # The README's picture is refreshed on request only, so a test run leaves the tree clean.
    if os.environ.get("TD_UPDATE_SCREENSHOT") == "1" or not os.path.exists(DOCS_SCREENSHOT):
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)

    # Swap exchanges the two weights and applies them.
    seen = run_page(scenario="swap", url=t.admin + "/")
    assert seen["before"] == 0 and seen["message"].startswith("Applied: blue 100 % · green 0 %")
    assert weights(t) == {"blue": 100, "green": 0}
    assert served_by(t.port, 20) == {"blue": 20}


def test_token_is_asked_and_a_wrong_one_shows_the_api_error(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}),
           token="s3cret-token")
    status, answer = t.api("GET", "/api/v1/state", token="wrong")
    assert status == 401
    seen = run_page(scenario="token", url=t.admin + "/", wrong_token="wrong",
                    token="s3cret-token")
    assert seen["asked"] == answer["error"]
    assert seen["refused"] == "The token was refused: " + answer["error"]


def test_weight_fields_for_three_backends_and_api_errors_shown(backends, td):
    b = backends(("blue", 1), ("green", 1), ("canary", 1))
    t = td(backend_cfg({"blue": (40, b.ports["blue"]), "green": (40, b.ports["green"]),
                        "canary": (20, b.ports["canary"])}))
    before = t.state()["version"]
    status, answer = t.api("PUT", "/api/v1/ratio", {"blue": 40, "green": 40, "canary": 150})
    assert status == 400
    seen = run_page(scenario="weights", url=t.admin + "/", backends=["blue", "green", "canary"],
                    backend="canary", bad_weight=150, good={"blue": 0, "green": 50, "canary": 50})
    assert seen["error"] == "Error: " + answer["error"]
    assert seen["message"].startswith("Applied: blue 0 % · green 50 % · canary 50 %"), seen
    s = t.state()
    assert s["version"] == before + 1  # the refused change changed nothing
    assert weights(t) == {"blue": 0, "green": 50, "canary": 50}
    assert set(served_by(t.port, 40)) <= {"green", "canary"}


def test_drained_backend_card_shows_no_requests_per_second(backends, td):
    """Right after Apply at 0 %, blue's card says drained: its req/s must not show the traffic it
    had before (the 5 s window's average lags), but what came since the last poll: none."""
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])}))
    traffic = Traffic(t.port, rate=50)
    try:
        seen = run_page(scenario="drained", url=t.admin + "/", before_ms=4000, settle_ms=1500)
    finally:
        traffic.stop()
    assert seen["status"] == "drained", seen
    assert seen["rps"] == "0.0", seen
    assert weights(t) == {"blue": 0, "green": 100}
