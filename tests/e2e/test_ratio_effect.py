"""A ratio change and the upstream connections: a backend set to weight 0 and back soon after
keeps its pooled keep-alive connections; left at 0, they are closed a little later."""
import http.client
import http.server
import threading

from conftest import backend_cfg, wait_for


def get(port):
    """One GET / on a fresh client connection: (status, demo backend header, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.headers.get("X-TD-Demo-Backend"), r.read()
    finally:
        c.close()


class CountingBackend:
    """A keep-alive HTTP/1.1 server on 127.0.0.1 answering "counted"; counts the connections it
    accepted and those that were closed."""

    def __init__(self):
        owner = self
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with owner.lock:
                    owner.accepted += 1

            def finish(self):
                super().finish()
                with owner.lock:
                    owner.closed += 1

            def do_GET(self):
                body = b"counted"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def counts(self):
        with self.lock:
            return self.accepted, self.closed

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def start(backends, td):
    """td (one worker, so every request sees the same pools) with blue = a CountingBackend at
    weight 100 and green = a demo backend at weight 0; one request has pooled a connection to
    blue."""
    cb = CountingBackend()
    g = backends(("green", 1))
    cfg = backend_cfg({"blue": (100, [cb.port]), "green": (0, g.ports["green"])})
    cfg["workers"] = 1
    t = td(cfg)
    status, _, body = get(t.port)
    assert (status, body) == (200, b"counted")
    assert cb.counts() == (1, 0)
    return cb, t


def test_ratio_flipped_back_soon_reuses_the_pooled_connection_to_the_backend(backends, td):
    """blue to 0 (a request then goes to green, so the worker has seen the change) and straight
    back to 100: blue's next request reuses the pooled connection instead of opening one."""
    cb, t = start(backends, td)
    try:
        t.set_ratio(blue=0, green=100)
        status, name, _ = get(t.port)
        assert (status, name) == (200, "green")
        t.set_ratio(blue=100, green=0)
        status, _, body = get(t.port)
        assert (status, body) == (200, b"counted")
        assert cb.counts() == (1, 0)
    finally:
        cb.stop()


def test_pooled_connection_to_a_backend_left_at_weight_0_is_closed(backends, td):
    """blue stays at 0: td closes its idle pooled connection by itself (drain), and a later
    change back to blue opens a new one."""
    cb, t = start(backends, td)
    try:
        t.set_ratio(blue=0, green=100)
        status, name, _ = get(t.port)
        assert (status, name) == (200, "green")
        assert wait_for(lambda: cb.counts() == (1, 1), timeout=10, what="blue's connection closed")
        t.set_ratio(blue=100, green=0)
        status, _, body = get(t.port)
        assert (status, body) == (200, b"counted")
        assert cb.counts()[0] == 2
    finally:
        cb.stop()
