"""Real 1-bit speed on this CPU: the float emulation of the binarized convs against the packed XNOR/popcount kernels
(`students/packed_conv.py`), side by side in one run.

1. Every distinct binarized conv of the paper configuration at a 3x256x256 output, batch 1: the float path (sign of
   the input, conv with the +-alpha weight; the faster of a contiguous and a channels-last input) against the packed
   path (a channels-last input, as the packed student hands it, packed inside the kernel's pass; popcount; alpha),
   median of `--layer-repeats` timings each (a layer takes 0.1-12 ms: fewer timings than this vary by 2x on a shared
   machine), and the ratio; the outputs are checked equal (max |difference|). Each path is timed in its own loop, so
   its input is in cache, as a layer's input is after the layer before wrote it; timed in turn with float convs
   that evict it, the memory-bound layers (32 and 64 channels at 256x256) take twice as long.
2. The whole student forward at 3x256x256: the float path in PyTorch's default (contiguous) memory and in
   channels-last (the faster here, and the baseline of every ratio), the float path with the full-precision parts in
   their inference forms (`merge_for_inference`, which the packed path also takes: what the packed kernels alone
   gain is the ratio to this), the packed path (channels-last, as `use_packed_kernels` sets), and the share of the
   packed forward spent in its full-precision convs and outside the binarized units (what bounds the end-to-end
   gain); the same for a student with every decoder level binarized (`fp_resolutions = []`), which shows what the
   full-precision levels cost. The forwards are timed in turn (`interleaved_median_seconds`), so that all see the
   same machine state.
3. A super-resolution to a 256x256 output on the DDPM process: 50 DDIM steps and one step, float vs packed.
4. The published pipeline's per-image cost for a 128x128 LR image (512x512 output: 9 overlapping 256x256 tiles),
   with the tiles in batches of 8 (the accelerator default) and one by one (the CPU default of
   `python -m pipeline.upscale`): one network evaluation over all tiles is timed, and the image's time is that times
   `--steps` (the evaluations are all the work; blending is negligible).

    python benchmarks/binary_speed.py [--size 256] [--repeats 5] [--layer-repeats 50] [--steps 50] [--threads 0]
                                      [--skip-layers]

Timings are of this machine (2 cores here), with freed memory kept for reuse (`pipeline.allocator`, as every command
runs); the paper configuration's weights are random (speed does not depend on them). Outputs of the two paths agree
up to float summation order.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import interleaved_median_seconds, median_seconds  # noqa: E402

from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.sr_pipeline import super_resolve, tiled_super_resolve  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from students.binary import BinaryConv2d  # noqa: E402
from students.packed_conv import PackedFilters, kernels  # noqa: E402
from teachers import DDPMProcess  # noqa: E402


def layer_shapes(model: BiDiffSRUNet, size: int) -> dict[tuple, int]:
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
    parser.add_argument("--repeats", type=int, default=5, help="timings per whole forward")
    parser.add_argument("--layer-repeats", type=int, default=50, help="timings per layer")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-layers", action="store_true", help="no per-layer table (the forwards and SR only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # BIDISTILL_KEEP_FREED_MEMORY=0 leaves glibc's own thresholds, to see what it gives
    console = Console()
    kernels()  # build (or load) the extension before timing anything
    torch.manual_seed(0)
    model = BiDiffSRUNet().eval()

    layers = Table(title=f"Binarized convs of the paper configuration at 3x{args.size}x{args.size} (batch 1, "
                         f"{torch.get_num_threads()} threads, median of {args.layer_repeats})")
    for col in ("Cin -> Cout", "kernel / stride", "input HxW", "count", "float ms", "packed ms", "speed-up",
                "max |diff|"):
        layers.add_column(col, justify="right")
    total_float = total_packed = 0.0
    shapes = [] if args.skip_layers else sorted(layer_shapes(model, args.size).items(), key=lambda kv: -kv[0][4])
    # one measurement per conv shape, two whole forwards, four super-resolutions
    progress = Progress("measured", total=len(shapes) + 6, unit="measurement", console=console, every=0).start()
    for (cin, cout, k, stride, h, w), count in shapes:
        weight = torch.randn(cout, cin, k, k)
        wb = weight.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.sign(weight)
        u = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
        packed = PackedFilters(wb, None, stride, k // 2)
        float_s = min(median_seconds(lambda: F.conv2d(torch.sign(v), wb, stride=stride, padding=k // 2),
                                     args.layer_repeats, warmup=3) for v in (u.contiguous(), u))
        packed_s = median_seconds(lambda: packed(u), args.layer_repeats, warmup=3)
        diff = (F.conv2d(torch.sign(u), wb, stride=stride, padding=k // 2) - packed(u)).abs().max().item()
        total_float += count * float_s
        total_packed += count * packed_s
        layers.add_row(f"{cin} -> {cout}", f"{k}x{k} / {stride}", f"{h}x{w}", str(count), f"{float_s * 1e3:.2f}",
                       f"{packed_s * 1e3:.2f}", f"{float_s / packed_s:.1f}x", f"{diff:.1e}")
        progress.advance(note=f"{cin} -> {cout} {k}x{k} at {h}x{w}")
    if shapes:
        layers.add_row("all binarized convs", "", "", "", f"{total_float * 1e3:.1f}", f"{total_packed * 1e3:.1f}",
                       f"{total_float / total_packed:.1f}x", "")
        console.print(layers)

    x, cond, t = torch.randn(1, 3, args.size, args.size), torch.rand(1, 3, args.size, args.size), torch.tensor([999])
    forwards = {}
    with torch.no_grad():
        for label, config in (("paper configuration", {}), ("every decoder level binarized", {"fp_resolutions": []})):
            contiguous_model = BiDiffSRUNet(**config).eval()
            float_model = copy.deepcopy(contiguous_model).to(memory_format=torch.channels_last)
            merged_model = copy.deepcopy(float_model)
            merged_model.merge_for_inference()
            packed_model = copy.deepcopy(contiguous_model)
            packed_model.use_packed_kernels()
            contiguous_s, float_s, merged_s, packed_s = interleaved_median_seconds(
                [lambda m=m: m(x, cond, t) for m in (contiguous_model, float_model, merged_model, packed_model)],
                args.repeats)
            del contiguous_model, merged_model
            reference = float_model(x, cond, t)
            diff = (reference - packed_model(x, cond, t)).abs().max().item()
            shares = [time_shares(m, lambda m=m: m(x, cond, t)) for m in (float_model, packed_model)]
            forwards[label] = (contiguous_s, float_s, merged_s, packed_s, diff, reference.std().item(), shares)
            progress.advance(note=f"forward, {label}")
            if not config:
                paper_models = (float_model, packed_model)  # the super-resolution rows run these

    process = DDPMProcess()
    cond_sr = torch.rand(1, 3, args.size, args.size)
    sr_rows = []
    for label, steps in ((f"{args.steps}-step DDIM SR, {args.size}x{args.size} output", args.steps),
                         (f"one step, {args.size}x{args.size} output", 1)):
        noise = torch.randn(1, 3, args.size, args.size)
        seconds = []
        for m in paper_models:
            start = time.perf_counter()
            super_resolve(m, process, cond_sr, steps, noise=noise)
            seconds.append(time.perf_counter() - start)
        sr_rows.append((label, *seconds))
        progress.advance(note=label)
    cond_image = torch.rand(1, 3, 2 * args.size, 2 * args.size)
    for tile_batch, how in ((8, "batches of 8"), (1, "one by one, the CPU default")):
        seconds = []
        for m in paper_models:
            start = time.perf_counter()
            tiled_super_resolve(m, process, cond_image, 1, tile=args.size, overlap=args.size // 8,
                                tile_batch=tile_batch)
            seconds.append((time.perf_counter() - start) * args.steps)
        sr_rows.append((f"{args.steps}-step image, {2 * args.size}x{2 * args.size} output, 9 tiles {how} "
                        f"(1 step x {args.steps})", *seconds))
        progress.advance(note=f"9 tiles {how}")
    progress.close()

    whole = Table(title=f"Whole student forward, 3x{args.size}x{args.size}, batch 1 (float baseline: channels-last)")
    for col in ("", "float contiguous s", "float s", "float, FP merged s", "packed s", "speed-up",
                "packing alone", "packed: FP convs / outside units", "max |diff| (outputs' std)"):
        whole.add_column(col, justify="right")
    for label, (contiguous_s, float_s, merged_s, packed_s, diff, spread, shares) in forwards.items():
        whole.add_row(label, f"{contiguous_s:.3f}", f"{float_s:.3f}", f"{merged_s:.3f}", f"{packed_s:.3f}",
                      f"{float_s / packed_s:.2f}x", f"{merged_s / packed_s:.2f}x",
                      f"{shares[1][0]:.0%} / {shares[1][1]:.0%}", f"{diff:.1e} ({spread:.2f})")
    console.print(whole)
    sr = Table(title="Super-resolution, paper configuration (float: channels-last)")
    for col in ("", "float s", "packed s", "speed-up"):
        sr.add_column(col, justify="right")
    for label, f, p in sr_rows:
        sr.add_row(label, f"{f:.1f}", f"{p:.1f}", f"{f / p:.2f}x")
    console.print(sr)
    float_fp, float_outside = forwards["paper configuration"][6][0]
    console.print(f"In the float paper forward the full-precision convs take {float_fp:.0%} and everything outside the "
                  f"binarized units {float_outside:.0%}: with free binary convs the whole forward could be at most "
                  f"{1 / float_outside:.1f}x faster. Outputs differ only where float rounding puts a sign on the other "
                  "side of 0 (a whole +-1 flips).")


def time_shares(model: BiDiffSRUNet, forward) -> tuple[float, float]:
    """Shares of one forward's wall time spent in the full-precision convs and outside the binarized units."""
    spent = {"fp": 0.0, "binary": 0.0}
    starts = {}

    def pre(module, inputs):
        starts[module] = time.perf_counter()

    def post_to(key):
        def post(module, inputs, output):
            spent[key] += time.perf_counter() - starts.pop(module)
        return post

    handles = []
    for m in model.modules():
        key = "binary" if isinstance(m, BinaryConv2d) else "fp" if isinstance(m, torch.nn.Conv2d) else None
        if key:  # the paper binarizer's units hold no conv of their own, so nothing is counted twice
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post_to(key))]
    start = time.perf_counter()
    forward()
    total = time.perf_counter() - start
    for h in handles:
        h.remove()
    return spent["fp"] / total, 1 - spent["binary"] / total


if __name__ == "__main__":
    main()
