"""End-to-end test of the web console's rollout panel (console/index.html): Debian's headless
Chromium, driven by tests/console/rollout.test.mjs (playwright-core from the repo's node_modules),
starts "Switch to green" and drives the rollout td runs — Pause, a page reload, Resume, Promote,
Abort; this file starts td and the demo backends and checks through the admin API that td did
each of them.

Needs /usr/bin/chromium, node and `npm ci` at the repo root (scripts/deps.sh test does all three)."""
import json

from conftest import backend_cfg, needs_console, run_console, weights


@needs_console
def test_console_drives_a_whole_rollout_and_its_panel_survives_a_reload(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"]), "green": (0, b.ports["green"])}))
    # Long steps: the rollout moves on only when the page promotes it.
    seen = run_console("rollout.test.mjs", url=t.admin + "/", to="green", steps="10,50,100",
                       step_s=120)
    print(json.dumps(seen, indent=1))
    status, ro = t.api("GET", "/api/v1/rollout")
    assert status == 200, ro
    assert ro["id"] == seen["running"]["id"] == seen["reloaded"]["id"]
    assert ro["to"] == "green" and ro["steps"] == [10, 50, 100] and ro["step_s"] == 120
    assert ro["state"] == "aborted", ro["state"]
    # td did what the buttons asked, in order: paused, running again, the next step, aborted.
    states = [tr["state"] for tr in ro["transitions"]]
    paused = states.index("paused")
    assert "running" in states[paused + 1:] and states[-1] == "aborted", states
    assert ro["steps_detail"][0]["state"] in ("passed", "skipped") and ro["step"] == 1, \
        ro["steps_detail"]
    # Abort: the weights from before the rollout, and td's state says it is over.
    assert ro["weights_before"] == {"blue": 100, "green": 0}
    assert weights(t) == {"blue": 100, "green": 0}
    state = t.state()
    assert state["rollout"] is None or state["rollout"]["state"] == "aborted", state["rollout"]
    # The page saw the panel at each stage, with the first step's bar moving and Apply disabled.
    assert seen["running"]["steps"][0]["progress"] > 0
    assert seen["running"]["apply"] is False and seen["aborted"]["apply"] is True
    assert seen["paused"]["state"] == "paused" and seen["reloaded"]["state"] == "paused"
