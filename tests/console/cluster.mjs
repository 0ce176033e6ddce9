// Drives td's web console in Debian's headless Chromium (playwright-core, no browser download)
// in cluster mode. Run by tests/e2e/test_cluster_console.py, which starts etcd, the td nodes and
// the demo backends.
//
//   node tests/console/cluster.mjs '{"url": "http://127.0.0.1:PORT/", "token": "...",
//                                    "nodes": ["td-a", "td-b"], "etcd_pid": 1234}'
//   node tests/console/cluster.mjs '{"url": "http://127.0.0.1:PORT/", "single": true}'
//
// Cluster: gives the token, waits until the nodes panel lists every node of opts.nodes (the one
// asked marked as this node), then SIGKILLs etcd (opts.etcd_pid) and waits for the banner saying
// the store is unreachable. Single: a td without "cluster" shows no nodes panel and no cluster
// banner. Prints one JSON line of observations on success; exits 1 with the reason otherwise.
import assert from "node:assert/strict";

import { opts, runConsole } from "./browser.mjs";

async function cluster(page) {
  await page.locator("#token").fill(opts.token);
  await page.locator("#token-save").click();
  await page.locator("#nodes").waitFor();
  for (const n of opts.nodes)
    await page.locator(`#nodes-rows tr[data-node="${n}"]`).waitFor();
  const rows = async () => page.evaluate(() =>
    [...document.querySelectorAll("#nodes-rows tr")].map((tr) => ({
      node: tr.dataset.node,
      self: tr.classList.contains("self"),
      cells: [...tr.children].map((td) => td.textContent),
    })));
  const panel = await rows();
  assert.equal(await page.locator("#cluster-store-banner").isVisible(), false);
  assert.equal(await page.locator("#cluster-init-banner").isVisible(), false);
  const leader = await page.locator("#nodes-leader").textContent();

  process.kill(opts.etcd_pid, "SIGKILL");
  const banner = page.locator("#cluster-store-banner");
  await banner.waitFor();
  await page.waitForFunction(
    () => / since /.test(document.getElementById("cluster-store-banner").textContent));
  return { panel, leader, banner: await banner.textContent(), after: await rows() };
}

async function single(page) {
  await page.locator(".card").first().waitFor();
  await page.waitForTimeout(1500); // two state polls: the page had its chance to show the panel
  return {
    panel: await page.locator("#nodes").isVisible(),
    store_banner: await page.locator("#cluster-store-banner").isVisible(),
    init_banner: await page.locator("#cluster-init-banner").isVisible(),
  };
}

runConsole(opts.single ? single : cluster);
