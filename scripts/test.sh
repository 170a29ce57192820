#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against the simulator over loopback,
# real Redis, SQLite and PostgreSQL. Starts what it needs (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/chromium.sh || true  # the dashboard browser test reports a missing Chromium
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  cargo test --workspace --all-targets --no-fail-fast "$@"
fi
