#!/usr/bin/env python3
"""PyTorch twin of the CycleGAN reference networks (Zhu et al., ICCV 2017; the authors'
`ResnetGenerator` and 70x70 PatchGAN `NLayerDiscriminator` in their configuration for
CycleGAN: instance norm without affine parameters or running statistics, so every conv before
a norm keeps its bias; reflect padding; no dropout) for raincheck's parity test.

Module and layer order follow the authors' `nn.Sequential`s, so `state_dict()` names are theirs
(`model.1.weight` is the first 7x7 conv, `model.10.conv_block.1.weight` the first conv of the
first residual block, ...) and their released checkpoints load into these classes.

Writes, into OUT (default eval/reference/fixtures/cyclegan):
  generator_ngf8_b2.pth      random weights of ResnetGenerator(3, 3, ngf=8, n_blocks=2), with
                             the stale InstanceNorm entries (`running_mean`, `running_var`,
                             `num_batches_tracked`) that checkpoints from old PyTorch versions
                             carry; a loader has to ignore them;
  generator_input.npy        a (1, 3, 36, 52) input in [-1, 1];
  generator_output.npy       the generator's output for it, (1, 3, 36, 52);
  discriminator_ndf8.pth     random weights of NLayerDiscriminator(3, ndf=8, n_layers=3);
  discriminator_input.npy    a (1, 3, 64, 48) input in [-1, 1];
  discriminator_output.npy   the discriminator's patch scores for it, (1, 1, 6, 4).

Usage: eval/reference/cyclegan_reference.py [OUT]   (needs torch and numpy)
"""
import collections
import os
import sys

import numpy as np
import torch
import torch.nn as nn


def instance_norm(c):
    """The reference's `norm='instance'`: no affine parameters, no running statistics."""
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


def conv_in_relu(cin, cout, **conv):
    """Conv (with bias: instance norm has no shift of its own), instance norm, ReLU."""
    return [nn.Conv2d(cin, cout, bias=True, **conv), instance_norm(cout), nn.ReLU(True)]


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, IN, ReLU, pad, conv3x3, IN](x); no ReLU after the sum."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), *conv_in_relu(dim, dim, kernel_size=3),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), instance_norm(dim))

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """7x7 stem, two stride-2 downsamplings, `n_blocks` residual blocks at 4*ngf channels, two
    transposed-conv upsamplings (k3, s2, p1, output_padding 1: exact 2x), 7x7 head, tanh.
    Height and width must be multiples of 4 to come back at the input size. The transposed
    convs' weights are laid out [in, out, k, k]; the head conv is the only conv after the stem
    not followed by a norm (it has its bias too)."""

    def __init__(self, input_nc=3, output_nc=3, ngf=64, n_blocks=9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), *conv_in_relu(input_nc, ngf, kernel_size=7)]
        for mult in (1, 2):
            layers += conv_in_relu(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1)
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                          output_padding=1),
                       instance_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs with zero padding 1; the first without norm, then `n_layers - 1`
    stride-2 convs and one stride-1 conv with IN, channels ndf * min(2^n, 8); LeakyReLU 0.2
    throughout; a final stride-1 4x4 conv to one channel of raw scores (no sigmoid: LSGAN)."""

    def __init__(self, input_nc=3, ndf=64, n_layers=3):
        super().__init__()
        leaky = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        layers = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), leaky()]
        prev = ndf
        for n in range(1, n_layers + 1):
            cur = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(prev, cur, 4, stride=stride, padding=1), instance_norm(cur),
                       leaky()]
            prev = cur
        layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def check_reference_names():
    """The published resnet_9blocks layout (ngf does not change the names)."""
    keys = set(ResnetGenerator(3, 3, ngf=4, n_blocks=9).state_dict())
    want = {f"model.{i}.{p}" for i in (1, 4, 7, 19, 22, 26) for p in ("weight", "bias")}
    want |= {f"model.{i}.conv_block.{j}.{p}" for i in range(10, 19) for j in (1, 5)
             for p in ("weight", "bias")}
    assert keys == want, sorted(keys ^ want)
    keys = set(NLayerDiscriminator(3, ndf=4, n_layers=3).state_dict())
    assert keys == {f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")}


def with_stale_norm_keys(net):
    """The state dict with the InstanceNorm buffers that checkpoints saved with running
    statistics on carry (the reference built its norm with track_running_stats=True for a while
    in 2018), in module order, as `state_dict()` would list them."""
    state = collections.OrderedDict()
    for name, module in net.named_modules():
        prefix = f"{name}." if name else ""
        for key, value in module.named_parameters(recurse=False):
            state[prefix + key] = value.detach()
        if isinstance(module, nn.InstanceNorm2d):
            c = module.num_features
            state[prefix + "running_mean"] = torch.zeros(c)
            state[prefix + "running_var"] = torch.ones(c)
            state[prefix + "num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    return state


def uniform_pm1(shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def write_case(out, net, state, stem, input_name, shape, input_seed):
    torch.save(state, os.path.join(out, f"{stem}.pth"))
    torch.load(os.path.join(out, f"{stem}.pth"), weights_only=True)
    x = uniform_pm1(shape, input_seed)
    with torch.no_grad():
        y = net.eval()(x)
    np.save(os.path.join(out, f"{input_name}_input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out, f"{input_name}_output.npy"), y.numpy().astype(np.float32))
    params = sum(p.numel() for p in net.parameters())
    return f"{input_name} {params} parameters, output {tuple(y.shape)} " \
           f"in [{y.min():.3f}, {y.max():.3f}]"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures", "cyclegan")
    os.makedirs(out, exist_ok=True)
    check_reference_names()
    torch.manual_seed(2017)
    gen = ResnetGenerator(3, 3, ngf=8, n_blocks=2)
    g = write_case(out, gen, with_stale_norm_keys(gen), "generator_ngf8_b2", "generator",
                   (1, 3, 36, 52), 7)
    torch.manual_seed(2018)
    disc = NLayerDiscriminator(3, ndf=8, n_layers=3)
    d = write_case(out, disc, disc.state_dict(), "discriminator_ndf8", "discriminator",
                   (1, 3, 64, 48), 8)
    print(f"wrote {out}: {g}; {d}")


if __name__ == "__main__":
    main()
