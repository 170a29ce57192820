#!/usr/bin/env bash
# The benchmark: release build, Redis and PostgreSQL running (scripts/services.sh), then
# `provisioner bench` (simulator in-process, daemon as a child process). Prints a table and
# writes bench-results/latest.json. Extra arguments go to `provisioner bench` (see --help),
# e.g. `scripts/bench.sh --db sqlite --runs 1`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BENCH_POSTGRES_URL="${BENCH_POSTGRES_URL:-${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}}"
cargo build --release --bin provisioner
# Run a private copy: the daemon is spawned from the same file, and a concurrent build into a
# shared target directory must not swap it mid-run.
mkdir -p bench-results
cp "${CARGO_TARGET_DIR:-target}/release/provisioner" bench-results/provisioner
exec bench-results/provisioner bench "$@"
