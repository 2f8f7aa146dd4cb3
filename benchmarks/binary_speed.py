"""Real 1-bit speed on this CPU: the float emulation of the binarized convs against the packed XNOR/popcount kernels
(`students/packed_conv.py`), side by side in one run.

1. Every distinct binarized conv of the paper configuration at a 3x256x256 output, batch 1: the float path (sign of
   the input, conv with the +-alpha weight) against the packed path (pack the signs, popcount kernel, alpha), median
   of `--repeats` timings each, and the ratio; the outputs are checked equal (max |difference|).
2. The whole student forward at 3x256x256: float vs packed, and the share of the packed forward spent outside the
   binarized units (full-precision convs, attention, norms: what bounds the end-to-end gain).
3. A super-resolution to a 256x256 output on the DDPM process: 50 DDIM steps and one step, float vs packed.
4. The published pipeline's per-image cost for a 128x128 LR image (512x512 output: 9 overlapping 256x256 tiles),
   with the tiles in batches of 8 (the accelerator default) and one by one (the CPU default of
   `python -m pipeline.upscale`): one network evaluation over all tiles is timed, and the image's time is that times
   `--steps` (the evaluations are all the work; blending is negligible).

    python benchmarks/binary_speed.py [--size 256] [--repeats 5] [--steps 50] [--threads 0]

Timings are of this machine (2 cores here); the paper configuration's weights are random (speed does not depend on
them). Outputs of the two paths agree up to float summation order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402

from pipeline.sr_pipeline import super_resolve, tiled_super_resolve  # noqa: E402
from students.bidiffsr import BIDiffSRUNet  # noqa: E402
from students.binary import BinaryConv2d  # noqa: E402
from students.packed_conv import PackedFilters, kernels  # noqa: E402
from teachers import DDPMProcess  # noqa: E402


def layer_shapes(model: BIDiffSRUNet, size: int) -> dict[tuple, int]:
    """(Cin, Cout, k, stride, H, W) of every binarized conv's input in one forward -> how many convs have it."""
    shapes: dict[tuple, int] = {}

    def record(module, inputs, output):
        _, c, h, w = inputs[0].shape
        key = (c, module.out_channels, module.kernel_size, module.stride, h, w)
        shapes[key] = shapes.get(key, 0) + 1

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, BinaryConv2d)]
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        model(x, x, torch.zeros(1, dtype=torch.long))
    for h in handles:
        h.remove()
    return shapes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    kernels()  # build (or load) the extension before timing anything
    torch.manual_seed(0)
    model = BIDiffSRUNet().eval()

    layers = Table(title=f"Binarized convs of the paper configuration at 3x{args.size}x{args.size} (batch 1, "
                         f"{torch.get_num_threads()} threads, median of {args.repeats})")
    for col in ("Cin -> Cout", "kernel / stride", "input HxW", "count", "float ms", "packed ms", "speed-up",
                "max |diff|"):
        layers.add_column(col, justify="right")
    total_float = total_packed = 0.0
    for (cin, cout, k, stride, h, w), count in sorted(layer_shapes(model, args.size).items(), key=lambda kv: -kv[0][4]):
        weight = torch.randn(cout, cin, k, k)
        wb = weight.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(weight)
        u = torch.randn(1, cin, h, w)
        packed = PackedFilters(wb, None, stride, k // 2)
        float_s = median_seconds(lambda: F.conv2d(torch.sign(u), wb, stride=stride, padding=k // 2), args.repeats)
        packed_s = median_seconds(lambda: packed(u), args.repeats)
        diff = (F.conv2d(torch.sign(u), wb, stride=stride, padding=k // 2) - packed(u)).abs().max().item()
        total_float += count * float_s
        total_packed += count * packed_s
        layers.add_row(f"{cin} -> {cout}", f"{k}x{k} / {stride}", f"{h}x{w}", str(count), f"{float_s * 1e3:.2f}",
                       f"{packed_s * 1e3:.2f}", f"{float_s / packed_s:.1f}x", f"{diff:.1e}")
    layers.add_row("all binarized convs", "", "", "", f"{total_float * 1e3:.1f}", f"{total_packed * 1e3:.1f}",
                   f"{total_float / total_packed:.1f}x", "")
    console.print(layers)

    x, cond, t = torch.randn(1, 3, args.size, args.size), torch.rand(1, 3, args.size, args.size), torch.tensor([999])
    packed_model = BIDiffSRUNet().eval()
    packed_model.load_state_dict(model.state_dict())
    packed_model.use_packed_kernels()
    inside = [0.0]

    def timed_units(m: BIDiffSRUNet) -> list:
        starts = {}

        def pre(module, inputs):
            starts[module] = time.perf_counter()

        def post(module, inputs, output):
            inside[0] += time.perf_counter() - starts.pop(module)

        return [h for u in m.modules() if isinstance(u, BinaryConv2d)
                for h in (u.register_forward_pre_hook(pre), u.register_forward_hook(post))]

    with torch.no_grad():
        float_fwd = median_seconds(lambda: model(x, cond, t), args.repeats)
        packed_fwd = median_seconds(lambda: packed_model(x, cond, t), args.repeats)
        reference = model(x, cond, t)
        diff = (reference - packed_model(x, cond, t)).abs().max().item()
        spread = reference.std().item()
        handles = timed_units(packed_model)
        inside[0] = 0.0
        start = time.perf_counter()
        packed_model(x, cond, t)
        share_fp = 1 - inside[0] / (time.perf_counter() - start)
        for h in handles:
            h.remove()
        inside[0] = 0.0
        handles = timed_units(model)
        start = time.perf_counter()
        model(x, cond, t)
        share_fp_float = 1 - inside[0] / (time.perf_counter() - start)
        for h in handles:
            h.remove()

    process = DDPMProcess()
    cond_sr = torch.rand(1, 3, args.size, args.size)
    sr_rows = []
    for label, steps in ((f"{args.steps}-step DDIM SR, {args.size}x{args.size} output", args.steps),
                         (f"one step, {args.size}x{args.size} output", 1)):
        noise = torch.randn(1, 3, args.size, args.size)
        seconds = []
        for m in (model, packed_model):
            start = time.perf_counter()
            super_resolve(m, process, cond_sr, steps, noise=noise)
            seconds.append(time.perf_counter() - start)
        sr_rows.append((label, *seconds))
    cond_image = torch.rand(1, 3, 2 * args.size, 2 * args.size)
    for tile_batch, how in ((8, "batches of 8"), (1, "one by one, the CPU default")):
        seconds = []
        for m in (model, packed_model):
            start = time.perf_counter()
            tiled_super_resolve(m, process, cond_image, 1, tile=args.size, overlap=args.size // 8,
                                tile_batch=tile_batch)
            seconds.append((time.perf_counter() - start) * args.steps)
        sr_rows.append((f"{args.steps}-step image, {2 * args.size}x{2 * args.size} output, 9 tiles {how} "
                        f"(1 step x {args.steps})", *seconds))

    whole = Table(title="Whole student (paper configuration)")
    for col in ("", "float s", "packed s", "speed-up"):
        whole.add_column(col, justify="right")
    whole.add_row(f"forward 3x{args.size}x{args.size}", f"{float_fwd:.3f}", f"{packed_fwd:.3f}",
                  f"{float_fwd / packed_fwd:.2f}x")
    for label, f, p in sr_rows:
        whole.add_row(label, f"{f:.1f}", f"{p:.1f}", f"{f / p:.2f}x")
    console.print(whole)
    console.print(f"forward outputs: max |float - packed| = {diff:.1e} (outputs' std {spread:.2f}; a sign that float "
                  f"rounding puts on the other side of 0 flips a whole +-1); time outside the binarized units: "
                  f"{share_fp:.0%} of the packed forward ({share_fp_float:.0%} of the float one)")


if __name__ == "__main__":
    main()
