#!/usr/bin/env python3
"""Reference NIQE values for raincheck, from an implementation written after the authors' MATLAB
release (Mittal, Soundararajan, Bovik 2013; niqe_release: computequality.m, computefeature.m,
estimateaggdparam.m) with numpy and scipy, and the authors' pristine model
(eval/data/niqe/niqe_pris_params.npz).

    eval/reference/niqe_reference.py make-inputs DIR   # gray test images (PNG) in DIR
    eval/reference/niqe_reference.py score DIR         # writes DIR/niqe.json

MATLAB semantics reproduced here:
- rgb2gray on uint8: 0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B, rounded
  half away from zero to uint8, then double;
- the image cropped to whole 96x96 blocks; two scales, the second from imresize(im, 0.5):
  bicubic (a = -0.5) with the kernel widened by 1/scale (antialiasing), weights normalised,
  borders mirrored as aux = [1:n, n:-1:1], rows first;
- imfilter(im, window, 'replicate') for the local mean and deviation (scipy.ndimage.correlate
  with mode='nearest' is the same operation);
- per block, circshift within the block for the four neighbour products;
- estimateaggdparam: gam = 0.2:0.001:10 and the first minimum of (r_gam - rhatnorm)^2 (an all-NaN
  comparison selects the first entry, as MATLAB's min does); mean([]) is NaN;
- nanmean over blocks per feature; nancov over the blocks without NaN (normalised by n - 1);
  pinv with MATLAB's tolerance max(size) * norm * eps.
computequality.m computes each block's sharpness but does not use it, so neither does this.

Images are decoded by PIL (libjpeg-turbo for JPEGs, as raincheck decodes them).
"""
import json
import math
import pathlib
import sys

import numpy as np
from PIL import Image
from scipy import ndimage, special

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FRAMES = ROOT / "datasets" / "samples" / "frames"
MODEL = ROOT / "eval" / "data" / "niqe" / "niqe_pris_params.npz"

# Scored whole, straight from the bundled JPEGs.
FULL_FRAMES = ["udacity_solidWhiteCurve.jpg", "dlib_la_downtown.jpg", "udacity_challange00101.jpg"]
# (name, frame, x, y): 288x192 gray crops.
CROPS = [("street", "dlib_la_downtown.jpg", 200, 120), ("road", "udacity_solidYellowLeft.jpg", 340, 300)]
W, H = 288, 192


def rgb2gray(rgb8):
    c = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
    y = rgb8.astype(np.float64) @ c
    return np.minimum(np.floor(y + 0.5), 255.0)


def load_gray(path):
    img = Image.open(path)
    if img.mode == "L":
        return np.asarray(img).astype(np.float64)
    return rgb2gray(np.asarray(img.convert("RGB")))


def cubic(x):
    a = np.abs(x)
    return np.where(
        a <= 1,
        1.5 * a**3 - 2.5 * a**2 + 1,
        np.where(a <= 2, -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2, 0.0),
    )


def resize_matrix(n, out):
    """The (out x n) matrix of MATLAB imresize's bicubic contributions for scale out/n < 1."""
    scale = out / n
    width = 4.0 / scale
    taps = int(math.ceil(width)) + 2
    x = np.arange(1, out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(taps)[None, :]
    wts = scale * cubic(scale * (u[:, None] - idx))
    wts = wts / wts.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    cols = aux[np.mod(idx.astype(np.int64) - 1, 2 * n)]
    m = np.zeros((out, n))
    for r in range(out):
        np.add.at(m[r], cols[r], wts[r])
    return m


def imresize_half(im):
    h, w = im.shape
    rows = resize_matrix(h, int(math.ceil(h / 2)))
    cols = resize_matrix(w, int(math.ceil(w / 2)))
    return (rows @ im) @ cols.T


GAM = np.array([0.2 + k * 0.001 for k in range(9801)])
R_GAM = special.gamma(2 / GAM) ** 2 / (special.gamma(1 / GAM) * special.gamma(3 / GAM))


def nan_mean(v):
    return float(np.mean(v)) if v.size else float("nan")


def aggd(vec):
    with np.errstate(divide="ignore", invalid="ignore"):
        left = math.sqrt(nan_mean(vec[vec < 0] ** 2))
        right = math.sqrt(nan_mean(vec[vec > 0] ** 2))
        g = left / right if right != 0 else float("nan")
        sq = np.mean(vec**2)
        rhat = np.mean(np.abs(vec)) ** 2 / sq if sq != 0 else float("nan")
        rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    pos = 0 if math.isnan(rnorm) else int(np.argmin((R_GAM - rnorm) ** 2))
    alpha = GAM[pos]
    s = math.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return alpha, left * s, right * s


def block_features(block):
    alpha, bl, br = aggd(block.ravel())
    feat = [alpha, (bl + br) / 2]
    for shift in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        shifted = np.roll(block, shift, axis=(0, 1))
        alpha, bl, br = aggd((block * shifted).ravel())
        mean = (br - bl) * (special.gamma(2 / alpha) / special.gamma(1 / alpha))
        feat += [alpha, mean, bl, br]
    return feat


def niqe(gray, model):
    window = model["gaussian_window"]
    h, w = gray.shape
    bh, bw = h // 96, w // 96
    im = gray[: bh * 96, : bw * 96].astype(np.float64)
    feats = []
    for scale in (1, 2):
        mu = ndimage.correlate(im, window, mode="nearest")
        sigma = np.sqrt(np.abs(ndimage.correlate(im * im, window, mode="nearest") - mu * mu))
        mscn = (im - mu) / (sigma + 1)
        b = 96 // scale
        # Column-major block order, as blkproc + reshape give it.
        feats.append(
            np.array(
                [block_features(mscn[i * b : (i + 1) * b, j * b : (j + 1) * b]) for j in range(bw) for i in range(bh)]
            )
        )
        if scale == 1:
            im = imresize_half(im)
    f = np.concatenate(feats, axis=1)
    mu_d = np.nanmean(f, axis=0)
    complete = f[~np.isnan(f).any(axis=1)]
    cov_d = np.cov(complete, rowvar=False)
    m = (model["cov_pris_param"] + cov_d) / 2
    u, s, vt = np.linalg.svd(m)
    tol = max(m.shape) * s.max() * np.finfo(np.float64).eps
    pinv = (vt.T * np.where(s > tol, 1 / s, 0)) @ u.T
    d = model["mu_pris_param"].ravel() - mu_d
    return float(math.sqrt(d @ pinv @ d))


def make_inputs(out):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for name, frame, x, y in CROPS:
        gray = load_gray(FRAMES / frame)[y : y + H, x : x + W]
        variants = {
            "clean": gray,
            # A Gaussian blur (sigma 2) and additive Gaussian noise (sigma 12), rounded to uint8.
            "blur": ndimage.gaussian_filter(gray, 2.0, mode="nearest"),
            "noise": gray + rng.normal(0, 12, gray.shape),
        }
        if name == "street":
            # Two flat (black) thirds: a block whose coefficients are all exactly 0 has NaN
            # scales, is left out of the covariance and keeps its shape (0.2) in the mean. Black,
            # not white: the local mean of zeros is exactly 0, of 255s only nearly 255.
            flat = gray.copy()
            flat[:, :192] = 0
            variants["flat"] = flat
        for kind, img in variants.items():
            u8 = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
            Image.fromarray(u8, mode="L").save(out / f"{name}_{kind}.png")


def score(out):
    model = dict(np.load(MODEL))
    scores = {}
    for p in sorted(out.glob("*.png")):
        scores[p.name] = niqe(load_gray(p), model)
    for f in FULL_FRAMES:
        scores[f"frames/{f}"] = niqe(load_gray(FRAMES / f), model)
    (out / "niqe.json").write_text(json.dumps(scores, indent=1) + "\n")
    for k, v in scores.items():
        print(f"{k:40s} {v:.6f}")


if __name__ == "__main__":
    cmd, d = sys.argv[1], pathlib.Path(sys.argv[2])
    {"make-inputs": make_inputs, "score": score}[cmd](d)
