// Drives td's web console in Debian's headless Chromium (playwright-core): the protocol tag of
// each backend's card. Run by tests/e2e/test_trial17_fixes.py.
//
//   node tests/console/protocol.test.mjs \
//     '{"url": "http://127.0.0.1:PORT/", "backends": ["blue", "green"]}'
//
// Waits until every named backend has its card, then prints {name: {"hidden": bool, "text":
// string}} of each card's protocol tag as one JSON line; exits 1 with the reason otherwise.
import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => {
  for (const n of opts.backends)
    await page.locator(`.card[data-backend="${n}"] .badge.status:not(:empty)`).waitFor();
  return page.evaluate((names) => Object.fromEntries(names.map((n) => {
    const tag = document.querySelector(`.card[data-backend="${n}"] .badge.protocol`);
    return [n, { hidden: tag.hidden, text: tag.textContent }];
  })), opts.backends);
});
