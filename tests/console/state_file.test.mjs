// Drives td's web console in Debian's headless Chromium (playwright-core) while td cannot write
// its state file: the page must show the red "changes are not being saved" banner. Run by
// tests/e2e/test_state_file.py.
//
//   node tests/console/state_file.test.mjs '{"url": "http://127.0.0.1:PORT/"}'
//
// Prints one JSON line {"banner": TEXT} on success; exits 1 with the reason otherwise.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const opts = JSON.parse(process.argv[2] || "{}");
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
  context.setDefaultTimeout(opts.timeout_ms || 20000);
  try {
    const page = context.pages()[0] || (await context.newPage());
    await page.goto(opts.url);
    const banner = page.locator("#persist-banner");
    await banner.waitFor({ state: "visible" });
    console.log(JSON.stringify({ banner: await banner.innerText() }));
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error("console test failed:", e && e.stack ? e.stack : e);
  process.exit(1);
});
