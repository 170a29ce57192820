#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests against the simulator over loopback,
# real Redis, SQLite and PostgreSQL. Starts what it needs (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/chromium.sh || true  # the dashboard browser test reports a missing Chromium
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
# The image test (tests/image.rs) compiles the binary from the Docker build context in a build
# directory of its own: it runs first and alone, so its compilation never starves the suite's
# timing-sensitive tests of CPU.
image_test=the_image_builds_from_its_context
status=0
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --test image --no-fail-fast "$@" || status=$?
  cargo nextest run --workspace --all-targets --no-fail-fast -E "not test($image_test)" "$@" || status=$?
else
  cargo test --test image --no-fail-fast "$@" || status=$?
  cargo test --workspace --all-targets --no-fail-fast "$@" -- --skip "$image_test" || status=$?
fi
exit "$status"
