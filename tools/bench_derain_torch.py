#!/usr/bin/env python3
"""Peer benchmark for the de-rainers: PyTorch twins of raincheck's `unet tiny` and `vit tiny`
(same layers, same shapes, same tiling), timed on the same machine as benches/derain.rs:

- inference of one 960x540 frame (vit in 256-pixel tiles overlapping by 32, blended);
- one training step: batch 8 of 128x128 crops, L1 loss, backward, AdamW update;
- the conv microbenchmark of issue #5: 6 conv3x3 layers, 32 channels, batch 4 at 128x128,
  forward + backward.

Prints medians in ms as JSON. Usage: tools/bench_derain_torch.py [--reps N] [--threads T]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to(x, m):
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return x, (h, w)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class UnetTiny(nn.Module):
    """raincheck unet preset tiny: unshuffle 4, channels 16, levels 2, blocks 1."""

    def __init__(self, u=4, c=16):
        super().__init__()
        self.u = u
        self.stem = nn.Conv2d(3 * u * u, c, 3, 1, 1)
        self.enc0 = ResBlock(c)
        self.down = nn.Conv2d(c, 2 * c, 3, 2, 1)
        self.enc1 = ResBlock(2 * c)
        self.up = nn.Conv2d(2 * c, 4 * c, 3, 1, 1)
        self.dec0 = ResBlock(c)
        self.head = nn.Conv2d(c, 3 * u * u, 3, 1, 1)

    def forward(self, x):
        x, (h, w) = pad_to(x, self.u * 2)
        y = F.relu(self.stem(F.pixel_unshuffle(x, self.u)))
        skip = self.enc0(y)
        y = self.enc1(F.relu(self.down(skip)))
        y = self.dec0(F.relu(F.pixel_shuffle(self.up(y), 2)) + skip)
        out = x + F.pixel_shuffle(self.head(y), self.u)
        return out[..., :h, :w]


class Block(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, mlp * d)
        self.fc2 = nn.Linear(mlp * d, d)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax(q @ k.transpose(-2, -1) / hd ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class VitTiny(nn.Module):
    """raincheck vit preset tiny: patch 8, dim 64, depth 2, heads 4, mlp ratio 2, grid 16."""

    def __init__(self, p=8, d=64, depth=2, heads=4, mlp=2, grid=16):
        super().__init__()
        self.p = p
        self.patch_embed = nn.Conv2d(3, d, p, p)
        self.pos_embed = nn.Parameter(torch.randn(1, d, grid, grid) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, p * p * 3)
        self.refine = nn.Conv2d(3, 3, 3, 1, 1)

    def forward(self, x):
        x, (h, w) = pad_to(x, self.p)
        b, _, hh, ww = x.shape
        gh, gw = hh // self.p, ww // self.p
        pos = F.interpolate(self.pos_embed, size=(gh, gw), mode="bilinear", align_corners=False)
        t = (self.patch_embed(x) + pos).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t = blk(t)
        pix = self.head(self.norm(t))
        p = self.p
        folded = pix.reshape(b, gh, gw, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, hh, ww)
        out = x + folded + self.refine(folded)
        return out[..., :h, :w]


def starts(n, size, overlap):
    if n <= size:
        return [0]
    count = -(-(n - overlap) // (size - overlap))
    return [i * (n - size) // (count - 1) for i in range(count)]


def ramp(n_tile, start, n, overlap):
    i = torch.arange(n_tile, dtype=torch.float32)
    w = torch.ones(n_tile)
    if start > 0:
        w = torch.minimum(w, (i + 0.5) / overlap)
    if start + n_tile < n:
        w = torch.minimum(w, torch.clamp((n_tile - i) - 0.5, max=overlap) / overlap)
    return w.clamp(1e-3, 1.0)


def tiled(model, x, size=256, overlap=32):
    _, _, h, w = x.shape
    acc = torch.zeros_like(x)
    wsum = torch.zeros(1, 1, h, w)
    for y0 in starts(h, size, overlap):
        for x0 in starts(w, size, overlap):
            th, tw = min(size, h), min(size, w)
            out = model(x[:, :, y0:y0 + th, x0:x0 + tw])
            wt = ramp(th, y0, h, overlap)[:, None] * ramp(tw, x0, w, overlap)[None, :]
            acc[:, :, y0:y0 + th, x0:x0 + tw] += out * wt
            wsum[:, :, y0:y0 + th, x0:x0 + tw] += wt
    return acc / wsum


def median_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    frame = torch.rand(1, 3, 540, 960)
    res = {"peer": f"PyTorch {torch.__version__.split('+')[0]}", "threads": torch.get_num_threads()}
    for name, model, infer in [
        ("unet_tiny", UnetTiny(), lambda m, x: m(x)),
        ("vit_tiny", VitTiny(), lambda m, x: tiled(m, x)),
    ]:
        with torch.no_grad():
            res[f"{name}_infer_960x540_ms"] = median_ms(lambda: infer(model, frame), a.reps)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        xb, yb = torch.rand(8, 3, 128, 128), torch.rand(8, 3, 128, 128)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = (model(xb) - yb).abs().mean()
            loss.backward()
            opt.step()

        res[f"{name}_train_step_b8_128_ms"] = median_ms(step, a.reps)
    convs = nn.Sequential(*[nn.Conv2d(32, 32, 3, 1, 1) for _ in range(6)])
    xc = torch.rand(4, 32, 128, 128)

    def conv_fb():
        for p in convs.parameters():
            p.grad = None
        convs(xc).sum().backward()

    res["conv6_fwd_bwd_ms"] = median_ms(conv_fb, a.reps)
    with torch.no_grad():
        res["conv6_fwd_ms"] = median_ms(lambda: convs(xc), a.reps)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
