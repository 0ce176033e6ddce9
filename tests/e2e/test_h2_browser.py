"""A browser reaches blue and green through td over HTTP/2: Debian's Chromium (playwright-core)
opens a page on td's TLS listener, which offers ALPN h2, and fetches from it."""
from conftest import needs_console, run_console
from test_h2 import cert, h2td, two_colours  # noqa: F401  (fixtures)


@needs_console
def test_chromium_speaks_h2_to_td_and_reaches_blue_and_green_by_the_ratio(backends, h2td):
    _, cfg = two_colours(backends, 50, 50)
    t = h2td(cfg)
    seen = run_console("h2_page.test.mjs", url=f"https://127.0.0.1:{t.port}/",
                       ignore_https_errors=True, fetches=20)
    assert seen["protocol"] == "h2", seen
    assert seen["fetch_protocols"] == ["h2"], seen
    # Round robin at 50/50: the fetches alternate between the two (the browser's own requests,
    # the page and perhaps its icon, come in between, so the counts are not asserted exactly).
    assert sorted(seen["backends"]) == ["blue", "green"], seen
    assert sum(seen["backends"].values()) == 20, seen
    assert min(seen["backends"].values()) >= 8, seen
