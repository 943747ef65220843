#!/usr/bin/env bash
# Every test: the Rust tests (unit, simulation, fuzz-corpus replay), then the end-to-end suite
# with real, unmodified SignalR clients against the real binaries. Installs the clients on
# first use (npm and PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

# Reinstalled whenever package-lock.json changes (the copy in node_modules records what is installed).
if ! cmp -s tests/e2e/package-lock.json tests/e2e/node_modules/.installed-package-lock.json; then
    (cd tests/e2e && npm ci --no-audit --no-fund)
    cp tests/e2e/package-lock.json tests/e2e/node_modules/.installed-package-lock.json
fi
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    # Debian's Chromium, for the browser tests (playwright-core drives it; it downloads nothing).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "the browser tests need Chromium at /usr/bin/chromium (Debian: apt-get install chromium)" >&2
        exit 1
    fi
fi
# Debian's packages for servers the tests start themselves, on loopback: the package's own
# service is kept from starting (policy-rc.d).
install_server() { # <package> <binary path> <what needs it>
    [ -x "$2" ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        local our_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            our_policy=1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"
        [ -z "$our_policy" ] || rm -f /usr/sbin/policy-rc.d
    else
        echo "$3 need $1 at $2 (Debian: apt-get install $1)" >&2
        exit 1
    fi
}
# nginx, for the reverse-proxy and load-balancer tests; redis-server, for the scale-out tests.
install_server nginx "${NGINX:-/usr/sbin/nginx}" "the proxy tests"
install_server redis-server "${REDIS_SERVER:-/usr/bin/redis-server}" "the scale-out tests"
# The Python clients (signalrcore, signalr-client-threads), pinned; reinstalled when the pins change.
if ! cmp -s tests/e2e/python/requirements.txt tests/.venv/installed-requirements.txt; then
    [ -x tests/.venv/bin/python ] || python3 -m venv tests/.venv
    tests/.venv/bin/pip install --quiet -r tests/e2e/python/requirements.txt
    cp tests/e2e/python/requirements.txt tests/.venv/installed-requirements.txt
fi

cargo build --workspace --bins
cargo test --workspace
echo "== load generator smoke (seconds; a benchmark run, not a test: no timings are checked)"
target/debug/loadgen run --smoke > /dev/null
cd tests/e2e
echo "== end-to-end, smol runtime"
E2E_RUNTIME=smol node --test --test-concurrency=1
echo "== end-to-end, tokio runtime"
E2E_RUNTIME=tokio node --test --test-concurrency=1
