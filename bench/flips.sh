#!/bin/bash
# The ratio-change measurement of bench/run.sh alone, for td and HAProxy back to back, ROUNDS
# times each under the same wrk -t1 -c50 load: bench/flip.py's JSON line per run, then the
# median and range of effect_ms_p50 per proxy. Ports BASE+1, BASE+2 (nginx backends), BASE+80
# (td), BASE+90 (td admin), BASE+82 (HAProxy), so it can run beside other tests.
# Usage: bench/flips.sh [ROUNDS] [FLIPS]   (TD_BIN, BASE, and STATE_FILE, td's state_file, from
# the environment; td's default puts it next to its config in /tmp)
set -u
ROUNDS=${1:-5} FLIPS=${2:-100} BASE=${BASE:-27000}
BENCH=$(cd "$(dirname "$0")" && pwd)
TD_BIN=${TD_BIN:-$BENCH/../build/td}
PY=/usr/bin/python3
RUN=$(mktemp -d /tmp/td-flips.XXXXXX)
chmod 755 "$RUN"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -f "$RUN/backend.pid" ] && kill "$(cat "$RUN/backend.pid")" 2>/dev/null
  [ -f "$RUN/haproxy.pid" ] && kill "$(cat "$RUN/haproxy.pid")" 2>/dev/null
  sleep 0.2; rm -rf "$RUN"
}
trap cleanup EXIT
wait_port() {
  local i
  for i in $(seq 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing on $1" >&2; exit 1
}
B1=$((BASE + 1)) B2=$((BASE + 2)) TDP=$((BASE + 80)) ADM=$((BASE + 90)) HAP=$((BASE + 82))
sed -e "s#@RUNDIR@#$RUN#g" -e "s#:9001;#:$B1;#" -e "s#:9002;#:$B2;#" "$BENCH/conf/backend.conf" > "$RUN/backend.conf"
nginx -c "$RUN/backend.conf" -e "$RUN/backend.err"
wait_port $B1; wait_port $B2
SF=""; [ -n "${STATE_FILE:-}" ] && SF=" \"state_file\": \"$STATE_FILE\","
cat > "$RUN/td.json" <<J
{ "listeners": [{ "address": "127.0.0.1:$TDP" }], "workers": 1,
  "admin": { "address": "127.0.0.1:$ADM" },$SF "routing": { "method": "round_robin" },
  "backends": [
    { "name": "blue",  "weight": 50, "servers": [{ "address": "127.0.0.1:$B1", "weight": 1 }] },
    { "name": "green", "weight": 50, "servers": [{ "address": "127.0.0.1:$B2", "weight": 1 }] } ] }
J
sed -e "s#@RUNDIR@#$RUN#g" -e "s#@MAXCONN@#10000#g" -e "s#127.0.0.1:8082#127.0.0.1:$HAP#" \
  -e "/:8445/d" -e "s#127.0.0.1:9001#127.0.0.1:$B1#" -e "s#127.0.0.1:9002#127.0.0.1:$B2#" \
  "$BENCH/conf/haproxy.cfg" > "$RUN/haproxy.cfg"
"$TD_BIN" -c "$RUN/td.json" 2>>"$RUN/td.log" &
PIDS+=($!)
haproxy -f "$RUN/haproxy.cfg" 2>>"$RUN/haproxy.err"
wait_port $TDP; wait_port $ADM; wait_port $HAP
declare -A RES
for r in $(seq "$ROUNDS"); do
  for P in td haproxy; do
    case $P in
      td) port=$TDP; set -- --admin 127.0.0.1:$ADM ;;
      haproxy) port=$HAP; set -- --socket "$RUN/haproxy.sock" ;;
    esac
    wrk -t1 -c50 -d600s "http://127.0.0.1:$port/" > /dev/null 2>&1 &
    W=$!
    sleep 0.5
    j=$($PY "$BENCH/flip.py" --kind $P --port $port --flips "$FLIPS" "$@")
    kill -INT $W; wait $W 2>/dev/null
    echo "round $r $P $j"
    RES[$P]="${RES[$P]:-} $($PY -c 'import json,sys; print(json.loads(sys.argv[1]).get("effect_ms_p50"))' "$j")"
  done
done
for P in td haproxy; do
  $PY -c 'import statistics,sys; x=[float(v) for v in sys.argv[2:] if v!="None"]; print(sys.argv[1], "effect_ms_p50 median", round(statistics.median(x),3), "min", min(x), "max", max(x), "runs", len(x))' $P ${RES[$P]}
done
