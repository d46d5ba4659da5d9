#!/usr/bin/env bash
# Fuzzes keygate's parsers with cargo-fuzz (libFuzzer): parse_key,
# extract_credential, match_route, parse_config, h1_framing. The test command runs it as a
# bounded smoke run; run it longer on demand:
#
#   scripts/fuzz.sh                      # FUZZ_SECONDS=5 per target (smoke)
#   FUZZ_SECONDS=600 scripts/fuzz.sh match_route
#
# The committed seeds in fuzz/corpus/TARGET are read, never written: what the
# fuzzer finds goes to a temporary corpus, and a crash's input is kept in
# fuzz/artifacts/TARGET/ and fails the run. Installs cargo-fuzz when missing;
# works on stable Rust (-s none: no sanitizer instrumentation).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-5}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse_key extract_credential match_route parse_config h1_framing)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz >&2
fi

tmp=$(mktemp -d /tmp/keygate-fuzz.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cargo fuzz build -s none >&2
for t in "${targets[@]}"; do
    mkdir -p "$tmp/$t" "fuzz/artifacts/$t"
    log="$tmp/$t.log"
    if ! cargo fuzz run -s none "$t" "$tmp/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "fuzz.sh: $t: ${runs:-?} executions in ${seconds}s, no crash"
done
