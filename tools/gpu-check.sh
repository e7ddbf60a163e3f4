#!/usr/bin/env bash
# The CUDA check of `raincheck stream`, in two halves:
#
#   tools/gpu-check.sh prepare [--no-video]
#       On any Debian machine with crates.io and PyPI (no GPU needed, ~20 min on 2 cores): builds
#       the release binary with `--features cuda` (nvcc from PyPI wheels, tools/cuda-env.sh;
#       --no-video leaves OpenCV out, for GPU machines without libopencv), strips and packs it,
#       makes one run folder per architecture and a few PNG frames, all under target/gpu-check/
#       (about 34 MiB with the xz-packed binary: under the device tool's 64 MiB carry limit).
#       Measured here: 14.6 min on 2 cores (the CUDA build is most of it).
#
#   tools/gpu-check.sh run [--device cuda:0] [--frames N] [--dtypes "f32 f16 bf16"]
#       On the GPU machine, needing neither cargo nor network: the NVIDIA driver, the CUDA 13
#       runtime and cuBLAS libraries (found on the usual paths or LD_LIBRARY_PATH), python3. For
#       each architecture: GPU output against CPU output on 4 frames, for f32, f16 and bf16 (max
#       and mean absolute difference in 8-bit levels, tools/png_diff.py); then `raincheck stream`
#       timed on the bundled clip resized to 1280x720, file mode, for each architecture and dtype.
#       Results go to $OUT (the device tool's folder) or target/gpu-check/results: one stats JSON
#       per run, parity.json, and the table lines for eval/reports/benchmarks.md on stdout.
#
# Targets (H100, 1280x720, end to end): unet tiny >= 300 frames/s, vit tiny >= 60 frames/s.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check
mode=${1:-}
shift || true

prepare() {
  local features=(--features cuda)
  if [ "${1:-}" = --no-video ]; then features=(--no-default-features --features cuda); fi
  tools/setup.sh
  mkdir -p "$dir"
  # A CPU binary makes the run folders and frames (the CUDA one needs a driver to start).
  cargo build --release --quiet
  local rc=target/release/raincheck
  tools/untrained_runs.sh "$rc" "$dir/runs" "unet:tiny vit:tiny prenet:tiny unet:base vit:base"
  [ -d "$dir/frames" ] ||
    "$rc" --quiet frames datasets/samples/video/solid_white_right.mp4 --out "$dir/frames" \
      --every 10 --max-frames 8 >/dev/null
  # The CUDA binary, in its own target folder so the CPU build above stays.
  (
    source tools/cuda-env.sh
    CARGO_TARGET_DIR=target/cuda cargo build --release --locked "${features[@]}" --bin raincheck
  )
  strip -o "$dir/raincheck" target/cuda/release/raincheck
  # The PTX ISA of candle's embedded kernels: the driver must be new enough to JIT it.
  grep -aoE -m1 '\.version [0-9]+\.[0-9]+' "$dir/raincheck" | cut -d' ' -f2 >"$dir/ptx-isa.txt" || true
  echo "PTX ISA of the kernels: $(cat "$dir/ptx-isa.txt")" >&2
  xz -T0 -6 -f "$dir/raincheck"
  du -sh "$dir"
  echo "carry $dir to the GPU machine and run: tools/gpu-check.sh run" >&2
}

find_cuda_libs() {
  local d extra=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/lib/x86_64-linux-gnu /opt/conda/lib; do
    [ -e "$d/libcublas.so.13" ] && extra="$extra:$d"
  done
  for d in $(python3 -c 'import glob, site; print(" ".join(glob.glob(p + "/nvidia/cu13/lib") for p in site.getsitepackages()))' 2>/dev/null); do
    extra="$extra:$d"
  done
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$extra"
}

run() {
  local device=cuda:0 frames=221 dtypes="f32 f16 bf16"
  while [ $# -gt 0 ]; do
    case "$1" in
      --dtypes) dtypes=$2; shift 2 ;;
      --device) device=$2; shift 2 ;;
      --frames) frames=$2; shift 2 ;;
      *) echo "unknown option $1" >&2; exit 2 ;;
    esac
  done
  local out=${OUT:-$dir/results}
  mkdir -p "$out"
  local rc="$dir/raincheck"
  [ -x "$rc" ] || { [ -f "$rc.xz" ] && xz -dkf "$rc.xz"; }
  [ -x "$rc" ] || { echo "no $rc: run 'tools/gpu-check.sh prepare' first" >&2; exit 1; }
  find_cuda_libs
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  # PTX ISA 9.N needs a CUDA 13.N driver or newer (8.x: CUDA 12).
  local drv isa
  drv=$(nvidia-smi 2>/dev/null | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | cut -d' ' -f3 || true)
  isa=$(cat "$dir/ptx-isa.txt" 2>/dev/null || grep -aoE -m1 '\.version [0-9]+\.[0-9]+' "$rc" | cut -d' ' -f2 || true)
  echo "driver CUDA version: ${drv:-unknown}; PTX ISA of the binary: ${isa:-unknown}"
  if [ -n "$drv" ] && [ -n "$isa" ] && [ "${isa%%.*}" -ge 9 ] && [ "${drv%%.*}" -eq 13 ] &&
    [ "${isa#*.}" -gt "${drv#*.}" ]; then
    echo "the driver (CUDA $drv) cannot JIT PTX ISA $isa: build with CUDA 13.${drv#*.} or older (tools/cuda-env.sh, RAINCHECK_CUDA_TOOLKIT)" >&2
    exit 1
  fi
  if ldd "$rc" | grep "not found"; then
    echo "the binary's libraries above are missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
    exit 1
  fi
  local input=datasets/samples/video/solid_white_right.mp4
  if ! "$rc" --quiet stream "$input" --model "$dir/runs/unet-tiny" --max-frames 1 >/dev/null 2>&1; then
    echo "this binary cannot decode video (built --no-video?): timing on $dir/frames" >&2
    input=$dir/frames
  fi
  # Parity: the same 4 frames through the CPU and the GPU.
  local parity="{"
  for run in "$dir"/runs/*; do
    local name; name=$(basename "$run")
    "$rc" --quiet stream "$dir/frames" --model "$run" --device cpu --max-frames 4 \
      --frames-dir "$out/frames/$name-cpu" >/dev/null
    for dtype in $dtypes; do
      "$rc" --quiet stream "$dir/frames" --model "$run" --device "$device" --dtype "$dtype" \
        --max-frames 4 --frames-dir "$out/frames/$name-$dtype" >/dev/null
      local d; d=$(python3 tools/png_diff.py "$out/frames/$name-cpu" "$out/frames/$name-$dtype")
      echo "parity $name $dtype vs cpu f32: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("max %d/255, mean %.3f/255" % (d["max"], d["mean"]))' "$d")"
      parity="$parity\"$name/$dtype\": $d,"
    done
  done
  echo "${parity%,}}" >"$out/parity.json"
  # Timing: file mode (every frame), 1280x720, no sinks but the stats.
  local stats=()
  for run in "$dir"/runs/*; do
    local name; name=$(basename "$run")
    for dtype in $dtypes; do
      local json="$out/$name-$dtype.json"
      "$rc" --quiet stream "$input" --model "$run" --device "$device" --dtype "$dtype" \
        --resize 1280x720 --every-frame --max-frames "$frames" --stats-json "$json" >/dev/null
      stats+=("\"$json\"")
    done
  done
  local machine; machine="$(nproc) cores"
  if command -v nvidia-smi >/dev/null; then
    machine="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $machine"
  fi
  python3 tools/bench_table.py stream \
    "{\"command\": \"tools/gpu-check.sh run\", \"stats\": [$(IFS=,; echo "${stats[*]}")]}" "$machine"
}

case "$mode" in
  prepare) prepare "$@" ;;
  run) run "$@" ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
