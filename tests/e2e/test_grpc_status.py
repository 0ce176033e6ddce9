"""gRPC statuses as td sees them: a gRPC answer is HTTP 200 whose grpc-status (in a trailers-only
head, or in the trailers) says how the call went. A server-side failure counts as a 5xx (state
API, rollout analysis), a caller's one as a 4xx; the access log has grpc_status; td's own errors
reach a gRPC client as a gRPC status (UNAVAILABLE for a 502/503)."""
import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import ASAN, backend_state, free_port, stop_checked, wait_for

grpc = pytest.importorskip("grpc")
from grpc_backend import GrpcBackend  # noqa: E402  (needs grpc)
from test_grpc import GrpcTd, h2_cfg  # noqa: E402

TIMEOUT = 60 if ASAN else 20
FAST = {"interval_s": 1, "warmup_s": 0, "min_requests": 10}


@pytest.fixture
def procs():
    """Starts GrpcBackend / GrpcTd objects and stops them all at the end."""
    started = []

    def start(obj):
        started.append(obj)
        return obj

    yield start
    for p in reversed(started):
        if isinstance(p, GrpcTd):
            stop_checked(p)  # a clean exit; under ASan no memory error
        else:
            p.stop()


def calls(t, method, n, payload=b"x"):
    """n calls of `method` on td: the status codes they ended with."""
    got = []
    with grpc.insecure_channel(f"127.0.0.1:{t.port}") as ch:
        if method.endswith("Stream"):
            call = ch.unary_stream(method)
        else:
            call = ch.unary_unary(method)
        for _ in range(n):
            try:
                r = call(payload, timeout=TIMEOUT)
                if method.endswith("Stream"):
                    list(r)
                got.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                got.append(e.code())
    return got


def access_lines(path, n):
    """The first n lines of the access log (polled: a line is written as its exchange ends)."""
    def lines():
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(x) for x in f.read().splitlines()]
    wait_for(lambda: len(lines()) >= n, TIMEOUT, what=f"{n} access log lines")
    return lines()


def td_with(procs, tmp_path, backends):
    cfg = h2_cfg(backends)
    cfg["access_log"] = str(tmp_path / "access.log")
    return procs(GrpcTd(cfg))


def test_grpc_internal_trailers_only_counts_as_server_error_with_grpc_status_logged(
        procs, tmp_path):
    green = procs(GrpcBackend("green", free_port(), fail_all="INTERNAL"))
    t = td_with(procs, tmp_path, {"green": (100, [green])})
    assert calls(t, "/td.test.Echo/Unary", 10) == [grpc.StatusCode.INTERNAL] * 10
    wait_for(lambda: backend_state(t.state(), "green")["responses"]["5xx"] == 10, TIMEOUT,
             what="10 5xx for green")
    assert backend_state(t.state(), "green")["responses"]["2xx"] == 0
    lines = access_lines(str(tmp_path / "access.log"), 10)
    assert {(x["status"], x.get("grpc_status")) for x in lines} == {(200, 13)}, lines


def test_grpc_internal_in_trailers_after_messages_counts_as_server_error(procs, tmp_path):
    green = procs(GrpcBackend("green", free_port(), fail_all="INTERNAL"))
    t = td_with(procs, tmp_path, {"green": (100, [green])})
    assert calls(t, "/td.test.Echo/Stream", 5, b"3") == [grpc.StatusCode.INTERNAL] * 5
    wait_for(lambda: backend_state(t.state(), "green")["responses"]["5xx"] == 5, TIMEOUT,
             what="5 5xx for green")
    assert backend_state(t.state(), "green")["responses"]["2xx"] == 0
    lines = access_lines(str(tmp_path / "access.log"), 5)
    assert {(x["status"], x.get("grpc_status")) for x in lines} == {(200, 13)}, lines


def test_grpc_not_found_counts_as_client_error_not_server_error(procs, tmp_path):
    green = procs(GrpcBackend("green", free_port(), fail_all="NOT_FOUND"))
    t = td_with(procs, tmp_path, {"green": (100, [green])})
    assert calls(t, "/td.test.Echo/Unary", 6) == [grpc.StatusCode.NOT_FOUND] * 6
    assert calls(t, "/td.test.Echo/Stream", 4, b"2") == [grpc.StatusCode.NOT_FOUND] * 4
    wait_for(lambda: backend_state(t.state(), "green")["responses"]["4xx"] == 10, TIMEOUT,
             what="10 4xx for green")
    r = backend_state(t.state(), "green")["responses"]
    assert r["5xx"] == 0 and r["2xx"] == 0, r


def test_grpc_ok_calls_count_as_2xx_and_log_grpc_status_0(procs, tmp_path):
    blue = procs(GrpcBackend("blue", free_port()))
    t = td_with(procs, tmp_path, {"blue": (100, [blue])})
    assert calls(t, "/td.test.Echo/Unary", 3) == [grpc.StatusCode.OK] * 3
    assert calls(t, "/td.test.Echo/Stream", 2, b"2") == [grpc.StatusCode.OK] * 2
    wait_for(lambda: backend_state(t.state(), "blue")["responses"]["2xx"] == 5, TIMEOUT,
             what="5 2xx for blue")
    lines = access_lines(str(tmp_path / "access.log"), 5)
    assert [x.get("grpc_status") for x in lines] == [0] * 5, lines


def test_rollout_to_a_green_failing_every_grpc_call_with_internal_is_rolled_back(procs):
    blue = procs(GrpcBackend("blue", free_port()))
    green = procs(GrpcBackend("green", free_port(), fail_all="INTERNAL"))
    t = procs(GrpcTd(h2_cfg({"blue": (100, [blue]), "green": (0, [green])})))
    stop = threading.Event()

    def load():
        with grpc.insecure_channel(f"127.0.0.1:{t.port}") as ch:
            call = ch.unary_unary("/td.test.Echo/Unary")
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    call(b"x", timeout=TIMEOUT)
                except grpc.RpcError:
                    pass

    th = threading.Thread(target=load, daemon=True)
    th.start()
    try:
        status, r = t.api("POST", "/api/v1/rollout",
                          {"to": "green", "steps": [20, 100], "step_s": 20, "analysis": FAST})
        assert status == 201, r
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, r = t.api("GET", "/api/v1/rollout")
            if r["state"] in ("rolled_back", "succeeded", "paused", "aborted"):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        th.join(TIMEOUT)
    assert r["state"] == "rolled_back", r
    assert r["weights"] == {"blue": 100, "green": 0}
    assert backend_state(t.state(), "green")["responses"]["5xx"] > 0


def test_td_own_502_to_a_grpc_client_is_unavailable_with_the_reason(procs, tmp_path):
    gone = free_port()  # nothing listens there
    cfg = h2_cfg({})
    cfg["backends"] = [{"name": "blue", "weight": 100, "protocol": "h2",
                        "servers": [{"address": f"127.0.0.1:{gone}"}]}]
    cfg["access_log"] = str(tmp_path / "access.log")
    t = procs(GrpcTd(cfg))
    with grpc.insecure_channel(f"127.0.0.1:{t.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/td.test.Echo/Unary")(b"x", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() in ("502 Bad Gateway", "503 Service Unavailable"), e.value.details()
    if shutil.which("curl"):
        r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                            "-H", "content-type: application/grpc", "-H", "te: trailers",
                            "--data-binary", "@-", f"http://127.0.0.1:{t.port}/td.test.Echo/Unary"],
                           input=b"\x00\x00\x00\x00\x00", capture_output=True, timeout=TIMEOUT)
        head = r.stdout.decode().lower()
        assert head.startswith("http/2 200"), head
        assert "grpc-status: 14" in head and "content-type: application/grpc" in head, head
    lines = access_lines(str(tmp_path / "access.log"), 1)
    assert lines[0]["status"] in (502, 503) and lines[0]["grpc_status"] == 14, lines
