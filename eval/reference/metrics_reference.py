#!/usr/bin/env python3
"""Reference values for raincheck's metrics, from an independent implementation of the
de-raining protocol: numpy for MATLAB's rgb2ycbcr Y channel, scikit-image for PSNR and SSIM
(structural_similarity with gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255: an 11x11 window, whose result cropped by its radius is the 'valid' region).

    eval/reference/metrics_reference.py make-inputs DIR   # targets, noise and blur cases (PNG)
    eval/reference/metrics_reference.py score DIR         # writes DIR/reference.json
    eval/reference/metrics_reference.py variants DIR      # writes DIR/variants.json

`variants` scores the same cases (and a JPEG-decoded prediction, jpeg_pred_a.jpg, against the
crop it was encoded from) by the protocol variants raincheck names: `matlab-uint8` (the above),
`matlab-double` (Y of rgb2ycbcr on im2double images, unrounded, PSNR with peak 1 as PReNet's
statistic/psnr.m, SSIM on Y*255 as its ssim.m), each with and without a 4-pixel border crop
(BasicSR's crop_border). Images are decoded by PIL (libjpeg-turbo for the JPEG).

eval/reference/make_fixtures.sh runs both (and `raincheck rain` for the rain cases in between).
"""
import json
import pathlib
import sys

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

HERE = pathlib.Path(__file__).resolve().parent
FRAMES = HERE.parent.parent / "datasets" / "samples" / "frames"

# (name, source frame, crop box x, y, w, h): odd and even sizes, real photos.
TARGETS = [
    ("a", "udacity_solidWhiteRight.jpg", 400, 300, 97, 61),
    ("b", "dlib_la_downtown.jpg", 300, 150, 128, 72),
    ("c", "udacity_challange00136.jpg", 500, 250, 64, 64),
]


def y_channel(rgb8):
    """MATLAB rgb2ycbcr Y for uint8 input: T/255 weights, +16, round half away from zero.

    The rounding is of the computed double, as in MATLAB: for 100 of the 194 RGB triples whose
    exact Y is a half-integer, the double lands just below it and rounds down. (Here
    trunc-based rounding and floor(y + 0.5) agree on all 2^24 triples.)
    """
    r, g, b = (rgb8[..., i].astype(np.float64) for i in range(3))
    y = (65.481 / 255.0) * r + (128.553 / 255.0) * g + (24.966 / 255.0) * b + 16.0
    whole = np.trunc(y)
    return whole + (y - whole >= 0.5)


def ssim(a, b, **kw):
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=255, **kw))


def psnr(a, b):
    if np.array_equal(a, b):
        return None  # infinite
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def scores(pred8, target8):
    yp, yt = y_channel(pred8), y_channel(target8)
    p, t = pred8.astype(np.float64), target8.astype(np.float64)
    return {
        "psnr_y": psnr(yt, yp),
        "ssim_y": ssim(yt, yp),
        "psnr_rgb": psnr(t, p),
        "ssim_rgb": ssim(t, p, channel_axis=2),
    }


def make_inputs(out):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, frame, x, y, w, h in TARGETS:
        img = np.asarray(Image.open(FRAMES / frame).convert("RGB"))[y:y + h, x:x + w]
        Image.fromarray(img).save(out / f"target_{name}.png")
        noisy = np.clip(np.round(img + rng.normal(0, 12, img.shape)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(out / f"noise_{name}.png")
        f = img.astype(np.float64)
        pad = np.pad(f, ((1, 1), (1, 1), (0, 0)), mode="edge")
        blur = sum(pad[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
        Image.fromarray(np.round(blur).astype(np.uint8)).save(out / f"blur_{name}.png")


def score(out):
    cases = []
    for name, *_ in TARGETS:
        target = np.asarray(Image.open(out / f"target_{name}.png").convert("RGB"))
        for kind in ("noise", "blur", "rain", "target"):
            path = out / f"{kind}_{name}.png"
            if not path.exists():
                continue
            pred = np.asarray(Image.open(path).convert("RGB"))
            cases.append({"pred": path.name, "target": f"target_{name}.png", **scores(pred, target)})
    (out / "reference.json").write_text(json.dumps({
        "generator": "eval/reference/metrics_reference.py (numpy + scikit-image)",
        "cases": cases,
    }, indent=1) + "\n")
    print(f"{len(cases)} cases written to {out / 'reference.json'}")


def y_double(rgb8):
    """MATLAB rgb2ycbcr(im2double(img)) Y, in [16/255, 235/255], unrounded."""
    r, g, b = (rgb8[..., i].astype(np.float64) / 255.0 for i in range(3))
    return (65.481 / 255.0) * r + (128.553 / 255.0) * g + (24.966 / 255.0) * b + 16.0 / 255.0


def scores_variant(pred8, target8, y, crop):
    if crop:
        pred8, target8 = pred8[crop:-crop, crop:-crop], target8[crop:-crop, crop:-crop]
    out = scores(pred8, target8)
    if y == "matlab-double":
        yp, yt = y_double(pred8), y_double(target8)
        mse = float(np.mean((yp - yt) ** 2))
        out["psnr_y"] = None if mse == 0 else 10 * np.log10(1.0 / mse)
        out["ssim_y"] = ssim(yt * 255, yp * 255)
    return out


def variants(out):
    name, frame, x, y, w, h = TARGETS[0]
    src = np.asarray(Image.open(FRAMES / frame).convert("RGB"))[y:y + h, x:x + w]
    Image.fromarray(src).save(out / "jpeg_pred_a.jpg", quality=75, subsampling=2)
    pairs = [(f"{kind}_{n}.png", f"target_{n}.png")
             for n, *_ in TARGETS for kind in ("noise", "blur", "rain")]
    pairs.append(("jpeg_pred_a.jpg", f"target_{name}.png"))
    cases = []
    for pred_name, target_name in pairs:
        pred = np.asarray(Image.open(out / pred_name).convert("RGB"))
        target = np.asarray(Image.open(out / target_name).convert("RGB"))
        for yv in ("matlab-uint8", "matlab-double"):
            for crop in (0, 4):
                cases.append({"pred": pred_name, "target": target_name, "y": yv,
                              "crop_border": crop, **scores_variant(pred, target, yv, crop)})
    (out / "variants.json").write_text(json.dumps({
        "generator": "eval/reference/metrics_reference.py variants (numpy + scikit-image + PIL)",
        "cases": cases,
    }, indent=1) + "\n")
    print(f"{len(cases)} cases written to {out / 'variants.json'}")


if __name__ == "__main__":
    cmd, folder = sys.argv[1], pathlib.Path(sys.argv[2])
    {"make-inputs": make_inputs, "score": score, "variants": variants}[cmd](folder)
