// What every console test script shares: its options (one JSON argument), Debian's headless
// Chromium through playwright-core (no browser download), the console page opened with a record
// of what would show a broken page, and the one-JSON-line-or-exit-1 protocol that the e2e tests
// (tests/e2e/test_*.py) read.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

export const opts = JSON.parse(process.argv[2] || "{}");
export const TIMEOUT = opts.timeout_ms || 20000;
const CHROMIUM = process.env.TD_CHROMIUM || "/usr/bin/chromium";

/* Opens the console at opts.url and records script errors, console errors (but the browser's own
 * lines for the API's 4xx answers, which the page shows itself) and any request that leaves td's
 * admin address (the page must work with no internet). */
async function open(context) {
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  const origin = new URL(opts.url).origin;
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !/responded with a status of 4\d\d/.test(m.text()))
      problems.push("console: " + m.text());
  });
  page.on("request", (r) => {
    if (!r.url().startsWith(origin) && !r.url().startsWith("data:"))
      problems.push("request outside td: " + r.url());
  });
  await page.goto(opts.url);
  return { page, problems };
}

/* Runs `scenario(page)` on the opened console in a fresh browser profile, then (opts.screenshot)
 * takes a full-page screenshot, checks that the page reported no problem and prints the
 * scenario's result as one JSON line; on any failure prints the reason and exits 1. */
export function runConsole(scenario) {
  (async () => {
    const profile = mkdtempSync(join(tmpdir(), "td-console-chromium-"));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      viewport: { width: 1280, height: 900 },
      deviceScaleFactor: 1,
      // An admin API over TLS (admin.tls) with a certificate the test made itself.
      ignoreHTTPSErrors: !!opts.ignore_https_errors,
      timeout: 60000,
    });
    context.setDefaultTimeout(TIMEOUT);
    try {
      const { page, problems } = await open(context);
      const result = await scenario(page);
      if (opts.screenshot) {
        mkdirSync(dirname(opts.screenshot), { recursive: true });
        await page.screenshot({ path: opts.screenshot, fullPage: true });
      }
      assert.deepEqual(problems, [], "the page reported problems");
      console.log(JSON.stringify(result));
    } finally {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    }
  })().catch((e) => {
    console.error("console test failed:", e && e.stack ? e.stack : e);
    process.exit(1);
  });
}
