#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s each; FUZZ_SECONDS to change),
# growing the corpus kept in fuzz/corpus/. Installs cargo-fuzz when missing.
# cargo-fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${FUZZ_SECONDS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in cgroups_path slice config; do
  echo "== fuzz $t for ${SECS}s"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=4096
done
