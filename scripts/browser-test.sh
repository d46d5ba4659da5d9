#!/usr/bin/env bash
# End-to-end test of the web console in real headless Chromium
# (tests/browser/console.test.mjs, driven by playwright-core).
#
# Installs what is missing: Debian's chromium (apt-get, as root or with sudo) and
# the node dependencies (npm ci in tests/browser). Never downloads a browser through
# npm/playwright. Builds the keygate binary, then runs the test; screenshots land in
# test-artifacts/console/.
#
# With CI=true a missing Chromium or Node.js is a failure; elsewhere the test is
# skipped with a loud message and the script exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

ci=false
case "${CI:-}" in true | 1 | yes) ci=true ;; esac

skip() {
    local why=$1
    if [ "$ci" = true ]; then
        echo "browser-test.sh: FAILED: $why (CI=true, so this is an error)" >&2
        exit 1
    fi
    echo >&2
    echo "############################################################" >&2
    echo "## SKIPPED: browser test of the console: $why" >&2
    echo "############################################################" >&2
    echo >&2
    exit 0
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        return 1
    fi
}

chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium_bin" ]; then
    if [ "$chromium_bin" = /usr/bin/chromium ] && command -v apt-get >/dev/null; then
        echo "browser-test.sh: installing Debian's chromium" >&2
        if ! { as_root apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null; }; then
            echo "browser-test.sh: apt-get install chromium failed" >&2
        fi
    fi
    [ -x "$chromium_bin" ] || skip "Chromium is not installed at $chromium_bin and could not be installed"
fi

command -v node >/dev/null || skip "Node.js (node) is not installed"
command -v npm >/dev/null || skip "npm is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || skip "Node.js >= 20 is needed (found $(node --version))"

# Node dependencies (playwright-core only; it never downloads a browser here).
lock=tests/browser/package-lock.json
stamp=tests/browser/node_modules/.keygate-lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] ||
    [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "browser-test.sh: npm ci in tests/browser" >&2
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$stamp"
fi

# The binary under test.
cargo build --bin keygate
target_dir=${CARGO_TARGET_DIR:-target}
export KEYGATE_BIN=${KEYGATE_BIN:-$target_dir/debug/keygate}
case "$KEYGATE_BIN" in /*) ;; *) KEYGATE_BIN=$PWD/$KEYGATE_BIN ;; esac
export CHROMIUM=$chromium_bin

node tests/browser/console.test.mjs
