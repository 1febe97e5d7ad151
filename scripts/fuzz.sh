#!/usr/bin/env bash
# Fuzzes the .smk parser with cargo-fuzz (libFuzzer): scripts/fuzz.sh [SECONDS] [TARGET]
# Targets: parse (raw bytes) and parse_fixed_crc (checksums recomputed first, so mutations reach
# the structural checks). Default: 600 seconds of parse_fixed_crc.
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
secs=${1:-600}
target=${2:-parse_fixed_crc}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p "format/fuzz/corpus/$target"
cargo run -q -p smk-format --example write_corpus -- "format/fuzz/corpus/$target"
cd format
RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$secs" -max_len=65536 2>&1 | tail -n 25
