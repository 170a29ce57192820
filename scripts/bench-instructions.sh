#!/usr/bin/env bash
# User-space instructions per Order, counted by valgrind's callgrind: a figure a shared
# machine's CPU noise cannot move (the same binary and inputs give nearly the same count).
# Runs `provisioner-lab bench` with the daemon under callgrind: the steady run (5 Orders), then
# a burst of ORDERS (default 300) at SF 100 ms / WHMCS 300 ms, no order-status API runs; prints
# the instructions per Order and the functions that ran the most of them. The kernel's share
# (syscalls, wake-ups) is not counted: pair the figure with syscall counts or CPU time.
#   bash scripts/bench-instructions.sh [path/to/provisioner] [sqlite|postgres]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
command -v valgrind >/dev/null || apt_install valgrind
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BENCH_POSTGRES_URL="${BENCH_POSTGRES_URL:-${TEST_POSTGRES_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}}"
orders="${ORDERS:-300}"
steady_secs=1 steady_rate=5
db="${2:-sqlite}"
cargo build --release -p provisioner -p provisioner-lab --bin provisioner --bin provisioner-lab
target="${CARGO_TARGET_DIR:-target}/release"
out="$PWD/bench-results/instructions"
rm -rf "$out" && mkdir -p "$out"
cp "${1:-$target/provisioner}" "$out/provisioner"
cp "$target/provisioner-lab" "$out/provisioner-lab"
# The benchmark starts the daemon with an environment of its own: the wrapper names every path.
cat > "$out/daemon" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p" --dump-instr=no \\
  "$out/provisioner" "\$@"
EOF
chmod +x "$out/daemon"
"$out/provisioner-lab" bench --daemon "$out/daemon" --json "$out/bench.json" --db "$db" \
  --runs 1 --orders "$orders" --catchup-events 0 --api-secs 0 \
  --steady-secs "$steady_secs" --steady-rate "$steady_rate" \
  --sf-latency 100ms --whmcs-latency 300ms > "$out/bench.log" 2>&1 || { cat "$out/bench.log"; exit 1; }
profile=$(ls "$out"/callgrind.out.* | head -1)
callgrind_annotate "$profile" > "$out/annotate.txt" 2>/dev/null
total=$(sed -nE 's/^ *([0-9,]+) .*PROGRAM TOTALS.*/\1/p' "$out/annotate.txt" | tr -d ,)
played=$((orders + steady_secs * steady_rate))
awk -v t="$total" -v n="$played" -v db="$db" \
  'BEGIN { printf "%s ledger: %.0f instructions per Order (%d Orders, start-up and idle polling included)\n", db, t / n, n }'
echo "functions that ran the most instructions themselves ($out/annotate.txt has them all):"
sed -n '/^Ir *file:function/,$p' "$out/annotate.txt" | sed -n '3,17p' \
  | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##' | cut -c1-150
