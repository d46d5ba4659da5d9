#!/usr/bin/env bash
# How valid keys fare while a flood of unknown keys hits keygate (release build,
# embedded SQLite store, default cache settings). Three wrk runs of the valid-key
# client (-c16, one fixed key), each next to a different second client:
#   alone        nothing else
#   valid-flood  a second wrk (-c48) sending valid keys: the same total load, so
#                the comparison below isolates what unknown keys cost
#   unknown-flood the same second wrk rotating over NKEYS (100000) random,
#                well-formed unknown keys (examples/unknown_keys.rs)
# It prints the valid client's req/s and p99 for each, the ratio unknown-flood /
# valid-flood (target: p99 within 2x), and the store lookups keygate made during the
# unknown flood (keygate_cache_lookups_total{layer="store",result="miss"}: at most
# one per distinct key).
#
#   benches/flood.sh                 # SECS=10 NKEYS=100000
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
SECS="${SECS:-10}"
NKEYS="${NKEYS:-100000}"
command -v wrk >/dev/null || { echo "flood.sh: wrk not found (apt-get install wrk)" >&2; exit 1; }
NAME=flood EXAMPLES=unknown_keys
# shellcheck source=benches/rig.sh
. "$ROOT/benches/rig.sh"
cat >"$TMP/keygate.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PX"
upstream = "http://127.0.0.1:$UP"
workers = 2
access_log = false
[admin]
listen = "127.0.0.1:$AD"
[store]
url = "sqlite://$TMP/keygate.db"
[quota]
limit = 1000000000
[[route]]
name = "read-items"
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"
TOML
VALID=$(key --name valid --org acme --scopes read)
key --name second --org acme --scopes read >"$TMP/valid.txt"
"$T/examples/unknown_keys" "$NKEYS" >"$TMP/unknown.txt"
RUST_LOG=warn "$T/keygate" serve --config "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PX/" && break; sleep 0.1; done
URL="http://127.0.0.1:$PX/v1/orgs/acme/items/1"
lookups() { curl -s "http://127.0.0.1:$AD/metrics" | awk '/^keygate_cache_lookups_total\{layer="store",result="miss"\}/ {v=$2} END {print v+0}'; }

# The valid-key client: req/s and p99 (ms) from wrk --latency.
measure() {
    local out
    out=$(KEY="$VALID" wrk -t1 -c16 -d"${SECS}s" --latency -s "$ANCHORS/wrk-keys.lua" "$URL")
    local rps p99
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
    echo "$rps $p99"
}
with_flood() { # KEYS_FILE
    wrk -t1 -c48 -d"$((SECS + 2))s" -s "$ANCHORS/wrk-keys.lua" "$URL" -- "$1" >"$TMP/flood.txt" 2>&1 & local f=$!
    sleep 1
    measure
    wait "$f"
}
KEY="$VALID" wrk -t1 -c16 -d2s -s "$ANCHORS/wrk-keys.lua" "$URL" >/dev/null   # warm up
read -r a_rps a_p99 < <(measure)
read -r v_rps v_p99 < <(with_flood "$TMP/valid.txt")
before=$(lookups)
read -r u_rps u_p99 < <(with_flood "$TMP/unknown.txt")
after=$(lookups)
flood_requests=$(awk '/requests in/ {print $1}' "$TMP/flood.txt")
printf '%-14s %10s %10s\n' "valid client" "req/s" "p99 ms"
printf '%-14s %10s %10s\n' alone "$a_rps" "$a_p99" valid-flood "$v_rps" "$v_p99" unknown-flood "$u_rps" "$u_p99"
python3 - "$v_p99" "$u_p99" "$a_p99" <<'PY'
import sys
v, u, a = map(float, sys.argv[1:])
print(f"p99 unknown-flood / valid-flood: {u / v:.2f}x (target <= 2x); / alone: {u / a:.2f}x")
PY
echo "unknown flood: $flood_requests requests over $NKEYS distinct keys; store lookups: $((after - before))"
