#!/usr/bin/env bash
# Heap allocations per order-status request (the 304 path), a figure this machine's CPU noise
# cannot move: runs `provisioner-lab bench` (SQLite, a short order run, then the API runs) with
# scripts/alloc-count.c preloaded into the daemon, reads its counter 1 s and 3 s into the 304
# run, and divides by that run's request rate. Needs a C compiler.
#   bash scripts/bench-allocs.sh [path/to/provisioner]   (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
cargo build --release -p provisioner -p provisioner-lab --bin provisioner --bin provisioner-lab
target="${CARGO_TARGET_DIR:-target}/release"
out=bench-results/allocs
rm -rf "$out" && mkdir -p "$out"
cc -O2 -shared -fPIC -o "$out/alloc-count.so" scripts/alloc-count.c -ldl
cp "${1:-$target/provisioner}" "$out/provisioner"
cp "$target/provisioner-lab" "$out/provisioner-lab"
"$out/provisioner-lab" bench --daemon "$out/provisioner" --json "$out/bench.json" --db sqlite \
  --runs 1 --orders 200 --catchup-events 0 --steady-secs 1 --steady-rate 50 --api-secs 4 \
  --daemon-env "LD_PRELOAD=$PWD/$out/alloc-count.so" > "$out/bench.log" 2>&1 &
bench=$!
# The 304 run starts when the 200 run's line is printed.
until grep -q "API 200 run 1" "$out/bench.log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$out/bench.log"; exit 1; }
  sleep 0.05
done
pid=$(pgrep -f "$out/provisioner serve")
sleep 1; kill -USR2 "$pid"; sleep 2; kill -USR2 "$pid"
wait "$bench"
read -r first second < <(grep -h '^ALLOCS' "$out"/daemon-*.log | awk '{print $2}' | paste -sd' ')
rate=$(sed -nE 's/.*API 304 run 1: ([0-9]+) req\/s.*/\1/p' "$out/bench.log")
awk -v a="$first" -v b="$second" -v r="$rate" \
  'BEGIN { printf "allocations per 304 request: %.1f (%d allocations in 2 s at %d req/s)\n", (b - a) / (2 * r), b - a, r }'
