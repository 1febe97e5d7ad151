#!/usr/bin/env bash
# Trains the runs behind the trainer's results table on the bundled digits (LeNet-300-100, CPU)
# and prints one line per run: method, keep, test accuracy, seconds per epoch.
#   scripts/trainer-table.sh [RUNS_DIR] [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/table}
epochs=${2:-20}
cargo build -q --release -p smk-trainer
t=target/release/trainer
mkdir -p "$runs"
row() { # name, then fit flags
  local name=$1; shift
  [ -f "$runs/$name/checkpoint.safetensors" ] || $t fit --quiet --out "$runs/$name" --epochs "$epochs" "$@" >/dev/null
  python3 - "$runs/$name" "$name" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
last = lines[-1]
secs = sum(l["seconds"] for l in lines) / len(lines)
print(f"{sys.argv[2]:<28} kept {last['overall_density']:.3f}  test {100*last['test_accuracy']:.2f}%  {secs:.2f} s/epoch")
PY
}
row dense --method dense
for k in 0.5 0.3 0.1; do
  row edge-popup-$k --method edge-popup --keep $k
  row block4x4-$k --method block --block 4x4 --keep $k
  row movement-hard-$k --method movement-hard --keep $k --teacher "$runs/dense"
done
row movement-soft --method movement-soft --teacher "$runs/dense"
# Transfer: dense on digits 0-4, then digits 5-9 by piggyback (mask + head) or dense fine-tuning.
row dense-digits-0-4 --method dense --task split:2 --task-index 0
row piggyback-digits-5-9 --method piggyback --init-from "$runs/dense-digits-0-4" --task split:2 --task-index 1 --train-head
row finetune-digits-5-9 --method dense --init-from "$runs/dense-digits-0-4" --task split:2 --task-index 1
