#!/bin/sh
# Installs the Debian packages td builds and tests with. Idempotent: does nothing when all are present.
# Usage: scripts/deps.sh [build|test|bench]   (default: build)
set -e
build="build-essential pkg-config libuv1-dev libjansson-dev libssl-dev libcurl4-openssl-dev"
test="$build clang libclang-rt-14-dev libhttp-parser-dev python3 python3-pytest python3-websocket curl nginx-light wrk"
bench="$test haproxy gnuplot-nox"
case "${1:-build}" in
  build) want="$build" ;;
  test) want="$test" ;;
  bench) want="$bench" ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac
missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "td: missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
  exit 1
fi
echo "td: installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends $missing >/dev/null
