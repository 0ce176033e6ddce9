"""A gRPC test backend (Debian's python3-grpcio) for td's end-to-end tests, and the fixture class
that starts it. No generated code: the methods take and return raw bytes.

Run as a program:
  grpc_backend.py --name blue --port 50051 [--tls CERT KEY] [--max-concurrent-streams N]
                  [--health-file PATH] [--fail-all CODE] [--arrivals PATH]
It prints "ready" on stdout once it serves, and runs until SIGTERM.

Methods (every response carries the trailing metadata x-env: NAME):
  /td.test.Echo/Unary   request bytes -> b"NAME:" + request
  /td.test.Echo/Stream  request b"N"  -> N messages b"NAME:0" ... b"NAME:N-1"
  /td.test.Echo/Fail    -> status NOT_FOUND, details "no such thing"
  /td.test.Echo/Slow    request b"MS" -> after MS milliseconds, b"NAME:slow"
  /td.test.Echo/Chat    bidi: each request message echoed at once, as b"NAME:" + message
  /td.test.Echo/Collect client-streaming: each message's first 32 bytes are appended, one line
      each, to the arrivals file (--arrivals PATH) as it arrives; at the end, b"NAME:" and the
      number of messages
  With --fail-all CODE (a grpc.StatusCode name such as INTERNAL): Unary fails with CODE (a
  trailers-only response), Stream sends its messages and then fails with CODE (the status in
  the trailers); details "failing CODE".
  /grpc.health.v1.Health/Check -> HealthCheckResponse; the health file's first word, when the
      file exists, picks the answer: SERVING (status 1), NOT_SERVING (status 2), UNKNOWN
      (status 0), UNIMPLEMENTED (the call fails with that status); no file: SERVING.
      Lines "SERVICE WORD" after the first answer for a request naming SERVICE
      (HealthCheckRequest.service), with the same words and NOT_FOUND (the call fails with that
      status, as grpc's own health servicer answers an unknown service); a service without a
      line gets the first word's answer.
"""
import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
HEALTH_STATUS = {"UNKNOWN": b"", "SERVING": b"\x08\x01", "NOT_SERVING": b"\x08\x02"}


def request_service(req):
    """HealthCheckRequest.service (field 1, length-delimited) of the raw request bytes, or ""."""
    i, service = 0, ""
    while i < len(req):
        key, i = varint(req, i)
        if key & 7 == 0:
            _, i = varint(req, i)
        elif key & 7 == 2:
            n, i = varint(req, i)
            if key >> 3 == 1:
                service = req[i:i + n].decode(errors="replace")
            i += n
        elif key & 7 == 1:
            i += 8
        elif key & 7 == 5:
            i += 4
        else:
            break
    return service


def varint(b, i):
    v, shift = 0, 0
    while i < len(b):
        v |= (b[i] & 0x7F) << shift
        i += 1
        if not b[i - 1] & 0x80:
            break
        shift += 7
    return v, i


def serve(args):
    name = args.name.encode()
    trailer = (("x-env", args.name),)

    fail_all = getattr(grpc.StatusCode, args.fail_all) if args.fail_all else None

    def unary(req, ctx):
        ctx.set_trailing_metadata(trailer)
        if fail_all:
            ctx.abort(fail_all, f"failing {args.fail_all}")
        return name + b":" + req

    def stream(req, ctx):
        ctx.set_trailing_metadata(trailer)
        for i in range(int(req or b"1")):
            yield name + b":" + str(i).encode()
        if fail_all:
            ctx.abort(fail_all, f"failing {args.fail_all}")

    def fail(req, ctx):
        ctx.set_trailing_metadata(trailer)
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def slow(req, ctx):
        time.sleep(int(req or b"0") / 1000.0)
        ctx.set_trailing_metadata(trailer)
        return name + b":slow"

    def chat(reqs, ctx):
        ctx.set_trailing_metadata(trailer)
        for req in reqs:
            yield name + b":" + req

    def collect(reqs, ctx):
        n = 0
        for req in reqs:
            n += 1
            if args.arrivals:
                with open(args.arrivals, "ab") as f:
                    f.write(req[:32] + b"\n")
        ctx.set_trailing_metadata(trailer)
        return name + b":" + str(n).encode()

    def check(req, ctx):
        word = "SERVING"
        service = request_service(req)
        if args.health_file and os.path.exists(args.health_file):
            with open(args.health_file) as f:
                text = f.read()
            word = (text.split() or ["SERVING"])[0]
            for line in text.splitlines()[1:]:
                parts = line.split()
                if len(parts) == 2 and parts[0] == service:
                    word = parts[1]
        if word == "UNIMPLEMENTED":
            ctx.abort(grpc.StatusCode.UNIMPLEMENTED, "health checks are off")
        if word == "NOT_FOUND":
            ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service}")
        return HEALTH_STATUS.get(word, b"")

    echo = grpc.method_handlers_generic_handler("td.test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
    })
    health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(check),
    })
    options = [("grpc.so_reuseport", 0)]
    if args.max_concurrent_streams:
        options.append(("grpc.max_concurrent_streams", args.max_concurrent_streams))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=options,
                         handlers=(echo, health))
    addr = f"127.0.0.1:{args.port}"
    if args.tls:
        with open(args.tls[0], "rb") as f:
            cert = f.read()
        with open(args.tls[1], "rb") as f:
            key = f.read()
        server.add_secure_port(addr, grpc.ssl_server_credentials(((key, cert),)))
    else:
        server.add_insecure_port(addr)
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    print("ready", flush=True)
    done.wait()
    server.stop(grace=1).wait()


class GrpcBackend:
    """One grpc_backend.py process on 127.0.0.1:port, started at construction (it waits for the
    "ready" line, at most 20 s) and stopped by its pid with stop()."""

    def __init__(self, name, port, tls=None, max_concurrent_streams=0, health_file=None,
                 fail_all=None, arrivals=None):
        self.name, self.port = name, port
        cmd = [sys.executable, os.path.join(HERE, "grpc_backend.py"), "--name", name,
               "--port", str(port)]
        if tls:
            cmd += ["--tls", tls[0], tls[1]]
        if max_concurrent_streams:
            cmd += ["--max-concurrent-streams", str(max_concurrent_streams)]
        if health_file:
            cmd += ["--health-file", health_file]
        if fail_all:
            cmd += ["--fail-all", fail_all]
        if arrivals:
            cmd += ["--arrivals", arrivals]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = [b""]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(20)
        if line[0].strip() != b"ready":
            self.stop()
            raise RuntimeError(f"gRPC backend {name} on port {port} did not start")

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stdout.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--max-concurrent-streams", type=int, default=0)
    p.add_argument("--health-file")
    p.add_argument("--fail-all", metavar="CODE")
    p.add_argument("--arrivals")
    serve(p.parse_args())


if __name__ == "__main__":
    main()
