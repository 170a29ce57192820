#!/usr/bin/env bash
# The demo: simulator + daemon + sample orders, end to end. Starts Redis if none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_POSTGRES=0 source scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export RUST_LOG="${RUST_LOG:-warn}"
cargo run --release --quiet -- demo "$@"
