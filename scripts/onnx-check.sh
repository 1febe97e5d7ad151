#!/usr/bin/env bash
# Exports trained runs as ONNX (`trainer export --format onnx`) and checks each against the
# runtime on the bundled test digits: the onnx checker must pass and ONNX Runtime must give the
# same top-1 prediction as `runtime eval` on the .smk export for every image. Covers every ONNX
# operator the exporter writes: the quickstart's LeNet-300-100 (Gemm), a LeNet-5 (Conv, MaxPool)
# and a ResNet-8 (BatchNormalization, Add, AveragePool), one short epoch each.
#   scripts/onnx-check.sh          (after scripts/quickstart.sh, which leaves runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore numpy onnx onnxruntime
cargo build --release -q -p smk-trainer -p smk-runtime-cli
trainer=target/release/trainer
runtime=target/release/runtime
images=data/t10k-images-idx3-ubyte.gz
labels=data/t10k-labels-idx1-ubyte.gz
out=runs/onnx-check
rm -rf "$out"
mkdir -p "$out"

$trainer fit --model lenet-5 --method edge-popup --keep 0.5 --epochs 1 --seed 0 --out "$out/lenet-5" --quiet
$trainer fit --model resnet-8 --method edge-popup --keep 0.5 --epochs 1 --seed 0 --out "$out/resnet-8" --quiet
for run in runs/quickstart "$out/lenet-5" "$out/resnet-8"; do
    name="$out/$(basename "$run")"
    $trainer export "$run" --out "$name.smk"
    $trainer export "$run" --out "$name.onnx" --format onnx
    $runtime eval "$name.smk" --images "$images" --labels "$labels" --predictions "$name.predictions.txt"
    python3 scripts/onnx_parity.py "$name.onnx" "$images" "$labels" "$name.predictions.txt" --require-ort
done
echo "onnx exports: ok"
