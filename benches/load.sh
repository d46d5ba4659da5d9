#!/usr/bin/env bash
# keygate load benchmark: one interleaved wrk run of keygate (embedded mode and Redis
# mode) against bare hops and, optionally, the nginx anchors.
#
#   benches/load.sh                         # full run (SECS=10, ROUNDS=3)
#   ANCHORS_RUN=1 benches/load.sh           # ... with the nginx-proxy, haproxy-proxy and nginx-lua-redis anchors
#   SECS=2 ROUNDS=1 benches/load.sh         # smoke run: proves the rig works, measures nothing
#
# What it measures. Every target answers GET /v1/orgs/acme/items/1 from the same
# 1-thread hyper upstream (examples/bench_upstream.rs), with wrk -t1 -c64:
#   direct              the upstream itself (the base of the ratio column)
#   bare-hyper          examples/bare_hop.rs: a bare hyper hop, no auth work, in the
#                       textbook shape (multi-thread runtime, 2 workers, hyper-util's
#                       legacy pooled Client); fixed Authorization header
#   nginx-proxy         (ANCHORS_RUN=1) the bench-anchors bare nginx hop: 2 workers,
#                       keep-alive upstream pool, no auth work; no extra header
#   haproxy-proxy       (ANCHORS_RUN=1) the bench-anchors bare HAProxy hop: 2 threads,
#                       http-keep-alive, http-reuse always; no auth work; no extra header
#   keygate-localquota  `keygate serve`, 2 workers, embedded SQLite store, quota counted
#                       locally (an in-process atomic, flushed to SQLite each second),
#                       rotating over NKEYS keys (wrk-keys.lua; warm L1 cache, TTL 30 s:
#                       keygate's default). No Redis, no network call per request.
#   keygate-auto        keygate-localquota with [proxy] sched_policy = "auto" (its workers
#                       under SCHED_BATCH while their waits for a CPU stay short, as they
#                       should here; own copy of the store and keys)
#   keygate-accesslog   keygate-localquota with its access log on (RUST_LOG=info, keygate's
#                       default; one human-format line per request appended to a file). The
#                       other keygate rows log at warn, like the anchors' access_log off.
#   keygate-redis       the same keygate and config (its own copy of the same SQLite
#                       store, same keys) plus a [redis] table: key records in Redis as
#                       L2 (only asked on an L1 miss) and the quota counted in Redis through
#                       leases: one script call (EVALSHA) hands a replica a block of up to
#                       64 units, admitted in-process, so about 1/64 call per request;
#                       exact across replicas (tests/shared_state.rs); on_redis_error =
#                       "deny", so a broken Redis answers 503 and is flagged (the anchor
#                       also fails closed) instead of silently counting locally
#   nginx-lua-redis     (ANCHORS_RUN=1) the Kong/OpenResty way: Bearer parse, SHA-256,
#                       per-worker lrucache (TTL 30 s) over Redis key records, scope check,
#                       quota counted in Redis by one INCR+EXPIRE pipeline per request,
#                       header strip + identity headers; rotating over NKEYS seeded keys
#   bare-hyper-keys     the bare hop again, in the same wrk client mode as keygate
#                       (keys: rotation makes a Lua call in wrk per request)
#   nginx-proxy-keys    (ANCHORS_RUN=1) nginx-proxy again in that client mode (it
#                       ignores the header): what the client mode alone costs a
#                       bare hop on these two cores, next to the target row
# Per request keygate does more than the hops: route match, org binding, Bearer parse,
# SHA-256, cache lookup, scope check, quota count, header strip/identity headers,
# request id. keygate-redis vs nginx-lua-redis is the like-for-like comparison (same
# work, one Redis round trip per request on the same private Redis, same wrk keys: mode;
# keygate additionally does route matching, org binding and request ids).
# keygate-localquota counts locally, a cheaper configuration: compare it with the bare
# hops (bare-hyper-keys, nginx-proxy), not with nginx-lua-redis (bench-anchors README,
# "A fair comparison").
# It also reports CPU µs per request of the keygate, bare_hop, nginx and redis-server
# processes (utime+stime from /proc/PID/stat, nginx master + workers, over the whole
# run / requests wrk completed), and reports from Redis' INFO commandstats the quota
# calls per completed request: keygate-redis (EVALSHA/EVAL, leases: flagged if it made
# none, or 0.05 or more per request) and nginx-lua-redis (INCR: flagged below one).
#
# The figures are ratios and medians from ONE interleaved run on this machine
# (../shared/bench-anchors/README.md, "A fair comparison"): quote them next to
# `direct` and the bare hop of the same run, never as absolute numbers. A run taken
# while something else was busy (a build, another benchmark), and any smoke run, is
# not a measurement. A flagged row is not a measurement either (exit status 3).
#
# Environment: SECS (10), ROUNDS (3) and the other measure.sh knobs pass through;
# NKEYS (1000) keys to create (for keygate with its CLI, for nginx-lua-redis with
# seed-keys.py); WARMUP (1) seconds of wrk per proxy before the run (0 = none);
# ANCHORS_RUN (0): 1 adds the nginx-proxy, haproxy-proxy and nginx-lua-redis anchors,
# installing them with the bench-anchors install.sh (apt) when nginx, its Lua module
# or haproxy is
# missing and we are root (if that or their start fails, the run goes on without
# them and says why); ANCHORS (../shared/bench-anchors); KEEP=1 keeps the temp dir
# (configs, SQLite stores, keys, logs, raw wrk outputs) and the anchors' prefix dirs;
# CARGO_TARGET_DIR is respected. A private in-memory Redis (bench-anchors start.sh
# redis) serves keygate-redis and nginx-lua-redis. Everything runs on free 127.0.0.1
# ports and is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/bench-anchors}"
MEASURE="$ANCHORS/measure.sh"
NKEYS="${NKEYS:-1000}"
WARMUP="${WARMUP:-1}"
ANCHORS_RUN="${ANCHORS_RUN:-0}"
export SECS="${SECS:-10}" ROUNDS="${ROUNDS:-3}"
REQ_PATH="${REQ_PATH:-/v1/orgs/acme/items/1}"
export REQ_PATH

die() { echo "load.sh: $*" >&2; exit 1; }
# shellcheck source=benches/procstat.sh
source "$HERE/procstat.sh"   # cpu_ticks, cpu_ticks_tree, worker_policies
warn() { echo "load.sh: WARNING: $*" >&2; }

[ -x "$MEASURE" ] || die "$MEASURE not found (set ANCHORS to the bench-anchors folder)"
[ "$ANCHORS_RUN" = 0 ] || [ "$ANCHORS_RUN" = 1 ] || die "ANCHORS_RUN must be 0 or 1"
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
ANCHOR_PREFIXES=()   # started with $ANCHORS/start.sh, stopped with $ANCHORS/stop.sh
STARTING_PORT=""     # set while start.sh runs (an interrupt there leaves no prefix to stop)
START_MARK="$TMP/.anchor-start"
cleanup() {
    local pid i kids d
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
    # An anchor whose start.sh was interrupted: its prefix dir, made after START_MARK.
    if [ -n "$STARTING_PORT" ]; then
        for d in "${TMPDIR:-/tmp}"/kg-anchor-*-"$STARTING_PORT".*; do
            if [ -d "$d" ] && [ "$d" -nt "$START_MARK" ]; then ANCHOR_PREFIXES+=("$d"); fi
        done
    fi
    # Anchors in reverse start order (the nginx anchors before their Redis).
    for ((i = ${#ANCHOR_PREFIXES[@]} - 1; i >= 0; i--)); do
        "$ANCHORS/stop.sh" "${ANCHOR_PREFIXES[i]}" || true
    done
    if [ "${KEEP:-0}" = 1 ]; then echo "load.sh: kept $TMP" >&2; else rm -rf -- "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_port VAR: sets VAR to a free port outside the ephemeral range (so wrk's and
# the proxies' outgoing connections cannot take it between the check and the bind),
# never one handed out before in this run (not in a subshell: USED must persist).
USED=" "
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ "$USED" == *" $p "* ]] && continue
        [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] || continue
        USED+="$p "
        printf -v "$1" '%s' "$p"
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

# Starts an anchor with $ANCHORS/start.sh NAME PORT ARGS...; sets ANCHOR_PID and
# records its prefix dir for the cleanup. Fails (start.sh's messages on stderr)
# when start.sh does.
ANCHOR_PID=""
start_anchor() {
    local out pid prefix
    STARTING_PORT="$2"; : > "$START_MARK"
    out="$("$ANCHORS/start.sh" "$@")" || { STARTING_PORT=""; return 1; }
    read -r pid prefix <<< "$out"
    [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "$prefix" ] || { STARTING_PORT=""; echo "load.sh: start.sh $1 printed '$out'" >&2; return 1; }
    ANCHOR_PREFIXES+=("$prefix")
    STARTING_PORT=""
    ANCHOR_PID="$pid"
}

# Sum of the calls of the named commands in Redis' INFO commandstats.
redis_calls() { # PORT CMD...
    local port="$1"; shift
    redis-cli -h 127.0.0.1 -p "$port" INFO commandstats | tr -d '\r' |
        awk -F'[:,=]' -v want=" $* " '/^cmdstat_/ {
            if (index(want, " " substr($1, 9) " ")) s += $3 } END { print s + 0 }'
}

# --- packages: Redis (always), nginx anchors (ANCHORS_RUN=1) ---------------------
NGINX_MODULES_DIR="${NGINX_MODULES_DIR:-/usr/lib/nginx/modules}"
anchors_ok() {
    command -v nginx >/dev/null && command -v haproxy >/dev/null &&
        [ -f "$NGINX_MODULES_DIR/ngx_http_lua_module.so" ]
}
ANCHORS_WHY=""   # why the nginx anchors are not in this run (empty: they are)
[ "$ANCHORS_RUN" = 1 ] || ANCHORS_WHY="ANCHORS_RUN=0"
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null ||
   { [ "$ANCHORS_RUN" = 1 ] && ! anchors_ok; }; then
    if [ "$(id -u)" = 0 ]; then
        echo "load.sh: installing the bench-anchors packages ($ANCHORS/install.sh, apt)" >&2
        if "$ANCHORS/install.sh" > "$TMP/install.log" 2>&1; then
            tail -n 5 "$TMP/install.log" >&2
        else
            tail -n 15 "$TMP/install.log" >&2
            warn "$ANCHORS/install.sh failed (output above)"
        fi
    fi
fi
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    die "redis-server/redis-cli not found (keygate-redis needs them): run 'sudo $ANCHORS/install.sh'"
if [ "$ANCHORS_RUN" = 1 ] && ! anchors_ok; then
    if [ "$(id -u)" = 0 ]; then
        ANCHORS_WHY="nginx, its Lua module ($NGINX_MODULES_DIR/ngx_http_lua_module.so) or haproxy is missing after $ANCHORS/install.sh (see above)"
    else
        ANCHORS_WHY="nginx, its Lua module or haproxy is missing and we are not root: run 'sudo $ANCHORS/install.sh'"
    fi
    warn "going on without the anchors: $ANCHORS_WHY"
fi

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

# --- upstream, bare hop, private Redis ----------------------------------------------
free_port UP_PORT
ADDR="127.0.0.1:$UP_PORT" "$UPSTREAM_BIN" > "$TMP/upstream.log" 2>&1 &
UP_PID=$!; PIDS+=("$UP_PID")
wait_http bench_upstream "$UP_PORT" "$UP_PID" "$TMP/upstream.log"

free_port HOP_PORT
ADDR="127.0.0.1:$HOP_PORT" UPSTREAM="127.0.0.1:$UP_PORT" "$HOP_BIN" > "$TMP/bare_hop.log" 2>&1 &
HOP_PID=$!; PIDS+=("$HOP_PID")
wait_http bare_hop "$HOP_PORT" "$HOP_PID" "$TMP/bare_hop.log"

free_port REDIS_PORT
start_anchor redis "$REDIS_PORT" || die "cannot start the private Redis ($ANCHORS/start.sh redis $REDIS_PORT)"
REDIS_PID="$ANCHOR_PID"
[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" PING)" = PONG ] || die "the private Redis on :$REDIS_PORT does not answer PING"

# --- keygate: configs, keys, servers ----------------------------------------------
write_config() { # FILE LISTEN_PORT ADMIN_PORT STORE_FILE [EXTRA_QUOTA_LINES [EXTRA_TABLES]]
    cat > "$1" <<EOF
[proxy]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$UP_PORT"
workers = 2

[admin]
listen = "127.0.0.1:$3"

[store]
url = "sqlite://$4"

[quota]
limit = 1000000000
period = "month"
${5:-}
${6:-}
[[route]]
name = "items"
methods = ["GET"]
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"
EOF
    "$KEYGATE" --config "$1" check-config >&2 || die "the generated config $1 is invalid"
}

free_port KG_PORT
CFG="$TMP/keygate.toml"
free_port ADMIN_PORT
write_config "$CFG" "$KG_PORT" "$ADMIN_PORT" "$TMP/keygate.db"

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

# Each other keygate gets its own copy of the store (same keys, same ids): the servers
# then do not contend for one SQLite file nor overwrite each other's usage rows.
copy_store() { # NAME: $TMP/NAME.db (and its write-ahead log) from keygate.db
    local f
    for f in "$TMP/keygate.db" "$TMP/keygate.db-wal"; do
        if [ -e "$f" ]; then cp "$f" "$TMP/$1.db${f#"$TMP/keygate.db"}"; fi
    done
}
copy_store keygate-redis
free_port KGA_PORT
CFG_ACCESS="$TMP/keygate-access.toml"
free_port ADMIN_PORT_ACCESS
copy_store keygate-access
write_config "$CFG_ACCESS" "$KGA_PORT" "$ADMIN_PORT_ACCESS" "$TMP/keygate-access.db"
free_port KGB_PORT
CFG_AUTO="$TMP/keygate-auto.toml"
free_port ADMIN_PORT_AUTO
copy_store keygate-auto
write_config "$CFG_AUTO" "$KGB_PORT" "$ADMIN_PORT_AUTO" "$TMP/keygate-auto.db"
sed -i '/^workers = 2$/a sched_policy = "auto"' "$CFG_AUTO"
grep -q '^sched_policy = "auto"$' "$CFG_AUTO" || die "no 'workers = 2' line in $CFG_AUTO to put sched_policy after"
free_port KGR_PORT
CFG_REDIS="$TMP/keygate-redis.toml"
free_port ADMIN_PORT_REDIS
write_config "$CFG_REDIS" "$KGR_PORT" "$ADMIN_PORT_REDIS" "$TMP/keygate-redis.db" 'on_redis_error = "deny"' \
    "[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"
"

RUST_LOG=warn "$KEYGATE" --config "$CFG" serve > "$TMP/keygate.log" 2>&1 &
KG_PID=$!; PIDS+=("$KG_PID")
wait_http keygate-localquota "$KG_PORT" "$KG_PID" "$TMP/keygate.log"
RUST_LOG=warn "$KEYGATE" --config "$CFG_AUTO" serve > "$TMP/keygate-auto.log" 2>&1 &
KGB_PID=$!; PIDS+=("$KGB_PID")
wait_http keygate-auto "$KGB_PORT" "$KGB_PID" "$TMP/keygate-auto.log"
[ "$(worker_policies "$KGB_PID" | sort -u)" = 3 ] || die "keygate-auto's workers do not start under SCHED_BATCH; log: $TMP/keygate-auto.log"
RUST_LOG=info "$KEYGATE" --config "$CFG_ACCESS" serve > "$TMP/keygate-access.log" 2>&1 &
KGA_PID=$!; PIDS+=("$KGA_PID")
wait_http keygate-accesslog "$KGA_PORT" "$KGA_PID" "$TMP/keygate-access.log"
RUST_LOG=warn "$KEYGATE" --config "$CFG_REDIS" serve > "$TMP/keygate-redis.log" 2>&1 &
KGR_PID=$!; PIDS+=("$KGR_PID")
wait_http keygate-redis "$KGR_PORT" "$KGR_PID" "$TMP/keygate-redis.log"

# Sanity: NAME PORT KEY: no key -> 401; a valid key -> 200 through to the upstream.
check_auth() {
    local name="$1" url="http://127.0.0.1:$2$REQ_PATH" code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url" || true)"
    [ "$code" = 401 ] || { echo "load.sh: $name answered $code without a key (expected 401)" >&2; return 1; }
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $3" "$url" || true)"
    [ "$code" = 200 ] || { echo "load.sh: $name answered $code with a valid key (expected 200)" >&2; return 1; }
}
check_auth keygate-localquota "$KG_PORT" "$(head -n 1 "$KEYS")" || die "keygate-localquota fails its check; log: $TMP/keygate.log"
check_auth keygate-auto "$KGB_PORT" "$(head -n 1 "$KEYS")" || die "keygate-auto fails its check; log: $TMP/keygate-auto.log"
check_auth keygate-redis "$KGR_PORT" "$(head -n 1 "$KEYS")" || die "keygate-redis fails its check; log: $TMP/keygate-redis.log"
# ... and keygate-redis really counts in Redis (a quota counter under its key prefix).
[ -n "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern 'keygate:quota:*' | head -n 1)" ] ||
    die "keygate-redis answered 200 but wrote no quota counter to Redis; log: $TMP/keygate-redis.log"

# --- optional anchors: nginx-proxy, haproxy-proxy, nginx-lua-redis -------------------
NGP_PID=""; NGL_PID=""; HAP_PID=""
ANCHOR_KEYS="$TMP/anchor-keys.txt"
if [ -z "$ANCHORS_WHY" ]; then
    free_port NGP_PORT; free_port NGL_PORT; free_port HAP_PORT
    if ! "$ANCHORS/seed-keys.py" --port "$REDIS_PORT" -n "$NKEYS" --out "$ANCHOR_KEYS" >&2; then
        ANCHORS_WHY="seed-keys.py failed (see above)"
    elif ! start_anchor nginx-proxy "$NGP_PORT" "$UP_PORT"; then
        ANCHORS_WHY="start.sh nginx-proxy failed (see above)"
    else
        NGP_PID="$ANCHOR_PID"
        if ! start_anchor nginx-lua-redis "$NGL_PORT" "$UP_PORT" "$REDIS_PORT"; then
            ANCHORS_WHY="start.sh nginx-lua-redis failed (see above)"
        else
            NGL_PID="$ANCHOR_PID"
            code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$NGP_PORT$REQ_PATH" || true)"
            if [ "$code" != 200 ]; then
                ANCHORS_WHY="nginx-proxy answered $code (expected 200)"
            elif ! check_auth nginx-lua-redis "$NGL_PORT" "$(head -n 1 "$ANCHOR_KEYS")"; then
                ANCHORS_WHY="nginx-lua-redis fails its check (see above)"
            elif ! start_anchor haproxy-proxy "$HAP_PORT" "$UP_PORT"; then
                ANCHORS_WHY="start.sh haproxy-proxy failed (see above)"
            else
                HAP_PID="$ANCHOR_PID"
                code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$HAP_PORT$REQ_PATH" || true)"
                [ "$code" = 200 ] || ANCHORS_WHY="haproxy-proxy answered $code (expected 200)"
            fi
        fi
    fi
    if [ -n "$ANCHORS_WHY" ]; then
        warn "going on without the anchors: $ANCHORS_WHY"
        NGP_PID=""; NGL_PID=""; HAP_PID=""
    fi
fi

# Warm-up: every key once through each key-checking proxy (caches and quota counters
# start cold; the benchmark's steady state is a warm cache hit), and the hops'
# upstream connection pools.
if [ "$WARMUP" != 0 ]; then
    echo "load.sh: warm-up, ${WARMUP}s per proxy" >&2
    warm() { # NAME URL [KEYS_FILE]
        if [ -n "${3:-}" ]; then
            wrk -t1 -c64 -d"${WARMUP}s" -s "$ANCHORS/wrk-keys.lua" "$2" -- "$3" > "$TMP/warmup-$1.txt" 2>&1 || true
        else
            wrk -t1 -c64 -d"${WARMUP}s" "$2" > "$TMP/warmup-$1.txt" 2>&1 || true
        fi
    }
    warm keygate-localquota "http://127.0.0.1:$KG_PORT$REQ_PATH" "$KEYS"
    warm keygate-auto "http://127.0.0.1:$KGB_PORT$REQ_PATH" "$KEYS"
    warm keygate-accesslog "http://127.0.0.1:$KGA_PORT$REQ_PATH" "$KEYS"
    warm keygate-redis "http://127.0.0.1:$KGR_PORT$REQ_PATH" "$KEYS"
    warm bare_hop "http://127.0.0.1:$HOP_PORT$REQ_PATH"
    if [ -n "$NGL_PID" ]; then
        warm nginx-proxy "http://127.0.0.1:$NGP_PORT$REQ_PATH"
        warm haproxy-proxy "http://127.0.0.1:$HAP_PORT$REQ_PATH"
        warm nginx-lua-redis "http://127.0.0.1:$NGL_PORT$REQ_PATH" "$ANCHOR_KEYS"
    fi
fi

# --- the interleaved run ------------------------------------------------------------
RAW="$TMP/raw"
TARGETS=()
declare -A IDX   # target name -> its index in TARGETS (measure.sh's raw file names)
target() { IDX[$1]=${#TARGETS[@]}; TARGETS+=("$1=$2"); }
target direct "$UP_PORT"
target bare-hyper "$HOP_PORT"
[ -n "$NGP_PID" ] && target nginx-proxy "$NGP_PORT"
[ -n "$HAP_PID" ] && target haproxy-proxy "$HAP_PORT"
target keygate-localquota "$KG_PORT,keys:$KEYS"
target keygate-auto "$KGB_PORT,keys:$KEYS"
target keygate-accesslog "$KGA_PORT,keys:$KEYS"
target keygate-redis "$KGR_PORT,keys:$KEYS"
[ -n "$NGL_PID" ] && target nginx-lua-redis "$NGL_PORT,keys:$ANCHOR_KEYS"
target bare-hyper-keys "$HOP_PORT,keys:$KEYS"
[ -n "$NGP_PID" ] && target nginx-proxy-keys "$NGP_PORT,keys:$KEYS"

echo "load.sh: upstream :$UP_PORT (pid $UP_PID), bare_hop :$HOP_PORT (pid $HOP_PID)," \
    "keygate-localquota :$KG_PORT (pid $KG_PID), keygate-redis :$KGR_PORT (pid $KGR_PID)," \
    "redis :$REDIS_PORT (pid $REDIS_PID)${NGL_PID:+, nginx-proxy :$NGP_PORT (pid $NGP_PID), nginx-lua-redis :$NGL_PORT (pid $NGL_PID), haproxy-proxy :$HAP_PORT (pid $HAP_PID)}" >&2
kgb0="$(cpu_ticks "$KGB_PID")"; kga0="$(cpu_ticks "$KGA_PID")"; kg0="$(cpu_ticks "$KG_PID")"; kgr0="$(cpu_ticks "$KGR_PID")"; hop0="$(cpu_ticks "$HOP_PID")"
redis0="$(cpu_ticks "$REDIS_PID")"
[ -n "$NGL_PID" ] && { ngp0="$(cpu_ticks_tree "$NGP_PID")"; ngl0="$(cpu_ticks_tree "$NGL_PID")"; hap0="$(cpu_ticks_tree "$HAP_PID")"; }
evalsha0="$(redis_calls "$REDIS_PORT" evalsha eval)"; incr0="$(redis_calls "$REDIS_PORT" incr)"
rc=0
# In the background so that a signal runs the cleanup at once, not after the rounds.
RAW_DIR="$RAW" "$MEASURE" "${TARGETS[@]}" > "$TMP/table.txt" &
MPID=$!
wait "$MPID" || rc=$?
MPID=""
kgb1="$(cpu_ticks "$KGB_PID")"; kga1="$(cpu_ticks "$KGA_PID")"; kg1="$(cpu_ticks "$KG_PID")"; kgr1="$(cpu_ticks "$KGR_PID")"; hop1="$(cpu_ticks "$HOP_PID")"
redis1="$(cpu_ticks "$REDIS_PID")"
[ -n "$NGL_PID" ] && { ngp1="$(cpu_ticks_tree "$NGP_PID")"; ngl1="$(cpu_ticks_tree "$NGL_PID")"; hap1="$(cpu_ticks_tree "$HAP_PID")"; }
evalsha1="$(redis_calls "$REDIS_PORT" evalsha eval)"; incr1="$(redis_calls "$REDIS_PORT" incr)"
grep -v '^raw wrk outputs:' "$TMP/table.txt" || true

# --- CPU per request ------------------------------------------------------------------
# Requests wrk completed for the named targets (all rounds).
requests() {
    local name i r f sum=0 n
    for name in "$@"; do
        i="${IDX[$name]}"
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
declare -A CPU_US   # target name -> CPU µs per request (for the ratios below)
cpu_row() { # NAME TICKS REQUESTS [TARGET]
    [ -n "${4:-}" ] && CPU_US[$4]="$(awk -v t="$2" -v hz="$TCK" -v n="$3" 'BEGIN { if (n > 0) printf "%.3f", t / hz * 1e6 / n }')"
    awk -v name="$1" -v t="$2" -v hz="$TCK" -v n="$3" 'BEGIN {
        s = t / hz
        printf "%-48s %10.2f %12d %12s\n", name, s, n, (n > 0 ? sprintf("%.1f", s * 1e6 / n) : "-") }'
}
echo
printf '%-48s %10s %12s %12s\n' process "CPU s" requests "CPU µs/req"
printf '%-48s %10s %12s %12s\n' ------------------------------------------------ ---------- ------------ ------------
cpu_row "keygate (keygate-localquota)" $((kg1 - kg0)) "$(requests keygate-localquota)" keygate-localquota
cpu_row "keygate (keygate-auto)" $((kgb1 - kgb0)) "$(requests keygate-auto)" keygate-auto
cpu_row "keygate (keygate-accesslog)" $((kga1 - kga0)) "$(requests keygate-accesslog)"
cpu_row "keygate (keygate-redis)" $((kgr1 - kgr0)) "$(requests keygate-redis)" keygate-redis
if [ -n "$NGL_PID" ]; then
    cpu_row "nginx, master+workers (nginx-proxy + -keys)" $((ngp1 - ngp0)) "$(requests nginx-proxy nginx-proxy-keys)" nginx-proxy
    cpu_row "nginx, master+workers (nginx-lua-redis)" $((ngl1 - ngl0)) "$(requests nginx-lua-redis)" nginx-lua-redis
    cpu_row "haproxy (haproxy-proxy)" $((hap1 - hap0)) "$(requests haproxy-proxy)" haproxy-proxy
    cpu_row "redis-server (keygate-redis + nginx-lua-redis)" $((redis1 - redis0)) "$(requests keygate-redis nginx-lua-redis)"
else
    cpu_row "redis-server (keygate-redis)" $((redis1 - redis0)) "$(requests keygate-redis)"
fi
cpu_row "bare_hop (bare-hyper + bare-hyper-keys)" $((hop1 - hop0)) "$(requests bare-hyper bare-hyper-keys)"

# --- the ratios the targets are set in (median req/s and p99 of the table, CPU above) --
# Per round too: a ratio of one interleaved round, so the spread shows.
col() { awk -v t="$1" -v c="$2" '$1 == t { print $c; exit }' "$TMP/table.txt"; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "-" }'; }
rounds_ratio() { # A B: req/s of A over B in each round
    local out="" r a b
    for ((r = 1; r <= ROUNDS; r++)); do
        a="$(awk -F'\t' -v r="$r" -v i="${IDX[$1]}" '$1 == r && $2 == i { print $3 }' "$RAW/results.tsv")"
        b="$(awk -F'\t' -v r="$r" -v i="${IDX[$2]}" '$1 == r && $2 == i { print $3 }' "$RAW/results.tsv")"
        out+="${out:+ }$(div "$a" "$b")"
    done
    echo "$out"
}
ratio_row() { # A B
    [ -n "${IDX[$1]:-}" ] && [ -n "${IDX[$2]:-}" ] || return 0
    printf '%-40s %8s %8s %8s  %s\n' "$1 / $2" "$(div "$(col "$1" 3)" "$(col "$2" 3)")" \
        "$(div "$(col "$1" 4)" "$(col "$2" 4)")" "$(div "${CPU_US[$1]:-}" "${CPU_US[$2]:-}")" "$(rounds_ratio "$1" "$2")"
}
echo
printf '%-40s %8s %8s %8s  %s\n' ratio req/s p99 "CPU/req" "req/s by round"
printf '%-40s %8s %8s %8s  %s\n' ---------------------------------------- -------- -------- -------- --------------
ratio_row keygate-localquota nginx-proxy
ratio_row keygate-localquota haproxy-proxy
ratio_row keygate-auto nginx-proxy
ratio_row keygate-auto keygate-localquota
ratio_row keygate-redis keygate-localquota
ratio_row keygate-redis nginx-lua-redis
ratio_row keygate-localquota bare-hyper-keys
ratio_row keygate-localquota nginx-proxy-keys

# The rounds' ratios as one figure with its spread (benches/interval.awk; the rounds
# are paired, both targets of a ratio run in each).
interval_row() { # A B
    [ -n "${IDX[$1]:-}" ] && [ -n "${IDX[$2]:-}" ] || return 0
    printf '%-40s %s\n' "$1 / $2" "$(rounds_ratio "$1" "$2" | awk -f "$ROOT/benches/interval.awk")"
}
echo
echo "per-round req/s ratio: geometric mean [95 % interval, Student's t over the log ratios]"
interval_row keygate-localquota nginx-proxy
interval_row keygate-localquota haproxy-proxy
interval_row keygate-auto nginx-proxy
interval_row keygate-auto keygate-localquota
interval_row keygate-redis keygate-localquota
interval_row keygate-redis nginx-lua-redis
interval_row keygate-localquota nginx-proxy-keys

echo "keygate-auto's workers after the run (sched_policy \"auto\"; 3 SCHED_BATCH, 0 ordinary): $(worker_policies "$KGB_PID" | tr '\n' ' ')"
n_kga="$(requests keygate-accesslog)"
echo "access lines written by keygate-accesslog: $(grep -c 'keygate::access' "$TMP/keygate-access.log" || true) (completed requests: $n_kga, plus warm-up)"

# --- Redis calls per request: the Redis targets really did their Redis work ------------
# wrk's completed count leaves out the (at most CONNS) requests in flight when each run
# stopped, which Redis did see; so a ratio a little above 1 is expected, below 1 is not.
per_req() { awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.3f", c / n; else print "-" }'; }
below_one() { awk -v c="$1" -v n="$2" 'BEGIN { exit !(n == 0 || c < 0.99 * n) }'; }
echo
n_kgr="$(requests keygate-redis)"
echo "Redis quota calls per completed request: keygate-redis EVALSHA/EVAL $(per_req $((evalsha1 - evalsha0)) "$n_kgr") ($((evalsha1 - evalsha0)) calls)${NGL_PID:+, nginx-lua-redis INCR $(per_req $((incr1 - incr0)) "$(requests nginx-lua-redis)") ($((incr1 - incr0)) calls)}"
if [ $((evalsha1 - evalsha0)) -eq 0 ] ||
    ! awk -v c=$((evalsha1 - evalsha0)) -v n="$n_kgr" 'BEGIN { exit !(n > 0 && c < 0.05 * n) }'; then
    warn "keygate-redis made no Redis quota calls, or 0.05 or more per request (leases should make about 1/64): its row is not a measurement of Redis mode (log: $TMP/keygate-redis.log)"
    [ "$rc" = 0 ] && rc=3
fi
if [ -n "$NGL_PID" ] && below_one $((incr1 - incr0)) "$(requests nginx-lua-redis)"; then
    warn "nginx-lua-redis made fewer INCR calls than it answered requests"
    [ "$rc" = 0 ] && rc=3
fi
if grep -qiE 'redis (unavailable|does not answer)' "$TMP/keygate-redis.log"; then
    warn "keygate-redis logged Redis failures (log: $TMP/keygate-redis.log):"
    grep -iE 'redis (unavailable|does not answer)' "$TMP/keygate-redis.log" | head -n 3 >&2
    [ "$rc" = 0 ] && rc=3
fi

echo
echo "CPU: utime+stime from /proc/PID/stat over the whole run (idle time while other targets ran included), CLK_TCK=$TCK; requests: wrk's completed count summed over rounds; the Redis targets' own rows leave out Redis' CPU (its row)"
echo "keygate: $NKEYS keys rotated (warm L1, TTL 30 s), 2 workers + 1 control thread; keygate-localquota: embedded SQLite store, local quota; keygate-redis: same + Redis L2 (TTL 60 s) and quota leased from Redis in blocks of up to 64 (one EVALSHA per lease), on_redis_error=deny; bare_hop: 2-worker multi-thread runtime, hyper-util legacy Client"
if [ -n "$NGL_PID" ]; then
    echo "anchors: nginx 2 workers, keep-alive upstream pool; haproxy 2 threads, http-reuse always; nginx-lua-redis: $NKEYS seeded keys rotated (per-worker lrucache, TTL 30 s), INCR+EXPIRE pipeline per request; one private in-memory Redis for both Redis targets"
else
    echo "anchors: not in this run ($ANCHORS_WHY)"
fi
echo "compare keygate-redis with nginx-lua-redis (same work), keygate-localquota with the bare hops; one interleaved run: quote ratios to direct / the bare hop, not absolute req/s (bench-anchors README)"
exit "$rc"
