"""End-to-end tests of gRPC streaming through td: bidi and client-streaming calls are full duplex
(each request message reaches the backend as it is sent, not when the client half-closes), on h2c
and TLS listeners; an HTTP/1.1 chunked upload still works."""
import os
import queue
import socket
import threading
import time

import pytest

from conftest import backend_cfg, wait_for
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


class TinyH2Server:
    """A raw-socket server on 127.0.0.1 counting the connections it accepts (`accepted`), by
    `mode`: "zero" speaks HTTP/2 (h2c with prior knowledge) and announces
    SETTINGS_MAX_CONCURRENT_STREAMS 0, acknowledging SETTINGS and PINGs and nothing else; "http1"
    answers the client preface with an HTTP/1.1 400 and closes."""

    def __init__(self, mode):
        self.mode, self.accepted = mode, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def close(self):
        self.stop_ev.set()
        for th in list(self.threads):
            th.join(TIMEOUT)
        self.sock.close()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            th = threading.Thread(target=self._serve, args=(c,))
            self.threads.append(th)
            th.start()

    @staticmethod
    def _frame(ftype, flags, sid, payload=b""):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") \
            + payload

    def _serve(self, c):
        c.settimeout(0.2)
        buf = b""
        try:
            if self.mode == "zero":
                c.sendall(self._frame(4, 0, 0, (3).to_bytes(2, "big") + (0).to_bytes(4, "big")))
            while not self.stop_ev.is_set():
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                buf += data
                if self.mode == "http1":
                    c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                              b"Connection: close\r\n\r\n")
                    return
                if buf.startswith(b"PRI * HTTP/2.0"):
                    if len(buf) < 24:
                        continue
                    buf = buf[24:]
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    length = int.from_bytes(buf[:3], "big")
                    ftype, flags = buf[3], buf[4]
                    payload, buf = buf[9:9 + length], buf[9 + length:]
                    if ftype == 4 and not flags & 1:
                        c.sendall(self._frame(4, 1, 0))
                    elif ftype == 6 and not flags & 1:
                        c.sendall(self._frame(6, 1, 0, payload))
        except OSError:
            pass
        finally:
            c.close()


def grpc_post(port, payload=b"hi"):
    body = b"\x00" + len(payload).to_bytes(4, "big") + payload
    return http11_exchange(port, (
        b"POST /td.test.Echo/Unary HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc"
        b"\r\nTE: trailers\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_h2_server_allowing_0_concurrent_streams_gets_few_connections_and_calls_go_elsewhere(
        grpc_backends, gtd):
    zero = TinyH2Server("zero")
    good = grpc_backends("blue")
    try:
        cfg = backend_cfg({"blue": (100, [zero.port, good.port])},
                          passive={"failures": 100, "eject_ms": 1000, "max_eject_ms": 1000})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        for _ in range(10):
            resp = grpc_post(t.port)
            assert resp.startswith(b"HTTP/1.1 200 "), resp
            assert b"blue:hi" in resp and b"grpc-status: 0\r\n" in resp, resp
        # A few connections per worker (2), not one per attempt.
        assert 1 <= zero.accepted <= 8, zero.accepted
        assert fds(t.proc.pid) < 64, fds(t.proc.pid)
    finally:
        zero.close()


def test_h2_server_allowing_0_concurrent_streams_alone_gives_a_prompt_unavailable(gtd):
    zero = TinyH2Server("zero")
    try:
        cfg = backend_cfg({"blue": (100, [zero.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        for _ in range(3):
            resp = grpc_post(t.port)
            # td's own 502/503 to a gRPC request is a gRPC answer: UNAVAILABLE (14).
            assert resp.startswith(b"HTTP/1.1 200 "), resp
            assert b"grpc-status: 14\r\n" in resp, resp
        assert "connect timed out" not in t.proc.output()
        assert "server allows 0 concurrent streams" in t.proc.output()
        assert 1 <= zero.accepted <= 8, zero.accepted
    finally:
        zero.close()


def test_h2_backend_answering_the_preface_in_http11_gives_unavailable_naming_it(gtd):
    h1 = TinyH2Server("http1")
    try:
        cfg = backend_cfg({"blue": (100, [h1.port])})
        cfg["backends"][0]["protocol"] = "h2"
        t = gtd(cfg)
        resp = grpc_post(t.port)
        assert resp.startswith(b"HTTP/1.1 200 ") and b"grpc-status: 14\r\n" in resp, resp
        wait_for(lambda: "the server answered in HTTP/1.x, not HTTP/2" in t.proc.output(),
                 TIMEOUT, what="the reason in the log")
    finally:
        h1.close()
