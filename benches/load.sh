#!/usr/bin/env bash
# keygate load benchmark: one interleaved wrk run of keygate against a bare hop.
#
#   benches/load.sh                     # full run (SECS=10, ROUNDS=3)
#   SECS=2 ROUNDS=1 benches/load.sh     # smoke run: proves the rig works, measures nothing
#
# What it measures. Every target answers GET /v1/orgs/acme/items/1 from the same
# 1-thread hyper upstream (examples/bench_upstream.rs), with wrk -t1 -c64:
#   direct           the upstream itself (the base of the ratio column)
#   bare-hyper       examples/bare_hop.rs: a bare hyper hop, no auth work, in the
#                    textbook shape (multi-thread runtime, 2 workers, hyper-util's
#                    legacy pooled Client); fixed Authorization header
#   keygate          `keygate serve`, 2 workers, embedded SQLite store, quota counted
#                    locally (flushed to SQLite each second), rotating over N keys
#                    (wrk-keys.lua, warm L1 cache, cache TTL 30 s: keygate's default)
#   bare-hyper-keys  the bare hop again, in the same wrk client mode as keygate
#                    (keys: rotation makes a Lua call in wrk per request)
# Per request keygate does more than the hop: route match, org binding, Bearer parse,
# SHA-256, cache lookup, scope check, local quota count, header strip/identity
# headers, request id. Its quota is local, so compare it with the bare hops, not with
# a Redis-counting anchor (nginx-lua-redis); see the bench-anchors README.
# It also reports CPU µs per request of the keygate and bare_hop processes
# (utime+stime from /proc/PID/stat over the whole run / requests wrk completed).
#
# The figures are ratios and medians from ONE interleaved run on this machine
# (../shared/bench-anchors/README.md, "A fair comparison"): quote them next to
# `direct` and the bare hop of the same run, never as absolute numbers. A run taken
# while something else was busy (a build, another benchmark), and any smoke run, is
# not a measurement. A flagged row is not a measurement either (exit status 3).
#
# Environment: SECS (10), ROUNDS (3) and the other measure.sh knobs pass through;
# NKEYS (1000) keys to create; WARMUP (1) seconds of wrk per proxy before the
# run (0 = none); ANCHORS (../shared/bench-anchors); KEEP=1 keeps the
# temp dir (config, SQLite store, keys, logs, raw wrk outputs); CARGO_TARGET_DIR is
# respected. Everything runs on free 127.0.0.1 ports and is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
MEASURE="$ANCHORS/measure.sh"
NKEYS="${NKEYS:-1000}"
WARMUP="${WARMUP:-1}"
export SECS="${SECS:-10}" ROUNDS="${ROUNDS:-3}"
REQ_PATH="${REQ_PATH:-/v1/orgs/acme/items/1}"
export REQ_PATH

die() { echo "load.sh: $*" >&2; exit 1; }

[ -x "$MEASURE" ] || die "$MEASURE not found (set ANCHORS to the bench-anchors folder)"
command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "load.sh: wrk not found; installing it (apt-get install -y wrk)" >&2
        apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; } ||
            die "cannot install wrk"
    else
        die "wrk not found: install it with 'sudo apt-get install -y wrk' or '$ANCHORS/install.sh'"
    fi
fi

# --- processes and cleanup ------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/kg-load.XXXXXX")"
PIDS=()
MPID=""
cleanup() {
    local pid i kids
    # An interrupted measure.sh: stop it and its wrk (by their PIDs) first.
    if [ -n "$MPID" ] && kill -0 "$MPID" 2>/dev/null; then
        kids="$(pgrep -P "$MPID" || true)"
        kill -TERM "$MPID" 2>/dev/null || true
        for pid in $kids; do kill -TERM "$pid" 2>/dev/null || true; done
        wait "$MPID" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "load.sh: kept $TMP" >&2; else rm -rf -- "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port outside the ephemeral range (so wrk's and the proxies' outgoing
# connections cannot take it between the check and the bind).
USED=" "
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ "$USED" == *" $p "* ]] && continue
        [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] || continue
        USED+="$p "
        echo "$p"
        return 0
    done
    die "no free port found"
}

# Waits until something answers HTTP on PORT (any status) while PID is alive.
wait_http() {
    local name="$1" port="$2" pid="$3" log="$4" code i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; die "$name exited during start-up (log above)"; }
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true)"
        [ "$code" != 000 ] && return 0
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "$name did not answer on 127.0.0.1:$port within 10 s"
}

# utime+stime of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat")" || die "process $1 is gone"
    # Fields after the ")" closing comm: state is field 3, utime 14, stime 15.
    echo "${stat##*) }" | awk '{print $12 + $13}'
}

# --- build ----------------------------------------------------------------------
echo "load.sh: building (release)" >&2
(cd "$ROOT" && cargo build --release --bin keygate --example bench_upstream --example bare_hop) >&2
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
TARGET_DIR="${TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}"
KEYGATE="$TARGET_DIR/release/keygate"
UPSTREAM_BIN="$TARGET_DIR/release/examples/bench_upstream"
HOP_BIN="$TARGET_DIR/release/examples/bare_hop"
for b in "$KEYGATE" "$UPSTREAM_BIN" "$HOP_BIN"; do [ -x "$b" ] || die "$b not built"; done

# --- upstream and bare hop --------------------------------------------------------
UP_PORT="$(free_port)"
ADDR="127.0.0.1:$UP_PORT" "$UPSTREAM_BIN" > "$TMP/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_http bench_upstream "$UP_PORT" "$UP_PID" "$TMP/upstream.log"

HOP_PORT="$(free_port)"
ADDR="127.0.0.1:$HOP_PORT" UPSTREAM="127.0.0.1:$UP_PORT" "$HOP_BIN" > "$TMP/bare_hop.log" 2>&1 &
HOP_PID=$!; PIDS+=("$HOP_PID")
wait_http bare_hop "$HOP_PORT" "$HOP_PID" "$TMP/bare_hop.log"

# --- keygate: config, keys, server ------------------------------------------------
KG_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
CFG="$TMP/keygate.toml"
cat > "$CFG" <<EOF
[proxy]
listen = "127.0.0.1:$KG_PORT"
upstream = "http://127.0.0.1:$UP_PORT"
workers = 2

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[store]
url = "sqlite://$TMP/keygate.db"

[quota]
limit = 1000000000
period = "month"

[[route]]
name = "items"
methods = ["GET"]
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"
EOF
"$KEYGATE" --config "$CFG" check-config >&2 || die "the generated config is invalid"

KEYS="$TMP/keys.txt"
echo "load.sh: creating $NKEYS keys with the keygate CLI" >&2
start=$SECONDS
for ((i = 1; i <= NKEYS; i++)); do
    json="$(RUST_LOG=warn "$KEYGATE" --config "$CFG" keys create --name "bench-$i" --org acme --scopes read --json)"
    key="$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p' <<< "$json")"
    [[ "$key" =~ ^[A-Za-z0-9_]+$ ]] || die "keys create printed no key: $json"
    echo "$key" >> "$KEYS"
done
echo "load.sh: $NKEYS keys in $((SECONDS - start)) s" >&2

RUST_LOG=warn "$KEYGATE" --config "$CFG" serve > "$TMP/keygate.log" 2>&1 &
KG_PID=$!; PIDS+=("$KG_PID")
wait_http keygate "$KG_PORT" "$KG_PID" "$TMP/keygate.log"

# Sanity: keygate really authenticates (no key: 401; a key: 200 through to the upstream).
URL="http://127.0.0.1:$KG_PORT$REQ_PATH"
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL" || true)"
[ "$code" = 401 ] || die "keygate answered $code without a key (expected 401)"
code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $(head -n 1 "$KEYS")" "$URL" || true)"
[ "$code" = 200 ] || die "keygate answered $code with a valid key (expected 200); log: $TMP/keygate.log"

# Warm-up: every key once through keygate (its L1 and quota counters start cold; the
# benchmark's steady state is a warm cache hit), and the bare hop's connection pool.
if [ "$WARMUP" != 0 ]; then
    echo "load.sh: warm-up, ${WARMUP}s per proxy" >&2
    wrk -t1 -c64 -d"${WARMUP}s" -s "$ANCHORS/wrk-keys.lua" "$URL" -- "$KEYS" > "$TMP/warmup-keygate.txt" 2>&1 || true
    wrk -t1 -c64 -d"${WARMUP}s" "http://127.0.0.1:$HOP_PORT$REQ_PATH" > "$TMP/warmup-bare_hop.txt" 2>&1 || true
fi

# --- the interleaved run ------------------------------------------------------------
RAW="$TMP/raw"
TARGETS=(
    "direct=$UP_PORT"
    "bare-hyper=$HOP_PORT"
    "keygate=$KG_PORT,keys:$KEYS"
    "bare-hyper-keys=$HOP_PORT,keys:$KEYS"
)
echo "load.sh: upstream :$UP_PORT (pid $UP_PID), bare_hop :$HOP_PORT (pid $HOP_PID), keygate :$KG_PORT (pid $KG_PID)" >&2
kg0="$(cpu_ticks "$KG_PID")"; hop0="$(cpu_ticks "$HOP_PID")"
rc=0
# In the background so that a signal runs the cleanup at once, not after the rounds.
RAW_DIR="$RAW" "$MEASURE" "${TARGETS[@]}" > "$TMP/table.txt" &
MPID=$!
wait "$MPID" || rc=$?
MPID=""
kg1="$(cpu_ticks "$KG_PID")"; hop1="$(cpu_ticks "$HOP_PID")"
grep -v '^raw wrk outputs:' "$TMP/table.txt" || true

# --- CPU per request ------------------------------------------------------------------
# Requests wrk completed for the targets with these indexes in TARGETS (all rounds).
requests() {
    local i r f sum=0 n
    for i in "$@"; do
        for ((r = 1; r <= ROUNDS; r++)); do
            for f in "$RAW/r$r-$i-"*.txt; do [ -e "$f" ] && break; done
            [ -e "$f" ] || continue
            n="$(awk '/ requests in / {print $1; exit}' "$f")"
            sum=$((sum + ${n:-0}))
        done
    done
    echo "$sum"
}
TCK="$(getconf CLK_TCK)"
cpu_row() { # NAME TICKS REQUESTS
    awk -v name="$1" -v t="$2" -v hz="$TCK" -v n="$3" 'BEGIN {
        s = t / hz
        printf "%-40s %10.2f %12d %12s\n", name, s, n, (n > 0 ? sprintf("%.1f", s * 1e6 / n) : "-") }'
}
echo
printf '%-40s %10s %12s %12s\n' process "CPU s" requests "CPU µs/req"
printf '%-40s %10s %12s %12s\n' ---------------------------------------- ---------- ------------ ------------
cpu_row "keygate (keygate)" $((kg1 - kg0)) "$(requests 2)"
cpu_row "bare_hop (bare-hyper + bare-hyper-keys)" $((hop1 - hop0)) "$(requests 1 3)"
echo
echo "CPU: utime+stime from /proc/PID/stat over the whole run (idle time while other targets ran included), CLK_TCK=$TCK; requests: wrk's completed count summed over rounds"
echo "keygate: $NKEYS keys rotated (warm L1, TTL 30 s), 2 workers, embedded SQLite store, local quota; bare_hop: 2-worker multi-thread runtime, hyper-util legacy Client"
echo "one interleaved run: quote ratios to direct / the bare hop, not absolute req/s (bench-anchors README)"
exit "$rc"
