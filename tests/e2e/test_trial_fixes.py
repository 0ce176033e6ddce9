"""What a first trial of td found: a colour coming out of maint/drain is cold (a rollout to it
starts from 0 and its slow start ramps), queued requests whose clients gave up are never sent,
and tdctl says when td applied a change it could not save."""
import os
import socket
import subprocess
import threading
import time
import http.server

from conftest import (ASAN, TDCTL, backend_cfg, backend_state, free_port, get, wait_for,
                      wait_port)

SLOW = 3 if ASAN else 1
ENV = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
ENV.pop("TD_TOKEN", None)
ENV.pop("TD_ADMIN", None)
WARNING = "tdctl: warning: td applied the change but could not save it ("


def tdctl(t, *args, timeout=60):
    r = subprocess.run([TDCTL, "--admin", t.admin, *args], capture_output=True, text=True,
                       timeout=timeout * SLOW, env=ENV)
    print(f"$ tdctl {' '.join(args)}  -> {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def unsaved_td(backends, td, tmp_path):
    """blue and green at 50:50, with a state file under a regular file: never writable."""
    b = backends(("blue", 1), ("green", 1))
    (tmp_path / "not-a-folder").write_text("")
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      state_file=str(tmp_path / "not-a-folder" / "state.json"))
    return td(cfg)


def test_tdctl_warns_when_td_applied_a_change_it_could_not_save(backends, td, tmp_path):
    t = unsaved_td(backends, td, tmp_path)
    conf = tmp_path / "running.json"
    conf.write_text(tdctl(t, "config", "get").stdout)
    for args in (["ratio", "10:90"], ["method", "sticky"], ["state", "blue", "drain"],
                 ["state", "blue", "ready"], ["config", "put", str(conf)], ["config", "reset"],
                 ["ratio", "10:90"], ["switch", "blue", "--detach"], ["rollout", "abort"]):
        r = tdctl(t, *args)
        assert r.returncode == 0, r.stderr
        assert WARNING in r.stderr and "not-a-folder" in r.stderr, (args, r.stderr)
        assert "it is lost at td's next restart" in r.stderr, r.stderr
    weights = {b["name"]: b["weight"] for b in t.state()["backends"]}
    assert weights == {"blue": 10, "green": 90}  # applied all the same


def test_tdctl_status_warns_when_td_could_not_save_its_last_change(backends, td, tmp_path):
    t = unsaved_td(backends, td, tmp_path)
    r = tdctl(t, "status")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    status, body = t.api("PUT", "/api/v1/ratio", {"blue": 20, "green": 80})
    assert status == 200 and body["persisted"] is False, body
    r = tdctl(t, "status")
    assert r.returncode == 0, r.stderr
    assert "tdctl: warning:" in r.stderr and "not-a-folder" in r.stderr, r.stderr
    assert "blue" in r.stdout  # the table as before


def test_tdctl_says_nothing_of_saving_when_td_saved_the_change(backends, td, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    cfg = backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                      state_file=str(tmp_path / "state.json"))
    t = td(cfg)
    r = tdctl(t, "ratio", "10:90")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = tdctl(t, "status")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
