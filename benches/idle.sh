#!/usr/bin/env bash
# What an idle keygate costs: CPU time and wake-ups per second of each of its
# threads, from /proc/PID/task/*/schedstat (time on CPU in ns, times it ran), over
# SECS seconds after a short keyed load (so the key cache, the quota counters and
# the upstream pools are as a run leaves them). An idle sidecar is most of a
# sidecar's life, and benches/load.sh charges each keygate its idle CPU while the
# other targets run.
#
#   benches/idle.sh                      # SECS=20 NKEYS=50, embedded SQLite store
#   REDIS=1 benches/idle.sh              # the same with a private Redis (L2, leases)
#   KEYGATE=/tmp/kg BUILD=0 benches/idle.sh   # another build
#   POLL=1h benches/idle.sh              # [store] poll_interval, to see the rest alone
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${SECS:-20}" NKEYS="${NKEYS:-50}"
LUA="${ANCHORS:-$ROOT/../shared/bench-anchors}/wrk-keys.lua"
[ -f "$LUA" ] || { echo "idle.sh: $LUA not found (set ANCHORS)" >&2; exit 1; }
NAME=idle
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
KEYGATE="${KEYGATE:-$T/keygate}"
items_config "$PX" "$AD" "$TMP/keygate.db" >"$TMP/keygate.toml"
sed -i "s|^url = \"sqlite://.*|&\npoll_interval = \"${POLL:-250ms}\"|" "$TMP/keygate.toml"
if [ "${REDIS:-0}" = 1 ]; then
    RP=$(port)
    redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 & PIDS+=($!)
    for ((i = 0; i < 100; i++)); do redis-cli -p "$RP" PING >/dev/null 2>&1 && break; sleep 0.05; done
    printf '\n[redis]\nurl = "redis://127.0.0.1:%s"\n' "$RP" >>"$TMP/keygate.toml"
fi
for ((i = 0; i < NKEYS; i++)); do key --name "idle-$i" --org acme --scopes read; done >"$TMP/keys.txt"
RUST_LOG=warn "$KEYGATE" serve --config "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 & PIDS+=($!); PID=$!
for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://127.0.0.1:$PX/" && break; sleep 0.05; done
wrk_run 3 "$LUA" "http://127.0.0.1:$PX/v1/orgs/acme/items/1" "$TMP/keys.txt" >/dev/null
sleep 2 # the last flush and lease returns
snap() { for t in /proc/"$PID"/task/*; do echo "$(basename "$t") $(tr ' ' _ <"$t/comm") $(cut -d' ' -f1,3 "$t/schedstat")"; done | sort; }
snap >"$TMP/before"
sleep "$SECS"
snap >"$TMP/after"
echo "idle keygate, ${SECS} s after a 3 s keyed load (${NKEYS} keys, poll_interval ${POLL:-250ms}, redis ${REDIS:-0}):"
join "$TMP/before" "$TMP/after" | awk -v s="$SECS" '
    { cpu = ($6 - $3) / 1000 / s; runs = ($7 - $4) / s; tc += cpu; tr += runs
      printf "  %-16s %8.1f µs CPU/s %7.1f wake-ups/s\n", $2, cpu, runs }
    END { printf "  %-16s %8.1f µs CPU/s %7.1f wake-ups/s\n", "all threads", tc, tr }'
