#!/usr/bin/env bash
# Trains the de-raining baselines of eval/reports/derain-baselines.md on this machine: `unet tiny`
# and `vit tiny`, each for at most 10 minutes of CPU time, on the heavy-rain dataset of the
# bundled footage (datasets/recipes/samples-heavy.sh), then scores each on the held-out test split.
#   tools/derain_baselines.sh [MINUTES]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
tools/setup.sh
cargo build --release --locked
rc=target/release/raincheck
ds=datasets/generated/samples-heavy
[ -f "$ds/dataset.toml" ] || datasets/recipes/samples-heavy.sh "$ds"
runs=models/runs/baselines
mkdir -p "$runs"
train() { # arch steps lr extra...
  local arch=$1 steps=$2 lr=$3; shift 3
  rm -rf "$runs/$arch-tiny" "out/baselines/$arch-tiny"
  "$rc" train derain --arch "$arch" --preset tiny --data "$ds" --out "$runs/$arch-tiny" \
    --steps "$steps" --minutes "$minutes" --lr "$lr" --crop 128 --batch 8 --val-every 500 \
    --val-limit 0 --seed 0 "$@"
  "$rc" eval --model "$runs/$arch-tiny" --data "$ds" --split test --report "out/baselines/$arch-tiny"
}
train unet 9000 2e-3
train vit 4000 1e-3 --warmup 100
