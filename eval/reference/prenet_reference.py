#!/usr/bin/env python3
"""PyTorch twin of PReNet (Ren et al., CVPR 2019; the authors' `PReNet` class: conv-LSTM,
independent residual blocks) for raincheck's parity test.

Writes, into OUT (default eval/reference/fixtures/prenet):
  prenet_paper.pth  random weights of the published configuration (6 stages, 32 channels, 5
                    residual blocks), as a state dict saved from nn.DataParallel-style names
                    (`module.` prefix), like the authors' released models;
  input.npy         a (1, 3, 24, 20) input in [0, 1];
  output.npy        the network's output for it (the last stage).

Usage: eval/reference/prenet_reference.py [OUT]   (needs torch and numpy)
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def block(cin, cout, act):
    layers = [nn.Conv2d(cin, cout, 3, 1, 1)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


class PReNet(nn.Module):
    """Layer names and order as in the authors' code, so their state dicts load."""

    def __init__(self, iterations=6, channels=32, blocks=5):
        super().__init__()
        c = channels
        self.iterations = iterations
        self.blocks = blocks
        self.conv0 = block(6, c, nn.ReLU())
        for k in range(1, blocks + 1):
            setattr(self, f"res_conv{k}", nn.Sequential(
                nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()))
        self.conv_i = block(2 * c, c, nn.Sigmoid())
        self.conv_f = block(2 * c, c, nn.Sigmoid())
        self.conv_g = block(2 * c, c, nn.Tanh())
        self.conv_o = block(2 * c, c, nn.Sigmoid())
        self.conv = block(c, 3, None)
        self.channels = c

    def forward(self, inp):
        b, _, h, w = inp.shape
        hidden = torch.zeros(b, self.channels, h, w)
        cell = torch.zeros(b, self.channels, h, w)
        x = inp
        for _ in range(self.iterations):
            x = self.conv0(torch.cat((inp, x), 1))
            xh = torch.cat((x, hidden), 1)
            i, f = self.conv_i(xh), self.conv_f(xh)
            g, o = self.conv_g(xh), self.conv_o(xh)
            cell = f * cell + i * g
            hidden = o * torch.tanh(cell)
            x = hidden
            for k in range(1, self.blocks + 1):
                x = F.relu(getattr(self, f"res_conv{k}")(x) + x)
            x = self.conv(x) + inp
        return x


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures", "prenet")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(2019)
    net = PReNet().eval()
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, os.path.join(out, "prenet_paper.pth"))
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = net(x)
    np.save(os.path.join(out, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out, "output.npy"), y.numpy().astype(np.float32))
    print(f"wrote {out}: {sum(v.numel() for v in net.state_dict().values())} parameters, "
          f"output range [{y.min():.3f}, {y.max():.3f}]")


if __name__ == "__main__":
    main()
