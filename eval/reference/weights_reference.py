#!/usr/bin/env python3
"""Weight files as real PyTorch writes them, for raincheck's weight-reader tests.

Writes, into OUT (default eval/reference/fixtures/weights):
  prenet_paper_legacy.pth     fixtures/prenet/prenet_paper.pth re-saved in the legacy (pre-1.6)
                              format, `torch.save(..., _use_new_zipfile_serialization=False)`,
                              as the PReNet authors' released files are;
  generator_ngf8_b2_legacy.pth  fixtures/cyclegan/generator_ngf8_b2.pth likewise;
  mixed_{zip,legacy}.pth      a state dict exercising the reader: f32, f16, bf16, f64, int64 and
                              bool tensors, a transposed (non-contiguous) view, two views sharing
                              one storage at different offsets, an nn.Parameter, a 0-d tensor,
                              `module.` prefixes;
  mixed_expected.json         each tensor of `mixed` as raincheck should read it: shape, source
                              dtype, values (floats as float32, row-major);
  wrap_*.pth                  the same small state dict under the wrappers people use
                              (BasicSR's params/params_ema, state_dict with optimizer state,
                              netG, model, net) and one without any state dict;
  forbidden_{zip,legacy}.pth  a pickle whose object calls os.system on load (refused, never run).

Usage: eval/reference/weights_reference.py [OUT]   (needs torch)
"""
import io
import json
import os
import sys
from collections import OrderedDict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def save(obj, path, legacy):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def mixed():
    g = torch.Generator().manual_seed(18)
    base = torch.randn(4, 3, generator=g)
    shared = torch.arange(10, dtype=torch.float32) / 4
    sd = OrderedDict()
    sd["module.conv.weight"] = torch.randn(2, 3, 1, 1, generator=g)
    sd["module.half"] = torch.randn(5, generator=g).half()
    sd["module.bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["module.double"] = torch.randn(4, generator=g).double() * 1e3
    sd["module.long"] = torch.tensor([-3, 0, 2**40], dtype=torch.int64)
    sd["module.flag"] = torch.tensor([True, False, True])
    sd["module.transposed"] = base.t()  # (3, 4) view with stride (1, 3)
    sd["module.shared_a"] = shared[2:6]  # offset 2
    sd["module.shared_b"] = shared[5:].view(5, 1)  # offset 5, same storage
    sd["module.param"] = torch.nn.Parameter(torch.randn(3, generator=g))
    sd["module.scalar"] = torch.tensor(2.5)
    return sd


def expected(sd):
    out = {}
    for k, v in sd.items():
        name = k[len("module."):]
        t = v.detach()
        dtype = str(t.dtype).replace("torch.", "")
        if t.is_floating_point():
            vals = t.float().contiguous().view(-1).tolist()
        else:
            vals = [int(x) for x in t.contiguous().view(-1).tolist()]
        out[name] = {"shape": list(t.shape), "dtype": dtype, "values": vals}
    return out


class Exploit:
    """Calls os.system when unpickled by an unrestricted loader."""

    def __reduce__(self):
        return (os.system, ("echo raincheck-pickle-exploit > /tmp/raincheck-pwned",))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "fixtures", "weights")
    os.makedirs(out, exist_ok=True)
    fx = os.path.join(HERE, "fixtures")

    prenet = torch.load(os.path.join(fx, "prenet", "prenet_paper.pth"), weights_only=True)
    save(prenet, os.path.join(out, "prenet_paper_legacy.pth"), legacy=True)
    gen = torch.load(os.path.join(fx, "cyclegan", "generator_ngf8_b2.pth"), weights_only=True)
    save(gen, os.path.join(out, "generator_ngf8_b2_legacy.pth"), legacy=True)

    sd = mixed()
    save(sd, os.path.join(out, "mixed_zip.pth"), legacy=False)
    save(sd, os.path.join(out, "mixed_legacy.pth"), legacy=True)
    with open(os.path.join(out, "mixed_expected.json"), "w") as f:
        json.dump(expected(sd), f, indent=1)
        f.write("\n")

    g = torch.Generator().manual_seed(5)
    small = OrderedDict(w=torch.randn(2, 2, generator=g), b=torch.randn(2, generator=g))
    other = OrderedDict((k, v + 1) for k, v in small.items())
    optim = {"state": {0: {"step": 3, "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1e-4}]}
    save({"params": other, "params_ema": small}, os.path.join(out, "wrap_params_ema.pth"), False)
    save({"epoch": 7, "state_dict": small, "optimizer": optim},
         os.path.join(out, "wrap_state_dict_legacy.pth"), True)
    save({"netG": small, "netD": other}, os.path.join(out, "wrap_netG.pth"), False)
    save({"model": OrderedDict(("module." + k, v) for k, v in small.items())},
         os.path.join(out, "wrap_model.pth"), True)
    save({"net": small, "iter": 100}, os.path.join(out, "wrap_net.pth"), False)
    save({"epoch": 1, "best_psnr": 30.5, "opts": {"lr": 0.1}},
         os.path.join(out, "wrap_none.pth"), True)

    for legacy, name in ((False, "forbidden_zip.pth"), (True, "forbidden_legacy.pth")):
        save({"w": torch.zeros(1), "payload": Exploit()}, os.path.join(out, name), legacy)

    print(f"wrote {out} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
