#!/bin/sh
# Installs what td builds and tests with. Idempotent and quiet: does nothing when all is present.
# Usage: scripts/deps.sh [build|deb|test|bench]   (default: build)
#   build: Debian packages to build td, tdctl and their man pages.
#   deb:   + Debian's packaging tools, for `make deb` (debhelper, fakeroot, lintian).
#   test:  + the test tools, Debian's chromium and node/npm, and the repo's node_modules
#          (playwright-core for the console test, installed by `npm ci` from package-lock.json).
#   bench: + haproxy and gnuplot (no browser).
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build="build-essential pkg-config libuv1-dev libjansson-dev libssl-dev libcurl4-openssl-dev"
# libsystemd for sd_notify, scdoc for the man pages, c-ares for servers named by host name,
# libnghttp2 for HTTP/2 from clients and to backends.
build="$build libsystemd-dev scdoc libc-ares-dev libnghttp2-dev"
deb="$build debhelper fakeroot lintian"
testing="$build clang clang-format libclang-rt-14-dev libhttp-parser-dev python3 python3-pytest python3-websocket curl openssl nginx-light wrk"
testing="$testing etcd-server etcd-client"
# dnsmasq: the DNS server of the host-name tests (tests/e2e/test_dns.py); curl --http2 and
# nghttp (nghttp2-client) for the HTTP/2 tests.
testing="$testing dnsmasq-base nghttp2-client"
# python3-grpcio: the gRPC backends and clients of the gRPC tests (tests/e2e/grpc_backend.py).
testing="$testing python3-grpcio"
# The package test builds the .deb (make deb), installs it (adduser; procps for its unit's
# /bin/kill, and ps) and checks its unit with systemd-analyze (systemd).
testing="$testing debhelper fakeroot lintian adduser procps systemd"
browser="chromium fonts-dejavu-core"
case "${1:-build}" in
  build) want="$build"; node=0 ;;
  deb) want="$deb"; node=0 ;;
  test) want="$testing $browser"; node=1 ;;
  bench) want="$testing haproxy gnuplot-nox"; node=0 ;;
  *) echo "usage: $0 [build|deb|test|bench]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node and npm may come from Debian or elsewhere (e.g. a nodejs package that bundles npm):
# Debian's are installed only when the commands are missing.
if [ "$node" = 1 ]; then
  command -v node >/dev/null 2>&1 || missing="$missing nodejs"
  command -v npm >/dev/null 2>&1 || missing="$missing npm"
fi

if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "td: missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
    exit 1
  fi
  echo "td: installing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# The console test's node_modules (repo root), from the committed lock file; again when the lock
# file is newer than node_modules. npm ci never downloads a browser: the test uses /usr/bin/chromium.
if [ "$node" = 1 ]; then
  cd "$root"
  if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules ]; then
    echo "td: npm ci (node_modules for tests/console)" >&2
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    touch node_modules
  fi
fi
exit 0
