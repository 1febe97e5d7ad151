#!/usr/bin/env bash
# Fuzzes the .smk parser for N seconds (default 600) with cargo-fuzz (libFuzzer).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
secs=${1:-600}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p format/fuzz/corpus/parse
cargo run -q -p smk-format --example write_corpus -- format/fuzz/corpus/parse
cd format
RUSTC_BOOTSTRAP=1 cargo fuzz run parse -- -max_total_time="$secs" -max_len=65536 2>&1 | tail -n 25
