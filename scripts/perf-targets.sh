#!/usr/bin/env bash
# The side-by-side table of docs/PERF.md: each spec over 8 stacked 4096×4096 layers (512 MB of
# dense f32, beyond the last-level cache), the masked model, the dense model and a streaming
# read interleaved round by round. Prints one markdown row per spec.
# Usage: scripts/perf-targets.sh [seconds per spec, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-2}"
cargo build --release -q -p smk-runtime-cli
specs=(
  "weights=f32 1"
  "mask=element,density=1.0 1"
  "mask=block16x16,density=0.1 1"
  "mask=block16x16,density=0.25 1"
  "mask=block16x16,density=0.1,layout=tiled 1"
  "mask=block4x4,density=0.1 1"
  "mask=element,density=0.5,weights=seeded 1"
  "mask=block16x16,density=0.1,weights=seeded 1"
  "mask=block16x16,density=0.1 64"
  "mask=element,density=1.0 64"
)
echo "| SPEC | batch | masked ms | dense ms | speedup | read GB/s | dense ÷ read time |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for entry in "${specs[@]}"; do
  read -r spec batch <<<"$entry"
  target/release/runtime bench --synthetic "linear:4096x4096x8,$spec" --batch "$batch" \
    --compare-dense --seconds "$seconds" --json 2>/dev/null |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
spec, batch = sys.argv[1], sys.argv[2]
cells = (r["median_ms"], r["dense_median_ms"], r["speedup"], r["bandwidth_gbs"], r["dense_over_roofline"])
print("| `%s` | %s | %.2f | %.2f | **%.2f×** | %.1f | %.2f× |" % ((spec, batch) + cells))
' "$spec" "$batch"
done
