#!/usr/bin/env bash
# The GPU check of issue 6, in two halves:
#
#   scripts/gpu-check.sh build   here (no GPU needed): builds the CUDA binaries with the toolkit
#                                of scripts/cuda-toolkit.sh and puts them, stripped and gzipped, in
#                                gpu-check/bin.tar.gz (about 40 MB; git ignores it, the device tool
#                                carries it).
#   scripts/gpu-check.sh run     on the GPU machine, from the repository root, with no network
#                                and no Rust toolchain: prints the GPU, trains on CUDA against the
#                                CPU, runs the runtime's GPU conformance test, and times the GPU
#                                kernels. About 5 minutes on an H100. Logs go to $OUT (or
#                                gpu-check/out), a table to the end of the output.
#
# With the device tool: run(command="scripts/gpu-check.sh run", carry=["gpu-check"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."
here="gpu-check"

build() {
  scripts/cuda-toolkit.sh
  # shellcheck disable=SC1090
  source <(scripts/cuda-toolkit.sh --env)
  export CARGO_TARGET_DIR=target/cuda
  # One package set and one feature set for every command, so that candle builds once.
  local pkgs=(-p smk-trainer -p smk-runtime-cli -p smk-runtime-cuda)
  local features=smk-trainer/nccl,smk-runtime-cli/cuda,smk-runtime-cuda/cublas
  cargo build --release "${pkgs[@]}" --features "$features" --bins --examples
  local tests trainer_tests
  test_binary() {  # the executable of test target $1
    cargo test --release "${pkgs[@]}" --features "$features" --test "$1" --no-run --message-format=json |
      python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
  }
  tests=$(test_binary gpu)
  trainer_tests=$(test_binary cuda)
  rm -rf "$here" && mkdir -p "$here/bin"
  cp target/cuda/release/trainer "$here/bin/trainer"
  cp target/cuda/release/runtime "$here/bin/runtime"
  cp target/cuda/release/examples/gpu_bench "$here/bin/gpu_bench"
  cp "$tests" "$here/bin/gpu_tests"
  cp "$trainer_tests" "$here/bin/trainer_tests"
  strip "$here"/bin/*
  # The device tool carries at most 64 MiB: the binaries (about 145 MB, most of it candle's
  # kernels) travel gzipped, about 40 MB, and `run` unpacks them.
  tar -C "$here" -czf "$here/bin.tar.gz" bin
  rm -rf "$here/bin"
  du -sh "$here"
  echo "ready: device run with command=\"scripts/gpu-check.sh run\", carry=[\"$here\"]"
}

run() {
  local out="${OUT:-$here/out}"
  mkdir -p "$out"
  if [[ ! -d "$here/bin" && -f "$here/bin.tar.gz" ]]; then
    tar -C "$here" -xzf "$here/bin.tar.gz"
  fi
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu-check: no nvidia-smi here: this half runs on the GPU machine" >&2
    exit 1
  fi
  for b in trainer runtime gpu_bench gpu_tests trainer_tests; do
    [[ -x "$here/bin/$b" ]] || { echo "gpu-check: $here/bin/$b is missing: run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
  done
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.csv"

  # The CUDA libraries (cuBLAS, cuRAND, cudart, NVRTC) that candle and the runtime load: the
  # driver comes with the machine, the rest from a system CUDA or PyTorch's wheels.
  local lib=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 \
    $(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null); do
    if [[ -e "$d/libcublas.so.13" ]]; then lib="$d"; break; fi
  done
  if [[ -z "$lib" ]]; then
    lib=$(dirname "$(timeout 60 find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -n 1)" 2>/dev/null || true)
  fi
  [[ -n "$lib" && -e "$lib/libcublas.so.13" ]] || { echo "gpu-check: libcublas.so.13 not found" >&2; exit 1; }
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "CUDA libraries from $lib"
  # NCCL (the trainer links it for --devices): a system NCCL, or PyTorch's nvidia-nccl wheel.
  if ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2 && [[ ! -e "$lib/libnccl.so.2" ]]; then
    local nccl
    nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null ||
      dirname "$(timeout 60 find / -name 'libnccl.so.2' -not -path '*/proc/*' 2>/dev/null | head -n 1)" 2>/dev/null || true)
    [[ -n "$nccl" && -e "$nccl/libnccl.so.2" ]] || { echo "gpu-check: libnccl.so.2 not found" >&2; exit 1; }
    export LD_LIBRARY_PATH="$nccl:$LD_LIBRARY_PATH"
    echo "NCCL from $nccl"
  fi

  echo "== runtime: GPU against the CPU runtime =="
  SMK_REQUIRE_GPU=1 "$here/bin/gpu_tests" --nocapture 2>&1 | tee "$out/gpu_tests.log"

  echo "== trainer: CPU against CUDA per method, top-k, bf16, one rank through NCCL =="
  SMK_REQUIRE_GPU=1 "$here/bin/trainer_tests" --test-threads=1 2>&1 | tee "$out/trainer_tests.log"

  echo "== trainer: 3 epochs of edge-popup, CPU and CUDA, one seed =="
  local acc_cpu acc_gpu
  for dev in cpu cuda; do
    rm -rf "$out/fit-$dev"
    /usr/bin/time -f "$dev: %e s" "$here/bin/trainer" fit --device "$dev" --method edge-popup --epochs 3 --seed 1 \
      --out "$out/fit-$dev" --quiet 2>&1 | tee "$out/fit-$dev.log"
  done
  acc_cpu=$(grep -o 'test accuracy [0-9.]*%' "$out/fit-cpu.log" | tail -n 1)
  acc_gpu=$(grep -o 'test accuracy [0-9.]*%' "$out/fit-cuda.log" | tail -n 1)

  echo "== trainer: 1 epoch in bf16 frozen weights, and data parallel over every GPU =="
  "$here/bin/trainer" fit --device cuda --dtype bf16 --method edge-popup --epochs 1 --seed 1 \
    --out "$out/fit-bf16" --quiet 2>&1 | tee "$out/fit-bf16.log"
  local gpus
  gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  "$here/bin/trainer" fit --devices "$gpus" --method edge-popup --epochs 1 --seed 1 \
    --out "$out/fit-ranks" --quiet 2>&1 | tee "$out/fit-ranks.log"

  echo "== runtime: the CUDA run's export, evaluated on the CPU and the GPU =="
  "$here/bin/trainer" export "$out/fit-cuda" --out "$out/cuda.smk"
  for dev in cpu cuda; do
    "$here/bin/runtime" eval "$out/cuda.smk" --images data/t10k-images-idx3-ubyte.gz \
      --labels data/t10k-labels-idx1-ubyte.gz --batch 256 --device "$dev" | tee "$out/eval-$dev.log"
    "$here/bin/runtime" eval "$out/cuda.smk" --images data/t10k-images-idx3-ubyte.gz \
      --labels data/t10k-labels-idx1-ubyte.gz --batch 1 --limit 500 --device "$dev" | tail -n 1
  done

  echo "== runtime kernels: 8 × 4096² layers =="
  "$here/bin/gpu_bench" 50 | tee "$out/bench.md"

  echo
  echo "trainer: CPU $acc_cpu, CUDA $acc_gpu"
  echo "runtime eval: CPU $(head -n 1 "$out/eval-cpu.log"), CUDA $(head -n 1 "$out/eval-cuda.log")"
  grep -E "agree|test result" "$out/gpu_tests.log" | tail -n 2
  cat "$out/bench.md"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/gpu-check.sh build | run" >&2; exit 2 ;;
esac
