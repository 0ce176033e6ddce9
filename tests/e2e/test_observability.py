"""End-to-end tests of what td shows about its traffic: the preview route (a header and a token
reach a backend whatever its weight, and neither header reaches the backend), /metrics (read
with a strict Prometheus text-format parser written here, its counters checked against the
requests sent) and the JSON access log (one line per request, matching what was sent).

Every test starts its own demo backends and td on 127.0.0.1 (see conftest.py); every socket
has a timeout and every wait is bounded."""
import calendar
import http.client
import json
import math
import re
import time
import urllib.request

from conftest import RawConn, backend_cfg, backend_state, get, one_backend, wait_for

TIMEOUT = 10  # seconds, for every client socket
# td's passive detection ejects a server after 3 answers 5xx in a row; the tests that send 5xx
# on purpose count on every server staying in rotation.
NO_PASSIVE_EJECTION = {"failures": 1000, "eject_ms": 5000, "max_eject_ms": 300000}


def request(conn, method, path, headers=None, body=None):
    """One request on a keep-alive connection: (status, response headers, body)."""
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.headers, r.read()


# ---------------------------------------------------------------------------------------------
# Preview route

PREVIEW = {"method": "round_robin", "cookie": {"name": "TDSTICKY", "max_age_s": 3600},
           "preview": {"header": "X-TD-Backend", "token": "T"}}


def test_preview_header_with_token_reaches_a_backend_at_weight_0(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (0, b.ports["blue"]), "green": (100, b.ports["green"])},
                       routing=PREVIEW))
    cases = [
        # (request headers, backend expected)
        ({"X-TD-Backend": "blue", "X-TD-Backend-Token": "T"}, "blue"),
        ({"x-td-backend": "blue", "x-td-backend-token": "T"}, "blue"),  # names: any case
        ({"X-TD-Backend": "green", "X-TD-Backend-Token": "T"}, "green"),
        ({"X-TD-Backend": "blue"}, "green"),  # no token: the ratio decides
        ({"X-TD-Backend": "blue", "X-TD-Backend-Token": "wrong"}, "green"),
        ({"X-TD-Backend": "blue", "X-TD-Backend-Token": "TT"}, "green"),
        ({"X-TD-Backend": "blue", "X-TD-Backend-Token": ""}, "green"),
        ({"X-TD-Backend": "blue", "X-TD-Backend-Token": "t"}, "green"),  # the token: exact
        ({"X-TD-Backend-Token": "T"}, "green"),
        ({"X-TD-Backend": "purple", "X-TD-Backend-Token": "T"}, "green"),  # no such backend
        ({}, "green"),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=TIMEOUT)
    try:
        for _ in range(3):  # on one keep-alive connection: a forced request forces only itself
            for headers, expected in cases:
                hdrs = dict(headers, **{"X-Other": "kept"})
                status, h, body = request(conn, "GET", "/headers", hdrs)
                head = body.decode("latin-1").lower()
                assert status == 200, (headers, status)
                assert h.get("X-TD-Demo-Backend") == expected, (headers, h.get("X-TD-Demo-Backend"))
                # Neither header reaches the backend, valid or not; the others do.
                assert "x-td-backend" not in head, (headers, head)
                assert "x-other: kept" in head, head
    finally:
        conn.close()
    s = t.state()
    assert {x["name"]: x["weight"] for x in s["backends"]} == {"blue": 0, "green": 100}


# ---------------------------------------------------------------------------------------------
# /metrics, read with a strict parser of the Prometheus text format (version 0.0.4)

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


class MetricsError(AssertionError):
    pass


def parse_float(text, where):
    if not FLOAT.fullmatch(text):
        raise MetricsError(f"{where}: {text!r} is not a float")
    return float(text.replace("Inf", "inf"))


def parse_labels(line, i, where):
    """Parses {name="value",...} starting at line[i] == "{"; returns (labels, index after)."""
    labels = {}
    i += 1
    while True:
        if line[i:i + 1] == "}" and not labels:
            return labels, i + 1
        m = LABEL_NAME.match(line, i)
        if not m:
            raise MetricsError(f"{where}: bad label name at column {i + 1}")
        name = m.group()
        if name.startswith("__"):
            raise MetricsError(f"{where}: label {name} is reserved")
        if name in labels:
            raise MetricsError(f"{where}: label {name} twice")
        i = m.end()
        if line[i:i + 2] != '="':
            raise MetricsError(f"{where}: expected =\" after {name}")
        i += 2
        value = []
        while True:
            if i >= len(line):
                raise MetricsError(f"{where}: unterminated label value")
            ch = line[i]
            if ch == "\\":
                esc = line[i + 1:i + 2]
                if esc not in ('\\', '"', "n"):
                    raise MetricsError(f"{where}: bad escape \\{esc} in a label value")
                value.append("\n" if esc == "n" else esc)
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                value.append(ch)
                i += 1
        labels[name] = "".join(value)
        if line[i:i + 1] == ",":
            i += 1
            if line[i:i + 1] == "}":
                raise MetricsError(f"{where}: trailing comma in labels")
        elif line[i:i + 1] == "}":
            return labels, i + 1
        else:
            raise MetricsError(f"{where}: expected , or }} at column {i + 1}")


def family_of(name, families):
    """The declared family a sample name belongs to, or None."""
    if name in families and families[name]["type"] not in ("histogram",):
        return name
    for fam, info in families.items():
        for suffix in SUFFIXES.get(info["type"], ()):
            if suffix and name == fam + suffix:
                return fam
    return None


def parse_metrics(text):
    """Parses Prometheus text format strictly. Returns {family: {"type", "help", "samples":
    [(name, labels, value)]}}; raises MetricsError at the first problem."""
    if not text.endswith("\n"):
        raise MetricsError("the exposition does not end with a newline")
    families, order, seen, current = {}, [], set(), None
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n}"
        if line == "":
            continue  # allowed, and ignored
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
                raise MetricsError(f"{where}: a comment other than HELP or TYPE: {line!r}")
            kind, name = parts[1], parts[2]
            if not METRIC_NAME.fullmatch(name):
                raise MetricsError(f"{where}: bad metric name {name!r}")
            fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
            if fam["samples"]:
                raise MetricsError(f"{where}: {kind} of {name} after its samples")
            if kind == "TYPE":
                if fam["type"] is not None or len(parts) != 4 or parts[3] not in TYPES:
                    raise MetricsError(f"{where}: bad or second TYPE for {name}")
                fam["type"] = parts[3]
            else:
                if fam["help"] is not None or len(parts) != 4 or parts[3] == "":
                    raise MetricsError(f"{where}: bad or second HELP for {name}")
                if re.search(r"\\(?![\\n])", parts[3]):
                    raise MetricsError(f"{where}: bad escape in the HELP of {name}")
                fam["help"] = parts[3]
            continue
        m = METRIC_NAME.match(line)
        if not m:
            raise MetricsError(f"{where}: bad sample line {line!r}")
        name, i = m.group(), m.end()
        labels = {}
        if line[i:i + 1] == "{":
            labels, i = parse_labels(line, i, where)
        if line[i:i + 1] != " ":
            raise MetricsError(f"{where}: expected one space before the value")
        rest = line[i + 1:].split(" ")
        if len(rest) not in (1, 2) or (len(rest) == 2 and not re.fullmatch(r"-?\d+", rest[1])):
            raise MetricsError(f"{where}: expected a value and an optional timestamp")
        value = parse_float(rest[0], where)
        fam = family_of(name, families)
        if fam is None or families[fam]["type"] is None:
            raise MetricsError(f"{where}: sample {name} of no declared family (TYPE line)")
        if fam != current:
            if fam in order:
                raise MetricsError(f"{where}: samples of {fam} are not together")
            order.append(fam)
            current = fam
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise MetricsError(f"{where}: sample {name}{labels} twice")
        seen.add(key)
        if families[fam]["type"] == "counter" and (math.isnan(value) or value < 0):
            raise MetricsError(f"{where}: counter {name} is {value}")
        families[fam]["samples"].append((name, labels, value))
    for fam, info in families.items():
        if info["type"] == "histogram":
            check_histogram(fam, info["samples"])
    return families


def check_histogram(fam, samples):
    """Buckets cumulative, le increasing and ending with +Inf == _count; _sum present."""
    series = {}
    for name, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if name == fam + "_bucket":
            if "le" not in labels:
                raise MetricsError(f"{fam}_bucket{labels} without le")
            s["buckets"].append((parse_float(labels["le"], f"{fam} le"), value))
        elif "le" in labels:
            raise MetricsError(f"{name}{labels}: le on a sum or count")
        else:
            s["sum" if name.endswith("_sum") else "count"] = value
    for rest, s in series.items():
        b = s["buckets"]
        if not b or b[-1][0] != math.inf:
            raise MetricsError(f"{fam}{dict(rest)}: the last bucket is not le=\"+Inf\"")
        for (le1, c1), (le2, c2) in zip(b, b[1:]):
            if not le1 < le2:
                raise MetricsError(f"{fam}{dict(rest)}: le {le1} then {le2}")
            if not c1 <= c2:
                raise MetricsError(f"{fam}{dict(rest)}: buckets not cumulative ({c1} then {c2})")
        if s["count"] is None or s["sum"] is None:
            raise MetricsError(f"{fam}{dict(rest)}: _count or _sum missing")
        if b[-1][1] != s["count"]:
            raise MetricsError(f"{fam}{dict(rest)}: +Inf bucket {b[-1][1]} != _count {s['count']}")


def test_metrics_parser_is_strict():
    """The parser itself refuses what the format forbids (so that its passing means something)."""
    good = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n"
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\n"
            "h_count 2\n")
    assert parse_metrics(good)["h"]["type"] == "histogram"
    bad = [
        good.rstrip("\n"),                                     # no final newline
        "a_total 3\n",                                         # no family declared
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",            # label twice
        "# TYPE a counter\na{x=1} 1\n",                        # unquoted label value
        "# TYPE a counter\na{x=\"1\",} 1\n",                   # trailing comma
        "# TYPE a counter\na{1x=\"1\"} 1\n",                   # bad label name
        "# TYPE a counter\na one\n",                           # not a float
        "# TYPE a counter\na -1\n",                            # negative counter
        "# TYPE a counter\na  1\n",                            # two spaces
        "# TYPE a counter\n# TYPE a gauge\na 1\n",             # TYPE twice
        "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n",  # family split
        "# TYPE a counter\na 1\na 2\n",                        # sample twice
        "# TYPE a frob\na 1\n",                                # unknown type
        "# comment\n# TYPE a counter\na 1\n",                  # other comment
        "# HELP a x\\y\n# TYPE a counter\na 1\n",            # bad escape in HELP
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",  # no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",  # +Inf != count
        "# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
        "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",      # le not increasing
    ]
    for text in bad:
        try:
            parse_metrics(text)
        except MetricsError:
            continue
        raise AssertionError(f"accepted: {text!r}")


def fetch_metrics(t):
    with urllib.request.urlopen(t.admin + "/metrics", timeout=TIMEOUT) as r:
        assert r.status == 200
        assert r.headers.get("Content-Type").startswith("text/plain; version=0.0.4")
        return r.read().decode()


def values(families, fam, name=None, **match):
    """{labels-without-match-keys: value} of the samples of fam named name matching labels."""
    out = {}
    for n, labels, v in families[fam]["samples"]:
        if n == (name or fam) and all(labels.get(k) == w for k, w in match.items()):
            out[tuple(sorted(labels.items()))] = v
    return out


def one(families, fam, name=None, **labels):
    v = values(families, fam, name, **labels)
    assert len(v) == 1, (fam, name, labels, v)
    return next(iter(v.values()))


def test_metrics_parse_strictly_and_count_the_requests_sent(backends, td):
    b = backends(("blue", 1), ("green", 1))
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                       passive=NO_PASSIVE_EJECTION))
    # 2xx, 3xx, 4xx and 5xx answers, counted here by the backend that answered.
    paths = ["/"] * 40 + ["/status/404"] * 9 + ["/status/503"] * 7 + ["/status/302"] * 4 + \
        ["/status/204"] * 3 + ["/bytes/3000"] * 5
    sent = {}  # (backend, class) -> answers
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=TIMEOUT)
    try:
        assert math.gcd(7, len(paths)) == 1  # so that k * 7 mod n visits every path once
        for path in (paths[k * 7 % len(paths)] for k in range(len(paths))):
            status, h, _ = request(conn, "GET", path)
            key = (h.get("X-TD-Demo-Backend"), f"{status // 100}xx")
            sent[key] = sent.get(key, 0) + 1
    finally:
        conn.close()
    total = {be: sum(n for (b2, _), n in sent.items() if b2 == be) for be in ("blue", "green")}
    assert sum(total.values()) == len(paths) and all(total.values()), sent

    # The histogram is fed when an exchange ends, just after its last byte left: wait for it.
    def settled():
        fams = parse_metrics(fetch_metrics(t))
        counts = {be: one(fams, "td_request_duration_seconds", "td_request_duration_seconds_count",
                          backend=be) for be in total}
        return fams if counts == total else None

    fams = wait_for(settled, 5, what="histogram counts equal to the requests sent")
    print({f: i["type"] for f, i in fams.items()})
    for be in ("blue", "green"):
        port = b.ports[be][0]
        assert one(fams, "td_backend_requests_total", backend=be) == total[be]
        for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
            assert one(fams, "td_backend_responses_total", backend=be, **{"class": cls}) == \
                sent.get((be, cls), 0), (be, cls)
            assert one(fams, "td_server_responses_total", backend=be,
                       server=f"127.0.0.1:{port}", **{"class": cls}) == sent.get((be, cls), 0)
        assert one(fams, "td_server_requests_total", backend=be,
                   server=f"127.0.0.1:{port}") == total[be]
        assert one(fams, "td_backend_weight", backend=be) == 50
        assert one(fams, "td_backend_up", backend=be) == 1
        assert one(fams, "td_backend_in_flight", backend=be) == 0
        # No connect error, reset or timeout here: the failures are the 5xx answers, which td's
        # passive detection counts too.
        assert one(fams, "td_server_failures_total", backend=be,
                   server=f"127.0.0.1:{port}") == sent.get((be, "5xx"), 0)
        buckets = values(fams, "td_request_duration_seconds", "td_request_duration_seconds_bucket",
                         backend=be)
        assert len(buckets) == 14  # td's 13 bounds and +Inf
    assert fams["td_backend_requests_total"]["type"] == "counter"
    assert fams["td_request_duration_seconds"]["type"] == "histogram"
    assert all(info["help"] for info in fams.values())
    # The same figures as the state's.
    state = t.state()
    for x in state["backends"]:
        assert x["requests"] == total[x["name"]]
        assert x["responses"]["2xx"] == sent.get((x["name"], "2xx"), 0)
        assert sum(x["latency_ms"]["buckets"]) == total[x["name"]]


# ---------------------------------------------------------------------------------------------
# Access log

ISO_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z")
FIELDS = {"time": str, "client": str, "method": str, "path": str, "status": int, "bytes": int,
          "duration_ms": int, "backend": str, "server": str}


def read_log(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_access_log_has_a_json_line_per_request(backends, td, tmp_path):
    b = backends(("blue", 1), ("green", 1))
    log = tmp_path / "access.log"
    t = td(backend_cfg({"blue": (50, b.ports["blue"]), "green": (50, b.ports["green"])},
                       access_log=str(log), passive=NO_PASSIVE_EJECTION))
    reqs = ([("GET", "/", None)] * 6 + [("GET", "/status/404", None)] * 2 +
            [("GET", "/status/500", None), ("POST", "/echo", b"x" * 1000),
             ("PUT", "/echo", b"y" * 10), ("HEAD", "/", None), ("GET", "/bytes/5000", None),
             ("GET", "/headers?q=1&r=%20", None), ("DELETE", "/status/204", None),
             ("GET", "/delay/30", None)])
    started = time.time()
    sent = []
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=TIMEOUT)
    try:
        for method, path, body in reqs:
            status, h, data = request(conn, method, path, body=body)
            sent.append({"method": method, "path": path, "status": status,
                         "backend": h.get("X-TD-Demo-Backend"),
                         "server": h.get("X-TD-Demo-Server"), "body": len(data)})
    finally:
        conn.close()
    text = wait_for(lambda: (lambda s: s if s.count("\n") >= len(reqs) else None)(
        read_log(log)), 5, what=f"{len(reqs)} access log lines")
    ended = time.time()
    time.sleep(0.2)
    text = read_log(log)
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(reqs), text
    got = []
    for line in lines[:-1]:
        entry = json.loads(line)
        for field, kind in FIELDS.items():
            assert isinstance(entry.get(field), kind), (field, line)
        m = ISO_TIME.fullmatch(entry["time"])
        assert m, entry["time"]
        when = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + \
            int(m.group(2)) / 1000
        assert started - 1 <= when <= ended + 1, (entry["time"], started, ended)
        assert entry["client"] == "127.0.0.1"
        assert entry["duration_ms"] >= 0 and entry["bytes"] >= 0
        got.append(entry)
    # One connection, one request at a time: the lines come in the order sent.
    for entry, s in zip(got, sent):
        for field in ("method", "path", "status", "backend", "server"):
            assert entry[field] == s[field], (field, entry, s)
        # bytes: what td wrote to the client, the response head included.
        assert s["body"] <= entry["bytes"] <= s["body"] + 2048, (entry, s)
    assert got[-1]["duration_ms"] >= 30 - 1  # /delay/30: at least its delay (ms, rounded)
    assert {e["backend"] for e in got} == {"blue", "green"}


# ---------------------------------------------------------------------------------------------
# Counters of the backend that answered; access log of aborted and refused requests

def test_backend_counters_follow_the_backend_that_answered(backends, td):
    """green's server is dead: requests first routed to green are retried on blue, and count as
    blue's, not green's."""
    blue = backends(("blue", 1))
    green = backends(("green", 1))
    cfg = backend_cfg({"blue": (50, blue.ports["blue"]), "green": (50, green.ports["green"])})
    t = td(cfg)
    green.stop()
    answers = [get(t.port) for _ in range(10)]
    assert answers == [(200, "blue")] * 10, answers
    s = t.state()
    g, b = backend_state(s, "green"), backend_state(s, "blue")
    assert g["requests"] == 0 and g["responses"]["2xx"] == 0, g
    assert b["requests"] == 10 and b["responses"]["2xx"] == 10, b


def test_a_client_that_leaves_before_its_answer_is_logged_as_499(backends, td, tmp_path):
    import socket
    log = tmp_path / "access.log"
    b = backends(("blue", 1))
    t = td(backend_cfg({"blue": (100, b.ports["blue"])}, access_log=str(log)))
    s = socket.create_connection(("127.0.0.1", t.port), timeout=TIMEOUT)
    s.sendall(b"GET /delay/800 HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.2)
    # An abort (RST), not a half-close: a half-closed client still gets its answer.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    assert get(t.port, "/status/204")[0] == 204
    deadline = time.time() + 5
    lines = []
    while time.time() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    statuses = sorted((x["path"], x["status"]) for x in lines)
    assert statuses == [("/delay/800", 499), ("/status/204", 204)], lines


def test_a_400_is_logged_with_the_rule_it_broke(backends, td):
    t = one_backend(backends, td)
    with RawConn(t.port) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        assert c.read_response()[0] == 400
    for _ in range(50):
        if "Content-Length together with Transfer-Encoding" in t.proc.output():
            break
        time.sleep(0.05)
    assert re.search(r"400 POST /x from 127\.0\.0\.1:\d+: Content-Length together with "
                     "Transfer-Encoding", t.proc.output()), t.proc.output()[-2000:]


def test_a_backend_counts_the_requests_its_servers_answered(backends, td):
    """A backend of two servers, the first refusing connections (a closed port): every request
    tried there is retried on the second. `requests` counts requests answered, for a server and
    for its backend alike: the backend's equals the sum of its servers', the refusing server
    answered none and shows its failed tries as failures."""
    from conftest import free_port, server_state
    live = backends(("blue", 1))
    closed = free_port()
    cfg = backend_cfg({"blue": (100, [closed] + live.ports["blue"])},
                      passive=NO_PASSIVE_EJECTION)
    t = td(cfg)
    n = 20
    answers = [get(t.port) for _ in range(n)]
    assert answers == [(200, "blue")] * n, answers
    s = t.state()
    b = backend_state(s, "blue")
    dead, ok = server_state(s, closed), server_state(s, live.ports["blue"][0])
    assert b["requests"] == dead["requests"] + ok["requests"] == n, (b, dead, ok)
    assert dead["requests"] == 0 and dead["failures"] > 0, dead
    assert ok["requests"] == n and ok["failures"] == 0, ok
