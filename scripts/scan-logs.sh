#!/usr/bin/env bash
# Scans every log a test run wrote (KEYGATE_TEST_LOG_DIR, or the directory given)
# for key material: anything shaped like a keygate key (<prefix>_<env>_ followed by
# 16+ base62 characters; a logged display prefix has 8). Fails on the first find,
# and also when the logs are too thin for the scan to mean anything.
set -euo pipefail
dir=${1:-${KEYGATE_TEST_LOG_DIR:?usage: scan-logs.sh DIR}}
shopt -s nullglob
files=("$dir"/*.log)
if [ ${#files[@]} -eq 0 ]; then
    echo "scan-logs: no logs in $dir" >&2
    exit 1
fi
lines=$(cat "${files[@]}" | wc -l)
access=$(cat "${files[@]}" | grep -c 'keygate::access' || true)
pattern='[a-z0-9]+_(live|test)_[0-9A-Za-z]{16,}'
# The pattern must catch a key in a JSON field and must not catch a display prefix.
grep -Eq "$pattern" <<<'{"fields":{"header":"Bearer kg_live_0123456789abcdefABCDEFGHIJKLMNOPQR12345"}}'
! grep -Eq "$pattern" <<<'{"fields":{"prefix":"kg_live_w39uIA1E"}}'
if found=$(grep -EHno "$pattern" "${files[@]}" | head -5) && [ -n "$found" ]; then
    echo "scan-logs: key material in the logs (shown cut to 20 characters):" >&2
    sed -E 's/^([^:]*:[0-9]+:).{0,0}(.{20}).*/\1 \2…/' <<<"$found" >&2
    exit 1
fi
if [ "$lines" -lt 1000 ] || [ "$access" -lt 100 ]; then
    echo "scan-logs: only $lines log lines ($access access lines) in $dir: the scan proves nothing" >&2
    exit 1
fi
echo "scan-logs: ${#files[@]} logs, $lines lines ($access access lines): no key material"
