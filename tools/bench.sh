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
python3 - "$peer_json" "$machine" <<'PY'
import json, sys, pathlib
peer = json.loads(sys.argv[1]); machine = sys.argv[2]
root = pathlib.Path("target/criterion/rain_1280x720")
def median_ms(name):
    est = json.loads((root / name / "new" / "estimates.json").read_text())
    return est["median"]["point_estimate"] / 1e6
ours1 = median_ms("heavy_1_thread"); ours_all = median_ms("heavy_all_threads")
print(f"| rain renderer, heavy, 1280x720, 1 thread | `tools/bench.sh` (criterion `rain_1280x720/heavy/1_thread`) | {machine} | {ours1:.2f} ms | {peer['peer']}: {peer['median_ms']:.2f} ms | {peer['median_ms']/ours1:.1f}x faster |")
print(f"| rain renderer, heavy, 1280x720, all threads | `tools/bench.sh` (criterion `rain_1280x720/heavy/all_threads`) | {machine} | {ours_all:.2f} ms | 1-thread raincheck: {ours1:.2f} ms | {ours1/ours_all:.2f}x scaling |")
for p in ("drizzle", "torrential"):
    print(f"| rain renderer, {p}, 1280x720, 1 thread | criterion `rain_1280x720/{p}/1_thread` | {machine} | {median_ms(p + '_1_thread'):.2f} ms | | |")
PY

# 2. Metrics (criterion) and scikit-image on the same 1280x720 pair.
cargo bench --bench metrics >&2
peer_json=$(.venv/bin/python tools/bench_metrics_skimage.py target/bench-inputs/metrics_pred.png target/bench-inputs/metrics_target.png --reps 20)
python3 - "$peer_json" "$machine" <<'PY'
import json, sys, pathlib
peer = json.loads(sys.argv[1]); machine = sys.argv[2]
root = pathlib.Path("target/criterion/metrics_1280x720")
def median_ms(name):
    est = json.loads((root / name / "new" / "estimates.json").read_text())
    return est["median"]["point_estimate"] / 1e6
ours = median_ms("psnr_y+ssim_y_1_thread"); par8 = median_ms("psnr_y+ssim_y_8_pairs_all_threads")
print(f"| psnr_y + ssim_y, one 1280x720 pair, 1 thread | criterion `metrics_1280x720/psnr_y+ssim_y/1_thread` | {machine} | {ours:.2f} ms | {peer['peer']}: {peer['median_ms']:.1f} ms | {peer['median_ms']/ours:.1f}x faster |")
print(f"| psnr_y + ssim_y, 8 pairs, all threads | criterion `metrics_1280x720/psnr_y+ssim_y/8_pairs_all_threads` | {machine} | {par8/8:.2f} ms per pair | 1 thread: {ours:.2f} ms | {ours*8/par8:.2f}x scaling |")
print(f"| all four metrics, one 1280x720 pair, 1 thread | criterion `metrics_1280x720/all_four/1_thread` | {machine} | {median_ms('all_four_1_thread'):.2f} ms | | |")
PY
