"""td --help names cluster mode; tdctl's bash completion knows the cluster commands and the
options added with them."""
import os
import subprocess

from conftest import TD

COMPLETION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "dist",
                          "bash-completion", "tdctl")


def test_td_help_describes_cluster_mode():
    r = subprocess.run([TD, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert "\"cluster\" key" in r.stdout, r.stdout
    assert "tdctl cluster init FILE" in r.stdout
    assert "td.json(5), CLUSTER" in r.stdout


def complete(*words):
    """What the completion offers for the last of `words` (tdctl first), without a td to ask."""
    quoted = " ".join("'" + w + "'" for w in words)
    script = (f"source {COMPLETION}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
              "_tdctl; echo ${COMPREPLY[*]}")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, TD_ADMIN="http://127.0.0.1:1"))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_tdctl_completion_offers_cluster_and_its_options():
    assert "cluster" in complete("tdctl", "")
    assert complete("tdctl", "cluster", "") == ["init", "rotate-key"]
    assert "--cacert" in complete("tdctl", "--")
    assert "--insecure" in complete("tdctl", "--")
    assert "--wait-all" in complete("tdctl", "ratio", "--")
    # --cacert takes a file name.
    assert COMPLETION.split(os.sep)[-1] in [os.path.basename(p) for p in
                                            complete("tdctl", "--cacert", COMPLETION)]
