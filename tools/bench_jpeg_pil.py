#!/usr/bin/env python3
"""PIL's time to decode the bundled 960x540 camera JPEG to RGB (the peer of
`cargo bench --bench metrics -- jpeg_decode`). Prints JSON: median ms over --reps runs."""
import argparse
import io
import json
import pathlib
import statistics
import time

from PIL import Image, features

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRAME = ROOT / "datasets" / "samples" / "frames" / "udacity_challange00101.jpg"

ap = argparse.ArgumentParser()
ap.add_argument("--reps", type=int, default=200)
args = ap.parse_args()
data = FRAME.read_bytes()
times = []
for _ in range(args.reps):
    t = time.perf_counter()
    Image.open(io.BytesIO(data)).convert("RGB").load()
    times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"peer": "PIL", "libjpeg_turbo": features.version("libjpeg_turbo"),
                  "median_ms": statistics.median(times), "reps": args.reps}))
