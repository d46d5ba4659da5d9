#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against real loopback
# upstreams and a real SQLite store, and the binary end to end.
# Needs only the Rust toolchain today; later suites that need Redis or PostgreSQL
# start them here. With CI=true a missing service is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
cargo test --doc "$@"
