#!/usr/bin/env bash
# What the fields keygate adds to a forwarded request cost the upstream that parses
# them: wrk straight at the bench upstream (no proxy), once with the request a bare
# hop forwards and once with keygate's fields added, the order alternating per round.
#
#   BUILD=0 benches/fields.sh            # ROUNDS=10 SECS=5
#
# The fields are those keygate forwards for a bench key (DESIGN §7: the seven
# identity fields, X-Forwarded-For, -Host and -Proto, X-Request-Id), with values of
# the usual length; keygate takes `Authorization` out, so neither side sends one.
# Both sides use wrk's static request (no Lua call per request). CPU per request is
# the upstream's (utime+stime from /proc over its runs ÷ requests), the part of a
# hop's cost that lands on the API behind keygate; the answer's fields (RateLimit-*,
# X-Request-Id, for the client to parse) are not in it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=fields
ROUNDS="${ROUNDS:-10}" SECS="${SECS:-5}"
# shellcheck source=benches/rig.sh
source "$ROOT/benches/rig.sh"
UPPID="${PIDS[0]}"
URL="http://127.0.0.1:$UP/v1/orgs/acme/items/1"
for ((i = 0; i < 100; i++)); do curl -s -o /dev/null "$URL" && break; sleep 0.05; done
cat >"$TMP/fields.lua" <<EOF
wrk.headers["X-Keygate-Key-Id"] = "3f1c2a9e-8d4b-4c6e-9a7f-1b2c3d4e5f60"
wrk.headers["X-Keygate-Key-Name"] = "duel-417"
wrk.headers["X-Keygate-Org-Id"] = "acme"
wrk.headers["X-Keygate-Environment"] = "live"
wrk.headers["X-Keygate-Scopes"] = "read"
wrk.headers["X-Keygate-Owner"] = "org:acme"
wrk.headers["X-Keygate-Auth-Method"] = "api_key"
wrk.headers["X-Forwarded-For"] = "127.0.0.1"
wrk.headers["X-Forwarded-Host"] = "127.0.0.1:$PX"
wrk.headers["X-Forwarded-Proto"] = "http"
wrk.headers["X-Request-Id"] = "15ec2d6204ddd2390000000000000a41"
EOF
run() { # SIDE SECS
    if [ "$1" = bare ]; then wrk_run "$2" - "$URL"; else wrk_run "$2" "$TMP/fields.lua" "$URL"; fi
}
run bare 2 >/dev/null; run fields 2 >/dev/null
declare -A cpu_s reqs
printf '%-5s %-6s %10s %8s\n' round side 'req/s' 'p99 ms'
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="bare fields"; else order="fields bare"; fi
    for side in $order; do
        before=$(cpu_ticks_tree "$UPPID")
        read -r rps p99 n < <(run "$side" "$SECS")
        cpu_s[$side]=$(( ${cpu_s[$side]:-0} + $(cpu_ticks_tree "$UPPID") - before ))
        reqs[$side]=$(( ${reqs[$side]:-0} + n ))
        printf '%-5s %-6s %10s %8s\n' "$r" "$side" "$rps" "$p99" | tee -a "$TMP/rounds.txt"
    done
done
echo
echo "upstream (bench_upstream, 1 thread) without a proxy; CPU µs/req is the upstream's"
ab_summary "$TMP/rounds.txt" bare "${cpu_s[bare]}" "${reqs[bare]}" fields "${cpu_s[fields]}" "${reqs[fields]}"
echo "fields/bare req/s per round, geometric mean [95 % interval]: $(round_interval "$TMP/rounds.txt" bare fields)"
