"""SIGUSR1 reopens the access log (nginx's convention, for logrotate): after the file is renamed,
new lines go to a new file of the same name, and none is lost or torn."""
import json
import os
import signal

from conftest import LoadGen, backend_cfg, get, wait_for

SLACK = 10


def log_lines(path):
    """The lines of an access log file, each parsed (a torn line fails here)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    assert text == "" or text.endswith("\n"), text[-300:]
    return [json.loads(x) for x in text.splitlines()]


def test_sigusr1_reopens_the_renamed_access_log_without_losing_a_line(backends, td, tmp_path):
    b = backends(("blue", 1))
    log = str(tmp_path / "access.log")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=log, workers=2))
    load = LoadGen(t.port, threads=4, duration=60).start()
    try:
        wait_for(lambda: len(log_lines(log)) >= 100, SLACK, what="lines before the rotation")
        os.rename(log, log + ".1")
        os.kill(t.proc.pid, signal.SIGUSR1)
        wait_for(lambda: "access log reopened" in t.proc.output(), SLACK, what="the reopen")
        # Answered once the reopen is logged: its line can only be in the new file.
        assert get(t.port, "/?after-the-reopen")[0] == 200
        wait_for(lambda: any(x["path"] == "/?after-the-reopen" for x in log_lines(log)), SLACK,
                 what="the new file's line of the request after the reopen")
        old_after = len(log_lines(log + ".1"))
        new_before = len(log_lines(log))
        wait_for(lambda: len(log_lines(log)) >= new_before + 100, SLACK,
                 what="more lines in the new file")
    finally:
        load.stop()
    assert load.errors == [] and load.failed == 0, load.summary()
    assert t.stop() == 0
    old, new = log_lines(log + ".1"), log_lines(log)
    assert len(old) == old_after, "lines went to the renamed file after the reopen"
    assert not any(x["path"] == "/?after-the-reopen" for x in old)
    assert len(old) + len(new) == load.answered() + 1, (len(old), len(new), load.summary())
    assert all(x["status"] == 200 for x in old + new)


def test_a_reopen_that_cannot_open_the_file_keeps_logging_to_the_old_one(backends, td, tmp_path):
    """The log's directory renamed away (as if deleted): the reopen fails with an error line, and
    lines go on into the file td has open."""
    b = backends(("blue", 1))
    (tmp_path / "logs").mkdir()
    log = str(tmp_path / "logs" / "access.log")
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=log, workers=2))
    assert get(t.port, "/?before")[0] == 200
    os.rename(tmp_path / "logs", tmp_path / "gone")
    os.kill(t.proc.pid, signal.SIGUSR1)
    wait_for(lambda: "cannot reopen" in t.proc.output(), SLACK, what="the failed reopen")
    out = t.proc.output()
    assert f"access log: cannot reopen {log}: No such file or directory; still writing to the " \
           "old file" in out, out[-2000:]
    assert "access log reopened" not in out
    for i in range(4):  # both workers' lines
        assert get(t.port, f"/?after={i}")[0] == 200
    moved = str(tmp_path / "gone" / "access.log")
    wait_for(lambda: len(log_lines(moved)) == 5, SLACK, what="the lines in the old file")
    assert [x["path"] for x in log_lines(moved)][0] == "/?before"
    assert not os.path.exists(log)
