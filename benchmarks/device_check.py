"""The GPU check: one script to run whenever a GPU is at hand (sized for a few minutes on one; `--smoke` runs tiny
models on the CPU in seconds, as the tests do).

For the paper configuration (BI-DiffSR x4 student, its DDPM process, the recipe's batch of 4 at 256x256):

1. Training: steps/s, images/s and peak memory of one training step (noisy batch with per-sample timesteps, the
   process's L1 loss, backward, Adam) in fp32 and in bf16 autocast, for our student and, on the same step, for the
   released network as the import tests re-state it (`tests/released_bidiffsr.py`), so the two are compared on one
   machine.
2. Tiled sampling: a 512x512 output from a 128x128 LR (nine overlapping 256x256 tiles in batches of 8), DDIM steps
   as the recipe evaluates, seconds and peak memory, fp32 and bf16.
3. Distillation: a short feature-distillation stage (BiDM's SPD plus the output loss) from the student's
   full-precision twin, the student started from the twin's weights, in bf16: every loss must be finite (the script
   exits 1 otherwise).

    python benchmarks/device_check.py [--device cuda] [--steps 10] [--sample-steps 50] [--distill-steps 20]
    python benchmarks/device_check.py --smoke
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repository, and the released network's re-statement

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import median_seconds, synchronize  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.resize import upsample_cond  # noqa: E402
from pipeline.sr_pipeline import num_tiles, tiled_super_resolve  # noqa: E402
from pipeline.stages import FeatureDistillStage  # noqa: E402
from released_bidiffsr import ReleasedUNet  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from teachers import DDPMProcess  # noqa: E402
from teachers.base import Teacher  # noqa: E402
from teachers.process import noisy_batch  # noqa: E402

PAPER = dict(size=256, batch=4, lr_size=128, tile=256, overlap=32, tile_batch=8, student={},
             released=dict(inner=64, norm_groups=16, mults=(1, 2, 4, 8), res_blocks=2, image_size=256,
                           fp_res=(256, 128)))
SMOKE = dict(size=32, batch=2, lr_size=16, tile=32, overlap=8, tile_batch=8,
             student=dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, norm_groups=4, image_size=32,
                          fp_resolutions=(32,)),
             released=dict(inner=16, norm_groups=4, mults=(1, 2), res_blocks=1, image_size=32, fp_res=(32,)))
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f}" if device.type == "cuda" else "-"


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def batch_on(device: torch.device, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """A synthetic (HR, condition, LR) batch in the data range [0, 1] (speed and finiteness do not depend on it)."""
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, 3, size, size, generator=g)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    cond = upsample_cond(lr, 4)
    return {k: v.to(device) for k, v in {"hr": hr, "lr": lr, "cond": cond}.items()}


def training_rate(model: torch.nn.Module, process: DDPMProcess, batch: dict, steps: int, device: torch.device,
                  dtype: torch.dtype | None) -> tuple[float, str]:
    """(steps/s from the median of `steps` timed steps after two warm-up steps, peak MiB) of the training step on
    `model`."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(0)

    def step():
        b = noisy_batch(process, batch["hr"], batch["cond"], generator, lr=batch["lr"])
        with autocast(device, dtype):
            out = model(b.x_in, b.y_in, process.model_time(b.t))
        loss = process.loss(out.float(), b.target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    rate = 1 / median_seconds(step, steps, warmup=2, device=device)
    model.cpu()
    return rate, peak_mib(device)


def sampling_time(model: BiDiffSRUNet, process: DDPMProcess, setup: dict, steps: int, device: torch.device,
                  dtype: torch.dtype | None) -> tuple[float, int, str]:
    """(seconds, tiles, peak MiB) of one tiled super-resolution to a 4 x lr_size output."""
    model.to(device).eval()
    out = 4 * setup["lr_size"]
    cond = torch.rand(1, 3, out, out, generator=torch.Generator().manual_seed(1)).to(device)
    reset_peak(device)
    with autocast(device, dtype):
        synchronize(device)
        start = time.perf_counter()
        sr = tiled_super_resolve(model, process, cond, steps, tile=setup["tile"], overlap=setup["overlap"],
                                 tile_batch=setup["tile_batch"], generator=torch.Generator(device).manual_seed(0))
        synchronize(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(sr).all():
        raise RuntimeError(f"tiled sampling in {dtype or 'fp32'} gave non-finite pixels")
    model.cpu()
    return seconds, num_tiles(out, out, setup["tile"], setup["overlap"]), peak_mib(device)


def distillation_losses(setup: dict, process: DDPMProcess, steps: int, device: torch.device) -> list[dict]:
    """The logged losses of `steps` feature-distillation steps (SPD + output) from the twin, in bf16 autocast."""
    torch.manual_seed(0)
    teacher = Teacher(BiDiffSRUNet(**BiDiffSRUNet.twin_config(setup["student"])), process).to(device).freeze()
    student = BiDiffSRUNet(**setup["student"])
    student.init_from_teacher(teacher.unet)
    student.to(device).train()
    stage = FeatureDistillStage(teacher, process, student.feature_names(), spd_weight=0.01, output_weight=1.0)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    generator = torch.Generator(device).manual_seed(0)
    logs = []
    for step in range(steps):
        batch = batch_on(device, setup["batch"], setup["size"], seed=10 + step)
        with autocast(device, torch.bfloat16):
            loss, logged = stage.loss(student, batch, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logs.append({k: float(v) for k, v in logged.items()})
    return logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the tiled sampling")
    parser.add_argument("--distill-steps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps: the CPU test of this script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.sample_steps, args.distill_steps = 2, 2, 3
    setup = SMOKE if args.smoke else PAPER
    device = torch.device(args.device)
    console = Console()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    console.print(f"device check on {name}, torch {torch.__version__}{' (smoke: tiny models)' if args.smoke else ''}")
    process = DDPMProcess()
    batch = batch_on(device, setup["batch"], setup["size"], seed=0)
    # four training rows, two samplings, the distillation
    progress = Progress("measured", total=7, unit="measurement", console=console, every=0).start()

    train = Table(title=f"Training step, batch {setup['batch']} at {setup['size']}x{setup['size']}, "
                        f"median of {args.steps} steps after 2 warm-up steps")
    for col in ("network", "precision", "steps/s", "images/s", "peak MiB"):
        train.add_column(col, justify="left" if col in ("network", "precision") else "right")
    for label, build in (("ours (BiDiffSRUNet)", lambda: BiDiffSRUNet(**setup["student"])),
                         ("released (re-stated)", lambda: ReleasedUNet(**setup["released"]))):
        for precision, dtype in PRECISIONS.items():
            torch.manual_seed(0)
            rate, peak = training_rate(build(), process, batch, args.steps, device, dtype)
            train.add_row(label, precision, f"{rate:.2f}", f"{rate * setup['batch']:.1f}", peak)
            progress.advance(note=f"training, {label}, {precision}")
    console.print(train)

    sampling = Table(title=f"Tiled sampling: {4 * setup['lr_size']}x{4 * setup['lr_size']} output from a "
                           f"{setup['lr_size']}x{setup['lr_size']} LR, {setup['tile']}x{setup['tile']} tiles in "
                           f"batches of {setup['tile_batch']}, {args.sample_steps} DDIM steps")
    for col in ("precision", "tiles", "seconds", "peak MiB"):
        sampling.add_column(col, justify="right")
    torch.manual_seed(0)
    student = BiDiffSRUNet(**setup["student"])
    for precision, dtype in PRECISIONS.items():
        seconds, tiles, peak = sampling_time(student, process, setup, args.sample_steps, device, dtype)
        sampling.add_row(precision, str(tiles), f"{seconds:.2f}", peak)
        progress.advance(note=f"sampling, {precision}")
    console.print(sampling)

    logs = distillation_losses(setup, process, args.distill_steps, device)
    progress.advance(note="distillation")
    progress.close()
    finite = all(math.isfinite(v) for log in logs for v in log.values())
    distill = Table(title=f"Feature distillation from the twin (SPD + output), bf16, {len(logs)} steps")
    for col in ("step", *logs[0]):
        distill.add_column(col, justify="right")
    for i in sorted({0, len(logs) - 1}):
        distill.add_row(str(i + 1), *(f"{v:.4g}" for v in logs[i].values()))
    console.print(distill)
    console.print("every loss finite" if finite else "[red]NON-FINITE LOSSES[/red]")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
