// Drives td's web console in Debian's headless Chromium (playwright-core) on a node of a cluster
// whose rollout leader has moved to a step that one node has not applied yet. Run by
// tests/e2e/test_cluster_rollout_analysis.py.
//
//   node tests/console/cluster_rollout.mjs '{"url": "http://127.0.0.1:PORT/", "token": "...",
//                                            "leader": "td-a", "behind": "td-c"}'
//
// Gives the token, waits until the rollout panel names the leader and marks opts.behind as not at
// the current step, and the nodes panel marks the leader's row. Prints one JSON line of
// observations on success; exits 1 with the reason otherwise.
import { opts, runConsole, TIMEOUT } from "./browser.mjs";

async function scenario(page) {
  await page.locator("#token").fill(opts.token);
  await page.locator("#token-save").click();
  await page.locator("#rollout-cluster").waitFor();
  await page.waitForFunction((o) => {
    const box = document.getElementById("rollout-cluster");
    const behind = box.querySelector(`.rnode[data-node="${o.behind}"]`);
    return box.textContent.includes("Led by " + o.leader) && behind &&
      behind.dataset.atStep === "false";
  }, { leader: opts.leader, behind: opts.behind }, { timeout: TIMEOUT });
  await page.locator(`#nodes-rows tr[data-node="${opts.leader}"][data-leader="true"]`).waitFor();
  return page.evaluate(() => ({
    rollout: document.getElementById("rollout-cluster").textContent,
    nodes: [...document.querySelectorAll("#rollout-cluster .rnode")].map((s) => ({
      node: s.dataset.node, at_step: s.dataset.atStep === "true", text: s.textContent })),
    leader_rows: [...document.querySelectorAll('#nodes-rows tr[data-leader="true"]')].map(
      (tr) => tr.dataset.node),
    leader: document.getElementById("nodes-leader").textContent,
  }));
}

runConsole(scenario);
