#!/usr/bin/env bash
# The main job on a fresh machine: train a supermask on the bundled MNIST digits, export it as a
# .smk file, and evaluate and run it with the runtime. Re-running starts over in runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p smk-trainer -p smk-runtime-cli
trainer=target/release/trainer
runtime=target/release/runtime
rm -rf runs/quickstart runs/quickstart.smk
# Edge-popup over frozen seeded signed-constant weights: only the mask is learned.
$trainer fit --model lenet-300-100 --method edge-popup --keep 0.5 --seed 0 --out runs/quickstart
$trainer export runs/quickstart --out runs/quickstart.smk
$trainer eval runs/quickstart
# The runtime runs the exported file: the same accuracy, no candle, no allocation per image.
$runtime inspect runs/quickstart.smk
$runtime verify runs/quickstart.smk
$runtime eval runs/quickstart.smk --images data/t10k-images-idx3-ubyte.gz --labels data/t10k-labels-idx1-ubyte.gz
$runtime infer runs/quickstart.smk data/t10k-images-idx3-ubyte.gz --index 0
