// Drives td's web console in Debian's headless Chromium (playwright-core) while requests wait in
// td's max_conns queue. Run by tests/e2e/test_queue.py, which starts td in front of a slow server
// with a max_conns and keeps requests queued.
//
//   node tests/console/queue.test.mjs '{"url": "http://127.0.0.1:PORT/", "backend": "blue"}'
//
// Waits until the backend's card shows its "queued N" badge, then reads that badge and the
// in-flight cell of its first server. Prints one JSON line of observations on success; exits 1
// with the reason otherwise.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] || "{}");
const TIMEOUT = opts.timeout_ms || 20000;
const CHROMIUM = process.env.TD_CHROMIUM || "/usr/bin/chromium";

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "td-console-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60000,
  });
  context.setDefaultTimeout(TIMEOUT);
  try {
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    await page.goto(opts.url);
    const card = `.card[data-backend="${opts.backend}"]`;
    await page.locator(`${card} .badge.queued`, { hasText: "queued" }).waitFor();
    const seen = await page.evaluate((sel) => {
      const c = document.querySelector(sel);
      const cell = c.querySelector("tbody tr").cells[2];
      return { queued: c.querySelector(".badge.queued").textContent, in_flight: cell.textContent };
    }, card);
    assert.deepEqual(problems, [], "the page reported problems");
    console.log(JSON.stringify(seen));
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error("console test failed:", e && e.stack ? e.stack : e);
  process.exit(1);
});
