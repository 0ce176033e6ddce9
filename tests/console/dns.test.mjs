// Drives td's web console in Debian's headless Chromium (playwright-core) for a backend whose
// server is a host name. Run by tests/e2e/test_dns.py.
//
//   node tests/console/dns.test.mjs '{"url": "http://127.0.0.1:PORT/", "backend": "blue", "rows": 3}'
//
// Waits until the backend's card lists `rows` servers, then prints the text and title of each
// row's first cell (the address with the name it came from) as one JSON line; exits 1 with the
// reason otherwise.
import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => {
  const card = `.card[data-backend="${opts.backend}"]`;
  await page.waitForFunction(
    ([sel, n]) => document.querySelectorAll(`${sel} tbody tr`).length === n,
    [card, opts.rows],
  );
  return page.evaluate((sel) =>
    [...document.querySelectorAll(`${sel} tbody tr`)].map((r) => ({
      text: r.cells[0].textContent, title: r.cells[0].title, health: r.cells[1].textContent,
    })), card);
});
