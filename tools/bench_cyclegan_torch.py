#!/usr/bin/env python3
"""Peer benchmark for raincheck's CycleGAN: the reference networks (the PyTorch twins in
eval/reference/cyclegan_reference.py), timed on the same machine as raincheck's own benchmark:

- one full training step as the reference `CycleGANModel.optimize_parameters` takes it:
  G_A (clear -> rainy) and G_B (resnet_6blocks, ngf 64), D_A and D_B (70x70 PatchGAN, ndf 64),
  batch 1 of 128x128; LSGAN + 10 * cycle L1 both ways + 0.5 * 10 * identity L1; the
  discriminators frozen for the generators' backward; one Adam step for both generators, then
  the discriminators' losses on the current fakes (no image pool), one Adam step for both;
- translation of one 960x540 frame by a resnet_9blocks generator (ngf 64): height
  reflect-padded to a multiple of 4, run, cropped back.

Prints medians in ms as JSON (one warm-up, then N reps, default 5: about two minutes on two
cores). Usage: tools/bench_cyclegan_torch.py [--reps N] [--threads T]
"""
import argparse
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval",
                                "reference"))
from cyclegan_reference import NLayerDiscriminator, ResnetGenerator  # noqa: E402
from bench_derain_torch import median_ms  # noqa: E402  (this script's own folder)

LAMBDA_CYCLE = 10.0
LAMBDA_IDENTITY = 0.5


def lsgan(pred, real):
    return F.mse_loss(pred, torch.full_like(pred, 1.0 if real else 0.0))


def set_requires_grad(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def cyclegan_step(size=128):
    """A closure running one CycleGAN training step on fixed random 1x3xSxS inputs."""
    g_a, g_b = ResnetGenerator(ngf=64, n_blocks=6), ResnetGenerator(ngf=64, n_blocks=6)
    d_a, d_b = NLayerDiscriminator(ndf=64, n_layers=3), NLayerDiscriminator(ndf=64, n_layers=3)
    opt_g = torch.optim.Adam(itertools.chain(g_a.parameters(), g_b.parameters()),
                             lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(itertools.chain(d_a.parameters(), d_b.parameters()),
                             lr=2e-4, betas=(0.5, 0.999))
    real_a = torch.rand(1, 3, size, size) * 2 - 1  # clear
    real_b = torch.rand(1, 3, size, size) * 2 - 1  # rainy

    def d_loss(d, real, fake):
        return 0.5 * (lsgan(d(real), True) + lsgan(d(fake.detach()), False))

    def step():
        fake_b = g_a(real_a)
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b)
        rec_b = g_a(fake_a)
        set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad(set_to_none=True)
        idt = LAMBDA_IDENTITY * LAMBDA_CYCLE * (
            F.l1_loss(g_a(real_b), real_b) + F.l1_loss(g_b(real_a), real_a))
        gan = lsgan(d_a(fake_b), True) + lsgan(d_b(fake_a), True)
        cycle = LAMBDA_CYCLE * (F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b))
        (gan + cycle + idt).backward()
        opt_g.step()
        set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad(set_to_none=True)
        d_loss(d_a, real_b, fake_b).backward()
        d_loss(d_b, real_a, fake_a).backward()
        opt_d.step()

    return step


def translate(g, x, multiple=4):
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    return g(x)[..., :h, :w]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default (all cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"peer": f"PyTorch {torch.__version__.split('+')[0]}", "threads": torch.get_num_threads()}
    res["cyclegan/train_step_b1_128"] = median_ms(cyclegan_step(), a.reps, warmup=1)
    g = ResnetGenerator(ngf=64, n_blocks=9).eval()
    frame = torch.rand(1, 3, 540, 960) * 2 - 1
    with torch.inference_mode():
        assert translate(g, frame).shape == frame.shape  # doubles as the warm-up
        res["cyclegan/translate_960x540"] = median_ms(lambda: translate(g, frame), a.reps,
                                                     warmup=0)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
