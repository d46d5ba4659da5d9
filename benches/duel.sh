#!/usr/bin/env bash
# keygate against nginx's bare hop, head to head: many short rounds, each running both
# back to back, the order alternating (keygate first in odd rounds, nginx first in
# even ones) so that drift on a shared machine falls on both alike. The load table
# (benches/load.sh) runs ten targets a round, so a ratio's two runs are tens of
# seconds apart; here they are next to each other, and the rounds' ratios are summed
# up as a geometric mean with a 95 % interval (benches/interval.awk).
#
#   BUILD=0 benches/duel.sh               # ROUNDS=30 SECS=5, nginx with the plain client
#   CLIENT=keys BUILD=0 benches/duel.sh   # nginx driven by the key-rotating client too
#   AFFINITY=off BUILD=0 benches/duel.sh  # keygate's [proxy] cpu_affinity (default: normal)
#   SCHED=batch BUILD=0 benches/duel.sh   # keygate's [proxy] sched_policy (default: normal)
#
# keygate: benches/ab.sh's config (embedded SQLite store, local quota, 2 workers,
# access log off), NKEYS keys rotated by bench-anchors' wrk-keys.lua. nginx-proxy:
# bench-anchors' start.sh (2 workers, keep-alive upstream pool), driven by plain wrk
# (CLIENT=plain: the issue's comparison, which spares wrk the Lua call keygate's
# client makes per request) or by the same key-rotating client (CLIENT=keys). One
# upstream (bench_upstream, 1 thread) serves both. CPU per request is each side's
# utime+stime from /proc over its own runs (nginx: master and workers); the machine's
# line is every process's (wrk, the upstream, the proxy) from /proc/stat over the same
# runs, how busy the two CPUs were, and the TCP segments and bytes all hops sent per
# request (nstat): a proxy can spend less itself and still serve fewer requests when
# it leaves CPUs idle or makes wrk and the upstream work harder.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=duel
ROUNDS="${ROUNDS:-30}" SECS="${SECS:-5}" NKEYS="${NKEYS:-1000}" CLIENT="${CLIENT:-plain}"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
LUA="$ANCHORS/wrk-keys.lua"
case "$CLIENT" in plain | keys) ;; *) echo "duel.sh: CLIENT is plain or keys, not '$CLIENT'" >&2; exit 2 ;; esac
[ -x "$ANCHORS/start.sh" ] || { echo "duel.sh: $ANCHORS/start.sh not found (set ANCHORS)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "duel.sh: nginx is missing: run $ANCHORS/install.sh" >&2; exit 1; }
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
NGINX_PREFIX=""
trap '[ -z "$NGINX_PREFIX" ] || "$ANCHORS/stop.sh" "$NGINX_PREFIX" >/dev/null 2>&1 || true; cleanup' EXIT
NG=$(port)
items_config "$PX" "$AD" "$TMP/keygate.db" >"$TMP/keygate.toml"
# Puts `KEY = "VALUE"` into items_config's [proxy], after its `workers = 2` line: a run
# without it would measure the default, so a config without that line fails the run.
proxy_setting() { # KEY VALUE
    sed -i "/^workers = 2\$/a $1 = \"$2\"" "$TMP/keygate.toml"
    grep -q "^$1 = \"$2\"\$" "$TMP/keygate.toml" ||
        { echo "duel.sh: no 'workers = 2' line in items_config to put $1 after" >&2; exit 1; }
}
[ -z "${AFFINITY:-}" ] || proxy_setting cpu_affinity "$AFFINITY"
[ -z "${SCHED:-}" ] || proxy_setting sched_policy "$SCHED"
for ((i = 0; i < NKEYS; i++)); do key --name "duel-$i" --org acme --scopes read; done >"$TMP/keys.txt"
RUST_LOG=warn "$T/keygate" serve --config "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 & PIDS+=($!); KG=$!
read -r NGINX_PID NGINX_PREFIX < <("$ANCHORS/start.sh" nginx-proxy "$NG" "$UP")
[[ "${NGINX_PID:-}" =~ ^[0-9]+$ ]] || { echo "duel.sh: start.sh nginx-proxy failed" >&2; exit 1; }
for p in "$PX" "$NG"; do
    for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.05; done
done

PATH_="/v1/orgs/acme/items/1"
machine() { # "busy total" clock ticks of all CPUs since boot (busy: user, nice, system, irq, softirq)
    awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit}' /proc/stat
}
segments() { # "segments bytes" sent over all TCP connections since boot (loopback here: every hop of every exchange)
    nstat -az 2>/dev/null | awk '$1 == "TcpOutSegs" {s = $2} $1 == "IpExtOutOctets" {b = $2} END {print s + 0, b + 0}'
}
run() { # SIDE SECS: "req/s p99ms requests"
    if [ "$1" = keygate ]; then
        wrk_run "$2" "$LUA" "http://127.0.0.1:$PX$PATH_" "$TMP/keys.txt"
    elif [ "$CLIENT" = keys ]; then
        wrk_run "$2" "$LUA" "http://127.0.0.1:$NG$PATH_" "$TMP/keys.txt"
    else
        wrk_run "$2" - "http://127.0.0.1:$NG$PATH_"
    fi
}
echo "keygate's workers' scheduling policies (0 SCHED_OTHER, 3 SCHED_BATCH): $(worker_policies "$KG" | tr '\n' ' ')"
run keygate 2 >/dev/null; run nginx 2 >/dev/null   # warm L1 and both upstream pools
declare -A ticks_of reqs_of busy_of total_of segs_of bytes_of pid_of=([keygate]=$KG [nginx]=$NGINX_PID)
printf '%-5s %-8s %10s %8s\n' round side 'req/s' 'p99 ms'
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="keygate nginx"; else order="nginx keygate"; fi
    for side in $order; do
        before=$(cpu_ticks_tree "${pid_of[$side]}")
        read -r busy0 total0 < <(machine)
        read -r segs0 bytes0 < <(segments)
        read -r rps p99 n < <(run "$side" "$SECS")
        read -r segs1 bytes1 < <(segments)
        read -r busy1 total1 < <(machine)
        segs_of[$side]=$(( ${segs_of[$side]:-0} + segs1 - segs0 ))
        bytes_of[$side]=$(( ${bytes_of[$side]:-0} + bytes1 - bytes0 ))
        ticks_of[$side]=$(( ${ticks_of[$side]:-0} + $(cpu_ticks_tree "${pid_of[$side]}") - before ))
        busy_of[$side]=$(( ${busy_of[$side]:-0} + busy1 - busy0 ))
        total_of[$side]=$(( ${total_of[$side]:-0} + total1 - total0 ))
        reqs_of[$side]=$(( ${reqs_of[$side]:-0} + n ))
        printf '%-5s %-8s %10s %8s\n' "$r" "$side" "$rps" "$p99" | tee -a "$TMP/rounds.txt"
    done
done
echo "keygate's workers' scheduling policies after the rounds: $(worker_policies "$KG" | tr '\n' ' ')"
ab_summary "$TMP/rounds.txt" nginx "${ticks_of[nginx]}" "${reqs_of[nginx]}" keygate "${ticks_of[keygate]}" "${reqs_of[keygate]}"
echo "keygate/nginx req/s per round, geometric mean [95 % interval]: $(round_interval "$TMP/rounds.txt" nginx keygate)"
for side in nginx keygate; do
    awk -v s="$side" -v b="${busy_of[$side]}" -v t="${total_of[$side]}" -v n="${reqs_of[$side]}" -v hz="$(getconf CLK_TCK)" \
        -v sg="${segs_of[$side]}" -v by="${bytes_of[$side]}" \
        'BEGIN {printf "machine during %s runs: CPUs %.1f %% busy, %.1f CPU µs per request (all processes), %.2f TCP segments and %.0f IP bytes sent per request\n",
                s, 100 * b / t, b / hz * 1e6 / n, sg / n, by / n}'
done
echo "client: keygate wrk-keys.lua over $NKEYS keys; nginx $([ "$CLIENT" = keys ] && echo "the same" || echo "plain wrk"); wrk -t1 -c64, $ROUNDS rounds of ${SECS}s, order alternating; keygate cpu_affinity ${AFFINITY:-auto (default)}, sched_policy ${SCHED:-normal (default)}"
