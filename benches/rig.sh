# Shared set-up of benches/{ab,flood,footprint,idle,profile}.sh; source it after setting
# ROOT and NAME. It builds keygate and bench_upstream in release (plus EXAMPLES),
# starts the upstream on UP, picks free ports PX (proxy) and AD (admin), keeps
# temporary files in TMP, and stops every process in PIDS on exit. The caller
# writes $TMP/keygate.toml; `key ARGS...` then creates a key with the CLI and
# prints it.
# shellcheck source=benches/procstat.sh
source "$ROOT/benches/procstat.sh"
TMP="$(mktemp -d "/tmp/kg-$NAME.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
example_flags=()
for e in ${EXAMPLES:-}; do example_flags+=(--example "$e"); done
# BUILD=0 skips the build (the binaries in the target dir are used as they are).
[ "${BUILD:-1}" = 0 ] || (cd "$ROOT" && cargo build --release --bin keygate --example bench_upstream "${example_flags[@]}") >&2
T="${CARGO_TARGET_DIR:-$ROOT/target}/release"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); PX=$(port); AD=$(port)
ADDR="127.0.0.1:$UP" "$T/examples/bench_upstream" >"$TMP/up.log" 2>&1 & PIDS+=($!)
key() {
    RUST_LOG=warn "$T/keygate" keys create --config "$TMP/keygate.toml" "$@" --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

# The config of benches/ab.sh and benches/profile.sh: embedded SQLite store, local
# quota, 2 workers, access log off (RUST_LOG=warn), the items route of benches/load.sh.
items_config() { # PROXY_PORT ADMIN_PORT DB_FILE
    cat <<EOF
[proxy]
listen = "127.0.0.1:$1"
upstream = "http://127.0.0.1:$UP"
workers = 2

[admin]
listen = "127.0.0.1:$2"

[store]
url = "sqlite://$3"

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
}

# wrk -t1 -c64 for SECS against URL with the Lua SCRIPT (and its ARGS; SCRIPT "-":
# plain wrk, no script); prints "req/s p99ms requests" and fails on any non-2xx answer.
wrk_run() { # SECS SCRIPT URL [ARGS...]
    local secs=$1 script=$2 url=$3
    shift 3
    local with=(-s "$script")
    [ "$script" != - ] || with=()
    wrk -t1 -c64 -d"${secs}s" --latency "${with[@]}" "$url" -- "$@" |
        awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} /^ +99%/ {v=$2; if (v ~ /us$/) p=v/1000; else if (v ~ /ms$/) p=v+0; else p=v*1000}
             /Non-2xx/ {bad=$4} END {if (bad) {print "wrk: non-2xx responses" > "/dev/stderr"; exit 3}; printf "%s %.2f %s\n", r, p, n}'
}

# Prints the medians of a two-sided interleaved run and the ratios second/first:
# ROUNDS_FILE holds "round side req/s p99ms" lines; CPU ticks and requests per side.
ab_summary() { # ROUNDS_FILE SIDE1 TICKS1 REQS1 SIDE2 TICKS2 REQS2
    python3 - "$@" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
path, a, ticks_a, n_a, b, ticks_b, n_b, tck = sys.argv[1:9]
rows = [l.split() for l in open(path)]
med = lambda side, col: statistics.median(float(r[col]) for r in rows if r[1] == side)
us = {a: int(ticks_a) / int(tck) / int(n_a) * 1e6, b: int(ticks_b) / int(tck) / int(n_b) * 1e6}
w = max(4, len(f"{b}/{a}") + 1)
print()
print(f"{'':{w}} {'req/s (med)':>12} {'p99 ms (med)':>13} {'CPU µs/req':>11}")
for s in (a, b):
    print(f"{s:{w}} {med(s, 2):12.0f} {med(s, 3):13.2f} {us[s]:11.1f}")
print(f"{b + '/' + a:{w + 1}} {med(b, 2) / med(a, 2):11.3f}x {med(b, 3) / med(a, 3):12.3f}x {us[b] / us[a]:10.3f}x")
PY
}

# The per-round req/s ratios SIDE2/SIDE1 of a ROUNDS_FILE (as for ab_summary) as a
# geometric mean and its 95 % interval (benches/interval.awk).
round_interval() { # ROUNDS_FILE SIDE1 SIDE2
    awk -v a="$2" -v b="$3" '$2 == a {x[$1] = $3} $2 == b {y[$1] = $3}
        END {for (r in x) if (x[r] > 0 && y[r] > 0) printf "%f ", y[r] / x[r]}' "$1" |
        awk -f "$ROOT/benches/interval.awk"
}
