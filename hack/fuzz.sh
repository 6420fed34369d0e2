#!/usr/bin/env bash
# Bounded fuzzing of the read service's input parsers (cargo fuzz, libFuzzer):
#   range_header   the `Range: bytes=...` parser and its resolution against a file size
#   path_resolver  the request-path confinement check
#   http_head      the HTTP/1.1 request-head parser and the response-head encoder
# cargo fuzz needs nightly flags; we only have stable, so RUSTC_BOOTSTRAP=1 unlocks them and
# --sanitizer none avoids the ASan runtime (the code under test is safe Rust).
# Env: FUZZ_SECONDS per target (default 30), FUZZ_TARGETS (default: all).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# The fuzz crate is its own workspace with its own target dir.
unset CARGO_TARGET_DIR
seconds=${FUZZ_SECONDS:-30}
for t in ${FUZZ_TARGETS:-range_header path_resolver http_head}; do
  echo "fuzz: $t for ${seconds}s" >&2
  cargo fuzz run --sanitizer none "$t" -- -max_total_time="$seconds" -print_final_stats=1
done
