#!/usr/bin/env bash
# The main job on a fresh machine: train a supermask on the bundled MNIST digits, export it as a
# .smk file, and evaluate it. Re-running starts over in runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p smk-trainer
trainer=target/release/trainer
rm -rf runs/quickstart runs/quickstart.smk
# Edge-popup over frozen seeded signed-constant weights: only the mask is learned.
$trainer fit --model lenet-300-100 --method edge-popup --keep 0.5 --seed 0 --out runs/quickstart
$trainer export runs/quickstart --out runs/quickstart.smk
$trainer eval runs/quickstart
# The runtime (runtime infer runs/quickstart.smk) arrives with its own issue.
