#!/usr/bin/env bash
# Before/after figure for one change to keygate's data path: the binary built from
# this tree (B) against an earlier build (A), interleaved in one run.
#
#   cp target/release/keygate /tmp/keygate-before     # before the change
#   ... change, commit ...
#   A=/tmp/keygate-before benches/ab.sh               # ROUNDS=5 SECS=10 by default
#   A=/tmp/a B=/tmp/b BUILD=0 benches/ab.sh           # two prebuilt binaries, no build
#
# Both serve the same config (embedded SQLite store, local quota, 2 workers, access
# log off unless RUST_LOG=info, the items route of benches/load.sh) from their own copy of one store with
# NKEYS keys, in front of the same 1-thread upstream. Each round runs wrk -t1 -c64
# with the keys rotated (bench-anchors' wrk-keys.lua) against A, then B, so drift on
# a shared machine hits both alike. It prints per round and as medians: req/s, p99
# and the CPU µs per request of each keygate process (utime+stime from /proc over
# its rounds ÷ requests wrk completed), then the ratios B/A, and last the user-space
# CPU alone (utime), which a change to keygate's own code moves while the kernel's
# TCP work, most of the total, stays. A figure for docs/performance.md is the ratio
# of one run, never the absolute numbers.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=ab
A="${A:?set A to the keygate binary to compare against}"
ROUNDS="${ROUNDS:-5}" SECS="${SECS:-10}" NKEYS="${NKEYS:-1000}"
LUA="${ANCHORS:-$ROOT/../shared/bench-anchors}/wrk-keys.lua"
[ -x "$A" ] || { echo "ab.sh: $A is not an executable" >&2; exit 1; }
[ -f "$LUA" ] || { echo "ab.sh: $LUA not found (set ANCHORS)" >&2; exit 1; }
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
B="${B:-$T/keygate}"
PA=$(port); PB=$(port); AA=$(port); AB=$(port)
items_config "$PA" "$AA" "$TMP/a.db" >"$TMP/keygate.toml"
items_config "$PB" "$AB" "$TMP/b.db" >"$TMP/b.toml"
for ((i = 0; i < NKEYS; i++)); do key --name "ab-$i" --org acme --scopes read; done >"$TMP/keys.txt"
cp "$TMP/a.db" "$TMP/b.db"
RUST_LOG="${RUST_LOG:-warn}" "$A" serve --config "$TMP/keygate.toml" >"$TMP/a.log" 2>&1 & PIDS+=($!); PIDA=$!
RUST_LOG="${RUST_LOG:-warn}" "$B" serve --config "$TMP/b.toml" >"$TMP/b.log" 2>&1 & PIDS+=($!); PIDB=$!
for p in "$PA" "$PB"; do
    for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done
user() { awk '{print $14}' "/proc/$1/stat"; }
run() { wrk_run "$2" "$LUA" "http://127.0.0.1:$1/v1/orgs/acme/items/1" "$TMP/keys.txt"; } # PORT SECS
run "$PA" 2 >/dev/null; run "$PB" 2 >/dev/null   # warm L1 and the upstream pools
declare -A cpu_s user_s reqs
printf '%-5s %-3s %10s %8s\n' round bin 'req/s' 'p99 ms'
for ((r = 1; r <= ROUNDS; r++)); do
    for side in A B; do
        if [ "$side" = A ]; then port=$PA pid=$PIDA; else port=$PB pid=$PIDB; fi
        before=$(cpu_ticks_tree "$pid") before_user=$(user "$pid")
        read -r rps p99 n < <(run "$port" "$SECS")
        cpu_s[$side]=$(( ${cpu_s[$side]:-0} + $(cpu_ticks_tree "$pid") - before ))
        user_s[$side]=$(( ${user_s[$side]:-0} + $(user "$pid") - before_user ))
        reqs[$side]=$(( ${reqs[$side]:-0} + n ))
        printf '%-5s %-3s %10s %8s\n' "$r" "$side" "$rps" "$p99" | tee -a "$TMP/rounds.txt"
    done
done
ab_summary "$TMP/rounds.txt" A "${cpu_s[A]}" "${reqs[A]}" B "${cpu_s[B]}" "${reqs[B]}"
awk -v a="${user_s[A]}" -v na="${reqs[A]}" -v b="${user_s[B]}" -v nb="${reqs[B]}" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    ua = a / hz * 1e6 / na; ub = b / hz * 1e6 / nb
    printf "user CPU µs/req: A %.2f, B %.2f, B/A %.3fx\n", ua, ub, ub / ua }'
echo "B/A req/s per round, geometric mean [95 % interval]: $(round_interval "$TMP/rounds.txt" A B)"
