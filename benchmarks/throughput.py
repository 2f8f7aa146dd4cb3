"""Training and inference throughput of the student and the teacher denoisers on this machine.

    python benchmarks/throughput.py [--size 256] [--batch 4] [--steps 10] [--precision bf16] [--tiny]

For each model: one training step (forward, L1 backward, Adam) and one inference forward (no_grad), the median of
`--steps` timings after two warm-up steps; peak GPU memory where there is a GPU. `--tiny` uses the quickstart sizes,
which suit a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from teachers.sr3 import SR3UNet  # noqa: E402

TINY_STUDENT = dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, norm_groups=4, image_size=48,
                    fp_resolutions=(48, 24))
TINY_TEACHER = dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, norm_groups=4)


def time_model(model, size: int, batch: int, steps: int, device: torch.device, dtype) -> tuple[float, float, float]:
    """(training steps/s, inference forwards/s, peak GPU MiB)."""
    model = model.to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    t = torch.randint(0, 2000, (batch,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        with autocast:
            loss = F.l1_loss(model(x, x, t).float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad(), autocast:
            model(x, x, t)

    rates = []
    for fn in (train_step, infer):
        model.train(fn is train_step)
        rates.append(1 / median_seconds(fn, steps, warmup=2, device=device))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return rates[0], rates[1], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="quickstart-sized models (CPU friendly)")
    args = parser.parse_args()
    keep_freed_memory()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    models = {
        "BI-DiffSR student": BiDiffSRUNet(**(TINY_STUDENT if args.tiny else {})),
        "FP twin teacher": BiDiffSRUNet(**BiDiffSRUNet.twin_config(TINY_STUDENT if args.tiny else {})),
        "SR3 teacher": SR3UNet(**(TINY_TEACHER if args.tiny else {})),
    }
    table = Table(title=f"{args.device}, {args.precision}, batch {args.batch} at {args.size}x{args.size}"
                        f"{' (tiny models)' if args.tiny else ''}")
    for col in ("model", "train steps/s", "train img/s", "inference fwd/s", "inference img/s", "peak GPU MiB"):
        table.add_column(col, justify="left" if col == "model" else "right")
    console = Console()
    with Progress("measured", total=len(models), unit="model", console=console, every=0) as progress:
        for name, model in models.items():
            train, infer, peak = time_model(model, args.size, args.batch, args.steps, device, dtype)
            table.add_row(name, f"{train:.2f}", f"{train * args.batch:.1f}", f"{infer:.2f}",
                          f"{infer * args.batch:.1f}", "-" if peak != peak else f"{peak:,.0f}")
            progress.advance(note=name)
    console.print(table)
    console.print("Binarized convs run as float convolutions of +-alpha weights here (training-time emulation); "
                  "the packed 1-bit kernels' CPU speed is benchmarks/binary_speed.py's.")


if __name__ == "__main__":
    main()
