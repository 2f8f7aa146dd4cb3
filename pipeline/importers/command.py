"""The import command: officially released checkpoints into BiDistill folders that load with one line.

    python -m pipeline.importers bidiffsr BI_DiffSR_x4.pth [--config test_BI_DiffSR_x4.yml] --out DIR
    python -m pipeline.importers sr3 I640000_E37_gen.pth --config sr_sr3_16_128.json --out DIR
    python -m pipeline.importers resshift resshift_realsrx4_s15_v1.pth --autoencoder autoencoder_vq_f4.pth \
        [--config realsr_swinunet_realesrgan256.yaml] [--one-step] --out DIR

Each kind is an importer module of `pipeline.importers` that registers itself. What each converts, how strictly,
and which settings come from the option files: docs/importing.md.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import pipeline.importers as importers_package
from pipeline.importers import IMPORTERS, CheckpointError, Importer
from pipeline.progress import Phase

OPTIONS = {"autoencoder": "--autoencoder", "one_step": "--one-step"}  # what an importer may take, as spelled


def importers() -> dict[str, Importer]:
    """Every importer: each module of `pipeline.importers` registers its own when imported."""
    for module in pkgutil.iter_modules(importers_package.__path__):
        if module.name not in ("command", "__main__"):
            importlib.import_module(f"{importers_package.__name__}.{module.name}")
    return IMPORTERS


def main(argv: list[str] | None = None) -> int:
    kinds = importers()
    parser = argparse.ArgumentParser(prog="python -m pipeline.importers", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("kind", choices=sorted(kinds), help="what the checkpoint is: " + "; ".join(
        f"{kind}: {importer.what}" for kind, importer in sorted(kinds.items())))
    parser.add_argument("checkpoint", help="the released weights (.pth, .pt or .safetensors)")
    parser.add_argument("--config", default=None,
                        help="the release's config: BasicSR option YAML (bidiffsr, optional), JSON (sr3, required), "
                             "option YAML (resshift, optional)")
    parser.add_argument("--autoencoder", default=None,
                        help="resshift: the VQ autoencoder file the model was trained on (autoencoder_vq_f4.pth)")
    parser.add_argument("--one-step", action="store_true",
                        help="resshift: the checkpoint is SinSR's one-step model (sample with one evaluation)")
    parser.add_argument("--scale", type=int, default=0,
                        help="SR factor when the config does not give it (sr3; resshift: overrides the config's sf)")
    parser.add_argument("--out", required=True, help="the folder to write (must not exist)")
    args = parser.parse_args(argv)
    importer = kinds[args.kind]
    if Path(args.out).exists():
        parser.error(f"--out {args.out} exists; choose a new folder (nothing is overwritten)")
    foreign = [flag for name, flag in OPTIONS.items() if getattr(args, name) and name not in importer.options]
    if foreign:
        parser.error(f"{' and '.join(foreign)} do not apply to the {args.kind} kind")
    try:
        with Phase(f"importing {args.kind} {args.checkpoint}"):  # a spinner in a terminal, start / done lines in logs
            folder, notes = importer.run(args)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}")
    print(f"imported {args.kind} {args.checkpoint} -> {folder} ({importer.loads.format(folder=str(folder))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
