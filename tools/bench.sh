#!/usr/bin/env bash
# Runs raincheck's benchmarks and their peers on this machine in one run, and prints the lines
# for eval/reports/benchmarks.md (medians and ratios).
#   tools/bench.sh            all benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

# Peers run from a local virtual environment (.venv, git-ignored).
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || { apt-get install -y -qq python3-venv >&2 && python3 -m venv .venv; }
fi
.venv/bin/pip install -q "albumentations==2.0.8" "scikit-image==0.26.0" pillow >&2

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# 1. The rain renderer (criterion) and albumentations' RandomRain, same frame, same size.
cargo bench --bench rain >&2
peer_json=$(.venv/bin/python tools/bench_rain_albumentations.py --frames 200)
python3 tools/bench_table.py rain "$peer_json" "$machine"

# 2. Metrics (criterion) and scikit-image on the same 1280x720 pair.
cargo bench --bench metrics >&2
peer_json=$(.venv/bin/python tools/bench_metrics_skimage.py target/bench-inputs/metrics_pred.png target/bench-inputs/metrics_target.png --reps 20)
python3 tools/bench_table.py metrics "$peer_json" "$machine"

# 3. De-rainers (criterion) and their PyTorch twins, all cores for both.
.venv/bin/pip install -q torch numpy >&2
cargo bench --bench derain >&2
peer_json=$(.venv/bin/python tools/bench_derain_torch.py --reps 10)
python3 tools/bench_table.py derain "$peer_json" "$machine"

# 4. CycleGAN (criterion) and the PyTorch reference networks, all cores for both.
cargo bench --bench cyclegan >&2
peer_json=$(.venv/bin/python tools/bench_cyclegan_torch.py --reps 3)
python3 tools/bench_table.py cyclegan "$peer_json" "$machine"
