// Drives td's web console in Debian's headless Chromium (playwright-core, no browser download)
// for backend states. Run by tests/e2e/test_backend_states.py, which starts td and the demo
// backends and checks the result through the admin API and real requests.
//
//   node tests/console/states.test.mjs '{"url": "http://127.0.0.1:PORT/", "backend": "blue"}'
//
// Picks "maint" in the backend card's state menu, first dismissing the confirmation (nothing may
// change), then accepting it; waits for the card's maint badge and reads the card and the slider.
// Prints one JSON line of observations on success; exits 1 with the reason otherwise.
import assert from "node:assert/strict";

import { opts, runConsole } from "./browser.mjs";

runConsole(async (page) => {
  const card = page.locator(`.card[data-backend="${opts.backend}"]`);
  await card.waitFor();
  const menu = card.locator(".state-menu");
  assert.equal(await menu.inputValue(), "ready");
  assert.equal(await card.locator(".badge.state").isVisible(), false);

  // Dismissed: the menu goes back, nothing is sent.
  const dialogs = [];
  page.once("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  await menu.selectOption("maint");
  await page.waitForFunction((sel) => document.querySelector(sel).value === "ready",
    `.card[data-backend="${opts.backend}"] .state-menu`);

  // Accepted: td is told, the card shows the badge.
  page.once("dialog", (d) => { dialogs.push(d.message()); d.accept(); });
  await menu.selectOption("maint");
  await page.locator("#message.ok").waitFor();
  await card.locator(".badge.state", { hasText: "maint" }).waitFor();
  await card.locator(".weight", { hasText: " 0 % of traffic" }).waitFor();
  const seen = await page.evaluate((name) => {
    const c = document.querySelector(`.card[data-backend="${name}"]`);
    return {
      message: document.getElementById("message").textContent,
      badge: c.querySelector(".badge.state").textContent,
      weight: c.querySelector(".weight").textContent,
      menu: c.querySelector(".state-menu").value,
      slider: document.getElementById("ratio-left").textContent,
    };
  }, opts.backend);
  seen.dialogs = dialogs;
  return seen;
});
