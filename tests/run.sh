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
if [ ! -x "${NGINX:-/usr/sbin/nginx}" ]; then
    # Debian's nginx, for the reverse-proxy deployment test; the tests run their own instance on
    # loopback, so the package's service is kept from starting (policy-rc.d).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        our_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            our_policy=1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx
        [ -z "$our_policy" ] || rm -f /usr/sbin/policy-rc.d
    else
        echo "the proxy tests need nginx at /usr/sbin/nginx (Debian: apt-get install nginx)" >&2
        exit 1
    fi
fi
if [ ! -x "${REDIS_SERVER:-/usr/bin/redis-server}" ]; then
    # Debian's redis-server, for the scale-out tests (the tests start their own instances on
    # loopback; the package's service is kept from starting).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        our_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            our_policy=1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
        [ -z "$our_policy" ] || rm -f /usr/sbin/policy-rc.d
    else
        echo "the scale-out tests need redis-server at /usr/bin/redis-server (Debian: apt-get install redis-server)" >&2
        exit 1
    fi
fi
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
