"""Bytes on disk of a student: full-precision safetensors vs the packed 1-bit file vs the paper-rule size.

    python benchmarks/packed_size.py [--binarizer bidiffsr] [--config DIR]

Theoretical size = Params by the paper's rule (binary weights / 32 + full-precision parameters) x 4 bytes, i.e.
1 bit per binary weight and 4 bytes per other parameter. The goal is a packed file within 2% of it; the gap is the
per-output-channel scales and the safetensors header.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_file

from students.bidiffsr import BiDiffSRUNet
from students.complexity import count_params
from students.packing import save_packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binarizer", default="bidiffsr")
    parser.add_argument("--config", help="a saved student folder (default: the paper configuration)")
    args = parser.parse_args()
    torch.manual_seed(0)  # a random init can hold exact zeros, which take a bit plane of their own: the same each run
    model = BiDiffSRUNet.from_pretrained(args.config) if args.config else BiDiffSRUNet(binarizer=args.binarizer)
    model.eval()
    binary, fp = count_params(model)
    theoretical = (binary / 32 + fp) * 4
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "fp32.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(full))
        packed = save_packed(model, Path(tmp) / "packed.safetensors")
        fp32_bytes, packed_bytes = full.stat().st_size, packed.stat().st_size
    table = Table(title=f"Student size on disk ({args.config or 'paper config'}, binarizer {model.config.binarizer})")
    for col in ("file", "bytes", "MB", "FP32 / this", "vs theoretical"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for label, size in (("FP32", fp32_bytes), ("packed 1-bit", packed_bytes), ("theoretical", theoretical)):
        table.add_row(label, f"{size:,.0f}", f"{size / 1e6:.2f}", f"{fp32_bytes / size:.2f}x",
                      f"{(size / theoretical - 1) * 100:+.2f}%")
    console = Console()
    console.print(table)
    gap = packed_bytes / theoretical - 1
    console.print(f"packed file is {gap * 100:+.2f}% from the theoretical size: "
                  f"{'within' if abs(gap) <= 0.02 else 'OUTSIDE'} the 2% goal")


if __name__ == "__main__":
    main()
