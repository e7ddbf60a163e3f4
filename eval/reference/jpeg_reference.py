#!/usr/bin/env python3
"""A corpus of JPEGs and their pixels as PIL decodes them (libjpeg-turbo, default settings: the
accurate integer IDCT and fancy upsampling, as OpenCV's and MATLAB's imread too), for raincheck's
decoder test.

Writes, into OUT (default eval/reference/fixtures/jpeg):
  NAME.jpg    crops of the bundled real frames encoded by PIL's libjpeg-turbo: 4:2:0, 4:2:2 and
              4:4:4 chroma subsampling, progressive, grayscale, odd sizes, restart markers, a
              low quality, and an EXIF orientation 6 (rotate 90 degrees clockwise on display);
  NAME.png    the decoded RGB pixels (grayscale expanded to RGB, the EXIF orientation applied
              with ImageOps.exif_transpose), losslessly;
  MANIFEST.json  the libjpeg-turbo and Pillow versions, each file's settings, and the SHA-256 of
              the RGB bytes PIL decodes from each bundled real frame (datasets/samples/frames,
              written by other encoders; too large to keep decoded).

Usage: eval/reference/jpeg_reference.py [OUT]   (needs pillow, numpy)
"""
import hashlib
import json
import pathlib
import sys

import numpy as np
from PIL import Image, ImageOps, features

HERE = pathlib.Path(__file__).resolve().parent
FRAMES = HERE.parent.parent / "datasets" / "samples" / "frames"

# name, frame, crop (x, y, w, h), save options
CASES = [
    ("s420_q90", "udacity_solidWhiteRight.jpg", (400, 300, 96, 64), dict(quality=90, subsampling=2)),
    ("s422_q85", "dlib_la_downtown.jpg", (300, 150, 80, 48), dict(quality=85, subsampling=1)),
    ("s444_q95", "udacity_challange00136.jpg", (500, 250, 64, 40), dict(quality=95, subsampling=0)),
    ("progressive", "udacity_solidYellowLeft.jpg", (420, 280, 72, 56),
     dict(quality=88, subsampling=2, progressive=True)),
    ("gray", "udacity_whiteCarLaneSwitch.jpg", (380, 300, 64, 48), dict(quality=90, gray=True)),
    ("odd_420", "udacity_challange00101.jpg", (610, 333, 37, 23), dict(quality=92, subsampling=2)),
    ("odd_422", "udacity_challange00111.jpg", (611, 301, 45, 19), dict(quality=80, subsampling=1)),
    ("restart_q30", "udacity_solidWhiteCurve.jpg", (300, 320, 88, 40),
     dict(quality=30, subsampling=2, restart_marker_blocks=2)),
    ("exif_rot6", "udacity_solidYellowCurve.jpg", (350, 310, 60, 36),
     dict(quality=90, subsampling=2, exif_orientation=6)),
]


def main():
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "fixtures" / "jpeg"
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "eval/reference/jpeg_reference.py",
        "pillow": Image.__version__ if hasattr(Image, "__version__") else "?",
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "files": {},
    }
    for name, frame, (x, y, w, h), opts in CASES:
        opts = dict(opts)
        img = Image.open(FRAMES / frame).convert("RGB").crop((x, y, x + w, y + h))
        if opts.pop("gray", False):
            img = img.convert("L")
        orientation = opts.pop("exif_orientation", None)
        if orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = orientation
            opts["exif"] = exif.tobytes()
        path = out / f"{name}.jpg"
        img.save(path, "JPEG", **opts)
        decoded = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        Image.fromarray(np.asarray(decoded)).save(out / f"{name}.png")
        manifest["files"][name] = {"frame": frame, "crop": [x, y, w, h],
                                   "decoded_size": list(decoded.size),
                                   **{k: (v if not isinstance(v, bytes) else "exif")
                                      for k, v in opts.items()},
                                   **({"exif_orientation": orientation} if orientation else {})}
    manifest["frames_rgb_sha256"] = {
        p.name: hashlib.sha256(np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
                               .tobytes()).hexdigest()
        for p in sorted(FRAMES.glob("*.jpg"))
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(CASES)} JPEGs to {out} (libjpeg-turbo {manifest['libjpeg_turbo']})")


if __name__ == "__main__":
    main()
