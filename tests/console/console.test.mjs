// Drives td's web console in Debian's headless Chromium (playwright-core, no browser download).
// Run by tests/e2e/test_console.py, which starts td and the demo backends and checks the results
// through the admin API and real requests.
//
//   node tests/console/console.test.mjs '{"scenario": "ratio", "url": "http://127.0.0.1:PORT/", ...}'
//
// Scenarios:
//   ratio   — two backends: slider to 0 (blue 0 %, green 100 %), Apply, success shown; optional
//             screenshot after `settle_ms`.
//   swap    — two backends: Swap exchanges the weights and applies.
//   token   — td with a token: the form asks for it; a wrong one shows the API's error text; the
//             right one (`token`) shows the backends.
//   weights — three backends: weight fields instead of the slider; `bad_weight` for `backend` is
//             refused with the API's error text; then `good` weights are applied.
//   failover — failover with the backup serving and 5xx answered: reads the "serving" line, the
//             error banner, the cards' shares and role badges, and a card's req/s next to the
//             chart legend's figure for the same backend (read in one go, after one poll).
//   drained — two backends under traffic: slider to 0, Apply; once blue's card says drained, and
//             one more poll, reads its status badge and req/s together.
// Prints one JSON line of observations on success; exits 1 with the reason otherwise.
import assert from "node:assert/strict";

import { opts, runConsole } from "./browser.mjs";

const text = (page, sel) => page.locator(sel).innerText();

async function waitCards(page, names) {
  for (const n of names) await page.locator(`.card[data-backend="${n}"]`).waitFor();
}

async function waitMessage(page, kind) {
  await page.locator(`#message.${kind}`).waitFor();
  return text(page, "#message");
}

/* The chart has points once two polls have passed; the legend then shows req/s. */
async function waitChart(page) {
  await page.waitForFunction(() => /req\/s/.test(document.getElementById("legend").textContent));
}

async function ratio(page) {
  await waitCards(page, ["blue", "green"]);
  assert.equal(await text(page, "#ratio-left .name"), "blue");
  assert.equal(await text(page, "#ratio-right .name"), "green");
  assert.equal(await page.locator("#weights").isVisible(), false);
  await waitChart(page);
  if (opts.before_ms) await page.waitForTimeout(opts.before_ms);
  await page.locator("#ratio").focus();
  await page.keyboard.press("Home");
  assert.equal(await page.locator("#ratio").inputValue(), "0");
  assert.equal(await text(page, "#ratio-left .pct"), "0 %");
  assert.equal(await text(page, "#ratio-right .pct"), "100 %");
  assert.equal(await page.locator("#pending").isVisible(), true);
  await page.locator("#apply").click();
  const message = await waitMessage(page, "ok");
  assert.match(message, /^Applied: blue 0 % · green 100 %/);
  assert.equal(await page.locator("#pending").isVisible(), false);
  await page.locator('.card[data-backend="blue"] .weight', { hasText: "weight 0 " }).waitFor();
  await page.locator("#events li[data-kind=change]", { hasText: "blue=0 green=100" }).first().waitFor();
  const firstEvent = await text(page, "#events li:first-child");
  if (opts.settle_ms) await page.waitForTimeout(opts.settle_ms);
  return { message, firstEvent, blueCard: await text(page, '.card[data-backend="blue"]') };
}

async function swap(page) {
  await waitCards(page, ["blue", "green"]);
  const before = await page.locator("#ratio").inputValue();
  await page.locator("#swap").click();
  const message = await waitMessage(page, "ok");
  assert.equal(await page.locator("#ratio").inputValue(), String(100 - Number(before)));
  return { before: Number(before), message };
}

async function token(page) {
  const form = page.locator("#auth");
  await form.waitFor();
  const asked = await text(page, "#auth-error");
  await page.locator("#token").fill(opts.wrong_token);
  await page.locator("#token-save").click();
  await page.locator("#auth-error", { hasText: "refused" }).waitFor();
  const refused = await text(page, "#auth-error");
  await page.locator("#token").fill(opts.token);
  await page.locator("#token-save").click();
  await waitCards(page, ["blue", "green"]);
  assert.equal(await form.isVisible(), false);
  const stored = await page.evaluate(() => sessionStorage.getItem("td.token"));
  assert.equal(stored, opts.token);
  return { asked, refused };
}

async function weights(page) {
  await waitCards(page, opts.backends);
  assert.equal(await page.locator("#ratio-row").isVisible(), false);
  assert.equal(await page.locator("#swap").isDisabled(), true);
  for (const n of opts.backends) await page.locator(`#weights input[data-weight="${n}"]`).waitFor();
  await page.locator(`#weights input[data-weight="${opts.backend}"]`).fill(String(opts.bad_weight));
  await page.locator("#apply").click();
  const error = await waitMessage(page, "err");
  for (const [n, w] of Object.entries(opts.good))
    await page.locator(`#weights input[data-weight="${n}"]`).fill(String(w));
  await page.locator("#apply").click();
  const message = await waitMessage(page, "ok");
  return { error, message };
}

async function failover(page) {
  await waitCards(page, ["blue", "green"]);
  await page.locator("#failover", { hasText: "serving" }).waitFor();
  await page.locator("#errors-banner").waitFor();
  await waitChart(page);
  /* A few polls so the window holds traffic, then read card and legend from the same poll. */
  await page.waitForTimeout(opts.settle_ms || 3000);
  const seen = await page.evaluate(() => {
    const card = (n) => document.querySelector(`.card[data-backend="${n}"]`);
    const legend = document.querySelector('#legend [data-backend="green"]').textContent;
    return {
      failover: document.getElementById("failover").textContent,
      banner: document.getElementById("errors-banner").textContent,
      blueWeight: card("blue").querySelector(".weight").textContent,
      greenWeight: card("green").querySelector(".weight").textContent,
      blueRole: card("blue").querySelector(".badge.role").textContent,
      greenRole: card("green").querySelector(".badge.role").textContent,
      greenRps: card("green").querySelector('[data-field="rps"]').textContent,
      blueRps: card("blue").querySelector('[data-field="rps"]').textContent,
      greenLegend: legend,
    };
  });
  return seen;
}

async function drained(page) {
  await waitCards(page, ["blue", "green"]);
  await waitChart(page);
  if (opts.before_ms) await page.waitForTimeout(opts.before_ms);
  await page.locator("#ratio").focus();
  await page.keyboard.press("Home");
  await page.locator("#apply").click();
  await waitMessage(page, "ok");
  await page.locator('.card[data-backend="blue"] .badge.status', { hasText: "drained" }).waitFor();
  await page.waitForTimeout(opts.settle_ms || 1500);
  return await page.evaluate(() => {
    const card = document.querySelector('.card[data-backend="blue"]');
    return {
      status: card.querySelector(".badge.status").textContent,
      rps: card.querySelector('[data-field="rps"]').textContent,
    };
  });
}

const SCENARIOS = { ratio, swap, token, weights, failover, drained };

runConsole((page) => {
  const run = SCENARIOS[opts.scenario];
  if (!run) throw new Error("unknown scenario " + opts.scenario);
  return run(page);
});
