// Drives td's web console in Debian's headless Chromium (playwright-core) while requests wait in
// td's max_conns queue. Run by tests/e2e/test_queue.py, which starts td in front of a slow server
// with a max_conns and keeps requests queued.
//
//   node tests/console/queue.test.mjs '{"url": "http://127.0.0.1:PORT/", "backend": "blue"}'
//
// Waits until the backend's card shows its "queued N" badge, then reads that badge and the
// in-flight cell of its first server. Prints one JSON line of observations on success; exits 1
// with the reason otherwise.
import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => {
  const card = `.card[data-backend="${opts.backend}"]`;
  await page.locator(`${card} .badge.queued`, { hasText: "queued" }).waitFor();
  const seen = await page.evaluate((sel) => {
    const c = document.querySelector(sel);
    const cell = c.querySelector("tbody tr").cells[2];
    return { queued: c.querySelector(".badge.queued").textContent, in_flight: cell.textContent };
  }, card);
  return seen;
});
