#!/usr/bin/env bash
# Where keygate's CPU goes under load: `perf record` of the proxy while wrk drives it,
# then the hottest symbols and the syscalls per request.
#
#   benches/profile.sh                 # SECS=10
#   CALLGRAPH=dwarf benches/profile.sh  # call stacks without frame pointers (bigger perf.data)
#   KEYGATE=/tmp/keygate-before benches/profile.sh  # profile another build
#   REDIS=1 benches/profile.sh         # Redis mode (L2, leased quota; a private redis-server)
#   CALLGRIND=1 benches/profile.sh     # instead: valgrind --tool=callgrind instruction
#                                      # counts for REQS (20000) requests, repeatable
#
# The set-up is benches/ab.sh's (embedded SQLite store, local quota, 2 workers, access
# log off, the items route, NKEYS keys rotated by bench-anchors' wrk-keys.lua, the
# 1-thread bench upstream). The report goes to stdout; KEEP=1 keeps perf.data and
# the callgrind output in /tmp/kg-profile.out/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=profile
SECS="${SECS:-10}" NKEYS="${NKEYS:-1000}" REQS="${REQS:-20000}"
LUA="${ANCHORS:-$ROOT/../shared/bench-anchors}/wrk-keys.lua"
[ -f "$LUA" ] || { echo "profile.sh: $LUA not found (set ANCHORS)" >&2; exit 1; }
source "$ROOT/benches/rig.sh"
BIN="${KEYGATE:-$T/keygate}"
OUT=/tmp/kg-profile.out
mkdir -p "$OUT"
items_config "$PX" "$AD" "$TMP/k.db" >"$TMP/keygate.toml"
if [ "${REDIS:-0}" = 1 ]; then   # Redis mode: L2 and leased quota in a private redis-server
    RP=$(port)
    redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 & PIDS+=($!)
    for ((i = 0; i < 100; i++)); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.05; done
    printf '\n[redis]\nurl = "redis://127.0.0.1:%s"\n' "$RP" >>"$TMP/keygate.toml"
fi
for ((i = 0; i < NKEYS; i++)); do key --name "p-$i" --org acme --scopes read; done >"$TMP/keys.txt"
URL="http://127.0.0.1:$PX/v1/orgs/acme/items/1"
ready() { for ((i = 0; i < 600; i++)); do curl -s -o /dev/null "http://127.0.0.1:$PX/" && return; sleep 0.05; done; }

if [ "${CALLGRIND:-0}" = 1 ]; then
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
        "$BIN" serve --config "$TMP/keygate.toml" >"$TMP/k.log" 2>&1 & PIDS+=($!); PID=$!
    ready
    # A fixed number of requests (wrk counts time, not requests): one connection, keys rotated.
    drive() { # N
        python3 - "$PX" "$TMP/keys.txt" "$1" <<'PY'
import http.client, sys
port, keys, n = int(sys.argv[1]), open(sys.argv[2]).read().split(), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("GET", "/v1/orgs/acme/items/1", headers={"Authorization": "Bearer " + keys[i % len(keys)]})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
    }
    # WARM=1 (the default): every key is loaded into L1 first and the counts start
    # after that, so they are the steady state, a cache hit per request. WARM=0 counts
    # the loads too (the figures in docs/performance.md before 2026-11-24).
    if [ "${WARM:-1}" = 1 ]; then
        drive "$NKEYS"
        callgrind_control --zero "$PID" >/dev/null
    fi
    drive "$REQS"
    kill -INT "$PID"; wait "$PID" 2>/dev/null || true
    callgrind_annotate "$OUT/callgrind.out" 2>/dev/null | head -60 || true
    echo "instructions per request: $(awk '/^summary:/ {print int($2 / '"$REQS"')}' "$OUT/callgrind.out") (start-up and timers included)"
    # The data path alone (client connection tasks, which run the handler, and upstream
    # connection tasks): steadier than the total, which the once-a-second work of the
    # control thread inflates under valgrind's slowdown. On the HTTP/1.1 fast path a
    # client connection task (h1::serve) does it all and Exchange::run is the handler;
    # on the hyper path it is the worker's spawned connection, handle and the upstream
    # connection tasks.
    callgrind_annotate --inclusive=yes "$OUT/callgrind.out" 2>/dev/null |
        awk -v n="$REQS" '/keygate::proxy::worker::\{\{closure\}\}::\{\{closure\}\} |keygate::proxy::h1::serve::\{\{closure\}\} |keygate::proxy::serve_hyper::\{\{closure\}\} / {gsub(",", "", $1); c += $1}
            /keygate::proxy::forward::connect::\{\{closure\}\}::\{\{closure\}\} / {gsub(",", "", $1); u = $1}
            /keygate::proxy::handle::\{\{closure\}\} |keygate::proxy::h1::Exchange::run::\{\{closure\}\} / {gsub(",", "", $1); h += $1}
            END {printf "data path instructions per request: %d (client connections %d, of which the handler %d; upstream connections %d)\n", (c + u) / n, c / n, h / n, u / n}'

    exit 0
fi

RUST_LOG="${RUST_LOG:-warn}" "$BIN" serve --config "$TMP/keygate.toml" >"$TMP/k.log" 2>&1 & PIDS+=($!); PID=$!
ready
wrk_run 2 "$LUA" "$URL" "$TMP/keys.txt" >/dev/null   # warm L1 and the upstream pool
wrk -t1 -c64 -d"$((SECS + 4))s" -s "$LUA" "$URL" -- "$TMP/keys.txt" >"$TMP/wrk.txt" &
WRK=$!
sleep 1
perf record -F 1999 --call-graph "${CALLGRAPH:-fp}" -p "$PID" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null
strace -c -f -p "$PID" -o "$TMP/strace.txt" &
STRACE=$!
sleep 2; kill -INT "$STRACE"; wait "$STRACE" 2>/dev/null || true
wait "$WRK"
echo "== perf: self time by symbol (top 40)"
perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40 || true
echo "== perf: by shared object"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 || true
echo "== syscalls over 2 s under load (strace -c -f; strace slows the proxy, counts not times)"
head -20 "$TMP/strace.txt" || true
grep -E 'Requests/sec' "$TMP/wrk.txt" || true   # the whole wrk run, strace included
[ "${KEEP:-0}" = 1 ] || rm -rf "$OUT"
