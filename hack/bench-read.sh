#!/usr/bin/env bash
# Read-path benchmarks, ours beside the anchor (fio 3.x / nginx) on the same file in the same run,
# at equal total queue depth and thread count, each anchor at its best settings. Not a test.
# Prints the commit and the machine, then per case the load average before and after, every
# round's figures and ratios (order alternates between rounds), and one summary line per metric
#   <case>/<metric>: ours=<x> anchor=<y> ratio=<x/y> rounds=[r1, r2, ...] spread=<min>-<max>
# for IOPS (requests/s over HTTP, MiB/s for 1 MiB ranges), CPU µs per I/O (or per MiB) and, over
# HTTP, p99 latency from `wrk --latency`.
#
# Env: BENCH_DIR (default /var/tmp/ringmaster-bench, must support O_DIRECT), BENCH_SIZE_MB (1024),
#      BENCH_SECONDS (4 per run), BENCH_ROUNDS (2), BENCH_CASES (space-separated subset),
#      BENCH_HTTP_THREADS (2: `serve --runtime-threads` and nginx `worker_processes`),
#      BENCH_OUT (results file), BENCH_BIN (a prebuilt ringmaster-agent instead of building one;
#      the printed commit is then the checkout's, so say which build it was).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
for tool in fio nginx wrk python3; do
  command -v "$tool" >/dev/null || { echo "bench-read: $tool missing: run hack/deps.sh (hack/apt-packages.txt)" >&2; exit 1; }
done

if [[ -z ${BENCH_BIN:-} ]]; then
  cargo build --release -q -p ringmaster-agent --bin ringmaster-agent
  TARGET=${CARGO_TARGET_DIR:-$PWD/target}
  [[ $TARGET = /* ]] || TARGET=$PWD/$TARGET
  BENCH_BIN=$TARGET/release/ringmaster-agent
fi
export BENCH_BIN
export BENCH_DIR=${BENCH_DIR:-/var/tmp/ringmaster-bench}
export BENCH_SIZE_MB=${BENCH_SIZE_MB:-1024}
mkdir -p "$BENCH_DIR/data"
FILE=$BENCH_DIR/data/data.bin
if [[ ! -f $FILE || $(stat -c %s "$FILE") -ne $((BENCH_SIZE_MB << 20)) ]]; then
  echo "bench-read: writing ${BENCH_SIZE_MB} MiB test file $FILE" >&2
  dd if=/dev/urandom of="$FILE" bs=1M count="$BENCH_SIZE_MB" oflag=direct status=none
fi
export BENCH_FILE=$FILE
BENCH_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || BENCH_COMMIT+="-dirty"
export BENCH_COMMIT
exec python3 hack/bench_read.py
