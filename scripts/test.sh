#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real loopback
# upstreams, SQLite, PostgreSQL and Redis, the binary end to end, the console in
# headless Chromium, and schemathesis against the admin API's OpenAPI document.
#
# It makes the services available first, on a fresh Debian machine too:
# - Redis: the tests start their own redis-server on free ports; only the binary is
#   needed (installed with apt-get when missing).
# - PostgreSQL: KEYGATE_TEST_POSTGRES if set, else 127.0.0.1:5432 if it takes
#   postgres@ without a password, else a private throwaway cluster on a free port
#   (PostgreSQL installed with apt-get when missing).
# With CI=true a test that cannot reach a service fails; elsewhere it is skipped loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
install() {
    echo "test.sh: installing $*" >&2
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
    # Packages must not start system services (we start our own).
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
    as_root rm -f /usr/sbin/policy-rc.d
}

command -v redis-server >/dev/null || install redis-server
command -v psql >/dev/null || install postgresql-client
# Port picking, schemathesis, the MCP SDK, manifest validation and the signature
# verifier example.
command -v python3 >/dev/null || install python3 python3-venv
# The forward-auth end-to-end test runs the shipped nginx example.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || install nginx

pg_ok() { psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT

if [ -z "${KEYGATE_TEST_POSTGRES:-}" ]; then
    default=postgres://postgres@127.0.0.1:5432/postgres
    if [ -z "${KEYGATE_TEST_PRIVATE_PG:-}" ] && pg_ok "$default"; then
        export KEYGATE_TEST_POSTGRES=$default
    else
        initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
        if [ -z "$initdb" ]; then
            install postgresql
            initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)
        fi
        bin=$(dirname "$initdb")
        data=$(mktemp -d /tmp/keygate-pg.XXXXXX)
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        run=()
        if [ "$(id -u)" = 0 ]; then
            # PostgreSQL refuses to run as root.
            id postgres >/dev/null 2>&1 || as_root useradd --system --no-create-home postgres
            chown postgres "$data"
            run=(runuser -u postgres --)
        fi
        "${run[@]}" "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
        "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$data/log" -w \
            -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
        cleanup+=("${run[*]} $bin/pg_ctl -D $data -m immediate stop >/dev/null 2>&1; rm -rf $data")
        export KEYGATE_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres
        echo "test.sh: started a private PostgreSQL on 127.0.0.1:$port" >&2
    fi
fi

# Every keygate log of the run (in-process at TRACE, `serve` processes, the browser
# and schema runs) lands here, and is scanned for key material at the end.
KEYGATE_TEST_LOG_DIR=$(mktemp -d /tmp/keygate-test-logs.XXXXXX)
export KEYGATE_TEST_LOG_DIR
cleanup+=('rm -rf "$KEYGATE_TEST_LOG_DIR"')

# The MCP tests run the protocol's official Python SDK (a server and a client):
# pinned, in a venv outside the clone, installed once.
MCP_SDK_VERSION=1.30.0
mcp_venv=${XDG_CACHE_HOME:-$HOME/.cache}/keygate-mcp
if ! "$mcp_venv/bin/python" -c "import mcp, importlib.metadata as m; assert m.version('mcp') == '$MCP_SDK_VERSION'" 2>/dev/null; then
    echo "test.sh: installing the MCP Python SDK $MCP_SDK_VERSION into $mcp_venv" >&2
    rm -rf "$mcp_venv"
    python3 -m venv "$mcp_venv" 2>/dev/null || { install python3-venv; python3 -m venv "$mcp_venv"; }
    if ! "$mcp_venv/bin/pip" install -q --disable-pip-version-check "mcp==$MCP_SDK_VERSION"; then
        rm -rf "$mcp_venv"
        if [ "${CI:-}" = true ]; then
            echo "test.sh: cannot install the MCP Python SDK from PyPI" >&2
            exit 1
        fi
        echo "test.sh: cannot install the MCP Python SDK; the MCP tests will be skipped" >&2
    fi
fi
[ -x "$mcp_venv/bin/python" ] && export KEYGATE_MCP_PYTHON="$mcp_venv/bin/python"

cargo test --all-targets "$@"
cargo test --doc "$@"
# The console in a real headless Chromium, and the admin API against its own
# OpenAPI document (schemathesis). Each installs what it needs.
scripts/browser-test.sh
scripts/api-schema-test.sh
# Every file under deploy/: Kubernetes schemas, kustomize references, compose,
# nginx -t, and `keygate check-config` on each shipped config.
KEYGATE_BIN="${CARGO_TARGET_DIR:-target}/debug/keygate" scripts/deploy-check.sh
# The parsers under libFuzzer for a few seconds each (scripts/fuzz.sh runs longer).
FUZZ_SECONDS="${FUZZ_SECONDS:-3}" scripts/fuzz.sh
scripts/scan-logs.sh "$KEYGATE_TEST_LOG_DIR"
