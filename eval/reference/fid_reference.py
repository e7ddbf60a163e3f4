#!/usr/bin/env python3
"""Reference values for raincheck's FID, KID and FID InceptionV3, from pytorch-fid itself.

    python eval/reference/fid_reference.py features DIR   # DIR/inputs/*.png, DIR/features.json
    python eval/reference/fid_reference.py stats DIR      # DIR/stats.json
    python eval/reference/fid_reference.py resize DIR     # DIR/resize.json

Needs `pip install torch torchvision pytorch-fid==0.3.0 scipy numpy pillow` (a venv of its own:
tools use ~/.cache/raincheck/fid-venv).

`features`: pytorch-fid's InceptionV3 (its FID blocks patched into torchvision's network, its
resize and scaling, its pool3 output), with weights made by a formula of each tensor's name and
position instead of the downloaded `pt_inception` file (90 MB; not redistributable here), so the
Rust test builds the same weights by the same formula. Two crops of bundled frames go through it.

`stats`: fixed random feature sets; FID by pytorch-fid's `calculate_frechet_distance` (scipy's
`sqrtm`), KID by the unbiased MMD^2 with the cubic polynomial kernel over the whole sets (one
subset, so no sampling), as torch-fidelity and clean-fid compute each subset.
"""
import json
import math
import pathlib
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
FRAMES = HERE.parent.parent / "datasets" / "samples" / "frames"
# (file, x, y) of 120x90 crops.
CROPS = [("udacity_solidWhiteRight.jpg", 380, 280), ("dlib_la_downtown.jpg", 260, 140)]


def pattern(name, n):
    """Values in [-1, 1] from a tensor's name and the element index (integer arithmetic, then
    one division: the same bits in Rust)."""
    h = sum(name.encode()) % 1000
    i = np.arange(n, dtype=np.int64)
    return ((i * 7919 + h * 104729) % 2003).astype(np.float64) / 1001.0 - 1.0


def formula_value(name, shape):
    n = int(np.prod(shape))
    p = pattern(name, n)
    if name.endswith("conv.weight"):
        fan_in = int(np.prod(shape[1:]))
        v = p * math.sqrt(3.0 / fan_in)
    elif name.endswith("bn.weight"):
        v = 1.0 + 0.2 * p
    elif name.endswith("bn.bias"):
        v = 0.1 * p
    elif name.endswith("bn.running_mean"):
        v = 0.1 * p
    elif name.endswith("bn.running_var"):
        v = 1.0 + 0.25 * (p + 1.0)
    else:
        v = 0.01 * p
    return v.astype(np.float32).reshape(shape)


def formula_inception():
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    sd = net.state_dict()
    new = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = v
        else:
            new[k] = torch.from_numpy(formula_value(k, tuple(v.shape)))
    net.load_state_dict(new)
    # pytorch-fid's wrapper, with this network instead of the downloaded one.
    pfi.fid_inception_v3 = lambda: net
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    return model.eval()


def features(out):
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    batch = []
    for i, (f, x, y) in enumerate(CROPS):
        img = Image.open(FRAMES / f).convert("RGB").crop((x, y, x + 120, y + 90))
        img.save(out / "inputs" / f"crop{i}.png")
        batch.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    model = formula_inception()
    with torch.no_grad():
        feats = model(torch.from_numpy(np.stack(batch)))[0].squeeze(-1).squeeze(-1).numpy()
    print("features", feats.shape, "mean", feats.mean(), "std", feats.std(), "max", feats.max())
    (out / "features.json").write_text(
        json.dumps({"inputs": [f"inputs/crop{i}.png" for i in range(len(CROPS))], "features": feats.astype(float).tolist()})
        + "\n"
    )


def kid_full(x, y):
    m, d = x.shape
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    a = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    b = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(a + b - 2 * kxy.sum() / (m * m))


def stats(out):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(11)
    cases = {}
    # (name, n_a, n_b, d, shift): more images than dimensions, and fewer (the usual FID case).
    for name, na, nb, d, shift in [("wide", 60, 50, 16, 0.3), ("few", 8, 10, 24, 0.2)]:
        a = rng.random((na, d)) * np.linspace(1, 2, d)
        b = rng.random((nb, d)) * np.linspace(1, 2, d) + shift
        fid = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        m = min(na, nb)
        kid = kid_full(a[:m], b[:m])
        cases[name] = {"a": a.tolist(), "b": b.tolist(), "fid": float(fid), "kid_first_m": kid}
        print(name, "fid", fid, "kid", kid)
    (out / "stats.json").write_text(json.dumps(cases) + "\n")


def clean_resize(rgb8):
    """clean-fid's `clean` resize (make_resizer("PIL", False, "bicubic", (299, 299))): PIL's
    bicubic resize of each channel as a float image, clipped to 0-255."""
    out = []
    for c in range(3):
        img = Image.fromarray(rgb8[:, :, c].astype(np.float32), mode="F")
        out.append(np.asarray(img.resize((299, 299), resample=Image.BICUBIC)).clip(0, 255))
    return np.stack(out)


def resize(out):
    cases = {
        # Enlarging a small crop, and shrinking a large region of a bundled frame.
        "up": ("inputs/crop0.png", None),
        "down": ("frames/udacity_solidWhiteCurve.jpg", (100, 40, 740, 520)),
    }
    result = {}
    rng = np.random.default_rng(5)
    picks = rng.integers(0, 299, size=(40, 3))
    for name, (src, box) in cases.items():
        path = out / src if src.startswith("inputs/") else FRAMES / src.split("/", 1)[1]
        img = Image.open(path).convert("RGB")
        if box:
            img = img.crop(box)
        r = clean_resize(np.asarray(img))
        result[name] = {
            "source": src,
            "box": box,
            "sum": [float(r[c].astype(np.float64).sum()) for c in range(3)],
            "picks": [[int(c % 3), int(y), int(x), float(r[c % 3, y, x])] for c, y, x in picks],
        }
    (out / "resize.json").write_text(json.dumps(result, indent=1) + "\n")
    print({k: v["sum"] for k, v in result.items()})


if __name__ == "__main__":
    cmd, d = sys.argv[1], pathlib.Path(sys.argv[2])
    d.mkdir(parents=True, exist_ok=True)
    {"features": features, "stats": stats, "resize": resize}[cmd](d)
