"""End-to-end tests of gRPC streaming through td: bidi and client-streaming calls are full duplex
(each request message reaches the backend as it is sent, not when the client half-closes), on h2c
and TLS listeners; an HTTP/1.1 chunked upload still works."""
import queue
import time

import pytest

from conftest import backend_cfg
from test_grpc import (TIMEOUT, RawH2Server, cert, grpc, grpc_backends, gtd,  # noqa: F401
                       h2_cfg, http11_exchange)


def open_channel(t, cert_pair, tls):
    if not tls:
        return grpc.insecure_channel(f"127.0.0.1:{t.port}")
    with open(cert_pair[0], "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(f"localhost:{t.tls_port}", creds)


@pytest.mark.parametrize("size", [1000, 20000])
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_grpc_bidi_ping_pong_call_gets_each_reply_before_sending_the_next_message(
        grpc_backends, gtd, cert, tls, size):
    blue = grpc_backends("blue")
    t = gtd(h2_cfg({"blue": (100, [blue])}), cert=cert)
    outbox = queue.Queue()

    def requests():
        while True:
            m = outbox.get()
            if m is None:
                return
            yield m

    with open_channel(t, cert, tls) as ch:
        call = ch.stream_stream("/td.test.Echo/Chat")(requests(), timeout=TIMEOUT)
        try:
            for i in range(5):
                msg = b"%d:" % i + b"x" * size
                outbox.put(msg)
                # The next message is sent only once this reply came: a td that held the
                # request until the client half-closes leaves the call to its deadline.
                assert next(call) == b"blue:" + msg
        finally:
            outbox.put(None)
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_grpc_client_streaming_messages_reach_the_backend_one_by_one(grpc_backends, gtd, cert,
                                                                      tls, tmp_path):
    arrivals = tmp_path / "arrivals"
    blue = grpc_backends("blue", arrivals=str(arrivals))
    t = gtd(h2_cfg({"blue": (100, [blue])}), cert=cert)

    def arrived():
        return arrivals.read_bytes().split(b"\n")[:-1] if arrivals.exists() else []

    seen = []

    def requests():
        for i in range(4):
            yield b"m%d" % i
            # The next message waits until the backend logged this one (bounded).
            deadline = time.monotonic() + TIMEOUT / 2
            while len(arrived()) <= i and time.monotonic() < deadline:
                time.sleep(0.02)
            seen.append(list(arrived()))

    with open_channel(t, cert, tls) as ch:
        assert ch.stream_unary("/td.test.Echo/Collect")(requests(), timeout=TIMEOUT) == b"blue:4"
    # Each message was at the backend before the client sent the next one.
    assert seen == [[b"m0"], [b"m0", b"m1"], [b"m0", b"m1", b"m2"], [b"m0", b"m1", b"m2", b"m3"]]


def test_http11_chunked_upload_through_td_still_arrives_whole(grpc_backends, gtd):
    raw = RawH2Server("count")
    try:
        cfg = backend_cfg({"blue": (100, [raw.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        resp = http11_exchange(t.port, b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
                               b"0\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200 "), resp
        assert resp.endswith(b"\r\n\r\n11") or b"\r\n\r\n11" in resp, resp
    finally:
        raw.close()
