#!/usr/bin/env bash
# A tools/call through an MCP route (`mcp = true`: body read, parsed and judged
# against the key's tool allowlist, the call charged) against the same POST through
# a plain keygate route (body streamed, the request charged), in one keygate, in
# front of the same 1-thread upstream, interleaved in one run.
#
#   benches/mcp.sh            # ROUNDS=3 SECS=8
#
# Each round runs wrk -t1 -c64 posting the same JSON-RPC tools/call body with one
# key to the plain route, then to the MCP route. It prints per round and as
# medians: req/s, p99 and keygate's CPU µs per request (utime+stime from /proc ÷
# requests), then the ratios MCP/plain. Quote the ratios, never absolute numbers.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=mcp
ROUNDS="${ROUNDS:-3}" SECS="${SECS:-8}"
command -v wrk >/dev/null || { echo "mcp.sh: wrk is not installed (apt-get install wrk)" >&2; exit 1; }
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
cat >"$TMP/keygate.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PX"
upstream = "http://127.0.0.1:$UP"
workers = 2
access_log = false

[store]
url = "sqlite://$TMP/keygate.db"

[quota]
limit = 1000000000
period = "month"

[[route]]
name = "plain"
methods = ["POST"]
path = "/v1/plain"
scopes = ["execute"]

[[route]]
name = "mcp"
path = "/mcp"
mcp = true
scopes = ["execute"]
TOML
KEY=$(key --name bench --scopes execute --mcp-tools 'search_*,get_document')
export KEY
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"rust"}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
LUA
RUST_LOG=warn "$T/keygate" serve --config "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 & PIDS+=($!); KG=$!
for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://127.0.0.1:$PX/" && break; sleep 0.05; done
cpu() { awk '{print $14 + $15}' "/proc/$KG/stat"; }
run() { wrk_run "$2" "$TMP/post.lua" "http://127.0.0.1:$PX$1"; } # PATH SECS
run /v1/plain 2 >/dev/null; run /mcp 2 >/dev/null   # warm up
declare -A ticks reqs
printf '%-5s %-6s %10s %8s\n' round route 'req/s' 'p99 ms'
for ((r = 1; r <= ROUNDS; r++)); do
    for route in plain mcp; do
        path=/v1/plain; [ "$route" = mcp ] && path=/mcp
        before=$(cpu)
        read -r rps p99 n < <(run "$path" "$SECS")
        ticks[$route]=$(( ${ticks[$route]:-0} + $(cpu) - before ))
        reqs[$route]=$(( ${reqs[$route]:-0} + n ))
        printf '%-5s %-6s %10s %8s\n' "$r" "$route" "$rps" "$p99" | tee -a "$TMP/rounds.txt"
    done
done
ab_summary "$TMP/rounds.txt" plain "${ticks[plain]}" "${reqs[plain]}" mcp "${ticks[mcp]}" "${reqs[mcp]}"
