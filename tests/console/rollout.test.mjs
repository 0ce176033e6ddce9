// Drives td's web console in Debian's headless Chromium (playwright-core, no browser download)
// through a whole rollout. Run by tests/e2e/test_rollout_console.py, which starts td and the demo
// backends and checks the result through the admin API.
//
//   node tests/console/rollout.test.mjs '{"url": "http://127.0.0.1:PORT/", "to": "green",
//                                         "steps": "10,50,100", "step_s": 30}'
//
// Starts "Switch to <to>" with the steps and step time given, waits for the rollout panel and
// for the first step's progress bar to move, checks that Apply is disabled with its note, then
// Pause, a page reload (the panel must come back from td's state), Resume, Promote (the first
// step is done, skipped, and the second runs) and Abort. Prints one JSON line of observations on
// success; exits 1 with the reason otherwise.
import assert from "node:assert/strict";

import { opts, runConsole } from "./browser.mjs";

/* What the panel shows: its state, id, title, reason, per step row its state and progress, the
 * buttons that are enabled, and whether Apply is. */
async function panel(page) {
  return page.evaluate(() => {
    const p = document.getElementById("rollout");
    const on = (id) => !document.getElementById(id).disabled;
    return {
      hidden: p.hidden,
      state: p.dataset.state,
      id: p.dataset.id,
      title: document.getElementById("rollout-title").textContent,
      reason: document.getElementById("rollout-reason").textContent,
      steps: [...p.querySelectorAll(".rstep")].map((r) => ({
        state: r.dataset.state, current: r.dataset.current === "true",
        progress: Number(r.querySelector(".bar").getAttribute("aria-valuenow")),
        text: r.textContent,
      })),
      buttons: ["pause", "resume", "promote", "abort"].filter((a) => on("rollout-" + a)),
      apply: on("apply"),
      note: !document.getElementById("rollout-note").hidden,
      switchText: document.getElementById("switch").textContent,
      switchEnabled: on("switch"),
      message: document.getElementById("message").textContent,
    };
  });
}

/* Waits until the panel is in `state` (td's rollout polled once a second by the page). */
async function waitState(page, state) {
  await page.waitForFunction((st) => {
    const p = document.getElementById("rollout");
    return !p.hidden && p.dataset.state === st;
  }, state);
}

runConsole(async (page) => {
  const seen = {};
  const button = page.locator("#switch", { hasText: "Switch to " + opts.to });
  await button.waitFor();
  seen.before = await panel(page);
  assert.equal(seen.before.hidden, true, "no rollout yet: no panel");
  assert.equal(seen.before.apply, true);

  // Start: the panel shows the rollout running at its first step.
  await page.fill("#switch-steps", opts.steps);
  await page.fill("#switch-step-time", String(opts.step_s));
  await button.click();
  await waitState(page, "running");
  await page.locator("#message.ok", { hasText: "started" }).waitFor();
  // The first step's bar moves as its time passes.
  await page.waitForFunction(() => {
    const bar = document.querySelector('#rollout .rstep[data-step="0"] .bar');
    return bar && Number(bar.getAttribute("aria-valuenow")) > 0;
  });
  seen.running = await panel(page);
  assert.equal(seen.running.steps.length, opts.steps.split(",").length);
  assert.equal(seen.running.steps[0].current, true);
  assert.deepEqual(seen.running.buttons, ["pause", "promote", "abort"]);
  assert.equal(seen.running.apply, false, "a rollout owns the weights: Apply disabled");
  assert.equal(seen.running.note, true);
  assert.equal(seen.running.switchEnabled, false);

  // Pause.
  await page.click("#rollout-pause");
  await waitState(page, "paused");
  seen.paused = await panel(page);
  assert.deepEqual(seen.paused.buttons, ["resume", "promote", "abort"]);

  // A reload: the panel comes back from td's state, still paused.
  await page.reload();
  await waitState(page, "paused");
  seen.reloaded = await panel(page);
  assert.equal(seen.reloaded.id, seen.running.id);
  assert.equal(seen.reloaded.apply, false);

  // Resume, then Promote: the first step is done, the second runs.
  await page.click("#rollout-resume");
  await waitState(page, "running");
  seen.resumed = await panel(page);
  await page.click("#rollout-promote");
  await page.waitForFunction(() => {
    const row = document.querySelector('#rollout .rstep[data-step="1"]');
    return row && row.dataset.current === "true";
  });
  seen.promoted = await panel(page);
  assert.equal(seen.promoted.steps[0].progress, 100);
  assert.ok(["passed", "skipped"].includes(seen.promoted.steps[0].state));

  // Abort: the weights go back, the buttons go off, Apply comes back.
  await page.click("#rollout-abort");
  await waitState(page, "aborted");
  await page.waitForFunction(() => !document.getElementById("apply").disabled);
  seen.aborted = await panel(page);
  assert.deepEqual(seen.aborted.buttons, []);
  assert.equal(seen.aborted.note, false);
  assert.equal(seen.aborted.switchEnabled, true);
  return seen;
});
