#!/usr/bin/env bash
# What [proxy] sched_policy costs next to CPU-bound work: keygate's latency with a busy
# loop on one worker's CPU, under sched_policy "normal", "batch" and "auto".
#
#   BUILD=0 benches/neighbour.sh            # 6 rounds of 5 s per policy, interleaved
#   ROUNDS=2 SECS=2 BUILD=0 benches/neighbour.sh   # smoke run
#
# Needs 2 CPUs (0 and 1). One keygate per policy (2 workers, pinned by cpu_affinity
# "auto": worker 0 on CPU 0, worker 1 on CPU 1; each its own copy of the store, 100
# keys). A Python busy loop is pinned to CPU 0; wrk (-t1 -c8, rotating over the keys)
# and the upstream are pinned to CPU 1, so the requests worker 0 serves meet the busy
# loop and the rest do not. Each round runs every policy once, in turn. Prints each
# run's req/s and wrk's p50/p90/p99, then the medians per policy, and the workers'
# policies (0 ordinary, 3 SCHED_BATCH) of each keygate after its run. The auto
# keygate runs all along, so its rounds show its steady state: worker 0 falls back in
# the warm-up and holds (30 s, then 60 s, ...), with a second of SCHED_BATCH at each
# retry; that is what an operator's keygate next to a busy neighbour does.
# An ad hoc measurement, not a load table: quote its figures next to each other.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=neighbour
ROUNDS="${ROUNDS:-6}" SECS="${SECS:-5}" NKEYS="${NKEYS:-100}"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
LUA="$ANCHORS/wrk-keys.lua"
[ "$(nproc)" -ge 2 ] || { echo "neighbour.sh: needs 2 CPUs" >&2; exit 1; }
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
taskset -pc 1 "${PIDS[0]}" >/dev/null   # the upstream
items_config "$PX" "$AD" "$TMP/keygate.db" >"$TMP/keygate.toml"
for ((i = 0; i < NKEYS; i++)); do key --name "n-$i" --org acme --scopes read; done >"$TMP/keys.txt"

POLICIES=(normal batch auto)
declare -A PORT PID
for policy in "${POLICIES[@]}"; do
    PORT[$policy]=$(port)
    cp "$TMP/keygate.db" "$TMP/$policy.db"
    [ ! -e "$TMP/keygate.db-wal" ] || cp "$TMP/keygate.db-wal" "$TMP/$policy.db-wal"
    items_config "${PORT[$policy]}" "$(port)" "$TMP/$policy.db" |
        sed "/^workers = 2\$/a sched_policy = \"$policy\"" >"$TMP/$policy.toml"
    grep -q "^sched_policy = \"$policy\"\$" "$TMP/$policy.toml" ||
        { echo "neighbour.sh: no 'workers = 2' line in items_config to put sched_policy after" >&2; exit 1; }
    RUST_LOG=info "$T/keygate" serve --config "$TMP/$policy.toml" >"$TMP/$policy.log" 2>&1 & PIDS+=($!)
    PID[$policy]=$!
done
for policy in "${POLICIES[@]}"; do
    for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://127.0.0.1:${PORT[$policy]}/" && break; sleep 0.05; done
    grep -q '"pinned":true\|pinned=true' "$TMP/$policy.log" ||
        { echo "neighbour.sh: $policy keygate's workers are not pinned; log: $TMP/$policy.log" >&2; exit 1; }
done
taskset -c 0 python3 -c 'while True: pass' & PIDS+=($!)

URL_PATH="/v1/orgs/acme/items/1"
run() { # POLICY: "req/s p50ms p90ms p99ms"
    taskset -c 1 wrk -t1 -c8 -d"${SECS}s" --latency -s "$LUA" "http://127.0.0.1:${PORT[$1]}$URL_PATH" -- "$TMP/keys.txt" |
        awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
             /Requests\/sec/ {r = $2} /^ +50%/ {p50 = ms($2)} /^ +90%/ {p90 = ms($2)} /^ +99%/ {p99 = ms($2)}
             /Non-2xx/ {bad = $4} END {if (bad) {print "wrk: non-2xx responses" > "/dev/stderr"; exit 3}
             printf "%.0f %.3f %.3f %.3f\n", r, p50, p90, p99}'
}
for policy in "${POLICIES[@]}"; do run "$policy" >/dev/null; done   # warm each L1 and pool
printf '%-5s %-7s %9s %8s %8s %8s  %s\n' round policy 'req/s' 'p50 ms' 'p90 ms' 'p99 ms' 'workers after'
for ((r = 1; r <= ROUNDS; r++)); do
    for policy in "${POLICIES[@]}"; do
        read -r rps p50 p90 p99 < <(run "$policy")
        [ "${rps:-0}" != 0 ] || { echo "neighbour.sh: the $policy keygate served nothing; log: $TMP/$policy.log" >&2; exit 1; }
        printf '%-5s %-7s %9s %8s %8s %8s  %s\n' "$r" "$policy" "$rps" "$p50" "$p90" "$p99" \
            "$(worker_policies "${PID[$policy]}" | tr '\n' ' ')" | tee -a "$TMP/rounds.txt"
    done
done
echo
echo "medians over $ROUNDS rounds of ${SECS}s (wrk -t1 -c8 on CPU 1, busy loop on CPU 0 with worker 0):"
python3 - "$TMP/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for policy in ("normal", "batch", "auto"):
    col = lambda i: statistics.median(float(r[i]) for r in rows if r[1] == policy)
    print(f"{policy:7} req/s {col(2):8.0f}  p50 {col(3):6.3f} ms  p90 {col(4):6.3f} ms  p99 {col(5):6.3f} ms")
PY
echo "auto keygate's fall-backs logged: $(grep -c 'ordinary scheduling for a while' "$TMP/auto.log" || true)"
grep 'ordinary scheduling for a while' "$TMP/auto.log" | head -n 3 | sed 's/^/  /'
