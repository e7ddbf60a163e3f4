#!/usr/bin/env python3
"""Peer benchmark for the metrics: psnr_y + ssim_y of one 1280x720 pair with scikit-image,
single thread, Y conversion included (the same frame and rain as benches/metrics.rs, read from
PNGs that tools/bench.sh writes). Prints the median time in ms as JSON.

Usage: tools/bench_metrics_skimage.py PRED.png TARGET.png [--reps N]
"""
import argparse
import json
import os
import statistics
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
import skimage  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval", "reference"))
from metrics_reference import y_channel  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pred")
    ap.add_argument("target")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    pred = np.asarray(Image.open(a.pred).convert("RGB"))
    target = np.asarray(Image.open(a.target).convert("RGB"))
    times = []
    for _ in range(a.reps + 2):
        start = time.perf_counter()
        yp, yt = y_channel(pred), y_channel(target)
        p = peak_signal_noise_ratio(yt, yp, data_range=255)
        s = structural_similarity(yt, yp, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, data_range=255)
        times.append(time.perf_counter() - start)
    times = times[2:]
    print(json.dumps({"peer": f"scikit-image {skimage.__version__}", "median_ms": statistics.median(times) * 1e3,
                      "psnr_y": p, "ssim_y": s, "reps": a.reps}))


if __name__ == "__main__":
    main()
