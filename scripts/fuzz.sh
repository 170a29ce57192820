#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a bounded time and exits non-zero if any of them
# crashed (panic, sanitizer report, timeout, out-of-memory).
#
#   bash scripts/fuzz.sh              # 60 s per target
#   bash scripts/fuzz.sh 300          # 300 s per target
#   bash scripts/fuzz.sh 30 sf_error  # only the named targets
#
# cargo-fuzz passes nightly-only flags (-Z sanitizer=address); on a stable toolchain
# RUSTC_BOOTSTRAP=1 lets rustc accept them. cargo-fuzz itself is installed from crates.io when
# missing. Findings land in fuzz/artifacts/<target>/; reproduce one with
# `cargo fuzz run <target> fuzz/artifacts/<target>/<file>`, then turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-60}"
[ "$#" -gt 0 ] && shift
case "$secs" in
  ''|*[!0-9]*) echo "fuzz.sh: seconds per target must be a whole number, got '$secs'" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${#targets[@]} fuzz targets"
cargo fuzz build -O

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  echo "== $t: ${secs} s"
  # -timeout: one input taking > 10 s counts as a hang; -rss_limit_mb: a leak or a huge
  # allocation counts as a crash.
  if ! cargo fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      2>"artifacts/$t/last-run.log"; then
    failed+=("$t")
    echo "!! $t crashed; log: fuzz/artifacts/$t/last-run.log" >&2
    tail -n 40 "artifacts/$t/last-run.log" >&2
  else
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "artifacts/$t/last-run.log" || true
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${secs} s each without a crash"
