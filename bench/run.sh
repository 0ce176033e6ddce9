#!/bin/bash
# td against nginx and HAProxy, all on 127.0.0.1, one worker each, same setup (two backends
# 50/50, upstream keep-alive), each with an HTTP and an HTTPS listener (one self-signed ECDSA
# P-256 certificate made with openssl for the run, the same for all three). Called by `make bench`;
# writes docs/BENCHMARKS.md and docs/bench.svg, and the raw per-round numbers in bench/out/.
#
#   bench/run.sh                  full run, about 7 minutes (3 rounds)
#   BENCH_QUICK=1 bench/run.sh    smoke run under a minute; writes only bench/out/quick/
#
# Settings (environment): TD_BIN (default build/td), BENCH_ROUNDS, BENCH_DURATION (seconds per
# wrk run), BENCH_IDLE_CONNS, BENCH_FLIPS, BENCH_OUT, BENCH_NICE (e.g. -10: run everything at that
# priority, as root, when other work shares the machine).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
PY=/usr/bin/python3
TD_BIN=${TD_BIN:-$ROOT/build/td}
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  ROUNDS=${BENCH_ROUNDS:-1} DURATION=${BENCH_DURATION:-2} IDLE_CONNS=${BENCH_IDLE_CONNS:-1000}
  FLIPS=${BENCH_FLIPS:-10} OUT=${BENCH_OUT:-$BENCH/out/quick}
  DOC=$OUT/BENCHMARKS.md SVG=$OUT/bench.svg
else
  ROUNDS=${BENCH_ROUNDS:-3} DURATION=${BENCH_DURATION:-5} IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
  FLIPS=${BENCH_FLIPS:-100} OUT=${BENCH_OUT:-$BENCH/out}
  DOC=$ROOT/docs/BENCHMARKS.md SVG=$ROOT/docs/bench.svg
fi
PROXIES=(td nginx haproxy)
declare -A PORT=([td]=8080 [nginx]=8081 [haproxy]=8082)
declare -A TLS_PORT=([td]=8443 [nginx]=8444 [haproxy]=8445)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '%s bench: %s\n' "$(date +%T)" "$*" >&2; }
step() { printf '%s round %s %s: %s (load %s)\n' "$(date +%T.%3N)" "$ROUND" "$P" "$1" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/logs/steps.log"; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes and cleanup

RUN=$(mktemp -d /tmp/td-bench.XXXXXX)
chmod 755 "$RUN"      # nginx workers (user nobody) read the 1 MiB file from here
TD_PID="" WRK_PID="" TLS_COUNT=""

pidfile_pid() { [ -s "$1" ] && cat "$1" || true; }

# Sends TERM to one process and waits (up to 5 s) until it is gone.
stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$WRK_PID" ] && stop_pid "$WRK_PID"
  [ -n "$TD_PID" ] && stop_pid "$TD_PID"
  stop_pid "$(pidfile_pid "$RUN/nginxproxy.pid")"
  stop_pid "$(pidfile_pid "$RUN/haproxy.pid")"
  stop_pid "$(pidfile_pid "$RUN/backend.pid")"
  mkdir -p "$OUT/logs"
  cp "$RUN"/*.err "$RUN"/*.log "$OUT/logs/" 2>/dev/null || true
  rm -rf "$RUN"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local i
  for i in $(seq 200); do port_open "$1" && return 0; sleep 0.05; done
  die "nothing listening on 127.0.0.1:$1"
}

# Fills the @...@ placeholders of a file of bench/conf/ into the run folder.
render() {
  sed -e "s#@RUNDIR@#$RUN#g" -e "s#@MAXCONN@#$MAXCONN#g" -e "s#@NOFILE@#$(ulimit -n)#g" \
    "$BENCH/conf/$1" > "$RUN/$1"
}

# ---------------------------------------------------------------- the backend and the proxies

# The certificate of every proxy's HTTPS listener: ECDSA P-256, self-signed, for 127.0.0.1 and
# localhost, valid two days. td and nginx read cert.pem and key.pem, HAProxy both in haproxy.pem.
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=127.0.0.1 -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>>"$RUN/openssl.err" || die "openssl req failed"
  cat "$RUN/cert.pem" "$RUN/key.pem" > "$RUN/haproxy.pem"
  chmod 600 "$RUN/key.pem" "$RUN/haproxy.pem"
  openssl x509 -in "$RUN/cert.pem" -noout -text > "$OUT/logs/cert.txt" 2>&1 || true
}

# bench/tls_count.c, preloaded into wrk's HTTPS runs: handshakes completed and resumed. Without a
# C compiler the runs go without it (and the report says resumption was not counted).
build_tls_count() {
  if cc -shared -fPIC -O2 -o "$RUN/tls_count.so" "$BENCH/tls_count.c" -ldl 2>>"$RUN/cc.err"; then
    TLS_COUNT=$RUN/tls_count.so
  else
    log "could not build bench/tls_count.c: TLS resumption not counted"
  fi
}

start_backend() {
  mkdir -p "$RUN/www"
  head -c 1048576 /dev/urandom > "$RUN/www/1m"
  chmod -R a+rX "$RUN/www"
  render backend.conf
  nginx -c "$RUN/backend.conf" -e "$RUN/backend.err"
  wait_port 9001; wait_port 9002
}

start_td() {
  render td.json
  "$TD_BIN" -c "$RUN/td.json" 2>>"$RUN/td.log" &
  TD_PID=$!
  wait_port 8080; wait_port 8443; wait_port 9090
}
stop_td() { stop_pid "$TD_PID"; TD_PID=""; }

start_nginx() {
  render nginxproxy.conf
  nginx -c "$RUN/nginxproxy.conf" -e "$RUN/nginxproxy.err"
  wait_port 8081; wait_port 8444
}
stop_nginx() { stop_pid "$(pidfile_pid "$RUN/nginxproxy.pid")"; rm -f "$RUN/nginxproxy.pid"; }

start_haproxy() {
  render haproxy.cfg
  haproxy -f "$RUN/haproxy.cfg" 2>>"$RUN/haproxy.err"
  wait_port 8082; wait_port 8445
}
stop_haproxy() { stop_pid "$(pidfile_pid "$RUN/haproxy.pid")"; rm -f "$RUN/haproxy.pid"; }

# The process that does the proxying: td's process, nginx's (newest) worker, HAProxy's process.
proxy_pid() {
  case $1 in
    td) echo "$TD_PID" ;;
    nginx) pgrep -n -P "$(cat "$RUN/nginxproxy.pid")" ;;
    haproxy) cat "$RUN/haproxy.pid" ;;
  esac
}

# utime + stime of a process (all its threads), in clock ticks.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# ---------------------------------------------------------------- recording

# record METRIC VALUE: one line of $OUT/raw.tsv for the current round and proxy.
record() { printf '%s\t%s\t%s\t%s\n' "$ROUND" "$P" "$1" "$2" >> "$OUT/raw.tsv"; }

# jget JSON KEY [KEY...]: the values, space-separated (sum with `+`).
jget() { $PY -c 'import json,sys; d=json.loads(sys.argv[1]); print(*(d[k] for k in sys.argv[2:]))' "$@"; }

calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }

# wrk_json NAME WRK-ARGS...: runs wrk with bench/wrk_json.lua (and the environment settings in
# the array WRK_ENV, if any), keeps its report in $OUT/logs/, prints its JSON summary line.
WRK_ENV=()
wrk_json() {
  local name=$1; shift
  local log="$OUT/logs/r$ROUND-$P-$name.txt"
  env "${WRK_ENV[@]}" wrk -s "$BENCH/wrk_json.lua" "$@" > "$log" 2>&1
  grep '^{' "$log" | tail -n 1
}

url() { echo "http://127.0.0.1:${PORT[$P]}$1"; }
tls_url() { echo "https://127.0.0.1:${TLS_PORT[$P]}$1"; }

failed_of() { jget "$1" status connect read write timeout | awk '{ print $1+$2+$3+$4+$5 }'; }

# ---------------------------------------------------------------- measurements (one each)

warm_up() { wrk -t1 -c50 -d1s "$(url /)" > /dev/null; }

# Control: wrk straight to the blue backend, to see how busy the machine is in each round.
measure_direct() {
  local j P=direct
  j=$(wrk_json c50 -t1 -c50 -d"${DURATION}s" http://127.0.0.1:9001/)
  record rps_c50 "$(calc "$(jget "$j" requests) / $(jget "$j" duration_us) * 1e6" 0)"
}

# Requests/s, latency and proxy CPU per 100,000 requests at 50 keep-alive connections.
measure_load() {
  local pid j c0 c1 n
  pid=$(proxy_pid "$P")
  c0=$(cpu_ticks "$pid")
  j=$(wrk_json c50 -t1 -c50 -d"${DURATION}s" --latency "$(url /)")
  c1=$(cpu_ticks "$pid")
  n=$(jget "$j" requests)
  record rps_c50 "$(calc "$n / $(jget "$j" duration_us) * 1e6" 0)"
  record p50_c50_ms "$(calc "$(jget "$j" p50_us) / 1000")"
  record p99_c50_ms "$(calc "$(jget "$j" p99_us) / 1000")"
  record cpu_s_per_100k "$(calc "($c1 - $c0) / $CLK_TCK / $n * 100000")"
  record failed_c50 "$(failed_of "$j")"
}

# HTTPS, 50 keep-alive connections: requests/s, latency, proxy CPU per 100,000 requests.
measure_tls_load() {
  local pid j c0 c1 n
  pid=$(proxy_pid "$P")
  c0=$(cpu_ticks "$pid")
  j=$(wrk_json tls-c50 -t1 -c50 -d"${DURATION}s" --latency "$(tls_url /)")
  c1=$(cpu_ticks "$pid")
  n=$(jget "$j" requests)
  record tls_rps_c50 "$(calc "$n / $(jget "$j" duration_us) * 1e6" 0)"
  record tls_p99_c50_ms "$(calc "$(jget "$j" p99_us) / 1000")"
  record tls_cpu_s_per_100k "$(calc "($c1 - $c0) / $CLK_TCK / $n * 100000")"
  record failed_tls_c50 "$(failed_of "$j")"
}

# HTTPS, a new connection for every request (`Connection: close`, 50 at a time): each request is
# one TLS handshake, so requests/s is handshakes/s. Proxy CPU per 1,000 connections; with
# tls_count.so preloaded into wrk, how many handshakes wrk completed and how many resumed, and
# how many connections it closed holding a session it could resume next time.
measure_tls_new() {
  local pid j c0 c1 n cnt="$OUT/logs/r$ROUND-$P-tls-new-count.json"
  pid=$(proxy_pid "$P")
  rm -f "$cnt"
  c0=$(cpu_ticks "$pid")
  WRK_ENV=(LD_PRELOAD="$TLS_COUNT" TLS_COUNT_OUT="$cnt")
  j=$(wrk_json tls-new -t1 -c50 -d"${DURATION}s" -H "Connection: close" "$(tls_url /)")
  WRK_ENV=()
  c1=$(cpu_ticks "$pid")
  n=$(jget "$j" requests)
  record tls_hs_per_s "$(calc "$n / $(jget "$j" duration_us) * 1e6" 0)"
  record tls_cpu_s_per_1k_conns "$(calc "($c1 - $c0) / $CLK_TCK / $n * 1000" 3)"
  record failed_tls_new "$(failed_of "$j")"
  if [ -s "$cnt" ]; then
    record tls_handshakes "$(jget "$(cat "$cnt")" handshakes)"
    record tls_resumed "$(jget "$(cat "$cnt")" resumed)"
    record tls_closed "$(jget "$(cat "$cnt")" closed)"
    record tls_closed_resumable "$(jget "$(cat "$cnt")" closed_resumable)"
    # Strings, in machine.txt form (the last round's): what wrk negotiated with this proxy.
    echo "tls_$P=$(jget "$(cat "$cnt")" protocol) $(jget "$(cat "$cnt")" cipher)" >> "$OUT/tls.txt"
  fi
  sleep 1   # let the closed connections settle before the next test
}

# HTTP/2 over TLS (ALPN h2): h2load with 10 connections x 10 concurrent streams. Requests/s,
# proxy CPU per 100,000 requests, failed requests (h2load's failed + errored + timeout).
measure_h2() {
  local pid log="$OUT/logs/r$ROUND-$P-h2.txt" c0 c1 n rps failed
  pid=$(proxy_pid "$P")
  c0=$(cpu_ticks "$pid")
  h2load -c10 -m10 -D"$DURATION" "$(tls_url /)" > "$log" 2>&1 || true
  c1=$(cpu_ticks "$pid")
  # "finished in 5.00s, 41234.20 req/s, ..." and "requests: T total, S started, D done,
  # OK succeeded, F failed, E errored, X timeout"
  rps=$(awk '/^finished in/ { sub(",", "", $4); print $4 }' "$log")
  n=$(awk '/^requests:/ { print $8 }' "$log")
  failed=$(awk '/^requests:/ { print $10 + $12 + $14 }' "$log")
  if [ -z "$rps" ] || [ -z "$n" ] || [ "$n" = 0 ] || ! grep -q 'h2' "$log"; then
    log "$P: h2load failed: $(tail -n 2 "$log")"; return 0
  fi
  record h2_rps "$rps"
  record h2_cpu_s_per_100k "$(calc "($c1 - $c0) / $CLK_TCK / $n * 100000")"
  record failed_h2 "$failed"
}

# Requests/s and latency over one keep-alive connection.
measure_single() {
  local j
  j=$(wrk_json c1 -t1 -c1 -d"${DURATION}s" --latency "$(url /)")
  record rps_c1 "$(calc "$(jget "$j" requests) / $(jget "$j" duration_us) * 1e6" 0)"
  record p50_c1_ms "$(calc "$(jget "$j" p50_us) / 1000")"
  record p99_c1_ms "$(calc "$(jget "$j" p99_us) / 1000")"
  record failed_c1 "$(failed_of "$j")"
}

# Throughput on a 1 MiB response, 4 connections (MB/s, 10^6 bytes).
measure_1m() {
  local j
  j=$(wrk_json 1m -t1 -c4 -d"${DURATION}s" "$(url /1m)")
  record mbps_1m "$(calc "$(jget "$j" bytes) / $(jget "$j" duration_us)" 1)"
  record failed_1m "$(failed_of "$j")"
}

# RSS added per idle keep-alive client connection ($IDLE_CONNS of them, one request each).
measure_idle_mem() {
  local j
  j=$($PY "$BENCH/idle.py" --port "${PORT[$P]}" --pid "$(proxy_pid "$P")" --conns "$IDLE_CONNS") || true
  echo "$j" > "$OUT/logs/r$ROUND-$P-idle.json"
  [ -n "$j" ] || { log "$P: idle connection test failed"; return 0; }
  record idle_bytes_per_conn "$(jget "$j" bytes_per_conn)"
  record idle_failed "$(jget "$j" failed)"
  sleep 1   # let the proxy close the connections before the next test
}

# $FLIPS ratio changes (100/0 <-> 0/100) under wrk load: time to effect, failed requests.
measure_flips() {
  local j w k
  case $P in
    td) set -- --admin 127.0.0.1:9090 ;;
    nginx) set -- --conf "$RUN/nginxproxy.conf" --errlog "$RUN/nginxproxy.err" ;;
    haproxy) set -- --socket "$RUN/haproxy.sock" ;;
  esac
  wrk -s "$BENCH/wrk_json.lua" -t1 -c50 -d600s "$(url /)" > "$OUT/logs/r$ROUND-$P-flips-wrk.txt" 2>&1 &
  WRK_PID=$!
  sleep 0.5
  j=$($PY "$BENCH/flip.py" --kind "$P" --port "${PORT[$P]}" --flips "$FLIPS" "$@") || true
  kill -INT "$WRK_PID"; wait "$WRK_PID" || true; WRK_PID=""
  echo "$j" > "$OUT/logs/r$ROUND-$P-flips.json"
  w=$(grep '^{' "$OUT/logs/r$ROUND-$P-flips-wrk.txt" | tail -n 1)
  record flip_failed "$(failed_of "$w")"
  for k in status connect read write timeout; do record "flip_err_$k" "$(jget "$w" "$k")"; done
  record flip_requests "$(jget "$w" requests)"
  case $j in *effect_ms_p50*) ;; *) log "$P: ratio changes failed: $j"; return 0 ;; esac
  record flip_effect_ms_p50 "$(jget "$j" effect_ms_p50)"
  record flip_effect_ms_max "$(jget "$j" effect_ms_max)"
  record flip_timeouts "$(jget "$j" timeouts)"
  record flip_stragglers "$(jget "$j" stragglers)"
}

# Cluster mode (td only): from a change on one node to its effect on every other node, for 3 and
# 10 nodes on one etcd; bench/cluster.py starts them all on free ports and stops them.
measure_cluster() {
  local j n
  for n in 3 10; do
    j=$(TD_BIN="$TD_BIN" $PY "$BENCH/cluster.py" --nodes "$n" --changes "$FLIPS" 2> "$OUT/logs/r$ROUND-cluster$n.err") || true
    echo "$j" > "$OUT/logs/r$ROUND-cluster$n.json"
    case $j in *effect_ms_p50*) ;; *) log "cluster of $n nodes failed: $(tail -n 3 "$OUT/logs/r$ROUND-cluster$n.err")"; continue ;; esac
    record "cluster${n}_effect_ms_p50" "$(jget "$j" effect_ms_p50)"
    record "cluster${n}_effect_ms_max" "$(jget "$j" effect_ms_max)"
    record "cluster${n}_timeouts" "$(jget "$j" timeouts)"
  done
}

# td only: `td upgrade` 10 times under keep-alive and new-connection load (bench/upgrade.py starts
# its own backends and td on free ports): failed requests, time to take over.
measure_upgrade() {
  local j
  j=$($PY "$BENCH/upgrade.py" --td "$TD_BIN" --upgrades 10 2> "$OUT/logs/r$ROUND-upgrade.err") || true
  echo "$j" > "$OUT/logs/r$ROUND-upgrade.json"
  case $j in *takeover_ms_p50*) ;; *) log "upgrade run failed: $(tail -n 3 "$OUT/logs/r$ROUND-upgrade.err")"; return 0 ;; esac
  record upgrade_failed "$(jget "$j" failed)"
  record upgrade_requests "$(jget "$j" requests)"
  record upgrade_takeover_ms_p50 "$(jget "$j" takeover_ms_p50)"
  record upgrade_takeover_ms_max "$(jget "$j" takeover_ms_max)"
}

# ---------------------------------------------------------------- the run

preflight() {
  local p
  [ -x "$TD_BIN" ] || die "no td binary at $TD_BIN (make, or set TD_BIN)"
  for p in nginx haproxy wrk h2load gnuplot pgrep openssl etcd; do command -v "$p" > /dev/null || die "$p missing (scripts/deps.sh bench)"; done
  for p in 9001 9002 8080 9090 8081 8082 8443 8444 8445; do port_open "$p" && die "port $p is in use"; done
  # 10,000 idle clients: one fd each in the client and in the proxy, and td (like HAProxy's
  # default maxconn) takes at most half of its open-file limit in client connections, so that
  # each can have an upstream connection.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * IDLE_CONNS + 1000)) ]; then
    IDLE_CONNS=$(( ($(ulimit -n) - 1000) / 2 ))
    log "open-file limit $(ulimit -n): idle-connection test reduced to $IDLE_CONNS connections"
  fi
  MAXCONN=$((IDLE_CONNS + 500))
}

# The command that reproduces this run: `make bench` with the settings given to this one.
command_line() {
  local v cmd=""
  for v in BENCH_QUICK BENCH_ROUNDS BENCH_DURATION BENCH_IDLE_CONNS BENCH_FLIPS BENCH_NICE; do
    [ -n "${!v:-}" ] && cmd+="$v=${!v} "
  done
  echo "${cmd}make bench"
}

machine() {
  {
    echo "command=$(command_line)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores=$(nproc)"
    echo "kernel=$(uname -sr)"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "td=$("$TD_BIN" --version 2>&1 | head -n 1) ($(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown))"
    echo "nginx=$(nginx -v 2>&1 | sed 's/.*: //')"
    echo "haproxy=$(haproxy -v | head -n 1 | awk '{ print $3 }')"
    echo "wrk=$(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }')"
    echo "openssl=$(openssl version | awk '{ print $2 }')"
    echo "rounds=$ROUNDS"; echo "duration=$DURATION"; echo "idle_conns=$IDLE_CONNS"; echo "flips=$FLIPS"
    echo "quick=$QUICK"
    echo "nice=${BENCH_NICE:-0}"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$OUT/machine.txt"
}

main() {
  if [ -n "${BENCH_NICE:-}" ]; then renice -n "$BENCH_NICE" -p $$ > /dev/null; fi
  preflight
  rm -rf "$OUT/logs" "$OUT/raw.tsv" "$OUT/tls.txt"
  mkdir -p "$OUT/logs"
  machine
  printf 'round\tproxy\tmetric\tvalue\n' > "$OUT/raw.tsv"
  make_cert
  build_tls_count
  start_backend
  local r i
  for r in $(seq "$ROUNDS"); do
    ROUND=$r
    measure_direct
    for i in 0 1 2; do                  # each round starts with the next proxy
      P=${PROXIES[$(( (i + r - 1) % 3 ))]}
      log "round $r/$ROUNDS: $P"
      "start_$P"
      step warm_up; warm_up
      step idle_mem; measure_idle_mem
      step load; measure_load
      step single; measure_single
      step 1m; measure_1m
      step tls_load; measure_tls_load
      step tls_new; measure_tls_new
      step h2; measure_h2
      step flips; measure_flips
      step stop; "stop_$P"
    done
    P=td; step cluster; measure_cluster
    step upgrade; measure_upgrade
  done
  echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/machine.txt"
  [ -f "$OUT/tls.txt" ] && sort -u "$OUT/tls.txt" >> "$OUT/machine.txt"
  echo "tls_count=$([ -n "$TLS_COUNT" ] && echo 1 || echo 0)" >> "$OUT/machine.txt"
  $PY "$BENCH/report.py" --raw "$OUT/raw.tsv" --machine "$OUT/machine.txt" \
    --md "$DOC" --svg "$SVG" --work "$OUT"
  log "wrote $DOC and $SVG (raw numbers: $OUT/raw.tsv)"
}

main "$@"
