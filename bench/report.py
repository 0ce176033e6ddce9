#!/usr/bin/python3
"""Turns bench/out/raw.tsv (round, proxy, metric, value) into docs/BENCHMARKS.md and the
gnuplot chart docs/bench.svg. Medians over rounds; ratios td/nginx and td/HAProxy.
Exits 1 when a td measurement is missing. Stdlib only (and gnuplot for the chart)."""
import argparse
import collections
import os
import statistics
import subprocess
import sys

PROXIES = [("td", "td"), ("nginx", "nginx"), ("haproxy", "HAProxy")]

# metric, label, unit, better ("high"/"low"), decimals
METRICS = [
    ("rps_c50", "Requests/s, 50 keep-alive connections", "req/s", "high", 0),
    ("rps_c1", "Requests/s, 1 keep-alive connection", "req/s", "high", 0),
    ("p50_c50_ms", "Latency p50, 50 connections", "ms", "low", 2),
    ("p99_c50_ms", "Latency p99, 50 connections", "ms", "low", 2),
    ("p50_c1_ms", "Latency p50, 1 connection", "ms", "low", 3),
    ("p99_c1_ms", "Latency p99, 1 connection", "ms", "low", 3),
    ("cpu_s_per_100k", "Proxy CPU time per 100,000 requests (50 conns)", "s", "low", 2),
    ("idle_bytes_per_conn", "Memory per idle keep-alive client connection", "bytes", "low", 0),
    ("mbps_1m", "Throughput, 1 MiB responses, 4 connections", "MB/s", "high", 0),
    ("tls_rps_c50", "HTTPS requests/s, 50 keep-alive connections", "req/s", "high", 0),
    ("tls_p99_c50_ms", "HTTPS latency p99, 50 keep-alive connections", "ms", "low", 2),
    ("tls_cpu_s_per_100k", "Proxy CPU time per 100,000 HTTPS requests (50 keep-alive conns)", "s",
     "low", 2),
    ("tls_hs_per_s", "HTTPS new handshakes/s (a new connection per request, 50 at a time)",
     "handshakes/s", "high", 0),
    ("tls_cpu_s_per_1k_conns", "Proxy CPU time per 1,000 new HTTPS connections", "s", "low", 3),
    ("h2_rps", "HTTP/2 over TLS requests/s (h2load, 10 connections x 10 streams)", "req/s",
     "high", 0),
    ("h2_cpu_s_per_100k", "Proxy CPU time per 100,000 HTTP/2 requests", "s", "low", 2),
    ("flip_effect_ms_p50", "Ratio change to effect, median of the changes", "ms", "low", 2),
    ("flip_effect_ms_max", "Ratio change to effect, slowest change", "ms", "low", 2),
    ("flip_failed", "Failed requests during the ratio changes (wrk, 50 conns)", "requests", "low", 0),
    ("upgrade_takeover_ms_p50", "td upgrade under load: to the new process accepting, median of 10",
     "ms", "low", 1),
    ("upgrade_takeover_ms_max", "td upgrade under load: to the new process accepting, slowest", "ms",
     "low", 1),
    ("upgrade_failed", "Failed requests during 10 upgrades (keep-alive and new connections)",
     "requests", "low", 0),
    ("cluster3_effect_ms_p50", "Cluster of 3 nodes: change on one node to effect on all, median",
     "ms", "low", 2),
    ("cluster3_effect_ms_max", "Cluster of 3 nodes: change on one node to effect on all, slowest",
     "ms", "low", 2),
    ("cluster10_effect_ms_p50", "Cluster of 10 nodes: change on one node to effect on all, median",
     "ms", "low", 2),
    ("cluster10_effect_ms_max",
     "Cluster of 10 nodes: change on one node to effect on all, slowest", "ms", "low", 2),
]
LABEL = {m[0]: m for m in METRICS}
FAIL_KEYS = ["failed_c50", "failed_c1", "failed_1m", "failed_tls_c50", "failed_tls_new",
             "failed_h2", "upgrade_failed", "idle_failed", "flip_timeouts", "flip_stragglers", "cluster3_timeouts",
             "cluster10_timeouts"]


def load(raw):
    data = collections.defaultdict(lambda: collections.defaultdict(dict))  # proxy→metric→round→v
    with open(raw) as f:
        next(f)
        for line in f:
            rnd, proxy, metric, value = line.rstrip("\n").split("\t")
            try:
                data[proxy][metric][int(rnd)] = float(value)
            except ValueError:
                pass
    return data


def median(data, proxy, metric):
    vals = list(data[proxy][metric].values())
    return statistics.median(vals) if vals else None


def fmt(v, decimals):
    if v is None:
        return "—"
    return f"{v:,.{decimals}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def machine_info(path):
    info = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            info[k] = v
    return info


def chart(data, svg, work):
    """Six bar panels (median, with the range over rounds). HTTP: req/s at 50 connections, req/s
    at 1 connection, CPU seconds per 100,000 requests; HTTPS: req/s at 50 keep-alive connections,
    new handshakes/s, CPU seconds per 100,000 requests."""
    metrics = ("rps_c50", "rps_c1", "cpu_s_per_100k",
               "tls_rps_c50", "tls_hs_per_s", "tls_cpu_s_per_100k")
    dat = "bench.dat"  # relative: gnuplot runs in `work`, and file names end up in the SVG
    with open(os.path.join(work, dat), "w") as f:
        f.write("# proxy, then median min max of: " + " ".join(metrics) + "\n")
        for key, name in PROXIES:
            cols = []
            for m in metrics:
                vals = list(data[key][m].values()) or [0]
                cols += [statistics.median(vals), min(vals), max(vals)]
            f.write(name + " " + " ".join(f"{v:.3f}" for v in cols) + "\n")
    panels = [(2, "HTTP: requests/s, 50 connections (↑)", "%.0f"),
              (5, "HTTP: requests/s, 1 connection (↑)", "%.0f"),
              (8, "HTTP: CPU s per 100,000 requests (↓)", "%.2f"),
              (11, "HTTPS: requests/s, 50 keep-alive conns (↑)", "%.0f"),
              (14, "HTTPS: new handshakes/s (↑)", "%.0f"),
              (17, "HTTPS: CPU s per 100,000 requests (↓)", "%.2f")]
    gp = [
        f"set terminal svg size 1080,680 dynamic font 'sans,11' background '#ffffff'",
        f"set output '{os.path.abspath(svg)}'",
        "set style fill solid 0.85 border -1",
        "set boxwidth 0.6",
        "set yrange [0:*]", "set offsets 0, 0, graph 0.12, 0", "set xrange [-0.6:2.6]",
        "unset key", "set grid ytics",
        "set linetype 1 lc rgb '#2f6fd6'", "set linetype 2 lc rgb '#2e9e44'",
        "set linetype 3 lc rgb '#c9552a'",
        "set multiplot layout 2,3 title 'td, nginx, HAProxy: bars: median of the rounds; lines: their range' "
        "font 'sans,10'",
    ]
    for col, title, label_fmt in panels:
        lo, hi = col + 1, col + 2
        gp += [
            f"set title '{title}' font 'sans,11'",
            f"plot '{dat}' using 0:{col}:($0+1):xtic(1) with boxes lc variable, "
            f"'' using 0:{col}:{lo}:{hi} with yerrorbars lc rgb '#333333' pt 7 ps 0.3, "
            f"'' using 0:{hi}:(sprintf('{label_fmt}', ${col})) with labels offset 0,0.8",
        ]
    gp.append("unset multiplot")
    with open(os.path.join(work, "bench.gp"), "w") as f:
        f.write("\n".join(gp) + "\n")
    subprocess.run(["gnuplot", "bench.gp"], check=True, cwd=work)


def tls_notes(data, info):
    """What wrk negotiated with each proxy in the new-handshake runs, and how many of those
    handshakes resumed a session (counted by bench/tls_count.c inside wrk)."""
    if info.get("tls_count") != "1":
        return ["- HTTPS new handshakes: resumption not counted (bench/tls_count.c could not be "
                "built); wrk offers the previous session on each new connection, so some or all "
                "of them may be resumed handshakes."]
    parts, shares, ticketless = [], {}, []
    for key, name in PROXIES:
        hs = sum(data[key]["tls_handshakes"].values())
        rs = sum(data[key]["tls_resumed"].values())
        if not hs:
            parts.append(f"{name}: not counted")
            continue
        shares[name] = rs / hs
        neg = info.get("tls_" + key, "?")
        parts.append(f"{name} {rs:,.0f} of {hs:,.0f} ({100 * rs / hs:.1f} %, {neg})")
        cl = sum(data[key]["tls_closed"].values())
        ck = sum(data[key]["tls_closed_resumable"].values())
        if cl and ck / cl < 0.9:
            ticketless.append(f"{name} {cl - ck:,.0f} of {cl:,.0f} ({100 * (cl - ck) / cl:.1f} %)")
    note = ("- HTTPS new handshakes: wrk offers the session of the connection it closed on the "
            "next one; share of the handshakes it completed that resumed a session (session "
            "ticket or cache), all rounds: " + "; ".join(parts) + ".")
    vals = list(shares.values())
    if vals and min(vals) > 0.9:
        note += (" So the handshake rows measure resumed handshakes (no certificate, no "
                 "signature; with TLS 1.3 still an ECDHE key exchange), the case of returning "
                 "clients, not of first visits.")
    elif vals and max(vals) < 0.1:
        note += " So the handshake rows measure full handshakes (certificate and signature)."
    elif vals:
        low = [n for n, v in shares.items() if v <= 0.9]
        note += (f" {' and '.join(low)} resumed fewer, so the handshake rows mix full and resumed "
                 "handshakes in different shares: td/nginx and td/HAProxy there compare unlike "
                 "work.")
    notes = [note]
    if ticketless:
        notes.append("- HTTPS new handshakes: connections that wrk closed without a session it could "
                     "resume next time (with TLS 1.3: no new session ticket on that connection, "
                     "and OpenSSL clients such as wrk use a TLS 1.3 ticket only once): "
                     + "; ".join(ticketless) + ". Each of them makes wrk's next handshake a full "
                     "one.")
    return notes


# Measured alone, not by this run: bench/flips.sh, bench/cluster_rollout.py.
KEPT = ("## Ratio change to effect", "## Cluster rollouts")


def kept_section(md):
    """The page's KEPT sections as they stand (each up to the next "## " heading), or "": a run
    of make bench rewrites the page but does not measure them."""
    try:
        with open(md) as f:
            text = f.read()
    except OSError:
        return ""
    parts = []
    for head in KEPT:
        start = text.find(head + "\n")
        if start < 0:
            continue
        end = text.find("\n## ", start + len(head))
        parts.append(text[start:end if end >= 0 else len(text)].rstrip("\n") + "\n")
    return "\n".join(parts)


def write_md(data, info, md, svg):
    rounds = sorted({r for p in data.values() for m in p.values() for r in m})
    flips = info.get("flips", "?")
    out = []
    w = out.append
    w("# Benchmarks: td, nginx and HAProxy\n")
    w(f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, {info.get('kernel', '?')}, "
      f"{info.get('date', '?')}; load average (1/5/15 min) {info.get('load_start', '?')} at the "
      f"start, {info.get('load_end', '?')} at the end"
      + (f"; run at nice {info['nice']}" if info.get("nice", "0") != "0" else "") + ".  ")
    w(f"Versions: {info.get('td', 'td ?')}; nginx {info.get('nginx', '?')}; "
      f"HAProxy {info.get('haproxy', '?')}; wrk {info.get('wrk', '?')}; "
      f"OpenSSL {info.get('openssl', '?')}.\n")
    w("Reproduce (as root on Debian 12, from the repository; installs what it needs and builds "
      "`build/td` first):\n")
    w(f"```sh\n{info.get('command', 'make bench')}\n```\n")
    w(f"That runs `bench/run.sh` (defaults: 3 rounds, 5 s per wrk run, 10,000 idle connections, "
      "100 ratio changes; about 7 minutes). This run: rounds "
      f"{info.get('rounds')}, "
      f"{info.get('duration')} s per wrk run, {info.get('idle_conns')} idle connections, "
      f"{flips} ratio changes. `BENCH_QUICK=1 bench/run.sh` is a smoke run under a minute "
      "(results in `bench/out/quick/`, this page untouched).\n")
    w(f"Medians over {len(rounds)} rounds; the raw per-round numbers are in `bench/out/raw.tsv`, "
      "wrk's reports in `bench/out/logs/`. A ratio above 1 means td has the larger number: "
      "better for rows marked ↑, worse for rows marked ↓.\n")
    w("| | td | nginx | HAProxy | td/nginx | td/HAProxy |")
    w("|---|---:|---:|---:|---:|---:|")
    for key, label, unit, better, dec in METRICS:
        vals = [median(data, p, key) for p, _ in PROXIES]
        arrow = "↑" if better == "high" else "↓"
        w(f"| {label} ({unit}) {arrow} | " + " | ".join(fmt(v, dec) for v in vals)
          + f" | {ratio(vals[0], vals[1])} | {ratio(vals[0], vals[2])} |")
    w("")
    w("![requests/s and CPU per request, HTTP and HTTPS](bench.svg)\n")

    w("## Setup\n")
    w("Everything on 127.0.0.1 of the one machine, so load generator, backend and proxy share its "
      "cores: compare the ratios of one run, not absolute numbers across machines.\n")
    w("- Backend: nginx, 1 worker, blue on :9001 and green on :9002 answering `blue\\n` / "
      "`green\\n`, and the same 1 MiB static file at `/1m` on both (`bench/conf/backend.conf`).")
    w("- Proxies, one worker each, two backends at 50/50, keep-alive to the backends: td "
      "(`\"workers\": 1`, :8080, admin :9090, `bench/conf/td.json`), nginx (:8081, `keepalive 64`, "
      "`bench/conf/nginxproxy.conf`), HAProxy (:8082, `nbthread 1`, `http-reuse always`, "
      "`bench/conf/haproxy.cfg`). No health checks on any of them. Each proxy is started fresh "
      "for its turn in a round and stopped after it; the first proxy rotates from round to round.")
    d = info.get("duration", "5")
    w(f"- Requests/s and latency: `wrk -t1 -c50 -d{d}s --latency` and `wrk -t1 -c1 -d{d}s --latency` "
      "on `GET /`, after a 1 s warm-up (`wrk -t1 -c50 -d1s`).")
    w("- CPU time: utime + stime from `/proc/PID/stat` of td's process, nginx's worker, HAProxy's "
      "process, before and after the 50-connection run, over the requests wrk counted.")
    w("- Memory per idle connection: `bench/idle.py` opens the idle connections (one request "
      "each, then idle) and takes the proxy process's VmRSS with them open minus its VmRSS at rest "
      "(after the warm-up), over their number.")
    w(f"- 1 MiB throughput: `wrk -t1 -c4 -d{d}s` on `/1m` (MB = 10^6 bytes). nginx has "
      "`proxy_max_temp_file_size 0`, so it streams like the others instead of spooling to disk.")
    w("- HTTPS: each proxy also has a TLS listener (td :8443, nginx :8444, HAProxy :8445) with the "
      "same certificate, made for the run with `openssl req -x509 -newkey ec -pkeyopt "
      "ec_paramgen_curve:prime256v1` (ECDSA P-256, self-signed, for 127.0.0.1); TLS 1.2 and 1.3 "
      "allowed, session tickets and session caches at each proxy's defaults, HTTP/1.1 inside, "
      "plain HTTP to the backends. Keep-alive: `wrk -t1 -c50 "
      f"-d{d}s --latency` on `https://…/`, CPU time as above. New handshakes: `wrk -t1 -c50 "
      f"-d{d}s -H \"Connection: close\"`: every response closes its connection and wrk opens "
      "a new one, so each request is one TLS handshake and its requests/s are handshakes/s; CPU "
      "time over the connections wrk counted. wrk keeps the session of the connection it closes "
      "and offers it on the next one (`SSL_clear`), so the handshakes resume where the proxy "
      "allows it: `bench/tls_count.c`, preloaded into wrk, counts them (see the notes).")
    w(f"- Ratio changes: while `wrk -t1 -c50` runs, `bench/flip.py` makes {flips} changes between "
      "blue=100/green=0 and blue=0/green=100: td with `PUT /api/v1/ratio`, nginx by rewriting the "
      "`server` weights in its config (`down` for 0) and `nginx -s reload`, HAProxy with `set server "
      "be/NAME weight N` on its runtime API. Time to effect: from just before the change until a "
      "probe connection (requests back to back) first gets the newly weighted backend. Failed "
      "requests: wrk's non-2xx responses plus its socket errors (connect, read, write, timeout) "
      "over the whole series.")
    w(f"- Cluster (td only; nginx and HAProxy have no shared state to compare with): "
      "`bench/cluster.py` starts one etcd member and 3, then 10, td nodes in cluster mode "
      f"(`\"workers\": 1` each) on it, and makes {flips} changes with `PUT /api/v1/ratio` on "
      "the first node, flipping between blue=100/green=0 and blue=0/green=100, while a probe per "
      "other node sends requests back to back through its listener. Time to effect: from just "
      "before the change until the slowest node's probe first got the newly weighted backend. "
      "Targets: median under 50 ms, slowest under 1 s.")
    w("- Upgrade (td only; nginx's SIGUSR2 and HAProxy's `-x` need a master process to compare "
      "under the same load): `bench/upgrade.py` starts its own demo backends and td on free ports "
      "and runs `td upgrade` 10 times, 2 s apart, while one wrk holds 50 keep-alive connections "
      "and another sends `Connection: close` on 10 (a new connection per request). Takeover: "
      "from `td upgrade` until it exits with the new process accepting. Failed requests: both "
      "wrk runs' non-2xx responses and socket errors.\n")

    w("## Notes from this run\n")
    notes = []
    for key, name in PROXIES:
        for fk in ["flip_failed"] + FAIL_KEYS:
            vals = data[key][fk]
            total = sum(vals.values())
            if total:
                what = {"flip_failed": f"failed requests during the {flips} ratio changes",
                        "failed_c50": "failed requests at 50 connections",
                        "failed_c1": "failed requests at 1 connection",
                        "failed_1m": "failed requests on the 1 MiB response",
                        "failed_tls_c50": "failed HTTPS requests at 50 keep-alive connections",
                        "failed_tls_new": "failed HTTPS requests with a new connection each",
                        "failed_h2": "failed HTTP/2 requests (h2load)",
                        "idle_failed": "idle connections that could not be opened",
                        "flip_timeouts": "ratio changes that took no effect within 5 s",
                        "flip_stragglers": "responses from the old backend after a change took effect",
                        "cluster3_timeouts": "cluster changes not seen on all 3 nodes within 5 s",
                        "cluster10_timeouts": "cluster changes not seen on all 10 nodes within 5 s",
                        "upgrade_failed": "failed requests during the 10 upgrades",
                        }[fk]
                per = ", ".join(f"{int(vals[r])}" for r in sorted(vals))
                kinds = ""
                if fk == "flip_failed":
                    k = {kind: int(sum(data[key]["flip_err_" + kind].values()))
                         for kind in ("status", "connect", "read", "write", "timeout")}
                    kinds = "; by kind: " + ", ".join(
                        f"{v} {'HTTP >= 400' if kind == 'status' else kind + ' errors'}"
                        for kind, v in k.items() if v)
                notes.append(f"- {name}: {what}: {int(total)} in all rounds ({per}{kinds}).")
        missing = [m for m, *_ in METRICS if median(data, key, m) is None
                   and (key == "td" or not m.startswith(("cluster", "upgrade")))]  # td only
        if missing:
            notes.append(f"- {name}: no result for {', '.join(missing)} (see bench/out/logs/).")
    for key, name in PROXIES:
        for m, what in (("rps_c50", "requests/s at 50 connections"),
                        ("tls_rps_c50", "HTTPS requests/s at 50 keep-alive connections"),
                        ("tls_hs_per_s", "HTTPS new handshakes/s")):
            vals = list(data[key][m].values())
            if len(vals) > 1 and min(vals) > 0 and max(vals) / min(vals) > 1.5:
                notes.append(f"- {name}: {what} varied from {min(vals):,.0f} to "
                             f"{max(vals):,.0f} between rounds.")
    notes.extend(tls_notes(data, info))
    direct = data["direct"]["rps_c50"]
    if direct:
        notes.append("- Control, wrk straight to the blue backend (no proxy), requests/s at 50 "
                     "connections per round: " + ", ".join(f"{direct[r]:,.0f}" for r in sorted(direct))
                     + ". It moves with whatever else the machine runs.")
    if not notes:
        notes.append("- No failed requests, timeouts or stragglers in any measurement.")
    out.extend(notes)
    w("")

    w("## Per round\n")
    w("| metric | proxy | " + " | ".join(f"round {r}" for r in rounds) + " |")
    w("|---|---|" + "---:|" * len(rounds))
    for key, label, unit, better, dec in METRICS:
        for p, name in PROXIES:
            vals = data[p][key]
            w(f"| {key} | {name} | " + " | ".join(fmt(vals.get(r), dec) for r in rounds) + " |")
    w("")
    kept = kept_section(md)
    if kept:
        w(kept)
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--work", required=True, help="folder for the chart's data and script")
    a = ap.parse_args()
    data = load(a.raw)
    info = machine_info(a.machine)
    os.makedirs(os.path.dirname(a.svg), exist_ok=True)
    chart(data, a.svg, a.work)
    write_md(data, info, a.md, a.svg)
    missing = [m for m, *_ in METRICS if median(data, "td", m) is None]
    if missing:
        print(f"report: no td result for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
