#!/usr/bin/env bash
# Every test: the Rust tests (unit, simulation, fuzz-corpus replay), then the end-to-end suite
# with real, unmodified SignalR clients against the real binaries. Installs the clients on
# first use (npm and PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

if [ ! -d tests/e2e/node_modules ]; then
    (cd tests/e2e && npm ci --no-audit --no-fund)
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
if [ ! -x tests/.venv/bin/python ]; then
    python3 -m venv tests/.venv
    tests/.venv/bin/pip install --quiet signalrcore==1.0.2
fi

cargo build --workspace --bins
cargo test --workspace
cd tests/e2e
echo "== end-to-end, smol runtime"
E2E_RUNTIME=smol node --test --test-concurrency=1
echo "== end-to-end, tokio runtime"
E2E_RUNTIME=tokio node --test --test-concurrency=1
