#!/usr/bin/env bash
# The benchmark: release build, Redis and PostgreSQL running (scripts/services.sh), then
# `provisioner-lab bench` (simulator in-process, the daemon as a child process). Prints a table
# and writes bench-results/latest.json. Extra arguments go to `provisioner-lab bench` (see
# --help), e.g. `scripts/bench.sh --db sqlite --runs 1`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BENCH_POSTGRES_URL="${BENCH_POSTGRES_URL:-${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}}"
cargo build --release -p provisioner -p provisioner-lab --bin provisioner --bin provisioner-lab
# Run private copies: the daemon is spawned from a file, and a concurrent build into a shared
# target directory must not swap it mid-run.
mkdir -p bench-results
cp "${CARGO_TARGET_DIR:-target}/release/provisioner" bench-results/provisioner
cp "${CARGO_TARGET_DIR:-target}/release/provisioner-lab" bench-results/provisioner-lab
exec bench-results/provisioner-lab bench --daemon bench-results/provisioner "$@"
