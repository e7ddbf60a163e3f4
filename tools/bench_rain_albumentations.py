#!/usr/bin/env python3
"""Peer benchmark for the rain renderer: albumentations' RandomRain (rain_type="heavy") on the
same bundled frame at 1280x720, single thread. Prints the median time per frame in ms as JSON.

Usage: tools/bench_rain_albumentations.py [--frames N]   (tools/bench.sh installs and runs it)
"""
import argparse
import json
import os
import statistics
import time

# Single thread for every numeric library, before they are imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[var] = "1"

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
FRAME = os.path.join(HERE, "..", "datasets", "samples", "frames", "udacity_challange00101.jpg")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    args = ap.parse_args()
    img = cv2.cvtColor(cv2.imread(FRAME), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (1280, 720), interpolation=cv2.INTER_LINEAR)
    t = A.RandomRain(rain_type="heavy", p=1.0)
    rng_seed = 0
    for _ in range(10):  # warm-up
        t(image=img)
    times = []
    for i in range(args.frames):
        start = time.perf_counter()
        out = t(image=img)["image"]
        times.append(time.perf_counter() - start)
        rng_seed += int(out[0, 0, 0])
    print(json.dumps({
        "peer": f"albumentations {A.__version__} RandomRain(rain_type='heavy')",
        "size": "1280x720",
        "threads": 1,
        "frames": args.frames,
        "median_ms": statistics.median(times) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
    }))


if __name__ == "__main__":
    main()
