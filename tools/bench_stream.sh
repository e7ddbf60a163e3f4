#!/usr/bin/env bash
# Streams the bundled 960x540 clip through each de-rainer and prints the lines for
# eval/reports/benchmarks.md (throughput end to end, model and end-to-end latency percentiles).
# Weights are untrained (one training step, to get a real run folder): speed does not depend on
# them.
#   tools/bench_stream.sh [--device cpu|cuda:0] [--dtype f32|f16|bf16] [--frames N]
#                         [--models "unet:tiny vit:tiny ..."] [--bin PATH/TO/raincheck]
# With --bin no cargo is needed (a GPU machine may have no crates registry).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu dtype=f32 frames=120 models="unet:tiny vit:tiny prenet:tiny unet:base vit:base" rc=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --bin) rc=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$rc" ]; then
  tools/setup.sh
  cargo build --release --quiet
  rc=target/release/raincheck
fi
work=target/bench-stream
mkdir -p "$work/runs"
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "$device" != cpu ] && command -v nvidia-smi >/dev/null; then
  machine="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $machine"
fi
tools/untrained_runs.sh "$rc" "$work/runs" "$models"
stats=()
for m in $models; do
  arch=${m%%:*} preset=${m##*:}
  run="$work/runs/$arch-$preset"
  json="$work/$arch-$preset-$device-$dtype.json"
  "$rc" --quiet stream datasets/samples/video/solid_white_right.mp4 --model "$run" \
    --device "$device" --dtype "$dtype" --every-frame --max-frames "$frames" \
    --stats-json "$json" >/dev/null
  stats+=("\"$json\"")
done
list=$(IFS=,; echo "${stats[*]}")
python3 tools/bench_table.py stream "{\"stats\": [$list]}" "$machine"
