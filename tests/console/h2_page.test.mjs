// Loads a page through td's TLS listener in Debian's headless Chromium (playwright-core) and
// tells which protocol the browser spoke and which backends answered. Run by
// tests/e2e/test_h2_browser.py.
//
//   node tests/console/h2_page.test.mjs \
//     '{"url": "https://127.0.0.1:PORT/", "ignore_https_errors": true, "fetches": 20}'
//
// Prints {"protocol": the page's nextHopProtocol, "fetch_protocols": [...], "backends": {name:
// count}} as one JSON line after `fetches` fetch() calls from the page; exits 1 otherwise.
import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => page.evaluate(async (n) => {
  const nav = performance.getEntriesByType("navigation")[0];
  const backends = {};
  for (let i = 0; i < n; i++) {
    const r = await fetch(`/?n=${i}`, { cache: "no-store" });
    await r.text();
    const b = r.headers.get("x-td-demo-backend") || "none";
    backends[b] = (backends[b] || 0) + 1;
  }
  const fetched = performance.getEntriesByType("resource").map((e) => e.nextHopProtocol);
  return { protocol: nav.nextHopProtocol, fetch_protocols: [...new Set(fetched)], backends };
}, opts.fetches || 20));
