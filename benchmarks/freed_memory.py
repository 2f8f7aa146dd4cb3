"""What keeping freed memory gives (`pipeline.allocator`): the paper student's forward at 3x256x256, float and packed,
timed in fresh processes with glibc's own malloc thresholds (BIDISTILL_KEEP_FREED_MEMORY=0) and with the kept ones,
each model in its own loop as an upscale run calls it; the median forward and the page faults of the whole process.

    python benchmarks/freed_memory.py [--size 256] [--repeats 7] [--rounds 2]

The two settings alternate over `--rounds` so that a shared machine's changing load falls on both.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

WORKER = """
import copy, sys, torch
sys.path.insert(0, {root!r})
from pipeline.allocator import keep_freed_memory
from benchmarks.timing import median_seconds
from students.bidiffsr import BiDiffSRUNet
keep_freed_memory()
torch.manual_seed(0)
float_model = BiDiffSRUNet().eval()
packed_model = copy.deepcopy(float_model)
packed_model.use_packed_kernels()
float_model.to(memory_format=torch.channels_last)
x = torch.randn(1, 3, {size}, {size})
t = torch.tensor([999])
with torch.no_grad():
    print(*(median_seconds(lambda m=m: m(x, x, t), {repeats}) for m in (float_model, packed_model)))
"""


def measure(keep: bool, size: int, repeats: int) -> tuple[float, float, int]:
    """(float s, packed s, page faults) of one fresh process."""
    env = dict(os.environ, BIDISTILL_KEEP_FREED_MEMORY="1" if keep else "0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    out = subprocess.run([sys.executable, "-c", WORKER.format(root=str(ROOT), size=size, repeats=repeats)], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for keep in (False, True):
            runs[keep].append(measure(keep, args.size, args.repeats))
    table = Table(title=f"Paper student forward, 3x{args.size}x{args.size}, batch 1 "
                        f"(median of {args.rounds} processes)")
    for col in ("malloc thresholds", "float s", "packed s", "page faults per process"):
        table.add_column(col, justify="right")
    for keep, label in ((False, "glibc's own"), (True, "kept (every command)")):
        f, p, faults = (statistics.median(v) for v in zip(*runs[keep]))
        table.add_row(label, f"{f:.3f}", f"{p:.3f}", f"{faults:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
