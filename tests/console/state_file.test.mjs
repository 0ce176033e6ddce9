// Drives td's web console in Debian's headless Chromium (playwright-core) while td cannot write
// its state file: the page must show the red "changes are not being saved" banner. Run by
// tests/e2e/test_state_file.py.
//
//   node tests/console/state_file.test.mjs '{"url": "http://127.0.0.1:PORT/"}'
//
// Prints one JSON line {"banner": TEXT} on success; exits 1 with the reason otherwise.
import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => {
  const banner = page.locator("#persist-banner");
  await banner.waitFor({ state: "visible" });
  return { banner: await banner.innerText() };
});
