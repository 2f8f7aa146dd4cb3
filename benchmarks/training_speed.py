"""One training step of the paper's student on this machine, with and without the mechanisms that could buy speed.

A step is what the direct stage does: forward on a noisy batch with per-sample timesteps, L1 loss, backward, Adam.
Rows, each on the same weights and batch, median of `--steps` steps after two warm-up steps:

- ours as the trainer runs it (eager, contiguous memory, Adam with torch's default implementation);
- the official code's timestep handling: one TaR/TaA group for the whole batch (from the first sample), so no
  per-sample gather of the K parameter copies (what BI-DiffSR's official step does);
- channels_last memory; Adam `foreach=False` (the per-parameter loop) and `fused=True`;
- torch.compile of the network (`--compile`; the first steps then include minutes of compilation, not timed).

    python benchmarks/training_speed.py [--size 64] [--batch 2] [--steps 5] [--threads 2] [--compile]

On a GPU (`--device cuda`) add `--precision bf16` for the autocast rows; peak memory is printed there.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.timing import median_seconds  # noqa: E402
from pipeline.allocator import keep_freed_memory  # noqa: E402
from pipeline.progress import Progress  # noqa: E402

import students.bidiffsr as bidiffsr_module  # noqa: E402
from students.bidiffsr import BiDiffSRUNet  # noqa: E402
from students.timestep import timestep_group  # noqa: E402


def one_group_per_batch(t, num_groups, num_train_timesteps):
    """The official selection: the first sample's group for every sample (a (1,) index broadcasts)."""
    return timestep_group(t, num_groups, num_train_timesteps)[:1]


def time_steps(model, optimizer, batch, steps: int, device: torch.device, autocast_dtype) -> float:
    x, cond, t, target = batch

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.l1_loss(model(x, cond, t), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, steps, warmup=2, device=device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row (slow to compile)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    torch.manual_seed(0)
    reference = BiDiffSRUNet()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    b, s = args.batch, args.size
    batch = [torch.randn(b, 3, s, s), torch.rand(b, 3, s, s), torch.randint(0, 2000, (b,)), torch.randn(b, 3, s, s)]

    variants = [
        ("ours (trainer's step)", {}),
        ("one TaR/TaA group per batch (official)", {"per_batch_group": True}),
        ("channels_last", {"channels_last": True}),
        ("Adam foreach=False", {"adam": {"foreach": False}}),
        ("Adam fused=True", {"adam": {"fused": True}}),
        ("channels_last + fused Adam", {"channels_last": True, "adam": {"fused": True}}),
    ]
    if args.compile:
        variants.append(("torch.compile", {"compile": True}))
    table = Table(title=f"Training step of the paper's student: batch {b} at {s}x{s}, {args.precision}, {device}"
                        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
                        + f", median of {args.steps}")
    for col in ("variant", "s / step", "vs ours") + (("peak GiB",) if device.type == "cuda" else ()):
        table.add_column(col, justify="right")
    baseline = None
    console = Console()
    progress = Progress("measured", total=len(variants), unit="variant", console=console, every=0).start()
    for label, v in variants:
        model = BiDiffSRUNet()
        model.load_state_dict(state)
        memory_format = torch.channels_last if v.get("channels_last") else torch.contiguous_format
        model = model.to(device, memory_format=memory_format).train()
        data = [x.to(device, memory_format=memory_format) if x.dim() == 4 else x.to(device) for x in batch]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99), **v.get("adam", {}))
        net = torch.compile(model) if v.get("compile") else model
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        groups = (mock.patch.object(bidiffsr_module, "timestep_group", one_group_per_batch)
                  if v.get("per_batch_group") else contextlib.nullcontext())
        with groups:
            seconds = time_steps(net, optimizer, data, args.steps, device, autocast_dtype)
        baseline = baseline or seconds
        row = [label, f"{seconds:.3f}", f"{baseline / seconds:.2f}x"]
        if device.type == "cuda":
            row.append(f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}")
        table.add_row(*row)
        progress.advance(note=label)
    progress.close()
    console.print(table)


if __name__ == "__main__":
    main()
